//! indicatif progress bars on stderr; hidden when stderr is not a terminal or when asked.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(len: u64, label: &str, show: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30.cyan/blue}] {pos}/{len} {per_sec} ETA {eta} {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}
