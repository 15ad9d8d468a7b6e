//! `retrain finetune`: the study's second approach, a pretrained network fine-tuned in two phases.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use retrain::augment::Distortions;
use retrain::finetune::{self, FinetuneOptions};

use super::flags::{CropArgs, DecodeArgs, DistortionArgs, SessionArgs, StrictArgs};

#[derive(Args)]
pub struct FinetuneArgs {
    /// Fine-tuning artifacts (scripts/make_finetune.py: finetune.json, phase1/, phase2/).
    #[arg(long)]
    artifacts: PathBuf,
    /// The pretrained network the artifacts were made from (its bottleneck caches feed phase 1).
    #[arg(long, default_value = "onnx/inception_v3.onnx")]
    model: PathBuf,
    /// MTFL folder (holding training.txt, testing.txt and the images).
    #[arg(long)]
    mtfl: PathBuf,
    /// gender, smile, glasses or pose.
    #[arg(long)]
    attribute: String,
    #[command(flatten)]
    crop: CropArgs,
    /// Phase 1 (new layer only, on cached, standardised bottlenecks): RMSprop steps and
    /// learning rate (0.001 chosen on MTFL validation from 0.0003-0.01; the study's 0.01 was
    /// for raw ImageNet bottlenecks).
    #[arg(long, default_value_t = 1000)]
    phase1_steps: u64,
    #[arg(long, default_value_t = 0.001)]
    phase1_lr: f32,
    /// Phase 2 (every layer, on images): RMSprop steps (0: the new head alone) and learning rate.
    #[arg(long, default_value_t = 500)]
    phase2_steps: u64,
    #[arg(long, default_value_t = 0.001)]
    phase2_lr: f32,
    /// Phase 2 trains only LAYER's block and the layers above it; those below stay frozen
    /// (`mixed9`: InceptionV3's top two inception blocks, Keras' fine-tuning recipe). Needs
    /// artifacts made with `scripts/make_finetune.py --train-from LAYER` [default: every layer].
    #[arg(long, value_name = "LAYER")]
    train_from: Option<String>,
    /// Batch of one optimizer step; must be the artifacts' [default: theirs].
    #[arg(long)]
    batch: Option<usize>,
    /// Rows per graph call in phase 2 (gradients are summed over the batch) [default: the
    /// largest the artifacts have that fits the free memory].
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Memory the phase-2 step may use, in GiB [default: free memory of the device].
    #[arg(long)]
    memory_budget: Option<f64>,
    #[command(flatten)]
    distort: DistortionArgs,
    /// Validate (and write OUT/phaseN/last.h5) every N steps.
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Device (parameters and optimizer state stay on a GPU) and ONNX Runtime threads.
    #[command(flatten)]
    session: SessionArgs,
    /// Where bottleneck caches are kept (and reused).
    #[arg(long, default_value = "cache")]
    cache_dir: PathBuf,
    /// Output folder: checkpoints, history.csv, result.json, model.onnx, ATTRIBUTE.head.onnx.
    #[arg(long, default_value = "runs/finetune")]
    out: PathBuf,
    /// Seed of the hold-out split, the batches, the dropout masks and the distortions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from OUT/phase1/last.h5 or OUT/phase2/last.h5.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Only the first N images of each MTFL list.
    #[arg(long)]
    limit: Option<usize>,
    /// Images per eval-graph call.
    #[arg(long, default_value_t = 50)]
    eval_batch: usize,
    #[command(flatten)]
    strict: StrictArgs,
    #[command(flatten)]
    decode: DecodeArgs,
}

impl TryFrom<FinetuneArgs> for FinetuneOptions {
    type Error = anyhow::Error;
    fn try_from(a: FinetuneArgs) -> Result<FinetuneOptions> {
        Ok(FinetuneOptions {
            model: a.model,
            artifacts: a.artifacts,
            mtfl: a.mtfl,
            attribute: a.attribute,
            crop: a.crop.crop,
            phase1_steps: a.phase1_steps,
            phase1_lr: a.phase1_lr,
            phase2_steps: a.phase2_steps,
            phase2_lr: a.phase2_lr,
            train_from: a.train_from,
            batch: a.batch,
            micro_batch: a.micro_batch,
            memory_budget: a.memory_budget.map(|g| (g * (1u64 << 30) as f64) as u64),
            distortions: Distortions::try_from(&a.distort)?,
            eval_every: a.eval_every,
            device: a.session.device,
            threads: a.session.threads,
            decode_threads: a.decode.decode_threads,
            cache_dir: a.cache_dir,
            out: a.out,
            seed: a.seed,
            resume: a.resume,
            limit: a.limit,
            eval_batch: a.eval_batch,
            strict: a.strict.strict,
            show_progress: !a.decode.quiet,
        })
    }
}

pub fn run(a: FinetuneArgs) -> Result<()> {
    let opts = FinetuneOptions::try_from(a)?;
    let summary = finetune::finetune(&opts)?;
    println!("{}", finetune::report(&summary));
    Ok(())
}
