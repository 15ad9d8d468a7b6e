//! The deployable model of `reproduce --beyond`: one exported file that takes plain decoded
//! photos (the landmark model inside places the crop), scored on the MTFL test photos with
//! their annotations withheld, as a user's photos come.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Extraction;
use crate::dataset::mtfl::{self, Split};
use crate::dataset::Sample;
use crate::export::{self, Input, Landmarks};
use crate::locate::Passes;
use crate::metrics::{self, Metrics};
use crate::model::{self, Model};
use crate::predict::{self, PredictOptions};
use crate::preprocess::Crop;
use crate::train::data::Landmarks as AnnotatedLandmarks;

/// How the deployable model did on the plain test photos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlainScores {
    /// What was scored: the file (SHA-256), the annotation list (SHA-256 of testing.txt) and
    /// the limit on its images; the same three make a later run reuse these scores.
    pub model_sha256: String,
    pub testing_sha256: String,
    pub limit: Option<usize>,
    pub images: usize,
    pub skipped: usize,
    /// Per attribute, in the model's order, as the study's tables give them: accuracy, per-class
    /// precision and recall and the confusion matrix (a deployment team reads the minority
    /// classes' recall here).
    pub attributes: Vec<(String, Metrics)>,
    /// The landmarks the model placed against the annotated ones: mean error over the
    /// inter-ocular distance, and the share of images above 10%.
    pub landmark_error: Option<f64>,
    pub landmark_failures: Option<f64>,
    pub seconds: f64,
}

/// Writes `out`: `heads` on `backbone`, taking decoded pixels; a crop other than the whole
/// image is placed by `landmark_model` inside the graph.
pub fn export_deployable(backbone: &Path, heads: &[PathBuf], crop: Crop, landmark_model: Option<&Path>, passes: Passes, out: &Path) -> Result<()> {
    let input = match (crop, landmark_model) {
        (Crop::Original, _) => Input::Pixels,
        (_, Some(model)) => Input::Located(Landmarks { model, passes }),
        (_, None) => anyhow::bail!("crop {crop} needs a landmark model to be deployed on plain photos"),
    };
    let heads: Vec<&Path> = heads.iter().map(PathBuf::as_path).collect();
    export::export(backbone, &heads, out, input).map(|_| ())
}

/// Runs `model_path` on MTFL's test photos without their annotations and scores its answers
/// (and landmarks) against them; its predictions go to `csv`. The `earlier` scores are
/// returned instead (`true`) when they are of the same file on the same photos and `csv` is there.
pub fn score_plain_photos(model_path: &Path, data: &Extraction, csv: &Path, earlier: Option<PlainScores>) -> Result<(PlainScores, bool)> {
    let model_sha256 = model::file_sha256(model_path)?;
    let testing_sha256 = model::file_sha256(&Split::Testing.annotations(&data.mtfl))?;
    let same = |e: &PlainScores| e.model_sha256 == model_sha256 && e.testing_sha256 == testing_sha256 && e.limit == data.limit && csv.is_file();
    if let Some(e) = earlier.filter(same) {
        return Ok((e, true));
    }
    let mut dataset = mtfl::load(&data.mtfl, Split::Testing)?;
    dataset.samples.truncate(data.limit.unwrap_or(usize::MAX));
    let annotated: HashMap<_, &Sample> = dataset.samples.iter().map(|s| (s.name(), s)).collect();
    let plain: Vec<Sample> = dataset.samples.iter().map(|s| Sample { labels: Vec::new(), landmarks: None, ..s.clone() }).collect();
    let mut model = Model::load(model_path, &data.session, None)?;
    let heads = predict::exported_heads(&model)?;
    let opts = PredictOptions { crop: None, batch: data.batch, decode_threads: data.decode_threads, show_progress: data.show_progress };
    let summary = predict::predict(&mut model, &plain, &opts)?;
    summary.table.write(csv)?;
    let table = &summary.table;
    let mut attributes = Vec::new();
    for (a, head) in heads.iter().enumerate() {
        let column = dataset.label_columns.iter().position(|c| *c == head.attribute).with_context(|| format!("MTFL has no attribute '{}'", head.attribute))?;
        let (mut truth, mut predicted) = (Vec::new(), Vec::new());
        for (i, key) in table.paths.iter().enumerate() {
            if let Some(t) = head.head.codes.iter().position(|&c| c == annotated[key.as_str()].labels[column]) {
                truth.push(t);
                predicted.push(table.predicted(a, i));
            }
        }
        attributes.push((head.attribute.clone(), metrics::score(&truth, &predicted, &head.labels)));
    }
    let errors: Vec<f64> = table
        .landmarks
        .iter()
        .flatten()
        .zip(&table.paths)
        .filter_map(|(placed, key)| Some(landmark_error(&annotated[key.as_str()].landmarks?, &(*placed)?)))
        .collect();
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let scores = PlainScores {
        model_sha256,
        testing_sha256,
        limit: data.limit,
        images: table.len(),
        skipped: summary.skipped.len(),
        attributes,
        landmark_failures: mean(errors.iter().map(|&e| f64::from(u8::from(e > AnnotatedLandmarks::FAILURE_ERROR))).collect()),
        landmark_error: mean(errors),
        seconds: summary.seconds,
    };
    Ok((scores, false))
}

/// Mean distance of the five placed points to the annotated ones over the inter-ocular
/// distance (both in the image's pixels), as `retrain train` scores its landmark task.
fn landmark_error(annotated: &[f32; 10], placed: &[f32; 10]) -> f64 {
    AnnotatedLandmarks { fractions: *annotated, window: [1.0, 1.0] }.error(placed)
}
