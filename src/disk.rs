//! The free-space watchdog: a node whose data directory runs low on space stops taking part in
//! Raft before a write can fail half-way, and says so in its log and in every answer.
//!
//! Every second the watchdog reads the free space of the data directory's filesystem. Below
//! `min_free_disk_mb` the node (once) logs an error, shuts its Raft instance down — it stops
//! voting, appending and leading, so the other nodes elect a leader among themselves and keep
//! serving — and from then on answers writes and reads with 507 `disk_full`. Everything it
//! acknowledged is already durable: nothing is lost and nothing is half-written. Once space is
//! back it logs that the node must be restarted; restarted, it catches up from the leader.
//!
//! This module must not decide anything about keys; it watches one number.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Free bytes for unprivileged writers on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed out-parameter of the right type.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// What the watchdog last saw.
#[derive(Debug, Default)]
pub struct DiskState {
    full: AtomicBool,
    free: AtomicU64,
}

impl DiskState {
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Records a reading; answers `true` the first time the node is found short of space.
    pub fn observe(&self, free: u64, minimum: u64) -> bool {
        self.free.store(free, Ordering::Relaxed);
        free < minimum && !self.full.swap(true, Ordering::Relaxed)
    }
}

/// The message every answer and the log carry while the disk is full.
pub fn full_message(data_dir: &Path, free: u64, minimum: u64) -> String {
    format!(
        "this node's disk is full: {} MiB free under {} (min_free_disk_mb = {}); it has stopped taking part in \
         Raft and refuses requests; the other nodes keep serving. Free space, then restart it",
        free >> 20,
        data_dir.display(),
        minimum >> 20
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filesystem_reports_free_space_and_a_shortage_is_noticed_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        let state = DiskState::default();
        assert!(!state.observe(10 << 20, 5 << 20));
        assert!(state.observe(1 << 20, 5 << 20));
        assert!(!state.observe(1 << 20, 5 << 20), "noticed once");
        assert!(state.is_full());
        assert_eq!(state.free_bytes(), 1 << 20);
    }
}
