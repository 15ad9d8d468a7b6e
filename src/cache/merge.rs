//! Joining the shard files of one extraction into the cache a single machine would have made.
//!
//! Rows and skipped entries are put back in image-list order (`source_index`), so the merged file
//! holds the same rows, in the same order, as `retrain extract` without `--shard`.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{Cache, CacheWriter, Rows, Shard};
use crate::dataset::Skipped;

/// Rows written per commit while merging.
const MERGE_BATCH: usize = 1024;

/// Merges complete shards `0/N .. N-1/N` of one extraction into a new file `out`.
pub fn merge(shards: &[&Path], out: &Path) -> Result<usize> {
    let caches: Vec<Cache> = shards.iter().map(|p| Cache::read(p)).collect::<Result<_>>()?;
    check_shards(shards, &caches)?;
    let first = &caches[0];
    let identity = super::Identity { shard: Shard::WHOLE, ..first.identity() };
    let mut writer = CacheWriter::create_new(out, &identity, first.features.ncols())?;
    let total = first.sources_total;
    writer.append(&Rows::NONE, &merged_skips(&caches), 0, total)?;
    let order = merged_order(&caches);
    for chunk in order.chunks(MERGE_BATCH) {
        let features: Vec<f32> = chunk.iter().flat_map(|&(c, r)| caches[c].features.row(r).to_vec()).collect();
        let labels: Vec<Vec<i32>> = chunk.iter().map(|&(c, r)| caches[c].labels.row(r).to_vec()).collect();
        let rows = Rows {
            features: &features,
            paths: chunk.iter().map(|&(c, r)| caches[c].paths[r].as_os_str()).collect(),
            labels: labels.iter().map(Vec::as_slice).collect(),
            landmarks: chunk.iter().map(|&(c, r)| landmarks(&caches[c], r)).collect(),
            source_index: chunk.iter().map(|&(c, r)| caches[c].source_index[r]).collect(),
        };
        writer.append(&rows, &[], total, total)?;
    }
    Ok(order.len())
}

/// Every shard of one extraction, each once, each finished.
fn check_shards(paths: &[&Path], caches: &[Cache]) -> Result<()> {
    let Some(first) = caches.first() else { bail!("cache merge needs at least one shard file") };
    let count = first.shard.count;
    if caches.len() != count {
        bail!("{} was written as one of {count} shards, but {} files were given", paths[0].display(), caches.len());
    }
    let mut seen = vec![false; count];
    for (path, c) in paths.iter().zip(caches) {
        let same = |a: &Cache| super::Identity { shard: Shard::WHOLE, ..a.identity() };
        if same(c) != same(first) || c.features.ncols() != first.features.ncols() || c.sources_total != first.sources_total {
            bail!("{} comes from another extraction than {} (model, output, preprocessing, image list or size differ)", path.display(), paths[0].display());
        }
        if c.shard.count != count || std::mem::replace(&mut seen[c.shard.index], true) {
            bail!("{} is shard {}/{}: shards must be 0..{count} of {count}, each once", path.display(), c.shard.index, c.shard.count);
        }
        if !c.is_complete() {
            bail!("{} is unfinished (stopped at image {} of {}): run its extract command again first", path.display(), c.next_source_index, c.sources_total);
        }
    }
    Ok(())
}

/// (shard, row) pairs in image-list order.
fn merged_order(caches: &[Cache]) -> Vec<(usize, usize)> {
    let mut order: Vec<(i64, usize, usize)> =
        caches.iter().enumerate().flat_map(|(c, cache)| cache.source_index.iter().enumerate().map(move |(r, &i)| (i, c, r))).collect();
    order.sort_unstable();
    order.into_iter().map(|(_, c, r)| (c, r)).collect()
}

/// Skipped images in list order; problems of the list itself (no position) are in every shard, kept once.
fn merged_skips(caches: &[Cache]) -> Vec<Skipped> {
    let mut skips: Vec<Skipped> = caches[0].skipped.iter().filter(|s| s.position.is_none()).cloned().collect();
    let mut images: Vec<Skipped> = caches.iter().flat_map(|c| c.skipped.iter().filter(|s| s.position.is_some()).cloned()).collect();
    images.sort_by_key(|s| s.position);
    skips.extend(images);
    skips
}

fn landmarks(c: &Cache, row: usize) -> Option<[f32; 10]> {
    let l = c.landmarks.row(row);
    if l.iter().all(|v| v.is_nan()) {
        return None;
    }
    Some(std::array::from_fn(|j| l[j]))
}

/// Reads `SHARD.h5...`, merges, and says what it did.
pub fn merge_command(shards: &[std::path::PathBuf], out: &Path) -> Result<String> {
    let refs: Vec<&Path> = shards.iter().map(|p| p.as_path()).collect();
    let rows = merge(&refs, out).with_context(|| format!("cache merge into {}", out.display()))?;
    Ok(format!("merged {} shards into {} ({rows} rows)", shards.len(), out.display()))
}
