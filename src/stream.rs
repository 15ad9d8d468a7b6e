//! A backbone over images: batches decoded in parallel on a thread of their own, so that
//! decoding and resizing batch k+1 overlap inference on batch k. A bounded queue of two
//! batches keeps memory flat however many images there are. `extract` and `predict` both
//! run on it; the training commands decode through [`load_batch`] too.

use std::sync::mpsc::{sync_channel, SyncSender};

use anyhow::Result;
use rayon::prelude::*;

use crate::cache::Skip;
use crate::dataset::Sample;
use crate::preprocess::Preprocess;

/// A batch ready for the model.
pub struct Decoded {
    /// The images that loaded, in list order, in the model's layout.
    pub tensor: Vec<f32>,
    /// Their indices in the sample list.
    pub good: Vec<usize>,
    /// One per image that did not load: `key<TAB>reason`.
    pub failures: Vec<Skip>,
    /// The list position after this batch (where a resumed run continues).
    pub next_source: usize,
}

/// The batches of `size` images of `todo` (indices into `samples`), in order.
pub struct Batches<'a> {
    pub samples: &'a [Sample],
    pub pre: &'a Preprocess,
    pub todo: &'a [usize],
    pub size: usize,
    /// Threads decoding and resizing; `None` = every core.
    pub decode_threads: Option<usize>,
}

impl Batches<'_> {
    /// Calls `consume` on every batch in order while the next one is being decoded; stops at
    /// the first error of either side.
    pub fn for_each(&self, mut consume: impl FnMut(Decoded) -> Result<()>) -> Result<()> {
        let (tx, rx) = sync_channel::<Result<Decoded>>(2);
        std::thread::scope(|scope| {
            let producer = scope.spawn(|| self.produce(tx));
            // `rx` is dropped when this returns, and the producer then stops by itself.
            let consumed = rx.into_iter().try_for_each(|batch| consume(batch?));
            let produced = producer.join().map_err(|_| anyhow::anyhow!("image decoding thread panicked"))?;
            consumed.and(produced)
        })
    }

    fn produce(&self, tx: SyncSender<Result<Decoded>>) -> Result<()> {
        let pool = decode_pool(self.decode_threads)?;
        for chunk in self.todo.chunks(self.size) {
            let (tensor, good, failures) = load_batch(&pool, self.pre, self.samples, chunk);
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
/// images that loaded (in order), their indices, and a [`Skip`] (`key<TAB>reason`) for the others.
pub fn load_batch(pool: &rayon::ThreadPool, pre: &Preprocess, samples: &[Sample], chunk: &[usize]) -> (Vec<f32>, Vec<usize>, Vec<Skip>) {
    let len = pre.input.image_len();
    let mut tensor = vec![0f32; chunk.len() * len];
    let results: Vec<Result<()>> =
        pool.install(|| tensor.par_chunks_mut(len).zip(chunk.par_iter()).map(|(slot, &i)| pre.load_into(&samples[i], slot)).collect());
    let mut good = Vec::with_capacity(chunk.len());
    let mut failures = Vec::new();
    for (&i, result) in chunk.iter().zip(results) {
        match result {
            Ok(()) => good.push(i),
            Err(e) => failures.push(Skip { source_index: i as i64, text: format!("{}\t{e:#}", samples[i].key) }),
        }
    }
    compact(&mut tensor, chunk, &good, len);
    (tensor, good, failures)
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
