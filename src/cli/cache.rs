//! `retrain cache info` and `retrain cache merge`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use retrain::cache::Cache;

#[derive(Subcommand)]
pub enum CacheCommand {
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

pub fn run(command: CacheCommand) -> Result<()> {
    match command {
        CacheCommand::Info { cache } => info(&cache),
        CacheCommand::Merge { shards, out } => {
            println!("{}", retrain::cache::merge_command(&shards, &out)?);
            Ok(())
        }
    }
}

fn info(path: &Path) -> Result<()> {
    let c = Cache::read(path).with_context(|| format!("retrain cache info {}", path.display()))?;
    println!("{}: {} rows x {} features", path.display(), c.features.nrows(), c.features.ncols());
    println!("source: {}\nmodel sha256: {}\noutput: {}\npreprocess: {}", c.source, c.model_sha256, c.output, c.preprocess);
    println!("labels: {}", c.label_columns.join(", "));
    for (column, names) in &c.column_class_names {
        println!("  {column}: {}", names.join(", "));
    }
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
