//! The class-folder layout of TensorFlow's retrain.py: `root/<class>/*.jpg`.
//!
//! Class names are the sub-folder names in sorted order; the label is the class index.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{Dataset, Sample};

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "JPG"];

/// Lists `root/<class>/<image>` in a stable order (classes sorted, files sorted).
pub fn load(root: &Path) -> Result<Dataset> {
    let class_names = sorted_entries(root, true)?;
    if class_names.is_empty() {
        bail!("{} has no class sub-folders (expected root/<class>/*.jpg)", root.display());
    }
    let mut samples = Vec::new();
    for (label, class) in class_names.iter().enumerate() {
        for file in sorted_entries(&root.join(class), false)? {
            if !is_image_name(&file) {
                continue;
            }
            let key = format!("{class}/{file}");
            samples.push(Sample { path: root.join(&key), key, labels: vec![label as i32], landmarks: None });
        }
    }
    Ok(Dataset { source: format!("folders:{}", root.display()), label_columns: vec!["class".to_string()], class_names, samples, problems: Vec::new() })
}

fn is_image_name(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// Names in `dir` that are folders (`want_dirs`) or files, sorted, hidden ones left out.
fn sorted_entries(dir: &Path, want_dirs: bool) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || entry.path().is_dir() != want_dirs {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}
