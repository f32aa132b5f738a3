//! Charts as inline SVG, drawn with plotters (no fonts or scripts needed to view them).
use crate::error::{Result, TlError};
use crate::eval::calibration::Calibration;
use crate::head::EpochMetrics;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const WIDTH: u32 = 520;
const HEIGHT: u32 = 300;
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const BAR: RGBColor = RGBColor(44, 160, 44);

fn chart_error<E: std::fmt::Debug>(e: E) -> TlError {
    TlError::invalid(format!("drawing a chart: {e:?}"))
}

/// Which figure of an epoch a learning curve shows.
#[derive(Clone, Copy)]
pub enum Curve {
    Loss,
    Accuracy,
}

/// (epoch, train, validation) points of a curve, and the y range to show.
type CurvePoints = (Vec<(f64, Option<f64>, Option<f64>)>, f64, f64);

fn curve_points(metrics: &[EpochMetrics], curve: Curve) -> Option<CurvePoints> {
    let pick = |m: &EpochMetrics| match curve {
        Curve::Loss => (Some(m.train_loss), m.val_loss),
        Curve::Accuracy => (Some(m.train_accuracy), m.val_accuracy),
    };
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    let points: Vec<(f64, Option<f64>, Option<f64>)> = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (t, v) = pick(m);
            ((i + 1) as f64, finite(t), finite(v))
        })
        .collect();
    let values = points.iter().flat_map(|(_, t, v)| [*t, *v]).flatten();
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if points.is_empty() || lo > hi {
        return None;
    }
    let (y0, y1) = match curve {
        Curve::Accuracy => (lo.clamp(0.0, 1.0) - 0.02, 1.0 + 0.01),
        Curve::Loss => (0.0, hi * 1.05 + 1e-6),
    };
    Some((points, y0, y1))
}

/// Train and validation curves over the epochs of every stage (head, then fine-tuning,
/// numbered on); a dashed line marks where fine-tuning starts.
pub fn learning_curve(metrics: &[EpochMetrics], curve: Curve) -> Result<String> {
    let Some((points, y0, y1)) = curve_points(metrics, curve) else {
        return Ok(String::new());
    };
    let x1 = points.len() as f64 + 0.5;
    let (title, label) = match curve {
        Curve::Loss => ("Loss per epoch", "loss"),
        Curve::Accuracy => ("Accuracy per epoch", "accuracy"),
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0.5..x1, y0..y1)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_labels(points.len().min(10))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("epoch")
            .y_desc(label)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(chart_error)?;
        let tuned_from = metrics.iter().position(|m| m.stage == "finetune");
        if let Some(i) = tuned_from.filter(|&i| i > 0) {
            let x = i as f64 + 0.5;
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x, y0), (x, y1)],
                    4,
                    4,
                    BLACK.mix(0.4).stroke_width(1),
                ))
                .map_err(chart_error)?
                .label("fine-tuning starts")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.4)));
        }
        for (name, color, which) in [("train", TRAIN, 0), ("validation", VAL, 1)] {
            let series: Vec<(f64, f64)> = points
                .iter()
                .filter_map(|(x, t, v)| [*t, *v][which].map(|y| (*x, y)))
                .collect();
            if series.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(series, color.stroke_width(2)))
                .map_err(chart_error)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(match curve {
                Curve::Loss => SeriesLabelPosition::UpperRight,
                Curve::Accuracy => SeriesLabelPosition::LowerRight,
            })
            .draw()
            .map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

/// One bar per label, its value written above it.
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64)]) -> Result<String> {
    let hi = bars.iter().map(|b| b.1).fold(0.0f64, f64::max);
    if bars.is_empty() || !hi.is_finite() {
        return Ok(String::new());
    }
    let width = WIDTH.max(120 * bars.len() as u32);
    let n = bars.len() as f64;
    let top = (hi * 1.15).max(1e-9);
    let centred = |size| {
        ("sans-serif", size)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom))
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..n, 0.0..top)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .light_line_style(WHITE.mix(0.0))
            .y_desc(y_label)
            .draw()
            .map_err(chart_error)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                let x = i as f64;
                Rectangle::new([(x + 0.15, 0.0), (x + 0.85, *v)], BAR.mix(0.8).filled())
            }))
            .map_err(chart_error)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                Text::new(
                    format!("{v:.3}"),
                    (i as f64 + 0.5, *v + top * 0.01),
                    centred(13),
                )
            }))
            .map_err(chart_error)?;
        // Names under the axis (outside the plotting area, so in pixels), centred on their bars.
        let below = ("sans-serif", 13)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (i, (name, _)) in bars.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(name.clone(), (x, y + 8), below.clone()))
                .map_err(chart_error)?;
        }
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

/// The reliability diagram: accuracy against mean confidence per bin of the top
/// probability, before and after temperature scaling; the diagonal is perfect calibration.
pub fn reliability_diagram(before: &Calibration, after: &Calibration) -> Result<String> {
    let points = |c: &Calibration| -> Vec<(f64, f64)> {
        c.bins
            .iter()
            .filter(|b| b.images > 0)
            .map(|b| (b.confidence, b.accuracy))
            .collect()
    };
    let lo = before
        .bins
        .iter()
        .chain(&after.bins)
        .filter(|b| b.images > 0)
        .map(|b| b.lo.min(b.accuracy))
        .fold(1.0f64, f64::min)
        .clamp(0.0, 0.9);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Reliability", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(lo..1.0, lo..1.0)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_desc("confidence (top probability)")
            .y_desc("accuracy")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(chart_error)?;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(lo, lo), (1.0, 1.0)],
                4,
                4,
                BLACK.mix(0.4).stroke_width(1),
            ))
            .map_err(chart_error)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.4)));
        for (name, color, c) in [
            (format!("before (ECE {:.4})", before.ece), TRAIN, before),
            (
                format!("after temperature (ECE {:.4})", after.ece),
                VAL,
                after,
            ),
        ] {
            let pts = points(c);
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(chart_error)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(chart_error)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

/// Counts of unknown scores in equal bins over `[0, max]`: known images, and optionally
/// images of other kinds; a dashed line at the threshold.
#[derive(Clone, Debug)]
pub struct ScoreHistogram {
    pub max: f64,
    pub threshold: f64,
    pub known: Vec<usize>,
    pub known_label: String,
    pub other: Option<(Vec<usize>, String)>,
}

/// The unknown-score histogram (shares of each set, so sets of any size compare).
pub fn score_histogram(h: &ScoreHistogram) -> Result<String> {
    let shares = |counts: &[usize]| -> Vec<f64> {
        let n = counts.iter().sum::<usize>().max(1) as f64;
        counts.iter().map(|&c| c as f64 / n).collect()
    };
    let known = shares(&h.known);
    let other = h.other.as_ref().map(|(c, l)| (shares(c), l.clone()));
    let top = known
        .iter()
        .chain(other.iter().flat_map(|o| o.0.iter()))
        .fold(0.0f64, |a, &b| a.max(b))
        .max(1e-6)
        * 1.1;
    let width = h.max / known.len().max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Unknown score (distance to the training images)",
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..h.max, 0.0..top)
            .map_err(chart_error)?;
        chart
            .configure_mesh()
            .x_desc("1 - cosine similarity to the nearest training image")
            .y_desc("share of images")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(chart_error)?;
        let mut sets = vec![(known, h.known_label.clone(), TRAIN)];
        if let Some((o, label)) = other {
            sets.push((o, label, VAL));
        }
        for (values, label, color) in sets {
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let x = i as f64 * width;
                    Rectangle::new([(x, 0.0), (x + width, v)], color.mix(0.45).filled())
                }))
                .map_err(chart_error)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.mix(0.45).filled())
                });
        }
        chart
            .draw_series(DashedLineSeries::new(
                vec![(h.threshold, 0.0), (h.threshold, top)],
                4,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(chart_error)?
            .label(format!("threshold {:.3}: above it, unknown", h.threshold))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(chart_error)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}
