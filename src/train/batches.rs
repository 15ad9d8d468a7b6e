//! Training batches from the decoded images: fixed size, padded, optionally distorted, with
//! their dropout masks.
//!
//! The stored tensors are never changed: each batch gets copies, distorted per image with a
//! seed from (seed, epoch, image index), so epoch e sees the same pixels whether the run was
//! resumed or not, and whatever the batch order or thread count. Everything here depends only
//! on its arguments, so the epoch loop prepares batch k + 1 on another thread while step k runs.

use rayon::prelude::*;

use super::artifacts::Manifest;
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

/// A batch that owns its dropout masks ([`Batch`] borrows them).
pub struct Prepared {
    images: Vec<f32>,
    labels: Vec<i64>,
    weights: Vec<f32>,
    masks: Vec<Vec<f32>>,
}

impl Prepared {
    /// Runs `f` on the batch as the engine takes it.
    pub fn with_batch<R>(self, f: impl FnOnce(&Batch) -> R) -> R {
        f(&Batch { images: self.images, labels: self.labels, weights: self.weights, masks: &self.masks })
    }
}

/// The dropout masks of optimizer step `step` (counted from 1), one per Dropout node.
pub fn dropout_masks(m: &Manifest, seed: u64, step: u64) -> Vec<Vec<f32>> {
    m.dropout_masks.iter().enumerate().map(|(i, d)| rng::dropout_mask(d.shape.iter().product(), d.ratio, seed, step, i as u64)).collect()
}

/// `chunk`'s images, padded to `size` rows by repeating them with weight 0, distorted by `distort`.
pub fn prepare(ex: &Examples, chunk: &[usize], size: usize, masks: Vec<Vec<f32>>, distort: &Distort) -> Prepared {
    let mut batch = Prepared { images: Vec::with_capacity(size * ex.image_len), labels: Vec::with_capacity(size), weights: Vec::with_capacity(size), masks };
    let rows: Vec<usize> = (0..size).map(|k| chunk[k % chunk.len()]).collect();
    for (k, &i) in rows.iter().enumerate() {
        batch.images.extend_from_slice(ex.image(i));
        batch.labels.push(ex.labels[i]);
        batch.weights.push(if k < chunk.len() { 1.0 } else { 0.0 });
    }
    if !distort.distortions.is_off() {
        // Parallel: distorting 64 150x150 images one after another costs about a GPU train step.
        batch.images.par_chunks_mut(ex.image_len).zip(rows.par_iter()).for_each(|(image, &i)| {
            distort.distortions.apply(image, distort.spec, rng::distortion_seed(distort.seed, distort.epoch, i));
        });
    }
    batch
}
