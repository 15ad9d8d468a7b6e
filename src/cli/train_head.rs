//! `retrain train-head`: softmax heads on cached features.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use retrain::cache::Cache;
use retrain::head::linfa::{LinfaParams, Precision};
use retrain::head::sgd::SgdParams;
use retrain::head::{self, ClassWeight, HeadOptions, Solver};

#[derive(Args)]
pub struct TrainHeadArgs {
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

pub fn run(a: TrainHeadArgs) -> Result<()> {
    let cache = Cache::read(&a.cache)?;
    let attributes: Vec<String> = if a.attribute == "all" { head::attributes_of(&cache) } else { a.attribute.split(',').map(str::to_string).collect() };
    let opts = HeadOptions {
        seed: a.seed,
        standardize: !a.no_standardize,
        class_weight: a.class_weight,
        validation_percent: a.validation_percent,
        linfa: LinfaParams { c: a.c, max_iterations: a.max_iterations, precision: a.precision, ..LinfaParams::default() },
        sgd: SgdParams { learning_rate: a.learning_rate, batch: a.batch, steps: a.steps, validation_batch: a.validation_batch, ..SgdParams::default() },
        ..HeadOptions::new(&attributes[0], a.solver)
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
