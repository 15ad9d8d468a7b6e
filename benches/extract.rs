//! Extraction benchmark: raw ONNX Runtime speed vs the whole pipeline, and memory vs data size.
//!
//! cargo bench --bench extract -- [--model onnx/inception_v3.onnx] [--int8 M.int8.onnx]
//!     [--batch 16] [--small 1000] [--large 3000] [--raw-batches 12] [--raw-rounds 3]
//!     [--mtfl ../shared/datasets/MTFL] [--peer]
//!
//! Prints, in one run on the same batch size, for the fp32 model and its int8 version (made
//! here by `retrain quantize --calibrate` on 64 MTFL training images unless --int8 names one):
//! - raw ORT images/s on tensors already in memory (decoding excluded), the mean of one
//!   measurement before the pipeline runs and one after,
//! - the pipeline's images/s from JPEG files to HDF5 (`retrain extract`, measured in a child),
//! - their ratio (targets >= 0.97 fp32, >= 0.95 int8 on 2 cores), and int8 raw / fp32 raw
//!   (target >= 2.5),
//! - peak RSS of `retrain extract` on `small` and `large` images (must not grow with N),
//! - `retrain predict` on the same `large` images with the backbone + a gender head (trained
//!   here on the pipeline's cache) exported as one model, and its ratio to raw ORT,
//! - with --peer, the Python peer (PIL + onnxruntime + h5py) on the same images, for a ratio,
//! - preprocessing images/s on one core, MTFL testing images and generated 12-megapixel JPEGs,
//!   for the image crate's decode + resize (retrain before pixel version 2, rebuilt here as the
//!   baseline) and for `Preprocess::load_into` (libjpeg-turbo with DCT scaling + fast_image_resize).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use retrain::dataset::mtfl::{self, Split};
use retrain::dataset::Sample;
use retrain::model::Model;
use retrain::preprocess::{write_tensor, Crop, Preprocess};
use retrain::runtime::{Device, SessionConfig};

struct Args {
    model: PathBuf,
    int8: Option<PathBuf>,
    mtfl: PathBuf,
    batch: usize,
    small: usize,
    large: usize,
    raw_batches: usize,
    /// Passes over the preloaded batches per raw measurement (more time, same memory).
    raw_rounds: usize,
    peer: bool,
}

fn args() -> Args {
    let mut a = Args {
        model: "onnx/inception_v3.onnx".into(),
        int8: None,
        mtfl: "../shared/datasets/MTFL".into(),
        batch: 16,
        small: 1000,
        large: 3000,
        raw_batches: 12,
        raw_rounds: 3,
        peer: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--model" => a.model = value().into(),
            "--int8" => a.int8 = Some(value().into()),
            "--mtfl" => a.mtfl = value().into(),
            "--batch" => a.batch = value().parse().expect("--batch N"),
            "--small" => a.small = value().parse().expect("--small N"),
            "--large" => a.large = value().parse().expect("--large N"),
            "--raw-batches" => a.raw_batches = value().parse().expect("--raw-batches N"),
            "--raw-rounds" => a.raw_rounds = value().parse().expect("--raw-rounds N"),
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
    println!("CPU: {}", cpu_summary());
    preprocessing_per_core(&a);
    let dir = tempfile::tempdir().unwrap();
    let int8 = a.int8.clone().unwrap_or_else(|| quantized(&a, dir.path()));
    let mut raw = Vec::new();
    let mut large_rate = 0.0;
    for (kind, model) in [("fp32", &a.model), ("int8", &int8)] {
        let before = raw_images_per_second(&a, model);
        let work = tempfile::tempdir().unwrap();
        let cache = work.path().join("large.h5");
        let small = run_extract(&a, model, a.small, &work.path().join("small.h5"));
        let large = run_extract(&a, model, a.large, &cache);
        for e in [&small, &large] {
            println!("pipeline ({kind}) JPEG -> HDF5, {} images: {:.2} images/s, peak RSS {:.1} MiB", e.images, e.rate, e.peak_rss_kib as f64 / 1024.0);
        }
        let predicted = run_predict(&a, model, &cache, work.path());
        // Measured again after the pipeline runs, and averaged: the machine's speed drifts
        // by a few percent over minutes (shared hosts, clocks), which a single raw figure
        // taken first would charge to the pipeline.
        let after = raw_images_per_second(&a, model);
        let r = (before + after) / 2.0;
        println!(
            "raw ORT ({kind}) on preloaded tensors: {r:.2} images/s (batch {}, {} batches x {} rounds; {before:.2} before the pipeline runs, {after:.2} after)",
            a.batch, a.raw_batches, a.raw_rounds
        );
        println!("ratio pipeline / raw ORT ({kind}): {:.3}", large.rate / r);
        println!("peak RSS ({kind}) {} / {} images: {:.3} (flat memory: ~1.0)", a.large, a.small, large.peak_rss_kib as f64 / small.peak_rss_kib as f64);
        println!("predict ({kind}), {} images: {predicted:.2} images/s; ratio predict / raw ORT ({kind}): {:.3}", a.large, predicted / r);
        raw.push(r);
        if kind == "fp32" {
            large_rate = large.rate;
        }
    }
    println!("ratio int8 raw / fp32 raw: {:.3}", raw[1] / raw[0]);
    if a.peer {
        peer(&a, large_rate);
    }
}

/// The CPU model and whether it has the VNNI instructions ONNX Runtime's int8 kernels use.
fn cpu_summary() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        info.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']).to_string()).unwrap_or_else(|| "unknown".into());
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or_default();
    let vnni: Vec<&str> = ["avx512_vnni", "avx_vnni"].into_iter().filter(|f| flags.split_whitespace().any(|x| x == *f)).collect();
    format!(
        "{model}, {} cores, VNNI: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if vnni.is_empty() { "none".to_string() } else { vnni.join(", ") }
    )
}

/// `retrain quantize --calibrate` on 64 MTFL training images, into `dir`.
fn quantized(a: &Args, dir: &Path) -> PathBuf {
    let out = dir.join("int8.onnx");
    let o = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(["quantize", "--calibrate", "--split", "training", "--images", "64"])
        .arg("--model")
        .arg(&a.model)
        .arg("--mtfl")
        .arg(&a.mtfl)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run retrain quantize");
    assert!(o.status.success(), "retrain quantize failed: {}", String::from_utf8_lossy(&o.stderr));
    print!("{}", String::from_utf8_lossy(&o.stdout));
    out
}

/// Preprocesses `raw_batches` batches of distinct images once, then times inference alone on them.
fn raw_images_per_second(a: &Args, model: &Path) -> f64 {
    let config = SessionConfig::new(Device::Cpu);
    let mut model = Model::load(model, &config, None).expect("load model");
    let data = mtfl::load(&a.mtfl, Split::Testing).expect("MTFL");
    let pre = Preprocess { crop: Crop::Original, input: model.input.clone() };
    let len = model.input.image_len();
    let batches: Vec<Vec<f32>> = data.samples[..a.batch * a.raw_batches]
        .chunks(a.batch)
        .map(|chunk| {
            let mut t = vec![0f32; chunk.len() * len];
            for (s, slot) in chunk.iter().zip(t.chunks_mut(len)) {
                pre.load_into(s, slot).expect("image");
            }
            t
        })
        .collect();
    model.run(batches[0].clone(), a.batch).expect("warm-up");
    let start = Instant::now();
    for _ in 0..a.raw_rounds {
        for batch in &batches {
            model.run(batch.clone(), a.batch).expect("run");
        }
    }
    (a.raw_rounds * a.raw_batches * a.batch) as f64 / start.elapsed().as_secs_f64()
}

/// One core's preprocessing rate, before and after, on MTFL images and on camera-size JPEGs.
fn preprocessing_per_core(a: &Args) {
    let config = SessionConfig::new(Device::Cpu);
    let input = Model::load(&a.model, &config, None).expect("load model").input;
    let pre = Preprocess { crop: Crop::Original, input };
    let mtfl = mtfl::load(&a.mtfl, Split::Testing).expect("MTFL").samples;
    let dir = tempfile::tempdir().unwrap();
    let photos = camera_jpegs(dir.path(), 6);
    for (what, samples) in [("MTFL testing", &mtfl[..600.min(mtfl.len())]), ("generated 4000x3000 JPEG", &photos[..])] {
        let len = pre.input.image_len();
        let before = per_second(samples, len, |s, out| {
            let rgb = image::open(&s.path).expect("decode").into_rgb8();
            let resized = image::imageops::resize(&rgb, pre.input.width, pre.input.height, image::imageops::FilterType::Triangle);
            write_tensor(&resized, &pre.input, out);
        });
        let after = per_second(samples, len, |s, out| {
            pre.load_into(s, out).expect("load");
        });
        println!(
            "preprocessing on one core, {what} ({} images): image crate {before:.1} images/s, libjpeg-turbo + fast_image_resize {after:.1} images/s",
            samples.len()
        );
        println!("ratio preprocessing new / old ({what}): {:.2}", after / before);
    }
}

fn per_second(samples: &[Sample], len: usize, mut load: impl FnMut(&Sample, &mut [f32])) -> f64 {
    let mut out = vec![0f32; len];
    let start = Instant::now();
    for s in samples {
        load(s, &mut out);
    }
    samples.len() as f64 / start.elapsed().as_secs_f64()
}

/// `n` 12-megapixel JPEGs (quality 90) of smooth shapes with sensor-like noise.
fn camera_jpegs(dir: &Path, n: u32) -> Vec<Sample> {
    (0..n)
        .map(|k| {
            let mut noise = retrain::rng::Rng::new(k as u64);
            let img = image::RgbImage::from_fn(4000, 3000, |x, y| {
                let wave = |period: f32, t: f32| 127.0 + 100.0 * (t / period + k as f32).sin();
                let px = [wave(400.0, x as f32), wave(300.0, y as f32), wave(650.0, (x + y) as f32)];
                image::Rgb(px.map(|v| (v + 16.0 * (noise.next_f32() - 0.5)) as u8))
            });
            let path = dir.join(format!("photo{k}.jpg"));
            let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 90).encode_image(&img).unwrap();
            Sample { key: format!("photo{k}.jpg").into(), path, labels: vec![], landmarks: None }
        })
        .collect()
}

struct Extracted {
    images: usize,
    rate: f64,
    peak_rss_kib: i64,
}

/// `retrain extract --limit n` in a child process; its own rate line and its peak RSS.
fn run_extract(a: &Args, model: &Path, n: usize, out: &Path) -> Extracted {
    let mut child = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(["extract", "--quiet", "--split", "testing", "--crop", "original"])
        .args(["--batch", &a.batch.to_string(), "--limit", &n.to_string()])
        .arg("--model")
        .arg(model)
        .arg("--mtfl")
        .arg(&a.mtfl)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn retrain");
    let (status, peak_rss_kib) = wait_with_peak_rss(&mut child);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut text).unwrap();
    assert!(status.success(), "retrain extract failed: {text}");
    Extracted { images: n, rate: rate_from_report(&text), peak_rss_kib }
}

/// Waits for `child`, polling its own high-water RSS (VmHWM) from /proc while it runs. Not
/// wait4's ru_maxrss: Linux starts a forked child's maxrss at the parent's RSS, so that
/// reports this benchmark's own memory (models and tensors loaded) whenever it is larger.
fn wait_with_peak_rss(child: &mut std::process::Child) -> (std::process::ExitStatus, i64) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        let hwm = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.split_whitespace().next()?.parse::<i64>().ok()));
        peak = peak.max(hwm.unwrap_or(0));
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A gender head on `cache`, exported with `model`, then `retrain predict` on the cache's images.
fn run_predict(a: &Args, model: &Path, cache: &Path, work: &Path) -> f64 {
    let (head, exported, list) = (work.join("gender.onnx"), work.join("model.onnx"), work.join("list.txt"));
    let retrain = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(env!("CARGO_BIN_EXE_retrain")).args(args).output().expect("run retrain");
        assert!(o.status.success(), "retrain {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    retrain(&[&os("train-head"), &os("--attribute"), &os("gender"), &os("--cache"), cache.as_os_str(), &os("--out"), head.as_os_str()]);
    retrain(&[&os("export"), &os("--model"), model.as_os_str(), &os("--head"), head.as_os_str(), &os("--out"), exported.as_os_str()]);
    // Absolute paths: a list's relative paths are read from the list's own folder.
    let root = a.mtfl.canonicalize().unwrap();
    let lines: Vec<String> = std::fs::read_to_string(root.join("testing.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(a.large)
        .map(|l| root.join(l.split_whitespace().next().unwrap().replace('\\', "/")).display().to_string())
        .collect();
    std::fs::write(&list, lines.join("\n")).unwrap();
    let report = retrain(&[
        &os("predict"),
        &os("--quiet"),
        &os("--model"),
        exported.as_os_str(),
        &os("--list"),
        list.as_os_str(),
        &os("--batch"),
        &os(&a.batch.to_string()),
        &os("--out"),
        work.join("p.csv").as_os_str(),
    ]);
    // "... (crop original; 8.8 s, 7.2 images/s); ..."
    report.split(" images/s").next().and_then(|t| t.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no rate in: {report}"))
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
