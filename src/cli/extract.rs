//! `retrain extract`: a backbone over a data set, one cached feature row per image.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use retrain::cache::Shard;
use retrain::extract::{self, ExtractOptions};
use retrain::model::Model;
use retrain::runtime::{self, SessionConfig};

use super::flags::{CropArgs, DataArgs, DecodeArgs, SessionArgs, StrictArgs};

#[derive(Args)]
pub struct ExtractArgs {
    /// The ONNX backbone (its retrain.* metadata or MODEL.onnx.json describe its input).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    crop: CropArgs,
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
    #[command(flatten)]
    session: SessionArgs,
    /// Model output to cache [default: the model's `bottleneck`].
    #[arg(long)]
    output: Option<String>,
    /// Process only shard I of N (images whose list position mod N is I), e.g. 0/4; `auto` or
    /// `auto/N` take I (and N) from SLURM_ARRAY_TASK_ID/COUNT or JOB_COMPLETION_INDEX.
    #[arg(long, value_parser = extract::parse_shard)]
    shard: Option<Shard>,
    #[command(flatten)]
    strict: StrictArgs,
    #[command(flatten)]
    decode: DecodeArgs,
}

impl From<&ExtractArgs> for ExtractOptions {
    fn from(a: &ExtractArgs) -> ExtractOptions {
        ExtractOptions {
            crop: a.crop.crop,
            batch: a.batch,
            out: a.out.clone(),
            cache_dir: a.cache_dir.clone(),
            limit: a.limit,
            shard: a.shard.unwrap_or(Shard::WHOLE),
            strict: a.strict.strict,
            decode_threads: a.decode.decode_threads,
            show_progress: !a.decode.quiet,
        }
    }
}

pub fn run(a: ExtractArgs) -> Result<()> {
    let dataset = a.data.load()?;
    let config = SessionConfig::from(&a.session);
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
    let summary = extract::extract(&dataset, &mut model, &ExtractOptions::from(&a))?;
    println!("{}", extract::report(&summary));
    Ok(())
}
