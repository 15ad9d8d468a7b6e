//! Softmax heads on cached bottlenecks: training, and the small ONNX graph each head is saved as.
//!
//! A head is `softmax(((x - mean) * scale) W^T + b)`. Two solvers fit W and b: linfa-logistic's
//! L-BFGS ([`linfa`]) and the study's mini-batch recipe ([`sgd`]). Either way the result is one
//! ONNX file (standardisation + Gemm + Softmax, see [`onnx`]) that carries its labels and how it
//! was trained, plus `NAME.history.json` with the learning curve.

pub mod classes;
pub mod linfa;
pub mod onnx;
pub mod reuse;
pub mod sgd;
pub mod softmax;
pub mod standardize;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::dataset::split::{assign, Subset};
use classes::{Classes, Labeled};
use linfa::LinfaParams;
use sgd::{CurvePoint, SgdParams};
use standardize::Standardizer;

/// How W and b are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// linfa-logistic MultiLogisticRegression (L-BFGS on the full training set).
    Linfa,
    /// The study's mini-batch gradient descent.
    Sgd,
    /// The new layer of a fine-tuned network (`retrain finetune`), not a solver of train-head.
    Finetune,
}

impl Solver {
    /// The study held out 10% for validation; L-BFGS needs none, so it trains on everything
    /// (as scikit-learn's baseline does).
    pub fn default_validation_percent(self) -> f64 {
        match self {
            Solver::Linfa => 0.0,
            Solver::Sgd | Solver::Finetune => 10.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Solver::Linfa => "linfa",
            Solver::Sgd => "sgd",
            Solver::Finetune => "finetune",
        }
    }
}

impl std::str::FromStr for Solver {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linfa" | "lbfgs" => Ok(Solver::Linfa),
            "sgd" | "study" => Ok(Solver::Sgd),
            _ => bail!("unknown solver '{s}': expected linfa or sgd"),
        }
    }
}

/// Loss weight per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeight {
    None,
    /// n / (classes * n_class), as scikit-learn's `class_weight="balanced"`: every class
    /// contributes equally, so a minority class cannot be neglected.
    Balanced,
}

impl ClassWeight {
    pub fn weights(self, counts: &[usize]) -> Vec<f32> {
        let n: usize = counts.iter().sum();
        match self {
            ClassWeight::None => vec![1.0; counts.len()],
            ClassWeight::Balanced => counts.iter().map(|&c| n as f32 / (counts.len() * c.max(1)) as f32).collect(),
        }
    }
}

impl std::str::FromStr for ClassWeight {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(ClassWeight::None),
            "balanced" => Ok(ClassWeight::Balanced),
            _ => bail!("unknown class weighting '{s}': expected none or balanced"),
        }
    }
}

/// Everything that decides a head.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub attribute: String,
    pub solver: Solver,
    pub seed: u64,
    pub standardize: bool,
    pub class_weight: ClassWeight,
    /// Share of training rows held out for validation; `None` = the solver's default.
    pub validation_percent: Option<f64>,
    pub linfa: LinfaParams,
    pub sgd: SgdParams,
}

impl TrainOptions {
    pub fn new(attribute: &str, solver: Solver) -> Self {
        TrainOptions {
            attribute: attribute.to_string(),
            solver,
            seed: 0,
            standardize: true,
            class_weight: ClassWeight::None,
            validation_percent: None,
            linfa: LinfaParams::default(),
            sgd: SgdParams::default(),
        }
    }
}

/// The cache a head was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheOrigin {
    pub path: String,
    pub model_sha256: String,
    pub output: String,
    pub preprocess: String,
    pub source: String,
    /// Rows of the cache and the SHA-256 of their image names, one per line: with the identity
    /// above, the cache's contents (heads before these fields have 0 and "").
    #[serde(default)]
    pub rows: usize,
    #[serde(default)]
    pub paths_sha256: String,
}

impl CacheOrigin {
    pub fn of(cache: &Cache, path: &Path) -> CacheOrigin {
        CacheOrigin {
            path: path.display().to_string(),
            model_sha256: cache.model_sha256.clone(),
            output: cache.output.clone(),
            preprocess: cache.preprocess.clone(),
            source: cache.source.clone(),
            rows: cache.paths.len(),
            paths_sha256: paths_sha256(&cache.paths),
        }
    }
}

/// SHA-256 of image names (their bytes), one per line.
pub fn paths_sha256(paths: &[OsString]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_encoded_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// What a head is and how it was made; stored as JSON in the head's ONNX metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadInfo {
    pub attribute: String,
    /// Output column k is the probability of `labels[k]`.
    pub labels: Vec<String>,
    /// The cache's label code for each label.
    pub codes: Vec<i32>,
    /// Features per row (the backbone output width).
    pub dim: usize,
    /// Graph input and output names.
    pub input: String,
    pub output: String,
    pub solver: Solver,
    pub seed: u64,
    /// The solver's hyperparameters.
    pub params: serde_json::Value,
    pub standardized: bool,
    pub class_weight: ClassWeight,
    pub class_weights: Vec<f32>,
    pub validation_percent: f64,
    pub train_rows: usize,
    pub validation_rows: usize,
    /// Training rows per class.
    pub class_counts: Vec<usize>,
    pub train_accuracy: f64,
    pub validation_accuracy: Option<f64>,
    /// Mean recall over the classes on the validation rows: what class weighting is chosen by
    /// for an imbalanced attribute.
    #[serde(default)]
    pub validation_balanced_accuracy: Option<f64>,
    /// Applying the standardisation plus the solver, excluding reading the cache (and fitting
    /// the standardisation, done once for every head of a call).
    pub train_seconds: f64,
    pub cache: CacheOrigin,
    pub created: String,
    pub tool_version: String,
}

impl HeadInfo {
    /// One line: solver, attribute, rows, accuracies, time and seed.
    pub fn summary(&self) -> String {
        let balanced = self.validation_balanced_accuracy.map_or(String::new(), |b| format!(", balanced {:.1}%", 100.0 * b));
        let validation =
            self.validation_accuracy.map_or(String::new(), |v| format!(", validation accuracy {:.1}%{balanced} ({} rows)", 100.0 * v, self.validation_rows));
        format!(
            "{} head for {} ({}) on {} rows: train accuracy {:.1}%{validation}; fitted in {:.2} s; seed {}",
            self.solver.name(),
            self.attribute,
            self.labels.join("/"),
            self.train_rows,
            100.0 * self.train_accuracy,
            self.train_seconds,
            self.seed
        )
    }
}

/// A trained head.
#[derive(Debug, Clone)]
pub struct Head {
    pub info: HeadInfo,
    pub standardizer: Standardizer,
    /// [classes, features], acting on standardised features.
    pub weights: Array2<f32>,
    pub bias: Vec<f32>,
}

impl Head {
    /// Class probabilities for raw (unstandardised) features.
    pub fn probabilities(&self, x: ArrayView2<f32>) -> Array2<f32> {
        softmax::probabilities(self.standardizer.apply(x).view(), self.weights.view(), &self.bias)
    }

    /// Writes `path` (the ONNX head) and its history next to it.
    pub fn save(&self, path: &Path, curve: &[CurvePoint]) -> Result<()> {
        crate::write_file(path, onnx::encode(self)?)?;
        let history = serde_json::json!({ "head": self.info, "curve": curve });
        crate::write_file(&history_path(path), serde_json::to_string_pretty(&history)?)
    }
}

/// `NAME.onnx` -> `NAME.history.json`.
pub fn history_path(head: &Path) -> PathBuf {
    head.with_extension("history.json")
}

/// A head and its learning curve (empty for linfa, which reports none).
pub struct Trained {
    pub head: Head,
    pub curve: Vec<CurvePoint>,
}

/// Trains a head for `opts.attribute` on the rows of `cache` that have a label for it.
pub fn train(cache: &Cache, cache_path: &Path, opts: &TrainOptions, on_point: &mut dyn FnMut(&CurvePoint)) -> Result<Trained> {
    let standardizer = standardizer_of(cache, opts);
    train_on(cache, cache_path, opts, &standardizer, on_point)
}

/// A head for each of `attributes` (`opts.attribute` aside) on one standardisation, fitted once
/// on the cache's training rows; `on_point(attribute, point)` sees every learning curve.
pub fn train_all(
    cache: &Cache,
    cache_path: &Path,
    attributes: &[String],
    opts: &TrainOptions,
    on_point: &mut dyn FnMut(&str, &CurvePoint),
) -> Result<Vec<Trained>> {
    let standardizer = standardizer_of(cache, opts);
    attributes
        .iter()
        .map(|a| train_on(cache, cache_path, &TrainOptions { attribute: a.clone(), ..opts.clone() }, &standardizer, &mut |p| on_point(a, p)))
        .collect()
}

/// The attributes of a cache that a head can be trained for (every MTFL attribute, or the
/// class folders' `class`).
pub fn attributes_of(cache: &Cache) -> Vec<String> {
    cache.label_columns.iter().filter(|a| Classes::of(cache, a).is_ok()).cloned().collect()
}

/// Mean and scale of the features over the training rows (those the validation split
/// leaves), or the identity with standardisation off. The split goes by file name, so the
/// training rows are the same for every attribute.
fn standardizer_of(cache: &Cache, opts: &TrainOptions) -> Standardizer {
    if !opts.standardize {
        return Standardizer::identity(cache.features.ncols());
    }
    let percent = opts.validation_percent.unwrap_or(opts.solver.default_validation_percent());
    let rows: Vec<usize> = (0..cache.paths.len()).filter(|&i| percent <= 0.0 || assign(&cache.paths[i], opts.seed, percent) == Subset::Train).collect();
    Standardizer::fit(cache.features.select(Axis(0), &rows).view())
}

fn train_on(cache: &Cache, cache_path: &Path, opts: &TrainOptions, standardizer: &Standardizer, on_point: &mut dyn FnMut(&CurvePoint)) -> Result<Trained> {
    let classes = Classes::of(cache, &opts.attribute)?;
    let validation_percent = opts.validation_percent.unwrap_or(opts.solver.default_validation_percent());
    let (train, validation) = split(Labeled::from_cache(cache, &classes)?, opts.seed, validation_percent);
    let counts = train.counts(classes.len());
    if let Some(k) = counts.iter().position(|&c| c == 0) {
        let (c, a) = (cache_path.display(), &classes.attribute);
        bail!("cache {c}: no training row has {a} = {} (code {}); every class needs examples", classes.labels[k], classes.codes[k]);
    }
    let class_weights = opts.class_weight.weights(&counts);
    let started = Instant::now();
    let train = Labeled { x: standardizer.apply(train.x.view()), ..train };
    let validation = validation.map(|v| Labeled { x: standardizer.apply(v.x.view()), ..v });
    let fit = fit(opts, &train, validation.as_ref(), &class_weights, on_point)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let metrics = |d: &Labeled| {
        let predicted = softmax::predictions(softmax::probabilities(d.x.view(), fit.weights.view(), &fit.bias).view());
        crate::metrics::score(&d.y, &predicted, &classes.labels)
    };
    let train_accuracy = metrics(&train).accuracy;
    let validation_metrics = validation.as_ref().map(metrics);
    let info = HeadInfo {
        attribute: classes.attribute.clone(),
        output: onnx::output_name(&classes.attribute),
        labels: classes.labels,
        codes: classes.codes,
        dim: train.x.ncols(),
        input: onnx::INPUT.to_string(),
        solver: opts.solver,
        seed: opts.seed,
        params: fit.params,
        standardized: opts.standardize,
        class_weight: opts.class_weight,
        class_weights,
        validation_percent,
        train_rows: train.y.len(),
        validation_rows: validation.as_ref().map_or(0, |v| v.y.len()),
        class_counts: counts,
        train_accuracy,
        validation_accuracy: validation_metrics.as_ref().map(|m| m.accuracy),
        validation_balanced_accuracy: validation_metrics.as_ref().map(|m| m.balanced_accuracy),
        train_seconds,
        cache: CacheOrigin::of(cache, cache_path),
        created: chrono::Utc::now().to_rfc3339(),
        tool_version: format!("retrain {}", crate::version()),
    };
    Ok(Trained { head: Head { info, standardizer: standardizer.clone(), weights: fit.weights, bias: fit.bias }, curve: fit.curve })
}

/// What a solver found, with the parameters it was given (for the record).
struct Fit {
    weights: Array2<f32>,
    bias: Vec<f32>,
    curve: Vec<CurvePoint>,
    params: serde_json::Value,
}

fn fit(opts: &TrainOptions, train: &Labeled, validation: Option<&Labeled>, class_weights: &[f32], on_point: &mut dyn FnMut(&CurvePoint)) -> Result<Fit> {
    Ok(match opts.solver {
        Solver::Sgd => {
            let f = sgd::train(train, validation, class_weights, &opts.sgd, opts.seed, on_point);
            Fit { weights: f.weights, bias: f.bias, curve: f.curve, params: serde_json::to_value(&opts.sgd)? }
        }
        Solver::Linfa => {
            let (weights, bias) = linfa::train(train, class_weights, &opts.linfa)?;
            Fit { weights, bias, curve: Vec::new(), params: serde_json::to_value(&opts.linfa)? }
        }
        Solver::Finetune => bail!("fine-tuned heads come from `retrain finetune`, not from train-head"),
    })
}

/// Training and validation rows, by hashing file names as retrain.py does (stable across runs
/// and additions). No validation set when `percent` is 0.
fn split(all: Labeled, seed: u64, percent: f64) -> (Labeled, Option<Labeled>) {
    if percent <= 0.0 {
        return (all, None);
    }
    let (val, train): (Vec<usize>, Vec<usize>) = (0..all.y.len()).partition(|&i| assign(&all.paths[i], seed, percent) == Subset::Holdout);
    (all.select(&train), Some(all.select(&val)))
}
