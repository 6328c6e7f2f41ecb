//! Repeated log lines, rate-limited: a warning logged at most once per period per call site,
//! with the number of like ones not logged since (`suppressed`). A fault that repeats thousands
//! of times a second (a peer refusing every append, a disk-full node, no leader under load)
//! must not fill the disks of the healthy nodes with its log.
//!
//! This module must not decide anything; it only counts and logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
