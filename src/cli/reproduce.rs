//! `retrain reproduce`: the study's report, or with --beyond every attribute through every pipeline.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use retrain::head::Solver;
use retrain::locate::Passes;
use retrain::preprocess::Crop;
use retrain::runtime::SessionConfig;
use retrain::study::beyond::BeyondOptions;
use retrain::study::{self, ReproduceOptions};

use super::flags::{LocateArgs, StreamArgs};

#[derive(Args)]
pub struct ReproduceArgs {
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
    /// Runs of study/finetune_study.sh to report beside the study's second approach.
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
    stream: StreamArgs,
}

pub fn run(a: ReproduceArgs) -> Result<()> {
    let data = study::Extraction {
        mtfl: a.mtfl.clone(),
        cache_dir: a.cache_dir.clone(),
        batch: a.stream.batch,
        limit: a.limit,
        session: SessionConfig::from(&a.stream.session),
        decode_threads: a.stream.decode.decode_threads,
        show_progress: !a.stream.decode.quiet,
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

fn run_beyond(a: ReproduceArgs, data: study::Extraction) -> Result<String> {
    let opts = BeyondOptions {
        data,
        backbones: if a.model.is_empty() { vec![INCEPTION.into(), "onnx/faceres.onnx".into()] } else { a.model },
        crops: if a.crops.is_empty() { vec![Crop::Original, "face".parse()?] } else { a.crops },
        attributes: or_default(a.attributes, &retrain::dataset::MTFL_ATTRIBUTES),
        out_dir: a.out.unwrap_or_else(|| PathBuf::from("reports/beyond")),
        runs: a.runs,
        seed: a.seed,
        validation_percent: a.validation_percent,
        landmark_passes: Passes::from(&a.locate),
    };
    Ok(study::beyond::beyond(&opts)?.markdown)
}

fn run_study(a: ReproduceArgs, data: study::Extraction) -> Result<String> {
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
    Ok(study::reproduce(&opts)?.markdown)
}
