//! The HDF5 bottleneck cache: one file per (images, model, output, preprocessing).
//!
//! Layout (readable by h5py):
//! - `/features` [N, D] float32, chunked and resizable along N
//! - `/paths` \[N\] UTF-8 strings, the data set's own names for the images (byte for byte: a name
//!   that is not UTF-8 is stored escaped and its row listed in `/paths_escaped`, see src/cache/names.rs)
//! - `/labels` [N, C] int32 (MTFL: gender, smile, glasses, pose in MTFL coding; -1 = unknown)
//! - `/landmarks` [N, 10] float32 (x1..x5, y1..y5; NaN where the data set has none)
//! - `/source_index` \[N\] int64, each row's position in the full image list, so shards of one
//!   extraction can be merged back into the single-machine order without changing the layout
//! - `/skipped` \[M\] strings, `path<TAB>reason` for images (or list lines) that could not be used,
//!   and `/skipped_index` \[M\] int64, their list positions (-1 for a line of the list itself);
//!   read back as [`Skipped`] records (a path that is not UTF-8 escaped as in `/paths`, listed
//!   in `/skipped_escaped`)
//!
//! Root attributes name what produced the rows (`model_sha256`, `output`, `preprocess`, `source`,
//! ...) and how far the extraction got. Rows are appended a batch at a time; a batch counts only
//! once the file has been flushed and `rows_committed` / `skipped_committed` say so, so a killed
//! run resumes from the last committed batch and rows past it are dropped. A lock file
//! `<cache>.lock` keeps a second process from writing the same cache. Every numeric dataset
//! carries HDF5's Fletcher-32 checksum per chunk (HDF5 refuses it on the variable-length
//! strings), so bytes changed on disk are an error when read, never wrong numbers; a resumed
//! run reads the committed rows back once to check them.

mod merge;
mod names;
mod read;
mod space;

pub use merge::{merge, merge_command};
pub use read::Cache;

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::dataset::Skipped;
use crate::fault::{self, Point};
use hdf5::types::VarLenUnicode;
use ndarray::{Array1, Array2, ArrayView2};

/// Bumped when the layout changes incompatibly (2: Fletcher-32 checksums on the numeric datasets).
pub const FORMAT_VERSION: i64 = 2;
const CHUNK_ROWS: usize = 64;
const STRING_CHUNK: usize = 1024;
/// Bytes assumed for a stored path or skip reason, and for HDF5's metadata changes in one
/// commit, when claiming disk space.
const MAX_TEXT_BYTES: usize = 512;
const METADATA_MARGIN: u64 = 64 << 10;

/// What produced a cache. Two runs may share a file only when all of these are equal.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub model_sha256: String,
    pub output: String,
    pub preprocess: String,
    pub source: String,
    pub label_columns: Vec<String>,
    pub class_names: Vec<String>,
    /// Label files: each label column's class names (stored as the `column_class_names`
    /// attribute, written only when not empty, so caches of the other layouts are unchanged).
    pub column_class_names: ColumnClassNames,
    pub shard: Shard,
}

/// Class names per label column, index = label code.
pub type ColumnClassNames = std::collections::BTreeMap<String, Vec<String>>;

/// Which part of the image list this file holds: `index` of `count` (0 of 1 = everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Deterministic: image `source_index` belongs to shard `source_index % count`.
    pub fn contains(&self, source_index: usize) -> bool {
        source_index % self.count == self.index
    }
}

/// One batch of finished rows.
pub struct Rows<'a> {
    pub features: &'a [f32],
    pub paths: Vec<&'a OsStr>,
    pub labels: Vec<&'a [i32]>,
    pub landmarks: Vec<Option<[f32; 10]>>,
    pub source_index: Vec<i64>,
}

impl Rows<'_> {
    pub const NONE: Rows<'static> = Rows { features: &[], paths: vec![], labels: vec![], landmarks: vec![], source_index: vec![] };
}

/// An open cache file being written. Holds `<file>.lock` so that no second process writes it.
pub struct CacheWriter {
    path: PathBuf,
    file: hdf5::File,
    _lock: File,
    dim: usize,
    label_width: usize,
    rows: usize,
    next_source: usize,
    skipped: usize,
}

/// The identity attributes, as stored.
const IDENTITY_KEYS: [&str; 4] = ["model_sha256", "output", "preprocess", "source"];
const ROW_DATASETS: [&str; 5] = ["features", "labels", "landmarks", "paths", "source_index"];
const SKIP_DATASETS: [&str; 2] = ["skipped", "skipped_index"];

impl CacheWriter {
    /// Opens `path` to continue it, or creates it. Refuses a file made by another model,
    /// output, preprocessing or image list, and says which of them differs.
    pub fn open_or_create(path: &Path, id: &Identity, dim: usize) -> Result<CacheWriter> {
        let lock = lock(path)?;
        if path.exists() {
            Self::resume(path, id, dim, lock)
        } else {
            Self::create(path, id, dim, lock)
        }
    }

    /// Creates a new file; refuses to replace an existing one.
    pub fn create_new(path: &Path, id: &Identity, dim: usize) -> Result<CacheWriter> {
        let lock = lock(path)?;
        if path.exists() {
            bail!("{} exists already; remove it or choose another output", path.display());
        }
        Self::create(path, id, dim, lock)
    }

    /// Writes the empty layout to `<path>.partial` and renames it into place (still open), so
    /// a failed creation (full disk) leaves no half-made cache behind.
    fn create(path: &Path, id: &Identity, dim: usize, lock: File) -> Result<CacheWriter> {
        let partial = PathBuf::from(format!("{}.partial", path.display()));
        let file = write_layout(&partial, id, dim).map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            crate::write_failed(e, &format!("cannot create cache {}", path.display()), "")
        })?;
        std::fs::rename(&partial, path).with_context(|| format!("cannot move {} to {}", partial.display(), path.display()))?;
        Ok(CacheWriter { path: path.to_path_buf(), file, _lock: lock, dim, label_width: id.label_columns.len(), rows: 0, next_source: 0, skipped: 0 })
    }

    fn resume(path: &Path, id: &Identity, dim: usize, lock: File) -> Result<CacheWriter> {
        let file = open_for_writing(path).map_err(|e| damaged(path, e.into()))?;
        check_identity(&file, id, dim)
            .with_context(|| format!("cache {} was built differently and is not reused; choose another --out or delete it", path.display()))?;
        let count = |key| read_i64_attr(&file, key).map(|v| v as usize);
        let (rows, next_source, skipped) = (count("rows_committed")?, count("next_source_index")?, count("skipped_committed")?);
        let writer = CacheWriter { path: path.to_path_buf(), file, _lock: lock, dim, label_width: id.label_columns.len(), rows, next_source, skipped };
        writer.verify_committed().map_err(|e| damaged(path, e))?;
        writer.truncate_uncommitted()?;
        Ok(writer)
    }

    /// Reads every committed row back (checking each chunk's checksum), so that a resumed
    /// run never builds on damaged data.
    fn verify_committed(&self) -> Result<()> {
        let (f, rows, skipped) = (&self.file, self.rows, self.skipped);
        read_rows_2d::<f32>(f, "features", rows)?;
        read_rows_2d::<i32>(f, "labels", rows)?;
        read_rows_2d::<f32>(f, "landmarks", rows)?;
        read_rows_1d::<i64>(f, "source_index", rows)?;
        read_rows_1d::<VarLenUnicode>(f, "paths", rows)?;
        read_rows_1d::<VarLenUnicode>(f, "skipped", skipped)?;
        read_rows_1d::<i64>(f, "skipped_index", skipped)?;
        names::escaped(f, "paths", rows)?;
        names::escaped(f, "skipped", skipped)?;
        Ok(())
    }

    /// Drops what a killed run wrote after its last commit.
    fn truncate_uncommitted(&self) -> Result<()> {
        let sets = ROW_DATASETS.iter().map(|n| (n, self.rows)).chain(SKIP_DATASETS.iter().map(|n| (n, self.skipped)));
        for (name, len) in sets {
            let ds = self.file.dataset(name)?;
            let mut shape = ds.shape();
            if shape[0] != len {
                shape[0] = len;
                ds.resize(shape)?;
            }
        }
        names::truncate(&self.file, "paths", self.rows)?;
        names::truncate(&self.file, "skipped", self.skipped)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows already committed.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// First image (index into the full list) not yet processed.
    pub fn next_source_index(&self) -> usize {
        self.next_source
    }

    pub fn skipped_count(&self) -> usize {
        self.skipped
    }

    /// Appends one batch plus what was skipped in it, then commits through `next_source`.
    pub fn append(&mut self, rows: &Rows, skipped: &[Skipped], next_source: usize, sources_total: usize) -> Result<()> {
        let n = rows.paths.len();
        if rows.features.len() != n * self.dim {
            bail!("batch of {n} rows has {} feature values, expected {} ({n} x {})", rows.features.len(), n * self.dim, self.dim);
        }
        let (end, skipped_end) = (self.rows + n, self.skipped + skipped.len());
        self.commit(rows, skipped, next_source, sources_total).map_err(|e| {
            let (path, start) = (self.path.display(), self.rows);
            crate::write_failed(e, &format!("cannot write rows {start}..{end} to cache {path}"), &format!("; the {start} rows committed before are kept"))
        })?;
        self.rows = end;
        self.skipped = skipped_end;
        self.next_source = next_source;
        Ok(())
    }

    fn commit(&self, rows: &Rows, skipped: &[Skipped], next_source: usize, sources_total: usize) -> Result<()> {
        let (start, end) = (self.rows, self.rows + rows.paths.len());
        space::claim(&self.path, self.bytes_needed(end - start, skipped.len()))?;
        if end > start {
            self.write_rows(rows, start, end)?;
        }
        if !skipped.is_empty() {
            let index: Vec<i64> = skipped.iter().map(|s| s.position.map_or(-1, |p| p as i64)).collect();
            self.extend_names("skipped", skipped.iter().map(stored_skip).collect(), self.skipped)?;
            self.extend("skipped_index", Array1::from(index), self.skipped)?;
        }
        fault::reached(Point::CacheDataWritten);
        // Data first, then the counters: a kill between the two flushes loses only this batch.
        self.file.flush()?;
        fault::reached(Point::CacheDataFlushed);
        let counters = [
            ("rows_committed", end),
            ("skipped_committed", self.skipped + skipped.len()),
            ("next_source_index", next_source),
            ("sources_total", sources_total),
        ];
        for (key, value) in counters {
            self.file.attr(key)?.write_scalar(&(value as i64))?;
        }
        self.file.flush()?;
        fault::reached(Point::CacheCommitted);
        Ok(())
    }

    /// An upper bound of the bytes a commit of `rows` rows and `skipped` skips adds to the
    /// file: the chunks it starts (a chunk is allocated whole when first written; rewriting
    /// one keeps its place, as checksummed chunks keep their size), the strings, and room for
    /// HDF5's own metadata.
    fn bytes_needed(&self, rows: usize, skipped: usize) -> u64 {
        let new_chunks = |done: usize, n: usize, per_chunk: usize| (done + n).div_ceil(per_chunk) - done.div_ceil(per_chunk);
        let (r, k) = (self.rows, self.skipped);
        let row_bytes = new_chunks(r, rows, CHUNK_ROWS) * CHUNK_ROWS * self.dim * 4
            + new_chunks(r, rows, STRING_CHUNK) * STRING_CHUNK * (self.label_width * 4 + 10 * 4 + 8 + 16)
            + new_chunks(k, skipped, 256) * 256 * (8 + 16);
        (row_bytes + (rows + skipped) * MAX_TEXT_BYTES) as u64 + METADATA_MARGIN
    }

    fn write_rows(&self, rows: &Rows, start: usize, end: usize) -> Result<()> {
        let n = end - start;
        let features = ArrayView2::from_shape((n, self.dim), rows.features)?;
        let labels = Array2::from_shape_fn((n, self.label_width), |(i, j)| rows.labels[i][j]);
        let landmarks = Array2::from_shape_fn((n, 10), |(i, j)| rows.landmarks[i].map_or(f32::NAN, |l| l[j]));
        self.extend_rows("features", features, start)?;
        self.extend_rows("labels", labels.view(), start)?;
        self.extend_rows("landmarks", landmarks.view(), start)?;
        self.extend_names("paths", rows.paths.iter().map(|p| names::encode(p)).collect(), start)?;
        self.extend("source_index", Array1::from(rows.source_index.clone()), start)?;
        Ok(())
    }

    /// Grows 1-d dataset `name` to hold `data` from row `start` on and writes it there.
    fn extend<T: hdf5::H5Type>(&self, name: &str, data: Array1<T>, start: usize) -> Result<()> {
        let ds = self.file.dataset(name)?;
        let end = start + data.len();
        ds.resize(end)?;
        ds.write_slice(&data, start..end)?;
        Ok(())
    }

    /// Writes `texts` (each with whether it is escaped) to string dataset `name` from entry
    /// `start` on, and lists the escaped ones in its companion ([`names`]).
    fn extend_names(&self, name: &str, texts: Vec<(Cow<str>, bool)>, start: usize) -> Result<()> {
        let escaped: Vec<i64> = texts.iter().enumerate().filter(|(_, (_, e))| *e).map(|(k, _)| (start + k) as i64).collect();
        let strings: Vec<VarLenUnicode> = texts.iter().map(|(t, _)| to_varlen(t)).collect::<Result<_>>()?;
        self.extend(name, Array1::from(strings), start)?;
        names::list_escaped(&self.file, name, &escaped)
    }

    /// The same for a 2-d dataset, whose width stays as it is.
    fn extend_rows<T: hdf5::H5Type>(&self, name: &str, data: ArrayView2<T>, start: usize) -> Result<()> {
        let ds = self.file.dataset(name)?;
        let end = start + data.nrows();
        ds.resize((end, data.ncols()))?;
        ds.write_slice(&data, (start..end, ..))?;
        Ok(())
    }
}

/// A skip as `/skipped` holds it: `path<TAB>reason` (its position goes to `/skipped_index`),
/// and whether the path is escaped ([`names`]).
fn stored_skip(s: &Skipped) -> (Cow<'static, str>, bool) {
    let (path, escaped) = names::encode(s.path.as_os_str());
    (Cow::Owned(format!("{path}\t{}", s.reason)), escaped)
}

/// A skip read back from `/skipped` and `/skipped_index` (-1: a line of the list).
fn read_skip(text: &str, index: i64, escaped: bool) -> Result<Skipped> {
    let (path, reason) = text.split_once('\t').unwrap_or((text, ""));
    Ok(Skipped { path: names::decode(path, escaped)?.into(), reason: reason.to_string(), position: usize::try_from(index).ok() })
}

/// The datasets and attributes of an empty cache, in a new file at `path`, flushed.
fn write_layout(path: &Path, id: &Identity, dim: usize) -> Result<hdf5::File> {
    let file = hdf5::File::create(path)?;
    close_on_exec(&file);
    let width = id.label_columns.len();
    // Fletcher-32 on every numeric dataset; HDF5 refuses it on variable-length strings.
    file.new_dataset::<f32>().chunk((CHUNK_ROWS, dim)).fletcher32().shape((0.., dim)).create("features")?;
    file.new_dataset::<VarLenUnicode>().chunk(STRING_CHUNK).shape(0..).create("paths")?;
    file.new_dataset::<i32>().chunk((STRING_CHUNK, width)).fletcher32().shape((0.., width)).create("labels")?;
    file.new_dataset::<f32>().chunk((STRING_CHUNK, 10)).fletcher32().shape((0.., 10)).create("landmarks")?;
    file.new_dataset::<i64>().chunk(STRING_CHUNK).fletcher32().shape(0..).create("source_index")?;
    file.new_dataset::<VarLenUnicode>().chunk(256).shape(0..).create("skipped")?;
    file.new_dataset::<i64>().chunk(256).fletcher32().shape(0..).create("skipped_index")?;
    for (key, value) in IDENTITY_KEYS.iter().zip([&id.model_sha256, &id.output, &id.preprocess, &id.source]) {
        write_str_attr(&file, key, value)?;
    }
    write_str_attr(&file, "label_columns", &id.label_columns.join(","))?;
    write_str_attr(&file, "class_names", &serde_json::to_string(&id.class_names)?)?;
    if !id.column_class_names.is_empty() {
        write_str_attr(&file, "column_class_names", &serde_json::to_string(&id.column_class_names)?)?;
    }
    write_str_attr(&file, "created", &chrono::Utc::now().to_rfc3339())?;
    write_str_attr(&file, "tool_version", &format!("retrain {}", env!("CARGO_PKG_VERSION")))?;
    for (key, value) in [("format_version", FORMAT_VERSION), ("shard_index", id.shard.index as i64), ("shard_count", id.shard.count as i64)] {
        file.new_attr::<i64>().create(key)?.write_scalar(&value)?;
    }
    for key in ["rows_committed", "skipped_committed", "next_source_index", "sources_total"] {
        file.new_attr::<i64>().create(key)?.write_scalar(&0i64)?;
    }
    file.flush()?;
    Ok(file)
}

/// Marks the descriptor HDF5 holds for `file` close-on-exec. HDF5 opens files without it, so
/// a program started while a file is open (a test's Python, a user's hook) would inherit the
/// descriptor, and with it HDF5's lock on the file, until that program exits.
pub fn close_on_exec(file: &hdf5::File) {
    let mut handle: *mut std::ffi::c_void = std::ptr::null_mut();
    hdf5::sync::sync(|| {
        // SAFETY: for HDF5's default (sec2) driver the handle points to its int descriptor;
        // fcntl only changes that descriptor's flags.
        unsafe {
            if hdf5_sys::h5f::H5Fget_vfd_handle(file.id(), hdf5_sys::h5p::H5P_DEFAULT, &mut handle) >= 0 && !handle.is_null() {
                let fd = *(handle as *const libc::c_int);
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    });
}

/// Rows read back per call when checking a file.
const VERIFY_ROWS: usize = 4096;

fn read_rows_2d<T: hdf5::H5Type>(file: &hdf5::File, name: &str, rows: usize) -> Result<()> {
    let ds = file.dataset(name)?;
    for start in (0..rows).step_by(VERIFY_ROWS) {
        let end = (start + VERIFY_ROWS).min(rows);
        ds.read_slice_2d::<T, _>((start..end, ..)).with_context(|| format!("/{name} rows {start}..{end}"))?;
    }
    Ok(())
}

fn read_rows_1d<T: hdf5::H5Type>(file: &hdf5::File, name: &str, rows: usize) -> Result<()> {
    let ds = file.dataset(name)?;
    for start in (0..rows).step_by(VERIFY_ROWS) {
        let end = (start + VERIFY_ROWS).min(rows);
        ds.read_slice_1d::<T, _>(start..end).with_context(|| format!("/{name} rows {start}..{end}"))?;
    }
    Ok(())
}

/// The error for a cache (or checkpoint) that HDF5 cannot read back as written: cut short,
/// or bytes changed so that a chunk fails its checksum. A file still locked after
/// `open_when_unlocked`'s wait is in use, not damaged: the advice must not be to delete it.
pub fn damaged(path: &Path, e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains(LOCK_HELD) {
        let waited = LOCK_WAIT.as_secs();
        let advice = format!("another process holds HDF5's lock on it (waited {waited} s); it was not changed: run again once that process ends");
        return e.context(format!("{} is in use: {advice}", path.display()));
    }
    let what = if text.contains("truncated file") {
        "is cut short (truncated)"
    } else if text.contains("checksum") || text.contains("Fletcher32") {
        "fails its checksums (bytes were changed after it was written)"
    } else {
        "cannot be read"
    };
    e.context(format!("{} {what}: it is damaged and not used; delete it and run again", path.display()))
}

/// Takes `<cache>.lock`, so a second process on the same cache refuses instead of interleaving.
fn lock(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot create lock file {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "cache {} is being written by another retrain process (it holds {}); wait for it to finish or choose another --out",
            path.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", lock_path.display())),
    }
}

fn check_identity(file: &hdf5::File, id: &Identity, dim: usize) -> Result<()> {
    let version = read_i64_attr(file, "format_version")?;
    if version != FORMAT_VERSION {
        bail!("format_version is {version}, this retrain writes {FORMAT_VERSION}");
    }
    for (key, want) in IDENTITY_KEYS.iter().zip([&id.model_sha256, &id.output, &id.preprocess, &id.source]) {
        let have = read_str_attr(file, key)?;
        if &have != want {
            bail!("{key} differs: the file has '{have}', this run has '{want}'");
        }
    }
    let columns = read_str_attr(file, "label_columns")?;
    if columns != id.label_columns.join(",") {
        bail!("label_columns differ: '{columns}' vs '{}'", id.label_columns.join(","));
    }
    let classes = read_column_class_names(file)?;
    if classes != id.column_class_names {
        let show = |c: &ColumnClassNames| serde_json::to_string(c).unwrap_or_default();
        bail!("column_class_names differ: '{}' vs '{}'", show(&classes), show(&id.column_class_names));
    }
    let shard = Shard { index: read_i64_attr(file, "shard_index")? as usize, count: read_i64_attr(file, "shard_count")? as usize };
    if shard != id.shard {
        bail!("the file holds shard {}/{}, this run asks for {}/{}", shard.index, shard.count, id.shard.index, id.shard.count);
    }
    let have_dim = file.dataset("features")?.shape()[1];
    if have_dim != dim {
        bail!("features are {have_dim} wide, this model's output is {dim}");
    }
    Ok(())
}

/// Opens an HDF5 file for reading, waiting (up to ~30 s) while HDF5's lock on it is held.
pub fn open_for_reading(path: &Path) -> hdf5::Result<hdf5::File> {
    open_when_unlocked(path, |p| hdf5::File::open(p))
}

/// Opens an HDF5 file for reading and writing, waiting as [`open_for_reading`] does.
fn open_for_writing(path: &Path) -> hdf5::Result<hdf5::File> {
    open_when_unlocked(path, |p| hdf5::File::open_rw(p))
}

/// What HDF5's error says when another descriptor holds the file's lock.
const LOCK_HELD: &str = "unable to lock file";
/// How long an open waits for that lock to go before it reports the file in use.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `open(path)`, retried (up to [`LOCK_WAIT`]) while HDF5's lock on the file is held, then marked
/// close-on-exec.
///
/// HDF5 locks a file for as long as any descriptor of it is open, and its descriptors are
/// inherited by child processes started meanwhile (HDF5 opens them without close-on-exec, and
/// [`close_on_exec`] can only follow the open): a program started by another thread in that
/// moment keeps the lock until it exits. An open therefore waits for the lock to go instead
/// of failing at once.
fn open_when_unlocked(path: &Path, open: impl Fn(&Path) -> hdf5::Result<hdf5::File>) -> hdf5::Result<hdf5::File> {
    let mut wait = std::time::Duration::from_millis(50);
    let mut waited = std::time::Duration::ZERO;
    loop {
        match open(path) {
            Err(e) if e.to_string().contains(LOCK_HELD) && waited < LOCK_WAIT => {
                std::thread::sleep(wait);
                waited += wait;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            result => {
                if let Ok(file) = &result {
                    close_on_exec(file);
                }
                return result;
            }
        }
    }
}

fn to_varlen(s: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>().map_err(|e| anyhow!("cannot store '{s}' as an HDF5 string: {e}"))
}

pub fn write_str_attr(loc: &hdf5::Location, name: &str, value: &str) -> Result<()> {
    let v = to_varlen(value)?;
    loc.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&v)?;
    Ok(())
}

pub fn read_str_attr(loc: &hdf5::Location, name: &str) -> Result<String> {
    let v: VarLenUnicode = loc.attr(name).with_context(|| format!("attribute '{name}' missing"))?.read_scalar()?;
    Ok(v.as_str().to_string())
}

/// The `column_class_names` attribute; empty where a cache has none (every cache but a label
/// file's).
pub fn read_column_class_names(loc: &hdf5::Location) -> Result<ColumnClassNames> {
    if !loc.attr_names()?.iter().any(|n| n == "column_class_names") {
        return Ok(ColumnClassNames::new());
    }
    Ok(serde_json::from_str(&read_str_attr(loc, "column_class_names")?)?)
}

pub fn read_i64_attr(loc: &hdf5::Location, name: &str) -> Result<i64> {
    Ok(loc.attr(name).with_context(|| format!("attribute '{name}' missing"))?.read_scalar()?)
}

pub fn read_f64_attr(loc: &hdf5::Location, name: &str) -> Result<f64> {
    Ok(loc.attr(name).with_context(|| format!("attribute '{name}' missing"))?.read_scalar()?)
}
