//! `RUN/result.json`, what a run that trained a network wrote at its end: `retrain train`'s
//! [`TrainSummary`], `retrain finetune`'s [`FinetuneSummary`], or `scripts/landmark_regressor.py`'s
//! [`RegressorResult`], read back as the type that wrote it.
//!
//! From this version on `retrain` writes `"kind": "train"` or `"kind": "finetune"` first in the
//! file; a file without `kind` (written earlier, or by the landmark regressor) is told apart by
//! its fields: a fine-tuning result first (it has `settings` and both phases), then a training
//! result, then a landmark regressor's.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::finetune::FinetuneSummary;
use crate::train::TrainSummary;

/// What one run wrote to `result.json`.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a few per report, each read once
pub enum RunResult {
    /// `retrain train` (one attribute, or every task of a multi-task graph).
    Train(TrainSummary),
    /// `retrain finetune`.
    Finetune(FinetuneSummary),
    /// `scripts/landmark_regressor.py`.
    Landmarks(RegressorResult),
}

/// What `scripts/landmark_regressor.py` writes to `RUN/result.json` (the fields retrain reads;
/// it writes more: the jitter, every candidate, the row counts, ...).
#[derive(Debug, Clone, Deserialize)]
pub struct RegressorResult {
    /// What it is, in words: "landmark ridge regression on a pretrained backbone".
    pub pipeline: String,
    /// The backbone whose feature map it regresses from.
    pub backbone: PathBuf,
    /// The backbone's tensor it reads.
    #[serde(default)]
    pub layer: String,
    /// The crop of the windows it was fitted on, e.g. `face:3.2`.
    #[serde(default)]
    pub crop: String,
    /// Seed of the validation share and the jitter.
    #[serde(default)]
    pub seed: u64,
    /// The ridge strength chosen on validation.
    #[serde(default)]
    pub ridge: Option<f64>,
    /// The training mean shape's scores on the validation windows, the baseline.
    #[serde(default)]
    pub mean_shape: Option<RegressorScore>,
    /// The chosen strength's scores on validation (one task, `landmarks`).
    pub val_tasks: Vec<RegressorScore>,
    /// Empty: it does not read the test list.
    #[serde(default)]
    pub test_tasks: Vec<RegressorScore>,
}

/// Landmark scores of the regressor on a set of windows.
#[derive(Debug, Clone, Deserialize)]
pub struct RegressorScore {
    /// `landmarks` (none for the mean shape).
    #[serde(default)]
    pub name: String,
    /// Mean distance to the annotated points over the inter-ocular distance, mean over rows.
    pub mean_error: f64,
    /// Rows whose mean error exceeds 10% of the inter-ocular distance.
    #[serde(default)]
    pub failure_rate: Option<f64>,
}

impl RunResult {
    /// `dir/result.json`; errors name the file.
    pub fn read(dir: &Path) -> Result<RunResult> {
        let path = dir.join("result.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        RunResult::parse(&text).with_context(|| format!("{} is not a result.json of retrain train, retrain finetune or the landmark regressor", path.display()))
    }

    /// The text of a `result.json`.
    pub fn parse(text: &str) -> Result<RunResult> {
        #[derive(Deserialize)]
        struct Kind {
            kind: Option<String>,
        }
        let kind: Kind = serde_json::from_str(text).context("not a JSON object")?;
        match kind.kind.as_deref() {
            Some(TrainSummary::KIND) => Ok(RunResult::Train(serde_json::from_str(text)?)),
            Some(FinetuneSummary::KIND) => Ok(RunResult::Finetune(serde_json::from_str(text)?)),
            Some(other) => bail!("kind '{other}' is none of '{}', '{}'", TrainSummary::KIND, FinetuneSummary::KIND),
            // written before `kind`, or by the landmark regressor
            None => {
                let finetune = match serde_json::from_str(text) {
                    Ok(s) => return Ok(RunResult::Finetune(s)),
                    Err(e) => e,
                };
                let train = match serde_json::from_str(text) {
                    Ok(s) => return Ok(RunResult::Train(s)),
                    Err(e) => e,
                };
                match serde_json::from_str(text) {
                    Ok(r) => Ok(RunResult::Landmarks(r)),
                    Err(landmarks) => {
                        bail!("it has no `kind`, and reads as none: as train's, {train}; as finetune's, {finetune}; as the landmark regressor's, {landmarks}")
                    }
                }
            }
        }
    }

    /// The fine-tuning run's summary, if it is one.
    pub fn finetune(&self) -> Option<&FinetuneSummary> {
        match self {
            RunResult::Finetune(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `*result.json` under `dir`, in name order.
    fn result_files(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(result_files(&path));
            } else if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("result.json")) {
                found.push(path);
            }
        }
        found.sort();
        found
    }

    fn docs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
    }

    #[test]
    fn every_committed_result_reads_as_the_command_that_wrote_it() {
        let files = result_files(&docs());
        assert!(files.len() >= 7, "{files:?}");
        for path in &files {
            let text = std::fs::read_to_string(path).unwrap();
            let result = RunResult::parse(&text).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            let in_finetune = path.starts_with(docs().join("finetune"));
            match &result {
                RunResult::Finetune(s) => {
                    assert!(in_finetune, "{} read as a fine-tuning result", path.display());
                    assert!(s.test.balanced_accuracy > 0.0, "recomputed from the recalls: {}", path.display());
                }
                RunResult::Train(s) => {
                    assert!(!in_finetune, "{} read as a training result", path.display());
                    assert!(s.epochs_completed > 0 && s.test_accuracy.is_some(), "{}", path.display());
                }
                RunResult::Landmarks(_) => panic!("{} read as a landmark regressor's", path.display()),
            }
        }
    }

    #[test]
    fn old_files_read_with_defaults_for_what_they_lack() {
        let read = |name: &str| RunResult::parse(&std::fs::read_to_string(docs().join(name)).unwrap()).unwrap();
        let RunResult::Train(s) = read("table5/tcdcn_result.json") else { panic!("not a training result") };
        assert_eq!((s.attribute.as_str(), s.crop.as_str(), s.test_crop.as_str()), ("smile", "?", "?"));
        assert!(s.val_tasks.is_empty() && s.test_tasks.is_none() && !s.stopped_early && s.best_val_loss.is_nan());
        assert_eq!(s.schedule, crate::train::schedule::Schedule::default());
        let RunResult::Finetune(s) = read("finetune/cpu_smile_b8_result.json") else { panic!("not a fine-tuning result") };
        let recalls = [0.3247232472324723, 0.8091286307053942];
        assert!((s.test.balanced_accuracy - (recalls[0] + recalls[1]) / 2.0).abs() < 1e-12);
        assert_eq!((s.settings.train_from.as_deref(), s.phase2.steps), (None, 30));
    }

    #[test]
    fn written_results_add_only_their_kind_and_read_back() {
        let read = |name: &str| RunResult::parse(&std::fs::read_to_string(docs().join(name)).unwrap()).unwrap();
        let (RunResult::Train(train), RunResult::Finetune(finetune)) =
            (read("table5/tcdcn_face_valchosen_result.json"), read("finetune/cpu_smile_b8_result.json"))
        else {
            panic!("wrong kinds")
        };
        let plain = [serde_json::to_string_pretty(&train).unwrap() + "\n", serde_json::to_string_pretty(&finetune).unwrap() + "\n"];
        let written = [train.to_json().unwrap(), finetune.to_json().unwrap()];
        for ((plain, written), kind) in plain.iter().zip(&written).zip(["train", "finetune"]) {
            // the same lines, in the same order, after the first: `"kind": "..."`
            let kind_line = format!("  \"kind\": \"{kind}\",");
            assert_eq!(written.lines().nth(1), Some(kind_line.as_str()), "{written}");
            let without: Vec<&str> = written.lines().filter(|l| *l != kind_line).collect();
            assert_eq!(without, plain.lines().collect::<Vec<_>>());
        }
        let RunResult::Train(again) = RunResult::parse(&written[0]).unwrap() else { panic!("not train") };
        assert_eq!(serde_json::to_string_pretty(&again).unwrap(), serde_json::to_string_pretty(&train).unwrap());
        let RunResult::Finetune(again) = RunResult::parse(&written[1]).unwrap() else { panic!("not finetune") };
        assert_eq!(again.test, finetune.test);
    }

    #[test]
    fn a_landmark_regressor_result_and_foreign_files() {
        let regressor = r#"{"attribute": "landmarks", "pipeline": "landmark ridge regression on a pretrained backbone",
            "backbone": "onnx/faceres.onnx", "layer": "relu", "crop": "face:3.2", "test_crop": "original", "seed": 0,
            "ridge": 10.0, "mean_shape": {"mean_error": 0.2, "failure_rate": 0.9},
            "val_tasks": [{"name": "landmarks", "mean_error": 0.05, "failure_rate": 0.01}], "test_tasks": []}"#;
        let RunResult::Landmarks(r) = RunResult::parse(regressor).unwrap() else { panic!("not the regressor's") };
        assert_eq!((r.val_tasks[0].name.as_str(), r.val_tasks[0].mean_error, r.crop.as_str()), ("landmarks", 0.05, "face:3.2"));
        assert!(r.test_tasks.is_empty());

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("result.json"), r#"{"accuracy": 0.5}"#).unwrap();
        let e = format!("{:#}", RunResult::read(dir.path()).unwrap_err());
        assert!(e.contains(&dir.path().join("result.json").display().to_string()) && e.contains("no `kind`"), "{e}");
        std::fs::write(dir.path().join("result.json"), r#"{"kind": "eval"}"#).unwrap();
        let e = format!("{:#}", RunResult::read(dir.path()).unwrap_err());
        assert!(e.contains("result.json") && e.contains("kind 'eval'"), "{e}");
        std::fs::write(dir.path().join("result.json"), r#"{"kind": "train", "attribute": "smile"}"#).unwrap();
        let e = format!("{:#}", RunResult::read(dir.path()).unwrap_err());
        assert!(e.contains("missing field"), "{e}");
        std::fs::remove_file(dir.path().join("result.json")).unwrap();
        assert!(format!("{:#}", RunResult::read(dir.path()).unwrap_err()).contains("cannot read"));
    }

    #[test]
    fn a_loss_written_as_null_reads_as_nan() {
        let text = std::fs::read_to_string(docs().join("table5/tcdcn_face_valchosen_result.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["best_val_loss"] = serde_json::Value::Null;
        v["val_tasks"] = serde_json::json!([{"name": "landmarks", "loss": null, "mean_error": 0.1}]);
        let RunResult::Train(s) = RunResult::parse(&v.to_string()).unwrap() else { panic!("not train") };
        assert!(s.best_val_loss.is_nan() && s.val_tasks[0].loss.is_nan());
        assert_eq!(s.val_tasks[0].mean_error, Some(0.1));
    }
}
