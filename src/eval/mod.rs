//! Stage 4: measuring a classifier's probabilities against the truth.
pub mod calibration;
pub mod metrics;

pub use metrics::{
    argmax, format_top, top_classes, top_k, ClassCount, ClassProb, ClassificationReport,
};

/// A command's result: serialised as JSON, or rendered once as text for people. `notes`
/// are the lines for stderr (warnings, skipped files) in either mode.
pub trait Report: serde::Serialize {
    fn render_text(&self) -> String;
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// `warning: …` lines for stderr.
pub fn warning_lines(warnings: &[String]) -> Vec<String> {
    warnings.iter().map(|w| format!("warning: {w}")).collect()
}
