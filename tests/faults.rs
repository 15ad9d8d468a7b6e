//! Faults a user meets, each with the message it must give and what it must keep: Ctrl-C and
//! SIGTERM during extract, train and finetune; a full disk (a file size limit) during extract
//! and train; damaged caches and checkpoints; a model whose external data lies outside its
//! folder. Every stop is placed by progress (RETRAIN_FAULT, src/fault.rs), never by the clock.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{
    exited_with, folder_dataset, make_artifacts, python, retrain, retrain_fault, run_printed_resume, same_cache_file, same_fine_tuning_run, same_training_run,
    stderr, stdout, tcdcn_finetune, test_model, tiny_mtfl,
};
use retrain::cache::Cache;
use retrain::train::checkpoint::Checkpoint;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `retrain extract` over class folders with the tiny test model, batch 4.
fn extract_args(img: &Path, out: &Path) -> Vec<String> {
    let model = test_model("tiny_cnn.onnx");
    ["extract", "--quiet", "--batch", "4", "--model", s(&model), "--folders", s(img), "--out", s(out)].map(String::from).to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `n` small JPEGs in two class folders, and the cache an uninterrupted extraction makes.
fn images_and_whole(dir: &Path, per_class: u32) -> (PathBuf, PathBuf) {
    let img = dir.join("img");
    folder_dataset(&img, &["a", "b"], per_class);
    let whole = dir.join("whole.h5");
    assert!(retrain(&strs(&extract_args(&img, &whole))).status.success());
    (img, whole)
}

// ---- Ctrl-C and SIGTERM -----------------------------------------------------------------------

#[test]
fn sigint_during_extract_commits_the_batch_prints_the_resume_command_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (img, whole) = images_and_whole(dir.path(), 30);
    let out = dir.path().join("c.h5");
    let o = retrain_fault(&strs(&extract_args(&img, &out)), "cache-committed", 5, "sigint");
    assert!(exited_with(&o, 130), "exit {:?}: {}", o.status, stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("interrupted by SIGINT: 20 images of 60 done, 20 rows committed to") && e.contains("resume with: "), "{e}");
    assert_eq!(Cache::read(&out).unwrap().paths.len(), 20);
    let resumed = run_printed_resume(&o);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stdout(&resumed).contains("wrote 40 rows") && stdout(&resumed).contains("(20 were already there)"), "{}", stdout(&resumed));
    same_cache_file(&whole, &out);
}

#[test]
fn sigterm_while_a_batch_decodes_stops_at_the_next_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (img, whole) = images_and_whole(dir.path(), 30);
    let out = dir.path().join("c.h5");
    // The signal arrives while batch 3 is being decoded and an earlier one may be running.
    let o = retrain_fault(&strs(&extract_args(&img, &out)), "batch-decoded", 3, "sigterm");
    assert!(exited_with(&o, 143), "exit {:?}: {}", o.status, stderr(&o));
    assert!(stderr(&o).contains("interrupted by SIGTERM"), "{}", stderr(&o));
    let rows = Cache::read(&out).unwrap().paths.len();
    assert!([4, 8, 12].contains(&rows), "{rows} rows: the run must stop at the batch after the signal");
    assert!(run_printed_resume(&o).status.success());
    same_cache_file(&whole, &out);
}

/// Artifacts and a tiny MTFL folder for `retrain train` (TCDCN, Adam, batch 4).
fn training_setup(py: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    (make_artifacts(py, &dir.join("art"), 4, "adam"), tiny_mtfl(&dir.join("mtfl"), 40))
}

fn train_args(art: &Path, mtfl: &Path, out: &Path, epochs: u32) -> Vec<String> {
    common::train_args(s(art), s(mtfl), s(out), &epochs.to_string()).into_iter().map(String::from).collect()
}

#[test]
fn sigint_or_sigterm_during_training_checkpoints_the_step_and_resumes_exactly() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (art, mtfl) = training_setup(&py, dir.path());
    let straight = dir.path().join("straight");
    assert!(retrain(&strs(&train_args(&art, &mtfl, &straight, 2))).status.success());
    let steps_per_epoch = Checkpoint::read(&straight.join("last.h5")).unwrap().step / 2;
    // In the middle of epoch 1, and after its last step (before its validation).
    for (hit, signal, code) in [(3, "sigint", 130), (steps_per_epoch, "sigterm", 143)] {
        let out = dir.path().join(format!("stopped-{hit}"));
        let o = retrain_fault(&strs(&train_args(&art, &mtfl, &out, 2)), "step", hit, signal);
        assert!(exited_with(&o, code), "exit {:?}: {}", o.status, stderr(&o));
        let e = stderr(&o);
        let last = out.join("last.h5");
        assert!(e.contains(&format!("epoch 1: stopped after step {hit} of {steps_per_epoch}")), "{e}");
        assert!(e.contains(&format!("--resume {}", last.display())), "the printed command must resume from last.h5: {e}");
        let c = Checkpoint::read(&last).unwrap();
        assert_eq!((c.epoch, c.step, c.partial.steps), (0, hit, hit), "the checkpoint holds the steps done");
        let resumed = run_printed_resume(&o);
        assert!(resumed.status.success(), "{}", stderr(&resumed));
        same_training_run(&straight, &out);
    }
}

fn finetune_args(art: &Path, mtfl: &Path, cache: &Path, out: &Path) -> Vec<String> {
    common::finetune_args(s(art), s(mtfl), s(cache), s(out), "4").into_iter().map(String::from).collect()
}

#[test]
fn a_signal_during_either_fine_tuning_phase_checkpoints_the_step_and_resumes_exactly() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (art, mtfl) = (tcdcn_finetune(&py, &dir.path().join("ft")), tiny_mtfl(&dir.path().join("mtfl"), 24));
    let cache = dir.path().join("cache");
    let straight = dir.path().join("straight");
    let o = retrain(&strs(&finetune_args(&art, &mtfl, &cache, &straight)));
    assert!(o.status.success(), "{}", stderr(&o));
    // Steps are counted over both phases: 3 is phase 1's third (between two validations), 9 is
    // phase 2's third (the same), 8 is phase 2's second (just after a validation).
    for (hit, signal, code, phase, step) in [(3, "sigterm", 143, 1, 3), (9, "sigint", 130, 2, 3), (8, "sigint", 130, 2, 2)] {
        let out = dir.path().join(format!("stopped-{hit}"));
        let o = retrain_fault(&strs(&finetune_args(&art, &mtfl, &cache, &out)), "step", hit, signal);
        assert!(exited_with(&o, code), "exit {:?}: {}", o.status, stderr(&o));
        let last = out.join(format!("phase{phase}/last.h5"));
        assert!(stderr(&o).contains(&format!("phase {phase} stopped after step {step} of")), "{}", stderr(&o));
        assert_eq!(Checkpoint::read(&last).unwrap().step, step);
        let resumed = run_printed_resume(&o);
        assert!(resumed.status.success(), "{}", stderr(&resumed));
        same_fine_tuning_run(&straight, &out);
    }
}

// ---- a full disk --------------------------------------------------------------------------------

/// Runs `retrain args` with its file size limit (RLIMIT_FSIZE) at `bytes`: writes past it fail
/// as they would on a full disk.
fn retrain_with_file_limit(args: &[&str], bytes: u64) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_retrain"));
    cmd.args(args).current_dir(common::repo());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.output().unwrap()
}

#[test]
fn a_full_disk_during_extract_names_the_file_keeps_the_committed_rows_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (img, whole) = images_and_whole(dir.path(), 500);
    let out = dir.path().join("c.h5");
    // Room for less than the whole cache: the run must stop part-way.
    let limit = std::fs::metadata(&whole).unwrap().len();
    let o = retrain_with_file_limit(&strs(&extract_args(&img, &out)), limit);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&format!("to cache {}", out.display())) && e.contains("file size limit"), "{e}");
    let rows = Cache::read(&out).unwrap_or_else(|e| panic!("the committed rows must stay readable: {e:#}")).paths.len();
    assert!(rows > 0 && rows < 1000, "{rows} rows committed");
    assert!(e.contains(&format!("the {rows} rows committed before are kept")), "{e}");
    // Once there is room, the same command finishes the job.
    let o = retrain(&strs(&extract_args(&img, &out)));
    assert!(o.status.success(), "{}", stderr(&o));
    same_cache_file(&whole, &out);
}

#[test]
fn a_full_disk_during_training_keeps_the_last_checkpoint_and_resumes() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (art, mtfl) = training_setup(&py, dir.path());
    let straight = dir.path().join("straight");
    assert!(retrain(&strs(&train_args(&art, &mtfl, &straight, 2))).status.success());
    let out = dir.path().join("run");
    assert!(retrain(&strs(&train_args(&art, &mtfl, &out, 1))).status.success());
    let last = out.join("last.h5");
    let mut args = train_args(&art, &mtfl, &out, 2);
    args.extend(["--resume".to_string(), last.display().to_string()]);
    // Less room than one checkpoint takes.
    let o = retrain_with_file_limit(&strs(&args), std::fs::metadata(&last).unwrap().len() / 2);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("cannot write checkpoint") && e.contains(".h5.partial") && e.contains("file size limit") && e.contains("is left as it was"), "{e}");
    assert_eq!(Checkpoint::read(&last).unwrap().epoch, 1, "the checkpoint before must stay whole");
    let o = retrain(&strs(&args));
    assert!(o.status.success(), "{}", stderr(&o));
    same_training_run(&straight, &out);
}

// ---- damaged files ------------------------------------------------------------------------------

/// Overwrites 8 bytes in the middle of the first occurrence of `pattern` in `file`.
fn overwrite_inside(file: &Path, pattern: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.windows(pattern.len()).position(|w| w == pattern).expect("the data is in the file") + pattern.len() / 2;
    for b in &mut bytes[at..at + 8] {
        *b ^= 0x5A;
    }
    std::fs::write(file, bytes).unwrap();
}

fn cut_to(file: &Path, share: f64) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len((f.metadata().unwrap().len() as f64 * share) as u64).unwrap();
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn a_damaged_cache_is_refused_with_its_name_never_read_as_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (img, whole) = images_and_whole(dir.path(), 20);
    let features = Cache::read(&whole).unwrap().features;
    for damage in ["bytes changed", "cut short"] {
        let c = dir.path().join(format!("{}.h5", damage.replace(' ', "-")));
        std::fs::copy(&whole, &c).unwrap();
        match damage {
            "bytes changed" => overwrite_inside(&c, &le_bytes(&features.row(17).to_vec())),
            _ => cut_to(&c, 0.6),
        }
        let want = if damage == "cut short" { "is cut short (truncated)" } else { "fails its checksums" };
        let e = format!("{:#}", Cache::read(&c).expect_err("a damaged cache was read"));
        assert!(e.contains(s(&c)) && e.contains(want), "{damage}: {e}");
        let size = std::fs::metadata(&c).unwrap().len();
        for args in
            [strs(&extract_args(&img, &c)), vec!["cache", "info", s(&c)], vec!["train-head", "--cache", s(&c), "--attribute", "class", "--out", "/dev/null"]]
        {
            let o = retrain(&args);
            assert!(!o.status.success(), "{args:?} used a damaged cache");
            assert!(stderr(&o).contains(s(&c)) && stderr(&o).contains(want) && stderr(&o).contains("damaged"), "{args:?}: {}", stderr(&o));
        }
        assert_eq!(std::fs::metadata(&c).unwrap().len(), size, "a refused cache must be left as it is");
    }
}

/// HDF5 locks a file with flock while it is open; a holder that keeps that lock (here this
/// test, through its own descriptor) makes the cache busy, not damaged: the advice must not be
/// to delete it. The reader gives up after its 30-s wait.
#[test]
fn a_cache_locked_by_another_holder_is_reported_in_use_not_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (_img, whole) = images_and_whole(dir.path(), 4);
    let bytes = std::fs::read(&whole).unwrap();
    let holder = std::fs::File::open(&whole).unwrap();
    holder.lock().unwrap();
    let e = format!("{:#}", Cache::read(&whole).expect_err("a locked cache was read"));
    assert!(e.contains(s(&whole)) && e.contains("is in use") && !e.contains("damaged") && !e.contains("delete"), "{e}");
    holder.unlock().unwrap();
    assert_eq!(std::fs::read(&whole).unwrap(), bytes, "the busy cache was left as it was");
    assert_eq!(Cache::read(&whole).unwrap().features.nrows(), 8, "readable once the lock is gone");
}

#[test]
fn a_damaged_checkpoint_is_refused_with_its_name() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (art, mtfl) = training_setup(&py, dir.path());
    let out = dir.path().join("run");
    assert!(retrain(&strs(&train_args(&art, &mtfl, &out, 1))).status.success());
    let good = Checkpoint::read(&out.join("last.h5")).unwrap();
    let weights = good.tensors.iter().max_by_key(|t| t.data.len()).unwrap();
    for damage in ["bytes changed", "cut short"] {
        let c = dir.path().join(format!("{}.h5", damage.replace(' ', "-")));
        std::fs::copy(out.join("last.h5"), &c).unwrap();
        match damage {
            "bytes changed" => overwrite_inside(&c, &le_bytes(&weights.data[100..116])),
            _ => cut_to(&c, 0.5),
        }
        let want = if damage == "cut short" { "is cut short (truncated)" } else { "fails its checksums" };
        let mut args = train_args(&art, &mtfl, &out, 2);
        args.extend(["--resume".to_string(), c.display().to_string()]);
        let o = retrain(&strs(&args));
        assert!(!o.status.success(), "{damage}: training resumed from a damaged checkpoint");
        assert!(stderr(&o).contains(s(&c)) && stderr(&o).contains(want), "{damage}: {}", stderr(&o));
        assert!(!stdout(&o).contains("epoch 2/2"), "training started");
    }
}

// ---- external data ------------------------------------------------------------------------------

/// A TensorProto named `name` whose data is said to be in the file `location`.
fn external_tensor(name: &str, location: &str) -> Vec<u8> {
    use retrain::onnx::wire::Encoder;
    let entry = Encoder::new().string(1, "location").string(2, location).finish();
    Encoder::new().int(1, 4).int(2, retrain::onnx::FLOAT).string(8, name).bytes(13, &entry).int(14, 1).finish()
}

#[test]
fn a_model_whose_external_data_lies_outside_its_folder_is_refused() {
    use retrain::onnx::{node, value_info, Dim, Graph};
    let dir = tempfile::tempdir().unwrap();
    let (models, elsewhere) = (dir.path().join("models"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("secret.bin"), [0u8; 16]).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("secret.bin"), models.join("link.bin")).unwrap();
    let img = dir.path().join("img");
    folder_dataset(&img, &["a"], 2);
    let absolute = elsewhere.join("secret.bin").display().to_string();
    for (location, why) in [("../elsewhere/secret.bin", "outside that folder"), (absolute.as_str(), "outside that folder"), ("link.bin", "which leads to")] {
        let graph = Graph {
            name: "g".into(),
            nodes: vec![node("Add", "add", &["x", "w"], &["y"], &[])],
            initializers: vec![external_tensor("w", location)],
            inputs: vec![value_info("x", &[Dim::Fixed(4)])],
            outputs: vec![value_info("y", &[Dim::Fixed(4)])],
        };
        let model = models.join("m.onnx");
        std::fs::write(&model, retrain::onnx::model(&graph, &[])).unwrap();
        let out = dir.path().join("c.h5");
        let o = retrain(&["extract", "--quiet", "--model", s(&model), "--folders", s(&img), "--out", s(&out)]);
        assert!(!o.status.success(), "{location}: loaded");
        let e = stderr(&o);
        assert!(e.contains(s(&model)) && e.contains("tensor 'w'") && e.contains(location) && e.contains(why) && e.contains("refused"), "{location}: {e}");
        assert!(!out.exists(), "nothing may be written");
    }
}

// ---- descriptors ----------------------------------------------------------------------------

#[test]
fn a_program_started_while_a_cache_is_open_does_not_inherit_it() {
    use retrain::cache::{CacheWriter, Identity, Shard};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.h5");
    let id = Identity {
        model_sha256: "0".repeat(64),
        output: "bottleneck".into(),
        preprocess: "test".into(),
        source: "test".into(),
        label_columns: vec!["class".into()],
        class_names: vec![],
        column_class_names: Default::default(),
        shard: Shard::WHOLE,
    };
    let _writer = CacheWriter::open_or_create(&path, &id, 4).unwrap();
    // The child lists where its own descriptors lead.
    let o = Command::new("sh").args(["-c", "for f in /proc/$$/fd/*; do readlink \"$f\"; done"]).output().unwrap();
    let open = String::from_utf8_lossy(&o.stdout);
    assert!(!open.contains("open.h5"), "the child holds the cache open (and HDF5's lock with it):\n{open}");
}
