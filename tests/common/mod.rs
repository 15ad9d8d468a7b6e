//! Shared helpers for the integration tests: real files, the real binary, the real runtime.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{Rgb, RgbImage};

mod h5;
mod synth;
mod training;
#[allow(unused_imports)] // each test file uses some of them
pub use h5::*;
#[allow(unused_imports)] // used by the head and pipeline tests only
pub use synth::*;
#[allow(unused_imports)]
pub use training::*;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small committed test model (made by tests/support/make_test_models.py).
pub fn test_model(name: &str) -> PathBuf {
    let p = repo().join("onnx/test").join(name);
    assert!(p.exists(), "{} is missing: run `.venv/bin/python tests/support/make_test_models.py`", p.display());
    p
}

/// The running test's name (libtest names each test's thread after it).
pub fn test_name() -> String {
    std::thread::current().name().unwrap_or("unnamed test").to_string()
}

/// Writes a line to the terminal past libtest's output capture (which takes only the print
/// macros), so that scripts/test.sh sees it whether the test passes or not.
pub fn tell(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A prerequisite of the running test that is not here. With `CI` set the test fails,
/// naming it; elsewhere it prints `SKIP <test>: <reason>` (scripts/test.sh counts these) and
/// the caller returns. Never a silent pass.
pub fn skip<T>(reason: &str) -> Option<T> {
    let test = test_name();
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {reason} (CI is set, so a missing prerequisite fails the test)");
    }
    tell(&format!("SKIP {test}: {reason}"));
    None
}

/// The project's Python (scripts/setup.sh makes .venv; RETRAIN_PYTHON overrides), or a skip.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RETRAIN_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = repo().join(".venv/bin/python");
    if p.exists() {
        Some(p)
    } else {
        skip(&format!("{} is missing (scripts/setup.sh makes it)", p.display()))
    }
}

/// The real MTFL beside the checkout, or a skip.
pub fn shared_mtfl() -> Option<PathBuf> {
    let p = repo().join("../shared/datasets/MTFL");
    if p.join("testing.txt").exists() {
        Some(p)
    } else {
        skip(&format!("{} is not here (tests on the real MTFL need it)", p.display()))
    }
}

/// The converted InceptionV3, or a skip.
pub fn inception() -> Option<PathBuf> {
    let p = repo().join("onnx/inception_v3.onnx");
    if p.exists() {
        Some(p)
    } else {
        skip(&format!("{} is missing (scripts/setup.sh --model makes it)", p.display()))
    }
}

/// Runs the built `retrain` binary.
pub fn retrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retrain")).args(args).current_dir(repo()).output().expect("run retrain")
}

/// Runs the built `retrain` binary with extra environment variables.
pub fn retrain_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retrain")).args(args).envs(env.iter().copied()).current_dir(repo()).output().expect("run retrain")
}

/// The `RETRAIN_FAULT` setting that stops a run the `hit`-th time it passes `point`
/// (see src/fault.rs), e.g. `fault("cache-committed", 3, "kill")`.
pub fn fault(point: &str, hit: u64, action: &str) -> (&'static str, String) {
    assert!(retrain::fault::enabled(), "fault tests need the fault-injection feature: cargo test --features fault-injection (scripts/test.sh sets it)");
    (retrain::fault::VARIABLE, format!("{point}:{hit}:{action}"))
}

/// Runs `retrain` with `RETRAIN_FAULT` set.
pub fn retrain_fault(args: &[&str], point: &str, hit: u64, action: &str) -> Output {
    let (key, value) = fault(point, hit, action);
    retrain_env(args, &[(key, value.as_str())])
}

/// Runs the command an interrupted run printed after "resume with: ", through the shell, as
/// a user would paste it.
pub fn run_printed_resume(interrupted: &Output) -> Output {
    let text = stderr(interrupted);
    let line = text.lines().find_map(|l| l.strip_prefix("resume with: ")).unwrap_or_else(|| panic!("no 'resume with:' line in:\n{text}"));
    Command::new("sh").args(["-c", line]).current_dir(repo()).output().expect("run sh")
}

/// Whether a process ended with exit status `code`.
pub fn exited_with(o: &Output, code: i32) -> bool {
    o.status.code() == Some(code)
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

/// Reads a cache back through h5py (`python` from [`python`]), printing `key=value` lines for
/// the given Python expression list.
pub fn h5py_eval(python: &Path, file: &Path, exprs: &[&str]) -> String {
    let code = format!(
        "import h5py, sys\nf = h5py.File(sys.argv[1], 'r')\n{}",
        exprs.iter().map(|e| format!("print({e:?}, '=', {e})")).collect::<Vec<_>>().join("\n")
    );
    let out = Command::new(python).arg("-c").arg(code).arg(file).output().expect("run python");
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
