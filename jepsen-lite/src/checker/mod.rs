//! The checkers: each reads the history and reports anomalies for one promise.
//!
//! | checker        | file               | promise it protects                                                    |
//! |----------------|--------------------|------------------------------------------------------------------------|
//! | `limits`       | `limits.rs`        | a one-shot key enrols once, a `max_uses` key at most N times; no acknowledged enrolment is lost, none appears that was not sent or that was reported as failed; `uses` counts them |
//! | `revoke`       | `revoke.rs`        | a revoked key enrols nothing once the revoke is acknowledged (or seen) |
//! | `expiry`       | `expiry.rs`        | an expired key enrols nothing (within the clock-skew bound)            |
//! | `linearizable` | `linearizable.rs`  | each key behaves like one atomic record (uses, limit, revoked)         |
//! | `listing`      | `listing.rs`       | every acknowledged creation is in every listing that starts after it   |
//! | `recovery`     | `recovery.rs`      | every node comes back after the faults and catches up with the leader, and every replica's state is the same at the same index |
//! | `machines`     | `machines.rs`      | no live or persistent machine deleted; a killed ephemeral one goes in time |
//! | `credentials`  | `credentials.rs`   | no definite refusal (401) of a credential that was made: an auth key, an API key, a node key |
//!
//! Each checker is a `check(&Analysis, &mut Results)` function. A checker that cannot decide
//! (a key with no final read, a search over its time limit) says `unknown`, never `valid`.
//! This module must not talk to the cluster.

pub mod coverage;
pub mod credentials;
pub mod expiry;
pub mod limits;
pub mod linearizable;
pub mod listing;
pub mod machines;
pub mod recovery;
pub mod revoke;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::history::{f, pairs, Op, OpType, Pair};

/// The run's verdict: exit codes 0, 1 and 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Unknown,
    Invalid,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unknown => 2,
        }
    }
}

/// What kind of violation an anomaly is: the self-test checks that a fault switch is caught
/// as the kind of anomaly it must cause, not merely that some checker fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// More enrolments acknowledged (or recorded) than the key's limit.
    OverLimit,
    /// An acknowledged write (a creation, an enrolment) is not in the final state.
    LostAcknowledgement,
    /// A device in the final record that no client sent.
    Phantom,
    /// A device whose every request failed is in the final record.
    RefusedYetEnrolled,
    /// One device recorded twice: a re-enrolment spent a use.
    DoubleEnrolment,
    /// A key's `uses` disagrees with its recorded enrolments.
    UsesMismatch,
    /// An enrolment after the key was known revoked took effect.
    EnrolledAfterRevoke,
    /// An enrolment after the key expired took effect.
    EnrolledAfterExpiry,
    /// No order of a key's operations fits the model.
    NotLinearizable,
    /// An acknowledged creation is missing from a later listing.
    MissingFromListing,
    /// A node did not come back (answer, follow the leader, catch up) after the faults.
    NodeNotBack,
    /// A node's process ended on its own during the run (and came back).
    NodeExited,
    /// An ephemeral machine whose agent kept heartbeating was deleted.
    LiveMachineDeleted,
    /// A persistent machine was deleted (nobody asked to).
    PersistentMachineDeleted,
    /// An ephemeral machine whose agent was killed outlived its timeout.
    DeadMachineKept,
    /// A definite refusal (401) of a credential whose creation was acknowledged.
    RefusedValidCredential,
    /// Two nodes that applied the same log index hold different states.
    ReplicasDiffer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::OverLimit => "over-limit",
            Kind::LostAcknowledgement => "lost-acknowledgement",
            Kind::Phantom => "phantom",
            Kind::RefusedYetEnrolled => "refused-yet-enrolled",
            Kind::DoubleEnrolment => "double-enrolment",
            Kind::UsesMismatch => "uses-mismatch",
            Kind::EnrolledAfterRevoke => "enrolled-after-revoke",
            Kind::EnrolledAfterExpiry => "enrolled-after-expiry",
            Kind::NotLinearizable => "not-linearizable",
            Kind::MissingFromListing => "missing-from-listing",
            Kind::NodeNotBack => "node-not-back",
            Kind::NodeExited => "node-exited",
            Kind::LiveMachineDeleted => "live-machine-deleted",
            Kind::PersistentMachineDeleted => "persistent-machine-deleted",
            Kind::DeadMachineKept => "dead-machine-kept",
            Kind::RefusedValidCredential => "refused-valid-credential",
            Kind::ReplicasDiffer => "replicas-differ",
        }
    }
}

/// One violation and the smallest set of operations that shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    pub checker: &'static str,
    pub kind: Kind,
    pub key: Option<String>,
    pub message: String,
    /// History indexes of the witness operations.
    pub ops: Vec<usize>,
}

/// What every checker found.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub anomalies: Vec<Anomaly>,
    /// Why some property could not be decided, per checker.
    pub unknown: Vec<(String, String)>,
    /// Per checker: keys (or listings) examined.
    pub examined: BTreeMap<String, usize>,
    /// What the run exercised (`coverage::check`): operations per workload, faults and the
    /// share of operations that overlapped them. Null for a history checked on its own.
    pub coverage: serde_json::Value,
}

impl Results {
    pub fn anomaly(&mut self, checker: &'static str, kind: Kind, key: Option<&str>, message: String, ops: Vec<usize>) {
        self.anomalies.push(Anomaly { checker, kind, key: key.map(str::to_string), message, ops });
    }

    pub fn unknown(&mut self, checker: &str, why: String) {
        self.unknown.push((checker.to_string(), why));
    }

    pub fn examined(&mut self, checker: &str, n: usize) {
        *self.examined.entry(checker.to_string()).or_default() += n;
    }

    pub fn verdict(&self) -> Verdict {
        if !self.anomalies.is_empty() {
            Verdict::Invalid
        } else if !self.unknown.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Valid
        }
    }

    /// Anomalies per checker (zero for the clean ones).
    pub fn by_checker(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> = CHECKERS.iter().map(|&c| (c, 0)).collect();
        for a in &self.anomalies {
            *counts.entry(a.checker).or_default() += 1;
        }
        counts
    }
}

pub const CHECKERS: &[&str] =
    &["limits", "revoke", "expiry", "linearizable", "listing", "recovery", "machines", "credentials"];

/// Settings of the checkers.
#[derive(Debug, Clone)]
pub struct Config {
    /// How far a node's clock may be from the harness's (the clock nemesis's largest jump plus
    /// a margin); expiry decisions inside this window are not violations.
    pub skew_ms: u64,
    /// Time limit of the linearizability search per key.
    pub search_limit: Duration,
}

/// What a key was created as, from its acknowledged creation.
#[derive(Debug, Clone)]
pub struct KeyMeta<'a> {
    pub create: Pair<'a>,
    pub workload: String,
    /// Most enrolments allowed: 1 for one-shot, N for `max_uses`, none for plain reusable.
    pub limit: Option<u64>,
    pub expires_at_ms: Option<u64>,
}

/// The final record of a key, from the last successful final read (or one that found no such
/// key, which for an acknowledged creation is itself a lost acknowledgement).
#[derive(Debug, Clone)]
pub struct FinalRecord<'a> {
    pub read: Pair<'a>,
    /// The final read answered `not_found` (or `unauthorized`: the run's API key is gone).
    pub missing: bool,
    pub uses: u64,
    pub revoked: bool,
    pub devices: Vec<String>,
    pub enrolled_at_ms: Vec<u64>,
}

/// A key's operations and facts.
#[derive(Debug, Clone)]
pub struct KeyHistory<'a> {
    pub meta: KeyMeta<'a>,
    /// Enrolments, revokes and reads of this key, in invocation order.
    pub ops: Vec<Pair<'a>>,
    pub final_record: Option<FinalRecord<'a>>,
}

impl KeyHistory<'_> {
    pub fn enrolments(&self) -> impl Iterator<Item = &Pair<'_>> {
        self.ops.iter().filter(|p| p.invoke.f == f::ENROL)
    }
}

/// The history, indexed for the checkers.
pub struct Analysis<'a> {
    pub ops: &'a [Op],
    pub pairs: Vec<Pair<'a>>,
    pub keys: BTreeMap<String, KeyHistory<'a>>,
    pub config: Config,
}

impl<'a> Analysis<'a> {
    pub fn new(ops: &'a [Op], config: Config) -> Analysis<'a> {
        let pairs = pairs(ops);
        let mut keys: BTreeMap<String, KeyHistory<'a>> = BTreeMap::new();
        for p in pairs.iter().filter(|p| p.invoke.f == f::CREATE && p.kind() == OpType::Ok) {
            let v = p.value();
            let Some(key_id) = v["key_id"].as_str() else { continue };
            let reusable = v["reusable"].as_bool().unwrap_or(true);
            let limit = if reusable { v["max_uses"].as_u64() } else { Some(1) };
            let workload = p.invoke.value["workload"].as_str().unwrap_or_default();
            // The agents' keys are used by `ztna up`, outside the history: `machines` checks them.
            if workload == "agents" {
                continue;
            }
            let meta = KeyMeta {
                create: *p,
                workload: workload.to_string(),
                limit,
                expires_at_ms: v["expires_at_ms"].as_u64(),
            };
            keys.insert(key_id.to_string(), KeyHistory { meta, ops: Vec::new(), final_record: None });
        }
        for p in pairs.iter().filter(|p| p.invoke.f != f::CREATE && p.invoke.f != f::LIST) {
            let Some(key) = p.key().and_then(|k| keys.get_mut(k)) else { continue };
            let is_final = p.invoke.value["final"].as_bool() == Some(true);
            if is_final {
                // `unauthorized`: the org API key the acknowledged cluster initialisation made is
                // gone, so the key is too (the harness never revokes that API key).
                if p.kind() == OpType::Ok || matches!(p.error(), Some("not_found" | "unauthorized")) {
                    key.final_record = Some(final_record(*p));
                }
            } else {
                key.ops.push(*p);
            }
        }
        Analysis { ops, pairs, keys, config }
    }

    /// Devices reported by an operation's value.
    pub fn strings(v: &Value) -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect()).unwrap_or_default()
    }
}

fn final_record(read: Pair<'_>) -> FinalRecord<'_> {
    let v = read.value();
    FinalRecord {
        read,
        missing: read.kind() != OpType::Ok,
        uses: v["uses"].as_u64().unwrap_or(0),
        revoked: v["revoked"].as_bool().unwrap_or(false),
        devices: Analysis::strings(&v["devices"]),
        enrolled_at_ms: v["enrolled_at_ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default(),
    }
}

/// Runs every checker.
pub fn check_all(ops: &[Op], config: Config) -> Results {
    let analysis = Analysis::new(ops, config);
    let mut results = Results::default();
    limits::check(&analysis, &mut results);
    revoke::check(&analysis, &mut results);
    expiry::check(&analysis, &mut results);
    linearizable::check(&analysis, &mut results);
    listing::check(&analysis, &mut results);
    recovery::check(ops, &mut results);
    machines::check(ops, &mut results);
    credentials::check(&analysis, &mut results);
    results
}

/// The devices of enrolments that completed with `kind`.
pub fn devices_with<'a>(key: &'a KeyHistory<'a>, kind: OpType) -> BTreeMap<&'a str, Pair<'a>> {
    key.enrolments().filter(|p| p.kind() == kind).filter_map(|p| p.device().map(|d| (d, *p))).collect()
}

/// Every device an enrolment of this key sent.
pub fn devices_sent<'a>(key: &'a KeyHistory<'a>) -> BTreeSet<&'a str> {
    key.enrolments().filter_map(|p| p.device()).collect()
}

#[cfg(test)]
pub(crate) mod tests;
