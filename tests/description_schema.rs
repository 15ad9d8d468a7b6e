//! The model description has one schema on both sides: scripts/description.py lists the keys
//! src/description.rs has fields for, in the same order, and what its writer puts in an ONNX
//! file (or its reader takes from a sidecar) is what `Description` reads.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{python, repo, stderr, stdout, test_model};
use retrain::description::{Description, KEYS, PREFIX};
use retrain::preprocess::{Crop, Filter, Layout};

/// Runs `code` with the project's Python in the repository root, scripts/ importable, `args`
/// as sys.argv[1..]; returns its standard output.
fn run_python(py: &Path, code: &str, args: &[&Path]) -> String {
    let o = Command::new(py)
        .arg("-c")
        .arg(format!("import sys; sys.path.insert(0, 'scripts')\n{code}"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run python");
    assert!(o.status.success(), "python failed:\n{code}\n{}", stderr(&o));
    stdout(&o)
}

#[test]
fn the_python_schema_lists_the_keys_of_the_rust_one_in_its_order() {
    let Some(py) = python() else { return };
    let out = run_python(&py, "import description, json; print(json.dumps(description.KEYS)); print(description.PREFIX)", &[]);
    let mut lines = out.lines();
    let keys: Vec<String> = serde_json::from_str(lines.next().expect("a line of keys")).unwrap();
    let want: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    assert_eq!(keys, want, "scripts/description.py KEYS and src/description.rs KEYS differ");
    assert_eq!(lines.next(), Some(PREFIX));
}

/// Python's writer on a copy of the tiny model: a new input, labels per task, a typo refused,
/// another tool's entry kept.
const WRITE: &str = r#"
import onnx, description as desc
model = onnx.load(sys.argv[1])
model.metadata_props.add(key="other.tool", value="kept")
d = desc.read(model)
d.update(layout="NCHW", height=24, width=20, mean=desc.triple_text([0.5, 0.25, 0.125]),
         std=desc.triple_text([0.5] * 3), resize="bicubic", crop="face:3.2",
         labels=desc.labels_text(["cat", "dog"]))
d[desc.TASK_LABELS + "pose"] = desc.labels_text(["left", "front", "right"])
desc.write(model, d)
try:
    desc.write(model, {"layuot": "NHWC"})
    sys.exit("write took the unknown key 'layuot'")
except ValueError:
    pass
onnx.save(model, sys.argv[2])
"#;

#[test]
fn what_the_python_writer_puts_in_a_model_is_what_rust_reads() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("described.onnx");
    run_python(&py, WRITE, &[test_model("tiny_cnn.onnx").as_path(), out.as_path()]);

    let entries = retrain::onnx::read_metadata(&std::fs::read(&out).unwrap()).unwrap();
    assert!(entries.contains(&("other.tool".to_string(), "kept".to_string())), "another tool's entry went: {entries:?}");
    let d = Description::from_metadata(&entries).unwrap().expect("retrain.* entries");
    assert_eq!(d.layout, Some(Layout::Nchw));
    assert_eq!((d.height, d.width), (Some(24), Some(20)));
    assert_eq!(d.mean, Some([0.5, 0.25, 0.125]));
    assert_eq!(d.std, Some([0.5; 3]));
    assert_eq!(d.resize, Some(Filter::Bicubic));
    assert_eq!(d.crop, Some("face:3.2".parse::<Crop>().unwrap()));
    assert_eq!(d.labels.clone().unwrap(), ["cat", "dog"]);
    assert_eq!(d.task_labels["pose"], ["left", "front", "right"]);
    assert_eq!(d.input_name.as_deref(), Some("input"));
    assert_eq!(d.converter.as_deref(), Some("tests/support/make_test_models.py"));
    assert!(d.other.is_empty(), "keys without a field: {:?}", d.other);
    let ours = entries.iter().filter(|(k, _)| k.starts_with(PREFIX)).count();
    assert_eq!(ours, d.to_metadata().len(), "a retrain.* entry Python wrote has no place in the description: {entries:?}");
}

#[test]
fn the_python_reader_takes_metadata_and_sidecars_as_rust_does() {
    let Some(py) = python() else { return };
    for name in ["tiny_cnn.onnx", "tiny_cnn_nchw.onnx", "no_metadata.onnx"] {
        let model = test_model(name);
        let out = run_python(&py, "import description, json; print(json.dumps(description.read_file(sys.argv[1])))", &[model.as_path()]);
        let keys: BTreeMap<String, String> = serde_json::from_str(out.trim()).unwrap();
        let theirs = Description::from_keys(keys).unwrap();
        let ours = Description::of_file(&model, &std::fs::read(&model).unwrap()).unwrap();
        assert_eq!(theirs, ours, "{name}");
    }
}
