//! Test-only fault switches, compiled in only with the `fault-injection` cargo feature.
//!
//! Each switch deliberately breaks one guarantee so that fault-injection tests can prove they
//! would notice. Release builds leave the feature off, and then every switch is a constant
//! `false` the compiler removes. With the feature on, a switch is read once from the environment.
//!
//! This module must never be enabled in a build that serves real users.

/// `ZTNA_FAULT_ACK_BEFORE_FSYNC=1`: tell openraft log entries are durable before the fsync.
pub fn ack_before_fsync() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("ZTNA_FAULT_ACK_BEFORE_FSYNC").is_ok_and(|v| v == "1"))
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        false
    }
}
