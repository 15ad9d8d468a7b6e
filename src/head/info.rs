//! What a head is and how it was made ([`HeadInfo`], stored as JSON in the head's ONNX
//! metadata), and the solver and class-weighting choices it records.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;

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
