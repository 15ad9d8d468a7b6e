//! MTFL images for training: decoded once into memory as model-ready tensors.
//!
//! Training reads every image once per epoch; decoding JPEGs each time would cost more than
//! the small networks' steps, so the tensors are kept (TCDCN: 43 KB per image, Cascade-CNN
//! 270 KB). The validation subset is the study's 20% hold-out, chosen by file name hash
//! ([`crate::dataset::split`]), so it does not move when the seed of the shuffling changes.

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::dataset::split::{self, Subset};
use crate::dataset::{Dataset, Sample};
use crate::preprocess::Preprocess;
use crate::progress;

/// Hold-out share for validation, as in the study.
pub const VALIDATION_PERCENT: f64 = 20.0;

/// Images as one flat tensor plus their class indices.
pub struct Examples {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub image_len: usize,
    /// Images that could not be read, as `key: reason`.
    pub skipped: Vec<String>,
}

impl Examples {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * self.image_len..(i + 1) * self.image_len]
    }
}

/// Column of `attribute` in an MTFL data set's labels.
pub fn label_column(dataset: &Dataset, attribute: &str) -> Result<usize> {
    dataset
        .label_columns
        .iter()
        .position(|c| c == attribute)
        .ok_or_else(|| anyhow::anyhow!("attribute '{attribute}' is not in {} (it has {})", dataset.source, dataset.label_columns.join(", ")))
}

/// Splits training samples into (train, validation) by the hold-out hash of their names.
pub fn hold_out(samples: &[Sample], seed: u64) -> (Vec<&Sample>, Vec<&Sample>) {
    samples.iter().partition(|s| split::assign(&s.key, seed, VALIDATION_PERCENT) == Subset::Train)
}

/// Decodes and preprocesses `samples` in parallel; MTFL code c becomes class c - 1.
pub fn load(samples: &[&Sample], column: usize, pre: &Preprocess, what: &str, show: bool) -> Result<Examples> {
    let filter = pre.input.filter()?;
    let len = pre.input.image_len();
    let bar = progress::bar(samples.len() as u64, "images", show);
    bar.set_message(format!("decode {what}"));
    let decoded: Vec<Result<Vec<f32>>> = samples
        .par_iter()
        .map(|s| {
            let mut out = vec![0f32; len];
            let result = pre.load_into(s, filter, &mut out).map(|_| out);
            bar.inc(1);
            result
        })
        .collect();
    bar.finish_and_clear();
    let mut ex = Examples { images: Vec::with_capacity(samples.len() * len), labels: Vec::new(), image_len: len, skipped: Vec::new() };
    for (s, d) in samples.iter().zip(decoded) {
        match d {
            Ok(pixels) => {
                ex.images.extend_from_slice(&pixels);
                ex.labels.push(s.labels[column] as i64 - 1);
            }
            Err(e) => ex.skipped.push(format!("{}: {e:#}", s.key)),
        }
    }
    if ex.is_empty() && !samples.is_empty() {
        bail!("no usable {what} images ({} unreadable)", ex.skipped.len());
    }
    Ok(ex)
}
