//! A file whose name is not UTF-8 (a Latin-1 `café.jpg` copied from an old disk, say) is read
//! like any other: extracted from class folders, cached under its exact bytes, the cache
//! resumed and reused, and `predict` given its name reads it.

mod common;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{extract_folders, folder_dataset, picture, retrain, stderr, stdout, test_model};
use retrain::cache::Cache;

/// `café.jpg` in Latin-1: the 0xE9 byte alone is not UTF-8.
const LATIN1_NAME: &[u8] = b"caf\xe9.jpg";

/// `root/ok/` with five JPEGs and one more under the Latin-1 name; returns that file's path.
fn folders_with_a_latin1_name(root: &Path) -> PathBuf {
    folder_dataset(root, &["ok", "other"], 5);
    let file = root.join("ok").join(OsStr::from_bytes(LATIN1_NAME));
    picture(11, 44, 38).save_with_format(&file, image::ImageFormat::Jpeg).unwrap();
    file
}

/// The cached image names as bytes.
fn names(cache: &Cache) -> Vec<Vec<u8>> {
    cache.paths.iter().map(|p| Path::new(p).as_os_str().as_bytes().to_vec()).collect()
}

#[test]
fn a_name_that_is_not_utf8_is_extracted_and_cached_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    folders_with_a_latin1_name(&img);
    let out = dir.path().join("c.h5");
    let o = extract_folders(&img, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("skipped"), "{}{}", stdout(&o), stderr(&o));
    let c = Cache::read(&out).unwrap();
    assert_eq!(c.skipped.len(), 0);
    // files sorted by their bytes: `caf\xe9` before `img000`
    let mut want = vec![[b"ok/".as_slice(), LATIN1_NAME].concat()];
    want.extend((0..5).map(|i| format!("ok/img{i:03}.jpg").into_bytes()));
    want.extend((0..5).map(|i| format!("other/img{i:03}.jpg").into_bytes()));
    assert_eq!(names(&c), want);

    // every stored string is UTF-8, as h5py and other readers need: the UTF-8 names as they
    // are, the other escaped, its row listed as such
    let Some(python) = common::python() else { return };
    let text = common::h5py_eval(&python, &out, &["list(f['paths'].asstr()[:3])", "f['paths_escaped'][:].tolist()"]);
    assert!(text.contains(r"= ['ok/caf\\xE9.jpg', 'ok/img000.jpg', 'ok/img001.jpg']") && text.contains("= [0]"), "{text}");
}

/// A cache of UTF-8 names (every cache written before) has the layout it always had: the
/// companion listing escaped names comes only with the first of them.
#[test]
fn a_cache_of_utf8_names_keeps_the_layout_it_always_had() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    folder_dataset(&img, &["ok"], 3);
    std::fs::write(img.join("ok/broken.jpg"), b"").unwrap();
    let out = dir.path().join("c.h5");
    assert!(extract_folders(&img, &out, &[]).status.success());
    let mut members = hdf5::File::open(&out).unwrap().member_names().unwrap();
    members.sort();
    assert_eq!(members, ["features", "labels", "landmarks", "paths", "skipped", "skipped_index", "source_index"]);
}

#[test]
fn an_unreadable_file_whose_name_is_not_utf8_is_recorded_under_its_exact_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    folders_with_a_latin1_name(&img);
    std::fs::write(img.join("other").join(OsStr::from_bytes(b"broken\xff.png")), b"not a PNG").unwrap();
    let out = dir.path().join("c.h5");
    let o = extract_folders(&img, &out, &[]);
    assert!(o.status.success() && stderr(&o).contains("skipped other/broken\u{FFFD}.png: cannot decode image"), "{}", stderr(&o));
    let c = Cache::read(&out).unwrap();
    assert_eq!(c.skipped.len(), 1);
    assert_eq!(c.skipped[0].path.as_os_str().as_bytes(), b"other/broken\xff.png");
    assert_eq!(c.skipped[0].position, Some(6));
    assert_eq!(c.paths.len(), 11);
}

#[test]
fn a_cache_holding_a_name_that_is_not_utf8_is_resumed_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    folders_with_a_latin1_name(&img);
    let whole = dir.path().join("whole.h5");
    assert!(extract_folders(&img, &whole, &[]).status.success());
    // killed after its first batch (which holds the Latin-1 name), then resumed
    let parts = dir.path().join("parts.h5");
    let model = test_model("tiny_cnn.onnx");
    let args = ["extract", "--quiet", "--model", model.to_str().unwrap(), "--folders", img.to_str().unwrap(), "--out", parts.to_str().unwrap(), "--batch", "4"];
    let killed = common::retrain_fault(&args, "cache-committed", 1, "kill");
    assert!(!killed.status.success());
    assert_eq!(Cache::read(&parts).unwrap().paths.len(), 4);
    let o = extract_folders(&img, &parts, &[]);
    assert!(o.status.success() && stdout(&o).contains("wrote 7 rows") && stdout(&o).contains("(4 were already there)"), "{}{}", stdout(&o), stderr(&o));
    common::same_cache_file(&whole, &parts);
    // run again: the cache is accepted as it is, nothing to do
    let o = extract_folders(&img, &parts, &[]);
    assert!(o.status.success() && stdout(&o).contains("wrote 0 rows"), "{}{}", stdout(&o), stderr(&o));
    common::same_cache_file(&whole, &parts);
    // and merged from shards into the same rows
    let shards: Vec<PathBuf> = (0..2).map(|k| dir.path().join(format!("s{k}.h5"))).collect();
    for (k, shard) in shards.iter().enumerate() {
        let o = extract_folders(&img, shard, &["--shard", &format!("{k}/2")]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let merged = dir.path().join("merged.h5");
    let o = retrain(&["cache", "merge", shards[0].to_str().unwrap(), shards[1].to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    common::same_cache_file(&whole, &merged);
}

/// Runs `retrain` with arguments that need not be UTF-8.
fn retrain_os(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retrain")).args(args).current_dir(common::repo()).output().expect("run retrain")
}

#[test]
fn predict_reads_a_file_whose_name_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let latin1 = folders_with_a_latin1_name(&img);
    let (cache, head, model) = (dir.path().join("c.h5"), dir.path().join("class.onnx"), dir.path().join("model.onnx"));
    assert!(extract_folders(&img, &cache, &[]).status.success());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let o = retrain(&["train-head", "--cache", &s(&cache), "--attribute", "class", "--out", &s(&head)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let backbone = test_model("tiny_cnn.onnx");
    let o = retrain(&["export", "--model", &s(&backbone), "--head", &s(&head), "--out", &s(&model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = dir.path().join("p.csv");
    let other = img.join("other/img000.jpg");
    let args: Vec<OsString> = ["predict", "--quiet", "--model", &s(&model), "--out", &s(&csv)].iter().map(OsString::from).collect();
    let mut args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    args.extend([latin1.as_os_str(), other.as_os_str()]);
    let o = retrain_os(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("wrote 2 predictions") && stdout(&o).contains("0 images skipped"), "{}{}", stdout(&o), stderr(&o));
    // and from a list file naming it (with a CRLF line end)
    let list = dir.path().join("list.txt");
    std::fs::write(&list, [b"img/ok/".as_slice(), LATIN1_NAME, b"\r\n img/other/img000.jpg\n"].concat()).unwrap();
    let o = retrain(&["predict", "--quiet", "--model", &s(&model), "--out", &s(&csv), "--list", &s(&list)]);
    assert!(stdout(&o).contains("wrote 2 predictions") && stdout(&o).contains("0 images skipped"), "{}{}", stdout(&o), stderr(&o));
}
