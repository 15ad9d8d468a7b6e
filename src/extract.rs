//! The extraction job: images -> preprocessing (parallel) -> ONNX Runtime -> HDF5 cache.
//!
//! Decoding and preprocessing of batch k+1 overlap inference on batch k ([`crate::stream`]);
//! memory stays flat however many images there are. Each batch is committed to
//! the cache as it finishes, so a killed job resumes at the first uncommitted batch, and since
//! batches are formed from the image list the same way every time, a resumed run produces the
//! same rows as an uninterrupted one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::cache::{CacheWriter, Identity, Rows, Shard};
use crate::dataset::{Dataset, Skipped};
use crate::model::Model;
use crate::preprocess::{Crop, Preprocess};
use crate::progress;
use crate::stream::{Batches, Decoded, Skips};

/// What to extract and how.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Which part of each image the backbone sees.
    pub crop: Crop,
    /// Images per inference call.
    pub batch: usize,
    /// Output file; `None` = a name under `cache_dir` derived from model, output and preprocessing.
    pub out: Option<PathBuf>,
    /// Folder for the default output name.
    pub cache_dir: PathBuf,
    /// Only the first `limit` images of the list.
    pub limit: Option<usize>,
    /// Only the images of this shard (list position mod count).
    pub shard: Shard,
    /// Make an unreadable image fatal instead of skipping it.
    pub strict: bool,
    /// Threads decoding and resizing images; `None` = every core.
    pub decode_threads: Option<usize>,
    /// Show a progress bar on standard error.
    pub show_progress: bool,
}

impl Default for ExtractOptions {
    /// The whole image, batches of 16, a default file name under `cache/`, every image,
    /// unreadable ones skipped, every core decoding, a progress bar.
    fn default() -> Self {
        ExtractOptions {
            crop: Crop::Original,
            batch: 16,
            out: None,
            cache_dir: PathBuf::from("cache"),
            limit: None,
            shard: Shard::WHOLE,
            strict: false,
            decode_threads: None,
            show_progress: true,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct ExtractSummary {
    /// The HDF5 file written.
    pub out: PathBuf,
    /// Rows in the file when the run started (resumed work).
    pub rows_before: usize,
    /// Rows in the file when the run ended.
    pub rows_after: usize,
    /// Images looked at in this run (written or skipped).
    pub processed: usize,
    /// Images (and list lines) skipped in this run.
    pub skipped: Vec<Skipped>,
    /// Wall time of the run.
    pub seconds: f64,
}

impl ExtractSummary {
    /// Images looked at per second of wall time.
    pub fn images_per_second(&self) -> f64 {
        self.processed as f64 / self.seconds.max(1e-9)
    }
}

/// [`extract`] over one MTFL list (`training.txt` or `testing.txt` under `root`).
pub fn extract_mtfl(root: &Path, split: crate::dataset::mtfl::Split, model: &mut Model, opts: &ExtractOptions) -> Result<ExtractSummary> {
    let dataset = crate::dataset::mtfl::load(root, split)?;
    extract(&dataset, model, opts).with_context(|| format!("extracting MTFL {} with crop {}", split.name(), opts.crop))
}

/// Runs the job over `dataset` with `model`: one row of `model`'s output per readable image,
/// committed to the HDF5 file batch by batch (a second run resumes or reuses it).
///
/// ```
/// use retrain::extract::{extract, ExtractOptions};
/// use retrain::{dataset::folders, model::Model, runtime::SessionConfig};
/// # let dir = tempfile::tempdir()?;
/// # let photos = retrain::examples::class_folders(&dir.path().join("photos"), 4)?;
///
/// let mut backbone = Model::load("onnx/test/tiny_cnn.onnx".as_ref(), &SessionConfig::cpu(), None)?;
/// let opts = ExtractOptions { out: Some(dir.path().join("photos.h5")), show_progress: false, ..Default::default() };
/// let done = extract(&folders::load(&photos)?, &mut backbone, &opts)?;
/// assert_eq!((done.rows_after, done.skipped.len()), (8, 0));
/// // the same call again finds every row there
/// assert_eq!(extract(&folders::load(&photos)?, &mut backbone, &opts)?.processed, 0);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn extract(dataset: &Dataset, model: &mut Model, opts: &ExtractOptions) -> Result<ExtractSummary> {
    if opts.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let preprocess = Preprocess { crop: opts.crop, input: model.input.clone() };
    let identity = Identity {
        model_sha256: model.sha256.clone(),
        output: model.output_name.clone(),
        preprocess: preprocess.describe(),
        source: dataset.source.clone(),
        label_columns: dataset.label_columns.clone(),
        class_names: dataset.class_names.clone(),
        column_class_names: dataset.column_class_names.clone(),
        shard: opts.shard,
    };
    if opts.strict && !dataset.problems.is_empty() {
        let problems: Vec<String> = dataset.problems.iter().map(Skipped::to_string).collect();
        bail!("--strict: the image list has unusable entries:\n  {}", problems.join("\n  "));
    }
    let out = opts.out.clone().unwrap_or_else(|| default_cache_path(&opts.cache_dir, dataset, &identity));
    let mut writer = CacheWriter::open_or_create(&out, &identity, model.output_dim)?;
    let total = opts.limit.map_or(dataset.samples.len(), |l| l.min(dataset.samples.len()));
    let mut skipped = record_listing_problems(dataset, &mut writer, total)?;
    let skips = Skips::new(opts.strict);
    let todo: Vec<usize> = (writer.next_source_index()..total).filter(|&i| opts.shard.contains(i)).collect();
    let rows_before = writer.rows();
    let started = Instant::now();
    let bar = progress::bar(todo.len() as u64, "images", opts.show_progress);
    bar.set_message(format!("extract {}", out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));

    let batches = Batches { samples: &dataset.samples, pre: &preprocess, todo: &todo, size: opts.batch, decode_threads: opts.decode_threads };
    let ran = batches.for_each(|b| consume(dataset, model, &mut writer, b, &bar, &skips, total));
    bar.finish_and_clear();
    ran?;
    skipped.extend(skips.all());
    Ok(ExtractSummary { out, rows_before, rows_after: writer.rows(), processed: todo.len(), skipped, seconds: started.elapsed().as_secs_f64() })
}

/// Reports unusable lines of the image list; a new cache also records them in `/skipped`.
fn record_listing_problems(dataset: &Dataset, writer: &mut CacheWriter, total: usize) -> Result<Vec<Skipped>> {
    for p in &dataset.problems {
        eprintln!("skipped {p}");
    }
    let fresh = writer.rows() == 0 && writer.next_source_index() == 0 && writer.skipped_count() == 0;
    if !fresh || dataset.problems.is_empty() {
        return Ok(Vec::new());
    }
    writer.append(&Rows::NONE, &dataset.problems, 0, total)?;
    Ok(dataset.problems.clone())
}

/// Runs the model on one decoded batch and commits its rows (and skips) to the cache.
fn consume(
    dataset: &Dataset,
    model: &mut Model,
    writer: &mut CacheWriter,
    batch: Decoded,
    bar: &indicatif::ProgressBar,
    skips: &Skips,
    total: usize,
) -> Result<()> {
    let Decoded { tensor, mut good, mut failures, next_source } = batch;
    let n_seen = good.len() + failures.len();
    let mut features = if good.is_empty() { Vec::new() } else { model.run(tensor, good.len())? };
    drop_non_finite(dataset, model.output_dim, &mut features, &mut good, &mut failures);
    failures.sort_by_key(|f| f.position); // list order, as a merge of shards restores it
    let failures = skips.report(failures, bar).map_err(|e| anyhow!("{e} (nothing of this batch was written; earlier batches are kept)"))?;
    let rows = Rows {
        features: &features,
        paths: good.iter().map(|&i| dataset.samples[i].key.as_os_str()).collect(),
        labels: good.iter().map(|&i| dataset.samples[i].labels.as_slice()).collect(),
        landmarks: good.iter().map(|&i| dataset.samples[i].landmarks).collect(),
        source_index: good.iter().map(|&i| i as i64).collect(),
    };
    writer.append(&rows, &failures, next_source, total)?;
    bar.inc(n_seen as u64);
    crate::interrupt::check(|| {
        let done = format!("{} images of {total} done, {} rows committed to {}", writer.next_source_index(), writer.rows(), writer.path().display());
        (done, None)
    })
}

/// Rows whose features contain NaN or Inf are reported like unreadable images, never cached.
fn drop_non_finite(dataset: &Dataset, dim: usize, features: &mut Vec<f32>, good: &mut Vec<usize>, failures: &mut Vec<Skipped>) {
    if features.iter().all(|v| v.is_finite()) {
        return;
    }
    let mut kept_features = Vec::with_capacity(features.len());
    let mut kept = Vec::with_capacity(good.len());
    for (row, &i) in features.chunks_exact(dim).zip(good.iter()) {
        if row.iter().all(|v| v.is_finite()) {
            kept_features.extend_from_slice(row);
            kept.push(i);
        } else {
            failures.push(Skipped::image(&dataset.samples[i], i, "model output contains NaN or Inf".to_string()));
        }
    }
    *features = kept_features;
    *good = kept;
}

/// `cache/<source>-<model sha256 prefix>-<hash of output + preprocessing>[-shardIofN].h5`.
pub fn default_cache_path(dir: &Path, dataset: &Dataset, id: &Identity) -> PathBuf {
    let source: String = dataset
        .source
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("images")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    let kind = dataset.source.split(':').next().unwrap_or("images");
    let mut h = Sha256::new();
    h.update(id.output.as_bytes());
    h.update([0]);
    h.update(id.preprocess.as_bytes());
    let pp = hex::encode(h.finalize());
    let shard = if id.shard.count > 1 { format!("-shard{}of{}", id.shard.index, id.shard.count) } else { String::new() };
    let name = if source.starts_with(kind) { source } else { format!("{kind}-{source}") };
    dir.join(format!("{name}-{}-{}{shard}.h5", &id.model_sha256[..12], &pp[..8]))
}

/// Short human summary printed at the end of `retrain extract`.
pub fn report(s: &ExtractSummary) -> String {
    let mut text = format!(
        "wrote {} rows to {} ({} were already there); {} images in {:.1} s = {:.2} images/s",
        s.rows_after - s.rows_before,
        s.out.display(),
        s.rows_before,
        s.processed,
        s.seconds,
        s.images_per_second()
    );
    if !s.skipped.is_empty() {
        text.push_str(&format!("\nskipped {} images:", s.skipped.len()));
        for skipped in &s.skipped {
            text.push_str(&format!("\n  {skipped}"));
        }
    }
    text
}

/// Reads `--shard I/N`, or `auto` / `auto/N` from a cluster scheduler's environment:
/// Slurm job arrays (`SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT`)
/// or Kubernetes Indexed Jobs (`JOB_COMPLETION_INDEX`, with the count given as `auto/N`).
pub fn parse_shard(text: &str) -> Result<Shard> {
    parse_shard_with(text, |k| std::env::var(k).ok())
}

/// [`parse_shard`] with the environment given as a function (for tests).
pub fn parse_shard_with(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
    let (i, n) = text.split_once('/').unwrap_or((text, ""));
    let number = |what: &str, v: &str| -> Result<usize> { v.trim().parse().with_context(|| format!("--shard {text}: {what} '{v}' is not a number")) };
    let shard = if i == "auto" {
        let count = if n.is_empty() { env("SLURM_ARRAY_TASK_COUNT") } else { Some(n.to_string()) }
            .context("--shard auto: SLURM_ARRAY_TASK_COUNT is not set; give the count as auto/N")?;
        let index = match (env("SLURM_ARRAY_TASK_ID"), env("JOB_COMPLETION_INDEX")) {
            (Some(id), _) => number("SLURM_ARRAY_TASK_ID", &id)? - env("SLURM_ARRAY_TASK_MIN").map_or(Ok(0), |m| number("SLURM_ARRAY_TASK_MIN", &m))?,
            (None, Some(k)) => number("JOB_COMPLETION_INDEX", &k)?,
            (None, None) => bail!("--shard auto: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set"),
        };
        Shard { index, count: number("shard count", &count)? }
    } else {
        if n.is_empty() {
            bail!("--shard takes I/N (e.g. 0/4), auto or auto/N");
        }
        Shard { index: number("shard index", i)?, count: number("shard count", n)? }
    };
    if shard.count == 0 || shard.index >= shard.count {
        bail!("--shard {text}: need 0 <= index < count, got {}/{}", shard.index, shard.count);
    }
    Ok(shard)
}
