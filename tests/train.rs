//! Training through artifacts: gradient checks, resume = continuous training, bad artifacts
//! and foreign checkpoints refused before training, checkpoint and export readable elsewhere.
//! Real ONNX Runtime, real HDF5, real JPEGs (a small MTFL-format folder made here).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{python, repo, retrain, stderr, stdout, tiny_mtfl};
use retrain::train::checkpoint::Checkpoint;

/// `scripts/make_artifacts.py onnx/tcdcn.onnx` into `out` with a small batch.
fn make_artifacts(out: &Path, batch: usize, optimizer: &str) -> PathBuf {
    let status = Command::new(python())
        .arg(repo().join("scripts/make_artifacts.py"))
        .arg(repo().join("onnx/tcdcn.onnx"))
        .args(["--out", out.to_str().unwrap(), "--batch", &batch.to_string(), "--optimizer", optimizer])
        .output()
        .expect("run make_artifacts.py");
    assert!(status.status.success(), "make_artifacts.py failed: {}", String::from_utf8_lossy(&status.stderr));
    out.to_path_buf()
}

fn train_args<'a>(artifacts: &'a str, mtfl: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec!["train", "--artifacts", artifacts, "--mtfl", mtfl, "--attribute", "smile", "--epochs", epochs, "--out", out, "--threads", "1", "--quiet"]
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn gradient_checks_pass_for_every_differentiated_op() {
    let out = Command::new(python()).arg(repo().join("scripts/gradcheck.py")).output().expect("run gradcheck.py");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "gradient check failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for case in ["Conv (valid)", "MaxPool 2x2/2", "MaxPool 3x3/1 pad 1", "Concat", "Relu", "Gemm", "tcdcn", "cascade_cnn"] {
        assert!(text.contains(case), "no result for {case}");
    }
}

/// Trains 2 epochs straight and 1 + 1 with --resume, with `extra` flags; both must agree bit
/// for bit.
fn assert_resume_equals_continuous(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&tmp.path().join("art"), 4, "adam");
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 20);
    let (straight, resumed) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    let run = |out: &Path, epochs: &str, resume: Option<&Path>| {
        let mut args = train_args(s(&art), s(&mtfl), s(out), epochs);
        args.extend(extra);
        if let Some(r) = resume {
            args.extend(["--resume", s(r)]);
        }
        let o = retrain(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let o = run(&straight, "2", None);
    assert!(stdout(&o).contains("epoch 2/2: train loss"), "{}", stdout(&o));
    run(&resumed, "1", None);
    let o = run(&resumed, "2", Some(&resumed.join("last.h5")));
    assert!(!stdout(&o).contains("epoch 1/2"), "resume repeated epoch 1: {}", stdout(&o));

    let a = Checkpoint::read(&straight.join("last.h5")).unwrap();
    let b = Checkpoint::read(&resumed.join("last.h5")).unwrap();
    assert_eq!((a.step, a.epoch, a.seed), (b.step, b.epoch, b.seed));
    assert_eq!(a.epoch, 2);
    assert_eq!((a.best_val_loss, a.best_val_loss_epoch), (b.best_val_loss, b.best_val_loss_epoch));
    assert_eq!(a.tensors, b.tensors, "resumed parameters and optimizer state differ from continuous training");
    let history = |d: &Path| std::fs::read_to_string(d.join("history.csv")).unwrap().lines().count();
    assert_eq!(history(&straight), 3);
    assert_eq!(history(&resumed), 3);
}

#[test]
fn resumed_training_equals_continuous_training() {
    assert_resume_equals_continuous(&[]);
}

#[test]
fn resumed_training_with_distortions_and_decay_equals_continuous_training() {
    let distort = ["--flip", "--random-crop", "10", "--random-scale", "10", "--random-brightness", "10"];
    assert_resume_equals_continuous(&[&distort[..], &["--lr-decay", "0.5", "--lr-decay-every", "1"]].concat());
}

#[test]
fn distortions_change_training_and_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&tmp.path().join("art"), 4, "adam");
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 12);
    let (plain, flipped) = (tmp.path().join("plain"), tmp.path().join("flipped"));
    assert!(retrain(&train_args(s(&art), s(&mtfl), s(&plain), "1")).status.success());
    let mut args = train_args(s(&art), s(&mtfl), s(&flipped), "1");
    args.extend(["--flip", "--random-crop", "20"]);
    assert!(retrain(&args).status.success());
    let (a, b) = (Checkpoint::read(&plain.join("last.h5")).unwrap(), Checkpoint::read(&flipped.join("last.h5")).unwrap());
    assert_ne!(a.tensors, b.tensors, "distortions did not change the training images");
    assert_eq!((a.distortions.as_str(), b.distortions.as_str()), ("none", "flip,crop=20"));
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(flipped.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["distortions"]["flip"], true);
    assert_eq!(result["distortions"]["crop_percent"], 20.0);

    // resuming with other distortions is refused before training
    let last = flipped.join("last.h5");
    let mut args = train_args(s(&art), s(&mtfl), s(&flipped), "2");
    args.extend(["--resume", s(&last)]);
    let o = retrain(&args);
    assert!(!o.status.success(), "resumed with other distortions");
    assert!(stderr(&o).contains("trained with distortions 'flip,crop=20'"), "{}", stderr(&o));
}

#[test]
fn patience_stops_when_validation_loss_stalls() {
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&tmp.path().join("art"), 4, "adam");
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 20);
    let out = tmp.path().join("run");
    let mut args = train_args(s(&art), s(&mtfl), s(&out), "30");
    args.extend(["--patience", "2", "--lr", "0.01"]);
    let o = retrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("early stop"), "{}", stdout(&o));
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    let (done, best_loss_epoch) = (result["epochs_completed"].as_u64().unwrap(), result["best_val_loss_epoch"].as_u64().unwrap());
    assert_eq!(result["stopped_early"], true);
    assert_eq!(done, best_loss_epoch + 2, "stopped {done} epochs in, best loss at {best_loss_epoch}");
    // the history agrees: the best validation loss is at best_val_loss_epoch, none lower after it
    let history = std::fs::read_to_string(out.join("history.csv")).unwrap();
    let losses: Vec<f64> = history.lines().skip(1).map(|l| l.split(',').nth(3).unwrap().parse().unwrap()).collect();
    assert_eq!(losses.len() as u64, done);
    let min = losses.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(losses[best_loss_epoch as usize - 1], min);
    // a resume of a stopped run trains nothing more
    let last = out.join("last.h5");
    args.extend(["--resume", s(&last)]);
    let o = retrain(&args);
    assert!(o.status.success() && stdout(&o).contains("early stop"), "{}", stdout(&o));
    assert_eq!(Checkpoint::read(&last).unwrap().epoch, done);
}

#[test]
fn bad_artifacts_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&tmp.path().join("art"), 4, "sgd");
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 6);
    // a graph without the expected inputs, recorded with its true hash
    let manifest_path = art.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let forward = manifest["files"]["forward"].clone();
    manifest["files"]["train_step"] = forward;
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    let out = tmp.path().join("run");
    let o = retrain(&train_args(s(&art), s(&mtfl), s(&out), "1"));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("train_step.onnx") && err.contains("has no input 'labels'"), "{err}");
    assert!(!out.join("history.csv").exists(), "training started");

    // a graph file that is not the one the manifest names
    let art2 = make_artifacts(&tmp.path().join("art2"), 4, "sgd");
    std::fs::copy(art2.join("forward.onnx"), art2.join("eval.onnx")).unwrap();
    let o = retrain(&train_args(s(&art2), s(&mtfl), s(&out), "1"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("eval.onnx has sha256"), "{}", stderr(&o));
}

#[test]
fn checkpoint_of_other_artifacts_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let adam = make_artifacts(&tmp.path().join("adam"), 4, "adam");
    let sgd = make_artifacts(&tmp.path().join("sgd"), 4, "sgd");
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 6);
    let out = tmp.path().join("run");
    let foreign = sgd.join("init.h5");
    let mut args = train_args(s(&adam), s(&mtfl), s(&out), "1");
    args.extend(["--resume", s(&foreign)]);
    let o = retrain(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("belongs to other training artifacts"), "{}", stderr(&o));
    assert!(!out.join("history.csv").exists(), "training started");
    // and a batch the fixed-batch graph was not made for
    let mut args = train_args(s(&adam), s(&mtfl), s(&out), "1");
    args.extend(["--batch", "16"]);
    let o = retrain(&args);
    assert!(!o.status.success() && stderr(&o).contains("made for batch 4"), "{}", stderr(&o));
}

#[test]
fn checkpoint_and_exported_model_are_readable_by_python_and_extract() {
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&tmp.path().join("art"), 4, "rmsprop");
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 10);
    let out = tmp.path().join("run");
    let o = retrain(&train_args(s(&art), s(&mtfl), s(&out), "1"));
    assert!(o.status.success(), "{}", stderr(&o));
    // the exported forward graph computes what the eval graph computes with the checkpoint
    let code = r#"
import sys, numpy as np, onnxruntime as ort
sys.path.insert(0, sys.argv[1] + "/scripts")
import make_artifacts as ma
tensors, attrs = ma.read_checkpoint(sys.argv[2] + "/best.h5")
x = np.random.default_rng(0).random((3, 60, 60, 3), dtype=np.float32)
ev = ort.InferenceSession(sys.argv[3] + "/eval.onnx")
names = {i.name for i in ev.get_inputs()}
a = ev.run(["logits"], {"input": x, **{k: v for k, v in tensors.items() if k in names}})[0]
b = ort.InferenceSession(sys.argv[2] + "/model.onnx").run(["logits"], {"input": x})[0]
print("epoch", attrs["epoch"], "optimizer", attrs["optimizer"], "maxdiff", float(np.abs(a - b).max()))
assert np.abs(a - b).max() < 1e-4
assert any(k.startswith("opt:square:") for k in tensors)
"#;
    let py = Command::new(python()).args(["-c", code, s(&repo()), s(&out), s(&art)]).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    assert!(String::from_utf8_lossy(&py.stdout).contains("epoch 1 optimizer rmsprop"));
    // and `retrain extract` takes it: its metadata still describes the input
    let cache = tmp.path().join("c.h5");
    let o = retrain(&["extract", "--model", s(&out.join("model.onnx")), "--mtfl", s(&mtfl), "--split", "testing", "--out", s(&cache), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("wrote 10 rows"), "{}", stdout(&o));
}

#[test]
fn one_epoch_on_real_mtfl() {
    let Some(mtfl) = common::shared_mtfl("one_epoch_on_real_mtfl") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&tmp.path().join("art"), 16, "adam");
    let out = tmp.path().join("run");
    let mut args = train_args(s(&art), s(&mtfl), s(&out), "1");
    args.extend(["--limit", "160"]);
    let o = retrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("test accuracy"), "{}", stdout(&o));
}

#[test]
fn sigkill_during_training_then_resume_equals_continuous_training() {
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&tmp.path().join("art"), 4, "adam");
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 40);
    let epochs = "8";
    let straight = tmp.path().join("straight");
    assert!(retrain(&train_args(s(&art), s(&mtfl), s(&straight), epochs)).status.success());
    let killed = tmp.path().join("killed");
    let last = killed.join("last.h5");
    let mut kills = Vec::new();
    let mut delay = 11u64;
    let epoch_on_disk = || Checkpoint::read(&last).map(|c| c.epoch).ok();
    for _ in 0..30 {
        let mut args = train_args(s(&art), s(&mtfl), s(&killed), epochs);
        if last.exists() {
            args.extend(["--resume", s(&last)]);
        }
        let before = epoch_on_disk();
        let mut child = Command::new(env!("CARGO_BIN_EXE_retrain"))
            .args(&args)
            .current_dir(repo())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it write one more checkpoint (so every round makes progress), then kill it at a
        // pseudo-random moment of the next epoch, checkpoint writing included.
        while child.try_wait().unwrap().is_none() && epoch_on_disk() == before {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        delay = (delay * 7919 + 3) % 300;
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if finished {
            break;
        }
        // Whatever the moment of the kill, the checkpoint on disk is a whole one.
        let c = Checkpoint::read(&last).expect("a killed run left a damaged checkpoint");
        kills.push(c.epoch);
    }
    eprintln!("killed at completed epochs {kills:?}");
    assert!(kills.len() >= 2, "too few kills landed during training: {kills:?}");
    let mut args = train_args(s(&art), s(&mtfl), s(&killed), epochs);
    args.extend(["--resume", s(&last)]);
    let o = retrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (Checkpoint::read(&straight.join("last.h5")).unwrap(), Checkpoint::read(&last).unwrap());
    assert_eq!((a.step, a.epoch), (b.step, b.epoch));
    assert_eq!(a.tensors, b.tensors, "killed-and-resumed training differs from continuous training");
}
