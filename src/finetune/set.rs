//! The fine-tuning artifacts of scripts/make_finetune.py: `finetune.json` and its two
//! training-artifacts folders (phase 1: the new head on bottlenecks; phase 2: every layer),
//! and any `phase2-from-LAYER` folders (phase 2 with the layers below LAYER's block frozen).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::train::artifacts::Artifacts;

pub const FORMAT: &str = "retrain-finetune-artifacts";

#[derive(Debug, Clone, Deserialize)]
struct PhaseEntry {
    dir: String,
    artifact_sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
struct PartialEntry {
    #[serde(flatten)]
    phase: PhaseEntry,
    /// The tensor below which everything stays frozen.
    cut: String,
    /// The frozen graph up to `cut`, in the phase's folder.
    below: String,
    below_sha256: String,
}

/// Phase 2 from a layer up: the frozen graph below it runs once per image (its output is
/// cached like a bottleneck) and the artifacts train the rest.
#[derive(Debug, Clone)]
pub struct TrainFrom {
    pub layer: String,
    pub cut: String,
    pub below: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
struct Description {
    format: String,
    format_version: i64,
    source_sha256: String,
    classes: usize,
    features: usize,
    bottleneck: String,
    head_params: Vec<String>,
    batch: usize,
    phase1: PhaseEntry,
    phase2: PhaseEntry,
    #[serde(default)]
    phase2_from: BTreeMap<String, PartialEntry>,
}

/// An opened fine-tuning set whose parts were checked against each other.
#[derive(Debug, Clone)]
pub struct FinetuneSet {
    pub dir: PathBuf,
    pub source_sha256: String,
    pub classes: usize,
    pub features: usize,
    pub bottleneck: String,
    /// The new layer's parameters: trained alone in phase 1, handed to phase 2.
    pub head_params: Vec<String>,
    pub batch: usize,
    pub phase1: Artifacts,
    /// Every layer, or those from `train_from`'s block up.
    pub phase2: Artifacts,
    /// Phase 2 of every layer: its forward graph is the whole network that export writes.
    pub every_layer: Artifacts,
    /// Where phase 2 trains from (None: every layer trains).
    pub train_from: Option<TrainFrom>,
}

impl FinetuneSet {
    /// Opens the set in `dir`, with the phase 2 that trains from `train_from` (a layer the
    /// set was made with `--train-from` for) or every layer (None).
    pub fn open(dir: &Path, train_from: Option<&str>) -> Result<FinetuneSet> {
        let path = dir.join("finetune.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (make it with scripts/make_finetune.py MODEL.onnx --out {})", path.display(), dir.display()))?;
        let d: Description = serde_json::from_str(&text).with_context(|| format!("{} is not a fine-tuning description", path.display()))?;
        if d.format != FORMAT || d.format_version != 1 {
            bail!("{}: format '{}' v{}, expected '{FORMAT}' v1", path.display(), d.format, d.format_version);
        }
        let phase = |e: &PhaseEntry| -> Result<Artifacts> {
            let artifacts = Artifacts::open(&dir.join(&e.dir))?;
            if artifacts.sha256 != e.artifact_sha256 {
                bail!(
                    "{} holds other artifacts than {} names (sha256 {} vs {}): regenerate the set",
                    artifacts.dir.display(),
                    path.display(),
                    &artifacts.sha256[..12],
                    short(&e.artifact_sha256)
                );
            }
            Ok(artifacts)
        };
        let every_layer = phase(&d.phase2)?;
        let (phase2, train_from) = match train_from {
            None => (every_layer.clone(), None),
            Some(layer) => {
                let entry = partial(&d, layer, dir)?;
                let artifacts = phase(&entry.phase)?;
                let below = artifacts.dir.join(&entry.below);
                let digest = crate::model::file_sha256(&below)?;
                if digest != entry.below_sha256 {
                    bail!(
                        "{} is not the file {} names (sha256 {} vs {}): regenerate the set",
                        below.display(),
                        path.display(),
                        short(&digest),
                        short(&entry.below_sha256)
                    );
                }
                (artifacts, Some(TrainFrom { layer: layer.to_string(), cut: entry.cut.clone(), below }))
            }
        };
        let set = FinetuneSet {
            dir: dir.to_path_buf(),
            source_sha256: d.source_sha256,
            classes: d.classes,
            features: d.features,
            bottleneck: d.bottleneck,
            head_params: d.head_params,
            batch: d.batch,
            phase1: phase(&d.phase1)?,
            phase2,
            every_layer,
            train_from,
        };
        set.check_heads()?;
        Ok(set)
    }

    /// Phase 1's parameters are exactly the head's, with the shapes phase 2 has for them.
    fn check_heads(&self) -> Result<()> {
        let names: Vec<&str> = self.phase1.params().map(|p| p.input.as_str()).collect();
        if names != self.head_params.iter().map(String::as_str).collect::<Vec<_>>() {
            bail!("{}: phase 1 trains {names:?}, finetune.json names the head {:?}", self.dir.display(), self.head_params);
        }
        for p in self.phase1.params() {
            let other = self.phase2.params().find(|q| q.input == p.input);
            if other.map(|q| &q.shape) != Some(&p.shape) {
                bail!("{}: head parameter '{}' {:?} is not in phase 2 with that shape", self.dir.display(), p.input, p.shape);
            }
        }
        Ok(())
    }

    /// Fine-tuning starts from the network the artifacts were made from, and its bottleneck
    /// caches; another model's would not match the graphs' weights.
    pub fn check_source(&self, model_sha256: &str, model: &Path) -> Result<()> {
        if model_sha256 != self.source_sha256 {
            bail!(
                "{} (sha256 {}) is not the model the fine-tuning artifacts in {} were made from (sha256 {})",
                model.display(),
                short(model_sha256),
                self.dir.display(),
                short(&self.source_sha256)
            );
        }
        Ok(())
    }
}

fn partial<'a>(d: &'a Description, layer: &str, dir: &Path) -> Result<&'a PartialEntry> {
    d.phase2_from.get(layer).with_context(|| {
        let made: Vec<&str> = d.phase2_from.keys().map(String::as_str).collect();
        format!(
            "the fine-tuning artifacts in {} have no phase 2 from '{layer}' (they have {}): make them with scripts/make_finetune.py MODEL.onnx --out {} --train-from {layer}",
            dir.display(),
            if made.is_empty() { "only the all-layers one".to_string() } else { format!("from {}", made.join(", ")) },
            dir.display()
        )
    })
}

fn short(hash: &str) -> &str {
    &hash[..12.min(hash.len())]
}
