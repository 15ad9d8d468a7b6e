//! What every phase runs: the training loop of [`crate::train::steps`] for a fixed number of
//! steps of the artifacts' batch, drawn as the study and retrain.py draw them
//! ([`Order::Stream`]), with a validation point every `--eval-every` steps; and the cached
//! rows that phases train on when they can (bottlenecks for phase 1, activations at the cut
//! for phase 2 from a layer up).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;

use anyhow::Result;

use crate::cache::Cache;
use crate::head::classes::{Classes, Labeled};
use crate::train::batches::{Batches, Order, Source};
use crate::train::checkpoint::Checkpoint;
use crate::train::data::{Examples, Subsets};
use crate::train::engine::Engine;
use crate::train::history;
use crate::train::score::loss_and_accuracy;
use crate::train::steps::{self, Label, Outcome, Points, Stepper, Steps};

/// The study's validation share for fine-tuning (and `train-head`'s).
pub const VALIDATION_PERCENT: f64 = 10.0;

/// One phase of a run.
pub struct Phase<'a> {
    pub number: u8,
    pub steps: u64,
    pub lr: f32,
    pub eval_every: u64,
    pub eval_batch: usize,
    /// The run's folder (`phaseN/` inside it gets the checkpoints).
    pub out: &'a Path,
    pub history: &'a Path,
    pub show_progress: bool,
}

/// Runs phase `p` from `start` (put on the engine here; the history keeps the lines up to it)
/// on `source`'s rows, validated on `val`.
pub fn run(p: &Phase, engine: &mut Engine, stepper: Stepper, start: Checkpoint, source: Source, val: &Examples) -> Result<Outcome> {
    history::prepare(p.history, p.number, start.step)?;
    engine.load(&start)?;
    let lr = |_step: u64| p.lr;
    let steps = Steps {
        label: Label::Phase(p.number),
        steps: p.steps,
        eval_every: p.eval_every.max(1),
        lr: &lr,
        out_dir: p.out.join(format!("phase{}", p.number)),
        history: p.history,
        show_progress: p.show_progress,
    };
    let batches = Batches { source, order: Order::Stream, size: engine.artifacts.manifest.batch, seed: start.seed };
    steps::run(&steps, engine, stepper, start, batches, &mut Validation { rows: val, eval_batch: p.eval_batch })
}

/// Validation on rows held in memory.
struct Validation<'a> {
    rows: &'a Examples,
    eval_batch: usize,
}

impl Points for Validation<'_> {
    fn validate(&mut self, engine: &mut Engine) -> Result<(f64, f64)> {
        loss_and_accuracy(engine, self.rows, self.eval_batch)
    }
}

/// The cache's labelled rows whose image is in `images` (a cache may hold more than a
/// --limit run uses), split as the images are into (train, validation) by `split`, or all in
/// the first when `split` is None (test).
pub fn cached_rows(cache: &Cache, classes: &Classes, split: Option<&Subsets>, images: &HashSet<&OsStr>) -> Result<(Examples, Examples)> {
    let labeled = Labeled::from_cache(cache, classes)?;
    let wanted: Vec<usize> = (0..labeled.y.len()).filter(|&i| images.contains(labeled.paths[i].as_os_str())).collect();
    let (train, val): (Vec<usize>, Vec<usize>) = wanted.into_iter().partition(|&i| split.is_none_or(|s| s.is_train(&labeled.paths[i])));
    let rows = |index: &[usize]| {
        let part = labeled.select(index);
        Examples::from_rows(part.x, part.y.iter().map(|&c| c as i64).collect())
    };
    Ok((rows(&train), rows(&val)))
}
