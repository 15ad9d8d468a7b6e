//! Tensors whose data lives in files beside the model ("external data"), and the refusal of
//! any that point outside the model's folder: a model file must not make retrain (or ONNX
//! Runtime) read arbitrary files of the machine it runs on.

use std::path::{Component, Path};

use anyhow::{bail, Context, Result};

use super::wire::fields;
use super::{graph_field, model_field, node_field, TENSOR_NAME};

mod field {
    pub const TENSOR_EXTERNAL_DATA: u32 = 13;
    pub const TENSOR_DATA_LOCATION: u32 = 14;
    pub const GRAPH_SPARSE_INITIALIZER: u32 = 15;
    pub const SPARSE_VALUES: u32 = 1;
    pub const SPARSE_INDICES: u32 = 2;
    pub const ATTRIBUTE_TENSOR: u32 = 5;
    pub const ATTRIBUTE_GRAPH: u32 = 6;
    pub const ATTRIBUTE_TENSORS: u32 = 10;
    pub const ATTRIBUTE_GRAPHS: u32 = 11;
    pub const ATTRIBUTE_SPARSE_TENSOR: u32 = 22;
    pub const ATTRIBUTE_SPARSE_TENSORS: u32 = 23;
}

/// (tensor name, `location`) of every tensor with external data, subgraphs included.
pub fn locations(model: &[u8]) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for f in fields(model)?.iter().filter(|f| f.number == model_field::GRAPH) {
        graph(f.bytes()?, &mut found)?;
    }
    Ok(found)
}

fn graph(g: &[u8], found: &mut Vec<(String, String)>) -> Result<()> {
    for f in fields(g)? {
        match f.number {
            graph_field::INITIALIZER => tensor(f.bytes()?, found)?,
            field::GRAPH_SPARSE_INITIALIZER => sparse(f.bytes()?, found)?,
            graph_field::NODE => {
                for a in fields(f.bytes()?)?.iter().filter(|a| a.number == node_field::ATTRIBUTE) {
                    attribute(a.bytes()?, found)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn attribute(a: &[u8], found: &mut Vec<(String, String)>) -> Result<()> {
    for f in fields(a)? {
        match f.number {
            field::ATTRIBUTE_TENSOR | field::ATTRIBUTE_TENSORS => tensor(f.bytes()?, found)?,
            field::ATTRIBUTE_GRAPH | field::ATTRIBUTE_GRAPHS => graph(f.bytes()?, found)?,
            field::ATTRIBUTE_SPARSE_TENSOR | field::ATTRIBUTE_SPARSE_TENSORS => sparse(f.bytes()?, found)?,
            _ => {}
        }
    }
    Ok(())
}

fn sparse(s: &[u8], found: &mut Vec<(String, String)>) -> Result<()> {
    for f in fields(s)?.iter().filter(|f| f.number == field::SPARSE_VALUES || f.number == field::SPARSE_INDICES) {
        tensor(f.bytes()?, found)?;
    }
    Ok(())
}

fn tensor(t: &[u8], found: &mut Vec<(String, String)>) -> Result<()> {
    let (mut name, mut location, mut external) = (String::new(), None, false);
    for f in fields(t)? {
        match f.number {
            TENSOR_NAME => name = f.string()?,
            field::TENSOR_DATA_LOCATION => external = f.varint()? == 1,
            field::TENSOR_EXTERNAL_DATA => {
                let entry = fields(f.bytes()?)?;
                let text = |n: u32| entry.iter().find(|e| e.number == n).map(|e| e.string()).transpose();
                if text(1)?.as_deref() == Some("location") {
                    location = text(2)?;
                }
            }
            _ => {}
        }
    }
    if external || location.is_some() {
        found.push((name, location.unwrap_or_default()));
    }
    Ok(())
}

/// Refuses a model file whose external data would be read from outside its own folder: an
/// absolute location, one that climbs out with `..`, or a link that leads elsewhere.
pub fn check(model_path: &Path) -> Result<()> {
    let bytes = std::fs::read(model_path).with_context(|| format!("cannot read ONNX model {}", model_path.display()))?;
    let Ok(entries) = locations(&bytes) else {
        return Ok(()); // not parseable as ONNX: ONNX Runtime says what is wrong with it
    };
    let dir = model_path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    for (name, location) in entries {
        let refuse = |why: &str| -> Result<()> {
            bail!(
                "ONNX model {}: tensor '{name}' keeps its data at '{location}', {why}; refused: external data must lie in the model's folder {}",
                model_path.display(),
                dir.display()
            )
        };
        let relative = Path::new(&location);
        if location.is_empty() {
            refuse("which names no file")?;
        }
        if relative.is_absolute() || relative.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_))) {
            refuse("outside that folder")?;
        }
        // A link inside the folder may still lead out of it.
        if let (Ok(target), Ok(root)) = (dir.join(relative).canonicalize(), dir.canonicalize()) {
            if !target.starts_with(&root) {
                refuse(&format!("which leads to {} outside that folder", target.display()))?;
            }
        }
    }
    Ok(())
}
