//! Ctrl-C (SIGINT) and SIGTERM stop a long job at its next batch or step boundary, after it
//! has committed what it did, instead of killing it in the middle of a write. A second signal
//! ends the process at once.
//!
//! `main` installs the handlers; the library polls [`check`] at its boundaries and returns an
//! [`Interrupted`] error, which `main` turns into the command that resumes and exit status
//! 128 + signal. Without [`install`] (the library used from other programs) nothing changes.

use std::path::PathBuf;
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
