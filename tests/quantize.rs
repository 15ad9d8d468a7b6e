//! `retrain quantize`: ONNX Runtime's int8 tool on a real backbone, its result a backbone like
//! any other for `extract`.

mod common;

use std::path::Path;

use common::{extract_folders, folder_dataset, pooled_backbone, python, retrain, stderr, stdout, test_model};
use retrain::cache::Cache;
use retrain::model::Model;
use retrain::runtime::{Device, SessionConfig};

fn quantize(args: &[&str], python: &Path) -> std::process::Output {
    quantize_model(&test_model("tiny_cnn.onnx"), args, python)
}

fn quantize_model(model: &Path, args: &[&str], python: &Path) -> std::process::Output {
    let mut all = vec!["quantize", "--model", model.to_str().unwrap(), "--python", python.to_str().unwrap()];
    all.extend(args);
    retrain(&all)
}

/// Mean and smallest cosine between the rows of two caches of the same images.
fn cosines(a: &Cache, b: &Cache) -> (f64, f64) {
    assert_eq!(a.paths, b.paths);
    let cos: Vec<f64> = a
        .features
        .rows()
        .into_iter()
        .zip(b.features.rows())
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y.iter()).map(|(p, q)| *p as f64 * *q as f64).sum();
            let norm = |v: ndarray::ArrayView1<f32>| v.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            dot / (norm(x) * norm(y))
        })
        .collect();
    (cos.iter().sum::<f64>() / cos.len() as f64, cos.iter().cloned().fold(f64::INFINITY, f64::min))
}

#[test]
fn a_calibrated_int8_backbone_extracts_features_close_to_its_original() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    folder_dataset(&images, &["a", "b"], 12);
    let int8 = dir.path().join("tiny.int8.onnx");
    let o = quantize(&["--calibrate", "--folders", images.to_str().unwrap(), "--images", "16", "--out", int8.to_str().unwrap()], &py);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("static int8") && stdout(&o).contains("from 16 images"), "{}", stdout(&o));

    // The description came along, with how the model was made; the graph has int8 weights.
    let model = Model::load(&int8, &SessionConfig::new(Device::Cpu), None).unwrap();
    let original = Model::load(&test_model("tiny_cnn.onnx"), &SessionConfig::new(Device::Cpu), None).unwrap();
    assert_eq!((model.input.clone(), model.output_name.clone()), (original.input.clone(), original.output_name.clone()));
    assert!(model.description.quantized.as_ref().unwrap().contains("QDQ"), "{:?}", model.description);
    assert_ne!(model.sha256, original.sha256);
    let graph = std::fs::read(&int8).unwrap();
    let needle = b"QuantizeLinear";
    assert!(graph.windows(needle.len()).any(|w| w == needle), "no QuantizeLinear node in the int8 graph");

    let (fp32_cache, int8_cache) = (dir.path().join("fp32.h5"), dir.path().join("int8.h5"));
    assert!(extract_folders(&images, &fp32_cache, &[]).status.success());
    let o = retrain(&["extract", "--quiet", "--model", int8.to_str().unwrap(), "--folders", images.to_str().unwrap(), "--out", int8_cache.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (fp32, int8) = (Cache::read(&fp32_cache).unwrap(), Cache::read(&int8_cache).unwrap());
    assert_ne!(fp32.model_sha256, int8.model_sha256, "the int8 cache is its own");
    assert_ne!(fp32.features, int8.features, "quantisation changed nothing: was the fp32 model copied?");
    let (mean, min) = cosines(&fp32, &int8);
    assert!(mean >= 0.99 && min >= 0.95, "int8 features: cosine to fp32 mean {mean:.4}, min {min:.4}");
}

/// ONNX Runtime's int8 AveragePool is slow, so the tool moves a pool after the 1x1 Conv it
/// feeds (where it pools fewer channels), but only where that changes nothing: a pool that
/// counts the padding would scale the Conv's bias at the border, and stays where it is.
#[test]
fn an_average_pool_moves_after_its_pointwise_conv_only_where_that_is_exact() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    folder_dataset(&images, &["a", "b"], 8);
    for (count_include_pad, moved) in [(false, 1), (true, 0)] {
        let model = pooled_backbone(&dir.path().join(format!("pooled-{count_include_pad}.onnx")), 3, count_include_pad);
        let int8 = dir.path().join(format!("pooled-{count_include_pad}.int8.onnx"));
        let (m, i, o) = (model.to_str().unwrap(), images.to_str().unwrap(), int8.to_str().unwrap());
        let run = quantize_model(&model, &["--calibrate", "--folders", i, "--images", "16", "--out", o], &py);
        assert!(run.status.success(), "{}", stderr(&run));
        assert!(stdout(&run).contains(&format!("; {moved} AveragePool moved after the 1x1 Conv it feeds")), "{}", stdout(&run));

        let caches = [dir.path().join(format!("fp32-{count_include_pad}.h5")), dir.path().join(format!("int8-{count_include_pad}.h5"))];
        for (backbone, cache) in [(m, &caches[0]), (o, &caches[1])] {
            let e = retrain(&["extract", "--quiet", "--model", backbone, "--folders", i, "--out", cache.to_str().unwrap()]);
            assert!(e.status.success(), "{}", stderr(&e));
        }
        let (mean, min) = cosines(&Cache::read(&caches[0]).unwrap(), &Cache::read(&caches[1]).unwrap());
        assert!(mean >= 0.99 && min >= 0.95, "count_include_pad {count_include_pad}: cosine to fp32 mean {mean:.4}, min {min:.4}");
    }
}

#[test]
fn dynamic_quantisation_needs_no_images_and_static_needs_them() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dynamic.onnx");
    let o = quantize(&["--out", out.to_str().unwrap()], &py);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("dynamic int8"), "{}", stdout(&o));
    assert!(Model::load(&out, &SessionConfig::new(Device::Cpu), None).unwrap().description.quantized.unwrap().contains("dynamic"));

    let o = quantize(&["--calibrate", "--out", dir.path().join("x.onnx").to_str().unwrap()], &py);
    assert!(!o.status.success() && stderr(&o).contains("go together"), "{}", stderr(&o));
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("a")).unwrap();
    std::fs::write(empty.join("a/broken.jpg"), b"not a jpeg").unwrap();
    let o = quantize(&["--calibrate", "--folders", empty.to_str().unwrap(), "--out", dir.path().join("y.onnx").to_str().unwrap()], &py);
    assert!(!o.status.success() && stderr(&o).contains("none of the 1 calibration images") && stderr(&o).contains("broken.jpg"), "{}", stderr(&o));
    assert!(!dir.path().join("y.onnx").exists());
}
