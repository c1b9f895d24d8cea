//! Bounded store growth: the leader's store upkeep.
//!
//! Every change appends a version record (and the policy document when it sets one), so
//! without a limit the store grows with every push. Retention keeps the newest
//! `keep_versions` versions and deletes older ones with the policy documents no kept
//! version runs. Policy versions never fall as versions rise (a policy change sets
//! `policy_version = version`, every other change copies the current one), so "below the
//! `policy_version` of the oldest kept version" is exactly the unreferenced documents.
//!
//! On etcd, every write also leaves a revision in etcd's history until someone compacts
//! it; the leader compacts to the revision it saw one interval earlier (so the last one
//! to two intervals of history stay for watchers that are catching up), as the
//! Kubernetes apiserver does every 5 minutes.
//!
//! Both run as the leader's background work, so on etcd their writes carry the
//! leadership fence (`replica.rs`). Pruning is in bounded batches, each its own write, so
//! a commit never waits behind a long deletion. What it must never do: delete the newest
//! version, a version the audit log has not recorded yet (the restart recovery audits
//! such versions from the history), or anything of the audit log (an immutable hash
//! chain whose verification reads only its own entries).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{blocking, Control, ControlError};
use crate::brain::audit::AuditLog;
use crate::store::{Store, StoreError};

/// Versions kept when the configuration says nothing.
pub const DEFAULT_KEEP_VERSIONS: u64 = 1000;
/// Fewest versions a limit may keep: rollback to a recent version and the history a
/// person reads during an incident must stay.
pub const MIN_KEEP_VERSIONS: u64 = 10;
/// Default interval of etcd compaction.
pub const DEFAULT_COMPACT_EVERY: Duration = Duration::from_secs(300);

/// `[retention]` resolved (docs/operations.md "Store growth").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Newest versions kept; 0 keeps every version.
    pub keep_versions: u64,
    /// How often the leader looks for versions to delete (default 10 s).
    pub prune_every: Duration,
    /// Most versions deleted by one write (default 256).
    pub batch: u64,
    /// How often the leader compacts etcd's revision history; `None`: never (the
    /// operator runs etcd with `--auto-compaction-*`). No effect on redb or memory.
    pub compact_every: Option<Duration>,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            keep_versions: DEFAULT_KEEP_VERSIONS,
            prune_every: Duration::from_secs(10),
            batch: 256,
            compact_every: Some(DEFAULT_COMPACT_EVERY),
        }
    }
}

/// One bounded pruning write: the versions it deleted (0 when nothing is due).
fn prune_step(
    store: &dyn Store,
    audit: &AuditLog,
    keep: u64,
    batch: u64,
) -> Result<u64, StoreError> {
    let (Some(latest), Some(oldest)) = (store.latest()?, store.oldest()?) else {
        return Ok(0);
    };
    let mut keep_from = latest.version.saturating_sub(keep.max(1) - 1).max(1);
    if keep_from <= oldest {
        return Ok(0); // the common case on a tick: nothing due, no audit read
    }
    // Never a version the audit log has not recorded yet.
    let audited = audit
        .last_version()
        .map_err(|e| StoreError::Backend(format!("reading the audit log: {e}")))?
        .unwrap_or(0);
    keep_from = keep_from.min(audited.saturating_add(1));
    if keep_from <= oldest {
        return Ok(0);
    }
    keep_from = keep_from.min(oldest.saturating_add(batch.max(1)));
    let record = store.get(keep_from)?.ok_or_else(|| StoreError::Corrupt {
        version: keep_from,
        message: format!("missing between the oldest version {oldest} and the newest"),
    })?;
    store.prune_when(keep_from, record.policy_version, &[])?;
    Ok(keep_from - oldest)
}

impl Control {
    /// Delete the versions older than the newest `keep` and the policy documents no kept
    /// version runs, in writes of at most `batch` versions, yielding between them so
    /// commits interleave. Returns how many versions were deleted.
    pub async fn prune_history(&self, keep: u64, batch: u64) -> Result<u64, ControlError> {
        let mut total = 0;
        loop {
            let (store, audit) = (self.store.clone(), self.audit.clone());
            let n = blocking(move || prune_step(&*store, &audit, keep, batch)).await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
            tokio::task::yield_now().await;
        }
    }

    /// Discard etcd's revision history before `revision`; returns the store's current
    /// revision (`None` for a store without a revision history).
    async fn compact_step(&self, revision: Option<u64>) -> Result<Option<u64>, ControlError> {
        let store = self.store.clone();
        blocking(move || {
            let now = store.revision()?;
            if let (Some(_), Some(to)) = (now, revision) {
                store.compact(to)?;
            }
            Ok(now)
        })
        .await
    }

    /// The leader's store upkeep until `stop`: pruning every `prune_every` (unless every
    /// version is kept) and, on etcd, compaction every `compact_every`.
    pub fn spawn_upkeep(
        self: &Arc<Self>,
        settings: RetentionSettings,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut prune =
                tokio::time::interval(settings.prune_every.max(Duration::from_millis(10)));
            prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut compact = settings.compact_every.map(|every| {
                let mut i = tokio::time::interval(every.max(Duration::from_millis(10)));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
            // The revision seen at the previous compaction tick: the next one compacts to it.
            let mut seen: Option<u64> = None;
            loop {
                let compact_tick = async {
                    match compact.as_mut() {
                        Some(i) => i.tick().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = prune.tick(), if settings.keep_versions > 0 => {
                        match me.prune_history(settings.keep_versions, settings.batch).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(deleted = n, keep = settings.keep_versions, "pruned old versions"),
                            Err(e) => tracing::warn!(error = %e, "pruning old versions failed; retried on the next tick"),
                        }
                    }
                    _ = compact_tick => {
                        match me.compact_step(seen).await {
                            Ok(now) => {
                                if let (Some(_), Some(to)) = (now, seen) {
                                    tracing::info!(revision = to, "compacted etcd's revision history");
                                }
                                seen = now;
                            }
                            Err(e) => tracing::warn!(error = %e, "compacting etcd failed; retried on the next tick"),
                        }
                    }
                }
            }
        })
    }
}
