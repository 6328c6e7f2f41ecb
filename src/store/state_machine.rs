//! The key state machine over RocksDB: openraft's `RaftStateMachine` around [`KeyStore`].
//!
//! `apply` runs the pure rules in `sm`, then writes the rows they changed together with the new
//! last-applied id and membership in one atomic batch. That batch is not fsynced on its own: the
//! log entries it came from are durable, and any later synced write (a vote, an append's group
//! fsync, a purge) persists it through the shared WAL. A crash can therefore only roll the state
//! machine back to an earlier applied id, from which openraft re-applies the log.
//!
//! Snapshots are the encoded rows, read from a RocksDB point-in-time view (so building one does
//! not stop `apply`). A built or received snapshot is written to
//! `snapshot/current` through a temporary file, fsync and rename; installing one replaces every
//! row and the applied id in one synced batch, so a crash leaves either the old state or the new
//! one, never a mix.
//!
//! This module must not decide anything about keys; it persists what `sm` decided.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, EntryPayload, OptionalSend, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use super::{cf, OpenError, CF_SM, CF_SM_META};
use crate::codec;
use crate::raft_types::*;
use crate::sm::KeyStore;

const KEY_APPLIED: &[u8] = b"applied";

/// The state machine and what it has applied, shared with the API for reads.
#[derive(Debug, Default)]
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

/// What a snapshot file holds.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    state: SharedState,
    snapshot_dir: PathBuf,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e)).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(e)).into()
}

impl StateMachineStore {
    /// Loads the state machine's rows and applied id from `db`.
    pub(crate) async fn open(db: Arc<DB>, data_dir: &Path) -> Result<Self, OpenError> {
        let corrupt = |message: String| OpenError::Corrupt { path: data_dir.display().to_string(), message };
        let mut store = KeyStore::new();
        for item in db.iterator_cf(cf(&db, CF_SM), IteratorMode::Start) {
            let (key, value) = item.map_err(|e| corrupt(e.to_string()))?;
            store.load_row(&key, &value).map_err(|e| corrupt(e.to_string()))?;
        }
        store.finish_load();
        let (last_applied, membership) = match db.get_cf(cf(&db, CF_SM_META), KEY_APPLIED) {
            Ok(Some(bytes)) => codec::decode(&bytes).map_err(|e| corrupt(e.to_string()))?,
            Ok(None) => (None, StoredMembership::default()),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let snapshot_dir = data_dir.join("snapshot");
        std::fs::create_dir_all(&snapshot_dir)
            .map_err(|source| OpenError::Dir { path: snapshot_dir.display().to_string(), source })?;
        let state = Arc::new(RwLock::new(AppliedState { store, last_applied, membership }));
        Ok(StateMachineStore { db, state, snapshot_dir })
    }

    /// The applied state, for linearizable reads after `ensure_linearizable`.
    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    fn current_path(&self) -> PathBuf {
        self.snapshot_dir.join("current")
    }

    /// Writes `bytes` as the current snapshot: temporary file, fsync, rename, fsync directory.
    fn save_snapshot_file(&self, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.snapshot_dir.join("current.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.current_path())?;
        std::fs::File::open(&self.snapshot_dir)?.sync_all()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let this = self.clone();
        let (meta, bytes, row_count) =
            tokio::task::spawn_blocking(move || this.snapshot_from_db()).await.map_err(snap_err)??;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(rows = row_count, bytes = bytes.len(), elapsed_ms, snapshot = %meta.snapshot_id, "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl StateMachineStore {
    /// Encodes and saves a snapshot from a RocksDB point-in-time view of the rows and the applied
    /// id, which `apply` writes in one batch: the in-memory state is not locked, so applying goes
    /// on while a large state is encoded.
    fn snapshot_from_db(&self) -> Result<(SnapshotMeta, Vec<u8>, usize), StorageError> {
        let view = self.db.snapshot();
        let (last_applied, membership): (Option<LogId>, StoredMembership) =
            match view.get_cf(cf(&self.db, CF_SM_META), KEY_APPLIED).map_err(snap_err)? {
                Some(bytes) => codec::decode(&bytes).map_err(snap_err)?,
                None => (None, StoredMembership::default()),
            };
        let mut rows = Vec::new();
        for item in view.iterator_cf(cf(&self.db, CF_SM), IteratorMode::Start) {
            let (key, value) = item.map_err(snap_err)?;
            rows.push((key.into_vec(), value.into_vec()));
        }
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, crate::clock::wall_ms()),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        let row_count = rows.len();
        let bytes = codec::encode(&SnapshotFile { meta: meta.clone(), rows }).map_err(snap_err)?;
        self.save_snapshot_file(&bytes).map_err(snap_err)?;
        Ok((meta, bytes, row_count))
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
        let mut responses = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(request) => {
                    Response { outcomes: state.store.apply_entry(entry.log_id.index, request.time, &request.commands) }
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Response::default()
                }
            };
            responses.push(response);
        }
        let mut batch = WriteBatch::default();
        let sm_cf = cf(&self.db, CF_SM);
        for row in state.store.take_dirty() {
            match state.store.row_value(&row).map_err(sm_err)? {
                Some(value) => batch.put_cf(sm_cf, row.key(), value),
                None => batch.delete_cf(sm_cf, row.key()),
            }
        }
        let applied = codec::encode(&(state.last_applied, &state.membership)).map_err(sm_err)?;
        batch.put_cf(cf(&self.db, CF_SM_META), KEY_APPLIED, applied);
        self.db.write_opt(batch, &WriteOptions::default()).map_err(sm_err)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let file: SnapshotFile = codec::decode(&bytes).map_err(snap_err)?;
        let mut store = KeyStore::new();
        for (key, value) in &file.rows {
            store.load_row(key, value).map_err(snap_err)?;
        }
        store.finish_load();

        // Replace every row and the applied id in one synced batch.
        let mut batch = WriteBatch::default();
        let sm_cf = cf(&self.db, CF_SM);
        batch.delete_range_cf(sm_cf, [0x00u8].as_slice(), [0xFFu8; 8].as_slice());
        for (key, value) in &file.rows {
            batch.put_cf(sm_cf, key, value);
        }
        let applied = codec::encode(&(meta.last_log_id, &meta.last_membership)).map_err(snap_err)?;
        batch.put_cf(cf(&self.db, CF_SM_META), KEY_APPLIED, applied);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);

        let mut state = self.state.write().map_err(|_| sm_err("state lock poisoned by an earlier panic"))?;
        self.db.write_opt(batch, &opts).map_err(snap_err)?;
        *state = AppliedState { store, last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
        drop(state);
        self.save_snapshot_file(&bytes).map_err(snap_err)?;
        tracing::info!(rows = file.rows.len(), bytes = bytes.len(), snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let bytes = match std::fs::read(self.current_path()) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, AnyError::new(&e)).into()),
        };
        let file: SnapshotFile =
            codec::decode(&bytes).map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        Ok(Some(Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}
