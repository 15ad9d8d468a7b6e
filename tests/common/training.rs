//! Training and fine-tuning runs for the tests: TCDCN artifacts made by the project's scripts,
//! the command lines, and what "the same run" means.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{repo, same_checkpoint_file, same_history};

fn run_python(py: &Path, args: &[&str]) {
    let o = Command::new(py).args(args).current_dir(repo()).output().expect("run python");
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
}

/// `scripts/make_artifacts.py onnx/tcdcn.onnx` into `out` with a small batch (`py` from
/// [`super::python`], which the test checked first).
pub fn make_artifacts(py: &Path, out: &Path, batch: usize, optimizer: &str) -> PathBuf {
    run_python(py, &["scripts/make_artifacts.py", "onnx/tcdcn.onnx", "--out", out.to_str().unwrap(), "--batch", &batch.to_string(), "--optimizer", optimizer]);
    out.to_path_buf()
}

/// Artifacts of the multi-task TCDCN (`scripts/scratch_nets.py` into `out`/nets), batch 4.
pub fn multitask_artifacts(py: &Path, out: &Path) -> PathBuf {
    let nets = out.join("nets");
    run_python(py, &["scripts/scratch_nets.py", "--out-dir", nets.to_str().unwrap()]);
    let art = out.join("art");
    run_python(py, &["scripts/make_artifacts.py", nets.join("tcdcn_multitask.onnx").to_str().unwrap(), "--out", art.to_str().unwrap(), "--batch", "4"]);
    art
}

/// Fine-tuning artifacts of TCDCN with a new 2-way head, batch 8, micro-batches 8, 4, 2.
pub fn tcdcn_finetune(py: &Path, out: &Path) -> PathBuf {
    run_python(
        py,
        &["scripts/make_finetune.py", "onnx/tcdcn.onnx", "--classes", "2", "--batch", "8", "--micro-batches", "8,4,2", "--out", out.to_str().unwrap()],
    );
    out.to_path_buf()
}

/// `retrain train` on smile, one ONNX Runtime thread, quiet.
pub fn train_args<'a>(artifacts: &'a str, mtfl: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec!["train", "--artifacts", artifacts, "--mtfl", mtfl, "--attribute", "smile", "--epochs", epochs, "--out", out, "--threads", "1", "--quiet"]
}

/// `retrain finetune` with TCDCN as the pretrained net: 6 phase-1 steps, `phase2_steps`,
/// validation every 2, micro-batches of 4, distortions on.
pub fn finetune_args<'a>(art: &'a str, mtfl: &'a str, cache: &'a str, out: &'a str, phase2_steps: &'a str) -> Vec<&'a str> {
    let mut args = vec!["finetune", "--artifacts", art, "--model", "onnx/tcdcn.onnx", "--mtfl", mtfl, "--attribute", "smile"];
    args.extend(["--phase1-steps", "6", "--phase2-steps", phase2_steps, "--eval-every", "2", "--micro-batch", "4"]);
    args.extend(["--flip", "--random-crop", "10", "--random-brightness", "10", "--threads", "1", "--cache-dir", cache, "--out", out, "--quiet"]);
    args
}

/// Two `retrain train` folders hold the same training: last.h5 and best.h5 whole (parameters,
/// optimizer state, counters, best scores), and the same history but for its wall times.
pub fn same_training_run(a: &Path, b: &Path) {
    for file in ["last.h5", "best.h5"] {
        same_checkpoint_file(&a.join(file), &b.join(file));
    }
    same_history(&a.join("history.csv"), &b.join("history.csv"));
}

/// Two `retrain finetune` folders hold the same result: both phases' last.h5 whole, the same
/// history but for its wall times, the same test scores.
pub fn same_fine_tuning_run(a: &Path, b: &Path) {
    for file in ["phase1/last.h5", "phase2/last.h5"] {
        same_checkpoint_file(&a.join(file), &b.join(file));
    }
    same_history(&a.join("history.csv"), &b.join("history.csv"));
    let test = |d: &Path| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(d.join("result.json")).unwrap()).unwrap()["test"].clone();
    assert_eq!(test(a), test(b), "the test scores differ");
}
