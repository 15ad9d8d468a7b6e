//! The step loop both phases share: a fixed number of optimizer steps, validation every
//! `eval_every` steps and at the end, `last.h5` written at each validation (to resume), one
//! line of `history.csv` per validation, a progress bar.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::progress;
use crate::train::checkpoint::Checkpoint;
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
    pub steps_run: u64,
    pub seconds: f64,
}

/// Runs steps `start.step + 1 ..= steps`; `step_fn(engine, step)` takes one optimizer step,
/// `validate(engine)` gives (loss, accuracy) on the validation subset.
pub fn run(
    s: &Schedule,
    engine: &mut Engine,
    mut start: Checkpoint,
    step_fn: &mut dyn FnMut(&mut Engine, u64) -> Result<StepResult>,
    validate: &mut dyn FnMut(&mut Engine) -> Result<(f64, f64)>,
) -> Result<Outcome> {
    fs::create_dir_all(&s.out_dir).with_context(|| format!("cannot create {}", s.out_dir.display()))?;
    let first = start.step;
    let bar = progress::bar(s.steps.saturating_sub(first), "steps", s.show_progress);
    bar.set_message(format!("phase {}", s.phase));
    let (started, mut since) = (Instant::now(), Instant::now());
    let (mut loss, mut correct, mut rows, mut points) = (0f64, 0f64, 0usize, Vec::new());
    for step in first + 1..=s.steps {
        let r = step_fn(engine, step)?;
        if !r.loss.is_finite() {
            bail!("phase {}: loss became {} at step {step}: lower the learning rate", s.phase, r.loss);
        }
        loss += r.loss as f64;
        correct += r.correct as f64;
        rows += s.batch;
        bar.inc(1);
        if step % s.eval_every == 0 || step == s.steps {
            let (val_loss, val_accuracy) = validate(engine)?;
            let taken = (step - points.last().map_or(first, |p: &Point| p.step)) as f64;
            let p = Point {
                phase: s.phase,
                step,
                train_loss: loss / taken,
                train_accuracy: correct / rows as f64,
                val_loss,
                val_accuracy,
                seconds: since.elapsed().as_secs_f64(),
            };
            bar.suspend(|| println!("{}", line(&p, s.steps)));
            start.step = step;
            start.best_val_accuracy = val_accuracy;
            start.tensors = engine.snapshot()?;
            start.write(&s.out_dir.join("last.h5"))?;
            append_history(s.history, &p)?;
            points.push(p);
            (loss, correct, rows, since) = (0.0, 0.0, 0, Instant::now());
        }
    }
    bar.finish_and_clear();
    Ok(Outcome { last: start, points, steps_run: s.steps.saturating_sub(first), seconds: started.elapsed().as_secs_f64() })
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
