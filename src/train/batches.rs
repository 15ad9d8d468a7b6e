//! The one batch source of every training loop (`retrain train`, both phases of `retrain
//! finetune`): which rows step s takes ([`Order`]), where their values come from ([`Source`]:
//! rows in memory, image files, or image files through a frozen network), distorted with a
//! seed of (seed, epoch, image), and filled up to the graph's fixed batch with weight-0 rows.
//!
//! Everything depends on (seed, step) alone, so a resumed run draws exactly the batches and
//! pixels a continuous one would, and the loop builds batch s + 1 on another thread while
//! step s runs.

use rayon::prelude::*;

use super::artifacts::Manifest;
pub use super::data::Pick;
use super::data::{Examples, LabeledImages};
use super::decode::Decoder;
use crate::augment::Distortions;
use crate::head::standardize::Standardizer;
use crate::model::Model;
use crate::preprocess::InputSpec;
use crate::rng;
use anyhow::{Context, Result};

/// How the steps walk through the rows; every epoch is a new seeded shuffle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Each epoch cut into batches, its last one short (`retrain train`: validation after every
    /// epoch).
    Epochs,
    /// Full batches over consecutive epochs, a batch spanning two at their seam (`retrain
    /// finetune`: the study's and retrain.py's fixed number of steps).
    Stream,
}

impl Order {
    /// Optimizer steps of one epoch of `n` rows.
    pub fn steps_per_epoch(n: usize, batch: usize) -> u64 {
        n.div_ceil(batch.max(1)) as u64
    }

    /// The rows of optimizer step `step` (counted from 1) over `n` rows.
    pub fn picks(self, n: usize, batch: usize, seed: u64, step: u64) -> Vec<Pick> {
        let all: Vec<usize> = (0..n).collect();
        match self {
            Order::Epochs => {
                let per_epoch = Self::steps_per_epoch(n, batch);
                let (epoch, k) = ((step - 1) / per_epoch, ((step - 1) % per_epoch) as usize);
                let order = rng::shuffled(&all, seed, epoch);
                order[k * batch..((k + 1) * batch).min(n)].iter().map(|&index| Pick { index, epoch }).collect()
            }
            Order::Stream => {
                let start = (step - 1) as usize * batch;
                let mut shuffles: Vec<(u64, Vec<usize>)> = Vec::new();
                (start..start + batch)
                    .map(|k| {
                        let epoch = (k / n) as u64;
                        if shuffles.last().map(|(e, _)| *e) != Some(epoch) {
                            shuffles.push((epoch, rng::shuffled(&all, seed, epoch)));
                        }
                        Pick { index: shuffles.last().expect("pushed").1[k % n], epoch }
                    })
                    .collect()
            }
        }
    }
}

/// A training batch of exactly the graph's rows: real ones of weight 1, then weight-0 copies.
pub struct Prepared {
    pub images: Vec<f32>,
    /// [rows, label width]
    pub labels: Vec<i64>,
    /// [rows, target width]; empty without a regression task.
    pub targets: Vec<f32>,
    pub weights: Vec<f32>,
}

impl Prepared {
    /// `ex`'s rows, filled up to `size` with weight-0 copies of them in turn.
    pub fn filled(ex: &Examples, size: usize) -> Prepared {
        let rows = size.max(ex.len());
        let mut b = Prepared {
            images: Vec::with_capacity(rows * ex.image_len),
            labels: Vec::with_capacity(rows * ex.label_width),
            targets: Vec::with_capacity(rows * ex.target_width()),
            weights: Vec::with_capacity(rows),
        };
        for k in 0..rows {
            let i = k % ex.len();
            b.images.extend_from_slice(ex.image(i));
            b.labels.extend_from_slice(ex.labels_of(i));
            b.targets.extend_from_slice(ex.targets_of(i));
            b.weights.push(if k < ex.len() { 1.0 } else { 0.0 });
        }
        b
    }

    /// How many rows count (weight > 0).
    pub fn rows(&self) -> u64 {
        self.weights.iter().filter(|&&w| w > 0.0).count() as u64
    }
}

/// Distortions of rows held in memory (decoded images).
pub struct Distort<'a> {
    pub distortions: Distortions,
    pub spec: &'a InputSpec,
    pub seed: u64,
}

/// Where the training rows' values come from.
pub enum Source<'a> {
    /// Rows held in memory: decoded images (distorted per batch when `distort` is given) or
    /// cached features.
    Memory { rows: &'a Examples, distort: Option<Distort<'a>> },
    /// Image files decoded (and distorted) per batch.
    Files { decoder: &'a Decoder, images: &'a LabeledImages },
    /// Image files decoded and distorted per batch, then run through a frozen network whose
    /// output is standardised as the cached rows it stands in for.
    Backbone { decoder: &'a Decoder, images: &'a LabeledImages, model: &'a mut Model, standardizer: Option<&'a Standardizer> },
}

impl Source<'_> {
    /// Rows in one epoch.
    pub fn len(&self) -> usize {
        match self {
            Source::Memory { rows, .. } => rows.len(),
            Source::Files { images, .. } | Source::Backbone { images, .. } => images.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The picked rows as a batch of `size`.
    pub fn batch(&mut self, picks: &[Pick], size: usize) -> Result<Prepared> {
        let ex = match self {
            Source::Memory { rows, distort } => gather(rows, picks, distort.as_ref()),
            Source::Files { decoder, images } => decoder.training(images, picks)?,
            Source::Backbone { decoder, images, model, standardizer } => {
                let mut decoded = decoder.training(images, picks)?;
                let pixels = std::mem::take(&mut decoded.images);
                let features = decoded.with_images(model.run(pixels, decoded.len())?);
                match standardizer {
                    Some(s) => features.standardized(s),
                    None => features,
                }
            }
        };
        Ok(Prepared::filled(&ex, size))
    }
}

/// The epoch number of validation draws: no training epoch reaches it, so validation
/// images never share a training image's draw.
const VALIDATION_EPOCH: u64 = u64::MAX;

/// A copy of every row distorted with draws of its own, made once (`--distort-validation`).
pub fn distorted_once(rows: &Examples, distort: &Distort) -> Examples {
    let picks: Vec<Pick> = (0..rows.len()).map(|index| Pick { index, epoch: VALIDATION_EPOCH }).collect();
    gather(rows, &picks, Some(distort))
}

/// Copies of the picked rows, distorted in parallel (distorting 64 150x150 images one after
/// another costs about a GPU train step), landmark targets moved with their pixels.
fn gather(rows: &Examples, picks: &[Pick], distort: Option<&Distort>) -> Examples {
    let mut ex = rows.like(rows.image_len);
    for p in picks {
        let mirrored = distort.is_some_and(|d| d.distortions.mirrors(p.distortion_seed(d.seed)));
        let labels = rows.mirror.labels(rows.labels_of(p.index), mirrored);
        ex.push_row(rows.image(p.index), &labels, rows.landmarks.get(p.index).copied());
    }
    if let Some(d) = distort.filter(|d| !d.distortions.is_off()) {
        ex.images.par_chunks_mut(rows.image_len).zip(picks.par_iter()).for_each(|(image, p)| {
            d.distortions.apply(image, d.spec, p.distortion_seed(d.seed));
        });
        for (l, p) in ex.landmarks.iter_mut().zip(picks) {
            d.distortions.move_landmarks(&mut l.fractions, d.spec, p.distortion_seed(d.seed));
        }
    }
    ex
}

/// Where the batches of a run come from and how they are drawn.
pub struct Batches<'a> {
    pub source: Source<'a>,
    pub order: Order,
    /// The graph's batch.
    pub size: usize,
    pub seed: u64,
}

impl Batches<'_> {
    /// The batch of optimizer step `step` (from 1).
    pub fn step(&mut self, step: u64) -> Result<Prepared> {
        let picks = self.order.picks(self.source.len(), self.size, self.seed, step);
        self.source.batch(&picks, self.size).with_context(|| format!("the batch of step {step}"))
    }
}

/// The dropout masks of micro-batch `k` (of `rows` rows) of optimizer step `step` (from 1),
/// one per Dropout node.
pub fn dropout_masks(m: &Manifest, seed: u64, step: u64, k: usize, rows: usize) -> Vec<Vec<f32>> {
    let n = m.dropout_masks.len();
    m.dropout_masks
        .iter()
        .enumerate()
        .map(|(i, d)| rng::dropout_mask(rows * d.shape.iter().skip(1).product::<usize>(), d.ratio, seed, step, (k * n + i) as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_take_every_row_once_and_end_short() {
        let (n, batch) = (10, 4);
        assert_eq!(Order::steps_per_epoch(n, batch), 3);
        for epoch in 0..2u64 {
            let picks: Vec<Pick> = (1..=3).flat_map(|k| Order::Epochs.picks(n, batch, 7, epoch * 3 + k)).collect();
            let mut rows: Vec<usize> = picks.iter().map(|p| p.index).collect();
            rows.sort();
            assert_eq!(rows, (0..n).collect::<Vec<_>>());
            assert!(picks.iter().all(|p| p.epoch == epoch));
        }
        assert_eq!(Order::Epochs.picks(n, batch, 7, 3).len(), 2, "the last batch of an epoch is short");
        assert_ne!(Order::Epochs.picks(n, batch, 7, 1), Order::Epochs.picks(n, batch, 7, 4), "each epoch is a new shuffle");
    }

    #[test]
    fn a_stream_takes_full_batches_across_epochs() {
        let (n, batch) = (10, 4);
        let picks: Vec<Pick> = (1..=5).flat_map(|s| Order::Stream.picks(n, batch, 7, s)).collect();
        assert!((1..=5).all(|s| Order::Stream.picks(n, batch, 7, s).len() == batch));
        // steps 1-5 cover 20 rows: epochs 0 and 1, each row once in each
        for epoch in 0..2 {
            let mut rows: Vec<usize> = picks.iter().filter(|p| p.epoch == epoch).map(|p| p.index).collect();
            rows.sort();
            assert_eq!(rows, (0..n).collect::<Vec<_>>());
        }
        assert_eq!(picks[8..12].iter().map(|p| p.epoch).collect::<Vec<_>>(), vec![0, 0, 1, 1], "step 3 spans the seam");
        // an epoch's order is the same as Epochs draws it
        let epoch0: Vec<usize> = (1..=3).flat_map(|k| Order::Epochs.picks(n, batch, 7, k)).map(|p| p.index).collect();
        assert_eq!(epoch0, picks[..10].iter().map(|p| p.index).collect::<Vec<_>>());
    }

    #[test]
    fn a_mirrored_row_is_trained_with_the_mirror_images_pose() {
        use crate::augment::Distortions;
        use crate::head::classes::Classes;
        use crate::preprocess::{Filter, InputSpec, Layout};
        use crate::train::data::{LabelMirror, Tasks};
        // 1x2 images, dark left and bright right: a mirrored row starts bright
        let spec = InputSpec { layout: Layout::Nhwc, height: 1, width: 2, mean: [0.5; 3], std: [0.5; 3], resize: Filter::Bilinear };
        let tasks = Tasks { attributes: vec![Classes::mtfl("gender").unwrap(), Classes::mtfl("pose").unwrap()], landmarks: false };
        let mut rows = Examples { mirror: LabelMirror::of(&tasks), ..Examples::with_widths(6, 2, false) };
        let pose = |k: usize| if k == 5 { -1 } else { k as i64 };
        for k in 0..30 {
            rows.push_row(&[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], &[(k % 2) as i64, pose(k % 6)], None);
        }
        let flip = Distortions { flip: true, ..Distortions::default() };
        let out = distorted_once(&rows, &Distort { distortions: flip, spec: &spec, seed: 3 });
        let mut seen = [false; 2];
        for k in 0..30 {
            let mirrored = out.image(k)[0] > 0.0;
            seen[mirrored as usize] = true;
            // left_profile, left, frontal, right, right_profile; unknown stays unknown
            let want = if mirrored && k % 6 < 5 { 4 - (k % 6) as i64 } else { pose(k % 6) };
            assert_eq!(out.labels_of(k), [(k % 2) as i64, want], "row {k}, mirrored {mirrored}");
        }
        assert_eq!(seen, [true, true], "30 coins give both sides");
    }

    #[test]
    fn a_short_batch_is_filled_with_weight_zero_copies() {
        let mut ex = Examples::new(2);
        ex.push(&[1.0, 1.0], 0);
        ex.push(&[2.0, 2.0], 1);
        let b = Prepared::filled(&ex, 5);
        assert_eq!(b.labels, vec![0, 1, 0, 1, 0]);
        assert_eq!(b.weights, vec![1.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(b.images, vec![1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0]);
        assert_eq!(b.rows(), 2);
    }
}
