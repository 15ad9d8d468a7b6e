//! Training artifacts written by scripts/make_artifacts.py: the manifest and its checks.
//!
//! The manifest names every graph input and output the driver uses; [`Artifacts::open`] checks
//! the files against their recorded sha256 and [`Artifacts::check_train_step`] checks a loaded
//! session against the manifest, so a wrong graph fails before any training starts.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ort::session::Session;
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "retrain-training-artifacts";
pub const FORMAT_VERSION: i64 = 1;

#[derive(Debug, Clone, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageEntry {
    pub input: String,
    /// The declared shape, batch first (`null` for a free dimension).
    #[serde(default)]
    pub shape: Vec<Option<usize>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputNames {
    pub labels: String,
    pub weights: String,
    pub lr: String,
    pub step: String,
    /// Regression targets [B, width] of a multi-task graph's landmark task.
    #[serde(default)]
    pub targets: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutputNames {
    pub loss: String,
    pub correct: String,
    pub logits: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DropoutMask {
    pub input: String,
    pub shape: Vec<usize>,
    pub ratio: f32,
}

/// One tensor carried from step to step: a parameter or an optimizer slot.
#[derive(Debug, Clone, Deserialize)]
pub struct StateEntry {
    pub input: String,
    pub output: String,
    pub shape: Vec<usize>,
    /// `param` or `slot`.
    pub kind: String,
}

impl StateEntry {
    pub fn is_param(&self) -> bool {
        self.kind == "param"
    }
}

/// Names of the gradient-accumulation graphs' extra inputs and outputs.
#[derive(Debug, Clone, Deserialize)]
pub struct AccumulationNames {
    /// bool scalar: start the sums (true) or add to them.
    pub first: String,
    /// float scalar multiplying this micro-batch's gradient.
    pub scale: String,
    /// `acc:<param>`: the running sum going in (and the summed gradient update.onnx takes).
    pub sum_prefix: String,
    /// `accumulated:<param>`: the running sum coming out.
    pub output_prefix: String,
}

/// What make_artifacts.py estimates the training needs, in bytes.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct MemoryEstimate {
    pub state_bytes: u64,
    pub activation_bytes_per_image: u64,
}

/// What one output of a multi-task graph predicts (`retrain.tasks` of the forward graph).
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub name: String,
    /// `classes` (an attribute's scores) or `landmarks` (coordinates regressed).
    pub kind: String,
    pub width: usize,
    pub weight: f64,
}

impl Task {
    pub fn is_classes(&self) -> bool {
        self.kind == "classes"
    }
}

/// manifest.json, as scripts/make_artifacts.py writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: i64,
    pub files: HashMap<String, FileEntry>,
    pub batch: usize,
    pub classes: usize,
    pub image: ImageEntry,
    /// The forward graph's description (input spec, bottleneck, ...).
    pub description: crate::description::Description,
    pub dtype: String,
    pub inputs: InputNames,
    pub outputs: OutputNames,
    pub dropout_masks: Vec<DropoutMask>,
    pub optimizer: serde_json::Map<String, serde_json::Value>,
    pub state: Vec<StateEntry>,
    /// Batch sizes with an `accumulate_bM` graph (largest first); empty without accumulation.
    #[serde(default)]
    pub micro_batches: Vec<usize>,
    #[serde(default)]
    pub accumulation: Option<AccumulationNames>,
    #[serde(default)]
    pub memory: Option<MemoryEstimate>,
    /// The tasks of a multi-task graph; empty for one attribute.
    #[serde(default)]
    pub tasks: Vec<Task>,
    pub checkpoint: String,
}

/// An opened, verified artifacts folder.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// sha256 of manifest.json: the identity every checkpoint records.
    pub sha256: String,
}

impl Artifacts {
    /// Reads the manifest and checks that every graph file is the one it names.
    pub fn open(dir: &Path) -> Result<Artifacts> {
        let path = dir.join("manifest.json");
        let bytes = fs::read(&path)
            .with_context(|| format!("cannot read {} (make artifacts with scripts/make_artifacts.py FORWARD.onnx --out {})", path.display(), dir.display()))?;
        let manifest: Manifest = serde_json::from_slice(&bytes).with_context(|| format!("{} is not a training-artifacts manifest", path.display()))?;
        if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
            bail!("{}: format '{}' v{}, expected '{FORMAT}' v{FORMAT_VERSION}", path.display(), manifest.format, manifest.format_version);
        }
        if manifest.dtype != "float32" {
            bail!("{}: dtype {} — the driver trains float32 graphs only", path.display(), manifest.dtype);
        }
        if let Some(t) = manifest.tasks.iter().find(|t| !t.is_classes() && t.kind != "landmarks") {
            bail!("{}: task '{}' is of kind '{}'; the driver knows classes and landmarks", path.display(), t.name, t.kind);
        }
        if manifest.tasks.iter().any(|t| !t.is_classes()) && manifest.inputs.targets.is_none() {
            bail!("{}: a landmark task needs a targets input, and inputs.targets is missing", path.display());
        }
        let artifacts = Artifacts { dir: dir.to_path_buf(), manifest, sha256: hex::encode(Sha256::digest(&bytes)) };
        for name in ["forward", "train_step", "eval"] {
            artifacts.verified_file(name)?;
        }
        Ok(artifacts)
    }

    /// Path of graph `name` (forward, train_step, gradient, eval) after checking its sha256.
    pub fn verified_file(&self, name: &str) -> Result<PathBuf> {
        let entry = self.manifest.files.get(name).ok_or_else(|| anyhow!("manifest.json in {} lists no '{name}' graph", self.dir.display()))?;
        let path = self.dir.join(&entry.path);
        let actual = crate::model::file_sha256(&path)?;
        if actual != entry.sha256 {
            bail!(
                "{} has sha256 {}, but manifest.json says {}: the folder mixes files of different artifacts; regenerate it",
                path.display(),
                &actual[..12],
                &entry.sha256[..12.min(entry.sha256.len())]
            );
        }
        Ok(path)
    }

    pub fn params(&self) -> impl Iterator<Item = &StateEntry> {
        self.manifest.state.iter().filter(|s| s.is_param())
    }

    /// The class tasks of a multi-task graph, in the order of their `labels` columns.
    pub fn class_tasks(&self) -> impl Iterator<Item = &Task> {
        self.manifest.tasks.iter().filter(|t| t.is_classes())
    }

    /// Columns of `labels` per row: one per class task, or 1 for a one-attribute graph.
    pub fn label_width(&self) -> usize {
        if self.manifest.tasks.is_empty() {
            1
        } else {
            self.class_tasks().count()
        }
    }

    /// Values of `targets` per row (the landmark task's width; 0 without one).
    pub fn target_width(&self) -> usize {
        self.manifest.tasks.iter().filter(|t| !t.is_classes()).map(|t| t.width).sum()
    }

    /// Shape of `labels` for a batch of `rows`: \[rows\] for one attribute, \[rows, T\] for T tasks.
    pub fn label_shape(&self, rows: usize) -> Vec<usize> {
        if self.manifest.tasks.is_empty() {
            vec![rows]
        } else {
            vec![rows, self.label_width()]
        }
    }

    pub fn optimizer_name(&self) -> &str {
        self.manifest.optimizer.get("name").and_then(|v| v.as_str()).unwrap_or("?")
    }

    /// Every input and output the driver binds must exist with the manifest's shape.
    pub fn check_train_step(&self, session: &Session) -> Result<()> {
        let m = &self.manifest;
        let what = "train_step.onnx";
        for (name, shape) in
            [(&m.inputs.labels, self.label_shape(m.batch)), (&m.inputs.weights, vec![m.batch]), (&m.inputs.lr, vec![]), (&m.inputs.step, vec![])]
        {
            expect_shape(session, name, &shape, true).with_context(|| what)?;
        }
        if let Some(targets) = &m.inputs.targets {
            expect_shape(session, targets, &[m.batch, self.target_width()], true).with_context(|| what)?;
        }
        for mask in &m.dropout_masks {
            expect_shape(session, &mask.input, &mask.shape, true).with_context(|| what)?;
        }
        let image_shape = declared_shape(session, &m.image.input, true).with_context(|| what)?;
        if image_shape.first() != Some(&(m.batch as i64)) {
            bail!("{what}: input '{}' has shape {image_shape:?}; its batch must be the manifest's {}", m.image.input, m.batch);
        }

        for s in &m.state {
            expect_shape(session, &s.input, &s.shape, true).with_context(|| what)?;
            expect_shape(session, &s.output, &s.shape, false).with_context(|| what)?;
        }
        for name in [&m.outputs.loss, &m.outputs.correct] {
            declared_shape(session, name, false).with_context(|| what)?;
        }
        Ok(())
    }

    /// Input and output names of the accumulation graphs (artifacts made with --micro-batches).
    pub fn accumulation(&self) -> Result<&AccumulationNames> {
        self.manifest
            .accumulation
            .as_ref()
            .filter(|_| !self.manifest.micro_batches.is_empty())
            .ok_or_else(|| anyhow!("the artifacts in {} have no gradient-accumulation graphs (make them with --micro-batches)", self.dir.display()))
    }

    /// `accumulate_bM.onnx` binds the micro-batch, the parameters and the running sums.
    pub fn check_accumulate(&self, session: &Session, micro: usize) -> Result<()> {
        let (m, acc) = (&self.manifest, self.accumulation()?);
        let what = format!("accumulate_b{micro}.onnx");
        for (name, shape) in [(&m.inputs.labels, self.label_shape(micro)), (&m.inputs.weights, vec![micro]), (&acc.first, vec![]), (&acc.scale, vec![])] {
            expect_shape(session, name, &shape, true).with_context(|| what.clone())?;
        }
        if let Some(targets) = &m.inputs.targets {
            expect_shape(session, targets, &[micro, self.target_width()], true).with_context(|| what.clone())?;
        }
        for mask in &m.dropout_masks {
            expect_shape(session, &mask.input, &micro_shape(&mask.shape, micro), true).with_context(|| what.clone())?;
        }
        for p in self.params() {
            expect_shape(session, &p.input, &p.shape, true).with_context(|| what.clone())?;
            expect_shape(session, &format!("{}{}", acc.sum_prefix, p.input), &p.shape, true).with_context(|| what.clone())?;
            expect_shape(session, &format!("{}{}", acc.output_prefix, p.input), &p.shape, false).with_context(|| what.clone())?;
        }
        Ok(())
    }

    /// `update.onnx` binds every state tensor, the summed gradients, lr and step.
    pub fn check_update(&self, session: &Session) -> Result<()> {
        let (m, acc) = (&self.manifest, self.accumulation()?);
        for (name, shape) in [(&m.inputs.lr, vec![]), (&m.inputs.step, vec![])] {
            expect_shape(session, name, &shape, true).context("update.onnx")?;
        }
        for s in &m.state {
            expect_shape(session, &s.input, &s.shape, true).context("update.onnx")?;
            expect_shape(session, &s.output, &s.shape, false).context("update.onnx")?;
        }
        for p in self.params() {
            expect_shape(session, &format!("{}{}", acc.sum_prefix, p.input), &p.shape, true).context("update.onnx")?;
        }
        Ok(())
    }

    /// The eval graph takes the image batch and every parameter, and gives the logits.
    pub fn check_eval(&self, session: &Session) -> Result<()> {
        let m = &self.manifest;
        declared_shape(session, &m.image.input, true).context("eval.onnx")?;
        for s in self.params() {
            expect_shape(session, &s.input, &s.shape, true).context("eval.onnx")?;
        }
        declared_shape(session, &m.outputs.logits, false).context("eval.onnx")?;
        Ok(())
    }
}

fn declared_shape(session: &Session, name: &str, input: bool) -> Result<Vec<i64>> {
    let (kind, outlets) = if input { ("input", session.inputs()) } else { ("output", session.outputs()) };
    let outlet = outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        anyhow!("the graph has no {kind} '{name}' (its {kind}s: {}); these are not artifacts of scripts/make_artifacts.py", shorten(&names))
    })?;
    let shape = outlet.dtype().tensor_shape().ok_or_else(|| anyhow!("{kind} '{name}' is not a tensor"))?;
    Ok(shape.iter().copied().collect())
}

fn expect_shape(session: &Session, name: &str, want: &[usize], input: bool) -> Result<()> {
    let got = declared_shape(session, name, input)?;
    let fits = got.len() == want.len() && got.iter().zip(want).all(|(&g, &w)| g < 0 || g as usize == w);
    if !fits {
        bail!("tensor '{name}' has shape {got:?}, the manifest says {want:?}");
    }
    Ok(())
}

/// A per-batch shape (a dropout mask's) at another batch size.
pub fn micro_shape(shape: &[usize], micro: usize) -> Vec<usize> {
    std::iter::once(micro).chain(shape.iter().skip(1).copied()).collect()
}

fn shorten(names: &[&str]) -> String {
    if names.len() <= 8 {
        names.join(", ")
    } else {
        format!("{}, ... ({} in all)", names[..8].join(", "), names.len())
    }
}
