//! Backups and restores: a consistent copy of the state machine as one file, and a new data
//! directory seeded from it.
//!
//! A backup is a snapshot file (`snapshot_file`) written from a RocksDB point-in-time view of
//! the leader's applied rows, taken after a linearizable barrier, so it holds every write
//! acknowledged before it was asked for. Its log index is in the file; the SHA-256 of the whole
//! file goes with it.
//!
//! [`restore`] makes a data directory for one node of a *new* cluster: the backup's rows (the
//! node-id registry left out: the new cluster's nodes register afresh), applied up to the
//! backup's index, the log purged up to there, and the membership of the new cluster file. Run
//! it for every node of the new cluster (or for the lowest-id node only: the others start
//! empty and receive it by snapshot).
//!
//! Like the rest of `store`, this must not decide anything about keys.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use openraft::{Membership, StoredMembership};
use rocksdb::{WriteBatch, WriteOptions};
use sha2::{Digest, Sha256};

use super::snapshot_file::{self, SnapshotReader};
use super::{cf, CF_RAFT, CF_SM, CF_SM_META};
use crate::codec;
use crate::raft_types::{LogId, NodeId, NodeInfo};

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    File(#[from] snapshot_file::SnapshotFileError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Refused(String),
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupInfo {
    /// The last log index applied in the backup.
    pub index: u64,
    pub term: u64,
    pub rows: u64,
    pub bytes: u64,
    /// SHA-256 of the whole file, hex.
    pub sha256: String,
}

/// SHA-256 of a whole file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

impl super::StateMachineStore {
    /// Writes a backup of the applied state to `path`.
    pub fn write_backup(&self, path: &Path) -> Result<BackupInfo, BackupError> {
        let (meta, rows, _) = self.write_snapshot_file(path).map_err(BackupError::Io)?;
        let last = meta.last_log_id.ok_or_else(|| BackupError::Refused("nothing applied yet to back up".into()))?;
        let io = |e: std::io::Error| BackupError::Io(format!("{}: {e}", path.display()));
        let sha256 = file_sha256(path).map_err(io)?;
        let bytes = std::fs::metadata(path).map_err(io)?.len();
        Ok(BackupInfo { index: last.index, term: last.leader_id.term, rows, bytes, sha256 })
    }
}

/// Seeds `data_dir` (which must be empty or absent) for node `node_id` of a new cluster named
/// `cluster_name` whose voters are `members`, from the backup at `backup`.
pub async fn restore(
    backup: &Path,
    data_dir: &Path,
    cluster_name: &str,
    node_id: NodeId,
    members: BTreeMap<NodeId, NodeInfo>,
) -> Result<BackupInfo, BackupError> {
    let io = |what: &Path, e: std::io::Error| BackupError::Io(format!("{}: {e}", what.display()));
    if std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(BackupError::Refused(format!(
            "{} is not empty: a restore seeds a new node; give it an empty data directory",
            data_dir.display()
        )));
    }
    if !members.contains_key(&node_id) {
        return Err(BackupError::Refused(format!("node {node_id} is not in the new cluster file")));
    }
    let (meta, rows) = snapshot_file::verify(backup)?;
    let last: LogId =
        meta.last_log_id.ok_or_else(|| BackupError::Refused("the backup holds no applied entry".into()))?;
    let sha256 = file_sha256(backup).map_err(|e| io(backup, e))?;
    let bytes = std::fs::metadata(backup).map_err(|e| io(backup, e))?.len();

    crate::identity::create(data_dir, cluster_name, node_id).map_err(|e| BackupError::Io(e.to_string()))?;
    let db = super::open_db(data_dir).map_err(|e| BackupError::Io(e.to_string()))?;
    let skip = crate::sm::rows::node_registry_prefix();
    let mut reader = SnapshotReader::open(backup)?;
    let mut batch = WriteBatch::default();
    while let Some((key, value)) = reader.next_row()? {
        if key.starts_with(&skip) {
            continue;
        }
        batch.put_cf(cf(&db, CF_SM), key, value);
        if batch.size_in_bytes() >= 8 << 20 {
            db.write(std::mem::take(&mut batch)).map_err(|e| BackupError::Io(e.to_string()))?;
        }
    }
    // The new cluster's membership takes effect at the backup's index: its log starts after it.
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = StoredMembership::new(Some(last), Membership::new(vec![voters], members));
    let encoding = |e: codec::CodecError| BackupError::Io(e.to_string());
    let applied = codec::encode(&(Some(last), membership)).map_err(encoding)?;
    batch.put_cf(cf(&db, CF_SM_META), super::state_machine::KEY_APPLIED, applied);
    batch.put_cf(cf(&db, CF_RAFT), super::log::KEY_LAST_PURGED, codec::encode(&last).map_err(encoding)?);
    // The vote starts at the backup's term. The log's last id carries that term; a node whose
    // vote started at 0 would lead at a lower term than its own last entry, and openraft orders
    // log ids by term first, so nothing it appended would ever count as committed.
    let vote = crate::raft_types::Vote::new(last.leader_id.term, node_id);
    batch.put_cf(cf(&db, CF_RAFT), super::log::KEY_VOTE, codec::encode(&vote).map_err(encoding)?);
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    db.write_opt(batch, &synced).map_err(|e| BackupError::Io(e.to_string()))?;
    // A snapshot of the restored state, for the nodes that will need one to catch up.
    let store = super::StateMachineStore::open(db, data_dir).await.map_err(|e| BackupError::Io(e.to_string()))?;
    store.snapshot_now().map_err(BackupError::Io)?;
    Ok(BackupInfo { index: last.index, term: last.leader_id.term, rows, bytes, sha256 })
}
