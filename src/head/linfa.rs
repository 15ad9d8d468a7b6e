//! Multinomial logistic regression by L-BFGS, through linfa-logistic.

use anyhow::{anyhow, Result};
use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::classes::Labeled;

/// Hyperparameters, in scikit-learn's terms so that results can be compared one to one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinfaParams {
    /// Inverse L2 strength, scikit-learn's `C` (the penalty is ||W||^2 / (2C) on summed losses).
    ///
    /// The default, 0.01, is the best of 1, 0.1, 0.01 and 0.001 for both gender and smile on a
    /// 10% validation split of MTFL's training set with InceptionV3 bottlenecks; it also makes
    /// L-BFGS converge in about 100-150 iterations instead of 500-800 at C = 1.
    pub c: f64,
    pub max_iterations: u64,
    /// scikit-learn's `tol`: L-BFGS stops once the gradient of the *mean* loss is this small.
    /// linfa minimises the summed loss, so it is given `tol x rows` (and tests the Euclidean
    /// norm, where scikit-learn tests the largest component: linfa stops no earlier).
    pub gradient_tolerance: f64,
    /// The float type L-BFGS computes in.
    pub precision: Precision,
}

/// The float type of linfa's fit. f32 reads half the bytes per pass over the rows and is what
/// scikit-learn uses on f32 features; it stops once the f32 loss no longer falls measurably,
/// within 0.1 points of scikit-learn's accuracy on MTFL (docs/benchmarks.md). f64 reaches the optimum more
/// closely in about three times the time (gender: 4.65 s against 1.75 s, `train-head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F64,
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "f64" => Ok(Precision::F64),
            _ => Err(anyhow!("unknown precision '{s}': expected f32 or f64")),
        }
    }
}

/// `train-head --c`'s default, chosen on InceptionV3's bottlenecks (study/sklearn_choose_c.py).
pub const DEFAULT_C: f64 = 0.01;

impl Default for LinfaParams {
    fn default() -> Self {
        LinfaParams { c: DEFAULT_C, max_iterations: 1000, gradient_tolerance: 1e-4, precision: Precision::F32 }
    }
}

impl LinfaParams {
    /// linfa's `alpha` giving the same optimum as scikit-learn's LogisticRegression(C).
    ///
    /// With two classes scikit-learn fits one weight vector u and penalises |u|^2/(2C); the
    /// softmax fits two, w1 = -w0 = u/2 at the optimum, so its penalty alpha/2 (|w0|^2 + |w1|^2)
    /// equals alpha |u|^2 / 4: alpha = 2/C. With more classes both are softmax: alpha = 1/C.
    pub fn alpha(&self, n_classes: usize) -> f64 {
        if n_classes == 2 {
            2.0 / self.c
        } else {
            1.0 / self.c
        }
    }
}

/// Weights [classes, features] and biases, each row's loss weighed by its class's
/// `class_weights` entry (as scikit-learn's `class_weight`). Every class must occur in `train`.
pub fn train(train: &Labeled, class_weights: &[f32], params: &LinfaParams) -> Result<(Array2<f32>, Vec<f32>)> {
    match params.precision {
        Precision::F32 => fit(train.x.view(), &train.y, class_weights, params),
        Precision::F64 => fit(train.x.mapv(f64::from).view(), &train.y, class_weights, params),
    }
}

fn fit<F: linfa_logistic::Float>(x: ArrayView2<F>, y: &[usize], class_weights: &[f32], params: &LinfaParams) -> Result<(Array2<f32>, Vec<f32>)> {
    let cast = |v: f64| F::from_f64(v).expect("a float type holds an f64 setting");
    let n_classes = class_weights.len();
    let mut dataset = DatasetBase::new(x, Array1::from(y.to_vec()));
    // Unit weights stay off the dataset: linfa then takes the unweighted path, bit for bit
    // the fit heads had before class weights existed (so their files are reused unchanged).
    if class_weights.iter().any(|&w| w != 1.0) {
        dataset = dataset.with_weights(y.iter().map(|&k| class_weights[k]).collect());
    }
    let fitted = MultiLogisticRegression::<F>::default()
        .alpha(cast(params.alpha(n_classes)))
        .max_iterations(params.max_iterations)
        .gradient_tolerance(cast(params.gradient_tolerance * y.len() as f64))
        .fit(&dataset)
        .map_err(|e| anyhow!("linfa-logistic: {e}"))?;
    // linfa orders its columns by sorted class value, and every class 0..n occurs: column k is class k.
    debug_assert_eq!(fitted.classes(), (0..n_classes).collect::<Vec<_>>().as_slice());
    let to_f32 = |v: F| v.to_f32().expect("a float converts to f32");
    let weights = fitted.params().t().mapv(to_f32);
    let bias = fitted.intercept().iter().copied().map(to_f32).collect();
    Ok((weights, bias))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows on two overlapping classes, a deterministic pattern.
    fn rows(n: usize) -> Labeled {
        let y: Vec<usize> = (0..n).map(|i| usize::from(i % 3 == 0)).collect();
        let x = Array2::from_shape_fn((n, 3), |(i, j)| ((i * 7 + j * 13) % 11) as f32 / 5.0 - 1.0 + y[i] as f32 * (j as f32 - 0.5));
        Labeled { x, y, paths: (0..n).map(|i| format!("{i}.jpg").into()).collect(), unlabeled: 0 }
    }

    #[test]
    fn a_class_weight_of_two_fits_as_if_that_class_were_there_twice() {
        let params = LinfaParams { precision: Precision::F64, gradient_tolerance: 1e-10, ..LinfaParams::default() };
        let data = rows(60);
        let (weighted, weighted_bias) = train(&data, &[1.0, 2.0], &params).unwrap();
        let twice: Vec<usize> = (0..60).chain((0..60).filter(|&i| data.y[i] == 1)).collect();
        let doubled = data.select(&twice);
        let (plain, plain_bias) = train(&doubled, &[1.0, 1.0], &params).unwrap();
        for (a, b) in weighted.iter().chain(&weighted_bias).zip(plain.iter().chain(&plain_bias)) {
            assert!((a - b).abs() < 1e-4, "weighted {weighted:?} {weighted_bias:?} against duplicated rows {plain:?} {plain_bias:?}");
        }
        let (unweighted, _) = train(&data, &[1.0, 1.0], &params).unwrap();
        assert!(unweighted.iter().zip(&weighted).any(|(a, b)| (a - b).abs() > 1e-2), "the weights change the fit");
    }
}
