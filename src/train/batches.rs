//! Training batches from the decoded images: fixed size, padded, optionally distorted.
//!
//! The stored tensors are never changed: each batch gets copies, distorted per image with a
//! seed from (seed, epoch, image index), so epoch e sees the same pixels whether the run was
//! resumed or not, and whatever the batch order or thread count.

use rayon::prelude::*;

use super::data::Examples;
use super::engine::Batch;
use super::rng;
use crate::augment::Distortions;
use crate::preprocess::InputSpec;

/// How training images are distorted, and the draws' origin.
pub struct Distort<'a> {
    pub distortions: Distortions,
    pub spec: &'a InputSpec,
    pub seed: u64,
    pub epoch: u64,
}

/// `chunk`'s images, padded to `size` rows by repeating them with weight 0, distorted by `distort`.
pub fn make_batch<'a>(ex: &Examples, chunk: &[usize], size: usize, masks: &'a [Vec<f32>], distort: &Distort) -> Batch<'a> {
    let mut batch = Batch { images: Vec::with_capacity(size * ex.image_len), labels: Vec::with_capacity(size), weights: Vec::with_capacity(size), masks };
    let rows: Vec<usize> = (0..size).map(|k| chunk[k % chunk.len()]).collect();
    for (k, &i) in rows.iter().enumerate() {
        batch.images.extend_from_slice(ex.image(i));
        batch.labels.push(ex.labels[i]);
        batch.weights.push(if k < chunk.len() { 1.0 } else { 0.0 });
    }
    if !distort.distortions.is_off() {
        // Parallel: a 150x150 resample per image is comparable to a GPU train step.
        batch.images.par_chunks_mut(ex.image_len).zip(rows.par_iter()).for_each(|(image, &i)| {
            distort.distortions.apply(image, distort.spec, rng::distortion_seed(distort.seed, distort.epoch, i));
        });
    }
    batch
}
