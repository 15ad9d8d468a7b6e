//! Shared helpers for the integration tests: real files, the real binary, the real runtime.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{Rgb, RgbImage};
use retrain::cache::Cache;

mod synth;
#[allow(unused_imports)] // used by the head and pipeline tests only
pub use synth::*;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small committed test model (made by scripts/make_test_models.py).
pub fn test_model(name: &str) -> PathBuf {
    let p = repo().join("onnx/test").join(name);
    assert!(p.exists(), "{} is missing: run `.venv/bin/python scripts/make_test_models.py`", p.display());
    p
}

/// The project's Python (scripts/setup.sh makes .venv); RETRAIN_PYTHON overrides.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("RETRAIN_PYTHON") {
        return PathBuf::from(p);
    }
    let p = repo().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh first", p.display());
    p
}

/// The real MTFL beside the checkout, or None with a message saying the test is skipped.
pub fn shared_mtfl(test: &str) -> Option<PathBuf> {
    let p = repo().join("../shared/datasets/MTFL");
    if p.join("testing.txt").exists() {
        Some(p)
    } else {
        eprintln!("SKIP {test}: ../shared/datasets/MTFL is not here (tests on the real MTFL need it)");
        None
    }
}

/// Runs the built `retrain` binary.
pub fn retrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retrain")).args(args).current_dir(repo()).output().expect("run retrain")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A deterministic picture: gradients and a square whose place depends on `seed`.
pub fn picture(seed: u32, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let inside = (x + seed * 7) % w < w / 3 && (y + seed * 5) % h < h / 3;
        let base = [(x * 255 / w) as u8, (y * 255 / h) as u8, ((seed * 37) % 255) as u8];
        if inside {
            Rgb([255 - base[0], base[2], base[1]])
        } else {
            Rgb(base)
        }
    })
}

/// `root/<class>/<i>.jpg` for `per_class` JPEGs in each class; returns the file paths.
pub fn folder_dataset(root: &Path, classes: &[&str], per_class: u32) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (c, class) in classes.iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            let p = root.join(class).join(format!("img{i:03}.jpg"));
            picture(i * 3 + c as u32, 40 + i % 7, 36 + i % 5).save(&p).unwrap();
            files.push(p);
        }
    }
    files
}

/// Reads a cache back through h5py, printing `key=value` lines for the given Python expression list.
pub fn h5py_eval(file: &Path, exprs: &[&str]) -> String {
    let code = format!(
        "import h5py, sys\nf = h5py.File(sys.argv[1], 'r')\n{}",
        exprs.iter().map(|e| format!("print({e:?}, '=', {e})")).collect::<Vec<_>>().join("\n")
    );
    let out = Command::new(python()).arg("-c").arg(code).arg(file).output().expect("run python");
    assert!(out.status.success(), "h5py failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `retrain extract` with the tiny test model over class folders (batch 4 unless `extra` says).
pub fn extract_folders(root: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let model = test_model("tiny_cnn.onnx");
    let mut args = vec!["extract", "--quiet", "--model", model.to_str().unwrap(), "--folders", root.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap()]);
    if !extra.contains(&"--batch") {
        args.extend(["--batch", "4"]);
    }
    args.extend(extra);
    retrain(&args)
}

/// Asserts two caches hold the same rows, feature values compared bit for bit.
pub fn same_rows(a: &Path, b: &Path) {
    let (a, b) = (Cache::read(a).unwrap(), Cache::read(b).unwrap());
    assert_eq!(a.paths, b.paths);
    assert_eq!(a.source_index, b.source_index);
    assert_eq!(a.labels, b.labels);
    assert_eq!((&a.skipped, &a.skipped_index), (&b.skipped, &b.skipped_index));
    let bits = |c: &Cache| c.features.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    assert!(bits(&a) == bits(&b), "feature values differ");
}

/// An MTFL-format folder: training.txt / testing.txt with `n` 80x80 JPEGs each.
pub fn tiny_mtfl(root: &Path, n: u32) -> PathBuf {
    for (split, offset) in [("training", 0), ("testing", 1000)] {
        let dir = root.join(split);
        std::fs::create_dir_all(&dir).unwrap();
        let mut lines = String::new();
        for i in 0..n {
            let key = format!("{split}/img{i:03}.jpg");
            picture(i + offset, 80, 80).save(root.join(&key)).unwrap();
            let smile = 1 + i % 2;
            lines.push_str(&format!(" {key} 30 50 40 32 48 35 35 45 60 60 {} {smile} 2 3\r\n", 1 + (i / 2) % 2));
        }
        std::fs::write(root.join(format!("{split}.txt")), lines).unwrap();
    }
    root.to_path_buf()
}
