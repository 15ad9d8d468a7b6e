//! Sharded extraction: shards 0..N-1 merged equal one single-machine run.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{extract_folders, folder_dataset, retrain, same_cache_file, stderr};
use retrain::cache::{Cache, Shard};
use retrain::extract::parse_shard_with;

/// A data set with a broken image in it, so merging must also order the skipped entries.
fn dataset(root: &Path) {
    folder_dataset(root, &["a", "b", "c"], 11);
    std::fs::write(root.join("b/img005.jpg"), b"broken").unwrap();
}

fn shard_files(img: &Path, dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let out = dir.join(format!("s{i}.h5"));
            let o = extract_folders(img, &out, &["--shard", &format!("{i}/{n}")]);
            assert!(o.status.success(), "{}", stderr(&o));
            out
        })
        .collect()
}

fn merge(shards: &[PathBuf], out: &Path) -> std::process::Output {
    let mut args = vec!["cache", "merge"];
    args.extend(shards.iter().map(|p| p.to_str().unwrap()));
    args.extend(["--out", out.to_str().unwrap()]);
    retrain(&args)
}

#[test]
fn four_shards_merged_equal_the_single_run() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    dataset(&img);
    let whole = dir.path().join("whole.h5");
    assert!(extract_folders(&img, &whole, &[]).status.success());
    let mut shards = shard_files(&img, dir.path(), 4);
    for (i, s) in shards.iter().enumerate() {
        let c = Cache::read(s).unwrap();
        assert_eq!(c.shard, Shard { index: i, count: 4 });
        assert!(c.source_index.iter().all(|&k| k as usize % 4 == i));
    }
    shards.reverse(); // any order
    let merged = dir.path().join("merged.h5");
    let o = merge(&shards, &merged);
    assert!(o.status.success(), "{}", stderr(&o));
    same_cache_file(&whole, &merged);
    let (w, m) = (Cache::read(&whole).unwrap(), Cache::read(&merged).unwrap());
    assert_eq!((m.shard, m.next_source_index, m.sources_total), (Shard::WHOLE, 33, 33));
    assert_eq!(m.identity(), w.identity());
    assert_eq!(m.skipped.iter().map(|s| s.position).collect::<Vec<_>>(), [Some(16)]);
    // The merged file is a normal cache: extracting into it again finds nothing to do.
    assert!(common::stdout(&extract_folders(&img, &merged, &[])).contains("wrote 0 rows"));
}

#[test]
fn merge_refuses_incomplete_or_mixed_shard_sets() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    dataset(&img);
    let shards = shard_files(&img, dir.path(), 3);
    let o = merge(&shards[..2], &dir.path().join("m1.h5"));
    assert!(stderr(&o).contains("one of 3 shards, but 2 files were given"), "{}", stderr(&o));
    let o = merge(&[shards[0].clone(), shards[1].clone(), shards[1].clone()], &dir.path().join("m2.h5"));
    assert!(stderr(&o).contains("each once"), "{}", stderr(&o));
    let other = dir.path().join("other.h5");
    assert!(extract_folders(&img, &other, &["--shard", "2/3", "--crop", "nose:8"]).status.success());
    let o = merge(&[shards[0].clone(), shards[1].clone(), other], &dir.path().join("m3.h5"));
    assert!(stderr(&o).contains("another extraction"), "{}", stderr(&o));
    let o = merge(&shards, &shards[0]);
    assert!(stderr(&o).contains("exists already"), "{}", stderr(&o));
}

#[test]
fn shard_from_the_cluster_scheduler() {
    let env = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    };
    let slurm = env(&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "4"), ("SLURM_ARRAY_TASK_COUNT", "8")]);
    assert_eq!(parse_shard_with("auto", &slurm).unwrap(), Shard { index: 1, count: 8 });
    let k8s = env(&[("JOB_COMPLETION_INDEX", "3")]);
    assert_eq!(parse_shard_with("auto/4", &k8s).unwrap(), Shard { index: 3, count: 4 });
    assert!(format!("{:#}", parse_shard_with("auto", &k8s).unwrap_err()).contains("give the count as auto/N"));
    assert!(format!("{:#}", parse_shard_with("auto/4", env(&[])).unwrap_err()).contains("neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX"));
    assert_eq!(parse_shard_with("2/5", env(&[])).unwrap(), Shard { index: 2, count: 5 });
    assert!(format!("{:#}", parse_shard_with("5/5", env(&[])).unwrap_err()).contains("0 <= index < count"));
    assert!(parse_shard_with("x/2", env(&[])).is_err() && parse_shard_with("3", env(&[])).is_err());
}
