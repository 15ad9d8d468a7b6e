//! The study's recipe (TensorFlow retrain.py's final layer): mini-batch softmax regression by
//! plain gradient descent, learning rate 0.01, batches of 100 drawn at random, 4,000 steps,
//! weights from a truncated normal (std 0.001), biases 0, evaluation every 10 steps on the
//! training batch and a random validation batch of 100 (retrain.py's defaults).
//!
//! A step touches 100 rows of 2,048 features, so it is written as per-row dot products and
//! axpys on the cached matrix itself: no batch is copied, and each row is read from memory
//! once per step (the second pass hits the cache).

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::classes::Labeled;
use super::softmax::{accuracy, cross_entropy};
use crate::rng::Rng;

/// Hyperparameters; the defaults are the study's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SgdParams {
    pub learning_rate: f32,
    pub batch: usize,
    pub steps: usize,
    /// Record (and offer for printing) a point of the learning curve every this many steps.
    pub eval_every: usize,
    /// Validation rows drawn for each curve point; 0 = the whole validation set.
    pub validation_batch: usize,
    pub init_std: f32,
}

impl Default for SgdParams {
    fn default() -> Self {
        SgdParams { learning_rate: 0.01, batch: 100, steps: 4000, eval_every: 10, validation_batch: 100, init_std: 0.001 }
    }
}

/// One point of the learning curve: the step's training batch (after its update) and a
/// validation batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: usize,
    pub train_accuracy: f64,
    pub train_loss: f64,
    pub validation_accuracy: Option<f64>,
    pub validation_loss: Option<f64>,
}

impl CurvePoint {
    /// One line of the printed learning curve.
    pub fn describe(&self) -> String {
        let validation = match (self.validation_accuracy, self.validation_loss) {
            (Some(a), Some(l)) => format!("  validation accuracy {:5.1}%  loss {l:.4}", 100.0 * a),
            _ => String::new(),
        };
        format!("step {:>5}: train accuracy {:5.1}%  loss {:.4}{validation}", self.step, 100.0 * self.train_accuracy, self.train_loss)
    }
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
    let x = train.x.as_standard_layout();
    let x = x.as_slice().expect("standard layout");
    let mut rng = Rng::new(seed);
    // Validation draws use their own stream, so the training batches do not depend on them.
    let mut validation_rng = Rng::new(seed ^ 0x005e_ed0f_7a11_da7e);
    let mut model = Linear { w: (0..classes * dim).map(|_| rng.truncated_normal(params.init_std as f64) as f32).collect(), b: vec![0.0; classes], dim };
    let mut grads = [(); 2].map(|_| Linear { w: vec![0.0; classes * dim], b: vec![0.0; classes], dim });
    let mut batch = vec![0usize; params.batch];
    let mut probs = vec![0f32; params.batch * classes];
    let mut curve = Vec::with_capacity(params.steps / params.eval_every.max(1) + 1);
    for step in 1..=params.steps {
        batch.iter_mut().for_each(|i| *i = rng.below(n));
        let total = batch.iter().map(|&i| class_weights[train.y[i]]).sum();
        let rows = Rows { x, y: &train.y, rows: &batch, cw: class_weights, total };
        batch_gradient(&model, &mut grads, &rows, &mut probs);
        model.descend(&grads[0], params.learning_rate);
        if step.is_multiple_of(params.eval_every.max(1)) || step == params.steps {
            let validation = validation.map(|v| (v, draw(v.y.len(), params.validation_batch, &mut validation_rng)));
            let point = model.curve_point(step, (x, &train.y, &batch), validation, class_weights);
            on_point(&point);
            curve.push(point);
        }
    }
    let weights = Array2::from_shape_vec((classes, dim), model.w).expect("classes x dim");
    SgdFit { weights, bias: model.b, curve }
}

/// Some rows of a row-major feature matrix, with what the loss needs to know about them.
#[derive(Clone, Copy)]
struct Rows<'a> {
    x: &'a [f32],
    y: &'a [usize],
    rows: &'a [usize],
    /// Class weights, and their sum over the whole batch (the loss is their weighted mean).
    cw: &'a [f32],
    total: f32,
}

impl<'a> Rows<'a> {
    fn split_at(self, k: usize) -> (Rows<'a>, Rows<'a>) {
        let (a, b) = self.rows.split_at(k);
        (Rows { rows: a, ..self }, Rows { rows: b, ..self })
    }
}

/// The gradient of a batch into `grads[0]`: each half of the batch on its own thread (the
/// steps are memory-bound, and two cores read twice as fast), then the halves summed in a
/// fixed order, so the result does not depend on the machine.
fn batch_gradient(model: &Linear, grads: &mut [Linear; 2], rows: &Rows, probs: &mut [f32]) {
    let half = rows.rows.len() / 2;
    let (first, second) = rows.split_at(half);
    let (p1, p2) = probs.split_at_mut(half * model.b.len());
    let [g1, g2] = grads;
    rayon::join(|| half_gradient(model, g1, &first, p1), || half_gradient(model, g2, &second, p2));
    axpy(&mut g1.w, 1.0, &g2.w);
    axpy(&mut g1.b, 1.0, &g2.b);
}

/// With AVX2 where the CPU has it; the arithmetic is the same either way (the same lanes, no
/// fused multiply-add), so the head is too.
fn half_gradient(model: &Linear, grad: &mut Linear, rows: &Rows, probs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { half_gradient_avx2(model, grad, rows, probs) };
    }
    half_gradient_portable(model, grad, rows, probs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn half_gradient_avx2(model: &Linear, grad: &mut Linear, rows: &Rows, probs: &mut [f32]) {
    half_gradient_portable(model, grad, rows, probs)
}

#[inline(always)]
fn half_gradient_portable(model: &Linear, grad: &mut Linear, rows: &Rows, probs: &mut [f32]) {
    model.probabilities(rows.x, rows.rows, probs);
    gradient(grad, rows, probs);
}

/// `size` random row numbers below `n` (with replacement), or all of them when `size` is 0.
fn draw(n: usize, size: usize, rng: &mut Rng) -> Vec<usize> {
    if size == 0 {
        (0..n).collect()
    } else {
        (0..size).map(|_| rng.below(n)).collect()
    }
}

/// softmax(x W^T + b) on rows of a row-major matrix, W row-major [classes, dim].
struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    dim: usize,
}

impl Linear {
    /// Class probabilities of rows `rows` of `x`, into `out` [rows.len(), classes].
    #[inline(always)]
    fn probabilities(&self, x: &[f32], rows: &[usize], out: &mut [f32]) {
        let classes = self.b.len();
        for (&i, p) in rows.iter().zip(out.chunks_exact_mut(classes)) {
            let row = &x[i * self.dim..(i + 1) * self.dim];
            for (c, v) in p.iter_mut().enumerate() {
                *v = dot(row, &self.w[c * self.dim..(c + 1) * self.dim]) + self.b[c];
            }
            softmax(p);
        }
    }

    fn descend(&mut self, grad: &Linear, lr: f32) {
        axpy(&mut self.w, -lr, &grad.w);
        axpy(&mut self.b, -lr, &grad.b);
    }

    fn curve_point(&self, step: usize, batch: (&[f32], &[usize], &[usize]), validation: Option<(&Labeled, Vec<usize>)>, cw: &[f32]) -> CurvePoint {
        let (train_accuracy, train_loss) = self.score(batch.0, batch.1, batch.2, cw);
        let v = validation.map(|(v, rows)| self.score(v.x.as_slice().expect("standard layout"), &v.y, &rows, cw));
        CurvePoint { step, train_accuracy, train_loss, validation_accuracy: v.map(|v| v.0), validation_loss: v.map(|v| v.1) }
    }

    /// Accuracy and class-weighted cross-entropy on rows `rows`.
    fn score(&self, x: &[f32], y: &[usize], rows: &[usize], cw: &[f32]) -> (f64, f64) {
        let classes = self.b.len();
        let mut probs = vec![0f32; rows.len() * classes];
        self.probabilities(x, rows, &mut probs);
        let probs = ArrayView2::from_shape((rows.len(), classes), &probs).expect("rows x classes");
        let truth: Vec<usize> = rows.iter().map(|&i| y[i]).collect();
        (accuracy(probs, &truth), cross_entropy(probs, &truth, cw))
    }
}

/// Gradient of the class-weighted mean cross-entropy over `rows`: (p - onehot) * weight / total,
/// times x for W, summed for b.
#[inline(always)]
fn gradient(grad: &mut Linear, rows: &Rows, probs: &[f32]) {
    let (classes, dim) = (grad.b.len(), grad.dim);
    grad.w.fill(0.0);
    grad.b.fill(0.0);
    for (&i, p) in rows.rows.iter().zip(probs.chunks_exact(classes)) {
        let row = &rows.x[i * dim..(i + 1) * dim];
        let weight = rows.cw[rows.y[i]] / rows.total;
        for (c, &pc) in p.iter().enumerate() {
            let delta = (pc - f32::from(u8::from(c == rows.y[i]))) * weight;
            axpy(&mut grad.w[c * dim..(c + 1) * dim], delta, row);
            grad.b[c] += delta;
        }
    }
}

#[inline(always)]
fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

/// Dot product with 32 independent sums: the compiler turns them into SIMD registers (four
/// of AVX2, eight of SSE2) whose additions do not wait for one another. A single running sum
/// would force strict left-to-right order; eight would still wait on one register.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 32;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// y += a * x.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_the_plain_formulas() {
        let a: Vec<f32> = (0..21).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..21).map(|i| (i % 5) as f32).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
        let mut y = b.clone();
        axpy(&mut y, 2.0, &a);
        assert_eq!(y[3], b[3] + 2.0 * a[3]);
        let mut v = [1.0f32, 2.0, 3.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6 && v[2] > v[1] && v[1] > v[0]);
    }

    /// The analytic gradient against finite differences of the weighted loss.
    #[test]
    fn gradient_matches_finite_differences() {
        let (dim, classes) = (3, 3);
        let x = vec![0.5f32, -1.0, 2.0, 1.5, 0.2, -0.3, -0.7, 0.9, 0.1];
        let y = vec![0usize, 2, 1];
        let cw = [1.0f32, 2.0, 0.5];
        let rows = [0usize, 1, 2, 1];
        let model = Linear { w: vec![0.1, -0.2, 0.3, 0.0, 0.4, -0.1, 0.2, 0.2, -0.3], b: vec![0.1, 0.0, -0.1], dim };
        let mut probs = vec![0f32; rows.len() * classes];
        model.probabilities(&x, &rows, &mut probs);
        let mut grad = Linear { w: vec![0.0; 9], b: vec![0.0; 3], dim };
        let total = rows.iter().map(|&i| cw[y[i]]).sum();
        gradient(&mut grad, &Rows { x: &x, y: &y, rows: &rows, cw: &cw, total }, &probs);
        let loss = |m: &Linear| m.score(&x, &y, &rows, &cw).1;
        for k in 0..9 {
            let (mut plus, mut minus) = (Linear { w: model.w.clone(), b: model.b.clone(), dim }, Linear { w: model.w.clone(), b: model.b.clone(), dim });
            plus.w[k] += 1e-3;
            minus.w[k] -= 1e-3;
            let numeric = (loss(&plus) - loss(&minus)) / 2e-3;
            assert!((numeric - grad.w[k] as f64).abs() < 1e-3, "w[{k}]: numeric {numeric}, analytic {}", grad.w[k]);
        }
    }
}
