//! A backbone over images: batches decoded in parallel on a thread of their own, so that
//! decoding and resizing batch k+1 overlap inference on batch k. A bounded queue of two
//! batches keeps memory flat however many images there are. `extract` and `predict` both
//! run on it; the training commands decode through [`load_batch`] too.

use std::sync::mpsc::{sync_channel, SyncSender};

use anyhow::Result;
use rayon::prelude::*;

use crate::dataset::{Sample, Skipped};
use crate::preprocess::{self, Preprocess, Window};

/// How the images of a batch are made ready for the model.
pub trait Load: Sync {
    /// What a batch becomes.
    type Batch: Send;
    /// Loads `samples[i]` for each `i` of `chunk` in parallel on `pool`: the batch of those that
    /// loaded (in order), their indices, and a [`Skipped`] for each of the others.
    fn load(&self, pool: &rayon::ThreadPool, samples: &[Sample], chunk: &[usize]) -> (Self::Batch, Vec<usize>, Vec<Skipped>);
}

/// Cropped, resized and scaled into one tensor in the model's layout.
impl Load for Preprocess {
    type Batch = Vec<f32>;
    fn load(&self, pool: &rayon::ThreadPool, samples: &[Sample], chunk: &[usize]) -> (Vec<f32>, Vec<usize>, Vec<Skipped>) {
        load_batch(pool, self, samples, chunk)
    }
}

/// Decoded at full size and nothing more, for models that prepare pixels themselves.
pub struct WholeImages;

impl Load for WholeImages {
    type Batch = Vec<image::RgbImage>;
    fn load(&self, pool: &rayon::ThreadPool, samples: &[Sample], chunk: &[usize]) -> (Vec<image::RgbImage>, Vec<usize>, Vec<Skipped>) {
        let results: Vec<Result<image::RgbImage>> = pool.install(|| chunk.par_iter().map(|&i| preprocess::decode_whole(&samples[i].path)).collect());
        let (good, failures) = sort_out(samples, chunk, &results);
        (results.into_iter().filter_map(Result::ok).collect(), good, failures)
    }
}

/// A batch ready for the model.
pub struct Decoded<B = Vec<f32>> {
    /// The images that loaded, in list order, as the model takes them.
    pub tensor: B,
    /// Their indices in the sample list.
    pub good: Vec<usize>,
    /// One per image that did not load.
    pub failures: Vec<Skipped>,
    /// The list position after this batch (where a resumed run continues).
    pub next_source: usize,
}

/// The batches of `size` images of `todo` (indices into `samples`), in order.
pub struct Batches<'a, L: Load = Preprocess> {
    pub samples: &'a [Sample],
    /// How each image is made ready.
    pub pre: &'a L,
    pub todo: &'a [usize],
    pub size: usize,
    /// Threads decoding and resizing; `None` = every core.
    pub decode_threads: Option<usize>,
}

impl<L: Load> Batches<'_, L> {
    /// Calls `consume` on every batch in order while the next one is being decoded; stops at
    /// the first error of either side.
    pub fn for_each(&self, mut consume: impl FnMut(Decoded<L::Batch>) -> Result<()>) -> Result<()> {
        let (tx, rx) = sync_channel::<Result<Decoded<L::Batch>>>(2);
        std::thread::scope(|scope| {
            let producer = scope.spawn(|| self.produce(tx));
            // `rx` is dropped when this returns, and the producer then stops by itself.
            let consumed = rx.into_iter().try_for_each(|batch| consume(batch?));
            let produced = producer.join().map_err(|_| anyhow::anyhow!("image decoding thread panicked"))?;
            consumed.and(produced)
        })
    }

    fn produce(&self, tx: SyncSender<Result<Decoded<L::Batch>>>) -> Result<()> {
        let pool = decode_pool(self.decode_threads)?;
        for chunk in self.todo.chunks(self.size) {
            let (tensor, good, failures) = self.pre.load(&pool, self.samples, chunk);
            let next_source = chunk.last().map_or(0, |&i| i + 1);
            crate::fault::reached(crate::fault::Point::BatchDecoded);
            if tx.send(Ok(Decoded { tensor, good, failures, next_source })).is_err() {
                return Ok(()); // the consumer stopped (error or strict failure); it reports why
            }
        }
        Ok(())
    }
}

/// The threads that decode and resize images; `None` = every core.
pub fn decode_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        pool = pool.num_threads(n);
    }
    Ok(pool.thread_name(|i| format!("decode-{i}")).build()?)
}

/// Loads `samples[i]` for each `i` of `chunk` in parallel. Returns the input tensor of the
/// images that loaded (in order), their indices, and a [`Skipped`] for the others.
pub fn load_batch(pool: &rayon::ThreadPool, pre: &Preprocess, samples: &[Sample], chunk: &[usize]) -> (Vec<f32>, Vec<usize>, Vec<Skipped>) {
    let ((tensor, _), good, failures) = WithWindows(pre).load(pool, samples, chunk);
    (tensor, good, failures)
}

/// As [`Preprocess`], with each loaded image's crop window (to map what a model locates in
/// its input back to the image).
pub struct WithWindows<'a>(pub &'a Preprocess);

impl Load for WithWindows<'_> {
    type Batch = (Vec<f32>, Vec<Window>);
    fn load(&self, pool: &rayon::ThreadPool, samples: &[Sample], chunk: &[usize]) -> (Self::Batch, Vec<usize>, Vec<Skipped>) {
        let len = self.0.input.image_len();
        let mut tensor = vec![0f32; chunk.len() * len];
        let results: Vec<Result<Window>> =
            pool.install(|| tensor.par_chunks_mut(len).zip(chunk.par_iter()).map(|(slot, &i)| self.0.load_into(&samples[i], slot)).collect());
        let (good, failures) = sort_out(samples, chunk, &results);
        compact(&mut tensor, chunk, &good, len);
        ((tensor, results.into_iter().filter_map(Result::ok).collect()), good, failures)
    }
}

/// The indices of `chunk` whose image loaded, and a [`Skipped`] for each other.
fn sort_out<T>(samples: &[Sample], chunk: &[usize], results: &[Result<T>]) -> (Vec<usize>, Vec<Skipped>) {
    let mut good = Vec::with_capacity(chunk.len());
    let mut failures = Vec::new();
    for (&i, result) in chunk.iter().zip(results) {
        match result {
            Ok(_) => good.push(i),
            Err(e) => failures.push(Skipped::image(&samples[i], i, format!("{e:#}"))),
        }
    }
    (good, failures)
}

/// Moves the slots of good images to the front, in order, and drops the rest.
fn compact(tensor: &mut Vec<f32>, chunk: &[usize], good: &[usize], len: usize) {
    if good.len() == chunk.len() {
        return;
    }
    let mut w = 0;
    for (slot, i) in chunk.iter().enumerate() {
        if good.contains(i) {
            tensor.copy_within(slot * len..(slot + 1) * len, w * len);
            w += 1;
        }
    }
    tensor.truncate(w * len);
}
