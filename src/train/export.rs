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

const MODEL_GRAPH: u64 = 7;
const MODEL_METADATA: u64 = 14;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_DIMS: u64 = 1;
const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_FLOAT_DATA: u64 = 4;
const TENSOR_NAME: u64 = 8;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const ONNX_FLOAT: u64 = 1;
const LEN: u64 = 2;

/// Copies `forward` to `out` with `params` as its initializer values and `metadata` set.
pub fn export(forward: &Path, params: &[NamedTensor], metadata: &[(String, String)], out: &Path) -> Result<()> {
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

fn rewrite_model(buf: &[u8], params: &HashMap<&str, &NamedTensor>, metadata: &[(String, String)], written: &mut Vec<String>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(buf.len());
    for f in fields(buf)? {
        match (f.number, f.wire) {
            (MODEL_GRAPH, LEN) => put_len(&mut out, MODEL_GRAPH, &rewrite_graph(f.payload(buf), params, written)?),
            (MODEL_METADATA, LEN) if replaced_key(f.payload(buf), metadata)? => {}
            _ => out.extend_from_slice(f.whole(buf)),
        }
    }
    for (key, value) in metadata {
        let mut entry = Vec::new();
        put_len(&mut entry, 1, key.as_bytes());
        put_len(&mut entry, 2, value.as_bytes());
        put_len(&mut out, MODEL_METADATA, &entry);
    }
    Ok(out)
}

fn replaced_key(entry: &[u8], metadata: &[(String, String)]) -> Result<bool> {
    let key = fields(entry)?.into_iter().find(|f| f.number == 1 && f.wire == LEN).map(|f| f.payload(entry).to_vec());
    Ok(key.is_some_and(|k| metadata.iter().any(|(m, _)| m.as_bytes() == k.as_slice())))
}

fn rewrite_graph(buf: &[u8], params: &HashMap<&str, &NamedTensor>, written: &mut Vec<String>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(buf.len());
    for f in fields(buf)? {
        if f.number == GRAPH_INITIALIZER && f.wire == LEN {
            if let Some(tensor) = rewrite_tensor(f.payload(buf), params)? {
                put_len(&mut out, GRAPH_INITIALIZER, &tensor.1);
                written.push(tensor.0);
                continue;
            }
        }
        out.extend_from_slice(f.whole(buf));
    }
    Ok(out)
}

/// The initializer with new raw data, if it is one of `params`.
fn rewrite_tensor(buf: &[u8], params: &HashMap<&str, &NamedTensor>) -> Result<Option<(String, Vec<u8>)>> {
    let all = fields(buf)?;
    let name = all.iter().find(|f| f.number == TENSOR_NAME).map(|f| String::from_utf8_lossy(f.payload(buf)).into_owned()).unwrap_or_default();
    let Some(param) = params.get(name.as_str()) else { return Ok(None) };
    let data_type = all.iter().find(|f| f.number == TENSOR_DATA_TYPE).map(|f| f.varint).unwrap_or(0);
    if data_type != ONNX_FLOAT {
        bail!("initializer '{name}' has ONNX data type {data_type}, not float");
    }
    if all.iter().any(|f| f.number == TENSOR_EXTERNAL_DATA) {
        bail!("initializer '{name}' keeps its data in an external file, which export does not rewrite");
    }
    let dims = tensor_dims(buf, &all)?;
    if dims != param.shape {
        bail!("initializer '{name}' has shape {dims:?}, the trained tensor {:?}", param.shape);
    }
    let mut out = Vec::with_capacity(buf.len());
    for f in &all {
        if f.number != TENSOR_FLOAT_DATA && f.number != TENSOR_RAW_DATA {
            out.extend_from_slice(f.whole(buf));
        }
    }
    let raw: Vec<u8> = param.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    put_len(&mut out, TENSOR_RAW_DATA, &raw);
    Ok(Some((name, out)))
}

fn tensor_dims(buf: &[u8], all: &[Field]) -> Result<Vec<usize>> {
    let mut dims = Vec::new();
    for f in all.iter().filter(|f| f.number == TENSOR_DIMS) {
        if f.wire == LEN {
            let payload = f.payload(buf);
            let mut pos = 0;
            while pos < payload.len() {
                dims.push(varint(payload, &mut pos)? as usize);
            }
        } else {
            dims.push(f.varint as usize);
        }
    }
    Ok(dims)
}

/// One protobuf field: its number, wire type, byte ranges and (for varints) value.
struct Field {
    number: u64,
    wire: u64,
    start: usize,
    payload_start: usize,
    end: usize,
    varint: u64,
}

impl Field {
    fn whole<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start..self.end]
    }

    fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.payload_start..self.end]
    }
}

fn fields(buf: &[u8]) -> Result<Vec<Field>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = varint(buf, &mut pos)?;
        let (number, wire) = (key >> 3, key & 7);
        let mut value = 0;
        let payload_start;
        match wire {
            0 => {
                payload_start = pos;
                value = varint(buf, &mut pos)?;
            }
            1 => {
                payload_start = pos;
                pos += 8;
            }
            2 => {
                let len = varint(buf, &mut pos)? as usize;
                payload_start = pos;
                pos += len;
            }
            5 => {
                payload_start = pos;
                pos += 4;
            }
            _ => bail!("protobuf wire type {wire} at byte {start}"),
        }
        if pos > buf.len() {
            bail!("protobuf field {number} at byte {start} runs past the end");
        }
        out.push(Field { number, wire, start, payload_start, end: pos, varint: value });
    }
    Ok(out)
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = buf.get(*pos) else { bail!("truncated varint") };
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    bail!("varint longer than 10 bytes")
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, (number << 3) | LEN);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}
