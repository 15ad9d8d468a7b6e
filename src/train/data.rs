//! MTFL for training: the labelled images of each subset, and rows (decoded images or cached
//! features) held in memory as one flat tensor.
//!
//! The validation subset is a hold-out of training.txt chosen by file-name hash
//! ([`crate::dataset::split`]), so it does not move when the seed of the shuffling changes:
//! 20% for `retrain train` (the study's Table 5), 10% for `retrain finetune` (its Table 2, and
//! `train-head`'s split, so phase 1 on the bottleneck cache holds out the same faces).

use std::path::Path;

use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2};

use crate::dataset::mtfl::{self, Split};
use crate::dataset::split::{assign, Subset};
use crate::dataset::{Dataset, Sample};
use crate::head::classes::Classes;
use crate::head::standardize::Standardizer;

/// Rows as one flat tensor plus their class indices.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub image_len: usize,
}

impl Examples {
    pub fn new(image_len: usize) -> Examples {
        Examples { images: Vec::new(), labels: Vec::new(), image_len }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * self.image_len..(i + 1) * self.image_len]
    }

    pub fn push(&mut self, row: &[f32], label: i64) {
        self.images.extend_from_slice(row);
        self.labels.push(label);
    }

    /// The rows as a matrix [rows, image_len].
    pub fn view(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.len(), self.image_len), &self.images).expect("images hold len x image_len values")
    }

    /// The rows standardised by `s`.
    pub fn standardized(&self, s: &Standardizer) -> Examples {
        Examples { images: s.apply(self.view()).into_raw_vec_and_offset().0, labels: self.labels.clone(), image_len: self.image_len }
    }

    /// The rows of a matrix with their labels.
    pub fn from_rows(x: Array2<f32>, labels: Vec<i64>) -> Examples {
        let image_len = x.ncols();
        // moved, not copied: these can be a cut cache's 3 GB
        let x = if x.is_standard_layout() { x } else { x.as_standard_layout().to_owned() };
        Examples { images: x.into_raw_vec_and_offset().0, labels, image_len }
    }

    /// Rows `range`, copied.
    pub fn part(&self, range: std::ops::Range<usize>) -> Examples {
        let end = range.end.min(self.len());
        Examples {
            images: self.images[range.start * self.image_len..end * self.image_len].to_vec(),
            labels: self.labels[range.start..end].to_vec(),
            image_len: self.image_len,
        }
    }
}

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
    pub fn is_train(&self, key: &str) -> bool {
        assign(key, self.seed, self.validation_percent) == Subset::Train
    }

    /// (train, validation, test) of MTFL for `classes.attribute`.
    pub fn of_mtfl(&self, root: &Path, classes: &Classes) -> Result<[LabeledImages; 3]> {
        let training = mtfl::load(root, Split::Training)?;
        let column = label_column(&training, &classes.attribute)?;
        let cut = |v: Vec<Sample>| -> Vec<Sample> { v.into_iter().take(self.limit.unwrap_or(usize::MAX)).collect() };
        let (train, val): (Vec<Sample>, Vec<Sample>) = cut(training.samples).into_iter().partition(|s| self.is_train(&s.key));
        let test = if self.test { cut(mtfl::load(root, Split::Testing)?.samples) } else { Vec::new() };
        let sets = [train, val, test].map(|v| LabeledImages::of(v.into_iter(), column, classes));
        if sets[0].is_empty() || sets[1].is_empty() {
            bail!("{}: no labelled training or validation image for '{}'", root.display(), classes.attribute);
        }
        Ok(sets)
    }
}
