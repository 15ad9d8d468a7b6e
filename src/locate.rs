//! Landmarks for images that have none, so the face and nose crops work on plain photos: a
//! model that regresses the five landmarks (`retrain train` on multi-task artifacts; output
//! `landmarks`, fractions of its input) places them.
//!
//! The first pass sees the whole image. A model trained on face crops then looks again, on
//! the face crop placed from the first estimate, as cascaded landmark detectors refine their
//! estimate: where the first pass sees the face small or off centre, the second sees it
//! framed as in training. With [`Passes::mirror`] every pass also sees its input mirrored
//! and averages the two estimates (test-time flip averaging, as landmark detectors do): on
//! MTFL's validation faces it lowered the mean error from 7.67% to 6.70% of the inter-ocular
//! distance and the failures from 16.9% to 9.1% (docs/results.md).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::augment::{mirror, mirror_landmarks};
use crate::dataset::Sample;
use crate::model::Model;
use crate::preprocess::{Crop, Preprocess};
use crate::progress;
use crate::runtime::SessionConfig;
use crate::stream::{Batches, Decoded, WithWindows};

/// The output a landmark model gives: x1..x5, y1..y5 as fractions of its input.
pub const LANDMARKS_OUTPUT: &str = "landmarks";

/// How a landmark model is run on each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passes {
    /// The whole image, then (for a model trained on another crop) its own crop placed from
    /// the estimate, `count` passes in all (at least 1).
    pub count: usize,
    /// Each pass also runs on its input mirrored left to right and averages the two
    /// estimates, the mirror's points flipped back ([`mirror_landmarks`]).
    pub mirror: bool,
}

/// A landmark model ready to place the five landmarks on images (`predict --landmarks`).
pub struct Locator {
    model: Model,
    /// The crop the model was trained on (its description's `crop`).
    crop: Crop,
}

impl Locator {
    /// Loads the landmark model at `path`; its output `landmarks` must hold 10 values per image.
    pub fn load(path: &Path, config: &SessionConfig) -> Result<Locator> {
        let model = Model::load(path, config, Some(LANDMARKS_OUTPUT)).with_context(|| format!("landmark model {}", path.display()))?;
        if model.output_dim != 10 {
            bail!("landmark model {}: output '{LANDMARKS_OUTPUT}' has {} values per image, expected 10 (x1..x5, y1..y5)", path.display(), model.output_dim);
        }
        let crop = model.description.crop.unwrap_or(Crop::Original);
        Ok(Locator { model, crop })
    }

    /// The crop of pass `pass` (from 0): the whole image, then the model's own crop.
    fn crop_of(&self, pass: usize) -> Crop {
        if pass == 0 {
            Crop::Original
        } else {
            self.crop
        }
    }

    /// Sets the landmarks of every sample in `passes` passes (at least 1; passes after the
    /// first only where the model was trained on another crop than the whole image). An image
    /// that cannot be read keeps the landmarks it had: the step that reads it next (`predict`)
    /// reports it, once.
    pub fn locate(&mut self, samples: &mut [Sample], passes: Passes, batch: usize, decode_threads: Option<usize>, show_progress: bool) -> Result<()> {
        for pass in 0..passes.count.max(1) {
            if pass > 0 && self.crop == Crop::Original {
                break;
            }
            let pre = Preprocess { crop: self.crop_of(pass), input: self.model.input.clone() };
            let todo: Vec<usize> = (0..samples.len()).filter(|&i| pass == 0 || samples[i].landmarks.is_some()).collect();
            let mut found = Vec::with_capacity(todo.len());
            let bar = progress::bar(todo.len() as u64, "images", show_progress);
            bar.set_message(format!("landmarks, pass {} ({} crop)", pass + 1, pre.crop));
            let batches = Batches { samples, pre: &WithWindows(&pre), todo: &todo, size: batch.max(1), decode_threads };
            batches.for_each(|Decoded { tensor: (images, windows), good, failures, .. }| {
                bar.inc((good.len() + failures.len()) as u64);
                if good.is_empty() {
                    return Ok(());
                }
                let values = self.estimate(images, good.len(), passes.mirror)?;
                for ((&i, window), points) in good.iter().zip(&windows).zip(values.chunks(10)) {
                    found.push((i, window.to_pixels(points)));
                }
                Ok(())
            })?;
            bar.finish_and_clear();
            for (i, points) in found {
                samples[i].landmarks = Some(points);
            }
        }
        Ok(())
    }

    /// The landmarks of `n` images (the model's input tensor), as fractions of it: averaged
    /// with those of the mirrored images when `mirror` (the exported graph does the same, op
    /// for op: `export::located`).
    fn estimate(&mut self, images: Vec<f32>, n: usize, mirror: bool) -> Result<Vec<f32>> {
        if !mirror {
            return self.model.run(images, n);
        }
        let mut mirrored = images.clone();
        for image in mirrored.chunks_mut(self.model.input.image_len()) {
            self::mirror(image, &self.model.input);
        }
        let mut values = self.model.run(images, n)?;
        let mut flipped = self.model.run(mirrored, n)?;
        for (points, back) in values.chunks_mut(10).zip(flipped.chunks_mut(10)) {
            mirror_landmarks(back);
            for (v, b) in points.iter_mut().zip(back.iter()) {
                *v = (*v + b) * 0.5;
            }
        }
        Ok(values)
    }
}
