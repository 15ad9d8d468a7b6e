//! Stable hold-out splits by hashing file names, as TensorFlow's retrain.py does.
//!
//! A file's subset depends only on its name, the seed and the percentage, so adding images to a
//! data set never moves old ones between subsets. As in retrain.py, anything after `_nohash_`
//! in a file name is ignored, so variants of one picture stay together.

use std::ffi::OsStr;

use sha2::{Digest, Sha256};

/// Subset a file falls into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    Train,
    Holdout,
}

/// What marks the end of the part of a file name that is hashed.
const NO_HASH: &[u8] = b"_nohash_";

/// Resolution of the percentage, large enough that rounding does not bias small percentages.
const BUCKETS: u64 = (1 << 27) - 1;

/// Assigns `name` to the hold-out subset with probability `holdout_percent` / 100.
pub fn assign(name: impl AsRef<OsStr>, seed: u64, holdout_percent: f64) -> Subset {
    let name = name.as_ref().as_encoded_bytes();
    let base = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
    let stem = base.windows(NO_HASH.len()).position(|w| w == NO_HASH).map_or(base, |end| &base[..end]);
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(stem);
    let digest = h.finalize();
    let value = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % (BUCKETS + 1);
    let percent = value as f64 * 100.0 / BUCKETS as f64;
    if percent < holdout_percent {
        Subset::Holdout
    } else {
        Subset::Train
    }
}
