//! Running an exported model (backbone + heads) on image files, in batches, with progress.
//!
//! Everything needed to prepare the pixels comes from the model's metadata: input size,
//! scaling and layout (as for any backbone) and the crop the heads were trained on. A model
//! exported with `--pixel-input` gets each whole decoded image and prepares it itself.

pub mod table;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::dataset::{mtfl, Sample, Skipped};
use crate::description::ExportedHead;
use crate::model::Model;
use crate::preprocess::{Crop, Preprocess};
use crate::stream::{Batches, Decoded, Skips, WholeImages};
use crate::{progress, runtime};
use table::{Attribute, PredictionTable};

/// How to run.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Overrides the crop recorded in the model.
    pub crop: Option<Crop>,
    /// Images per inference call.
    pub batch: usize,
    /// Threads decoding and resizing images; `None` = every core.
    pub decode_threads: Option<usize>,
    /// Show a progress bar on standard error.
    pub show_progress: bool,
}

impl Default for PredictOptions {
    /// The crop the model records, batches of 16, every core decoding, a progress bar.
    fn default() -> Self {
        PredictOptions { crop: None, batch: 16, decode_threads: None, show_progress: true }
    }
}

/// What a run produced.
pub struct PredictSummary {
    /// One row per image that was read.
    pub table: PredictionTable,
    /// Images that could not be read.
    pub skipped: Vec<Skipped>,
    /// The crop applied.
    pub crop: Crop,
    /// Wall time of the run.
    pub seconds: f64,
}

/// The heads of an exported model, from its metadata.
pub fn exported_heads(model: &Model) -> Result<Vec<ExportedHead>> {
    model
        .description
        .heads
        .clone()
        .with_context(|| format!("model {} lists no heads: it is a backbone, not a model made by `retrain export`", model.path.display()))
}

/// Images given on the command line, read by the exact names given; their names in the output
/// are as given (lossy where not UTF-8).
pub fn images_from_paths(paths: &[PathBuf]) -> Vec<Sample> {
    paths.iter().map(|p| Sample { path: p.clone(), key: p.clone().into_os_string(), labels: Vec::new(), landmarks: None }).collect()
}

/// A list file: an MTFL annotation file (path, landmarks, labels: the nose crop works), or one
/// image path per line, its bytes as they are (a name need not be UTF-8). Relative paths are
/// taken from the list's folder.
pub fn images_from_list(list: &Path) -> Result<Vec<Sample>> {
    let bytes = std::fs::read(list).with_context(|| format!("cannot read image list {}", list.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let root = list.parent().unwrap_or(Path::new("."));
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    if first.split_whitespace().count() == 15 {
        let parsed = mtfl::parse(&text, root);
        for p in &parsed.problems {
            eprintln!("skipped {}:{p}", list.display());
        }
        return Ok(parsed.samples);
    }
    Ok(bytes
        .split(|&b| b == b'\n')
        .map(trimmed)
        .filter(|l| !l.is_empty())
        .map(|l| Sample { path: root.join(OsStr::from_bytes(l)), key: OsStr::from_bytes(l).into(), labels: Vec::new(), landmarks: None })
        .collect())
}

/// A line without the white space around it: as `str::trim` has it where the line is UTF-8.
fn trimmed(line: &[u8]) -> &[u8] {
    std::str::from_utf8(line).map_or(line.trim_ascii(), |text| text.trim().as_bytes())
}

/// Runs the model over `samples`; unreadable images are skipped and reported.
///
/// ```
/// use retrain::predict::{images_from_paths, predict, PredictOptions};
/// use retrain::{model::Model, runtime::SessionConfig};
/// # let dir = tempfile::tempdir()?;
/// # let exported = retrain::examples::exported(dir.path())?;
/// # let photo = dir.path().join("photos/dark/dark1.png");
///
/// let mut model = Model::load(&exported, &SessionConfig::cpu(), None)?; // from `export`
/// let missing = dir.path().join("missing.jpg");
/// let done = predict(&mut model, &images_from_paths(&[photo, missing]), &PredictOptions::default())?;
/// assert_eq!(done.table.predicted_label(0, 0), "dark");
/// assert_eq!(done.skipped.len(), 1); // reported and skipped, not fatal
/// print!("{}", done.table.to_csv()); // path,class,p_class_dark,p_class_light
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn predict(model: &mut Model, samples: &[Sample], opts: &PredictOptions) -> Result<PredictSummary> {
    if opts.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let heads = exported_heads(model)?;
    let crop = opts.crop.or(model.description.crop).unwrap_or(Crop::Original);
    let located = model.description.located_by.clone();
    if located.is_some() && opts.crop.is_some() {
        bail!("model {} places its own crop (exported with --landmarks): --crop cannot be applied", model.path.display());
    }
    if model.pixel_input && located.is_none() && crop != Crop::Original {
        bail!("model {} prepares whole images itself (exported with --pixel-input): crop {crop} cannot be applied", model.path.display());
    }
    let landmarks_output = located.map(|l| l.output);
    let pre = Preprocess { crop, input: model.input.clone() };
    let mut table = PredictionTable::new(heads.iter().map(|h| Attribute { name: h.attribute.clone(), labels: h.labels.clone() }).collect());
    let skips = Skips::new(false);
    let started = Instant::now();
    let bar = progress::bar(samples.len() as u64, "images", opts.show_progress);
    bar.set_message("predict");
    let all: Vec<usize> = (0..samples.len()).collect();
    // Decoding the next batch overlaps this one's inference, as in extract.
    let report = |failures: Vec<Skipped>, done: usize| -> Result<()> {
        let seen = done + failures.len();
        skips.report(failures, &bar)?;
        bar.inc(seen as u64);
        Ok(())
    };
    if model.pixel_input {
        let batches = Batches { samples, pre: &WholeImages, todo: &all, size: opts.batch, decode_threads: opts.decode_threads };
        let mut placed = Vec::new();
        batches.for_each(|Decoded { tensor: images, good, failures, .. }| {
            report(failures, good.len())?;
            // One image per run: the images of a batch differ in size.
            for (image, &i) in images.into_iter().zip(&good) {
                let shape = [1, image.height() as usize, image.width() as usize, 3];
                let name = samples[i].name();
                let found = run_batch(model, &heads, landmarks_output.as_deref(), &shape, image.into_raw(), &[&name], &mut table)?;
                placed.extend(found.map(|l| (name.into_owned(), l)));
            }
            Ok(())
        })?;
        if landmarks_output.is_some() {
            let placed: std::collections::HashMap<String, [f32; 10]> = placed.into_iter().collect();
            table.add_landmarks(|key| placed.get(key).copied());
        }
    } else {
        let batches = Batches { samples, pre: &pre, todo: &all, size: opts.batch, decode_threads: opts.decode_threads };
        batches.for_each(|Decoded { tensor, good, failures, .. }| {
            report(failures, good.len())?;
            if good.is_empty() {
                return Ok(());
            }
            let names: Vec<_> = good.iter().map(|&i| samples[i].name()).collect();
            let keys: Vec<&str> = names.iter().map(|n| n.as_ref()).collect();
            run_batch(model, &heads, None, &pre.input.batch_shape(keys.len()), tensor, &keys, &mut table).map(|_| ())
        })?;
    }
    bar.finish_and_clear();
    Ok(PredictSummary { table, skipped: skips.all(), crop, seconds: started.elapsed().as_secs_f64() })
}

/// Runs one batch of prepared images (`shape`: the input's) and adds a row per image to
/// `table`. With `landmarks` (the output of a model that places its own crop, one image per
/// run), returns the image's landmarks.
fn run_batch<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
    model: &mut Model,
    heads: &[ExportedHead],
    landmarks: Option<&str>,
    shape: &[usize],
    tensor: Vec<T>,
    keys: &[&str],
    table: &mut PredictionTable,
) -> Result<Option<[f32; 10]>> {
    let n = keys.len();
    let outputs: Vec<String> = heads.iter().map(|h| h.output.clone()).chain(landmarks.map(str::to_string)).collect();
    let mut probs = runtime::run_f32(&mut model.session, &model.input_name, shape, tensor, &outputs)
        .with_context(|| format!("running {} on a batch of {n}", model.path.display()))?;
    let placed = match landmarks {
        Some(name) => {
            let (shape, values) = probs.pop().context("no landmarks output")?;
            let points: [f32; 10] =
                values.try_into().map_err(|_| anyhow::anyhow!("output {name} of {} has shape {shape:?}, expected [1, 10]", model.path.display()))?;
            Some(points)
        }
        None => None,
    };
    for ((shape, _), h) in probs.iter().zip(heads) {
        if shape[..] != [n, h.labels.len()] {
            bail!("output {} of {} has shape {shape:?}, expected [{n}, {}]", h.output, model.path.display(), h.labels.len());
        }
    }
    for (row, key) in keys.iter().enumerate() {
        let per_head: Vec<&[f32]> = probs.iter().zip(heads).map(|((_, p), h)| &p[row * h.labels.len()..(row + 1) * h.labels.len()]).collect();
        table.push(key, &per_head);
    }
    Ok(placed)
}
