//! Every kind of bad input gets a clear message, and nothing else is lost.

mod common;

use std::path::{Path, PathBuf};

use common::{extract_folders, folder_dataset, picture, retrain, stderr, stdout, test_model};
use retrain::cache::Cache;

/// Nine good JPEGs in `root/ok/`, then `bad` writes one broken file among them (img004.jpg).
fn with_one_bad_image(bad: impl Fn(&Path)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    folder_dataset(&img, &["ok"], 9);
    bad(&img.join("ok/img004.jpg"));
    (dir, img)
}

/// Extracts, expects success with img004 reported and the eight others cached; returns the report.
fn skipped_with_others_kept(img: &Path, out: &Path) -> String {
    let o = extract_folders(img, out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = format!("{}{}", stderr(&o), stdout(&o));
    assert!(report.contains("img004.jpg") && stdout(&o).contains("skipped 1 images"), "{report}");
    let c = Cache::read(out).unwrap();
    assert_eq!(c.paths.len(), 8, "the other rows must be kept");
    assert_eq!(c.source_index, vec![0, 1, 2, 3, 5, 6, 7, 8]);
    assert_eq!(c.skipped.iter().map(|s| s.position).collect::<Vec<_>>(), [Some(4)]);
    assert_eq!(c.skipped[0].path, Path::new("ok/img004.jpg"));
    report
}

#[test]
fn truncated_jpeg() {
    let (dir, img) = with_one_bad_image(|p| {
        let full = std::fs::read(p).unwrap();
        std::fs::write(p, &full[..full.len() / 3]).unwrap();
    });
    let r = skipped_with_others_kept(&img, &dir.path().join("c.h5"));
    assert!(r.contains("cannot decode image"), "{r}");
}

/// Cuts the JPEG `source` at several points past its header (in the scan data, just before
/// and inside its end-of-image marker): every cut is skipped with its reason, never cached as
/// a grey-filled picture, and fatal under --strict.
fn every_cut_is_refused(source: &[u8]) {
    let header_end = source.windows(2).position(|w| w == [0xFF, 0xDA]).expect("a start of scan") + 20;
    let cuts = [header_end, source.len() * 2 / 5, source.len() * 3 / 5, source.len() * 4 / 5, source.len() - 2, source.len() - 1];
    for cut in cuts {
        let (dir, img) = with_one_bad_image(|p| std::fs::write(p, &source[..cut]).unwrap());
        let r = skipped_with_others_kept(&img, &dir.path().join("c.h5"));
        assert!(r.contains(&format!("JPEG file ends at byte {cut}")) && r.contains("before its end-of-image marker"), "cut at {cut}: {r}");
        let o = extract_folders(&img, &dir.path().join("strict.h5"), &["--strict"]);
        assert!(!o.status.success() && stderr(&o).contains("img004.jpg"), "cut at {cut} under --strict: {}", stderr(&o));
    }
}

#[test]
fn a_jpeg_cut_anywhere_after_its_header_is_skipped() {
    let mut jpeg = std::io::Cursor::new(Vec::new());
    picture(3, 120, 90).write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    every_cut_is_refused(jpeg.get_ref());
}

#[test]
fn real_mtfl_jpegs_cut_anywhere_after_their_header_are_skipped() {
    let Some(mtfl) = common::shared_mtfl() else { return };
    // the file of the issue (4,716 bytes, decoded grey-filled when cut at 3,000) and a training image
    for name in ["AFLW/0013-image02340.jpg", "lfw_5590/Aaron_Eckhart_0001.jpg"] {
        every_cut_is_refused(&std::fs::read(mtfl.join(name)).unwrap());
    }
}

#[test]
fn zero_byte_file() {
    let (dir, img) = with_one_bad_image(|p| std::fs::write(p, b"").unwrap());
    let r = skipped_with_others_kept(&img, &dir.path().join("c.h5"));
    assert!(r.contains("img004.jpg"), "{r}");
}

/// `/skipped` keeps the form every cache has had (`path<TAB>reason`, with its list position in
/// `/skipped_index`), which `Cache::read` turns into a record.
#[test]
fn skip_records_keep_their_on_disk_form() {
    let Some(python) = common::python() else { return };
    let (dir, img) = with_one_bad_image(|p| std::fs::write(p, b"").unwrap());
    let out = dir.path().join("c.h5");
    skipped_with_others_kept(&img, &out);
    let text = common::h5py_eval(&python, &out, &["f['skipped'][0].decode().split('\\t')[0]", "f['skipped_index'][:].tolist()"]);
    assert!(text.contains("= ok/img004.jpg\n") && text.contains("= [4]"), "{text}");
    let reason = &Cache::read(&out).unwrap().skipped[0].reason;
    assert!(reason.contains("img004.jpg") && !reason.contains('\t'), "{reason}");
}

#[test]
fn file_that_is_not_an_image() {
    let (dir, img) = with_one_bad_image(|p| std::fs::write(p, b"name,age\nada,36\n").unwrap());
    let r = skipped_with_others_kept(&img, &dir.path().join("c.h5"));
    assert!(r.contains("cannot decode image"), "{r}");
}

#[test]
fn decompression_bomb_is_refused_before_it_allocates() {
    // A real JPEG whose frame header claims 60000 x 60000 pixels (10.8 GB once decoded).
    let (dir, img) = with_one_bad_image(|p| {
        let mut bytes = std::fs::read(p).unwrap();
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline JPEG");
        bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        std::fs::write(p, bytes).unwrap();
    });
    let r = skipped_with_others_kept(&img, &dir.path().join("c.h5"));
    assert!(r.contains("too large to decode safely") && r.contains("decompression bomb"), "{r}");
}

/// An MTFL-format folder: `lines` become testing.txt, and every named image is a real JPEG.
fn mtfl_dataset(root: &Path, lines: &[&str]) {
    std::fs::create_dir_all(root.join("AFLW")).unwrap();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.split_whitespace().next().filter(|n| n.ends_with(".jpg")) {
            picture(i as u32, 40, 36).save(root.join(name)).unwrap();
        }
    }
    std::fs::write(root.join("testing.txt"), lines.join("\r\n")).unwrap();
}

fn extract_mtfl(root: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let model = test_model("tiny_cnn.onnx");
    let mut args = vec!["extract", "--quiet", "--model", model.to_str().unwrap(), "--mtfl", root.to_str().unwrap(), "--split", "testing"];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    retrain(&args)
}

const GOOD_A: &str = " AFLW/a.jpg 10 30 20 12 28 12 12 20 28 30 1 1 2 3";
const GOOD_B: &str = " AFLW/b.jpg 10 30 20 12 28 12 12 20 28 30 2 2 2 4";

#[test]
fn landmarks_outside_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("MTFL");
    mtfl_dataset(&root, &[GOOD_A, " AFLW/far.jpg 10 30 500 12 28 12 12 500 28 30 1 1 2 3", GOOD_B]);
    let out = dir.path().join("c.h5");
    let o = extract_mtfl(&root, &out, &["--crop", "nose:20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("AFLW/far.jpg") && stderr(&o).contains("nose landmark (500, 500) lies outside the 40x36 image"), "{}", stderr(&o));
    assert_eq!(Cache::read(&out).unwrap().paths, vec!["AFLW/a.jpg", "AFLW/b.jpg"]);
}

fn bad_annotation_line(line: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("MTFL");
    mtfl_dataset(&root, &[GOOD_A, line, GOOD_B]);
    let out = dir.path().join("c.h5");
    let o = extract_mtfl(&root, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("testing.txt:line 2") && stderr(&o).contains(message), "{}", stderr(&o));
    let c = Cache::read(&out).unwrap();
    assert_eq!(c.paths, vec!["AFLW/a.jpg", "AFLW/b.jpg"], "the good lines must be kept");
    assert_eq!(c.skipped.iter().map(|s| s.position).collect::<Vec<_>>(), [None]);
    assert!(c.skipped[0].path.ends_with("testing.txt:line 2") && c.skipped[0].reason.contains(message), "{}", c.skipped[0]);
    let strict = extract_mtfl(&root, &dir.path().join("strict.h5"), &["--strict"]);
    assert!(!strict.status.success() && stderr(&strict).contains("line 2"), "{}", stderr(&strict));
}

#[test]
fn annotation_line_with_too_few_columns() {
    bad_annotation_line(" AFLW/c.jpg 10 30 20 12 28 12 12 20 28 30 1 1", "found 13");
}

#[test]
fn annotation_line_with_a_non_number() {
    bad_annotation_line(" AFLW/c.jpg 10 30 20 12 twenty-eight 12 12 20 28 30 1 1 2 3", "'twenty-eight'");
}

#[test]
fn annotation_line_with_an_unknown_label_code() {
    bad_annotation_line(" AFLW/c.jpg 10 30 20 12 28 12 12 20 28 30 1 1 7 3", "glasses (column 14) has unknown code 7");
}

#[test]
fn missing_image_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("MTFL");
    mtfl_dataset(&root, &[GOOD_A, GOOD_B]);
    let mut text = std::fs::read_to_string(root.join("testing.txt")).unwrap();
    text.push_str("\r\n AFLW/gone.jpg 10 30 20 12 28 12 12 20 28 30 1 1 2 3");
    std::fs::write(root.join("testing.txt"), text).unwrap();
    let out = dir.path().join("c.h5");
    let o = extract_mtfl(&root, &out, &[]);
    assert!(stderr(&o).contains("AFLW/gone.jpg") && stderr(&o).contains("cannot open image"), "{}", stderr(&o));
    assert_eq!(Cache::read(&out).unwrap().paths.len(), 2);
}

fn model_error(model: &Path) -> String {
    let (dir, img) = with_one_bad_image(|_| {});
    let out = dir.path().join("c.h5");
    let o = retrain(&["extract", "--model", model.to_str().unwrap(), "--folders", img.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(!out.exists(), "a refused model must not leave a cache behind");
    stderr(&o)
}

#[test]
fn onnx_file_that_is_not_a_model() {
    let e = model_error(&test_model("not_a_model.onnx"));
    assert!(e.contains("cannot load ONNX model") && e.contains("not_a_model.onnx"), "{e}");
}

#[test]
fn model_input_of_the_wrong_rank() {
    let e = model_error(&test_model("flat_input.onnx"));
    assert!(e.contains("flat_input.onnx") && e.contains("rank 2") && e.contains("[-1, 12]"), "{e}");
}

#[test]
fn model_input_of_the_wrong_size() {
    // The sidecar promises 32x32, the graph takes 16x16.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::copy(test_model("no_metadata.onnx"), &model).unwrap();
    let sidecar = std::fs::read_to_string(test_model("no_metadata.onnx.json")).unwrap().replace("16", "32");
    std::fs::write(dir.path().join("m.onnx.json"), sidecar).unwrap();
    let e = model_error(&model);
    assert!(e.contains("m.onnx") && e.contains("input 'pixels' has shape [-1, 16, 16, 3]") && e.contains("[1, 32, 32, 3]"), "{e}");
}

#[test]
fn model_without_the_requested_output() {
    let (dir, img) = with_one_bad_image(|_| {});
    let o = extract_folders(&img, &dir.path().join("c.h5"), &["--output", "features"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has no output 'features'") && stderr(&o).contains("bottleneck, logits, probabilities"), "{}", stderr(&o));
}

#[test]
fn nan_or_inf_in_model_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img/x");
    std::fs::create_dir_all(&img).unwrap();
    for (i, level) in [200u8, 30, 220, 10, 250].iter().enumerate() {
        image::RgbImage::from_pixel(12, 12, image::Rgb([*level; 3])).save(img.join(format!("{i}.png"))).unwrap();
    }
    let out = dir.path().join("c.h5");
    let model = test_model("nan_on_dark.onnx");
    let o = retrain(&[
        "extract",
        "--quiet",
        "--model",
        model.to_str().unwrap(),
        "--folders",
        dir.path().join("img").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("x/1.png: model output contains NaN or Inf") && stderr(&o).contains("x/3.png"), "{}", stderr(&o));
    let c = Cache::read(&out).unwrap();
    assert_eq!(c.paths, vec!["x/0.png", "x/2.png", "x/4.png"]);
    assert!(c.features.iter().all(|v| v.is_finite()));
}

#[test]
fn strict_makes_a_bad_image_fatal_and_keeps_earlier_batches() {
    let (dir, img) = with_one_bad_image(|p| std::fs::write(p, b"").unwrap());
    let out = dir.path().join("c.h5");
    let o = extract_folders(&img, &out, &["--strict", "--batch", "2"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--strict") && stderr(&o).contains("img004.jpg"), "{}", stderr(&o));
    // Batches [0,1] and [2,3] were committed before the batch holding img004.
    assert_eq!(Cache::read(&out).unwrap().paths.len(), 4);
}
