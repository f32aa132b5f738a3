//! indicatif progress bars on stderr; hidden when stderr is not a terminal or when asked.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::fmt::Write;

pub fn bar(len: u64, label: &str, show: bool) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    let style = ProgressStyle::with_template(
        "{prefix:>8} [{bar:30.cyan/blue}] {pos}/{len} {rate} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key("rate", |state: &ProgressState, w: &mut dyn Write| {
        let _ = write!(w, "{:.1}/s", state.per_sec());
    })
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

/// Where the library's running commentary goes (what it is about to do, what it fell back
/// to): the library never prints, it hands each line to the sink the binary installs (`tl`
/// writes them to stderr); without one they go nowhere. Warnings that matter after the run
/// also travel in the reports.
static SINK: std::sync::OnceLock<fn(&str)> = std::sync::OnceLock::new();

/// Install the sink (once; later calls are ignored).
pub fn set_sink(sink: fn(&str)) {
    let _ = SINK.set(sink);
}

/// Hand one line to the sink.
pub fn say(line: &str) {
    if let Some(sink) = SINK.get() {
        sink(line);
    }
}
