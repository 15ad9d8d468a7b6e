//! retrain: transfer learning for face attributes on ONNX Runtime.
//!
//! Data flows one way: [`dataset`] -> [`preprocess`] (-> [`augment`] when training) -> [`runtime`]/[`model`] -> [`cache`]
//! -> [`head`] / training ([`train`]) -> [`metrics`] -> [`export`]. [`extract`] is the job that
//! joins the first four; [`eval`], [`predict`] and [`reproduce`] are the jobs after it.

pub mod augment;
pub mod cache;
pub mod dataset;
pub mod description;
pub mod eval;
pub mod export;
pub mod extract;
pub mod fault;
pub mod finetune;
pub mod head;
pub mod interrupt;
pub mod locate;
pub mod metrics;
pub mod model;
pub mod onnx;
pub mod plot;
pub mod predict;
pub mod predictions;
pub mod preprocess;
pub mod progress;
pub mod quantize;
pub mod reproduce;
pub mod rng;
pub mod runtime;
pub mod stream;
pub mod train;

use std::path::Path;

use anyhow::{Context, Result};

/// The version recorded in every file retrain writes.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Creates the folder that `path` will be written into.
pub fn create_parent_dir(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display())),
        None => Ok(()),
    }
}

/// Writes a whole file, creating its folder; errors name the file.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    create_parent_dir(path)?;
    std::fs::write(path, contents).map_err(|e| write_failed(e.into(), &format!("cannot write {}", path.display()), ""))
}

/// A failed write's error as `what`, why (when the disk is full or a file size limit is
/// reached: what to do about it), then `kept` (what is still safe), e.g. "; 40 rows are kept".
pub fn write_failed(e: anyhow::Error, what: &str, kept: &str) -> anyhow::Error {
    let hint = write_failure_hint(&e);
    e.context(format!("{what}{hint}{kept}"))
}

/// Words that tell a user why a write failed when the cause is the disk or a file size limit
/// (with a leading "; "), else nothing.
fn write_failure_hint(e: &anyhow::Error) -> &'static str {
    let text = format!("{e:#}");
    if text.contains("No space left") || text.contains("errno = 28") {
        "; the disk is full: free some space and run the same command again"
    } else if text.contains("File too large") || text.contains("errno = 27") {
        "; the file size limit (ulimit -f) is reached: raise it and run the same command again"
    } else {
        ""
    }
}
