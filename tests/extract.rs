//! The extraction job end to end: real JPEG files, the real ONNX Runtime, real HDF5 files.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{extract_folders, fault, folder_dataset, h5py_eval, python, repo, retrain, retrain_fault, same_cache_file, stderr, tell, test_model};
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

fn python_output(python: &Path, model: &Path, input: &[f32], shape: &[usize], output: &str) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    write_npy(&x, shape, input);
    let script = repo().join("tests/support/ort_reference.py");
    let st = Command::new(python).arg(script).arg(model).arg(&x).arg(output).arg(&y).status().unwrap();
    assert!(st.success());
    read_npy_f32(&y)
}

#[test]
fn model_output_equals_python_onnxruntime() {
    let Some(py) = python() else { return };
    for (name, n) in [("tiny_cnn.onnx", 3usize), ("tiny_cnn_nchw.onnx", 2)] {
        let path = test_model(name);
        let mut model = Model::load(&path, &cpu(), None).unwrap();
        let shape = model.input.batch_shape(n);
        let input: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let ours = model.run(input.clone(), n).unwrap();
        let theirs = python_output(&py, &path, &input, &shape, &model.output_name);
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
fn cache_round_trip_matches_the_model() {
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
    let sample = retrain::dataset::Sample { path: files[7].clone(), key: Default::default(), labels: vec![], landmarks: None };
    let mut x = vec![0f32; model.input.image_len()];
    pre.load_into(&sample, &mut x).unwrap();
    let direct = model.run(x, 1).unwrap();
    let cached = c.features.row(7).to_vec();
    let worst = direct.iter().zip(&cached).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "cached row differs from a direct run by {worst}");
}

#[test]
fn the_cache_reads_in_h5py() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    folder_dataset(&dir.path().join("img"), &["cat", "dog"], 5);
    let out = dir.path().join("c.h5");
    assert!(extract_folders(&dir.path().join("img"), &out, &[]).status.success());
    let text = h5py_eval(
        &py,
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
            "f['features'].fletcher32",
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
        "f['features'].fletcher32 = True",
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
    same_cache_file(&whole, &parts);
    // Running again finds nothing to do.
    assert!(common::stdout(&extract_folders(&img, &parts, &[])).contains("wrote 0 rows"));
}

/// 300 small pictures: 75 batches of 4.
fn many_images(img: &Path) {
    for c in ["x", "y"] {
        std::fs::create_dir_all(img.join(c)).unwrap();
        for i in 0..150u32 {
            common::picture(i, 48, 36).save(img.join(c).join(format!("{i:03}.jpg"))).unwrap();
        }
    }
}

/// Committed rows of a cache after a killed run; the file must always read back whole.
fn rows_on_disk(cache: &Path) -> usize {
    Cache::read(cache).map(|c| c.paths.len()).unwrap_or_else(|e| panic!("a killed run left an unreadable cache: {e:#}"))
}

#[test]
fn sigkill_at_many_points_then_resume_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    many_images(&img);
    let whole = dir.path().join("whole.h5");
    assert!(extract_folders(&img, &whole, &[]).status.success());
    let killed = dir.path().join("killed.h5");
    let args = |out: &Path| -> Vec<String> {
        let model = test_model("tiny_cnn.onnx");
        [
            "extract",
            "--quiet",
            "--batch",
            "4",
            "--decode-threads",
            "1",
            "--model",
            model.to_str().unwrap(),
            "--folders",
            img.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    // Each run is killed at the hit-th time it passes a point of its progress: after a commit,
    // between a batch's data and its flush, between the flush and the commit counters. A run
    // adds 4 rows per batch it commits before the kill.
    let plan: [(&str, u64, usize); 8] = [
        ("cache-committed", 3, 12),
        ("cache-data-flushed", 5, 16),
        ("cache-data-written", 2, 4),
        ("cache-committed", 7, 28),
        ("cache-data-written", 9, 32),
        ("cache-data-flushed", 1, 0),
        ("cache-committed", 1, 4),
        ("cache-data-flushed", 11, 40),
    ];
    let mut kill_points = Vec::new();
    for (point, hit, adds) in plan {
        let before = if killed.exists() { rows_on_disk(&killed) } else { 0 };
        let args = args(&killed);
        let o = retrain_fault(&args.iter().map(String::as_str).collect::<Vec<_>>(), point, hit, "kill");
        assert_eq!(o.status.signal(), Some(libc::SIGKILL), "the run was not killed at {point}:{hit}: {}", stderr(&o));
        let rows = rows_on_disk(&killed);
        assert_eq!(rows, before + adds, "killed at {point}:{hit} with {before} rows on disk");
        kill_points.push(rows);
    }
    tell(&format!("extract kill points (rows committed): {kill_points:?}"));
    let interior: std::collections::BTreeSet<usize> = kill_points.iter().copied().filter(|&r| r > 0 && r < 300).collect();
    assert!(interior.len() >= 5, "too few distinct interior kill points: {kill_points:?}");
    let o = extract_folders(&img, &killed, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_cache_file(&whole, &killed);
}

#[test]
fn a_second_process_on_the_same_cache_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    many_images(&img);
    let out = dir.path().join("busy.h5");
    let model = test_model("tiny_cnn.onnx");
    // The first run freezes itself after its second commit, holding the cache open.
    let (key, value) = fault("cache-committed", 2, "sigstop");
    let mut first = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(["extract", "--quiet", "--batch", "4", "--model"])
        .arg(&model)
        .arg("--folders")
        .arg(&img)
        .arg("--out")
        .arg(&out)
        .env(key, value)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id() as libc::pid_t;
    wait_until_stopped(pid);
    let second = extract_folders(&img, &out, &[]);
    assert!(!second.status.success());
    assert!(stderr(&second).contains("being written by another retrain process"), "{}", stderr(&second));
    // SAFETY: pid is our own stopped child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(first.wait().unwrap().success());
    let whole = dir.path().join("whole.h5");
    assert!(extract_folders(&img, &whole, &[]).status.success());
    same_cache_file(&whole, &out);
}

/// Waits (by progress: the child's own state, not a guess of time) until `pid` has stopped.
fn wait_until_stopped(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid with WUNTRACED on our own child; status is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
    assert_eq!(r, pid, "waitpid failed");
    assert!(libc::WIFSTOPPED(status), "the child ended instead of stopping (status {status})");
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
    let Some(root) = common::shared_mtfl() else { return };
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
    assert!(c.preprocess.contains(r#""crop":"nose:150""#));
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

/// scripts/convert_faceres.py's description makes tf2onnx's FaceRes a backbone that `extract`
/// takes as it is (no sidecar): face crops of real MTFL images go in as RGB 0..255, and the
/// cached 1024-d features equal Python onnxruntime's `global_pooling/Mean` of the undescribed
/// model on those pixels.
#[test]
fn the_described_faceres_runs_in_extract_as_it_is() {
    let Some(py) = python() else { return };
    let Some(mtfl) = common::shared_mtfl() else { return };
    let raw = repo().join("../shared/models/faceres.onnx");
    if !raw.exists() {
        return common::skip(&format!("{} is not here", raw.display())).unwrap_or(());
    }
    let crop: retrain::preprocess::Crop = "face".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("faceres.onnx");
    let st = Command::new(&py).arg(repo().join("scripts/convert_faceres.py")).arg("--describe").arg(&raw).arg("--out").arg(&model_path).status().unwrap();
    assert!(st.success());
    let out = dir.path().join("c.h5");
    let (m, o) = (model_path.to_str().unwrap(), out.to_str().unwrap());
    let run =
        retrain(&["extract", "--model", m, "--mtfl", mtfl.to_str().unwrap(), "--split", "testing", "--crop", "face", "--limit", "3", "--out", o, "--quiet"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let cache = Cache::read(&out).unwrap();
    assert_eq!((cache.features.nrows(), cache.features.ncols(), cache.output.as_str()), (3, 1024, "global_pooling/Mean"));

    let model = Model::load(&model_path, &cpu(), None).unwrap();
    let pre = retrain::preprocess::Preprocess { crop, input: model.input.clone() };
    let testing = retrain::dataset::mtfl::load(&mtfl, retrain::dataset::mtfl::Split::Testing).unwrap();
    let len = model.input.image_len();
    let mut pixels = vec![0f32; 3 * len];
    for (sample, out) in testing.samples.iter().zip(pixels.chunks_mut(len)) {
        pre.load_into(sample, out).unwrap();
    }
    let max = pixels.iter().copied().fold(0f32, f32::max);
    assert!(max > 200.0 && max <= 255.001, "FaceRes takes 0..255, the largest input value is {max}");
    let theirs = python_output(&py, &raw, &pixels, &model.input.batch_shape(3), "global_pooling/Mean");
    for (a, b) in cache.features.iter().zip(&theirs) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "cached {a} vs onnxruntime {b}");
    }
}
