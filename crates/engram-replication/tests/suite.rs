//! openraft's own storage test suite (`openraft::testing::log::Suite`) against the log store
//! on the node's WAL and the space state machine, each test on a fresh store in a temporary
//! directory.

use std::sync::Arc;

use engram_core::SpaceId;
use engram_replication::{LogStore, NodeLog, SpaceStateMachine, TypeConfig};
use engram_storage::{Store, StoreOptions};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

/// Keeps the store open and its directory alive for one test.
struct Guard {
    _store: Arc<Store>,
    _dir: tempfile::TempDir,
}

impl StoreBuilder<TypeConfig, LogStore, SpaceStateMachine, Guard> for Builder {
    async fn build(
        &self,
    ) -> Result<(Guard, LogStore, SpaceStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            background_compaction: false,
            wal_preallocate: false,
            ..StoreOptions::default()
        };
        let store = Arc::new(Store::open_dir(dir.path(), opts).unwrap());
        let log = NodeLog::open(store.clone()).unwrap();
        let space = SpaceId::new("suite").unwrap();
        let ls = log.group(&space);
        let sm = SpaceStateMachine::open(store.clone(), space, None).unwrap();
        Ok((
            Guard {
                _store: store,
                _dir: dir,
            },
            ls,
            sm,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.unwrap();
}
