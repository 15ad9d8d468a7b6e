//! Head training time: linfa-logistic, the study's SGD recipe and scikit-learn, in one run on
//! the same caches, with test accuracy (each of ours scored by `retrain eval`'s code path).
//!
//!     cargo bench --bench heads -- --train TRAIN.h5 --test TEST.h5 [--attribute gender,smile] [--repeat 3]
//!
//! (or RETRAIN_BENCH_TRAIN / RETRAIN_BENCH_TEST). scikit-learn runs through
//! tests/support/sklearn_head.py with .venv/bin/python (RETRAIN_PYTHON overrides). Times are the fit
//! alone (standardisation included, reading the cache not), best of --repeat runs. Targets: our
//! fastest head takes no longer than scikit-learn's, linfa at most 1.5 times as long.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use retrain::cache::Cache;
use retrain::eval;
use retrain::head::linfa::LinfaParams;
use retrain::head::{self, HeadOptions, Solver};
use retrain::runtime::{Device, SessionConfig};

struct Args {
    train: PathBuf,
    test: PathBuf,
    attributes: Vec<String>,
    repeat: usize,
}

/// One measured head.
struct Row {
    attribute: String,
    solver: String,
    seconds: f64,
    accuracy: f64,
}

fn main() {
    match parse_args() {
        Ok(Some(args)) => {
            if let Err(e) = run(&args) {
                eprintln!("bench heads failed: {e:#}");
                std::process::exit(1);
            }
        }
        Ok(None) => println!("bench heads skipped: give --train TRAIN.h5 --test TEST.h5 (or RETRAIN_BENCH_TRAIN / RETRAIN_BENCH_TEST)"),
        Err(e) => {
            eprintln!("bench heads: {e:#}");
            std::process::exit(2);
        }
    }
}

fn parse_args() -> Result<Option<Args>> {
    let mut train = std::env::var_os("RETRAIN_BENCH_TRAIN").map(PathBuf::from);
    let mut test = std::env::var_os("RETRAIN_BENCH_TEST").map(PathBuf::from);
    let mut attributes = vec!["gender".to_string(), "smile".to_string()];
    let mut repeat = 1;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--train" => train = Some(value()?.into()),
            "--test" => test = Some(value()?.into()),
            "--attribute" => attributes = value()?.split(',').map(str::to_string).collect(),
            "--repeat" => repeat = value()?.parse().context("--repeat")?,
            "--bench" => {} // added by `cargo bench`
            other => bail!("unknown argument '{other}'"),
        }
    }
    Ok(match (train, test) {
        (Some(train), Some(test)) => Some(Args { train, test, attributes, repeat: repeat.max(1) }),
        _ => None,
    })
}

fn run(a: &Args) -> Result<()> {
    let train = Cache::read(&a.train)?;
    println!("train {} ({} x {}), test {}, best of {}", a.train.display(), train.features.nrows(), train.features.ncols(), a.test.display(), a.repeat);
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for attribute in &a.attributes {
        rows.push(sklearn(a, attribute)?);
        for solver in [Solver::Linfa, Solver::Sgd] {
            rows.push(ours(a, &train, attribute, solver, dir.path())?);
        }
    }
    report(&rows);
    Ok(())
}

fn ours(a: &Args, train: &Cache, attribute: &str, solver: Solver, dir: &Path) -> Result<Row> {
    let mut best: Option<(f64, head::Trained)> = None;
    for _ in 0..a.repeat {
        let trained = head::train(train, &a.train, &HeadOptions::new(attribute, solver), &mut |_| {})?;
        let seconds = trained.head.info.train_seconds;
        if best.as_ref().is_none_or(|(s, _)| seconds < *s) {
            best = Some((seconds, trained));
        }
    }
    let (seconds, trained) = best.expect("repeat >= 1");
    let path = dir.join(format!("{attribute}-{}.onnx", solver.name()));
    trained.head.save(&path, &trained.curve)?;
    let evaluation = eval::evaluate(&path, &a.test, &SessionConfig::new(Device::Cpu))?;
    Ok(Row { attribute: attribute.to_string(), solver: solver.name().to_string(), seconds, accuracy: evaluation.metrics.accuracy })
}

fn sklearn(a: &Args, attribute: &str) -> Result<Row> {
    let python = std::env::var("RETRAIN_PYTHON").unwrap_or_else(|_| ".venv/bin/python".to_string());
    // The same regularisation and iteration cap as our linfa head.
    let linfa = LinfaParams::default();
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..a.repeat {
        let out = Command::new(&python)
            .args(["tests/support/sklearn_head.py", "--train"])
            .arg(&a.train)
            .arg("--test")
            .arg(&a.test)
            .args(["--attribute", attribute])
            .args(["--c", &linfa.c.to_string(), "--max-iter", &linfa.max_iterations.to_string()])
            .output()
            .with_context(|| format!("cannot run {python} tests/support/sklearn_head.py (set RETRAIN_PYTHON)"))?;
        if !out.status.success() {
            bail!("tests/support/sklearn_head.py failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("tests/support/sklearn_head.py printed no JSON")?;
        let seconds = json["fit_seconds"].as_f64().context("fit_seconds")?;
        let accuracy = json["accuracy"].as_f64().context("accuracy")?;
        if best.is_none_or(|(s, _)| seconds < s) {
            best = Some((seconds, accuracy));
        }
    }
    let (seconds, accuracy) = best.expect("repeat >= 1");
    Ok(Row { attribute: attribute.to_string(), solver: "sklearn".to_string(), seconds, accuracy })
}

fn report(rows: &[Row]) {
    println!("\n| attribute | solver | fit seconds | time / sklearn | test accuracy | accuracy - sklearn |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in rows {
        let base = sklearn_row(rows, &r.attribute);
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.2}% | {:+.2} points |",
            r.attribute,
            r.solver,
            r.seconds,
            r.seconds / base.seconds,
            100.0 * r.accuracy,
            100.0 * (r.accuracy - base.accuracy)
        );
    }
    let fastest = worst_ratio(rows, |r| r.solver != "sklearn");
    println!("\nfastest head / scikit-learn: {fastest:.3} at worst over attributes (target <= 1: {})", verdict(fastest <= 1.0));
    let linfa = worst_ratio(rows, |r| r.solver == "linfa");
    println!("ratio linfa / scikit-learn: {linfa:.3} at worst over attributes (target <= 1.5: {})", verdict(linfa <= 1.5));
}

fn sklearn_row<'a>(rows: &'a [Row], attribute: &str) -> &'a Row {
    rows.iter().find(|b| b.attribute == attribute && b.solver == "sklearn").expect("sklearn row per attribute")
}

/// The largest, over attributes, of the fastest `ours` row's time over scikit-learn's.
fn worst_ratio(rows: &[Row], ours: impl Fn(&Row) -> bool) -> f64 {
    let sklearn = rows.iter().filter(|r| r.solver == "sklearn");
    sklearn
        .map(|base| {
            let fastest = rows.iter().filter(|r| r.attribute == base.attribute && ours(r)).map(|r| r.seconds).fold(f64::INFINITY, f64::min);
            fastest / base.seconds
        })
        .fold(0.0, f64::max)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}
