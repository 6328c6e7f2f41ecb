//! Repeated log lines, rate-limited: a warning logged at most once per period per call site,
//! with the number of like ones not logged since (`suppressed`). A fault that repeats thousands
//! of times a second (a peer refusing every append, a disk-full node, no leader under load)
//! must not fill the disks of the healthy nodes with its log.
//!
//! The same holds for openraft's own warnings: with one peer down, it logs two or three lines
//! for every retry and every leadership check (a gigabyte a day). [`QuietRepeats`] lets each of
//! its warning and error call sites through once per [`OPENRAFT_PERIOD`]; what a peer's outage
//! means is said by [`PeerHealth`] instead, in one line when it goes, one when it is back, and a
//! reminder a minute in between.
//!
//! This module must not decide anything; it only counts and logs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// One call site's limiter; usually a `static`.
pub struct LogEvery {
    period: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogEvery {
    pub const fn new(period: Duration) -> Self {
        LogEvery { period, last: Mutex::new(None), suppressed: AtomicU64::new(0) }
    }

    /// `Some(n)` when this occurrence is to be logged, `n` being how many were not since the
    /// last one logged; `None` (and counted) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < self.period) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(Instant::now());
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }

    /// Logs `what` as a warning, at most once per period.
    pub fn warn(&self, what: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.allow() {
            tracing::warn!(suppressed, "{what}");
        }
    }
}

/// Ten seconds: how often a repeated warning is logged.
pub const PERIOD: Duration = Duration::from_secs(10);

/// How often one of openraft's warning or error call sites is let through.
pub const OPENRAFT_PERIOD: Duration = Duration::from_secs(60);

/// A log filter: each warning or error call site of openraft is let through at most once per
/// `period`; everything else passes untouched.
pub struct QuietRepeats {
    period: Duration,
    last: Mutex<HashMap<Identifier, Instant>>,
}

impl QuietRepeats {
    pub fn new(period: Duration) -> Self {
        QuietRepeats { period, last: Mutex::default() }
    }

    fn applies(meta: &Metadata<'_>) -> bool {
        meta.is_event() && *meta.level() <= Level::WARN && meta.target().starts_with("openraft")
    }
}

impl<S> Filter<S> for QuietRepeats {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        if !Self::applies(meta) {
            return true;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get(&meta.callsite()) {
            Some(at) if now.duration_since(*at) < self.period => false,
            _ => {
                last.insert(meta.callsite(), now);
                true
            }
        }
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if Self::applies(meta) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }
}

/// Whether each peer (by address) answers this node's internal calls, said in the log only
/// when that changes (and as a reminder once a minute while it is down).
#[derive(Default)]
pub struct PeerHealth {
    down: Mutex<HashMap<String, Down>>,
}

struct Down {
    since: Instant,
    reminded: Instant,
    failures: u64,
}

/// How often a peer that stays down is mentioned again.
pub const PEER_REMINDER: Duration = Duration::from_secs(60);

impl PeerHealth {
    /// A call to `peer` failed with `why`.
    pub fn failed(&self, peer: &str, why: &dyn std::fmt::Display) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match down.get_mut(peer) {
            None => {
                down.insert(peer.to_string(), Down { since: now, reminded: now, failures: 1 });
                tracing::warn!(peer, "node at {peer} does not answer ({why}); retrying quietly");
            }
            Some(d) => {
                d.failures += 1;
                if now.duration_since(d.reminded) >= PEER_REMINDER {
                    d.reminded = now;
                    let (secs, failures) = (d.since.elapsed().as_secs(), d.failures);
                    tracing::warn!(peer, failures, "node at {peer} has not answered for {secs} s ({why})");
                }
            }
        }
    }

    /// A call to `peer` was answered.
    pub fn answered(&self, peer: &str) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = down.remove(peer) {
            let (secs, failures) = (d.since.elapsed().as_secs(), d.failures);
            tracing::info!(peer, failures, "node at {peer} answers again after {secs} s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_then_the_rest_are_counted_until_the_period_passes() {
        let every = LogEvery::new(Duration::from_millis(50));
        assert_eq!(every.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(every.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(every.allow(), Some(1000));
    }
}
