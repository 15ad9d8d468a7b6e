//! Images to model input, for every command: the samples of a list decoded, cropped, resized
//! and scaled in parallel into rows of one tensor ([`load_rows`]), with one record for an image
//! that cannot be used ([`Skipped`]) and one policy for it ([`Skips`]).
//!
//! `extract`, `predict` and the landmark pass of `predict --landmarks` stream batches through
//! [`Batches`]: decoding batch k+1 on a thread of its own overlaps inference on batch k, and a
//! bounded queue of two batches keeps memory flat however many images there are. `quantize`
//! loads its calibration batch with [`load_rows`] at once, and the training commands
//! ([`crate::train::decode`]) theirs, with their distortions as a stage on each decoded row.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Mutex;

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::dataset::{Sample, Skipped};
use crate::preprocess::{self, Preprocess, Window};

/// A batch of images made ready for the model.
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

impl<B> Decoded<B> {
    fn map<C>(self, f: impl FnOnce(B) -> C) -> Decoded<C> {
        Decoded { tensor: f(self.tensor), good: self.good, failures: self.failures, next_source: self.next_source }
    }
}

/// Loads `samples[i]` for each `i` of `chunk` with `pre` into one row each of a tensor in the
/// model's layout, in parallel on `pool`, and passes each row and its crop window to `stage`
/// (`stage(k, row, window)`, `k` the row's place in `chunk`): the tensor of the rows that
/// loaded, in order, with what `stage` made of each.
pub fn load_rows<T: Send>(
    pool: &rayon::ThreadPool,
    pre: &Preprocess,
    samples: &[Sample],
    chunk: &[usize],
    stage: impl Fn(usize, &mut [f32], Window) -> T + Sync,
) -> Decoded<(Vec<f32>, Vec<T>)> {
    let len = pre.input.image_len();
    let mut tensor = vec![0f32; chunk.len() * len];
    let results: Vec<Result<T>> = pool.install(|| {
        let slots = tensor.par_chunks_mut(len).zip(chunk.par_iter()).enumerate();
        slots.map(|(k, (row, &i))| pre.load_into(&samples[i], row).map(|window| stage(k, row, window))).collect()
    });
    keep_loaded(&mut tensor, len, &results);
    sort_out(samples, chunk, results).map(|made| (tensor, made))
}

/// Keeps the rows (of `len` values) whose result is `Ok`, moved to the front in order.
fn keep_loaded<T>(tensor: &mut Vec<f32>, len: usize, results: &[Result<T>]) {
    let mut kept = 0;
    for (slot, result) in results.iter().enumerate() {
        if result.is_ok() {
            if slot != kept {
                tensor.copy_within(slot * len..(slot + 1) * len, kept * len);
            }
            kept += 1;
        }
    }
    tensor.truncate(kept * len);
}

/// What loaded of `chunk` (in order, with its indices), and a [`Skipped`] for each other.
fn sort_out<T>(samples: &[Sample], chunk: &[usize], results: Vec<Result<T>>) -> Decoded<Vec<T>> {
    let mut loaded = Decoded { tensor: Vec::with_capacity(chunk.len()), good: Vec::with_capacity(chunk.len()), failures: Vec::new(), next_source: 0 };
    for (&i, result) in chunk.iter().zip(results) {
        match result {
            Ok(made) => {
                loaded.tensor.push(made);
                loaded.good.push(i);
            }
            Err(e) => loaded.failures.push(Skipped::image(&samples[i], i, format!("{e:#}"))),
        }
    }
    loaded.next_source = chunk.last().map_or(0, |&i| i + 1);
    loaded
}

/// How the images of a batch are made ready for the model.
pub trait Load: Sync {
    /// What a batch becomes.
    type Batch: Send;
    /// Loads `samples[i]` for each `i` of `chunk` in parallel on `pool`.
    fn load(&self, pool: &rayon::ThreadPool, samples: &[Sample], chunk: &[usize]) -> Decoded<Self::Batch>;
}

/// Cropped, resized and scaled into one tensor in the model's layout.
impl Load for Preprocess {
    type Batch = Vec<f32>;
    fn load(&self, pool: &rayon::ThreadPool, samples: &[Sample], chunk: &[usize]) -> Decoded<Vec<f32>> {
        load_rows(pool, self, samples, chunk, |_, _, _| ()).map(|(tensor, _)| tensor)
    }
}

/// As [`Preprocess`], with each loaded image's crop window (to map what a model locates in
/// its input back to the image).
pub struct WithWindows<'a>(pub &'a Preprocess);

impl Load for WithWindows<'_> {
    type Batch = (Vec<f32>, Vec<Window>);
    fn load(&self, pool: &rayon::ThreadPool, samples: &[Sample], chunk: &[usize]) -> Decoded<Self::Batch> {
        load_rows(pool, self.0, samples, chunk, |_, _, window| window)
    }
}

/// Decoded at full size and nothing more, for models that prepare pixels themselves.
pub struct WholeImages;

impl Load for WholeImages {
    type Batch = Vec<image::RgbImage>;
    fn load(&self, pool: &rayon::ThreadPool, samples: &[Sample], chunk: &[usize]) -> Decoded<Self::Batch> {
        let results = pool.install(|| chunk.par_iter().map(|&i| preprocess::decode_whole(&samples[i].path)).collect());
        sort_out(samples, chunk, results)
    }
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
            let batch = self.pre.load(&pool, self.samples, chunk);
            crate::fault::reached(crate::fault::Point::BatchDecoded);
            if tx.send(Ok(batch)).is_err() {
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

/// The one policy of every command for images that cannot be used: each is reported once
/// (`skipped NAME: reason`, above the progress bar), left out, and kept for the summary;
/// under `--strict` a batch with one stops the run instead, naming them.
pub struct Skips {
    strict: bool,
    reported: Mutex<Reported>,
}

/// What [`Skips`] has reported, in order, and (image, position) of each to find it again.
#[derive(Default)]
struct Reported {
    all: Vec<Skipped>,
    seen: HashSet<(PathBuf, Option<usize>)>,
}

impl Skips {
    pub fn new(strict: bool) -> Skips {
        Skips { strict, reported: Mutex::default() }
    }

    /// Reports those of `failures` not reported before (the training commands read an image
    /// every epoch) and returns them; under `--strict` an error naming every one.
    pub fn report(&self, failures: Vec<Skipped>, bar: &indicatif::ProgressBar) -> Result<Vec<Skipped>> {
        if self.strict && !failures.is_empty() {
            let named: Vec<String> = failures.iter().map(Skipped::to_string).collect();
            bail!("--strict: {}", named.join("; "));
        }
        let mut reported = self.reported.lock().expect("not poisoned");
        let new: Vec<Skipped> = failures.into_iter().filter(|f| reported.seen.insert((f.path.clone(), f.position))).collect();
        for f in &new {
            bar.suspend(|| eprintln!("skipped {f}"));
        }
        reported.all.extend(new.iter().cloned());
        Ok(new)
    }

    /// Every image reported so far, in the order reported.
    pub fn all(&self) -> Vec<Skipped> {
        self.reported.lock().expect("not poisoned").all.clone()
    }
}
