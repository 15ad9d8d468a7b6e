//! How a batch is cut into micro-batches: the largest micro-batch with a graph in the
//! artifacts whose estimated peak memory fits the budget.
//!
//! The estimate is state + micro x per-image activations, from the manifest
//! (scripts/make_artifacts.py counts every batch-sized tensor of the gradient graph, an upper
//! bound), scaled by [`ACTIVATION_SHARE`], what ONNX Runtime's buffer reuse was measured to keep
//! of it (docs/finetune.md). The budget is `--memory-budget`, else the free memory of the
//! device: MemAvailable on the CPU, `nvidia-smi`'s free memory on a GPU.

use std::process::Command;

use anyhow::{bail, Result};

use crate::runtime::Device;
use crate::train::artifacts::MemoryEstimate;

/// Share of the counted activation bytes that the measured peaks needed (InceptionV3, CPU).
pub const ACTIVATION_SHARE: f64 = 0.25;
/// Keep this share of the free memory in reserve (ORT arenas, decoding, fragmentation).
const HEADROOM: f64 = 0.8;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub micro: usize,
    /// Micro-batches per optimizer step; the last one is padded with weight-0 rows.
    pub pieces: usize,
    pub padded_rows: usize,
    pub estimated_bytes: Option<u64>,
    pub budget_bytes: Option<u64>,
}

impl Plan {
    pub fn describe(&self, batch: usize) -> String {
        let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
        let memory = match (self.estimated_bytes, self.budget_bytes) {
            (Some(e), Some(b)) => format!(" (estimated peak {} of {} available)", gib(e), gib(b)),
            (Some(e), None) => format!(" (estimated peak {}; free memory unknown)", gib(e)),
            _ => String::new(),
        };
        let padding = if self.padded_rows > 0 { format!(", {} padding rows", self.padded_rows) } else { String::new() };
        format!("batch {batch} as {} micro-batch(es) of {}{padding}{memory}", self.pieces, self.micro)
    }
}

pub fn estimate(memory: &MemoryEstimate, micro: usize) -> u64 {
    memory.state_bytes + (micro as f64 * memory.activation_bytes_per_image as f64 * ACTIVATION_SHARE) as u64
}

/// Chooses the micro-batch: `forced` if given (it must have a graph), else the largest
/// available one not above `batch` that fits `budget`.
pub fn choose(batch: usize, available: &[usize], memory: Option<&MemoryEstimate>, budget: Option<u64>, forced: Option<usize>) -> Result<Plan> {
    let mut sizes: Vec<usize> = available.iter().copied().filter(|&m| m <= batch).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let fits = |m: usize| match (memory, budget) {
        (Some(mem), Some(b)) => estimate(mem, m) <= b,
        _ => true,
    };
    let micro = match forced {
        Some(m) if !available.contains(&m) => bail!("--micro-batch {m}: the artifacts have graphs for {available:?} only"),
        Some(m) if m > batch => bail!("--micro-batch {m} is larger than the batch ({batch})"),
        Some(m) => m,
        None => match sizes.iter().copied().find(|&m| fits(m)) {
            Some(m) => m,
            None => bail!(
                "no micro-batch fits: even {} needs about {} MiB, {} MiB are available (--memory-budget overrides)",
                sizes.last().copied().unwrap_or(0),
                memory.map_or(0, |mem| estimate(mem, sizes.last().copied().unwrap_or(1)) >> 20),
                budget.unwrap_or(0) >> 20
            ),
        },
    };
    let pieces = batch.div_ceil(micro);
    Ok(Plan { micro, pieces, padded_rows: pieces * micro - batch, estimated_bytes: memory.map(|m| estimate(m, micro)), budget_bytes: budget })
}

/// Free memory on `device` with some headroom kept, when it can be read.
pub fn free_memory(device: Device) -> Option<u64> {
    let free = match device {
        Device::Cpu => mem_available(),
        Device::Cuda(id) => gpu_free(id),
    }?;
    Some((free as f64 * HEADROOM) as u64)
}

fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

fn gpu_free(id: i32) -> Option<u64> {
    let out = Command::new("nvidia-smi").args(["--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", &id.to_string()]).output().ok()?;
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(mib << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM: MemoryEstimate = MemoryEstimate { state_bytes: 1 << 30, activation_bytes_per_image: 1 << 30 };

    #[test]
    fn the_largest_micro_batch_that_fits_is_chosen() {
        let sizes = [100, 50, 25, 10, 8, 4, 2, 1];
        let budget = estimate(&MEM, 8) + 1;
        let plan = choose(100, &sizes, Some(&MEM), Some(budget), None).unwrap();
        assert_eq!((plan.micro, plan.pieces, plan.padded_rows), (8, 13, 4));
        assert_eq!(choose(100, &sizes, Some(&MEM), None, None).unwrap().micro, 100);
        assert_eq!(choose(30, &sizes, Some(&MEM), None, None).unwrap().micro, 25);
    }

    #[test]
    fn nothing_fitting_or_a_missing_size_is_an_error() {
        let err = choose(100, &[4, 2], Some(&MEM), Some(1 << 20), None).unwrap_err().to_string();
        assert!(err.contains("no micro-batch fits"), "{err}");
        let err = choose(100, &[4, 2], Some(&MEM), None, Some(3)).unwrap_err().to_string();
        assert!(err.contains("--micro-batch 3"), "{err}");
        assert_eq!(choose(100, &[4, 2], Some(&MEM), Some(1), Some(2)).unwrap().micro, 2);
    }
}
