//! MTFL images for fine-tuning, decoded batch by batch (a 299x299 network's tensors for the
//! whole training set would take 10 GB), with the seeded distortions when asked for.
//!
//! The validation subset is the study's 10% of training.txt, chosen by file-name hash
//! ([`crate::dataset::split`]) exactly as `retrain train-head` chooses it, so phase 1 (on the
//! bottleneck cache) and phase 2 (on images) hold out the same faces.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{bail, Result};
use image::imageops::FilterType;
use rayon::prelude::*;

use crate::augment::Distortions;
use crate::dataset::mtfl::{self, Split};
use crate::dataset::split::{assign, Subset};
use crate::dataset::Sample;
use crate::head::classes::Classes;
use crate::preprocess::Preprocess;
use crate::train::rng::SplitMix64;

/// The study's validation share for fine-tuning.
pub const VALIDATION_PERCENT: f64 = 10.0;
const TAG_DISTORT: u64 = 11;

/// Samples with a known class for the attribute.
#[derive(Debug, Clone, Default)]
pub struct LabeledImages {
    pub samples: Vec<Sample>,
    pub classes: Vec<i64>,
}

impl LabeledImages {
    fn of(samples: impl Iterator<Item = Sample>, column: usize, classes: &Classes) -> LabeledImages {
        let mut set = LabeledImages::default();
        for s in samples {
            if let Some(c) = classes.index_of(s.labels[column]) {
                set.classes.push(c as i64);
                set.samples.push(s);
            }
        }
        set
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// (train, validation, test) of MTFL for `attribute`; `limit` keeps the first N of each list.
pub fn mtfl_subsets(root: &Path, classes: &Classes, seed: u64, limit: Option<usize>) -> Result<[LabeledImages; 3]> {
    let training = mtfl::load(root, Split::Training)?;
    let testing = mtfl::load(root, Split::Testing)?;
    let column = crate::train::data::label_column(&training, &classes.attribute)?;
    let cut = |v: Vec<Sample>| -> Vec<Sample> { v.into_iter().take(limit.unwrap_or(usize::MAX)).collect() };
    let (train, val): (Vec<Sample>, Vec<Sample>) = cut(training.samples).into_iter().partition(|s| is_train(&s.key, seed));
    let sets = [
        LabeledImages::of(train.into_iter(), column, classes),
        LabeledImages::of(val.into_iter(), column, classes),
        LabeledImages::of(cut(testing.samples).into_iter(), column, classes),
    ];
    if sets[0].is_empty() || sets[1].is_empty() {
        bail!("{}: no labelled training or validation image for '{}'", root.display(), classes.attribute);
    }
    Ok(sets)
}

/// Whether a training-list name falls in the training part of the 90/10 hold-out.
pub fn is_train(key: &str, seed: u64) -> bool {
    assign(key, seed, VALIDATION_PERCENT) == Subset::Train
}

/// A decoded batch: `rows` images laid out for the model, their classes and weights (0 for an
/// image that could not be read, whose row repeats a readable one).
pub struct Decoded {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub weights: Vec<f32>,
}

/// Decodes batches in parallel; remembers which images failed, to report each once.
pub struct Decoder {
    pub pre: Preprocess,
    filter: FilterType,
    pub distortions: Distortions,
    seed: u64,
    strict: bool,
    pool: rayon::ThreadPool,
    failed: Mutex<BTreeSet<String>>,
}

impl Decoder {
    pub fn new(pre: Preprocess, distortions: Distortions, seed: u64, strict: bool, threads: Option<usize>) -> Result<Decoder> {
        Ok(Decoder {
            filter: pre.input.filter()?,
            pre,
            distortions,
            seed,
            strict,
            pool: crate::extract::decode_pool(threads)?,
            failed: Mutex::new(BTreeSet::new()),
        })
    }

    /// `indices` of `set`; distorted (seeded by step and row) when `distort` and distortions are on.
    pub fn batch(&self, set: &LabeledImages, indices: &[usize], step: u64, distort: bool) -> Result<Decoded> {
        let len = self.pre.input.image_len();
        let loaded: Vec<Result<Vec<f32>>> = self.pool.install(|| {
            indices
                .par_iter()
                .enumerate()
                .map(|(row, &i)| {
                    let mut out = vec![0f32; len];
                    self.pre.load_into(&set.samples[i], self.filter, &mut out)?;
                    if distort && !self.distortions.is_off() {
                        let seed = SplitMix64::stream(self.seed, TAG_DISTORT, step.wrapping_mul(1 << 16) ^ row as u64).next_u64();
                        self.distortions.apply(&mut out, &self.pre.input, seed);
                    }
                    Ok(out)
                })
                .collect()
        });
        self.assemble(set, indices, loaded)
    }

    fn assemble(&self, set: &LabeledImages, indices: &[usize], loaded: Vec<Result<Vec<f32>>>) -> Result<Decoded> {
        let fallback = loaded.iter().position(|r| r.is_ok());
        let mut d = Decoded { images: Vec::with_capacity(loaded.len() * self.pre.input.image_len()), labels: Vec::new(), weights: Vec::new() };
        for (&i, r) in indices.iter().zip(&loaded) {
            match r {
                Ok(pixels) => {
                    d.images.extend_from_slice(pixels);
                    d.labels.push(set.classes[i]);
                    d.weights.push(1.0);
                }
                Err(e) => {
                    let key = &set.samples[i].key;
                    if self.strict {
                        bail!("{key}: {e:#}");
                    }
                    if self.failed.lock().expect("not poisoned").insert(key.clone()) {
                        eprintln!("skipped {key}: {e:#}");
                    }
                    let Some(j) = fallback else { bail!("no image of a batch could be read (first: {key}: {e:#})") };
                    d.images.extend_from_slice(loaded[j].as_ref().expect("readable"));
                    d.labels.push(set.classes[indices[j]]);
                    d.weights.push(0.0);
                }
            }
        }
        Ok(d)
    }

    /// Images that could not be read so far.
    pub fn failures(&self) -> Vec<String> {
        self.failed.lock().expect("not poisoned").iter().cloned().collect()
    }
}

/// The rows of optimizer step `step` (from 1): consecutive slices of per-epoch shuffles of
/// 0..n, so a resumed run draws exactly the batches a continuous one would.
pub fn step_rows(n: usize, batch: usize, seed: u64, step: u64) -> Vec<usize> {
    let order: Vec<usize> = (0..n).collect();
    let start = (step - 1) as usize * batch;
    let mut shuffles: Vec<(usize, Vec<usize>)> = Vec::new();
    (start..start + batch)
        .map(|k| {
            let epoch = k / n;
            if shuffles.last().map(|(e, _)| *e) != Some(epoch) {
                shuffles.push((epoch, crate::train::rng::shuffled(&order, seed, epoch as u64)));
            }
            shuffles.last().expect("pushed").1[k % n]
        })
        .collect()
}
