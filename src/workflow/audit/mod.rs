//! `tl audit`: the dataset → cached features → [`crate::audit`] findings, as a report (text,
//! JSON, an HTML page) and a review file whose decisions `tl train --review` applies.
mod report;
use report::{class_counts, imbalance};

use super::train::extraction_line;
use crate::audit::{self, AuditConfig, Findings, Images};
use crate::data::review::{self, Decision, Review, ReviewRow};
use crate::data::{Dataset, Layout, Sample, View};
use crate::error::{Result, TlError};
use crate::eval::{ClassificationReport, Report};
use crate::features::{
    self, BackboneSpec, CacheSettings, ExtractOptions, ExtractStats, FeatureCache,
};
use crate::run::{Run, Side};
use crate::runtime::Runtime;
use crate::util::FilePath;
pub use report::{
    AuditReport, AuditTiming, AuditUsed, Imbalance, LabelIssue, NearDuplicate, Outlier,
    ReviewSummary, Unreadable,
};

use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct AuditSettings {
    pub data: PathBuf,
    /// None: the backbone of `run`.
    pub backbone: Option<String>,
    /// A run trained on this data: its recorded split says which images are validation.
    pub run: Option<PathBuf>,
    /// A folder of validation images with the same classes.
    pub val_dir: Option<PathBuf>,
    pub config: AuditConfig,
    pub batch_size: usize,
    pub amp: bool,
    pub cache: CacheSettings,
    /// Write (or update) this review file.
    pub review: Option<PathBuf>,
    /// Write the HTML page here.
    pub html: Option<PathBuf>,
    /// Overwrite the HTML page if it exists.
    pub force: bool,
    /// Findings per list shown by the text summary.
    pub show: usize,
    /// Above this many images the features are read back from the cache into one tensor
    /// instead of being kept by extraction too (so never held twice).
    pub stream_above: usize,
}

impl AuditSettings {
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        if self.backbone.is_none() && self.run.is_none() {
            return Err(TlError::invalid(
                "tl audit needs --backbone (or --run, whose backbone it then uses)",
            ));
        }
        if self.run.is_some() && self.val_dir.is_some() {
            return Err(TlError::invalid(
                "--run and --val-dir both say which images are validation: give one",
            ));
        }
        if self.batch_size == 0 {
            return Err(TlError::invalid("the batch size must be at least 1"));
        }
        if let Some(html) = &self.html {
            crate::util::refuse_overwrite(html, self.force)?;
        }
        if let Some(r) = &self.review {
            if r.is_dir() {
                return Err(TlError::bad_path(
                    r,
                    "is a folder; give a file name (e.g. review.csv)",
                ));
            }
        }
        Ok(())
    }
}

/// The listed images with the side each is on, and where the sides came from.
struct Listed {
    dataset: Dataset,
    samples: Vec<Sample>,
    sides: Vec<Option<Side>>,
    split: String,
}

fn list(s: &AuditSettings, run: Option<&Run>) -> Result<Listed> {
    let mut dataset = Dataset::open(&s.data, run.map(|r| r.classes.as_slice()))?;
    let mut split = match dataset.layout {
        Layout::TrainVal if !dataset.val.is_empty() => "layout",
        _ => "none",
    };
    if let Some(dir) = &s.val_dir {
        let val = Dataset::open(dir, Some(&dataset.classes))?;
        dataset.train.extend(std::mem::take(&mut dataset.val));
        dataset.val = val.all();
        dataset.ignored.extend(val.ignored);
        split = "val-dir";
    }
    let samples = dataset.all();
    let n_train = dataset.train.len();
    let sides = (0..samples.len())
        .map(|i| (split != "none").then_some(if i < n_train { Side::Train } else { Side::Val }))
        .collect();
    if dataset.classes.len() < 2 {
        return Err(TlError::corrupt(
            &s.data,
            format!(
                "found {} class(es) ({}); an audit needs at least 2 (pass the folder that holds one folder per class)",
                dataset.classes.len(),
                dataset.classes.join(", ")
            ),
        ));
    }
    Ok(Listed {
        dataset,
        samples,
        sides,
        split: split.into(),
    })
}

/// The sides of a run's recorded split, matched by path and content.
fn sides_from_run(run: &Run, listed: &mut Listed, keys: &[Option<String>]) -> Result<Vec<String>> {
    let Some(record) = run.split()? else {
        return Ok(vec![format!(
            "{} has no recorded split (split.json): leakage cannot be judged",
            run.dir.display()
        )]);
    };
    let files: Vec<(PathBuf, Option<String>)> = listed
        .samples
        .iter()
        .zip(keys)
        .map(|(s, k)| (s.path.clone(), k.clone()))
        .collect();
    let m = record.locate(&listed.dataset.root, &files);
    listed.sides = vec![None; files.len()];
    for &i in &m.train {
        listed.sides[i] = Some(Side::Train);
    }
    for &i in &m.val {
        listed.sides[i] = Some(Side::Val);
    }
    listed.split = "run".into();
    let mut warnings = Vec::new();
    if !m.new.is_empty() {
        warnings.push(format!(
            "{} image(s) are not in the run's recorded split (added since training): their leaks are not judged",
            m.new.len()
        ));
    }
    Ok(warnings)
}

/// The readable images' features as one tensor, with their labels, keys and sides.
struct Readable {
    rows: Vec<usize>,
    features: Tensor,
    labels: Vec<usize>,
    keys: Vec<String>,
    sides: Vec<Option<Side>>,
    unreadable: Vec<Unreadable>,
}

fn readable(
    listed: &Listed,
    ex: &mut features::Extracted,
    cache: &FeatureCache,
) -> Result<Readable> {
    let mut r = Readable {
        rows: Vec::new(),
        features: Tensor::new(),
        labels: Vec::new(),
        keys: Vec::new(),
        sides: Vec::new(),
        unreadable: Vec::new(),
    };
    for (i, f) in ex.features.iter().enumerate() {
        let path = &listed.samples[i].path;
        match (f, &ex.keys[i]) {
            (Ok(_), Some(key)) => {
                r.rows.push(i);
                r.labels.push(listed.samples[i].label);
                r.keys.push(key.clone());
                r.sides.push(listed.sides[i]);
            }
            (Err(reason), _) => r.unreadable.push(Unreadable {
                path: FilePath(path.clone()),
                reason: reason.to_string(),
            }),
            (Ok(_), None) => r.unreadable.push(Unreadable {
                path: FilePath(path.clone()),
                reason: "could not be read".into(),
            }),
        }
    }
    let mut missing = None;
    let rows = r.rows.iter().zip(&r.keys).map(|(&i, key)| {
        let kept = match &mut ex.features[i] {
            Ok(v) => std::mem::take(v),
            Err(_) => Vec::new(),
        };
        if !kept.is_empty() {
            return kept;
        }
        match cache.get(key, Some(ex.dim)) {
            features::cache::Lookup::Hit(v) => v,
            _ => {
                missing.get_or_insert(listed.samples[i].path.clone());
                vec![0.0; ex.dim]
            }
        }
    });
    r.features = audit::matrix(r.rows.len(), ex.dim, rows);
    if let Some(path) = missing {
        return Err(TlError::corrupt(
            &path,
            "its features are not in the cache after extraction (is the cache writable? see `tl cache verify`, or audit with --no-cache)",
        ));
    }
    Ok(r)
}

fn extract(
    rt: &Runtime,
    s: &AuditSettings,
    spec: &BackboneSpec,
    listed: &Listed,
) -> Result<(features::Extracted, FeatureCache)> {
    let spec = spec.for_engine(rt.engine, rt.precision, rt.device)?;
    let cache = s.cache.open_view(&spec, View::Center)?;
    let mut opts = ExtractOptions::new(rt, &spec, s.batch_size, s.amp, View::Center);
    opts.keep_features = !s.cache.enabled || listed.samples.len() <= s.stream_above;
    let paths: Vec<PathBuf> = listed.samples.iter().map(|x| x.path.clone()).collect();
    let ex = features::extract(&paths, &spec, &cache, &opts)?;
    // Reopened: it sees what extraction published.
    Ok((ex, cache.reopen()))
}

pub fn audit(rt: &Runtime, s: &AuditSettings) -> Result<AuditReport> {
    let started = Instant::now();
    s.validate()?;
    let run = s.run.as_deref().map(Run::open).transpose()?;
    let spec = match (&s.backbone, &run) {
        (Some(name), _) => BackboneSpec::resolve(name, &rt.backbones)?,
        (None, Some(run)) => run.backbone()?,
        // validate() refuses this; kept as an error, not a panic.
        (None, None) => return Err(TlError::invalid("tl audit needs --backbone or --run")),
    };
    let mut warnings: Vec<String> = spec.weights_warning().into_iter().collect();
    let mut listed = list(s, run.as_ref())?;
    let (mut ex, cache) = extract(rt, s, &spec, &listed)?;
    warnings.extend(ex.cache_warning.clone());
    if let Some(run) = &run {
        warnings.extend(sides_from_run(run, &mut listed, &ex.keys)?);
    }
    let mut notes = vec![extraction_line(&ex)];
    notes.extend(
        ex.corrupt
            .iter()
            .map(|c| format!("warning: damaged cache entry recomputed: {c}")),
    );
    let t_analyse = Instant::now();
    let r = readable(&listed, &mut ex, &cache)?;
    if r.rows.len() < 2 {
        return Err(TlError::corrupt(
            &s.data,
            format!("{} readable image(s): nothing to compare", r.rows.len()),
        ));
    }
    let images = Images {
        features: r.features.shallow_clone(),
        labels: &r.labels,
        keys: &r.keys,
        sides: &r.sides,
        classes: &listed.dataset.classes,
    };
    let findings = audit::audit(images, &s.config, rt.device, rt.progress)?;
    let mut report = build_report(s, &spec, &listed, &r, &findings);
    report.extraction = ex.stats.clone();
    report.warnings.extend(warnings);
    report.notes = notes;
    report.timing_seconds.extract = ex.stats.seconds;
    report.timing_seconds.analyse = t_analyse.elapsed().as_secs_f64();
    if let Some(path) = &s.review {
        report.review = Some(write_review(path, &s.data, &report)?);
    }
    if let Some(path) = &s.html {
        let page = crate::html::audit::page(&report_page(&report))?;
        crate::util::write_atomic(path, page.as_bytes())?;
        report.html = Some(FilePath(path.clone()));
    }
    report.timing_seconds.total = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The ranked lists with paths in place of rows.
type Lists = (Vec<NearDuplicate>, Vec<LabelIssue>, Vec<Outlier>);

fn ranked_lists(f: &Findings, classes: &[String], path: &dyn Fn(usize) -> FilePath) -> Lists {
    let near = f.near_pairs.iter().map(|p| NearDuplicate {
        a: path(p.a),
        b: path(p.b),
        similarity: p.similarity,
        leak: p.leak,
    });
    let labels = f.label_issues.iter().map(|i| LabelIssue {
        path: path(i.row),
        given: classes[i.given].clone(),
        suggested: classes[i.suggested].clone(),
        score: i.score,
    });
    let outliers = f.outliers.iter().map(|&(i, score)| Outlier {
        path: path(i),
        score,
    });
    (near.collect(), labels.collect(), outliers.collect())
}

fn build_report(
    s: &AuditSettings,
    spec: &BackboneSpec,
    listed: &Listed,
    r: &Readable,
    f: &Findings,
) -> AuditReport {
    let classes = &listed.dataset.classes;
    let path = |row: usize| FilePath(listed.samples[r.rows[row]].path.clone());
    let group = |g: &Vec<usize>| g.iter().map(|&i| path(i)).collect::<Vec<_>>();
    let on = |g: &Vec<usize>, side| g.iter().any(|&i| r.sides[i] == Some(side));
    let leaks_exact = f
        .exact_groups
        .iter()
        .filter(|g| on(g, Side::Train) && on(g, Side::Val));
    let (near_duplicates, label_issues, outliers) = ranked_lists(f, classes, &path);
    let oos = out_of_sample_report(f, r, classes, &listed.samples);
    AuditReport {
        data: FilePath(s.data.clone()),
        backbone: spec.name.clone(),
        images: listed.samples.len(),
        classes: classes.clone(),
        class_counts: class_counts(classes, &r.labels),
        unreadable: r.unreadable.clone(),
        exact_duplicates: f.exact_groups.iter().map(group).collect(),
        exact_duplicate_leaks: leaks_exact.map(group).collect(),
        near_duplicates,
        label_issues,
        outliers,
        imbalance: imbalance(classes, &r.labels),
        out_of_sample_accuracy: oos.as_ref().map(|c| c.accuracy),
        confused_pairs: oos
            .map(|c| c.confused_pairs.into_iter().take(10).collect())
            .unwrap_or_default(),
        used: AuditUsed {
            near_duplicate: s.config.near_duplicate,
            folds: f.folds,
            neighbors: f.method,
            outlier_neighbors: s.config.outlier_neighbors,
            outlier_cutoff: f.outlier_cutoff,
            split: listed.split.clone(),
        },
        review: None,
        html: None,
        extraction: ExtractStats::default(),
        timing_seconds: AuditTiming {
            extract: 0.0,
            neighbors: f.neighbors_seconds,
            labels: f.labels_seconds,
            analyse: 0.0,
            total: 0.0,
        },
        warnings: Vec::new(),
        notes: Vec::new(),
        show: s.show,
    }
}

fn out_of_sample_report(
    f: &Findings,
    r: &Readable,
    classes: &[String],
    samples: &[Sample],
) -> Option<ClassificationReport> {
    if f.probabilities.is_empty() || f.probabilities.iter().any(|p| p.len() != classes.len()) {
        return None;
    }
    let paths: Vec<PathBuf> = r.rows.iter().map(|&i| samples[i].path.clone()).collect();
    Some(ClassificationReport::compute(
        &f.probabilities,
        &r.labels,
        &paths,
        classes,
        0,
    ))
}

/// The review rows of this audit's findings, in report order.
pub fn review_rows(report: &AuditReport, data: &Path) -> Vec<ReviewRow> {
    let rel = |p: &FilePath| review::review_path(data, p);
    let row = |path: &FilePath, finding: &str, related: String, note: String| ReviewRow {
        path: rel(path),
        finding: finding.into(),
        related,
        given: String::new(),
        suggested: String::new(),
        note,
        decision: Decision::Undecided,
        line: 0,
    };
    let mut rows = Vec::new();
    for u in &report.unreadable {
        rows.push(row(&u.path, "unreadable", String::new(), u.reason.clone()));
    }
    for g in &report.exact_duplicates {
        for copy in &g[1..] {
            rows.push(row(
                copy,
                "exact_duplicate",
                rel(&g[0]),
                format!("{} copies", g.len()),
            ));
        }
    }
    for p in &report.near_duplicates {
        let note = format!(
            "similarity {:.4}{}",
            p.similarity,
            if p.leak { ", leak" } else { "" }
        );
        rows.push(row(&p.b, "near_duplicate", rel(&p.a), note));
    }
    for i in &report.label_issues {
        let mut r = row(
            &i.path,
            "label_issue",
            String::new(),
            format!("score {:.4}", i.score),
        );
        r.given = i.given.clone();
        r.suggested = i.suggested.clone();
        rows.push(r);
    }
    for o in &report.outliers {
        rows.push(row(
            &o.path,
            "outlier",
            String::new(),
            format!("score {:.4}", o.score),
        ));
    }
    rows
}

fn write_review(path: &Path, data: &Path, report: &AuditReport) -> Result<ReviewSummary> {
    let mut review: Review = review::read_if_present(path)?;
    // A bad decision in the file is reported now, not when training.
    review.decisions(path, &report.classes)?;
    let added = review.merge(review_rows(report, data));
    crate::util::write_atomic(path, &review.to_csv()?)?;
    Ok(ReviewSummary {
        file: FilePath(path.to_path_buf()),
        rows: review.rows.len(),
        added,
        decided: review
            .rows
            .iter()
            .filter(|r| r.decision != Decision::Undecided)
            .count(),
    })
}

fn report_page(report: &AuditReport) -> crate::html::audit::AuditPage<'_> {
    crate::html::audit::AuditPage {
        title: format!("tl audit: {}", report.data),
        summary: report.render_text(),
        unreadable: report
            .unreadable
            .iter()
            .map(|u| (u.path.0.as_path(), u.reason.as_str()))
            .collect(),
        exact: report
            .exact_duplicates
            .iter()
            .map(|g| g.iter().map(|p| p.0.as_path()).collect())
            .collect(),
        near: report
            .near_duplicates
            .iter()
            .map(|p| {
                (
                    p.a.0.as_path(),
                    p.b.0.as_path(),
                    format!(
                        "similarity {:.4}{}",
                        p.similarity,
                        if p.leak {
                            " — LEAK (training / validation)"
                        } else {
                            ""
                        }
                    ),
                )
            })
            .collect(),
        labels: report
            .label_issues
            .iter()
            .map(|i| {
                (
                    i.path.0.as_path(),
                    format!(
                        "given {}, suggested {} (score {:.3})",
                        i.given, i.suggested, i.score
                    ),
                )
            })
            .collect(),
        outliers: report
            .outliers
            .iter()
            .map(|o| (o.path.0.as_path(), format!("score {:.3}", o.score)))
            .collect(),
    }
}
