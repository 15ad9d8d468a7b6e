//! Writing and reading ONNX files without a protobuf code generator.
//!
//! Only the messages retrain writes itself (small head graphs) are built here, with the field
//! numbers of onnx.proto; everything else is copied field-wise (see [`wire`]). Files written
//! here are checked with `onnx.checker` and Python onnxruntime in the tests.

pub mod external;
pub mod wire;

use anyhow::Result;
use wire::{fields, Encoder};

/// TensorProto.DataType.FLOAT.
pub const FLOAT: i64 = 1;
/// TensorProto.DataType.UINT8.
pub const UINT8: i64 = 2;
/// TensorProto.DataType.INT64.
pub const INT64: i64 = 7;
/// IR version 8 (ONNX 1.10+): every ONNX Runtime of the last years loads it.
pub const IR_VERSION: i64 = 8;
/// Default-domain opset of the graphs written here. Sub, Mul, Gemm, Softmax and Flatten mean the
/// same from opset 13 up to the newest, so heads can join backbones of any opset >= 13.
pub const OPSET: i64 = 13;

/// ModelProto field numbers used here.
pub mod model_field {
    pub const IR_VERSION: u32 = 1;
    pub const PRODUCER_NAME: u32 = 2;
    pub const PRODUCER_VERSION: u32 = 3;
    pub const GRAPH: u32 = 7;
    pub const OPSET_IMPORT: u32 = 8;
    pub const METADATA_PROPS: u32 = 14;
}

/// GraphProto field numbers used here.
pub mod graph_field {
    pub const NODE: u32 = 1;
    pub const NAME: u32 = 2;
    pub const INITIALIZER: u32 = 5;
    pub const INPUT: u32 = 11;
    pub const OUTPUT: u32 = 12;
    pub const VALUE_INFO: u32 = 13;
}

/// NodeProto field numbers used here.
pub mod node_field {
    pub const INPUT: u32 = 1;
    pub const OUTPUT: u32 = 2;
    pub const NAME: u32 = 3;
    pub const OP_TYPE: u32 = 4;
    pub const ATTRIBUTE: u32 = 5;
}

/// Name field of TensorProto (initializers).
pub const TENSOR_NAME: u32 = 8;
/// Name field of ValueInfoProto (graph inputs and outputs).
pub const VALUE_INFO_NAME: u32 = 1;

/// A tensor dimension: fixed, or symbolic such as the batch size `N`.
#[derive(Debug, Clone, Copy)]
pub enum Dim<'a> {
    Fixed(i64),
    Named(&'a str),
}

/// A float32 initializer (TensorProto with raw little-endian data).
pub fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> Vec<u8> {
    debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
    raw_tensor(name, dims, FLOAT, &data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

/// An int64 initializer (TensorProto with raw little-endian data).
pub fn tensor_i64(name: &str, dims: &[i64], data: &[i64]) -> Vec<u8> {
    debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
    raw_tensor(name, dims, INT64, &data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

fn raw_tensor(name: &str, dims: &[i64], element: i64, raw: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new();
    for &d in dims {
        e = e.int(1, d);
    }
    e.int(2, element).string(TENSOR_NAME, name).bytes(9, raw).finish()
}

/// An INT attribute (AttributeProto type 2).
pub fn int_attribute(name: &str, value: i64) -> Vec<u8> {
    Encoder::new().string(1, name).int(3, value).int(20, 2).finish()
}

/// A FLOAT attribute (AttributeProto type 1).
pub fn float_attribute(name: &str, value: f32) -> Vec<u8> {
    Encoder::new().string(1, name).float(2, value).int(20, 1).finish()
}

/// A STRING attribute (AttributeProto type 3).
pub fn string_attribute(name: &str, value: &str) -> Vec<u8> {
    Encoder::new().string(1, name).string(4, value).int(20, 3).finish()
}

/// An INTS attribute (AttributeProto type 7).
pub fn ints_attribute(name: &str, values: &[i64]) -> Vec<u8> {
    let mut e = Encoder::new().string(1, name);
    for &v in values {
        e = e.int(8, v);
    }
    e.int(20, 7).finish()
}

/// A node of the default domain.
pub fn node(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str], attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut e = Encoder::new();
    for i in inputs {
        e = e.string(node_field::INPUT, i);
    }
    for o in outputs {
        e = e.string(node_field::OUTPUT, o);
    }
    e = e.string(node_field::NAME, name).string(node_field::OP_TYPE, op_type);
    for a in attributes {
        e = e.bytes(node_field::ATTRIBUTE, a);
    }
    e.finish()
}

/// A float32 tensor's name and shape, as used for graph inputs and outputs.
pub fn value_info(name: &str, dims: &[Dim]) -> Vec<u8> {
    typed_value_info(name, FLOAT, dims)
}

/// A tensor's name, element type (`FLOAT`, `UINT8`, ...) and shape.
pub fn typed_value_info(name: &str, element: i64, dims: &[Dim]) -> Vec<u8> {
    let mut shape = Encoder::new();
    for d in dims {
        let dim = match d {
            Dim::Fixed(v) => Encoder::new().int(1, *v),
            Dim::Named(s) => Encoder::new().string(2, s),
        };
        shape = shape.bytes(1, &dim.finish());
    }
    let tensor = Encoder::new().int(1, element).bytes(2, &shape.finish()).finish();
    let ty = Encoder::new().bytes(1, &tensor).finish();
    Encoder::new().string(VALUE_INFO_NAME, name).bytes(2, &ty).finish()
}

/// A graph from encoded parts.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Vec<u8>>,
    pub initializers: Vec<Vec<u8>>,
    pub inputs: Vec<Vec<u8>>,
    pub outputs: Vec<Vec<u8>>,
}

impl Graph {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        for n in &self.nodes {
            e = e.bytes(graph_field::NODE, n);
        }
        e = e.string(graph_field::NAME, &self.name);
        for t in &self.initializers {
            e = e.bytes(graph_field::INITIALIZER, t);
        }
        for i in &self.inputs {
            e = e.bytes(graph_field::INPUT, i);
        }
        for o in &self.outputs {
            e = e.bytes(graph_field::OUTPUT, o);
        }
        e.finish()
    }
}

/// One `metadata_props` entry.
pub fn metadata_entry(key: &str, value: &str) -> Vec<u8> {
    Encoder::new().string(1, key).string(2, value).finish()
}

/// One `opset_import` entry.
pub fn opset_entry(domain: &str, version: i64) -> Vec<u8> {
    Encoder::new().string(1, domain).int(2, version).finish()
}

/// A complete model written by retrain: IR 8, default-domain opset 13.
pub fn model(graph: &Graph, metadata: &[(String, String)]) -> Vec<u8> {
    let mut e = Encoder::new()
        .int(model_field::IR_VERSION, IR_VERSION)
        .string(model_field::PRODUCER_NAME, "retrain")
        .string(model_field::PRODUCER_VERSION, crate::version())
        .bytes(model_field::GRAPH, &graph.encode())
        .bytes(model_field::OPSET_IMPORT, &opset_entry("", OPSET));
    for (k, v) in metadata {
        e = e.bytes(model_field::METADATA_PROPS, &metadata_entry(k, v));
    }
    e.finish()
}

/// The `metadata_props` of a model, in file order.
pub fn read_metadata(model: &[u8]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for f in fields(model)?.iter().filter(|f| f.number == model_field::METADATA_PROPS) {
        let (mut key, mut value) = (String::new(), String::new());
        for kv in fields(f.bytes()?)? {
            match kv.number {
                1 => key = kv.string()?,
                2 => value = kv.string()?,
                _ => {}
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

/// The string fields numbered `number` of a message (e.g. a node's inputs).
pub fn strings(message: &[u8], number: u32) -> Result<Vec<String>> {
    fields(message)?.iter().filter(|f| f.number == number).map(|f| f.string()).collect()
}

/// The first string field numbered `number`, or "" (protobuf's default).
pub fn string(message: &[u8], number: u32) -> Result<String> {
    Ok(strings(message, number)?.into_iter().next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trip() {
        let g = Graph { name: "g".into(), ..Default::default() };
        let m = model(&g, &[("a".into(), "1".into()), ("b".into(), "two".into())]);
        assert_eq!(read_metadata(&m).unwrap(), vec![("a".into(), "1".into()), ("b".into(), "two".into())]);
    }
}
