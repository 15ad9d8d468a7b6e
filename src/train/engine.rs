//! The train-step and eval sessions with parameters and optimizer state kept on the device.
//!
//! State tensors live in two sets of buffers allocated by ONNX Runtime on the session's device
//! (CUDA memory with `--device cuda`). Each step binds set A to the `<name>` inputs and set B to
//! the `updated:<name>` outputs through an IoBinding, then swaps the roles: parameters never
//! travel to the host between steps. Only the batch goes in and two scalars (loss, correct)
//! come out. The eval graph reads the same buffers.

use anyhow::{anyhow, bail, Context, Result};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use super::artifacts::Artifacts;
use super::checkpoint::{Checkpoint, NamedTensor};
use crate::runtime::{self, Device, SessionConfig};

pub(crate) fn ort_err(e: ort::Error) -> anyhow::Error {
    anyhow!("{e}")
}

/// One training batch, already laid out for the graph.
pub struct Batch<'a> {
    pub images: Vec<f32>,
    /// \[rows\] or, for a multi-task graph, \[rows, class tasks\]
    pub labels: Vec<i64>,
    /// [rows, target width] for a landmark task; empty otherwise.
    pub targets: Vec<f32>,
    /// 1 for real rows, 0 for the padding of a short last batch.
    pub weights: Vec<f32>,
    pub masks: &'a [Vec<f32>],
}

/// What one step reports.
#[derive(Debug, Clone, Copy)]
pub struct StepResult {
    pub loss: f32,
    pub correct: f32,
}

pub struct Engine {
    pub artifacts: Artifacts,
    device: Device,
    /// The fused train step; absent when the caller steps through gradient accumulation.
    step: Option<(Session, IoBinding)>,
    eval_session: Session,
    eval_binding: IoBinding,
    allocator: Allocator,
    host: MemoryInfo<'static>,
    /// Two buffer sets, in manifest state order; `current` holds the latest values.
    buffers: [Vec<Tensor<f32>>; 2],
    current: usize,
}

impl Engine {
    /// Loads both graphs and checks them against the manifest; [`Engine::load`] then puts a
    /// checkpoint's tensors on the device.
    pub fn new(artifacts: Artifacts, config: &SessionConfig) -> Result<Engine> {
        Self::with_step(artifacts, config, true)
    }

    /// As [`Engine::new`]; without the fused train step when `fused_step` is false (its graph
    /// is not even loaded: [`super::accumulate::Accumulator`] steps instead).
    pub fn with_step(artifacts: Artifacts, config: &SessionConfig, fused_step: bool) -> Result<Engine> {
        let step_session = if fused_step {
            let session = runtime::session(&artifacts.verified_file("train_step")?, config)?;
            artifacts.check_train_step(&session)?;
            Some(session)
        } else {
            None
        };
        let eval_session = runtime::session(&artifacts.verified_file("eval")?, config)?;
        artifacts.check_eval(&eval_session)?;
        let allocator = match config.device {
            Device::Cpu => Allocator::default(),
            Device::Cuda(id) => {
                Allocator::new(&eval_session, MemoryInfo::new(AllocationDevice::CUDA, id, AllocatorType::Device, MemoryType::Default).map_err(ort_err)?)
                    .map_err(|e| anyhow!("cannot allocate on cuda:{id}: {e}"))?
            }
        };
        let host = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default).map_err(ort_err)?;
        let step = match step_session {
            Some(session) => {
                let binding = session.create_binding().map_err(ort_err)?;
                Some((session, binding))
            }
            None => None,
        };
        let eval_binding = eval_session.create_binding().map_err(ort_err)?;
        Ok(Engine { artifacts, device: config.device, step, eval_session, eval_binding, allocator, host, buffers: [Vec::new(), Vec::new()], current: 0 })
    }

    /// Replaces the device state by a checkpoint's tensors (shapes checked by the caller).
    pub fn load(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let mut sets = [Vec::new(), Vec::new()];
        for entry in &self.artifacts.manifest.state {
            let t = checkpoint.tensor(&entry.input).ok_or_else(|| anyhow!("checkpoint has no tensor '{}'", entry.input))?;
            sets[0].push(self.upload(&t.shape, &t.data).with_context(|| format!("uploading '{}'", entry.input))?);
            sets[1].push(Tensor::<f32>::new(&self.allocator, t.shape.clone()).map_err(ort_err)?);
        }
        self.buffers = sets;
        self.current = 0;
        Ok(())
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor<f32>> {
        let mut tensor = Tensor::<f32>::new(&self.allocator, shape.to_vec()).map_err(ort_err)?;
        match self.device {
            Device::Cpu => tensor.extract_tensor_mut().1.copy_from_slice(data),
            Device::Cuda(_) => Tensor::from_array((shape.to_vec(), data.to_vec())).map_err(ort_err)?.copy_into(&mut tensor).map_err(ort_err)?,
        }
        Ok(tensor)
    }

    fn download(&self, tensor: &Tensor<f32>) -> Result<Vec<f32>> {
        Ok(match self.device {
            Device::Cpu => tensor.extract_tensor().1.to_vec(),
            Device::Cuda(_) => tensor.to(AllocationDevice::CPU, 0).map_err(ort_err)?.extract_tensor().1.to_vec(),
        })
    }

    /// The current parameters and slots, copied to the host.
    pub fn snapshot(&self) -> Result<Vec<NamedTensor>> {
        let entries = &self.artifacts.manifest.state;
        entries
            .iter()
            .zip(&self.buffers[self.current])
            .map(|(e, t)| Ok(NamedTensor { name: e.input.clone(), shape: e.shape.clone(), data: self.download(t)? }))
            .collect()
    }

    /// One optimizer step on one batch of exactly the artifacts' batch size.
    pub fn step(&mut self, batch: &Batch, lr: f32, step: u64) -> Result<StepResult> {
        let m = &self.artifacts.manifest;
        let (session, b) = self.step.as_mut().ok_or_else(|| anyhow!("this engine was made without the fused train step"))?;
        bind_batch(b, &self.artifacts, batch, m.batch)?;
        b.bind_input(&m.inputs.lr, &scalar(lr)?).map_err(ort_err)?;
        b.bind_input(&m.inputs.step, &scalar(step as f32)?).map_err(ort_err)?;
        let (read, write) = (self.current, 1 - self.current);
        for (i, entry) in m.state.iter().enumerate() {
            b.bind_input(&entry.input, &self.buffers[read][i]).map_err(ort_err)?;
            b.bind_output(&entry.output, &mut self.buffers[write][i]).map_err(ort_err)?;
        }
        let result = run_for_scalars(session, b, &self.artifacts, &self.host).with_context(|| format!("train step {step}"))?;
        self.current = write;
        Ok(result)
    }

    /// The artifacts, the host memory info, the buffer set holding the latest state and the
    /// other one (to write the next into), borrowed together so that graphs outside the engine
    /// can bind them without copying the manifest.
    pub(crate) fn parts(&mut self) -> (&Artifacts, &MemoryInfo<'static>, &[Tensor<f32>], &mut [Tensor<f32>]) {
        let (read, write) = split_pair(&mut self.buffers, self.current);
        (&self.artifacts, &self.host, read, write)
    }

    /// After a graph wrote the next state into the other set, it becomes the latest.
    pub(crate) fn swap_state(&mut self) {
        self.current = 1 - self.current;
    }

    pub(crate) fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// Logits [n, classes] for `n` images, with the current parameters.
    pub fn logits(&mut self, images: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        let m = &self.artifacts.manifest;
        let shape = image_batch_shape(&self.artifacts, n, images.len() / n.max(1))?;
        let b = &mut self.eval_binding;
        b.bind_input(&m.image.input, &Tensor::from_array((shape, images)).map_err(ort_err)?).map_err(ort_err)?;
        for (entry, tensor) in m.state.iter().zip(&self.buffers[self.current]) {
            if entry.is_param() {
                b.bind_input(&entry.input, tensor).map_err(ort_err)?;
            }
        }
        b.bind_output_to_device(&m.outputs.logits, &self.host).map_err(ort_err)?;
        let outputs = self.eval_session.run_binding(&self.eval_binding).map_err(|e| anyhow!("eval graph: {e}"))?;
        let (_, v) = outputs[m.outputs.logits.as_str()].try_extract_tensor::<f32>().map_err(|e| anyhow!("logits: {e}"))?;
        if v.len() != n * m.classes {
            bail!("eval graph gave {} logits for {n} images of {} classes", v.len(), m.classes);
        }
        Ok(v.to_vec())
    }
}

/// Binds a batch of exactly `rows` rows: images, labels (and targets), weights and dropout masks.
pub(crate) fn bind_batch(b: &mut IoBinding, artifacts: &Artifacts, batch: &Batch, rows: usize) -> Result<()> {
    let m = &artifacts.manifest;
    let (label_shape, target_width) = (artifacts.label_shape(rows), artifacts.target_width());
    if batch.labels.len() != label_shape.iter().product::<usize>() || batch.weights.len() != rows || batch.targets.len() != rows * target_width {
        bail!(
            "a training batch must hold {rows} rows: labels {label_shape:?}, {rows} weights, {target_width} targets each (got {} labels, {} weights, {} targets)",
            batch.labels.len(),
            batch.weights.len(),
            batch.targets.len()
        );
    }
    let image_shape = image_batch_shape(artifacts, rows, batch.images.len() / rows)?;
    b.bind_input(&m.image.input, &Tensor::from_array((image_shape, batch.images.clone())).map_err(ort_err)?).map_err(ort_err)?;
    b.bind_input(&m.inputs.labels, &Tensor::from_array((label_shape, batch.labels.clone())).map_err(ort_err)?).map_err(ort_err)?;
    b.bind_input(&m.inputs.weights, &Tensor::from_array(([rows], batch.weights.clone())).map_err(ort_err)?).map_err(ort_err)?;
    if let Some(targets) = &m.inputs.targets {
        b.bind_input(targets, &Tensor::from_array(([rows, target_width], batch.targets.clone())).map_err(ort_err)?).map_err(ort_err)?;
    }
    for (mask, values) in m.dropout_masks.iter().zip(batch.masks) {
        let shape = super::artifacts::micro_shape(&mask.shape, rows);
        b.bind_input(&mask.input, &Tensor::from_array((shape, values.clone())).map_err(ort_err)?).map_err(ort_err)?;
    }
    Ok(())
}

/// Runs a bound graph whose state outputs are already bound; returns its `loss` and `correct`.
pub(crate) fn run_for_scalars(session: &mut Session, b: &mut IoBinding, artifacts: &Artifacts, host: &MemoryInfo<'static>) -> Result<StepResult> {
    let m = &artifacts.manifest;
    b.bind_output_to_device(&m.outputs.loss, host).map_err(ort_err)?;
    b.bind_output_to_device(&m.outputs.correct, host).map_err(ort_err)?;
    let outputs = session.run_binding(b).map_err(ort_err)?;
    let read_scalar = |name: &str| -> Result<f32> {
        let (_, v) = outputs[name].try_extract_tensor::<f32>().map_err(|e| anyhow!("output '{name}': {e}"))?;
        v.first().copied().ok_or_else(|| anyhow!("output '{name}' is empty"))
    };
    Ok(StepResult { loss: read_scalar(&m.outputs.loss)?, correct: read_scalar(&m.outputs.correct)? })
}

/// (&sets[read], &mut sets[1 - read]): the latest buffer set and the one to write.
pub(crate) fn split_pair<T>(sets: &mut [Vec<T>; 2], read: usize) -> (&[T], &mut [T]) {
    let (a, b) = sets.split_at_mut(1);
    if read == 0 {
        (&a[0], &mut b[0])
    } else {
        (&b[0], &mut a[0])
    }
}

pub(crate) fn scalar(v: f32) -> Result<Tensor<f32>> {
    Tensor::from_array((Vec::<usize>::new(), vec![v])).map_err(ort_err)
}

/// [n, ...] with the image dimensions of the manifest's input description, or, for graphs
/// that take feature rows (a fine-tuning head), of the input's declared shape.
pub fn image_batch_shape(artifacts: &Artifacts, n: usize, image_len: usize) -> Result<Vec<usize>> {
    let m = &artifacts.manifest;
    let (expected, shape) = if m.description.describes_input() {
        let spec = m.description.input_spec().context("artifacts' model description")?;
        (spec.image_len(), spec.batch_shape(n).to_vec())
    } else {
        let rest: Option<Vec<usize>> = m.image.shape.iter().skip(1).copied().collect();
        let rest = rest
            .filter(|r| !r.is_empty())
            .ok_or_else(|| anyhow!("input '{}' has shape {:?}: not an image and not fixed rows", m.image.input, m.image.shape))?;
        (rest.iter().product(), std::iter::once(n).chain(rest).collect())
    };
    if expected != image_len {
        bail!("an input row has {image_len} values, '{}' takes {expected}", m.image.input);
    }
    Ok(shape)
}
