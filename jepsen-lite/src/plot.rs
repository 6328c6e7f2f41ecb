//! Jepsen-style performance plots in SVG: the latency of every operation coloured by outcome,
//! and throughput by operation over time, with nemesis intervals shaded.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::history::{pairs, Op, OpType, Process};

type Interval = (f64, f64, &'static str);

const SHADES: &[(&str, RGBColor)] = &[
    ("kill", RGBColor(230, 80, 80)),
    ("power", RGBColor(150, 0, 0)),
    ("partition", RGBColor(80, 80, 230)),
    ("pause", RGBColor(200, 160, 0)),
    ("clock", RGBColor(160, 60, 200)),
    ("netem", RGBColor(0, 160, 160)),
    ("restart", RGBColor(120, 120, 120)),
    ("heal", RGBColor(60, 180, 60)),
];

fn shade(kind: &str) -> RGBColor {
    SHADES.iter().find(|(k, _)| *k == kind).map_or(RGBColor(128, 128, 128), |(_, c)| *c)
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Nemesis intervals from `start`/`end` events, per kind.
fn intervals(ops: &[Op]) -> Vec<Interval> {
    let end_of_run = ops.last().map_or(0.0, |o| secs(o.time));
    let mut open: BTreeMap<&str, f64> = BTreeMap::new();
    let mut out = Vec::new();
    for op in ops.iter().filter(|o| o.process == Process::NEMESIS) {
        let kind = SHADES.iter().map(|(k, _)| *k).find(|k| *k == op.f).unwrap_or("other");
        match op.value["phase"].as_str() {
            Some("start") => {
                open.insert(kind, secs(op.time));
            }
            Some("end") => {
                if let Some(start) = open.remove(kind) {
                    out.push((start, secs(op.time), kind));
                }
            }
            _ => {}
        }
    }
    out.extend(open.into_iter().map(|(kind, start)| (start, end_of_run, kind)));
    out
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e:?}")
}

/// Most points drawn per outcome; beyond it every n-th point is drawn, so a long run's plot
/// stays a few megabytes.
const MAX_POINTS: usize = 20_000;

/// Every n-th point of `points`, at most [`MAX_POINTS`].
fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let stride = points.len().div_ceil(MAX_POINTS).max(1);
    points.into_iter().step_by(stride).collect()
}

/// Whether an operation belongs to the final reads and listing, which the rate plot leaves out.
fn is_final(op: &Op) -> bool {
    op.value["final"] == true
}

/// `latency.svg`: one point per operation at its invocation, latency on a log scale.
pub fn latency(path: &Path, ops: &[Op]) -> anyhow::Result<()> {
    let end = ops.last().map_or(1.0, |o| secs(o.time)).max(1.0);
    let mut points: BTreeMap<&'static str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut max_ms: f64 = 10.0;
    for p in pairs(ops) {
        let Some(done) = p.complete else { continue };
        let ms = ((done.time - p.invoke.time) as f64 / 1e6).max(0.05);
        max_ms = max_ms.max(ms);
        let outcome = match done.kind {
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            _ => "info",
        };
        points.entry(outcome).or_default().push((secs(p.invoke.time), ms));
    }
    let root = SVGBackend::new(path, (1400, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency of every operation (ms, log scale), nemesis intervals shaded", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, (0.05f64..max_ms * 1.5).log_scale())
        .map_err(err)?;
    chart.configure_mesh().x_desc("time since start (s)").y_desc("latency (ms)").draw().map_err(err)?;
    draw_intervals(&mut chart, ops, 0.05, max_ms * 1.5)?;
    for (outcome, color) in
        [("ok", RGBColor(30, 150, 30)), ("fail", RGBColor(220, 40, 40)), ("info", RGBColor(240, 150, 0))]
    {
        let pts = thin(points.remove(outcome).unwrap_or_default());
        chart
            .draw_series(pts.into_iter().map(|xy| Circle::new(xy, 2, color.mix(0.6).filled())))
            .map_err(err)?
            .label(outcome)
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `rate.svg`: completions per second, per operation, in one-second buckets.
pub fn rate(path: &Path, ops: &[Op]) -> anyhow::Result<()> {
    let end = ops.last().map_or(1.0, |o| secs(o.time)).max(1.0);
    let buckets = end.ceil() as usize + 1;
    let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for p in pairs(ops).into_iter().filter(|p| !is_final(p.invoke)) {
        let Some(done) = p.complete else { continue };
        let name = format!("{} {}", p.invoke.f, if done.kind == OpType::Ok { "ok" } else { "not ok" });
        let counts = series.entry(name).or_insert_with(|| vec![0.0; buckets]);
        let bucket = (secs(done.time) as usize).min(buckets - 1);
        counts[bucket] += 1.0;
    }
    let max_rate = series.values().flat_map(|v| v.iter().copied()).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (1400, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "throughput by operation (completions per second, final reads left out), nemesis intervals shaded",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..max_rate * 1.1)
        .map_err(err)?;
    chart.configure_mesh().x_desc("time since start (s)").y_desc("ops/s").draw().map_err(err)?;
    draw_intervals(&mut chart, ops, 0.0, max_rate * 1.1)?;
    for (i, (name, counts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                counts.into_iter().enumerate().map(|(s, n)| (s as f64, n)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(3)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn draw_intervals<DB: DrawingBackend, CT>(
    chart: &mut ChartContext<'_, DB, CT>,
    ops: &[Op],
    y_low: f64,
    y_high: f64,
) -> anyhow::Result<()>
where
    CT: plotters::coord::CoordTranslate<From = (f64, f64)>,
{
    let spans = intervals(ops);
    let mut labelled: Vec<&str> = Vec::new();
    for (from, to, kind) in spans {
        let color = shade(kind);
        let series = chart
            .draw_series(std::iter::once(Rectangle::new([(from, y_low), (to, y_high)], color.mix(0.12).filled())))
            .map_err(err)?;
        if !labelled.contains(&kind) {
            labelled.push(kind);
            series
                .label(kind)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.mix(0.4).filled()));
        }
    }
    Ok(())
}
