//! Which machines are alive, as the leader sees it: heartbeats without a Raft write each.
//!
//! Heartbeats reach the leader (followers forward them) and only update this in-memory table.
//! Two things leave it, both as replicated commands the leader proposes:
//! - every sweep, the ephemeral machines it has not heard from for the inactivity timeout
//!   (`DeregisterInactive`);
//! - at most once per persist interval, the last-seen times that moved (`RecordLastSeen`), one
//!   entry for any number of machines.
//!
//! A new leader trusts no last-seen time it did not observe: when the term changes, every
//! ephemeral machine starts its full timeout again. So a live machine is never deleted because
//! of a failover or a full-cluster restart; the cost is that a dead ephemeral machine lingers up
//! to one more timeout after a leader change. Likewise, when sweeps stop for much longer than
//! their interval (the leader was frozen, or the whole cluster paused), the leader cannot tell
//! a silent machine from its own blackout, and every timer starts again.
//!
//! A sweep's decision carries the term it was made in; the state machine ignores it under any
//! other term, and the node never forwards it, so a deposed or frozen leader's view of silence
//! cannot take effect under its successor. It also carries, per machine, the node key and the
//! persisted last-seen time it judged: a machine that re-keyed (an enrolment is a sign of life)
//! or was seen since is skipped when the sweep commits. A heartbeat that arrives while its
//! machine is being swept waits for the sweep and is answered by the state after it.
//!
//! Times here are milliseconds on a monotonic clock the caller supplies, so the rules are
//! testable without waiting. This module must not propose anything itself.

use std::collections::{HashMap, HashSet};

use crate::sm::model::Millis;

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Monotonic milliseconds of the last heartbeat (or of the timer's restart).
    mono: u64,
    /// Wall-clock time of the last real heartbeat, for `last_seen`.
    wall: Option<Millis>,
}

/// The leader's view of machine liveness.
#[derive(Debug)]
pub struct Liveness {
    timeout_ms: u64,
    persist_every_ms: u64,
    /// Sweeps further apart than this restart every timer (see the module header).
    max_gap_ms: u64,
    /// When the last sweep ran.
    last_sweep_mono: Option<u64>,
    /// The term this view was built in; `None` when not leading.
    term: Option<u64>,
    seen: HashMap<String, Seen>,
    /// Machines heard from since the last persisted batch.
    unpersisted: HashSet<String>,
    last_persist_mono: u64,
    /// The machines the sweep in flight decided to delete, until it is done ([`Liveness::swept`]).
    sweeping: HashSet<String>,
}

impl Liveness {
    /// `max_gap_ms`: the longest normal pause between two sweeps (a few sweep intervals).
    pub fn new(timeout_ms: u64, persist_every_ms: u64, max_gap_ms: u64) -> Self {
        Liveness {
            timeout_ms,
            persist_every_ms,
            max_gap_ms,
            last_sweep_mono: None,
            term: None,
            seen: HashMap::new(),
            unpersisted: HashSet::new(),
            last_persist_mono: 0,
            sweeping: HashSet::new(),
        }
    }

    /// A heartbeat (or an enrolment) from `machine_id`, observed by the leader. Answers whether
    /// the sweep in flight is deleting it: the heartbeat must then wait for that sweep and be
    /// answered by the state after it, so no machine is told it is fine just before it goes.
    pub fn observe(&mut self, machine_id: &str, mono: u64, wall: Millis) -> bool {
        self.seen.insert(machine_id.to_string(), Seen { mono, wall: Some(wall) });
        self.unpersisted.insert(machine_id.to_string());
        self.sweeping.contains(machine_id)
    }

    /// A sign of life from `machine_id` that is not a heartbeat (it enrolled, or re-keyed): its
    /// timer starts again, and its last-seen time stays what its heartbeats said. Answers
    /// whether the sweep in flight is deleting it.
    pub fn alive(&mut self, machine_id: &str, mono: u64) -> bool {
        let wall = self.seen.get(machine_id).and_then(|s| s.wall);
        self.seen.insert(machine_id.to_string(), Seen { mono, wall });
        self.sweeping.contains(machine_id)
    }

    /// The wall-clock time of the last heartbeat this leader saw from `machine_id`.
    pub fn last_seen(&self, machine_id: &str) -> Option<Millis> {
        self.seen.get(machine_id).and_then(|s| s.wall)
    }

    /// The term this view was built in, while it is kept.
    pub fn term(&self) -> Option<u64> {
        self.term
    }

    /// This node is not the leader (any more): forget everything.
    pub fn step_down(&mut self) {
        self.term = None;
        self.last_sweep_mono = None;
        self.seen.clear();
        self.unpersisted.clear();
        self.sweeping.clear();
    }

    /// Called periodically while leading in `term`, with every machine in the store and whether
    /// it is ephemeral. Answers the ephemeral machines whose timeout has passed.
    pub fn sweep<'a>(
        &mut self,
        term: u64,
        mono: u64,
        machines: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> Vec<String> {
        let blackout = self.last_sweep_mono.is_some_and(|last| mono.saturating_sub(last) > self.max_gap_ms);
        if self.term != Some(term) {
            // New leadership: restart every timer rather than trust times we did not observe.
            self.step_down();
            self.term = Some(term);
            self.last_persist_mono = mono;
        } else if blackout {
            // This leader was not running (frozen, or the host paused): silence it could not
            // hear is not silence. Every timer starts again; real heartbeats keep their times.
            for seen in self.seen.values_mut() {
                seen.mono = mono;
            }
        }
        self.last_sweep_mono = Some(mono);
        let mut expired = Vec::new();
        let mut present = HashSet::new();
        for (id, ephemeral) in machines {
            present.insert(id);
            if !ephemeral {
                continue;
            }
            let seen = self.seen.entry(id.to_string()).or_insert(Seen { mono, wall: None });
            if mono.saturating_sub(seen.mono) >= self.timeout_ms {
                expired.push(id.to_string());
            }
        }
        // Forget machines that are gone.
        self.seen.retain(|id, _| present.contains(id.as_str()));
        self.unpersisted.retain(|id| present.contains(id.as_str()));
        self.sweeping = expired.iter().cloned().collect();
        expired
    }

    /// The sweep that began with [`Liveness::sweep`] has finished proposing at `mono`: the next
    /// sweep's gap is measured from here, so a slow commit is not taken for a blackout; the
    /// machines it decided about are no longer being swept.
    pub fn swept(&mut self, mono: u64) {
        self.sweeping.clear();
        if self.term.is_some() {
            self.last_sweep_mono = Some(mono);
        }
    }

    /// The last-seen times to persist, at most once per persist interval.
    pub fn take_persist(&mut self, mono: u64) -> Option<Vec<(String, Millis)>> {
        if self.term.is_none() || mono.saturating_sub(self.last_persist_mono) < self.persist_every_ms {
            return None;
        }
        self.last_persist_mono = mono;
        let batch: Vec<(String, Millis)> = self
            .unpersisted
            .drain()
            .filter_map(|id| self.seen.get(&id).and_then(|s| s.wall).map(|wall| (id, wall)))
            .collect();
        (!batch.is_empty()).then_some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn heartbeats_from_ten_thousand_machines_cost_one_write_a_minute() {
        let mut live = Liveness::new(10 * MIN, MIN, 30_000);
        let machines: Vec<String> = (0..10_000).map(|n| format!("m_{n}")).collect();
        let ids = || machines.iter().map(|m| (m.as_str(), true));
        let mut proposals = 0;
        // Ten minutes; every machine heartbeats every 30 s, spread evenly; sweeps every 5 s.
        for second in 0..600u64 {
            let mono = second * 1000;
            for (n, id) in machines.iter().enumerate() {
                if (n as u64 + second) % 30 == 0 {
                    let _ = live.observe(id, mono, 1_700_000_000_000 + mono);
                }
            }
            if second % 5 == 0 {
                assert!(live.sweep(1, mono, ids()).is_empty(), "no live machine expires");
                if live.take_persist(mono).is_some() {
                    proposals += 1;
                }
            }
        }
        // 333 heartbeats a second for ten minutes became at most one write per minute.
        assert!(proposals <= 10, "{proposals} proposals");
        assert!(proposals >= 9, "last-seen is still persisted: {proposals}");
    }

    #[test]
    fn silent_machines_expire_and_a_new_term_restarts_every_timer() {
        let mut live = Liveness::new(10_000, MIN, 5_000);
        let both = [("a", true), ("b", true), ("p", false)];
        assert!(live.sweep(1, 0, both).is_empty());
        assert!(live.sweep(1, 5_000, both).is_empty());
        let _ = live.observe("a", 8_000, 1);
        // "b" is silent for the timeout; "p" is persistent and never expires.
        assert_eq!(live.sweep(1, 10_000, both), vec!["b".to_string()]);
        assert!(live.sweep(1, 14_000, [("p", false)]).is_empty());
        // A new leader (term 2) starts every timer again, even for "a" that is silent.
        assert!(live.sweep(2, 100_000, [("a", true)]).is_empty());
        assert!(live.sweep(2, 105_000, [("a", true)]).is_empty());
        assert!(live.sweep(2, 109_999, [("a", true)]).is_empty());
        assert_eq!(live.sweep(2, 110_000, [("a", true)]), vec!["a".to_string()]);
    }

    #[test]
    fn a_heartbeat_while_its_machine_is_being_swept_is_told_so_until_the_sweep_is_done() {
        let mut live = Liveness::new(10_000, MIN, 5_000);
        assert!(live.sweep(1, 0, [("a", true)]).is_empty());
        assert!(live.sweep(1, 5_000, [("a", true)]).is_empty());
        assert_eq!(live.sweep(1, 10_000, [("a", true)]), vec!["a".to_string()]);
        assert!(live.observe("a", 10_001, 1), "being swept: the heartbeat waits for the sweep");
        live.swept(10_002);
        assert!(!live.observe("a", 10_003, 2), "the sweep is done");
    }

    #[test]
    fn a_leader_that_did_not_run_for_longer_than_the_timeout_deletes_nobody() {
        let mut live = Liveness::new(10_000, MIN, 5_000);
        let both = [("a", true), ("b", true)];
        assert!(live.sweep(1, 0, both).is_empty());
        let _ = live.observe("a", 2_000, 1);
        // Frozen from 2 s to 40 s: nothing it could hear counts as silence.
        assert!(live.sweep(1, 40_000, both).is_empty());
        assert!(live.sweep(1, 44_000, both).is_empty());
        // Back to sweeping every few seconds: a machine silent for the full timeout since the
        // thaw goes, one that heartbeats stays.
        let _ = live.observe("a", 48_000, 2);
        assert!(live.sweep(1, 48_000, both).is_empty());
        assert_eq!(live.sweep(1, 50_000, both), vec!["b".to_string()]);
    }
}
