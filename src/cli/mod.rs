//! The `retrain` command line: one file per command, each parsing its flags into the
//! library's options and printing what the library returns.

mod cache;
mod eval;
mod export;
mod extract;
mod finetune;
mod flags;
mod predict;
mod quantize;
mod reproduce;
mod train;
mod train_head;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Transfer learning for face attributes on ONNX Runtime: bottleneck extraction, heads, fine-tuning.
#[derive(Parser)]
#[command(name = "retrain", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an ONNX backbone over a data set and cache one feature vector per image in HDF5.
    ///
    /// Resumes where an earlier run of the same command stopped; refuses a cache built with
    /// another model, output or preprocessing.
    Extract(extract::ExtractArgs),
    /// Inspect or combine cache files.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Train a softmax head for one attribute on cached features; writes HEAD (ONNX) and
    /// HEAD's .history.json.
    TrainHead(train_head::TrainHeadArgs),
    /// Score a head on a cache: accuracy, per-class precision/recall, confusion matrix.
    Eval(eval::EvalArgs),
    /// Join a backbone and heads into one ONNX model: pixels in, probabilities out.
    Export(export::ExportArgs),
    /// Run an exported model on images; CSV (standard output, or --out) or JSON of labels and
    /// probabilities.
    Predict(predict::PredictArgs),
    /// The study's first approach end to end (extract both crops, train, evaluate, export, report).
    Reproduce(reproduce::ReproduceArgs),
    /// Train a network through training artifacts (scripts/make_artifacts.py) on MTFL.
    ///
    /// Holds out 20% of the training list for validation, prints a line per epoch, keeps
    /// OUT/last.h5 (resume with --resume) and OUT/best.h5, then reports the test accuracy of
    /// the best epoch and writes its weights into OUT/model.onnx.
    Train(train::TrainArgs),
    /// Fine-tune a pretrained network in two phases (the study's second approach): a new head
    /// alone on cached bottlenecks (phase 1), then every layer on images (phase 2), through the
    /// artifacts of scripts/make_finetune.py. Writes OUT/model.onnx and OUT/ATTRIBUTE.head.onnx.
    Finetune(finetune::FinetuneArgs),
    /// Write an int8 version of a backbone (ONNX Runtime's quantisation tool): with --calibrate,
    /// static QDQ with activation ranges from N images of the data set, else dynamic.
    ///
    /// The description is carried over: extract, export and predict take the result as they
    /// take the original, and its caches are its own (another SHA-256).
    Quantize(quantize::QuantizeArgs),
}

/// Runs the command `cli` names.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Extract(args) => extract::run(args),
        Command::Cache(command) => cache::run(command),
        Command::TrainHead(args) => train_head::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Export(args) => export::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Reproduce(args) => reproduce::run(args),
        Command::Train(args) => train::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Quantize(args) => quantize::run(args),
    }
}
