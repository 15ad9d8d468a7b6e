//! Phase 1: only the new layer trains, on bottlenecks. Without distortions they come from the
//! bottleneck cache (`retrain extract`'s file, made or resumed here), so the frozen backbone
//! costs nothing per step and 1,000 steps take seconds. With distortions every training batch
//! must go through the backbone (a distorted image has no cached bottleneck), as in
//! TensorFlow's retrain.py; validation still reads the cache.
//!
//! The same loop trains phase 2 from a layer up (`--train-from`): there the cached rows are
//! the activations at the cut and the "backbone" is the frozen graph below it.

use std::collections::HashSet;

use anyhow::{bail, Result};
use ndarray::Array2;

use super::images::{self, Decoded, Decoder, LabeledImages};
use super::steps::{self, Outcome, Schedule};
use crate::cache::Cache;
use crate::head::classes::{Classes, Labeled};
use crate::head::standardize::Standardizer;
use crate::model::Model;
use crate::train::batches::dropout_masks;
use crate::train::checkpoint::Checkpoint;
use crate::train::data::Examples;
use crate::train::engine::{Batch, Engine};
use crate::train::epochs::evaluate;

/// Bottleneck rows of one subset.
pub struct Rows {
    pub x: Array2<f32>,
    pub y: Vec<i64>,
}

impl Rows {
    /// Consecutive blocks of `n` rows as model inputs.
    pub fn chunks(&self, n: usize) -> impl Iterator<Item = Decoded> + '_ {
        let index: Vec<usize> = (0..self.y.len()).collect();
        let blocks: Vec<Vec<usize>> = index.chunks(n.max(1)).map(<[usize]>::to_vec).collect();
        blocks.into_iter().map(move |rows| Decoded {
            images: rows.iter().flat_map(|&i| self.x.row(i).to_vec()).collect(),
            labels: rows.iter().map(|&i| self.y[i]).collect(),
            weights: vec![1.0; rows.len()],
        })
    }

    /// The rows standardised by `s`.
    pub fn standardized(&self, s: &Standardizer) -> Rows {
        Rows { x: s.apply(self.x.view()), y: self.y.clone() }
    }

    pub fn examples(&self) -> Examples {
        Examples { images: self.x.iter().copied().collect(), labels: self.y.clone(), image_len: self.x.ncols(), skipped: Vec::new() }
    }
}

/// The cache's labelled rows split as the images are (train, validation), or all (test);
/// only rows whose image is in `images` (a cache may hold more than a --limit run uses).
pub fn cached_rows(cache: &Cache, classes: &Classes, seed: u64, split: bool, images: &HashSet<&str>) -> Result<(Rows, Rows)> {
    let labeled = Labeled::from_cache(cache, classes)?;
    let wanted: Vec<usize> = (0..labeled.y.len()).filter(|&i| images.contains(labeled.paths[i].as_str())).collect();
    let (train, val): (Vec<usize>, Vec<usize>) = wanted.into_iter().partition(|&i| !split || images::is_train(&labeled.paths[i], seed));
    let rows = |index: &[usize]| {
        let part = labeled.select(index);
        Rows { x: part.x, y: part.y.iter().map(|&c| c as i64).collect() }
    };
    Ok((rows(&train), rows(&val)))
}

/// Where phase 1's training batches come from.
pub enum Source<'a> {
    Cached(&'a Rows),
    /// Distorted images through the backbone, its output standardised as the cached rows are.
    Backbone {
        model: &'a mut Model,
        decoder: &'a Decoder,
        images: &'a LabeledImages,
        standardizer: Option<&'a Standardizer>,
    },
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::Cached(rows) => rows.y.len(),
            Source::Backbone { images, .. } => images.len(),
        }
    }

    /// (features, labels, weights) of the given rows.
    fn batch(&mut self, rows: &[usize], step: u64) -> Result<(Vec<f32>, Vec<i64>, Vec<f32>)> {
        match self {
            Source::Cached(r) => Ok((rows.iter().flat_map(|&i| r.x.row(i).to_vec()).collect(), rows.iter().map(|&i| r.y[i]).collect(), vec![1.0; rows.len()])),
            Source::Backbone { model, decoder, images, standardizer } => {
                let d = decoder.batch(images, rows, step, true)?;
                let mut features = model.run(d.images, rows.len())?;
                if let Some(s) = standardizer {
                    let x = Array2::from_shape_vec((rows.len(), s.mean.len()), features)?;
                    features = s.apply(x.view()).into_raw_vec_and_offset().0;
                }
                Ok((features, d.labels, d.weights))
            }
        }
    }
}

pub struct Phase1<'a> {
    pub schedule: Schedule<'a>,
    pub lr: f32,
    pub eval_batch: usize,
}

pub fn run(p: &Phase1, engine: &mut Engine, mut source: Source, val: &Rows, start: Checkpoint) -> Result<Outcome> {
    let m = engine.artifacts.manifest.clone();
    let n = source.len();
    if n == 0 {
        bail!("phase 1 has no training rows");
    }
    let seed = start.seed;
    let val = val.examples();
    let mut step_fn = |engine: &mut Engine, step: u64| {
        let rows = images::step_rows(n, m.batch, seed, step);
        let (images, labels, weights) = source.batch(&rows, step)?;
        let masks = dropout_masks(&m, seed, step);
        engine.step(&Batch { images, labels, weights, masks: &masks }, p.lr, step)
    };
    let mut validate = |engine: &mut Engine| evaluate(engine, &val, p.eval_batch);
    steps::run(&p.schedule, engine, start, &mut step_fn, &mut validate)
}
