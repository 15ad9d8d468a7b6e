//! The one generator behind every seeded draw: SplitMix64 (Steele, Lea & Flood 2014), written
//! out here rather than taken from a crate so that a seed gives the same numbers on every
//! machine and with every version of the dependencies.
//!
//! Head training draws from one stream per seed ([`Rng::new`]). Training through artifacts
//! draws from streams keyed by (seed, purpose, counter) ([`Rng::stream`]), so epoch e's order,
//! step s's dropout masks and image i's distortion in epoch e are the same whether a run went
//! straight through or was resumed from a checkpoint.

/// Advances `state` and returns the next 64 random bits.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub struct Rng(u64);

pub const TAG_SHUFFLE: u64 = 1;
pub const TAG_DROPOUT: u64 = 2;
pub const TAG_DISTORT: u64 = 3;

impl Rng {
    /// The stream that starts at state `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A stream for one purpose: `seed` mixed with a tag and an index (epoch, step, ...).
    pub fn stream(seed: u64, tag: u64, index: u64) -> Rng {
        let mut s = Rng(seed ^ 0x5851_f42d_4c95_7f2d);
        let a = s.next_u64() ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Rng(a ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03))
    }

    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// Uniform in [0, 1) with 24 random bits (dropout masks).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0), by widening multiplication.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Normal with standard deviation `std`, redrawn beyond two of them, like TensorFlow's
    /// truncated_normal that retrain.py uses for the final layer.
    pub fn truncated_normal(&mut self, std: f64) -> f64 {
        loop {
            let z = self.normal();
            if z.abs() <= 2.0 {
                return z * std;
            }
        }
    }
}

/// Seed of the random distortion of training image `index` in `epoch`
/// ([`crate::augment::Distortions::apply`]).
pub fn distortion_seed(seed: u64, epoch: u64, index: usize) -> u64 {
    Rng::stream(seed, TAG_DISTORT, epoch).next_u64() ^ (index as u64).wrapping_mul(0xd1b5_4a32_d192_ed03)
}

/// The order of `items` in epoch `epoch` (Fisher-Yates).
pub fn shuffled(items: &[usize], seed: u64, epoch: u64) -> Vec<usize> {
    let mut out = items.to_vec();
    let mut rng = Rng::stream(seed, TAG_SHUFFLE, epoch);
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    out
}

/// Inverted-dropout mask for `step`: each value is 0 with probability `ratio`, else 1/(1-ratio).
/// `which` tells the masks of one step apart (Dropout node, micro-batch).
pub fn dropout_mask(len: usize, ratio: f32, seed: u64, step: u64, which: u64) -> Vec<f32> {
    let mut rng = Rng::stream(seed, TAG_DROPOUT, step.wrapping_mul(1 << 8) ^ which);
    let keep = 1.0 / (1.0 - ratio);
    (0..len).map(|_| if rng.next_f32() < ratio { 0.0 } else { keep }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_sane_moments() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..5).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let mut r = Rng::new(1);
        let z: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
        let mean = z.iter().sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / z.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
        assert!((0..1000).all(|_| r.below(3) < 3));
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let items: Vec<usize> = (0..100).collect();
        let a = shuffled(&items, 7, 3);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, items);
        assert_eq!(a, shuffled(&items, 7, 3));
        assert_ne!(a, shuffled(&items, 7, 4));
        assert_ne!(a, shuffled(&items, 8, 3));
    }

    #[test]
    fn dropout_keeps_the_expected_share() {
        let m = dropout_mask(100_000, 0.4, 1, 5, 0);
        let kept = m.iter().filter(|&&v| v > 0.0).count() as f64 / m.len() as f64;
        assert!((kept - 0.6).abs() < 0.01, "kept {kept}");
        let mean: f64 = m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64;
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
    }
}
