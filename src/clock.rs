//! Time: this node's wall clock, and the cluster time the leader stamps on every log entry.
//!
//! The state machine never reads a clock: every entry carries a time stamped by the leader that
//! proposed it, and the state machine decides every command of the entry at
//! `max(stamp, largest stamp applied before)`. What time that stamp is, is decided here, so that
//! one node's clock cannot move the cluster's far:
//!
//! - **The majority's estimate.** Every answer on the internal listener carries the answering
//!   node's wall clock (`x-ztna-wall-ms`); the leader keeps the last reading from each peer and
//!   ages it with its own monotonic clock. The estimate is the median of its own wall clock and
//!   the readings less than [`SAMPLE_FRESH`] old (the lower middle for an even count). With three
//!   nodes, one node's clock jumping either way does not move the median; with two nodes up, a
//!   clock jumping ahead does not move it (the lower one is taken).
//! - **Anchored at the term's first stamp.** A new leader starts at `max(estimate, floor)`, where
//!   `floor` is the state machine's clock: time never goes back across leader changes.
//! - **Paced by the monotonic clock.** Within a term, the time moves with the leader's monotonic
//!   clock, steered toward the estimate by at most [`SLEW_PERCENT`] of the elapsed time: a
//!   wall-clock jump of any size on the leader, or of the estimate, changes the pace by at most
//!   that much (a key lives at most 5% longer or shorter while the majority's clocks are wrong).
//!
//! A test-only offset on [`Clock`] makes one node's clock jump (`ztna server` sets it on SIGHUP).
//!
//! This module must not decide anything about keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sm::model::Millis;

/// A peer's clock reading older than this is not used.
pub const SAMPLE_FRESH: Duration = Duration::from_secs(10);
/// How much faster or slower than its monotonic clock the leader's cluster time may run.
pub const SLEW_PERCENT: u64 = 5;
/// How often the pace is re-anchored (the steering works on this period).
const REANCHOR: Duration = Duration::from_secs(1);
/// The response header carrying a node's wall clock on the internal listener.
pub const WALL_HEADER: &str = "x-ztna-wall-ms";

/// Wall-clock milliseconds, plus the test-only offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn new(offset_ms: i64) -> Self {
        Clock { offset_ms: Arc::new(AtomicI64::new(offset_ms)) }
    }

    /// Sets the test-only offset: a clock jump, as `ztna server` does on SIGHUP.
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    pub fn now_ms(&self) -> Millis {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        wall.saturating_add(self.offset_ms.load(Ordering::Relaxed)).max(0) as Millis
    }
}

/// Wall-clock milliseconds without offset, for display and file names.
pub fn wall_ms() -> Millis {
    Clock::default().now_ms()
}

/// A peer's last clock reading.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Millis,
    at: Instant,
}

/// Where the leader's cluster time stands: the anchor it is paced from, and the last stamp.
#[derive(Debug, Clone, Copy)]
struct Pace {
    term: u64,
    anchor_time: Millis,
    anchor_at: Instant,
    last: Millis,
}

/// The cluster time of this node when it leads (see the module header).
#[derive(Clone, Debug, Default)]
pub struct ClusterClock {
    wall: Clock,
    inner: Arc<Mutex<ClockState>>,
}

#[derive(Debug, Default)]
struct ClockState {
    peers: HashMap<String, Sample>,
    pace: Option<Pace>,
}

impl ClusterClock {
    pub fn new(wall: Clock) -> Self {
        ClusterClock { wall, inner: Arc::default() }
    }

    /// This node's wall clock.
    pub fn wall(&self) -> &Clock {
        &self.wall
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A reading of `peer`'s wall clock, just received.
    pub fn observe_peer(&self, peer: &str, wall: Millis) {
        let sample = Sample { wall, at: Instant::now() };
        self.state().peers.insert(peer.to_string(), sample);
    }

    /// The median of this node's wall clock and the fresh peer readings (lower middle).
    pub fn estimate(&self) -> Millis {
        let now = Instant::now();
        let own = self.wall.now_ms();
        let state = self.state();
        estimate(own, state.peers.values().map(|s| (s.wall, now.saturating_duration_since(s.at))))
    }

    /// The time [`ClusterClock::stamp`] would stamp now, without stamping.
    pub fn peek(&self, term: u64, floor: Millis) -> Millis {
        let estimate = self.estimate();
        next_stamp(self.state().pace, term, floor, estimate, Instant::now()).1
    }

    /// The time to stamp on an entry the leader of `term` proposes now; never below `floor` (the
    /// state machine's clock) nor below an earlier stamp of the same term.
    pub fn stamp(&self, term: u64, floor: Millis) -> Millis {
        let estimate = self.estimate();
        let mut state = self.state();
        let (pace, time) = next_stamp(state.pace, term, floor, estimate, Instant::now());
        state.pace = Some(pace);
        time
    }
}

/// The median of `own` and the readings younger than [`SAMPLE_FRESH`], each aged by how long
/// ago it was taken.
fn estimate(own: Millis, readings: impl Iterator<Item = (Millis, Duration)>) -> Millis {
    let mut clocks: Vec<Millis> = std::iter::once(own)
        .chain(readings.filter(|(_, age)| *age < SAMPLE_FRESH).map(|(wall, age)| wall + age.as_millis() as u64))
        .collect();
    clocks.sort_unstable();
    clocks[(clocks.len() - 1) / 2]
}

/// The pure rule behind [`ClusterClock::stamp`].
fn next_stamp(pace: Option<Pace>, term: u64, floor: Millis, estimate: Millis, now: Instant) -> (Pace, Millis) {
    match pace {
        Some(pace) if pace.term == term => {
            let elapsed = now.saturating_duration_since(pace.anchor_at);
            let ms = elapsed.as_millis() as u64;
            let slack = ms * SLEW_PERCENT / 100;
            let lo = pace.anchor_time + ms - slack;
            let hi = pace.anchor_time + ms + slack;
            let time = estimate.clamp(lo, hi).max(floor).max(pace.last);
            let pace = if elapsed >= REANCHOR {
                Pace { term, anchor_time: time, anchor_at: now, last: time }
            } else {
                Pace { last: time, ..pace }
            };
            (pace, time)
        }
        // A new term (or the first stamp): anchor at the majority's estimate.
        _ => {
            let time = estimate.max(floor).max(pace.map_or(0, |p| p.last));
            (Pace { term, anchor_time: time, anchor_at: now, last: time }, time)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;
    const T0: Millis = 1_800_000_000_000;

    #[test]
    fn the_median_ignores_one_clock_jumping_either_way() {
        let fresh = Duration::from_millis(5);
        // Three nodes: one far ahead, or far behind, leaves the median where the other two are.
        assert_eq!(estimate(T0 + 3 * HOUR, [(T0, fresh), (T0 + 1, fresh)].into_iter()), T0 + 6);
        assert_eq!(estimate(T0, [(T0 - 3 * HOUR, fresh), (T0 + 1, fresh)].into_iter()), T0);
        // Two nodes: the lower reading, so a clock ahead cannot pull time forward.
        assert_eq!(estimate(T0 + 3 * HOUR, [(T0, fresh)].into_iter()), T0 + 5);
        // A stale reading is not used.
        assert_eq!(estimate(T0, [(T0 - HOUR, SAMPLE_FRESH)].into_iter()), T0);
    }

    #[test]
    fn within_a_term_time_follows_the_monotonic_clock_within_the_slew() {
        let start = Instant::now();
        let (pace, t) = next_stamp(None, 1, 0, T0, start);
        assert_eq!(t, T0);
        // The estimate jumps three hours ahead: after ten seconds, time moved 10.5 s at most.
        let (pace, t) = next_stamp(Some(pace), 1, 0, T0 + 3 * HOUR, start + Duration::from_secs(10));
        assert_eq!(t, T0 + 10_500);
        // It jumps back an hour: time still moves forward, at 95% of real time at least.
        let (_, t2) = next_stamp(Some(pace), 1, 0, T0 - HOUR, start + Duration::from_secs(20));
        assert_eq!(t2, t + 9_500);
    }

    #[test]
    fn a_new_term_anchors_at_the_estimate_but_never_below_the_floor() {
        let start = Instant::now();
        let (pace, _) = next_stamp(None, 1, 0, T0, start);
        let (_, t) = next_stamp(Some(pace), 2, 0, T0 + 60_000, start);
        assert_eq!(t, T0 + 60_000);
        // The state machine's clock is ahead of every estimate: time does not go back.
        let (_, t) = next_stamp(Some(pace), 3, T0 + HOUR, T0, start);
        assert_eq!(t, T0 + HOUR);
    }
}
