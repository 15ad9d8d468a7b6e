#![warn(missing_docs)]
//! retrain: transfer learning for face attributes (or any image classes) on ONNX Runtime.
//!
//! A pretrained ONNX backbone turns images into feature vectors ("bottlenecks") that are
//! cached in HDF5; softmax heads are fitted on them; backbone and heads are joined into one
//! ONNX model that any ONNX Runtime can run. The `retrain` command line is a thin layer over
//! these calls.
//!
//! Data flows one way: [`dataset`] -> [`preprocess`] -> [`model`] / [`runtime`] -> [`cache`]
//! (the job [`extract`]) -> [`head`] (or [`train`] and [`finetune`] for whole networks) ->
//! [`eval`] / [`metrics`] -> [`export`] -> [`predict`]. [`description`] is what every ONNX file
//! says of itself. The study's report ([`study`]) is built on these and nothing imports it.
//!
//! # Example: class folders to predictions
//!
//! ```
//! use retrain::dataset::folders;
//! use retrain::export::{self, Input};
//! use retrain::extract::{self, ExtractOptions};
//! use retrain::head::{self, Solver, HeadOptions};
//! use retrain::model::Model;
//! use retrain::predict::{self, PredictOptions};
//! use retrain::runtime::SessionConfig;
//! use retrain::{cache::Cache, eval};
//! # let dir = tempfile::tempdir()?;
//! # let photos = retrain::examples::class_folders(&dir.path().join("photos"), 8)?;
//! # let out = dir.path();
//!
//! // photos/dark/*.png, photos/light/*.png: one class per folder
//! let config = SessionConfig::cpu();
//! let mut backbone = Model::load("onnx/test/tiny_cnn.onnx".as_ref(), &config, None)?;
//! let data = folders::load(&photos)?;
//! let opts = ExtractOptions { out: Some(out.join("photos.h5")), show_progress: false, ..ExtractOptions::default() };
//! let cache_path = extract::extract(&data, &mut backbone, &opts)?.out;
//!
//! let cache = Cache::read(&cache_path)?;
//! let fitted = head::train(&cache, &cache_path, &HeadOptions::new("class", Solver::Linfa), &mut |_| {})?;
//! fitted.head.save(&out.join("class.onnx"), &fitted.curve)?;
//! let scores = eval::evaluate(&out.join("class.onnx"), &cache_path, &config)?;
//! assert!(scores.metrics.accuracy > 0.9);
//!
//! export::export(&backbone.path, &[&out.join("class.onnx")], &out.join("model.onnx"), Input::Tensor)?;
//! let mut model = Model::load(&out.join("model.onnx"), &config, None)?;
//! let photo = photos.join("light/light0.png");
//! let labels = predict::predict(&mut model, &predict::images_from_paths(&[photo]), &PredictOptions::default())?;
//! assert_eq!(labels.table.predicted_label(0, 0), "light");
//! # Ok::<(), anyhow::Error>(())
//! ```

// The library's API, each step of the data flow a module.
pub mod augment;
#[allow(missing_docs)] // documented in part; the lint is turned on module by module
pub mod cache;
#[allow(missing_docs)] // documented in part; the lint is turned on module by module
pub mod dataset;
pub mod description;
pub mod eval;
pub mod export;
pub mod extract;
#[allow(missing_docs)] // documented in part; the lint is turned on module by module
pub mod finetune;
#[allow(missing_docs)] // documented in part; the lint is turned on module by module
pub mod head;
pub mod interrupt;
pub mod locate;
#[allow(missing_docs)] // documented in part; the lint is turned on module by module
pub mod metrics;
pub mod model;
pub mod predict;
#[allow(missing_docs)] // documented in part; the lint is turned on module by module
pub mod preprocess;
#[allow(missing_docs)] // documented in part; the lint is turned on module by module
pub mod quantize;
pub mod runs;
pub mod runtime;
#[allow(missing_docs)] // documented in part; the lint is turned on module by module
pub mod train;

// The study's report, built on the API above; nothing in it is imported by the rest.
#[allow(missing_docs)] // documented in part; the lint is turned on module by module
pub mod study;

// Internals that the tests and benchmarks reach, left out of the documented API.
#[doc(hidden)]
pub mod examples;
#[doc(hidden)]
pub mod fault;
#[doc(hidden)]
pub mod onnx;
#[doc(hidden)]
pub mod plot;
#[doc(hidden)]
pub mod progress;
#[doc(hidden)]
pub mod rng;
#[doc(hidden)]
pub mod stream;

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
