//! `OUT/history.csv`, the learning curve of every training command: one line per validation
//! point, `phase,step,epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds`
//! (`retrain train` is phase 1 with a point per epoch; `retrain finetune` has phases 1 and 2,
//! `epoch` = passes over the training rows so far).

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

const HEADER: &str = "phase,step,epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds";

/// One validation point of the learning curve.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub phase: u8,
    pub step: u64,
    pub epoch: f64,
    /// Means over the rows of the steps since the previous point.
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// Wall time of those steps and the validation.
    pub seconds: f64,
}

/// Keeps the lines of an earlier run up to (phase, step), the point a resume starts from;
/// starts anew at (1, 0).
pub fn prepare(path: &Path, phase: u8, step: u64) -> Result<()> {
    let old = if phase > 1 || step > 0 { fs::read_to_string(path).unwrap_or_default() } else { String::new() };
    let keep = |l: &&str| {
        let mut f = l.split(',');
        let p: u8 = f.next().and_then(|v| v.parse().ok()).unwrap_or(u8::MAX);
        let s: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
        p < phase || (p == phase && s <= step)
    };
    let kept: Vec<&str> = old.lines().skip(1).filter(keep).collect();
    let text: String = std::iter::once(HEADER).chain(kept).map(|l| format!("{l}\n")).collect();
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn append(path: &Path, p: &Point) -> Result<()> {
    let mut f = fs::OpenOptions::new().append(true).open(path).with_context(|| format!("cannot append to {}", path.display()))?;
    writeln!(f, "{},{},{:.3},{:.6},{:.6},{:.6},{:.6},{:.3}", p.phase, p.step, p.epoch, p.train_loss, p.train_accuracy, p.val_loss, p.val_accuracy, p.seconds)
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// Reads the points back (tests, reports).
pub fn read(path: &Path) -> Result<Vec<Point>> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .skip(1)
        .map(|(n, l)| {
            let v: Vec<&str> = l.split(',').collect();
            let f = |i: usize| -> Result<f64> {
                v.get(i).and_then(|x| x.parse().ok()).with_context(|| format!("{}:line {}: column {} is not a number", path.display(), n + 1, i + 1))
            };
            Ok(Point {
                phase: f(0)? as u8,
                step: f(1)? as u64,
                epoch: f(2)?,
                train_loss: f(3)?,
                train_accuracy: f(4)?,
                val_loss: f(5)?,
                val_accuracy: f(6)?,
                seconds: f(7)?,
            })
        })
        .collect()
}
