//! Gradient accumulation: one optimizer step over a batch that runs as several micro-batches.
//!
//! `accumulate_bM.onnx` adds each micro-batch's gradient (times its share of the batch's
//! weight) to running sums kept on the device, in two buffer sets that swap like the
//! [`Engine`]'s state; `update.onnx` then applies the optimizer to the summed gradient and
//! writes the next state into the engine's other set. The result equals the fused train step
//! on the whole batch (tests/train.rs checks it to float rounding).

use anyhow::{anyhow, bail, Context, Result};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use super::batches::{dropout_masks, Prepared};
use super::engine::{bind_batch, ort_err, run_for_scalars, scalar, split_pair, Batch, Engine, StepResult};
use crate::runtime::{self, SessionConfig};

pub struct Accumulator {
    pub micro: usize,
    accumulate: Session,
    accumulate_binding: IoBinding,
    update: Session,
    update_binding: IoBinding,
    /// Running gradient sums, one tensor per parameter, in manifest order; two sets that swap.
    sums: [Vec<Tensor<f32>>; 2],
    current: usize,
}

impl Accumulator {
    /// Loads `accumulate_b{micro}.onnx` and `update.onnx` of the engine's artifacts.
    pub fn new(engine: &Engine, micro: usize, config: &SessionConfig) -> Result<Accumulator> {
        let a = &engine.artifacts;
        if !a.manifest.micro_batches.contains(&micro) {
            bail!("the artifacts in {} have no micro-batch {micro} graph (they have {:?})", a.dir.display(), a.manifest.micro_batches);
        }
        let accumulate = runtime::session(&a.verified_file(&format!("accumulate_b{micro}"))?, config)?;
        a.check_accumulate(&accumulate, micro)?;
        let update = runtime::session(&a.verified_file("update")?, config)?;
        a.check_update(&update)?;
        let mut sums = [Vec::new(), Vec::new()];
        for p in a.params() {
            for set in sums.iter_mut() {
                set.push(Tensor::<f32>::new(engine.allocator(), p.shape.clone()).map_err(ort_err)?);
            }
        }
        Ok(Accumulator {
            micro,
            accumulate_binding: accumulate.create_binding().map_err(ort_err)?,
            accumulate,
            update_binding: update.create_binding().map_err(ort_err)?,
            update,
            sums,
            current: 0,
        })
    }

    /// One optimizer step over `batch`, cut into micro-batches (the last filled with weight-0
    /// copies of its first row), each with its own dropout masks.
    pub fn step_batch(&mut self, engine: &mut Engine, batch: &Prepared, lr: f32, seed: u64, step: u64) -> Result<StepResult> {
        let (micro, rows) = (self.micro, batch.weights.len());
        let (image_len, label_width, target_width) = (batch.images.len() / rows, batch.labels.len() / rows, batch.targets.len() / rows);
        let rows_of =
            |index: &[usize], values_per_row: usize| -> Vec<usize> { index.iter().flat_map(|&r| r * values_per_row..(r + 1) * values_per_row).collect() };
        let pieces: Vec<(Vec<usize>, Vec<Vec<f32>>)> = (0..rows.div_ceil(micro))
            .map(|k| {
                let index: Vec<usize> = (0..micro).map(|j| if k * micro + j < rows { k * micro + j } else { k * micro }).collect();
                (index, dropout_masks(&engine.artifacts.manifest, seed, step, k, micro))
            })
            .collect();
        let parts: Vec<Batch> = pieces
            .iter()
            .enumerate()
            .map(|(k, (index, masks))| Batch {
                images: index.iter().flat_map(|&r| batch.images[r * image_len..(r + 1) * image_len].iter().copied()).collect(),
                labels: rows_of(index, label_width).into_iter().map(|j| batch.labels[j]).collect(),
                targets: rows_of(index, target_width).into_iter().map(|j| batch.targets[j]).collect(),
                weights: index.iter().enumerate().map(|(j, &r)| if k * micro + j < rows { batch.weights[r] } else { 0.0 }).collect(),
                masks,
            })
            .collect();
        self.step(engine, &parts, lr, step)
    }

    /// One optimizer step over `micro_batches` (each of exactly `self.micro` rows). The loss
    /// returned is the batch's weighted mean; `correct` the weighted count.
    pub fn step(&mut self, engine: &mut Engine, micro_batches: &[Batch], lr: f32, step: u64) -> Result<StepResult> {
        let total: f32 = micro_batches.iter().map(|b| b.weights.iter().sum::<f32>()).sum();
        if total <= 0.0 {
            bail!("step {step}: the batch has no row of positive weight");
        }
        let mut result = StepResult { loss: 0.0, correct: 0.0 };
        for (k, batch) in micro_batches.iter().enumerate() {
            let share = batch.weights.iter().sum::<f32>() / total;
            let r = self.add(engine, batch, k == 0, share).with_context(|| format!("step {step}, micro-batch {}", k + 1))?;
            result.loss += share * r.loss;
            result.correct += r.correct;
        }
        self.apply(engine, lr, step).with_context(|| format!("step {step}: update"))?;
        Ok(result)
    }

    fn add(&mut self, engine: &mut Engine, batch: &Batch, first: bool, share: f32) -> Result<StepResult> {
        let (artifacts, host, state, _) = engine.parts();
        let names = artifacts.accumulation()?;
        let b = &mut self.accumulate_binding;
        bind_batch(b, artifacts, batch, self.micro)?;
        b.bind_input(&names.first, &Tensor::from_array((Vec::<usize>::new(), vec![first])).map_err(ort_err)?).map_err(ort_err)?;
        b.bind_input(&names.scale, &scalar(share)?).map_err(ort_err)?;
        let (read, write) = (self.current, 1 - self.current);
        let (sums_read, sums_write) = split_pair(&mut self.sums, read);
        // the manifest lists the parameters first, then the optimizer slots
        for (i, p) in artifacts.params().enumerate() {
            b.bind_input(&p.input, &state[i]).map_err(ort_err)?;
            b.bind_input(format!("{}{}", names.sum_prefix, p.input), &sums_read[i]).map_err(ort_err)?;
            b.bind_output(format!("{}{}", names.output_prefix, p.input), &mut sums_write[i]).map_err(ort_err)?;
        }
        let r = run_for_scalars(&mut self.accumulate, b, artifacts, host)?;
        self.current = write;
        Ok(r)
    }

    fn apply(&mut self, engine: &mut Engine, lr: f32, step: u64) -> Result<()> {
        let (artifacts, _, read, write) = engine.parts();
        let (m, prefix) = (&artifacts.manifest, &artifacts.accumulation()?.sum_prefix);
        let b = &mut self.update_binding;
        b.bind_input(&m.inputs.lr, &scalar(lr)?).map_err(ort_err)?;
        b.bind_input(&m.inputs.step, &scalar(step as f32)?).map_err(ort_err)?;
        for (i, entry) in m.state.iter().enumerate() {
            b.bind_input(&entry.input, &read[i]).map_err(ort_err)?;
            b.bind_output(&entry.output, &mut write[i]).map_err(ort_err)?;
        }
        for (sum, p) in self.sums[self.current].iter().zip(artifacts.params()) {
            b.bind_input(format!("{prefix}{}", p.input), sum).map_err(ort_err)?;
        }
        let outputs = self.update.run_binding(b).map_err(|e| anyhow!("{e}"))?;
        drop(outputs);
        engine.swap_state();
        Ok(())
    }
}
