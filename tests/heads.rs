//! Head training and evaluation on synthetic features in real HDF5 caches; heads run in ONNX
//! Runtime exactly as `retrain eval` runs them.

mod common;

use std::path::Path;

use common::{correlated_cache, python, synthetic_cache};
use retrain::cache::Cache;
use retrain::eval;
use retrain::head::linfa::Precision;
use retrain::head::onnx::HeadFile;
use retrain::head::{self, history_path, ClassWeight, HeadOptions, Solver, Trained};
use retrain::runtime::{Device, SessionConfig};

fn cpu() -> SessionConfig {
    SessionConfig { intra_threads: Some(1), ..SessionConfig::new(Device::Cpu) }
}

fn train(cache: &Path, opts: &HeadOptions) -> anyhow::Result<Trained> {
    head::train(&Cache::read(cache)?, cache, opts, &mut |_| {})
}

fn quick_sgd(attribute: &str) -> HeadOptions {
    let mut opts = HeadOptions::new(attribute, Solver::Sgd);
    opts.sgd.steps = 500;
    opts
}

#[test]
fn both_solvers_learn_and_the_onnx_head_computes_what_was_trained() {
    let dir = tempfile::tempdir().unwrap();
    let train_cache = synthetic_cache(&dir.path().join("train.h5"), 800, 16, 1.5, 0.5, 1);
    let test_cache = synthetic_cache(&dir.path().join("test.h5"), 400, 16, 1.5, 0.5, 2);
    for opts in [HeadOptions::new("gender", Solver::Linfa), quick_sgd("gender")] {
        let trained = train(&train_cache, &opts).unwrap();
        let path = dir.path().join(format!("gender-{}.onnx", opts.solver.name()));
        trained.head.save(&path, &trained.curve).unwrap();
        let e = eval::evaluate(&path, &test_cache, &cpu()).unwrap();
        // Two unit-variance classes 3 standard deviations apart: the Bayes accuracy is 93.3%.
        assert!(e.metrics.accuracy > 0.90, "{}: test accuracy {}", opts.solver.name(), e.metrics.accuracy);
        assert_eq!(e.metrics.rows, 400);
        assert_eq!(e.metrics.labels, vec!["male", "female"]);
        // ONNX Runtime on the saved graph == the trained weights applied in Rust.
        let test = Cache::read(&test_cache).unwrap();
        let rust = trained.head.probabilities(test.features.view());
        for (i, p) in rust.rows().into_iter().enumerate() {
            for (k, &v) in p.iter().enumerate() {
                assert!((v - e.predictions.row(0, i)[k]).abs() < 1e-5, "row {i} class {k}: {v} vs {:?}", e.predictions.row(0, i));
            }
        }
    }
}

#[test]
fn the_seed_decides_the_head_and_is_stored_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("train.h5"), 300, 8, 1.0, 0.5, 3);
    let with_seed = |seed| train(&cache, &HeadOptions { seed, ..quick_sgd("smile") }).unwrap();
    let (a, b, c) = (with_seed(7), with_seed(7), with_seed(8));
    assert_eq!(a.head.weights, b.head.weights);
    assert_eq!(a.curve, b.curve);
    assert_ne!(a.head.weights, c.head.weights);

    let path = dir.path().join("smile.onnx");
    a.head.save(&path, &a.curve).unwrap();
    let info = HeadFile::read(&path).unwrap().info;
    assert_eq!((info.seed, info.solver, info.attribute.as_str()), (7, Solver::Sgd, "smile"));
    assert_eq!(info.validation_percent, 10.0);
    assert_eq!(info.train_rows + info.validation_rows, 300);
    let history: serde_json::Value = serde_json::from_slice(&std::fs::read(history_path(&path)).unwrap()).unwrap();
    assert_eq!(history["head"]["seed"], 7);
    assert_eq!(history["curve"].as_array().unwrap().len(), 50, "500 steps, a point every 10");
    assert_eq!(history["curve"][49]["step"], 500);
}

#[test]
fn balanced_class_weights_rescue_the_minority_class_with_either_solver() {
    let dir = tempfile::tempdir().unwrap();
    let train_cache = synthetic_cache(&dir.path().join("train.h5"), 1000, 4, 0.6, 0.9, 4);
    let test_cache = synthetic_cache(&dir.path().join("test.h5"), 1000, 4, 0.6, 0.5, 5);
    for base in [quick_sgd("gender"), HeadOptions::new("gender", Solver::Linfa)] {
        let female_recall = |class_weight| {
            let trained = train(&train_cache, &HeadOptions { class_weight, ..base.clone() }).unwrap();
            assert_eq!(trained.head.info.class_weight, class_weight);
            let path = dir.path().join(format!("{}-{class_weight:?}.onnx", base.solver.name()));
            trained.head.save(&path, &trained.curve).unwrap();
            eval::evaluate(&path, &test_cache, &cpu()).unwrap().metrics.classes[1].recall.unwrap()
        };
        let (plain, balanced) = (female_recall(ClassWeight::None), female_recall(ClassWeight::Balanced));
        eprintln!("{}: female recall {plain:.3} unweighted, {balanced:.3} balanced", base.solver.name());
        assert!(balanced > plain + 0.2, "{}: female recall {plain} unweighted, {balanced} balanced", base.solver.name());
    }
}

#[test]
fn eval_names_head_cache_and_shapes_when_feature_sizes_differ() {
    let dir = tempfile::tempdir().unwrap();
    let cache16 = synthetic_cache(&dir.path().join("wide.h5"), 100, 16, 1.0, 0.5, 7);
    let cache5 = synthetic_cache(&dir.path().join("narrow.h5"), 100, 5, 1.0, 0.5, 8);
    let trained = train(&cache16, &HeadOptions::new("gender", Solver::Linfa)).unwrap();
    let head = dir.path().join("gender.onnx");
    trained.head.save(&head, &[]).unwrap();
    let err = format!("{:#}", eval::evaluate(&head, &cache5, &cpu()).err().unwrap());
    assert!(err.contains("takes 16 features") && err.contains("narrow.h5") && err.contains("gender.onnx") && err.contains("[100, 5]"), "{err}");
}

#[test]
fn unknown_attributes_are_refused_with_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cache = synthetic_cache(&dir.path().join("train.h5"), 50, 4, 1.0, 0.5, 9);
    let err = format!("{:#}", train(&cache, &HeadOptions::new("age", Solver::Sgd)).err().unwrap());
    assert!(err.contains("'age'") && err.contains("gender, smile, glasses, pose"), "{err}");
}

/// linfa fits in f32 what it fits in f64. The features share one factor, so L-BFGS's first
/// step (the whole gradient) spreads the logits by orders of magnitude: linfa-logistic 0.8.1's
/// log-sum-exp (the whole matrix's largest logit, sums clamped at 1e-15) then gave wrong losses,
/// and its f32 fit stopped at W = 0 (vendor/linfa-logistic/PATCHES.md).
#[test]
fn linfa_fits_in_f32_what_it_fits_in_f64() {
    let dir = tempfile::tempdir().unwrap();
    let train_cache = correlated_cache(&dir.path().join("train.h5"), 2000, 256, 12);
    let test_cache = correlated_cache(&dir.path().join("test.h5"), 2000, 256, 13);
    let accuracy = |precision| {
        let mut opts = HeadOptions::new("gender", Solver::Linfa);
        opts.linfa.precision = precision;
        let head = dir.path().join(format!("{precision:?}.onnx"));
        train(&train_cache, &opts).unwrap().head.save(&head, &[]).unwrap();
        eval::evaluate(&head, &test_cache, &cpu()).unwrap().metrics.accuracy
    };
    let (single, double) = (accuracy(Precision::F32), accuracy(Precision::F64));
    assert!(double >= 0.75, "f64 fit: accuracy {double}");
    assert!((single - double).abs() <= 0.005, "f32 fit: accuracy {single}, f64 {double}");
}

/// linfa's head against scikit-learn's LogisticRegression on the same cache (the issue asks
/// for the same within 0.5 points on MTFL; here on a synthetic cache with overlap).
#[test]
fn linfa_agrees_with_scikit_learn() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let train_cache = synthetic_cache(&dir.path().join("train.h5"), 2000, 32, 0.8, 0.6, 10);
    let test_cache = synthetic_cache(&dir.path().join("test.h5"), 2000, 32, 0.8, 0.6, 11);
    for (class_weight, name) in [(ClassWeight::None, "none"), (ClassWeight::Balanced, "balanced")] {
        let opts = HeadOptions { class_weight, ..HeadOptions::new("gender", Solver::Linfa) };
        let trained = train(&train_cache, &opts).unwrap();
        let head = dir.path().join(format!("gender-{name}.onnx"));
        trained.head.save(&head, &[]).unwrap();
        let ours = eval::evaluate(&head, &test_cache, &cpu()).unwrap().metrics;
        let out = std::process::Command::new(&python)
            .args(["tests/support/sklearn_head.py", "--attribute", "gender", "--c", &opts.linfa.c.to_string(), "--class-weight", name, "--train"])
            .arg(&train_cache)
            .arg("--test")
            .arg(&test_cache)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let sklearn: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let theirs = sklearn["accuracy"].as_f64().unwrap();
        assert!((ours.accuracy - theirs).abs() <= 0.005, "{name}: linfa {}, scikit-learn {theirs}", ours.accuracy);
        let female_recall = sklearn["classes"][1]["recall"].as_f64().unwrap();
        let ours_recall = ours.classes[1].recall.unwrap();
        assert!((ours_recall - female_recall).abs() <= 0.01, "{name}: female recall linfa {ours_recall}, scikit-learn {female_recall}");
    }
}

/// `train-head --attribute all`: a head per attribute on one standardisation in one call;
/// `eval` with every head scores each (balanced accuracy and per-class recall beside
/// accuracy), writes them as one JSON list and one predictions table; balanced class weights
/// lift the rare classes of the imbalanced attributes.
#[test]
fn every_attribute_from_one_call_is_scored_with_its_balanced_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let train_cache = common::synthetic_attributes_cache(&dir.path().join("train.h5"), 1500, 8, 1);
    let test_cache = common::synthetic_attributes_cache(&dir.path().join("test.h5"), 600, 8, 2);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let train_all = |out: &Path, weight: &str| {
        let o =
            common::retrain(&["train-head", "--cache", &s(&train_cache), "--attribute", "all", "--solver", "sgd", "--class-weight", weight, "--out", &s(out)]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        retrain::dataset::MTFL_ATTRIBUTES.map(|a| out.join(format!("{a}.onnx")))
    };
    let heads = train_all(&dir.path().join("plain"), "none");
    let infos: Vec<_> = heads.iter().map(|h| HeadFile::read(h).unwrap()).collect();
    assert_eq!(infos.iter().map(|h| h.info.attribute.as_str()).collect::<Vec<_>>(), retrain::dataset::MTFL_ATTRIBUTES);
    // one standardisation for all four: the same mean and scale in every head
    let trained: Vec<Trained> =
        infos.iter().map(|h| train(&train_cache, &HeadOptions { seed: h.info.seed, ..quick_sgd(&h.info.attribute) }).unwrap()).collect();
    assert!(trained.windows(2).all(|w| w[0].head.standardizer == w[1].head.standardizer));

    let json = dir.path().join("eval/scores.json");
    let predictions = dir.path().join("eval/predictions.csv");
    let mut args = vec!["eval".to_string(), "--cache".into(), s(&test_cache), "--json".into(), s(&json), "--predictions".into(), s(&predictions)];
    args.extend(heads.iter().flat_map(|h| ["--head".to_string(), s(h)]));
    let o = common::retrain(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", common::stderr(&o));
    let table = common::stdout(&o);
    for a in retrain::dataset::MTFL_ATTRIBUTES {
        assert!(table.contains(&format!("| {a} | sgd | 600 |")), "{table}");
    }
    let scores: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(scores.len(), 4);
    for (a, e) in retrain::dataset::MTFL_ATTRIBUTES.iter().zip(&scores) {
        let m = &e["metrics"];
        let recalls: Vec<f64> = m["classes"].as_array().unwrap().iter().map(|c| c["recall"].as_f64().unwrap()).collect();
        let mean = recalls.iter().sum::<f64>() / recalls.len() as f64;
        assert!((m["balanced_accuracy"].as_f64().unwrap() - mean).abs() < 1e-12, "{a}: {m}");
        if ["gender", "smile"].contains(a) {
            assert!(m["accuracy"].as_f64().unwrap() > 0.8, "{a}: two standard deviations between the classes: {m}");
        }
        assert!(dir.path().join(format!("eval/scores-{a}.png")).exists());
    }
    let csv = std::fs::read_to_string(&predictions).unwrap();
    assert!(csv.lines().next().unwrap().contains("p_pose_right_profile") && csv.lines().count() == 601, "{}", &csv[..200]);

    // balanced weights: the rare classes of glasses and pose are found more often
    let weighted = train_all(&dir.path().join("balanced"), "balanced");
    let balanced_accuracy = |head: &Path| eval::evaluate(head, &test_cache, &cpu()).unwrap().metrics.balanced_accuracy;
    for k in [2, 3] {
        let (plain, balanced) = (balanced_accuracy(&heads[k]), balanced_accuracy(&weighted[k]));
        eprintln!("{}: balanced accuracy {plain:.3} -> {balanced:.3} with balanced class weights", infos[k].info.attribute);
        assert!(balanced > plain + 0.05, "{}: balanced accuracy {plain} -> {balanced} with balanced class weights", infos[k].info.attribute);
    }
}

/// A head file is reusable only for its own recipe: the same cache contents, attribute, seed
/// and solver settings.
#[test]
fn a_head_is_reused_only_for_the_recipe_it_was_made_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = synthetic_cache(&dir.path().join("train.h5"), 300, 8, 1.0, 0.5, 3);
    let cache = Cache::read(&path).unwrap();
    let opts = quick_sgd("gender");
    let head_path = dir.path().join("gender.onnx");
    assert!(head::reuse::reusable(&head_path, &cache, &opts).is_none(), "no file yet");
    let trained = train(&path, &opts).unwrap();
    trained.head.save(&head_path, &trained.curve).unwrap();
    assert!(head::reuse::reusable(&head_path, &cache, &opts).is_some());
    let mut fewer_steps = quick_sgd("gender");
    fewer_steps.sgd.steps = 400;
    let other_cache = Cache::read(&synthetic_cache(&dir.path().join("other.h5"), 301, 8, 1.0, 0.5, 3)).unwrap();
    for (what, cache, opts) in [
        ("seed", &cache, HeadOptions { seed: 1, ..quick_sgd("gender") }),
        ("attribute", &cache, quick_sgd("smile")),
        ("solver settings", &cache, fewer_steps),
        ("class weights", &cache, HeadOptions { class_weight: ClassWeight::Balanced, ..quick_sgd("gender") }),
        ("cache contents", &other_cache, quick_sgd("gender")),
    ] {
        assert!(head::reuse::reusable(&head_path, cache, &opts).is_none(), "reused despite another {what}");
    }
}
