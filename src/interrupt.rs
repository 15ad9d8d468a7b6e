//! Ctrl-C (SIGINT) and SIGTERM stop a long job at its next batch or step boundary, after it
//! has committed what it did, instead of killing it in the middle of a write. A second signal
//! ends the process at once.
//!
//! `main` installs the handlers; the library polls [`check`] at its boundaries and returns an
//! [`Interrupted`] error, which `main` turns into the command that resumes and exit status
//! 128 + signal. Without [`install`] (the library used from other programs) nothing changes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Result;

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    if SIGNAL.swap(signal, Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
}

/// Routes SIGINT and SIGTERM to [`check`] (and ignores SIGXFSZ, so that a write over a file
/// size limit fails with an error naming the file instead of killing the process).
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only touches an atomic (or _exits)
        // is a valid, async-signal-safe disposition.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    // SAFETY: setting a signal to SIG_IGN has no other effect.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// A job stopped by a signal after committing its work.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}: {progress}", signal_name(*.signal))]
pub struct Interrupted {
    /// The signal that asked the job to stop (SIGINT or SIGTERM).
    pub signal: i32,
    /// What is safely on disk, e.g. "120 of 300 images committed to c.h5".
    pub progress: String,
    /// The checkpoint to resume from, for jobs that take one (`None`: the same command resumes).
    pub checkpoint: Option<PathBuf>,
}

impl Interrupted {
    /// The conventional exit status of a process ended by this signal.
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

/// The name of a signal number, e.g. "SIGINT".
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        s => format!("signal {s}"),
    }
}

/// The signal received, if any.
pub fn requested() -> Option<i32> {
    Some(SIGNAL.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// At a boundary where everything done so far is committed: an [`Interrupted`] error if a
/// signal arrived. `progress` says what is on disk and where to resume from; it is only
/// called when stopping.
pub fn check(progress: impl FnOnce() -> (String, Option<PathBuf>)) -> Result<()> {
    match requested() {
        None => Ok(()),
        Some(signal) => {
            let (progress, checkpoint) = progress();
            Err(Interrupted { signal, progress, checkpoint }.into())
        }
    }
}

/// The command line `args` (this process's), with `--resume CHECKPOINT` in place of any
/// earlier one when the job resumes from a checkpoint (extract resumes from its output file
/// by itself), quoted so that a shell runs it as it was.
pub fn resume_command(mut args: Vec<String>, checkpoint: Option<&Path>) -> String {
    if let Some(checkpoint) = checkpoint {
        let mut kept = Vec::with_capacity(args.len() + 2);
        let mut after_resume = false;
        for a in args {
            if std::mem::take(&mut after_resume) {
                continue;
            }
            after_resume = a == "--resume";
            if !after_resume && !a.starts_with("--resume=") {
                kept.push(a);
            }
        }
        kept.extend(["--resume".to_string(), checkpoint.display().to_string()]);
        args = kept;
    }
    args.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

/// `word` as a POSIX shell reads it back.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{resume_command, shell_quote};

    #[test]
    fn words_are_quoted_as_a_shell_reads_them_back() {
        for word in ["plain/path.h5", "with space", "it's", "", "$HOME", "a\"b", "semi;colon"] {
            let quoted = shell_quote(word);
            let o = std::process::Command::new("sh").args(["-c", &format!("printf %s {quoted}")]).output().unwrap();
            assert_eq!(String::from_utf8(o.stdout).unwrap(), word, "{quoted}");
        }
        assert_eq!(shell_quote("runs/train/last.h5"), "runs/train/last.h5");
    }

    #[test]
    fn the_resume_command_replaces_an_earlier_checkpoint() {
        let args = ["retrain", "finetune", "--resume", "old.h5", "--out", "o p", "--resume=older.h5"].map(String::from).to_vec();
        assert_eq!(resume_command(args.clone(), Some(Path::new("o p/last.h5"))), "retrain finetune --out 'o p' --resume 'o p/last.h5'");
        assert_eq!(resume_command(args[..2].to_vec(), None), "retrain finetune");
    }
}
