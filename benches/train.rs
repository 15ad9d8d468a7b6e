//! Training benchmark: forward-only vs train-step images/s for each network, same batch, one run.
//!
//! cargo bench --bench train -- [--batch 64] [--repeats 5] [--device cpu|cuda] [--threads N]
//!
//! For TCDCN and Cascade-CNN (onnx/*.onnx) it makes Adam training artifacts if missing
//! (target/bench-artifacts/), then on one random batch measures the eval graph (forward only)
//! and the train step (forward + loss + backward + Adam update), and prints images/s of both,
//! their ratio, and the backward pass's cost in forwards: (step - forward) / forward; and the
//! images/s of the training distortions (all four on, rayon over the batch, as `retrain train`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use retrain::augment::Distortions;
use retrain::runtime::{Device, SessionConfig};
use retrain::train::artifacts::Artifacts;
use retrain::train::checkpoint::Checkpoint;
use retrain::train::engine::{Batch, Engine};
use retrain::train::rng::{self, SplitMix64};

struct Args {
    batch: usize,
    repeats: usize,
    device: Device,
    threads: Option<usize>,
}

fn args() -> Args {
    let mut a = Args { batch: 64, repeats: 5, device: Device::Cpu, threads: None };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--batch" => a.batch = value().parse().expect("--batch N"),
            "--repeats" => a.repeats = value().parse().expect("--repeats N"),
            "--device" => a.device = value().parse().expect("--device cpu|cuda"),
            "--threads" => a.threads = Some(value().parse().expect("--threads N")),
            _ => {
                i += 1; // cargo's own flags, such as --bench
                continue;
            }
        }
        i += 2;
    }
    a
}

fn artifacts_for(net: &str, batch: usize) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(format!("target/bench-artifacts/{net}-adam-b{batch}"));
    if !dir.join("manifest.json").exists() {
        let status = Command::new(root.join(".venv/bin/python"))
            .arg(root.join("scripts/make_artifacts.py"))
            .arg(root.join(format!("onnx/{net}.onnx")))
            .args(["--out", dir.to_str().unwrap(), "--batch", &batch.to_string(), "--optimizer", "adam"])
            .status()
            .expect("run scripts/make_artifacts.py (scripts/setup.sh makes .venv)");
        assert!(status.success(), "make_artifacts.py failed");
    }
    dir
}

fn seconds_per_call(repeats: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: session optimisation, allocations
    let t = Instant::now();
    for _ in 0..repeats {
        f();
    }
    t.elapsed().as_secs_f64() / repeats as f64
}

fn bench(net: &str, a: &Args) {
    let artifacts = Artifacts::open(&artifacts_for(net, a.batch)).expect("artifacts");
    let m = artifacts.manifest.clone();
    let init = Checkpoint::read(&artifacts.dir.join(&m.checkpoint)).expect("init.h5");
    let config = SessionConfig { intra_threads: a.threads, ..SessionConfig::new(a.device) };
    let mut engine = Engine::new(artifacts, &config).expect("sessions");
    engine.load(&init).expect("upload");
    let spec = retrain::model::input_spec(&m.description).unwrap();
    let image_len = spec.image_len();
    let mut r = SplitMix64::stream(1, 0, 0);
    let images: Vec<f32> = (0..a.batch * image_len).map(|_| r.next_f32() * 2.0 - 1.0).collect();
    let masks: Vec<Vec<f32>> = m.dropout_masks.iter().map(|d| rng::dropout_mask(d.shape.iter().product(), d.ratio, 1, 1, 0)).collect();
    let batch = Batch { images: images.clone(), labels: (0..a.batch as i64).map(|i| i % 2).collect(), weights: vec![1.0; a.batch], masks: &masks };
    let forward = seconds_per_call(a.repeats, || {
        engine.logits(images.clone(), a.batch).expect("forward");
    });
    let mut step = 0;
    let train = seconds_per_call(a.repeats, || {
        step += 1;
        engine.step(&batch, 1e-4, step).expect("train step");
    });
    let all = Distortions { flip: true, crop_percent: 10.0, scale_percent: 10.0, brightness_percent: 10.0 };
    let mut distorted = images.clone();
    let distort = seconds_per_call(a.repeats, || {
        distorted.copy_from_slice(&images);
        distorted.par_chunks_mut(image_len).enumerate().for_each(|(i, img)| all.apply(img, &spec, i as u64));
    });
    let n = a.batch as f64;
    println!("{net:12} batch {}: distortions ({}) {:8.1} images/s", a.batch, all.describe(), n / distort);
    println!(
        "{net:12} batch {}: forward {:8.1} images/s | train step {:7.1} images/s | step/forward {:.2} | backward+update = {:.2} forwards",
        a.batch,
        n / forward,
        n / train,
        train / forward,
        (train - forward) / forward
    );
}

fn main() {
    let a = args();
    if !Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python").exists() {
        println!("SKIP train bench: needs .venv (scripts/setup.sh)");
        return;
    }
    println!("device {}, {} repeats after one warm-up, same random batch for both", a.device, a.repeats);
    for net in ["tcdcn", "cascade_cnn"] {
        bench(net, &a);
    }
}
