//! The model description: every `retrain.*` key that a backbone, a head or an exported model
//! carries, as one typed value.
//!
//! In an ONNX file each key is a metadata entry `retrain.KEY` whose value is text (nested
//! values such as the heads are JSON text); a backbone without such entries may have a
//! sidecar `MODEL.onnx.json`, a JSON object with the same keys without the prefix. This module
//! is the only place that spells a key: everything else reads and writes a [`Description`].
//! docs/formats.md lists the keys.
//!
//! ```
//! use retrain::description::Description;
//! use retrain::preprocess::{Crop, Layout};
//!
//! let entries = vec![
//!     ("retrain.layout".to_string(), "NHWC".to_string()),
//!     ("retrain.height".to_string(), "16".to_string()),
//!     ("retrain.width".to_string(), "16".to_string()),
//!     ("retrain.std".to_string(), "0.5".to_string()),
//!     ("retrain.crop".to_string(), "face:3.2".to_string()),
//!     ("producer".to_string(), "not ours".to_string()),
//! ];
//! let d = Description::from_metadata(&entries)?.expect("has retrain.* keys");
//! assert_eq!(d.layout, Some(Layout::Nhwc));
//! assert_eq!(d.crop, Some("face:3.2".parse::<Crop>()?));
//! assert_eq!(d.input_spec()?.std, [0.5; 3]);
//! // written back, the same entries (ours only, with the prefix)
//! assert_eq!(Description::from_metadata(&d.to_metadata())?, Some(d));
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::head::info::HeadInfo;
use crate::preprocess::{Crop, Filter, InputSpec, Layout};

/// The prefix of every metadata key retrain reads or writes.
pub const PREFIX: &str = "retrain.";

/// What kind of retrain file a model is (key `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Backbone and heads joined by `retrain export`.
    Model,
    /// One head of `retrain train-head` (or `finetune`).
    Head,
}

/// What `predict` needs to know of each head in an exported model (key `heads`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedHead {
    /// The attribute the head predicts.
    pub attribute: String,
    /// The graph output with this attribute's probabilities.
    pub output: String,
    /// Class names, in the order of the output's columns.
    pub labels: Vec<String>,
    /// The head as `train-head` described it.
    pub head: HeadInfo,
}

/// What an exported model records of the landmark model inside it (key `located_by`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocatedBy {
    /// The graph output with the placed landmarks: x1..x5, y1..y5 in the image's pixels, [1, 10].
    pub output: String,
    /// SHA-256 of the landmark model file.
    pub model_sha256: String,
    /// The crop the landmark model was trained on (its passes after the first see it).
    pub crop: String,
    /// Passes of the landmark model (the whole image, then its own crop).
    pub passes: usize,
    /// Each pass averaged with the mirrored input's estimate (false in files made before it existed).
    #[serde(default)]
    pub mirror: bool,
}

/// Every key of a description; absent keys are `None` (or empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Description {
    /// `kind`: what file this is (backbones have none).
    pub kind: Option<FileKind>,
    /// `input_name`: the image input [default: the graph's first input].
    pub input_name: Option<String>,
    /// `layout`, `height`, `width`, `mean`, `std`, `resize`, `color`: the input tensor; see
    /// [`Description::input_spec`].
    pub layout: Option<Layout>,
    /// Input height in pixels.
    pub height: Option<u32>,
    /// Input width in pixels.
    pub width: Option<u32>,
    /// Per-channel mean subtracted after scaling to 0..1.
    pub mean: Option<[f32; 3]>,
    /// Per-channel divisor after the mean.
    pub std: Option<[f32; 3]>,
    /// The resize filter.
    pub resize: Option<Filter>,
    /// Colour order; only RGB is taken.
    pub color: Option<String>,
    /// `bottleneck`: the output `extract` caches [default: the graph's first output].
    pub bottleneck: Option<String>,
    /// `crop`: the crop the model's heads (or a landmark model) were trained on.
    pub crop: Option<Crop>,
    /// `preprocess`: the whole preprocessing the heads were trained with.
    pub preprocess: Option<String>,
    /// `pixel_input`: the model takes decoded uint8 pixels and prepares them itself.
    pub pixel_input: Option<String>,
    /// `located_by`: the landmark model inside, which places the crop.
    pub located_by: Option<LocatedBy>,
    /// `heads`: the heads of an exported model.
    pub heads: Option<Vec<ExportedHead>>,
    /// `head`: what a head file is and how it was made.
    pub head: Option<HeadInfo>,
    /// `labels`: class names of the model's one classifier output, in column order.
    pub labels: Option<Vec<String>>,
    /// `labels:TASK`: the same for each task of a multi-task network.
    pub task_labels: BTreeMap<String, Vec<String>>,
    /// `attribute`: what the classifier predicts.
    pub attribute: Option<String>,
    /// `source`: where the weights came from.
    pub source: Option<String>,
    /// How the model was quantised to int8 (`retrain quantize`).
    pub quantized: Option<String>,
    /// SHA-256 of the backbone an exported model was made from.
    pub backbone_sha256: Option<String>,
    /// The retrain version that exported the model.
    pub exported_by: Option<String>,
    /// `converter`: the script that wrote the file (scripts/convert_inception.py, ...).
    pub converter: Option<String>,
    /// `tasks`: a multi-task network's tasks (name, kind, width, loss weight) as JSON text,
    /// written by scripts/scratch_nets.py for scripts/make_artifacts.py.
    pub tasks: Option<String>,
    /// Keys this version has no field for (another tool's, or a later retrain's), kept as
    /// they are so that a description passes through unchanged.
    pub other: BTreeMap<String, String>,
}

const TASK_LABELS: &str = "labels:";

/// Every key a [`Description`] has a field for (`labels:TASK` stands for one per task);
/// scripts/description.py lists the same ones.
pub const KEYS: [&str; 25] = [
    "kind",
    "input_name",
    "layout",
    "height",
    "width",
    "mean",
    "std",
    "resize",
    "color",
    "bottleneck",
    "crop",
    "preprocess",
    "pixel_input",
    "located_by",
    "heads",
    "head",
    "labels",
    "labels:TASK",
    "attribute",
    "source",
    "quantized",
    "backbone_sha256",
    "exported_by",
    "converter",
    "tasks",
];

impl Description {
    /// The description in ONNX metadata entries (other entries are ignored); `None` when no
    /// entry is a `retrain.*` key.
    pub fn from_metadata(entries: &[(String, String)]) -> Result<Option<Description>> {
        let keys: Vec<(String, String)> = entries.iter().filter_map(|(k, v)| Some((k.strip_prefix(PREFIX)?.to_string(), v.clone()))).collect();
        if keys.is_empty() {
            return Ok(None);
        }
        Description::from_keys(keys).map(Some)
    }

    /// The description in the sidecar `MODEL.onnx.json` beside `model`.
    pub fn from_sidecar(model: &Path) -> Result<Description> {
        let sidecar = sidecar_path(model);
        let text = std::fs::read_to_string(&sidecar).map_err(|_| {
            anyhow!(
                "model {} has no {PREFIX}* metadata and no sidecar {}: write one with layout, height, width, mean, std, resize (see docs/formats.md)",
                model.display(),
                sidecar.display()
            )
        })?;
        let json: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).with_context(|| format!("sidecar {} is not a JSON object", sidecar.display()))?;
        Description::from_keys(json.into_iter().map(as_text)).with_context(|| format!("sidecar {}", sidecar.display()))
    }

    /// The description of the ONNX file `path` whose bytes are `bytes`: its metadata, else its sidecar.
    pub fn of_file(path: &Path, bytes: &[u8]) -> Result<Description> {
        Description::of_model(path, &crate::onnx::read_metadata(bytes)?)
    }

    /// The description of the model file `path` whose metadata entries are `entries`: theirs,
    /// else the sidecar's.
    pub fn of_model(path: &Path, entries: &[(String, String)]) -> Result<Description> {
        match Description::from_metadata(entries).with_context(|| format!("model description of {}", path.display()))? {
            Some(d) => Ok(d),
            None => Description::from_sidecar(path),
        }
    }

    /// Reads keys (without the prefix) and their text values.
    pub fn from_keys(keys: impl IntoIterator<Item = (String, String)>) -> Result<Description> {
        let mut d = Description::default();
        for (key, value) in keys {
            d.set(&key, value).with_context(|| format!("key '{key}'"))?;
        }
        Ok(d)
    }

    fn set(&mut self, key: &str, v: String) -> Result<()> {
        match key {
            "kind" => self.kind = Some(parse_kind(&v)?),
            "input_name" => self.input_name = Some(v),
            "layout" => self.layout = Some(parse_layout(&v)?),
            "height" => self.height = Some(v.trim().parse().with_context(|| format!("'{v}' is not a positive integer"))?),
            "width" => self.width = Some(v.trim().parse().with_context(|| format!("'{v}' is not a positive integer"))?),
            "mean" => self.mean = Some(parse_triple(&v)?),
            "std" => self.std = Some(parse_triple(&v)?),
            "resize" => self.resize = Some(v.parse()?),
            "color" => self.color = Some(v),
            "bottleneck" => self.bottleneck = Some(v),
            "crop" => self.crop = Some(v.parse()?),
            "preprocess" => self.preprocess = Some(v),
            "pixel_input" => self.pixel_input = Some(v),
            "located_by" => self.located_by = Some(json(&v)?),
            "heads" => self.heads = Some(json(&v)?),
            "head" => self.head = Some(json(&v)?),
            "labels" => self.labels = Some(split_labels(&v)),
            "attribute" => self.attribute = Some(v),
            "source" => self.source = Some(v),
            "quantized" => self.quantized = Some(v),
            "backbone_sha256" => self.backbone_sha256 = Some(v),
            "exported_by" => self.exported_by = Some(v),
            "converter" => self.converter = Some(v),
            "tasks" => self.tasks = Some(v),
            _ => match key.strip_prefix(TASK_LABELS) {
                Some(task) => _ = self.task_labels.insert(task.to_string(), split_labels(&v)),
                None => _ = self.other.insert(key.to_string(), v),
            },
        }
        Ok(())
    }

    /// Every key (without the prefix) with its text value, sorted by key.
    pub fn to_keys(&self) -> BTreeMap<String, String> {
        let mut keys = self.other.clone();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                keys.insert(k.to_string(), v);
            }
        };
        put("kind", self.kind.map(|k| kind_name(k).to_string()));
        put("input_name", self.input_name.clone());
        put("layout", self.layout.map(|l| layout_name(l).to_string()));
        put("height", self.height.map(|h| h.to_string()));
        put("width", self.width.map(|w| w.to_string()));
        put("mean", self.mean.map(triple_text));
        put("std", self.std.map(triple_text));
        put("resize", self.resize.map(|f| f.name().to_string()));
        put("color", self.color.clone());
        put("bottleneck", self.bottleneck.clone());
        put("crop", self.crop.map(|c| c.to_string()));
        put("preprocess", self.preprocess.clone());
        put("pixel_input", self.pixel_input.clone());
        put("located_by", self.located_by.as_ref().map(to_json));
        put("heads", self.heads.as_ref().map(to_json));
        put("head", self.head.as_ref().map(to_json));
        put("labels", self.labels.as_ref().map(|l| l.join(",")));
        put("attribute", self.attribute.clone());
        put("source", self.source.clone());
        put("quantized", self.quantized.clone());
        put("backbone_sha256", self.backbone_sha256.clone());
        put("exported_by", self.exported_by.clone());
        put("converter", self.converter.clone());
        put("tasks", self.tasks.clone());
        for (task, labels) in &self.task_labels {
            keys.insert(format!("{TASK_LABELS}{task}"), labels.join(","));
        }
        keys
    }

    /// The ONNX metadata entries `retrain.KEY` = value, sorted by key.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        self.to_keys().into_iter().map(|(k, v)| (format!("{PREFIX}{k}"), v)).collect()
    }

    /// The input tensor the keys describe: `layout`, `height` and `width` are needed; `mean`
    /// (default 0) and `std` (default 1) are one number or three, value = (pixel / 255 - mean) / std;
    /// `resize` defaults to bilinear; `color` must be RGB where given.
    pub fn input_spec(&self) -> Result<InputSpec> {
        let need = |v: Option<u32>, k: &str| v.ok_or_else(|| anyhow!("missing key '{k}'"));
        if let Some(color) = self.color.as_ref().filter(|c| !c.eq_ignore_ascii_case("RGB")) {
            bail!("color '{color}' is not supported: only RGB inputs");
        }
        let spec = InputSpec {
            layout: self.layout.ok_or_else(|| anyhow!("missing key 'layout'"))?,
            height: need(self.height, "height")?,
            width: need(self.width, "width")?,
            mean: self.mean.unwrap_or([0.0; 3]),
            std: self.std.unwrap_or([1.0; 3]),
            resize: self.resize.unwrap_or(Filter::Bilinear),
        };
        if spec.std.contains(&0.0) {
            bail!("key 'std' contains 0");
        }
        Ok(spec)
    }

    /// Whether the keys describe an input tensor at all (feature-row graphs have none).
    pub fn describes_input(&self) -> bool {
        self.layout.is_some()
    }

    /// Sets the input keys to `spec`'s values.
    pub fn set_input(&mut self, spec: &InputSpec) {
        self.layout = Some(spec.layout);
        (self.height, self.width) = (Some(spec.height), Some(spec.width));
        (self.mean, self.std, self.resize) = (Some(spec.mean), Some(spec.std), Some(spec.resize));
    }

    /// The description without what names the model's own classifier (`labels`,
    /// `labels:TASK`, `attribute`): what an exported model keeps of its backbone's, whose
    /// classifier it drops.
    pub fn without_classifier(mut self) -> Description {
        self.labels = None;
        self.task_labels.clear();
        self.attribute = None;
        self
    }
}

/// As JSON, a description is the object of its keys and their text values (a sidecar, the
/// `description` of a training manifest); numbers and lists are taken as their JSON text.
impl Serialize for Description {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_keys().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Description {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let keys = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
        Description::from_keys(keys.into_iter().map(as_text)).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// A JSON value as the text a metadata entry would hold.
fn as_text((key, value): (String, serde_json::Value)) -> (String, String) {
    match value {
        serde_json::Value::String(s) => (key, s),
        other => (key, other.to_string()),
    }
}

/// `MODEL.onnx.json`, the sidecar of `model`.
pub fn sidecar_path(model: &Path) -> PathBuf {
    let mut s = model.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn parse_kind(v: &str) -> Result<FileKind> {
    match v {
        "model" => Ok(FileKind::Model),
        "head" => Ok(FileKind::Head),
        other => bail!("kind '{other}' is neither model nor head"),
    }
}

fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::Model => "model",
        FileKind::Head => "head",
    }
}

fn parse_layout(v: &str) -> Result<Layout> {
    match v.to_ascii_uppercase().as_str() {
        "NHWC" => Ok(Layout::Nhwc),
        "NCHW" => Ok(Layout::Nchw),
        other => bail!("layout '{other}' is neither NHWC nor NCHW"),
    }
}

fn layout_name(l: Layout) -> &'static str {
    match l {
        Layout::Nhwc => "NHWC",
        Layout::Nchw => "NCHW",
    }
}

/// One number for all three channels, or three (a sidecar may give them as a JSON list).
fn parse_triple(text: &str) -> Result<[f32; 3]> {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    let v: Vec<f32> = inner.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>().with_context(|| format!("'{text}' is not a list of numbers"))?;
    match v.as_slice() {
        [a] => Ok([*a; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => bail!("'{text}' needs 1 or 3 numbers"),
    }
}

fn triple_text(t: [f32; 3]) -> String {
    if t[0] == t[1] && t[1] == t[2] {
        t[0].to_string()
    } else {
        t.map(|x| x.to_string()).join(",")
    }
}

fn split_labels(v: &str) -> Vec<String> {
    v.split(',').map(str::to_string).collect()
}

fn json<T: DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).context("is not the JSON retrain writes there")
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("description values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_key_round_trips() {
        let d = Description::from_keys(keys(&[
            ("kind", "model"),
            ("layout", "nchw"),
            ("height", "299"),
            ("width", "299"),
            ("mean", "0.5,0.25,0.125"),
            ("std", "[0.5]"),
            ("resize", "bicubic"),
            ("crop", "nose:150"),
            ("labels", "female,male"),
            ("labels:pose", "left,front,right"),
            ("tasks", "[{\"name\":\"pose\"}]"),
            ("located_by", r#"{"output":"landmarks","model_sha256":"ab","crop":"face:3.9","passes":2}"#),
        ]))
        .unwrap();
        assert_eq!(d.layout, Some(Layout::Nchw));
        assert_eq!(d.mean, Some([0.5, 0.25, 0.125]));
        assert_eq!(d.std, Some([0.5; 3]));
        assert_eq!(d.task_labels["pose"], ["left", "front", "right"]);
        assert_eq!(d.tasks.as_deref(), Some("[{\"name\":\"pose\"}]"));
        assert!(!d.located_by.as_ref().unwrap().mirror);
        assert_eq!(Description::from_keys(d.to_keys()).unwrap(), d);
    }

    #[test]
    fn every_listed_key_has_its_field() {
        for key in KEYS {
            let key = key.replace("TASK", "pose");
            let value = match key.as_str() {
                "kind" => "head",
                "layout" => "NHWC",
                "height" | "width" | "mean" | "std" => "2",
                "resize" => "nearest",
                "crop" => "original",
                "located_by" => r#"{"output":"o","model_sha256":"s","crop":"original","passes":1}"#,
                "heads" => "[]",
                "head" => continue, // a whole HeadInfo; `retrain train-head` tests write and read it
                _ => "text",
            };
            let d = Description::from_keys([(key.clone(), value.to_string())]).unwrap();
            assert!(d.other.is_empty(), "{key} has no field");
            assert!(d.to_keys().contains_key(&key), "{key} is not written back");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        for (key, value, says) in [
            ("layout", "HWC", "neither NHWC nor NCHW"),
            ("height", "-3", "not a positive integer"),
            ("mean", "1,2", "needs 1 or 3 numbers"),
            ("crop", "ear", "ear"),
            ("heads", "{", "JSON"),
        ] {
            let e = format!("{:#}", Description::from_keys(keys(&[(key, value)])).unwrap_err());
            assert!(e.contains(&format!("key '{key}'")) && e.contains(says), "{e}");
        }
    }

    #[test]
    fn the_input_needs_layout_and_size_and_refuses_other_colours() {
        let missing = Description::from_keys(keys(&[("layout", "NHWC"), ("height", "8")])).unwrap();
        assert!(format!("{:#}", missing.input_spec().unwrap_err()).contains("missing key 'width'"));
        let grey = Description::from_keys(keys(&[("layout", "NHWC"), ("height", "8"), ("width", "8"), ("color", "L")])).unwrap();
        assert!(grey.input_spec().is_err());
    }

    #[test]
    fn an_exported_model_drops_the_backbones_classifier() {
        let d = Description::from_keys(keys(&[("labels", "Drawing,Neutral"), ("labels:t", "a,b"), ("attribute", "nsfw"), ("bottleneck", "pool")])).unwrap();
        let kept = d.without_classifier();
        assert_eq!((kept.labels, kept.task_labels.len(), kept.attribute), (None, 0, None));
        assert_eq!(kept.bottleneck.as_deref(), Some("pool"));
    }
}
