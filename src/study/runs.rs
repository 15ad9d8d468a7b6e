//! The trained networks a report shows: `result.json` of `retrain train` (from scratch, one
//! attribute or every task) and `retrain finetune` runs, read as those commands wrote them.
//! Each run chose its own settings on its validation share; the report adds no choice of its own.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metrics::{self, Metrics};

/// Accuracy and balanced accuracy (mean recall over the classes) of one configuration on one set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub accuracy: f64,
    /// `None` where the run recorded accuracy alone.
    pub balanced: Option<f64>,
}

impl Score {
    pub fn of(m: &Metrics) -> Score {
        Score { accuracy: m.accuracy, balanced: Some(m.balanced_accuracy) }
    }

    /// What validation choices are made by: balanced accuracy, so that a majority-class answer
    /// (glasses 92%, pose 61% frontal) does not win.
    pub fn balanced_or_plain(&self) -> f64 {
        self.balanced.unwrap_or(self.accuracy)
    }
}

/// One configuration's scores for one attribute.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub attribute: String,
    pub pipeline: String,
    pub configuration: String,
    pub validation: Option<Score>,
    /// `None` where the run did not read the test list (`--no-test`).
    pub test: Option<Score>,
}

/// A run's landmark task.
#[derive(Debug, Clone, Serialize)]
pub struct LandmarkRow {
    pub run: PathBuf,
    /// Mean error over the inter-ocular distance.
    pub validation: Option<f64>,
    pub test: Option<f64>,
    /// The run's exported network, `RUN/model.onnx`, where it is.
    pub model: Option<PathBuf>,
}

/// One run folder and what it wrote.
pub struct Run {
    pub dir: PathBuf,
    pub result: Value,
}

/// Runs under `dir`: `dir/RUN/result.json` and one level deeper (`dir/finetune/RUN`), in name order.
pub fn runs_under(dir: &Path) -> Vec<Run> {
    let mut found = Vec::new();
    for first in sorted_dirs(dir) {
        found.extend(read_run(&first));
        found.extend(sorted_dirs(&first).iter().filter_map(|d| read_run(d)));
    }
    found
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}

pub(super) fn read_run(dir: &Path) -> Option<Run> {
    let text = std::fs::read_to_string(dir.join("result.json")).ok()?;
    match serde_json::from_str(&text) {
        Ok(result) => Some(Run { dir: dir.to_path_buf(), result }),
        Err(e) => {
            eprintln!("skipped {}: not a result.json of retrain ({e})", dir.join("result.json").display());
            None
        }
    }
}

impl Run {
    pub(super) fn is_finetune(&self) -> bool {
        self.result.get("phase2").is_some()
    }

    /// The run's rows for `attributes`.
    pub fn rows(&self, attributes: &[String]) -> Vec<Row> {
        let r = &self.result;
        let row = |attribute: &str, pipeline: &str, configuration: String, validation, test| Row {
            attribute: attribute.to_string(),
            pipeline: pipeline.to_string(),
            configuration,
            validation,
            test,
        };
        let wanted = |a: &str| attributes.iter().any(|x| x == a);
        if self.is_finetune() {
            let attribute = r["settings"]["attribute"].as_str().unwrap_or_default();
            let trains = r["settings"]["train_from"].as_str().map_or("every layer".to_string(), |l| format!("from {l}"));
            let configuration = format!("`{}`: crop {}, phase 2 {trains}, {} steps", self.dir.display(), text(&r["settings"]["crop"]), r["phase2"]["steps"]);
            let validation = r["phase2"]["final_val_accuracy"].as_f64().map(|accuracy| Score { accuracy, balanced: None });
            let test = metrics::read(&r["test"]).ok().map(|m| Score::of(&m));
            return if wanted(attribute) { vec![row(attribute, "fine-tuned (`retrain finetune`)", configuration, validation, test)] } else { Vec::new() };
        }
        let pipeline =
            if text(&r["attribute"]) == "all" { "multi-task network (`retrain train --attribute all`)" } else { "network from scratch (`retrain train`)" };
        let configuration = format!(
            "`{}`: crop {}, test crop {}, best epoch {} of {}",
            self.dir.display(),
            text(&r["crop"]),
            text(&r["test_crop"]),
            r["best_epoch"],
            r["epochs_completed"]
        );
        let tasks = |set: &str| r[set].as_array().cloned().unwrap_or_default();
        let test_tasks = tasks("test_tasks");
        tasks("val_tasks")
            .iter()
            .filter_map(|t| Some((t["name"].as_str()?, metrics::read(&t["metrics"]).ok()?)))
            .filter(|(name, _)| wanted(name))
            .map(|(name, m)| {
                let test = test_tasks.iter().find(|t| t["name"] == name).and_then(|t| metrics::read(&t["metrics"]).ok());
                row(name, pipeline, configuration.clone(), Some(Score::of(&m)), test.as_ref().map(Score::of))
            })
            .collect()
    }

    /// The run's landmark scores, if it has a landmark task.
    pub fn landmarks(&self) -> Option<LandmarkRow> {
        let error = |set: &str| -> Option<Option<f64>> {
            let tasks = self.result[set].as_array()?;
            Some(tasks.iter().find(|t| t["name"] == "landmarks").and_then(|t| t["mean_error"].as_f64()))
        };
        // A run without a landmark task (no `landmarks` entry in `val_tasks`) has no row.
        let validation = error("val_tasks")??;
        let model = Some(self.dir.join("model.onnx")).filter(|p| p.is_file());
        Some(LandmarkRow { run: self.dir.clone(), validation: Some(validation), test: error("test_tasks").flatten(), model })
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// The landmark model validation prefers: the lowest validation error among runs that left one.
pub fn best_landmarks(rows: &[LandmarkRow]) -> Option<&LandmarkRow> {
    rows.iter().filter(|r| r.model.is_some()).min_by(|a, b| a.validation.unwrap_or(f64::INFINITY).total_cmp(&b.validation.unwrap_or(f64::INFINITY)))
}
