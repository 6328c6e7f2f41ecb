//! The node's Prometheus metrics: counters and histograms the rest of the node bumps, and the
//! text exposition `GET /metrics` serves.
//!
//! One process runs one node, so the registry is process-wide ([`global`]); every part records
//! into it without being handed a handle. Label values come only from fixed sets (known routes,
//! known actions, error codes the API defines), never from raw client input, so no client can
//! grow the number of series. Raft's own state (role, term, indexes, replication lag) is read
//! from openraft's metrics when scraped, not stored here.
//!
//! This module must not decide anything and must never record a secret: labels are route
//! names, action names and outcome codes only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use openraft::ServerState;

use crate::raft_types::{NodeId, NodeInfo};

/// Latency buckets, in seconds (100 µs to 10 s).
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Commands per proposed log entry.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// The enrolment outcomes counted by name; any other answer counts as `other`.
pub const ENROLMENT_OUTCOMES: &[&str] =
    &["ok", "key_used", "key_exhausted", "key_revoked", "key_expired", "invalid_auth_key", "other"];

/// A cumulative histogram with fixed bucket bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum of observations in millionths of the unit (µs for latencies).
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// An API request's labels: the route, the action named in the body (or `-`), the outcome code.
type RequestKey = (&'static str, &'static str, &'static str);

/// Every metric the node records itself.
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    request_seconds: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    forwarded_writes: AtomicU64,
    forwarded_reads: AtomicU64,
    ephemeral_deletions: AtomicU64,
    leader_changes: AtomicU64,
    peer_refusals: AtomicU64,
    connection_refusals: AtomicU64,
    auth_throttled: AtomicU64,
    proposals: AtomicU64,
    proposal_commands: Histogram,
    fsync_seconds: Histogram,
    /// The commit index openraft last saved (it is not in openraft 0.9's metrics); 0 = none.
    committed: AtomicU64,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's registry.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            requests: Mutex::default(),
            request_seconds: Mutex::default(),
            forwarded_writes: AtomicU64::new(0),
            forwarded_reads: AtomicU64::new(0),
            ephemeral_deletions: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            peer_refusals: AtomicU64::new(0),
            connection_refusals: AtomicU64::new(0),
            auth_throttled: AtomicU64::new(0),
            proposals: AtomicU64::new(0),
            proposal_commands: Histogram::new(BATCH_BUCKETS),
            fsync_seconds: Histogram::new(LATENCY_BUCKETS),
            committed: AtomicU64::new(0),
        }
    }

    /// One answered API request. All three labels come from fixed sets.
    pub fn request(&self, route: &'static str, action: &'static str, outcome: &'static str, elapsed: Duration) {
        *lock(&self.requests).entry((route, action, outcome)).or_insert(0) += 1;
        lock(&self.request_seconds)
            .entry((route, action))
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe_duration(elapsed);
    }

    /// Enrolments by [`ENROLMENT_OUTCOMES`], from the requests to `/api/enrol`.
    fn enrolments(&self) -> Vec<u64> {
        let mut counts = vec![0; ENROLMENT_OUTCOMES.len()];
        let other = ENROLMENT_OUTCOMES.len() - 1;
        for ((route, _, outcome), n) in lock(&self.requests).iter() {
            if *route == "/api/enrol" {
                counts[ENROLMENT_OUTCOMES.iter().position(|o| o == outcome).unwrap_or(other)] += n;
            }
        }
        counts
    }

    pub fn forwarded(&self, write: bool) {
        let counter = if write { &self.forwarded_writes } else { &self.forwarded_reads };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ephemeral_deleted(&self, count: usize) {
        self.ephemeral_deletions.fetch_add(count as u64, Ordering::Relaxed);
    }

    pub fn leader_changed(&self) {
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// An internal call refused: no or a wrong node certificate, or not a member.
    pub fn peer_refused(&self) {
        self.peer_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed by a listener's limits (per address, handshakes, a refused peer).
    pub fn connection_refused(&self) {
        self.connection_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// A request answered 429 because its client or credential failed too often.
    pub fn throttled(&self) {
        self.auth_throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// One log entry proposed by this node as leader, holding `commands` commands.
    pub fn proposed(&self, commands: usize) {
        self.proposals.fetch_add(1, Ordering::Relaxed);
        self.proposal_commands.observe(commands as f64);
    }

    pub fn fsync(&self, elapsed: Duration) {
        self.fsync_seconds.observe_duration(elapsed);
    }

    pub fn committed(&self, index: Option<u64>) {
        self.committed.store(index.map_or(0, |i| i + 1), Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of everything, with Raft's state read from
    /// `raft`.
    /// The text of `/metrics`; `rules` is the state-machine rules this node applies entries by.
    pub fn render(&self, raft: &openraft::RaftMetrics<NodeId, NodeInfo>, disk: (u64, bool), rules: u32) -> String {
        let mut out = String::with_capacity(8192);
        header(
            &mut out,
            "ztna_state_machine_rules",
            "gauge",
            "The rules this node applies log entries by; below ztna_build_rules until every member runs a build that knows them and the cluster adopted them.",
        );
        sample(&mut out, "ztna_state_machine_rules", "", u64::from(rules));
        header(&mut out, "ztna_build_rules", "gauge", "The newest state-machine rules this build knows.");
        sample(&mut out, "ztna_build_rules", "", u64::from(crate::sm::RULES));
        header(&mut out, "ztna_disk_free_bytes", "gauge", "Free space on the data directory's filesystem.");
        sample(&mut out, "ztna_disk_free_bytes", "", disk.0);
        header(&mut out, "ztna_disk_full", "gauge", "1 when the node stopped taking part in Raft for want of space.");
        sample(&mut out, "ztna_disk_full", "", u64::from(disk.1));
        render_raft(&mut out, raft, self.committed.load(Ordering::Relaxed).checked_sub(1));
        header(&mut out, "ztna_raft_leader_changes_total", "counter", "Leader changes this node has seen.");
        sample(&mut out, "ztna_raft_leader_changes_total", "", self.leader_changes.load(Ordering::Relaxed));
        header(&mut out, "ztna_peer_refused_total", "counter", "Internal calls refused (certificate or membership).");
        sample(&mut out, "ztna_peer_refused_total", "", self.peer_refusals.load(Ordering::Relaxed));
        header(
            &mut out,
            "ztna_connections_refused_total",
            "counter",
            "Connections closed by a listener's limits (per address or member, TLS handshakes, a refused certificate).",
        );
        sample(&mut out, "ztna_connections_refused_total", "", self.connection_refusals.load(Ordering::Relaxed));
        header(
            &mut out,
            "ztna_auth_throttled_total",
            "counter",
            "Requests answered 429 after too many failed authentications.",
        );
        sample(&mut out, "ztna_auth_throttled_total", "", self.auth_throttled.load(Ordering::Relaxed));
        header(&mut out, "ztna_proposals_total", "counter", "Log entries proposed by this node as leader.");
        sample(&mut out, "ztna_proposals_total", "", self.proposals.load(Ordering::Relaxed));
        header(&mut out, "ztna_proposal_commands", "histogram", "Commands per proposed log entry (group commit).");
        self.proposal_commands.render(&mut out, "ztna_proposal_commands", "");
        header(&mut out, "ztna_log_fsync_seconds", "histogram", "Duration of each grouped fsync of the Raft log.");
        self.fsync_seconds.render(&mut out, "ztna_log_fsync_seconds", "");

        header(&mut out, "ztna_api_requests_total", "counter", "API requests answered, by route, action and outcome.");
        for ((route, action, outcome), n) in lock(&self.requests).iter() {
            let labels = format!("route=\"{route}\",action=\"{action}\",outcome=\"{outcome}\"");
            sample(&mut out, "ztna_api_requests_total", &labels, *n);
        }
        header(&mut out, "ztna_api_request_seconds", "histogram", "API request latency, by route and action.");
        for ((route, action), histogram) in lock(&self.request_seconds).iter() {
            histogram.render(&mut out, "ztna_api_request_seconds", &format!("route=\"{route}\",action=\"{action}\""));
        }
        header(&mut out, "ztna_enrolments_total", "counter", "Enrolments answered by this node, by outcome.");
        for (outcome, n) in ENROLMENT_OUTCOMES.iter().zip(self.enrolments()) {
            sample(&mut out, "ztna_enrolments_total", &format!("outcome=\"{outcome}\""), n);
        }
        header(&mut out, "ztna_forwarded_requests_total", "counter", "Requests this node forwarded to the leader.");
        let writes = self.forwarded_writes.load(Ordering::Relaxed);
        let reads = self.forwarded_reads.load(Ordering::Relaxed);
        sample(&mut out, "ztna_forwarded_requests_total", "kind=\"write\"", writes);
        sample(&mut out, "ztna_forwarded_requests_total", "kind=\"read\"", reads);
        header(&mut out, "ztna_ephemeral_deletions_total", "counter", "Ephemeral machines deleted for inactivity.");
        sample(&mut out, "ztna_ephemeral_deletions_total", "", self.ephemeral_deletions.load(Ordering::Relaxed));
        out
    }
}

fn render_raft(out: &mut String, raft: &openraft::RaftMetrics<NodeId, NodeInfo>, committed: Option<u64>) {
    header(out, "ztna_raft_role", "gauge", "1 for this node's current Raft role.");
    for (role, state) in [
        ("leader", ServerState::Leader),
        ("follower", ServerState::Follower),
        ("candidate", ServerState::Candidate),
        ("learner", ServerState::Learner),
    ] {
        sample(out, "ztna_raft_role", &format!("role=\"{role}\""), u64::from(raft.state == state));
    }
    let index = |i: Option<u64>| i.map_or(-1, |i| i as i64);
    header(out, "ztna_raft_term", "gauge", "Current Raft term.");
    sample(out, "ztna_raft_term", "", raft.current_term);
    header(out, "ztna_raft_leader_id", "gauge", "Id of the leader this node knows (-1: none).");
    sample(out, "ztna_raft_leader_id", "", raft.current_leader.map_or(-1, |l| l as i64));
    for (name, help, value) in [
        ("ztna_raft_last_log_index", "Index of the last entry in this node's log (-1: none).", raft.last_log_index),
        ("ztna_raft_commit_index", "Highest index this node knows committed (-1: none).", committed),
        (
            "ztna_raft_applied_index",
            "Index of the last entry applied here (-1: none).",
            raft.last_applied.map(|l| l.index),
        ),
        (
            "ztna_raft_snapshot_index",
            "Last index in this node's newest snapshot (-1: none).",
            raft.snapshot.map(|l| l.index),
        ),
    ] {
        header(out, name, "gauge", help);
        sample(out, name, "", index(value));
    }
    header(out, "ztna_raft_members", "gauge", "Members of the current configuration, by kind.");
    let membership = raft.membership_config.membership();
    let voters = membership.voter_ids().count();
    let learners = membership.learner_ids().count();
    sample(out, "ztna_raft_members", "kind=\"voter\"", voters as u64);
    sample(out, "ztna_raft_members", "kind=\"learner\"", learners as u64);
    header(out, "ztna_raft_replication_lag_entries", "gauge", "On the leader: entries each follower is behind.");
    if let Some(replication) = &raft.replication {
        let last = raft.last_log_index.map_or(0, |i| i + 1);
        for (id, matched) in replication.iter() {
            if *id == raft.id {
                continue;
            }
            let lag = last.saturating_sub(matched.map_or(0, |m| m.index + 1));
            sample(out, "ztna_raft_replication_lag_entries", &format!("follower=\"{id}\""), lag);
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_sum_in_units() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(7.0);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 9\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn enrolment_outcomes_outside_the_named_set_count_as_other() {
        let m = Metrics::new();
        m.request("/api/enrol", "-", "key_used", Duration::from_millis(1));
        m.request("/api/enrol", "-", "invalid_request", Duration::from_millis(1));
        let used = ENROLMENT_OUTCOMES.iter().position(|o| *o == "key_used").unwrap();
        assert_eq!(m.enrolments()[used], 1);
        assert_eq!(m.enrolments()[ENROLMENT_OUTCOMES.len() - 1], 1);
    }
}
