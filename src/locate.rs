//! Landmarks for images that have none, so the face and nose crops work on plain photos: a
//! model that regresses the five landmarks (`retrain train` on multi-task artifacts; output
//! `landmarks`, fractions of its input) places them.
//!
//! The first pass sees the whole image. A model trained on face crops then looks again, on
//! the face crop placed from the first estimate, as cascaded landmark detectors refine their
//! estimate: where the first pass sees the face small or off centre, the second sees it
//! framed as in training.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::dataset::Sample;
use crate::export::CROP_KEY;
use crate::model::Model;
use crate::preprocess::{Crop, Preprocess};
use crate::progress;
use crate::runtime::SessionConfig;
use crate::stream::{Batches, Decoded, WithWindows};

/// The output a landmark model gives: x1..x5, y1..y5 as fractions of its input.
pub const LANDMARKS_OUTPUT: &str = "landmarks";

pub struct Locator {
    model: Model,
    /// The crop the model was trained on (`retrain.crop`).
    crop: Crop,
}

impl Locator {
    pub fn load(path: &Path, config: &SessionConfig) -> Result<Locator> {
        let model = Model::load(path, config, Some(LANDMARKS_OUTPUT)).with_context(|| format!("landmark model {}", path.display()))?;
        if model.output_dim != 10 {
            bail!("landmark model {}: output '{LANDMARKS_OUTPUT}' has {} values per image, expected 10 (x1..x5, y1..y5)", path.display(), model.output_dim);
        }
        let crop = match model.description.get(CROP_KEY) {
            Some(c) => c.parse().with_context(|| format!("metadata retrain.crop of {}", path.display()))?,
            None => Crop::Original,
        };
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
    pub fn locate(&mut self, samples: &mut [Sample], passes: usize, batch: usize, decode_threads: Option<usize>, show_progress: bool) -> Result<()> {
        for pass in 0..passes.max(1) {
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
                let values = self.model.run(images, good.len())?;
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
}
