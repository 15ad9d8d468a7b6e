//! `retrain eval`: a head's scores on a cache.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use retrain::runtime::SessionConfig;

use super::flags::SessionArgs;

#[derive(Args)]
pub struct EvalArgs {
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
    session: SessionArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let heads: Vec<&Path> = a.heads.iter().map(PathBuf::as_path).collect();
    let evaluations = retrain::eval::evaluate_all(&heads, &a.cache, &SessionConfig::from(&a.session))?;
    let png = a.png.or_else(|| a.json.as_ref().map(|j| j.with_extension("png")));
    retrain::eval::write_all(&evaluations, a.json.as_deref(), png.as_deref(), a.predictions.as_deref())?;
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
