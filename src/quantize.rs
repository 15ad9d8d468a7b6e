//! int8 backbones: ONNX Runtime's quantisation tool (`scripts/quantize.py`, carried inside the
//! binary) calibrated on images preprocessed exactly as `extract` will feed them.
//!
//! Static quantisation needs the range of every activation; those come from running the fp32
//! model on `images` calibration images drawn (seeded) from the training data, through this
//! crate's own preprocessing, so the ranges are those the quantised model will meet. The
//! description is carried over, so the int8 model is a backbone like any other (its own
//! SHA-256, hence its own caches).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::dataset::{Dataset, Skipped};
use crate::model::Model;
use crate::preprocess::{Crop, Preprocess};
use crate::stream::{decode_pool, Decoded, Load};

const SCRIPT: &str = include_str!("../scripts/quantize.py");

pub struct QuantizeOptions {
    pub out: PathBuf,
    /// Calibration images drawn for static quantisation.
    pub images: usize,
    pub crop: Crop,
    pub seed: u64,
    /// The Python with onnx and onnxruntime that runs the tool.
    pub python: PathBuf,
    pub decode_threads: Option<usize>,
}

pub struct QuantizeSummary {
    pub method: String,
    pub calibration_images: usize,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
}

/// The Python to run the tool with: `RETRAIN_PYTHON`, else `.venv/bin/python` here, else `python3`.
pub fn default_python() -> PathBuf {
    if let Some(p) = std::env::var_os("RETRAIN_PYTHON") {
        return p.into();
    }
    let venv = Path::new(".venv/bin/python");
    if venv.exists() {
        venv.to_path_buf()
    } else {
        "python3".into()
    }
}

/// Writes the int8 version of `model` to `opts.out`: static, calibrated on images of
/// `calibration`, or dynamic without it.
pub fn quantize(model: &Model, calibration: Option<&Dataset>, opts: &QuantizeOptions) -> Result<QuantizeSummary> {
    let started = Instant::now();
    let work = tempfile::tempdir()?;
    let script = work.path().join("quantize.py");
    std::fs::write(&script, SCRIPT)?;
    let description = work.path().join("description.json");
    std::fs::write(&description, serde_json::to_string(&model.description)?)?;
    let mut tool = Command::new(&opts.python);
    tool.arg(&script).arg(&model.path).arg("--out").arg(&opts.out).arg("--description").arg(&description);
    let (mut calibration_images, mut skipped) = (0, Vec::new());
    if let Some(dataset) = calibration {
        let pre = Preprocess { crop: opts.crop, input: model.input.clone() };
        let (tensor, good, failures) = calibration_tensor(dataset, &pre, opts)?;
        calibration_images = good;
        skipped = failures;
        let path = work.path().join("calibration.f32");
        write_f32(&path, &tensor)?;
        let shape = pre.input.batch_shape(good).map(|d| d.to_string()).join(",");
        let note = format!(" of {}, crop {}, seed {}", dataset.source, opts.crop, opts.seed);
        tool.arg("--calibration").arg(&path).args(["--shape", &shape, "--input", &model.input_name, "--note", &note]);
    }
    let output = tool.output().with_context(|| format!("cannot run {} (set RETRAIN_PYTHON or make .venv with scripts/setup.sh)", opts.python.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.trim_end().lines().collect();
        let tail = lines[lines.len().saturating_sub(12)..].join("\n"); // the traceback's end says why
        bail!("the quantisation tool failed ({} {}):\n{tail}", opts.python.display(), script.display());
    }
    let method = String::from_utf8_lossy(&output.stdout).trim().lines().last().unwrap_or_default().to_string();
    Ok(QuantizeSummary { method, calibration_images, skipped, seconds: started.elapsed().as_secs_f64() })
}

/// `opts.images` images drawn without replacement (seeded), preprocessed; unreadable ones are skipped.
fn calibration_tensor(dataset: &Dataset, pre: &Preprocess, opts: &QuantizeOptions) -> Result<(Vec<f32>, usize, Vec<Skipped>)> {
    let n = opts.images;
    if n == 0 {
        bail!("calibration needs at least one image");
    }
    let all: Vec<usize> = (0..dataset.samples.len()).collect();
    let picked: Vec<usize> = crate::rng::shuffled(&all, opts.seed, 0).into_iter().take(n).collect();
    let pool = decode_pool(opts.decode_threads)?;
    let Decoded { tensor, good, failures, .. } = pre.load(&pool, &dataset.samples, &picked);
    if good.is_empty() {
        bail!("none of the {} calibration images could be read (first: {})", picked.len(), failures.first().map(Skipped::to_string).unwrap_or_default());
    }
    Ok((tensor, good.len(), failures))
}

fn write_f32(path: &Path, values: &[f32]) -> Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for v in values {
        file.write_all(&v.to_le_bytes())?;
    }
    Ok(file.flush()?)
}
