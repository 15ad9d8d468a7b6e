//! Phase 2: every layer trains, on decoded (and, if asked, distorted) images, each optimizer
//! step as micro-batches whose gradients are summed on the device ([`Accumulator`]). The next
//! step's images are decoded on another thread while the current step runs.

use std::thread::{self, ScopedJoinHandle};

use anyhow::Result;

use super::images::{self, Decoded, Decoder, LabeledImages};
use super::steps::{self, Outcome, Schedule};
use crate::train::accumulate::Accumulator;
use crate::train::checkpoint::Checkpoint;
use crate::train::data::Examples;
use crate::train::engine::{Batch, Engine, StepResult};
use crate::train::epochs::evaluate;
use crate::train::rng;

pub struct Phase2<'a> {
    pub schedule: Schedule<'a>,
    pub lr: f32,
    pub eval_batch: usize,
}

pub fn run(
    p: &Phase2,
    engine: &mut Engine,
    acc: &mut Accumulator,
    decoder: &Decoder,
    train: &LabeledImages,
    val: &Examples,
    start: Checkpoint,
) -> Result<Outcome> {
    let (batch, seed, total) = (p.schedule.batch, start.seed, p.schedule.steps);
    let decode = |step: u64| decoder.batch(train, &images::step_rows(train.len(), batch, seed, step), step, true);
    thread::scope(|scope| {
        let mut pending: Option<(u64, ScopedJoinHandle<Result<Decoded>>)> = None;
        let mut step_fn = |engine: &mut Engine, step: u64| -> Result<StepResult> {
            let decoded = match pending.take() {
                Some((s, handle)) if s == step => handle.join().expect("the decoding thread does not panic")?,
                _ => decode(step)?,
            };
            if step < total {
                pending = Some((step + 1, scope.spawn(move || decode(step + 1))));
            }
            optimizer_step(engine, acc, &decoded, p.lr, seed, step)
        };
        let mut validate = |engine: &mut Engine| evaluate(engine, val, p.eval_batch);
        steps::run(&p.schedule, engine, start, &mut step_fn, &mut validate)
    })
}

/// One optimizer step over `d`, cut into the accumulator's micro-batches (the last padded
/// with weight-0 copies of its first row).
fn optimizer_step(engine: &mut Engine, acc: &mut Accumulator, d: &Decoded, lr: f32, seed: u64, step: u64) -> Result<StepResult> {
    let m = &engine.artifacts.manifest;
    let (micro, rows) = (acc.micro, d.labels.len());
    let image_len = d.images.len() / rows;
    let pieces: Vec<(Vec<usize>, Vec<Vec<f32>>)> = (0..rows.div_ceil(micro))
        .map(|k| {
            let index: Vec<usize> = (0..micro).map(|j| if k * micro + j < rows { k * micro + j } else { k * micro }).collect();
            let masks = m
                .dropout_masks
                .iter()
                .enumerate()
                .map(|(i, mask)| {
                    let len = micro * mask.shape.iter().skip(1).product::<usize>();
                    rng::dropout_mask(len, mask.ratio, seed, step, (k * m.dropout_masks.len() + i) as u64)
                })
                .collect();
            (index, masks)
        })
        .collect();
    let batches: Vec<Batch> = pieces
        .iter()
        .enumerate()
        .map(|(k, (index, masks))| Batch {
            images: index.iter().flat_map(|&r| d.images[r * image_len..(r + 1) * image_len].iter().copied()).collect(),
            labels: index.iter().map(|&r| d.labels[r]).collect(),
            weights: index.iter().enumerate().map(|(j, &r)| if k * micro + j < rows { d.weights[r] } else { 0.0 }).collect(),
            masks,
        })
        .collect();
    acc.step(engine, &batches, lr, step)
}
