//! The step loop both phases share: a fixed number of optimizer steps, validation every
//! `eval_every` steps and at the end, `last.h5` written at each validation (to resume), one
//! line of `history.csv` per validation, a progress bar.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::fault;
use crate::interrupt;
use crate::progress;
use crate::train::checkpoint::{Checkpoint, Partial, TrainClock};
use crate::train::engine::{Engine, StepResult};

const HISTORY_HEADER: &str = "phase,step,train_loss,train_accuracy,val_loss,val_accuracy,seconds";

/// One validation point of the learning curve.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub phase: u8,
    pub step: u64,
    /// Means over the steps since the previous point.
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// Wall time of those steps and the validation.
    pub seconds: f64,
}

/// What one phase's loop needs besides the engine.
pub struct Schedule<'a> {
    pub phase: u8,
    pub steps: u64,
    pub eval_every: u64,
    pub batch: usize,
    pub out_dir: PathBuf,
    pub history: &'a Path,
    pub show_progress: bool,
}

pub struct Outcome {
    pub last: Checkpoint,
    pub points: Vec<Point>,
    /// Steps run by this process.
    pub steps_run: u64,
    /// Wall time of all the phase's steps so far, over every run that led here.
    pub seconds: f64,
}

/// Runs steps `start.step + 1 ..= steps`; `step_fn(engine, step)` takes one optimizer step,
/// `validate(engine)` gives (loss, accuracy) on the validation subset. Stopped by a signal,
/// it writes `last.h5` at the step it reached (with the sums since the last validation, so
/// the resumed run's curve is the uninterrupted one's) and returns [`interrupt::Interrupted`].
pub fn run(
    s: &Schedule,
    engine: &mut Engine,
    mut start: Checkpoint,
    step_fn: &mut dyn FnMut(&mut Engine, u64) -> Result<StepResult>,
    validate: &mut dyn FnMut(&mut Engine) -> Result<(f64, f64)>,
) -> Result<Outcome> {
    fs::create_dir_all(&s.out_dir).with_context(|| format!("cannot create {}", s.out_dir.display()))?;
    let first = start.step;
    let last = s.out_dir.join("last.h5");
    let clock = TrainClock::start(&start);
    let bar = progress::bar(s.steps.saturating_sub(first), "steps", s.show_progress);
    bar.set_message(format!("phase {}", s.phase));
    let (mut sums, mut since, mut points) = (start.partial, Instant::now(), Vec::new());
    for step in first + 1..=s.steps {
        let r = step_fn(engine, step)?;
        if !r.loss.is_finite() {
            bail!("phase {}: loss became {} at step {step}: lower the learning rate", s.phase, r.loss);
        }
        sums.steps += 1;
        sums.loss_sum += r.loss as f64;
        sums.correct += r.correct as f64;
        sums.rows += s.batch as u64;
        bar.inc(1);
        fault::reached(fault::Point::Step);
        if step % s.eval_every == 0 || step == s.steps {
            let (val_loss, val_accuracy) = validate(engine)?;
            let (train_loss, train_accuracy) = (sums.loss_sum / sums.steps as f64, sums.correct / sums.rows as f64);
            let p = Point { phase: s.phase, step, train_loss, train_accuracy, val_loss, val_accuracy, seconds: sums.seconds + since.elapsed().as_secs_f64() };
            bar.suspend(|| println!("{}", line(&p, s.steps)));
            (start.step, start.best_val_accuracy, start.partial) = (step, val_accuracy, Partial::default());
            start.tensors = engine.snapshot()?;
            start.train_seconds = clock.seconds();
            // The history line first: a resume keeps only the lines up to last.h5's step.
            append_history(s.history, &p)?;
            start.write(&last)?;
            points.push(p);
            (sums, since) = (Partial::default(), Instant::now());
            interrupt::check(|| (format!("phase {} stopped after step {step} of {}; checkpoint {}", s.phase, s.steps, last.display()), Some(last.clone())))?;
        } else if let Some(signal) = interrupt::requested() {
            bar.finish_and_clear();
            start.step = step;
            let partial = Partial { seconds: sums.seconds + since.elapsed().as_secs_f64(), ..sums };
            let progress = format!("phase {} stopped after step {step} of {}; checkpoint {}", s.phase, s.steps, last.display());
            return Err(start.stopped(partial, engine.snapshot()?, &clock, last, signal, progress));
        }
    }
    bar.finish_and_clear();
    start.train_seconds = clock.seconds();
    Ok(Outcome { seconds: start.train_seconds, last: start, points, steps_run: s.steps.saturating_sub(first) })
}

pub fn line(p: &Point, total: u64) -> String {
    format!(
        "phase {} step {}/{total}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4} | {:.1} s",
        p.phase, p.step, p.train_loss, p.train_accuracy, p.val_loss, p.val_accuracy, p.seconds
    )
}

/// Keeps the lines of an earlier run before (phase, step) — a resume — else starts anew.
pub fn prepare_history(path: &Path, phase: u8, step: u64) -> Result<()> {
    let old = if phase > 1 || step > 0 { fs::read_to_string(path).unwrap_or_default() } else { String::new() };
    let keep = |l: &&str| {
        let mut f = l.split(',');
        let (p, s): (u8, u64) = (f.next().and_then(|v| v.parse().ok()).unwrap_or(u8::MAX), f.next().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX));
        p < phase || (p == phase && s <= step)
    };
    let kept: Vec<&str> = old.lines().skip(1).filter(keep).collect();
    let text: String = std::iter::once(HISTORY_HEADER).chain(kept).map(|l| format!("{l}\n")).collect();
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn append_history(path: &Path, p: &Point) -> Result<()> {
    let mut f = fs::OpenOptions::new().append(true).open(path).with_context(|| format!("cannot append to {}", path.display()))?;
    writeln!(f, "{},{},{:.6},{:.6},{:.6},{:.6},{:.3}", p.phase, p.step, p.train_loss, p.train_accuracy, p.val_loss, p.val_accuracy, p.seconds)?;
    Ok(())
}
