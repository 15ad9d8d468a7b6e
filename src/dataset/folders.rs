//! The class-folder layout of TensorFlow's retrain.py: `root/<class>/*.jpg`.
//!
//! Class names are the sub-folder names in sorted order; the label is the class index. Names
//! are kept as the file system gives them, bytes and all, from the listing to the open and
//! into the cache: a file name need not be UTF-8.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{Dataset, Sample};

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "JPG"];

/// Lists `root/<class>/<image>` in a stable order (classes sorted, files sorted, by their bytes).
pub fn load(root: &Path) -> Result<Dataset> {
    let classes = sorted_entries(root, true)?;
    if classes.is_empty() {
        bail!("{} has no class sub-folders (expected root/<class>/*.jpg)", root.display());
    }
    let mut samples = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        for file in sorted_entries(&root.join(class), false)? {
            if !is_image_name(&file) {
                continue;
            }
            let key = Path::new(class).join(file);
            samples.push(Sample { path: root.join(&key), key: key.into_os_string(), labels: vec![label as i32], landmarks: None });
        }
    }
    let class_names = classes.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    Ok(Dataset {
        source: format!("folders:{}", root.display()),
        label_columns: vec!["class".to_string()],
        class_names,
        column_class_names: Default::default(),
        parts: Vec::new(),
        samples,
        problems: Vec::new(),
    })
}

fn is_image_name(name: &OsStr) -> bool {
    Path::new(name).extension().and_then(OsStr::to_str).is_some_and(|ext| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// Names in `dir` that are folders (`want_dirs`) or files, sorted, hidden ones left out.
fn sorted_entries(dir: &Path, want_dirs: bool) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") || entry.path().is_dir() != want_dirs {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}
