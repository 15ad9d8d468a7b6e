//! `retrain train`: epochs of the training loop ([`super::steps`]) with a validation point at
//! each epoch's end, `best.h5` at the best validation accuracy, a learning-rate schedule and
//! early stopping on validation loss, and at the end the test accuracy and the exported model
//! of the best epoch.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::artifacts::Artifacts;
use super::batches::{self, Batches, Distort, Order, Source};
use super::checkpoint::Checkpoint;
use super::data::{Examples, Subsets, Tasks};
use super::decode::Decoder;
use super::engine::Engine;
use super::history::{self, Point};
use super::schedule::Schedule;
use super::score::{self, Head, TaskScore};
use super::steps::{self, Flow, Label, Points, Stepper, Steps};
use super::weights;
use crate::augment::Distortions;
use crate::description::Description;
use crate::head::classes::Classes;
use crate::preprocess::{Crop, InputSpec, Preprocess};
use crate::runtime::{self, Device, SessionConfig};

/// Hold-out share of training.txt for validation, as in the study's Table 5.
pub const VALIDATION_PERCENT: f64 = 20.0;

/// Everything `retrain train` takes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub artifacts: PathBuf,
    pub mtfl: PathBuf,
    pub attribute: String,
    pub crop: Crop,
    /// The crop of the test images (MTFL's are face crops already: `original` scores them
    /// without their landmarks).
    pub test_crop: Crop,
    /// Train until this many epochs are complete (a resumed run counts the earlier ones).
    pub epochs: u64,
    pub lr: f32,
    /// Learning-rate decay and early stopping.
    pub schedule: Schedule,
    /// Random distortions of training images (never of test images).
    pub distortions: Distortions,
    /// Distort the validation images too, once, with draws of their own (the same in every
    /// epoch): a landmark model is then judged on windows that, like a face detector's, do
    /// not sit exactly on the annotated landmarks (an undistorted face crop is placed from
    /// them, so the mean face already scores well on it).
    pub distort_validation: bool,
    /// Must equal the artifacts' batch when given (the train graph has a fixed batch).
    pub batch: Option<usize>,
    pub device: Device,
    pub threads: Option<usize>,
    pub out: PathBuf,
    pub seed: u64,
    pub resume: Option<PathBuf>,
    /// Only the first N images of each MTFL list (tests, quick looks).
    pub limit: Option<usize>,
    pub eval_batch: usize,
    /// Stop at the first unreadable image instead of skipping it.
    pub strict: bool,
    /// Score the best epoch on the test list at the end. Off while choosing settings, which
    /// must be chosen on validation alone.
    pub score_test: bool,
    pub show_progress: bool,
}

/// What a run achieved; also written to `OUT/result.json` ([`TrainSummary::to_json`]) and read
/// back by [`crate::runs::RunResult::read`]. Fields that files of earlier versions lack read as
/// their default: `?` for a crop that was not recorded, no schedule, distortions or early
/// stopping (there were none), NaN for the best validation loss, no per-task scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub attribute: String,
    #[serde(default = "not_recorded")]
    pub crop: String,
    #[serde(default = "not_recorded")]
    pub test_crop: String,
    pub seed: u64,
    pub artifact_sha256: String,
    pub optimizer: String,
    pub lr: f32,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub distortions: Distortions,
    #[serde(default)]
    pub distort_validation: bool,
    pub batch: usize,
    pub epochs_completed: u64,
    pub epochs_run_now: u64,
    /// Set when early stopping ended the run before `--epochs`.
    #[serde(default)]
    pub stopped_early: bool,
    /// NaN where the file does not say (written before it was recorded, or null: not finite).
    #[serde(default = "unknown_loss", deserialize_with = "score::nan_if_null")]
    pub best_val_loss: f64,
    /// 0 where the file does not say.
    #[serde(default)]
    pub best_val_loss_epoch: u64,
    pub best_epoch: u64,
    pub best_val_accuracy: f64,
    /// `None` when the run did not read the test list (`score_test` off).
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    /// The best epoch's scores per task (one for a one-attribute graph) on validation, and
    /// on test when it was read.
    #[serde(default)]
    pub val_tasks: Vec<TaskScore>,
    #[serde(default)]
    pub test_tasks: Option<Vec<TaskScore>>,
    pub train_images: usize,
    pub val_images: usize,
    pub test_images: usize,
    /// Training wall time of all `epochs_completed`, over every run that led here.
    pub train_seconds: f64,
    pub seconds_per_epoch: f64,
    pub device: String,
    pub model: PathBuf,
}

/// A crop that a file of an earlier version did not record.
fn not_recorded() -> String {
    "?".to_string()
}

fn unknown_loss() -> f64 {
    f64::NAN
}

impl TrainSummary {
    /// The `kind` of its `result.json`.
    pub const KIND: &'static str = "train";

    /// The text of `result.json`: `"kind": "train"`, then every field.
    pub fn to_json(&self) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Written<'a> {
            kind: &'static str,
            #[serde(flatten)]
            summary: &'a TrainSummary,
        }
        Ok(serde_json::to_string_pretty(&Written { kind: Self::KIND, summary: self })? + "\n")
    }
}

pub fn train(opts: &TrainOptions) -> Result<TrainSummary> {
    opts.distortions.check()?;
    opts.schedule.check()?;
    let artifacts = Artifacts::open(&opts.artifacts)?;
    let m = &artifacts.manifest;
    if let Some(b) = opts.batch.filter(|&b| b != m.batch) {
        bail!(
            "--batch {b}: the artifacts in {} were made for batch {} (the train graph has a fixed batch); \
               regenerate them with scripts/make_artifacts.py --batch {b}",
            artifacts.dir.display(),
            m.batch
        );
    }
    let config = SessionConfig { intra_threads: opts.threads, ..SessionConfig::new(opts.device) };
    let mut engine = Engine::new(artifacts.clone(), &config)?;
    let start = starting_point(opts, &artifacts)?;
    let (tasks, heads) = tasks_of(opts, &artifacts)?;
    fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;

    let sets = load_sets(opts, &artifacts, &tasks, start.seed)?;
    engine.load(&start)?;
    eprintln!("{}", runtime::describe_provider(&config));
    eprintln!(
        "training {} on {} train / {} validation images ({} test), batch {}, {} lr {} ({}), distortions {}, seed {}, from epoch {}",
        heads.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", "),
        sets.train.len(),
        sets.val.len(),
        sets.test.len(),
        m.batch,
        artifacts.optimizer_name(),
        opts.lr,
        start.schedule,
        start.distortions,
        start.seed,
        start.epoch
    );
    let run = run_epochs(opts, &mut engine, &sets, &heads, start)?;
    finish(opts, &mut engine, &sets, &heads, run)
}

/// What the artifacts train: `--attribute`'s classes for a one-attribute graph, every task of
/// a multi-task graph (`--attribute all`), laid out along the logits.
fn tasks_of(opts: &TrainOptions, artifacts: &Artifacts) -> Result<(Tasks, Vec<Head>)> {
    let m = &artifacts.manifest;
    if m.tasks.is_empty() {
        // the one class table (MTFL code c is class c - 1), so trained models and heads name classes alike
        let classes = Classes::mtfl(&opts.attribute)
            .ok_or_else(|| anyhow::anyhow!("unknown attribute '{}': expected one of {}", opts.attribute, crate::dataset::MTFL_ATTRIBUTES.join(", ")))?;
        let heads = score::heads(artifacts, &classes)?;
        return Ok((Tasks::one(classes), heads));
    }
    let names: Vec<&str> = m.tasks.iter().map(|t| t.name.as_str()).collect();
    if opts.attribute != "all" {
        bail!("the artifacts in {} train every task at once ({}): use --attribute all, not '{}'", artifacts.dir.display(), names.join(", "), opts.attribute);
    }
    let attributes = artifacts.class_tasks().map(|t| score::task_classes(&t.name, t.width)).collect::<Result<_>>()?;
    let tasks = Tasks { attributes, landmarks: artifacts.target_width() > 0 };
    let heads = score::heads(artifacts, &tasks.attributes[0])?;
    Ok((tasks, heads))
}

/// The distortions a checkpoint records and a resumed run must repeat: the training
/// images', and whether validation images get them too (it decides the best epoch).
fn run_distortions(opts: &TrainOptions) -> String {
    let train = opts.distortions.describe();
    if opts.distort_validation {
        format!("{train}; validation too")
    } else {
        train
    }
}

/// The checkpoint training starts from: the artifacts' init.h5, or `--resume`'s file if it was
/// trained with the same distortions; stamped with this run's seed (fresh runs only),
/// distortions and schedule.
fn starting_point(opts: &TrainOptions, artifacts: &Artifacts) -> Result<Checkpoint> {
    let path = opts.resume.clone().unwrap_or_else(|| artifacts.dir.join(&artifacts.manifest.checkpoint));
    let mut start = Checkpoint::read(&path)?;
    start.check_fits(artifacts, &path)?;
    let (distortions, schedule) = (run_distortions(opts), opts.schedule.describe());
    if opts.resume.is_none() {
        start.seed = opts.seed;
    } else {
        start.check_resume(&distortions, &schedule, &path)?;
        if start.seed != opts.seed {
            eprintln!("resuming with the checkpoint's seed {} (not {})", start.seed, opts.seed);
        }
    }
    (start.distortions, start.schedule) = (distortions, schedule);
    Ok(start)
}

struct Sets {
    spec: InputSpec,
    train: Examples,
    val: Examples,
    test: Examples,
}

fn load_sets(opts: &TrainOptions, artifacts: &Artifacts, tasks: &Tasks, seed: u64) -> Result<Sets> {
    let input = artifacts.manifest.description.input_spec().context("artifacts' model description")?;
    let pre = Preprocess { crop: opts.crop, input: input.clone() };
    let subsets = Subsets { validation_percent: VALIDATION_PERCENT, seed, limit: opts.limit, test: opts.score_test };
    let [train, val, test] = subsets.of_mtfl(&opts.mtfl, tasks)?;
    // Decoded once and kept: every epoch reads every image, and decoding each time would cost
    // more than the small networks' steps (TCDCN: 43 KB per image, Cascade-CNN 270 KB).
    let decoder = Decoder::new(pre, opts.distortions, seed, opts.strict, None)?;
    let test_decoder = Decoder::new(Preprocess { crop: opts.test_crop, input: input.clone() }, opts.distortions, seed, opts.strict, None)?;
    let show = opts.show_progress;
    let train = decoder.all(&train, "training", show)?;
    let mut val = decoder.all(&val, "validation", show)?;
    if opts.distort_validation {
        val = batches::distorted_once(&val, &Distort { distortions: opts.distortions, spec: &input, seed });
    }
    Ok(Sets { spec: input, train, val, test: test_decoder.all(&test, "test", show)? })
}

struct Run {
    last: Checkpoint,
    epochs_run_now: u64,
    stopped_early: bool,
}

/// Epochs `start.epoch + 1 ..= opts.epochs` through the training loop, a validation point at
/// each epoch's end; stops early when the schedule's patience is exhausted.
fn run_epochs(opts: &TrainOptions, engine: &mut Engine, sets: &Sets, heads: &[Head], start: Checkpoint) -> Result<Run> {
    let history = opts.out.join("history.csv");
    history::prepare(&history, 1, start.step)?;
    let first = start.epoch;
    if first < opts.epochs && opts.schedule.patience_exhausted(start.best_val_loss_epoch, first) {
        println!("{}", early_stop(&start));
        return Ok(Run { last: start, epochs_run_now: 0, stopped_early: true });
    }
    let batch = engine.artifacts.manifest.batch;
    let per_epoch = Order::steps_per_epoch(sets.train.len(), batch);
    let lr = |step: u64| opts.schedule.lr(opts.lr, (step - 1) / per_epoch);
    let steps = Steps {
        label: Label::Epochs { per_epoch },
        steps: opts.epochs * per_epoch,
        eval_every: per_epoch,
        lr: &lr,
        out_dir: opts.out.clone(),
        history: &history,
        show_progress: opts.show_progress,
    };
    let distort = Distort { distortions: opts.distortions, spec: &sets.spec, seed: start.seed };
    let batches = Batches { source: Source::Memory { rows: &sets.train, distort: Some(distort) }, order: Order::Epochs, size: batch, seed: start.seed };
    let mut points =
        EpochEnds { val: &sets.val, heads, tasks: Vec::new(), eval_batch: opts.eval_batch, best: opts.out.join("best.h5"), schedule: opts.schedule, per_epoch };
    let outcome = steps::run(&steps, engine, Stepper::Fused, start, batches, &mut points)?;
    if outcome.stopped {
        println!("{}", early_stop(&outcome.last));
    }
    Ok(Run { epochs_run_now: outcome.last.epoch - first, stopped_early: outcome.stopped, last: outcome.last })
}

fn early_stop(state: &Checkpoint) -> String {
    format!("early stop: validation loss has not improved since epoch {} ({:.4})", state.best_val_loss_epoch, state.best_val_loss)
}

/// `retrain train`'s validation points: one per epoch, `best.h5` at the best validation
/// accuracy (a multi-task graph's: at the lowest validation loss, which weighs the landmarks
/// in), early stopping on validation loss.
struct EpochEnds<'a> {
    val: &'a Examples,
    heads: &'a [Head],
    /// The scores of the last validation, per task.
    tasks: Vec<TaskScore>,
    eval_batch: usize,
    best: PathBuf,
    schedule: Schedule,
    per_epoch: u64,
}

impl Points for EpochEnds<'_> {
    fn validate(&mut self, engine: &mut Engine) -> Result<(f64, f64)> {
        let s = score::evaluate(engine, self.heads, self.val, self.eval_batch)?;
        self.tasks = s.tasks;
        Ok((s.loss, s.accuracy))
    }

    fn record(&mut self, state: &mut Checkpoint, p: &Point) -> Result<Flow> {
        if self.heads.len() > 1 {
            println!("  validation: {}", score::describe(&self.tasks));
        }
        state.epoch = p.step / self.per_epoch;
        let lowest_loss = p.val_loss < state.best_val_loss;
        if lowest_loss {
            (state.best_val_loss, state.best_val_loss_epoch) = (p.val_loss, state.epoch);
        }
        let best = if self.heads.len() > 1 { lowest_loss } else { p.val_accuracy > state.best_val_accuracy };
        if best {
            state.best_val_accuracy = p.val_accuracy;
            state.write(&self.best)?;
        }
        Ok(if self.schedule.patience_exhausted(state.best_val_loss_epoch, state.epoch) { Flow::Stop } else { Flow::Continue })
    }
}

/// Test accuracy of the best epoch, its exported model and result.json.
fn finish(opts: &TrainOptions, engine: &mut Engine, sets: &Sets, heads: &[Head], run: Run) -> Result<TrainSummary> {
    let best_path = opts.out.join("best.h5");
    let best = if best_path.exists() { Checkpoint::read(&best_path)? } else { run.last.clone() };
    engine.load(&best)?;
    let val = score::evaluate(engine, heads, &sets.val, opts.eval_batch)?;
    let test = if opts.score_test { Some(score::evaluate(engine, heads, &sets.test, opts.eval_batch)?) } else { None };
    let a = &engine.artifacts;
    let model = opts.out.join("model.onnx");
    let params: Vec<_> = best.tensors.iter().filter(|t| a.params().any(|p| p.input == t.name)).cloned().collect();
    let source = format!(
        "trained by retrain train: MTFL {} ({} crop), epoch {} of {}, {} lr {} ({}), distortions {}, seed {}, artifacts {}",
        opts.attribute,
        opts.crop,
        best.epoch,
        run.last.epoch,
        a.optimizer_name(),
        opts.lr,
        run.last.schedule,
        run.last.distortions,
        best.seed,
        &a.sha256[..12]
    );
    let metadata = model_metadata(heads, opts.crop, source);
    weights::write(&a.verified_file("forward")?, &params, &metadata, &model)?;
    let summary = TrainSummary {
        attribute: opts.attribute.clone(),
        crop: opts.crop.to_string(),
        test_crop: opts.test_crop.to_string(),
        seed: best.seed,
        artifact_sha256: a.sha256.clone(),
        optimizer: a.optimizer_name().to_string(),
        lr: opts.lr,
        schedule: opts.schedule,
        distortions: opts.distortions,
        distort_validation: opts.distort_validation,
        batch: a.manifest.batch,
        epochs_completed: run.last.epoch,
        epochs_run_now: run.epochs_run_now,
        stopped_early: run.stopped_early,
        best_val_loss: run.last.best_val_loss,
        best_val_loss_epoch: run.last.best_val_loss_epoch,
        best_epoch: best.epoch,
        best_val_accuracy: best.best_val_accuracy,
        test_accuracy: test.as_ref().map(|t| t.accuracy),
        test_loss: test.as_ref().map(|t| t.loss),
        val_tasks: val.tasks,
        test_tasks: test.map(|t| t.tasks),
        train_images: sets.train.len(),
        val_images: sets.val.len(),
        test_images: sets.test.len(),
        train_seconds: run.last.train_seconds,
        seconds_per_epoch: run.last.train_seconds / run.last.epoch.max(1) as f64,
        device: opts.device.to_string(),
        model,
    };
    fs::write(opts.out.join("result.json"), summary.to_json()?)?;
    Ok(summary)
}

/// The class names of the trained model's attributes (`labels` for one attribute,
/// `labels:NAME` for each of several), its crop (landmarks are fractions of it) and where it
/// came from, as metadata entries set over the forward graph's own description.
fn model_metadata(heads: &[Head], crop: Crop, source: String) -> Vec<(String, String)> {
    let mut d = Description { crop: Some(crop), source: Some(source), ..Description::default() };
    for h in heads {
        if let Some(labels) = &h.labels {
            if heads.len() == 1 {
                d.labels = Some(labels.clone());
            } else {
                d.task_labels.insert(h.name.clone(), labels.clone());
            }
        }
    }
    d.to_metadata()
}

/// The closing lines of `retrain train`.
pub fn report(s: &TrainSummary) -> String {
    let test = match (s.test_accuracy, s.test_loss) {
        (Some(a), Some(l)) => format!("test accuracy {a:.4} (loss {l:.4}) on {} MTFL test images", s.test_images),
        _ => "test list not read (--no-test)".to_string(),
    };
    // a multi-task run's best epoch is its lowest validation loss, and its scores are per task
    let mut lines = if s.val_tasks.len() > 1 {
        let mut lines = vec![format!("best epoch {} (lowest validation loss {:.4}); {test}", s.best_epoch, s.best_val_loss)];
        lines.push(format!("  validation: {}", score::describe(&s.val_tasks)));
        lines.extend(s.test_tasks.as_ref().map(|t| format!("  test: {}", score::describe(t))));
        lines
    } else {
        vec![format!("best epoch {} (validation accuracy {:.4}); {test}", s.best_epoch, s.best_val_accuracy)]
    };
    lines.push(format!(
        "{} epochs ({} in this run){} in {:.1} s of training ({:.1} s/epoch) on {}; model {}",
        s.epochs_completed,
        s.epochs_run_now,
        if s.stopped_early { " (stopped early)" } else { "" },
        s.train_seconds,
        s.seconds_per_epoch,
        s.device,
        s.model.display()
    ));
    lines.join("\n")
}
