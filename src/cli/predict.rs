//! `retrain predict`: an exported model's labels for image files.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use retrain::locate::{Locator, Passes};
use retrain::model::Model;
use retrain::predict::{self, PredictOptions, PredictSummary};
use retrain::preprocess::Crop;
use retrain::runtime::{self, SessionConfig};

use super::flags::{LocateArgs, StreamArgs};

#[derive(Args)]
pub struct PredictArgs {
    /// An exported model (`retrain export`).
    #[arg(long)]
    model: PathBuf,
    /// Image files.
    images: Vec<PathBuf>,
    /// A file listing images: one path per line, or an MTFL annotation file (needed for the nose crop).
    #[arg(long)]
    list: Option<PathBuf>,
    /// Override the crop recorded in the model (original, nose, nose:SIZE).
    #[arg(long)]
    crop: Option<Crop>,
    /// A landmark model (`retrain train` on multi-task artifacts): it places the landmarks the
    /// nose and face crops need, replacing any of the list's, so plain photos get every crop;
    /// the output gains their columns x1..x5, y1..y5 (pixels).
    #[arg(long)]
    landmarks: Option<PathBuf>,
    #[command(flatten)]
    locate: LocateArgs,
    /// Output: a .csv or .json file; `-` or nothing: CSV on standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    stream: StreamArgs,
}

pub fn run(a: PredictArgs) -> Result<()> {
    let mut samples = predict::images_from_paths(&a.images);
    if let Some(list) = &a.list {
        samples.extend(predict::images_from_list(list)?);
    }
    if samples.is_empty() {
        anyhow::bail!("no images: give image files or --list FILE");
    }
    let config = SessionConfig::from(&a.stream.session);
    let mut model = Model::load(&a.model, &config, None)?;
    eprintln!("{}", runtime::describe_provider(&config));
    let (batch, decode) = (a.stream.batch, &a.stream.decode);
    if let Some(path) = &a.landmarks {
        if model.description.located_by.is_some() {
            anyhow::bail!("model {} places its crop with the landmark model inside it: drop --landmarks", a.model.display());
        }
        let mut locator = Locator::load(path, &config)?;
        locator.locate(&mut samples, Passes::from(&a.locate), batch, decode.decode_threads, !decode.quiet)?;
    }
    let opts = PredictOptions { crop: a.crop, batch, decode_threads: decode.decode_threads, show_progress: !decode.quiet };
    let mut summary = predict::predict(&mut model, &samples, &opts)?;
    if a.landmarks.is_some() {
        let placed: HashMap<_, [f32; 10]> = samples.iter().filter_map(|s| Some((s.name(), s.landmarks?))).collect();
        summary.table.add_landmarks(|key| placed.get(key).copied());
    }
    let file = a.out.as_deref().filter(|p| *p != Path::new("-"));
    match file {
        Some(path) => summary.table.write(path)?,
        None => std::io::stdout().lock().write_all(summary.table.to_csv().as_bytes()).context("cannot write to standard output")?,
    }
    let done = done_line(&summary, samples.len(), file);
    // standard output holds the CSV alone when there is no file
    if file.is_some() {
        println!("{done}");
    } else {
        eprintln!("{done}");
    }
    Ok(())
}

fn done_line(summary: &PredictSummary, images: usize, file: Option<&Path>) -> String {
    format!(
        "wrote {} predictions to {} (crop {}; {:.1} s, {:.1} images/s); {} images skipped",
        summary.table.len(),
        file.map_or("standard output".to_string(), |p| p.display().to_string()),
        summary.crop,
        summary.seconds,
        images as f64 / summary.seconds.max(1e-9),
        summary.skipped.len()
    )
}
