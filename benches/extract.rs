//! Extraction benchmark: raw ONNX Runtime speed vs the whole pipeline, and memory vs data size.
//!
//! cargo bench --bench extract -- [--model onnx/inception_v3.onnx] [--batch 16] [--small 1000]
//!     [--large 3000] [--raw-batches 12] [--mtfl ../shared/datasets/MTFL] [--peer]
//!
//! Prints, in one run on the same model and batch size:
//! - raw ORT images/s on tensors already in memory (decoding excluded),
//! - the pipeline's images/s from JPEG files to HDF5 (`retrain extract`, measured in a child),
//! - their ratio (target >= 0.90 on 2 cores),
//! - peak RSS of `retrain extract` on `small` and `large` images (must not grow with N),
//! - with --peer, the Python peer (PIL + onnxruntime + h5py) on the same images, for a ratio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use retrain::dataset::mtfl::{self, Split};
use retrain::model::Model;
use retrain::preprocess::{Crop, Preprocess};
use retrain::runtime::{Device, SessionConfig};

struct Args {
    model: PathBuf,
    mtfl: PathBuf,
    batch: usize,
    small: usize,
    large: usize,
    raw_batches: usize,
    peer: bool,
}

fn args() -> Args {
    let mut a = Args {
        model: "onnx/inception_v3.onnx".into(),
        mtfl: "../shared/datasets/MTFL".into(),
        batch: 16,
        small: 1000,
        large: 3000,
        raw_batches: 12,
        peer: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--model" => a.model = value().into(),
            "--mtfl" => a.mtfl = value().into(),
            "--batch" => a.batch = value().parse().expect("--batch N"),
            "--small" => a.small = value().parse().expect("--small N"),
            "--large" => a.large = value().parse().expect("--large N"),
            "--raw-batches" => a.raw_batches = value().parse().expect("--raw-batches N"),
            "--peer" => {
                a.peer = true;
                i -= 1;
            }
            _ => {
                i += 1; // cargo's own flags, such as --bench
                continue;
            }
        }
        i += 2;
    }
    a
}

fn main() {
    let a = args();
    if !a.mtfl.join("testing.txt").exists() || !a.model.exists() {
        println!("SKIP extract bench: needs {} and {} (scripts/setup.sh --model)", a.mtfl.display(), a.model.display());
        return;
    }
    let raw = raw_images_per_second(&a);
    println!("raw ORT on preloaded tensors: {raw:.2} images/s (batch {}, {} batches)", a.batch, a.raw_batches);
    let small = run_extract(&a, a.small);
    let large = run_extract(&a, a.large);
    for r in [&small, &large] {
        println!("pipeline JPEG -> HDF5, {} images: {:.2} images/s, peak RSS {:.1} MiB", r.images, r.rate, r.peak_rss_kib as f64 / 1024.0);
    }
    println!("ratio pipeline / raw ORT: {:.3} (target >= 0.90)", large.rate / raw);
    println!("peak RSS {} / {} images: {:.3} (flat memory: ~1.0)", a.large, a.small, large.peak_rss_kib as f64 / small.peak_rss_kib as f64);
    if a.peer {
        peer(&a, large.rate);
    }
}

/// Preprocesses a few batches once, then times inference alone on them.
fn raw_images_per_second(a: &Args) -> f64 {
    let config = SessionConfig::new(Device::Cpu);
    let mut model = Model::load(&a.model, &config, None).expect("load model");
    let data = mtfl::load(&a.mtfl, Split::Testing).expect("MTFL");
    let pre = Preprocess { crop: Crop::Original, input: model.input.clone() };
    let filter = model.input.filter().unwrap();
    let len = model.input.image_len();
    let batches: Vec<Vec<f32>> = data.samples[..a.batch * 2]
        .chunks(a.batch)
        .map(|chunk| {
            let mut t = vec![0f32; chunk.len() * len];
            for (s, slot) in chunk.iter().zip(t.chunks_mut(len)) {
                pre.load_into(s, filter, slot).expect("image");
            }
            t
        })
        .collect();
    model.run(batches[0].clone(), a.batch).expect("warm-up");
    let start = Instant::now();
    for k in 0..a.raw_batches {
        model.run(batches[k % 2].clone(), a.batch).expect("run");
    }
    (a.raw_batches * a.batch) as f64 / start.elapsed().as_secs_f64()
}

struct Extracted {
    images: usize,
    rate: f64,
    peak_rss_kib: i64,
}

/// `retrain extract --limit n` in a child process; its own rate line and its peak RSS.
fn run_extract(a: &Args, n: usize) -> Extracted {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.h5");
    // Reaped by wait4 below, which also gives its peak RSS (Child::wait cannot).
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(["extract", "--quiet", "--split", "testing", "--crop", "original"])
        .args(["--batch", &a.batch.to_string(), "--limit", &n.to_string()])
        .arg("--model")
        .arg(&a.model)
        .arg("--mtfl")
        .arg(&a.mtfl)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn retrain");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("stdout");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let (status, rusage) = wait_with_rusage(pid);
    assert!(status == 0, "retrain extract failed: {text}");
    Extracted { images: n, rate: rate_from_report(&text), peak_rss_kib: rusage.ru_maxrss }
}

fn wait_with_rusage(pid: libc::pid_t) -> (i32, libc::rusage) {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child; status and usage are valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    (libc::WEXITSTATUS(status), usage)
}

/// Reads "... = 12.34 images/s" from the report of `retrain extract`.
fn rate_from_report(text: &str) -> f64 {
    text.split(" = ").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no rate in: {text}"))
}

/// The Python peer on the same testing images, for a ratio measured in the same session.
fn peer(a: &Args, ours: f64) {
    let script = Path::new("../shared/bench/peer_bottleneck.py");
    if !script.exists() {
        println!("peer: {} not here, skipped", script.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(".venv/bin/python")
        .arg(script)
        .arg(&a.model)
        .arg(&a.mtfl)
        .arg(dir.path().join("peer.h5"))
        .args(["--threads", "2", "--limit", &a.large.to_string(), "--batch", &a.batch.to_string()])
        .output()
        .expect("run peer");
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find(|l| l.starts_with("testing:"))
        .and_then(|l| l.split(" = ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    match rate {
        Some(r) => println!("peer (PIL + onnxruntime + h5py), testing {} images: {r:.2} images/s; ours / peer: {:.3}", a.large, ours / r),
        None => println!("peer failed: {text}{}", String::from_utf8_lossy(&out.stderr)),
    }
}
