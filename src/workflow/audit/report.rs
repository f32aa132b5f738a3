//! What `tl audit` reports: the finding lists (the JSON the issue fixed), the figures the
//! audit derived, and the text summary (counts first, then the top of each ranked list).
use crate::audit::neighbors::Method;
use crate::eval::metrics::ConfusedPair;
use crate::eval::Report;
use crate::features::ExtractStats;
use crate::util::{human_duration, FilePath};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Clone, Debug, Serialize)]
pub struct Unreadable {
    pub path: FilePath,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct NearDuplicate {
    pub a: FilePath,
    pub b: FilePath,
    pub similarity: f32,
    pub leak: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct LabelIssue {
    pub path: FilePath,
    pub given: String,
    pub suggested: String,
    pub score: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outlier {
    pub path: FilePath,
    pub score: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Imbalance {
    pub largest: String,
    pub smallest: String,
    /// Largest class over smallest (images).
    pub ratio: f64,
    /// The ratio is 3 or more.
    pub imbalanced: bool,
}

/// How the audit decided, with the figures it derived from the data.
#[derive(Clone, Debug, Serialize)]
pub struct AuditUsed {
    pub near_duplicate: f64,
    pub folds: usize,
    pub neighbors: Method,
    pub outlier_neighbors: usize,
    pub outlier_cutoff: f64,
    /// Where the training/validation sides came from: run, val-dir, layout, or none.
    pub split: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReviewSummary {
    pub file: FilePath,
    pub rows: usize,
    pub added: usize,
    pub decided: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditTiming {
    pub extract: f64,
    /// Of `analyse`: the neighbour search, and the out-of-sample heads.
    pub neighbors: f64,
    pub labels: f64,
    pub analyse: f64,
    pub total: f64,
}

/// What `tl audit` found; every list ranked most suspicious first.
#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    pub data: FilePath,
    pub backbone: String,
    pub images: usize,
    pub classes: Vec<String>,
    pub class_counts: BTreeMap<String, usize>,
    pub unreadable: Vec<Unreadable>,
    pub exact_duplicates: Vec<Vec<FilePath>>,
    /// Exact-duplicate groups with copies on both sides of the split.
    pub exact_duplicate_leaks: Vec<Vec<FilePath>>,
    pub near_duplicates: Vec<NearDuplicate>,
    pub label_issues: Vec<LabelIssue>,
    pub outliers: Vec<Outlier>,
    /// Out-of-sample mistakes, (given, predicted) pairs most first.
    pub confused_pairs: Vec<ConfusedPair>,
    pub imbalance: Option<Imbalance>,
    /// Accuracy of the out-of-sample heads (None: too few images to fold).
    pub out_of_sample_accuracy: Option<f64>,
    pub used: AuditUsed,
    pub review: Option<ReviewSummary>,
    pub html: Option<FilePath>,
    pub extraction: ExtractStats,
    pub timing_seconds: AuditTiming,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub notes: Vec<String>,
    #[serde(skip)]
    pub show: usize,
}

pub(super) fn class_counts(classes: &[String], labels: &[usize]) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = classes.iter().map(|c| (c.clone(), 0)).collect();
    for &y in labels {
        *counts.entry(classes[y].clone()).or_default() += 1;
    }
    counts
}

pub(super) fn imbalance(classes: &[String], labels: &[usize]) -> Option<Imbalance> {
    let mut counts = vec![0usize; classes.len()];
    for &y in labels {
        counts[y] += 1;
    }
    let largest = (0..classes.len()).max_by_key(|&k| (counts[k], std::cmp::Reverse(k)))?;
    let smallest = (0..classes.len()).min_by_key(|&k| (counts[k], std::cmp::Reverse(k)))?;
    let ratio = counts[largest] as f64 / counts[smallest].max(1) as f64;
    Some(Imbalance {
        largest: classes[largest].clone(),
        smallest: classes[smallest].clone(),
        ratio,
        imbalanced: ratio >= 3.0,
    })
}

impl Report for AuditReport {
    fn render_text(&self) -> String {
        render(self)
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = self.notes.clone();
        notes.extend(crate::eval::warning_lines(&self.warnings));
        notes
    }
}

fn render(r: &AuditReport) -> String {
    let mut s = headline(r);
    let show = r.show;
    let more = |n: usize| {
        if n > show {
            format!(
                "  … {} more (--json or the review file lists all)\n",
                n - show
            )
        } else {
            String::new()
        }
    };
    if !r.unreadable.is_empty() {
        s += "\nunreadable:\n";
        for u in r.unreadable.iter().take(show) {
            let _ = writeln!(s, "  {}: {}", u.path, u.reason);
        }
        s += &more(r.unreadable.len());
    }
    if !r.exact_duplicates.is_empty() {
        s += "\nexact duplicates (same bytes):\n";
        for g in r.exact_duplicates.iter().take(show) {
            let names: Vec<String> = g.iter().map(|p| p.to_string()).collect();
            let _ = writeln!(s, "  {}", names.join(" = "));
        }
        s += &more(r.exact_duplicates.len());
    }
    if !r.near_duplicates.is_empty() {
        s += "\nnear-duplicates (cosine similarity of features):\n";
        for p in r.near_duplicates.iter().take(show) {
            let leak = if p.leak {
                "  LEAK (training ~ validation)"
            } else {
                ""
            };
            let _ = writeln!(s, "  {:.4}  {}  ~  {}{leak}", p.similarity, p.a, p.b);
        }
        s += &more(r.near_duplicates.len());
    }
    if !r.label_issues.is_empty() {
        s += "\nlikely label errors (score = 1 - out-of-sample p(given)):\n";
        for i in r.label_issues.iter().take(show) {
            let _ = writeln!(
                s,
                "  {:.3}  {}  given {}, looks like {}",
                i.score, i.path, i.given, i.suggested
            );
        }
        s += &more(r.label_issues.len());
    }
    if !r.outliers.is_empty() {
        s += "\noutliers (unlike their nearest images):\n";
        for o in r.outliers.iter().take(show) {
            let _ = writeln!(s, "  {:.3}  {}", o.score, o.path);
        }
        s += &more(r.outliers.len());
    }
    s + &footer(r)
}

fn headline(r: &AuditReport) -> String {
    // The images per class, up to 8 classes (--json lists them all).
    let mut counts: Vec<String> = r
        .class_counts
        .iter()
        .take(8)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    if r.class_counts.len() > 8 {
        counts.push(format!("… {} more", r.class_counts.len() - 8));
    }
    let mut s = format!(
        "audit of {} ({}): {} images, {} classes ({})\n",
        r.data,
        r.backbone,
        r.images,
        r.classes.len(),
        counts.join(", ")
    );
    let _ = writeln!(s, "unreadable: {}", r.unreadable.len());
    let copies: usize = r.exact_duplicates.iter().map(Vec::len).sum();
    let _ = writeln!(
        s,
        "exact duplicates: {} group(s), {copies} files{}",
        r.exact_duplicates.len(),
        leaks(r.exact_duplicate_leaks.len(), "group")
    );
    let leaking = r.near_duplicates.iter().filter(|p| p.leak).count();
    let _ = writeln!(
        s,
        "near-duplicates: {} pair(s) at similarity >= {}{}",
        r.near_duplicates.len(),
        r.used.near_duplicate,
        leaks(leaking, "pair")
    );
    let accuracy = r
        .out_of_sample_accuracy
        .map(|a| {
            format!(
                " (out-of-sample accuracy {:.2}% over {} folds)",
                100.0 * a,
                r.used.folds
            )
        })
        .unwrap_or_else(|| " (too few images to fold)".into());
    let _ = writeln!(s, "label issues: {}{accuracy}", r.label_issues.len());
    let _ = writeln!(
        s,
        "outliers: {} (score above {:.4})",
        r.outliers.len(),
        r.used.outlier_cutoff
    );
    if let Some(b) = &r.imbalance {
        let verdict = if b.imbalanced {
            "IMBALANCED"
        } else {
            "balanced"
        };
        let _ = writeln!(
            s,
            "classes: {verdict}: largest {} / smallest {} = {:.2}",
            b.largest, b.smallest, b.ratio
        );
    }
    if !r.confused_pairs.is_empty() {
        let pairs: Vec<String> = r
            .confused_pairs
            .iter()
            .take(3)
            .map(|p| format!("{} -> {} {}", p.true_class, p.predicted, p.count))
            .collect();
        let _ = writeln!(
            s,
            "most confused (given -> predicted): {}",
            pairs.join(", ")
        );
    }
    s
}

fn leaks(n: usize, what: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {n} {what}(s) LEAK across training and validation")
    }
}

fn footer(r: &AuditReport) -> String {
    let mut s = String::new();
    if let Some(rv) = &r.review {
        let _ = writeln!(
            s,
            "\nreview: {} ({} rows, {} new, {} decided; fill in `decision`, then tl train --review)",
            rv.file, rv.rows, rv.added, rv.decided
        );
    }
    if let Some(h) = &r.html {
        let _ = writeln!(s, "page: {h}");
    }
    let t = &r.timing_seconds;
    let _ = writeln!(
        s,
        "time: {} ({} features, {} analysis: {} neighbours ({}), {} heads)",
        human_duration(t.total),
        human_duration(t.extract),
        human_duration(t.analyse),
        human_duration(t.neighbors),
        match r.used.neighbors {
            Method::Exact => "exact",
            Method::Hnsw => "HNSW",
        },
        human_duration(t.labels)
    );
    s
}
