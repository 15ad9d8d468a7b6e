//! Training checkpoints: one HDF5 file, readable from Python with h5py.
//!
//! Layout:
//! - root attributes: `format` = "retrain-train-checkpoint", `format_version`, `artifact_sha256`
//!   (sha256 of the artifacts' manifest.json), `optimizer`, `step` (optimizer steps taken),
//!   `epoch` (epochs completed), `seed`, `best_val_accuracy` (-1 before any validation),
//!   `created`, `tool_version`; since distortions and early stopping: `best_val_loss`,
//!   `best_val_loss_epoch`, `distortions`, `schedule` (absent in older files: no distortions,
//!   no best loss yet)
//! - `train_seconds`: training wall time over every run that led here (a resumed run adds its
//!   own); `partial_steps`, `partial_loss_sum`, `partial_correct`, `partial_rows`,
//!   `partial_seconds`: the sums over the steps since the last epoch end (train) or
//!   validation point (finetune), written when a run is stopped between two (Ctrl-C), so the
//!   resumed run reports what an uninterrupted one would (absent: 0)
//! - `/tensors/NNNNN`: one float32 dataset per parameter or optimizer slot, in manifest order,
//!   its attribute `name` = the train-step input it feeds (`conv1/kernel`, `opt:m:conv1/kernel`);
//!   chunked with HDF5's Fletcher-32 checksum, so changed bytes are an error, never weights
//!
//! In Python: `{d.attrs["name"]: d[()] for d in h5py.File(p)["tensors"].values()}`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::artifacts::Artifacts;
use crate::cache::{read_f64_attr, read_i64_attr, read_str_attr, write_str_attr};
use crate::fault::{self, Point};
use crate::interrupt::Interrupted;

pub const FORMAT: &str = "retrain-train-checkpoint";
pub const FORMAT_VERSION: i64 = 1;

/// A named float32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Everything needed to continue training exactly where it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub artifact_sha256: String,
    pub optimizer: String,
    pub step: u64,
    pub epoch: u64,
    pub seed: u64,
    pub best_val_accuracy: f64,
    /// Lowest validation loss so far (infinite before any validation) and its epoch, for
    /// early stopping.
    pub best_val_loss: f64,
    pub best_val_loss_epoch: u64,
    /// The training images' distortions ([`crate::augment::Distortions::describe`]).
    pub distortions: String,
    /// The learning-rate schedule and patience ([`super::schedule::Schedule::describe`]).
    pub schedule: String,
    /// Training wall time of every run that led to this checkpoint.
    pub train_seconds: f64,
    /// Steps taken since the last epoch end or validation point, and their sums.
    pub partial: Partial,
    pub tensors: Vec<NamedTensor>,
}

/// Sums over the optimizer steps since the last epoch end (train) or validation point
/// (finetune); zero at those points.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Partial {
    pub steps: u64,
    pub loss_sum: f64,
    pub correct: f64,
    pub rows: u64,
    pub seconds: f64,
}

/// Training wall time across runs: what the checkpoint a run started from recorded, plus
/// this run's.
pub struct TrainClock {
    before: f64,
    started: std::time::Instant,
}

impl TrainClock {
    pub fn start(from: &Checkpoint) -> TrainClock {
        TrainClock { before: from.train_seconds, started: std::time::Instant::now() }
    }

    pub fn seconds(&self) -> f64 {
        self.before + self.started.elapsed().as_secs_f64()
    }
}

const PARTIAL_KEYS: [&str; 5] = ["partial_steps", "partial_loss_sum", "partial_correct", "partial_rows", "partial_seconds"];

impl Checkpoint {
    pub fn read(path: &Path) -> Result<Checkpoint> {
        let file = crate::cache::open_for_reading(path).map_err(|e| crate::cache::damaged(path, e.into()))?;
        check_format(&file).with_context(|| format!("{} is not a retrain training checkpoint", path.display()))?;
        Self::read_file(&file).map_err(|e| crate::cache::damaged(path, e))
    }

    fn read_file(file: &hdf5::File) -> Result<Checkpoint> {
        let group = file.group("tensors")?;
        let mut names = group.member_names()?;
        names.sort();
        let mut tensors = Vec::with_capacity(names.len());
        for member in names {
            let ds = group.dataset(&member)?;
            tensors.push(NamedTensor { name: read_str_attr(&ds, "name")?, shape: ds.shape(), data: ds.read_raw::<f32>()? });
        }
        Ok(Checkpoint {
            artifact_sha256: read_str_attr(file, "artifact_sha256")?,
            optimizer: read_str_attr(file, "optimizer")?,
            step: read_i64_attr(file, "step")? as u64,
            epoch: read_i64_attr(file, "epoch")? as u64,
            seed: read_i64_attr(file, "seed")? as u64,
            best_val_accuracy: read_f64_attr(file, "best_val_accuracy")?,
            best_val_loss: read_f64_attr(file, "best_val_loss").unwrap_or(f64::INFINITY),
            best_val_loss_epoch: read_i64_attr(file, "best_val_loss_epoch").map_or(0, |e| e as u64),
            distortions: read_str_attr(file, "distortions").unwrap_or_else(|_| "none".to_string()),
            schedule: read_str_attr(file, "schedule").unwrap_or_default(),
            train_seconds: read_f64_attr(file, "train_seconds").unwrap_or(0.0),
            partial: read_partial(file),
            tensors,
        })
    }

    /// Writes to `path` through a temporary file, so a kill or a full disk never leaves half a
    /// checkpoint: the one before stays in place until the new one is whole.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("h5.partial");
        self.write_file(&tmp).map_err(|e| {
            let _ = std::fs::remove_file(&tmp); // free what the failed write took
            crate::write_failed(e, &format!("cannot write checkpoint {}", tmp.display()), &format!("; {} is left as it was", path.display()))
        })?;
        fault::reached(Point::CheckpointPartial);
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        fault::reached(Point::CheckpointWritten);
        Ok(())
    }

    fn write_file(&self, path: &Path) -> Result<()> {
        let file = hdf5::File::create(path)?;
        crate::cache::close_on_exec(&file);
        write_str_attr(&file, "format", FORMAT)?;
        write_str_attr(&file, "artifact_sha256", &self.artifact_sha256)?;
        write_str_attr(&file, "optimizer", &self.optimizer)?;
        write_str_attr(&file, "created", &chrono::Utc::now().to_rfc3339())?;
        write_str_attr(&file, "tool_version", &format!("retrain {}", crate::version()))?;
        write_str_attr(&file, "distortions", &self.distortions)?;
        write_str_attr(&file, "schedule", &self.schedule)?;
        let integers = [
            ("format_version", FORMAT_VERSION),
            ("step", self.step as i64),
            ("epoch", self.epoch as i64),
            ("seed", self.seed as i64),
            ("best_val_loss_epoch", self.best_val_loss_epoch as i64),
        ];
        for (key, value) in integers {
            file.new_attr::<i64>().create(key)?.write_scalar(&value)?;
        }
        let p = &self.partial;
        let reals = [
            ("best_val_accuracy", self.best_val_accuracy),
            ("best_val_loss", self.best_val_loss),
            ("train_seconds", self.train_seconds),
            ("partial_loss_sum", p.loss_sum),
            ("partial_correct", p.correct),
            ("partial_seconds", p.seconds),
        ];
        for (key, value) in reals {
            file.new_attr::<f64>().create(key)?.write_scalar(&value)?;
        }
        for (key, value) in [("partial_steps", p.steps), ("partial_rows", p.rows)] {
            file.new_attr::<i64>().create(key)?.write_scalar(&(value as i64))?;
        }
        let group = file.create_group("tensors")?;
        for (i, t) in self.tensors.iter().enumerate() {
            let builder = group.new_dataset::<f32>();
            // a chunk per tensor, for its checksum (HDF5 chunks only non-empty, n-d shapes)
            let builder = if t.shape.is_empty() || t.shape.contains(&0) { builder } else { builder.chunk(t.shape.clone()).fletcher32() };
            let ds = builder.shape(t.shape.clone()).create(format!("{i:05}").as_str())?;
            ds.write_raw(&t.data)?;
            write_str_attr(&ds, "name", &t.name)?;
        }
        file.flush()?;
        Ok(())
    }

    /// Ends a run that a signal stopped between two boundaries: this state at the step it
    /// reached (`tensors`, the sums since the boundary in `partial`) is written to `path`, and
    /// the error returned says so and how to resume.
    pub fn stopped(&mut self, partial: Partial, tensors: Vec<NamedTensor>, clock: &TrainClock, path: PathBuf, signal: i32, progress: String) -> anyhow::Error {
        (self.partial, self.tensors, self.train_seconds) = (partial, tensors, clock.seconds());
        match self.write(&path) {
            Ok(()) => Interrupted { signal, progress, checkpoint: Some(path) }.into(),
            Err(e) => e,
        }
    }

    /// Refuses a checkpoint of other artifacts, or one missing a tensor the graphs need.
    pub fn check_fits(&self, artifacts: &Artifacts, path: &Path) -> Result<()> {
        if self.artifact_sha256 != artifacts.sha256 {
            bail!(
                "checkpoint {} belongs to other training artifacts (artifact sha256 {}, these are {} in {}); \
                 resume with the artifacts that wrote it",
                path.display(),
                short(&self.artifact_sha256),
                short(&artifacts.sha256),
                artifacts.dir.display()
            );
        }
        for entry in &artifacts.manifest.state {
            match self.tensors.iter().find(|t| t.name == entry.input) {
                None => bail!("checkpoint {} has no tensor '{}'", path.display(), entry.input),
                Some(t) if t.shape != entry.shape => {
                    bail!("checkpoint {}: tensor '{}' has shape {:?}, the artifacts need {:?}", path.display(), t.name, t.shape, entry.shape)
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Refuses to resume with other distortions (the run would be neither the one started nor
    /// a fresh one); reports a changed schedule, which is a legitimate choice when resuming.
    pub fn check_resume(&self, distortions: &str, schedule: &str, path: &Path) -> Result<()> {
        if self.distortions != distortions {
            bail!(
                "checkpoint {} was trained with distortions '{}', this run asks for '{distortions}'; \
                 resume with the same --flip/--random-* flags or start a new run",
                path.display(),
                self.distortions
            );
        }
        if !self.schedule.is_empty() && self.schedule != schedule {
            eprintln!("note: checkpoint {} was trained with schedule '{}', continuing with '{schedule}'", path.display(), self.schedule);
        }
        Ok(())
    }

    pub fn tensor(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn check_format(file: &hdf5::File) -> Result<()> {
    let format = read_str_attr(file, "format")?;
    let version = read_i64_attr(file, "format_version")?;
    if format != FORMAT || version != FORMAT_VERSION {
        bail!("format '{format}' v{version}, expected '{FORMAT}' v{FORMAT_VERSION}");
    }
    Ok(())
}

/// The partial sums, zero where absent (checkpoints written at a boundary by older versions,
/// and the artifacts' init.h5).
fn read_partial(file: &hdf5::File) -> Partial {
    let [steps, loss_sum, correct, rows, seconds] = PARTIAL_KEYS;
    let int = |k| read_i64_attr(file, k).map_or(0, |v| v as u64);
    let real = |k| read_f64_attr(file, k).unwrap_or(0.0);
    Partial { steps: int(steps), loss_sum: real(loss_sum), correct: real(correct), rows: int(rows), seconds: real(seconds) }
}

fn short(hash: &str) -> &str {
    &hash[..12.min(hash.len())]
}
