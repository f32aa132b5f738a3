//! The audit page: the summary, then each kind of finding as thumbnails, ranked, with pairs
//! side by side. One offline file like report.html.
use super::markup::escape;
use super::page::{card, document};
use crate::error::Result;
use std::fmt::Write;
use std::path::Path;

/// Thumbnails per section (each is decoded and inlined: a page stays a few MB).
pub const PER_SECTION: usize = 60;

/// What the page shows; paths with captions, most suspicious first.
pub struct AuditPage<'a> {
    pub title: String,
    pub summary: String,
    pub unreadable: Vec<(&'a Path, &'a str)>,
    pub exact: Vec<Vec<&'a Path>>,
    pub near: Vec<(&'a Path, &'a Path, String)>,
    pub labels: Vec<(&'a Path, String)>,
    pub outliers: Vec<(&'a Path, String)>,
}

fn name(p: &Path) -> String {
    escape(&p.display().to_string())
}

fn section(title: &str, total: usize) -> String {
    let shown = if total > PER_SECTION {
        format!(" (the first {PER_SECTION}; the review file and --json list all)")
    } else {
        String::new()
    };
    format!("<h2>{} — {total}{shown}</h2>\n", escape(title))
}

pub fn page(p: &AuditPage) -> Result<String> {
    let mut body = format!(
        "<h1>{}</h1>\n<pre>{}</pre>\n",
        escape(&p.title),
        escape(&p.summary)
    );
    if !p.unreadable.is_empty() {
        body += &section("Unreadable files", p.unreadable.len());
        body += "<table>\n";
        for (path, why) in p.unreadable.iter().take(PER_SECTION) {
            let _ = writeln!(
                body,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                name(path),
                escape(why)
            );
        }
        body += "</table>\n";
    }
    if !p.exact.is_empty() {
        body += &section("Exact duplicates (same bytes)", p.exact.len());
        for group in p.exact.iter().take(PER_SECTION) {
            body += "<div class=\"grid\">\n";
            for path in group {
                body += &card(path, 180, &name(path));
            }
            body += "</div><hr>\n";
        }
    }
    if !p.near.is_empty() {
        body += &section("Near-duplicates", p.near.len());
        for (a, b, caption) in p.near.iter().take(PER_SECTION) {
            let _ = writeln!(
                body,
                "<div class=\"grid\">{}{}<div class=\"card\">{}</div></div><hr>",
                card(a, 180, &name(a)),
                card(b, 180, &name(b)),
                escape(caption)
            );
        }
    }
    for (title, list) in [
        ("Likely label errors", &p.labels),
        ("Outliers", &p.outliers),
    ] {
        if list.is_empty() {
            continue;
        }
        body += &section(title, list.len());
        body += "<div class=\"grid\">\n";
        for (path, caption) in list.iter().take(PER_SECTION) {
            body += &card(path, 180, &format!("{}<br>{}", escape(caption), name(path)));
        }
        body += "</div>\n";
    }
    Ok(document(&p.title, &body))
}
