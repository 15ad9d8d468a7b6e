//! An ONNX backbone and its self-description: input spec, bottleneck output, file hash.
//!
//! The input layout, size and scaling come from the model, never from constants here: its
//! [`Description`] (ONNX metadata written by scripts/convert_inception.py, or else a sidecar
//! JSON `MODEL.onnx.json`).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ort::session::Session;
use sha2::{Digest, Sha256};

use crate::description::Description;
use crate::preprocess::InputSpec;
use crate::runtime::{self, SessionConfig};

/// A loaded backbone, ready to run.
pub struct Model {
    /// The ONNX file.
    pub path: PathBuf,
    /// Hex SHA-256 of the file: the model's identity in every cache.
    pub sha256: String,
    /// The ONNX Runtime session.
    pub session: Session,
    /// The image input's name.
    pub input_name: String,
    /// How images become its input tensor.
    pub input: InputSpec,
    /// The output that is cached (`--output`, else `bottleneck` from the description).
    pub output_name: String,
    /// Width of that output per image.
    pub output_dim: usize,
    /// Its description (`retrain.*` metadata or sidecar).
    pub description: Description,
    /// The model takes decoded uint8 images of any size and prepares them itself (`export
    /// --pixel-input`); `input` then describes the network inside.
    pub pixel_input: bool,
}

impl Model {
    /// Loads `path`, reads its description and checks that the input and output fit it.
    ///
    /// ```
    /// use retrain::model::Model;
    /// use retrain::preprocess::Layout;
    /// use retrain::runtime::SessionConfig;
    ///
    /// let model = Model::load("onnx/test/tiny_cnn.onnx".as_ref(), &SessionConfig::cpu(), None)?;
    /// assert_eq!((model.input.layout, model.input.height, model.input.width), (Layout::Nhwc, 32, 32));
    /// assert_eq!((model.output_name.as_str(), model.output_dim), ("bottleneck", 16));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn load(path: &Path, config: &SessionConfig, output: Option<&str>) -> Result<Model> {
        let sha256 = file_sha256(path)?;
        let session = runtime::session(path, config)?;
        let description = read_description(path, &session)?;
        let input = description.input_spec().with_context(|| format!("model description of {}", path.display()))?;
        let input_name = description.input_name.clone().unwrap_or_else(|| session.inputs()[0].name().to_string());
        let pixel_input = description.pixel_input.is_some();
        if !pixel_input {
            check_input(&session, &input_name, &input).with_context(|| format!("model {}", path.display()))?;
        }
        let output_name = output.or(description.bottleneck.as_deref()).map(str::to_string).unwrap_or_else(|| session.outputs()[0].name().to_string());
        let output_dim = output_width(&session, &output_name).with_context(|| format!("model {}", path.display()))?;
        Ok(Model { path: path.to_path_buf(), sha256, session, input_name, input, output_name, output_dim, description, pixel_input })
    }

    /// Runs one batch laid out as `input.batch_shape(n)` and returns `n * output_dim` floats.
    pub fn run(&mut self, batch: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        if self.pixel_input {
            bail!("model {} takes decoded images (exported with --pixel-input), not a backbone's input tensor: give extract the backbone", self.path.display());
        }
        let shape = self.input.batch_shape(n);
        let tensor = ort::value::Tensor::from_array((shape, batch)).map_err(|e| anyhow!("{e}"))?;
        let options =
            ort::session::RunOptions::new().map_err(|e| anyhow!("{e}"))?.with_outputs(ort::session::OutputSelector::no_default().with(&self.output_name));
        let outputs = self
            .session
            .run_with_options(ort::inputs![self.input_name.as_str() => tensor], &options)
            .map_err(|e| anyhow!("running {} on a batch of {n}: {e}", self.path.display()))?;
        let (out_shape, data) = outputs[self.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("output {} of {}: {e}", self.output_name, self.path.display()))?;
        if data.len() != n * self.output_dim {
            bail!("output {} has shape {:?}, expected [{n}, {}]", self.output_name, &**out_shape, self.output_dim);
        }
        Ok(data.to_vec())
    }
}

/// Hex SHA-256 of a file, the identity of a model in every cache.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("cannot open model {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The model's `retrain.*` metadata, else its sidecar `MODEL.onnx.json`; error if neither exists.
fn read_description(path: &Path, session: &Session) -> Result<Description> {
    let meta = session.metadata().map_err(|e| anyhow!("{e}"))?;
    let keys = meta.custom_keys().map_err(|e| anyhow!("{e}"))?;
    let entries: Vec<(String, String)> = keys.iter().filter_map(|k| Some((k.clone(), meta.custom(k)?))).collect();
    Description::of_model(path, &entries)
}

fn check_input(session: &Session, name: &str, spec: &InputSpec) -> Result<()> {
    let input = session.inputs().iter().find(|i| i.name() == name).ok_or_else(|| anyhow!("has no input '{name}' (inputs: {})", names(session.inputs())))?;
    let shape = input.dtype().tensor_shape().ok_or_else(|| anyhow!("input '{name}' is not a tensor"))?;
    let expected = spec.batch_shape(1);
    if shape.len() != 4 {
        bail!("input '{name}' has rank {} (shape {:?}); expected a 4-d image batch like {:?}", shape.len(), &**shape, expected);
    }
    for (axis, (&got, &want)) in shape.iter().zip(expected.iter()).enumerate().skip(1) {
        if got >= 0 && got as usize != want {
            bail!("input '{name}' has shape {:?}, but the description asks for {:?} (axis {axis})", &**shape, expected);
        }
    }
    Ok(())
}

fn output_width(session: &Session, name: &str) -> Result<usize> {
    let out = session.outputs().iter().find(|o| o.name() == name).ok_or_else(|| anyhow!("has no output '{name}' (outputs: {})", names(session.outputs())))?;
    let shape = out.dtype().tensor_shape().ok_or_else(|| anyhow!("output '{name}' is not a tensor"))?;
    let per_image: i64 = shape.iter().skip(1).product();
    if shape.is_empty() || per_image <= 0 {
        bail!("output '{name}' has shape {:?}: its per-image size must be static", &**shape);
    }
    Ok(per_image as usize)
}

fn names(outlets: &[ort::value::Outlet]) -> String {
    outlets.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
}
