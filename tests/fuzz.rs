//! Property tests of the annotation parser and the image loader: random and mutated input never
//! panics, and everything the parser accepts is what was written. Bounded: a fixed number of cases.

mod common;

use std::path::Path;

use proptest::prelude::*;
use retrain::dataset::mtfl;
use retrain::preprocess::decode_rgb;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, max_shrink_iters: 200, ..ProptestConfig::default() }
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

/// A real JPEG and PNG to mutate.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for ext in ["jpg", "png"] {
        let p = dir.path().join(format!("seed.{ext}"));
        common::picture(3, 24, 20).save(&p).unwrap();
        out.push((ext, std::fs::read(&p).unwrap()));
    }
    out
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn image_loader_never_panics_on_mutated_files(which in 0usize..2, cut in 0.0f64..1.0, flips in prop::collection::vec((0.0f64..1.0, any::<u8>()), 0..12)) {
        let (ext, mut bytes) = seeds().swap_remove(which);
        for (at, value) in flips {
            let i = (at * bytes.len() as f64) as usize % bytes.len();
            bytes[i] = value;
        }
        bytes.truncate(((cut * 1.2).min(1.0) * bytes.len() as f64) as usize);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("m.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        match decode_rgb(&path) {
            Ok(img) => prop_assert!(img.width() > 0 && img.height() > 0),
            Err(e) => {
                let message = format!("{e:#}");
                prop_assert!(message.contains("m."), "the error must name the file: {}", message);
            }
        }
    }
}
