//! The audit log: every recommendation, approval, rejection, execution, automatic
//! action and manual change, appended to a hash chain.
//!
//! Entry `n` stores the hash of entry `n - 1` (`prev_hash`) and its own `hash`, the
//! SHA-256 of `prev_hash` followed by the entry's canonical JSON (every field but
//! `hash`, object keys sorted, no whitespace). Changing, removing or reordering any
//! entry breaks the chain from there on, and [`AuditLog::verify`] names the first broken
//! entry.
//!
//! Entries live in the store under `audit/<seq>` (sequence numbers from 1, gapless). An
//! append is a conditional write (`audit/<seq>` must be absent), so two writers — two
//! tasks, or two replicas on one etcd — can never both claim a sequence number; the
//! loser re-reads the head and retries. A caller that changes brain state *and* audits
//! it stages the entry ([`AuditLog::stage`]) and commits both in one batch, so a change
//! is never acknowledged without its audit entry.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::clock::UnixMs;
use crate::store::{key_u64, Batch, Store, StoreError};

/// Key prefix of the chain.
pub const PREFIX: &str = "audit/";

/// `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// The brain proposes an action (incident, rollout halt).
    Recommendation,
    /// A human approved a proposal.
    Approval,
    /// A human rejected a proposal.
    Rejection,
    /// An approved action was carried out.
    Execution,
    /// The brain acted without approval (fast path, pre-approved rollback, rollout step).
    AutomaticAction,
    /// An operator changed the routing state directly (CLI, API).
    #[default]
    ManualChange,
    /// A guardrail refused a change.
    Refusal,
    /// Anything else worth keeping (events registered, rollouts started).
    Note,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Recommendation => "recommendation",
            AuditKind::Approval => "approval",
            AuditKind::Rejection => "rejection",
            AuditKind::Execution => "execution",
            AuditKind::AutomaticAction => "automatic_action",
            AuditKind::ManualChange => "manual_change",
            AuditKind::Refusal => "refusal",
            AuditKind::Note => "note",
        }
    }
}

/// An entry before it joins the chain: who, what, why, with what evidence, before → after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditDraft {
    pub at_ms: UnixMs,
    pub actor: String,
    pub kind: AuditKind,
    /// What it is about: `stack/green`, `policy`, `rollout/r-3`, `incident/i-7`, …
    pub subject: String,
    /// What happened, in a sentence.
    pub summary: String,
    /// Why (the operator's comment, the gate that failed, the finding).
    #[serde(default)]
    pub reason: String,
    /// Where the evidence is (an incident's bundle, a rollout step), if any.
    #[serde(default)]
    pub evidence: String,
    /// State before and after, as the subject's own JSON (`null` when not applicable).
    #[serde(default)]
    pub before: Value,
    #[serde(default)]
    pub after: Value,
    /// The routing version this produced, if it changed routing.
    #[serde(default)]
    pub version: Option<u64>,
}

impl AuditDraft {
    pub fn new(
        at_ms: UnixMs,
        actor: impl Into<String>,
        kind: AuditKind,
        subject: impl Into<String>,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            at_ms,
            actor: actor.into(),
            kind,
            subject: subject.into(),
            summary: summary.into(),
            reason: String::new(),
            evidence: String::new(),
            before: Value::Null,
            after: Value::Null,
            version: None,
        }
    }
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = reason.into();
        self
    }
    pub fn evidence(mut self, evidence: impl Into<String>) -> Self {
        self.evidence = evidence.into();
        self
    }
    pub fn change(mut self, before: Value, after: Value) -> Self {
        self.before = before;
        self.after = after;
        self
    }
    pub fn version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }
}

/// An entry in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub draft: AuditDraft,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry should carry, from its content and `prev_hash`.
    pub fn compute_hash(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("hash");
        }
        let mut canonical = String::new();
        write_canonical(&v, &mut canonical);
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(canonical.as_bytes());
        hex(&h.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Canonical JSON: object keys sorted, no whitespace, strings and numbers as serde_json
/// writes them. Independent of how `serde_json::Map` orders keys in this build.
pub fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// An entry ready to commit, with the batch that commits it. Add your own conditions
/// and ops to `batch` to make a state change and its audit entry one atomic write.
#[derive(Debug, Clone)]
pub struct Staged {
    pub entry: AuditEntry,
    pub batch: Batch,
}

/// Result of [`AuditLog::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Entries checked.
    pub entries: u64,
    /// Hash of the last entry checked (the chain head), or [`GENESIS`] when empty.
    pub head: String,
    /// The first entry that does not verify, and why; `None` when the chain is intact.
    pub first_broken: Option<Broken>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broken {
    pub seq: u64,
    pub reason: String,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.first_broken.is_none()
    }
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit entry {seq} is unreadable: {message}")]
    Corrupt { seq: u64, message: String },
    #[error("could not append to the audit log after {0} attempts (concurrent writers)")]
    Contended(u32),
}

/// The hash-chained audit log over a [`Store`].
#[derive(Clone)]
pub struct AuditLog {
    store: Arc<dyn Store>,
}

fn key(seq: u64) -> String {
    format!("{PREFIX}{}", key_u64(seq))
}

fn decode(seq: u64, bytes: &[u8]) -> Result<AuditEntry, AuditError> {
    serde_json::from_slice(bytes).map_err(|e| AuditError::Corrupt {
        seq,
        message: e.to_string(),
    })
}

fn seq_of(key: &str) -> Option<u64> {
    key.strip_prefix(PREFIX)?.parse().ok()
}

impl AuditLog {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The newest entry.
    pub fn head(&self) -> Result<Option<AuditEntry>, AuditError> {
        match self.store.last(PREFIX)? {
            Some((k, v)) => Ok(Some(decode(seq_of(&k).unwrap_or(0), &v)?)),
            None => Ok(None),
        }
    }

    /// Build the next entry on the current head, with a batch that writes it only if no
    /// one else claimed its sequence number meanwhile.
    pub fn stage(&self, draft: AuditDraft) -> Result<Staged, AuditError> {
        let head = self.head()?;
        let (seq, prev_hash) = match head {
            Some(h) => (h.seq + 1, h.hash),
            None => (1, GENESIS.to_string()),
        };
        let mut entry = AuditEntry {
            seq,
            draft,
            prev_hash,
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let bytes = serde_json::to_vec(&entry).map_err(|e| AuditError::Corrupt {
            seq,
            message: e.to_string(),
        })?;
        let k = key(seq);
        let batch = Batch::new().absent(k.clone()).put(k, bytes);
        Ok(Staged { entry, batch })
    }

    /// Append one entry, retrying when another writer got there first. Durable when it
    /// returns.
    pub fn append(&self, draft: AuditDraft) -> Result<AuditEntry, AuditError> {
        const ATTEMPTS: u32 = 16;
        for _ in 0..ATTEMPTS {
            let staged = self.stage(draft.clone())?;
            match self.store.commit(&staged.batch) {
                Ok(()) => return Ok(staged.entry),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuditError::Contended(ATTEMPTS))
    }

    /// The routing version named by the newest entry that names one.
    pub fn last_version(&self) -> Result<Option<u64>, AuditError> {
        let Some(head) = self.head()? else {
            return Ok(None);
        };
        const PAGE: u64 = 256;
        let mut upto = head.seq;
        while upto > 0 {
            let from = upto.saturating_sub(PAGE);
            let page = self.list(Some(from), (upto - from) as usize)?;
            if let Some(v) = page.iter().rev().find_map(|e| e.draft.version) {
                return Ok(Some(v));
            }
            upto = from;
        }
        Ok(None)
    }

    /// Entries after `after_seq` (from the first when `None`), oldest first, at most
    /// `limit`.
    pub fn list(
        &self,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let after = after_seq.map(key);
        self.store
            .scan(PREFIX, after.as_deref(), limit)?
            .into_iter()
            .map(|(k, v)| decode(seq_of(&k).unwrap_or(0), &v))
            .collect()
    }

    /// The newest `limit` entries, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        let Some(head) = self.head()? else {
            return Ok(Vec::new());
        };
        let from = head.seq.saturating_sub(limit as u64);
        let mut out = self.list(Some(from), limit)?;
        out.reverse();
        Ok(out)
    }

    /// Recompute the whole chain and name the first entry that does not verify: a
    /// missing or out-of-place sequence number, a `prev_hash` that is not the previous
    /// entry's hash, a `hash` that does not match the content, or an unreadable entry.
    pub fn verify(&self) -> Result<Verification, AuditError> {
        const PAGE: usize = 512;
        let mut expected_seq = 1u64;
        let mut prev = GENESIS.to_string();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.scan(PREFIX, after.as_deref(), PAGE)?;
            if page.is_empty() {
                break;
            }
            for (k, v) in &page {
                let broken = |reason: String| Verification {
                    entries: expected_seq - 1,
                    head: prev.clone(),
                    first_broken: Some(Broken {
                        seq: seq_of(k).unwrap_or(expected_seq),
                        reason,
                    }),
                };
                let Some(seq) = seq_of(k) else {
                    return Ok(broken(format!("key {k} is not an audit sequence number")));
                };
                if seq != expected_seq {
                    return Ok(Verification {
                        entries: expected_seq - 1,
                        head: prev.clone(),
                        first_broken: Some(Broken {
                            seq: expected_seq,
                            reason: format!("entry {expected_seq} is missing (next is {seq})"),
                        }),
                    });
                }
                let entry = match decode(seq, v) {
                    Ok(e) => e,
                    Err(e) => return Ok(broken(e.to_string())),
                };
                if entry.seq != seq {
                    return Ok(broken(format!(
                        "stored under {seq} but says it is {}",
                        entry.seq
                    )));
                }
                if entry.prev_hash != prev {
                    return Ok(broken(format!(
                        "prev_hash {} does not match the previous entry's hash {}",
                        short(&entry.prev_hash),
                        short(&prev)
                    )));
                }
                let recomputed = entry.compute_hash();
                if entry.hash != recomputed {
                    return Ok(broken(format!(
                        "content does not match its hash (stored {}, recomputed {})",
                        short(&entry.hash),
                        short(&recomputed)
                    )));
                }
                prev = entry.hash;
                expected_seq += 1;
            }
            after = page.last().map(|(k, _)| k.clone());
        }
        Ok(Verification {
            entries: expected_seq - 1,
            head: prev,
            first_broken: None,
        })
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, RedbStore};

    fn draft(i: u64) -> AuditDraft {
        AuditDraft::new(
            1_000 + i,
            "alice",
            AuditKind::ManualChange,
            "stack/green",
            format!("weight {i}"),
        )
        .reason("test")
        .change(
            serde_json::json!({"weight": i}),
            serde_json::json!({"weight": i + 1}),
        )
        .version(i)
    }

    fn log() -> (Arc<dyn Store>, AuditLog) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        (store.clone(), AuditLog::new(store))
    }

    #[test]
    fn appends_chain_and_verify() {
        let (_, log) = log();
        assert!(log.verify().unwrap().ok());
        assert_eq!(log.verify().unwrap().head, GENESIS);
        let a = log.append(draft(1)).unwrap();
        let b = log.append(draft(2)).unwrap();
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.prev_hash, GENESIS);
        assert_eq!(b.prev_hash, a.hash);
        let v = log.verify().unwrap();
        assert!(v.ok(), "{v:?}");
        assert_eq!((v.entries, v.head.as_str()), (2, b.hash.as_str()));
        assert_eq!(log.list(None, 10).unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(log.recent(1).unwrap(), vec![b]);
    }

    #[test]
    fn verify_names_the_first_tampered_entry() {
        let (store, log) = log();
        for i in 1..=5 {
            log.append(draft(i)).unwrap();
        }
        // Rewrite entry 3's reason without fixing its hash.
        let (k, v) = store.scan(PREFIX, None, 10).unwrap()[2].clone();
        let mut e: AuditEntry = serde_json::from_slice(&v).unwrap();
        e.draft.reason = "nothing to see".into();
        store
            .commit(&Batch::new().put(k.clone(), serde_json::to_vec(&e).unwrap()))
            .unwrap();
        let v = log.verify().unwrap();
        let broken = v.first_broken.unwrap();
        assert_eq!(broken.seq, 3);
        assert!(
            broken.reason.contains("does not match its hash"),
            "{}",
            broken.reason
        );
        assert_eq!(v.entries, 2);

        // Re-hashing entry 3 moves the break to entry 4 (its prev_hash).
        e.hash = e.compute_hash();
        store
            .commit(&Batch::new().put(k, serde_json::to_vec(&e).unwrap()))
            .unwrap();
        let broken = log.verify().unwrap().first_broken.unwrap();
        assert_eq!(broken.seq, 4);
        assert!(broken.reason.contains("prev_hash"), "{}", broken.reason);
    }

    #[test]
    fn verify_finds_a_removed_entry() {
        let (store, log) = log();
        for i in 1..=4 {
            log.append(draft(i)).unwrap();
        }
        store.commit(&Batch::new().delete(key(2))).unwrap();
        let broken = log.verify().unwrap().first_broken.unwrap();
        assert_eq!(broken.seq, 2);
        assert!(broken.reason.contains("missing"), "{}", broken.reason);
    }

    #[test]
    fn unreadable_entry_is_named() {
        let (store, log) = log();
        log.append(draft(1)).unwrap();
        store
            .commit(&Batch::new().put(key(2), b"{not json".to_vec()))
            .unwrap();
        let broken = log.verify().unwrap().first_broken.unwrap();
        assert_eq!(broken.seq, 2);
    }

    #[test]
    fn a_staged_entry_loses_to_a_concurrent_append_and_append_retries() {
        let (store, log) = log();
        let staged = log.stage(draft(1)).unwrap();
        // Another writer appends first.
        let other = AuditLog::new(store.clone());
        other.append(draft(9)).unwrap();
        assert!(matches!(
            store.commit(&staged.batch),
            Err(StoreError::Conflict { .. })
        ));
        // append() re-reads the head and lands after it.
        let e = log.append(draft(1)).unwrap();
        assert_eq!(e.seq, 2);
        assert!(log.verify().unwrap().ok());
    }

    #[test]
    fn staged_batch_carries_the_callers_state_change_atomically() {
        let (store, log) = log();
        let mut staged = log.stage(draft(1)).unwrap();
        staged.batch = staged
            .batch
            .absent("rollout/r1")
            .put("rollout/r1", b"{}".to_vec());
        store.commit(&staged.batch).unwrap();
        // A second attempt at the same transition fails as a whole: no orphan audit entry.
        let mut again = log.stage(draft(2)).unwrap();
        again.batch = again
            .batch
            .absent("rollout/r1")
            .put("rollout/r1", b"{}".to_vec());
        assert!(store.commit(&again.batch).is_err());
        assert_eq!(log.list(None, 10).unwrap().len(), 1);
    }

    #[test]
    fn floats_survive_the_round_trip_through_the_store() {
        let (_, log) = log();
        let awkward = [
            0.1 + 0.2,
            1.0 / 3.0,
            2.0f64.sqrt() * 1e-9,
            123456.789e10,
            f64::MIN_POSITIVE,
        ];
        log.append(draft(1).change(
            serde_json::json!(awkward),
            serde_json::json!({"c": 0.7381966011250105}),
        ))
        .unwrap();
        let v = log.verify().unwrap();
        assert!(v.ok(), "{v:?}");
    }

    #[test]
    fn hash_is_independent_of_key_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let head = {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
            let log = AuditLog::new(store);
            log.append(draft(1)).unwrap();
            log.append(draft(2).change(
                serde_json::json!({"b": 1, "a": [1, {"y": 2, "x": 1}]}),
                Value::Null,
            ))
            .unwrap()
        };
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let log = AuditLog::new(store);
        let v = log.verify().unwrap();
        assert!(v.ok());
        assert_eq!(v.head, head.hash);
        let mut s = String::new();
        write_canonical(
            &serde_json::json!({"b": 1, "a": {"d": null, "c": "é\""}}),
            &mut s,
        );
        assert_eq!(s, r#"{"a":{"c":"é\"","d":null},"b":1}"#);
    }
}
