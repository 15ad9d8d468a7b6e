//! `retrain finetune`: the study's second approach. A pretrained network gets a new N-way
//! head, which trains alone first (phase 1, on bottlenecks), then with every layer (phase 2),
//! through the artifacts of scripts/make_finetune.py on stock ONNX Runtime.
//!
//! Data flow: MTFL -> bottleneck cache ([`crate::extract`]) -> phase 1 on cached rows ->
//! phase 2 on images (micro-batches chosen by [`plan`]) or, from a layer up, on cached
//! activations at the cut -> test metrics -> exported model and head ([`outputs`]). Both
//! phases run the training loop of [`crate::train::steps`] ([`phases`]).

pub mod job;
pub mod outputs;
pub mod phases;
pub mod plan;
pub mod run;
pub mod set;

pub use job::Settings;
pub use run::{finetune, report, FinetuneOptions, FinetuneSummary};
