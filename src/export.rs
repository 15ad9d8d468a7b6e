//! One deployable ONNX file: backbone + heads, pixels in, per-attribute probabilities out.
//!
//! The backbone is edited field-wise (see [`crate::onnx::wire`]): its nodes and weights are
//! copied byte for byte, nodes that no kept output needs are dropped (e.g. the backbone's own
//! classifier), then a Flatten of the bottleneck feeds each head's nodes, copied from the head
//! files as they are. The backbone's `retrain.*` metadata (input layout, size, scaling) stays,
//! and the crop, the heads and their outputs are added, so `predict` (or anyone) can
//! preprocess correctly from the file alone. With `pixel_input` the resize and scaling become
//! part of the graph too (src/export/pixels.rs).

mod landmark_front;
mod pixels;

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub use crate::description::ExportedHead;
use crate::description::{Description, FileKind};
use crate::head::onnx::{HeadFile, INPUT};
use crate::onnx::wire::{fields, Encoder, Field};
use crate::onnx::{self, graph_field, model_field, node_field, Dim, OPSET, TENSOR_NAME, VALUE_INFO_NAME};
use crate::preprocess::{Crop, Preprocess};
pub use landmark_front::{Landmarks, LocatedBy};
pub use pixels::{PIXELS, PIXEL_INPUT};

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
///
/// ```
/// use retrain::export::{export, Input};
/// # let dir = tempfile::tempdir()?;
/// # let head = retrain::examples::head(dir.path())?;
/// # let out = dir.path().join("model.onnx");
///
/// let heads = export("onnx/test/tiny_cnn.onnx".as_ref(), &[&head], &out, Input::Pixels)?;
/// assert_eq!((heads[0].output.as_str(), heads[0].labels.as_slice()), ("p_class", &["dark".to_string(), "light".to_string()][..]));
/// # Ok::<(), anyhow::Error>(())
/// ```
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
    // the backbone's input description stays; its own classifier's names are not the heads'
    let mut description = Description::of_file(backbone, &bytes)?.without_classifier();
    let front = match input {
        Input::Tensor => None,
        Input::Pixels => Some(pixel_front(backbone, &bytes, crop, None, &mut description)?),
        Input::Located(landmarks) => Some(pixel_front(backbone, &bytes, crop, Some(&landmarks), &mut description)?),
    };
    let model = graft(&bytes, &heads, &first.cache.output, front.as_ref()).with_context(|| format!("backbone {}", backbone.display()))?;
    let exported: Vec<ExportedHead> = heads
        .iter()
        .map(|h| ExportedHead { attribute: h.info.attribute.clone(), output: h.info.output.clone(), labels: h.info.labels.clone(), head: h.info.clone() })
        .collect();
    describe_model(&mut description, &exported, crop, &first.cache.preprocess, sha);
    let model = with_description(&model, &description)?;
    crate::write_file(out, model)?;
    Ok(exported)
}

/// What an exported model says of itself besides its input: its heads, with their labels as
/// `labels` (one head) or `labels:ATTRIBUTE` (several), the crop and preprocessing they were
/// trained with, and where it came from.
fn describe_model(d: &mut Description, heads: &[ExportedHead], crop: Crop, preprocess: &str, backbone_sha256: String) {
    d.kind = Some(FileKind::Model);
    d.crop = Some(crop);
    d.preprocess = Some(preprocess.to_string());
    if let [head] = heads {
        (d.attribute, d.labels) = (Some(head.attribute.clone()), Some(head.labels.clone()));
    } else {
        d.task_labels = heads.iter().map(|h| (h.attribute.clone(), h.labels.clone())).collect();
    }
    d.heads = Some(heads.to_vec());
    d.backbone_sha256 = Some(backbone_sha256);
    d.exported_by = Some(format!("retrain {}", crate::version()));
}

/// The pixel front for this backbone (with the landmark model inside where given), after
/// checking that the heads' crop allows it; records the new input in `description`.
fn pixel_front(backbone: &Path, bytes: &[u8], crop: Crop, landmarks: Option<&Landmarks>, description: &mut Description) -> Result<pixels::Front> {
    if crop != Crop::Original && landmarks.is_none() {
        bail!("--pixel-input needs heads trained on crop original; these were trained on crop {crop}, placed from landmarks the graph does not have (give --landmarks MODEL)");
    }
    let spec = description.input_spec().with_context(|| format!("model description of {}", backbone.display()))?;
    let replaced = match &description.input_name {
        Some(name) => name.clone(),
        None => first_input(bytes)?,
    };
    description.input_name = Some(PIXELS.to_string());
    description.pixel_input = Some(PIXEL_INPUT.to_string());
    let Some(landmarks) = landmarks else { return pixels::front(&spec, &replaced) };
    let (front, located) = landmark_front::front(landmarks, crop, &spec, &replaced)?;
    description.located_by = Some(located);
    Ok(front)
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

/// `model` with `description` in place of every `retrain.*` metadata entry it had (entries
/// of other tools stay).
fn with_description(model: &[u8], description: &Description) -> Result<Vec<u8>> {
    let mut e = Encoder::new();
    for f in fields(model)? {
        if f.number == model_field::METADATA_PROPS && onnx::string(f.bytes()?, 1)?.starts_with(crate::description::PREFIX) {
            continue;
        }
        e = e.raw(f.raw);
    }
    for (k, v) in &description.to_metadata() {
        e = e.bytes(model_field::METADATA_PROPS, &onnx::metadata_entry(k, v));
    }
    Ok(e.finish())
}
