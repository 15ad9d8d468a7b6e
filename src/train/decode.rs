//! Images to model-ready rows, for every training command: decoded as every command decodes
//! them ([`stream::load_rows`]), then, as a stage of their own on each decoded row, given their
//! landmark targets and, in training batches, distorted. An image that cannot be read goes
//! through the one policy of every command ([`Skips`]): reported once (`skipped KEY: reason`),
//! left out of every batch and every score, and fatal under `--strict`. A batch that loses
//! images is filled up with weight-0 copies of its readable ones ([`super::batches`]), as a
//! short last batch is.

use anyhow::{bail, Result};

use super::data::{Examples, LabeledImages, Landmarks, Pick};
use crate::augment::Distortions;
use crate::dataset::Skipped;
use crate::preprocess::{Preprocess, Window};
use crate::progress;
use crate::stream::{self, Decoded, Skips};

/// Decodes images in parallel; remembers which failed, to report each once.
pub struct Decoder {
    pub pre: Preprocess,
    /// Applied to training batches (never to validation or test rows).
    pub distortions: Distortions,
    seed: u64,
    pool: rayon::ThreadPool,
    skips: Skips,
}

/// What training adds to a decoded row: its labels (mirrored where its distortion mirrors)
/// and its landmark targets.
type Truth = (Vec<i64>, Option<Landmarks>);

impl Decoder {
    pub fn new(pre: Preprocess, distortions: Distortions, seed: u64, strict: bool, threads: Option<usize>) -> Result<Decoder> {
        Ok(Decoder { pre, distortions, seed, pool: stream::decode_pool(threads)?, skips: Skips::new(strict) })
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

    /// Images `index` of `set` in parallel, each distorted with its seed if it has one
    /// ([`Decoder::stage`]), in order, the unreadable ones left out.
    fn decode(&self, set: &LabeledImages, index: &[usize], seeds: &[Option<u64>], bar: &indicatif::ProgressBar) -> Result<Examples> {
        let loaded = stream::load_rows(&self.pool, &self.pre, &set.samples, index, |k, pixels, window| {
            let truth = self.stage(set, index[k], seeds[k], pixels, window);
            bar.inc(1);
            truth
        });
        let Decoded { tensor: (images, truths), failures, .. } = loaded;
        self.skips.report(failures, bar)?;
        if truths.is_empty() && !index.is_empty() {
            bail!("no image could be read (of {}, from {})", index.len(), set.samples[index[0]].name());
        }
        let mut ex = Examples { images, ..set.examples(self.pre.input.image_len()) };
        for (labels, landmarks) in truths {
            ex.labels.extend(labels);
            ex.landmarks.extend(landmarks);
        }
        Ok(ex)
    }

    /// Sample `i` of `set`, decoded into `pixels` from its crop `window`: its landmarks, where
    /// `set` trains them, as fractions of the crop, and with a `seed` its distortion, the
    /// landmarks moved with the pixels and the labels those of the mirror image where it mirrors.
    fn stage(&self, set: &LabeledImages, i: usize, seed: Option<u64>, pixels: &mut [f32], window: Window) -> Truth {
        let sample = &set.samples[i];
        let mut landmarks = match (set.landmarks, sample.landmarks) {
            (true, Some(l)) => Some(Landmarks { fractions: window.to_fractions(&l), window: [window.w, window.h] }),
            _ => None,
        };
        if let Some(seed) = seed {
            self.distortions.apply(pixels, &self.pre.input, seed);
            if let Some(l) = &mut landmarks {
                self.distortions.move_landmarks(&mut l.fractions, &self.pre.input, seed);
            }
        }
        let mirrored = seed.is_some_and(|s| self.distortions.mirrors(s));
        (set.mirror.labels(set.classes_of(i), mirrored), landmarks)
    }

    /// Images that could not be read so far, each once, in the order reported.
    pub fn skipped(&self) -> Vec<Skipped> {
        self.skips.all()
    }
}
