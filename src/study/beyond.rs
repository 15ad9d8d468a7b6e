//! `retrain reproduce --beyond`: every MTFL attribute through every pipeline, side by side with
//! the study's figures, and the deployable model validation prefers, exported as one file that
//! works from plain photos (`OUT/model.onnx`).
//!
//! Heads are fitted here for each backbone and crop on the training list less a seeded,
//! hashed validation share, eight recipes per attribute (`RECIPES`), of which validation
//! keeps one; the trained networks are read from the
//! `result.json` their runs wrote ([`super::runs`]). Every choice (which backbone and crop are
//! deployed, which landmark model places their crop) is made on validation scores; the test
//! list is read once per configuration shown.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use super::deployed::{self, PlainScores};
use super::runs::{self, LandmarkRow, Row, Score};
use super::{fit_and_score, Extraction, Stages, STUDY_ACCURACY, STUDY_FINETUNE_ACCURACY};
use crate::cache::Cache;
use crate::head::linfa::DEFAULT_C;
use crate::head::{ClassWeight, HeadOptions, Solver};
use crate::locate::Passes;
use crate::metrics::percent;
use crate::model::Model;
use crate::preprocess::Crop;

/// The study's Table 5 (networks trained from scratch): its best figure per attribute.
const STUDY_SCRATCH_ACCURACY: [(&str, &str, f64); 2] = [("smile", "TCDCN", 0.725), ("gender", "Cascade-CNN", 0.75)];

/// What to run.
#[derive(Debug, Clone)]
pub struct BeyondOptions {
    pub data: Extraction,
    /// Backbones whose bottlenecks get heads (InceptionV3, FaceRes, ...).
    pub backbones: Vec<PathBuf>,
    pub crops: Vec<Crop>,
    pub attributes: Vec<String>,
    /// `report.md`, `beyond.json`, heads and `model.onnx` go here.
    pub out_dir: PathBuf,
    /// Folders of `retrain train` / `retrain finetune` runs to report (and landmark models).
    pub runs: PathBuf,
    pub seed: u64,
    /// Share of training.txt the heads hold out for validation.
    pub validation_percent: f64,
    /// How the landmark model inside the deployable file runs.
    pub landmark_passes: Passes,
}

/// How a head is fitted (beside the fixed settings: standardised, seeded, the same validation share).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Recipe {
    pub solver: Solver,
    pub class_weight: ClassWeight,
    /// linfa's regularisation as scikit-learn's `C`; `None` for SGD, which has none.
    pub c: Option<f64>,
}

/// The recipes fitted for every attribute; the best validation balanced accuracy picks one per
/// attribute (ties: the first here). linfa is fitted at three strengths a decade apart, as
/// scikit-learn's `LogisticRegressionCV` searches a grid: the best strength depends on the
/// backbone (0.01 was chosen on InceptionV3's bottlenecks; FaceRes's prefer stronger); each
/// with and without balanced class weights, which the imbalanced attributes (glasses, pose)
/// may prefer. The recipes added last come last, so that ties keep earlier runs' choices.
const RECIPES: [Recipe; 8] = [
    Recipe { solver: Solver::Sgd, class_weight: ClassWeight::None, c: None },
    Recipe { solver: Solver::Sgd, class_weight: ClassWeight::Balanced, c: None },
    Recipe { solver: Solver::Linfa, class_weight: ClassWeight::None, c: Some(DEFAULT_C) },
    Recipe { solver: Solver::Linfa, class_weight: ClassWeight::None, c: Some(0.001) },
    Recipe { solver: Solver::Linfa, class_weight: ClassWeight::None, c: Some(0.1) },
    Recipe { solver: Solver::Linfa, class_weight: ClassWeight::Balanced, c: Some(DEFAULT_C) },
    Recipe { solver: Solver::Linfa, class_weight: ClassWeight::Balanced, c: Some(0.001) },
    Recipe { solver: Solver::Linfa, class_weight: ClassWeight::Balanced, c: Some(0.1) },
];

impl Recipe {
    /// The head file's stem after the attribute: `sgd`, `sgd-balanced`, `linfa`, `linfa-c0.001`,
    /// `linfa-balanced-c0.1` (the default strength keeps the name it had before the others were
    /// added, so earlier runs' heads are reused).
    fn file_stem(self) -> String {
        let mut stem = self.solver.name().to_string();
        if self.class_weight == ClassWeight::Balanced {
            stem.push_str("-balanced");
        }
        match self.c {
            Some(c) if c != DEFAULT_C => format!("{stem}-c{c}"),
            _ => stem,
        }
    }

    fn describe(self) -> String {
        let mut text = if self.solver == Solver::Linfa { "L-BFGS (linfa)" } else { "mini-batch SGD (the study's)" }.to_string();
        if let Some(c) = self.c {
            text.push_str(&format!(", C = {c}"));
        }
        if self.class_weight == ClassWeight::Balanced {
            text.push_str(", balanced class weights");
        }
        text
    }

    /// `train-head`'s options for this recipe.
    fn options(self, attribute: &str, seed: u64, validation_percent: f64) -> HeadOptions {
        let mut opts =
            HeadOptions { seed, class_weight: self.class_weight, validation_percent: Some(validation_percent), ..HeadOptions::new(attribute, self.solver) };
        if let Some(c) = self.c {
            opts.linfa.c = c;
        }
        opts
    }
}

/// One fitted head: its recipe and scores.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub attribute: String,
    pub recipe: Recipe,
    pub head: PathBuf,
    pub validation: Option<Score>,
    /// On the annotated-landmark crops of the test images.
    pub test: Score,
    pub chosen: bool,
}

/// The heads of one backbone and crop: every recipe's per attribute, one of them chosen.
#[derive(Debug, Clone, Serialize)]
pub struct HeadSet {
    pub backbone: PathBuf,
    pub crop: Crop,
    pub candidates: Vec<Candidate>,
}

impl HeadSet {
    /// The chosen head of each attribute, in attribute order.
    pub fn chosen(&self) -> Vec<&Candidate> {
        self.candidates.iter().filter(|c| c.chosen).collect()
    }

    /// What the deployable model is chosen by: mean validation balanced accuracy of the chosen heads.
    pub fn choice_score(&self) -> f64 {
        let chosen = self.chosen();
        chosen.iter().map(|c| validation_score(c)).sum::<f64>() / chosen.len().max(1) as f64
    }
}

/// What a head is kept by: validation balanced accuracy (0 without validation rows).
fn validation_score(c: &Candidate) -> f64 {
    c.validation.map_or(0.0, |v| v.balanced_or_plain())
}

/// The deployable model and how it was chosen.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    pub model: PathBuf,
    pub backbone: PathBuf,
    pub crop: Crop,
    /// Mean validation balanced accuracy of its heads, the highest of the deployable sets.
    pub validation_score: f64,
    pub landmark_model: Option<PathBuf>,
    pub plain: PlainScores,
}

/// Everything the report shows; also written to `OUT/beyond.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Beyond {
    pub seed: u64,
    pub validation_percent: f64,
    pub head_sets: Vec<HeadSet>,
    pub rows: Vec<Row>,
    pub landmarks: Vec<LandmarkRow>,
    pub deployed: Option<Deployed>,
    #[serde(skip)]
    pub markdown: String,
}

pub fn beyond(opts: &BeyondOptions) -> Result<Beyond> {
    if opts.backbones.is_empty() || opts.crops.is_empty() || opts.attributes.is_empty() {
        bail!("reproduce --beyond needs at least one backbone, crop and attribute");
    }
    let mut stages = Stages::default();
    let head_sets = head_sets(opts, &mut stages)?;
    let found = runs::runs_under(&opts.runs);
    let mut rows: Vec<Row> = head_sets.iter().flat_map(|set| head_rows(opts, set)).collect();
    rows.extend(found.iter().flat_map(|run| run.rows(&opts.attributes)));
    let landmarks: Vec<LandmarkRow> = found.iter().filter_map(runs::Run::landmarks).collect();
    let locator = runs::best_landmarks(&landmarks).and_then(|l| l.model.clone());
    // The highest score wins; on a tie the first in --model and --crops order.
    let runnable: Vec<&HeadSet> = head_sets.iter().filter(|s| s.crop == Crop::Original || locator.is_some()).collect();
    let deployable = (!runnable.is_empty()).then(|| runnable[first_best(&runnable, |s| s.choice_score())]);
    let deployed = match deployable {
        Some(set) => Some(deploy(opts, set, locator.filter(|_| set.crop != Crop::Original), &mut stages)?),
        None => None,
    };
    let mut report = Beyond { seed: opts.seed, validation_percent: opts.validation_percent, head_sets, rows, landmarks, deployed, markdown: String::new() };
    report.markdown = render(opts, &report, &stages);
    crate::write_file(&opts.out_dir.join("report.md"), &report.markdown)?;
    crate::write_file(&opts.out_dir.join("beyond.json"), serde_json::to_string_pretty(&report)? + "\n")?;
    Ok(report)
}

/// Extracts both splits per backbone and crop and fits (or reuses) every recipe's head per attribute.
fn head_sets(opts: &BeyondOptions, stages: &mut Stages) -> Result<Vec<HeadSet>> {
    let mut sets = Vec::new();
    for backbone in &opts.backbones {
        let started = Instant::now();
        let mut model = Model::load(backbone, &opts.data.session, None)?;
        stages.done(format!("load {}", backbone.display()), started, String::new());
        for &crop in &opts.crops {
            let (train_path, test_path) = opts.data.both_splits(&mut model, crop, stages)?;
            let splits = Splits { train: Cache::read(&train_path)?, train_path, test_path };
            let dir = opts.out_dir.join("heads").join(format!("{}-{crop}", stem(backbone)).replace(':', "-"));
            let mut candidates = Vec::new();
            for attribute in &opts.attributes {
                candidates.extend(fit_recipes(opts, &splits, &dir, &format!("{} {crop} {attribute}", stem(backbone)), attribute, stages)?);
            }
            sets.push(HeadSet { backbone: backbone.clone(), crop, candidates });
        }
    }
    Ok(sets)
}

/// The caches one head set is fitted and scored on.
struct Splits {
    train: Cache,
    train_path: PathBuf,
    test_path: PathBuf,
}

/// Every recipe's head for `attribute` in `dir`, scored on test; the first of the best
/// validation score is marked chosen.
fn fit_recipes(opts: &BeyondOptions, splits: &Splits, dir: &Path, name: &str, attribute: &str, stages: &mut Stages) -> Result<Vec<Candidate>> {
    let mut fitted = Vec::new();
    for recipe in RECIPES {
        let head = dir.join(format!("{attribute}-{}.onnx", recipe.file_stem()));
        let head_opts = recipe.options(attribute, opts.seed, opts.validation_percent);
        let name = format!("{name} {}", recipe.file_stem());
        let e = fit_and_score(&head, (&splits.train, &splits.train_path), &splits.test_path, &head_opts, &opts.data.session, &name, stages)?;
        let validation = e.head.validation_accuracy.map(|accuracy| Score { accuracy, balanced: e.head.validation_balanced_accuracy });
        fitted.push(Candidate { attribute: attribute.to_string(), recipe, head, validation, test: Score::of(&e.metrics), chosen: false });
    }
    let best = first_best(&fitted, validation_score);
    fitted[best].chosen = true;
    Ok(fitted)
}

/// The index of the highest `score`; on a tie the first.
fn first_best<T>(items: &[T], score: impl Fn(&T) -> f64) -> usize {
    (0..items.len()).fold(0, |best, i| if score(&items[i]) > score(&items[best]) { i } else { best })
}

fn stem(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

fn head_rows(opts: &BeyondOptions, set: &HeadSet) -> Vec<Row> {
    set.candidates
        .iter()
        .map(|c| Row {
            attribute: c.attribute.clone(),
            pipeline: format!("`{}` bottlenecks + softmax head", stem(&set.backbone)),
            configuration: format!(
                "crop {}, {}, standardised, {}% validation{}",
                set.crop,
                c.recipe.describe(),
                opts.validation_percent,
                if c.chosen { " (**chosen** on validation)" } else { "" }
            ),
            validation: c.validation,
            test: Some(c.test),
        })
        .collect()
}

fn deploy(opts: &BeyondOptions, set: &HeadSet, locator: Option<PathBuf>, stages: &mut Stages) -> Result<Deployed> {
    let started = Instant::now();
    let model = opts.out_dir.join("model.onnx");
    let heads: Vec<PathBuf> = set.chosen().iter().map(|c| c.head.clone()).collect();
    deployed::export_deployable(&set.backbone, &heads, set.crop, locator.as_deref(), opts.landmark_passes, &model)?;
    stages.done("export the deployable model".into(), started, model.display().to_string());
    let started = Instant::now();
    let (plain, reused) = deployed::score_plain_photos(&model, &opts.data, &opts.out_dir.join("model.predictions.csv"), earlier_plain_scores(opts))?;
    let note = if reused { "reused: the same file on the same photos".to_string() } else { format!("{} images", plain.images) };
    stages.done("predict the plain test photos".into(), started, note);
    Ok(Deployed { model, backbone: set.backbone.clone(), crop: set.crop, validation_score: set.choice_score(), landmark_model: locator, plain })
}

/// The plain-photo scores the last run left in `OUT/beyond.json`, if any. Scores from a
/// version that lacked a field (such as the per-class metrics) do not parse: measured again.
fn earlier_plain_scores(opts: &BeyondOptions) -> Option<PlainScores> {
    let text = std::fs::read_to_string(opts.out_dir.join("beyond.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(json["deployed"]["plain"].clone()).ok()
}

fn score_cell(s: Option<Score>) -> String {
    match s {
        None => "not read".to_string(),
        Some(s) => format!("{} ({})", percent(Some(s.accuracy)), percent(s.balanced)),
    }
}

/// The study's figures for `attribute`: (what, accuracy).
fn study_rows(attribute: &str) -> Vec<(String, f64)> {
    let mut found: Vec<(String, f64)> =
        STUDY_ACCURACY.iter().filter(|(a, _, _)| *a == attribute).map(|(_, crop, v)| (format!("InceptionV3 bottlenecks + softmax, crop {crop}"), *v)).collect();
    found.extend(STUDY_FINETUNE_ACCURACY.iter().filter(|(a, _)| *a == attribute).map(|(_, v)| ("InceptionV3 fine-tuned".to_string(), *v)));
    found.extend(STUDY_SCRATCH_ACCURACY.iter().filter(|(a, _, _)| *a == attribute).map(|(_, net, v)| (format!("{net} from scratch"), *v)));
    found
}

fn render(opts: &BeyondOptions, r: &Beyond, stages: &Stages) -> String {
    let mut s = String::from("# Beyond the study: every MTFL attribute through every pipeline\n\n");
    let _ = writeln!(
        s,
        "MTFL `{}`{}, seed {}. How settings were chosen: {} head recipes per attribute (below) are fitted on \
         training.txt less {}% held out for validation (a hash of the file names, seeded), and the one with the \
         best validation balanced accuracy is **chosen** (ties: the first listed); the trained networks \
         chose theirs on their own validation share, as their `result.json` records (found under `{}`). The \
         test list was read once per configuration shown; \"not read\" marks a run made with `--no-test`. \
         Cells: accuracy (balanced accuracy, the mean recall over the classes).\n",
        opts.data.mtfl.display(),
        opts.data.limit.map_or(String::new(), |l| format!(" (first {l} images of each split)")),
        opts.seed,
        RECIPES.len(),
        opts.validation_percent,
        opts.runs.display()
    );
    for attribute in &opts.attributes {
        let _ = writeln!(s, "## {attribute}\n\n| pipeline | configuration | validation | test |\n|---|---|---:|---:|");
        for row in r.rows.iter().filter(|row| row.attribute == *attribute) {
            let _ = writeln!(s, "| {} | {} | {} | {} |", row.pipeline, row.configuration, score_cell(row.validation), score_cell(row.test));
        }
        for (what, v) in study_rows(attribute) {
            let _ = writeln!(s, "| the study (TensorFlow) | {what} | | {} |", percent(Some(v)));
        }
        s.push('\n');
    }
    s.push_str(&landmarks_section(&r.landmarks));
    s.push_str(&deployed_section(r));
    s.push_str(&stages.markdown());
    s
}

fn landmarks_section(rows: &[LandmarkRow]) -> String {
    let mut s = String::from("## Landmarks (mean error over the inter-ocular distance)\n\n");
    if rows.is_empty() {
        s.push_str("No run with a landmark task was found (`retrain train --attribute all` on multi-task artifacts makes one; docs/training.md).\n\n");
        return s;
    }
    s.push_str("| run | validation | test |\n|---|---:|---:|\n");
    for row in rows {
        let test = row.test.map_or("not read".to_string(), |e| format!("{:.2}%", 100.0 * e));
        let _ = writeln!(s, "| `{}` | {} | {test} |", row.run.display(), row.validation.map_or("-".to_string(), |e| format!("{:.2}%", 100.0 * e)));
    }
    s.push('\n');
    s
}

fn deployed_section(r: &Beyond) -> String {
    let mut s = String::from("## The deployable model\n\n");
    let Some(d) = &r.deployed else {
        s.push_str("None: every head set needs a crop placed by landmarks, and no landmark model was found.\n\n");
        return s;
    };
    let located = d
        .landmark_model
        .as_ref()
        .map_or(String::new(), |l| format!(", its crop placed by the landmark model `{}` inside the file (the lowest validation error above)", l.display()));
    let _ = writeln!(
        s,
        "`{}`: backbone `{}`, crop {}{located}. Chosen as the head set with the highest mean validation \
         balanced accuracy ({:.1}%) among those that can run on plain photos. Input: decoded RGB pixels \
         `[1, H, W, 3]` uint8 (`retrain predict --model {}` takes image files).\n",
        d.model.display(),
        d.backbone.display(),
        d.crop,
        100.0 * d.validation_score,
        d.model.display()
    );
    let set = r.head_sets.iter().find(|h| h.backbone == d.backbone && h.crop == d.crop);
    let _ = writeln!(
        s,
        "On the {} test photos, annotations withheld ({} skipped; {:.0} s):\n\n| attribute | annotated-landmark crops | plain photos | difference (points) |\n|---|---:|---:|---:|",
        d.plain.images, d.plain.skipped, d.plain.seconds
    );
    for (i, (attribute, plain)) in d.plain.attributes.iter().enumerate() {
        let annotated = set.and_then(|h| h.chosen().get(i).map(|c| c.test));
        let diff = annotated.map_or("-".to_string(), |a| format!("{:+.1}", 100.0 * (plain.accuracy - a.accuracy)));
        let _ = writeln!(s, "| {attribute} | {} | {} | {diff} |", score_cell(annotated), score_cell(Some(Score::of(plain))));
    }
    if let (Some(e), Some(f)) = (d.plain.landmark_error, d.plain.landmark_failures) {
        let _ = writeln!(
            s,
            "\nLandmarks placed inside the file: mean error {:.2}% of the inter-ocular distance (failures above 10%: {:.1}%).",
            100.0 * e,
            100.0 * f
        );
    }
    s.push_str("\nPer class on the plain photos (rows: true class, normalised; recall per row, precision per column):\n\n");
    for (attribute, m) in &d.plain.attributes {
        let _ = writeln!(s, "{}", m.markdown(&format!("{attribute}, plain photos")));
    }
    s
}
