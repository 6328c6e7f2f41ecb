//! The key state machine over RocksDB: openraft's `RaftStateMachine` around [`KeyStore`].
//!
//! The store reads its large tables straight from the `sm` column family ([`DbRows`]); only small
//! tables are loaded into memory at start, so opening a million-key store is quick and its
//! memory is RocksDB's bounded caches. `apply` runs the pure rules in `sm`, then writes the rows
//! they changed together with the new last-applied id and membership in one atomic batch; an
//! entry during which a read failed is refused whole, and openraft stops the node. That batch is
//! not fsynced on its own: the log entries it came from are durable, and any later synced write (a
//! vote, an append's group fsync, a purge) persists it through the shared WAL. A crash can
//! therefore only roll the state machine back to an earlier applied id, from which openraft
//! re-applies the log.
//!
//! Snapshots are files (`store::snapshot_file`) streamed row by row from a RocksDB point-in-time
//! view, so building one neither stops `apply` nor holds the state in memory. A built or
//! received snapshot becomes `snapshot/current` by fsync and rename; openraft sends it to
//! followers in chunks read from that file. Installing one writes its rows in bounded batches
//! behind a synced marker; a crash in between finishes the install at the next start, so the
//! state served is the old one or the new one, never a mix.
//!
//! This module must not decide anything about keys; it persists what `sm` decided.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use tokio::sync::Notify;

use super::snapshot_file::{self, SnapshotFileError, SnapshotReader, SnapshotWriter};
use super::{cf, OpenError, CF_SM, CF_SM_META};
use crate::codec;
use crate::raft_types::*;
use crate::sm::backing::{RowSource, Writes};
use crate::sm::{EntryStamp, KeyStore};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, EntryPayload, OptionalSend, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};

pub(crate) const KEY_APPLIED: &[u8] = b"applied";
/// Present while a snapshot's rows are being written: the meta of the snapshot in
/// `snapshot/current` that must be installed again if the node stops before it is done.
const KEY_INSTALLING: &[u8] = b"installing";
/// Rows written per batch while installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 8 << 20;
/// Changed rows held by one `apply` call before they are written out.
const APPLY_FLUSH_BYTES: usize = 8 << 20;

/// The committed rows of the `sm` column family, as the state machine reads them.
struct DbRows {
    db: Arc<DB>,
}

impl RowSource for DbRows {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.db.get_cf(cf(&self.db, CF_SM), key).map_err(|e| e.to_string())
    }

    fn scan(&self, from: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), String> {
        let mut iter = self.db.raw_iterator_cf(cf(&self.db, CF_SM));
        iter.seek(from);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if !visit(key, value) {
                return Ok(());
            }
            iter.next();
        }
        iter.status().map_err(|e| e.to_string())
    }
}

/// The state machine and what it has applied, shared with the API for reads.
#[derive(Debug)]
pub struct AppliedState {
    pub store: KeyStore,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// A shared handle on the applied state.
pub type SharedState = Arc<RwLock<AppliedState>>;

/// Locks the state for reading. A poisoned lock means a panic while applying, after which the
/// node cannot be trusted to serve: the guard is still returned, and the panic was logged.
pub fn read_state(state: &SharedState) -> RwLockReadGuard<'_, AppliedState> {
    state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    state: SharedState,
    snapshot_dir: PathBuf,
    /// Held while `snapshot/current` is replaced, so an older snapshot never replaces a newer.
    snapshot_lock: Arc<Mutex<()>>,
    /// Commands applied since the last snapshot was started or installed.
    since_snapshot: Arc<AtomicU64>,
    /// A snapshot is due after this many commands (0: never).
    snapshot_every: u64,
    /// Notified when a snapshot is due; the node asks openraft to build one.
    snapshot_due: Arc<Notify>,
    /// Tells the log store how far the state machine has applied (see `store::AppliedGate`).
    applied_gate: super::AppliedGate,
    /// Shared with the log store: an install purges the log in its last batch.
    purging: super::log::Purging,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e)).into()
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(e)).into()
}

impl StateMachineStore {
    /// Opens the state machine over `db`'s rows and reads its applied id.
    pub(crate) async fn open(db: Arc<DB>, data_dir: &Path) -> Result<Self, OpenError> {
        let corrupt = |message: String| OpenError::Corrupt { path: data_dir.display().to_string(), message };
        let snapshot_dir = data_dir.join("snapshot");
        crate::private_file::create_dir_all_synced(&snapshot_dir)
            .map_err(|source| OpenError::Dir { path: snapshot_dir.display().to_string(), source })?;
        // A crash cut an install short: the rows are partly the snapshot's (the marker is
        // there), or none of them are written yet though the received snapshot is already
        // current (newer than what was applied). Finish it before anything is read from the
        // rows, so the node starts on the snapshot's state, whole.
        let current = snapshot_dir.join("current");
        let interrupted = match db.get_cf(cf(&db, CF_SM_META), KEY_INSTALLING).map_err(|e| corrupt(e.to_string()))? {
            Some(bytes) => Some(codec::decode::<SnapshotMeta>(&bytes).map_err(|e| corrupt(e.to_string()))?),
            None => {
                let applied: Option<LogId> = match db.get_cf(cf(&db, CF_SM_META), KEY_APPLIED) {
                    Ok(Some(bytes)) => {
                        codec::decode::<(Option<LogId>, StoredMembership)>(&bytes)
                            .map_err(|e| corrupt(e.to_string()))?
                            .0
                    }
                    Ok(None) => None,
                    Err(e) => return Err(corrupt(e.to_string())),
                };
                SnapshotReader::open(&current).ok().map(|r| r.meta).filter(|meta| meta.last_log_id > applied)
            }
        };
        let purging = super::log::Purging::default();
        if let Some(meta) = interrupted {
            tracing::warn!(snapshot = %meta.snapshot_id, "finishing a snapshot install a crash interrupted");
            write_snapshot_rows(&db, &current, &meta, &purging).map_err(corrupt)?;
        }
        let store = open_store(&db).map_err(|e| corrupt(e.to_string()))?;
        let (last_applied, membership) = match db.get_cf(cf(&db, CF_SM_META), KEY_APPLIED) {
            Ok(Some(bytes)) => codec::decode(&bytes).map_err(|e| corrupt(e.to_string()))?,
            Ok(None) => (None, StoredMembership::default()),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let applied_gate = super::AppliedGate::default();
        applied_gate.applied(last_applied.map(|id: LogId| id.index));
        let state = Arc::new(RwLock::new(AppliedState { store, last_applied, membership }));
        Ok(StateMachineStore {
            db,
            state,
            snapshot_dir,
            snapshot_lock: Arc::new(Mutex::new(())),
            since_snapshot: Arc::new(AtomicU64::new(0)),
            snapshot_every: 0,
            snapshot_due: Arc::new(Notify::new()),
            applied_gate,
            purging,
        })
    }

    /// The purge lock the log store must share (see `log::Purging`).
    pub(crate) fn purging(&self) -> super::log::Purging {
        self.purging.clone()
    }

    /// How far this state machine has applied, for the log store's purges.
    pub(crate) fn applied_gate(&self) -> super::AppliedGate {
        self.applied_gate.clone()
    }

    /// Asks for a snapshot after every `commands` applied commands: the returned `Notify` fires
    /// when one is due.
    pub fn snapshot_every(&mut self, commands: u64) -> Arc<Notify> {
        self.snapshot_every = commands;
        self.snapshot_due.clone()
    }

    /// The applied state, for linearizable reads after `ensure_linearizable`.
    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    fn current_path(&self) -> PathBuf {
        self.snapshot_dir.join("current")
    }

    fn receiving_path(&self) -> PathBuf {
        self.snapshot_dir.join("receiving")
    }

    /// The path of a snapshot handed to `install_snapshot`: normally the file
    /// `begin_receiving_snapshot` made; any other (openraft may hand over a snapshot it holds) is
    /// copied to that path first.
    fn take_received(&self, mut file: std::fs::File) -> std::io::Result<PathBuf> {
        use std::io::{Seek, Write};
        use std::os::unix::fs::MetadataExt;
        let received = self.receiving_path();
        let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
        if std::fs::metadata(&received).is_ok_and(|on_disk| file.metadata().is_ok_and(|open| same(&open, &on_disk))) {
            return Ok(received);
        }
        file.seek(std::io::SeekFrom::Start(0))?;
        let mut copy = std::fs::File::create(&received)?;
        std::io::copy(&mut file, &mut copy)?;
        copy.flush()?;
        if !crate::faults::skip_snapshot_fsync() {
            copy.sync_all()?;
        }
        Ok(received)
    }

    /// Makes the finished snapshot file `from` the current one (rename, fsync the directory),
    /// unless the current one is newer.
    fn promote_snapshot_file(&self, from: &Path, meta: &SnapshotMeta) -> Result<(), SnapshotFileError> {
        let _guard = self.snapshot_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let io = |source| SnapshotFileError::Io { path: from.display().to_string(), source };
        if let Ok(current) = SnapshotReader::open(&self.current_path()) {
            if current.meta.last_log_id > meta.last_log_id {
                tracing::info!(kept = %current.meta.snapshot_id, dropped = %meta.snapshot_id, "a newer snapshot is current");
                return std::fs::remove_file(from).map_err(io);
            }
        }
        std::fs::rename(from, self.current_path()).map_err(io)?;
        if crate::faults::skip_snapshot_fsync() {
            return Ok(());
        }
        std::fs::File::open(&self.snapshot_dir).and_then(|dir| dir.sync_all()).map_err(io)
    }

    /// Streams a snapshot from a RocksDB point-in-time view of the rows and the applied id, which
    /// `apply` writes in one batch, into a file: nothing is locked and nothing is held in memory,
    /// so applying goes on while a large state is written.
    fn snapshot_from_db(&self) -> Result<(SnapshotMeta, u64, u64), StorageError> {
        let tmp = self.snapshot_dir.join("building");
        let (meta, rows, bytes) = self.write_snapshot_file(&tmp).map_err(snap_err)?;
        self.promote_snapshot_file(&tmp, &meta).map_err(snap_err)?;
        Ok((meta, rows, bytes))
    }

    /// Writes the rows and applied id, as of one RocksDB point-in-time view, to a snapshot file
    /// at `path` (a snapshot, or a backup); answers its meta, row count and size.
    pub(crate) fn write_snapshot_file(&self, path: &Path) -> Result<(SnapshotMeta, u64, u64), String> {
        let view = self.db.snapshot();
        let (last_applied, membership): (Option<LogId>, StoredMembership) =
            match view.get_cf(cf(&self.db, CF_SM_META), KEY_APPLIED).map_err(text)? {
                Some(bytes) => codec::decode(&bytes).map_err(text)?,
                None => (None, StoredMembership::default()),
            };
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, crate::clock::wall_ms()),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        let mut writer = SnapshotWriter::create(path, &meta).map_err(text)?;
        for item in view.iterator_cf(cf(&self.db, CF_SM), IteratorMode::Start) {
            let (key, value) = item.map_err(text)?;
            writer.row(&key, &value).map_err(text)?;
        }
        let (rows, bytes) = writer.finish().map_err(text)?;
        Ok((meta, rows, bytes))
    }

    /// The applied index, the number of rows and a SHA-256 over every row of the state, from one
    /// point-in-time view: replicas that applied the same log hold the same rows, so this tells
    /// whether two nodes' states are the same.
    pub fn state_digest(&self) -> Result<(Option<u64>, u64, String), String> {
        use sha2::Digest;
        let view = self.db.snapshot();
        let applied: Option<LogId> = match view.get_cf(cf(&self.db, CF_SM_META), KEY_APPLIED).map_err(text)? {
            Some(bytes) => codec::decode::<(Option<LogId>, StoredMembership)>(&bytes).map_err(text)?.0,
            None => None,
        };
        let mut hasher = sha2::Sha256::new();
        let mut rows = 0u64;
        for item in view.iterator_cf(cf(&self.db, CF_SM), IteratorMode::Start) {
            let (key, value) = item.map_err(text)?;
            for part in [&key, &value] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part);
            }
            rows += 1;
        }
        Ok((applied.map(|id| id.index), rows, hex::encode(hasher.finalize())))
    }

    /// Makes a snapshot of the state as it stands `snapshot/current` (after a restore).
    pub(crate) fn snapshot_now(&self) -> Result<(), String> {
        self.snapshot_from_db().map(|_| ()).map_err(|e| e.to_string())
    }

    /// Replaces every row and the applied id with those of `snapshot/current` (whose meta is
    /// `meta`) and opens the store over them.
    fn install_current(&self, meta: &SnapshotMeta) -> Result<KeyStore, String> {
        write_snapshot_rows(&self.db, &self.current_path(), meta, &self.purging)?;
        crate::faults::crash_point("install:applied");
        open_store(&self.db)
    }
}

/// Writes the rows and applied id of the snapshot file at `path` (whose meta is `meta`) over the
/// state machine's, in batches of bounded size. A marker written first and removed by the last,
/// synced batch makes a crash in between finish the install at the next start. That last batch
/// also purges the log up to the snapshot: the install and the purge are one step, so no crash
/// can leave the old log, a hole, and the entries appended after the install (from which
/// openraft could not start), nor old uncommitted entries below the snapshot.
fn write_snapshot_rows(db: &DB, path: &Path, meta: &SnapshotMeta, purging: &super::log::Purging) -> Result<(), String> {
    let mut reader = SnapshotReader::open(path).map_err(|e| e.to_string())?;
    if reader.meta.snapshot_id != meta.snapshot_id {
        return Err(format!("{} holds {}, not {}", path.display(), reader.meta.snapshot_id, meta.snapshot_id));
    }
    let (sm_cf, meta_cf) = (cf(db, CF_SM), cf(db, CF_SM_META));
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    let mut batch = WriteBatch::default();
    batch.put_cf(meta_cf, KEY_INSTALLING, codec::encode(meta).map_err(|e| e.to_string())?);
    batch.delete_range_cf(sm_cf, [0x00u8].as_slice(), [0xFFu8; 8].as_slice());
    db.write_opt(batch, &synced).map_err(|e| e.to_string())?;
    let mut batch = WriteBatch::default();
    let mut first = true;
    while let Some((key, value)) = reader.next_row().map_err(|e| e.to_string())? {
        batch.put_cf(sm_cf, key, value);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES || first {
            db.write(std::mem::take(&mut batch)).map_err(|e| e.to_string())?;
            if first {
                crate::faults::crash_point("install:rows");
                first = false;
            }
        }
    }
    let applied = codec::encode(&(meta.last_log_id, &meta.last_membership)).map_err(|e| e.to_string())?;
    batch.put_cf(meta_cf, KEY_APPLIED, applied);
    batch.delete_cf(meta_cf, KEY_INSTALLING);
    let _one_purge_at_a_time = purging.lock();
    let purged = match (meta.last_log_id, crate::faults::install_defers_purge()) {
        (Some(last), false) => Some(super::log::add_purge(db, &mut batch, last).map_err(|e| e.to_string())?),
        _ => None,
    };
    db.write_opt(batch, &synced).map_err(|e| e.to_string())?;
    if let Some(through) = purged {
        purging.purged_through(through);
    }
    purging.installed();
    Ok(())
}

impl StateMachineStore {
    /// Writes the rows applied entries changed, with the last applied id and membership, in one
    /// batch. Outcomes decided from a failed read are neither persisted nor answered.
    fn persist(&self, state: &mut AppliedState) -> Result<(), StorageError> {
        if let Some(fault) = state.store.fault() {
            state.store.discard_writes();
            return Err(sm_err(format!("reading the state failed while applying: {fault}")));
        }
        let mut batch = WriteBatch::default();
        let writes = state.store.take_writes().map_err(sm_err)?;
        add_writes(&mut batch, cf(&self.db, CF_SM), writes);
        let applied = codec::encode(&(state.last_applied, &state.membership)).map_err(sm_err)?;
        batch.put_cf(cf(&self.db, CF_SM_META), KEY_APPLIED, applied);
        self.db.write_opt(batch, &WriteOptions::default()).map_err(sm_err)?;
        self.applied_gate.applied(state.last_applied.map(|id| id.index));
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        self.since_snapshot.store(0, Ordering::Relaxed);
        let this = self.clone();
        let (done, built) = tokio::sync::oneshot::channel();
        // Its own thread at a lower CPU priority: on a small host, a snapshot of a large state
        // (seconds of reading, hashing and writing) must not take the cores requests need.
        std::thread::Builder::new()
            .name("snapshot-build".into())
            .spawn(move || {
                lower_this_threads_priority();
                let _ = done.send(this.snapshot_from_db());
            })
            .map_err(snap_err)?;
        let (meta, rows, bytes) = built.await.map_err(snap_err)??;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(rows, bytes, elapsed_ms, snapshot = %meta.snapshot_id, "snapshot built");
        // The file just built, or a newer one that replaced it: either is complete.
        match self.get_current_snapshot().await? {
            Some(snapshot) => Ok(snapshot),
            None => Err(snap_err("the snapshot just built is gone")),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = read_state(&self.state);
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.state.write().map_err(|_| sm_err("state lock poisoned by an earlier panic"))?;
        if let Some(fault) = state.store.fault() {
            return Err(sm_err(format!("an earlier read of the state failed: {fault}")));
        }
        let state = &mut *state;
        let mut responses = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            // Every entry counts towards the next snapshot, empty ones (read barriers, a new
            // leader's first entry) too: otherwise a log of them would never be purged.
            let weight = match &entry.payload {
                EntryPayload::Normal(request) => request.commands.len().max(1) as u64,
                EntryPayload::Blank | EntryPayload::Membership(_) => 1,
            };
            let applied = self.since_snapshot.fetch_add(weight, Ordering::Relaxed);
            if self.snapshot_every > 0 && applied + weight >= self.snapshot_every {
                self.snapshot_due.notify_one();
            }
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(request) => {
                    let at =
                        EntryStamp { index: entry.log_id.index, term: entry.log_id.leader_id.term, time: request.time };
                    Response { outcomes: state.store.apply_entry(at, &request.commands) }
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::default()
                }
            };
            responses.push(response);
            // A follower catching up applies thousands of entries in one call: write them out
            // as they come rather than holding every changed row until the end.
            if state.store.pending_bytes() >= APPLY_FLUSH_BYTES {
                self.persist(state)?;
            }
        }
        self.persist(state)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.receiving_path())
            .await
            .map_err(snap_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        if !crate::faults::skip_snapshot_fsync() {
            snapshot.sync_all().await.map_err(snap_err)?;
        }
        let snapshot = snapshot.into_std().await;
        let started = std::time::Instant::now();
        let this = self.clone();
        let want = meta.clone();
        // Check the whole file, make it the current snapshot, then write its rows: all off the
        // async threads, so heartbeats go on while a large state is installed.
        let installed = tokio::task::spawn_blocking(move || -> Result<(u64, KeyStore), String> {
            crate::faults::crash_point("install:received");
            let received = this.take_received(snapshot).map_err(|e| e.to_string())?;
            let (found, rows) = snapshot_file::verify(&received).map_err(|e| e.to_string())?;
            if found.snapshot_id != want.snapshot_id {
                return Err(format!("received snapshot {} while installing {}", found.snapshot_id, want.snapshot_id));
            }
            this.promote_snapshot_file(&received, &want).map_err(|e| e.to_string())?;
            crate::faults::crash_point("install:promoted");
            Ok((rows, this.install_current(&want)?))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|installed| installed);
        let (rows, store) = match installed {
            Ok(installed) => installed,
            Err(why) => {
                // A purge waiting for this install must give up, so the node can stop.
                self.applied_gate.install_failed(why.clone());
                return Err(snap_err(why));
            }
        };
        let mut state = self.state.write().map_err(|_| sm_err("state lock poisoned by an earlier panic"))?;
        *state = AppliedState { store, last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
        self.since_snapshot.store(0, Ordering::Relaxed);
        self.applied_gate.applied(meta.last_log_id.map(|id| id.index));
        drop(state);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(rows, elapsed_ms, snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.current_path();
        let read_err = |e: &dyn std::fmt::Display| StorageIOError::read_snapshot(None, AnyError::error(e));
        let _guard = self.snapshot_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let meta = match SnapshotReader::open(&path) {
            Ok(reader) => reader.meta,
            Err(SnapshotFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(read_err(&e).into()),
        };
        let file = std::fs::File::open(&path).map_err(|e| read_err(&e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) }))
    }
}

/// Adds the state machine's writes to `batch`.
fn add_writes(batch: &mut WriteBatch, sm_cf: &rocksdb::ColumnFamily, writes: Writes) {
    for (key, value) in writes {
        match value {
            Some(value) => batch.put_cf(sm_cf, key, value),
            None => batch.delete_cf(sm_cf, key),
        }
    }
}

/// Opens a [`KeyStore`] over `db`'s rows; rows of an older layout are upgraded in place (a synced
/// write, before anything is served from them).
fn open_store(db: &Arc<DB>) -> Result<KeyStore, String> {
    let mut store = KeyStore::open(Arc::new(DbRows { db: db.clone() })).map_err(|e| e.to_string())?;
    let writes = store.take_writes().map_err(|e| e.to_string())?;
    if !writes.is_empty() {
        tracing::info!(rows = writes.len(), "upgrading the state machine's row layout");
        let mut batch = WriteBatch::default();
        add_writes(&mut batch, cf(db, CF_SM), writes);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(batch, &opts).map_err(|e| e.to_string())?;
    }
    Ok(store)
}

/// Lowers the calling thread's CPU priority (nice 10) where the OS allows it; best effort.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id; no memory is shared.
        let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) } != 0;
        if failed {
            tracing::debug!("cannot lower the snapshot thread's priority: {}", std::io::Error::last_os_error());
        }
    }
}
