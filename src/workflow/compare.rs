//! `tl compare`: the same training, split and seed on several backbones, one run each (the
//! feature cache is shared), then a table and a page with bar charts.
use super::train::{train, TrainSettings};
use crate::error::{Result, TlError};
use crate::eval::Report;
use crate::features::BackboneSpec;
use crate::html::charts::bar_chart;
use crate::html::TablePage;
use crate::run::Run;
use crate::runtime::Runtime;
use crate::util::fs::check_destination;
use crate::util::{write_atomic, FilePath};
use serde::Serialize;
use std::path::PathBuf;

pub const PAGE: &str = "compare.html";

#[derive(Clone, Debug)]
pub struct CompareSettings {
    /// One training's settings; `backbone` and `out` are set per backbone.
    pub train: TrainSettings,
    pub backbones: Vec<String>,
    /// Holds one run folder per backbone and compare.html (written into when
    /// `train.force` is set).
    pub out: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    pub backbone: String,
    pub run: FilePath,
    pub val_accuracy: Option<f64>,
    pub mean_class_accuracy: Option<f64>,
    /// Over the images computed in this run (None: all came from the cache).
    pub extraction_images_per_second: Option<f64>,
    pub extract_seconds: f64,
    pub head_seconds: f64,
    pub backbone_bytes: u64,
    pub feature_dim: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub data: FilePath,
    pub seed: u64,
    /// Every run was trained and validated on the same files.
    pub same_split: bool,
    pub rows: Vec<CompareRow>,
    pub page: FilePath,
    /// What each run's training said (warnings, skipped files), prefixed by its backbone.
    pub run_notes: Vec<String>,
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.2}%", 100.0 * v))
}

impl CompareRow {
    fn cells(&self) -> Vec<String> {
        vec![
            self.backbone.clone(),
            pct(self.val_accuracy),
            pct(self.mean_class_accuracy),
            self.extraction_images_per_second
                .map_or("cached".into(), |v| format!("{v:.1}")),
            format!("{:.2}s", self.head_seconds),
            crate::util::text::human_bytes(self.backbone_bytes),
            self.feature_dim.to_string(),
        ]
    }
}

const HEADERS: [&str; 7] = [
    "backbone",
    "val accuracy",
    "mean per-class",
    "extraction img/s",
    "head time",
    "backbone file",
    "feature dim",
];

impl Report for CompareReport {
    fn render_text(&self) -> String {
        let mut rows = vec![HEADERS.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        rows.extend(self.rows.iter().map(CompareRow::cells));
        let widths: Vec<usize> = (0..HEADERS.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut s = String::new();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    if i == 0 {
                        format!("{cell:<w$}")
                    } else {
                        format!("{cell:>w$}")
                    }
                })
                .collect();
            s += line.join("  ").trim_end();
            s.push('\n');
        }
        s += &format!("page: {}\n", self.page);
        s
    }
    fn notes(&self) -> Vec<String> {
        let mut notes = self.run_notes.clone();
        if !self.same_split {
            notes.push(
                "warning: the runs did not all use the same files (see each run's split.json)"
                    .into(),
            );
        }
        notes
    }
}

/// Folder names for the runs: the backbone's name, numbered when two share one.
fn run_names(specs: &[BackboneSpec]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for spec in specs {
        let base: String = spec
            .name
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut name = base.clone();
        let mut n = 1;
        while names.contains(&name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        names.push(name);
    }
    names
}

pub fn compare(rt: &Runtime, s: &CompareSettings) -> Result<CompareReport> {
    if s.backbones.is_empty() {
        return Err(TlError::invalid("--backbones: name at least one backbone"));
    }
    let distinct: std::collections::HashSet<&String> = s.backbones.iter().collect();
    if distinct.len() != s.backbones.len() {
        return Err(TlError::invalid(
            "--backbones names a backbone twice (its rows could not be told apart)",
        ));
    }
    if s.train.save_features.is_some() || s.train.out.is_some() {
        return Err(TlError::invalid(
            "compare writes one run per backbone under --out; --save-features is not available",
        ));
    }
    check_destination(&s.out, s.train.force)?;
    // Every backbone resolves before any work starts.
    let specs = s
        .backbones
        .iter()
        .map(|b| BackboneSpec::resolve(b, &rt.backbones))
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    let mut splits = Vec::new();
    let mut run_notes = Vec::new();
    for (name, backbone) in run_names(&specs).iter().zip(&s.backbones) {
        crate::progress::say(&format!("== {backbone}"));
        let mut settings = s.train.clone();
        settings.backbone = backbone.clone();
        settings.out = Some(s.out.join(name));
        let report = train(rt, &settings)?;
        run_notes.extend(
            report
                .notes()
                .into_iter()
                .map(|n| format!("{backbone}: {n}")),
        );
        let run = Run::open(&s.out.join(name))?;
        splits.push(run.split().ok().flatten());
        let features = &run.config.backbone.features_file;
        rows.push(CompareRow {
            backbone: run.config.backbone.name.clone(),
            run: FilePath(run.dir.clone()),
            val_accuracy: report.val_accuracy,
            mean_class_accuracy: report.validation.as_ref().map(|v| v.mean_class_accuracy),
            extraction_images_per_second: (report.extraction.computed > 0)
                .then_some(report.extraction.images_per_second),
            extract_seconds: report.timing_seconds.extract,
            head_seconds: report.timing_seconds.train,
            backbone_bytes: std::fs::metadata(features).map(|m| m.len()).unwrap_or(0),
            feature_dim: run.config.backbone.feature_dim,
        });
    }
    let report = CompareReport {
        data: FilePath(s.train.data.clone()),
        seed: s.train.seed,
        same_split: splits.windows(2).all(|w| match (&w[0], &w[1]) {
            (Some(a), Some(b)) => a.train == b.train && a.val == b.val,
            _ => false,
        }),
        page: FilePath(s.out.join(PAGE)),
        run_notes,
        rows,
    };
    write_atomic(&s.out.join(PAGE), page(&report)?.as_bytes())?;
    Ok(report)
}

fn page(r: &CompareReport) -> Result<String> {
    let bars = |f: &dyn Fn(&CompareRow) -> Option<f64>| -> Vec<(String, f64)> {
        r.rows
            .iter()
            .filter_map(|row| f(row).map(|v| (row.backbone.clone(), v)))
            .collect()
    };
    let charts = vec![
        bar_chart(
            "Validation accuracy",
            "accuracy",
            &bars(&|row| row.val_accuracy),
        )?,
        bar_chart(
            "Mean per-class accuracy",
            "accuracy",
            &bars(&|row| row.mean_class_accuracy),
        )?,
        bar_chart(
            "Feature extraction (computed images)",
            "images / s",
            &bars(&|row| row.extraction_images_per_second),
        )?,
    ];
    Ok(TablePage {
        title: format!("tl compare: {}", r.data),
        intro: vec![format!(
            "The same split and seed ({}) for every backbone{}; each run's folder holds its report.html.",
            r.seed,
            if r.same_split { ", checked: the same files on each side" } else { " (NOT the same files: see the warning)" }
        )],
        headers: HEADERS.iter().map(|h| h.to_string()).collect(),
        rows: r.rows.iter().map(CompareRow::cells).collect(),
        charts,
    }
    .render())
}
