//! The default backend: an embedded redb database in the data directory.
//!
//! redb commits are atomic and, with `Durability::Immediate` (set explicitly below),
//! fsync'd before `commit` returns, so a version acknowledged to an operator survives
//! `kill -9` and power loss. The file is locked: two servers cannot share a directory.

use std::path::{Path, PathBuf};

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
    db: Database,
    path: PathBuf,
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

impl RedbStore {
    /// Open (or create) the store in `data_dir`, creating the directory if needed.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(backend)?;
        // Create the tables once so readers never see them missing.
        let mut tx = db.begin_write().map_err(backend)?;
        tx.set_durability(Durability::Immediate).map_err(backend)?;
        tx.open_table(VERSIONS).map_err(backend)?;
        tx.open_table(POLICIES).map_err(backend)?;
        tx.open_table(KV).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(Self { db, path })
    }

    fn decode(version: u64, bytes: &[u8]) -> Result<VersionRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            version,
            message: e.to_string(),
        })
    }
}

/// Check every condition against the key space as a write transaction sees it.
fn check_all(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    conditions: &[Condition],
) -> Result<(), StoreError> {
    for c in conditions {
        let mut failure = None;
        let current = |k: &str| match kv.get(k) {
            Ok(v) => v.map(|v| v.value().to_vec()),
            Err(e) => {
                failure = Some(backend(e));
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
        let mut tx = self.db.begin_write().map_err(backend)?;
        tx.set_durability(Durability::Immediate).map_err(backend)?;
        if !conditions.is_empty() {
            let kv = tx.open_table(KV).map_err(backend)?;
            check_all(&kv, conditions)?;
        }
        {
            let mut versions = tx.open_table(VERSIONS).map_err(backend)?;
            let latest = versions
                .last()
                .map_err(backend)?
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
                .map_err(backend)?;
            if let Some(policy) = policy_json {
                let mut policies = tx.open_table(POLICIES).map_err(backend)?;
                policies.insert(record.version, policy).map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(())
    }

    fn latest(&self) -> Result<Option<VersionRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let versions = tx.open_table(VERSIONS).map_err(backend)?;
        let last = versions.last().map_err(backend)?;
        let record = match last {
            Some((k, v)) => Some(Self::decode(k.value(), v.value())?),
            None => None,
        };
        Ok(record)
    }

    fn get(&self, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let versions = tx.open_table(VERSIONS).map_err(backend)?;
        let found = versions.get(version).map_err(backend)?;
        let record = match found {
            Some(v) => Some(Self::decode(version, v.value())?),
            None => None,
        };
        Ok(record)
    }

    fn policy(&self, policy_version: u64) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let policies = tx.open_table(POLICIES).map_err(backend)?;
        Ok(policies
            .get(policy_version)
            .map_err(backend)?
            .map(|v| v.value().to_string()))
    }

    fn history(&self, before: Option<u64>, limit: usize) -> Result<Vec<VersionRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let versions = tx.open_table(VERSIONS).map_err(backend)?;
        let upper = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for entry in versions.range(..upper).map_err(backend)?.rev().take(limit) {
            let (k, v) = entry.map_err(backend)?;
            out.push(Self::decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let kv = tx.open_table(KV).map_err(backend)?;
        Ok(kv.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let kv = tx.open_table(KV).map_err(backend)?;
        let mut out = Vec::new();
        for entry in kv.range(prefix..).map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
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
    }

    fn last(&self, prefix: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let kv = tx.open_table(KV).map_err(backend)?;
        // Keys with the prefix sort before the prefix followed by U+10FFFF... in practice
        // scan backwards from the first key past the prefix range.
        let upper = format!("{prefix}\u{10FFFF}");
        let mut range = kv.range(prefix..upper.as_str()).map_err(backend)?;
        match range.next_back() {
            Some(entry) => {
                let (k, v) = entry.map_err(backend)?;
                Ok(Some((k.value().to_string(), v.value().to_vec())))
            }
            None => Ok(None),
        }
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(backend)?;
        tx.set_durability(Durability::Immediate).map_err(backend)?;
        {
            let mut kv = tx.open_table(KV).map_err(backend)?;
            // Dropping the transaction without commit aborts it.
            check_all(&kv, &batch.conditions)?;
            for op in &batch.ops {
                match op {
                    Op::Put(k, v) => {
                        kv.insert(k.as_str(), v.as_slice()).map_err(backend)?;
                    }
                    Op::Delete(k) => {
                        kv.remove(k.as_str()).map_err(backend)?;
                    }
                    Op::DeleteRange { prefix, before } => {
                        if before.as_str() > prefix.as_str() {
                            kv.retain_in(prefix.as_str()..before.as_str(), |k, _| {
                                !k.starts_with(prefix.as_str())
                            })
                            .map_err(backend)?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(backend)?;
        Ok(())
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
}
