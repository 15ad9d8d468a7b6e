//! The study's first approach end to end: bottlenecks of both crops of MTFL, softmax heads for
//! gender and smile, evaluation, one exported model per crop, and a report that puts our
//! numbers beside the study's with the wall time of every stage.
//!
//! Every stage resumes or is reused: extraction continues an existing cache, and a head whose
//! cache contents and settings are unchanged is read back instead of refitted
//! ([`crate::head::reuse`]), so a second run costs the evaluations and exports (seconds).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use crate::cache::{Cache, Shard};
use crate::dataset::mtfl::Split;
use crate::eval::{self, Evaluation};
use crate::extract::{self, ExtractOptions};
use crate::head::{self, HeadOptions, Solver};
use crate::metrics::percent;
use crate::model::Model;
use crate::preprocess::Crop;
use crate::runtime::SessionConfig;

/// The study's test accuracies (first approach, InceptionV3 bottlenecks + softmax), by
/// attribute and crop. Its per-class precision and recall are not reproduced here.
pub const STUDY_ACCURACY: [(&str, Crop, f64); 4] = [
    ("gender", Crop::Original, 0.863),
    ("gender", Crop::Nose { size: 150 }, 0.861),
    ("smile", Crop::Original, 0.685),
    ("smile", Crop::Nose { size: 150 }, 0.701),
];

pub mod beyond;
pub mod deployed;
pub mod runs;

/// How a report reads MTFL through a backbone (the study's and `--beyond`'s alike).
#[derive(Debug, Clone)]
pub struct Extraction {
    pub mtfl: PathBuf,
    pub cache_dir: PathBuf,
    pub batch: usize,
    /// Only the first N images of each split (quick runs).
    pub limit: Option<usize>,
    pub session: SessionConfig,
    pub decode_threads: Option<usize>,
    pub show_progress: bool,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ReproduceOptions {
    pub data: Extraction,
    pub model: PathBuf,
    /// Heads, evaluations, exported models and the report go here.
    pub out_dir: PathBuf,
    pub crops: Vec<Crop>,
    pub attributes: Vec<String>,
    /// Heads are trained with each; the first one's heads are exported.
    pub solvers: Vec<Solver>,
    pub seed: u64,
    /// Where `study/finetune_study.sh` leaves the second approach's runs
    /// (`ATTRIBUTE-CROP/result.json`); the report shows those it finds.
    pub finetune_runs: PathBuf,
}

/// One timed stage.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub seconds: f64,
    pub note: String,
}

/// Everything the report shows.
pub struct Report {
    pub stages: Vec<Stage>,
    pub evaluations: Vec<(Crop, Evaluation)>,
    pub exported: Vec<PathBuf>,
    pub markdown: String,
}

/// The stages run so far, each printed as it ends.
#[derive(Default)]
pub struct Stages(pub Vec<Stage>);

impl Stages {
    pub fn done(&mut self, name: String, started: Instant, note: String) {
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("{name}: {seconds:.1} s {note}");
        self.0.push(Stage { name, seconds, note });
    }

    /// The markdown table of every stage and their total.
    pub fn markdown(&self) -> String {
        let mut s = String::from("## Wall time per stage\n\n| stage | seconds | note |\n|---|---:|---|\n");
        for st in &self.0 {
            let _ = writeln!(s, "| {} | {:.1} | {} |", st.name, st.seconds, st.note);
        }
        let total: f64 = self.0.iter().map(|s| s.seconds).sum();
        let _ = writeln!(s, "| **total** | {total:.1} | |\n");
        s
    }
}

/// Runs the whole study and writes `out_dir/report.md`.
pub fn reproduce(opts: &ReproduceOptions) -> Result<Report> {
    let mut stages = Stages::default();
    let started = Instant::now();
    let mut model = Model::load(&opts.model, &opts.data.session, None)?;
    stages.done(format!("load {}", opts.model.display()), started, String::new());
    let mut evaluations = Vec::new();
    let mut exported = Vec::new();
    for &crop in &opts.crops {
        let (train_path, test_path) = opts.data.both_splits(&mut model, crop, &mut stages)?;
        let train = Cache::read(&train_path)?;
        let crop_dir = opts.out_dir.join(crop.to_string().replace(':', "-"));
        let mut exportable = Vec::new();
        for attribute in &opts.attributes {
            for (k, &solver) in opts.solvers.iter().enumerate() {
                let head_path = crop_dir.join(format!("{attribute}-{}.onnx", solver.name()));
                let head_opts = HeadOptions { seed: opts.seed, ..HeadOptions::new(attribute, solver) };
                let name = format!("{crop} {attribute} {}", solver.name());
                let evaluation = fit_and_score(&head_path, (&train, &train_path), &test_path, &head_opts, &opts.data.session, &name, &mut stages)?;
                evaluations.push((crop, evaluation));
                if k == 0 {
                    exportable.push(head_path);
                }
            }
        }
        let started = Instant::now();
        let out = crop_dir.join("model.onnx");
        let heads: Vec<&Path> = exportable.iter().map(PathBuf::as_path).collect();
        crate::export::export(&opts.model, &heads, &out, crate::export::Input::Tensor)?;
        stages.done(format!("export {crop}"), started, out.display().to_string());
        exported.push(out);
    }
    let markdown = render(opts, &stages, &evaluations, &exported);
    crate::write_file(&opts.out_dir.join("report.md"), &markdown)?;
    Ok(Report { stages: stages.0, evaluations, exported, markdown })
}

impl Extraction {
    /// The training and testing caches of `crop` (extracted, resumed or found whole).
    pub fn both_splits(&self, model: &mut Model, crop: Crop, stages: &mut Stages) -> Result<(PathBuf, PathBuf)> {
        let mut cache_of = |split: Split| -> Result<PathBuf> {
            let started = Instant::now();
            let summary = self.split(model, crop, split)?;
            let note = format!("{} new rows ({} were cached), {}", summary.rows_after - summary.rows_before, summary.rows_before, summary.out.display());
            stages.done(format!("extract {} {crop} {}", model.path.display(), split.name()), started, note);
            Ok(summary.out)
        };
        Ok((cache_of(Split::Training)?, cache_of(Split::Testing)?))
    }

    fn split(&self, model: &mut Model, crop: Crop, split: Split) -> Result<extract::ExtractSummary> {
        let extract_opts = ExtractOptions {
            crop,
            batch: self.batch,
            out: None,
            cache_dir: self.cache_dir.clone(),
            limit: self.limit,
            shard: Shard::WHOLE,
            strict: false,
            decode_threads: self.decode_threads,
            show_progress: self.show_progress,
        };
        extract::extract_mtfl(&self.mtfl, split, model, &extract_opts)
    }
}

/// Fits the head at `head_path` on the training cache unless the one there has the same inputs
/// and settings ([`head::reuse`]), then scores it on the test cache, writing its evaluation,
/// confusion matrix and predictions beside it.
pub fn fit_and_score(
    head_path: &Path,
    (train, train_path): (&Cache, &Path),
    test_path: &Path,
    head_opts: &HeadOptions,
    session: &SessionConfig,
    name: &str,
    stages: &mut Stages,
) -> Result<Evaluation> {
    let started = Instant::now();
    let note = if head::reuse::reusable(head_path, train, head_opts).is_some() {
        "reused: same cache contents and settings".to_string()
    } else {
        let trained = head::train(train, train_path, head_opts, &mut |_| {})?;
        trained.head.save(head_path, &trained.curve)?;
        format!("{:.2} s fitting", trained.head.info.train_seconds)
    };
    stages.done(format!("train {name}"), started, note);
    let started = Instant::now();
    let evaluation = eval::evaluate(head_path, test_path, session)?;
    // Each replaces only ".onnx": a stem such as `smile-linfa-c0.001` keeps its own dot.
    let beside = |suffix| head_path.with_extension(suffix);
    let (json, png, csv) = (beside("eval.json"), beside("confusion.png"), beside("predictions.csv"));
    evaluation.write(Some(&json), Some(&png), Some(&csv))?;
    stages.done(format!("eval {name}"), started, percent(Some(evaluation.metrics.accuracy)));
    Ok(evaluation)
}

fn study_accuracy(attribute: &str, crop: Crop) -> Option<f64> {
    STUDY_ACCURACY.iter().find(|(a, c, _)| *a == attribute && *c == crop).map(|(_, _, v)| *v)
}

/// The study's second approach (InceptionV3 fine-tuned, `retrain finetune`): smile 87.5%,
/// gender 83.5%.
pub const STUDY_FINETUNE_ACCURACY: [(&str, f64); 2] = [("smile", 0.875), ("gender", 0.835)];

/// The run folders of one attribute under `runs`: `ATTRIBUTE-CROP` (every layer) and
/// `ATTRIBUTE-CROP-from-LAYER` (`--train-from LAYER`), in name order, whatever their crop: a
/// fine-tuning run's crop is chosen on validation for it, apart from the heads' `--crops`.
fn finetune_runs(runs: &Path, attribute: &str) -> Vec<PathBuf> {
    let prefix = format!("{attribute}-");
    let mut found: Vec<PathBuf> = std::fs::read_dir(runs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with(&prefix)))
        .collect();
    found.sort();
    found
}

/// Results of `retrain finetune` runs found under `opts.finetune_runs`, beside the study's.
fn finetune_section(opts: &ReproduceOptions) -> String {
    let mut s = String::from("## The study's second approach: InceptionV3 fine-tuned (`retrain finetune`)\n\n");
    let mut found = Vec::new();
    for attribute in &opts.attributes {
        for dir in finetune_runs(&opts.finetune_runs, attribute) {
            if let Some(s) = runs::read_run(&dir).as_ref().and_then(runs::Run::finetune).filter(|s| &s.settings.attribute == attribute) {
                found.push((attribute.clone(), s.settings.crop.clone(), dir.join("result.json"), s.clone()));
            }
        }
    }
    if found.is_empty() {
        let _ =
            writeln!(s, "No run under `{}`: `study/finetune_study.sh --device cuda` makes them (a GPU job; docs/finetune.md).\n", opts.finetune_runs.display());
        return s;
    }
    s.push_str(
        "| attribute | crop | study | phase 1 (new head) | phase 2 trains | phase 2 | steps | s/step (phase 2) | device | seed |\n|---|---|---:|---:|---|---:|---|---:|---|---:|\n",
    );
    for (attribute, crop, _, v) in &found {
        let study = STUDY_FINETUNE_ACCURACY.iter().find(|(a, _)| a == attribute).map(|(_, v)| *v);
        let trains = v.settings.train_from.as_ref().map_or("every layer".to_string(), |l| format!("{l} and up"));
        let _ = writeln!(
            s,
            "| {attribute} | {crop} | {} | {} | {trains} | {} | {}+{} | {} | {} | {} |",
            percent(study),
            percent(v.phase1.test_accuracy),
            percent(v.phase2.test_accuracy),
            v.phase1.steps,
            v.phase2.steps,
            v.phase2.test_accuracy.map(|_| v.phase2.seconds_per_step).map_or("-".to_string(), |t| format!("{t:.2}")),
            v.device,
            v.settings.seed
        );
    }
    s.push('\n');
    for (attribute, crop, path, v) in &found {
        s.push_str(&v.test.markdown(&format!("{attribute} - {crop} crop - fine-tuned ({})", path.display())));
        s.push('\n');
    }
    s
}

fn render(opts: &ReproduceOptions, stages: &Stages, evaluations: &[(Crop, Evaluation)], exported: &[PathBuf]) -> String {
    let mut s = String::from("# Reproduction of the study's first approach (bottlenecks + softmax heads)\n\n");
    let _ = writeln!(
        s,
        "Backbone `{}`, MTFL `{}`{}, seed {}.\n",
        opts.model.display(),
        opts.data.mtfl.display(),
        opts.data.limit.map_or(String::new(), |l| format!(" (first {l} images of each split)")),
        opts.seed
    );
    s.push_str("## Test accuracy\n\n| attribute | crop | head | study | ours | difference |\n|---|---|---|---:|---:|---:|\n");
    for (crop, e) in evaluations {
        let study = study_accuracy(&e.head.attribute, *crop);
        let diff = study.map_or("-".to_string(), |v| format!("{:+.1}", 100.0 * (e.metrics.accuracy - v)));
        let _ =
            writeln!(s, "| {} | {crop} | {} | {} | {} | {diff} |", e.head.attribute, e.head.solver.name(), percent(study), percent(Some(e.metrics.accuracy)));
    }
    s.push_str("\n## Per-class precision and recall (ours)\n\n");
    for (crop, e) in evaluations {
        s.push_str(&e.metrics.markdown(&format!("{} - {crop} crop - {} head", e.head.attribute, e.head.solver.name())));
        s.push('\n');
    }
    s.push_str(&finetune_section(opts));
    s.push_str(&stages.markdown());
    s.push_str("Deployable models (pixels in, probabilities out):\n\n");
    for path in exported {
        let _ = writeln!(s, "- `{}`", path.display());
    }
    s
}
