//! Machines under faults (the `agents` workload): no live machine is deleted, a persistent
//! machine is never deleted, and an ephemeral machine whose agent was killed is gone within the
//! inactivity timeout plus two sweeps of the later of its kill and the heal.
//!
//! The harness records what it did to each agent and the org's machines listed after the run
//! (`workload::agents`); this checker only judges those records. An agent that stopped on its
//! own while its machine was enrolled was told its node key is unknown or revoked: its machine
//! was deleted while it heartbeat.

use super::{Kind, Results};
use crate::history::{Op, Process};
use crate::workload::agents::{AGENTS_EVENT, MACHINES_EVENT};

const NAME: &str = "machines";

pub fn check(ops: &[Op], results: &mut Results) {
    let event = |f: &str| ops.iter().rev().find(|o| o.process == Process::NEMESIS && o.f == f);
    // A run without the agents workload has no record.
    let Some(agents) = event(AGENTS_EVENT) else { return };
    let listing = event(MACHINES_EVENT);
    let listed: Option<Vec<&str>> = listing
        .and_then(|l| l.value["machine_ids"].as_array().map(|ids| ids.iter().filter_map(|id| id.as_str()).collect()));
    let listed_ns = listing.and_then(|l| l.value["listed_ns"].as_u64());
    let timeout_ns = agents.value["timeout_ms"].as_u64().unwrap_or(0) * 1_000_000;
    let healed_ns = agents.value["healed_ns"].as_u64().unwrap_or(0);
    // A new leader restarts every timer: the rule holds only if the leader at the heal is the
    // one that listed.
    let one_leader = agents.value["healed_term"].as_u64().is_some()
        && agents.value["healed_term"] == listing.map_or(serde_json::Value::Null, |l| l.value["term"].clone());
    let witness = |extra: Option<&Op>| {
        let mut ops = vec![agents.index];
        ops.extend(extra.map(|l| l.index));
        ops
    };
    let (Some(listed), Some(listed_ns)) = (listed, listed_ns) else {
        results.unknown(NAME, "no listing of the machines succeeded after the run".into());
        return;
    };
    for agent in agents.value["agents"].as_array().into_iter().flatten() {
        let Some(machine) = agent["machine_id"].as_str() else { continue };
        results.examined(NAME, 1);
        let name = agent["name"].as_str().unwrap_or("?");
        let ephemeral = agent["ephemeral"] == true;
        let present = listed.contains(&machine);
        let kind = if ephemeral { Kind::LiveMachineDeleted } else { Kind::PersistentMachineDeleted };
        if let Some(exit) = agent["exit"].as_str() {
            let message = format!("{name} ({machine}) was refused while its agent ran and it stopped: {exit}");
            results.anomaly(NAME, kind, None, message, witness(None));
            continue;
        }
        match (ephemeral, agent["killed_ns"].as_u64()) {
            (false, _) | (true, None) if !present => {
                let what = if ephemeral { "its agent was still heartbeating" } else { "it is persistent" };
                let message = format!("{name} ({machine}) is missing from the machines after the run, yet {what}");
                results.anomaly(NAME, kind, None, message, witness(listing));
            }
            (true, Some(killed)) if present => {
                // Gone within the timeout plus two sweeps (a sweep runs every quarter timeout).
                let due = killed.max(healed_ns) + timeout_ns + timeout_ns / 2;
                if listed_ns >= due && !one_leader {
                    let why = "the leader changed after the heal (a new leader restarts every timer)";
                    results.unknown(NAME, format!("{name} ({machine}) was still listed, but {why}"));
                } else if listed_ns >= due {
                    let message = format!(
                        "{name} ({machine}) was still listed {:.1} s after its agent was killed and {:.1} s after the heal \
                         (the timeout is {} s)",
                        (listed_ns - killed) as f64 / 1e9,
                        listed_ns.saturating_sub(healed_ns) as f64 / 1e9,
                        timeout_ns / 1_000_000_000
                    );
                    results.anomaly(NAME, Kind::DeadMachineKept, None, message, witness(listing));
                } else {
                    results.unknown(NAME, format!("{name} ({machine}): the last listing came before it was due to go"));
                }
            }
            _ => {}
        }
    }
}

/// Agents that enrolled, for the coverage rule.
pub fn enrolled(ops: &[Op]) -> usize {
    ops.iter()
        .rev()
        .find(|o| o.process == Process::NEMESIS && o.f == AGENTS_EVENT)
        .and_then(|o| o.value["agents"].as_array().map(Vec::len))
        .unwrap_or(0)
}
