//! The shared-data protocol between the control singleton and the worker filter VMs of
//! one Envoy: key and queue names, value encodings, bounds, and how a worker decides what
//! to re-apply. Everything here is host-independent and tested natively; the host calls
//! that follow these rules live in `wasm/shared.rs` and nowhere else.
//!
//! All names live in the namespace of the VMs' common `vm_id` (shared data and queues are
//! process-wide per `vm_id`; a filter without that `vm_id` never sees the singleton).
//!
//! # Keys and queues
//!
//! | name | writer | value |
//! |---|---|---|
//! | [`SNAPSHOT_KEY`] | singleton only, no CAS | protobuf `Snapshot` exactly as received |
//! | [`VERSION_KEY`] | singleton only, no CAS | `Snapshot.version`, 8 bytes little endian |
//! | [`WORKERS_KEY`] | every worker, CAS | worker VMs that took a wake queue, 4 bytes LE |
//! | `switchyard.wake.<n>` ([`wake_queue_name`]) | registered by worker `n`, poked by the singleton | empty messages |
//! | [`TELEMETRY_QUEUE`] | registered by the singleton, fed by every worker | protobuf `TelemetryBatch` |
//!
//! # Ordering rules
//!
//! 1. **Snapshot before version.** The singleton validates a snapshot, writes its bytes to
//!    [`SNAPSHOT_KEY`], then its version to [`VERSION_KEY`], then pokes the wake queues.
//!    So the snapshot in shared data is never older than the version key announces.
//! 2. **Workers read the version, then the snapshot, and re-check.** A worker reads only
//!    the 8-byte version key (on a wake-up and on its tick, never per request: every read
//!    copies the value under Envoy's global lock). When it differs from what the worker
//!    applied ([`Applied::announces`]) the worker reads and decodes the snapshot and
//!    records the *decoded* snapshot's version, which may be newer than the key it read
//!    (rule 1) — the next wake-up or tick compares the key again, so a snapshot written
//!    during the read is applied at the latest then. A snapshot that cannot be applied
//!    still counts as seen: it is not re-read until a newer version is announced, and the
//!    worker keeps what it had (fail static).
//! 3. **Register, then read.** A worker takes a wake queue *before* its first snapshot
//!    read: it increments [`WORKERS_KEY`] and registers `switchyard.wake.<n>` with the
//!    number it took. After writing, the singleton reads the count and pokes queues
//!    `0..count`. A snapshot written in between is either seen by the worker's own read or
//!    announced on its queue; a queue not registered yet cannot be resolved and is skipped,
//!    and its worker reads the snapshot itself. Worker ticks ([`WORKER_TICK_MS`]) re-check
//!    the version as a backstop for any lost wake-up.
//! 4. **CAS mismatch.** [`WORKERS_KEY`] is the only key with several writers, so it is
//!    written with compare-and-swap. On a mismatch the worker re-reads and retries, at most
//!    [`MAX_CAS_ATTEMPTS`] times; when it gives up, or [`MAX_WORKERS`] numbers are taken,
//!    it has no wake queue and applies snapshots on its tick only. The singleton's keys
//!    have one writer and need no CAS.
//! 5. **Policy identity.** A worker recompiles its policy only when the snapshot's
//!    [`PolicyId`] differs from the one it compiled: the control service's
//!    `policy_version` (the version that set the document; 0 from a control service that
//!    does not send it) together with a SHA-256 of the document, so a control service
//!    whose history restarted (store replaced, versions reused) cannot make a worker keep
//!    an old document under a reused number. A snapshot that changes only stack weights or
//!    health keeps the compiled policy and the router's per-policy state. Replacing the
//!    plugin configuration forgets both ([`Applied::forget`]) so the control plane's
//!    snapshot is applied again on top. The singleton validates a policy only when its
//!    identity changes, by the same rule.
//!
//! # Bounds
//!
//! - Snapshot and telemetry messages are decoded with the codec's
//!   [`MAX_MESSAGE`](crate::snapshot::MAX_MESSAGE) limit (4 MiB); anything larger is
//!   refused, never partially applied. Malformed values of the version and workers keys
//!   read as 0 (no snapshot / no workers).
//! - Wake messages are empty and carry nothing: a worker empties its queue (at most
//!   [`MAX_DRAIN`] per callback) and then reads the version key once.
//! - Each worker queues at most one telemetry batch per flush (once a second), holding at
//!   most one entry per policy stack plus one for local replies. The singleton dequeues
//!   at most [`MAX_DRAIN`] messages per callback and aggregates at most
//!   [`MAX_TELEMETRY_STACKS`] stacks; what does not fit is counted as dropped and
//!   reported.
//! - At most [`MAX_WORKERS`] wake queues are poked per snapshot.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::snapshot::Snapshot;

/// Shared-data key holding the applied snapshot version (8 bytes, little endian).
pub const VERSION_KEY: &str = "switchyard.snapshot.version";
/// Shared-data key holding the snapshot (protobuf `Snapshot`).
pub const SNAPSHOT_KEY: &str = "switchyard.snapshot";
/// Shared-data key counting worker VMs that registered a wake queue (4 bytes, little
/// endian): worker `i` owns queue `switchyard.wake.<i>`.
pub const WORKERS_KEY: &str = "switchyard.workers";
/// Prefix of the per-worker queues the singleton pokes after writing a snapshot, so
/// workers apply it at once without polling the version on every request.
pub const WAKE_QUEUE_PREFIX: &str = "switchyard.wake.";
/// Shared queue carrying worker telemetry to the singleton.
pub const TELEMETRY_QUEUE: &str = "switchyard.telemetry";

/// At most this many wake queues are poked (worker VMs of one Envoy, counting restarts).
pub const MAX_WORKERS: u32 = 4096;
/// Attempts at taking a worker number before giving up on a wake queue.
pub const MAX_CAS_ATTEMPTS: usize = 64;
/// Most queue messages dequeued per callback (the singleton runs on the main thread).
pub const MAX_DRAIN: usize = 1024;
/// Most stacks the singleton's telemetry aggregate holds.
pub const MAX_TELEMETRY_STACKS: usize = 64;
/// Tick period of worker VMs: the latest a snapshot whose wake-up was lost is applied.
pub const WORKER_TICK_MS: u64 = 200;

/// The value of [`VERSION_KEY`] for `version`.
pub fn encode_version(version: u64) -> [u8; 8] {
    version.to_le_bytes()
}

/// A [`VERSION_KEY`] value; 0 (no snapshot) for anything but 8 bytes.
pub fn decode_version(value: &[u8]) -> u64 {
    <[u8; 8]>::try_from(value).map_or(0, u64::from_le_bytes)
}

/// The value of [`WORKERS_KEY`] for `count` workers.
pub fn encode_workers(count: u32) -> [u8; 4] {
    count.to_le_bytes()
}

/// A [`WORKERS_KEY`] value; 0 for anything but 4 bytes.
pub fn decode_workers(value: &[u8]) -> u32 {
    <[u8; 4]>::try_from(value).map_or(0, u32::from_le_bytes)
}

/// Name of worker `n`'s wake queue.
pub fn wake_queue_name(n: u32) -> String {
    format!("{WAKE_QUEUE_PREFIX}{n}")
}

/// What identifies the policy document of a snapshot (rule 5 above). Hashing the
/// document costs one pass over it per snapshot change, far less than decoding it; no
/// copy of the text is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyId {
    /// The control service's `policy_version` (0: not sent).
    pub version: u64,
    /// SHA-256 of the document.
    pub digest: [u8; 32],
}

impl PolicyId {
    /// The identity of `snapshot`'s policy.
    pub fn of(snapshot: &Snapshot) -> Self {
        PolicyId {
            version: snapshot.policy_version,
            digest: Sha256::digest(snapshot.policy_json.as_bytes()).into(),
        }
    }
}

impl fmt::Display for PolicyId {
    /// `policy version 5, digest 0123456789ab`: the digest as the control service's
    /// history shows it (the first 12 hex digits).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version != 0 {
            write!(f, "policy version {}, ", self.version)?;
        }
        f.write_str("digest ")?;
        self.digest
            .iter()
            .take(6)
            .try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What a worker applied from shared data (rules 2 and 5 above).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    version: u64,
    policy: Option<PolicyId>,
}

impl Applied {
    /// Whether the version key's value announces a snapshot this worker has not seen
    /// (0: the singleton has written none).
    pub fn announces(&self, version_key: u64) -> bool {
        version_key != 0 && version_key != self.version
    }

    /// Count `version` as seen: announced by the key, or decoded from the snapshot.
    pub fn seen(&mut self, version: u64) {
        self.version = version;
    }

    /// Whether a snapshot with this policy needs the policy compiled.
    pub fn needs_compile(&self, id: PolicyId) -> bool {
        self.policy != Some(id)
    }

    /// The policy with this identity is now the compiled one.
    pub fn compiled(&mut self, id: PolicyId) {
        self.policy = Some(id);
    }

    /// The plugin configuration replaced the policy: apply the next snapshot in full.
    pub fn forget(&mut self) {
        *self = Applied::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64, policy_version: u64, policy: &str) -> Snapshot {
        Snapshot {
            version,
            policy_version,
            policy_json: policy.into(),
            ..Default::default()
        }
    }

    #[test]
    fn values_round_trip_and_malformed_ones_read_as_zero() {
        assert_eq!(decode_version(&encode_version(42)), 42);
        assert_eq!(decode_workers(&encode_workers(7)), 7);
        for bad in [&b""[..], b"\x01", b"\x01\x02\x03\x04\x05\x06\x07\x08\x09"] {
            assert_eq!(decode_version(bad), 0);
        }
        assert_eq!(decode_workers(b"\x01\x00\x00\x00\x00"), 0);
        assert_eq!(wake_queue_name(3), "switchyard.wake.3");
    }

    #[test]
    fn the_policy_version_and_the_document_identify_a_policy() {
        let a = PolicyId::of(&snapshot(5, 3, "{}"));
        // Another snapshot of the same policy version, whatever its stacks say.
        assert_eq!(a, PolicyId::of(&snapshot(6, 3, "{}")));
        // A new policy version is a new policy, even with the same text.
        assert_ne!(a, PolicyId::of(&snapshot(7, 7, "{}")));
        // A reused policy version (the control service's store was replaced) with another
        // document is another policy.
        assert_ne!(a, PolicyId::of(&snapshot(2, 3, "{\"a\":1}")));
        // SHA-256("{}"), as `policy_digest` in the control service's history shows it.
        assert_eq!(a.to_string(), "policy version 3, digest 44136fa355b3");
    }

    #[test]
    fn without_a_policy_version_the_document_decides() {
        let a = PolicyId::of(&snapshot(5, 0, "{\"a\":1}"));
        assert_eq!(a, PolicyId::of(&snapshot(6, 0, "{\"a\":1}")));
        assert_ne!(a, PolicyId::of(&snapshot(7, 0, "{\"a\":2}")));
        assert!(a.to_string().starts_with("digest "), "{a}");
        assert_eq!(a.to_string().len(), "digest ".len() + 12);
    }

    #[test]
    fn a_worker_reapplies_only_what_changed() {
        let mut applied = Applied::default();
        assert!(!applied.announces(0), "no snapshot written yet");
        assert!(applied.announces(1));
        applied.seen(1);
        assert!(!applied.announces(1));
        let p = PolicyId::of(&snapshot(1, 1, "{}"));
        assert!(applied.needs_compile(p));
        applied.compiled(p);
        // Version 2 changes only weights: same policy, nothing to compile.
        assert!(applied.announces(2));
        applied.seen(2);
        assert!(!applied.needs_compile(PolicyId::of(&snapshot(2, 1, "{}"))));
        assert!(applied.needs_compile(PolicyId::of(&snapshot(3, 3, "{}"))));
        // The plugin configuration was reloaded: everything is applied again.
        applied.forget();
        assert!(applied.announces(2));
        assert!(applied.needs_compile(p));
    }
}
