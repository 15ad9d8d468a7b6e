//! `scripts/landmark_regressor.py` on generated faces: five bright dots on noise, placed and
//! sized differently per image. Its ridge regression on a small backbone's feature map must
//! beat the mean shape on its validation windows, and the model it writes must place the
//! points through retrain's own landmark passes (`retrain::locate`) on the whole images. A file
//! that is not an image is reported and skipped. The backbone it also writes gives the
//! backbone's bottleneck followed by the geometry of the landmarks it places (and, in its
//! degree-3 form, their products up to degree 3).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{python, repo, retrain, stderr, tiny_backbone, BOTTLENECK};
use image::{Rgb, RgbImage};
use retrain::dataset::mtfl::{self, Split};
use retrain::locate::{Locator, Passes};
use retrain::model::Model;
use retrain::preprocess::{Crop, Preprocess};
use retrain::rng::Rng;
use retrain::runtime::{Device, SessionConfig};
use serde_json::Value;

const SIDE: u32 = 48;
const BROKEN: &str = "img/broken.png";

/// `n` images of `SIDE` px in MTFL's format (training.txt only: the script never reads
/// testing.txt). The eye-to-mouth distance is about SIDE / 3.2, so each whole image is framed
/// about as the face:3.2 windows the regressor is trained on.
fn dotted_faces(root: &Path, n: usize) {
    std::fs::create_dir_all(root.join("img")).unwrap();
    let mut rng = Rng::new(5);
    let mut lines = String::new();
    for i in 0..n {
        let d = 13.0 + 3.0 * rng.next_f32();
        let (cx, cy) = (SIDE as f32 / 2.0 + 6.0 * (rng.next_f32() - 0.5), SIDE as f32 / 2.0 + 6.0 * (rng.next_f32() - 0.5));
        let x = [cx - 0.5 * d, cx + 0.5 * d, cx, cx - 0.4 * d, cx + 0.4 * d];
        let y = [cy - 0.55 * d, cy - 0.55 * d, cy, cy + 0.45 * d, cy + 0.45 * d];
        let mut image = RgbImage::from_fn(SIDE, SIDE, |_, _| Rgb([0, 0, 0].map(|_: u8| (40.0 * rng.next_f32()) as u8)));
        for (&px, &py) in x.iter().zip(&y) {
            for (dx, dy) in (-2..=2).flat_map(|dx| (-2..=2).map(move |dy| (dx, dy))) {
                let (u, v) = ((px.round() as i32 + dx) as u32, (py.round() as i32 + dy) as u32);
                if u < SIDE && v < SIDE {
                    image.put_pixel(u, v, Rgb([255, 255, 255]));
                }
            }
        }
        let key = format!("img/{i:04}.png");
        image.save(root.join(&key)).unwrap();
        let coords: Vec<String> = x.iter().chain(&y).map(|v| format!("{v:.3}")).collect();
        lines.push_str(&format!("{key} {} {} 1 2 3\n", coords.join(" "), 1 + i % 2));
    }
    // One file that is not an image: reported and skipped, the others kept.
    std::fs::write(root.join(BROKEN), b"not an image").unwrap();
    lines.push_str(&format!("{BROKEN} 20 28 24 21 27 18 18 24 30 30 1 1 2 3\n"));
    std::fs::write(root.join("training.txt"), lines).unwrap();
}

/// Mean distance of the five points over the inter-ocular distance, per image.
fn error(truth: &[f32; 10], placed: &[f32; 10]) -> f64 {
    let iod = (truth[1] - truth[0]).hypot(truth[6] - truth[5]) as f64;
    (0..5).map(|k| (truth[k] - placed[k]).hypot(truth[k + 5] - placed[k + 5]) as f64).sum::<f64>() / 5.0 / iod
}

/// A fitted run on `n` generated faces: their folder, the tiny backbone, the script's output folder.
struct Fitted {
    /// Removed when dropped: keep it bound while the files are used.
    dir: tempfile::TempDir,
    root: PathBuf,
    backbone: PathBuf,
    run: PathBuf,
    stderr: String,
}

/// `scripts/landmark_regressor.py` on the tiny backbone's `relu` map with 20% held out; must succeed.
fn fit(n: usize, ridge: &str) -> Option<Fitted> {
    let py = python()?;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mtfl");
    dotted_faces(&root, n);
    let backbone = tiny_backbone(&dir.path().join("backbone.onnx"), 3);
    let run = dir.path().join("run");
    let o = Command::new(py)
        .arg(repo().join("scripts/landmark_regressor.py"))
        .args([backbone.as_os_str(), root.as_os_str()])
        .args(["--layer", "relu", "--ridge", ridge, "--validation-percent", "20", "--quiet", "--threads", "1"])
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "landmark_regressor.py failed: {}", stderr(&o));
    Some(Fitted { stderr: stderr(&o), dir, root, backbone, run })
}

#[test]
fn the_ridge_landmark_model_beats_the_mean_shape_and_runs_in_retrains_landmark_passes() {
    let Some(Fitted { dir: _dir, root, run, stderr, .. }) = fit(240, "0.1,10,1000") else { return }; // _dir: the folder lives to the end
    assert!(stderr.contains(&format!("skipped {}", root.join(BROKEN).display())), "the broken image is not reported: {stderr}");
    let result: Value = serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    let chosen = result["val_tasks"][0]["mean_error"].as_f64().unwrap();
    let mean_shape = result["mean_shape"]["mean_error"].as_f64().unwrap();
    println!("validation: regressor {chosen:.4}, mean shape {mean_shape:.4}");
    assert_eq!(result["val_tasks"][0]["name"], "landmarks");
    let lowest = result["candidates"].as_array().unwrap().iter().map(|c| c["mean_error"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
    assert_eq!(chosen, lowest, "the strength kept is the one with the lowest validation error");
    assert!(chosen < 0.6 * mean_shape, "validation error {chosen} is not well below the mean shape's {mean_shape}");

    // The written model through retrain's own passes on the whole images, their annotations withheld.
    let mut samples = mtfl::load(&root, Split::Training).unwrap().samples;
    samples.retain(|s| s.key != BROKEN);
    let truth: Vec<[f32; 10]> = samples.iter().map(|s| s.landmarks.unwrap()).collect();
    let mean: [f32; 10] = std::array::from_fn(|j| truth.iter().map(|t| t[j]).sum::<f32>() / truth.len() as f32);
    samples.iter_mut().for_each(|s| s.landmarks = None);
    let mut locator = Locator::load(&run.join("model.onnx"), &SessionConfig::new(Device::Cpu)).unwrap();
    locator.locate(&mut samples, Passes { count: 2, mirror: true }, 16, Some(1), false).unwrap();
    let mean_of = |errors: Vec<f64>| errors.iter().sum::<f64>() / errors.len() as f64;
    let located = mean_of(samples.iter().zip(&truth).map(|(s, t)| error(t, &s.landmarks.expect("placed"))).collect());
    let baseline = mean_of(truth.iter().map(|t| error(t, &mean)).collect());
    println!("whole images through retrain::locate: {located:.4}, the mean shape {baseline:.4}");
    assert!(located < 0.6 * baseline, "located error {located} is not well below the mean shape's {baseline}");
}

/// The geometry `BACKBONE-geometry.onnx` appends: the points relative to the eyes' centre, then the
/// inter-ocular distance, all over the eye-to-mouth distance.
fn geometry(l: &[f32]) -> Vec<f32> {
    let (ex, ey) = ((l[0] + l[1]) / 2.0, (l[5] + l[6]) / 2.0);
    let (mx, my) = ((l[3] + l[4]) / 2.0, (l[8] + l[9]) / 2.0);
    let d = (mx - ex).hypot(my - ey) + 1e-6;
    let mut g: Vec<f32> = (0..10).map(|j| (l[j] - if j < 5 { ex } else { ey }) / d).collect();
    g.push((l[1] - l[0]).hypot(l[6] - l[5]) / d);
    g
}

/// `values` followed by every product of two of them and of three (indices i <= j <= k, in
/// lexicographic order), as `BACKBONE-geometry3.onnx` appends them.
fn with_products_up_to_degree_3(values: &[f32]) -> Vec<f32> {
    let n = values.len();
    let mut all = values.to_vec();
    all.extend((0..n).flat_map(|i| (i..n).map(move |j| values[i] * values[j])));
    all.extend((0..n).flat_map(|i| (i..n).flat_map(move |j| (j..n).map(move |k| values[i] * values[j] * values[k]))));
    all
}

#[test]
fn the_backbone_with_geometry_appends_the_placed_landmarks_geometry_to_the_bottleneck() {
    let Some(Fitted { dir, root, backbone, run, .. }) = fit(60, "10") else { return };
    let config = SessionConfig::new(Device::Cpu);
    let mut plain = Model::load(&backbone, &config, None).unwrap();
    let mut with_geometry = Model::load(&run.join("backbone-geometry.onnx"), &config, None).unwrap();
    let mut landmarks = Model::load(&run.join("model.onnx"), &config, Some("landmarks")).unwrap();
    assert_eq!(with_geometry.output_dim, BOTTLENECK + 11, "the bottleneck, then 11 geometry values");
    let samples = mtfl::load(&root, Split::Training).unwrap().samples;
    let pre = Preprocess { crop: Crop::Original, input: plain.input.clone() };
    let mut tensor = vec![0f32; 4 * pre.input.image_len()];
    for (s, slot) in samples.iter().take(4).zip(tensor.chunks_mut(pre.input.image_len())) {
        pre.load_into(s, slot).unwrap();
    }
    let mut cubic = Model::load(&run.join("backbone-geometry3.onnx"), &config, None).unwrap();
    assert_eq!(cubic.output_dim, BOTTLENECK + 11 + 66 + 286, "the bottleneck, the 11 values, their products of two and of three");
    let bottleneck = plain.run(tensor.clone(), 4).unwrap();
    let placed = landmarks.run(tensor.clone(), 4).unwrap();
    for (model, expand) in [(&mut with_geometry, (|g| g) as fn(Vec<f32>) -> Vec<f32>), (&mut cubic, |g: Vec<f32>| with_products_up_to_degree_3(&g))] {
        let features = model.run(tensor.clone(), 4).unwrap();
        let width = model.output_dim;
        for i in 0..4 {
            let row = &features[i * width..(i + 1) * width];
            assert_eq!(&row[..BOTTLENECK], &bottleneck[i * BOTTLENECK..(i + 1) * BOTTLENECK], "image {i}: the bottleneck as it was");
            let want = expand(geometry(&placed[i * 10..(i + 1) * 10]));
            assert_eq!(row.len() - BOTTLENECK, want.len());
            for (j, (got, want)) in row[BOTTLENECK..].iter().zip(want).enumerate() {
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "image {i} value {j} of width {width}: {got}, expected {want}");
            }
        }
    }

    // A head on the degree-3 bottleneck, exported with the landmark model inside (both place
    // landmarks, under names of their own), answers on plain images.
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (cache, head, located, out) = (path("cache.h5"), path("gender.onnx"), path("located.onnx"), path("p.csv"));
    let (geo, marks, mtfl) = (path("run/backbone-geometry3.onnx"), path("run/model.onnx"), path("mtfl"));
    for args in [
        vec!["extract", "--model", &geo, "--mtfl", &mtfl, "--split", "training", "--crop", "face", "--out", &cache],
        vec!["train-head", "--attribute", "gender", "--cache", &cache, "--out", &head],
        vec!["export", "--model", &geo, "--head", &head, "--landmarks", &marks, "--out", &located],
    ] {
        let o = retrain(&args);
        assert!(o.status.success(), "retrain {args:?} failed: {}", stderr(&o));
    }
    let list = dir.path().join("photos.txt");
    std::fs::write(&list, samples.iter().take(8).map(|s| format!("{}\n", s.path.display())).collect::<String>()).unwrap();
    let o = retrain(&["predict", "--model", &located, "--list", list.to_str().unwrap(), "--out", &out]);
    assert!(o.status.success(), "predict failed: {}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 1 + 8, "a header and one row per photo");
}
