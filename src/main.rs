//! The `retrain` command line: parses arguments and calls the library, nothing more.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use retrain::cache::{Cache, Shard};
use retrain::dataset::{self, mtfl, Dataset};
use retrain::extract::{self, ExtractOptions};
use retrain::model::Model;
use retrain::preprocess::Crop;
use retrain::runtime::{self, Device, SessionConfig};
use retrain::train::{self, TrainOptions};

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
    /// Train a network through training artifacts (scripts/make_artifacts.py) on MTFL.
    ///
    /// Holds out 20% of the training list for validation, prints a line per epoch, keeps
    /// OUT/last.h5 (resume with --resume) and OUT/best.h5, then reports the test accuracy of
    /// the best epoch and writes its weights into OUT/model.onnx.
    Train(TrainArgs),
    /// Inspect or combine cache files.
    #[command(subcommand)]
    Cache(CacheCommand),
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
    /// original (whole image) or nose (150x150 around the nose landmark; nose:SIZE for another size).
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
    /// gender, smile, glasses or pose.
    #[arg(long)]
    attribute: String,
    /// original (whole image) or nose (150x150 around the nose landmark; nose:SIZE for another size).
    #[arg(long, default_value = "original")]
    crop: Crop,
    /// Train until this many epochs are complete.
    #[arg(long, default_value_t = 10)]
    epochs: u64,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    /// Batch size; must be the one the artifacts were made for [default: theirs].
    #[arg(long)]
    batch: Option<usize>,
    /// cpu, cuda or cuda:N. CUDA never falls back to CPU; parameters stay on the GPU.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Intra-op threads for ONNX Runtime [default: every core].
    #[arg(long)]
    threads: Option<usize>,
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
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Extract(args) => run_extract(args),
        Command::Train(args) => run_train(args),
        Command::Cache(CacheCommand::Info { cache }) => run_info(&cache),
        Command::Cache(CacheCommand::Merge { shards, out }) => {
            println!("{}", retrain::cache::merge_command(&shards, &out)?);
            Ok(())
        }
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

fn run_train(a: TrainArgs) -> Result<()> {
    let opts = TrainOptions {
        artifacts: a.artifacts,
        mtfl: a.mtfl,
        attribute: a.attribute,
        crop: a.crop,
        epochs: a.epochs,
        lr: a.lr,
        batch: a.batch,
        device: a.device,
        threads: a.threads,
        out: a.out,
        seed: a.seed,
        resume: a.resume,
        limit: a.limit,
        eval_batch: a.eval_batch,
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
    println!("shard: {}/{}; images {} of {} done{}", c.shard.index, c.shard.count, c.next_source_index, c.sources_total, if c.is_complete() { "" } else { " (unfinished: run the same extract again)" });
    println!("skipped: {}", c.skipped.len());
    for s in &c.skipped {
        println!("  {}", s.replace('\t', ": "));
    }
    Ok(())
}
