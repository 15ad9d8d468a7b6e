//! Writes trained weights back into the forward graph's initializers.
//!
//! The forward graph stays byte-for-byte what the artifacts were built from, except the raw
//! data of the trained initializers and the `retrain.*` metadata given; the result runs in
//! `retrain extract` and every other command that takes an ONNX model.
//!
//! ONNX files are protobuf. Only three messages are touched (ModelProto.graph = 7,
//! ModelProto.metadata_props = 14, GraphProto.initializer = 5, TensorProto name = 8,
//! data_type = 2, dims = 1, float_data = 4, raw_data = 9); every other field is copied as it
//! is, so no full ONNX schema is needed here.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::checkpoint::NamedTensor;
use crate::onnx::wire::{self, Encoder, Field, Value};

const MODEL_GRAPH: u32 = 7;
const MODEL_METADATA: u32 = 14;
const GRAPH_INITIALIZER: u32 = 5;
const TENSOR_DIMS: u32 = 1;
const TENSOR_DATA_TYPE: u32 = 2;
const TENSOR_FLOAT_DATA: u32 = 4;
const TENSOR_NAME: u32 = 8;
const TENSOR_RAW_DATA: u32 = 9;
const TENSOR_EXTERNAL_DATA: u32 = 13;
const ONNX_FLOAT: u64 = 1;

/// Copies `forward` to `out` with `params` as its initializer values and `metadata` set.
pub fn write(forward: &Path, params: &[NamedTensor], metadata: &[(String, String)], out: &Path) -> Result<()> {
    let bytes = std::fs::read(forward).with_context(|| format!("cannot read {}", forward.display()))?;
    let by_name: HashMap<&str, &NamedTensor> = params.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut written = Vec::new();
    let model = rewrite_model(&bytes, &by_name, metadata, &mut written).with_context(|| format!("{} is not an ONNX model", forward.display()))?;
    if let Some(missing) = params.iter().find(|p| !written.contains(&p.name)) {
        bail!("{} has no initializer '{}' to write the trained value into", forward.display(), missing.name);
    }
    let tmp = out.with_extension("onnx.partial");
    std::fs::write(&tmp, model).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))
}

fn is_message(f: &Field, number: u32) -> bool {
    f.number == number && matches!(f.value, Value::Bytes(_))
}

fn rewrite_model(buf: &[u8], params: &HashMap<&str, &NamedTensor>, metadata: &[(String, String)], written: &mut Vec<String>) -> Result<Vec<u8>> {
    let mut out = Encoder::new();
    for f in wire::fields(buf)? {
        if is_message(&f, MODEL_GRAPH) {
            out = out.bytes(MODEL_GRAPH, &rewrite_graph(f.bytes()?, params, written)?);
        } else if !(is_message(&f, MODEL_METADATA) && replaced_key(f.bytes()?, metadata)?) {
            out = out.raw(f.raw);
        }
    }
    for (key, value) in metadata {
        out = out.bytes(MODEL_METADATA, &Encoder::new().string(1, key).string(2, value).finish());
    }
    Ok(out.finish())
}

fn replaced_key(entry: &[u8], metadata: &[(String, String)]) -> Result<bool> {
    let key = wire::fields(entry)?.into_iter().find(|f| is_message(f, 1)).map(|f| f.bytes()).transpose()?;
    Ok(key.is_some_and(|k| metadata.iter().any(|(m, _)| m.as_bytes() == k)))
}

fn rewrite_graph(buf: &[u8], params: &HashMap<&str, &NamedTensor>, written: &mut Vec<String>) -> Result<Vec<u8>> {
    let mut out = Encoder::new();
    for f in wire::fields(buf)? {
        if is_message(&f, GRAPH_INITIALIZER) {
            if let Some((name, tensor)) = rewrite_tensor(f.bytes()?, params)? {
                out = out.bytes(GRAPH_INITIALIZER, &tensor);
                written.push(name);
                continue;
            }
        }
        out = out.raw(f.raw);
    }
    Ok(out.finish())
}

/// The initializer with new raw data, if it is one of `params`.
fn rewrite_tensor(buf: &[u8], params: &HashMap<&str, &NamedTensor>) -> Result<Option<(String, Vec<u8>)>> {
    let all = wire::fields(buf)?;
    let name = all.iter().find(|f| f.number == TENSOR_NAME).map(|f| f.string()).transpose()?.unwrap_or_default();
    let Some(param) = params.get(name.as_str()) else { return Ok(None) };
    let data_type = all.iter().find(|f| f.number == TENSOR_DATA_TYPE).map(|f| f.varint()).transpose()?.unwrap_or(0);
    if data_type != ONNX_FLOAT {
        bail!("initializer '{name}' has ONNX data type {data_type}, not float");
    }
    if all.iter().any(|f| f.number == TENSOR_EXTERNAL_DATA) {
        bail!("initializer '{name}' keeps its data in an external file, which export does not rewrite");
    }
    let dims = tensor_dims(&all)?;
    if dims != param.shape {
        bail!("initializer '{name}' has shape {dims:?}, the trained tensor {:?}", param.shape);
    }
    let mut out = Encoder::new();
    for f in all.iter().filter(|f| f.number != TENSOR_FLOAT_DATA && f.number != TENSOR_RAW_DATA) {
        out = out.raw(f.raw);
    }
    let raw: Vec<u8> = param.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(Some((name, out.bytes(TENSOR_RAW_DATA, &raw).finish())))
}

/// TensorProto.dims, written one varint per field or packed.
fn tensor_dims(all: &[Field]) -> Result<Vec<usize>> {
    let mut dims = Vec::new();
    for f in all.iter().filter(|f| f.number == TENSOR_DIMS) {
        match f.value {
            Value::Bytes(packed) => dims.extend(wire::packed_varints(packed)?.into_iter().map(|d| d as usize)),
            _ => dims.push(f.varint()? as usize),
        }
    }
    Ok(dims)
}
