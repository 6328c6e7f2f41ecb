//! The leader's wall clock, the only place time enters the system.
//!
//! Time is read here when a batch is proposed and stamped on the log entry; the state machine
//! never reads a clock. A test-only offset lets fault tests make one node's clock jump.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::sm::model::Millis;

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

/// Wall-clock milliseconds without offset, for display.
pub fn wall_ms() -> Millis {
    Clock::default().now_ms()
}
