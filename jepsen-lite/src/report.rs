//! The run folder's report: `results.json`, `anomalies.txt`, the plots, and the summary on
//! stdout. This module must not judge; it prints what the checkers found.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::checker::Results;
use crate::history::{pairs, Op, OpType, Process};
use crate::plot;

/// Operations by name and outcome; faults by kind.
pub struct Counts {
    pub ops: BTreeMap<String, BTreeMap<&'static str, usize>>,
    pub faults: BTreeMap<String, usize>,
}

pub fn counts(ops: &[Op]) -> Counts {
    let mut by_op: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for p in pairs(ops) {
        let outcome = match p.kind() {
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            _ => "info",
        };
        *by_op.entry(p.invoke.f.clone()).or_default().entry(outcome).or_default() += 1;
    }
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.process == Process::NEMESIS && o.value["phase"] == "start" && o.f != "heal") {
        *faults.entry(op.f.clone()).or_default() += 1;
    }
    Counts { ops: by_op, faults }
}

/// Writes every report file and prints the summary.
pub fn write(dir: &Path, header: &Value, ops: &[Op], results: &Results, hosts: &str) -> anyhow::Result<()> {
    let counts = counts(ops);
    let verdict = results.verdict();
    let summary = json!({
        "verdict": verdict,
        "header": header,
        "hosts": hosts,
        "operations": counts.ops,
        "faults": counts.faults,
        "checkers": results.by_checker(),
        "examined": results.examined,
        "unknown": results.unknown,
        "anomalies": results.anomalies,
        "coverage": results.coverage,
        "skipped_rounds": header["skipped_rounds"],
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&summary)?)?;
    std::fs::write(dir.join("anomalies.txt"), anomalies_text(ops, results))?;
    plot::latency(&dir.join("latency.svg"), ops)?;
    plot::rate(&dir.join("rate.svg"), ops)?;
    print!("{}", summary_text(&counts, results, dir));
    if let Some(skipped) = header["skipped_rounds"].as_object().filter(|s| !s.is_empty()) {
        let text: Vec<String> = skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("rounds skipped (too many operations in flight): {}", text.join(", "));
    }
    Ok(())
}

pub fn summary_text(counts: &Counts, results: &Results, dir: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n== jepsen-lite: {}", dir.display());
    let _ = writeln!(out, "{:<10} {:>8} {:>8} {:>8}", "operation", "ok", "fail", "info");
    for (f, by) in &counts.ops {
        let n = |k: &str| by.get(k).copied().unwrap_or(0);
        let _ = writeln!(out, "{f:<10} {:>8} {:>8} {:>8}", n("ok"), n("fail"), n("info"));
    }
    let faults: Vec<String> = counts.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "faults: {}", if faults.is_empty() { "none".to_string() } else { faults.join(", ") });
    if let Some(by_kind) = results.coverage["faults"].as_object() {
        let shares: Vec<String> = by_kind
            .iter()
            .map(|(kind, c)| format!("{kind} {:.0}%", 100.0 * c["share_overlapping"].as_f64().unwrap_or(0.0)))
            .collect();
        if !shares.is_empty() {
            let _ = writeln!(out, "operations overlapping each fault: {}", shares.join(", "));
        }
    }
    for (checker, n) in results.by_checker() {
        let examined = results.examined.get(checker).copied().unwrap_or(0);
        let _ = writeln!(out, "checker {checker:<13} examined {examined:>6}  anomalies {n}");
    }
    for (checker, why) in &results.unknown {
        let _ = writeln!(out, "unknown: {checker}: {why}");
    }
    for a in results.anomalies.iter().take(5) {
        let (checker, kind, key) = (a.checker, a.kind.name(), a.key.as_deref().unwrap_or("-"));
        let _ = writeln!(out, "anomaly [{checker}/{kind}] {key}: {}", a.message);
    }
    if results.anomalies.len() > 5 {
        let _ = writeln!(out, "… {} more in anomalies.txt", results.anomalies.len() - 5);
    }
    let _ = writeln!(
        out,
        "verdict: {}",
        serde_json::to_value(results.verdict()).unwrap_or_default().as_str().unwrap_or("?")
    );
    out
}

/// Each anomaly with its witness operations and the nemesis events around them (±2 s).
pub fn anomalies_text(ops: &[Op], results: &Results) -> String {
    let mut out = String::new();
    if results.anomalies.is_empty() {
        out.push_str("No anomalies.\n");
    }
    for (n, a) in results.anomalies.iter().enumerate() {
        let (checker, kind, key) = (a.checker, a.kind.name(), a.key.as_deref().unwrap_or("-"));
        let _ = writeln!(out, "#{} [{checker}/{kind}] key {key}: {}", n + 1, a.message);
        let witness: Vec<&Op> = a.ops.iter().filter_map(|&i| ops.get(i)).collect();
        for op in &witness {
            let _ = writeln!(out, "  {}", serde_json::to_string(op).unwrap_or_default());
        }
        let (from, to) = witness.iter().fold((u64::MAX, 0), |(lo, hi), op| (lo.min(op.time), hi.max(op.time)));
        let window = 2_000_000_000;
        let around: Vec<&Op> = ops
            .iter()
            .filter(|o| o.process == Process::NEMESIS)
            .filter(|o| o.time + window >= from && o.time <= to.saturating_add(window))
            .collect();
        if !around.is_empty() {
            out.push_str("  nemesis around it:\n");
            for op in around {
                let _ = writeln!(out, "    {}", serde_json::to_string(op).unwrap_or_default());
            }
        }
        out.push('\n');
    }
    out
}
