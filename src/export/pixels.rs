//! `export --pixel-input`: the model takes the decoded image itself (uint8 RGB, NHWC, any
//! height and width, a batch of equal sizes) and resizes and scales it with ONNX ops, so that
//! any runtime fed the decoded pixels gives `retrain predict`'s answer.
//!
//! The resize is ONNX Resize with `antialias` (opset 18): the PIL-style convolution with
//! half-pixel centres that fast_image_resize computes in `extract`. Its result is rounded and
//! clamped to 0..255, as extract's 8-bit pixels are, then scaled as the description says.
//! Only for crop `original`: the other crops are placed from landmarks, which the graph does
//! not have.

use anyhow::{bail, Context, Result};

use crate::onnx::wire::{fields, packed_varints, Encoder, Value};
use crate::onnx::{self, node_field, Dim, UINT8};
use crate::preprocess::{Filter, InputSpec, Layout};

/// The graph input of a pixel-input model.
pub const PIXELS: &str = "pixels";
/// The default-domain opset the front needs (Resize's `antialias` and `axes`).
pub const PIXEL_OPSET: i64 = 18;
/// What the input takes, recorded as metadata `retrain.pixel_input` (its presence marks the model).
pub const PIXEL_INPUT: &str = "uint8 RGB NHWC, any height and width; resize and scaling inside the graph";

/// The nodes that turn `pixels` into the backbone input `replaces`, their constants, and the
/// new graph input.
pub struct Front {
    pub nodes: Vec<Vec<u8>>,
    pub initializers: Vec<Vec<u8>>,
    pub input: Vec<u8>,
    /// The backbone's own input, now computed by the front.
    pub replaces: String,
    /// Graph outputs the front adds (the placed landmarks).
    pub outputs: Vec<Vec<u8>>,
}

fn name(part: &str) -> String {
    format!("retrain/pixels/{part}")
}

pub fn front(spec: &InputSpec, target: &str) -> Result<Front> {
    let (nodes, initializers) = prepare(spec, PIXELS, target, "retrain/pixels")?;
    let input = onnx::typed_value_info(PIXELS, UINT8, &[Dim::Named("N"), Dim::Named("height"), Dim::Named("width"), Dim::Fixed(3)]);
    Ok(Front { nodes, initializers, input, replaces: target.to_string(), outputs: Vec::new() })
}

/// Encoded graph parts (nodes, or initializers).
pub type Parts = Vec<Vec<u8>>;

/// The nodes (named `prefix/...`) that resize and scale the uint8 NHWC image `source` into the
/// network input `target`, and their constants.
pub fn prepare(spec: &InputSpec, source: &str, target: &str, prefix: &str) -> Result<(Parts, Parts)> {
    let mut resize = vec![onnx::int_attribute("antialias", 1), onnx::ints_attribute("axes", &[2, 3])];
    resize.push(onnx::string_attribute("coordinate_transformation_mode", "half_pixel"));
    match spec.resize {
        Filter::Bilinear => resize.push(onnx::string_attribute("mode", "linear")),
        // fast_image_resize's CatmullRom is the cubic of a = -0.5 (ONNX's default is -0.75).
        Filter::Bicubic => resize.extend([onnx::string_attribute("mode", "cubic"), onnx::float_attribute("cubic_coeff_a", -0.5)]),
        other => bail!("--pixel-input supports models resized bilinear or bicubic; this one asks for {other:?}"),
    }
    let scale: Vec<f32> = (0..3).map(|c| 1.0 / (255.0 * spec.std[c])).collect();
    let offset: Vec<f32> = (0..3).map(|c| -spec.mean[c] / spec.std[c]).collect();
    let n = |s: &str| format!("{prefix}/{s}");
    let scaled_nchw = if spec.layout == Layout::Nchw { target.to_string() } else { n("scaled") };
    let mut nodes = vec![
        onnx::node("Cast", &n("cast"), &[source], &[&n("float")], &[onnx::int_attribute("to", onnx::FLOAT)]),
        onnx::node("Transpose", &n("to_nchw"), &[&n("float")], &[&n("nchw")], &[onnx::ints_attribute("perm", &[0, 3, 1, 2])]),
        onnx::node("Resize", &n("resize"), &[&n("nchw"), "", "", &n("sizes")], &[&n("resized")], &resize),
        onnx::node("Round", &n("round"), &[&n("resized")], &[&n("rounded")], &[]),
        onnx::node("Clip", &n("clip"), &[&n("rounded"), &n("zero"), &n("max")], &[&n("clipped")], &[]),
        onnx::node("Mul", &n("mul"), &[&n("clipped"), &n("scale")], &[&n("multiplied")], &[]),
        onnx::node("Add", &n("add"), &[&n("multiplied"), &n("offset")], &[&scaled_nchw], &[]),
    ];
    if spec.layout == Layout::Nhwc {
        nodes.push(onnx::node("Transpose", &n("to_nhwc"), &[&scaled_nchw], &[target], &[onnx::ints_attribute("perm", &[0, 2, 3, 1])]));
    }
    let initializers = vec![
        onnx::tensor_i64(&n("sizes"), &[2], &[spec.height as i64, spec.width as i64]),
        onnx::tensor_f32(&n("zero"), &[], &[0.0]),
        onnx::tensor_f32(&n("max"), &[], &[255.0]),
        onnx::tensor_f32(&n("scale"), &[1, 3, 1, 1], &scale),
        onnx::tensor_f32(&n("offset"), &[1, 3, 1, 1], &offset),
    ];
    Ok((nodes, initializers))
}

/// Reductions whose `axes` moved from an attribute to an input at opset 18 (ReduceSum moved at 13).
const REDUCTIONS: [&str; 8] = ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"];

/// A backbone node rewritten to mean at opset 18 what it meant at `from` (>= 13): the node,
/// and an initializer it now needs. Ops whose meaning changed in other ways are refused.
pub fn at_opset_18(node: &[u8], from: i64) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    if from >= PIXEL_OPSET {
        return Ok((node.to_vec(), None));
    }
    let op = onnx::string(node, node_field::OP_TYPE)?;
    let domain = onnx::string(node, 7)?;
    let label = || format!("node '{}' ({op})", onnx::string(node, node_field::NAME).unwrap_or_default());
    if !(domain.is_empty() || domain == "ai.onnx") {
        return Ok((node.to_vec(), None));
    }
    let refused = (op == "RoiAlign" && from < 16) || ((op == "Split" || op == "ReduceSumSquare") && from < 18);
    if refused {
        bail!("{} changed meaning between opset {from} and {PIXEL_OPSET}: re-export the backbone at opset {PIXEL_OPSET} for --pixel-input", label());
    }
    if !REDUCTIONS.contains(&op.as_str()) {
        return Ok((node.to_vec(), None));
    }
    move_axes_to_input(node).with_context(label)
}

/// The `axes` attribute of a reduction as its second input (an int64 initializer).
fn move_axes_to_input(node: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let parts = fields(node)?;
    let is_axes = |f: &&crate::onnx::wire::Field| f.number == node_field::ATTRIBUTE && f.bytes().is_ok_and(|a| onnx::string(a, 1).is_ok_and(|n| n == "axes"));
    let Some(axes) = parts.iter().find(is_axes) else { return Ok((node.to_vec(), None)) };
    let mut values = Vec::new();
    for f in fields(axes.bytes()?)?.iter().filter(|f| f.number == 8) {
        match f.value {
            Value::Bytes(b) => values.extend(packed_varints(b)?.into_iter().map(|v| v as i64)),
            _ => values.push(f.varint()? as i64),
        }
    }
    let outputs = onnx::strings(node, node_field::OUTPUT)?;
    let axes_name = name(&format!("axes/{}", outputs.first().context("a reduction without output")?));
    // Repeated fields keep their order of appearance: appended, it is the second input.
    let mut e = Encoder::new();
    for f in parts.iter().filter(|f| !is_axes(f)) {
        e = e.raw(f.raw);
    }
    e = e.string(node_field::INPUT, &axes_name);
    Ok((e.finish(), Some(onnx::tensor_i64(&axes_name, &[values.len() as i64], &values))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reduction_gets_its_axes_as_an_input_and_a_changed_op_is_refused() {
        let attrs = [onnx::ints_attribute("axes", &[2, 3]), onnx::int_attribute("keepdims", 0)];
        let reduce = onnx::node("ReduceMean", "pool", &["x"], &["y"], &attrs);
        let (node, constant) = at_opset_18(&reduce, 13).unwrap();
        assert_eq!(onnx::strings(&node, node_field::INPUT).unwrap(), ["x", "retrain/pixels/axes/y"]);
        let names: Vec<String> =
            fields(&node).unwrap().iter().filter(|f| f.number == node_field::ATTRIBUTE).map(|f| onnx::string(f.bytes().unwrap(), 1).unwrap()).collect();
        assert_eq!(names, ["keepdims"]);
        assert_eq!(constant.unwrap(), onnx::tensor_i64("retrain/pixels/axes/y", &[2], &[2, 3]));
        assert_eq!(at_opset_18(&reduce, 18).unwrap(), (reduce.clone(), None), "already opset 18");

        let relu = onnx::node("Relu", "r", &["x"], &["y"], &[]);
        assert_eq!(at_opset_18(&relu, 13).unwrap(), (relu.clone(), None));
        let split = onnx::node("Split", "s", &["x"], &["a", "b"], &[]);
        let err = format!("{:#}", at_opset_18(&split, 13).unwrap_err());
        assert!(err.contains("node 's' (Split)") && err.contains("opset 13"), "{err}");
    }
}
