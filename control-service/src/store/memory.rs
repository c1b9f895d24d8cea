//! In-memory store: for tests and throwaway runs. Not durable.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Batch, Condition, Op, Store, StoreError};
use crate::model::VersionRecord;

/// Keeps every version in memory; lost on exit.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    versions: BTreeMap<u64, VersionRecord>,
    policies: BTreeMap<u64, String>,
    kv: BTreeMap<String, Vec<u8>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written version: inserts
        // happen after every check.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn append_when(
        &self,
        record: &VersionRecord,
        policy_json: Option<&str>,
        conditions: &[Condition],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for c in conditions {
            super::check_condition(c, |k| inner.kv.get(k).cloned())?;
        }
        let latest = inner.versions.keys().next_back().copied().unwrap_or(0);
        if record.version != latest + 1 {
            return Err(StoreError::OutOfOrder {
                latest,
                got: record.version,
            });
        }
        if let Some(p) = policy_json {
            inner.policies.insert(record.version, p.to_string());
        }
        inner.versions.insert(record.version, record.clone());
        Ok(())
    }

    fn latest(&self) -> Result<Option<VersionRecord>, StoreError> {
        Ok(self.lock().versions.values().next_back().cloned())
    }

    fn get(&self, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        Ok(self.lock().versions.get(&version).cloned())
    }

    fn policy(&self, policy_version: u64) -> Result<Option<String>, StoreError> {
        Ok(self.lock().policies.get(&policy_version).cloned())
    }

    fn history(&self, before: Option<u64>, limit: usize) -> Result<Vec<VersionRecord>, StoreError> {
        let inner = self.lock();
        let upper = before.unwrap_or(u64::MAX);
        Ok(inner
            .versions
            .range(..upper)
            .rev()
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn oldest(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().versions.keys().next().copied())
    }

    fn prune_when(
        &self,
        keep_from: u64,
        keep_policies_from: u64,
        conditions: &[Condition],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for c in conditions {
            super::check_condition(c, |k| inner.kv.get(k).cloned())?;
        }
        if !inner.versions.contains_key(&keep_from) {
            return Err(super::keep_from_missing(keep_from));
        }
        inner.versions = inner.versions.split_off(&keep_from);
        inner.policies = inner.policies.split_off(&keep_policies_from);
        Ok(())
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().kv.get(key).cloned())
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self, prefix: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .last()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for c in &batch.conditions {
            super::check_condition(c, |k| inner.kv.get(k).cloned())?;
        }
        for op in &batch.ops {
            match op {
                Op::Put(k, v) => {
                    inner.kv.insert(k.clone(), v.clone());
                }
                Op::Delete(k) => {
                    inner.kv.remove(k);
                }
                Op::DeleteRange { prefix, before } => {
                    let doomed: Vec<String> = inner
                        .kv
                        .range(prefix.clone()..before.clone())
                        .filter(|(k, _)| k.starts_with(prefix.as_str()))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        inner.kv.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract;

    #[test]
    fn contract_append_and_read() {
        contract::appends_in_order_and_reads_back(&MemoryStore::new());
    }

    #[test]
    fn contract_order() {
        contract::rejects_gaps_and_repeats(&MemoryStore::new());
    }

    #[test]
    fn contract_batches() {
        contract::batches_are_conditional_and_atomic(&MemoryStore::new());
    }

    #[test]
    fn contract_scans() {
        contract::scans_in_key_order(&MemoryStore::new());
    }

    #[test]
    fn contract_conditional_append() {
        contract::appends_only_when_conditions_hold(&MemoryStore::new());
    }

    #[test]
    fn contract_prune() {
        contract::prunes_old_versions_and_unreferenced_policies(&MemoryStore::new());
    }

    #[test]
    fn contract_nothing_to_follow() {
        let s = MemoryStore::new();
        contract::reports_versions_appended_elsewhere(&s, &s, false);
    }
}
