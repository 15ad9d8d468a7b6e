//! The two phases end to end: checks, caches, phase 1, phase 2, test scores, export.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ndarray::ArrayView1;
use serde::{Deserialize, Serialize};

use super::job::{Job, Settings};
use super::phases::{self, Phase, VALIDATION_PERCENT};
use super::plan::{self, Plan};
use super::set::FinetuneSet;
use crate::augment::Distortions;
use crate::cache::Cache;
use crate::dataset::mtfl::Split;
use crate::dataset::Skipped;
use crate::head::classes::Classes;
use crate::head::softmax::argmax;
use crate::head::standardize::Standardizer;
use crate::metrics::{self, Metrics};
use crate::model::Model;
use crate::preprocess::{Crop, Preprocess};
use crate::runtime::{self, Device, SessionConfig};
use crate::train::accumulate::Accumulator;
use crate::train::batches::Source;
use crate::train::checkpoint::Checkpoint;
use crate::train::data::{Examples, LabeledImages, Subsets, Tasks};
use crate::train::decode::Decoder;
use crate::train::engine::Engine;
use crate::train::history::Point;
use crate::train::steps::{Outcome, Stepper};

/// Everything `retrain finetune` takes.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    /// The pretrained network the artifacts were made from (for the bottleneck caches).
    pub model: PathBuf,
    pub artifacts: PathBuf,
    pub mtfl: PathBuf,
    pub attribute: String,
    pub crop: Crop,
    pub phase1_steps: u64,
    pub phase1_lr: f32,
    pub phase2_steps: u64,
    pub phase2_lr: f32,
    /// Phase 2 trains this layer's block and those above it (artifacts made with
    /// `scripts/make_finetune.py --train-from LAYER`); None: every layer.
    pub train_from: Option<String>,
    /// Must equal the artifacts' batch when given.
    pub batch: Option<usize>,
    pub micro_batch: Option<usize>,
    pub memory_budget: Option<u64>,
    pub distortions: Distortions,
    pub eval_every: u64,
    pub device: Device,
    pub threads: Option<usize>,
    pub decode_threads: Option<usize>,
    pub cache_dir: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub resume: Option<PathBuf>,
    pub limit: Option<usize>,
    pub eval_batch: usize,
    pub strict: bool,
    pub show_progress: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseSummary {
    pub steps: u64,
    pub steps_run_now: u64,
    pub lr: f32,
    pub seconds: f64,
    pub seconds_per_step: f64,
    pub final_val_accuracy: f64,
    pub test_accuracy: Option<f64>,
}

/// Written to `OUT/result.json` ([`FinetuneSummary::to_json`]) and read back by
/// [`crate::runs::RunResult::read`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneSummary {
    pub settings: Settings,
    pub artifacts_phase1: String,
    pub artifacts_phase2: String,
    pub optimizer: serde_json::Value,
    pub batch: usize,
    pub plan: Plan,
    pub phase1: PhaseSummary,
    pub phase2: PhaseSummary,
    pub test: Metrics,
    pub train_images: usize,
    pub val_images: usize,
    pub skipped: Vec<String>,
    pub device: String,
    pub model: PathBuf,
    pub head: PathBuf,
}

impl FinetuneSummary {
    /// The `kind` of its `result.json`.
    pub const KIND: &'static str = "finetune";

    /// The text of `result.json`: `"kind": "finetune"`, then every field.
    pub fn to_json(&self) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Written<'a> {
            kind: &'static str,
            #[serde(flatten)]
            summary: &'a FinetuneSummary,
        }
        Ok(serde_json::to_string_pretty(&Written { kind: Self::KIND, summary: self })? + "\n")
    }
}

pub fn finetune(opts: &FinetuneOptions) -> Result<FinetuneSummary> {
    let (ctx, plan) = prepare(opts)?;
    let (resume1, resume2) = read_resume(opts, &ctx)?;
    check_settings(&opts.out, &ctx.settings, opts.resume.is_some())?;
    let mut model = Model::load(&opts.model, &ctx.config, Some(&ctx.set.bottleneck))?;
    ctx.set.check_source(&model.sha256, &opts.model)?;
    let pre = Preprocess { crop: opts.crop, input: model.input.clone() };
    let [train, val, test] = ctx.subsets.of_mtfl(&opts.mtfl, &Tasks::one(ctx.classes.clone()))?;
    let decoder = Decoder::new(pre, opts.distortions, opts.seed, opts.strict, opts.decode_threads)?;
    eprintln!("{}", runtime::describe_provider(&ctx.config));
    eprintln!(
        "fine-tuning {} on {} train / {} validation images ({} test), batch {}, seed {}, distortions {}",
        opts.attribute,
        train.len(),
        val.len(),
        test.len(),
        ctx.set.batch,
        opts.seed,
        opts.distortions.describe()
    );
    let (phase1_summary, start2, phase1_test) = match resume2 {
        Some(c) => (read_phase1_summary(&opts.out)?, c, None),
        None => {
            let (summary, outcome, test, standardizer) = run_phase1(opts, &ctx, &mut model, &decoder, [&train, &val, &test], resume1)?;
            (summary, phase2_start(&ctx, &outcome.last, &standardizer, opts.seed)?, Some(test))
        }
    };
    drop(model);
    let sets = [&train, &val, &test];
    match phase1_test {
        // --phase2-steps 0: the new head alone (transfer learning with the fine-tuning recipe)
        Some(test) if opts.phase2_steps == 0 => {
            let outcome = Outcome { last: start2, points: Vec::new(), steps_run: 0, seconds: 0.0, stopped: false };
            finish(opts, &ctx, &decoder, sets, &outcome, phase1_summary, plan, test)
        }
        _ if ctx.set.train_from.is_some() => run_phase2_above_cut(opts, &ctx, &decoder, sets, start2, phase1_summary, plan),
        _ => run_phase2(opts, &ctx, &decoder, sets, start2, phase1_summary, plan),
    }
}

/// Every check that needs no image: the artifacts, --batch, the attribute's classes, the
/// micro-batch plan.
fn prepare(opts: &FinetuneOptions) -> Result<(Job, Plan)> {
    let set = FinetuneSet::open(&opts.artifacts, opts.train_from.as_deref())?;
    if let Some(b) = opts.batch.filter(|&b| b != set.batch) {
        bail!("--batch {b}: the artifacts in {} were made for batch {} (scripts/make_finetune.py --batch {b} makes others)", set.dir.display(), set.batch);
    }
    let classes = Classes::mtfl(&opts.attribute).ok_or_else(|| anyhow!("unknown MTFL attribute '{}'", opts.attribute))?;
    if classes.len() != set.classes {
        bail!("attribute '{}' has {} classes, the artifacts' new head has {}", opts.attribute, classes.len(), set.classes);
    }
    fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    let a = &set.phase2.manifest;
    let budget = opts.memory_budget.or_else(|| plan::free_memory(opts.device));
    let plan = plan::choose(a.batch, &a.micro_batches, a.memory.as_ref(), budget, opts.micro_batch)?;
    let config = SessionConfig { intra_threads: opts.threads, ..SessionConfig::new(opts.device) };
    let subsets = Subsets { validation_percent: VALIDATION_PERCENT, seed: opts.seed, limit: opts.limit, test: true };
    Ok((Job { set, classes, config, settings: settings_of(opts), history: opts.out.join("history.csv"), subsets }, plan))
}

/// A --resume checkpoint of phase 1 or of phase 2 (checked against those artifacts).
fn read_resume(opts: &FinetuneOptions, ctx: &Job) -> Result<(Option<Checkpoint>, Option<Checkpoint>)> {
    let Some(path) = &opts.resume else { return Ok((None, None)) };
    let c = Checkpoint::read(path)?;
    if c.artifact_sha256 == ctx.set.phase2.sha256 {
        c.check_fits(&ctx.set.phase2, path)?;
        Ok((None, Some(c)))
    } else {
        c.check_fits(&ctx.set.phase1, path)?;
        Ok((Some(c), None))
    }
}

fn settings_of(opts: &FinetuneOptions) -> Settings {
    Settings {
        attribute: opts.attribute.clone(),
        crop: opts.crop.to_string(),
        seed: opts.seed,
        distortions: opts.distortions.describe(),
        phase1_steps: opts.phase1_steps,
        phase1_lr: opts.phase1_lr,
        phase2_steps: opts.phase2_steps,
        phase2_lr: opts.phase2_lr,
        train_from: opts.train_from.clone(),
        phase1_standardized: true,
        limit: opts.limit,
    }
}

/// A resumed run continues the settings of the run that wrote OUT (step counts may grow, as
/// `retrain train --epochs` may); every run records its own.
fn check_settings(out: &Path, settings: &Settings, resuming: bool) -> Result<()> {
    let path = out.join("settings.json");
    if resuming {
        let text = fs::read_to_string(&path).with_context(|| format!("cannot resume: {} is missing", path.display()))?;
        let earlier: Settings = serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
        let steps_aside = |s: &Settings| Settings { phase1_steps: 0, phase2_steps: 0, ..s.clone() };
        if steps_aside(&earlier) != steps_aside(settings) {
            bail!("cannot resume: {} was written with other settings\n  then: {earlier:?}\n  now:  {settings:?}", path.display());
        }
    }
    crate::write_file(&path, serde_json::to_string_pretty(settings)? + "\n")
}

fn phase<'a>(opts: &'a FinetuneOptions, ctx: &'a Job, number: u8) -> Phase<'a> {
    let (steps, lr) = if number == 1 { (opts.phase1_steps, opts.phase1_lr) } else { (opts.phase2_steps, opts.phase2_lr) };
    Phase {
        number,
        steps,
        lr,
        eval_every: opts.eval_every,
        eval_batch: opts.eval_batch,
        out: &opts.out,
        history: &ctx.history,
        show_progress: opts.show_progress,
    }
}

fn run_phase1(
    opts: &FinetuneOptions,
    ctx: &Job,
    model: &mut Model,
    decoder: &Decoder,
    sets: [&LabeledImages; 3],
    start: Option<Checkpoint>,
) -> Result<(PhaseSummary, Outcome, Metrics, Standardizer)> {
    let train = sets[0];
    let [train_rows, val_rows, test_rows] = cached_subsets(opts, ctx, model, sets)?;
    // The new layer trains on standardised bottlenecks: on the raw ones (InceptionV3's: mean
    // 0.024, std 0.08, per-feature scales far apart) 1,000 RMSprop steps underfit (train
    // accuracy 60%, validation 60% for smile, where `train-head --solver sgd` reaches 73% / 66%
    // standardised and 61% / 60% with --no-standardize). phase2_start folds the statistics
    // into the kernel and bias, so the network that phase 2 and export see takes raw ones.
    let standardizer = Standardizer::fit(train_rows.view());
    let [train_rows, val_rows, test_rows] = [&train_rows, &val_rows, &test_rows].map(|r| r.standardized(&standardizer));
    let artifacts = &ctx.set.phase1;
    // one thread: the head's ops are too small to split, and idle spinning workers only slow
    // them down when the cores are shared
    let mut engine = Engine::new(artifacts.clone(), &SessionConfig { intra_threads: Some(1), ..ctx.config.clone() })?;
    let start = match start {
        Some(c) => c,
        None => initial(artifacts.dir.join(&artifacts.manifest.checkpoint), artifacts, opts.seed)?,
    };
    let source = if opts.distortions.is_off() {
        Source::Memory { rows: &train_rows, distort: None }
    } else {
        Source::Backbone { model, decoder, images: train, standardizer: Some(&standardizer) }
    };
    let outcome = phases::run(&phase(opts, ctx, 1), &mut engine, Stepper::Fused, start, source, &val_rows)?;
    let test_metrics = score(&mut engine, &ctx.classes, chunks(&test_rows, opts.eval_batch))?;
    let test_accuracy = test_metrics.accuracy;
    let summary = phase_summary(&outcome, opts.phase1_steps, opts.phase1_lr, Some(test_accuracy));
    crate::write_file(&opts.out.join("phase1/summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    println!(
        "phase 1: {} steps in {:.1} s; validation accuracy {:.4}, test accuracy (new head alone) {test_accuracy:.4}",
        summary.steps_run_now, summary.seconds, summary.final_val_accuracy
    );
    Ok((summary, outcome, test_metrics, standardizer))
}

/// `model`'s cached outputs for the training, validation and test images of `sets`.
fn cached_subsets(opts: &FinetuneOptions, ctx: &Job, model: &mut Model, sets: [&LabeledImages; 3]) -> Result<[Examples; 3]> {
    let [train, val, test] = sets;
    let train_cache = Cache::read(&mtfl_cache(opts, model, Split::Training)?)?;
    let test_cache = Cache::read(&mtfl_cache(opts, model, Split::Testing)?)?;
    let (train_rows, val_rows) = phases::cached_rows(&train_cache, &ctx.classes, Some(&ctx.subsets), &keys(&[train, val]))?;
    let (test_rows, _) = phases::cached_rows(&test_cache, &ctx.classes, None, &keys(&[test]))?;
    Ok([train_rows, val_rows, test_rows])
}

/// The names of the images in `sets`.
fn keys<'a>(sets: &[&'a LabeledImages]) -> HashSet<&'a OsStr> {
    sets.iter().flat_map(|s| s.samples.iter().map(|x| x.key.as_os_str())).collect()
}

fn read_phase1_summary(out: &Path) -> Result<PhaseSummary> {
    let path = out.join("phase1/summary.json");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot resume phase 2: {} is missing", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
}

/// The bottleneck cache of one MTFL list for the source model: made, resumed or reused.
fn mtfl_cache(opts: &FinetuneOptions, model: &mut Model, split: Split) -> Result<PathBuf> {
    let eo = crate::extract::ExtractOptions {
        crop: opts.crop,
        batch: opts.eval_batch,
        out: None,
        cache_dir: opts.cache_dir.clone(),
        limit: opts.limit,
        shard: crate::cache::Shard::WHOLE,
        strict: opts.strict,
        decode_threads: opts.decode_threads,
        show_progress: opts.show_progress,
    };
    Ok(crate::extract::extract_mtfl(&opts.mtfl, split, model, &eo)?.out)
}

fn initial(path: PathBuf, artifacts: &crate::train::artifacts::Artifacts, seed: u64) -> Result<Checkpoint> {
    let mut c = Checkpoint::read(&path)?;
    c.check_fits(artifacts, &path)?;
    c.seed = seed;
    Ok(c)
}

/// Phase 2 starts from the pretrained weights (the artifacts' init.h5) with phase 1's head,
/// its standardisation folded in: x' = (x - mean) * scale, so x' K + b = x (scale * K) +
/// (b - (mean * scale) K), with K [features, classes].
fn phase2_start(ctx: &Job, head: &Checkpoint, standardizer: &Standardizer, seed: u64) -> Result<Checkpoint> {
    let a = &ctx.set.phase2;
    let mut start = initial(a.dir.join(&a.manifest.checkpoint), a, seed)?;
    let trained = |name: &String| head.tensor(name).ok_or_else(|| anyhow!("phase 1 checkpoint has no '{name}'"));
    let [kernel_name, bias_name] = [&ctx.set.head_params[0], &ctx.set.head_params[1]];
    let (kernel, bias) = (trained(kernel_name)?, trained(bias_name)?);
    let classes = bias.data.len();
    let mut folded_kernel = kernel.clone();
    let mut folded_bias = bias.clone();
    for (i, (row, (&m, &s))) in kernel.data.chunks(classes).zip(standardizer.mean.iter().zip(&standardizer.scale)).enumerate() {
        for (c, &k) in row.iter().enumerate() {
            folded_kernel.data[i * classes + c] = s * k;
            folded_bias.data[c] -= m * s * k;
        }
    }
    for folded in [folded_kernel, folded_bias] {
        let slot = start.tensors.iter_mut().find(|t| t.name == folded.name).ok_or_else(|| anyhow!("phase 2 state has no '{}'", folded.name))?;
        *slot = folded;
    }
    Ok(start)
}

#[allow(clippy::too_many_arguments)]
fn run_phase2(
    opts: &FinetuneOptions,
    ctx: &Job,
    decoder: &Decoder,
    sets: [&LabeledImages; 3],
    start: Checkpoint,
    phase1: PhaseSummary,
    plan: Plan,
) -> Result<FinetuneSummary> {
    let [train, val, test] = sets;
    let a = &ctx.set.phase2;
    eprintln!("phase 2: {}", plan.describe(a.manifest.batch));
    let mut engine = Engine::with_step(a.clone(), &ctx.config, false)?;
    let mut acc = Accumulator::new(&engine, plan.micro, &ctx.config)?;
    let val_examples = decoder.all(val, "validation", opts.show_progress)?;
    let source = Source::Files { decoder, images: train };
    let outcome = phases::run(&phase(opts, ctx, 2), &mut engine, Stepper::Accumulate(&mut acc), start, source, &val_examples)?;
    drop(val_examples);
    let index: Vec<usize> = (0..test.len()).collect();
    let test_metrics = score(&mut engine, &ctx.classes, index.chunks(opts.eval_batch.max(1)).map(|part| decoder.plain(test, part)))?;
    finish(opts, ctx, decoder, sets, &outcome, phase1, plan, test_metrics)
}

/// Phase 2 from a layer up (`--train-from`): the frozen graph below the cut runs once per
/// image into a cache (made, resumed or reused like a bottleneck cache), and the layers above
/// train on its rows as phase 1 does, whole batches at once: a step pays only for the
/// layers that train. With distortions the frozen part runs on every distorted batch instead.
#[allow(clippy::too_many_arguments)]
fn run_phase2_above_cut(
    opts: &FinetuneOptions,
    ctx: &Job,
    decoder: &Decoder,
    sets: [&LabeledImages; 3],
    start: Checkpoint,
    phase1: PhaseSummary,
    plan: Plan,
) -> Result<FinetuneSummary> {
    let train = sets[0];
    let from = ctx.set.train_from.as_ref().ok_or_else(|| anyhow!("phase 2 has no cut"))?;
    let mut below = Model::load(&from.below, &ctx.config, Some(&from.cut))?;
    let [train_rows, val_rows, test_rows] = cached_subsets(opts, ctx, &mut below, sets)?;
    let a = &ctx.set.phase2;
    eprintln!(
        "phase 2: {} and up ({} parameter tensors) on the cached '{}' tensor ({} values per image) below it, batch {}",
        from.layer,
        a.params().count(),
        from.cut,
        below.output_dim,
        a.manifest.batch
    );
    let mut engine = Engine::new(a.clone(), &ctx.config)?;
    let source = if opts.distortions.is_off() {
        Source::Memory { rows: &train_rows, distort: None }
    } else {
        Source::Backbone { model: &mut below, decoder, images: train, standardizer: None }
    };
    let outcome = phases::run(&phase(opts, ctx, 2), &mut engine, Stepper::Fused, start, source, &val_rows)?;
    let test_metrics = score(&mut engine, &ctx.classes, chunks(&test_rows, opts.eval_batch))?;
    finish(opts, ctx, decoder, sets, &outcome, phase1, plan, test_metrics)
}

/// Exports the model and head of `outcome`'s state and writes result.json.
#[allow(clippy::too_many_arguments)]
fn finish(
    opts: &FinetuneOptions,
    ctx: &Job,
    decoder: &Decoder,
    sets: [&LabeledImages; 3],
    outcome: &Outcome,
    phase1: PhaseSummary,
    plan: Plan,
    test: Metrics,
) -> Result<FinetuneSummary> {
    let [train, val, _] = sets;
    let a = &ctx.set.phase2;
    let (model, head) = super::outputs::write(ctx, &opts.out, outcome, decoder, &ctx.classes, train.len(), val.len())?;
    let phase2_test = (opts.phase2_steps > 0 || outcome.last.step > 0).then_some(test.accuracy);
    let summary = FinetuneSummary {
        settings: ctx.settings.clone(),
        artifacts_phase1: ctx.set.phase1.sha256.clone(),
        artifacts_phase2: a.sha256.clone(),
        optimizer: serde_json::Value::Object(a.manifest.optimizer.clone()),
        batch: a.manifest.batch,
        plan,
        phase1,
        phase2: phase_summary(outcome, opts.phase2_steps, opts.phase2_lr, phase2_test),
        test,
        train_images: train.len(),
        val_images: val.len(),
        skipped: names(&decoder.skipped()),
        device: opts.device.to_string(),
        model,
        head,
    };
    crate::write_file(&opts.out.join("result.json"), summary.to_json()?)?;
    Ok(summary)
}

/// The names of images left out, sorted, each once: `skipped` of result.json.
fn names(skipped: &[Skipped]) -> Vec<String> {
    let names: BTreeSet<String> = skipped.iter().map(|s| s.path.display().to_string()).collect();
    names.into_iter().collect()
}

fn phase_summary(o: &Outcome, steps: u64, lr: f32, test_accuracy: Option<f64>) -> PhaseSummary {
    PhaseSummary {
        steps,
        steps_run_now: o.steps_run,
        lr,
        seconds: o.seconds,
        seconds_per_step: o.seconds / o.last.step.max(1) as f64,
        final_val_accuracy: o.points.last().map_or(o.last.best_val_accuracy, |p: &Point| p.val_accuracy),
        test_accuracy,
    }
}

/// `rows` in blocks of `n`.
fn chunks(rows: &Examples, n: usize) -> impl Iterator<Item = Result<Examples>> + '_ {
    (0..rows.len()).step_by(n.max(1)).map(move |i| Ok(rows.part(i..i + n.max(1))))
}

/// Test metrics of the current parameters over blocks of rows (an image that could not be
/// read has none, so it is not scored).
fn score(engine: &mut Engine, classes: &Classes, parts: impl Iterator<Item = Result<Examples>>) -> Result<Metrics> {
    let (mut truth, mut predicted) = (Vec::new(), Vec::new());
    let k = classes.len();
    for part in parts {
        let ex = part?;
        let logits = engine.logits(ex.images, ex.labels.len())?;
        for (row, &label) in logits.chunks(k).zip(&ex.labels) {
            truth.push(label as usize);
            predicted.push(argmax(ArrayView1::from(row)));
        }
    }
    Ok(metrics::score(&truth, &predicted, &classes.labels))
}

/// The closing lines of `retrain finetune`.
pub fn report(s: &FinetuneSummary) -> String {
    let test1 = s.phase1.test_accuracy.map_or("-".into(), |a| format!("{:.4}", a));
    let trains = s.settings.train_from.as_ref().map_or("all layers".to_string(), |l| format!("{l} and up"));
    let phase2 = match s.phase2.test_accuracy {
        Some(a) => format!(
            "phase 2 ({trains}, {} steps, {:.1} s, {:.2} s/step, {}): test accuracy {a:.4} on {} MTFL test images",
            s.phase2.steps,
            s.phase2.seconds,
            s.phase2.seconds_per_step,
            s.plan.describe(s.batch),
            s.test.rows
        ),
        None => "phase 2 not run (--phase2-steps 0): the exported model is the source network with the new head".to_string(),
    };
    format!(
        "phase 1 (new head, {} steps, {:.1} s): test accuracy {test1}\n{phase2}\nmodel {}, head {} (seed {})",
        s.phase1.steps,
        s.phase1.seconds,
        s.model.display(),
        s.head.display(),
        s.settings.seed
    )
}
