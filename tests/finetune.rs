//! Fine-tuning (`retrain finetune`, scripts/make_finetune.py): the InceptionV3 gradient check,
//! gradient accumulation = the fused step, both phases end to end with the exported model and
//! head read back by `extract` and `eval`, resume = continuous, and refusals before training.
//! The end-to-end runs use TCDCN as the "pretrained" network (it has a `bottleneck` output too)
//! so they take seconds; the InceptionV3 runs on MTFL are in docs/finetune.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{finetune_args, make_artifacts, python, repo, retrain, retrain_fault, same_fine_tuning_run, stderr, stdout, tcdcn_finetune, tell, tiny_mtfl};
use retrain::runtime::{Device, SessionConfig};
use retrain::train::accumulate::Accumulator;
use retrain::train::artifacts::Artifacts;
use retrain::train::checkpoint::Checkpoint;
use retrain::train::engine::{Batch, Engine};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn inception_gradient_check_passes_for_every_block_type() {
    let (Some(py), Some(_)) = (python(), common::inception()) else { return };
    let o = Command::new(py).arg("tests/support/gradcheck_inception.py").current_dir(repo()).output().expect("run gradcheck_inception.py");
    let text = String::from_utf8_lossy(&o.stdout);
    println!("{text}");
    assert!(o.status.success(), "InceptionV3 gradient check failed:\n{text}\n{}", String::from_utf8_lossy(&o.stderr));
    for block in ["stem", "35x35 module", "grid reduction 35->17", "17x17 module", "grid reduction 17->8", "8x8 module", "new Logits layer"] {
        assert!(text.contains(block), "no result for {block}");
    }
}

/// Images, labels, weights and dropout masks of some rows of a batch.
type Piece = (Vec<f32>, Vec<i64>, Vec<f32>, Vec<Vec<f32>>);

/// A batch of 8 random 60x60 images with fixed dropout masks, as `rows`-row pieces.
fn pieces(a: &Artifacts, rows: usize) -> Vec<Piece> {
    let image_len = 60 * 60 * 3;
    let images: Vec<f32> = (0..8 * image_len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let labels: Vec<i64> = (0..8).map(|i| i % 2).collect();
    let weights = [1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.0, 1.0];
    let mask_len: usize = a.manifest.dropout_masks[0].shape[1..].iter().product();
    let mask: Vec<f32> = (0..8 * mask_len).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 / 0.6 }).collect();
    (0..8 / rows)
        .map(|k| {
            let r = k * rows..(k + 1) * rows;
            (
                images[r.start * image_len..r.end * image_len].to_vec(),
                labels[r.clone()].to_vec(),
                weights[r.clone()].to_vec(),
                vec![mask[r.start * mask_len..r.end * mask_len].to_vec()],
            )
        })
        .collect()
}

#[test]
fn accumulated_micro_batches_equal_the_fused_step() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = tcdcn_finetune(&py, &tmp.path().join("art"));
    let a = Artifacts::open(&art.join("phase2")).unwrap();
    let init = Checkpoint::read(&art.join("phase2/init.h5")).unwrap();
    let config = SessionConfig { intra_threads: Some(1), ..SessionConfig::new(Device::Cpu) };
    let mut fused = Engine::new(a.clone(), &config).unwrap();
    fused.load(&init).unwrap();
    let (images, labels, weights, masks) = pieces(&a, 8).remove(0);
    fused.step(&Batch { images, labels, targets: Vec::new(), weights, masks: &masks }, 0.01, 1).unwrap();
    let want = fused.snapshot().unwrap();
    for micro in [8, 4, 2] {
        let mut engine = Engine::with_step(a.clone(), &config, false).unwrap();
        engine.load(&init).unwrap();
        let mut acc = Accumulator::new(&engine, micro, &config).unwrap();
        let parts = pieces(&a, micro);
        let batches: Vec<Batch> =
            parts.iter().map(|(i, l, w, m)| Batch { images: i.clone(), labels: l.clone(), targets: Vec::new(), weights: w.clone(), masks: m }).collect();
        acc.step(&mut engine, &batches, 0.01, 1).unwrap();
        for (got, want) in engine.snapshot().unwrap().iter().zip(&want) {
            assert_eq!(got.name, want.name);
            let scale = want.data.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let diff = got.data.iter().zip(&want.data).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-5 * scale, "micro-batch {micro}: '{}' differs by {diff} (scale {scale})", got.name);
        }
    }
}

#[test]
fn both_phases_export_a_model_and_head_that_extract_and_eval_read() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = tcdcn_finetune(&py, &tmp.path().join("art"));
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 24);
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("run"));
    let o = retrain(&finetune_args(s(&art), s(&mtfl), s(&cache), s(&out), "4"));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for line in ["phase 1 step 6/6", "phase 2 step 4/4", "test accuracy"] {
        assert!(text.contains(line), "no '{line}' in:\n{text}");
    }
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["plan"]["micro"], 4);
    assert_eq!(result["settings"]["distortions"], "flip,crop=10,brightness=10");
    let history = std::fs::read_to_string(out.join("history.csv")).unwrap();
    assert_eq!(history.lines().count(), 1 + 3 + 2, "{history}");

    assert_eq!(exported_confusion(tmp.path(), &out, &mtfl), result["test"]["confusion"], "eval of the exported head disagrees with finetune's own test scores");
}

/// The test confusion matrix of OUT/model.onnx + OUT/smile.head.onnx through `extract` and `eval`.
fn exported_confusion(tmp: &Path, out: &Path, mtfl: &Path) -> serde_json::Value {
    let features = tmp.join("features.h5");
    let _ = std::fs::remove_file(&features);
    let o = retrain(&["extract", "--model", s(&out.join("model.onnx")), "--mtfl", s(mtfl), "--split", "testing", "--out", s(&features), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json = tmp.join("eval.json");
    let o = retrain(&["eval", "--head", s(&out.join("smile.head.onnx")), "--cache", s(&features), "--json", s(&json)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    eval["metrics"]["confusion"].clone()
}

/// `retrain reproduce` reports every fine-tuning run of an attribute beside the study's second
/// approach, whatever its crop: fine-tuning chooses its crop on validation, apart from the
/// crops of the first approach's heads (`--crops original` here, a face-crop run).
#[test]
fn reproduce_reports_a_fine_tuning_run_whatever_its_crop() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = tcdcn_finetune(&py, &tmp.path().join("art"));
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 24);
    let (cache, runs, report) = (tmp.path().join("cache"), tmp.path().join("runs"), tmp.path().join("report"));
    let run = runs.join("smile-face");
    let mut args = finetune_args(s(&art), s(&mtfl), s(&cache), s(&run), "2");
    args.extend(["--crop", "face"]);
    let o = retrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut args = vec!["reproduce", "--mtfl", s(&mtfl), "--model", "onnx/tcdcn.onnx", "--crops", "original", "--attributes", "smile"];
    args.extend(["--cache-dir", s(&cache), "--finetune-runs", s(&runs), "--out", s(&report), "--quiet"]);
    let o = retrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(text.contains("| smile | face:3.2 |"), "the face-crop run is not in the fine-tuning table:\n{text}");
    assert!(text.contains("smile - face:3.2 crop - fine-tuned"), "its confusion matrix is not reported:\n{text}");
}

#[test]
fn phase_one_head_trained_on_standardised_bottlenecks_exports_with_the_statistics_folded_in() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = tcdcn_finetune(&py, &tmp.path().join("art"));
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 24);
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("run"));
    let mut args = vec!["finetune", "--artifacts", s(&art), "--model", "onnx/tcdcn.onnx", "--mtfl", s(&mtfl), "--attribute", "smile"];
    args.extend([
        "--phase1-steps",
        "20",
        "--phase1-lr",
        "0.01",
        "--phase2-steps",
        "0",
        "--threads",
        "1",
        "--cache-dir",
        s(&cache),
        "--out",
        s(&out),
        "--quiet",
    ]);
    let o = retrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["settings"]["phase1_standardized"], true);
    // phase 1 scored the test set on standardised rows; the exported network and head take raw
    // images, so they agree only if the statistics were folded into the kernel and bias right
    assert_eq!(exported_confusion(tmp.path(), &out, &mtfl), result["test"]["confusion"], "the folded head scores differently");
    // both classes predicted: a constant answer would agree whatever the kernel held
    let confusion: Vec<Vec<u64>> = serde_json::from_value(result["test"]["confusion"].clone()).unwrap();
    for class in 0..2 {
        assert!(confusion.iter().any(|row| row[class] > 0), "class {class} is never predicted: {confusion:?}");
    }
}

#[test]
fn training_from_a_layer_up_freezes_below_it_and_exports_the_whole_network() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = tmp.path().join("art");
    let o = Command::new(&py)
        .args(["scripts/make_finetune.py", "onnx/tcdcn.onnx", "--classes", "2", "--batch", "8", "--micro-batches", "8", "--train-from", "conv4"])
        .args(["--out", s(&art)])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 24);
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("run"));
    // no distortions: phase 2 reads the cached activations at the cut
    let mut args = vec!["finetune", "--artifacts", s(&art), "--model", "onnx/tcdcn.onnx", "--mtfl", s(&mtfl), "--attribute", "smile"];
    args.extend(["--phase1-steps", "6", "--phase2-steps", "4", "--eval-every", "2", "--threads", "1"]);
    args.extend(["--cache-dir", s(&cache), "--out", s(&out), "--quiet", "--train-from", "conv4"]);
    let o = retrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("phase 2 step 4/4"), "{}", stdout(&o));
    assert!(stderr(&o).contains("conv4 and up (6 parameter tensors) on the cached 'pool3' tensor"), "{}", stderr(&o));

    // phase 2 trained conv4 and above, nothing below the cut
    let trained: Vec<String> = Checkpoint::read(&out.join("phase2/last.h5")).unwrap().tensors.iter().map(|t| t.name.clone()).collect();
    for name in ["conv4/kernel", "bottleneck/kernel", "Logits/kernel"] {
        assert!(trained.iter().any(|t| t == name), "{name} did not train: {trained:?}");
    }
    assert!(!trained.iter().any(|t| t.starts_with("conv3")), "a frozen layer trained: {trained:?}");
    // the exported network (cached cut + trained top, joined) gives finetune's own test scores
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["settings"]["train_from"], "conv4");
    assert_eq!(exported_confusion(tmp.path(), &out, &mtfl), result["test"]["confusion"], "the exported model disagrees with finetune's scores");

    // a layer the artifacts were not made for is refused with the command that makes them
    args.retain(|a| *a != "conv4");
    args.push("conv3");
    let o = retrain(&args);
    assert!(!o.status.success() && stderr(&o).contains("--train-from conv3"), "{}", stderr(&o));
}

#[test]
fn resumed_fine_tuning_equals_continuous_fine_tuning() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = tcdcn_finetune(&py, &tmp.path().join("art"));
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 24);
    let cache = tmp.path().join("cache");
    let (straight, resumed) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    let run = |out: &Path, steps: &str, resume: Option<PathBuf>| {
        let mut args = finetune_args(s(&art), s(&mtfl), s(&cache), s(out), steps);
        let resume = resume.map(|p| p.to_str().unwrap().to_string());
        if let Some(r) = &resume {
            args.extend(["--resume", r.as_str()]);
        }
        let o = retrain(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    run(&straight, "4", None);
    run(&resumed, "2", None);
    let o = run(&resumed, "4", Some(resumed.join("phase2/last.h5")));
    assert!(!stdout(&o).contains("phase 1 step"), "resume repeated phase 1: {}", stdout(&o));
    assert_eq!(Checkpoint::read(&straight.join("phase2/last.h5")).unwrap().step, 4);
    same_fine_tuning_run(&straight, &resumed);

    let mut args = finetune_args(s(&art), s(&mtfl), s(&cache), s(&resumed), "6");
    let last = resumed.join("phase2/last.h5");
    args.retain(|a| *a != "--flip");
    args.extend(["--resume", s(&last)]);
    let o = retrain(&args);
    assert!(!o.status.success() && stderr(&o).contains("other settings"), "{}", stderr(&o));
}

#[test]
fn sigkill_during_fine_tuning_then_resume_equals_continuous_fine_tuning() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = tcdcn_finetune(&py, &tmp.path().join("art"));
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 24);
    let cache = tmp.path().join("cache");
    let args = |out: &Path| {
        let mut a: Vec<String> = finetune_args(s(&art), s(&mtfl), s(&cache), s(out), "4").into_iter().map(String::from).collect();
        let every = a.iter().position(|w| w == "--eval-every").unwrap() + 1;
        a[every] = "1".into(); // a checkpoint after every step
        a
    };
    let straight = tmp.path().join("straight");
    let o = retrain(&args(&straight).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    // 6 phase-1 steps, then 4 of phase 2. Each run resumes from the newest last.h5 and is
    // killed the hit-th time it passes a point (steps count from 1 in every run).
    let killed = tmp.path().join("killed");
    let plan: [(&str, u64); 7] =
        [("step", 2), ("checkpoint-partial", 2), ("step", 3), ("checkpoint-written", 1), ("step", 2), ("checkpoint-partial", 2), ("step", 2)];
    let mut kills = Vec::new();
    for (point, hit) in plan {
        let mut a = args(&killed);
        let newest = ["phase2/last.h5", "phase1/last.h5"].map(|f| killed.join(f)).into_iter().find(|p| p.exists());
        if let Some(p) = &newest {
            a.extend(["--resume".to_string(), p.display().to_string()]);
        }
        let o = retrain_fault(&a.iter().map(String::as_str).collect::<Vec<_>>(), point, hit, "kill");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&o.status), Some(libc::SIGKILL), "not killed at {point}:{hit}: {}", stderr(&o));
        let on_disk = |phase: u8| Checkpoint::read(&killed.join(format!("phase{phase}/last.h5"))).ok().map(|c| (phase, c.step));
        kills.push(on_disk(2).or_else(|| on_disk(1)).expect("a killed run left a damaged checkpoint"));
    }
    tell(&format!("finetune kill points (phase, step on disk): {kills:?}"));
    let interior: std::collections::BTreeSet<(u8, u64)> = kills.iter().copied().filter(|&k| k != (2, 4)).collect();
    assert!(interior.len() >= 5, "too few distinct interior kill points: {kills:?}");
    let mut a = args(&killed);
    a.extend(["--resume".to_string(), killed.join("phase2/last.h5").display().to_string()]);
    let o = retrain(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    same_fine_tuning_run(&straight, &killed);
}

#[test]
fn wrong_model_batch_micro_batch_or_checkpoint_is_refused_before_training() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let art = tcdcn_finetune(&py, &tmp.path().join("art"));
    let mtfl = tiny_mtfl(&tmp.path().join("mtfl"), 24);
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("run");
    let foreign = tmp.path().join("foreign.h5");
    let base = finetune_args(s(&art), s(&mtfl), s(&cache), s(&out), "2");
    let refused = |args: Vec<&str>, expected: &str| {
        let o = retrain(&args);
        assert!(!o.status.success() && stderr(&o).contains(expected), "expected '{expected}':\n{}", stderr(&o));
        assert!(!out.join("history.csv").exists(), "training started before the refusal");
    };
    let with = |from: &str, to: &'static str| base.iter().map(|a| if *a == from { to } else { a }).collect::<Vec<&str>>();
    refused(with("onnx/tcdcn.onnx", "onnx/cascade_cnn.onnx"), "is not the model the fine-tuning artifacts");
    refused([base.clone(), vec!["--batch", "16"]].concat(), "were made for batch 8");
    refused(with("4", "3"), "--micro-batch 3");
    make_artifacts(&py, &tmp.path().join("other"), 8, "adam");
    std::fs::copy(tmp.path().join("other/init.h5"), &foreign).unwrap();
    refused([base.clone(), vec!["--resume", s(&foreign)]].concat(), "belongs to other training artifacts");
}
