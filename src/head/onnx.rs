//! A head as a stand-alone ONNX graph: features -> Sub(mean) -> Mul(1/std) -> Gemm -> Softmax.
//!
//! Tensor names are prefixed with the attribute (`gender/weights`, ...) so that `export` can
//! put several heads into one graph as they are. The graph input is [`INPUT`]; the output is
//! `p_<attribute>` [N, classes]. The [`HeadInfo`] rides along as JSON in the metadata.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{Head, HeadInfo};
use crate::description::{Description, FileKind};
use crate::onnx::{self, int_attribute, node, tensor_f32, value_info, Dim, Graph};

/// The graph input of every head: the backbone's output, flattened to [N, features].
pub const INPUT: &str = "retrain/features";

/// `p_<attribute>`: the probabilities output.
pub fn output_name(attribute: &str) -> String {
    format!("p_{attribute}")
}

/// The head's ONNX file, in bytes.
pub fn encode(head: &Head) -> Result<Vec<u8>> {
    let info = &head.info;
    let a = &info.attribute;
    let (classes, dim) = (head.weights.nrows() as i64, head.weights.ncols() as i64);
    let name = |s: &str| format!("{a}/{s}");
    let weights: Vec<f32> = head.weights.iter().copied().collect();
    let graph = Graph {
        name: format!("retrain head {a}"),
        nodes: vec![
            node("Sub", &name("centre"), &[INPUT, &name("mean")], &[&name("centred")], &[]),
            node("Mul", &name("scale"), &[&name("centred"), &name("scale")], &[&name("standardized")], &[]),
            node("Gemm", &name("linear"), &[&name("standardized"), &name("weights"), &name("bias")], &[&name("logits")], &[int_attribute("transB", 1)]),
            node("Softmax", &name("softmax"), &[&name("logits")], &[&info.output], &[int_attribute("axis", 1)]),
        ],
        initializers: vec![
            tensor_f32(&name("mean"), &[dim], &head.standardizer.mean),
            tensor_f32(&name("scale"), &[dim], &head.standardizer.scale),
            tensor_f32(&name("weights"), &[classes, dim], &weights),
            tensor_f32(&name("bias"), &[classes], &head.bias),
        ],
        inputs: vec![value_info(INPUT, &[Dim::Named("N"), Dim::Fixed(dim)])],
        outputs: vec![value_info(&info.output, &[Dim::Named("N"), Dim::Fixed(classes)])],
    };
    let described = Description { kind: Some(FileKind::Head), head: Some(info.clone()), ..Description::default() };
    Ok(onnx::model(&graph, &described.to_metadata()))
}

/// A head file read back: its description and its bytes.
pub struct HeadFile {
    pub info: HeadInfo,
    pub bytes: Vec<u8>,
}

impl HeadFile {
    pub fn read(path: &Path) -> Result<HeadFile> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read head {}", path.display()))?;
        let info = info_of(&bytes).with_context(|| format!("{} is not a retrain head", path.display()))?;
        Ok(HeadFile { info, bytes })
    }
}

fn info_of(bytes: &[u8]) -> Result<HeadInfo> {
    let described = Description::from_metadata(&onnx::read_metadata(bytes)?)?;
    match described.and_then(|d| d.head) {
        Some(info) => Ok(info),
        None => bail!("its description has no head (made by `retrain train-head`?)"),
    }
}
