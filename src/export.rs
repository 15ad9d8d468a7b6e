//! One deployable ONNX file: backbone + heads, pixels in, per-attribute probabilities out.
//!
//! The backbone is edited field-wise (see [`crate::onnx::wire`]): its nodes and weights are
//! copied byte for byte, nodes that no kept output needs are dropped (e.g. the backbone's own
//! classifier), then a Flatten of the bottleneck feeds each head's nodes, copied from the head
//! files as they are. The backbone's `retrain.*` metadata (input layout, size, scaling) stays,
//! and the crop, the heads and their outputs are added, so `predict` (or anyone) can
//! preprocess correctly from the file alone. With `pixel_input` the resize and scaling become
//! part of the graph too (see [`pixels`]).

mod located;
mod pixels;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::head::onnx::{HeadFile, INPUT, KIND_KEY};
use crate::head::HeadInfo;
use crate::model::{input_spec, read_sidecar, METADATA_PREFIX};
use crate::onnx::wire::{fields, Encoder, Field};
use crate::onnx::{self, graph_field, model_field, node_field, Dim, OPSET, TENSOR_NAME, VALUE_INFO_NAME};
use crate::preprocess::{Crop, Preprocess};
pub use located::{Landmarks, LocatedBy, LOCATED_KEY};
pub use pixels::{PIXELS, PIXEL_INPUT};

/// Description key (metadata `retrain.heads`) listing the heads of an exported model (JSON,
/// [`ExportedHead`]s).
pub const HEADS_KEY: &str = "heads";
/// Description key with the crop the heads were trained on (`original`, `nose:150`).
pub const CROP_KEY: &str = "crop";
/// Description key with the whole preprocessing the heads were trained with.
pub const PREPROCESS_KEY: &str = "preprocess";
/// Description key of a model that takes decoded pixels ([`PIXEL_INPUT`]).
pub const PIXEL_INPUT_KEY: &str = "pixel_input";

/// What `predict` needs to know of each head in an exported model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedHead {
    pub attribute: String,
    /// The graph output with this attribute's probabilities.
    pub output: String,
    pub labels: Vec<String>,
    pub head: HeadInfo,
}

/// What the exported model takes.
pub enum Input<'a> {
    /// The backbone's input tensor, prepared by the caller (`retrain predict` does it).
    Tensor,
    /// Decoded uint8 images of any size, resized and scaled inside (crop original only).
    Pixels,
    /// Decoded uint8 images, one per run, whose crop a landmark model inside places.
    Located(Landmarks<'a>),
}

/// Joins `backbone` and `heads` into `out`. Every head must have been trained on this very
/// backbone file, on the same output and preprocessing.
pub fn export(backbone: &Path, heads: &[&Path], out: &Path, input: Input) -> Result<Vec<ExportedHead>> {
    if heads.is_empty() {
        bail!("export needs at least one --head");
    }
    let heads: Vec<HeadFile> = heads.iter().map(|p| HeadFile::read(p)).collect::<Result<_>>()?;
    let bytes = std::fs::read(backbone).with_context(|| format!("cannot read backbone {}", backbone.display()))?;
    let sha = hex::encode(Sha256::digest(&bytes)); // as model::file_sha256, without reading the file twice
    let first = &heads[0].info;
    check_heads(&heads, &sha).with_context(|| format!("heads do not fit backbone {}", backbone.display()))?;
    let crop = Preprocess::crop_of(&first.cache.preprocess)?;
    let mut metadata = sidecar_description(backbone, &bytes)?;
    let front = match input {
        Input::Tensor => None,
        Input::Pixels => Some(pixel_front(backbone, &bytes, crop, None, &mut metadata)?),
        Input::Located(landmarks) => Some(pixel_front(backbone, &bytes, crop, Some(&landmarks), &mut metadata)?),
    };
    let model = graft(&bytes, &heads, &first.cache.output, front.as_ref()).with_context(|| format!("backbone {}", backbone.display()))?;
    let exported: Vec<ExportedHead> = heads
        .iter()
        .map(|h| ExportedHead { attribute: h.info.attribute.clone(), output: h.info.output.clone(), labels: h.info.labels.clone(), head: h.info.clone() })
        .collect();
    metadata.extend([
        (KIND_KEY.to_string(), "model".to_string()),
        (format!("{METADATA_PREFIX}{CROP_KEY}"), crop.to_string()),
        (format!("{METADATA_PREFIX}{PREPROCESS_KEY}"), first.cache.preprocess.clone()),
        (format!("{METADATA_PREFIX}{HEADS_KEY}"), serde_json::to_string(&exported)?),
        (format!("{METADATA_PREFIX}backbone_sha256"), sha),
        (format!("{METADATA_PREFIX}exported_by"), format!("retrain {}", crate::version())),
    ]);
    let model = with_metadata(&model, &metadata)?;
    crate::write_file(out, model)?;
    Ok(exported)
}

/// A backbone described by a sidecar JSON instead of metadata: its description, as metadata
/// entries, so that the exported model describes its input by itself. Empty otherwise.
fn sidecar_description(backbone: &Path, bytes: &[u8]) -> Result<Vec<(String, String)>> {
    if onnx::read_metadata(bytes)?.iter().any(|(k, _)| k.starts_with(METADATA_PREFIX)) {
        return Ok(Vec::new());
    }
    let mut entries: Vec<(String, String)> = read_sidecar(backbone)?.into_iter().map(|(k, v)| (format!("{METADATA_PREFIX}{k}"), v)).collect();
    entries.sort();
    Ok(entries)
}

/// The pixel front for this backbone (with the landmark model inside where given), after
/// checking that the heads' crop allows it; records the new input in `metadata`.
fn pixel_front(backbone: &Path, bytes: &[u8], crop: Crop, landmarks: Option<&Landmarks>, metadata: &mut Vec<(String, String)>) -> Result<pixels::Front> {
    if crop != Crop::Original && landmarks.is_none() {
        bail!("--pixel-input needs heads trained on crop original; these were trained on crop {crop}, placed from landmarks the graph does not have (give --landmarks MODEL)");
    }
    let mut description = description(backbone, bytes)?;
    description.extend(metadata.iter().filter_map(|(k, v)| Some((k.strip_prefix(METADATA_PREFIX)?.to_string(), v.clone()))));
    let spec = input_spec(&description).with_context(|| format!("model description of {}", backbone.display()))?;
    let replaced = match description.get("input_name") {
        Some(name) => name.clone(),
        None => first_input(bytes)?,
    };
    metadata.retain(|(k, _)| *k != format!("{METADATA_PREFIX}input_name"));
    metadata.extend([(format!("{METADATA_PREFIX}input_name"), PIXELS.to_string()), (format!("{METADATA_PREFIX}{PIXEL_INPUT_KEY}"), PIXEL_INPUT.to_string())]);
    let Some(landmarks) = landmarks else { return pixels::front(&spec, &replaced) };
    let (front, located) = located::front(landmarks, crop, &spec, &replaced)?;
    metadata.push((located::metadata_key(), serde_json::to_string(&located)?));
    Ok(front)
}

/// A model's description: its `retrain.*` metadata (without the prefix), else its sidecar.
fn description(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let described: HashMap<String, String> =
        onnx::read_metadata(bytes)?.into_iter().filter_map(|(k, v)| Some((k.strip_prefix(METADATA_PREFIX)?.to_string(), v))).collect();
    if described.is_empty() {
        return read_sidecar(path);
    }
    Ok(described)
}

/// The first graph input that is not an initializer (the image input of a backbone).
fn first_input(model: &[u8]) -> Result<String> {
    let graph = fields(model)?.into_iter().find(|f| f.number == model_field::GRAPH).context("the file has no graph")?;
    let parts = fields(graph.bytes()?)?;
    let weights = names(&parts)?;
    for f in parts.iter().filter(|f| f.number == graph_field::INPUT) {
        let name = onnx::string(f.bytes()?, VALUE_INFO_NAME)?;
        if !weights.contains(&name) {
            return Ok(name);
        }
    }
    bail!("the graph has no image input")
}

fn check_heads(heads: &[HeadFile], sha: &str) -> Result<()> {
    let first = &heads[0].info;
    let mut attributes = HashSet::new();
    for h in heads {
        let i = &h.info;
        if i.cache.model_sha256 != sha {
            bail!("head '{}' was trained on features of a model with sha256 {}, this backbone's is {sha}", i.attribute, i.cache.model_sha256);
        }
        if i.cache.output != first.cache.output {
            bail!("head '{}' uses output '{}', head '{}' uses '{}'", i.attribute, i.cache.output, first.attribute, first.cache.output);
        }
        if i.cache.preprocess != first.cache.preprocess {
            bail!(
                "heads '{}' and '{}' were trained on differently preprocessed images ('{}' vs '{}'): one model sees one crop",
                first.attribute,
                i.attribute,
                first.cache.preprocess,
                i.cache.preprocess
            );
        }
        if !attributes.insert(i.attribute.clone()) {
            bail!("two heads for attribute '{}'", i.attribute);
        }
    }
    Ok(())
}

/// The backbone model with its graph replaced by backbone + heads (and the pixel front, which
/// needs opset 18 and so IR version 8 or newer).
fn graft(model: &[u8], heads: &[HeadFile], bottleneck: &str, front: Option<&pixels::Front>) -> Result<Vec<u8>> {
    let top = fields(model)?;
    let opset = default_opset(&top)?;
    let graph = top.iter().find(|f| f.number == model_field::GRAPH).context("the file has no graph")?;
    let new_graph = graft_graph(graph.bytes()?, heads, bottleneck, front.map(|f| (f, opset)))?;
    let mut e = Encoder::new();
    for f in &top {
        e = match f.number {
            model_field::GRAPH => e.bytes(model_field::GRAPH, &new_graph),
            model_field::OPSET_IMPORT if front.is_some() && is_default_domain(f)? && opset < pixels::PIXEL_OPSET => {
                e.bytes(model_field::OPSET_IMPORT, &onnx::opset_entry("", pixels::PIXEL_OPSET))
            }
            model_field::IR_VERSION if front.is_some() && (f.varint()? as i64) < onnx::IR_VERSION => e.int(model_field::IR_VERSION, onnx::IR_VERSION),
            _ => e.raw(f.raw),
        };
    }
    Ok(e.finish())
}

fn is_default_domain(opset_import: &Field) -> Result<bool> {
    let domain = onnx::string(opset_import.bytes()?, 1)?;
    Ok(domain.is_empty() || domain == "ai.onnx")
}

/// The default-domain opset. Head graphs use opset-13 semantics (see [`OPSET`]); it must be at least that.
fn default_opset(top: &[Field]) -> Result<i64> {
    let mut opset = None;
    for f in top.iter().filter(|f| f.number == model_field::OPSET_IMPORT) {
        if is_default_domain(f)? {
            let entry = fields(f.bytes()?)?;
            opset = Some(entry.iter().find(|e| e.number == 2).map(|e| e.varint()).transpose()?.unwrap_or(0) as i64);
        }
    }
    let version = opset.context("the model imports no default-domain opset")?;
    if version < OPSET {
        bail!("its default opset is {version}; heads need {OPSET} or newer (re-export the backbone at opset >= {OPSET})");
    }
    Ok(version)
}

/// `front`: the pixel front and the backbone's opset.
fn graft_graph(graph: &[u8], heads: &[HeadFile], bottleneck: &str, front: Option<(&pixels::Front, i64)>) -> Result<Vec<u8>> {
    let parts = fields(graph)?;
    let is_bottleneck =
        |f: &&Field| f.number == graph_field::OUTPUT && onnx::string(f.bytes().unwrap_or_default(), VALUE_INFO_NAME).is_ok_and(|n| n == bottleneck);
    let bottleneck_output = parts.iter().find(is_bottleneck).with_context(|| format!("graph has no output '{bottleneck}' (the heads were trained on it)"))?;
    let needed = needed_tensors(&parts, bottleneck)?;
    let head_parts: Vec<Vec<Field>> = heads.iter().map(|h| head_graph_fields(&h.bytes)).collect::<Result<_>>()?;
    check_names(&parts, &head_parts)?;
    let taken = names(&parts)?;
    for output in front.iter().flat_map(|(f, _)| &f.outputs) {
        let name = onnx::string(output, VALUE_INFO_NAME)?;
        if taken.contains(&name) {
            bail!("the backbone already has a tensor named '{name}', an output of the exported model");
        }
    }

    let mut e = Encoder::new();
    if let Some((front, _)) = front {
        for n in &front.nodes {
            e = e.bytes(graph_field::NODE, n);
        }
        for t in &front.initializers {
            e = e.bytes(graph_field::INITIALIZER, t);
        }
        e = e.bytes(graph_field::INPUT, &front.input);
    }
    for f in &parts {
        if f.number == graph_field::OUTPUT || !is_needed(f, needed.as_ref())? {
            continue;
        }
        e = match front {
            Some((front, _)) if f.number == graph_field::INPUT && onnx::string(f.bytes()?, VALUE_INFO_NAME)? == front.replaces => e,
            Some((_, opset)) if f.number == graph_field::NODE => {
                let (node, constant) = pixels::at_opset_18(f.bytes()?, opset)?;
                let e = e.bytes(graph_field::NODE, &node);
                match constant {
                    Some(c) => e.bytes(graph_field::INITIALIZER, &c),
                    None => e,
                }
            }
            _ => e.raw(f.raw),
        };
    }
    e = e.bytes(graph_field::NODE, &onnx::node("Flatten", "retrain/flatten", &[bottleneck], &[INPUT], &[onnx::int_attribute("axis", 1)]));
    e = e.bytes(graph_field::VALUE_INFO, &onnx::value_info(INPUT, &[Dim::Named("N"), Dim::Fixed(heads[0].info.dim as i64)]));
    let head_fields = |number: u32| head_parts.iter().flatten().filter(move |f| f.number == number);
    for f in head_fields(graph_field::NODE).chain(head_fields(graph_field::INITIALIZER)) {
        e = e.raw(f.raw);
    }
    e = e.raw(bottleneck_output.raw);
    for f in head_fields(graph_field::OUTPUT) {
        e = e.raw(f.raw);
    }
    for o in front.iter().flat_map(|(f, _)| &f.outputs) {
        e = e.bytes(graph_field::OUTPUT, o);
    }
    Ok(e.finish())
}

/// Tensors that `bottleneck` depends on, or `None` when the graph has control flow (whose
/// sub-graphs may use outer tensors invisibly): then nothing is pruned.
fn needed_tensors(graph: &[Field], bottleneck: &str) -> Result<Option<HashSet<String>>> {
    let mut needed = HashSet::from([bottleneck.to_string()]);
    // ONNX requires nodes in topological order, so one backward pass finds every producer.
    for node in graph.iter().rev().filter(|f| f.number == graph_field::NODE) {
        let bytes = node.bytes()?;
        if ["If", "Loop", "Scan"].contains(&onnx::string(bytes, node_field::OP_TYPE)?.as_str()) {
            return Ok(None);
        }
        if onnx::strings(bytes, node_field::OUTPUT)?.iter().any(|o| needed.contains(o)) {
            needed.extend(onnx::strings(bytes, node_field::INPUT)?);
        }
    }
    Ok(Some(needed))
}

/// Whether a backbone graph field stays: nodes, weights, inputs and shape annotations only when
/// the bottleneck depends on them; everything else (name, doc string, ...) always.
fn is_needed(f: &Field, needed: Option<&HashSet<String>>) -> Result<bool> {
    let Some(needed) = needed else { return Ok(true) };
    let names = match f.number {
        graph_field::NODE => onnx::strings(f.bytes()?, node_field::OUTPUT)?,
        graph_field::INITIALIZER => onnx::strings(f.bytes()?, TENSOR_NAME)?,
        graph_field::VALUE_INFO | graph_field::INPUT => onnx::strings(f.bytes()?, VALUE_INFO_NAME)?,
        _ => return Ok(true),
    };
    Ok(names.iter().any(|n| needed.contains(n)))
}

/// The graph fields of a head file.
fn head_graph_fields(model: &[u8]) -> Result<Vec<Field<'_>>> {
    let graph = fields(model)?.into_iter().find(|f| f.number == model_field::GRAPH).context("head file has no graph")?;
    fields(graph.bytes()?)
}

/// Head tensor names must not clash with the backbone's (or each other's).
fn check_names(backbone: &[Field], heads: &[Vec<Field>]) -> Result<()> {
    let mut seen = names(backbone)?;
    if seen.contains(INPUT) {
        bail!("the backbone already has a tensor named '{INPUT}'");
    }
    for head in heads {
        for name in names(head)? {
            if name != INPUT && !seen.insert(name.clone()) {
                bail!("tensor name '{name}' occurs in the backbone or in two heads");
            }
        }
    }
    Ok(())
}

/// Every node output and initializer name of a graph.
fn names(graph: &[Field]) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    for f in graph {
        match f.number {
            graph_field::NODE => out.extend(onnx::strings(f.bytes()?, node_field::OUTPUT)?),
            graph_field::INITIALIZER => out.extend(onnx::strings(f.bytes()?, TENSOR_NAME)?),
            _ => {}
        }
    }
    Ok(out)
}

/// Replaces metadata entries with the same keys and appends the new ones.
fn with_metadata(model: &[u8], entries: &[(String, String)]) -> Result<Vec<u8>> {
    let mut e = Encoder::new();
    for f in fields(model)? {
        if f.number == model_field::METADATA_PROPS {
            let key = onnx::string(f.bytes()?, 1)?;
            if entries.iter().any(|(k, _)| *k == key) {
                continue;
            }
        }
        e = e.raw(f.raw);
    }
    for (k, v) in entries {
        e = e.bytes(model_field::METADATA_PROPS, &onnx::metadata_entry(k, v));
    }
    Ok(e.finish())
}
