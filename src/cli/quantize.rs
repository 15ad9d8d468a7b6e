//! `retrain quantize`: an int8 version of a backbone.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use retrain::model::Model;
use retrain::preprocess::Crop;
use retrain::quantize;
use retrain::runtime::{Device, SessionConfig};

use super::flags::DataArgs;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The fp32 ONNX backbone (described by retrain.* metadata or a sidecar).
    #[arg(long)]
    model: PathBuf,
    /// Static quantisation calibrated on images of --mtfl/--split, --folders or --labels (else dynamic:
    /// weights only, no images needed).
    #[arg(long)]
    calibrate: bool,
    #[command(flatten)]
    source: DataArgs,
    /// Calibration images, drawn with --seed from the list.
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Seed of the draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The crop the backbone will be used with (as in extract).
    #[arg(long, default_value = "original")]
    crop: Crop,
    /// The int8 model to write.
    #[arg(long)]
    out: PathBuf,
    /// Python with onnx and onnxruntime [default: $RETRAIN_PYTHON, else .venv/bin/python, else python3].
    #[arg(long)]
    python: Option<PathBuf>,
    /// Threads decoding and resizing images [default: every core].
    #[arg(long)]
    decode_threads: Option<usize>,
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let model = Model::load(&a.model, &SessionConfig::new(Device::Cpu), None)?;
    let given = a.source.given();
    if given != a.calibrate {
        anyhow::bail!(
            "--calibrate and images (--mtfl DIR --split S, --folders DIR or --labels FILE) go together: with both, static quantisation; with neither, dynamic"
        );
    }
    let dataset = if a.calibrate { Some(a.source.load()?) } else { None };
    let opts = quantize::QuantizeOptions {
        out: a.out,
        images: a.images,
        crop: a.crop,
        seed: a.seed,
        python: a.python.unwrap_or_else(quantize::default_python),
        decode_threads: a.decode_threads,
    };
    let summary = quantize::quantize(&model, dataset.as_ref(), &opts)?;
    for s in &summary.skipped {
        eprintln!("skipped {s}");
    }
    println!("wrote {}: {} in {:.1} s", opts.out.display(), summary.method, summary.seconds);
    Ok(())
}
