//! Softmax heads on cached bottlenecks: training, and the small ONNX graph each head is saved as.
//!
//! A head is `softmax(((x - mean) * scale) W^T + b)`. Two solvers fit W and b: linfa-logistic's
//! L-BFGS ([`linfa`]) and the study's mini-batch recipe ([`sgd`]). Either way the result is one
//! ONNX file (standardisation + Gemm + Softmax, see [`onnx`]) that carries its labels and how it
//! was trained, plus `NAME.history.json` with the learning curve.

pub mod classes;
pub mod info;
pub mod linfa;
pub mod onnx;
pub mod reuse;
pub mod sgd;
pub mod softmax;
pub mod standardize;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2, Axis};

use crate::cache::Cache;
use crate::dataset::split::{assign, Subset};
use classes::{Classes, Labeled};
use linfa::LinfaParams;
use sgd::{CurvePoint, SgdParams};
use standardize::Standardizer;

pub use info::{paths_sha256, CacheOrigin, ClassWeight, HeadInfo, Solver};

/// Everything that decides a head.
#[derive(Debug, Clone)]
pub struct HeadOptions {
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

/// Parameters -> fit -> a head that predicts, in linfa's manner:
///
/// ```
/// use retrain::cache::Cache;
/// use retrain::head::{ClassWeight, HeadOptions, Solver};
/// # let dir = tempfile::tempdir()?;
/// # let cache_path = retrain::examples::cache(dir.path())?;
///
/// let cache = Cache::read(&cache_path)?;
/// let params = HeadOptions::new("class", Solver::Linfa).with_class_weight(ClassWeight::Balanced).with_seed(7);
/// let head = params.fit(&cache, &cache_path)?.head;
/// let labels = head.predict_labels(cache.features.view());
/// assert_eq!((labels[0], labels[labels.len() - 1]), ("dark", "light"));
/// # Ok::<(), anyhow::Error>(())
/// ```
impl HeadOptions {
    /// Defaults for `attribute` fitted by `solver`: seed 0, standardised features, no class
    /// weighting, the solver's own validation share and parameters.
    pub fn new(attribute: &str, solver: Solver) -> Self {
        HeadOptions {
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

    /// The seed of the validation split and of SGD's batches.
    pub fn with_seed(self, seed: u64) -> Self {
        HeadOptions { seed, ..self }
    }

    /// The loss weight of each class.
    pub fn with_class_weight(self, class_weight: ClassWeight) -> Self {
        HeadOptions { class_weight, ..self }
    }

    /// The percentage of training rows held out for validation.
    pub fn with_validation_percent(self, percent: f64) -> Self {
        HeadOptions { validation_percent: Some(percent), ..self }
    }

    /// The linfa solver's parameters (C, iterations, precision).
    pub fn with_linfa(self, linfa: LinfaParams) -> Self {
        HeadOptions { linfa, ..self }
    }

    /// The SGD solver's parameters (learning rate, batch, steps).
    pub fn with_sgd(self, sgd: SgdParams) -> Self {
        HeadOptions { sgd, ..self }
    }

    /// Fits a head on the labelled rows of `cache` (read from `cache_path`, recorded with it):
    /// [`train`] without a learning-curve callback.
    pub fn fit(&self, cache: &Cache, cache_path: &Path) -> Result<Trained> {
        train(cache, cache_path, self, &mut |_| {})
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

    /// The most probable class (its index into `info.labels`) of each row of raw features.
    pub fn predict(&self, x: ArrayView2<f32>) -> Vec<usize> {
        self.probabilities(x).rows().into_iter().map(softmax::argmax).collect()
    }

    /// The most probable class name of each row of raw features.
    pub fn predict_labels(&self, x: ArrayView2<f32>) -> Vec<&str> {
        self.predict(x).into_iter().map(|k| self.info.labels[k].as_str()).collect()
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

/// Trains a head for `opts.attribute` on the rows of `cache` that have a label for it;
/// `on_point` sees each point of the SGD solver's learning curve.
///
/// ```
/// use retrain::cache::Cache;
/// use retrain::head::{train, ClassWeight, Solver, HeadOptions};
/// # let dir = tempfile::tempdir()?;
/// # let cache_path = retrain::examples::cache(dir.path())?;
///
/// let cache = Cache::read(&cache_path)?; // from `extract` on class folders
/// let opts = HeadOptions { class_weight: ClassWeight::Balanced, ..HeadOptions::new("class", Solver::Linfa) };
/// let fitted = train(&cache, &cache_path, &opts, &mut |_| {})?;
/// assert_eq!(fitted.head.info.labels, ["dark", "light"]);
/// fitted.head.save(&dir.path().join("class.onnx"), &fitted.curve)?;
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn train(cache: &Cache, cache_path: &Path, opts: &HeadOptions, on_point: &mut dyn FnMut(&CurvePoint)) -> Result<Trained> {
    let standardizer = standardizer_of(cache, opts);
    train_on(cache, cache_path, opts, &standardizer, on_point)
}

/// A head for each of `attributes` (`opts.attribute` aside) on one standardisation, fitted once
/// on the cache's training rows; `on_point(attribute, point)` sees every learning curve.
pub fn train_all(
    cache: &Cache,
    cache_path: &Path,
    attributes: &[String],
    opts: &HeadOptions,
    on_point: &mut dyn FnMut(&str, &CurvePoint),
) -> Result<Vec<Trained>> {
    let standardizer = standardizer_of(cache, opts);
    attributes
        .iter()
        .map(|a| train_on(cache, cache_path, &HeadOptions { attribute: a.clone(), ..opts.clone() }, &standardizer, &mut |p| on_point(a, p)))
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
fn standardizer_of(cache: &Cache, opts: &HeadOptions) -> Standardizer {
    if !opts.standardize {
        return Standardizer::identity(cache.features.ncols());
    }
    let percent = opts.validation_percent.unwrap_or(opts.solver.default_validation_percent());
    let rows: Vec<usize> = (0..cache.paths.len()).filter(|&i| percent <= 0.0 || assign(&cache.paths[i], opts.seed, percent) == Subset::Train).collect();
    Standardizer::fit(cache.features.select(Axis(0), &rows).view())
}

fn train_on(cache: &Cache, cache_path: &Path, opts: &HeadOptions, standardizer: &Standardizer, on_point: &mut dyn FnMut(&CurvePoint)) -> Result<Trained> {
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

fn fit(opts: &HeadOptions, train: &Labeled, validation: Option<&Labeled>, class_weights: &[f32], on_point: &mut dyn FnMut(&CurvePoint)) -> Result<Fit> {
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
