//! What fine-tuning leaves for the other commands: `OUT/model.onnx`, the network with its
//! fine-tuned weights (`bottleneck`, `logits`, `probabilities`; runs in `extract` and
//! `export`), and `OUT/ATTRIBUTE.head.onnx`, the new layer as a retrain head on that model's
//! bottleneck (runs in `eval`, `export`, `predict`), both from the last step's state.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use ndarray::Array2;

use super::job::Job;
use super::phases::VALIDATION_PERCENT;
use crate::description::Description;
use crate::head::classes::Classes;
use crate::head::standardize::Standardizer;
use crate::head::{onnx as head_onnx, CacheOrigin, ClassWeight, Head, HeadInfo, Solver};
use crate::train::checkpoint::NamedTensor;
use crate::train::decode::Decoder;
use crate::train::steps::Outcome;

/// Writes both files; returns their paths.
pub(super) fn write(
    job: &Job,
    out: &Path,
    outcome: &Outcome,
    decoder: &Decoder,
    classes: &Classes,
    train_rows: usize,
    val_rows: usize,
) -> Result<(PathBuf, PathBuf)> {
    let a = &job.set.phase2;
    let params: Vec<NamedTensor> = outcome.last.tensors.iter().filter(|t| a.params().any(|p| p.input == t.name)).cloned().collect();
    let model = out.join("model.onnx");
    let s = &job.settings;
    let source = format!(
        "fine-tuned by retrain finetune: MTFL {} ({} crop), phase 1 {} steps lr {}, phase 2 {} steps lr {} ({}), distortions {}, seed {}, artifacts {}",
        s.attribute,
        s.crop,
        s.phase1_steps,
        s.phase1_lr,
        s.phase2_steps,
        s.phase2_lr,
        s.train_from.as_ref().map_or("every layer".to_string(), |l| format!("{l} and up")),
        s.distortions,
        s.seed,
        &a.sha256[..12]
    );
    let described =
        Description { labels: Some(classes.labels.clone()), attribute: Some(classes.attribute.clone()), source: Some(source), ..Description::default() };
    let metadata = described.to_metadata();
    // the whole network, also when phase 2 trained only the layers above a cut
    crate::train::weights::write(&job.set.every_layer.verified_file("forward")?, &params, &metadata, &model)?;
    let head = out.join(format!("{}.head.onnx", classes.attribute));
    head_of(job, &params, &model, decoder, classes, outcome, train_rows, val_rows)?.save(&head, &[])?;
    Ok((model, head))
}

/// The new layer as a head: identity standardisation, W = kernel^T, b = bias.
#[allow(clippy::too_many_arguments)]
fn head_of(
    job: &Job,
    params: &[NamedTensor],
    model: &Path,
    decoder: &Decoder,
    classes: &Classes,
    outcome: &Outcome,
    train_rows: usize,
    val_rows: usize,
) -> Result<Head> {
    let find = |name: &str| params.iter().find(|t| t.name == name).ok_or_else(|| anyhow!("no trained '{name}'"));
    let (kernel, bias) = (find(&job.set.head_params[0])?, find(&job.set.head_params[1])?);
    let (features, k) = (kernel.shape[0], kernel.shape[1]);
    let weights = Array2::from_shape_vec((features, k), kernel.data.clone())?.reversed_axes().as_standard_layout().to_owned();
    let info = HeadInfo {
        attribute: classes.attribute.clone(),
        labels: classes.labels.clone(),
        codes: classes.codes.clone(),
        dim: features,
        input: head_onnx::INPUT.to_string(),
        output: head_onnx::output_name(&classes.attribute),
        solver: Solver::Finetune,
        seed: job.settings.seed,
        params: serde_json::to_value(&job.settings)?,
        standardized: false,
        class_weight: ClassWeight::None,
        class_weights: vec![1.0; k],
        validation_percent: VALIDATION_PERCENT,
        train_rows,
        validation_rows: val_rows,
        class_counts: Vec::new(),
        train_accuracy: outcome.points.last().map_or(0.0, |p| p.train_accuracy),
        validation_accuracy: outcome.points.last().map(|p| p.val_accuracy),
        validation_balanced_accuracy: None,
        train_seconds: outcome.seconds,
        cache: CacheOrigin {
            path: String::new(),
            model_sha256: crate::model::file_sha256(model)?,
            output: job.set.bottleneck.clone(),
            preprocess: decoder.pre.describe(),
            source: "mtfl:training".to_string(),
            rows: train_rows + val_rows,
            paths_sha256: String::new(),
        },
        created: chrono::Utc::now().to_rfc3339(),
        tool_version: format!("retrain {}", crate::version()),
    };
    Ok(Head { info, standardizer: Standardizer::identity(features), weights, bias: bias.data.clone() })
}
