//! The one training loop (`retrain train`, both phases of `retrain finetune`): optimizer steps
//! `start.step + 1 ..= steps` on batches from [`Batches`] (built one step ahead on another
//! thread), whole or as accumulated micro-batches, a validation point every `eval_every`
//! steps and at the end (a line of `history.csv`, `last.h5` to resume from), a progress bar,
//! and a stop on Ctrl-C/SIGTERM that keeps the sums since the last point, so the resumed run
//! reports what an uninterrupted one would.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use super::accumulate::Accumulator;
use super::batches::{dropout_masks, Batches, Prepared};
use super::checkpoint::{Checkpoint, Partial, TrainClock};
use super::engine::{Batch, Engine};
use super::history::{self, Point};
use crate::fault;
use crate::interrupt;
use crate::progress;

/// How a step runs: the fused train-step graph, or micro-batches whose gradients the
/// accumulator sums before one update.
pub enum Stepper<'a> {
    Fused,
    Accumulate(&'a mut Accumulator),
}

/// How the run's points and stops are named.
#[derive(Debug, Clone, Copy)]
pub enum Label {
    /// `phase P step S/T` (fine-tuning).
    Phase(u8),
    /// `epoch E/T` (`retrain train`: a point per epoch of `per_epoch` steps).
    Epochs { per_epoch: u64 },
}

/// What one run of the loop needs besides the engine and the batches.
pub struct Steps<'a> {
    pub label: Label,
    pub steps: u64,
    pub eval_every: u64,
    /// Learning rate of a step.
    pub lr: &'a dyn Fn(u64) -> f32,
    pub out_dir: PathBuf,
    pub history: &'a Path,
    pub show_progress: bool,
}

/// Whether training goes on after a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// What happens at a validation point.
pub trait Points {
    /// (loss, accuracy) on the validation rows with the current parameters.
    fn validate(&mut self, engine: &mut Engine) -> Result<(f64, f64)>;

    /// Bookkeeping of the point in the state that `last.h5` then saves (and any other file
    /// it writes first, as `best.h5`).
    fn record(&mut self, state: &mut Checkpoint, p: &Point) -> Result<Flow> {
        state.best_val_accuracy = p.val_accuracy;
        Ok(Flow::Continue)
    }
}

pub struct Outcome {
    pub last: Checkpoint,
    pub points: Vec<Point>,
    /// Steps run by this process.
    pub steps_run: u64,
    /// Wall time of all the run's steps so far, over every run that led here.
    pub seconds: f64,
    /// [`Points::record`] ended the run before `steps`.
    pub stopped: bool,
}

pub fn run(s: &Steps, engine: &mut Engine, stepper: Stepper, start: Checkpoint, batches: Batches, points: &mut dyn Points) -> Result<Outcome> {
    std::fs::create_dir_all(&s.out_dir).with_context(|| format!("cannot create {}", s.out_dir.display()))?;
    if batches.source.is_empty() {
        bail!("{}: no training rows", s.label.name());
    }
    let (first, total, size) = (start.step, s.steps, batches.size);
    let rows_per_epoch = batches.source.len() as f64;
    std::thread::scope(|scope| {
        // Batch s + 1 is built on another thread while the engine runs step s.
        let (want, wanted) = mpsc::channel::<u64>();
        let (give, given) = mpsc::sync_channel::<Result<Prepared>>(1);
        let mut batches = batches;
        scope.spawn(move || {
            for step in wanted {
                if give.send(batches.step(step)).is_err() {
                    break;
                }
            }
        });
        let ask = |step: u64| if step <= total { want.send(step).ok() } else { None };
        ask(first + 1);
        let (clock, sums) = (TrainClock::start(&start), start.partial);
        let mut run = Walk { s, engine, stepper, state: start, clock, points: Vec::new(), sums, since: Instant::now() };
        let bar = progress::bar(total.saturating_sub(first), "steps", s.show_progress);
        let epoch = |step: u64| match s.label {
            Label::Epochs { per_epoch } => step as f64 / per_epoch as f64,
            Label::Phase(_) => (step * size as u64) as f64 / rows_per_epoch,
        };
        let is_point = |step: u64| step.is_multiple_of(s.eval_every) || step == total;
        let mut stopped = false;
        // A run stopped after a point's step and before its validation validates first.
        if run.sums.steps > 0 && is_point(first) && run.point(first, epoch(first), points)? == Flow::Stop {
            stopped = first < total;
        }
        for step in first + 1..=total {
            if stopped {
                break;
            }
            bar.set_message(s.label.progress(step));
            let batch = given.recv().map_err(|_| anyhow!("the batch thread ended"))??;
            ask(step + 1);
            run.step(batch, step)?;
            bar.inc(1);
            fault::reached(fault::Point::Step);
            if let Some(signal) = interrupt::requested() {
                bar.finish_and_clear();
                return Err(run.stopped(step, signal));
            }
            if is_point(step) && bar.suspend(|| run.point(step, epoch(step), points))? == Flow::Stop {
                stopped = step < total;
            }
        }
        bar.finish_and_clear();
        let seconds = run.clock.seconds();
        run.state.train_seconds = seconds;
        Ok(Outcome { seconds, last: run.state, points: run.points, steps_run: total.saturating_sub(first), stopped })
    })
}

/// The loop's state between steps.
struct Walk<'a, 'b> {
    s: &'a Steps<'a>,
    engine: &'a mut Engine,
    stepper: Stepper<'b>,
    state: Checkpoint,
    clock: TrainClock,
    points: Vec<Point>,
    /// Sums since the last point.
    sums: Partial,
    since: Instant,
}

impl Walk<'_, '_> {
    fn step(&mut self, batch: Prepared, step: u64) -> Result<()> {
        let (lr, seed, rows) = ((self.s.lr)(step), self.state.seed, batch.rows());
        let r = match &mut self.stepper {
            Stepper::Fused => {
                let masks = dropout_masks(&self.engine.artifacts.manifest, seed, step, 0, batch.weights.len());
                self.engine.step(
                    &Batch { images: batch.images, labels: batch.labels, targets: batch.targets, weights: batch.weights, masks: &masks },
                    lr,
                    step,
                )?
            }
            Stepper::Accumulate(acc) => acc.step_batch(self.engine, &batch, lr, seed, step)?,
        };
        if !r.loss.is_finite() {
            bail!("{}: loss became {} at step {step}: lower the learning rate", self.s.label.name(), r.loss);
        }
        self.state.step = step;
        self.sums.steps += 1;
        self.sums.loss_sum += r.loss as f64 * rows as f64;
        self.sums.correct += r.correct as f64;
        self.sums.rows += rows;
        Ok(())
    }

    /// Validates, writes the history line and `last.h5`, and stops here on a signal.
    fn point(&mut self, step: u64, epoch: f64, points: &mut dyn Points) -> Result<Flow> {
        let (val_loss, val_accuracy) = points.validate(self.engine)?;
        let rows = self.sums.rows.max(1) as f64;
        let phase = match self.s.label {
            Label::Phase(p) => p,
            Label::Epochs { .. } => 1,
        };
        let p = Point {
            phase,
            step,
            epoch,
            train_loss: self.sums.loss_sum / rows,
            train_accuracy: self.sums.correct / rows,
            val_loss,
            val_accuracy,
            seconds: self.sums.seconds + self.since.elapsed().as_secs_f64(),
        };
        println!("{}", self.s.label.line(&p, self.s.steps));
        self.state.partial = Partial::default();
        self.state.tensors = self.engine.snapshot()?;
        self.state.train_seconds = self.clock.seconds();
        // The history line first: a resume keeps only the lines up to last.h5's step, so a
        // kill between the two never loses or repeats one.
        history::append(self.s.history, &p)?;
        let flow = points.record(&mut self.state, &p)?;
        let last = self.s.out_dir.join("last.h5");
        self.state.write(&last)?;
        self.points.push(p);
        (self.sums, self.since) = (Partial::default(), Instant::now());
        let what = self.s.label.stopped_at_point(step, self.s.steps);
        interrupt::check(|| (format!("{what}; checkpoint {}", last.display()), Some(last.clone())))?;
        Ok(flow)
    }

    /// `last.h5` at `step`, between two points, with the sums since the last one.
    fn stopped(mut self, step: u64, signal: i32) -> anyhow::Error {
        let last = self.s.out_dir.join("last.h5");
        let partial = Partial { seconds: self.sums.seconds + self.since.elapsed().as_secs_f64(), ..self.sums };
        let what = format!("{}; checkpoint {}", self.s.label.stopped_between(step, self.s.steps), last.display());
        let tensors = match self.engine.snapshot() {
            Ok(t) => t,
            Err(e) => return e,
        };
        self.state.stopped(partial, tensors, &self.clock, last, signal, what)
    }
}

impl Label {
    fn name(&self) -> String {
        match self {
            Label::Phase(p) => format!("phase {p}"),
            Label::Epochs { .. } => "training".to_string(),
        }
    }

    fn epoch_of(per_epoch: u64, step: u64) -> (u64, u64) {
        ((step - 1) / per_epoch + 1, (step - 1) % per_epoch + 1)
    }

    fn progress(&self, step: u64) -> String {
        match self {
            Label::Phase(p) => format!("phase {p}"),
            Label::Epochs { per_epoch } => format!("epoch {}", Self::epoch_of(*per_epoch, step).0),
        }
    }

    /// The console line of a point.
    pub fn line(&self, p: &Point, total: u64) -> String {
        let numbers =
            format!("train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4} | {:.1} s", p.train_loss, p.train_accuracy, p.val_loss, p.val_accuracy, p.seconds);
        match self {
            Label::Phase(phase) => format!("phase {phase} step {}/{total}: {numbers}", p.step),
            Label::Epochs { per_epoch } => format!("epoch {}/{}: {numbers}", p.step / per_epoch, total / per_epoch),
        }
    }

    fn stopped_at_point(&self, step: u64, total: u64) -> String {
        match self {
            Label::Phase(p) => format!("phase {p} stopped after step {step} of {total}"),
            Label::Epochs { per_epoch } => format!("stopped after epoch {} of {}", step / per_epoch, total / per_epoch),
        }
    }

    fn stopped_between(&self, step: u64, total: u64) -> String {
        match self {
            Label::Phase(_) => self.stopped_at_point(step, total),
            Label::Epochs { per_epoch } => {
                let (epoch, k) = Self::epoch_of(*per_epoch, step);
                format!("epoch {epoch}: stopped after step {k} of {per_epoch}")
            }
        }
    }
}
