//! Per-feature standardisation, fitted on the training rows and stored in the head graph.

use ndarray::{Array2, ArrayView2, Axis, Zip};

/// value' = (value - mean) * scale, with scale = 1/std (1 for constant features).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
}

impl Standardizer {
    /// Mean and population standard deviation per column (as scikit-learn's StandardScaler),
    /// accumulated in f64 so that 10^4 rows of f32 lose nothing.
    pub fn fit(x: ArrayView2<f32>) -> Standardizer {
        let n = x.nrows().max(1) as f64;
        let mut sum = vec![0f64; x.ncols()];
        let mut sum_sq = vec![0f64; x.ncols()];
        for row in x.rows() {
            for ((s, q), &v) in sum.iter_mut().zip(sum_sq.iter_mut()).zip(row.iter()) {
                *s += v as f64;
                *q += v as f64 * v as f64;
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let scale = sum_sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let std = (q / n - m * m).max(0.0).sqrt();
                // Constant columns carry no information; leave them at 0 after centring.
                if std > 1e-12 {
                    (1.0 / std) as f32
                } else {
                    1.0
                }
            })
            .collect();
        Standardizer { mean: mean.into_iter().map(|m| m as f32).collect(), scale }
    }

    /// The identity, for heads trained on raw features.
    pub fn identity(dim: usize) -> Standardizer {
        Standardizer { mean: vec![0.0; dim], scale: vec![1.0; dim] }
    }

    pub fn apply(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut out = x.to_owned();
        for mut row in out.axis_iter_mut(Axis(0)) {
            Zip::from(&mut row).and(&self.mean).and(&self.scale).for_each(|v, &m, &s| *v = (*v - m) * s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn standardised_columns_have_zero_mean_unit_std() {
        let x = array![[1.0f32, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]];
        let s = Standardizer::fit(x.view());
        let z = s.apply(x.view());
        for c in 0..3 {
            let col = z.column(c);
            let mean = col.sum() / 3.0;
            let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 3.0;
            assert!(mean.abs() < 1e-6);
            assert!(if c == 1 { var == 0.0 } else { (var - 1.0).abs() < 1e-5 }, "column {c}: var {var}");
        }
    }
}
