//! The default backend: an embedded redb database in the data directory.
//!
//! redb commits are atomic and, with `Durability::Immediate` (set explicitly below),
//! fsync'd before `commit` returns, so a version acknowledged to an operator survives
//! `kill -9` and power loss. The file is locked: two servers cannot share a directory.
//!
//! An I/O failure (a full disk, a failed fsync) latches inside redb: every later call on
//! that `Database` answers `PreviousIo` until it is closed and opened again. So a call that
//! fails that way marks the store failed, and the next call closes the database and opens
//! it again from the file (redb repairs it on open; the failed commit left nothing
//! behind). Once space is back, the next write succeeds without a restart; while the
//! disk is still full, each call tries the reopen once and answers the error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, Condition, Op, Store, StoreError};
use crate::model::VersionRecord;

/// Version → JSON-encoded [`VersionRecord`].
const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("versions");
/// Version that set a policy → the policy document.
const POLICIES: TableDefinition<u64, &str> = TableDefinition::new("policies");
/// The brain's key space (see [`Store::commit`]).
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// File name inside the data directory.
pub const FILE_NAME: &str = "switchyard.redb";

/// redb-backed [`Store`].
pub struct RedbStore {
    /// `None` only between closing a failed database and a successful reopen.
    db: RwLock<Option<Database>>,
    /// A call hit an I/O failure: the next call reopens the database first.
    failed: AtomicBool,
    path: PathBuf,
}

/// Whether `e` means redb's handle is now unusable until reopened (it latched an I/O
/// failure, or its storage is gone).
fn latches(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_)
            | redb::Error::PreviousIo
            | redb::Error::Backend(_)
            | redb::Error::DatabaseClosed
    )
}

/// Open the file and make sure the tables exist, so readers never see them missing.
fn open_db(path: &Path) -> Result<Database, redb::Error> {
    let db = Database::create(path)?;
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    tx.open_table(VERSIONS)?;
    tx.open_table(POLICIES)?;
    tx.open_table(KV)?;
    tx.commit()?;
    Ok(db)
}

impl RedbStore {
    /// Open (or create) the store in `data_dir`, creating the directory if needed.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(FILE_NAME);
        let db = open_db(&path).map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            failed: AtomicBool::new(false),
            path,
        })
    }

    /// A redb error as a [`StoreError`], marking the store failed if the error latched.
    fn backend(&self, e: impl Into<redb::Error>) -> StoreError {
        let e = e.into();
        if latches(&e) {
            self.failed.store(true, Ordering::Release);
        }
        StoreError::Backend(e.to_string())
    }

    /// Run `f` on the database, reopening it first if an earlier call failed.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(db) => f(db),
            // Another call closed it a moment ago and has not reopened it yet.
            None => Err(StoreError::Backend(
                "the database is being reopened after an I/O error; try again".into(),
            )),
        }
    }

    /// Close the failed database and open the file again. Every transaction lives inside
    /// one [`Self::with_db`] call, so holding the write lock means none is alive and the
    /// close releases the file lock at once.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if !self.failed.load(Ordering::Acquire) {
            return Ok(()); // another call reopened it while this one waited
        }
        if let Some(old) = guard.take() {
            // Closing a latched database reports the latched error: nothing to act on.
            let _ = old.close();
        }
        // `open`, not `create`: a file that went missing is an error, never a new empty store.
        let db = Database::open(&self.path)
            .map_err(|e| StoreError::Backend(format!("reopening after an I/O error: {e}")))?;
        tracing::warn!(path = %self.path.display(), "redb store reopened after an I/O error");
        *guard = Some(db);
        self.failed.store(false, Ordering::Release);
        Ok(())
    }

    fn decode(version: u64, bytes: &[u8]) -> Result<VersionRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            version,
            message: e.to_string(),
        })
    }

    /// Check every condition against the key space as a write transaction sees it.
    fn check_all(
        &self,
        kv: &impl ReadableTable<&'static str, &'static [u8]>,
        conditions: &[Condition],
    ) -> Result<(), StoreError> {
        for c in conditions {
            let mut failure = None;
            let current = |k: &str| match kv.get(k) {
                Ok(v) => v.map(|v| v.value().to_vec()),
                Err(e) => {
                    failure = Some(self.backend(e));
                    None
                }
            };
            let checked = super::check_condition(c, current);
            if let Some(e) = failure {
                return Err(e);
            }
            checked?;
        }
        Ok(())
    }
}

impl Store for RedbStore {
    fn describe(&self) -> String {
        format!("redb:{}", self.path.display())
    }

    fn append_when(
        &self,
        record: &VersionRecord,
        policy_json: Option<&str>,
        conditions: &[Condition],
    ) -> Result<(), StoreError> {
        let encoded = serde_json::to_vec(record).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.with_db(|db| {
            let mut tx = db.begin_write().map_err(|e| self.backend(e))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| self.backend(e))?;
            if !conditions.is_empty() {
                let kv = tx.open_table(KV).map_err(|e| self.backend(e))?;
                self.check_all(&kv, conditions)?;
            }
            {
                let mut versions = tx.open_table(VERSIONS).map_err(|e| self.backend(e))?;
                let latest = versions
                    .last()
                    .map_err(|e| self.backend(e))?
                    .map(|(k, _)| k.value())
                    .unwrap_or(0);
                if record.version != latest + 1 {
                    // Dropping the transaction without commit aborts it.
                    return Err(StoreError::OutOfOrder {
                        latest,
                        got: record.version,
                    });
                }
                versions
                    .insert(record.version, encoded.as_slice())
                    .map_err(|e| self.backend(e))?;
                if let Some(policy) = policy_json {
                    let mut policies = tx.open_table(POLICIES).map_err(|e| self.backend(e))?;
                    policies
                        .insert(record.version, policy)
                        .map_err(|e| self.backend(e))?;
                }
            }
            tx.commit().map_err(|e| self.backend(e))
        })
    }

    fn latest(&self) -> Result<Option<VersionRecord>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.backend(e))?;
            let versions = tx.open_table(VERSIONS).map_err(|e| self.backend(e))?;
            let last = versions.last().map_err(|e| self.backend(e))?;
            match last {
                Some((k, v)) => Ok(Some(Self::decode(k.value(), v.value())?)),
                None => Ok(None),
            }
        })
    }

    fn get(&self, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.backend(e))?;
            let versions = tx.open_table(VERSIONS).map_err(|e| self.backend(e))?;
            let found = versions.get(version).map_err(|e| self.backend(e))?;
            match found {
                Some(v) => Ok(Some(Self::decode(version, v.value())?)),
                None => Ok(None),
            }
        })
    }

    fn policy(&self, policy_version: u64) -> Result<Option<String>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.backend(e))?;
            let policies = tx.open_table(POLICIES).map_err(|e| self.backend(e))?;
            let found = policies
                .get(policy_version)
                .map_err(|e| self.backend(e))?
                .map(|v| v.value().to_string());
            Ok(found)
        })
    }

    fn history(&self, before: Option<u64>, limit: usize) -> Result<Vec<VersionRecord>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.backend(e))?;
            let versions = tx.open_table(VERSIONS).map_err(|e| self.backend(e))?;
            let upper = before.unwrap_or(u64::MAX);
            let mut out = Vec::new();
            let range = versions.range(..upper).map_err(|e| self.backend(e))?;
            for entry in range.rev().take(limit) {
                let (k, v) = entry.map_err(|e| self.backend(e))?;
                out.push(Self::decode(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    fn oldest(&self) -> Result<Option<u64>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.backend(e))?;
            let versions = tx.open_table(VERSIONS).map_err(|e| self.backend(e))?;
            let first = versions.first().map_err(|e| self.backend(e))?;
            Ok(first.map(|(k, _)| k.value()))
        })
    }

    fn prune_when(
        &self,
        keep_from: u64,
        keep_policies_from: u64,
        conditions: &[Condition],
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let mut tx = db.begin_write().map_err(|e| self.backend(e))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| self.backend(e))?;
            // Dropping the transaction without commit aborts it.
            if !conditions.is_empty() {
                let kv = tx.open_table(KV).map_err(|e| self.backend(e))?;
                self.check_all(&kv, conditions)?;
            }
            {
                let mut versions = tx.open_table(VERSIONS).map_err(|e| self.backend(e))?;
                if versions
                    .get(keep_from)
                    .map_err(|e| self.backend(e))?
                    .is_none()
                {
                    return Err(super::keep_from_missing(keep_from));
                }
                versions
                    .retain_in(..keep_from, |_, _| false)
                    .map_err(|e| self.backend(e))?;
                let mut policies = tx.open_table(POLICIES).map_err(|e| self.backend(e))?;
                policies
                    .retain_in(..keep_policies_from, |_, _| false)
                    .map_err(|e| self.backend(e))?;
            }
            tx.commit().map_err(|e| self.backend(e))
        })
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.backend(e))?;
            let kv = tx.open_table(KV).map_err(|e| self.backend(e))?;
            let found = kv
                .get(key)
                .map_err(|e| self.backend(e))?
                .map(|v| v.value().to_vec());
            Ok(found)
        })
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.backend(e))?;
            let kv = tx.open_table(KV).map_err(|e| self.backend(e))?;
            let mut out = Vec::new();
            for entry in kv.range(prefix..).map_err(|e| self.backend(e))? {
                let (k, v) = entry.map_err(|e| self.backend(e))?;
                let key = k.value();
                if !key.starts_with(prefix) || out.len() >= limit {
                    break;
                }
                if after.is_some_and(|a| key <= a) {
                    continue;
                }
                out.push((key.to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn last(&self, prefix: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.backend(e))?;
            let kv = tx.open_table(KV).map_err(|e| self.backend(e))?;
            // Keys with the prefix sort before the prefix followed by U+10FFFF... in
            // practice scan backwards from the first key past the prefix range.
            let upper = format!("{prefix}\u{10FFFF}");
            let mut range = kv
                .range(prefix..upper.as_str())
                .map_err(|e| self.backend(e))?;
            match range.next_back() {
                Some(entry) => {
                    let (k, v) = entry.map_err(|e| self.backend(e))?;
                    Ok(Some((k.value().to_string(), v.value().to_vec())))
                }
                None => Ok(None),
            }
        })
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.with_db(|db| {
            let mut tx = db.begin_write().map_err(|e| self.backend(e))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| self.backend(e))?;
            {
                let mut kv = tx.open_table(KV).map_err(|e| self.backend(e))?;
                // Dropping the transaction without commit aborts it.
                self.check_all(&kv, &batch.conditions)?;
                for op in &batch.ops {
                    match op {
                        Op::Put(k, v) => {
                            kv.insert(k.as_str(), v.as_slice())
                                .map_err(|e| self.backend(e))?;
                        }
                        Op::Delete(k) => {
                            kv.remove(k.as_str()).map_err(|e| self.backend(e))?;
                        }
                        Op::DeleteRange { prefix, before } => {
                            if before.as_str() > prefix.as_str() {
                                kv.retain_in(prefix.as_str()..before.as_str(), |k, _| {
                                    !k.starts_with(prefix.as_str())
                                })
                                .map_err(|e| self.backend(e))?;
                            }
                        }
                    }
                }
            }
            tx.commit().map_err(|e| self.backend(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract;

    #[test]
    fn contract_append_and_read() {
        let dir = tempfile::tempdir().unwrap();
        contract::appends_in_order_and_reads_back(&RedbStore::open(dir.path()).unwrap());
    }

    #[test]
    fn contract_order() {
        let dir = tempfile::tempdir().unwrap();
        contract::rejects_gaps_and_repeats(&RedbStore::open(dir.path()).unwrap());
    }

    #[test]
    fn contract_batches() {
        let dir = tempfile::tempdir().unwrap();
        contract::batches_are_conditional_and_atomic(&RedbStore::open(dir.path()).unwrap());
    }

    #[test]
    fn contract_scans() {
        let dir = tempfile::tempdir().unwrap();
        contract::scans_in_key_order(&RedbStore::open(dir.path()).unwrap());
    }

    #[test]
    fn contract_conditional_append() {
        let dir = tempfile::tempdir().unwrap();
        contract::appends_only_when_conditions_hold(&RedbStore::open(dir.path()).unwrap());
    }

    #[test]
    fn contract_prune() {
        let dir = tempfile::tempdir().unwrap();
        contract::prunes_old_versions_and_unreferenced_policies(
            &RedbStore::open(dir.path()).unwrap(),
        );
    }

    #[test]
    fn contract_nothing_to_follow() {
        // One process owns the file: nothing else can append.
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        contract::reports_versions_appended_elsewhere(&s, &s, false);
    }

    #[test]
    fn kv_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            store
                .commit(&Batch::new().put("audit/1", b"x".to_vec()))
                .unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.read("audit/1").unwrap().as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn reopen_keeps_every_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            for v in 1..=5 {
                store
                    .append(&contract::record(v, v), Some(&format!("{{\"v\":{v}}}")))
                    .unwrap();
            }
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().version, 5);
        for v in 1..=5 {
            assert_eq!(store.get(v).unwrap().unwrap(), contract::record(v, v));
            assert_eq!(store.policy(v).unwrap().unwrap(), format!("{{\"v\":{v}}}"));
        }
    }

    /// A tmpfs of `size` on a fresh directory, unmounted on drop. `None` when this process
    /// may not mount (not root): the test says so and checks nothing.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn mount(size: &str) -> Option<SmallDisk> {
            let root = std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
                .unwrap_or(false);
            if !root {
                eprintln!("SKIPPED: mounting a tmpfs needs root");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let st = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "mount a tmpfs");
            Some(SmallDisk(dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    /// A full disk fails writes with an error and changes nothing; once space is back the
    /// same store (no restart) takes writes again, and every acknowledged version is kept.
    /// Before the reopen, redb answered `PreviousIo` to every call until a restart.
    #[test]
    fn a_full_disk_fails_writes_and_the_store_recovers_once_space_is_back() {
        let Some(disk) = SmallDisk::mount("4m") else {
            return;
        };
        let data = disk.0.path().join("data");
        let store = RedbStore::open(&data).unwrap();
        // 64 KB policies make the file grow within a few appends.
        let policy = |v: u64| format!("{{\"v\":{v},\"pad\":\"{}\"}}", "x".repeat(64 * 1024));
        store
            .append(&contract::record(1, 1), Some(&policy(1)))
            .unwrap();
        let mut acked = vec![1];

        let filler = disk.0.path().join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = vec![0u8; 64 * 1024];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.sync_all();
        }
        let mut first_error = None;
        for _ in 0..200 {
            let v = acked.last().unwrap() + 1;
            match store.append(&contract::record(v, v), Some(&policy(v))) {
                Ok(()) => acked.push(v),
                Err(e) => {
                    first_error = Some(e.to_string());
                    break;
                }
            }
        }
        let first_error = first_error.expect("a write fails on a full disk");
        assert!(
            first_error.contains("No space left on device"),
            "{first_error}"
        );
        // Still full: refused again, the batch as well, and nothing is half-applied.
        let v = acked.last().unwrap() + 1;
        assert!(store
            .append(&contract::record(v, v), Some(&policy(v)))
            .is_err());
        assert!(store
            .commit(&Batch::new().put("audit/1", vec![7; 256 * 1024]))
            .is_err());

        std::fs::remove_file(&filler).unwrap();
        // Space is back: the same store takes the next version and the batch.
        store
            .append(&contract::record(v, v), Some(&policy(v)))
            .expect("an append once space is back, without a restart");
        acked.push(v);
        store
            .commit(&Batch::new().put("audit/1", b"x".to_vec()))
            .expect("a batch once space is back");
        assert_eq!(store.latest().unwrap().unwrap().version, v);
        for &a in &acked {
            assert_eq!(store.get(a).unwrap().unwrap(), contract::record(a, a));
            assert_eq!(store.policy(a).unwrap().unwrap(), policy(a));
        }
        drop(store);
        // And a restart finds exactly the acknowledged versions.
        let store = RedbStore::open(&data).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().version, v);
        let history: Vec<u64> = store
            .history(None, 1000)
            .unwrap()
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(history, acked.iter().rev().copied().collect::<Vec<_>>());
        assert_eq!(store.read("audit/1").unwrap().as_deref(), Some(&b"x"[..]));
    }
}
