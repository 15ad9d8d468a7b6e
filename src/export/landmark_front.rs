//! `export --landmarks MODEL`: the landmark model inside the exported graph, so that a model
//! whose heads were trained on face or nose crops works from plain photos in any runtime.
//!
//! The graph does what `retrain predict --landmarks` does ([`crate::locate`]): the landmark
//! model sees the whole image, then (for a model trained on another crop) its own crop placed
//! from that estimate; the heads' crop window is then placed from the landmarks, sliced out
//! of the pixels and resized for the backbone. The windows follow
//! [`crate::preprocess::face_window`] and `crop_window` op for op (the same float32 sums, the
//! same rounding of halves away from zero, the same shift into the image and shrink to it),
//! so a window is the one retrain's Rust crop would take from the same landmarks (where their
//! centre falls outside the image, which retrain's crop refuses, the graph still shifts the
//! window inside). The window is sliced out and resized alone, as PIL's crop then resize;
//! retrain's own resize also lets its kernel read the pixels just outside the window. With
//! [`Passes::mirror`] each pass runs the landmark model a second time on its input mirrored
//! (a Slice with step -1 over the width) and averages the two, as `Locator` does. One image
//! per run (windows differ per image): the pixel input is `[1, H, W, 3]`.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::pixels::{self, Front, PIXELS, PIXEL_OPSET};
use super::{default_opset, first_input, needed_tensors};
use crate::description::Description;
use crate::locate::{Passes, LANDMARKS_OUTPUT};
use crate::onnx::wire::{fields, Encoder};
use crate::onnx::{self, graph_field, model_field, node_field, Dim, UINT8};
use crate::preprocess::{Crop, InputSpec, Layout};

pub use crate::description::LocatedBy;

/// The landmark model to build in, and how it runs (as `predict --landmark-passes`).
pub struct Landmarks<'a> {
    /// The landmark model file (`retrain train` on multi-task artifacts).
    pub model: &'a Path,
    /// How many passes, and whether each is averaged with its mirror image.
    pub passes: Passes,
}

/// A graph being written: nodes and constants with names of their own under `prefix`.
struct Ops {
    prefix: String,
    nodes: Vec<Vec<u8>>,
    initializers: Vec<Vec<u8>>,
    count: usize,
}

impl Ops {
    fn fresh(&mut self, what: &str) -> String {
        self.count += 1;
        format!("{}/{what}_{}", self.prefix, self.count)
    }

    fn op(&mut self, op: &str, inputs: &[&str], attributes: &[Vec<u8>]) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.nodes.push(onnx::node(op, &out, inputs, &[&out], attributes));
        out
    }

    fn binary(&mut self, op: &str, a: &str, b: &str) -> String {
        self.op(op, &[a, b], &[])
    }

    fn float(&mut self, value: f32) -> String {
        let name = self.fresh("constant");
        self.initializers.push(onnx::tensor_f32(&name, &[1], &[value]));
        name
    }

    fn ints(&mut self, values: &[i64]) -> String {
        let name = self.fresh("constant");
        self.initializers.push(onnx::tensor_i64(&name, &[values.len() as i64], values));
        name
    }

    /// Element `index` of the rank-1 tensor `of`, as a [1] tensor.
    fn element(&mut self, of: &str, index: i64) -> String {
        let index = self.ints(&[index]);
        self.op("Gather", &[of, &index], &[onnx::int_attribute("axis", 0)])
    }

    /// `x.round()` for the non-negative values and clamped results here: floor(x + 0.5).
    fn round(&mut self, x: &str) -> String {
        let half = self.float(0.5);
        let shifted = self.binary("Add", x, &half);
        self.op("Floor", &[&shifted], &[])
    }
}

/// A crop window in the graph: [1] float tensors in image pixels.
struct Window {
    x: String,
    y: String,
    w: String,
    h: String,
}

/// The image's width and height as [1] float tensors.
fn extent(g: &mut Ops) -> (String, String) {
    let shape = g.op("Shape", &[PIXELS], &[]);
    let float = |g: &mut Ops, axis| {
        let v = g.element(&shape, axis);
        g.op("Cast", &[&v], &[onnx::int_attribute("to", onnx::FLOAT)])
    };
    (float(g, 2), float(g, 1))
}

/// The window `crop` keeps, placed from `landmarks` (pixels, [10]): as `preprocess::window`.
fn window(g: &mut Ops, crop: Crop, landmarks: &str, (w, h): (&str, &str)) -> Window {
    let point = |g: &mut Ops, j| g.element(landmarks, j);
    let (centre, size) = match crop {
        Crop::Original => {
            let zero = g.float(0.0);
            return Window { x: zero.clone(), y: zero, w: w.to_string(), h: h.to_string() };
        }
        Crop::Nose { size } => ((point(g, 2), point(g, 7)), g.float(size as f32)),
        Crop::Face { scale_percent } => {
            let p: Vec<String> = (0..10).map(|j| point(g, j)).collect();
            let five = g.float(5.0);
            let mean = |g: &mut Ops, v: &[String]| {
                let sum = v[1..].iter().fold(v[0].clone(), |acc, x| g.binary("Add", &acc, x));
                g.binary("Div", &sum, &five)
            };
            let centre = (mean(g, &p[..5]), mean(g, &p[5..]));
            let two = g.float(2.0);
            let midpoint = |g: &mut Ops, a: &str, b: &str| {
                let s = g.binary("Add", a, b);
                g.binary("Div", &s, &two)
            };
            let (ex, ey, mx, my) = (midpoint(g, &p[0], &p[1]), midpoint(g, &p[5], &p[6]), midpoint(g, &p[3], &p[4]), midpoint(g, &p[8], &p[9]));
            let square = |g: &mut Ops, a: &str, b: &str| {
                let d = g.binary("Sub", a, b);
                g.binary("Mul", &d, &d)
            };
            let (dx2, dy2) = (square(g, &mx, &ex), square(g, &my, &ey));
            let sum = g.binary("Add", &dx2, &dy2);
            let distance = g.op("Sqrt", &[&sum], &[]);
            // as `distance * scale_percent as f32 / 100.0`, left to right
            let (percent, hundred, one) = (g.float(scale_percent as f32), g.float(100.0), g.float(1.0));
            let scaled = g.binary("Mul", &distance, &percent);
            let scaled = g.binary("Div", &scaled, &hundred);
            let rounded = g.round(&scaled);
            (centre, g.binary("Max", &rounded, &one))
        }
    };
    let (x, w) = inside(g, &size, &centre.0, w);
    let (y, h) = inside(g, &size, &centre.1, h);
    Window { x, y, w, h }
}

/// One axis of `square_inside`: the start and length of a `size` span centred on `centre`,
/// shrunk to `extent` and shifted inside it.
fn inside(g: &mut Ops, size: &str, centre: &str, extent: &str) -> (String, String) {
    let len = g.binary("Min", size, extent);
    let two = g.float(2.0);
    let half = g.binary("Div", &len, &two);
    let start = g.binary("Sub", centre, &half);
    let start = g.round(&start);
    let zero = g.float(0.0);
    let room = g.binary("Sub", extent, &len);
    let start = g.binary("Max", &start, &zero);
    (g.binary("Min", &start, &room), len)
}

/// The pixels of `window`: Slice of the uint8 image, [1, h, w, 3].
fn slice(g: &mut Ops, window: &Window) -> String {
    let as_int = |g: &mut Ops, a: &str, b: &str| {
        let both = g.op("Concat", &[a, b], &[onnx::int_attribute("axis", 0)]);
        g.op("Cast", &[&both], &[onnx::int_attribute("to", onnx::INT64)])
    };
    let starts = as_int(g, &window.y, &window.x);
    let lengths = as_int(g, &window.h, &window.w);
    let ends = g.binary("Add", &starts, &lengths);
    let axes = g.ints(&[1, 2]);
    g.op("Slice", &[PIXELS, &starts, &ends, &axes], &[])
}

/// Fractions of `window` ([1, 10] from the landmark model) as image pixels, [10]: `Window::to_pixels`.
fn to_pixels(g: &mut Ops, fractions: &str, window: &Window) -> String {
    let repeat = |g: &mut Ops, a: &str, b: &str| {
        let five: Vec<&str> = std::iter::repeat_n(a, 5).chain(std::iter::repeat_n(b, 5)).collect();
        g.op("Concat", &five, &[onnx::int_attribute("axis", 0)])
    };
    let offset = repeat(g, &window.x, &window.y);
    let scale = repeat(g, &window.w, &window.h);
    let shape = g.ints(&[10]);
    let flat = g.op("Reshape", &[fractions, &shape], &[]);
    let scaled = g.binary("Mul", &flat, &scale);
    g.binary("Add", &offset, &scaled)
}

/// The landmark model, read and pruned to what its `landmarks` output needs.
struct LandmarkModel {
    nodes: Vec<Vec<u8>>,
    initializers: Vec<Vec<u8>>,
    weights: HashSet<String>,
    input: String,
    spec: InputSpec,
    crop: Crop,
    opset: i64,
    sha256: String,
}

const WEIGHTS: &str = "retrain/landmarks/weights";

impl LandmarkModel {
    fn read(path: &Path) -> Result<LandmarkModel> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read landmark model {}", path.display()))?;
        let top = fields(&bytes)?;
        let opset = default_opset(&top)?;
        if opset > PIXEL_OPSET {
            bail!("its default opset is {opset}: at most {PIXEL_OPSET} can be built into the exported graph");
        }
        let description = Description::of_file(path, &bytes)?;
        let spec = description.input_spec().context("its model description")?;
        let crop = description.crop.unwrap_or(Crop::Original);
        let input = match &description.input_name {
            Some(name) => name.clone(),
            None => first_input(&bytes)?,
        };
        let graph = top.iter().find(|f| f.number == model_field::GRAPH).context("the file has no graph")?;
        let parts = fields(graph.bytes()?)?;
        let needed = needed_tensors(&parts, LANDMARKS_OUTPUT)?.context("its graph has control flow (If, Loop, Scan), which cannot be built in")?;
        let (mut nodes, mut initializers, mut weights) = (Vec::new(), Vec::new(), HashSet::new());
        for f in &parts {
            let names = |n| onnx::strings(f.bytes()?, n);
            match f.number {
                graph_field::NODE if names(node_field::OUTPUT)?.iter().any(|o| needed.contains(o)) => nodes.push(f.bytes()?.to_vec()),
                graph_field::INITIALIZER if names(onnx::TENSOR_NAME)?.iter().any(|o| needed.contains(o)) => {
                    weights.extend(names(onnx::TENSOR_NAME)?);
                    initializers.push(renamed_tensor(f.bytes()?, |n| format!("{WEIGHTS}/{n}"))?);
                }
                _ => {}
            }
        }
        if !nodes.iter().any(|n| onnx::strings(n, node_field::OUTPUT).is_ok_and(|o| o.iter().any(|o| o == LANDMARKS_OUTPUT))) {
            bail!("it has no output '{LANDMARKS_OUTPUT}' (x1..x5, y1..y5 as fractions of its input)");
        }
        let sha256 = hex::encode(Sha256::digest(&bytes)); // as model::file_sha256, without reading the file twice
        Ok(LandmarkModel { nodes, initializers, weights, input, spec, crop, opset, sha256 })
    }

    /// One pass over the pixels `source` (uint8 [1, h, w, 3]): the landmarks as fractions of
    /// it, [1, 10]; with `mirror`, averaged with those of the mirrored input as `Locator::estimate`.
    fn pass(&self, g: &mut Ops, source: &str, pass: usize, mirror: bool) -> Result<String> {
        let prefix = format!("retrain/landmarks/pass{pass}");
        let input = format!("{prefix}/input");
        let (nodes, constants) = pixels::prepare(&self.spec, source, &input, &format!("{prefix}/pixels"))?;
        g.nodes.extend(nodes);
        g.initializers.extend(constants);
        let found = self.render(g, &input, &prefix)?;
        if !mirror {
            return Ok(found);
        }
        let width_axis = match self.spec.layout {
            Layout::Nhwc => 2,
            Layout::Nchw => 3,
        };
        let (start, end, axis, step) = (g.ints(&[-1]), g.ints(&[i64::MIN]), g.ints(&[width_axis]), g.ints(&[-1]));
        let mirrored = g.op("Slice", &[&input, &start, &end, &axis, &step], &[]);
        let back = self.render(g, &mirrored, &format!("{prefix}/mirrored"))?;
        let back = mirror_landmarks(g, &back);
        let sum = g.binary("Add", &found, &back);
        let half = g.float(0.5);
        Ok(g.binary("Mul", &sum, &half))
    }

    /// The model's nodes on `input` (under `prefix`, sharing the weights): its landmarks output.
    fn render(&self, g: &mut Ops, input: &str, prefix: &str) -> Result<String> {
        let rename = |name: &str| match name {
            "" => String::new(),
            n if n == self.input => input.to_string(),
            n if self.weights.contains(n) => format!("{WEIGHTS}/{n}"),
            n => format!("{prefix}/{n}"),
        };
        for node in &self.nodes {
            let (node, constant) = pixels::at_opset_18(&renamed_node(node, &rename, prefix)?, self.opset)?;
            g.nodes.push(node);
            g.initializers.extend(constant);
        }
        Ok(rename(LANDMARKS_OUTPUT))
    }
}

/// `augment::mirror_landmarks` on [1, 10] fractions: x -> 1 - x (as -x + 1, the same float),
/// then the left and right eyes and mouth corners swapped.
fn mirror_landmarks(g: &mut Ops, points: &str) -> String {
    let sign = g.fresh("constant");
    g.initializers.push(onnx::tensor_f32(&sign, &[10], &[-1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0]));
    let offset = g.fresh("constant");
    g.initializers.push(onnx::tensor_f32(&offset, &[10], &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]));
    let negated = g.binary("Mul", points, &sign);
    let moved = g.binary("Add", &negated, &offset);
    let order = g.ints(&[1, 0, 2, 4, 3, 6, 5, 7, 9, 8]);
    g.op("Gather", &[&moved, &order], &[onnx::int_attribute("axis", 1)])
}

/// `node` with every input and output name passed through `rename` and its name under `prefix`.
fn renamed_node(node: &[u8], rename: &impl Fn(&str) -> String, prefix: &str) -> Result<Vec<u8>> {
    let mut e = Encoder::new();
    for f in fields(node)? {
        e = match f.number {
            node_field::INPUT | node_field::OUTPUT => e.string(f.number, &rename(&f.string()?)),
            node_field::NAME => e.string(f.number, &format!("{prefix}/{}", f.string()?)),
            _ => e.raw(f.raw),
        };
    }
    Ok(e.finish())
}

/// TensorProto field `external_data`: weights in another file.
const EXTERNAL_DATA: u32 = 13;

fn renamed_tensor(tensor: &[u8], rename: impl Fn(&str) -> String) -> Result<Vec<u8>> {
    let mut e = Encoder::new();
    for f in fields(tensor)? {
        e = match f.number {
            onnx::TENSOR_NAME => e.string(f.number, &rename(&f.string()?)),
            EXTERNAL_DATA => bail!("weight '{}' is stored in an external file: save the landmark model in one file", onnx::string(tensor, onnx::TENSOR_NAME)?),
            _ => e.raw(f.raw),
        };
    }
    Ok(e.finish())
}

/// The front of an exported model that locates its own crop: pixels -> landmark passes ->
/// the heads' `crop` window -> the backbone input `target` (resized and scaled by `spec`);
/// also outputs the landmarks. Returns what the model's metadata records of it.
pub fn front(landmarks: &Landmarks, crop: Crop, spec: &InputSpec, target: &str) -> Result<(Front, LocatedBy)> {
    let label = || format!("landmark model {}", landmarks.model.display());
    let model = LandmarkModel::read(landmarks.model).with_context(label)?;
    let mut g = Ops { prefix: "retrain/locate".into(), nodes: Vec::new(), initializers: model.initializers.clone(), count: 0 };
    let extent = extent(&mut g);
    let (w, h) = (extent.0.as_str(), extent.1.as_str());
    let mut window = Window { x: g.float(0.0), y: g.float(0.0), w: w.to_string(), h: h.to_string() };
    let mut found = String::new();
    // passes after the first only for a model trained on another crop than the whole image
    let passes = if model.crop == Crop::Original { 1 } else { landmarks.passes.count.max(1) };
    for pass in 0..passes {
        let source = match pass {
            0 => PIXELS.to_string(),
            _ => {
                window = self::window(&mut g, model.crop, &found, (w, h));
                slice(&mut g, &window)
            }
        };
        let fractions = model.pass(&mut g, &source, pass + 1, landmarks.passes.mirror).with_context(label)?;
        found = to_pixels(&mut g, &fractions, &window);
    }
    let heads_window = self::window(&mut g, crop, &found, (w, h));
    let source = if crop == Crop::Original { PIXELS.to_string() } else { slice(&mut g, &heads_window) };
    let (nodes, constants) = pixels::prepare(spec, &source, target, "retrain/pixels")?;
    g.nodes.extend(nodes);
    g.initializers.extend(constants);
    let shape = g.ints(&[1, 10]);
    g.nodes.push(onnx::node("Reshape", "retrain/locate/output", &[&found, &shape], &[LANDMARKS_OUTPUT], &[]));
    let input = onnx::typed_value_info(PIXELS, UINT8, &[Dim::Fixed(1), Dim::Named("height"), Dim::Named("width"), Dim::Fixed(3)]);
    let output = onnx::value_info(LANDMARKS_OUTPUT, &[Dim::Fixed(1), Dim::Fixed(10)]);
    let front = Front { nodes: g.nodes, initializers: g.initializers, input, replaces: target.to_string(), outputs: vec![output] };
    let located =
        LocatedBy { output: LANDMARKS_OUTPUT.to_string(), model_sha256: model.sha256, crop: model.crop.to_string(), passes, mirror: landmarks.passes.mirror };
    Ok((front, located))
}
