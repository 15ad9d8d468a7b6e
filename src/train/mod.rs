//! Training through training artifacts on stock ONNX Runtime: `retrain train` (from scratch)
//! and both phases of `retrain finetune` share everything here.
//!
//! scripts/make_artifacts.py turns a forward graph into a train-step graph (forward, loss,
//! backward, optimizer update in standard ONNX ops), an eval graph and an initial checkpoint.
//! Here: [`artifacts`] reads and checks them, [`data`] splits MTFL and holds rows,
//! [`decode`] turns images into rows (one policy for unreadable ones), [`batches`] is the one
//! batch source (order, values, distortions), [`engine`] keeps the state on the device and
//! runs steps ([`accumulate`]: as micro-batches), [`steps`] is the one loop with validation
//! points, [`history`] its learning curve and [`checkpoint`] its HDF5 file, [`epochs`] is
//! `retrain train` on top of it with [`schedule`]'s learning rate and early stop, [`weights`]
//! writes weights back into the forward graph.

pub mod accumulate;
pub mod artifacts;
pub mod batches;
pub mod checkpoint;
pub mod data;
pub mod decode;
pub mod engine;
pub mod epochs;
pub mod history;
pub mod schedule;
pub mod score;
pub mod steps;
pub mod weights;

pub use epochs::{train, TrainOptions, TrainSummary};
