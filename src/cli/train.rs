//! `retrain train`: a network through its training artifacts.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use retrain::augment::Distortions;
use retrain::preprocess::Crop;
use retrain::train::schedule::Schedule;
use retrain::train::{self, TrainOptions};

use super::flags::{CropArgs, DecodeArgs, DistortionArgs, SessionArgs, StrictArgs};

#[derive(Args)]
pub struct TrainArgs {
    /// Training-artifacts folder (manifest.json, train_step.onnx, eval.onnx, init.h5).
    #[arg(long)]
    artifacts: PathBuf,
    /// MTFL folder (holding training.txt, testing.txt and the images).
    #[arg(long)]
    mtfl: PathBuf,
    /// gender, smile, glasses or pose; `all` for multi-task artifacts (every task at once).
    #[arg(long)]
    attribute: String,
    #[command(flatten)]
    crop: CropArgs,
    /// The crop of the test images [default: --crop]: `original` scores a model trained on
    /// face crops on MTFL's test images as they are (already face crops), without their landmarks.
    #[arg(long)]
    test_crop: Option<Crop>,
    /// Train until this many epochs are complete.
    #[arg(long, default_value_t = 10)]
    epochs: u64,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    /// Multiply the learning rate by F every --lr-decay-every epochs.
    #[arg(long, default_value_t = 1.0)]
    lr_decay: f32,
    /// Epochs between learning-rate decays (0 = never).
    #[arg(long, default_value_t = 0)]
    lr_decay_every: u64,
    /// Stop when validation loss has not improved for N epochs (best.h5 stays the best-accuracy epoch).
    #[arg(long)]
    patience: Option<u64>,
    #[command(flatten)]
    distort: DistortionArgs,
    /// Batch size; must be the one the artifacts were made for [default: theirs].
    #[arg(long)]
    batch: Option<usize>,
    /// Device (parameters and optimizer state stay on a GPU) and ONNX Runtime threads.
    #[command(flatten)]
    session: SessionArgs,
    /// Output folder: checkpoints, history.csv, result.json, model.onnx.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Seed of the hold-out split, the shuffling and the dropout masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from a checkpoint (OUT/last.h5) of the same artifacts.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Only the first N images of each MTFL list.
    #[arg(long)]
    limit: Option<usize>,
    /// Images per eval-graph call.
    #[arg(long, default_value_t = 256)]
    eval_batch: usize,
    /// Do not read the test list: for runs that choose settings, which validation alone decides.
    #[arg(long)]
    no_test: bool,
    /// Distort the validation images too, once (the same draws every epoch), so a landmark
    /// model is judged on windows that do not sit exactly on the annotated landmarks.
    #[arg(long)]
    distort_validation: bool,
    #[command(flatten)]
    strict: StrictArgs,
    #[command(flatten)]
    decode: DecodeArgs,
}

impl TryFrom<TrainArgs> for TrainOptions {
    type Error = anyhow::Error;
    fn try_from(a: TrainArgs) -> Result<TrainOptions> {
        Ok(TrainOptions {
            artifacts: a.artifacts,
            mtfl: a.mtfl,
            attribute: a.attribute,
            crop: a.crop.crop,
            test_crop: a.test_crop.unwrap_or(a.crop.crop),
            epochs: a.epochs,
            lr: a.lr,
            schedule: Schedule { patience: a.patience, lr_decay: a.lr_decay, lr_decay_every: a.lr_decay_every },
            distortions: Distortions::try_from(&a.distort)?,
            distort_validation: a.distort_validation,
            batch: a.batch,
            device: a.session.device,
            threads: a.session.threads,
            out: a.out,
            seed: a.seed,
            resume: a.resume,
            limit: a.limit,
            eval_batch: a.eval_batch,
            strict: a.strict.strict,
            score_test: !a.no_test,
            show_progress: !a.decode.quiet,
        })
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let opts = TrainOptions::try_from(a)?;
    let summary = train::train(&opts)?;
    println!("{}", train::epochs::report(&summary));
    Ok(())
}
