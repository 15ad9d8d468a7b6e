//! The extraction job end to end: real JPEG files, the real ONNX Runtime, real HDF5 files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{extract_folders, folder_dataset, h5py_eval, repo, retrain, same_rows, stderr, test_model};
use retrain::cache::Cache;
use retrain::model::Model;
use retrain::runtime::{Device, SessionConfig};

fn cpu() -> SessionConfig {
    SessionConfig { intra_threads: Some(1), ..SessionConfig::new(Device::Cpu) }
}

// ---- .npy for the Python cross-check -------------------------------------------------------

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", dims.join(", "));
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

fn read_npy_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + header_len]);
    assert!(header.contains("'<f4'"), "{header}");
    bytes[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn python_output(model: &Path, input: &[f32], shape: &[usize], output: &str) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    write_npy(&x, shape, input);
    let script = repo().join("scripts/ort_reference.py");
    let st = Command::new(common::python()).arg(script).arg(model).arg(&x).arg(output).arg(&y).status().unwrap();
    assert!(st.success());
    read_npy_f32(&y)
}

#[test]
fn model_output_equals_python_onnxruntime() {
    for (name, n) in [("tiny_cnn.onnx", 3usize), ("tiny_cnn_nchw.onnx", 2)] {
        let path = test_model(name);
        let mut model = Model::load(&path, &cpu(), None).unwrap();
        let shape = model.input.batch_shape(n);
        let input: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let ours = model.run(input.clone(), n).unwrap();
        let theirs = python_output(&path, &input, &shape, &model.output_name);
        assert_eq!(ours.len(), theirs.len());
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs() / (1e-6 + b.abs())).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{name}: largest relative difference {worst}");
    }
}

#[test]
fn description_comes_from_metadata_or_sidecar() {
    let m = Model::load(&test_model("tiny_cnn_nchw.onnx"), &cpu(), None).unwrap();
    assert_eq!((m.input.height, m.input.width, m.output_name.as_str(), m.output_dim), (24, 24, "bottleneck", 16));
    assert_eq!(m.input.layout, retrain::preprocess::Layout::Nchw);
    let m = Model::load(&test_model("no_metadata.onnx"), &cpu(), None).unwrap();
    assert_eq!((m.input_name.as_str(), m.output_name.as_str(), m.input.height), ("pixels", "embedding", 16));
    let e = match Model::load(&test_model("not_a_model.onnx"), &cpu(), None) {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("garbage loaded as a model"),
    };
    assert!(e.contains("not_a_model.onnx"), "{e}");
    let e = match Model::load(&test_model("tiny_cnn.onnx"), &cpu(), Some("nope")) {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("missing output accepted"),
    };
    assert!(e.contains("no output 'nope'") && e.contains("bottleneck"), "{e}");
}

#[test]
fn cache_round_trip_matches_the_model_and_reads_in_h5py() {
    let dir = tempfile::tempdir().unwrap();
    let files = folder_dataset(&dir.path().join("img"), &["cat", "dog"], 5);
    let out = dir.path().join("c.h5");
    let o = extract_folders(&dir.path().join("img"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("CPUExecutionProvider"), "the provider must be printed: {}", stderr(&o));
    let c = Cache::read(&out).unwrap();
    assert_eq!(c.features.dim(), (10, 16));
    assert_eq!(c.paths[0], "cat/img000.jpg");
    assert_eq!(c.labels.column(0).to_vec(), vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
    assert_eq!(c.class_names, vec!["cat", "dog"]);
    assert!(c.landmarks.iter().all(|v| v.is_nan()));
    assert_eq!(c.source_index, (0..10).collect::<Vec<i64>>());

    // The cached row equals the model run directly on the same preprocessed image.
    let mut model = Model::load(&test_model("tiny_cnn.onnx"), &cpu(), None).unwrap();
    let pre = retrain::preprocess::Preprocess { crop: retrain::preprocess::Crop::Original, input: model.input.clone() };
    let sample = retrain::dataset::Sample { path: files[7].clone(), key: String::new(), labels: vec![], landmarks: None };
    let mut x = vec![0f32; model.input.image_len()];
    pre.load_into(&sample, model.input.filter().unwrap(), &mut x).unwrap();
    let direct = model.run(x, 1).unwrap();
    let cached = c.features.row(7).to_vec();
    let worst = direct.iter().zip(&cached).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "cached row differs from a direct run by {worst}");

    let text = h5py_eval(
        &out,
        &[
            "f['features'].shape",
            "f['features'].dtype",
            "f['features'].maxshape",
            "f['labels'].shape",
            "f['landmarks'].shape",
            "f['paths'][3].decode()",
            "sorted(f.attrs.keys())",
            "f.attrs['output']",
            "len(f.attrs['model_sha256'])",
        ],
    );
    for want in [
        "f['features'].shape = (10, 16)",
        "f['features'].dtype = float32",
        "f['features'].maxshape = (None, 16)",
        "f['labels'].shape = (10, 1)",
        "f['landmarks'].shape = (10, 10)",
        "f['paths'][3].decode() = cat/img003.jpg",
        "f.attrs['output'] = bottleneck",
        "len(f.attrs['model_sha256']) = 64",
    ] {
        assert!(text.contains(want), "h5py did not find `{want}` in:\n{text}");
    }
    for key in ["created", "model_sha256", "output", "preprocess", "tool_version"] {
        assert!(text.contains(&format!("'{key}'")), "attribute {key} missing:\n{text}");
    }
}

#[test]
fn a_stopped_run_resumes_without_recomputing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    folder_dataset(&img, &["a", "b", "c"], 7);
    let (whole, parts) = (dir.path().join("whole.h5"), dir.path().join("parts.h5"));
    assert!(extract_folders(&img, &whole, &[]).status.success());
    assert!(extract_folders(&img, &parts, &["--limit", "8"]).status.success());
    assert_eq!(Cache::read(&parts).unwrap().paths.len(), 8);
    let o = extract_folders(&img, &parts, &[]);
    assert!(o.status.success());
    assert!(common::stdout(&o).contains("wrote 13 rows") && common::stdout(&o).contains("(8 were already there)"), "{}", common::stdout(&o));
    same_rows(&whole, &parts);
    // Running again finds nothing to do.
    assert!(common::stdout(&extract_folders(&img, &parts, &[])).contains("wrote 0 rows"));
}

/// 300 pictures large enough that an extraction lasts long enough to be killed in the middle.
fn slow_dataset(img: &Path) {
    for c in ["x", "y"] {
        std::fs::create_dir_all(img.join(c)).unwrap();
        for i in 0..150u32 {
            common::picture(i, 480, 360).save(img.join(c).join(format!("{i:03}.jpg"))).unwrap();
        }
    }
}

fn spawn_extract(model: &Path, img: &Path, out: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(["extract", "--quiet", "--batch", "4", "--decode-threads", "1", "--model"])
        .arg(model)
        .arg("--folders")
        .arg(img)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_at_many_points_then_resume_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    slow_dataset(&img);
    let whole = dir.path().join("whole.h5");
    assert!(extract_folders(&img, &whole, &[]).status.success());
    let killed = dir.path().join("killed.h5");
    let model = test_model("tiny_cnn.onnx");
    // Kill the same extraction again and again at pseudo-random moments, each time resuming it.
    let mut kill_points = Vec::new();
    let mut delay = 37u64;
    for _ in 0..40 {
        let mut child = spawn_extract(&model, &img, &killed);
        delay = (delay * 7919 + 13) % 400;
        std::thread::sleep(std::time::Duration::from_millis(60 + delay));
        child.kill().unwrap(); // SIGKILL, or nothing if it already finished
        child.wait().unwrap();
        let rows = Cache::read(&killed).map(|c| c.paths.len()).unwrap_or(0);
        if rows == 300 {
            break;
        }
        if rows > 0 {
            kill_points.push(rows);
        }
    }
    eprintln!("killed at rows {kill_points:?}");
    assert!(kill_points.len() >= 3, "too few kills landed between the first and last batch: {kill_points:?}");
    let o = extract_folders(&img, &killed, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_rows(&whole, &killed);
}

#[test]
fn a_second_process_on_the_same_cache_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    slow_dataset(&img);
    let out = dir.path().join("busy.h5");
    let model = test_model("tiny_cnn.onnx");
    let mut first = spawn_extract(&model, &img, &out);
    while !out.exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let second = extract_folders(&img, &out, &[]);
    assert!(first.try_wait().unwrap().is_none(), "the first run ended before the second started; make the data set slower");
    assert!(!second.status.success());
    assert!(stderr(&second).contains("being written by another retrain process"), "{}", stderr(&second));
    assert!(first.wait().unwrap().success());
    let whole = dir.path().join("whole.h5");
    assert!(extract_folders(&img, &whole, &[]).status.success());
    same_rows(&whole, &out);
}

#[test]
fn a_cache_built_differently_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    folder_dataset(&img, &["a", "b"], 3);
    let out = dir.path().join("c.h5");
    assert!(extract_folders(&img, &out, &[]).status.success());
    let o = extract_folders(&img, &out, &["--crop", "nose"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("preprocess differs") && e.contains("c.h5") && e.contains("not reused"), "{e}");
    let o = extract_folders(&img, &out, &["--output", "logits"]);
    assert!(stderr(&o).contains("output differs"), "{}", stderr(&o));
    let nchw = test_model("tiny_cnn_nchw.onnx");
    let o = retrain(&["extract", "--quiet", "--model", nchw.to_str().unwrap(), "--folders", img.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(stderr(&o).contains("model_sha256 differs"), "{}", stderr(&o));
    assert_eq!(Cache::read(&out).unwrap().paths.len(), 6, "the refused runs must leave the file as it was");
}

#[test]
fn default_names_depend_on_model_and_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    folder_dataset(&img, &["a"], 2);
    let model = test_model("tiny_cnn.onnx");
    let run = |crop: &str| {
        let cache_dir = dir.path().join("cache");
        let o = retrain(&[
            "extract",
            "--quiet",
            "--model",
            model.to_str().unwrap(),
            "--folders",
            img.to_str().unwrap(),
            "--cache-dir",
            cache_dir.to_str().unwrap(),
            "--crop",
            crop,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    run("original");
    run("nose:20"); // no landmarks in class folders: every image is skipped, and the file says so
    let names: Vec<PathBuf> =
        std::fs::read_dir(dir.path().join("cache")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "h5")).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let sha = retrain::model::file_sha256(&model).unwrap();
    assert!(names.iter().all(|n| n.file_name().unwrap().to_string_lossy().contains(&sha[..12])));
    let skipped: usize = names.iter().map(|n| Cache::read(n).unwrap().skipped.len()).sum();
    assert_eq!(skipped, 2);
}

#[test]
fn real_mtfl_nose_crops_carry_labels_and_landmarks() {
    let Some(root) = common::shared_mtfl("real_mtfl_nose_crops_carry_labels_and_landmarks") else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.h5");
    let model = test_model("tiny_cnn.onnx");
    let o = retrain(&[
        "extract",
        "--quiet",
        "--model",
        model.to_str().unwrap(),
        "--mtfl",
        root.to_str().unwrap(),
        "--split",
        "training",
        "--crop",
        "nose",
        "--limit",
        "30",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = Cache::read(&out).unwrap();
    let d = retrain::dataset::mtfl::load(&root, retrain::dataset::mtfl::Split::Training).unwrap();
    assert_eq!(c.paths.len(), 30);
    for (i, s) in d.samples[..30].iter().enumerate() {
        assert_eq!(c.paths[i], s.key);
        assert_eq!(c.labels.row(i).to_vec(), s.labels);
        assert_eq!(c.landmarks[[i, 2]], s.landmarks.unwrap()[2]);
    }
    assert!(c.preprocess.contains("crop=nose:150"));
    assert_eq!(c.source, "mtfl:training");
}

#[test]
fn cuda_never_falls_back_to_cpu_silently() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    folder_dataset(&img, &["a"], 2);
    let out = dir.path().join("c.h5");
    let model = test_model("tiny_cnn.onnx");
    let cpu_lib = repo().join(".ort/cpu").join(retrain::runtime::ORT_LIBRARY);
    let o = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(["extract", "--quiet", "--device", "cuda", "--model"])
        .arg(&model)
        .arg("--folders")
        .arg(&img)
        .arg("--out")
        .arg(&out)
        .env("ORT_DYLIB_PATH", &cpu_lib)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("CUDA execution provider"), "{}", stderr(&o));
    assert!(!out.exists(), "nothing may be written when the requested device is unavailable");
    let o = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(["extract", "--model"])
        .arg(&model)
        .arg("--folders")
        .arg(&img)
        .env("ORT_DYLIB_PATH", dir.path().join("missing.so"))
        .output()
        .unwrap();
    assert!(stderr(&o).contains("ORT_DYLIB_PATH") && stderr(&o).contains("missing.so"), "{}", stderr(&o));
}
