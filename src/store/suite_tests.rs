//! openraft's storage conformance suite, run against the real RocksDB store.

use openraft::testing::{StoreBuilder, Suite};

use super::{LogStore, StateMachineStore};
use crate::raft_types::{StorageError, TypeConfig};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
        let failed = |e: super::OpenError| openraft::StorageIOError::write(openraft::AnyError::error(e));
        // The suite purges entries it never applied: no applied gate here.
        let db = super::open_db(dir.path()).map_err(failed)?;
        let sm = StateMachineStore::open(db.clone(), dir.path()).await.map_err(failed)?;
        Ok((dir, LogStore::new(db, None, super::log::Purging::default())?, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_rocksdb() -> Result<(), StorageError> {
    Suite::test_all(RocksBuilder)
}
