//! Label files (`--labels FILE.csv`): extract -> train-head -> eval -> export -> predict on
//! generated images and the tiny test backbone, and every way a label file is refused.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{picture, retrain, stderr, stdout, test_model};
use retrain::cache::Cache;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `retrain extract --labels CSV` with the tiny test backbone.
fn extract_labels(csv: &Path, out: &Path, extra: &[&str]) -> Output {
    let model = test_model("tiny_cnn.onnx");
    let mut args = vec!["extract", "--quiet", "--model", s(&model), "--labels", s(csv), "--out", s(out), "--batch", "4"];
    args.extend(extra);
    retrain(&args)
}

/// Writes a JPEG at `root/name` (folders made).
fn image(root: &Path, name: &OsStr, seed: u32) -> PathBuf {
    let p = root.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    picture(seed, 40 + seed % 7, 36 + seed % 5).save_with_format(&p, image::ImageFormat::Jpeg).unwrap();
    p
}

/// 24 images under `root` (the first 4 in the folder `a,b`), and `root/labels.csv` naming them
/// with a BOM, CRLF line ends and a quoted path: hair black/red, hat no/yes, hat empty on row 6.
fn photos(root: &Path) -> PathBuf {
    let mut csv = String::from("\u{feff}path,hair,hat\r\n");
    for i in 0..24u32 {
        let name = if i < 4 { format!("a,b/img{i:03}.jpg") } else { format!("img{i:03}.jpg") };
        image(root, OsStr::new(&name), i);
        let cell = if name.contains(',') { format!("\"{name}\"") } else { name };
        let hair = if i % 2 == 0 { "black" } else { "red" };
        let hat = if i == 5 {
            ""
        } else if i % 3 == 0 {
            "yes"
        } else {
            "no"
        };
        csv.push_str(&format!("{cell},{hair},{hat}\r\n"));
    }
    let path = root.join("labels.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

#[test]
fn label_file_extract_train_eval_export_predict() {
    let dir = tempfile::tempdir().unwrap();
    let csv = photos(&dir.path().join("photos"));
    let cache = dir.path().join("c.h5");
    let o = extract_labels(&csv, &cache, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("wrote 24 rows"), "{}", stdout(&o));

    let c = Cache::read(&cache).unwrap();
    assert_eq!(c.label_columns, vec!["hair", "hat"]);
    assert_eq!(c.column_class_names["hair"], vec!["black", "red"]);
    assert_eq!(c.column_class_names["hat"], vec!["no", "yes"]);
    assert!(c.class_names.is_empty());
    assert_eq!(c.source, format!("labels:{}", csv.display()));
    assert_eq!(c.paths[0], OsStr::new("a,b/img000.jpg"));
    assert_eq!((c.labels[[0, 0]], c.labels[[0, 1]]), (0, 1)); // black, yes
    assert_eq!((c.labels[[5, 0]], c.labels[[5, 1]]), (1, -1)); // red, unknown
                                                               // a second run reuses the cache
    assert!(stdout(&extract_labels(&csv, &cache, &[])).contains("wrote 0 rows"));

    let heads = dir.path().join("heads");
    let o = retrain(&["train-head", "--cache", s(&cache), "--attribute", "all", "--out", s(&heads)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stdout(&o) + &stderr(&o);
    assert!(said.contains("hair (black/red) on 24 rows") && said.contains("hat (no/yes) on 23 rows"), "{said}");

    let json = dir.path().join("scores.json");
    let (hair, hat) = (heads.join("hair.onnx"), heads.join("hat.onnx"));
    let o = retrain(&["eval", "--cache", s(&cache), "--head", s(&hair), "--head", s(&hat), "--json", s(&json)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("| **black** |") && stdout(&o).contains("| **yes** |"), "{}", stdout(&o));
    let scores: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(scores[0]["metrics"]["labels"], serde_json::json!(["black", "red"]));
    assert_eq!((scores[0]["metrics"]["rows"].as_u64(), scores[0]["unlabeled"].as_u64()), (Some(24), Some(0)));
    assert_eq!(scores[1]["metrics"]["labels"], serde_json::json!(["no", "yes"]));
    assert_eq!((scores[1]["metrics"]["rows"].as_u64(), scores[1]["unlabeled"].as_u64()), (Some(23), Some(1)), "the unknown hat is left out");

    // the same attributes by name, comma-separated
    let o = retrain(&["train-head", "--cache", s(&cache), "--attribute", "hat,hair", "--out", s(&dir.path().join("named"))]);
    assert!(o.status.success(), "{}", stderr(&o));

    let model = dir.path().join("model.onnx");
    let o = retrain(&["export", "--model", s(&test_model("tiny_cnn.onnx")), "--head", s(&hat), "--out", s(&model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("p_hat [no, yes]"), "{}", stdout(&o));
    let photo = dir.path().join("photos/img007.jpg");
    let o = retrain(&["predict", "--quiet", "--model", s(&model), s(&photo)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("path,hat,p_hat_no,p_hat_yes\n"), "{}", stdout(&o));
}

#[test]
fn an_attribute_the_file_lacks_is_refused_by_train_head() {
    let dir = tempfile::tempdir().unwrap();
    let csv = photos(&dir.path().join("photos"));
    let cache = dir.path().join("c.h5");
    assert!(extract_labels(&csv, &cache, &[]).status.success());
    let o = retrain(&["train-head", "--cache", s(&cache), "--attribute", "hair,colour", "--out", s(&dir.path().join("h"))]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("attribute 'colour' is not in this cache (it has: hair, hat)"), "{}", stderr(&o));
}

/// Writes `text` as `dir/photos/l.csv` beside four images a.jpg..d.jpg; extract must refuse it
/// with `l.csv:LINE: message`, writing nothing.
fn refused(text: &str, line: usize, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    for (k, n) in ["a.jpg", "b.jpg", "c.jpg", "d.jpg"].iter().enumerate() {
        image(&root, OsStr::new(n), k as u32);
    }
    let csv = root.join("l.csv");
    std::fs::write(&csv, text).unwrap();
    let out = dir.path().join("c.h5");
    let o = extract_labels(&csv, &out, &[]);
    assert!(!o.status.success(), "{text:?} was accepted");
    let want = format!("{}:{line}: {message}", csv.display());
    assert!(stderr(&o).contains(&want), "want {want:?} in:\n{}", stderr(&o));
    assert!(!out.exists(), "nothing is written for a refused label file");
}

#[test]
fn label_file_errors_name_file_and_line() {
    refused("file,hair\na.jpg,x\nb.jpg,x\n", 1, "the header has no 'path' column (it has: file, hair)");
    refused("path,hair\na.jpg,x\nb.jpg,x\nc.jpg,x\na.jpg,y\n", 5, "path 'a.jpg' is listed twice: lines 2 and 5");
    refused("path,hair\na.jpg,x\nb.jpg,x\nc.jpg,y\n", 4, "class 'y' of attribute 'hair' is on this row only");
    let lm = "path,x1,x2,x3,x4,x5,y1,y2,y3,y4,y5,hair\n";
    refused(&format!("{lm}a.jpg,1,2,3,4,5,6,7,8,9,10,x\nb.jpg,1,2,3,4,5,6,7,8,9,1O,x\n"), 3, "landmark y5 is '1O', not a number");
    refused(&format!("{lm}a.jpg,1,2,3,4,5,6,7,8,9,10,x\nb.jpg,1,2,,,,,,,,,x\n"), 3, "2 of the ten landmark cells");
    refused("path,hair\na.jpg,x\n\"b.jpg,x\n", 3, "a quoted field is not closed");
    refused("path,hair\na.jpg,x\nb.jpg,x\n../c.jpg,\n", 4, "path '../c.jpg' leads outside");
}

#[test]
fn paths_outside_the_folder_need_allow_outside() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    image(dir.path(), OsStr::new("outside1.jpg"), 1);
    image(dir.path(), OsStr::new("outside2.jpg"), 2);
    std::fs::create_dir_all(&root).unwrap();
    let csv = root.join("l.csv");
    std::fs::write(&csv, "path,hair\n../outside1.jpg,x\n../outside2.jpg,x\n").unwrap();
    let out = dir.path().join("c.h5");
    let o = extract_labels(&csv, &out, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("{}:2: path '../outside1.jpg' leads outside", csv.display())), "{}", stderr(&o));
    assert!(stderr(&o).contains("(through '..'); give --allow-outside"), "{}", stderr(&o));
    let o = extract_labels(&csv, &out, &["--allow-outside"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(Cache::read(&out).unwrap().paths, vec![OsStr::new("../outside1.jpg"), OsStr::new("../outside2.jpg")]);
}

#[test]
fn non_utf8_path_bytes_reach_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    let latin1 = OsStr::from_bytes(b"caf\xe9.jpg");
    image(&root, latin1, 1);
    image(&root, OsStr::new("plain.jpg"), 2);
    let csv = root.join("l.csv");
    std::fs::write(&csv, [b"path,hair\ncaf\xe9.jpg,x\r\n".as_slice(), b"plain.jpg,x\r\n"].concat()).unwrap();
    let out = dir.path().join("c.h5");
    let o = extract_labels(&csv, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = Cache::read(&out).unwrap();
    assert_eq!(c.paths, vec![latin1, OsStr::new("plain.jpg")]);
    assert!(c.skipped.is_empty(), "{:?}", c.skipped);
}

#[test]
fn a_missing_image_is_skipped_and_fatal_under_strict() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    image(&root, OsStr::new("a.jpg"), 1);
    image(&root, OsStr::new("b.jpg"), 2);
    let csv = root.join("l.csv");
    std::fs::write(&csv, "path,hair\na.jpg,x\ngone.jpg,y\nb.jpg,x\nc.jpg,y\n").unwrap();
    let out = dir.path().join("c.h5");
    let o = extract_labels(&csv, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = Cache::read(&out).unwrap();
    assert_eq!(c.paths, vec![OsStr::new("a.jpg"), OsStr::new("b.jpg")]);
    let skipped: Vec<&Path> = c.skipped.iter().map(|k| k.path.as_path()).collect();
    assert_eq!(skipped, vec![Path::new("gone.jpg"), Path::new("c.jpg")]);
    let o = extract_labels(&csv, &dir.path().join("strict.h5"), &["--strict"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("gone.jpg"), "{}", stderr(&o));
}

#[test]
fn split_keeps_the_rows_of_one_part() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    let mut csv = String::from("path,split,hair\n");
    for i in 0..8u32 {
        image(&root, OsStr::new(&format!("{i}.jpg")), i);
        csv.push_str(&format!("{i}.jpg,{},{}\n", ["train", "train", "test", ""][i as usize % 4], ["x", "y"][i as usize / 4]));
    }
    let file = root.join("l.csv");
    std::fs::write(&file, csv).unwrap();
    let out = dir.path().join("train.h5");
    let o = extract_labels(&file, &out, &["--split", "train"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = Cache::read(&out).unwrap();
    assert_eq!(c.paths, ["0.jpg", "1.jpg", "4.jpg", "5.jpg"].map(OsStr::new).to_vec());
    assert_eq!(c.source, format!("labels:{}:train", file.display()));
    assert_eq!(c.column_class_names["hair"], vec!["x", "y"], "class names come from the whole file");
    let o = extract_labels(&file, &dir.path().join("bad.h5"), &["--split", "testing"]);
    assert!(stderr(&o).contains("--labels takes --split train, val or test"), "{}", stderr(&o));
}

#[test]
fn landmarks_of_a_label_file_place_the_face_crop() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    let mut csv = String::from("path,x1,x2,x3,x4,x5,y1,y2,y3,y4,y5,hair\n");
    for i in 0..4u32 {
        let p = root.join(format!("{i}.jpg"));
        std::fs::create_dir_all(&root).unwrap();
        picture(i, 80, 80).save(&p).unwrap();
        csv.push_str(&format!("{i}.jpg,30,50,40,32,48,35,35,45,60,60,{}\n", ["x", "y"][i as usize % 2]));
    }
    csv.push_str("plain.jpg,,,,,,,,,,,x\n");
    picture(9, 80, 80).save(root.join("plain.jpg")).unwrap();
    let file = root.join("l.csv");
    std::fs::write(&file, csv).unwrap();
    let out = dir.path().join("face.h5");
    let o = extract_labels(&file, &out, &["--crop", "face"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = Cache::read(&out).unwrap();
    assert_eq!(c.paths.len(), 4);
    assert_eq!(c.landmarks.row(0).to_vec(), vec![30., 50., 40., 32., 48., 35., 35., 45., 60., 60.]);
    assert_eq!(c.skipped.len(), 1, "the row without landmarks cannot be face-cropped: {:?}", c.skipped);
    assert!(c.skipped[0].reason.contains("landmarks"), "{:?}", c.skipped);
}
