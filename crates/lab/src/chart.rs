//! SVG charts of a comparison: one line per strategy (or peer), connections on a log
//! axis.
//!
//! plotters' SVG backend writes text as SVG `<text>` elements, so no font library is
//! needed (the layout estimates text widths). Each chart also carries its data in a
//! `<desc>` element (`name conns=value ...` per line), so a test, or a reader, can check
//! the drawing against `results.json`.

use plotters::prelude::*;

use crate::results::{Metrics, Results};

/// One chart: a metric against connections.
pub struct ChartSpec {
    /// The file name in the output directory.
    pub file: &'static str,
    /// The title.
    pub title: &'static str,
    /// The y axis.
    pub y_label: &'static str,
    /// The metric of a cell, if it has one.
    pub metric: fn(&Metrics) -> Option<f64>,
}

/// The charts every comparison writes.
pub const CHARTS: [ChartSpec; 4] = [
    ChartSpec {
        file: "throughput.svg",
        title: "Throughput (higher is better)",
        y_label: "requests per second",
        metric: |m| Some(m.throughput_rps),
    },
    ChartSpec {
        file: "p99_latency.svg",
        title: "p99 latency (lower is better)",
        y_label: "microseconds",
        metric: |m| Some(m.p99_us),
    },
    ChartSpec {
        file: "cpu_per_request.svg",
        title: "Server CPU per request (lower is better)",
        y_label: "CPU microseconds per request",
        metric: |m| m.server_cpu_per_request_us,
    },
    ChartSpec {
        file: "memory_per_conn.svg",
        title: "Server memory per idle connection, PSS (lower is better)",
        y_label: "bytes per connection",
        metric: |m| m.idle.as_ref().and_then(|i| i.pss_bytes_per_conn),
    },
];

/// The lines of a chart: `(name, [(conns, value)])`, rows without a value left out.
pub fn series(spec: &ChartSpec, results: &Results) -> Vec<(String, Vec<(f64, f64)>)> {
    results
        .targets
        .iter()
        .filter_map(|t| {
            let points: Vec<(f64, f64)> = results
                .settings
                .conns
                .iter()
                .filter_map(|&c| {
                    let m = results.metrics(&t.name, c)?;
                    Some((c as f64, (spec.metric)(m)?))
                })
                .filter(|(_, v)| v.is_finite())
                .collect();
            (!points.is_empty()).then(|| (t.name.clone(), points))
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The `<desc>` text: one line per series, `name conns=value ...`.
pub fn data_text(lines: &[(String, Vec<(f64, f64)>)]) -> String {
    lines
        .iter()
        .map(|(name, pts)| {
            let values: Vec<String> = pts.iter().map(|(x, y)| format!("{x}={y}")).collect();
            format!("{name} {}", values.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn draw(
    spec: &ChartSpec,
    lines: &[(String, Vec<(f64, f64)>)],
    buf: &mut String,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", spec.file);
    let root = SVGBackend::with_string(buf, (860, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let all = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut xmin, mut xmax, mut ymax) = (f64::MAX, 0f64, 0f64);
    for &(x, y) in all {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymax = ymax.max(y);
    }
    if lines.is_empty() {
        (xmin, xmax, ymax) = (1.0, 10.0, 1.0);
    }
    // A little room on each side of the log axis, and above the highest point.
    let (xmin, xmax) = (xmin / 1.5, xmax * 1.5);
    // Headroom for the legend in the upper left, one line per series.
    let headroom = (1.15 + 0.05 * lines.len() as f64).min(1.8);
    let ymax = if ymax > 0.0 { ymax * headroom } else { 1.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(spec.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("connections (log scale)")
        .y_desc(spec.y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| short_number(*y))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    if lines.is_empty() {
        root.draw(&Text::new(
            "no cell produced this figure",
            (300, 250),
            ("sans-serif", 18),
        ))
        .map_err(|e| err(&e))?;
    } else {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
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
    let lines = series(spec, results);
    let mut buf = String::new();
    let drawn = draw(spec, &lines, &mut buf);
    if let Err(why) = drawn {
        buf = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"860\" height=\"80\">\
             <text x=\"10\" y=\"40\">{}</text></svg>\n",
            escape(&why)
        );
    }
    let desc = format!("<desc>{}</desc>", escape(&data_text(&lines)));
    match buf.find('>') {
        Some(end) if buf.starts_with("<svg") => buf.insert_str(end + 1, &format!("\n{desc}")),
        _ => match buf
            .find("<svg")
            .and_then(|s| buf[s..].find('>').map(|e| s + e))
        {
            Some(end) => buf.insert_str(end + 1, &format!("\n{desc}")),
            None => buf.push_str(&desc),
        },
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
        let lines = vec![("epoll-et".to_string(), vec![(10.0, 5.0), (100.0, 7.5)])];
        assert_eq!(data_text(&lines), "epoll-et 10=5 100=7.5");
    }
}
