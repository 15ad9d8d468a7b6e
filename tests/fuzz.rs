//! Property tests of the annotation parser and of the image loader extract (and predict, and
//! training) runs: random and mutated input never panics, and everything the parser accepts
//! is what was written. Bounded: a fixed number of cases.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use retrain::dataset::{mtfl, Sample};
use retrain::preprocess::{Crop, Filter, InputSpec, Layout, Preprocess, Window};

/// `cases` cases, the same ones every run (tests are deterministic; another seed explores others).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, max_shrink_iters: 200, rng_seed: RngSeed::Fixed(36), ..ProptestConfig::default() }
}

/// A syntactically valid MTFL line with its parts.
fn valid_line() -> impl Strategy<Value = (String, [f32; 10], [i32; 4], bool, bool)> {
    (
        "[a-z_]{1,12}(/|\\\\)[A-Za-z0-9_]{1,16}\\.jpg",
        prop::array::uniform10(0.0f32..400.0),
        (1i32..=2, 1i32..=2, 1i32..=2, 1i32..=5).prop_map(|(a, b, c, d)| [a, b, c, d]),
        any::<bool>(),
        any::<bool>(),
    )
}

fn render((path, lm, labels, lead, crlf): &(String, [f32; 10], [i32; 4], bool, bool)) -> String {
    let numbers: Vec<String> = lm.iter().map(|v| format!("{v:.6}")).chain(labels.iter().map(|l| l.to_string())).collect();
    format!("{}{path} {}{}", if *lead { " " } else { "" }, numbers.join(" "), if *crlf { "\r\n" } else { "\n" })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn parser_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        let parsed = mtfl::parse(&text, Path::new("/r"));
        let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
        prop_assert_eq!(parsed.samples.len() + parsed.problems.len(), lines);
    }

    #[test]
    fn parser_reads_back_what_was_written(lines in prop::collection::vec(valid_line(), 1..20), junk in prop::collection::vec("[ -~]{1,60}", 0..5)) {
        let mut text: String = lines.iter().map(render).collect();
        for j in &junk {
            text.push_str(j);
            text.push('\n');
        }
        let parsed = mtfl::parse(&text, Path::new("/r"));
        prop_assert!(parsed.samples.len() >= lines.len());
        for (s, (path, lm, labels, _, _)) in parsed.samples.iter().zip(&lines) {
            prop_assert_eq!(s.name(), path.replace('\\', "/"));
            prop_assert_eq!(&s.labels, &labels.to_vec());
            let got = s.landmarks.unwrap();
            for k in 0..10 {
                prop_assert!((got[k] - lm[k]).abs() <= 1e-3);
            }
        }
    }
}

/// The crops extract offers, each placed from the seeds' landmarks.
const CROPS: [Crop; 3] = [Crop::Original, Crop::Nose { size: 20 }, Crop::Face { scale_percent: 320 }];
/// Eyes, nose and mouth corners of a face inside the seeds' 64 x 48 pixels.
const LANDMARKS: [f32; 10] = [20.0, 44.0, 32.0, 24.0, 40.0, 18.0, 18.0, 26.0, 36.0, 36.0];

/// A JPEG and a PNG of the same 64 x 48 picture to mutate. For the 16 x 16 input of [`loader`]
/// the JPEG is decoded by libjpeg-turbo scaled in the DCT (at 3/8 for the whole image) and the
/// PNG by the image crate, so both decoders of extract are driven.
fn seeds() -> &'static [(&'static str, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(&str, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        [("jpg", image::ImageFormat::Jpeg), ("png", image::ImageFormat::Png)]
            .into_iter()
            .map(|(ext, format)| {
                let mut bytes = std::io::Cursor::new(Vec::new());
                common::picture(3, 64, 48).write_to(&mut bytes, format).unwrap();
                (ext, bytes.into_inner())
            })
            .collect()
    })
}

/// What extract loads each image with, for `crop`: decode (at a reduced scale where it can),
/// crop, resize, scale into the model's layout.
fn loader(crop: Crop) -> Preprocess {
    Preprocess { crop, input: InputSpec { layout: Layout::Nhwc, height: 16, width: 16, mean: [0.5; 3], std: [0.25; 3], resize: Filter::Bilinear } }
}

/// Loads `bytes` as the file `dir/name` with `crop`, as extract loads one image.
fn load(dir: &Path, name: &str, bytes: &[u8], crop: Crop) -> anyhow::Result<(Window, Vec<f32>)> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let sample = Sample { path, key: name.into(), labels: vec![], landmarks: Some(LANDMARKS) };
    let pre = loader(crop);
    let mut out = vec![f32::NAN; pre.input.image_len()];
    Ok((pre.load_into(&sample, &mut out)?, out))
}

#[test]
fn the_seeds_load_with_every_crop() {
    let dir = tempfile::tempdir().unwrap();
    for (ext, bytes) in seeds() {
        for crop in CROPS {
            let (window, out) = load(dir.path(), &format!("seed.{ext}"), bytes, crop).unwrap();
            assert!(window.w > 0.0 && out.iter().all(|v| (-2.0..=2.0).contains(v)), "{ext} {crop}: {window:?}");
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Bytes of a mutated or cut JPEG or PNG through extract's loader: an error that names the
    /// file, or a whole input tensor of scaled pixels; never a panic or an abort.
    #[test]
    fn the_loader_of_extract_never_panics_on_mutated_files(
        which in 0usize..2,
        crop in 0usize..CROPS.len(),
        cut in prop::option::of(0.0f64..1.0),
        flips in prop::collection::vec((0.0f64..1.0, any::<u8>()), 0..8),
    ) {
        let (ext, seed) = &seeds()[which];
        let mut bytes = seed.clone();
        for (at, value) in flips {
            let i = (at * bytes.len() as f64) as usize % bytes.len();
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate((cut * bytes.len() as f64) as usize);
        }
        let dir = tempfile::tempdir().unwrap();
        match load(dir.path(), &format!("m.{ext}"), &bytes, CROPS[crop]) {
            Ok((window, out)) => {
                prop_assert!(window.x >= 0.0 && window.y >= 0.0 && window.w >= 1.0 && window.h >= 1.0, "{:?}", window);
                // every value written: pixel / 255 scaled by mean 0.5, std 0.25
                prop_assert!(out.iter().all(|v| (-2.0..=2.0).contains(v)), "values outside [-2, 2] or unwritten");
            }
            Err(e) => {
                let message = format!("{e:#}");
                prop_assert!(message.contains("m."), "the error must name the file: {}", message);
            }
        }
    }
}
