//! SVG charts of a comparison: one file per figure, one panel per workload, one line
//! per strategy (or peer) through the medians over the rounds, a vertical bar for the
//! min-max, connections on a log axis; a legend under the panels (a strategy has the
//! same colour in every panel).
//!
//! plotters' SVG backend writes text as SVG `<text>` elements, so no font library is
//! needed (the layout estimates text widths). Each chart also carries its data in a
//! `<desc>` element (`work name conns=median ...` per line), so a test, or a reader, can
//! check the drawing against `results.json`.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Shown, View, cpu_shown, idle_shown, tput_shown};
use crate::results::{Metrics, Results};

/// One chart: a figure against connections, a panel per workload.
pub struct ChartSpec {
    /// The file name in the output directory.
    pub file: &'static str,
    /// The title.
    pub title: &'static str,
    /// The y axis.
    pub y_label: &'static str,
    /// The figure of one round.
    pub read: fn(&Metrics) -> Shown,
    /// Only the workload that measured idle memory has it.
    pub idle_only: bool,
}

/// The charts every comparison writes.
pub const CHARTS: [ChartSpec; 4] = [
    ChartSpec {
        file: "throughput.svg",
        title: "Throughput (higher is better)",
        y_label: "requests per second",
        read: tput_shown,
        idle_only: false,
    },
    ChartSpec {
        file: "p99_latency.svg",
        title: "p99 latency (lower is better)",
        y_label: "microseconds",
        read: |m| Shown::Value(m.p99_us),
        idle_only: false,
    },
    ChartSpec {
        file: "cpu_per_request.svg",
        title: "Server CPU per request (lower is better)",
        y_label: "CPU microseconds per request",
        read: cpu_shown,
        idle_only: false,
    },
    ChartSpec {
        file: "memory_per_conn.svg",
        title: "Server memory per idle connection, PSS (lower is better)",
        y_label: "bytes per connection",
        read: idle_shown,
        idle_only: true,
    },
];

/// A point: connections, the median, the min and the max over the rounds.
pub type Point = (f64, f64, f64, f64);

/// A line: a row's name and its points.
pub type Line = (String, Vec<Point>);

/// A panel: its label (the workload) and its lines.
pub type Panel = (String, Vec<Line>);

/// The lines of one panel: `(name, points)`, rows without a measured value left out.
pub fn series(spec: &ChartSpec, view: &View<'_>) -> Vec<Line> {
    view.results
        .targets
        .iter()
        .filter_map(|t| {
            let points: Vec<Point> = view
                .levels()
                .iter()
                .filter_map(|&c| {
                    let a = view.agg(&t.name, c, spec.read)?;
                    let v = a.value()?;
                    Some((c as f64, v, a.stat.min, a.stat.max))
                })
                .filter(|p| p.1.is_finite())
                .collect();
            (!points.is_empty()).then(|| (t.name.clone(), points))
        })
        .collect()
}

/// The workloads a chart has a panel for.
fn panels<'a>(spec: &ChartSpec, results: &'a Results) -> Vec<View<'a>> {
    View::all(results)
        .filter(|v| !spec.idle_only || v.workload.idle_phase)
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The `<desc>` text: one line per workload and series, `work name conns=median ...`.
pub fn data_text(panels: &[Panel]) -> String {
    panels
        .iter()
        .flat_map(|(work, lines)| {
            lines.iter().map(move |(name, pts)| {
                let values: Vec<String> = pts.iter().map(|p| format!("{}={}", p.0, p.1)).collect();
                format!("{work} {name} {}", values.join(" "))
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a panel's values span so much that a linear axis would flatten the
/// smaller ones (an event loop's 500 requests/s beside a pool's 30,000).
fn wants_log(lines: &[Line]) -> bool {
    let vals = lines.iter().flat_map(|(_, p)| p.iter().map(|p| p.1));
    let (lo, hi) = vals.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    lo > 0.0 && hi / lo > 30.0
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    y_label: &str,
    lines: &[Line],
    color_of: &dyn Fn(&str) -> RGBAColor,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let log = wants_log(lines);
    let ty = |v: f64| if log { v.log10() } else { v };
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, 0f64, f64::MAX, 0f64);
    for p in lines.iter().flat_map(|(_, p)| p.iter()) {
        xmin = xmin.min(p.0);
        xmax = xmax.max(p.0);
        ymin = ymin.min(ty(p.2.min(p.1)));
        ymax = ymax.max(ty(p.3.max(p.1)));
    }
    if lines.is_empty() {
        (xmin, xmax, ymin, ymax) = (1.0, 10.0, 0.0, 1.0);
    }
    // A little room on each side of the log axis, and above the highest point.
    let (xmin, xmax) = (xmin / 1.5, xmax * 1.5);
    let (ylo, yhi) = if log {
        (ymin - 0.2, ymax + 0.3)
    } else {
        (0.0, if ymax > 0.0 { ymax * 1.15 } else { 1.0 })
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), ylo..yhi)
        .map_err(|e| err(&e))?;
    let y_desc = if log {
        format!("{y_label} (log scale)")
    } else {
        y_label.to_string()
    };
    let y_fmt = move |y: &f64| short_number(if log { 10f64.powf(*y) } else { *y });
    chart
        .configure_mesh()
        // No fine lines: on a log axis they crowd into grey bands.
        .light_line_style(TRANSPARENT)
        .x_labels(8)
        .y_labels(8)
        .x_desc("connections (log scale)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&y_fmt)
        .draw()
        .map_err(|e| err(&e))?;
    for (name, pts) in lines {
        let color = color_of(name);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, ty(p.1))),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0, ty(p.1)), 4, color.filled())),
            )
            .map_err(|e| err(&e))?;
        chart
            .draw_series(pts.iter().filter(|p| p.3 > p.2).map(|p| {
                PathElement::new(vec![(p.0, ty(p.2)), (p.0, ty(p.3))], color.stroke_width(1))
            }))
            .map_err(|e| err(&e))?;
    }
    if lines.is_empty() {
        area.draw(&Text::new(
            "no cell produced this figure",
            (120, 200),
            ("sans-serif", 16),
        ))
        .map_err(|e| err(&e))?;
    }
    Ok(())
}

/// Legend entries per row.
const LEGEND_PER_ROW: usize = 5;

fn draw(
    spec: &ChartSpec,
    panels: &[Panel],
    names: &[String],
    buf: &mut String,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", spec.file);
    let n = panels.len().max(1);
    let cols = if n == 1 { 1 } else { 2 };
    let rows = n.div_ceil(cols);
    let width: u32 = if cols == 1 { 860 } else { 1240 };
    let panel_h: u32 = if cols == 1 { 480 } else { 400 };
    let legend_rows = names.len().div_ceil(LEGEND_PER_ROW).max(1) as u32;
    let title_h = 40;
    let legend_h = 16 + 24 * legend_rows;
    let height = title_h + panel_h * rows as u32 + legend_h;
    let root = SVGBackend::with_string(buf, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (title, rest) = root.split_vertically(title_h);
    title
        .draw(&Text::new(spec.title, (16, 10), ("sans-serif", 22)))
        .map_err(|e| err(&e))?;
    let (body, legend) = rest.split_vertically(panel_h * rows as u32);
    let color_of = |name: &str| {
        let i = names.iter().position(|n| n == name).unwrap_or(0);
        Palette99::pick(i).to_rgba()
    };
    let areas = body.split_evenly((rows, cols));
    for (area, (caption, lines)) in areas.iter().zip(panels) {
        draw_panel(area, caption, spec.y_label, lines, &color_of).map_err(|e| err(&e))?;
    }
    for (i, name) in names.iter().enumerate() {
        let (row, col) = (i / LEGEND_PER_ROW, i % LEGEND_PER_ROW);
        let x = 20 + (col as i32) * (width as i32 - 40) / LEGEND_PER_ROW as i32;
        let y = 12 + 24 * row as i32;
        let color = color_of(name);
        legend
            .draw(&PathElement::new(
                vec![(x, y + 8), (x + 24, y + 8)],
                color.stroke_width(3),
            ))
            .map_err(|e| err(&e))?;
        legend
            .draw(&Text::new(name.as_str(), (x + 30, y), ("sans-serif", 15)))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// `12345` as `12.3k`, `1234567` as `1.23M`.
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Renders one chart as an SVG document (a chart that fails to draw becomes an SVG
/// that says why).
pub fn render(spec: &ChartSpec, results: &Results) -> String {
    let data: Vec<Panel> = panels(spec, results)
        .iter()
        .map(|v| (v.work().to_string(), series(spec, v)))
        .collect();
    let captions: Vec<Panel> = panels(spec, results)
        .iter()
        .zip(&data)
        .map(|(v, (_, lines))| (v.heading().replace('`', ""), lines.clone()))
        .collect();
    let names: Vec<String> = results
        .targets
        .iter()
        .filter(|t| {
            data.iter()
                .any(|(_, lines)| lines.iter().any(|(n, _)| *n == t.name))
        })
        .map(|t| t.name.clone())
        .collect();
    let mut buf = String::new();
    let drawn = draw(spec, &captions, &names, &mut buf);
    if let Err(why) = drawn {
        buf = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"860\" height=\"80\">\
             <text x=\"10\" y=\"40\">{}</text></svg>\n",
            escape(&why)
        );
    }
    let desc = format!("<desc>{}</desc>", escape(&data_text(&data)));
    match buf
        .find("<svg")
        .and_then(|s| buf[s..].find('>').map(|e| s + e))
    {
        Some(end) => buf.insert_str(end + 1, &format!("\n{desc}")),
        None => buf.push_str(&desc),
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(0.0), "0");
        assert_eq!(short_number(2.5), "2.5");
        assert_eq!(short_number(950.0), "950");
        assert_eq!(short_number(1234.0), "1.2k");
        assert_eq!(short_number(98_123.0), "98k");
        assert_eq!(short_number(1_234_567.0), "1.23M");
    }

    #[test]
    fn data_text_lists_every_point() {
        let panels = vec![(
            "none".to_string(),
            vec![(
                "epoll-et".to_string(),
                vec![(10.0, 5.0, 4.0, 6.0), (100.0, 7.5, 7.5, 7.5)],
            )],
        )];
        assert_eq!(data_text(&panels), "none epoll-et 10=5 100=7.5");
    }

    #[test]
    fn a_wide_span_gets_a_log_axis() {
        let line = |v: f64| ("x".to_string(), vec![(10.0, v, v, v)]);
        assert!(wants_log(&[line(500.0), line(30_000.0)]));
        assert!(!wants_log(&[line(50_000.0), line(150_000.0)]));
    }
}
