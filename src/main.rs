//! The `retrain` command line: parses arguments and calls the library, nothing more.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use retrain::augment::Distortions;
use retrain::cache::{Cache, Shard};
use retrain::dataset::{self, mtfl, Dataset};
use retrain::export;
use retrain::extract::{self, ExtractOptions};
use retrain::head::linfa::{LinfaParams, Precision};
use retrain::head::sgd::SgdParams;
use retrain::head::{self, ClassWeight, Solver, TrainOptions};
use retrain::interrupt::Interrupted;
use retrain::model::Model;
use retrain::predict::{self, PredictOptions};
use retrain::preprocess::Crop;
use retrain::quantize;
use retrain::reproduce::beyond::BeyondOptions;
use retrain::reproduce::{self, ReproduceOptions};
use retrain::runtime::{self, Device, SessionConfig};
use retrain::train;
use retrain::train::schedule::Schedule;

/// Transfer learning for face attributes on ONNX Runtime: bottleneck extraction, heads, fine-tuning.
#[derive(Parser)]
#[command(name = "retrain", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an ONNX backbone over a data set and cache one feature vector per image in HDF5.
    ///
    /// Resumes where an earlier run of the same command stopped; refuses a cache built with
    /// another model, output or preprocessing.
    Extract(ExtractArgs),
    /// Inspect or combine cache files.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Train a softmax head for one attribute on cached features; writes HEAD (ONNX) and
    /// HEAD's .history.json.
    TrainHead(TrainHeadArgs),
    /// Score a head on a cache: accuracy, per-class precision/recall, confusion matrix.
    Eval(EvalArgs),
    /// Join a backbone and heads into one ONNX model: pixels in, probabilities out.
    Export(ExportArgs),
    /// Run an exported model on images; CSV or JSON of labels and probabilities.
    Predict(PredictArgs),
    /// The study's first approach end to end (extract both crops, train, evaluate, export, report).
    Reproduce(ReproduceArgs),
    /// Train a network through training artifacts (scripts/make_artifacts.py) on MTFL.
    ///
    /// Holds out 20% of the training list for validation, prints a line per epoch, keeps
    /// OUT/last.h5 (resume with --resume) and OUT/best.h5, then reports the test accuracy of
    /// the best epoch and writes its weights into OUT/model.onnx.
    Train(TrainArgs),
    /// Fine-tune a pretrained network in two phases (the study's second approach): a new head
    /// alone on cached bottlenecks (phase 1), then every layer on images (phase 2), through the
    /// artifacts of scripts/make_finetune.py. Writes OUT/model.onnx and OUT/ATTRIBUTE.head.onnx.
    Finetune(FinetuneArgs),
    /// Write an int8 version of a backbone (ONNX Runtime's quantisation tool): with --calibrate,
    /// static QDQ with activation ranges from N images of the data set, else dynamic.
    ///
    /// The description is carried over: extract, export and predict take the result as they
    /// take the original, and its caches are its own (another SHA-256).
    Quantize(QuantizeArgs),
}

#[derive(Args)]
struct QuantizeArgs {
    /// The fp32 ONNX backbone (described by retrain.* metadata or a sidecar).
    #[arg(long)]
    model: PathBuf,
    /// Static quantisation calibrated on images of --mtfl/--split or --folders (else dynamic:
    /// weights only, no images needed).
    #[arg(long)]
    calibrate: bool,
    #[command(flatten)]
    source: Images,
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

#[derive(Subcommand)]
enum CacheCommand {
    /// Summarise a cache file: rows, width, provenance, skipped images.
    Info {
        /// The HDF5 cache.
        cache: PathBuf,
    },
    /// Join the shard files of one extraction (`extract --shard I/N`) into one cache, in list order.
    Merge {
        /// Every shard file, 0/N .. N-1/N, in any order.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        /// The merged cache (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where models run.
#[derive(Args)]
struct RunArgs {
    /// cpu, cuda or cuda:N. CUDA never falls back to CPU.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Intra-op threads for ONNX Runtime [default: every core].
    #[arg(long)]
    threads: Option<usize>,
}

impl RunArgs {
    fn config(&self) -> SessionConfig {
        SessionConfig { intra_threads: self.threads, ..SessionConfig::new(self.device) }
    }
}

/// How images stream through a backbone (extract, predict, reproduce).
#[derive(Args)]
struct ImageRunArgs {
    /// Images per inference call.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Threads decoding and resizing images [default: every core].
    #[arg(long)]
    decode_threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct TrainHeadArgs {
    /// The training cache (HDF5 from `retrain extract`).
    #[arg(long)]
    cache: PathBuf,
    /// gender, smile, glasses, pose (MTFL), or class (class folders); several comma-separated,
    /// or `all` (every attribute of the cache), for a head each on one standardisation.
    #[arg(long)]
    attribute: String,
    /// Where to write the head (ONNX; its history goes next to it); with several attributes a
    /// folder that gets ATTRIBUTE.onnx for each.
    #[arg(long)]
    out: PathBuf,
    /// linfa (L-BFGS, linfa-logistic) or sgd (the study's mini-batch recipe).
    #[arg(long, default_value = "linfa")]
    solver: Solver,
    /// Seeds the validation split and the SGD batches; stored with the head.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// none, or balanced (each row's loss weighed n / (classes * n_class) by its class).
    #[arg(long, default_value = "none")]
    class_weight: ClassWeight,
    /// Percentage of training rows held out for validation [default: sgd 10, linfa 0].
    #[arg(long)]
    validation_percent: Option<f64>,
    /// Train on raw features (the study did); by default they are standardised.
    #[arg(long)]
    no_standardize: bool,
    /// linfa: inverse L2 strength, as scikit-learn's C.
    #[arg(long, default_value_t = LinfaParams::default().c)]
    c: f64,
    /// linfa: L-BFGS iterations at most.
    #[arg(long, default_value_t = LinfaParams::default().max_iterations)]
    max_iterations: u64,
    /// linfa: the float type of the fit, f32 or f64 (closer to the optimum, about three times the time).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// sgd: learning rate.
    #[arg(long, default_value_t = SgdParams::default().learning_rate)]
    learning_rate: f32,
    /// sgd: rows per step.
    #[arg(long, default_value_t = SgdParams::default().batch)]
    batch: usize,
    /// sgd: number of steps.
    #[arg(long, default_value_t = SgdParams::default().steps)]
    steps: usize,
    /// sgd: validation rows drawn for each point of the curve (0 = all of them).
    #[arg(long, default_value_t = SgdParams::default().validation_batch)]
    validation_batch: usize,
    /// sgd: print the learning curve every N steps (it is recorded every 10).
    #[arg(long, default_value_t = 200)]
    print_every: usize,
}

#[derive(Args)]
struct EvalArgs {
    /// The test cache.
    #[arg(long)]
    cache: PathBuf,
    /// The head (ONNX from `retrain train-head`); repeat for several attributes.
    #[arg(long = "head", required = true)]
    heads: Vec<PathBuf>,
    /// Write the scores as JSON here (and the confusion matrix as PNG beside it; with several
    /// heads a list, and NAME-ATTRIBUTE.png).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the confusion matrix PNG here [default: beside --json].
    #[arg(long)]
    png: Option<PathBuf>,
    /// Write per-image predictions (CSV, or JSON for a .json name), as `predict` does.
    #[arg(long)]
    predictions: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct ExportArgs {
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

#[derive(Args)]
struct PredictArgs {
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
    /// Output: .csv or .json.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    stream: ImageRunArgs,
}

#[derive(Args)]
struct ReproduceArgs {
    /// MTFL folder (holding training.txt, testing.txt and the images).
    #[arg(long)]
    mtfl: PathBuf,
    /// The backbone [default: onnx/inception_v3.onnx]; with --beyond several, comma-separated,
    /// a head set each [default: onnx/inception_v3.onnx,onnx/faceres.onnx].
    #[arg(long, value_delimiter = ',')]
    model: Vec<PathBuf>,
    /// Where bottleneck caches are kept (and resumed from).
    #[arg(long, default_value = "cache")]
    cache_dir: PathBuf,
    /// Heads, evaluations, exported models and report.md [default: reports/reproduce,
    /// with --beyond reports/beyond].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Crops to run, comma-separated [default: original,nose; with --beyond original,face].
    #[arg(long, value_delimiter = ',')]
    crops: Vec<Crop>,
    /// Attributes, comma-separated [default: gender,smile; with --beyond all four].
    #[arg(long, value_delimiter = ',')]
    attributes: Vec<String>,
    /// Solvers, comma-separated; the first one's heads are exported (the study's report only).
    #[arg(long, value_delimiter = ',', default_value = "sgd,linfa")]
    solvers: Vec<Solver>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Only the first N images of each split (a quick run).
    #[arg(long)]
    limit: Option<usize>,
    /// Runs of scripts/finetune_study.sh to report beside the study's second approach.
    #[arg(long, default_value = "runs/finetune")]
    finetune_runs: PathBuf,
    /// Every attribute through every pipeline: heads on each --model and crop, the `retrain
    /// train` / `retrain finetune` runs under --runs, and the deployable model validation
    /// prefers, written as OUT/model.onnx (plain photos in, every attribute and the landmarks out).
    #[arg(long)]
    beyond: bool,
    /// With --beyond: folders of training runs (RUN/result.json, one level deeper too).
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// With --beyond: share of training.txt the heads hold out for validation (percent).
    #[arg(long, default_value_t = 10.0)]
    validation_percent: f64,
    /// With --beyond: how the landmark model inside the deployable file runs.
    #[command(flatten)]
    locate: LocateArgs,
    #[command(flatten)]
    stream: ImageRunArgs,
}

/// How a landmark model runs (predict --landmarks, export --landmarks, reproduce --beyond).
#[derive(Args)]
struct LocateArgs {
    /// Passes of the landmark model: the whole image, then its own crop placed from the estimate.
    #[arg(long, default_value_t = 2)]
    landmark_passes: usize,
    /// Do not average each pass with its run on the mirrored image (averaging is the default:
    /// it lowered the landmark error on MTFL's validation faces from 7.67% to 6.70%).
    #[arg(long)]
    no_landmark_mirror: bool,
}

impl LocateArgs {
    fn passes(&self) -> retrain::locate::Passes {
        retrain::locate::Passes { count: self.landmark_passes, mirror: !self.no_landmark_mirror }
    }
}

#[derive(Args)]
struct Images {
    /// MTFL folder (holding training.txt, testing.txt and the images).
    #[arg(long, requires = "split", conflicts_with = "folders")]
    mtfl: Option<PathBuf>,
    /// Which MTFL annotation file to read.
    #[arg(long, value_parser = ["training", "testing"])]
    split: Option<String>,
    /// Class-folder layout instead of MTFL: DIR/<class>/*.jpg.
    #[arg(long)]
    folders: Option<PathBuf>,
}

impl Images {
    fn load(&self) -> Result<Dataset> {
        match (&self.mtfl, &self.folders) {
            (Some(root), None) => mtfl::load(root, self.split.as_deref().unwrap_or("training").parse()?),
            (None, Some(root)) => dataset::folders::load(root),
            _ => anyhow::bail!("give either --mtfl DIR --split training|testing, or --folders DIR"),
        }
    }
}

#[derive(Args)]
struct ExtractArgs {
    /// The ONNX backbone (its retrain.* metadata or MODEL.onnx.json describe its input).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    images: Images,
    /// original (whole image), nose (150x150 around the nose landmark; nose:SIZE for another size) or face (a square 3.2 eye-to-mouth distances wide on the landmarks; face:SCALE).
    #[arg(long, default_value = "original")]
    crop: Crop,
    /// Only the first N images of the list.
    #[arg(long)]
    limit: Option<usize>,
    /// Output HDF5 file [default: cache/<source>-<model hash>-<preprocessing hash>.h5].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder for default output names.
    #[arg(long, default_value = "cache")]
    cache_dir: PathBuf,
    /// Images per inference call.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// cpu, cuda or cuda:N. CUDA never falls back to CPU.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Intra-op threads for ONNX Runtime [default: every core].
    #[arg(long)]
    threads: Option<usize>,
    /// Threads decoding and resizing images [default: every core].
    #[arg(long)]
    decode_threads: Option<usize>,
    /// Model output to cache [default: the model's `bottleneck`].
    #[arg(long)]
    output: Option<String>,
    /// Process only shard I of N (images whose list position mod N is I), e.g. 0/4; `auto` or
    /// `auto/N` take I (and N) from SLURM_ARRAY_TASK_ID/COUNT or JOB_COMPLETION_INDEX.
    #[arg(long, value_parser = extract::parse_shard)]
    shard: Option<Shard>,
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// Training-artifacts folder (manifest.json, train_step.onnx, eval.onnx, init.h5).
    #[arg(long)]
    artifacts: PathBuf,
    /// MTFL folder (holding training.txt, testing.txt and the images).
    #[arg(long)]
    mtfl: PathBuf,
    /// gender, smile, glasses or pose; `all` for multi-task artifacts (every task at once).
    #[arg(long)]
    attribute: String,
    /// original (whole image), nose (150x150 around the nose landmark; nose:SIZE for another size) or face (a square 3.2 eye-to-mouth distances wide on the landmarks; face:SCALE).
    #[arg(long, default_value = "original")]
    crop: Crop,
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
    run: RunArgs,
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
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Random distortions of training images (off by default), as TensorFlow's retrain.py.
#[derive(Args)]
struct DistortionArgs {
    /// Mirror each training image left-right with probability 1/2.
    #[arg(long)]
    flip: bool,
    /// Random crop: keep a window whose side is the image's / (1 + P%), at a random place.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    random_crop: f32,
    /// Random zoom: shrink that window further by a factor drawn from [1, 1 + P%].
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    random_scale: f32,
    /// Multiply training pixel values by a factor drawn from [1 - P%, 1 + P%].
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    random_brightness: f32,
}

impl DistortionArgs {
    fn distortions(&self) -> Result<Distortions> {
        let d = Distortions { flip: self.flip, crop_percent: self.random_crop, scale_percent: self.random_scale, brightness_percent: self.random_brightness };
        d.check()?;
        Ok(d)
    }
}

#[derive(Args)]
struct FinetuneArgs {
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
    /// original (whole image), nose (150x150 around the nose landmark; nose:SIZE for another size) or face (a square 3.2 eye-to-mouth distances wide on the landmarks; face:SCALE).
    #[arg(long, default_value = "original")]
    crop: Crop,
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
    run: RunArgs,
    /// Threads decoding and resizing images [default: every core].
    #[arg(long)]
    decode_threads: Option<usize>,
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
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn run_finetune(a: FinetuneArgs) -> Result<()> {
    let opts = retrain::finetune::FinetuneOptions {
        model: a.model,
        artifacts: a.artifacts,
        mtfl: a.mtfl,
        attribute: a.attribute,
        crop: a.crop,
        phase1_steps: a.phase1_steps,
        phase1_lr: a.phase1_lr,
        phase2_steps: a.phase2_steps,
        phase2_lr: a.phase2_lr,
        train_from: a.train_from,
        batch: a.batch,
        micro_batch: a.micro_batch,
        memory_budget: a.memory_budget.map(|g| (g * (1u64 << 30) as f64) as u64),
        distortions: a.distort.distortions()?,
        eval_every: a.eval_every,
        device: a.run.device,
        threads: a.run.threads,
        decode_threads: a.decode_threads,
        cache_dir: a.cache_dir,
        out: a.out,
        seed: a.seed,
        resume: a.resume,
        limit: a.limit,
        eval_batch: a.eval_batch,
        strict: a.strict,
        show_progress: !a.quiet,
    };
    let summary = retrain::finetune::finetune(&opts)?;
    println!("{}", retrain::finetune::report(&summary));
    Ok(())
}

fn main() {
    retrain::interrupt::install();
    if let Err(e) = run(Cli::parse()) {
        if let Some(stop) = e.downcast_ref::<Interrupted>() {
            eprintln!("{stop}");
            eprintln!("resume with: {}", resume_command(stop.checkpoint.as_deref()));
            std::process::exit(stop.exit_code());
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// This process's command line, with `--resume CHECKPOINT` in place of any earlier one when
/// the job resumes from a checkpoint (extract resumes from its output file by itself).
fn resume_command(checkpoint: Option<&Path>) -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(checkpoint) = checkpoint {
        let mut kept = Vec::with_capacity(args.len() + 2);
        let mut after_resume = false;
        for a in args {
            if std::mem::take(&mut after_resume) {
                continue;
            }
            after_resume = a == "--resume";
            if !after_resume && !a.starts_with("--resume=") {
                kept.push(a);
            }
        }
        kept.extend(["--resume".to_string(), checkpoint.display().to_string()]);
        args = kept;
    }
    args.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

/// `word` as a POSIX shell reads it back.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Extract(args) => run_extract(args),
        Command::Train(args) => run_train(args),
        Command::Finetune(args) => run_finetune(args),
        Command::Cache(CacheCommand::Info { cache }) => run_info(&cache),
        Command::Cache(CacheCommand::Merge { shards, out }) => {
            println!("{}", retrain::cache::merge_command(&shards, &out)?);
            Ok(())
        }
        Command::TrainHead(args) => run_train_head(args),
        Command::Eval(args) => run_eval(args),
        Command::Export(args) => run_export(args),
        Command::Predict(args) => run_predict(args),
        Command::Reproduce(args) => run_reproduce(args),
        Command::Quantize(args) => run_quantize(args),
    }
}

fn run_extract(a: ExtractArgs) -> Result<()> {
    let dataset = a.images.load()?;
    let config = SessionConfig { intra_threads: a.threads, ..SessionConfig::new(a.device) };
    let mut model = Model::load(&a.model, &config, a.output.as_deref())?;
    eprintln!("{}", runtime::describe_provider(&config));
    eprintln!(
        "model {} (sha256 {}), output '{}' [{}], {} images from {}",
        a.model.display(),
        &model.sha256[..12],
        model.output_name,
        model.output_dim,
        a.limit.map_or(dataset.samples.len(), |l| l.min(dataset.samples.len())),
        dataset.source
    );
    let opts = ExtractOptions {
        crop: a.crop,
        batch: a.batch,
        out: a.out,
        cache_dir: a.cache_dir,
        limit: a.limit,
        shard: a.shard.unwrap_or(Shard::WHOLE),
        strict: a.strict,
        decode_threads: a.decode_threads,
        show_progress: !a.quiet,
    };
    let summary = extract::extract(&dataset, &mut model, &opts)?;
    println!("{}", extract::report(&summary));
    Ok(())
}

fn run_quantize(a: QuantizeArgs) -> Result<()> {
    let model = Model::load(&a.model, &SessionConfig::new(Device::Cpu), None)?;
    let given = a.source.mtfl.is_some() || a.source.folders.is_some();
    if given != a.calibrate {
        anyhow::bail!("--calibrate and images (--mtfl DIR --split S, or --folders DIR) go together: with both, static quantisation; with neither, dynamic");
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

fn run_train(a: TrainArgs) -> Result<()> {
    let opts = train::TrainOptions {
        artifacts: a.artifacts,
        mtfl: a.mtfl,
        attribute: a.attribute,
        crop: a.crop,
        test_crop: a.test_crop.unwrap_or(a.crop),
        epochs: a.epochs,
        lr: a.lr,
        schedule: Schedule { patience: a.patience, lr_decay: a.lr_decay, lr_decay_every: a.lr_decay_every },
        distortions: a.distort.distortions()?,
        distort_validation: a.distort_validation,
        batch: a.batch,
        device: a.run.device,
        threads: a.run.threads,
        out: a.out,
        seed: a.seed,
        resume: a.resume,
        limit: a.limit,
        eval_batch: a.eval_batch,
        strict: a.strict,
        score_test: !a.no_test,
        show_progress: !a.quiet,
    };
    let summary = train::train(&opts)?;
    println!("{}", train::epochs::report(&summary));
    Ok(())
}

fn run_info(path: &std::path::Path) -> Result<()> {
    let c = Cache::read(path).with_context(|| format!("retrain cache info {}", path.display()))?;
    println!("{}: {} rows x {} features", path.display(), c.features.nrows(), c.features.ncols());
    println!("source: {}\nmodel sha256: {}\noutput: {}\npreprocess: {}", c.source, c.model_sha256, c.output, c.preprocess);
    println!("labels: {}", c.label_columns.join(", "));
    println!(
        "shard: {}/{}; images {} of {} done{}",
        c.shard.index,
        c.shard.count,
        c.next_source_index,
        c.sources_total,
        if c.is_complete() { "" } else { " (unfinished: run the same extract again)" }
    );
    println!("skipped: {}", c.skipped.len());
    for s in &c.skipped {
        println!("  {s}");
    }
    Ok(())
}

fn run_train_head(a: TrainHeadArgs) -> Result<()> {
    let cache = Cache::read(&a.cache)?;
    let attributes: Vec<String> = if a.attribute == "all" { head::attributes_of(&cache) } else { a.attribute.split(',').map(str::to_string).collect() };
    let opts = TrainOptions {
        seed: a.seed,
        standardize: !a.no_standardize,
        class_weight: a.class_weight,
        validation_percent: a.validation_percent,
        linfa: LinfaParams { c: a.c, max_iterations: a.max_iterations, precision: a.precision, ..LinfaParams::default() },
        sgd: SgdParams { learning_rate: a.learning_rate, batch: a.batch, steps: a.steps, validation_batch: a.validation_batch, ..SgdParams::default() },
        ..TrainOptions::new(&attributes[0], a.solver)
    };
    let outs = head_paths(&a.out, &attributes)?;
    let (every, several) = (a.print_every.max(1), attributes.len() > 1);
    let mut print_point = |attribute: &str, p: &head::sgd::CurvePoint| {
        if p.step.is_multiple_of(every) || p.step == opts.sgd.steps {
            eprintln!("{}{}", if several { format!("{attribute}: ") } else { String::new() }, p.describe());
        }
    };
    let trained = head::train_all(&cache, &a.cache, &attributes, &opts, &mut print_point)?;
    for (t, out) in trained.iter().zip(&outs) {
        t.head.save(out, &t.curve)?;
        println!("{}\nwrote {} and {}", t.head.info.summary(), out.display(), head::history_path(out).display());
    }
    Ok(())
}

/// `out` itself for one attribute; `out/ATTRIBUTE.onnx` for several.
fn head_paths(out: &Path, attributes: &[String]) -> Result<Vec<PathBuf>> {
    if attributes.len() == 1 {
        return Ok(vec![out.to_path_buf()]);
    }
    if out.extension().is_some_and(|e| e == "onnx") {
        anyhow::bail!("--out {}: {} attributes need a folder (one ATTRIBUTE.onnx each), not a file name", out.display(), attributes.len());
    }
    Ok(attributes.iter().map(|a| out.join(format!("{a}.onnx"))).collect())
}

fn run_eval(a: EvalArgs) -> Result<()> {
    let heads: Vec<&Path> = a.heads.iter().map(PathBuf::as_path).collect();
    let evaluations = retrain::eval::evaluate_all(&heads, &a.cache, &a.run.config())?;
    let png = a.png.or_else(|| a.json.as_ref().map(|j| j.with_extension("png")));
    if let [evaluation] = evaluations.as_slice() {
        evaluation.write(a.json.as_deref(), png.as_deref(), a.predictions.as_deref())?;
    } else {
        for e in &evaluations {
            let beside = png.as_ref().map(|p| p.with_file_name(format!("{}-{}.png", p.file_stem().unwrap_or_default().to_string_lossy(), e.head.attribute)));
            e.write(None, beside.as_deref(), None)?;
        }
        if let Some(json) = &a.json {
            retrain::write_file(json, serde_json::to_string_pretty(&evaluations)?)?;
        }
        if let Some(path) = &a.predictions {
            retrain::eval::merged_predictions(&evaluations)?.write(path)?;
        }
    }
    for e in &evaluations {
        println!("{}", e.markdown());
        if e.unlabeled > 0 {
            println!("({} rows without a {} label were not scored)", e.unlabeled, e.head.attribute);
        }
    }
    if evaluations.len() > 1 {
        println!("{}", retrain::eval::summary_table(&evaluations));
    }
    Ok(())
}

fn run_export(a: ExportArgs) -> Result<()> {
    let heads: Vec<&Path> = a.heads.iter().map(PathBuf::as_path).collect();
    let input = match (&a.landmarks, a.pixel_input) {
        (Some(model), _) => export::Input::Located(export::Landmarks { model, passes: a.locate.passes() }),
        (None, true) => export::Input::Pixels,
        (None, false) => export::Input::Tensor,
    };
    let exported = export::export(&a.model, &heads, &a.out, input)?;
    let outputs: Vec<String> = exported.iter().map(|h| format!("{} [{}]", h.output, h.labels.join(", "))).collect();
    println!("wrote {}: outputs {}", a.out.display(), outputs.join(", "));
    Ok(())
}

fn run_predict(a: PredictArgs) -> Result<()> {
    let mut samples = predict::images_from_paths(&a.images);
    if let Some(list) = &a.list {
        samples.extend(predict::images_from_list(list)?);
    }
    if samples.is_empty() {
        anyhow::bail!("no images: give image files or --list FILE");
    }
    let config = a.stream.run.config();
    let mut model = Model::load(&a.model, &config, None)?;
    eprintln!("{}", runtime::describe_provider(&config));
    if let Some(path) = &a.landmarks {
        if model.description.contains_key(export::LOCATED_KEY) {
            anyhow::bail!("model {} places its crop with the landmark model inside it: drop --landmarks", a.model.display());
        }
        let mut locator = retrain::locate::Locator::load(path, &config)?;
        locator.locate(&mut samples, a.locate.passes(), a.stream.batch, a.stream.decode_threads, !a.stream.quiet)?;
    }
    let opts = PredictOptions { crop: a.crop, batch: a.stream.batch, decode_threads: a.stream.decode_threads, show_progress: !a.stream.quiet };
    let mut summary = predict::predict(&mut model, &samples, &opts)?;
    if a.landmarks.is_some() {
        let placed: std::collections::HashMap<_, [f32; 10]> = samples.iter().filter_map(|s| Some((s.name(), s.landmarks?))).collect();
        summary.table.add_landmarks(|key| placed.get(key).copied());
    }
    summary.table.write(&a.out)?;
    println!(
        "wrote {} predictions to {} (crop {}; {:.1} s, {:.1} images/s); {} images skipped",
        summary.table.len(),
        a.out.display(),
        summary.crop,
        summary.seconds,
        samples.len() as f64 / summary.seconds.max(1e-9),
        summary.skipped.len()
    );
    Ok(())
}

fn run_reproduce(a: ReproduceArgs) -> Result<()> {
    let data = reproduce::Extraction {
        mtfl: a.mtfl.clone(),
        cache_dir: a.cache_dir.clone(),
        batch: a.stream.batch,
        limit: a.limit,
        session: a.stream.run.config(),
        decode_threads: a.stream.decode_threads,
        show_progress: !a.stream.quiet,
    };
    let markdown = if a.beyond { run_beyond(a, data)? } else { run_study(a, data)? };
    println!("{markdown}");
    Ok(())
}

/// `given`, or `default` where nothing was given.
fn or_default(given: Vec<String>, default: &[&str]) -> Vec<String> {
    if given.is_empty() {
        default.iter().map(|s| s.to_string()).collect()
    } else {
        given
    }
}

/// The study's backbone, the default of `reproduce --model` (with FaceRes under --beyond).
const INCEPTION: &str = "onnx/inception_v3.onnx";

fn run_beyond(a: ReproduceArgs, data: reproduce::Extraction) -> Result<String> {
    let opts = BeyondOptions {
        data,
        backbones: if a.model.is_empty() { vec![INCEPTION.into(), "onnx/faceres.onnx".into()] } else { a.model },
        crops: if a.crops.is_empty() { vec![Crop::Original, "face".parse()?] } else { a.crops },
        attributes: or_default(a.attributes, &retrain::dataset::MTFL_ATTRIBUTES),
        out_dir: a.out.unwrap_or_else(|| PathBuf::from("reports/beyond")),
        runs: a.runs,
        seed: a.seed,
        validation_percent: a.validation_percent,
        landmark_passes: a.locate.passes(),
    };
    Ok(reproduce::beyond::beyond(&opts)?.markdown)
}

fn run_study(a: ReproduceArgs, data: reproduce::Extraction) -> Result<String> {
    let models = if a.model.is_empty() { vec![INCEPTION.into()] } else { a.model };
    let [model] =
        <[PathBuf; 1]>::try_from(models).map_err(|m| anyhow::anyhow!("the study's report takes one --model ({} given); --beyond takes several", m.len()))?;
    let opts = ReproduceOptions {
        data,
        model,
        out_dir: a.out.unwrap_or_else(|| PathBuf::from("reports/reproduce")),
        crops: if a.crops.is_empty() { vec![Crop::Original, "nose".parse()?] } else { a.crops },
        attributes: or_default(a.attributes, &["gender", "smile"]),
        solvers: a.solvers,
        seed: a.seed,
        finetune_runs: a.finetune_runs,
    };
    Ok(reproduce::reproduce(&opts)?.markdown)
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn words_are_quoted_as_a_shell_reads_them_back() {
        for word in ["plain/path.h5", "with space", "it's", "", "$HOME", "a\"b", "semi;colon"] {
            let quoted = shell_quote(word);
            let o = std::process::Command::new("sh").args(["-c", &format!("printf %s {quoted}")]).output().unwrap();
            assert_eq!(String::from_utf8(o.stdout).unwrap(), word, "{quoted}");
        }
        assert_eq!(shell_quote("runs/train/last.h5"), "runs/train/last.h5");
    }
}
