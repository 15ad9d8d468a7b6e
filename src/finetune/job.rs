//! What a fine-tuning run is: its [`Settings`] (what a resumed run must match) and the
//! `Job` every stage of it reads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::set::FinetuneSet;
use crate::head::classes::Classes;
use crate::runtime::SessionConfig;
use crate::train::data::Subsets;

/// What decides the result; a resumed run must match the one that wrote the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub attribute: String,
    pub crop: String,
    pub seed: u64,
    pub distortions: String,
    pub phase1_steps: u64,
    pub phase1_lr: f32,
    pub phase2_steps: u64,
    pub phase2_lr: f32,
    /// The layer phase 2 trains from (None: every layer).
    #[serde(default)]
    pub train_from: Option<String>,
    /// Phase 1 trains on standardised bottlenecks (runs before this was so cannot be resumed).
    #[serde(default)]
    pub phase1_standardized: bool,
    pub limit: Option<usize>,
}

/// What every stage reads.
pub(crate) struct Job {
    pub set: FinetuneSet,
    pub classes: Classes,
    pub config: SessionConfig,
    pub settings: Settings,
    pub history: PathBuf,
    pub subsets: Subsets,
}
