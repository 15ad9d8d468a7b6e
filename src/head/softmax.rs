//! The model every head is: probabilities = softmax(x W^T + b), and its scores.

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

/// Row-wise softmax of `x W^T + b` (`w` is [classes, features]).
pub fn probabilities(x: ArrayView2<f32>, w: ArrayView2<f32>, b: &[f32]) -> Array2<f32> {
    let mut logits = x.dot(&w.t());
    for mut row in logits.axis_iter_mut(Axis(0)) {
        let max = row.iter().zip(b).map(|(v, c)| v + c).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for (v, c) in row.iter_mut().zip(b) {
            *v = (*v + c - max).exp();
            sum += *v;
        }
        row.mapv_inplace(|v| v / sum);
    }
    logits
}

/// Index of the largest value (the first one on ties, as numpy's argmax).
pub fn argmax(row: ArrayView1<f32>) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}

pub fn predictions(probs: ArrayView2<f32>) -> Vec<usize> {
    probs.rows().into_iter().map(argmax).collect()
}

/// Share of rows whose most probable class is the true one.
pub fn accuracy(probs: ArrayView2<f32>, y: &[usize]) -> f64 {
    let right = predictions(probs).iter().zip(y).filter(|(p, t)| p == t).count();
    right as f64 / y.len().max(1) as f64
}

/// Cross-entropy, each row weighted by its class weight, divided by the sum of the weights.
pub fn cross_entropy(probs: ArrayView2<f32>, y: &[usize], class_weights: &[f32]) -> f64 {
    let (mut loss, mut total) = (0f64, 0f64);
    for (row, &t) in probs.rows().into_iter().zip(y) {
        let w = class_weights[t] as f64;
        loss -= w * (row[t].max(1e-12) as f64).ln();
        total += w;
    }
    loss / total.max(1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn softmax_rows_sum_to_one_and_follow_the_logits() {
        let x = array![[1.0f32, 0.0], [0.0, 1.0], [100.0, -100.0]];
        let w = array![[2.0f32, 0.0], [0.0, 2.0]];
        let p = probabilities(x.view(), w.view(), &[0.0, 0.5]);
        for row in p.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-6);
        }
        assert_eq!(predictions(p.view()), vec![0, 1, 0]);
        let expected = 1.0 / (1.0 + (-1.5f32).exp());
        assert!((p[[0, 0]] - expected).abs() < 1e-6);
        assert_eq!(accuracy(p.view(), &[0, 1, 1]), 2.0 / 3.0);
        assert!(cross_entropy(p.view(), &[0, 1, 0], &[1.0, 1.0]) > 0.0);
    }
}
