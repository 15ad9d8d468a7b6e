//! `retrain reproduce --beyond` on generated data: heads for two backbones and two crops, a
//! real multi-task `retrain train` run found under --runs, the deployable model chosen on
//! validation alone and scored on the plain test photos as `retrain predict` scores them.

mod common;

use std::path::Path;

use common::{multitask_artifacts, python, retrain, stderr, synthetic_mtfl, tiny_backbone};
use retrain::head::onnx::HeadFile;
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `[backbone, crop]` of the head set whose heads' mean validation balanced accuracy is
/// highest among `eligible` crops, read from the head files themselves.
fn best_by_validation(report: &Value, eligible: &[&str]) -> (String, String) {
    let mut best = (f64::MIN, String::new(), String::new());
    for set in report["head_sets"].as_array().unwrap() {
        let crop = set["crop"].as_str().unwrap().to_string();
        if !eligible.contains(&crop.as_str()) {
            continue;
        }
        let heads = chosen_heads(set);
        let mean: f64 =
            heads.iter().map(|h| HeadFile::read(Path::new(h)).unwrap().info.validation_balanced_accuracy.unwrap()).sum::<f64>() / heads.len() as f64;
        println!("{} {crop}: mean validation balanced accuracy {mean}", set["backbone"]);
        if mean > best.0 {
            best = (mean, set["backbone"].as_str().unwrap().to_string(), crop);
        }
    }
    (best.1, best.2)
}

/// `backbone` with its convolution's weights on the red and green input channels set to zero.
fn blind_to_red_and_green(py: &Path, backbone: &Path) -> std::path::PathBuf {
    const SCRIPT: &str = r#"
import sys, onnx
from onnx import numpy_helper
m = onnx.load(sys.argv[1])
for t in m.graph.initializer:
    if t.name == "conv_w":
        w = numpy_helper.to_array(t).copy()
        w[:, :2] = 0
        t.CopyFrom(numpy_helper.from_array(w, "conv_w"))
onnx.save(m, sys.argv[1])
"#;
    let o = std::process::Command::new(py).args(["-c", SCRIPT, s(backbone)]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    backbone.to_path_buf()
}

/// The head files a set marks chosen, in attribute order.
fn chosen_heads(set: &Value) -> Vec<String> {
    let candidates = set["candidates"].as_array().unwrap();
    candidates.iter().filter(|c| c["chosen"].as_bool().unwrap()).map(|c| c["head"].as_str().unwrap().to_string()).collect()
}

/// Per set and attribute, exactly one of the eight recipes is chosen: the first of the highest
/// validation balanced accuracy.
fn check_recipe_choice(report: &Value, attributes: &[&str]) {
    for set in report["head_sets"].as_array().unwrap() {
        let candidates = set["candidates"].as_array().unwrap();
        for attribute in attributes {
            let of_attribute: Vec<&Value> = candidates.iter().filter(|c| c["attribute"] == *attribute).collect();
            assert_eq!(of_attribute.len(), 8, "eight recipes for {attribute}");
            let strengths: Vec<Option<f64>> = of_attribute.iter().map(|c| c["recipe"]["c"].as_f64()).collect();
            let linfa = [Some(0.01), Some(0.001), Some(0.1)];
            assert_eq!(strengths, [[None, None].as_slice(), &linfa, &linfa].concat(), "SGD twice, then linfa at three strengths twice");
            let weights: Vec<&str> = of_attribute.iter().map(|c| c["recipe"]["class_weight"].as_str().unwrap()).collect();
            assert_eq!(weights, ["none", "balanced", "none", "none", "none", "balanced", "balanced", "balanced"]);
            let score = |c: &Value| c["validation"]["balanced"].as_f64().unwrap();
            let best = of_attribute.iter().fold(of_attribute[0], |b, c| if score(c) > score(b) { c } else { b });
            let chosen: Vec<&&Value> = of_attribute.iter().filter(|c| c["chosen"].as_bool().unwrap()).collect();
            assert_eq!(chosen.len(), 1, "set {} {attribute}", set["backbone"]);
            assert_eq!(chosen[0]["head"], best["head"], "set {} {attribute}", set["backbone"]);
            of_attribute.iter().for_each(|c| check_evaluation_beside(c));
        }
        assert_eq!(chosen_heads(set).len(), attributes.len());
    }
}

/// The candidate's evaluation lies beside its head under the head's own stem (`linfa-c0.001`
/// and `linfa-c0.1` must not share one file) and holds the test accuracy the report gives.
fn check_evaluation_beside(candidate: &Value) {
    let head = Path::new(candidate["head"].as_str().unwrap());
    let evaluation = read_json(&head.with_extension("eval.json"));
    assert_eq!(evaluation["head_path"], candidate["head"]);
    assert_eq!(evaluation["metrics"]["accuracy"], candidate["test"]["accuracy"], "{}", head.display());
}

/// Accuracy of `predict`'s CSV on `attribute` against the MTFL annotations (codes 1 and 2 ->
/// the head's first and second label).
fn csv_accuracy(csv: &str, testing: &str, attribute: &str, column: usize, labels: [&str; 2]) -> f64 {
    let truth: std::collections::HashMap<&str, &str> = testing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0], f[11 + column])
        })
        .collect();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = header.iter().position(|h| *h == attribute).unwrap();
    let (mut right, mut n) = (0, 0);
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let expected = if truth[f[0]] == "1" { labels[0] } else { labels[1] };
        right += usize::from(f[at] == expected);
        n += 1;
    }
    right as f64 / n as f64
}

#[test]
fn beyond_reports_every_pipeline_and_deploys_what_validation_prefers() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mtfl = tmp.path().join("MTFL");
    synthetic_mtfl(&mtfl, 240, 120);
    // The first backbone cannot see the red and green channels that carry gender and smile:
    // validation must prefer the second although the first comes first.
    let blind = blind_to_red_and_green(&py, &tiny_backbone(&tmp.path().join("blind.onnx"), 1));
    let seeing = tiny_backbone(&tmp.path().join("seeing.onnx"), 2);
    let backbones = format!("{},{}", s(&blind), s(&seeing));
    let (cache, out, runs) = (tmp.path().join("cache"), tmp.path().join("beyond"), tmp.path().join("runs"));
    std::fs::create_dir_all(&runs).unwrap();
    let beyond = |crops: &str| {
        let args = ["reproduce", "--beyond", "--mtfl", s(&mtfl), "--model", &backbones, "--crops", crops, "--attributes", "gender,smile"];
        let o = retrain(&[&args[..], &["--runs", s(&runs), "--cache-dir", s(&cache), "--out", s(&out), "--decode-threads", "1", "--quiet"]].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        (read_json(&out.join("beyond.json")), stderr(&o))
    };

    // No landmark model: the face crop cannot run on plain photos, so only whole-image sets compete.
    let (first, log) = beyond("original,face:2");
    assert_eq!(log.matches("reused").count(), 0, "{log}");
    assert_eq!(first["head_sets"].as_array().unwrap().len(), 4, "two backbones x two crops");
    check_recipe_choice(&first, &["gender", "smile"]);
    let deployed = &first["deployed"];
    let (backbone, crop) = best_by_validation(&first, &["original"]);
    assert_eq!((backbone.as_str(), crop.as_str()), (s(&seeing), "original"));
    assert_eq!((deployed["backbone"].as_str().unwrap(), deployed["crop"].as_str().unwrap()), (backbone.as_str(), crop.as_str()));
    assert!(deployed["landmark_model"].is_null());

    // The deployable file on the plain photos: the same CSV and scores as `retrain predict`.
    let testing = std::fs::read_to_string(mtfl.join("testing.txt")).unwrap();
    let plain: String = testing.lines().map(|l| l.split_whitespace().next().unwrap().to_string() + "\n").collect();
    std::fs::write(mtfl.join("plain.txt"), plain).unwrap();
    let predicted = tmp.path().join("predict.csv");
    let o = retrain(&["predict", "--model", s(&out.join("model.onnx")), "--list", s(&mtfl.join("plain.txt")), "--out", s(&predicted), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(&predicted).unwrap();
    assert_eq!(csv, std::fs::read_to_string(out.join("model.predictions.csv")).unwrap());
    let plain_scores = deployed["plain"]["attributes"].as_array().unwrap();
    for (k, (attribute, labels)) in [("gender", ["male", "female"]), ("smile", ["smiling", "not_smiling"])].into_iter().enumerate() {
        assert_eq!(plain_scores[k][0], attribute);
        let reported = plain_scores[k][1]["accuracy"].as_f64().unwrap();
        assert!((reported - csv_accuracy(&csv, &testing, attribute, k, labels)).abs() < 1e-12, "{attribute}: {reported}");
        // Per class, as the study's tables: the diagonal over the rows is the same accuracy.
        let per_class = &plain_scores[k][1];
        let confusion: Vec<Vec<f64>> = serde_json::from_value(per_class["confusion"].clone()).unwrap();
        let rows: f64 = confusion.iter().flatten().sum();
        assert!(((confusion[0][0] + confusion[1][1]) / rows - reported).abs() < 1e-12, "{attribute}: {confusion:?}");
        assert_eq!(per_class["labels"], serde_json::json!(labels));
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("#### gender, plain photos") && report.contains("| **smiling** |"), "{report}");

    // A real multi-task run under --runs: its rows and landmarks are reported, and its model
    // places the crop, so every set competes. Nothing is refitted.
    let art = multitask_artifacts(&py, tmp.path());
    let run = runs.join("multitask");
    let train = ["train", "--artifacts", s(&art), "--mtfl", s(&mtfl), "--attribute", "all", "--epochs", "1", "--crop", "face", "--test-crop", "original"];
    let o = retrain(&[&train[..], &["--out", s(&run), "--threads", "1", "--quiet"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let (second, log) = beyond("original,face:2");
    assert_eq!(log.matches("reused: same cache contents and settings").count(), 64, "2 backbones x 2 crops x 2 attributes x 8 recipes: {log}");
    assert!(log.contains("0 new rows"), "{log}");
    let result = read_json(&run.join("result.json"));
    assert_eq!(result["kind"], "train", "result.json says which command wrote it");
    let val_gender = result["val_tasks"].as_array().unwrap().iter().find(|t| t["name"] == "gender").unwrap()["metrics"]["accuracy"].clone();
    let rows = second["rows"].as_array().unwrap();
    let row = rows.iter().find(|r| r["attribute"] == "gender" && r["configuration"].as_str().unwrap().contains("multitask")).expect("the run's gender row");
    assert_eq!(row["validation"]["accuracy"], val_gender);
    assert!(row["test"]["accuracy"].is_number(), "the run read the test list");
    let landmarks = &second["landmarks"].as_array().unwrap()[0];
    assert_eq!(landmarks["validation"], result["val_tasks"][0]["mean_error"]);
    let deployed = &second["deployed"];
    let (backbone, crop) = best_by_validation(&second, &["original", "face:2"]);
    assert_eq!((deployed["backbone"].as_str().unwrap(), deployed["crop"].as_str().unwrap()), (backbone.as_str(), crop.as_str()));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for heading in ["## gender", "## smile", "## Landmarks", "## The deployable model", "| the study (TensorFlow) | InceptionV3 fine-tuned | | 87.5% |"] {
        assert!(report.contains(heading), "report lacks '{heading}':\n{report}");
    }
    if crop != "original" {
        assert_eq!(deployed["landmark_model"].as_str().unwrap(), s(&run.join("model.onnx")));
    }

    // Face crops only: the deployable file must place its crop with the run's landmark model,
    // and still answer exactly as `retrain predict` does on the plain photos.
    let (third, log) = beyond("face:2");
    assert_eq!(log.matches("reused: same cache contents and settings").count(), 32, "2 backbones x 2 attributes x 8 recipes: {log}");
    assert!(!log.contains("reused: the same file on the same photos"), "another file was deployed: {log}");
    let deployed = &third["deployed"];
    assert_eq!((deployed["backbone"].as_str().unwrap(), deployed["crop"].as_str().unwrap()), (s(&seeing), "face:2"));
    assert_eq!(deployed["landmark_model"].as_str().unwrap(), s(&run.join("model.onnx")));
    let error = deployed["plain"]["landmark_error"].as_f64().expect("the file's landmarks scored");
    assert!(error.is_finite() && error > 0.0, "{error}");
    let o = retrain(&["predict", "--model", s(&out.join("model.onnx")), "--list", s(&mtfl.join("plain.txt")), "--out", s(&predicted), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&predicted).unwrap(), std::fs::read_to_string(out.join("model.predictions.csv")).unwrap());
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("placed by the landmark model"));

    // Nothing changed: the same file is exported, and its scores are read back, not predicted again.
    let (fourth, log) = beyond("face:2");
    assert!(log.contains("predict the plain test photos") && log.contains("reused: the same file on the same photos"), "{log}");
    assert_eq!(fourth["deployed"], third["deployed"]);
}
