//! indicatif progress bars, one style for every long job.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items of `unit`, showing the rate and ETA. Hidden when `show` is false
/// (indicatif also hides it by itself when stderr is not a terminal).
pub fn bar(len: u64, unit: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let template = format!("{{msg}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}})");
    let style = ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len).with_style(style)
}
