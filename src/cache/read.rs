//! Reading a cache back: for training, evaluation, merging and tests.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use hdf5::types::VarLenUnicode;
use ndarray::{Array1, Array2};

use super::{names, read_i64_attr, read_skip, read_str_attr, Shard};
use crate::dataset::Skipped;

/// Everything a finished cache holds, read back for training, evaluation and tests.
#[derive(Debug, Clone)]
pub struct Cache {
    pub features: Array2<f32>,
    /// The images' names, byte for byte.
    pub paths: Vec<OsString>,
    pub labels: Array2<i32>,
    pub landmarks: Array2<f32>,
    pub source_index: Vec<i64>,
    /// Images (and list lines) that could not be used, in the order recorded.
    pub skipped: Vec<Skipped>,
    pub label_columns: Vec<String>,
    pub class_names: Vec<String>,
    /// Label files: each label column's class names (see [`super::Identity`]).
    pub column_class_names: super::ColumnClassNames,
    pub model_sha256: String,
    pub output: String,
    pub preprocess: String,
    pub source: String,
    pub shard: Shard,
    /// First list position not yet processed, and the length of the list the run worked through.
    pub next_source_index: usize,
    pub sources_total: usize,
}

impl Cache {
    /// Reads the committed rows of a cache file.
    pub fn read(path: &Path) -> Result<Cache> {
        let file = crate::cache::open_for_reading(path).map_err(|e| super::damaged(path, e.into()))?;
        read_i64_attr(&file, "format_version").with_context(|| format!("{} is not a retrain cache", path.display()))?;
        let read = || -> Result<Cache> {
            let rows = read_i64_attr(&file, "rows_committed")? as usize;
            let skipped_len = read_i64_attr(&file, "skipped_committed")? as usize;
            Ok(Cache {
                features: file.dataset("features")?.read_slice_2d((0..rows, ..))?,
                paths: paths(&file, rows)?,
                labels: file.dataset("labels")?.read_slice_2d((0..rows, ..))?,
                landmarks: file.dataset("landmarks")?.read_slice_2d((0..rows, ..))?,
                source_index: file.dataset("source_index")?.read_slice_1d::<i64, _>(0..rows)?.to_vec(),
                skipped: skipped(&file, skipped_len)?,
                label_columns: read_str_attr(&file, "label_columns")?.split(',').map(str::to_string).collect(),
                class_names: serde_json::from_str(&read_str_attr(&file, "class_names")?)?,
                column_class_names: super::read_column_class_names(&file)?,
                model_sha256: read_str_attr(&file, "model_sha256")?,
                output: read_str_attr(&file, "output")?,
                preprocess: read_str_attr(&file, "preprocess")?,
                source: read_str_attr(&file, "source")?,
                shard: Shard { index: read_i64_attr(&file, "shard_index")? as usize, count: read_i64_attr(&file, "shard_count")? as usize },
                next_source_index: read_i64_attr(&file, "next_source_index")? as usize,
                sources_total: read_i64_attr(&file, "sources_total")? as usize,
            })
        };
        read().map_err(|e| super::damaged(path, e))
    }

    /// Column of `/labels` for an attribute name such as `smile`.
    pub fn label_column(&self, attribute: &str) -> Result<usize> {
        self.label_columns
            .iter()
            .position(|c| c == attribute)
            .ok_or_else(|| anyhow!("attribute '{attribute}' is not in this cache (it has: {})", self.label_columns.join(", ")))
    }
}

/// The first `n` entries of `/paths`.
fn paths(file: &hdf5::File, n: usize) -> Result<Vec<OsString>> {
    let text = strings(file, "paths", n)?;
    text.iter().zip(names::escaped(file, "paths", n)?).map(|(t, escaped)| names::decode(t.as_str(), escaped)).collect()
}

/// The first `n` entries of `/skipped` with their `/skipped_index`.
fn skipped(file: &hdf5::File, n: usize) -> Result<Vec<Skipped>> {
    let (text, escaped) = (strings(file, "skipped", n)?, names::escaped(file, "skipped", n)?);
    let index: Array1<i64> = file.dataset("skipped_index")?.read_slice_1d(0..n)?;
    text.iter().zip(&index).zip(escaped).map(|((t, &i), e)| read_skip(t.as_str(), i, e)).collect()
}

fn strings(file: &hdf5::File, name: &str, n: usize) -> Result<Array1<VarLenUnicode>> {
    Ok(file.dataset(name)?.read_slice_1d(0..n)?)
}

impl Cache {
    /// The identity a cache was written with, to check that others (shards) match it.
    pub fn identity(&self) -> super::Identity {
        super::Identity {
            model_sha256: self.model_sha256.clone(),
            output: self.output.clone(),
            preprocess: self.preprocess.clone(),
            source: self.source.clone(),
            label_columns: self.label_columns.clone(),
            class_names: self.class_names.clone(),
            column_class_names: self.column_class_names.clone(),
            shard: self.shard,
        }
    }

    /// Whether the run processed every image of its shard.
    pub fn is_complete(&self) -> bool {
        (self.next_source_index..self.sources_total).all(|i| !self.shard.contains(i))
    }
}
