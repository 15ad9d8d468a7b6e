//! The study's recipe (TensorFlow retrain.py's final layer): mini-batch softmax regression by
//! plain gradient descent, learning rate 0.01, batches of 100 drawn at random, 4,000 steps,
//! weights from a truncated normal (std 0.001), biases 0, evaluation every 10 steps.

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::classes::Labeled;
use super::rng::Rng;
use super::softmax::{accuracy, cross_entropy, probabilities};

/// Hyperparameters; the defaults are the study's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SgdParams {
    pub learning_rate: f32,
    pub batch: usize,
    pub steps: usize,
    /// Record (and offer for printing) a point of the learning curve every this many steps.
    pub eval_every: usize,
    pub init_std: f32,
}

impl Default for SgdParams {
    fn default() -> Self {
        SgdParams { learning_rate: 0.01, batch: 100, steps: 4000, eval_every: 10, init_std: 0.001 }
    }
}

/// One point of the learning curve: the last training batch (after its update) and the whole
/// validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: usize,
    pub train_accuracy: f64,
    pub train_loss: f64,
    pub validation_accuracy: Option<f64>,
    pub validation_loss: Option<f64>,
}

/// Weights [classes, features], biases and the learning curve.
pub struct SgdFit {
    pub weights: Array2<f32>,
    pub bias: Vec<f32>,
    pub curve: Vec<CurvePoint>,
}

/// Trains on `train` (already standardised if wanted); `on_point` sees each curve point.
pub fn train(
    train: &Labeled,
    validation: Option<&Labeled>,
    class_weights: &[f32],
    params: &SgdParams,
    seed: u64,
    on_point: &mut dyn FnMut(&CurvePoint),
) -> SgdFit {
    let (n, dim, classes) = (train.x.nrows(), train.x.ncols(), class_weights.len());
    let mut rng = Rng::new(seed);
    let mut w = Array2::from_shape_simple_fn((classes, dim), || rng.truncated_normal(params.init_std as f64) as f32);
    let mut b = vec![0f32; classes];
    let mut batch_x = Array2::<f32>::zeros((params.batch, dim));
    let mut batch_y = vec![0usize; params.batch];
    let mut curve = Vec::with_capacity(params.steps / params.eval_every.max(1) + 1);
    for step in 1..=params.steps {
        for (r, t) in batch_y.iter_mut().enumerate() {
            let i = rng.below(n);
            batch_x.row_mut(r).assign(&train.x.row(i));
            *t = train.y[i];
        }
        descend(&mut w, &mut b, batch_x.view(), &batch_y, class_weights, params.learning_rate);
        if step.is_multiple_of(params.eval_every.max(1)) || step == params.steps {
            let point = evaluate(step, &w, &b, (batch_x.view(), &batch_y), validation, class_weights);
            on_point(&point);
            curve.push(point);
        }
    }
    SgdFit { weights: w, bias: b, curve }
}

/// One gradient step on the class-weighted mean cross-entropy of a batch.
fn descend(w: &mut Array2<f32>, b: &mut [f32], x: ArrayView2<f32>, y: &[usize], class_weights: &[f32], lr: f32) {
    let mut delta = probabilities(x, w.view(), b);
    let total: f32 = y.iter().map(|&t| class_weights[t]).sum();
    for (mut row, &t) in delta.axis_iter_mut(Axis(0)).zip(y) {
        row[t] -= 1.0;
        row *= class_weights[t] / total;
    }
    // d loss / d W = delta^T x; d loss / d b = column sums of delta.
    w.scaled_add(-lr, &delta.t().dot(&x));
    for (bias, g) in b.iter_mut().zip(delta.sum_axis(Axis(0))) {
        *bias -= lr * g;
    }
}

fn evaluate(step: usize, w: &Array2<f32>, b: &[f32], batch: (ArrayView2<f32>, &[usize]), validation: Option<&Labeled>, cw: &[f32]) -> CurvePoint {
    let p = probabilities(batch.0, w.view(), b);
    let v = validation.map(|v| (v, probabilities(v.x.view(), w.view(), b)));
    CurvePoint {
        step,
        train_accuracy: accuracy(p.view(), batch.1),
        train_loss: cross_entropy(p.view(), batch.1, cw),
        validation_accuracy: v.as_ref().map(|(v, p)| accuracy(p.view(), &v.y)),
        validation_loss: v.as_ref().map(|(v, p)| cross_entropy(p.view(), &v.y, cw)),
    }
}
