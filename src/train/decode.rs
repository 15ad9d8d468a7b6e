//! Images to model-ready rows, for every training command, with one policy for an image that
//! cannot be read: it is reported once (`skipped KEY: reason`), left out of every batch and
//! every score, and stops the run under `--strict`. A batch that loses images is filled up
//! with weight-0 copies of its readable ones ([`super::batches`]), as a short last batch is.

use std::collections::BTreeSet;
use std::sync::Mutex;

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::batches::Pick;
use super::data::{Examples, LabeledImages, Landmarks};
use crate::augment::Distortions;
use crate::preprocess::Preprocess;
use crate::progress;

/// Decodes images in parallel; remembers which failed, to report each once.
pub struct Decoder {
    pub pre: Preprocess,
    /// Applied to training batches (never to validation or test rows).
    pub distortions: Distortions,
    seed: u64,
    strict: bool,
    pool: rayon::ThreadPool,
    failed: Mutex<BTreeSet<String>>,
}

impl Decoder {
    pub fn new(pre: Preprocess, distortions: Distortions, seed: u64, strict: bool, threads: Option<usize>) -> Result<Decoder> {
        Ok(Decoder { pre, distortions, seed, strict, pool: crate::stream::decode_pool(threads)?, failed: Mutex::new(BTreeSet::new()) })
    }

    /// The picked images of `set`, distorted with their picks' seeds when distortions are on.
    pub fn training(&self, set: &LabeledImages, picks: &[Pick]) -> Result<Examples> {
        let index: Vec<usize> = picks.iter().map(|p| p.index).collect();
        let seeds: Vec<Option<u64>> = picks.iter().map(|p| (!self.distortions.is_off()).then(|| p.distortion_seed(self.seed))).collect();
        self.decode(set, &index, &seeds, &indicatif::ProgressBar::hidden())
    }

    /// Every image of `set` as it is, with a progress bar when `show`.
    pub fn all(&self, set: &LabeledImages, what: &str, show: bool) -> Result<Examples> {
        let bar = progress::bar(set.len() as u64, "images", show);
        bar.set_message(format!("decode {what}"));
        let index: Vec<usize> = (0..set.len()).collect();
        let ex = self.decode(set, &index, &vec![None; set.len()], &bar)?;
        bar.finish_and_clear();
        Ok(ex)
    }

    /// Images `index` of `set` as they are.
    pub fn plain(&self, set: &LabeledImages, index: &[usize]) -> Result<Examples> {
        self.decode(set, index, &vec![None; index.len()], &indicatif::ProgressBar::hidden())
    }

    /// Images `index` of `set` in parallel, each distorted with its seed if it has one; their
    /// landmarks, where `set` trains them, as fractions of the crop moved with the pixels, and
    /// their labels those of the mirror image where the distortion mirrors.
    fn decode(&self, set: &LabeledImages, index: &[usize], seeds: &[Option<u64>], bar: &indicatif::ProgressBar) -> Result<Examples> {
        let len = self.pre.input.image_len();
        let loaded: Vec<Result<(Vec<f32>, Option<Landmarks>)>> = self.pool.install(|| {
            index
                .par_iter()
                .zip(seeds)
                .map(|(&i, seed)| {
                    let sample = &set.samples[i];
                    let mut out = vec![0f32; len];
                    let window = self.pre.load_into(sample, &mut out)?;
                    let mut landmarks = match (set.landmarks, sample.landmarks) {
                        (true, Some(l)) => Some(Landmarks { fractions: window.to_fractions(&l), window: [window.w, window.h] }),
                        _ => None,
                    };
                    if let Some(seed) = seed {
                        self.distortions.apply(&mut out, &self.pre.input, *seed);
                        if let Some(l) = &mut landmarks {
                            self.distortions.move_landmarks(&mut l.fractions, &self.pre.input, *seed);
                        }
                    }
                    bar.inc(1);
                    Ok((out, landmarks))
                })
                .collect()
        });
        let mut ex = set.examples(len);
        for ((&i, r), seed) in index.iter().zip(loaded).zip(seeds) {
            match r {
                Ok((pixels, landmarks)) => {
                    let labels = set.mirror.labels(set.classes_of(i), seed.is_some_and(|s| self.distortions.mirrors(s)));
                    ex.push_row(&pixels, &labels, landmarks)
                }
                Err(e) => self.failed(&set.samples[i].key, e)?,
            }
        }
        if ex.is_empty() && !index.is_empty() {
            bail!("no image could be read (of {}, from {})", index.len(), set.samples[index[0]].key);
        }
        Ok(ex)
    }

    fn failed(&self, key: &str, e: anyhow::Error) -> Result<()> {
        if self.strict {
            bail!("{key}: {e:#}");
        }
        if self.failed.lock().expect("not poisoned").insert(key.to_string()) {
            eprintln!("skipped {key}: {e:#}");
        }
        Ok(())
    }

    /// Images that could not be read so far.
    pub fn failures(&self) -> Vec<String> {
        self.failed.lock().expect("not poisoned").iter().cloned().collect()
    }
}
