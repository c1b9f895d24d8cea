//! Durable history of versions. Every committed version is a [`VersionRecord`]; versions
//! that set a policy also store the policy document.
//!
//! The [`Store`] trait is what the control service needs from any backend: append one
//! version durably (it must survive `kill -9` once `append` returns), read the latest,
//! one version, or a page of history. The default backend is [`RedbStore`], an embedded
//! crash-safe database in a data directory; a distributed backend can follow by
//! implementing the same trait. Calls are blocking; async callers use
//! `spawn_blocking`.

mod memory;
mod redb_store;

pub use memory::MemoryStore;
pub use redb_store::RedbStore;

use crate::model::VersionRecord;

/// Errors of a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("store backend: {0}")]
    Backend(String),
    #[error("corrupt record at version {version}: {message}")]
    Corrupt { version: u64, message: String },
    #[error("version {got} does not follow the latest version {latest}")]
    OutOfOrder { latest: u64, got: u64 },
}

/// Backend of the version history.
pub trait Store: Send + Sync + 'static {
    /// Backend and location, for status output (e.g. `redb:/data/switchyard.redb`).
    fn describe(&self) -> String;

    /// Append the next version, atomically with its policy document when the version
    /// sets one. Durable when it returns `Ok`. `record.version` must be the latest
    /// version + 1 (1 for an empty store), else [`StoreError::OutOfOrder`] and nothing
    /// is written.
    fn append(&self, record: &VersionRecord, policy_json: Option<&str>) -> Result<(), StoreError>;

    /// The newest version, if any.
    fn latest(&self) -> Result<Option<VersionRecord>, StoreError>;

    /// One version.
    fn get(&self, version: u64) -> Result<Option<VersionRecord>, StoreError>;

    /// The policy document stored by the version that set it.
    fn policy(&self, policy_version: u64) -> Result<Option<String>, StoreError>;

    /// Versions below `before` (all when `None`), newest first, at most `limit`.
    fn history(&self, before: Option<u64>, limit: usize) -> Result<Vec<VersionRecord>, StoreError>;
}

#[cfg(test)]
pub(crate) mod contract {
    //! Behaviour every backend must show; each backend's tests run these.
    use super::*;
    use crate::model::{ChangeKind, StackRuntime};

    pub fn record(version: u64, policy_version: u64) -> VersionRecord {
        VersionRecord {
            version,
            created_unix_ms: 1_000 + version,
            kind: if version == policy_version {
                ChangeKind::PolicyApply
            } else {
                ChangeKind::StackWeight
            },
            summary: format!("v{version}"),
            actor: "test".into(),
            comment: String::new(),
            policy_version,
            policy_name: Some("p".into()),
            policy_digest: "000000000000".into(),
            stacks: vec![StackRuntime::new("blue", "us", version, 0, "test")],
        }
    }

    pub fn appends_in_order_and_reads_back(store: &dyn Store) {
        assert!(store.latest().unwrap().is_none());
        store.append(&record(1, 1), Some("{\"v\":1}")).unwrap();
        store.append(&record(2, 1), None).unwrap();
        store.append(&record(3, 3), Some("{\"v\":3}")).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().version, 3);
        assert_eq!(store.get(2).unwrap().unwrap(), record(2, 1));
        assert!(store.get(9).unwrap().is_none());
        assert_eq!(store.policy(1).unwrap().as_deref(), Some("{\"v\":1}"));
        assert_eq!(store.policy(3).unwrap().as_deref(), Some("{\"v\":3}"));
        assert!(store.policy(2).unwrap().is_none());
        let page: Vec<u64> = store
            .history(None, 2)
            .unwrap()
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(page, vec![3, 2]);
        let page: Vec<u64> = store
            .history(Some(2), 10)
            .unwrap()
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(page, vec![1]);
    }

    pub fn rejects_gaps_and_repeats(store: &dyn Store) {
        store.append(&record(1, 1), Some("{}")).unwrap();
        assert!(matches!(
            store.append(&record(1, 1), Some("{}")),
            Err(StoreError::OutOfOrder { latest: 1, got: 1 })
        ));
        assert!(matches!(
            store.append(&record(3, 1), None),
            Err(StoreError::OutOfOrder { latest: 1, got: 3 })
        ));
        assert_eq!(store.latest().unwrap().unwrap().version, 1);
    }
}
