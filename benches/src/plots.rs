//! SVG plots for `docs/benchmarks.md`: latency CDFs, deliveries/s against
//! room size, memory per idle connection.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

const SIZE: (u32, u32) = (760, 420);
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Publish-to-delivery latency CDF of every run at a fixed rate (flat-out
/// runs measure a backlog, not latency); `false` if none recorded one.
pub fn latency_cdf(rows: &[Value], out: &Path) -> Result<bool> {
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .filter(|r| r["pace"] != "max")
        .filter_map(|r| {
            let points: Vec<(f64, f64)> = r
                .get("latency_cdf")?
                .as_array()?
                .iter()
                .filter_map(|p| Some((p.get(1)?.as_f64()?.max(0.01), p.get(0)?.as_f64()?)))
                .collect();
            let label = format!(
                "{} {} {} ({} members)",
                text(r, "system"),
                text(r, "scenario"),
                text(r, "pace"),
                text(r, "members")
            );
            (!points.is_empty()).then_some((label, points))
        })
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let ms = || series.iter().flat_map(|(_, p)| p.iter().map(|(ms, _)| *ms));
    let lo = ms().fold(f64::MAX, f64::min);
    let hi = ms().fold(0.01f64, f64::max);
    let root = SVGBackend::new(out, (SIZE.0, SIZE.1 + 60)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    // A linear axis squeezes everything below a tenth of the tail into the
    // first few pixels once the range spans more than two decades.
    if hi / lo > 100.0 {
        let x: LogCoord<f64> = (lo * 0.8..hi * 1.25).log_scale().into();
        draw_cdf(&root, x, "latency, ms (log scale)", series)?;
    } else {
        let x = RangedCoordf64::from(0.0..hi * 1.05);
        draw_cdf(&root, x, "latency, ms", series)?;
    }
    root.present().map_err(err)?;
    Ok(true)
}

fn draw_cdf<X>(
    root: &DrawingArea<SVGBackend, Shift>,
    x: X,
    x_desc: &str,
    series: Vec<(String, Vec<(f64, f64)>)>,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption("publish-to-delivery latency (CDF)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x, 0f64..100f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("percentile")
        .draw()
        .map_err(err)?;
    for (i, (label, points)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        // Curves rise from the lower left; the upper left stays empty
        // until the fastest run's tail.
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Flat-out deliveries/s against the number of members, per system and
/// scenario.
pub fn deliveries_vs_members(rows: &[Value], out: &Path) -> Result<bool> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows.iter().filter(|r| {
        (r["scenario"] == "fanout" || r["scenario"] == "cross-node") && r["pace"] == "max"
    }) {
        let (Some(m), Some(d)) = (num(r, "members"), num(r, "deliveries_per_s")) else {
            continue;
        };
        let label = match (text(r, "scenario").as_str(), text(r, "system").as_str()) {
            ("cross-node", s) => format!("{s}, 3 nodes"),
            ("fanout", "floor") => "floor (one frame per write)".to_owned(),
            (_, s) => format!("{s}, 1 node"),
        };
        match series.iter_mut().find(|(l, _)| *l == label) {
            Some((_, points)) => points.push((m, d / 1e6)),
            None => series.push((label, vec![(m, d / 1e6)])),
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    for (_, points) in &mut series {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let max_m = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(m, _)| *m))
        .fold(1.0f64, f64::max);
    let max_d = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, d)| *d))
        .fold(0.1f64, f64::max);
    // Headroom for the legend (about 7% of the height per entry), which
    // would otherwise hide the top points at the largest room.
    let top = max_d * (1.2 + 0.07 * series.len() as f64);
    let root = SVGBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("fan-out, flat out: deliveries/s", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_m * 1.1, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("members in the room")
        .x_label_formatter(&|m| format!("{m:.0}"))
        .y_desc("M deliveries/s")
        .draw()
        .map_err(err)?;
    for (i, (label, points)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

/// Memory per idle connection, per system, against the 6 KiB budget.
pub fn memory_per_connection(rows: &[Value], out: &Path) -> Result<bool> {
    let bars: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r["scenario"] == "density")
        .filter_map(|r| {
            if r["system"] == "floor" {
                Some((
                    "floor (kernel)".to_owned(),
                    num(r, "kernel_kib_per_connection")?,
                ))
            } else {
                Some((text(r, "system"), num(r, "rss_kib_per_connection")?))
            }
        })
        .collect();
    if bars.is_empty() {
        return Ok(false);
    }
    let max = bars.iter().map(|(_, v)| *v).fold(6.0f64, f64::max) * 1.2;
    let root = SVGBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption("memory per idle connection, KiB", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n as f64, 0f64..max)
        .map_err(err)?;
    let names: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (*x - 0.5).round();
            if (*x - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc("KiB")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            let color = COLORS[i % COLORS.len()];
            Rectangle::new(
                [(i as f64 + 0.2, 0.0), (i as f64 + 0.8, *v)],
                color.filled(),
            )
        }))
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                format!("{v:.2}"),
                (i as f64 + 0.35, *v + max * 0.03),
                ("sans-serif", 14),
            )
        }))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 6.0), (n as f64, 6.0)],
            RED.stroke_width(1),
        ))
        .map_err(err)?
        .label("budget: 6 KiB RSS")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

/// Steady-state RSS per connection against how often each connection sends
/// a `ping` (the `chat` scenario), per system, against the 7 KiB budget.
pub fn memory_vs_activity(rows: &[Value], out: &Path) -> Result<bool> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r["scenario"] == "chat" && r["command"] == "ping")
    {
        let (Some(every), Some(kib)) =
            (num(r, "every_ms"), num(r, "rss_kib_per_connection_steady"))
        else {
            continue;
        };
        let label = text(r, "system");
        let point = (every / 1000.0, kib);
        match series.iter_mut().find(|(l, _)| *l == label) {
            Some((_, points)) => points.push(point),
            None => series.push((label, vec![point])),
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    for (_, points) in &mut series {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let max_t = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(t, _)| *t))
        .fold(1.0f64, f64::max);
    let max_k = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, k)| *k))
        .fold(7.0f64, f64::max)
        * 1.3;
    let root = SVGBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "memory per connection, each sending a ping every T s",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_t * 1.05, 0f64..max_k)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("T, seconds between commands")
        .x_label_formatter(&|t| format!("{t:.0}"))
        .y_desc("KiB RSS per connection")
        .draw()
        .map_err(err)?;
    for (i, (label, points)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 7.0), (max_t * 1.05, 7.0)],
            RED.stroke_width(1),
        ))
        .map_err(err)?
        .label("budget: 7 KiB")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}
