//! Test-only fault switches, compiled in only with the `fault-injection` cargo feature.
//!
//! Each switch deliberately breaks one guarantee so that jepsen-lite's self-test can prove its
//! checkers notice. Release builds leave the feature off, and then every switch is a constant
//! `false` the compiler removes. With the feature on, a switch is read once from the environment
//! (`NAME=1`), so every node started with the same environment behaves the same.
//!
//! This module must never be enabled in a build that serves real users.

/// Reads switch `name` once per process.
#[cfg(feature = "fault-injection")]
fn switch(cell: &'static std::sync::OnceLock<bool>, name: &str) -> bool {
    *cell.get_or_init(|| {
        let on = std::env::var(name).is_ok_and(|v| v == "1");
        if on {
            tracing::warn!("FAULT INJECTION: {name} is on; this node breaks its guarantees on purpose");
        }
        on
    })
}

macro_rules! fault_switch {
    ($(#[$doc:meta])* $fn_name:ident, $env:literal) => {
        $(#[$doc])*
        pub fn $fn_name() -> bool {
            #[cfg(feature = "fault-injection")]
            {
                static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
                switch(&ON, $env)
            }
            #[cfg(not(feature = "fault-injection"))]
            {
                false
            }
        }
    };
}

fault_switch!(
    /// `ZTNA_FAULT_ACK_BEFORE_FSYNC=1`: tell openraft log entries are durable at once and write
    /// the WAL out only about once a second (RocksDB's manual WAL flush), as a store that trusts
    /// a volatile cache would. A `kill -9` of every node then loses acknowledged writes.
    ack_before_fsync,
    "ZTNA_FAULT_ACK_BEFORE_FSYNC"
);

fault_switch!(
    /// `ZTNA_FAULT_SKIP_FSYNC=1`: the Raft log's group commit writes the WAL out to the operating
    /// system but never fsyncs it, and still tells openraft the entries are durable: a real
    /// missing fsync. `kill -9` cannot see it (the page cache survives); a power cut that loses
    /// the page cache (jepsen-lite's lazyfs) loses acknowledged writes.
    skip_fsync,
    "ZTNA_FAULT_SKIP_FSYNC"
);

fault_switch!(
    /// `ZTNA_FAULT_SKIP_SNAPSHOT_FSYNC=1`: the state machine's snapshot files (built here or
    /// received from the leader) are written and renamed into place but never fsynced, nor is
    /// their directory: a real missing fsync in the state machine's own files (its rows share
    /// the log's WAL, which `skip_fsync` covers). `kill -9` cannot see it; after a power cut
    /// that loses the page cache the current snapshot is empty, and a node whose log was purged
    /// up to it cannot start again.
    skip_snapshot_fsync,
    "ZTNA_FAULT_SKIP_SNAPSHOT_FSYNC"
);

fault_switch!(
    /// `ZTNA_FAULT_SKIP_LIMIT_CHECK=1`: the state machine lets any unrevoked, unexpired key enrol,
    /// ignoring one-shot and `max_uses` limits.
    skip_limit_check,
    "ZTNA_FAULT_SKIP_LIMIT_CHECK"
);

fault_switch!(
    /// `ZTNA_FAULT_STALE_READ_ENROL=1`: the enrol handler decides whether a key is used up from
    /// this node's local, possibly stale, state and the state machine no longer checks: the
    /// read-then-write race the ground rules forbid.
    stale_read_enrol,
    "ZTNA_FAULT_STALE_READ_ENROL"
);

fault_switch!(
    /// `ZTNA_FAULT_LOCAL_READ=1`: every read (a key, a listing, a machine's status) is answered
    /// from this node's own state machine, neither forwarded to the leader nor confirmed by a
    /// quorum: a follower cut off by a partition answers from a past it cannot know is past.
    local_read,
    "ZTNA_FAULT_LOCAL_READ"
);

fault_switch!(
    /// `ZTNA_FAULT_FORWARD_SWEEP=1`: a node that stopped leading keeps its last view of which
    /// machines heartbeat, goes on sweeping it, and forwards what it decides to the new leader,
    /// stamped with the new term: the deposed leader's view of silence takes effect under its
    /// successor, and machines heartbeating to the new leader are deleted.
    forward_sweep,
    "ZTNA_FAULT_FORWARD_SWEEP"
);

fault_switch!(
    /// `ZTNA_FAULT_INSTALL_DEFERS_PURGE=1`: a snapshot install does not purge the log in its own
    /// last batch; the purge comes on its own task, seconds later (as builds before did, without
    /// the delay). A crash after the first entries appended past the snapshot then leaves the old
    /// log, a hole and the new entries, from which openraft cannot start.
    install_defers_purge,
    "ZTNA_FAULT_INSTALL_DEFERS_PURGE"
);

fault_switch!(
    /// `ZTNA_FAULT_STALE_REFUSAL=1`: a leader refuses a credential from its applied state as it
    /// stands, without confirming it is current: a leader that has not yet applied its
    /// predecessor's last entries, or a deposed one, answers a definite 401 for a key that exists.
    stale_refusal,
    "ZTNA_FAULT_STALE_REFUSAL"
);

fault_switch!(
    /// `ZTNA_FAULT_SWEEP_UNCHECKED=1`: a sweep deletes the machines it names by id whatever
    /// happened to them since the leader judged them silent (a re-enrolment, a heartbeat during
    /// the sweep), as builds before `SweepSilent` did; and it is proposed four seconds after it
    /// was decided, as a sweep held up behind other work (or whose caller gave up) could be.
    sweep_unchecked,
    "ZTNA_FAULT_SWEEP_UNCHECKED"
);

/// The state machine leaves the use limit to someone else (either switch above).
pub fn state_machine_skips_limit() -> bool {
    skip_limit_check() || stale_read_enrol()
}

/// `ZTNA_TEST_ONLY_CRASH_AT=<point>`: the process aborts when it reaches `point`, as a crash
/// would (nothing is flushed or cleaned up). Unlike the switches above this is in every build:
/// it breaks no guarantee (a node may crash anywhere; surviving that is the point), and the
/// crash tests run the same binary users run. Points: `start` (before the node touches its data),
/// `create-new:written` (a file made once, such as `enrol.key`, written under its temporary
/// name and not yet linked), `append:after-install` (the first entries appended after a snapshot
/// install are durable), `purge` (before the log purge's write),
/// `install:received` (a snapshot fully received, before it is checked), `install:promoted`
/// (it is `snapshot/current`, no row written), `install:rows` (after the first batch of its
/// rows), `install:applied` (all rows and the applied id written, before the node uses them).
pub fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        let at = std::env::var("ZTNA_TEST_ONLY_CRASH_AT").ok().filter(|v| !v.is_empty());
        if let Some(at) = &at {
            tracing::warn!("TEST ONLY: ZTNA_TEST_ONLY_CRASH_AT={at}: this process aborts when it gets there");
        }
        at
    });
    if at.as_deref() == Some(point) {
        eprintln!("ZTNA_TEST_ONLY_CRASH_AT: aborting at {point}");
        std::process::abort();
    }
}

/// `ZTNA_TEST_ONLY_DELAY=<point>=<ms>[,while=<path>]`: the node waits that long when it reaches
/// `point` (every time, or only while file `path` exists, which a test creates and removes to
/// turn the delay on and off). Like the crash points, in every build (a node may be slow
/// anywhere; a test uses this to hold a race open). Points: `sweep:decided` (a sweep has decided
/// which machines were silent, before it is proposed), `propose:answer` (a leader has the
/// outcomes of a follower's forwarded batch, before it answers them).
pub async fn delay_point(point: &str) {
    struct Delay {
        at: String,
        ms: u64,
        while_exists: Option<std::path::PathBuf>,
    }
    static AT: std::sync::OnceLock<Option<Delay>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        let value = std::env::var("ZTNA_TEST_ONLY_DELAY").ok()?;
        let (value, while_exists) = match value.split_once(",while=") {
            Some((value, path)) => (value.to_string(), Some(std::path::PathBuf::from(path))),
            None => (value, None),
        };
        let (at, ms) = value.rsplit_once('=')?;
        let ms = ms.parse().ok()?;
        tracing::warn!("TEST ONLY: ZTNA_TEST_ONLY_DELAY: this node waits {ms} ms at {at}");
        Some(Delay { at: at.to_string(), ms, while_exists })
    });
    let Some(delay) = at.as_ref().filter(|d| d.at == point) else { return };
    if delay.while_exists.as_ref().is_some_and(|path| !path.exists()) {
        return;
    }
    tracing::info!("ZTNA_TEST_ONLY_DELAY: waiting {} ms at {point}", delay.ms);
    tokio::time::sleep(std::time::Duration::from_millis(delay.ms)).await;
}
