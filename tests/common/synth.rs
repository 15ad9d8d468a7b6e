//! Real inputs for the tests, made on the spot: an MTFL-format data set of small PNGs whose
//! colours carry gender and smile, a tiny convolutional backbone written as ONNX, and caches
//! of synthetic features written through the library's own HDF5 writer.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use retrain::cache::{CacheWriter, Identity, Rows, Shard};
use retrain::onnx::{self, int_attribute, ints_attribute, node, tensor_f32, value_info, Dim, Graph};
use retrain::rng::Rng;

pub const IMAGE_SIZE: u32 = 24;
pub const INPUT_SIZE: i64 = 16;
pub const BOTTLENECK: usize = 8;

/// Writes `root/{training,testing}.txt` and `root/img/*.png`: gender shows in the red channel,
/// smile in the green one, both with noise, so a linear head can learn them but not perfectly.
pub fn synthetic_mtfl(root: &Path, train: usize, test: usize) {
    std::fs::create_dir_all(root.join("img")).unwrap();
    let mut rng = Rng::new(42);
    for (split, n) in [("training", train), ("testing", test)] {
        let mut lines = String::new();
        for i in 0..n {
            let (gender, smile) = (1 + (rng.below(2) as i32), 1 + (rng.below(2) as i32));
            let key = format!("img/{split}_{i:04}.png");
            face(gender, smile, &mut rng).save(root.join(&key)).unwrap();
            let c = IMAGE_SIZE as f32 / 2.0;
            // eyes, nose (the centre), mouth corners; then gender, smile, glasses, pose
            lines.push_str(&format!(" {key} 8 16 {c} 9 15 8 8 {c} 17 17 {gender} {smile} 2 3\r\n"));
        }
        std::fs::write(root.join(format!("{split}.txt")), lines).unwrap();
    }
}

fn face(gender: i32, smile: i32, rng: &mut Rng) -> RgbImage {
    let red = if gender == 1 { 170.0 } else { 90.0 };
    let green = if smile == 1 { 160.0 } else { 100.0 };
    RgbImage::from_fn(IMAGE_SIZE, IMAGE_SIZE, |_, _| {
        let noise = |rng: &mut Rng, base: f64| (base + 60.0 * rng.normal()).clamp(0.0, 255.0) as u8;
        Rgb([noise(rng, red), noise(rng, green), noise(rng, 128.0)])
    })
}

/// A small NCHW backbone: Conv(3->8, 3x3) -> Relu -> GlobalAveragePool -> Flatten = `bottleneck`
/// [N, 8], plus a classifier `logits` that export must prune. Seeded random weights; the
/// description is in its `retrain.*` metadata.
pub fn tiny_backbone(path: &Path, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    let mut random = |n: usize, std: f64| -> Vec<f32> { (0..n).map(|_| (rng.normal() * std) as f32).collect() };
    let b = BOTTLENECK as i64;
    let graph = Graph {
        name: "tiny backbone".into(),
        nodes: vec![
            node("Conv", "conv", &["input", "conv_w", "conv_b"], &["conv"], &[int_attribute("group", 1)]),
            node("Relu", "relu", &["conv"], &["relu"], &[]),
            node("GlobalAveragePool", "pool", &["relu"], &["pool"], &[]),
            node("Flatten", "flatten", &["pool"], &["bottleneck"], &[int_attribute("axis", 1)]),
            node("Gemm", "classifier", &["bottleneck", "fc_w", "fc_b"], &["logits"], &[int_attribute("transB", 1)]),
        ],
        initializers: vec![
            tensor_f32("conv_w", &[b, 3, 3, 3], &random(BOTTLENECK * 27, 0.5)),
            tensor_f32("conv_b", &[b], &random(BOTTLENECK, 0.1)),
            tensor_f32("fc_w", &[5, b], &random(5 * BOTTLENECK, 1.0)),
            tensor_f32("fc_b", &[5], &[0.0; 5]),
        ],
        inputs: vec![value_info("input", &[Dim::Named("N"), Dim::Fixed(3), Dim::Fixed(INPUT_SIZE), Dim::Fixed(INPUT_SIZE)])],
        outputs: vec![value_info("bottleneck", &[Dim::Named("N"), Dim::Fixed(b)]), value_info("logits", &[Dim::Named("N"), Dim::Fixed(5)])],
    };
    // its own 5-way classifier is named, as a pretrained backbone's is (nsfwjs's InceptionV3)
    write_described(path, &graph, &[("bottleneck", "bottleneck"), ("input_name", "input"), ("labels", "Drawing,Hentai,Neutral,Porn,Sexy")])
}

/// A small NCHW backbone with an Inception-style pooling branch: Conv(3->8, 3x3) -> Relu ->
/// AveragePool(3x3, stride 1, padding 1, `count_include_pad`) -> Conv(8->8, 1x1, bias) -> Relu
/// -> GlobalAveragePool -> Flatten = `bottleneck` [N, 8]. Seeded random weights.
pub fn pooled_backbone(path: &Path, seed: u64, count_include_pad: bool) -> PathBuf {
    let mut rng = Rng::new(seed);
    let mut random = |n: usize, std: f64| -> Vec<f32> { (0..n).map(|_| (rng.normal() * std) as f32).collect() };
    let b = BOTTLENECK as i64;
    let pool_attributes =
        [ints_attribute("kernel_shape", &[3, 3]), ints_attribute("pads", &[1, 1, 1, 1]), int_attribute("count_include_pad", count_include_pad as i64)];
    let graph = Graph {
        name: "pooled backbone".into(),
        nodes: vec![
            node("Conv", "conv", &["input", "conv_w", "conv_b"], &["conv"], &[ints_attribute("pads", &[1, 1, 1, 1])]),
            node("Relu", "relu", &["conv"], &["relu"], &[]),
            node("AveragePool", "branch_pool", &["relu"], &["branch_pool"], &pool_attributes),
            node("Conv", "pointwise", &["branch_pool", "pointwise_w", "pointwise_b"], &["pointwise"], &[]),
            node("Relu", "relu2", &["pointwise"], &["relu2"], &[]),
            node("GlobalAveragePool", "pool", &["relu2"], &["pool"], &[]),
            node("Flatten", "flatten", &["pool"], &["bottleneck"], &[int_attribute("axis", 1)]),
        ],
        initializers: vec![
            tensor_f32("conv_w", &[8, 3, 3, 3], &random(8 * 27, 0.5)),
            tensor_f32("conv_b", &[8], &random(8, 0.1)),
            tensor_f32("pointwise_w", &[b, 8, 1, 1], &random(BOTTLENECK * 8, 0.5)),
            tensor_f32("pointwise_b", &[b], &random(BOTTLENECK, 0.5)),
        ],
        inputs: vec![value_info("input", &[Dim::Named("N"), Dim::Fixed(3), Dim::Fixed(INPUT_SIZE), Dim::Fixed(INPUT_SIZE)])],
        outputs: vec![value_info("bottleneck", &[Dim::Named("N"), Dim::Fixed(b)])],
    };
    write_described(path, &graph, &[("bottleneck", "bottleneck"), ("input_name", "input")])
}

/// Writes `graph` with the description of the generated models' NCHW input (`INPUT_SIZE`
/// square, mean 0.5, std 0.25) and the `extra` keys.
fn write_described(path: &Path, graph: &Graph, extra: &[(&str, &str)]) -> PathBuf {
    let size = INPUT_SIZE.to_string();
    let input = [("layout", "NCHW"), ("height", size.as_str()), ("width", size.as_str()), ("mean", "0.5"), ("std", "0.25"), ("resize", "bilinear")];
    let metadata: Vec<(String, String)> = input.iter().chain(extra).map(|(k, v)| (format!("retrain.{k}"), v.to_string())).collect();
    std::fs::write(path, onnx::model(graph, &metadata)).unwrap();
    path.to_path_buf()
}

/// A cache of `n` rows of synthetic features: class `c` of gender (1, 2) shifts the first
/// feature by `separation * c`; smile is random. `male_share` sets the class balance.
pub fn synthetic_cache(path: &Path, n: usize, dim: usize, separation: f32, male_share: f64, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    write_synthetic(path, n, dim, &mut rng, |rng| {
        let gender = if rng.uniform() < male_share { 1 } else { 2 };
        ([gender, 1 + rng.below(2) as i32, 2, 3], [separation * (gender as f32 - 1.5) * 2.0, 0.0, 0.0, 0.0], 0.0)
    })
}

/// A cache with every MTFL attribute learnable, each from its own feature (0 gender, 1 smile,
/// 2 glasses, 3 pose, two standard deviations per class step), and imbalanced as MTFL's test
/// set: glasses 10% of the rows, pose mostly frontal (code 3, 60%).
pub fn synthetic_attributes_cache(path: &Path, n: usize, dim: usize, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    write_synthetic(path, n, dim, &mut rng, |rng| {
        let (gender, smile) = (1 + rng.below(2) as i32, 1 + rng.below(2) as i32);
        let glasses = if rng.uniform() < 0.1 { 1 } else { 2 };
        let u = rng.uniform();
        let pose = if u < 0.6 { 3 } else { 1 + (((u - 0.6) / 0.1) as i32).min(3) + i32::from(u >= 0.8) };
        ([gender, smile, glasses, pose], [gender, smile, glasses, pose].map(|c| 2.0 * c as f32), 0.0)
    })
}

/// A gender cache whose features all share one factor, as real bottlenecks largely do: every
/// feature is twice a latent value (N(0, 1), moved by 0.8 towards its class) plus unit noise.
pub fn correlated_cache(path: &Path, n: usize, dim: usize, seed: u64) -> PathBuf {
    let mut rng = Rng::new(seed);
    write_synthetic(path, n, dim, &mut rng, |rng| {
        let gender = 1 + rng.below(2) as i32;
        let latent = rng.normal() as f32 + 1.6 * (gender as f32 - 1.5);
        ([gender, 1, 2, 3], [0.0; 4], 2.0 * latent)
    })
}

/// `n` rows whose labels, per-attribute feature shifts and shared value `draw` gives (features
/// 0-3 shifted, every feature plus the shared value and unit noise, all offset by 3 as real
/// activations are).
fn write_synthetic(path: &Path, n: usize, dim: usize, rng: &mut Rng, mut draw: impl FnMut(&mut Rng) -> ([i32; 4], [f32; 4], f32)) -> PathBuf {
    let id = Identity {
        model_sha256: "synthetic-model".into(),
        output: "features".into(),
        preprocess: "crop=original (synthetic)".into(),
        source: "synthetic".into(),
        label_columns: retrain::dataset::MTFL_ATTRIBUTES.iter().map(|s| s.to_string()).collect(),
        class_names: Vec::new(),
        column_class_names: Default::default(),
        shard: Shard::WHOLE,
    };
    let mut writer = CacheWriter::open_or_create(path, &id, dim).unwrap();
    let mut features = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    let paths: Vec<String> = (0..n).map(|i| format!("synthetic/{i:05}.jpg")).collect();
    for _ in 0..n {
        let (codes, shifts, shared) = draw(rng);
        for j in 0..dim {
            features.push(rng.normal() as f32 + shifts.get(j).copied().unwrap_or(0.0) + shared + 3.0);
        }
        labels.push(codes);
    }
    let rows = Rows {
        features: &features,
        paths: paths.iter().map(std::ffi::OsStr::new).collect(),
        labels: labels.iter().map(|l| l.as_slice()).collect(),
        landmarks: vec![None; n],
        source_index: (0..n as i64).collect(),
    };
    writer.append(&rows, &[], n, n).unwrap();
    path.to_path_buf()
}

/// A landmark model that places the same landmarks on every image: `fractions` (x1..x5,
/// y1..y5 of its input) as the bias of a zero-weight layer, output `landmarks` [N, 10], with
/// `retrain.crop` = `crop` when given (the crop it would have been trained on).
pub fn constant_landmark_model(path: &Path, fractions: [f32; 10], crop: Option<&str>) -> PathBuf {
    let graph = Graph {
        name: "constant landmarks".into(),
        nodes: vec![
            node("GlobalAveragePool", "pool", &["input"], &["pool"], &[]),
            node("Flatten", "flatten", &["pool"], &["bottleneck"], &[int_attribute("axis", 1)]),
            node("Gemm", "landmarks", &["bottleneck", "w", "b"], &["landmarks"], &[int_attribute("transB", 1)]),
        ],
        initializers: vec![tensor_f32("w", &[10, 3], &[0.0; 30]), tensor_f32("b", &[10], &fractions)],
        inputs: vec![value_info("input", &[Dim::Named("N"), Dim::Fixed(3), Dim::Fixed(INPUT_SIZE), Dim::Fixed(INPUT_SIZE)])],
        outputs: vec![value_info("landmarks", &[Dim::Named("N"), Dim::Fixed(10)])],
    };
    let extra: Vec<(&str, &str)> = crop.map(|c| ("crop", c)).into_iter().collect();
    write_described(path, &graph, &extra)
}

/// A landmark model whose answer depends on the image, and not symmetrically: `fractions`
/// plus a fixed, uneven linear function of every input value (at most half their mean
/// absolute value), so that mirroring the input changes it.
pub fn linear_landmark_model(path: &Path, fractions: [f32; 10], crop: Option<&str>) -> PathBuf {
    let inputs = 3 * (INPUT_SIZE * INPUT_SIZE) as usize;
    let mut rng = Rng::new(7);
    let weights: Vec<f32> = (0..10 * inputs).map(|_| (rng.next_f32() - 0.5) / inputs as f32).collect();
    let graph = Graph {
        name: "linear landmarks".into(),
        nodes: vec![
            node("Flatten", "flatten", &["input"], &["flat"], &[int_attribute("axis", 1)]),
            node("Gemm", "landmarks", &["flat", "w", "b"], &["landmarks"], &[int_attribute("transB", 1)]),
        ],
        initializers: vec![tensor_f32("w", &[10, inputs as i64], &weights), tensor_f32("b", &[10], &fractions)],
        inputs: vec![value_info("input", &[Dim::Named("N"), Dim::Fixed(3), Dim::Fixed(INPUT_SIZE), Dim::Fixed(INPUT_SIZE)])],
        outputs: vec![value_info("landmarks", &[Dim::Named("N"), Dim::Fixed(10)])],
    };
    let extra: Vec<(&str, &str)> = crop.map(|c| ("crop", c)).into_iter().collect();
    write_described(path, &graph, &extra)
}
