//! Every node comes back: once every fault is lifted, each node must answer, follow the one
//! leader and apply everything the leader had logged when the run ended. A node that cannot
//! start again (a snapshot or log lost to a power cut, a crash at start) or that never catches
//! up has lost what it promised to keep, even when the other two still answer every client.
//! And no node's process ends on its own (the harness kills and stops them; a crash, even one
//! the node came back from, is reported).
//!
//! The harness observes the nodes after the heal and records it as one `nodes` event (see
//! `run::final_phase`); this checker only judges that record.

use super::{Kind, Results};
use crate::history::{Op, Process};

const NAME: &str = "recovery";

/// The harness's `nodes` event.
pub const EVENT: &str = "nodes";
/// The harness's record of every node's state hash (`GET /api/cluster/hash`) after the run.
pub const DIGESTS: &str = "digests";

pub fn check(ops: &[Op], results: &mut Results) {
    // A run always writes its record (even when no node answers); a history of client
    // operations without one cannot be judged.
    let Some(event) = ops.iter().rev().find(|o| o.process == Process::NEMESIS && o.f == EVENT) else {
        if ops.iter().any(|o| o.process != Process::NEMESIS) {
            results.unknown(NAME, "the history has no record of the nodes after the run".into());
        }
        return;
    };
    check_digests(ops, results);
    let target = event.value["target_index"].as_u64();
    for node in event.value["nodes"].as_array().into_iter().flatten() {
        results.examined(NAME, 1);
        let id = node["node"].as_u64().unwrap_or(0);
        if node["back"] == true {
            if let Some(exit) = node["exit"].as_str() {
                let mut message = format!("node n{id}'s process ended on its own during the run ({exit})");
                if let Some(line) = node["last_error"].as_str() {
                    message.push_str(&format!("; its last error: {line}"));
                }
                results.anomaly(NAME, Kind::NodeExited, None, message, vec![event.index]);
            }
            continue;
        }
        let leader = event.value["leader"].as_u64();
        let why = if node["answered"] != true {
            "it does not answer".to_string()
        } else if node["role"] == "shutdown" {
            "its Raft stopped".to_string()
        } else if leader.is_none() || target.is_none() {
            "no single node led the cluster".to_string()
        } else if node["leader"].as_u64() != leader {
            format!("it follows {} instead of n{}", node["leader"], leader.unwrap_or(0))
        } else {
            format!("it applied up to index {}, the leader had logged {}", node["applied"], target.unwrap_or(0))
        };
        let mut message = format!("node n{id} did not come back after the run: {why}");
        if let Some(exit) = node["exit"].as_str() {
            message.push_str(&format!("; its process ended on its own ({exit})"));
        }
        if let Some(line) = node["last_error"].as_str() {
            message.push_str(&format!("; its last error: {line}"));
        }
        results.anomaly(NAME, Kind::NodeNotBack, None, message, vec![event.index]);
    }
}

/// Replicas that applied the same log index hold the same state: every node's hash, taken when
/// all of them had applied the same index, must be equal.
fn check_digests(ops: &[Op], results: &mut Results) {
    let Some(event) = ops.iter().rev().find(|o| o.process == Process::NEMESIS && o.f == DIGESTS) else {
        results.unknown(NAME, "the replicas' states were not compared (no digests record)".into());
        return;
    };
    let nodes: Vec<&serde_json::Value> = event.value["nodes"].as_array().into_iter().flatten().collect();
    let indexes: std::collections::BTreeSet<Option<u64>> = nodes.iter().map(|n| n["applied_index"].as_u64()).collect();
    if nodes.len() < 2 || indexes.len() != 1 {
        let why = event.value["detail"].as_str().unwrap_or("the nodes never stood at the same applied index");
        results.unknown(NAME, format!("the replicas' states were not compared: {why}"));
        return;
    }
    results.examined(NAME, nodes.len());
    let hashes: std::collections::BTreeSet<&str> = nodes.iter().filter_map(|n| n["hash"].as_str()).collect();
    if hashes.len() > 1 {
        let each: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!(
                    "n{}: {} rows, {}",
                    n["node"],
                    n["rows"],
                    n["hash"].as_str().unwrap_or("?").get(..12).unwrap_or("?")
                )
            })
            .collect();
        let message = format!(
            "the replicas differ at applied index {}: {}",
            indexes.iter().next().copied().flatten().unwrap_or(0),
            each.join("; ")
        );
        results.anomaly(NAME, Kind::ReplicasDiffer, None, message, vec![event.index]);
    }
}
