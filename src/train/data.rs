//! MTFL for training: the labelled images of each subset, and rows (decoded images or cached
//! features) held in memory as one flat tensor.
//!
//! The validation subset is a hold-out of training.txt chosen by file-name hash
//! ([`crate::dataset::split`]), so it does not move when the seed of the shuffling changes:
//! 20% for `retrain train` (the study's Table 5), 10% for `retrain finetune` (its Table 2, and
//! `train-head`'s split, so phase 1 on the bottleneck cache holds out the same faces).

use std::ffi::OsStr;
use std::path::Path;

use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2};

use crate::dataset::mtfl::{self, Split};
use crate::dataset::split::{assign, Subset};
use crate::dataset::{Dataset, Sample};
use crate::head::classes::Classes;
use crate::head::standardize::Standardizer;

/// Rows as one flat tensor plus what each is trained to give: `label_width` class indices
/// (one attribute: 1; a multi-task graph: one per class task, -1 where unknown) and, with
/// `with_landmarks`, its landmarks.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub image_len: usize,
    pub label_width: usize,
    pub landmarks: Vec<Landmarks>,
    pub with_landmarks: bool,
    /// What a mirrored row's labels become.
    pub mirror: LabelMirror,
}

/// What a left-right mirror of an image does to its labels: in label column `c`, class `k`
/// becomes `columns[c][k]` (pose's left and right classes swap, other classes stay). The
/// `--flip` distortion applies it with the pixels and the landmarks, so a mirrored face turned
/// left is trained as turned right. Empty (the default): every label stays.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelMirror {
    columns: Vec<Vec<usize>>,
}

impl LabelMirror {
    pub fn of(tasks: &Tasks) -> LabelMirror {
        LabelMirror { columns: tasks.attributes.iter().map(Classes::mirrored).collect() }
    }

    /// One row's class indices, as the mirrored image's when `mirrored` (-1 = unknown stays).
    pub fn labels(&self, labels: &[i64], mirrored: bool) -> Vec<i64> {
        let mut out = labels.to_vec();
        if !mirrored {
            return out;
        }
        for (label, column) in out.iter_mut().zip(&self.columns) {
            if let Some(&k) = usize::try_from(*label).ok().and_then(|k| column.get(k)) {
                *label = k as i64;
            }
        }
        out
    }
}

/// A row's landmark targets: x1..x5, y1..y5 as fractions of its crop window (of the model
/// input), and that window's width and height in the image's pixels, to score errors in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Landmarks {
    pub fractions: [f32; 10],
    pub window: [f32; 2],
}

impl Landmarks {
    /// An image whose [`Landmarks::error`] is above this counts as a failure (10% of the
    /// inter-ocular distance, the usual cut in the landmark literature).
    pub const FAILURE_ERROR: f64 = 0.1;

    /// Mean distance between `predicted` (fractions) and these landmarks over the five
    /// points, as a fraction of the inter-ocular distance (between the eye centres).
    pub fn error(&self, predicted: &[f32]) -> f64 {
        let (w, h) = (self.window[0] as f64, self.window[1] as f64);
        let t = &self.fractions;
        let distance = |dx: f32, dy: f32| (dx as f64 * w).hypot(dy as f64 * h);
        let mean = (0..5).map(|j| distance(predicted[j] - t[j], predicted[j + 5] - t[j + 5])).sum::<f64>() / 5.0;
        mean / distance(t[0] - t[1], t[5] - t[6]).max(1e-9)
    }
}

impl Examples {
    /// Rows of `image_len` values with one label each.
    pub fn new(image_len: usize) -> Examples {
        Examples::with_widths(image_len, 1, false)
    }

    pub fn with_widths(image_len: usize, label_width: usize, with_landmarks: bool) -> Examples {
        Examples { images: Vec::new(), labels: Vec::new(), image_len, label_width, landmarks: Vec::new(), with_landmarks, mirror: LabelMirror::default() }
    }

    /// Empty rows of another length with this truth layout.
    pub fn like(&self, image_len: usize) -> Examples {
        Examples { mirror: self.mirror.clone(), ..Examples::with_widths(image_len, self.label_width, self.with_landmarks) }
    }

    /// Regression targets per row (the landmark fractions; none without landmarks).
    pub fn target_width(&self) -> usize {
        if self.with_landmarks {
            10
        } else {
            0
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len() / self.label_width.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * self.image_len..(i + 1) * self.image_len]
    }

    /// Row `i`'s class indices.
    pub fn labels_of(&self, i: usize) -> &[i64] {
        &self.labels[i * self.label_width..(i + 1) * self.label_width]
    }

    /// Row `i`'s regression targets.
    pub fn targets_of(&self, i: usize) -> &[f32] {
        self.landmarks.get(i).map_or(&[], |l| &l.fractions)
    }

    /// Appends a row with one label (one-attribute rows).
    pub fn push(&mut self, row: &[f32], label: i64) {
        self.push_row(row, &[label], None);
    }

    /// Appends a row with its labels and landmarks (which rows `with_landmarks` must have).
    pub fn push_row(&mut self, row: &[f32], labels: &[i64], landmarks: Option<Landmarks>) {
        debug_assert_eq!((labels.len(), landmarks.is_some()), (self.label_width, self.with_landmarks));
        self.images.extend_from_slice(row);
        self.labels.extend_from_slice(labels);
        self.landmarks.extend(landmarks);
    }

    /// The rows as a matrix [rows, image_len].
    pub fn view(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.len(), self.image_len), &self.images).expect("images hold len x image_len values")
    }

    /// The same rows with other values (features computed from the images, say).
    pub fn with_images(&self, images: Vec<f32>) -> Examples {
        let image_len = images.len() / self.len().max(1);
        Examples { images, image_len, labels: self.labels.clone(), landmarks: self.landmarks.clone(), mirror: self.mirror.clone(), ..*self }
    }

    /// The rows standardised by `s`.
    pub fn standardized(&self, s: &Standardizer) -> Examples {
        self.with_images(s.apply(self.view()).into_raw_vec_and_offset().0)
    }

    /// The rows of a matrix with their labels.
    pub fn from_rows(x: Array2<f32>, labels: Vec<i64>) -> Examples {
        let image_len = x.ncols();
        // moved, not copied: these can be a cut cache's 3 GB
        let x = if x.is_standard_layout() { x } else { x.as_standard_layout().to_owned() };
        Examples { images: x.into_raw_vec_and_offset().0, labels, ..Examples::new(image_len) }
    }

    /// Rows `range`, copied.
    pub fn part(&self, range: std::ops::Range<usize>) -> Examples {
        let end = range.end.min(self.len());
        let mut part = self.like(self.image_len);
        for i in range.start..end {
            part.push_row(self.image(i), self.labels_of(i), self.landmarks.get(i).copied());
        }
        part
    }
}

/// What each row is trained to give: a class of each attribute and, with `landmarks`, the
/// five landmarks (one attribute for single-task graphs, every class task of a multi-task one).
#[derive(Debug, Clone)]
pub struct Tasks {
    pub attributes: Vec<Classes>,
    pub landmarks: bool,
}

impl Tasks {
    pub fn one(classes: Classes) -> Tasks {
        Tasks { attributes: vec![classes], landmarks: false }
    }

    fn names(&self) -> String {
        let mut names: Vec<&str> = self.attributes.iter().map(|c| c.attribute.as_str()).collect();
        if self.landmarks {
            names.insert(0, "landmarks");
        }
        names.join(", ")
    }
}

/// Samples with a known class for at least one attribute (and landmarks where the tasks
/// need them), with each attribute's class index (-1 where unknown), `width` per sample.
#[derive(Debug, Clone, Default)]
pub struct LabeledImages {
    pub samples: Vec<Sample>,
    pub classes: Vec<i64>,
    pub width: usize,
    /// The samples' landmarks are training targets (as fractions of the crop window).
    pub landmarks: bool,
    /// What a mirrored sample's classes become.
    pub mirror: LabelMirror,
}

impl LabeledImages {
    fn of(samples: impl Iterator<Item = Sample>, columns: &[usize], tasks: &Tasks) -> LabeledImages {
        let mut set = LabeledImages { width: columns.len(), landmarks: tasks.landmarks, mirror: LabelMirror::of(tasks), ..LabeledImages::default() };
        for s in samples {
            let classes: Vec<i64> = columns.iter().zip(&tasks.attributes).map(|(&column, c)| c.index_of(s.labels[column]).map_or(-1, |k| k as i64)).collect();
            let usable = classes.iter().any(|&c| c >= 0) && (!tasks.landmarks || s.landmarks.is_some());
            if usable {
                set.classes.extend(classes);
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

    /// Sample `i`'s class indices.
    pub fn classes_of(&self, i: usize) -> &[i64] {
        &self.classes[i * self.width..(i + 1) * self.width]
    }

    /// The truth layout of these samples' rows.
    pub fn examples(&self, image_len: usize) -> Examples {
        Examples { mirror: self.mirror.clone(), ..Examples::with_widths(image_len, self.width, self.landmarks) }
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

/// How MTFL is split for one run.
#[derive(Debug, Clone, Copy)]
pub struct Subsets {
    /// Share of training.txt held out for validation, by file-name hash.
    pub validation_percent: f64,
    pub seed: u64,
    /// Only the first N images of each list (tests, quick looks).
    pub limit: Option<usize>,
    /// Read the test list (off while choosing settings, which use validation alone).
    pub test: bool,
}

impl Subsets {
    /// Whether a training-list name falls in the training part of the hold-out.
    pub fn is_train(&self, key: &OsStr) -> bool {
        assign(key, self.seed, self.validation_percent) == Subset::Train
    }

    /// (train, validation, test) of MTFL for `tasks`.
    pub fn of_mtfl(&self, root: &Path, tasks: &Tasks) -> Result<[LabeledImages; 3]> {
        let training = mtfl::load(root, Split::Training)?;
        let columns: Vec<usize> = tasks.attributes.iter().map(|c| label_column(&training, &c.attribute)).collect::<Result<_>>()?;
        let cut = |v: Vec<Sample>| -> Vec<Sample> { v.into_iter().take(self.limit.unwrap_or(usize::MAX)).collect() };
        let (train, val): (Vec<Sample>, Vec<Sample>) = cut(training.samples).into_iter().partition(|s| self.is_train(&s.key));
        let test = if self.test { cut(mtfl::load(root, Split::Testing)?.samples) } else { Vec::new() };
        let sets = [train, val, test].map(|v| LabeledImages::of(v.into_iter(), &columns, tasks));
        if sets[0].is_empty() || sets[1].is_empty() {
            bail!("{}: no labelled training or validation image for {}", root.display(), tasks.names());
        }
        Ok(sets)
    }
}

/// A row of a step: its image and the epoch (pass over the rows) it is drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub epoch: u64,
}

impl Pick {
    /// The seed of this row's distortion.
    pub fn distortion_seed(&self, seed: u64) -> u64 {
        crate::rng::distortion_seed(seed, self.epoch, self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::Window;

    #[test]
    fn landmark_error_is_in_pixels_over_the_inter_ocular_distance() {
        // eyes 40 px apart in a 200 x 100 window; every point 4 px off in x: 10%
        let window = Window { x: 50.0, y: 20.0, w: 200.0, h: 100.0 };
        let points = [80.0, 120.0, 100.0, 85.0, 115.0, 50.0, 50.0, 70.0, 90.0, 90.0];
        let truth = Landmarks { fractions: window.to_fractions(&points), window: [window.w, window.h] };
        assert_eq!(window.to_pixels(&truth.fractions), points);
        assert!(truth.error(&truth.fractions).abs() < 1e-12);
        let mut shifted = points;
        shifted[..5].iter_mut().for_each(|x| *x += 4.0);
        assert!((truth.error(&window.to_fractions(&shifted)) - 0.1).abs() < 1e-6);
        // 4 px in y is 0.04 of this window's height but 0.02 of its width: pixels, not fractions
        let mut down = points;
        down[5..].iter_mut().for_each(|y| *y += 4.0);
        assert!((truth.error(&window.to_fractions(&down)) - 0.1).abs() < 1e-6);
    }
}
