//! Durable history of versions. Every committed version is a [`VersionRecord`]; versions
//! that set a policy also store the policy document.
//!
//! The [`Store`] trait is what the control service needs from any backend: append one
//! version durably (it must survive `kill -9` once `append` returns), read the latest,
//! one version, or a page of history. The default backend is [`RedbStore`], an embedded
//! crash-safe database in a data directory; [`EtcdStore`] keeps the same data in an etcd
//! cluster for replicated control services. Both pass one contract suite
//! ([`contract`], run by each backend's tests). Calls are blocking; async callers use
//! `spawn_blocking`.

mod etcd_store;
mod memory;
mod redb_store;

pub use etcd_store::{EtcdConfig, EtcdStore, Term, LEADER_KEY};
pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// Real servers for the backends' tests.
#[cfg(test)]
pub(crate) mod testing {
    pub use switchyard_harness::EtcdServer;
}

use crate::model::VersionRecord;

/// Errors of a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("store backend: {0}")]
    Backend(String),
    /// The backend cannot be reached (etcd down, no quorum, timeout): nothing was
    /// written, or — for a write that timed out — its outcome is unknown until read back.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write of a leader whose term is over (`replica.rs`): refused, nothing written.
    /// Never a [`StoreError::Conflict`], which callers may treat as "someone else wrote
    /// first" and carry on.
    #[error("store unavailable: fenced off: this replica no longer leads ({key} changed)")]
    Fenced { key: String },
    #[error("corrupt record at version {version}: {message}")]
    Corrupt { version: u64, message: String },
    #[error("version {got} does not follow the latest version {latest}")]
    OutOfOrder { latest: u64, got: u64 },
    /// A [`Batch`] condition did not hold; nothing was written.
    #[error("conflict on {key}: {message}")]
    Conflict { key: String, message: String },
}

impl StoreError {
    /// The store cannot take this write now (unreachable, or the writer is fenced off);
    /// retrying later, or on another replica, may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Fenced { .. })
    }
}

/// A condition a [`Batch`] checks before it writes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key holds no value.
    Absent(String),
    /// The key holds exactly these bytes.
    Equals(String, Vec<u8>),
}

/// One write of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
    /// Delete every key that starts with the prefix and sorts before the bound (e.g. the
    /// old windows of a time series ring).
    DeleteRange {
        prefix: String,
        before: String,
    },
}

/// Writes applied atomically, and only when every condition holds. This is the one
/// write primitive of the brain's state (incidents, rollouts, events, series, audit):
/// it maps onto an etcd transaction (compare, then put/delete) and onto one redb write
/// transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub conditions: Vec<Condition>,
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn absent(mut self, key: impl Into<String>) -> Self {
        self.conditions.push(Condition::Absent(key.into()));
        self
    }
    pub fn equals(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.conditions
            .push(Condition::Equals(key.into(), value.into()));
        self
    }
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
    pub fn delete_range(mut self, prefix: impl Into<String>, before: impl Into<String>) -> Self {
        self.ops.push(Op::DeleteRange {
            prefix: prefix.into(),
            before: before.into(),
        });
        self
    }
}

/// Check one condition against a reader of current values.
pub(crate) fn check_condition(
    c: &Condition,
    current: impl FnOnce(&str) -> Option<Vec<u8>>,
) -> Result<(), StoreError> {
    match c {
        Condition::Absent(k) => match current(k) {
            None => Ok(()),
            Some(_) => Err(StoreError::Conflict {
                key: k.clone(),
                message: "already exists".into(),
            }),
        },
        Condition::Equals(k, want) => match current(k) {
            Some(v) if &v == want => Ok(()),
            Some(_) => Err(StoreError::Conflict {
                key: k.clone(),
                message: "changed since it was read".into(),
            }),
            None => Err(StoreError::Conflict {
                key: k.clone(),
                message: "no longer exists".into(),
            }),
        },
    }
}

/// How a refused [`Store::prune_when`] names the version it needed (not a key of the
/// brain's key space).
pub fn version_key(version: u64) -> String {
    format!("version/{version}")
}

/// The refusal of a [`Store::prune_when`] whose `keep_from` version does not exist.
pub(crate) fn keep_from_missing(keep_from: u64) -> StoreError {
    StoreError::Conflict {
        key: version_key(keep_from),
        message: "does not exist; pruning keeps it and never deletes the newest version".into(),
    }
}

/// A number as a key segment that sorts like the number (20 digits, zero-padded).
pub fn key_u64(n: u64) -> String {
    format!("{n:020}")
}

/// Backend of the version history.
pub trait Store: Send + Sync + 'static {
    /// Backend and location, for status output (e.g. `redb:/data/switchyard.redb`).
    fn describe(&self) -> String;

    /// Append the next version, atomically with its policy document when the version
    /// sets one. Durable when it returns `Ok`. `record.version` must be the latest
    /// version + 1 (1 for an empty store), else [`StoreError::OutOfOrder`] and nothing
    /// is written.
    fn append(&self, record: &VersionRecord, policy_json: Option<&str>) -> Result<(), StoreError> {
        self.append_when(record, policy_json, &[])
    }

    /// [`Store::append`], only if every condition on the brain's key space holds too
    /// (checked first: a failed one is [`StoreError::Conflict`] naming it, before any
    /// [`StoreError::OutOfOrder`]). A leader's writes are fenced this way on its
    /// leadership key (`replica.rs`).
    fn append_when(
        &self,
        record: &VersionRecord,
        policy_json: Option<&str>,
        conditions: &[Condition],
    ) -> Result<(), StoreError>;

    /// Learn of versions other processes append: a receiver whose value is the newest
    /// version known to be in the store, starting at `after` and only ever rising.
    /// `None` when nothing else can write to this store (redb, memory): there is
    /// nothing to follow. The receiver keeps following through backend outages (it
    /// re-subscribes) until the store is dropped.
    fn subscribe_versions(&self, after: u64) -> Option<tokio::sync::watch::Receiver<u64>> {
        let _ = after;
        None
    }

    /// The newest version, if any.
    fn latest(&self) -> Result<Option<VersionRecord>, StoreError>;

    /// One version.
    fn get(&self, version: u64) -> Result<Option<VersionRecord>, StoreError>;

    /// The policy document stored by the version that set it.
    fn policy(&self, policy_version: u64) -> Result<Option<String>, StoreError>;

    /// Versions below `before` (all when `None`), newest first, at most `limit`.
    fn history(&self, before: Option<u64>, limit: usize) -> Result<Vec<VersionRecord>, StoreError>;

    /// The oldest version still held (retention deletes older ones), if any.
    fn oldest(&self) -> Result<Option<u64>, StoreError>;

    /// Retention: delete the version records below `keep_from` and the policy documents
    /// below `keep_policies_from`, atomically and only if every condition holds (checked
    /// first, as for [`Store::append_when`]). Refused with [`StoreError::Conflict`] on
    /// [`version_key`]`(keep_from)`, deleting nothing, unless version `keep_from` exists:
    /// so the newest version, which the next append follows, is never deleted. The caller
    /// bounds the batch and passes for `keep_policies_from` at most the `policy_version`
    /// of version `keep_from` (policy versions never fall as versions rise, so no kept
    /// version refers to a deleted document); see `control::retention`.
    fn prune_when(
        &self,
        keep_from: u64,
        keep_policies_from: u64,
        conditions: &[Condition],
    ) -> Result<(), StoreError>;

    /// The backend's revision counter, for a backend that keeps a history of every
    /// revision beside the current values (etcd); `None` for one that does not.
    fn revision(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Discard the backend's revision history before `revision` (etcd compaction); a
    /// revision already compacted is no error. Nothing to do for a backend without one.
    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let _ = revision;
        Ok(())
    }

    // The brain's state: a sorted key space of byte values. Keys are `/`-separated
    // paths (`incident/…`, `rollout/…`, `series/<stack>/<window>`, `audit/<seq>`);
    // numbers in keys use [`key_u64`] so they sort numerically.

    /// The value at `key`.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Keys starting with `prefix` and sorting after `after` (all when `None`), in key
    /// order, at most `limit`.
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// The last key (in key order) starting with `prefix`, with its value.
    fn last(&self, prefix: &str) -> Result<Option<(String, Vec<u8>)>, StoreError>;

    /// Apply `batch` atomically and durably if every condition holds; otherwise
    /// [`StoreError::Conflict`] naming the first failed condition, and nothing written.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
}

#[cfg(test)]
pub(crate) mod contract {
    //! Behaviour every backend must show; each backend's tests run these.
    use super::*;
    use crate::model::{ChangeKind, StackRuntime};

    pub fn record(version: u64, policy_version: u64) -> VersionRecord {
        VersionRecord {
            rule_stacks: Vec::new(),
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

    /// A failed condition refuses the append (naming the key) and writes nothing; held
    /// conditions let it through.
    pub fn appends_only_when_conditions_hold(store: &dyn Store) {
        store
            .commit(&Batch::new().put("lead", b"me".to_vec()))
            .unwrap();
        store
            .append_when(
                &record(1, 1),
                Some("{}"),
                &[Condition::Equals("lead".into(), b"me".to_vec())],
            )
            .unwrap();
        let err = store
            .append_when(
                &record(2, 1),
                None,
                &[Condition::Equals("lead".into(), b"other".to_vec())],
            )
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { ref key, .. } if key == "lead"),
            "{err}"
        );
        // The condition is checked before the order: a fenced writer learns it is fenced.
        let err = store
            .append_when(&record(5, 1), None, &[Condition::Absent("lead".into())])
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert_eq!(store.latest().unwrap().unwrap().version, 1);
        store
            .append_when(&record(2, 1), None, &[Condition::Absent("nobody".into())])
            .unwrap();
        assert_eq!(store.latest().unwrap().unwrap().version, 2);
    }

    /// `a` and `b` are two handles on the same data. A backend others can write to
    /// (etcd) reports their appends through `subscribe_versions`; a single-process one
    /// has nothing to follow and says so with `None`.
    pub fn reports_versions_appended_elsewhere(a: &dyn Store, b: &dyn Store, shared: bool) {
        let Some(mut rx) = a.subscribe_versions(0) else {
            assert!(!shared, "{} must follow other writers", a.describe());
            return;
        };
        assert!(shared, "{} has no other writers to follow", a.describe());
        b.append(&record(1, 1), Some("{}")).unwrap();
        b.append(&record(2, 1), None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            while *rx.borrow_and_update() < 2 {
                rx.changed().await.unwrap();
            }
        });
        // Subscribing later starts from what is there.
        let rx = a.subscribe_versions(1).unwrap();
        let mut rx2 = rx.clone();
        rt.block_on(async {
            while *rx2.borrow_and_update() < 2 {
                rx2.changed().await.unwrap();
            }
        });
        assert_eq!(*rx.borrow(), 2);
    }

    /// Retention: the versions below `keep_from` and the policies below
    /// `keep_policies_from` go in one write and the rest reads as before; a failed
    /// condition, or a `keep_from` that does not exist, deletes nothing; appends go on.
    pub fn prunes_old_versions_and_unreferenced_policies(store: &dyn Store) {
        let versions =
            |page: Vec<VersionRecord>| -> Vec<u64> { page.iter().map(|r| r.version).collect() };
        assert!(store.oldest().unwrap().is_none());
        // v1 sets policy 1, v3 policy 3, v6 policy 6; the others keep the one before.
        for (v, p) in [(1, 1), (2, 1), (3, 3), (4, 3), (5, 3), (6, 6)] {
            let doc = (v == p).then(|| format!("{{\"v\":{v}}}"));
            store.append(&record(v, p), doc.as_deref()).unwrap();
        }
        assert_eq!(store.oldest().unwrap(), Some(1));
        store
            .commit(&Batch::new().put("lead", b"me".to_vec()))
            .unwrap();
        let err = store
            .prune_when(4, 3, &[Condition::Equals("lead".into(), b"other".to_vec())])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { ref key, .. } if key == "lead"),
            "{err}"
        );
        let err = store.prune_when(7, 6, &[]).unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { ref key, .. } if *key == version_key(7)),
            "{err}"
        );
        assert_eq!(store.oldest().unwrap(), Some(1));
        assert!(store.policy(1).unwrap().is_some());

        // Keep version 4 on, and the policy it runs (3).
        store
            .prune_when(4, 3, &[Condition::Equals("lead".into(), b"me".to_vec())])
            .unwrap();
        assert_eq!(store.oldest().unwrap(), Some(4));
        for v in 1..=3 {
            assert!(store.get(v).unwrap().is_none(), "version {v} pruned");
        }
        assert_eq!(store.get(4).unwrap().unwrap(), record(4, 3));
        assert!(store.policy(1).unwrap().is_none());
        assert_eq!(store.policy(3).unwrap().as_deref(), Some("{\"v\":3}"));
        assert_eq!(versions(store.history(None, 10).unwrap()), [6, 5, 4]);
        assert!(store.history(Some(4), 10).unwrap().is_empty());
        assert_eq!(store.latest().unwrap().unwrap().version, 6);

        // Appends follow the newest version as before; pruning up to the newest keeps it.
        store.append(&record(7, 6), None).unwrap();
        store.prune_when(7, 6, &[]).unwrap();
        assert_eq!(store.oldest().unwrap(), Some(7));
        assert_eq!(store.latest().unwrap().unwrap(), record(7, 6));
        assert!(store.policy(3).unwrap().is_none());
        assert_eq!(store.policy(6).unwrap().as_deref(), Some("{\"v\":6}"));
        store.append(&record(8, 8), Some("{\"v\":8}")).unwrap();
        assert_eq!(versions(store.history(None, 10).unwrap()), [8, 7]);
        // The brain's key space is not the version history.
        assert_eq!(store.read("lead").unwrap().as_deref(), Some(&b"me"[..]));
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

    pub fn batches_are_conditional_and_atomic(store: &dyn Store) {
        let b = Batch::new()
            .absent("a/1")
            .put("a/1", b"one".to_vec())
            .put("a/2", b"two".to_vec())
            .put("b/1", b"other".to_vec());
        store.commit(&b).unwrap();
        assert_eq!(store.read("a/1").unwrap().as_deref(), Some(&b"one"[..]));
        // A failed condition writes nothing, not even the ops before it.
        let err = store
            .commit(
                &Batch::new()
                    .equals("a/2", b"two".to_vec())
                    .absent("a/1")
                    .put("a/3", b"three".to_vec()),
            )
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { ref key, .. } if key == "a/1"),
            "{err}"
        );
        assert!(store.read("a/3").unwrap().is_none());
        let err = store
            .commit(&Batch::new().equals("a/2", b"TWO".to_vec()).delete("a/2"))
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
        assert!(store.read("a/2").unwrap().is_some());
        store
            .commit(&Batch::new().equals("a/2", b"two".to_vec()).delete("a/2"))
            .unwrap();
        assert!(store.read("a/2").unwrap().is_none());
    }

    pub fn scans_in_key_order(store: &dyn Store) {
        let mut b = Batch::new();
        for n in [10u64, 2, 33, 1] {
            b = b.put(format!("s/x/{}", key_u64(n)), n.to_string().into_bytes());
        }
        b = b
            .put("s/y/1", b"y".to_vec())
            .put("s/xx", b"not x/".to_vec());
        store.commit(&b).unwrap();
        let keys = |v: Vec<(String, Vec<u8>)>| -> Vec<String> {
            v.into_iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        &k[4..].trim_start_matches('0'),
                        String::from_utf8(v).unwrap()
                    )
                })
                .collect()
        };
        assert_eq!(
            keys(store.scan("s/x/", None, 10).unwrap()),
            ["1=1", "2=2", "10=10", "33=33"]
        );
        let after = format!("s/x/{}", key_u64(2));
        assert_eq!(
            keys(store.scan("s/x/", Some(&after), 2).unwrap()),
            ["10=10", "33=33"]
        );
        let (last, _) = store.last("s/x/").unwrap().unwrap();
        assert_eq!(last, format!("s/x/{}", key_u64(33)));
        assert!(store.last("s/z/").unwrap().is_none());
        // Ring pruning: drop the windows before 10.
        store
            .commit(&Batch::new().delete_range("s/x/", format!("s/x/{}", key_u64(10))))
            .unwrap();
        assert_eq!(
            keys(store.scan("s/x/", None, 10).unwrap()),
            ["10=10", "33=33"]
        );
        assert!(store.read("s/xx").unwrap().is_some());
        assert!(store.read("s/y/1").unwrap().is_some());
    }
}
