//! Scores of the eval graph's output on labelled rows, per task: for one attribute its
//! cross-entropy and accuracy; for a multi-task graph each attribute's (over the rows that
//! know it) and the landmarks' squared error and mean error per inter-ocular distance, with
//! the loss weighted as the train-step graph weighs it.

use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer, Serialize};

use super::artifacts::Artifacts;
use super::data::Examples;
use super::engine::Engine;
use crate::head::classes::Classes;
use crate::metrics::{self, Metrics};

/// Where one task's values lie in a row of the eval graph's output.
#[derive(Debug, Clone)]
pub struct Head {
    pub name: String,
    pub offset: usize,
    pub width: usize,
    pub weight: f64,
    /// Class names of an attribute; `None` for the landmarks.
    pub labels: Option<Vec<String>>,
}

/// The tasks of `artifacts`, laid out along the logits: the one attribute of a single-task
/// graph (`attribute`'s classes), or every task of a multi-task graph.
pub fn heads(artifacts: &Artifacts, attribute: &Classes) -> Result<Vec<Head>> {
    let m = &artifacts.manifest;
    if m.tasks.is_empty() {
        if attribute.len() != m.classes {
            bail!("attribute '{}' has {} classes, the artifacts' class layer has {}", attribute.attribute, attribute.len(), m.classes);
        }
        return Ok(vec![Head { name: attribute.attribute.clone(), offset: 0, width: m.classes, weight: 1.0, labels: Some(attribute.labels.clone()) }]);
    }
    let mut offset = 0;
    let mut heads = Vec::new();
    for t in &m.tasks {
        let labels = match t.is_classes() {
            true => Some(task_classes(&t.name, t.width)?.labels),
            false => None,
        };
        heads.push(Head { name: t.name.clone(), offset, width: t.width, weight: t.weight, labels });
        offset += t.width;
    }
    if offset != m.classes {
        bail!("the tasks of {} take {offset} logit columns, the eval graph gives {}", artifacts.dir.display(), m.classes);
    }
    Ok(heads)
}

/// MTFL's classes of a multi-task graph's class task, checked against its width.
pub fn task_classes(name: &str, width: usize) -> Result<Classes> {
    let classes = Classes::mtfl(name)
        .ok_or_else(|| anyhow::anyhow!("task '{name}' is not an MTFL attribute (expected one of {})", crate::dataset::MTFL_ATTRIBUTES.join(", ")))?;
    if classes.len() != width {
        bail!("task '{name}' has {width} outputs, MTFL's {name} has {} classes", classes.len());
    }
    Ok(classes)
}

/// One task's scores on a set of rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskScore {
    pub name: String,
    /// Mean cross-entropy (attributes) or 0.5 x squared error summed over the coordinates
    /// (NaN where the file has null: JSON writes a loss that is not finite so).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Accuracy, recall and confusion of an attribute (over the rows that know it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// Landmarks: mean distance to the annotated points over inter-ocular distance, mean over rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_error: Option<f64>,
    /// Landmarks: rows whose mean error exceeds 10% of the inter-ocular distance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
}

/// A number that JSON wrote as null because it was not finite (a loss of a run that diverged)
/// reads as NaN.
pub(crate) fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Scores of all tasks: `loss` weighted as in training, `accuracy` the attributes' mean.
#[derive(Debug, Clone)]
pub struct Scores {
    pub loss: f64,
    pub accuracy: f64,
    pub tasks: Vec<TaskScore>,
}

/// What the rows' outputs add up to, per task.
struct Sums {
    loss: f64,
    rows: usize,
    truth: Vec<usize>,
    predicted: Vec<usize>,
    errors: Vec<f64>,
}

/// Scores of `heads` on `ex` with the engine's current parameters.
pub fn evaluate(engine: &mut Engine, heads: &[Head], ex: &Examples, eval_batch: usize) -> Result<Scores> {
    let width = engine.artifacts.manifest.classes;
    let mut sums: Vec<Sums> = heads.iter().map(|_| Sums { loss: 0.0, rows: 0, truth: Vec::new(), predicted: Vec::new(), errors: Vec::new() }).collect();
    let indices: Vec<usize> = (0..ex.len()).collect();
    for chunk in indices.chunks(eval_batch.max(1)) {
        let images = ex.images[chunk[0] * ex.image_len..(chunk[chunk.len() - 1] + 1) * ex.image_len].to_vec();
        let logits = engine.logits(images, chunk.len())?;
        for (row, &i) in logits.chunks(width).zip(chunk) {
            let mut column = 0;
            for (head, sum) in heads.iter().zip(&mut sums) {
                let values = &row[head.offset..head.offset + head.width];
                if head.labels.is_some() {
                    add_class_row(sum, values, ex.labels_of(i)[column]);
                    column += 1;
                } else if let Some(l) = ex.landmarks.get(i) {
                    sum.loss += 0.5 * values.iter().zip(&l.fractions).map(|(&p, &t)| ((p - t) as f64).powi(2)).sum::<f64>();
                    sum.rows += 1;
                    sum.errors.push(l.error(values));
                }
            }
        }
    }
    Ok(scores(heads, sums))
}

fn add_class_row(sum: &mut Sums, values: &[f32], label: i64) {
    if label < 0 {
        return; // unknown for this task
    }
    let (loss, best) = cross_entropy(values, label as usize);
    sum.loss += loss;
    sum.rows += 1;
    sum.truth.push(label as usize);
    sum.predicted.push(best);
}

fn scores(heads: &[Head], sums: Vec<Sums>) -> Scores {
    let tasks: Vec<TaskScore> = heads
        .iter()
        .zip(sums)
        .map(|(head, s)| {
            let mean = |v: f64| v / s.rows.max(1) as f64;
            let errors = (head.labels.is_none()).then_some(&s.errors);
            TaskScore {
                name: head.name.clone(),
                loss: mean(s.loss),
                metrics: head.labels.as_ref().map(|labels| metrics::score(&s.truth, &s.predicted, labels)),
                mean_error: errors.map(|e| mean(e.iter().sum())),
                failure_rate: errors.map(|e| mean(e.iter().filter(|&&x| x > super::data::Landmarks::FAILURE_ERROR).count() as f64)),
            }
        })
        .collect();
    let loss = heads.iter().zip(&tasks).map(|(h, t)| h.weight * t.loss).sum();
    let accuracies: Vec<f64> = tasks.iter().filter_map(|t| t.metrics.as_ref().map(|m| m.accuracy)).collect();
    let accuracy = accuracies.iter().sum::<f64>() / accuracies.len().max(1) as f64;
    Scores { loss, accuracy, tasks }
}

/// -log softmax(row)[label] and the argmax.
fn cross_entropy(row: &[f32], label: usize) -> (f64, usize) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    let best = crate::head::softmax::argmax(ndarray::ArrayView1::from(row));
    (log_sum - row[label] as f64, best)
}

/// One line per task, e.g. `gender 0.781 (balanced 0.775)` or `landmarks error 15.5% of the
/// inter-ocular distance (failures 62.0%)`.
pub fn describe(tasks: &[TaskScore]) -> String {
    tasks
        .iter()
        .map(|t| match (&t.metrics, t.mean_error) {
            (Some(m), _) => format!("{} {:.4} (balanced {:.4})", t.name, m.accuracy, m.balanced_accuracy),
            (None, Some(e)) => {
                format!("{} error {:.2}% of the inter-ocular distance (failures {:.1}%)", t.name, 100.0 * e, 100.0 * t.failure_rate.unwrap_or(0.0))
            }
            _ => t.name.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Mean cross-entropy and accuracy of a one-attribute graph over `ex` (the validation points
/// of `retrain finetune`, whose rows carry class indices only).
pub fn loss_and_accuracy(engine: &mut Engine, ex: &Examples, eval_batch: usize) -> Result<(f64, f64)> {
    let width = engine.artifacts.manifest.classes;
    let head = Head { name: "attribute".to_string(), offset: 0, width, weight: 1.0, labels: Some((0..width).map(|c| c.to_string()).collect()) };
    let s = evaluate(engine, &[head], ex, eval_batch)?;
    Ok((s.loss, s.accuracy))
}
