//! Durable storage: the Raft log, the vote and the key state machine in one RocksDB database.
//!
//! Column families: `log` (entries by big-endian index), `raft` (vote, committed pointer, last
//! purged id), `sm` (state-machine rows, see `sm::rows`) and `sm_meta` (last applied id and
//! membership, written in the same batch as the rows they describe). All column families share
//! one write-ahead log, so a synced write also makes every earlier write durable; the log store
//! relies on that to group many appends under one fsync.
//!
//! Only this module knows RocksDB. It must not make decisions about keys: that is `sm`'s job.

// openraft's storage traits fix the error type (`StorageError`, over 200 bytes); boxing it in
// our helpers would only add conversions at every trait method.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod log;
pub mod snapshot_file;
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, DB};

pub use log::LogStore;
pub use state_machine::StateMachineStore;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_SM_META: &str = "sm_meta";

/// All memtables together (RocksDB flushes the largest when they pass it).
const MEMTABLE_BUDGET: usize = 128 << 20;
/// The block cache shared by the log and the state machine.
const BLOCK_CACHE: usize = 64 << 20;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open RocksDB at {path}: {source}")]
    Rocks { path: String, source: rocksdb::Error },
    #[error("cannot create directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("stored state at {path} cannot be read: {message}")]
    Corrupt { path: String, message: String },
}

/// Opens (or creates) the node's database under `data_dir/db` and returns the log store and the
/// state-machine store that share it. The log store never purges past what the state machine
/// has durably applied (see [`AppliedGate`]).
pub async fn open(data_dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let db = open_db(data_dir)?;
    let sm = StateMachineStore::open(db.clone(), data_dir).await?;
    let log = LogStore::new(db, Some(sm.applied_gate()), sm.purging())
        .map_err(|e| OpenError::Corrupt { path: data_dir.display().to_string(), message: e.to_string() })?;
    Ok((log, sm))
}

/// What the state machine has applied, as the log store needs to know it: the log is never
/// purged past it.
///
/// openraft 0.9 purges a follower's log up to a snapshot it received as soon as it hands the
/// snapshot to the state machine, before the install is durable. Had the purge gone ahead, a
/// crash in between would leave a node whose applied state is older than its log's start: it
/// could never re-apply the missing entries. So a purge past the applied index is deferred by
/// the log store until the install has made the state machine's applied index reach it; if the
/// install fails, it never happens (and the node stops).
#[derive(Clone, Debug)]
pub(crate) struct AppliedGate(Arc<tokio::sync::watch::Sender<Applied>>);

#[derive(Clone, Debug, Default)]
pub(crate) struct Applied {
    /// The applied index plus one (0: nothing applied), written to the WAL.
    next: u64,
    /// A snapshot install failed: nothing will move the applied index to a waiting purge.
    install_failed: Option<String>,
}

impl Default for AppliedGate {
    fn default() -> Self {
        AppliedGate(Arc::new(tokio::sync::watch::channel(Applied::default()).0))
    }
}

impl AppliedGate {
    /// The state machine has written everything up to `index` (same WAL as the log's writes).
    pub(crate) fn applied(&self, index: Option<u64>) {
        let next = index.map_or(0, |i| i + 1);
        self.0.send_if_modified(|a| {
            let moved = a.next != next;
            a.next = next;
            a.install_failed = None;
            moved
        });
    }

    /// A snapshot install failed.
    pub(crate) fn install_failed(&self, why: String) {
        self.0.send_modify(|a| a.install_failed = Some(why));
    }

    /// Whether the state machine has applied `index`.
    pub(crate) fn reached(&self, index: u64) -> bool {
        self.0.borrow().next > index
    }

    /// Waits until the state machine has applied `index`; fails if an install failed first.
    pub(crate) async fn wait_for(&self, index: u64) -> Result<(), String> {
        let mut watch = self.0.subscribe();
        let reached = |a: &Applied| a.next > index || a.install_failed.is_some();
        let applied = watch.wait_for(reached).await.map_err(|_| "the state machine is gone".to_string())?;
        match &applied.install_failed {
            Some(why) if applied.next <= index => Err(why.clone()),
            _ => Ok(()),
        }
    }
}

pub(crate) fn open_db(data_dir: &Path) -> Result<Arc<DB>, OpenError> {
    let path = data_dir.join("db");
    // Made durable here: RocksDB syncs what it writes inside its directory, not the directory's
    // own name in ours.
    crate::private_file::create_dir_all_synced(&path)
        .map_err(|source| OpenError::Dir { path: path.display().to_string(), source })?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Keep the WAL as the single durability point; memtables flush in the background.
    opts.set_max_background_jobs(2);
    if crate::faults::ack_before_fsync() {
        // The fault keeps unsynced WAL writes in the process, so a kill -9 loses them.
        opts.set_manual_wal_flush(true);
    }
    // Memory is bounded, whatever the number of keys: memtables share one budget, and the state
    // machine's blocks, indexes and filters live in one LRU cache.
    opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
    let cache = Cache::new_lru_cache(BLOCK_CACHE);
    let mut sm_tables = BlockBasedOptions::default();
    sm_tables.set_block_cache(&cache);
    sm_tables.set_bloom_filter(10.0, false);
    sm_tables.set_cache_index_and_filter_blocks(true);
    sm_tables.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut sm_opts = Options::default();
    sm_opts.set_block_based_table_factory(&sm_tables);
    sm_opts.set_write_buffer_size(MEMTABLE_BUDGET / 4);
    // Most reads of an enrolment look for rows that are not there (the outcome remembered under
    // its request id, and under the id's older unscoped row): a whole-key Bloom filter over the
    // memtable answers those without walking the skip list.
    sm_opts.set_memtable_whole_key_filtering(true);
    sm_opts.set_memtable_prefix_bloom_ratio(0.02);
    let mut log_tables = BlockBasedOptions::default();
    log_tables.set_block_cache(&cache);
    let mut log_opts = Options::default();
    log_opts.set_block_based_table_factory(&log_tables);
    log_opts.set_write_buffer_size(MEMTABLE_BUDGET / 4);
    let cfs = [
        ColumnFamilyDescriptor::new(CF_LOG, log_opts),
        ColumnFamilyDescriptor::new(CF_RAFT, Options::default()),
        ColumnFamilyDescriptor::new(CF_SM, sm_opts),
        ColumnFamilyDescriptor::new(CF_SM_META, Options::default()),
    ];
    let db = DB::open_cf_descriptors(&opts, &path, cfs)
        .map_err(|source| OpenError::Rocks { path: path.display().to_string(), source })?;
    Ok(Arc::new(db))
}

/// The column family `name`, which [`open_db`] always creates.
pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    // Every column family used is created at open; a missing one is a programming error.
    db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} is created at open"))
}

#[cfg(test)]
mod suite_tests;
