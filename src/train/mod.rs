//! Training from scratch (or fine-tuning) through training artifacts on stock ONNX Runtime.
//!
//! scripts/make_artifacts.py turns a forward graph into a train-step graph (forward, loss,
//! backward, optimizer update in standard ONNX ops), an eval graph and an initial checkpoint.
//! Here: [`artifacts`] reads and checks them, [`data`] turns MTFL into tensors, [`engine`]
//! keeps the state on the device and runs steps, [`batches`] builds (and distorts) batches,
//! [`epochs`] is the loop with validation and checkpoints, [`schedule`] its learning rate and
//! early stop, [`checkpoint`] the HDF5 file, [`export`] writes weights back into the forward
//! graph.

pub mod accumulate;
pub mod artifacts;
pub mod batches;
pub mod checkpoint;
pub mod data;
pub mod engine;
pub mod epochs;
pub mod export;
pub mod rng;
pub mod schedule;

pub use epochs::{train, TrainOptions, TrainSummary};
