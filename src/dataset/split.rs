//! Stable hold-out splits by hashing file names, as TensorFlow's retrain.py does.
//!
//! A file's subset depends only on its name, the seed and the percentage, so adding images to a
//! data set never moves old ones between subsets. As in retrain.py, anything after `_nohash_`
//! in a file name is ignored, so variants of one picture stay together.

use sha2::{Digest, Sha256};

/// Subset a file falls into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    Train,
    Holdout,
}

/// Resolution of the percentage, large enough that rounding does not bias small percentages.
const BUCKETS: u64 = (1 << 27) - 1;

/// Assigns `name` to the hold-out subset with probability `holdout_percent` / 100.
pub fn assign(name: &str, seed: u64, holdout_percent: f64) -> Subset {
    let base = name.rsplit('/').next().unwrap_or(name);
    let stem = base.split("_nohash_").next().unwrap_or(base);
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(stem.as_bytes());
    let digest = h.finalize();
    let value = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % (BUCKETS + 1);
    let percent = value as f64 * 100.0 / BUCKETS as f64;
    if percent < holdout_percent {
        Subset::Holdout
    } else {
        Subset::Train
    }
}
