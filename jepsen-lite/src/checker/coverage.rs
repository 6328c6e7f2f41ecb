//! Whether the run exercised what it claims: a run in which little happened is `unknown`, never
//! `valid`. Not a safety property (the other checkers judge those); a gate on the evidence.
//!
//! - a nemesis that failed to apply or lift a fault makes the run `unknown`;
//! - every workload of the run has at least [`MIN_OK_PER_WORKLOAD`] acknowledged creations and
//!   enrolments (for `agents`: its two keys and the agents that enrolled);
//! - every fault window (its `start`, recorded once the fault took effect, to its `end`) saw a
//!   client operation invoked while it held, and an acknowledged operation before
//!   [`RECOVERY_NS`] after it ended; a fault begun less than [`END_GRACE_NS`] before the run's
//!   time was up (the nemesis's last deal, as the workloads stop starting rounds) is not judged,
//!   and counted as such;
//! - per fault kind, the share of client operations whose span overlapped one of its windows is
//!   reported (`coverage` in `results.json`).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::Results;
use crate::history::{f, pairs, Op, OpType, Process};

const NAME: &str = "coverage";

/// Acknowledged creations and enrolments every workload must have.
pub const MIN_OK_PER_WORKLOAD: usize = 5;

/// How long after a fault ends an acknowledged operation must come.
pub const RECOVERY_NS: u64 = 10_000_000_000;

/// A fault begun this close to the end of the run's time (or after it) is not judged: the
/// workloads stopped starting rounds under it, so no traffic need meet it.
pub const END_GRACE_NS: u64 = 2_000_000_000;

/// One fault, from the moment it took effect to the moment it was lifted.
#[derive(Debug, Clone)]
pub struct Window {
    pub kind: String,
    pub start: u64,
    pub end: u64,
    pub detail: String,
}

/// The fault windows of a history, in order of start. A fault still held at the end of the
/// history ends there.
pub fn windows(ops: &[Op]) -> Vec<Window> {
    let last = ops.last().map_or(0, |o| o.time);
    let mut open: BTreeMap<&str, (u64, String)> = BTreeMap::new();
    let mut out = Vec::new();
    for op in ops.iter().filter(|o| o.process == Process::NEMESIS && o.f != "heal") {
        match op.value["phase"].as_str() {
            Some("start") => {
                open.insert(&op.f, (op.time, op.value["detail"].as_str().unwrap_or_default().to_string()));
            }
            Some("end") => {
                if let Some((start, detail)) = open.remove(op.f.as_str()) {
                    out.push(Window { kind: op.f.clone(), start, end: op.time, detail });
                }
            }
            _ => {}
        }
    }
    out.extend(open.into_iter().map(|(kind, (start, detail))| Window {
        kind: kind.to_string(),
        start,
        end: last,
        detail,
    }));
    out.sort_by_key(|w| w.start);
    out
}

/// Checks the run's coverage; answers the figures for the report.
/// `stop_ns`: when the run's time was up (its `time_s`, in the history's clock).
pub fn check(ops: &[Op], workloads: &[String], stop_ns: u64, results: &mut Results) -> Value {
    // Faults that failed.
    for op in ops.iter().filter(|o| o.process == Process::NEMESIS && o.value["phase"] == "error") {
        let detail = op.value["detail"].as_str().unwrap_or_default();
        results.unknown(NAME, format!("the {} nemesis failed: {detail}", op.f));
    }

    // Acknowledged work per workload (enrolments count for their key's workload).
    let client_pairs: Vec<_> = pairs(ops).into_iter().filter(|p| p.invoke.process != Process::NEMESIS).collect();
    let mut workload_of_key: BTreeMap<&str, &str> = BTreeMap::new();
    for p in client_pairs.iter().filter(|p| p.invoke.f == f::CREATE && p.kind() == OpType::Ok) {
        if let (Some(key), Some(workload)) = (p.key(), p.invoke.value["workload"].as_str()) {
            workload_of_key.insert(key, workload);
        }
    }
    let mut acknowledged: BTreeMap<&str, usize> = workloads.iter().map(|w| (w.as_str(), 0)).collect();
    for p in client_pairs.iter().filter(|p| p.kind() == OpType::Ok) {
        let workload = match p.invoke.f.as_str() {
            f::CREATE => p.invoke.value["workload"].as_str(),
            f::ENROL => p.key().and_then(|k| workload_of_key.get(k).copied()),
            _ => None,
        };
        if let Some(n) = workload.and_then(|w| acknowledged.get_mut(w)) {
            *n += 1;
        }
    }
    // The agents workload's work is its agents' enrolments, made by `ztna up`, not by clients.
    if let Some(n) = acknowledged.get_mut("agents") {
        *n += super::machines::enrolled(ops);
    }
    for (workload, n) in &acknowledged {
        results.examined(NAME, 1);
        if *n < MIN_OK_PER_WORKLOAD {
            results.unknown(
                NAME,
                format!("workload {workload}: {n} acknowledged creations and enrolments (at least {MIN_OK_PER_WORKLOAD} needed)"),
            );
        }
    }

    // Every fault overlapped traffic and was followed by acknowledged work.
    let windows = windows(ops);
    let invoked: Vec<u64> = client_pairs.iter().map(|p| p.invoke.time).collect();
    let acked: Vec<u64> =
        client_pairs.iter().filter(|p| p.kind() == OpType::Ok).filter_map(|p| p.complete.map(|c| c.time)).collect();
    let mut at_the_end = 0;
    for w in &windows {
        results.examined(NAME, 1);
        if w.start.saturating_add(END_GRACE_NS) > stop_ns {
            at_the_end += 1;
            continue;
        }
        let during = invoked.iter().filter(|&&t| t >= w.start && t <= w.end).count();
        let after = acked.iter().filter(|&&t| t >= w.start && t <= w.end + RECOVERY_NS).count();
        if during == 0 || after == 0 {
            results.unknown(
                NAME,
                format!(
                    "fault {} ({}) at {:.1} s: {during} operations invoked while it held, {after} acknowledged within {} s after",
                    w.kind,
                    w.detail,
                    w.start as f64 / 1e9,
                    RECOVERY_NS / 1_000_000_000
                ),
            );
        }
    }

    // The share of operations that overlapped each kind of fault.
    let last = ops.last().map_or(0, |o| o.time);
    let total = client_pairs.len().max(1);
    let mut by_kind: BTreeMap<&str, (usize, usize, u64)> = BTreeMap::new();
    for w in &windows {
        let entry = by_kind.entry(&w.kind).or_default();
        entry.1 += 1;
        entry.2 += w.end - w.start;
    }
    for (kind, entry) in by_kind.iter_mut() {
        let kind_windows: Vec<&Window> = windows.iter().filter(|w| w.kind == *kind).collect();
        entry.0 = client_pairs
            .iter()
            .filter(|p| {
                let (from, to) = (p.invoke.time, p.complete.map_or(last, |c| c.time));
                kind_windows.iter().any(|w| from <= w.end && to >= w.start)
            })
            .count();
    }
    json!({
        "operations": client_pairs.len(),
        "faults_not_judged_at_the_end": at_the_end,
        "acknowledged_per_workload": acknowledged,
        "faults": by_kind.iter().map(|(kind, (overlapping, n, held))| (kind.to_string(), json!({
            "applied": n,
            "held_s": *held as f64 / 1e9,
            "operations_overlapping": overlapping,
            "share_overlapping": *overlapping as f64 / total as f64,
        }))).collect::<BTreeMap<_, _>>(),
    })
}
