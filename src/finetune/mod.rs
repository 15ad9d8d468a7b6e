//! `retrain finetune`: the study's second approach. A pretrained network gets a new N-way
//! head, which trains alone first (phase 1, on bottlenecks), then with every layer (phase 2),
//! through the artifacts of scripts/make_finetune.py on stock ONNX Runtime.
//!
//! Data flow: MTFL -> bottleneck cache ([`crate::extract`]) -> phase 1 ([`phase1`]) -> phase 2
//! on images ([`images`], [`phase2`], micro-batches chosen by [`plan`]) -> test metrics ->
//! exported model and head ([`export`]).

pub mod export;
pub mod images;
pub mod phase1;
pub mod phase2;
pub mod plan;
pub mod run;
pub mod set;
pub mod steps;

pub use run::{finetune, report, FinetuneOptions, FinetuneSummary};
