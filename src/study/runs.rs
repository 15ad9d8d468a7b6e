//! The trained networks a report shows: `result.json` of `retrain train` (from scratch, one
//! attribute or every task) and `retrain finetune` runs, read as those commands wrote them.
//! Each run chose its own settings on its validation share; the report adds no choice of its own.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::finetune::FinetuneSummary;
use crate::metrics::Metrics;
use crate::runs::RunResult;
use crate::train::score::TaskScore;
use crate::train::TrainSummary;

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
    pub result: RunResult,
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

/// The run in `dir`, if it has a `result.json`; one that cannot be read is skipped with a line.
pub(super) fn read_run(dir: &Path) -> Option<Run> {
    if !dir.join("result.json").is_file() {
        return None;
    }
    match RunResult::read(dir) {
        Ok(result) => Some(Run { dir: dir.to_path_buf(), result }),
        Err(e) => {
            eprintln!("skipped {}: {e:#}", dir.display());
            None
        }
    }
}

impl Run {
    /// The fine-tuning run's summary, if it is one.
    pub(super) fn finetune(&self) -> Option<&FinetuneSummary> {
        self.result.finetune()
    }

    /// The run's rows for `attributes`.
    pub fn rows(&self, attributes: &[String]) -> Vec<Row> {
        let wanted = |a: &str| attributes.iter().any(|x| x == a);
        match &self.result {
            RunResult::Finetune(s) if wanted(&s.settings.attribute) => vec![self.finetune_row(s)],
            RunResult::Train(s) => self.train_rows(s, &wanted),
            // a landmark regressor has no attribute
            RunResult::Finetune(_) | RunResult::Landmarks(_) => Vec::new(),
        }
    }

    fn finetune_row(&self, s: &FinetuneSummary) -> Row {
        let trains = s.settings.train_from.as_ref().map_or("every layer".to_string(), |l| format!("from {l}"));
        Row {
            attribute: s.settings.attribute.clone(),
            pipeline: "fine-tuned (`retrain finetune`)".to_string(),
            configuration: format!("`{}`: crop {}, phase 2 {trains}, {} steps", self.dir.display(), s.settings.crop, s.phase2.steps),
            validation: Some(Score { accuracy: s.phase2.final_val_accuracy, balanced: None }),
            test: Some(Score::of(&s.test)),
        }
    }

    fn train_rows(&self, s: &TrainSummary, wanted: &dyn Fn(&str) -> bool) -> Vec<Row> {
        let pipeline = if s.attribute == "all" { "multi-task network (`retrain train --attribute all`)" } else { "network from scratch (`retrain train`)" };
        let configuration =
            format!("`{}`: crop {}, test crop {}, best epoch {} of {}", self.dir.display(), s.crop, s.test_crop, s.best_epoch, s.epochs_completed);
        let test_metrics = |name: &str| s.test_tasks.as_ref()?.iter().find(|t| t.name == name)?.metrics.as_ref();
        s.val_tasks
            .iter()
            .filter_map(|t| Some((t.name.as_str(), t.metrics.as_ref()?)))
            .filter(|(name, _)| wanted(name))
            .map(|(name, m)| Row {
                attribute: name.to_string(),
                pipeline: pipeline.to_string(),
                configuration: configuration.clone(),
                validation: Some(Score::of(m)),
                test: test_metrics(name).map(Score::of),
            })
            .collect()
    }

    /// The run's landmark scores, if it has a landmark task.
    pub fn landmarks(&self) -> Option<LandmarkRow> {
        let error = |tasks: &[TaskScore]| tasks.iter().find(|t| t.name == "landmarks").and_then(|t| t.mean_error);
        let (validation, test) = match &self.result {
            RunResult::Train(s) => (error(&s.val_tasks), s.test_tasks.as_deref().and_then(error)),
            RunResult::Landmarks(r) => {
                let error = |tasks: &[crate::runs::RegressorScore]| tasks.iter().find(|t| t.name == "landmarks").map(|t| t.mean_error);
                (error(&r.val_tasks), error(&r.test_tasks))
            }
            RunResult::Finetune(_) => (None, None),
        };
        // A run without a landmark task (no `landmarks` entry in `val_tasks`) has no row.
        let validation = validation?;
        let model = Some(self.dir.join("model.onnx")).filter(|p| p.is_file());
        Some(LandmarkRow { run: self.dir.clone(), validation: Some(validation), test, model })
    }
}

/// The landmark model validation prefers: the lowest validation error among runs that left one.
pub fn best_landmarks(rows: &[LandmarkRow]) -> Option<&LandmarkRow> {
    rows.iter().filter(|r| r.model.is_some()).min_by(|a, b| a.validation.unwrap_or(f64::INFINITY).total_cmp(&b.validation.unwrap_or(f64::INFINITY)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `runs/NAME/result.json` holding `text`.
    fn run_with(runs: &Path, name: &str, text: &str) -> PathBuf {
        let dir = runs.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("result.json"), text).unwrap();
        dir
    }

    fn doc(file: &str) -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(file)).unwrap()
    }

    #[test]
    fn rows_and_landmarks_of_each_kind_of_run() {
        let tmp = tempfile::tempdir().unwrap();
        let runs = tmp.path();
        let finetune = run_with(&runs.join("finetune"), "smile-original", &doc("finetune/cpu_smile_b8_result.json"));
        run_with(runs, "tcdcn", &doc("table5/tcdcn_result.json"));
        let regressor = run_with(
            runs,
            "landmarks-faceres",
            r#"{"attribute": "landmarks", "pipeline": "landmark ridge regression on a pretrained backbone", "backbone": "faceres.onnx",
                "crop": "face:3.2", "test_crop": "original", "val_tasks": [{"name": "landmarks", "mean_error": 0.05, "failure_rate": 0.01}], "test_tasks": []}"#,
        );
        std::fs::write(regressor.join("model.onnx"), b"").unwrap();
        run_with(runs, "unreadable", "{\"accuracy\": 1}");
        let found = runs_under(runs);
        let names: Vec<String> = found.iter().map(|r| r.dir.strip_prefix(runs).unwrap().display().to_string()).collect();
        assert_eq!(names, ["finetune/smile-original", "landmarks-faceres", "tcdcn"], "the unreadable one is skipped");

        let attributes = ["smile".to_string(), "gender".to_string()];
        let rows = found[0].rows(&attributes);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.attribute.as_str(), r.pipeline.as_str()), ("smile", "fine-tuned (`retrain finetune`)"));
        assert_eq!(r.configuration, format!("`{}`: crop original, phase 2 every layer, 30 steps", finetune.display()));
        assert_eq!(r.validation, Some(Score { accuracy: 0.6666666666666666, balanced: None }));
        let test = r.test.unwrap();
        assert_eq!(test.accuracy, 0.552734375);
        assert!((test.balanced.unwrap() - (0.3247232472324723 + 0.8091286307053942) / 2.0).abs() < 1e-12);
        assert!(found[0].rows(&["gender".to_string()]).is_empty());
        assert!(found[0].finetune().is_some() && found[1].finetune().is_none());
        assert!(found[0].landmarks().is_none());

        // a landmark regressor: no rows, a landmark row with its model
        assert!(found[1].rows(&attributes).is_empty());
        let l = found[1].landmarks().unwrap();
        assert_eq!((l.validation, l.test, l.model), (Some(0.05), None, Some(regressor.join("model.onnx"))));
        // a training run from before per-task scores: neither
        assert!(found[2].rows(&attributes).is_empty() && found[2].landmarks().is_none());
    }
}
