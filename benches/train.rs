//! Training benchmark: forward-only vs train-step images/s for each network, same batch, one run.
//!
//! cargo bench --bench train -- [--batch 64] [--repeats 5] [--device cpu|cuda] [--threads N]
//!                              [--micro 8,32] [--only tcdcn|cascade_cnn|inception] [--peer]
//!
//! For TCDCN and Cascade-CNN (onnx/*.onnx) it makes Adam training artifacts if missing
//! (target/bench-artifacts/), then on one random batch measures the eval graph (forward only)
//! and the train step (forward + loss + backward + Adam update), and prints images/s of both,
//! their ratio, and the backward pass's cost in forwards: (step - forward) / forward; and the
//! images/s of the training distortions (all four on, rayon over the batch, as `retrain train`).
//!
//! For InceptionV3 (onnx/inception_v3.onnx, from `scripts/setup.sh --model`) it makes the
//! fine-tuning artifacts (scripts/make_finetune.py, micro-batches --micro) and measures phase 2
//! as `retrain finetune` runs it: one optimizer step over a batch of 100 images, cut into
//! micro-batches whose gradients are summed (accumulate_bM.onnx) before one RMSprop update
//! (update.onnx), against the eval graph's forward at the micro-batch; images/s of both, their
//! ratio, and the seconds of the batch-100 step.
//!
//! `--peer` also runs the Keras twin of each network (benches/keras_peer.py, with
//! $RETRAIN_TF_PYTHON or .venv-tf/bin/python, TensorFlow 2.15.1 from `scripts/setup.sh
//! --faceres`) right after retrain's measurement of it, on the same batch (written to
//! target/bench-artifacts/keras-peer/) with the same timing, and prints `ratio retrain step /
//! keras step` and `ratio retrain forward / keras forward` (seconds over seconds: below 1 means
//! retrain is faster) and, for InceptionV3, the batch-100 phase-2 step of both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use retrain::augment::Distortions;
use retrain::rng::{self, Rng};
use retrain::runtime::{Device, SessionConfig};
use retrain::train::accumulate::Accumulator;
use retrain::train::artifacts::Artifacts;
use retrain::train::checkpoint::Checkpoint;
use retrain::train::engine::{Batch, Engine};

struct Args {
    batch: usize,
    repeats: usize,
    device: Device,
    threads: Option<usize>,
    micro: Vec<usize>,
    only: Option<String>,
    peer: bool,
}

fn args() -> Args {
    let mut a = Args { batch: 64, repeats: 5, device: Device::Cpu, threads: None, micro: vec![8, 32], only: None, peer: false };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--batch" => a.batch = value().parse().expect("--batch N"),
            "--repeats" => a.repeats = value().parse().expect("--repeats N"),
            "--device" => a.device = value().parse().expect("--device cpu|cuda"),
            "--threads" => a.threads = Some(value().parse().expect("--threads N")),
            "--micro" => a.micro = value().split(',').map(|m| m.parse().expect("--micro M1,M2")).collect(),
            "--only" => a.only = Some(value()),
            "--peer" => {
                a.peer = true;
                i += 1;
                continue;
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

/// What the artifacts are made by: the generating scripts' hashes and the settings. Artifacts
/// made by other scripts or settings are made again, so a changed backward rule is measured.
fn generator_stamp(settings: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let hashes: Vec<String> = ["make_artifacts.py", "fast_rules.py", "make_finetune.py"]
        .iter()
        .map(|f| retrain::model::file_sha256(&root.join("scripts").join(f)).expect("hash a script"))
        .collect();
    format!("{settings} {}\n", hashes.join(" "))
}

/// Whether `dir` holds artifacts of `stamp`; if not, `make` writes them and the stamp.
fn ensure_artifacts(dir: &Path, stamp: &str, make: impl FnOnce() -> bool) {
    let file = dir.join("bench-stamp");
    if std::fs::read_to_string(&file).ok().as_deref() == Some(stamp) {
        return;
    }
    assert!(make(), "making the bench artifacts in {} failed", dir.display());
    std::fs::write(&file, stamp).expect("write the bench stamp");
}

fn artifacts_for(net: &str, batch: usize) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(format!("target/bench-artifacts/{net}-adam-b{batch}"));
    ensure_artifacts(&dir, &generator_stamp(&format!("{net} adam batch {batch}")), || {
        Command::new(root.join(".venv/bin/python"))
            .arg(root.join("scripts/make_artifacts.py"))
            .arg(root.join(format!("onnx/{net}.onnx")))
            .args(["--out", dir.to_str().unwrap(), "--batch", &batch.to_string(), "--optimizer", "adam"])
            .status()
            .expect("run scripts/make_artifacts.py (scripts/setup.sh makes .venv)")
            .success()
    });
    dir
}

/// Median seconds of `forward` and of `step` over `repeats` rounds, after one warm-up call of
/// each. A round calls `forward` twice (the first warms the caches that the step before it
/// cleared, and is not timed) and `step` once: on a shared machine whose speed drifts, both
/// see the same moments, so their ratio holds where two separate timing loops would not.
fn interleaved(repeats: usize, mut forward: impl FnMut(), mut step: impl FnMut()) -> (f64, f64) {
    forward();
    step();
    let (mut f, mut s) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        forward();
        let t = Instant::now();
        forward();
        f.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        step();
        s.push(t.elapsed().as_secs_f64());
    }
    (median(f), median(s))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn seconds_per_call(repeats: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: session optimisation, allocations
    let t = Instant::now();
    for _ in 0..repeats {
        f();
    }
    t.elapsed().as_secs_f64() / repeats as f64
}

/// What one measurement gives the Keras peer: seconds of a forward call and of a step (for
/// InceptionV3 the forward at the micro-batch and the batch-100 step), and the batch used.
struct Measured {
    forward: f64,
    step: f64,
    images: Vec<f32>,
}

fn bench(net: &str, a: &Args) -> Measured {
    let artifacts = Artifacts::open(&artifacts_for(net, a.batch)).expect("artifacts");
    let m = artifacts.manifest.clone();
    let init = Checkpoint::read(&artifacts.dir.join(&m.checkpoint)).expect("init.h5");
    let config = SessionConfig { intra_threads: a.threads, ..SessionConfig::new(a.device) };
    let mut engine = Engine::new(artifacts, &config).expect("sessions");
    engine.load(&init).expect("upload");
    let spec = m.description.input_spec().unwrap();
    let image_len = spec.image_len();
    let mut r = Rng::stream(1, 0, 0);
    let images: Vec<f32> = (0..a.batch * image_len).map(|_| r.next_f32() * 2.0 - 1.0).collect();
    let masks: Vec<Vec<f32>> = m.dropout_masks.iter().map(|d| rng::dropout_mask(d.shape.iter().product(), d.ratio, 1, 1, 0)).collect();
    let batch =
        Batch { images: images.clone(), labels: (0..a.batch as i64).map(|i| i % 2).collect(), targets: Vec::new(), weights: vec![1.0; a.batch], masks: &masks };
    let mut step = 0;
    let engine = std::cell::RefCell::new(engine);
    let (forward, train) = interleaved(
        a.repeats,
        || {
            engine.borrow_mut().logits(images.clone(), a.batch).expect("forward");
        },
        || {
            step += 1;
            engine.borrow_mut().step(&batch, 1e-4, step).expect("train step");
        },
    );
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
    Measured { forward, step: train, images }
}

/// Phase 2 of the InceptionV3 fine-tuning: a batch-100 optimizer step at micro-batch `micro`.
fn bench_inception(micro: usize, a: &Args) -> Measured {
    const BATCH: usize = 100;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/bench-artifacts/inception-finetune");
    let micro_list = a.micro.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(",");
    ensure_artifacts(&dir, &generator_stamp(&format!("inception_v3 micro-batches {micro_list}")), || {
        Command::new(root.join(".venv/bin/python"))
            .arg(root.join("scripts/make_finetune.py"))
            .arg(root.join("onnx/inception_v3.onnx"))
            .args(["--out", dir.to_str().unwrap(), "--micro-batches", &micro_list])
            .status()
            .expect("run scripts/make_finetune.py")
            .success()
    });
    let artifacts = Artifacts::open(&dir.join("phase2")).expect("phase-2 artifacts");
    let m = artifacts.manifest.clone();
    let init = Checkpoint::read(&artifacts.dir.join(&m.checkpoint)).expect("init.h5");
    let config = SessionConfig { intra_threads: a.threads, ..SessionConfig::new(a.device) };
    let mut engine = Engine::with_step(artifacts, &config, false).expect("sessions");
    engine.load(&init).expect("upload");
    let mut acc = Accumulator::new(&engine, micro, &config).expect("accumulation graphs");
    let spec = m.description.input_spec().unwrap();
    let image_len = spec.image_len();
    let mut r = Rng::stream(1, 0, 0);
    let images: Vec<f32> = (0..micro * image_len).map(|_| r.next_f32() * 2.0 - 1.0).collect();
    let masks: Vec<Vec<f32>> = m.dropout_masks.iter().map(|d| rng::dropout_mask(micro * d.shape.iter().skip(1).product::<usize>(), d.ratio, 1, 1, 0)).collect();
    let pieces = BATCH.div_ceil(micro);
    // as phase 2 cuts a batch: full micro-batches, the last one padded with weight-0 rows
    let batches: Vec<Batch> = (0..pieces)
        .map(|k| Batch {
            images: images.clone(),
            labels: (0..micro as i64).map(|i| i % 2).collect(),
            targets: Vec::new(),
            weights: (0..micro).map(|j| if k * micro + j < BATCH { 1.0 } else { 0.0 }).collect(),
            masks: &masks,
        })
        .collect();
    let mut step = 0;
    let engine = std::cell::RefCell::new(engine);
    // forward: as many micro-batches as one step has, so each pair of calls weighs the same
    let (forward, train) = interleaved(
        a.repeats.min(3),
        || {
            for _ in 0..pieces {
                engine.borrow_mut().logits(images.clone(), micro).expect("forward");
            }
        },
        || {
            step += 1;
            acc.step(&mut engine.borrow_mut(), &batches, 1e-4, step).expect("phase-2 step");
        },
    );
    let forward = forward / pieces as f64;
    let (forward_rate, train_rate) = (micro as f64 / forward, BATCH as f64 / train);
    println!(
        "{:12} micro {micro:3}: forward {forward_rate:8.1} images/s | train step {train_rate:7.1} images/s | step/forward {:.2} | batch-{BATCH} step {train:.1} s ({pieces} micro-batches + update)",
        "inception_v3",
        forward_rate / train_rate,
    );
    Measured { forward, step: train, images }
}

/// The Keras twin (benches/keras_peer.py) in the TensorFlow venv.
struct Peer {
    python: PathBuf,
    threads: usize,
}

impl Peer {
    /// $RETRAIN_TF_PYTHON, else .venv-tf/bin/python; None (and the SKIP line) if it is missing.
    fn find(a: &Args) -> Option<Peer> {
        if a.device != Device::Cpu {
            println!("SKIP keras peer: it runs tensorflow-cpu, the bench ran on {}", a.device);
            return None;
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let chosen = std::env::var_os("RETRAIN_TF_PYTHON").map(PathBuf::from);
        let python = chosen.clone().unwrap_or_else(|| root.join(".venv-tf/bin/python"));
        if !python.exists() {
            match chosen {
                Some(p) => println!("SKIP keras peer: RETRAIN_TF_PYTHON={} missing", p.display()),
                None => println!("SKIP keras peer: .venv-tf missing (scripts/setup.sh --faceres makes it)"),
            }
            return None;
        }
        let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Some(Peer { python, threads })
    }

    /// Runs the script on `net` (tcdcn, cascade_cnn or inception at `micro`) with the batch
    /// retrain measured; the JSON entry of the network, or None after saying why.
    fn run(&self, net: &str, key: &str, micro: Option<usize>, a: &Args, images: &[f32]) -> Option<serde_json::Value> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/bench-artifacts/keras-peer");
        std::fs::create_dir_all(&dir).expect("make target/bench-artifacts/keras-peer");
        let inputs = dir.join(format!("{key}.f32"));
        let bytes: Vec<u8> = images.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&inputs, bytes).expect("write the peer's batch");
        let mut command = Command::new(&self.python);
        command
            .arg(root.join("benches/keras_peer.py"))
            .args(["--only", net, "--batch", &a.batch.to_string()])
            .args(["--repeats", &a.repeats.to_string(), "--inception-repeats", &a.repeats.min(3).to_string()])
            .args(["--threads", &self.threads.to_string()])
            .arg("--inputs")
            .arg(&inputs);
        if let Some(m) = micro {
            command.args(["--micro", &m.to_string()]);
        }
        let out = command.stderr(std::process::Stdio::inherit()).output();
        let _ = std::fs::remove_file(&inputs);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                println!("keras peer: could not run {}: {e}", self.python.display());
                return None;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let parsed = serde_json::from_str::<serde_json::Value>(text.trim()).ok();
        match parsed.as_ref().and_then(|v| v.get("networks")).and_then(|n| n.get(key)) {
            Some(entry) if out.status.success() => Some(entry.clone()),
            _ => {
                println!("keras peer failed on {key} ({}): {text}", out.status);
                None
            }
        }
    }

    /// The peer's line and the two ratios after retrain's own line for `net`.
    fn compare(&self, net: &str, a: &Args, ours: &Measured) {
        let key = net.to_string();
        let Some(k) = self.run(net, &key, None, a, &ours.images) else { return };
        let (forward, step) = (seconds(&k, "forward_s"), seconds(&k, "step_s"));
        let n = a.batch as f64;
        println!(
            "{:12} batch {}: forward {:8.1} images/s | train step {:7.1} images/s | step/forward {:.2} | keras {}, {} parameters, {} intra-op threads, 1 inter-op",
            format!("{net} keras"),
            a.batch,
            n / forward,
            n / step,
            step / forward,
            k["tf_version"].as_str().unwrap_or("?"),
            k["params"],
            k["intra_op_threads"],
        );
        println!("ratio retrain step / keras step: {:.3} ({net}, batch {})", ours.step / step, a.batch);
        println!("ratio retrain forward / keras forward: {:.3} ({net}, batch {})", ours.forward / forward, a.batch);
    }

    /// The same for InceptionV3's phase 2 at micro-batch `micro`.
    fn compare_inception(&self, micro: usize, a: &Args, ours: &Measured) {
        let key = format!("inception_v3_micro{micro}");
        let Some(k) = self.run("inception", &key, Some(micro), a, &ours.images) else { return };
        let (forward, step) = (seconds(&k, "forward_s"), seconds(&k, "batch100_step_s"));
        let (batch, pieces) = (k["batch"].as_u64().unwrap_or(100), k["pieces"].as_u64().unwrap_or(0));
        println!(
            "{:12} micro {micro:3}: forward {:8.1} images/s | train step {:7.1} images/s | step/forward {:.2} | batch-{batch} step {step:.1} s ({pieces} micro-batches + update) | keras {}, {} intra-op threads, 1 inter-op",
            "inception_v3 keras",
            micro as f64 / forward,
            batch as f64 / step,
            (micro as f64 / forward) / (batch as f64 / step),
            k["tf_version"].as_str().unwrap_or("?"),
            k["intra_op_threads"],
        );
        println!("batch-{batch} phase-2 step, micro {micro}: retrain {:.1} s | keras {step:.1} s", ours.step);
        println!("ratio retrain step / keras step: {:.3} (inception_v3 micro {micro}, batch-{batch} step)", ours.step / step);
        println!("ratio retrain forward / keras forward: {:.3} (inception_v3 micro {micro})", ours.forward / forward);
    }
}

fn seconds(entry: &serde_json::Value, field: &str) -> f64 {
    entry[field].as_f64().unwrap_or_else(|| panic!("the keras peer's JSON has no {field}: {entry}"))
}

/// The CPU model and core count, as `cargo bench --bench extract` names the machine.
fn cpu_line() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        info.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']).to_string()).unwrap_or_else(|| "unknown".into());
    format!("cpu {model}, {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()))
}

fn main() {
    let a = args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if !root.join(".venv/bin/python").exists() {
        println!("SKIP train bench: needs .venv (scripts/setup.sh)");
        return;
    }
    println!("device {}, {} repeats after one warm-up, same random batch for both", a.device, a.repeats);
    let peer = if a.peer {
        println!("{}", cpu_line());
        Peer::find(&a)
    } else {
        None
    };
    let wanted = |net: &str| a.only.as_deref().is_none_or(|o| o == net);
    for net in ["tcdcn", "cascade_cnn"].into_iter().filter(|n| wanted(n)) {
        let ours = bench(net, &a);
        if let Some(p) = &peer {
            p.compare(net, &a, &ours);
        }
    }
    if !wanted("inception") {
        return;
    }
    if !root.join("onnx/inception_v3.onnx").exists() {
        println!("SKIP inception_v3: needs onnx/inception_v3.onnx (scripts/setup.sh --model)");
        return;
    }
    for &micro in &a.micro {
        let ours = bench_inception(micro, &a);
        if let Some(p) = &peer {
            p.compare_inception(micro, &a, &ours);
        }
    }
}
