//! SplitMix64 (Steele, Lea & Flood 2014), the one generator behind every seeded draw: head
//! batches and initial weights ([`crate::head::rng`]), epoch shuffles and dropout masks
//! ([`crate::train::rng`]). Written out here rather than taken from a crate so that a seed gives
//! the same numbers on every machine and with every version of the dependencies.

/// Advances `state` and returns the next 64 random bits.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
