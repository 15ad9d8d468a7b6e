//! The training loop: seeded shuffling, fixed-size (optionally distorted) batches, validation
//! after every epoch, `last.h5` (to resume) and `best.h5` (best validation accuracy)
//! checkpoints, a history CSV, a learning-rate schedule and early stopping on validation loss,
//! and at the end the test accuracy and the exported model of the best epoch.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::artifacts::Artifacts;
use super::batches::{self, Distort};
use super::checkpoint::{Checkpoint, Partial, TrainClock};
use super::data::{self, Examples};
use super::engine::Engine;
use super::export;
use super::rng;
use super::schedule::Schedule;
use crate::augment::Distortions;
use crate::dataset::mtfl::{self, Split};
use crate::fault::{self, Point};
use crate::head::classes::Classes;
use crate::interrupt;
use crate::preprocess::{Crop, InputSpec, Preprocess};
use crate::progress;
use crate::runtime::{self, Device, SessionConfig};

/// Everything `retrain train` takes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub artifacts: PathBuf,
    pub mtfl: PathBuf,
    pub attribute: String,
    pub crop: Crop,
    /// Train until this many epochs are complete (a resumed run counts the earlier ones).
    pub epochs: u64,
    pub lr: f32,
    /// Learning-rate decay and early stopping.
    pub schedule: Schedule,
    /// Random distortions of training images (never of validation or test images).
    pub distortions: Distortions,
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
    /// Score the best epoch on the test list at the end. Off while choosing settings, which
    /// must be chosen on validation alone.
    pub score_test: bool,
    pub show_progress: bool,
}

/// What a run achieved; also written to `OUT/result.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub attribute: String,
    pub crop: String,
    pub seed: u64,
    pub artifact_sha256: String,
    pub optimizer: String,
    pub lr: f32,
    pub schedule: Schedule,
    pub distortions: Distortions,
    pub batch: usize,
    pub epochs_completed: u64,
    pub epochs_run_now: u64,
    /// Set when early stopping ended the run before `--epochs`.
    pub stopped_early: bool,
    pub best_val_loss: f64,
    pub best_val_loss_epoch: u64,
    pub best_epoch: u64,
    pub best_val_accuracy: f64,
    /// `None` when the run did not read the test list (`score_test` off).
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub train_images: usize,
    pub val_images: usize,
    pub test_images: usize,
    /// Training wall time of all `epochs_completed`, over every run that led here.
    pub train_seconds: f64,
    pub seconds_per_epoch: f64,
    pub device: String,
    pub model: PathBuf,
}

/// One epoch's numbers, a line of `history.csv`.
#[derive(Debug, Clone, Copy)]
pub struct EpochStats {
    pub epoch: u64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub seconds: f64,
}

const HISTORY_HEADER: &str = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds";

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
    // the one class table (MTFL code c is class c - 1), so trained models and heads name classes alike
    let class_names = Classes::mtfl(&opts.attribute)
        .ok_or_else(|| anyhow::anyhow!("unknown attribute '{}': expected one of {}", opts.attribute, crate::dataset::MTFL_ATTRIBUTES.join(", ")))?
        .labels;
    if class_names.len() != m.classes {
        bail!("attribute '{}' has {} classes, the artifacts' class layer has {}", opts.attribute, class_names.len(), m.classes);
    }
    fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;

    let sets = load_sets(opts, &artifacts, start.seed)?;
    engine.load(&start)?;
    eprintln!("{}", runtime::describe_provider(&config));
    eprintln!(
        "training {} on {} train / {} validation images ({} test), batch {}, {} lr {} ({}), distortions {}, seed {}, from epoch {}",
        opts.attribute,
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
    let run = run_epochs(opts, &mut engine, &sets, start)?;
    finish(opts, &mut engine, &sets, &class_names, run)
}

/// The checkpoint training starts from: the artifacts' init.h5, or `--resume`'s file if it was
/// trained with the same distortions; stamped with this run's seed (fresh runs only),
/// distortions and schedule.
fn starting_point(opts: &TrainOptions, artifacts: &Artifacts) -> Result<Checkpoint> {
    let path = opts.resume.clone().unwrap_or_else(|| artifacts.dir.join(&artifacts.manifest.checkpoint));
    let mut start = Checkpoint::read(&path)?;
    start.check_fits(artifacts, &path)?;
    let (distortions, schedule) = (opts.distortions.describe(), opts.schedule.describe());
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

fn load_sets(opts: &TrainOptions, artifacts: &Artifacts, seed: u64) -> Result<Sets> {
    let input = crate::model::input_spec(&artifacts.manifest.description).context("artifacts' model description")?;
    let pre = Preprocess { crop: opts.crop, input: input.clone() };
    let training = mtfl::load(&opts.mtfl, Split::Training)?;
    let testing = mtfl::load(&opts.mtfl, Split::Testing)?;
    let column = data::label_column(&training, &opts.attribute)?;
    let limit = |n: usize| opts.limit.map_or(n, |l| l.min(n));
    let (train, val) = data::hold_out(&training.samples[..limit(training.samples.len())], seed);
    let test: Vec<_> = if opts.score_test { testing.samples[..limit(testing.samples.len())].iter().collect() } else { Vec::new() };
    let sets = Sets {
        spec: input,
        train: data::load(&train, column, &pre, "training", opts.show_progress)?,
        val: data::load(&val, column, &pre, "validation", opts.show_progress)?,
        test: data::load(&test, column, &pre, "test", opts.show_progress)?,
    };
    for s in sets.train.skipped.iter().chain(&sets.val.skipped).chain(&sets.test.skipped) {
        eprintln!("skipped {s}");
    }
    Ok(sets)
}

struct Run {
    last: Checkpoint,
    epochs_run_now: u64,
    stopped_early: bool,
}

fn run_epochs(opts: &TrainOptions, engine: &mut Engine, sets: &Sets, start: Checkpoint) -> Result<Run> {
    let history = opts.out.join("history.csv");
    prepare_history(&history, start.epoch)?;
    let clock = TrainClock::start(&start);
    let mut state = start;
    let order: Vec<usize> = (0..sets.train.len()).collect();
    let first = state.epoch;
    let mut stopped_early = false;
    for epoch in first..opts.epochs {
        if opts.schedule.patience_exhausted(state.best_val_loss_epoch, state.epoch) {
            println!("early stop: validation loss has not improved since epoch {} ({:.4})", state.best_val_loss_epoch, state.best_val_loss);
            stopped_early = true;
            break;
        }
        let sums = train_epoch(opts, engine, sets, &order, &mut state, &clock, epoch)?;
        let t0 = Instant::now();
        let (val_loss, val_accuracy) = evaluate(engine, &sets.val, opts.eval_batch)?;
        let rows = sums.rows.max(1) as f64;
        let seconds = sums.seconds + t0.elapsed().as_secs_f64();
        let stats = EpochStats { epoch: epoch + 1, train_loss: sums.loss_sum / rows, train_accuracy: sums.correct / rows, val_loss, val_accuracy, seconds };
        println!("{}", epoch_line(&stats, opts.epochs));
        state.epoch = epoch + 1;
        state.partial = Partial::default();
        state.tensors = engine.snapshot()?;
        state.train_seconds = clock.seconds();
        if val_loss < state.best_val_loss {
            (state.best_val_loss, state.best_val_loss_epoch) = (val_loss, epoch + 1);
        }
        // The history line first: a resume keeps only the lines of the epochs last.h5 holds,
        // so a kill between the two never loses or repeats one.
        append_history(&history, &stats)?;
        let improved = val_accuracy > state.best_val_accuracy;
        if improved {
            state.best_val_accuracy = val_accuracy;
            state.write(&opts.out.join("best.h5"))?;
        }
        let last = opts.out.join("last.h5");
        state.write(&last)?;
        interrupt::check(|| (format!("stopped after epoch {} of {}; checkpoint {}", epoch + 1, opts.epochs, last.display()), Some(last.clone())))?;
    }
    let epochs_run_now = state.epoch - first;
    Ok(Run { last: state, epochs_run_now, stopped_early })
}

/// Trains one epoch, or the rest of one that a stopped run began (`state.partial`). Returns
/// the epoch's sums. Stopped by a signal, it writes `last.h5` with the steps done so far and
/// returns [`interrupt::Interrupted`].
fn train_epoch(
    opts: &TrainOptions,
    engine: &mut Engine,
    sets: &Sets,
    order: &[usize],
    state: &mut Checkpoint,
    clock: &TrainClock,
    epoch: u64,
) -> Result<Partial> {
    let m = engine.artifacts.manifest.clone();
    let shuffled = rng::shuffled(order, state.seed, epoch);
    let lr = opts.schedule.lr(opts.lr, epoch);
    let distort = Distort { distortions: opts.distortions, spec: &sets.spec, seed: state.seed, epoch };
    let chunks: Vec<&[usize]> = shuffled.chunks(m.batch).collect();
    let mut sums = state.partial;
    let done = sums.steps as usize;
    let bar = progress::bar(shuffled.len() as u64, "images", opts.show_progress);
    bar.set_message(format!("epoch {}/{}", epoch + 1, opts.epochs));
    bar.inc(sums.rows);
    let (seed, epoch_first_step) = (state.seed, state.step - sums.steps);
    let prepare = |k: usize| {
        let masks = batches::dropout_masks(&m, seed, epoch_first_step + k as u64 + 1);
        batches::prepare(&sets.train, chunks[k], m.batch, masks, &distort)
    };
    let t0 = Instant::now();
    let mut next = (done < chunks.len()).then(|| prepare(done));
    for (k, chunk) in chunks.iter().enumerate().skip(done) {
        let current = next.take().expect("batch k was prepared during step k - 1");
        state.step += 1;
        // Batch k + 1 (copies, distortions, masks) is built while the device runs step k.
        let (r, ahead) = std::thread::scope(|s| {
            let ahead = chunks.get(k + 1).map(|_| s.spawn(|| prepare(k + 1)));
            let r = current.with_batch(|batch| engine.step(batch, lr, state.step));
            (r, ahead.map(|h| h.join().expect("batch preparation panicked")))
        });
        next = ahead;
        let r = r?;
        if !r.loss.is_finite() {
            bail!("loss became {} at step {} (epoch {}): lower --lr", r.loss, state.step, epoch + 1);
        }
        sums.steps += 1;
        sums.loss_sum += r.loss as f64 * chunk.len() as f64;
        sums.correct += r.correct as f64;
        sums.rows += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
        fault::reached(Point::Step);
        if let Some(signal) = interrupt::requested() {
            bar.finish_and_clear();
            let last = opts.out.join("last.h5");
            let partial = Partial { seconds: sums.seconds + t0.elapsed().as_secs_f64(), ..sums };
            let progress = format!("epoch {}: stopped after step {} of {}; checkpoint {}", epoch + 1, k + 1, chunks.len(), last.display());
            return Err(state.stopped(partial, engine.snapshot()?, clock, last, signal, progress));
        }
    }
    bar.finish_and_clear();
    sums.seconds += t0.elapsed().as_secs_f64();
    Ok(sums)
}

/// Mean cross-entropy and accuracy over `ex` with the current parameters.
pub fn evaluate(engine: &mut Engine, ex: &Examples, eval_batch: usize) -> Result<(f64, f64)> {
    let classes = engine.artifacts.manifest.classes;
    let (mut loss, mut correct) = (0f64, 0usize);
    let indices: Vec<usize> = (0..ex.len()).collect();
    for chunk in indices.chunks(eval_batch.max(1)) {
        let images = ex.images[chunk[0] * ex.image_len..(chunk[chunk.len() - 1] + 1) * ex.image_len].to_vec();
        let logits = engine.logits(images, chunk.len())?;
        for (row, &i) in logits.chunks(classes).zip(chunk) {
            let (l, best) = cross_entropy(row, ex.labels[i] as usize);
            loss += l;
            correct += usize::from(best == ex.labels[i] as usize);
        }
    }
    Ok((loss / ex.len().max(1) as f64, correct as f64 / ex.len().max(1) as f64))
}

/// -log softmax(row)[label] and the argmax.
fn cross_entropy(row: &[f32], label: usize) -> (f64, usize) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    let best = crate::head::softmax::argmax(ndarray::ArrayView1::from(row));
    (log_sum - row[label] as f64, best)
}

pub fn epoch_line(s: &EpochStats, total: u64) -> String {
    format!(
        "epoch {}/{total}: train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4} | {:.1} s",
        s.epoch, s.train_loss, s.train_accuracy, s.val_loss, s.val_accuracy, s.seconds
    )
}

/// Keeps the first `epochs` lines of an earlier run's history (a resume), else starts anew.
fn prepare_history(path: &Path, epochs: u64) -> Result<()> {
    let old = if epochs > 0 { fs::read_to_string(path).unwrap_or_default() } else { String::new() };
    let kept: Vec<&str> = old.lines().skip(1).take(epochs as usize).collect();
    let text = std::iter::once(HISTORY_HEADER).chain(kept).map(|l| format!("{l}\n")).collect::<String>();
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn append_history(path: &Path, s: &EpochStats) -> Result<()> {
    let mut f = fs::OpenOptions::new().append(true).open(path).with_context(|| format!("cannot append to {}", path.display()))?;
    writeln!(f, "{},{:.6},{:.6},{:.6},{:.6},{:.3}", s.epoch, s.train_loss, s.train_accuracy, s.val_loss, s.val_accuracy, s.seconds)?;
    Ok(())
}

/// Test accuracy of the best epoch, its exported model and result.json.
fn finish(opts: &TrainOptions, engine: &mut Engine, sets: &Sets, class_names: &[String], run: Run) -> Result<TrainSummary> {
    let best_path = opts.out.join("best.h5");
    let best = if best_path.exists() { Checkpoint::read(&best_path)? } else { run.last.clone() };
    engine.load(&best)?;
    let test = if opts.score_test { Some(evaluate(engine, &sets.test, opts.eval_batch)?) } else { None };
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
    let metadata = vec![("retrain.labels".to_string(), class_names.join(",")), ("retrain.source".to_string(), source)];
    export::export(&a.verified_file("forward")?, &params, &metadata, &model)?;
    let summary = TrainSummary {
        attribute: opts.attribute.clone(),
        crop: opts.crop.to_string(),
        seed: best.seed,
        artifact_sha256: a.sha256.clone(),
        optimizer: a.optimizer_name().to_string(),
        lr: opts.lr,
        schedule: opts.schedule,
        distortions: opts.distortions,
        batch: a.manifest.batch,
        epochs_completed: run.last.epoch,
        epochs_run_now: run.epochs_run_now,
        stopped_early: run.stopped_early,
        best_val_loss: run.last.best_val_loss,
        best_val_loss_epoch: run.last.best_val_loss_epoch,
        best_epoch: best.epoch,
        best_val_accuracy: best.best_val_accuracy,
        test_accuracy: test.map(|(_, accuracy)| accuracy),
        test_loss: test.map(|(loss, _)| loss),
        train_images: sets.train.len(),
        val_images: sets.val.len(),
        test_images: sets.test.len(),
        train_seconds: run.last.train_seconds,
        seconds_per_epoch: run.last.train_seconds / run.last.epoch.max(1) as f64,
        device: opts.device.to_string(),
        model,
    };
    fs::write(opts.out.join("result.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    Ok(summary)
}

/// The closing lines of `retrain train`.
pub fn report(s: &TrainSummary) -> String {
    let test = match (s.test_accuracy, s.test_loss) {
        (Some(a), Some(l)) => format!("test accuracy {a:.4} (loss {l:.4}) on {} MTFL test images", s.test_images),
        _ => "test list not read (--no-test)".to_string(),
    };
    format!(
        "best epoch {} (validation accuracy {:.4}); {test}\n\
         {} epochs ({} in this run){} in {:.1} s of training ({:.1} s/epoch) on {}; model {}",
        s.best_epoch,
        s.best_val_accuracy,
        s.epochs_completed,
        s.epochs_run_now,
        if s.stopped_early { " (stopped early)" } else { "" },
        s.train_seconds,
        s.seconds_per_epoch,
        s.device,
        s.model.display()
    )
}
