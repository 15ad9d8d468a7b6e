//! A small seeded generator (SplitMix64) for shuffling, dropout masks and image distortions.
//!
//! Every random draw derives from (seed, purpose, counter) alone, so epoch e's order and step
//! s's masks (and image i's distortion in epoch e) are the same whether training ran straight through or resumed from a checkpoint.

/// [`crate::rng::splitmix64`] with streams keyed by purpose.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A stream for one purpose: `seed` mixed with a tag and an index (epoch, step, ...).
    pub fn stream(seed: u64, tag: u64, index: u64) -> Self {
        let mut s = SplitMix64(seed ^ 0x5851_f42d_4c95_7f2d);
        let a = s.next_u64() ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        SplitMix64(a ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03))
    }

    pub fn next_u64(&mut self) -> u64 {
        crate::rng::splitmix64(&mut self.0)
    }

    /// Uniform in [0, 1) with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in 0..n (n > 0), by widening multiplication.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

pub const TAG_SHUFFLE: u64 = 1;
pub const TAG_DROPOUT: u64 = 2;
pub const TAG_DISTORT: u64 = 3;

/// Seed of the random distortion of training image `index` in `epoch`
/// ([`crate::augment::Distortions::apply`]).
pub fn distortion_seed(seed: u64, epoch: u64, index: usize) -> u64 {
    SplitMix64::stream(seed, TAG_DISTORT, epoch).next_u64() ^ (index as u64).wrapping_mul(0xd1b5_4a32_d192_ed03)
}

/// The order of `items` in epoch `epoch` (Fisher-Yates).
pub fn shuffled(items: &[usize], seed: u64, epoch: u64) -> Vec<usize> {
    let mut out = items.to_vec();
    let mut rng = SplitMix64::stream(seed, TAG_SHUFFLE, epoch);
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    out
}

/// Inverted-dropout mask for `step`: each value is 0 with probability `ratio`, else 1/(1-ratio).
pub fn dropout_mask(len: usize, ratio: f32, seed: u64, step: u64, which: u64) -> Vec<f32> {
    let mut rng = SplitMix64::stream(seed, TAG_DROPOUT, step.wrapping_mul(1 << 8) ^ which);
    let keep = 1.0 / (1.0 - ratio);
    (0..len).map(|_| if rng.next_f32() < ratio { 0.0 } else { keep }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
