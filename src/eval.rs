//! Evaluating a head on a cache: the head's own ONNX file runs in ONNX Runtime on the cached
//! features, so what is scored is exactly what is shipped.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::{Array2, ArrayView2};
use serde::Serialize;

use crate::cache::Cache;
use crate::head::classes::{Classes, Labeled};
use crate::head::onnx::HeadFile;
use crate::head::{CacheOrigin, HeadInfo};
use crate::metrics::{self, Metrics};
use crate::predict::table::{Attribute, PredictionTable};
use crate::runtime::{self, SessionConfig};

/// The result of `retrain eval`.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The head file scored.
    pub head_path: String,
    /// The head's description.
    pub head: HeadInfo,
    /// The cache it was scored on.
    pub cache: CacheOrigin,
    /// Rows of the cache without a label for the attribute (not scored).
    pub unlabeled: usize,
    /// Accuracy, per-class precision and recall, confusion matrix.
    pub metrics: Metrics,
    #[serde(skip)]
    /// Each scored row's class probabilities.
    pub predictions: PredictionTable,
}

/// Scores the head at `head_path` on every labelled row of the cache at `cache_path`.
///
/// ```
/// use retrain::{eval::evaluate, runtime::SessionConfig};
/// # let dir = tempfile::tempdir()?;
/// # let head = retrain::examples::head(dir.path())?;
/// # let test_cache = dir.path().join("photos.h5");
///
/// let scores = evaluate(&head, &test_cache, &SessionConfig::cpu())?;
/// println!("{}", scores.markdown()); // accuracy, per-class precision and recall, confusion matrix
/// assert_eq!(scores.metrics.confusion.len(), 2);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn evaluate(head_path: &Path, cache_path: &Path, config: &SessionConfig) -> Result<Evaluation> {
    Ok(evaluate_all(&[head_path], cache_path, config)?.remove(0))
}

/// Scores each head on the cache (read once).
pub fn evaluate_all(head_paths: &[&Path], cache_path: &Path, config: &SessionConfig) -> Result<Vec<Evaluation>> {
    let cache = Cache::read(cache_path)?;
    head_paths.iter().map(|h| evaluate_on(h, &cache, cache_path, config)).collect()
}

fn evaluate_on(head_path: &Path, cache: &Cache, cache_path: &Path, config: &SessionConfig) -> Result<Evaluation> {
    let head = HeadFile::read(head_path)?;
    check_compatible(&head.info, cache, head_path, cache_path)?;
    let classes = Classes { attribute: head.info.attribute.clone(), labels: head.info.labels.clone(), codes: head.info.codes.clone() };
    let rows = Labeled::from_cache(cache, &classes).with_context(|| format!("cache {}", cache_path.display()))?;
    let probs = run_head(head_path, &head.info, rows.x.view(), config)?;
    let predicted = crate::head::softmax::predictions(probs.view());
    let mut predictions = PredictionTable::new(vec![Attribute { name: classes.attribute.clone(), labels: classes.labels.clone() }]);
    for (path, p) in rows.paths.iter().zip(probs.rows()) {
        predictions.push(&path.to_string_lossy(), &[p.as_slice().expect("standard layout")]);
    }
    Ok(Evaluation {
        head_path: head_path.display().to_string(),
        metrics: metrics::score(&rows.y, &predicted, &classes.labels),
        head: head.info,
        cache: CacheOrigin::of(cache, cache_path),
        unlabeled: rows.unlabeled,
        predictions,
    })
}

/// A head only makes sense on features of the backbone, output and preprocessing it was trained on.
pub fn check_compatible(info: &HeadInfo, cache: &Cache, head_path: &Path, cache_path: &Path) -> Result<()> {
    let (h, c) = (head_path.display(), cache_path.display());
    if cache.features.ncols() != info.dim {
        bail!(
            "head {h} takes {} features per image, but cache {c} has {} ('/features' is [{}, {}])",
            info.dim,
            cache.features.ncols(),
            cache.features.nrows(),
            cache.features.ncols()
        );
    }
    let pairs = [
        ("model (sha256)", &info.cache.model_sha256, &cache.model_sha256),
        ("model output", &info.cache.output, &cache.output),
        ("preprocessing", &info.cache.preprocess, &cache.preprocess),
    ];
    for (what, trained, here) in pairs {
        if trained != here {
            bail!("head {h} was trained on features with {what} '{trained}', but cache {c} has '{here}'");
        }
    }
    Ok(())
}

/// Runs a head file on features, in ONNX Runtime.
pub fn run_head(head_path: &Path, info: &HeadInfo, x: ArrayView2<f32>, config: &SessionConfig) -> Result<Array2<f32>> {
    let mut session = runtime::session(head_path, config)?;
    let n = x.nrows();
    let data = x.iter().copied().collect();
    let mut outputs = runtime::run_f32(&mut session, &info.input, &[n, info.dim], data, std::slice::from_ref(&info.output))
        .with_context(|| format!("running head {} on {n} rows", head_path.display()))?;
    let (_, values) = outputs.remove(0);
    Ok(Array2::from_shape_vec((n, info.labels.len()), values)?)
}

impl Evaluation {
    /// E.g. `smile (linfa head on mtfl:testing, crop nose:150)`.
    pub fn title(&self) -> String {
        let crop = crate::preprocess::Preprocess::crop_of(&self.cache.preprocess).map_or_else(|_| "unknown".to_string(), |c| c.to_string());
        format!("{} ({} head on {}, crop {crop})", self.head.attribute, self.head.solver.name(), self.cache.source)
    }

    /// The scores as a Markdown section: accuracy, per-class table, confusion matrix.
    pub fn markdown(&self) -> String {
        self.metrics.markdown(&self.title())
    }

    /// Writes whichever of the JSON, PNG and per-image predictions are asked for.
    pub fn write(&self, json: Option<&Path>, png: Option<&Path>, predictions: Option<&Path>) -> Result<()> {
        if let Some(path) = json {
            crate::write_file(path, serde_json::to_string_pretty(self)?)?;
        }
        if let Some(path) = png {
            crate::create_parent_dir(path)?;
            crate::plot::save_confusion_png(&self.metrics, &self.title(), path)?;
        }
        if let Some(path) = predictions {
            self.predictions.write(path)?;
        }
        Ok(())
    }
}

/// Writes the scores of `evaluations` as JSON to `json` (a list for several heads), the
/// confusion matrices as PNG to `png` (`STEM-ATTRIBUTE.png` beside it for several heads)
/// and the per-image predictions of every head as one table to `predictions`.
pub fn write_all(evaluations: &[Evaluation], json: Option<&Path>, png: Option<&Path>, predictions: Option<&Path>) -> Result<()> {
    if let [evaluation] = evaluations {
        return evaluation.write(json, png, predictions);
    }
    for e in evaluations {
        let beside = png.map(|p| p.with_file_name(format!("{}-{}.png", p.file_stem().unwrap_or_default().to_string_lossy(), e.head.attribute)));
        e.write(None, beside.as_deref(), None)?;
    }
    if let Some(json) = json {
        crate::write_file(json, serde_json::to_string_pretty(evaluations)?)?;
    }
    match predictions {
        Some(path) => merged_predictions(evaluations)?.write(path),
        None => Ok(()),
    }
}

/// One row per evaluation: attribute, head, accuracy, balanced accuracy and each class's
/// recall (the imbalanced attributes, glasses and pose, read off the last two).
pub fn summary_table(evaluations: &[Evaluation]) -> String {
    let mut s = String::from("| attribute | head | images | accuracy | balanced accuracy | recall per class |\n|---|---|---:|---:|---:|---|\n");
    for e in evaluations {
        let m = &e.metrics;
        let recalls: Vec<String> = m.classes.iter().map(|c| format!("{} {}", c.label, metrics::percent(c.recall))).collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            e.head.attribute,
            e.head.solver.name(),
            m.rows,
            metrics::percent(Some(m.accuracy)),
            metrics::percent(Some(m.balanced_accuracy)),
            recalls.join(", ")
        ));
    }
    s
}

/// The evaluations' per-image predictions as one table (every head scored the same rows).
pub fn merged_predictions(evaluations: &[Evaluation]) -> Result<PredictionTable> {
    let first = &evaluations[0].predictions;
    if let Some(e) = evaluations.iter().find(|e| e.predictions.paths != first.paths) {
        bail!(
            "heads {} and {} score different rows (unlabelled ones differ): write their predictions one head at a time",
            evaluations[0].head_path,
            e.head_path
        );
    }
    let mut table = PredictionTable::new(evaluations.iter().flat_map(|e| e.predictions.attributes.clone()).collect());
    for (i, path) in first.paths.iter().enumerate() {
        let rows: Vec<&[f32]> = evaluations.iter().map(|e| e.predictions.row(0, i)).collect();
        table.push(path, &rows);
    }
    Ok(table)
}
