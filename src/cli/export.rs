//! `retrain export`: a backbone and heads as one ONNX model.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use retrain::export;
use retrain::locate::Passes;

use super::flags::LocateArgs;

#[derive(Args)]
pub struct ExportArgs {
    /// The backbone the heads were trained on.
    #[arg(long)]
    model: PathBuf,
    /// A head; repeat for several attributes.
    #[arg(long = "head", required = true)]
    heads: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// The model takes decoded images (uint8 RGB, NHWC, any size) and resizes and scales them
    /// itself, so every runtime fed the decoded pixels gives the same labels (crop original,
    /// or any crop with --landmarks).
    #[arg(long)]
    pixel_input: bool,
    /// A landmark model (`retrain train` on multi-task artifacts) built into the graph: it
    /// places the heads' face or nose crop on each image, as `predict --landmarks` does, and
    /// the model outputs the landmarks too. Implies --pixel-input, one image per run.
    #[arg(long)]
    landmarks: Option<PathBuf>,
    #[command(flatten)]
    locate: LocateArgs,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let heads: Vec<&Path> = a.heads.iter().map(PathBuf::as_path).collect();
    let input = match (&a.landmarks, a.pixel_input) {
        (Some(model), _) => export::Input::Located(export::Landmarks { model, passes: Passes::from(&a.locate) }),
        (None, true) => export::Input::Pixels,
        (None, false) => export::Input::Tensor,
    };
    let exported = export::export(&a.model, &heads, &a.out, input)?;
    let outputs: Vec<String> = exported.iter().map(|h| format!("{} [{}]", h.output, h.labels.join(", "))).collect();
    println!("wrote {}: outputs {}", a.out.display(), outputs.join(", "));
    Ok(())
}
