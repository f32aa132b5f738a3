//! A report page from typed data: headline figures, dataset, learning curves, confusion
//! matrix, per-class figures, the worst-classified images, extra images and the config.
use super::charts::{self, Curve, ScoreHistogram};
use super::markup::{escape, thumbnail};
use crate::error::Result;
use crate::eval::calibration::Calibration;
use crate::eval::{ClassCount, ClassificationReport};
use crate::head::EpochMetrics;
use std::fmt::Write;
use std::path::PathBuf;

/// An image shown as it is (dreams, attacks: `--include DIR`).
#[derive(Clone, Debug)]
pub struct GalleryImage {
    pub caption: String,
    pub path: PathBuf,
}

/// Everything a report page shows; empty parts are left out.
#[derive(Clone, Debug, Default)]
pub struct ReportPage<'a> {
    pub title: String,
    /// Label and value rows under the headline (run, backbone, data, …).
    pub facts: Vec<(String, String)>,
    pub classes: Vec<ClassCount>,
    /// Files that could not be used: (path, why).
    pub skipped: Vec<(String, String)>,
    pub ignored: usize,
    pub curves: &'a [EpochMetrics],
    /// Validation (train) or evaluation (eval) figures.
    pub results: Option<&'a ClassificationReport>,
    /// What `results` were measured on, e.g. "validation (650 images)".
    pub results_on: String,
    pub gallery: Vec<GalleryImage>,
    /// Pretty JSON of the run's config.json.
    pub config: Option<String>,
    /// Probabilities before and after temperature scaling, and the temperature.
    pub calibration: Option<(&'a Calibration, &'a Calibration, f64)>,
    /// Unknown scores against the threshold, and a sentence about them.
    pub unknown: Option<(ScoreHistogram, String)>,
    /// Heat maps of the worst-classified images, in `results.top_losses` order (None where
    /// an image could not be mapped; empty: none made).
    pub heat: Vec<Option<HeatPair>>,
    /// More tables after the summary (e.g. `tl tune`'s trials).
    pub tables: Vec<Table>,
}

/// A titled table of text cells; `marked` rows are shown bold.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub title: String,
    /// A sentence above the table.
    pub note: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub marked: Vec<usize>,
}

impl Table {
    fn render(&self) -> String {
        let mut s = format!(
            "<h2>{}</h2>\n<p>{}</p>\n<table>\n<tr>",
            escape(&self.title),
            escape(&self.note)
        );
        for h in &self.header {
            let _ = write!(s, "<th class=\"l\">{}</th>", escape(h));
        }
        s += "</tr>\n";
        for (i, row) in self.rows.iter().enumerate() {
            let (open, close) = if self.marked.contains(&i) {
                ("<b>", "</b>")
            } else {
                ("", "")
            };
            s += "<tr>";
            for cell in row {
                let _ = write!(s, "<td class=\"l\">{open}{}{close}</td>", escape(cell));
            }
            s += "</tr>\n";
        }
        s + "</table>\n"
    }
}

/// Where the network looked in one image: overlays for the true and the predicted class.
#[derive(Clone, Debug)]
pub struct HeatPair {
    pub true_class: image::RgbImage,
    pub predicted: image::RgbImage,
    /// "CAM" or "Grad-CAM".
    pub method: String,
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}\
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .6em;border:1px solid #ddd;text-align:right}\
th{background:#f5f5f5}td.l,th.l{text-align:left}.headline{display:flex;gap:1.5em;flex-wrap:wrap}\
.figure{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}.figure .v{font-size:1.8em;font-weight:600}\
.figure .k{color:#666;font-size:.9em}.charts{display:flex;flex-wrap:wrap;gap:1em}\
.grid{display:flex;flex-wrap:wrap;gap:.8em}.card{width:180px;font-size:.85em}.card img{max-width:180px;max-height:180px;display:block}\
.set{display:flex;gap:.4em;padding:.3em;border:1px solid #eee;border-radius:6px}.bad{color:#b00}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}\
table.cm td{min-width:2em;text-align:center}table.cm th{font-weight:normal;font-size:.85em}";

impl ReportPage<'_> {
    /// The whole page as one HTML document.
    pub fn render(&self) -> Result<String> {
        let mut body = format!("<h1>{}</h1>\n", escape(&self.title));
        body += &self.headline();
        body += &self.facts_table();
        for t in &self.tables {
            body += &t.render();
        }
        body += &self.dataset();
        body += &self.curves_section()?;
        body += &self.trust_section()?;
        if let Some(r) = self.results {
            body += &confusion(r);
            body += &per_class(r);
            body += &worst_images(r, &self.heat);
        }
        body += &self.gallery_section();
        if let Some(config) = &self.config {
            let _ = write!(body, "<h2>Config</h2>\n<pre>{}</pre>\n", escape(config));
        }
        Ok(document(&self.title, &body))
    }

    fn headline(&self) -> String {
        let Some(r) = self.results else {
            return String::new();
        };
        let figure = |id: &str, value: String, label: &str| {
            format!("<div class=\"figure\"><div class=\"v\" id=\"{id}\">{value}</div><div class=\"k\">{label}</div></div>")
        };
        format!(
            "<div class=\"headline\">{}{}{}{}</div>\n",
            figure(
                "accuracy",
                format!("{:.2}%", 100.0 * r.accuracy),
                &format!("accuracy, {}", escape(&self.results_on))
            ),
            figure(
                "mean-class-accuracy",
                format!("{:.2}%", 100.0 * r.mean_class_accuracy),
                "mean per-class accuracy"
            ),
            figure("loss", format!("{:.4}", r.loss), "cross-entropy loss"),
            figure("images", r.images.to_string(), "images"),
        )
    }

    fn facts_table(&self) -> String {
        if self.facts.is_empty() {
            return String::new();
        }
        let mut s = String::from("<h2>Summary</h2>\n<table>\n");
        for (k, v) in &self.facts {
            let _ = writeln!(
                s,
                "<tr><th class=\"l\">{}</th><td class=\"l\">{}</td></tr>",
                escape(k),
                escape(v)
            );
        }
        s + "</table>\n"
    }

    fn dataset(&self) -> String {
        if self.classes.is_empty() && self.skipped.is_empty() {
            return String::new();
        }
        let mut s = format!("<h2>Dataset</h2>\n<p>{} classes.</p>\n", self.classes.len());
        let show = |n: Option<usize>| n.map(|n| n.to_string()).unwrap_or_else(|| "–".into());
        if !self.classes.is_empty() {
            s += "<table><tr><th class=\"l\">class</th><th>train</th><th>validation</th></tr>\n";
            for c in &self.classes {
                let _ = writeln!(
                    s,
                    "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&c.class),
                    show(c.train),
                    show(c.val)
                );
            }
            s += "</table>\n";
        }
        if self.skipped.is_empty() {
            s += "<p>No file was skipped.</p>\n";
        } else {
            let _ = writeln!(s, "<p class=\"bad\">{} file(s) skipped:</p>\n<table><tr><th class=\"l\">file</th><th class=\"l\">why</th></tr>", self.skipped.len());
            for (path, why) in &self.skipped {
                let _ = writeln!(
                    s,
                    "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                    escape(path),
                    escape(why)
                );
            }
            s += "</table>\n";
        }
        if self.ignored > 0 {
            let _ = writeln!(s, "<p>{} file(s) ignored (not images, or outside the layout; listed in report.json).</p>", self.ignored);
        }
        s
    }

    fn curves_section(&self) -> Result<String> {
        if self.curves.is_empty() {
            return Ok(String::new());
        }
        Ok(format!(
            "<h2>Learning curves</h2>\n<div class=\"charts\">{}{}</div>\n",
            charts::learning_curve(self.curves, Curve::Loss)?,
            charts::learning_curve(self.curves, Curve::Accuracy)?
        ))
    }

    /// Calibration and unknown images: the reliability diagram and the score histogram.
    fn trust_section(&self) -> Result<String> {
        if self.calibration.is_none() && self.unknown.is_none() {
            return Ok(String::new());
        }
        let mut s = String::from("<h2>Calibration and unknown images</h2>\n");
        if let Some((before, after, t)) = self.calibration {
            let _ = writeln!(
                s,
                "<p>Temperature {t:.3}: expected calibration error (15 bins) {:.4} → {:.4}, negative log-likelihood {:.4} → {:.4}, Brier score {:.4} → {:.4}.</p>",
                before.ece, after.ece, before.nll, after.nll, before.brier, after.brier
            );
        }
        if let Some((_, sentence)) = &self.unknown {
            let _ = writeln!(s, "<p>{}</p>", escape(sentence));
        }
        s += "<div class=\"charts\">";
        if let Some((before, after, _)) = self.calibration {
            s += &charts::reliability_diagram(before, after)?;
        }
        if let Some((h, _)) = &self.unknown {
            s += &charts::score_histogram(h)?;
        }
        Ok(s + "</div>\n")
    }

    fn gallery_section(&self) -> String {
        if self.gallery.is_empty() {
            return String::new();
        }
        let mut s = String::from("<h2>Images</h2>\n<div class=\"grid\">\n");
        for g in &self.gallery {
            s += &card(&g.path, 360, &escape(&g.caption));
        }
        s + "</div>\n"
    }
}

/// An image (or why it could not be shown) with a caption.
pub(super) fn card(path: &std::path::Path, size: u32, caption: &str) -> String {
    let picture = match thumbnail(path, size) {
        Ok(uri) => format!(
            "<img src=\"{uri}\" alt=\"{}\">",
            escape(&path.display().to_string())
        ),
        Err(why) => format!(
            "<div class=\"bad\">not shown: {}</div>",
            escape(&why.to_string())
        ),
    };
    format!("<div class=\"card\">{picture}<div>{caption}</div></div>\n")
}

/// Rows: true class; columns: predicted; each cell shaded by its share of the row.
fn confusion(r: &ClassificationReport) -> String {
    if r.per_class.len() > crate::eval::metrics::FULL_CONFUSION_CLASSES || r.confusion.is_empty() {
        return confused_pairs(r);
    }
    let names: Vec<&str> = r.per_class.iter().map(|c| c.class.as_str()).collect();
    let mut s = String::from("<h2>Confusion matrix</h2>\n<p>Rows: true class; columns: predicted class.</p>\n<table class=\"cm\"><tr><th></th>");
    for n in &names {
        let _ = write!(s, "<th>{}</th>", escape(n));
    }
    s += "</tr>\n";
    for (i, row) in r.confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        let _ = write!(
            s,
            "<tr><th class=\"l\">{}</th>",
            escape(names.get(i).copied().unwrap_or("?"))
        );
        for (j, &n) in row.iter().enumerate() {
            let share = if total > 0 {
                n as f64 / total as f64
            } else {
                0.0
            };
            let (rgb, ink) = if i == j {
                ("31,119,180", share > 0.55)
            } else {
                ("214,39,40", share > 0.55)
            };
            let _ = write!(
                s,
                "<td style=\"background:rgba({rgb},{share:.3}){}\">{n}</td>",
                if ink { ";color:#fff" } else { "" }
            );
        }
        s += "</tr>\n";
    }
    s + "</table>\n"
}

/// Many classes: the most confused pairs instead of a matrix no one can read.
fn confused_pairs(r: &ClassificationReport) -> String {
    let mut s = format!(
        "<h2>Most confused pairs</h2>\n<p>{} classes: the pairs with the most mistakes (of {} with any).</p>\n<table><tr><th class=\"l\">true</th><th class=\"l\">predicted</th><th>images</th></tr>\n",
        r.per_class.len(),
        r.confused_pairs.len()
    );
    for p in r.confused_pairs.iter().take(100) {
        let _ = writeln!(
            s,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td></tr>",
            escape(&p.true_class),
            escape(&p.predicted),
            p.count
        );
    }
    s + "</table>\n"
}

fn per_class(r: &ClassificationReport) -> String {
    let mut s = String::from("<h2>Per class</h2>\n<table><tr><th class=\"l\">class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>\n");
    for c in &r.per_class {
        let f1 = if c.precision + c.recall > 0.0 {
            2.0 * c.precision * c.recall / (c.precision + c.recall)
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "<tr><td class=\"l\">{}</td><td>{:.3}</td><td>{:.3}</td><td>{f1:.3}</td><td>{}</td></tr>",
            escape(&c.class),
            c.precision,
            c.recall,
            c.support
        );
    }
    s + "</table>\n"
}

fn worst_images(r: &ClassificationReport, heat: &[Option<HeatPair>]) -> String {
    if r.top_losses.is_empty() {
        return String::new();
    }
    let intro = match heat.iter().flatten().next() {
        Some(h) => format!(
            "Highest loss first; beside each photo, where the network looked ({}) for the true class and for the predicted one.",
            h.method
        ),
        None => "Highest loss first.".into(),
    };
    let mut s = format!("<h2>Worst-classified images</h2>\n<p>{intro}</p>\n<div class=\"grid\">\n");
    for (i, t) in r.top_losses.iter().enumerate() {
        let caption = format!(
            "<b>true:</b> {} ({:.3})<br><b>predicted:</b> {} ({:.3})<br><span title=\"{path}\">{name}</span>",
            escape(&t.true_class),
            t.prob_true,
            escape(&t.predicted),
            t.prob_predicted,
            path = escape(&t.path.to_string()),
            name = escape(&t.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
        );
        let mapped = matches!(heat.get(i), Some(Some(_)));
        if mapped {
            // The photo and its two maps stay together on one line.
            s += "<div class=\"set\">";
        }
        s += &card(t.path.as_path(), 180, &caption);
        if let Some(Some(h)) = heat.get(i) {
            for (img, what, class) in [
                (&h.true_class, "true", &t.true_class),
                (&h.predicted, "predicted", &t.predicted),
            ] {
                let caption = format!("<b>{what}:</b> {}", escape(class));
                s += &image_card(img, 180, &caption);
            }
        }
        if mapped {
            s += "</div>\n";
        }
    }
    s + "</div>\n"
}

/// An image in memory with a caption.
fn image_card(img: &image::RgbImage, size: u32, caption: &str) -> String {
    let picture = match super::markup::image_uri(img, size) {
        Ok(uri) => format!("<img src=\"{uri}\" alt=\"heat map\">"),
        Err(why) => format!(
            "<div class=\"bad\">not shown: {}</div>",
            escape(&why.to_string())
        ),
    };
    format!("<div class=\"card\">{picture}<div>{caption}</div></div>\n")
}

/// A page of one table and its charts (`tl compare`).
#[derive(Clone, Debug, Default)]
pub struct TablePage {
    pub title: String,
    pub intro: Vec<String>,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Inline SVG charts.
    pub charts: Vec<String>,
}

impl TablePage {
    pub fn render(&self) -> String {
        let mut body = format!("<h1>{}</h1>\n", escape(&self.title));
        for p in &self.intro {
            let _ = writeln!(body, "<p>{}</p>", escape(p));
        }
        body += "<table id=\"results\"><tr>";
        for (i, h) in self.headers.iter().enumerate() {
            let _ = write!(
                body,
                "<th{}>{}</th>",
                if i == 0 { " class=\"l\"" } else { "" },
                escape(h)
            );
        }
        body += "</tr>\n";
        for row in &self.rows {
            body += "<tr>";
            for (i, cell) in row.iter().enumerate() {
                let _ = write!(
                    body,
                    "<td{}>{}</td>",
                    if i == 0 { " class=\"l\"" } else { "" },
                    escape(cell)
                );
            }
            body += "</tr>\n";
        }
        body += "</table>\n<div class=\"charts\">";
        for chart in &self.charts {
            body += chart;
        }
        body += "</div>\n";
        document(&self.title, &body)
    }
}

pub(super) fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n",
        escape(title)
    )
}
