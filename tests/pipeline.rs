//! Images -> extract -> heads -> eval -> export -> predict, with real PNGs, a real (tiny) ONNX
//! backbone, ONNX Runtime and HDF5. The exported model must give `eval`'s classes for every
//! test image, and load in Python's onnxruntime too.

mod common;

use std::path::{Path, PathBuf};

use common::{constant_landmark_model, linear_landmark_model, python, retrain, stderr, stdout, synthetic_mtfl, tiny_backbone, IMAGE_SIZE};
use retrain::cache::{Cache, Shard};
use retrain::dataset::mtfl::{self, Split};
use retrain::eval::{self, Evaluation};
use retrain::export::{self, Input};
use retrain::extract::{self, ExtractOptions};
use retrain::head::{self, HeadOptions, Solver};
use retrain::locate::Passes;
use retrain::model::Model;
use retrain::predict::{self, PredictOptions};
use retrain::preprocess::Crop;
use retrain::runtime::{self, Device, SessionConfig};

fn cpu() -> SessionConfig {
    SessionConfig { intra_threads: Some(1), ..SessionConfig::new(Device::Cpu) }
}

/// A synthetic MTFL folder and a backbone in a fresh temporary folder.
struct World {
    dir: tempfile::TempDir,
    mtfl: PathBuf,
    backbone: PathBuf,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let mtfl = dir.path().join("MTFL");
    synthetic_mtfl(&mtfl, 240, 120);
    let backbone = tiny_backbone(&dir.path().join("backbone.onnx"), 1);
    World { dir, mtfl, backbone }
}

fn extract_split(w: &World, backbone: &Path, split: Split, crop: Crop) -> PathBuf {
    let dataset = mtfl::load(&w.mtfl, split).unwrap();
    let mut model = Model::load(backbone, &cpu(), None).unwrap();
    let opts = ExtractOptions {
        crop,
        batch: 32,
        out: Some(w.dir.path().join(format!("{}-{crop}.h5", split.name()).replace(':', "-"))),
        cache_dir: w.dir.path().to_path_buf(),
        limit: None,
        shard: Shard::WHOLE,
        strict: true,
        decode_threads: Some(1),
        show_progress: false,
    };
    extract::extract(&dataset, &mut model, &opts).unwrap().out
}

/// Trains and saves heads for gender and smile; returns their paths.
fn heads(w: &World, train_cache: &Path, tag: &str) -> Vec<PathBuf> {
    let cache = Cache::read(train_cache).unwrap();
    ["gender", "smile"]
        .iter()
        .map(|a| {
            let trained = head::train(&cache, train_cache, &HeadOptions::new(a, Solver::Linfa), &mut |_| {}).unwrap();
            let path = w.dir.path().join(format!("{tag}-{a}.onnx"));
            trained.head.save(&path, &trained.curve).unwrap();
            path
        })
        .collect()
}

fn paths(v: &[PathBuf]) -> Vec<&Path> {
    v.iter().map(PathBuf::as_path).collect()
}

fn predict_all(model_path: &Path, list: &Path) -> predict::PredictSummary {
    let mut model = Model::load(model_path, &cpu(), None).unwrap();
    let samples = predict::images_from_list(list).unwrap();
    let opts = PredictOptions { crop: None, batch: 7, decode_threads: Some(1), show_progress: false };
    predict::predict(&mut model, &samples, &opts).unwrap()
}

/// Same image, same class, (nearly) the same probabilities, for every test image.
fn assert_agree(e: &Evaluation, summary: &predict::PredictSummary, attribute_index: usize) {
    let p = &summary.table;
    assert_eq!(p.len(), e.predictions.len());
    for i in 0..p.len() {
        let j = e.predictions.paths.iter().position(|k| *k == p.paths[i]).unwrap();
        assert_eq!(p.predicted(attribute_index, i), e.predictions.predicted(0, j), "{}", p.paths[i]);
        for (a, b) in p.row(attribute_index, i).iter().zip(e.predictions.row(0, j)) {
            assert!((a - b).abs() < 1e-4, "{}: {a} vs {b}", p.paths[i]);
        }
    }
}

#[test]
fn exported_model_predicts_what_eval_scored_for_every_test_image() {
    let w = world();
    let train = extract_split(&w, &w.backbone, Split::Training, Crop::Original);
    let test = extract_split(&w, &w.backbone, Split::Testing, Crop::Original);
    let heads = heads(&w, &train, "original");
    let evals: Vec<Evaluation> = heads.iter().map(|h| eval::evaluate(h, &test, &cpu()).unwrap()).collect();
    assert!(evals[0].metrics.accuracy > 0.8, "gender accuracy {}", evals[0].metrics.accuracy);
    assert!(evals[1].metrics.accuracy > 0.7, "smile accuracy {}", evals[1].metrics.accuracy);

    let model_path = w.dir.path().join("model.onnx");
    let exported = export::export(&w.backbone, &paths(&heads), &model_path, Input::Tensor).unwrap();
    assert_eq!(exported.iter().map(|h| h.output.as_str()).collect::<Vec<_>>(), ["p_gender", "p_smile"]);
    let model = Model::load(&model_path, &cpu(), None).unwrap();
    let outputs: Vec<&str> = model.session.outputs().iter().map(|o| o.name()).collect();
    assert_eq!(outputs, ["bottleneck", "p_gender", "p_smile"], "the backbone's own classifier is pruned");
    assert_eq!(model.description.crop, Some(Crop::Original));
    // the heads' class names, not those of the backbone's own classifier
    assert_eq!(model.description.labels, None);
    assert_eq!(model.description.task_labels["gender"], ["male", "female"]);
    assert_eq!(model.description.task_labels["smile"], ["smiling", "not_smiling"]);

    let summary = predict_all(&model_path, &w.mtfl.join("testing.txt"));
    assert!(summary.skipped.is_empty());
    assert_agree(&evals[0], &summary, 0);
    assert_agree(&evals[1], &summary, 1);
    let csv = w.dir.path().join("preds.csv");
    summary.table.write(&csv).unwrap();
    let header = std::fs::read_to_string(&csv).unwrap().lines().next().unwrap().to_string();
    assert_eq!(header, "path,gender,p_gender_male,p_gender_female,smile,p_smile_smiling,p_smile_not_smiling");
}

/// `retrain predict --model M photo.jpg` prints the CSV on standard output (also with `--out
/// -`), the progress and summary on standard error; a one-head model names its labels.
#[test]
fn predict_without_out_writes_the_csv_to_standard_output() {
    let w = world();
    let train = extract_split(&w, &w.backbone, Split::Training, Crop::Original);
    let heads = heads(&w, &train, "original");
    let model_path = w.dir.path().join("gender.onnx");
    export::export(&w.backbone, &paths(&heads[..1]), &model_path, Input::Tensor).unwrap();
    let described = Model::load(&model_path, &cpu(), None).unwrap().description;
    assert_eq!((described.attribute.as_deref(), described.labels), (Some("gender"), Some(vec!["male".to_string(), "female".to_string()])));
    let image = predict::images_from_list(&w.mtfl.join("testing.txt")).unwrap().remove(0).path;
    let (model, image) = (model_path.to_str().unwrap(), image.to_str().unwrap());
    for out in [&[][..], &["--out", "-"][..]] {
        let o = retrain(&[&["predict", "--model", model, image][..], out].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        let printed = stdout(&o);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), 2, "{printed}");
        assert_eq!(lines[0], "path,gender,p_gender_male,p_gender_female");
        assert!(lines[1].starts_with(&format!("{image},")), "{printed}");
        assert!(stderr(&o).contains("wrote 1 predictions to standard output"), "{}", stderr(&o));
    }
    assert!(!common::repo().join("-").exists(), "`--out -` wrote a file named -");
}

/// onnx.checker accepts the exported file and Python's onnxruntime computes what ours computes.
#[test]
fn the_exported_model_passes_onnx_checker_and_runs_in_python_onnxruntime() {
    let Some(python) = python() else { return };
    let w = world();
    let train = extract_split(&w, &w.backbone, Split::Training, Crop::Original);
    let model_path = w.dir.path().join("model.onnx");
    export::export(&w.backbone, &paths(&heads(&w, &train, "original")), &model_path, Input::Tensor).unwrap();
    let model_path = model_path.as_path();
    let mut model = Model::load(model_path, &cpu(), None).unwrap();
    let n = 2 * model.input.image_len();
    let input: Vec<f32> = (0..n).map(|i| (i % 17) as f32 / 17.0).collect();
    let ours = runtime::run_f32(&mut model.session, "input", &model.input.batch_shape(2), input, &["p_gender".into()]).unwrap().remove(0).1;
    let script = r#"
import sys, onnx, onnxruntime as ort, numpy as np
m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True)
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = (np.arange(2 * 3 * 16 * 16) % 17).astype(np.float32).reshape(2, 3, 16, 16) / 17
print(" ".join(f"{v:.7f}" for v in s.run(["p_gender"], {"input": x})[0].ravel()))
"#;
    let out = std::process::Command::new(python).args(["-c", script]).arg(model_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<f32> = String::from_utf8(out.stdout).unwrap().split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(theirs.len(), ours.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-5, "Rust {ours:?} vs Python {theirs:?}");
    }
}

#[test]
fn the_nose_crop_travels_from_cache_to_exported_model_to_predict() {
    let w = world();
    let crop: Crop = "nose:12".parse().unwrap();
    let train = extract_split(&w, &w.backbone, Split::Training, crop);
    let test = extract_split(&w, &w.backbone, Split::Testing, crop);
    let heads = heads(&w, &train, "nose");
    let e = eval::evaluate(&heads[0], &test, &cpu()).unwrap();
    let model_path = w.dir.path().join("nose.onnx");
    export::export(&w.backbone, &paths(&heads), &model_path, Input::Tensor).unwrap();
    let summary = predict_all(&model_path, &w.mtfl.join("testing.txt"));
    assert_eq!(summary.crop, crop);
    assert_agree(&e, &summary, 0);
}

#[test]
fn export_refuses_heads_it_cannot_join() {
    let w = world();
    let train = extract_split(&w, &w.backbone, Split::Training, Crop::Original);
    let heads = heads(&w, &train, "original");
    let out = w.dir.path().join("never.onnx");

    let other_backbone = tiny_backbone(&w.dir.path().join("other.onnx"), 2);
    let err = format!("{:#}", export::export(&other_backbone, &paths(&heads), &out, Input::Tensor).err().unwrap());
    assert!(err.contains("sha256") && err.contains("other.onnx"), "{err}");

    let twice = [heads[0].as_path(), heads[0].as_path()];
    let err = format!("{:#}", export::export(&w.backbone, &twice, &out, Input::Tensor).err().unwrap());
    assert!(err.contains("two heads for attribute 'gender'"), "{err}");

    let nose_train = extract_split(&w, &w.backbone, Split::Training, "nose:12".parse().unwrap());
    let nose_heads = self::heads(&w, &nose_train, "nose");
    let err = format!("{:#}", export::export(&w.backbone, &[heads[0].as_path(), nose_heads[1].as_path()], &out, Input::Tensor).err().unwrap());
    assert!(err.contains("differently preprocessed"), "{err}");
    assert!(!out.exists());
}

/// tests/support/onnxruntime_predict.py (PIL + onnxruntime, the model's metadata alone) runs a
/// face-crop model, and places every crop window where retrain does.
#[test]
fn the_python_predictor_runs_face_crop_models_and_crops_as_retrain_does() {
    let Some(python) = python() else { return };
    let w = world();
    let crop: Crop = "face:2.5".parse().unwrap();
    let train = extract_split(&w, &w.backbone, Split::Training, crop);
    let model_path = w.dir.path().join("face.onnx");
    export::export(&w.backbone, &paths(&heads(&w, &train, "face")), &model_path, Input::Tensor).unwrap();
    let csv = w.dir.path().join("python.csv");
    let script = common::repo().join("tests/support/onnxruntime_predict.py");
    let o = std::process::Command::new(&python)
        .arg(&script)
        .arg(&model_path)
        .arg("--list")
        .arg(w.mtfl.join("testing.txt"))
        .arg("--out")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 1 + 120);

    // The windows of both crops on landmarks near the borders, in images larger and smaller than them.
    let cases: [(u32, u32, [f32; 10]); 3] = [
        (250, 250, [105.0, 145.0, 125.0, 110.0, 140.0, 100.0, 100.0, 120.0, 140.0, 140.0]),
        (160, 216, [10.0, 40.0, 20.0, 12.0, 38.0, 30.0, 31.0, 45.0, 60.0, 61.0]),
        (90, 60, [70.0, 88.0, 80.0, 72.0, 86.0, 40.0, 41.0, 50.0, 58.0, 57.0]),
    ];
    let code = r#"
import sys, json
sys.path.insert(0, sys.argv[1])
from onnxruntime_predict import crop_box
for crop, w, h, l in json.loads(sys.argv[2]):
    x0, y0, x1, y1 = crop_box(crop, w, h, l)
    print(x0, y0, x1 - x0, y1 - y0)
"#;
    let crops = ["face", "face:2.5", "nose", "nose:40", "original"];
    let mut asked = Vec::new();
    let mut ours = Vec::new();
    for (w_, h_, l) in cases {
        for c in crops {
            asked.push(serde_json::json!([c, w_, h_, l]));
            let window = match c.parse::<Crop>().unwrap() {
                Crop::Face { scale_percent } => retrain::preprocess::face_window(scale_percent, w_, h_, Some(l)).unwrap(),
                other => retrain::preprocess::crop_window(other, w_, h_, Some((l[2], l[7]))).unwrap(),
            };
            ours.push(format!("{} {} {} {}", window.0, window.1, window.2, window.3));
        }
    }
    let o = std::process::Command::new(&python)
        .args(["-c", code])
        .arg(common::repo().join("tests/support"))
        .arg(serde_json::Value::Array(asked).to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
    assert_eq!(theirs, ours, "crop windows differ between tests/support/onnxruntime_predict.py and retrain");
}

/// A second `retrain reproduce` with nothing changed extracts nothing and fits no head: every
/// head is read back (the same bytes); a head whose cache grew is fitted again.
#[test]
fn a_second_reproduce_reuses_every_head_and_a_changed_cache_refits() {
    let w = world();
    let (cache, out) = (w.dir.path().join("cache"), w.dir.path().join("report"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let reproduce = |limit: &str| {
        let args = ["reproduce", "--mtfl", &s(&w.mtfl), "--model", &s(&w.backbone), "--cache-dir", &s(&cache), "--out", &s(&out)];
        let o = common::retrain(&[&args[..], &["--crops", "original", "--limit", limit, "--quiet"]].concat());
        assert!(o.status.success(), "{}", common::stderr(&o));
        common::stderr(&o)
    };
    let heads = ["gender-sgd", "gender-linfa", "smile-sgd", "smile-linfa"].map(|h| out.join(format!("original/{h}.onnx")));
    let first = reproduce("100");
    assert_eq!(first.matches("reused").count(), 0, "{first}");
    let bytes: Vec<Vec<u8>> = heads.iter().map(|h| std::fs::read(h).unwrap()).collect();
    let again = reproduce("100");
    assert_eq!(again.matches("reused: same cache contents and settings").count(), 4, "{again}");
    assert!(again.contains("0 new rows"), "{again}");
    assert_eq!(heads.iter().map(|h| std::fs::read(h).unwrap()).collect::<Vec<_>>(), bytes, "a reused head is left as it was");
    // more images: the caches grow, so every head is fitted again
    let grown = reproduce("120");
    assert_eq!(grown.matches("reused").count(), 0, "{grown}");
}

/// `export --pixel-input`: fed each whole decoded image, the graph's own resize and scaling
/// give the features extract cached (Rust's pipeline), and predict the classes eval scored.
#[test]
fn a_pixel_input_model_prepares_images_as_extract_does() {
    let w = world();
    let train = extract_split(&w, &w.backbone, Split::Training, Crop::Original);
    let test = extract_split(&w, &w.backbone, Split::Testing, Crop::Original);
    let heads = heads(&w, &train, "original");
    let e = eval::evaluate(&heads[0], &test, &cpu()).unwrap();
    let model_path = w.dir.path().join("pixels.onnx");
    export::export(&w.backbone, &paths(&heads), &model_path, Input::Pixels).unwrap();
    let mut model = Model::load(&model_path, &cpu(), None).unwrap();
    assert!(model.pixel_input);
    assert_eq!(model.input_name, export::PIXELS);

    let cache = Cache::read(&test).unwrap();
    let mut worst = 0f32;
    for (row, key) in cache.paths.iter().enumerate() {
        let image = retrain::preprocess::decode_whole(&w.mtfl.join(key)).unwrap();
        let shape = [1, image.height() as usize, image.width() as usize, 3];
        let ours = runtime::run_f32(&mut model.session, export::PIXELS, &shape, image.into_raw(), &["bottleneck".into()]).unwrap().remove(0).1;
        for (a, b) in ours.iter().zip(cache.features.row(row)) {
            worst = worst.max((a - b).abs() / b.abs().max(1.0));
        }
    }
    // extract's resize is fixed-point, the graph's float: at most a rounding step on some pixels.
    assert!(worst < 1e-2, "graph features differ from extract's by up to {worst} (relative)");

    let summary = predict_all(&model_path, &w.mtfl.join("testing.txt"));
    assert!(summary.skipped.is_empty());
    let p = &summary.table;
    for i in 0..p.len() {
        let j = e.predictions.paths.iter().position(|k| *k == p.paths[i]).unwrap();
        for (a, b) in p.row(0, i).iter().zip(e.predictions.row(0, j)) {
            assert!((a - b).abs() < 1e-2, "{}: {a} vs {b}", p.paths[i]);
        }
    }
}

/// tests/support/onnxruntime_predict.py feeds a pixel-input model PIL's decoded images as they are,
/// and gets retrain predict's probabilities (to the CSV's 6 decimals).
#[test]
fn a_pixel_input_model_gives_python_onnxruntime_retrains_answer() {
    let Some(python) = python() else { return };
    let w = world();
    let train = extract_split(&w, &w.backbone, Split::Training, Crop::Original);
    let model_path = w.dir.path().join("pixels.onnx");
    export::export(&w.backbone, &paths(&heads(&w, &train, "original")), &model_path, Input::Pixels).unwrap();
    let summary = predict_all(&model_path, &w.mtfl.join("testing.txt"));
    let csv = w.dir.path().join("python.csv");
    let o = std::process::Command::new(&python)
        .arg(common::repo().join("tests/support/onnxruntime_predict.py"))
        .arg(&model_path)
        .args(["--list".as_ref(), w.mtfl.join("testing.txt").as_os_str(), "--out".as_ref(), csv.as_os_str()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 1 + summary.table.len());
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let i = summary.table.paths.iter().position(|k| k == cells[0]).unwrap();
        for (attribute, columns) in [(0, 2..4), (1, 5..7)] {
            for (a, b) in summary.table.row(attribute, i).iter().zip(&cells[columns]) {
                let b: f32 = b.parse().unwrap();
                assert!((a - b).abs() < 2e-6, "{}: retrain {a} vs Python {b}", cells[0]);
            }
        }
    }
}

#[test]
fn a_pixel_input_model_is_refused_for_landmark_crops_and_by_extract() {
    let w = world();
    let nose = extract_split(&w, &w.backbone, Split::Training, "nose:12".parse().unwrap());
    let out = w.dir.path().join("never.onnx");
    let err = format!("{:#}", export::export(&w.backbone, &paths(&heads(&w, &nose, "nose")), &out, Input::Pixels).unwrap_err());
    assert!(err.contains("--pixel-input needs heads trained on crop original") && err.contains("nose:12"), "{err}");
    assert!(!out.exists());

    let train = extract_split(&w, &w.backbone, Split::Training, Crop::Original);
    let model_path = w.dir.path().join("pixels.onnx");
    export::export(&w.backbone, &paths(&heads(&w, &train, "original")), &model_path, Input::Pixels).unwrap();
    let mut model = Model::load(&model_path, &cpu(), None).unwrap();
    let err = format!("{:#}", model.run(vec![0.0; model.input.image_len()], 1).unwrap_err());
    assert!(err.contains("--pixel-input") && err.contains("pixels.onnx"), "{err}");
}

/// The synthetic images' annotated landmarks as fractions of the whole image.
fn annotated_fractions() -> [f32; 10] {
    let c = IMAGE_SIZE as f32 / 2.0;
    [8.0, 16.0, c, 9.0, 15.0, 8.0, 8.0, c, 17.0, 17.0].map(|v| v / IMAGE_SIZE as f32)
}

#[test]
fn a_landmark_model_places_landmarks_on_the_whole_image_then_on_its_own_crop() {
    let w = world();
    let plain: Vec<_> =
        predict::images_from_list(&w.mtfl.join("testing.txt")).unwrap().into_iter().map(|s| retrain::dataset::Sample { landmarks: None, ..s }).collect();
    let f = annotated_fractions();
    let side = IMAGE_SIZE as f32;
    // face:1.5 keeps a window smaller than these 24 x 24 images (the default 3.2 takes them whole)
    for (crop, passes) in [(None, 2), (Some("face:1.5"), 1), (Some("face:1.5"), 2)] {
        let model = constant_landmark_model(&w.dir.path().join("landmarks.onnx"), f, crop);
        let mut samples = plain.clone();
        let mut locator = retrain::locate::Locator::load(&model, &cpu()).unwrap();
        locator.locate(&mut samples, Passes { count: passes, mirror: false }, 7, Some(1), false).unwrap();
        // pass 1: fractions of the whole 24 x 24 image; pass 2 on a face crop: of its window
        let first = f.map(|v| v * side);
        let want = match (crop, passes) {
            (Some(_), 2) => {
                let (x, y, cw, ch) = retrain::preprocess::face_window(150, IMAGE_SIZE, IMAGE_SIZE, Some(first)).unwrap();
                assert!(cw < IMAGE_SIZE, "the second pass sees a crop, not the whole image");
                retrain::preprocess::Window::from((x, y, cw, ch)).to_pixels(&f)
            }
            _ => first,
        };
        for s in &samples {
            let got = s.landmarks.unwrap_or_else(|| panic!("{crop:?}/{passes}: {} has no landmarks", s.name()));
            assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-4), "{crop:?}/{passes}: {got:?} vs {want:?}");
        }
    }
}

/// With `mirror`, each pass averages the model's answer with its answer on the mirrored input,
/// flipped back: a constant model gives the mean of its points and their mirror image.
#[test]
fn mirror_averaging_flips_the_mirrored_estimate_back_before_averaging() {
    let w = world();
    let (_, plain) = plain_list(&w);
    let f = annotated_fractions();
    let model = constant_landmark_model(&w.dir.path().join("landmarks.onnx"), f, None);
    let mut samples = plain.clone();
    retrain::locate::Locator::load(&model, &cpu()).unwrap().locate(&mut samples, Passes { count: 1, mirror: true }, 7, Some(1), false).unwrap();
    let mut back = f;
    retrain::augment::mirror_landmarks(&mut back);
    // x: the mean of x and 1 - x of the other side's point; y: the mean of the pair's y
    let want: Vec<f32> = f.iter().zip(back).map(|(a, b)| (a + b) * 0.5 * IMAGE_SIZE as f32).collect();
    assert!((want[0] - (f[0] + 1.0 - f[1]) * 0.5 * IMAGE_SIZE as f32).abs() < 1e-4, "{want:?}");
    for s in &samples {
        let got = s.landmarks.unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4), "{}: {got:?} vs {want:?}", s.name());
    }
}

/// Mirror averaging makes the estimate mirror-symmetric: on the mirrored photo it places the
/// mirror image of what it places on the photo, even for a model whose own answer is not
/// (without averaging the two differ). Both passes, the second on the model's own crop.
#[test]
fn with_mirror_averaging_a_mirrored_photo_gets_mirrored_landmarks() {
    let w = world();
    let (_, plain) = plain_list(&w);
    let model = linear_landmark_model(&w.dir.path().join("landmarks.onnx"), annotated_fractions(), Some("face:1.5"));
    let mirrored: Vec<_> = plain
        .iter()
        .map(|s| {
            let path = w.dir.path().join(format!("mirrored-{}", s.path.file_name().unwrap().to_string_lossy()));
            image::imageops::flip_horizontal(&image::open(&s.path).unwrap().to_rgb8()).save(&path).unwrap();
            retrain::dataset::Sample { path: path.clone(), key: path.clone().into_os_string(), ..s.clone() }
        })
        .collect();
    let side = IMAGE_SIZE as f32;
    let mirror_pixels = |p: [f32; 10]| {
        let mut f = p.map(|v| v / side);
        retrain::augment::mirror_landmarks(&mut f);
        f.map(|v| v * side)
    };
    for mirror in [true, false] {
        let located = |samples: &[retrain::dataset::Sample]| {
            let mut samples = samples.to_vec();
            retrain::locate::Locator::load(&model, &cpu()).unwrap().locate(&mut samples, Passes { count: 2, mirror }, 7, Some(1), false).unwrap();
            samples.iter().map(|s| s.landmarks.unwrap()).collect::<Vec<_>>()
        };
        let (on_photo, on_mirror) = (located(&plain), located(&mirrored));
        let worst = on_photo.iter().zip(&on_mirror).flat_map(|(p, m)| mirror_pixels(*p).into_iter().zip(*m).map(|(a, b)| (a - b).abs())).fold(0f32, f32::max);
        if mirror {
            assert!(worst < 1e-3, "mirror-averaged landmarks are off their mirror image by {worst} px");
        } else {
            assert!(worst > 0.1, "the test model's own answer should not be mirror-symmetric (off by {worst} px)");
        }
    }
}

#[test]
fn predict_on_plain_photos_crops_faces_from_predicted_landmarks() {
    let w = world();
    let crop = Crop::Face { scale_percent: 200 };
    let train = extract_split(&w, &w.backbone, Split::Training, crop);
    let heads = heads(&w, &train, "face");
    let model_path = w.dir.path().join("face.onnx");
    export::export(&w.backbone, &paths(&heads), &model_path, Input::Tensor).unwrap();
    let annotated = predict_all(&model_path, &w.mtfl.join("testing.txt"));
    assert_eq!(annotated.crop, crop);

    // the same images as a plain list of files: the face crop needs landmarks, so without a
    // landmark model every image is skipped, with one each is cropped where it places them
    let (list, names) = plain_list(&w);
    let without = predict_all(&model_path, &list);
    assert_eq!((without.table.len(), without.skipped.len()), (0, names.len()));
    let landmarks = constant_landmark_model(&w.dir.path().join("landmarks.onnx"), annotated_fractions(), None);
    let out = w.dir.path().join("predicted.csv");
    let args = [
        "predict",
        "--model",
        model_path.to_str().unwrap(),
        "--list",
        list.to_str().unwrap(),
        "--landmarks",
        landmarks.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    let o = retrain(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Vec<String>> = std::fs::read_to_string(&out).unwrap().lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect();
    assert_eq!(rows.len(), names.len(), "every plain photo predicted");
    // landmarks placed where the annotations are give the annotated crops' answers
    let t = &annotated.table;
    for row in &rows {
        let i = t.paths.iter().position(|p| p.ends_with(row[0].rsplit('/').next().unwrap())).unwrap();
        for a in 0..2 {
            assert_eq!(row[1 + a * 3], t.attributes[a].labels[t.predicted(a, i)], "{}", row[0]);
        }
    }
    // tests/support/score_predictions.py scores the plain list's CSV against the annotation file:
    // every image found, and landmarks placed where they are annotated are off by nothing
    let Some(python) = python() else { return };
    let script = common::repo().join("tests/support/score_predictions.py");
    let o = std::process::Command::new(&python).arg(script).arg(&out).arg(w.mtfl.join("testing.txt")).output().unwrap();
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{report}{}", stderr(&o));
    let n = names.len();
    assert!(report.contains(&format!("{n} of {n} annotated images predicted (0 missing)")), "{report}");
    assert!(report.contains("landmarks: mean error 0.00% of the inter-ocular distance, failures (> 10%) 0.0%"), "{report}");
    // and study/landmark_baseline.py: every generated face has the same landmarks, so the
    // mean face is exact in each face window and in each whole test image (the 24 x 24
    // images are smaller than a face:3.2 window)
    let script = common::repo().join("study/landmark_baseline.py");
    let o = std::process::Command::new(&python).arg(script).arg(&w.mtfl).output().unwrap();
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{report}{}", stderr(&o));
    assert_eq!(report.matches("mean error 0.00% of the inter-ocular distance, failures (> 10%) 0.0%").count(), 2, "{report}");
}

/// The test images as a plain list of files (no landmarks), and the samples it gives.
fn plain_list(w: &World) -> (PathBuf, Vec<retrain::dataset::Sample>) {
    let list = w.dir.path().join("plain.txt");
    let names: Vec<String> = predict::images_from_list(&w.mtfl.join("testing.txt")).unwrap().iter().map(|s| s.path.display().to_string()).collect();
    std::fs::write(&list, names.join("\n")).unwrap();
    let samples = predict::images_from_list(&list).unwrap();
    assert!(samples.iter().all(|s| s.landmarks.is_none()));
    (list, samples)
}

/// `export --landmarks`: the landmark model, its second pass on its own crop and the heads'
/// face crop all inside one graph. Fed plain photos it places the landmarks `predict
/// --landmarks` places with the two files (the windows are computed op for op as retrain's),
/// answers as they do, and Python onnxruntime fed PIL's decoded images answers the same.
#[test]
fn a_model_with_its_landmark_model_inside_crops_plain_photos_as_predict_landmarks_does() {
    let w = world();
    // trained on face:1.5 crops: the second pass sees a window smaller than the 24 x 24 image;
    // landmarks off the centre, so that each window is placed unlike its transpose
    let off_centre: [f32; 10] = std::array::from_fn(|j| annotated_fractions()[j] + (if j < 5 { -3.0 } else { 2.0 }) / IMAGE_SIZE as f32);
    let landmarks = constant_landmark_model(&w.dir.path().join("landmarks.onnx"), off_centre, Some("face:1.5"));
    let (list, plain) = plain_list(&w);
    let mut located = plain.clone();
    let passes = Passes { count: 2, mirror: true };
    retrain::locate::Locator::load(&landmarks, &cpu()).unwrap().locate(&mut located, passes, 7, Some(1), false).unwrap();
    for (tag, crop) in [("face", Crop::Face { scale_percent: 200 }), ("nose", Crop::Nose { size: 12 })] {
        let train = extract_split(&w, &w.backbone, Split::Training, crop);
        let heads = heads(&w, &train, tag);
        let two_files = w.dir.path().join(format!("{tag}.onnx"));
        export::export(&w.backbone, &paths(&heads), &two_files, Input::Tensor).unwrap();
        let joined = w.dir.path().join(format!("{tag}-joined.onnx"));
        export::export(&w.backbone, &paths(&heads), &joined, Input::Located(export::Landmarks { model: &landmarks, passes })).unwrap();
        let mut model = Model::load(&two_files, &cpu(), None).unwrap();
        let opts = PredictOptions { crop: None, batch: 7, decode_threads: Some(1), show_progress: false };
        let want = predict::predict(&mut model, &located, &opts).unwrap().table;
        let got = predict_all(&joined, &list);
        assert!(got.skipped.is_empty() && got.table.len() == plain.len(), "{:?}", got.skipped);
        assert_eq!(got.crop, crop, "the heads' crop is reported");
        let placed = got.table.landmarks.as_ref().expect("the joined model outputs its landmarks");
        let mut worst = 0f32;
        for (i, path) in got.table.paths.iter().enumerate() {
            let j = want.paths.iter().position(|p| p == path).unwrap();
            let by_locator = located.iter().find(|s| s.key == path.as_str()).unwrap().landmarks.unwrap();
            let by_graph = placed[i].unwrap();
            assert!(by_graph.iter().zip(by_locator).all(|(a, b)| (a - b).abs() < 1e-4), "{path}: {by_graph:?} vs {by_locator:?}");
            for a in 0..2 {
                for (p, q) in got.table.row(a, i).iter().zip(want.row(a, j)) {
                    worst = worst.max((p - q).abs());
                }
            }
        }
        // The same windows; the graph slices the window and resizes it alone (as PIL's crop
        // then resize), where fast_image_resize's kernel also reads the pixels just outside it.
        assert!(worst < 5e-2, "{tag}: probabilities differ by up to {worst}");
        if tag == "face" {
            python_answers_as_retrain(&joined, &list, &got.table);
        }
        let not_landmarks = Input::Located(export::Landmarks { model: &w.backbone, passes });
        let err = format!("{:#}", export::export(&w.backbone, &paths(&heads), &w.dir.path().join("never.onnx"), not_landmarks).unwrap_err());
        assert!(err.contains("landmark model") && err.contains("backbone.onnx") && err.contains("no output 'landmarks'"), "{err}");
    }
}

/// The graph's mirrored run sees the mirrored pixels: with a model whose answer depends on
/// them (and is not mirror-symmetric), the landmarks the exported file places equal the
/// Locator's with averaging, and differ from them without. One pass (a model of the whole
/// image): the windows of later passes are rounded, and a change of 1e-4 px could move one.
#[test]
fn the_graph_averages_with_the_mirrored_pixels_as_the_locator_does() {
    let w = world();
    let landmarks = linear_landmark_model(&w.dir.path().join("landmarks.onnx"), annotated_fractions(), None);
    // photos brighter on one side than the other, unlike the data set's even colours
    let names: Vec<String> = (0..4u32)
        .map(|k| {
            let path = w.dir.path().join(format!("uneven-{k}.png"));
            image::RgbImage::from_fn(IMAGE_SIZE, IMAGE_SIZE, |x, y| image::Rgb([(x * 10 + k * 5) as u8, (y * 5) as u8, (230 - x * 9) as u8]))
                .save(&path)
                .unwrap();
            path.display().to_string()
        })
        .collect();
    let list = w.dir.path().join("uneven.txt");
    std::fs::write(&list, names.join("\n")).unwrap();
    let plain = predict::images_from_list(&list).unwrap();
    let crop = Crop::Face { scale_percent: 200 };
    let heads = heads(&w, &extract_split(&w, &w.backbone, Split::Training, crop), "face");
    let mut placed = Vec::new();
    for mirror in [true, false] {
        let passes = Passes { count: 2, mirror };
        let mut located = plain.clone();
        retrain::locate::Locator::load(&landmarks, &cpu()).unwrap().locate(&mut located, passes, 7, Some(1), false).unwrap();
        let joined = w.dir.path().join(format!("mirror-{mirror}.onnx"));
        export::export(&w.backbone, &paths(&heads), &joined, Input::Located(export::Landmarks { model: &landmarks, passes })).unwrap();
        let got = predict_all(&joined, &list);
        for (i, path) in got.table.paths.iter().enumerate() {
            let by_locator = located.iter().find(|s| s.key == path.as_str()).unwrap().landmarks.unwrap();
            let by_graph = got.table.landmarks.as_ref().unwrap()[i].unwrap();
            // within 2e-3 px: the graph resizes as PIL does, retrain's resizer reads a little more
            assert!(by_graph.iter().zip(by_locator).all(|(a, b)| (a - b).abs() < 2e-3), "mirror {mirror}, {path}: {by_graph:?} vs {by_locator:?}");
        }
        placed.push(located);
    }
    let moved = placed[0]
        .iter()
        .zip(&placed[1])
        .flat_map(|(a, b)| a.landmarks.unwrap().into_iter().zip(b.landmarks.unwrap()).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    assert!(moved > 0.1, "averaging should move this model's landmarks (by {moved} px)");
}

/// tests/support/onnxruntime_predict.py on a model exported with --landmarks writes `table`'s CSV:
/// the same columns, landmarks to the last digit, probabilities to float rounding.
fn python_answers_as_retrain(model: &Path, list: &Path, table: &retrain::predict::table::PredictionTable) {
    let Some(python) = python() else { return };
    let w = tempfile::tempdir().unwrap();
    let csv = w.path().join("python.csv");
    let o = std::process::Command::new(&python)
        .arg(common::repo().join("tests/support/onnxruntime_predict.py"))
        .arg(model)
        .args(["--list".as_ref(), list.as_os_str(), "--out".as_ref(), csv.as_os_str()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = table.to_csv();
    let theirs = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(theirs.lines().next(), ours.lines().next(), "the same columns, landmarks included");
    assert_eq!(theirs.lines().count(), ours.lines().count());
    for line in theirs.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let mine: Vec<&str> = ours.lines().find(|l| l.starts_with(&format!("{},", cells[0]))).unwrap().split(',').collect();
        let n = cells.len();
        assert_eq!(cells[n - 10..], mine[n - 10..], "{}: landmarks", cells[0]);
        for (a, b) in cells[1..n - 10].iter().zip(&mine[1..n - 10]) {
            match (a.parse::<f32>(), b.parse::<f32>()) {
                (Ok(a), Ok(b)) => assert!((a - b).abs() < 2e-6, "{}: Python {a} vs retrain {b}", cells[0]),
                _ => assert_eq!(a, b, "{}: labels", cells[0]),
            }
        }
    }
}
