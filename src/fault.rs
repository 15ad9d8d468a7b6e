//! Fault injection for the tests, driven by progress, never by the clock.
//!
//! `RETRAIN_FAULT=POINT:N:ACTION` makes the process act the N-th time (counted from 1 in this
//! process) it passes POINT: `kill` sends itself SIGKILL (a crash: nothing is cleaned up),
//! `sigint` / `sigterm` send that signal (as Ctrl-C or `kill` would), `sigstop` freezes the
//! process there until the test sends SIGCONT (to hold a cache open while a test looks). The tests crash or
//! interrupt a job at exact points of its progress — after k committed batches, between a
//! batch's data and its commit, after step k, between writing a checkpoint and renaming it —
//! so what they check does not depend on how fast the machine is.
//!
//! It exists only in builds with the `fault-injection` feature, which the tests enable
//! (`cargo test --features fault-injection`); in the release binary users run, [`reached`]
//! is empty and nothing reads the variable.

#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "fault-injection")]
use std::sync::OnceLock;

/// Whether this build acts on [`VARIABLE`] (the `fault-injection` feature).
pub fn enabled() -> bool {
    cfg!(feature = "fault-injection")
}

/// The places a job can be stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The image decoder has a batch ready (inference on the previous one may be running).
    BatchDecoded,
    /// A cache batch's data is written but not flushed.
    CacheDataWritten,
    /// A cache batch's data is flushed, its commit counters are not yet written.
    CacheDataFlushed,
    /// A cache batch is committed.
    CacheCommitted,
    /// An optimizer step is done (`retrain train` and `retrain finetune`).
    Step,
    /// A checkpoint is written to its `.partial` file, not yet renamed.
    CheckpointPartial,
    /// A checkpoint is in place.
    CheckpointWritten,
}

#[cfg(feature = "fault-injection")]
const NAMES: [(Point, &str); 7] = [
    (Point::BatchDecoded, "batch-decoded"),
    (Point::CacheDataWritten, "cache-data-written"),
    (Point::CacheDataFlushed, "cache-data-flushed"),
    (Point::CacheCommitted, "cache-committed"),
    (Point::Step, "step"),
    (Point::CheckpointPartial, "checkpoint-partial"),
    (Point::CheckpointWritten, "checkpoint-written"),
];

#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill,
    Signal(libc::c_int),
}

#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault {
    point: Point,
    hit: u64,
    action: Action,
}

/// The environment variable the tests set.
pub const VARIABLE: &str = "RETRAIN_FAULT";

#[cfg(feature = "fault-injection")]
static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
#[cfg(feature = "fault-injection")]
static HITS: AtomicU64 = AtomicU64::new(0);

/// Marks that the job passed `point` (without the feature: nothing).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn reached(_point: Point) {}

/// Marks that the job passed `point`; acts if `RETRAIN_FAULT` asks for it here.
#[cfg(feature = "fault-injection")]
pub fn reached(point: Point) {
    let Some(fault) = FAULT.get_or_init(from_env) else { return };
    if fault.point == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == fault.hit {
        act(fault.action);
    }
}

#[cfg(feature = "fault-injection")]
fn from_env() -> Option<Fault> {
    let text = std::env::var(VARIABLE).ok()?;
    // A test that asks for a fault it cannot get must fail, not pass without one.
    Some(parse(&text).unwrap_or_else(|| {
        panic!("{VARIABLE}={text}: expected POINT:N:ACTION, POINT one of {names}, ACTION kill, sigint, sigterm or sigstop", names = point_names())
    }))
}

#[cfg(feature = "fault-injection")]
fn point_names() -> String {
    NAMES.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

#[cfg(feature = "fault-injection")]
fn parse(text: &str) -> Option<Fault> {
    let mut parts = text.split(':');
    let name = parts.next()?;
    let point = NAMES.iter().find(|(_, n)| *n == name)?.0;
    let hit = parts.next()?.parse().ok().filter(|&n| n > 0)?;
    let action = match parts.next()? {
        "kill" => Action::Kill,
        "sigint" => Action::Signal(libc::SIGINT),
        "sigterm" => Action::Signal(libc::SIGTERM),
        "sigstop" => Action::Signal(libc::SIGSTOP),
        _ => return None,
    };
    parts.next().is_none().then_some(Fault { point, hit, action })
}

#[cfg(feature = "fault-injection")]
fn act(action: Action) {
    let signal = match action {
        Action::Kill => libc::SIGKILL,
        Action::Signal(s) => s,
    };
    // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
    unsafe { libc::kill(libc::getpid(), signal) };
    if action == Action::Kill {
        // SIGKILL is delivered before kill(2) returns to us; this is never reached.
        std::process::abort();
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_are_refused() {
        assert_eq!(parse("cache-committed:3:kill"), Some(Fault { point: Point::CacheCommitted, hit: 3, action: Action::Kill }));
        assert_eq!(parse("step:1:sigterm"), Some(Fault { point: Point::Step, hit: 1, action: Action::Signal(libc::SIGTERM) }));
        for bad in ["", "step", "step:0:kill", "step:2", "step:2:stop", "nowhere:2:kill", "step:2:kill:again"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
