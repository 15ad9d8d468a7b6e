//! retrain: transfer learning for face attributes on ONNX Runtime.
//!
//! Data flows one way: [`dataset`] -> [`preprocess`] -> [`runtime`]/[`model`] -> [`cache`]
//! -> heads / fine-tuning ([`train`]) -> metrics -> export. [`extract`] is the job that joins the first four.

pub mod cache;
pub mod dataset;
pub mod extract;
pub mod model;
pub mod preprocess;
pub mod progress;
pub mod runtime;
pub mod train;

/// The version recorded in every file retrain writes.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
