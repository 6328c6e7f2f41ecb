//! The Raft log and vote over RocksDB, with group commit.
//!
//! `append` writes entries without syncing, so they are readable at once, and hands openraft's
//! callback to a syncer thread. That thread takes every callback waiting, calls one
//! `flush_wal(sync = true)` for all of them, and only then tells openraft the entries are
//! durable: many appends share one fsync. The vote, truncation and purge are written with
//! `sync = true` before returning; since the column families share one WAL, such a write also
//! makes every earlier append durable, which keeps all writes in order.
//!
//! This module must not interpret entries; it stores what openraft gives it.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, OptionalSend, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::{cf, CF_LOG, CF_RAFT};
use crate::codec;
use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};

pub(crate) const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// A purge waiting for a snapshot install (see [`Purging`]): written, synced, before the
/// install's first entries can be appended; removed by the purge that reaches it.
const KEY_PENDING_PURGE: &[u8] = b"pending_purge";

/// The log store. Clones share the database and the syncer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: mpsc::Sender<LogFlushed<TypeConfig>>,
    /// Purges past what the state machine holds go here, and are done once it does (see
    /// `AppliedGate`); `None` purges at once (the storage suite).
    deferred: Option<Arc<Deferred>>,
    applied: Option<super::AppliedGate>,
    /// One purge at a time (openraft's, a deferred one, and a snapshot install's).
    purging: Purging,
}

/// Moves of the log's purge point, one at a time: openraft's purges here, and a snapshot
/// install's, which purges the log up to the snapshot in the same synced batch that makes its
/// rows the state (`state_machine`). Shared by the log store and the state machine.
///
/// While a snapshot install is under way, openraft 0.9 already counts the snapshot's entries as
/// committed and appends what follows them, below which the log still ends where it ended
/// before (a hole). Such appends are written but not acknowledged until the install has
/// purged the log up to the snapshot (`pending`): a crash in between leaves a hole followed
/// only by entries nobody counted on, which [`repair_unfinished_install`] removes at the next
/// open, so the node starts from its old log and state.
#[derive(Clone, Default)]
pub(crate) struct Purging {
    lock: Arc<std::sync::Mutex<()>>,
    /// A snapshot install finished since the log syncer last looked (for a crash point).
    installed: Arc<std::sync::atomic::AtomicBool>,
    /// The purge an install awaits: the syncer acknowledges nothing until it is done.
    pending: Arc<(std::sync::Mutex<Option<u64>>, std::sync::Condvar)>,
}

impl Purging {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A snapshot install has finished.
    pub(crate) fn installed(&self) {
        self.installed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The log is durably purged up to `index`: a pending purge it reaches is done.
    pub(crate) fn purged_through(&self, index: u64) {
        let (pending, done) = &*self.pending;
        let mut pending = pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if pending.is_some_and(|target| target <= index) {
            *pending = None;
            done.notify_all();
        }
    }

    fn await_pending(&self, index: u64) {
        let (pending, _) = &*self.pending;
        let mut pending = pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *pending = Some(pending.map_or(index, |target| target.max(index)));
    }

    /// Blocks while a purge an install awaits is not done.
    fn wait_no_pending(&self) {
        let (pending, done) = &*self.pending;
        let mut pending = pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while pending.is_some() {
            pending = done.wait(pending).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// At open: if a snapshot install was under way when the node stopped (a pending purge the log
/// has not reached), the entries above the snapshot were appended during the install and never
/// acknowledged: they are removed (with the commit hint, which may name them), so the log has
/// no hole and the node starts from its old log and state; the leader sends them again.
fn repair_unfinished_install(db: &DB) -> Result<(), StorageError> {
    let read_err = |e: &dyn std::fmt::Display| StorageIOError::read_logs(AnyError::error(e));
    let Some(bytes) = db.get_cf(cf(db, CF_RAFT), KEY_PENDING_PURGE).map_err(|e| read_err(&e))? else {
        return Ok(());
    };
    let pending: u64 = codec::decode(&bytes).map_err(|e| read_err(&e))?;
    let purged = last_purged(db)?;
    let mut batch = WriteBatch::default();
    batch.delete_cf(cf(db, CF_RAFT), KEY_PENDING_PURGE);
    if purged.is_none_or(|p| p < pending) {
        tracing::warn!(
            pending,
            purged = purged.unwrap_or(0),
            "a snapshot install did not finish before the node stopped: dropping the log entries appended \
             during it (never acknowledged)"
        );
        batch.delete_range_cf(cf(db, CF_LOG), index_key(pending + 1), index_key(u64::MAX));
        batch.delete_cf(cf(db, CF_RAFT), KEY_COMMITTED);
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
}

/// Adds to `batch` the deletion of the log up to `log_id` and the new purge point, unless the
/// log is purged that far already (the purge point never moves back). Call it holding
/// [`Purging::lock`], and write the batch synced before letting go.
/// A pending purge the log then reaches is cleared in the same batch. Answers how far the log is
/// purged once the batch is written.
pub(crate) fn add_purge(db: &DB, batch: &mut WriteBatch, log_id: LogId) -> Result<u64, StorageError> {
    let read_err = |e: &dyn std::fmt::Display| StorageIOError::read_logs(AnyError::error(e));
    let purged = last_purged(db)?;
    let through = purged.map_or(log_id.index, |p| p.max(log_id.index));
    if purged.is_none_or(|p| p < log_id.index) {
        let bytes = codec::encode(&log_id).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        batch.put_cf(cf(db, CF_RAFT), KEY_LAST_PURGED, bytes);
        batch.delete_range_cf(cf(db, CF_LOG), index_key(0), index_key(log_id.index + 1));
    }
    if let Some(bytes) = db.get_cf(cf(db, CF_RAFT), KEY_PENDING_PURGE).map_err(|e| read_err(&e))? {
        if codec::decode::<u64>(&bytes).map_err(|e| read_err(&e))? <= through {
            batch.delete_cf(cf(db, CF_RAFT), KEY_PENDING_PURGE);
        }
    }
    Ok(through)
}

/// The index the log is durably purged through, if any.
fn last_purged(db: &DB) -> Result<Option<u64>, StorageError> {
    let read_err = |e: &dyn std::fmt::Display| StorageIOError::read_logs(AnyError::error(e));
    match db.get_cf(cf(db, CF_RAFT), KEY_LAST_PURGED).map_err(|e| read_err(&e))? {
        Some(bytes) => Ok(Some(codec::decode::<LogId>(&bytes).map_err(|e| read_err(&e))?.index)),
        None => Ok(None),
    }
}

impl LogStore {
    /// `applied`: how far the state machine has durably applied; purges never go past it.
    pub(crate) fn new(
        db: Arc<DB>,
        applied: Option<super::AppliedGate>,
        purging: Purging,
    ) -> Result<Self, StorageError> {
        repair_unfinished_install(&db)?;
        let (syncer, waiting) = mpsc::channel();
        let sync_db = db.clone();
        let sync_purging = purging.clone();
        std::thread::Builder::new()
            .name("ztna-log-sync".into())
            .spawn(move || run_syncer(&sync_db, &waiting, &sync_purging))
            .map(drop)
            .unwrap_or_else(|e| tracing::error!("cannot start the log syncer thread: {e}"));
        let deferred = applied.as_ref().map(|gate| {
            let deferred = Arc::new(Deferred::default());
            tokio::spawn(purge_when_applied(db.clone(), purging.clone(), gate.clone(), deferred.clone()));
            deferred
        });
        Ok(LogStore { db, syncer, deferred, applied, purging })
    }

    /// A purge a snapshot install awaits, up to `index`: recorded (synced) and held to.
    fn pending_purge(&self, index: u64) -> Result<(), StorageError> {
        // Under the purge lock, which the install's last batch holds: either that batch has
        // purged this far already (nothing is pending), or it will clear what is set here.
        let _one_at_a_time = self.purging.lock();
        if last_purged(&self.db)?.is_some_and(|p| p >= index) {
            return Ok(());
        }
        self.purging.await_pending(index);
        let pending = self.get_meta::<u64>(KEY_PENDING_PURGE)?.map_or(index, |p| p.max(index));
        let mut batch = WriteBatch::default();
        let bytes = codec::encode(&pending).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        batch.put_cf(cf(&self.db, CF_RAFT), KEY_PENDING_PURGE, bytes);
        self.write(batch, true).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let bytes = self.db.get_cf(cf(&self.db, CF_RAFT), key).map_err(|e| StorageIOError::read(AnyError::new(&e)))?;
        bytes.map(|b| codec::decode(&b).map_err(|e| StorageIOError::read(AnyError::new(&e)).into())).transpose()
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts)
    }
}

/// Deletes the log up to `log_id` and records it as purged, with a synced write: since the
/// column families share one WAL, this also makes the state machine's earlier writes durable.
fn purge_now(db: &DB, purging: &Purging, log_id: LogId) -> Result<(), StorageError> {
    let _one_at_a_time = purging.lock();
    crate::faults::crash_point("purge");
    // A deferred purge can come after a later one: the purge point never moves back.
    let mut batch = WriteBatch::default();
    let through = add_purge(db, &mut batch, log_id)?;
    if !batch.is_empty() {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(batch, &opts).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
    }
    // Also when the log was purged this far already (by an install): what waits on it goes on.
    purging.purged_through(through);
    Ok(())
}

/// Does the purges that had to wait for the state machine (a snapshot being installed), once it
/// has applied up to them. openraft has already forgotten those entries; it reads the purge
/// point back only when it starts, and until the purge is done that point is the older one, which
/// the entries still on disk agree with.
async fn purge_when_applied(db: Arc<DB>, purging: Purging, applied: super::AppliedGate, deferred: Arc<Deferred>) {
    loop {
        let target = loop {
            if let Some(target) = deferred.take() {
                break target;
            }
            deferred.asked.notified().await;
        };
        if let Err(why) = applied.wait_for(target.index).await {
            return tracing::warn!("not purging the log up to {target}: {why}");
        }
        if crate::faults::install_defers_purge() {
            // The fault: the purge a snapshot install needs comes late, on its own.
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        }
        if let Err(e) = purge_now(&db, &purging, target) {
            return tracing::error!("purging the log up to {target} failed: {e}");
        }
    }
}

/// A purge waiting for the state machine.
#[derive(Default)]
struct Deferred {
    target: std::sync::Mutex<Option<LogId>>,
    asked: tokio::sync::Notify,
}

impl Deferred {
    fn ask(&self, log_id: LogId) {
        let mut target = self.target.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *target = Some(target.map_or(log_id, |t| t.max(log_id)));
        self.asked.notify_one();
    }

    fn take(&self) -> Option<LogId> {
        self.target.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

/// Waits for append callbacks, fsyncs the WAL once per group, then acknowledges the group.
fn run_syncer(db: &DB, waiting: &mpsc::Receiver<LogFlushed<TypeConfig>>, purging: &Purging) {
    if crate::faults::ack_before_fsync() {
        return run_lazy_syncer(db, waiting);
    }
    while let Ok(first) = waiting.recv() {
        let mut group = vec![first];
        group.extend(waiting.try_iter());
        let started = std::time::Instant::now();
        let result = db.flush_wal(!crate::faults::skip_fsync());
        crate::metrics::global().fsync(started.elapsed());
        if let Err(e) = &result {
            tracing::error!("fsync of the Raft log failed: {e}");
        }
        // Entries appended during a snapshot install are acknowledged once it purged the log up
        // to the snapshot (see `Purging`).
        purging.wait_no_pending();
        if purging.installed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            // The first entries after a snapshot install are durable now.
            crate::faults::crash_point("append:after-install");
        }
        for callback in group {
            callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

/// The `ack_before_fsync` fault: acknowledge at once, write the WAL out about once a second.
fn run_lazy_syncer(db: &DB, waiting: &mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let period = std::time::Duration::from_secs(1);
    let mut last_flush = std::time::Instant::now();
    loop {
        match waiting.recv_timeout(period) {
            Ok(callback) => callback.log_io_completed(Ok(())),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if last_flush.elapsed() >= period {
            let _ = db.flush_wal(true);
            last_flush = std::time::Instant::now();
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&key[..8]);
    u64::from_be_bytes(bytes)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n + 1,
            Bound::Unbounded => 0,
        };
        let read_err = |e: &dyn std::error::Error| StorageIOError::read_logs(AnyError::error(e.to_string()));
        let mut entries = Vec::new();
        let iter = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::From(&index_key(start), Direction::Forward));
        for item in iter {
            let (key, value) = item.map_err(|e| read_err(&e))?;
            if !range.contains(&index_of(&key)) {
                break;
            }
            entries.push(codec::decode::<Entry>(&value).map_err(|e| read_err(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last = self
            .db
            .iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End)
            .next()
            .transpose()
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
        let last_log_id = match last {
            Some((_, value)) => {
                Some(codec::decode::<Entry>(&value).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let bytes = codec::encode(vote).map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        batch.put_cf(cf(&self.db, CF_RAFT), KEY_VOTE, bytes);
        self.write(batch, true).map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        crate::metrics::global().committed(committed.map(|c| c.index));
        // A hint for faster restarts: losing it only means re-learning the commit index.
        let mut batch = WriteBatch::default();
        let bytes = codec::encode(&committed).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        batch.put_cf(cf(&self.db, CF_RAFT), KEY_COMMITTED, bytes);
        self.write(batch, false).map_err(|e| StorageIOError::write(AnyError::new(&e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let log_cf = cf(&self.db, CF_LOG);
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
            batch.put_cf(log_cf, index_key(entry.log_id.index), bytes);
        }
        self.write(batch, false).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        // Durability is acknowledged by the syncer after its fsync.
        if let Err(mpsc::SendError(callback)) = self.syncer.send(callback) {
            callback.log_io_completed(Err(std::io::Error::other("log syncer has stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), index_key(log_id.index), index_key(u64::MAX));
        self.write(batch, true).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Never past what the state machine durably holds. openraft 0.9 asks a follower to purge
        // up to a snapshot as soon as the install starts: that purge waits (without holding up
        // openraft) until the install has reached it.
        match (&self.applied, &self.deferred) {
            // (Under the fault every purge waits its turn there, as a purge after an install
            // did in the build before: the node's own next snapshot does not close the hole.)
            (Some(applied), Some(deferred))
                if !applied.reached(log_id.index) || crate::faults::install_defers_purge() =>
            {
                // Recorded, synced, before openraft appends past the snapshot (it does so only
                // once this returns): no append is acknowledged until the purge is done. (The
                // fault `install_defers_purge` is the build before this: neither.)
                if !crate::faults::install_defers_purge() {
                    self.pending_purge(log_id.index)?;
                }
                deferred.ask(log_id);
                Ok(())
            }
            _ => purge_now(&self.db, &self.purging, log_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    /// What `append` writes, without its acknowledgement (openraft's callback cannot be made here).
    fn write_entries(log: &LogStore, indexes: std::ops::RangeInclusive<u64>) {
        let mut batch = WriteBatch::default();
        for index in indexes {
            batch.put_cf(cf(&log.db, CF_LOG), index_key(index), codec::encode(&entry(index)).unwrap());
        }
        log.write(batch, true).unwrap();
    }

    /// The log store over `dir`'s database, as a node opens it (the repair included), once the
    /// previous one let go of it (its syncer thread ends a moment after it was dropped).
    fn open(dir: &std::path::Path) -> LogStore {
        for _ in 0..100 {
            if let Ok(db) = crate::store::open_db(dir) {
                return LogStore::new(db, None, Purging::default()).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the database did not open again");
    }

    async fn indexes(log: &mut LogStore) -> Vec<u64> {
        log.try_get_log_entries(0..).await.unwrap().iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn entries_appended_during_an_unfinished_install_are_dropped_at_open_and_leave_no_hole() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = open(dir.path());
            write_entries(&log, 1..=5);
            // openraft hands over a snapshot up to 10 and purges up to it: the state machine has
            // not installed it, so the purge waits (and is recorded); then openraft appends what
            // follows the snapshot.
            log.pending_purge(10).unwrap();
            write_entries(&log, 11..=13);
            assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5, 11, 12, 13], "a hole before the install ends");
        }
        // The node stops before the install finished: it opens on its old log, without a hole.
        let mut log = open(dir.path());
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
        // Entries appended after that open are kept at the next one.
        write_entries(&log, 6..=7);
        drop(log);
        let mut log = open(dir.path());
        assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[tokio::test]
    async fn entries_appended_after_a_finished_install_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path());
            write_entries(&log, 1..=5);
            log.pending_purge(10).unwrap();
            // The install's last batch purges up to the snapshot, synced (see `state_machine`).
            let one_at_a_time = log.purging.lock();
            let mut batch = WriteBatch::default();
            add_purge(&log.db, &mut batch, entry(10).log_id).unwrap();
            log.write(batch, true).unwrap();
            drop(one_at_a_time);
            log.purging.purged_through(10);
            write_entries(&log, 11..=13);
        }
        let mut log = open(dir.path());
        assert_eq!(indexes(&mut log).await, vec![11, 12, 13]);
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id.map(|l| l.index), Some(10));
    }

    #[tokio::test]
    async fn a_purge_asked_after_the_install_purged_that_far_leaves_nothing_pending() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        write_entries(&log, 1..=5);
        // The install's last batch purges up to the snapshot first...
        {
            let _one_at_a_time = log.purging.lock();
            let mut batch = WriteBatch::default();
            let through = add_purge(&log.db, &mut batch, entry(10).log_id).unwrap();
            log.write(batch, true).unwrap();
            log.purging.purged_through(through);
        }
        // ...then openraft's purge up to it arrives before the applied gate has moved, and the
        // deferred purge finds nothing left to do.
        log.pending_purge(10).unwrap();
        purge_now(&log.db, &log.purging, entry(10).log_id).unwrap();
        assert_eq!(*log.purging.pending.0.lock().unwrap(), None, "the syncer would hold every acknowledgement");
        assert_eq!(log.get_meta::<u64>(KEY_PENDING_PURGE).unwrap(), None);
        // And when the purge was recorded pending before the install, the install clears both.
        log.pending_purge(20).unwrap();
        assert_eq!(log.get_meta::<u64>(KEY_PENDING_PURGE).unwrap(), Some(20));
        let through = {
            let _one_at_a_time = log.purging.lock();
            let mut batch = WriteBatch::default();
            let through = add_purge(&log.db, &mut batch, entry(20).log_id).unwrap();
            log.write(batch, true).unwrap();
            through
        };
        log.purging.purged_through(through);
        assert_eq!(*log.purging.pending.0.lock().unwrap(), None);
        assert_eq!(log.get_meta::<u64>(KEY_PENDING_PURGE).unwrap(), None);
    }
}
