//! Training through artifacts: gradient checks, resume = continuous training, bad artifacts
//! and foreign checkpoints refused before training, checkpoint and export readable elsewhere.
//! Real ONNX Runtime, real HDF5, real JPEGs (a small MTFL-format folder made here).

mod common;

use std::path::Path;
use std::process::Command;

use common::{make_artifacts, multitask_artifacts, python, repo, retrain, retrain_fault, same_training_run, stderr, stdout, tell, tiny_mtfl, train_args};
use retrain::train::checkpoint::Checkpoint;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn gradient_checks_pass_for_every_differentiated_op() {
    let Some(py) = python() else { return };
    let out = Command::new(py).arg(repo().join("tests/support/gradcheck.py")).output().expect("run gradcheck.py");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "gradient check failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for case in ["Conv (valid)", "MaxPool 2x2/2", "MaxPool 3x3/1 pad 1", "Concat", "Relu", "Gemm", "tcdcn", "cascade_cnn", "Multi-task loss", "tcdcn_multitask"]
    {
        assert!(text.contains(case), "no result for {case}");
    }
}

/// Trains 2 epochs straight and 1 + 1 with --resume, with `extra` flags; both must agree bit
/// for bit.
fn assert_resume_equals_continuous(extra: &[&str]) {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&py, &tmp.path().join("art"), 4, "adam");
    resume_equals_continuous(tmp.path(), &art, "smile", extra);
}

/// As [`assert_resume_equals_continuous`] with artifacts `art` training `attribute`, in `dir`;
/// returns the folder of the straight run.
fn resume_equals_continuous(dir: &Path, art: &Path, attribute: &str, extra: &[&str]) -> std::path::PathBuf {
    let mtfl = tiny_mtfl(&dir.join("mtfl"), 20);
    let (straight, resumed) = (dir.join("straight"), dir.join("resumed"));
    let run = |out: &Path, epochs: &str, resume: Option<&Path>| {
        let mut args = train_args(s(art), s(&mtfl), s(out), epochs);
        let at = args.iter().position(|a| *a == "--attribute").unwrap() + 1;
        args[at] = attribute;
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

    assert_eq!(Checkpoint::read(&straight.join("last.h5")).unwrap().epoch, 2);
    same_training_run(&straight, &resumed);
    straight
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
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&py, &tmp.path().join("art"), 4, "adam");
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
fn distorted_validation_changes_the_validation_scores_not_the_training() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&py, &tmp.path().join("art"), 4, "adam");
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 12);
    let distort = ["--flip", "--random-crop", "20", "--random-scale", "20", "--no-test"];
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = train_args(s(&art), s(&mtfl), s(&out), "1");
        args.extend(distort.iter().chain(extra));
        let o = retrain(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
        (Checkpoint::read(&out.join("last.h5")).unwrap(), result)
    };
    let (plain, plain_result) = run("plain", &[]);
    let (distorted, distorted_result) = run("distorted", &["--distort-validation"]);
    assert_eq!(plain.tensors, distorted.tensors, "validation distortions changed the training");
    assert_ne!(plain_result["best_val_loss"], distorted_result["best_val_loss"], "validation images were not distorted");
    assert_eq!((&plain_result["distort_validation"], &distorted_result["distort_validation"]), (&false.into(), &true.into()));

    // the best epoch depends on it, so a resumed run must repeat it
    let out = tmp.path().join("distorted");
    let last = out.join("last.h5");
    let mut args = train_args(s(&art), s(&mtfl), s(&out), "2");
    args.extend(distort.iter().chain(&["--resume", s(&last)]));
    let o = retrain(&args);
    assert!(!o.status.success(), "resumed without the validation distortions");
    assert!(stderr(&o).contains("trained with distortions 'flip,crop=20,scale=20; validation too'"), "{}", stderr(&o));
}

#[test]
fn patience_stops_when_validation_loss_stalls() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&py, &tmp.path().join("art"), 4, "adam");
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
    let losses: Vec<f64> = retrain::train::history::read(&out.join("history.csv")).unwrap().iter().map(|p| p.val_loss).collect();
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
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&py, &tmp.path().join("art"), 4, "sgd");
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
    let art2 = make_artifacts(&py, &tmp.path().join("art2"), 4, "sgd");
    std::fs::copy(art2.join("forward.onnx"), art2.join("eval.onnx")).unwrap();
    let o = retrain(&train_args(s(&art2), s(&mtfl), s(&out), "1"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("eval.onnx has sha256"), "{}", stderr(&o));
}

#[test]
fn multi_task_artifacts_list_their_tasks_and_train_with_all_attributes_only() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = multitask_artifacts(&py, tmp.path());
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(art.join("manifest.json")).unwrap()).unwrap();
    let tasks: Vec<&str> = manifest["tasks"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(tasks, ["landmarks", "gender", "smile", "glasses", "pose"]);
    assert_eq!(manifest["classes"], 21, "logits: 10 landmark coordinates + 2 + 2 + 2 + 5 classes");
    assert_eq!(manifest["inputs"]["targets"], "targets");
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 6);
    let out = tmp.path().join("run");
    let o = retrain(&train_args(s(&art), s(&mtfl), s(&out), "1"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("train every task at once (landmarks, gender, smile, glasses, pose): use --attribute all"), "{}", stderr(&o));
    assert!(!out.join("history.csv").exists(), "training started");
}

#[test]
fn multi_task_training_scores_every_task_and_resumes_as_continuous_training() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = multitask_artifacts(&py, tmp.path());
    // distortions move the landmark targets with the pixels; the test images as they are
    let extra = ["--crop", "face", "--test-crop", "original", "--flip", "--random-crop", "10", "--random-scale", "20", "--lr", "0.001"];
    let run = resume_equals_continuous(tmp.path(), &art, "all", &extra);

    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    assert_eq!((result["crop"].as_str(), result["test_crop"].as_str()), (Some("face:3.2"), Some("original")));
    for set in ["val_tasks", "test_tasks"] {
        let tasks = result[set].as_array().unwrap();
        let names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["landmarks", "gender", "smile", "glasses", "pose"], "{set}");
        let error = tasks[0]["mean_error"].as_f64().unwrap();
        assert!(error.is_finite() && error > 0.0, "{set}: landmark error {error}");
        for t in &tasks[1..] {
            let rows = t["metrics"]["rows"].as_u64().unwrap();
            assert!(rows > 0 && t["metrics"]["confusion"].is_array(), "{set}: {t}");
        }
    }
    assert_eq!(result["test_tasks"][1]["metrics"]["rows"], 20, "every test image scored for gender");
    let model =
        retrain::model::Model::load(&run.join("model.onnx"), &retrain::runtime::SessionConfig::new(retrain::runtime::Device::Cpu), Some("landmarks")).unwrap();
    assert_eq!(model.output_dim, 10);
    assert_eq!(model.description.task_labels["pose"], ["left_profile", "left", "frontal", "right", "right_profile"]);
    assert_eq!(model.description.crop, Some("face:3.2".parse().unwrap()));
}

#[test]
fn checkpoint_of_other_artifacts_is_refused() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let adam = make_artifacts(&py, &tmp.path().join("adam"), 4, "adam");
    let sgd = make_artifacts(&py, &tmp.path().join("sgd"), 4, "sgd");
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
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&py, &tmp.path().join("art"), 4, "rmsprop");
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
    let o = Command::new(&py).args(["-c", code, s(&repo()), s(&out), s(&art)]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("epoch 1 optimizer rmsprop"));
    // its classes are named as heads name them (one table)
    let bytes = std::fs::read(out.join("model.onnx")).unwrap();
    let description = retrain::description::Description::from_metadata(&retrain::onnx::read_metadata(&bytes).unwrap()).unwrap().unwrap();
    assert_eq!(description.labels.unwrap(), retrain::head::classes::Classes::mtfl("smile").unwrap().labels);
    // and `retrain extract` takes it: its metadata still describes the input
    let cache = tmp.path().join("c.h5");
    let o = retrain(&["extract", "--model", s(&out.join("model.onnx")), "--mtfl", s(&mtfl), "--split", "testing", "--out", s(&cache), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("wrote 10 rows"), "{}", stdout(&o));
}

#[test]
fn one_epoch_on_real_mtfl() {
    let (Some(py), Some(mtfl)) = (python(), common::shared_mtfl()) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&py, &tmp.path().join("art"), 16, "adam");
    let out = tmp.path().join("run");
    let mut args = train_args(s(&art), s(&mtfl), s(&out), "1");
    args.extend(["--limit", "160"]);
    let o = retrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("test accuracy"), "{}", stdout(&o));
}

#[test]
fn sigkill_during_training_then_resume_equals_continuous_training() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = make_artifacts(&py, &tmp.path().join("art"), 4, "adam");
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 40);
    let epochs = "8";
    let straight = tmp.path().join("straight");
    assert!(retrain(&train_args(s(&art), s(&mtfl), s(&straight), epochs)).status.success());
    let steps_per_epoch = Checkpoint::read(&straight.join("last.h5")).unwrap().step / 8;
    let killed = tmp.path().join("killed");
    let last = killed.join("last.h5");
    // Each run resumes from last.h5 and is killed the hit-th time it passes a point: after
    // an optimizer step (mid-epoch: the epoch is lost, the checkpoint before it stays), between
    // writing a checkpoint and renaming it, or just after the rename.
    let spe = steps_per_epoch;
    let plan: [(&str, u64); 8] = [
        ("step", spe + 2),
        ("checkpoint-partial", 1),
        ("step", spe + 1),
        ("checkpoint-written", 2),
        ("step", 2 * spe - 1),
        ("checkpoint-partial", 2),
        ("step", spe + 3),
        ("checkpoint-written", 1),
    ];
    let mut kills = Vec::new();
    for (point, hit) in plan {
        let mut args = train_args(s(&art), s(&mtfl), s(&killed), epochs);
        if last.exists() {
            args.extend(["--resume", s(&last)]);
        }
        let o = retrain_fault(&args, point, hit, "kill");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&o.status), Some(libc::SIGKILL), "not killed at {point}:{hit}: {}", stderr(&o));
        // Whatever the point of the kill, the checkpoint on disk is a whole one.
        let c = Checkpoint::read(&last).expect("a killed run left a damaged checkpoint");
        assert_eq!(c.step, c.epoch * spe, "a kill left a checkpoint between epochs");
        kills.push(c.epoch);
    }
    tell(&format!("train kill points (epochs completed on disk): {kills:?}"));
    let interior: std::collections::BTreeSet<u64> = kills.iter().copied().filter(|&e| e > 0 && e < 8).collect();
    assert!(interior.len() >= 5, "too few distinct interior kill points: {kills:?}");
    let mut args = train_args(s(&art), s(&mtfl), s(&killed), epochs);
    args.extend(["--resume", s(&last)]);
    let o = retrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    same_training_run(&straight, &killed);
}

/// One policy for an unreadable image in every training command: reported once by name, left
/// out of the batches and scores (the run finishes on the others), fatal under --strict.
#[test]
fn an_unreadable_training_image_is_skipped_once_by_train_and_finetune_and_fatal_under_strict() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 24);
    std::fs::write(mtfl.join("training/img005.jpg"), b"not a JPEG").unwrap();
    let skipped = |o: &std::process::Output| stderr(o).matches("skipped training/img005.jpg").count();
    let art = make_artifacts(&py, &tmp.path().join("art"), 4, "adam");
    let out = tmp.path().join("train");
    let o = retrain(&train_args(s(&art), s(&mtfl), s(&out), "2"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(skipped(&o), 1, "{}", stderr(&o));
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["train_images"].as_u64().unwrap() + result["val_images"].as_u64().unwrap(), 23, "{result}");
    let strict_out = tmp.path().join("strict");
    let mut strict = train_args(s(&art), s(&mtfl), s(&strict_out), "2");
    strict.push("--strict");
    let o = retrain(&strict);
    assert!(!o.status.success() && stderr(&o).contains("training/img005.jpg"), "{}", stderr(&o));

    // fine-tuning with distortions decodes the images in both phases: still one report
    let ft = common::tcdcn_finetune(&py, &tmp.path().join("ft"));
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("finetune"));
    let o = retrain(&common::finetune_args(s(&ft), s(&mtfl), s(&cache), s(&out), "4"));
    assert!(o.status.success(), "{}", stderr(&o));
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["skipped"].as_array().unwrap().len(), 1, "{result}");
    let reports = skipped(&o);
    assert!((1..=2).contains(&reports), "the bottleneck cache may report it once, training once more: {}", stderr(&o));
    let strict_out = tmp.path().join("ft-strict");
    let mut strict = common::finetune_args(s(&ft), s(&mtfl), s(&cache), s(&strict_out), "4");
    strict.push("--strict");
    let o = retrain(&strict);
    assert!(!o.status.success() && stderr(&o).contains("training/img005.jpg"), "{}", stderr(&o));
}
