//! The review file: `tl audit --review review.csv` writes one row per finding with an empty
//! `decision`; the user fills in `keep`, `exclude` or `relabel:<class>`; `tl train --review`
//! applies the decisions to the listed files (never touching the files themselves).
//!
//! Format: CSV with a header, columns found by name (a spreadsheet may reorder them):
//! `path,finding,related,given,suggested,note,decision`. `path` is relative to the dataset
//! folder given on the command line when the file is inside it (so the review survives
//! moving the folder), as given otherwise. A finding is identified by (path, finding,
//! related): re-running the audit keeps every row already in the file, decisions included,
//! and appends only findings not there yet.
use crate::data::{Dataset, Sample};
use crate::error::{Result, TlError};
use crate::util::FilePath;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

pub const COLUMNS: [&str; 7] = [
    "path",
    "finding",
    "related",
    "given",
    "suggested",
    "note",
    "decision",
];

/// What the user decided about a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Undecided,
    Keep,
    Exclude,
    Relabel(String),
}

impl Decision {
    fn parse(text: &str) -> Option<Decision> {
        let t = text.trim();
        let lower = t.to_ascii_lowercase();
        Some(match lower.as_str() {
            "" => Decision::Undecided,
            "keep" => Decision::Keep,
            "exclude" => Decision::Exclude,
            _ if lower.starts_with("relabel:") && t.len() > 8 => {
                Decision::Relabel(t[8..].trim().to_string())
            }
            _ => return None,
        })
    }

    fn text(&self) -> String {
        match self {
            Decision::Undecided => String::new(),
            Decision::Keep => "keep".into(),
            Decision::Exclude => "exclude".into(),
            Decision::Relabel(c) => format!("relabel:{c}"),
        }
    }
}

/// One finding about one file.
#[derive(Clone, Debug, PartialEq)]
pub struct ReviewRow {
    pub path: String,
    pub finding: String,
    /// The other file of a duplicate pair.
    pub related: String,
    pub given: String,
    pub suggested: String,
    pub note: String,
    pub decision: Decision,
    /// Line in the file it was read from (0: new).
    pub line: usize,
}

impl ReviewRow {
    fn identity(&self) -> (&str, &str, &str) {
        (&self.path, &self.finding, &self.related)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Review {
    pub rows: Vec<ReviewRow>,
}

/// A file's path as the review writes it: relative to `data` when inside it.
pub fn review_path(data: &Path, path: &Path) -> String {
    path.strip_prefix(data)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

impl Review {
    /// The rows of an existing review file.
    pub fn read(path: &Path) -> Result<Review> {
        let bytes = std::fs::read(path)
            .map_err(|e| TlError::corrupt(path, format!("cannot be read as a review file: {e}")))?;
        Review::parse(path, &bytes)
    }

    /// The rows of a review file's bytes (`path` names it in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Review> {
        let bad = |why: String| TlError::corrupt(path, why);
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
        let header = reader
            .headers()
            .map_err(|e| bad(format!("has no CSV header: {e}")))?
            .clone();
        let column = |name: &str| header.iter().position(|h| h.trim() == name);
        let (Some(path_col), Some(decision_col)) = (column("path"), column("decision")) else {
            return Err(bad(format!(
                "is not a review file: its header must name the columns {} (it has: {})",
                COLUMNS.join(","),
                header.iter().collect::<Vec<_>>().join(",")
            )));
        };
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| bad(format!("is not valid CSV: {e}")))?;
            let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
            let field = |name: &str| {
                column(name)
                    .and_then(|c| record.get(c))
                    .unwrap_or("")
                    .to_string()
            };
            let decision_text = record.get(decision_col).unwrap_or("");
            let decision = Decision::parse(decision_text).ok_or_else(|| {
                bad(format!(
                    "line {line}: decision {decision_text:?} is not one of keep, exclude, relabel:<class> (or empty)"
                ))
            })?;
            let file = record.get(path_col).unwrap_or("").trim().to_string();
            if file.is_empty() {
                return Err(bad(format!("line {line}: the path is empty")));
            }
            rows.push(ReviewRow {
                path: file,
                finding: field("finding"),
                related: field("related"),
                given: field("given"),
                suggested: field("suggested"),
                note: field("note"),
                decision,
                line,
            });
        }
        Ok(Review { rows })
    }

    /// The rows of `self` (decisions kept), then the findings of `fresh` not already in it.
    /// Returns how many were added.
    pub fn merge(&mut self, fresh: Vec<ReviewRow>) -> usize {
        let known: HashSet<(String, String, String)> = self
            .rows
            .iter()
            .map(|r| {
                let (a, b, c) = r.identity();
                (a.to_string(), b.to_string(), c.to_string())
            })
            .collect();
        let before = self.rows.len();
        for row in fresh {
            let (a, b, c) = row.identity();
            if !known.contains(&(a.to_string(), b.to_string(), c.to_string())) {
                self.rows.push(row);
            }
        }
        self.rows.len() - before
    }

    /// The file's bytes (written by the caller: atomically).
    pub fn to_csv(&self) -> Result<Vec<u8>> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let err = |e: csv::Error| TlError::invalid(format!("writing the review: {e}"));
        w.write_record(COLUMNS).map_err(err)?;
        for r in &self.rows {
            w.write_record([
                r.path.as_str(),
                &r.finding,
                &r.related,
                &r.given,
                &r.suggested,
                &r.note,
                &r.decision.text(),
            ])
            .map_err(err)?;
        }
        w.into_inner()
            .map_err(|e| TlError::invalid(format!("writing the review: {e}")))
    }

    /// One decision per path (rows without one left out); two different decisions about one
    /// file, or a class that does not exist, are errors naming the lines.
    pub fn decisions(
        &self,
        file: &Path,
        classes: &[String],
    ) -> Result<BTreeMap<String, (Decision, usize)>> {
        let mut out: BTreeMap<String, (Decision, usize)> = BTreeMap::new();
        for r in &self.rows {
            if r.decision == Decision::Undecided {
                continue;
            }
            if let Decision::Relabel(c) = &r.decision {
                if !classes.contains(c) {
                    return Err(TlError::corrupt(
                        file,
                        format!(
                            "line {}: relabel:{c} names no class of the dataset (classes: {})",
                            r.line,
                            classes.join(", ")
                        ),
                    ));
                }
            }
            match out.get(&r.path) {
                Some((d, line)) if *d != r.decision => {
                    return Err(TlError::corrupt(
                        file,
                        format!(
                            "lines {line} and {} decide differently about {} ({} vs {})",
                            r.line,
                            r.path,
                            d.text(),
                            r.decision.text()
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    out.insert(r.path.clone(), (r.decision.clone(), r.line));
                }
            }
        }
        Ok(out)
    }
}

/// A file trained under another class by the review.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Relabelled {
    pub path: FilePath,
    pub from: String,
    pub to: String,
}

/// What a review did to a dataset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub file: FilePath,
    pub excluded: Vec<FilePath>,
    pub relabelled: Vec<Relabelled>,
    /// Files kept as they were by a `keep` decision.
    pub kept: usize,
    /// Decided paths that are not in the dataset (moved or deleted since the audit).
    pub not_found: Vec<String>,
}

/// Apply the decisions of `review` (read from `file`) to the dataset listed from `data`.
pub fn apply(dataset: &mut Dataset, data: &Path, review: &Review, file: &Path) -> Result<Applied> {
    let decisions = review.decisions(file, &dataset.classes)?;
    let mut applied = Applied {
        file: FilePath(file.to_path_buf()),
        ..Applied::default()
    };
    let mut used = HashSet::new();
    let classes = dataset.classes.clone();
    let mut visit = |samples: &mut Vec<Sample>| {
        samples.retain_mut(|s| {
            let key = review_path(data, &s.path);
            let Some((decision, _)) = decisions.get(&key) else {
                return true;
            };
            used.insert(key);
            match decision {
                Decision::Exclude => {
                    applied.excluded.push(FilePath(s.path.clone()));
                    false
                }
                Decision::Relabel(to) => {
                    let to_label = classes.iter().position(|c| c == to).unwrap_or(s.label);
                    if to_label != s.label {
                        applied.relabelled.push(Relabelled {
                            path: FilePath(s.path.clone()),
                            from: classes[s.label].clone(),
                            to: to.clone(),
                        });
                        s.label = to_label;
                    }
                    true
                }
                _ => {
                    applied.kept += 1;
                    true
                }
            }
        });
    };
    visit(&mut dataset.train);
    visit(&mut dataset.val);
    applied.not_found = decisions
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    if used.is_empty() && !decisions.is_empty() {
        return Err(TlError::corrupt(
            file,
            format!(
                "none of its {} decided files is in {} (e.g. {}): is it the review of another dataset?",
                decisions.len(),
                data.display(),
                decisions.keys().next().map(String::as_str).unwrap_or("")
            ),
        ));
    }
    Ok(applied)
}

/// `path` when it exists and is a review file, else an empty review.
pub fn read_if_present(path: &Path) -> Result<Review> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Review::read(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Review::default()),
        Err(e) => Err(TlError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_parse_table() {
        let cases = [
            ("", Some(Decision::Undecided)),
            (" keep ", Some(Decision::Keep)),
            ("EXCLUDE", Some(Decision::Exclude)),
            ("relabel:dog", Some(Decision::Relabel("dog".into()))),
            (
                "Relabel: Great Pyrenees",
                Some(Decision::Relabel("Great Pyrenees".into())),
            ),
            ("relabel:", None),
            ("delete", None),
        ];
        for (text, want) in cases {
            assert_eq!(Decision::parse(text), want, "{text:?}");
        }
    }

    #[test]
    fn merge_keeps_decisions_and_appends_new_findings() {
        let row = |path: &str, finding: &str, decision: Decision| ReviewRow {
            path: path.into(),
            finding: finding.into(),
            related: String::new(),
            given: String::new(),
            suggested: String::new(),
            note: String::new(),
            decision,
            line: 0,
        };
        let mut old = Review {
            rows: vec![row("a.jpg", "outlier", Decision::Exclude)],
        };
        let added = old.merge(vec![
            row("a.jpg", "outlier", Decision::Undecided),
            row("b.jpg", "label_issue", Decision::Undecided),
        ]);
        assert_eq!(added, 1);
        assert_eq!(old.rows[0].decision, Decision::Exclude);
        assert_eq!(old.rows[1].path, "b.jpg");
    }
}
