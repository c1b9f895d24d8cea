//! The desired routing state and every change to it.
//!
//! Each change (policy apply or rollback, any stack operation) is validated, turned into
//! the next numbered version, committed durably to the [`Store`], and only then made
//! current and published to every Watch stream. Changes are serialised by one writer
//! lock, so versions are gapless and each one is complete. Nothing changes on error.
//!
//! What it publishes is a domain [`Snapshot`] (plain Rust, the data-plane message as the
//! filter decodes it); turning it into protobuf is the gRPC edge's job, never this
//! module's.
//!
//! Replicas on a shared store (etcd): the writer lock is per process, so the store's
//! append is the compare-and-set between replicas — a change built on a version another
//! replica has already replaced fails with [`ControlError::Conflict`] (gRPC `ABORTED`)
//! after `current` is refreshed. [`Control::follow`] loads and publishes the versions
//! other replicas commit. Published versions only ever rise.

mod retention;

use std::sync::{Arc, RwLock};

use switchyard_filter::snapshot::{Snapshot, StackState};
use tokio::sync::{watch, Mutex};

use crate::brain::audit::{AuditDraft, AuditKind, AuditLog};
use crate::fleet::Fleet;
use crate::model::{
    now_unix_ms, policy_digest, ChangeKind, RuleStack, StackRuntime, VersionRecord,
};
use crate::replica::Role;
use crate::store::{Condition, Store, StoreError};
use crate::validate::{self, Accepted, Issue};

pub use retention::{
    RetentionSettings, DEFAULT_COMPACT_EVERY, DEFAULT_KEEP_VERSIONS, MIN_KEEP_VERSIONS,
};

/// Errors of control operations; the gRPC layer maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid policy: {}", join_issues(.0))]
    InvalidPolicy(Vec<Issue>),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Another change came first (a stale expected version, or another replica committed
    /// the version this change was built on). Nothing was changed; read and retry.
    #[error("{0}")]
    Conflict(String),
    /// The store cannot be reached (etcd down or without quorum), or this replica just
    /// lost its leadership. Nothing was changed; reads keep serving the last state.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(StoreError),
    #[error("store task failed: {0}")]
    Task(String),
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            ControlError::Unavailable(format!("nothing was changed: {e}"))
        } else {
            ControlError::Store(e)
        }
    }
}

fn join_issues(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(Issue::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The state in force: the newest committed version and its policy document.
#[derive(Debug, Clone)]
pub struct Current {
    pub record: VersionRecord,
    pub policy_json: Arc<str>,
    /// The policy document compiled by the filter crate, once per version, for whoever
    /// needs the routing model (status's degraded rules, the console's explain).
    compiled: std::sync::OnceLock<Option<Arc<switchyard_filter::policy::Policy>>>,
}

/// Who asks for a change, and why (kept in the version record and the audit log).
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub actor: String,
    pub comment: String,
    /// How the audit log files it: a person's change (the default), or the brain's
    /// automatic action or approved execution.
    pub origin: AuditKind,
}

impl Change {
    /// A person's change.
    pub fn manual(actor: impl Into<String>, comment: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            comment: comment.into(),
            origin: AuditKind::ManualChange,
        }
    }
}

/// A stack operation.
#[derive(Debug, Clone)]
pub enum StackOp {
    SetWeight {
        percent: u32,
        reason: String,
    },
    /// No new visitors; cookie holders stay until their cookie expires or `deadline`
    /// (from now) passes. Draining again replaces the deadline; draining an evacuating
    /// stack turns the evacuation into a drain.
    Drain {
        reason: String,
        deadline: Option<std::time::Duration>,
    },
    /// Everyone off now, cookie holders included.
    Evacuate {
        reason: String,
    },
    /// End a drain or an evacuation.
    Undrain {
        reason: String,
    },
    MarkUnhealthy {
        reason: String,
    },
    MarkHealthy {
        reason: String,
    },
    Register {
        endpoint: String,
    },
    Deregister {
        reason: String,
    },
}

/// Result of a change request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The new version, or the current one when nothing changed.
    pub record: VersionRecord,
    pub changed: bool,
    pub warnings: Vec<Issue>,
}

impl Current {
    pub fn new(record: VersionRecord, policy_json: Arc<str>) -> Self {
        Self {
            record,
            policy_json,
            compiled: std::sync::OnceLock::new(),
        }
    }

    /// The policy in force, compiled (on first use). `None` only if it no longer compiles,
    /// which a version accepted by validation never does.
    pub fn compiled(&self) -> Option<Arc<switchyard_filter::policy::Policy>> {
        self.compiled
            .get_or_init(|| {
                switchyard_filter::policy::validate_json(&self.policy_json)
                    .ok()
                    .map(|v| Arc::new(v.policy))
            })
            .clone()
    }

    /// The snapshot every Envoy receives for this state: the policy document and, per
    /// stack, the weight factor and eligibility the operator and health state give it.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: self.record.version,
            policy_version: self.record.policy_version,
            policy_json: self.policy_json.to_string(),
            stacks: self
                .record
                .stacks
                .iter()
                .map(|s| StackState {
                    name: s.name.clone(),
                    weight_percent: s.effective_weight_percent(),
                    healthy: s.eligible(),
                    reason: s.reason().to_string(),
                    draining: s.draining,
                    drain_deadline_unix_ms: if s.draining {
                        s.drain_deadline_unix_ms
                    } else {
                        0
                    },
                    evacuating: s.evacuating,
                    rule: String::new(),
                })
                .collect(),
            rule_stacks: self
                .record
                .rule_stacks
                .iter()
                .map(|r| StackState {
                    name: r.stack.clone(),
                    weight_percent: r.weight_percent,
                    healthy: true,
                    evacuating: r.evacuating,
                    rule: r.rule.clone(),
                    ..Default::default()
                })
                .collect(),
        }
    }
}

/// Snapshots as Watch streams send them, one per version: `None` until a first policy
/// exists.
pub type Published = Option<Arc<Snapshot>>;

/// The control core, shared by the gRPC and HTTP front ends.
pub struct Control {
    store: Arc<dyn Store>,
    audit: AuditLog,
    /// Serialises changes: read current, commit next, publish.
    writer: Mutex<()>,
    current: RwLock<Option<Arc<Current>>>,
    snapshots: watch::Sender<Published>,
    fleet: Fleet,
    started_unix_ms: u64,
    role: Arc<Role>,
}

async fn blocking<T, F>(f: F) -> Result<T, ControlError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Task(e.to_string()))?
        .map_err(ControlError::from)
}

impl Control {
    /// Open on a store, restoring the newest version it holds; alone on it (the leader).
    pub async fn open(store: Arc<dyn Store>) -> Result<Arc<Self>, ControlError> {
        Self::open_as(store, Role::standalone(crate::replica::default_id())).await
    }

    /// Open as the replica `role` (one of several on a shared store).
    pub async fn open_as(
        store: Arc<dyn Store>,
        role: Arc<Role>,
    ) -> Result<Arc<Self>, ControlError> {
        let s = store.clone();
        let current = blocking(move || load_latest(&*s)).await?;
        if let Some(c) = &current {
            // A newer filter may be stricter than the one that accepted this policy. Keep
            // serving it (it is what every Envoy runs) but say so.
            if let Err(errors) = validate::check(&c.policy_json) {
                tracing::warn!(
                    version = c.record.version,
                    errors = %join_issues(&errors),
                    "restored policy no longer passes validation; serving it until replaced"
                );
            }
            tracing::info!(
                version = c.record.version,
                policy_version = c.record.policy_version,
                "restored state"
            );
        }
        let current = current.map(Arc::new);
        let (snapshots, _) = watch::channel(current.as_deref().map(|c| Arc::new(c.snapshot())));
        let audit = AuditLog::new(store.clone());
        let a = audit.clone();
        let s = store.clone();
        let recovered = tokio::task::spawn_blocking(move || audit_missing_versions(&a, &*s))
            .await
            .map_err(|e| ControlError::Task(e.to_string()))??;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "audited versions that were committed without their audit entry (restart)"
            );
        }
        Ok(Arc::new(Self {
            store,
            audit,
            writer: Mutex::new(()),
            current: RwLock::new(current),
            snapshots,
            fleet: Fleet::new(),
            started_unix_ms: now_unix_ms(),
            role,
        }))
    }

    /// This replica's identity and leadership.
    pub fn role(&self) -> &Arc<Role> {
        &self.role
    }

    /// Publish the versions other replicas commit to the shared store, until `shutdown`.
    /// `None` when the store has no other writers (redb, memory).
    pub fn follow(
        self: &Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut versions = self.store.subscribe_versions(self.current_version())?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = versions.changed() => if changed.is_err() { return },
                }
                let newest = *versions.borrow_and_update();
                if newest <= me.current_version() {
                    continue;
                }
                let _w = me.writer.lock().await;
                if let Err(e) = me.refresh().await {
                    // The follower re-subscribes by itself; the next version retries.
                    tracing::warn!(version = newest, error = %e, "cannot load a version committed by another replica");
                }
            }
        }))
    }

    /// Load the store's newest version and publish it if it is newer than ours (a version
    /// another replica committed). Caller holds the writer lock.
    async fn refresh(&self) -> Result<u64, ControlError> {
        let s = self.store.clone();
        if let Some(latest) = blocking(move || load_latest(&*s)).await? {
            if latest.record.version > self.current_version() {
                tracing::info!(
                    version = latest.record.version,
                    actor = %latest.record.actor,
                    summary = %latest.record.summary,
                    "following a version committed by another replica"
                );
                self.make_current(Arc::new(latest));
            }
        }
        Ok(self.current_version())
    }

    /// Make `current` the state in force and publish it, unless a newer one already is.
    fn make_current(&self, current: Arc<Current>) {
        let v = current.record.version;
        {
            let mut slot = self.current.write().unwrap_or_else(|p| p.into_inner());
            if slot.as_ref().is_some_and(|c| c.record.version >= v) {
                return;
            }
            *slot = Some(current.clone());
        }
        self.snapshots.send_if_modified(|published| {
            if published.as_ref().is_some_and(|s| s.version >= v) {
                return false;
            }
            *published = Some(Arc::new(current.snapshot()));
            true
        });
    }

    /// The hash-chained audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The store (the brain keeps its state beside the versions).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    pub fn store_description(&self) -> String {
        self.store.describe()
    }

    pub fn started_unix_ms(&self) -> u64 {
        self.started_unix_ms
    }

    /// The state in force, if a policy was ever applied.
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn current_version(&self) -> u64 {
        self.current().map(|c| c.record.version).unwrap_or(0)
    }

    /// Follow published snapshots (the latest only; intermediate ones may be skipped).
    pub fn subscribe(&self) -> watch::Receiver<Published> {
        self.snapshots.subscribe()
    }

    /// The fleet's status, as every edge reports it.
    pub fn fleet_status(&self) -> crate::fleet::FleetStatus {
        let mut status = crate::fleet::FleetStatus::new(
            self.current_version(),
            self.started_unix_ms(),
            self.store_description(),
            self.fleet().nodes(),
        );
        status.replica_id = self.role.id().to_string();
        status.leader = self.role.is_leader();
        if let Some(current) = self.current() {
            if let Some(policy) = current.compiled() {
                status.degraded = crate::degraded::degraded_routes(&policy, &current.record);
            }
        }
        status
    }

    /// Number of live subscribers (open Watch streams).
    pub fn subscribers(&self) -> usize {
        self.snapshots.receiver_count()
    }

    /// Validate a policy with the filter's validator. Changes nothing.
    pub fn validate(&self, policy_json: &str) -> Result<Accepted, ControlError> {
        validate::check(policy_json).map_err(ControlError::InvalidPolicy)
    }

    /// Apply `policy_json` as the next version, if it is valid (and, when
    /// `expected_version` is non-zero, only while that is the current version).
    pub async fn apply_policy(
        &self,
        policy_json: &str,
        change: Change,
        expected_version: u64,
    ) -> Result<Outcome, ControlError> {
        self.apply_as(
            ChangeKind::PolicyApply,
            policy_json,
            change,
            expected_version,
        )
        .await
    }

    async fn apply_as(
        &self,
        kind: ChangeKind,
        policy_json: &str,
        change: Change,
        expected_version: u64,
    ) -> Result<Outcome, ControlError> {
        let accepted = self.validate(policy_json)?;
        let _w = self.writer.lock().await;
        let current = self.current();
        check_expected(current.as_deref(), expected_version)?;
        if let Some(c) = &current {
            if &*c.policy_json == policy_json {
                return Ok(Outcome {
                    record: c.record.clone(),
                    changed: false,
                    warnings: accepted.warnings,
                });
            }
        }
        let summary = policy_summary(&accepted, policy_json, current.as_deref(), "applied");
        self.commit_policy(
            current.as_deref(),
            &accepted,
            policy_json,
            kind,
            summary,
            change,
        )
        .await
    }

    /// Re-apply the policy document of `to_version` as the next version. Stack state
    /// stays as it is now.
    pub async fn rollback(
        &self,
        to_version: u64,
        change: Change,
        expected_version: u64,
    ) -> Result<Outcome, ControlError> {
        if to_version == 0 {
            return Err(ControlError::InvalidArgument(
                "the version to roll back to must be 1 or more".into(),
            ));
        }
        let _w = self.writer.lock().await;
        let current = self.current();
        check_expected(current.as_deref(), expected_version)?;
        let (_, policy_json) = self.policy_at(to_version).await?;
        let accepted = validate::check(&policy_json).map_err(|mut errors| {
            errors.insert(
                0,
                Issue {
                    path: "$".into(),
                    message: format!(
                        "the policy of version {to_version} no longer passes validation"
                    ),
                },
            );
            ControlError::InvalidPolicy(errors)
        })?;
        if let Some(c) = &current {
            if *c.policy_json == *policy_json {
                return Ok(Outcome {
                    record: c.record.clone(),
                    changed: false,
                    warnings: accepted.warnings,
                });
            }
        }
        let what = format!("rolled back to the policy of v{to_version}");
        let summary = policy_summary(&accepted, &policy_json, current.as_deref(), &what);
        self.commit_policy(
            current.as_deref(),
            &accepted,
            &policy_json,
            ChangeKind::PolicyRollback,
            summary,
            change,
        )
        .await
    }

    async fn commit_policy(
        &self,
        current: Option<&Current>,
        accepted: &Accepted,
        policy_json: &str,
        kind: ChangeKind,
        summary: String,
        change: Change,
    ) -> Result<Outcome, ControlError> {
        let origin = change.origin;
        let version = current.map(|c| c.record.version).unwrap_or(0) + 1;
        let now = now_unix_ms();
        let stacks = accepted
            .stacks
            .iter()
            .map(|info| {
                match current.and_then(|c| c.record.stack(&info.name)) {
                    // Operator and health state is live state: it survives policy edits.
                    Some(existing) => StackRuntime {
                        region: info.region.clone(),
                        ..existing.clone()
                    },
                    None => {
                        StackRuntime::new(&info.name, &info.region, version, now, &change.actor)
                    }
                }
            })
            .collect();
        let record = VersionRecord {
            version,
            created_unix_ms: now,
            kind,
            summary,
            actor: change.actor,
            comment: change.comment,
            policy_version: version,
            policy_name: accepted.name.clone(),
            policy_digest: policy_digest(policy_json),
            // A rule's shares stay while both the rule's stacks do (a rule the document
            // no longer has is ignored by the filter).
            rule_stacks: current
                .map(|c| c.record.rule_stacks.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|r| accepted.stacks.iter().any(|i| i.name == r.stack))
                .collect(),
            stacks,
        };
        self.commit(record.clone(), Arc::from(policy_json), true, origin)
            .await?;
        Ok(Outcome {
            record,
            changed: true,
            warnings: accepted.warnings.clone(),
        })
    }

    /// Apply an operator or health change to one stack of the current policy.
    pub async fn stack_op(
        &self,
        stack: &str,
        op: StackOp,
        change: Change,
    ) -> Result<Outcome, ControlError> {
        self.stack_ops(vec![(stack.to_string(), op)], change).await
    }

    /// Apply changes to several stacks as ONE version (e.g. a rollout step moving share
    /// from the stable stack to the release: both factors change together, so no Envoy
    /// ever routes on half of the move). All or nothing: any error changes nothing.
    pub async fn stack_ops(
        &self,
        ops: Vec<(String, StackOp)>,
        change: Change,
    ) -> Result<Outcome, ControlError> {
        self.stack_ops_when(ops, change, Vec::new()).await
    }

    /// [`Control::stack_ops`], committed only if every condition on the brain's key space
    /// holds at the commit (e.g. an incident still claimed by this executor): a failed
    /// one is [`ControlError::Conflict`] and changes nothing.
    pub async fn stack_ops_when(
        &self,
        ops: Vec<(String, StackOp)>,
        change: Change,
        conditions: Vec<Condition>,
    ) -> Result<Outcome, ControlError> {
        let _w = self.writer.lock().await;
        let current = self.current().ok_or_else(|| {
            ControlError::FailedPrecondition("no policy has been applied yet".into())
        })?;
        let version = current.record.version + 1;
        let now = now_unix_ms();
        let mut record = current.record.clone();
        let mut kind = None;
        let mut summaries = Vec::new();
        for (stack, op) in &ops {
            let Some(i) = record.stacks.iter().position(|s| s.name == *stack) else {
                return Err(ControlError::NotFound(format!(
                    "stack {stack:?} is not in the current policy (stacks: {})",
                    record
                        .stacks
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let mut after = record.stacks[i].clone();
            let (k, summary) = apply_stack_op(&mut after, op, now)?;
            if after == record.stacks[i] {
                continue;
            }
            after.changed_version = version;
            after.changed_unix_ms = now;
            after.changed_by = change.actor.clone();
            record.stacks[i] = after;
            kind.get_or_insert(k);
            summaries.push(summary);
        }
        let Some(kind) = kind else {
            return Ok(Outcome {
                record: current.record.clone(),
                changed: false,
                warnings: vec![],
            });
        };
        record.version = version;
        record.created_unix_ms = now;
        record.kind = kind;
        record.summary = summaries.join("; ");
        record.actor = change.actor;
        record.comment = change.comment;
        self.commit_when(
            record.clone(),
            current.policy_json.clone(),
            false,
            change.origin,
            conditions,
        )
        .await?;
        Ok(Outcome {
            record,
            changed: true,
            warnings: vec![],
        })
    }

    /// Set the stacks' shares within rule `rule` as ONE version, replacing the rule's
    /// previous ones (empty: the rule routes as the stacks' own state says again). The
    /// stacks must be in the current policy; the rule is the caller's to check.
    pub async fn set_rule_stacks(
        &self,
        rule: &str,
        entries: Vec<RuleStack>,
        change: Change,
    ) -> Result<Outcome, ControlError> {
        let _w = self.writer.lock().await;
        let current = self.current().ok_or_else(|| {
            ControlError::FailedPrecondition("no policy has been applied yet".into())
        })?;
        for e in &entries {
            if e.rule != rule || e.weight_percent > 100 {
                return Err(ControlError::InvalidArgument(format!(
                    "rule share {}/{}: {}% (rule {rule}, 0..=100)",
                    e.rule, e.stack, e.weight_percent
                )));
            }
            if current.record.stack(&e.stack).is_none() {
                return Err(ControlError::NotFound(format!(
                    "stack {:?} is not in the current policy",
                    e.stack
                )));
            }
        }
        let mut record = current.record.clone();
        record.rule_stacks.retain(|r| r.rule != rule);
        record.rule_stacks.extend(entries.iter().cloned());
        if record.rule_stacks == current.record.rule_stacks {
            return Ok(Outcome {
                record: current.record.clone(),
                changed: false,
                warnings: vec![],
            });
        }
        let shares: Vec<String> = entries
            .iter()
            .map(|e| {
                let how = if e.evacuating { " (evacuated)" } else { "" };
                format!("{} {}%{how}", e.stack, e.weight_percent)
            })
            .collect();
        record.version = current.record.version + 1;
        record.created_unix_ms = now_unix_ms();
        record.kind = ChangeKind::RuleShare;
        record.summary = if shares.is_empty() {
            format!("rule {rule}: shares cleared")
        } else {
            format!("rule {rule}: {}", shares.join(", "))
        };
        record.actor = change.actor;
        record.comment = change.comment;
        self.commit(
            record.clone(),
            current.policy_json.clone(),
            false,
            change.origin,
        )
        .await?;
        Ok(Outcome {
            record,
            changed: true,
            warnings: vec![],
        })
    }

    /// Commit durably, then make current and publish. Caller holds the writer lock.
    async fn commit(
        &self,
        record: VersionRecord,
        policy_json: Arc<str>,
        sets_policy: bool,
        origin: AuditKind,
    ) -> Result<(), ControlError> {
        self.commit_when(record, policy_json, sets_policy, origin, Vec::new())
            .await
    }

    /// [`Control::commit`] only if `conditions` hold (checked in the same transaction).
    async fn commit_when(
        &self,
        record: VersionRecord,
        policy_json: Arc<str>,
        sets_policy: bool,
        origin: AuditKind,
        conditions: Vec<Condition>,
    ) -> Result<(), ControlError> {
        let store = self.store.clone();
        let rec = record.clone();
        let doc = policy_json.clone();
        let appended = tokio::task::spawn_blocking(move || {
            store.append_when(&rec, sets_policy.then_some(&*doc), &conditions)
        })
        .await
        .map_err(|e| ControlError::Task(e.to_string()))?;
        match appended {
            Ok(()) => {}
            Err(StoreError::Conflict { key, .. }) => {
                return Err(ControlError::Conflict(format!(
                    "{key} changed meanwhile; nothing was changed"
                )));
            }
            Err(StoreError::OutOfOrder { latest, .. }) => {
                // Another replica committed first: take its version, refuse this change.
                let now = self.refresh().await.unwrap_or(latest);
                return Err(ControlError::Conflict(format!(
                    "another change was committed first: the current version is {}; \
                     nothing was changed, read it and try again",
                    now.max(latest)
                )));
            }
            Err(StoreError::Fenced { .. }) => {
                return Err(ControlError::Unavailable(
                    "this replica has just lost the leadership; nothing was changed, try again"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        // The version is durable; now its audit entry. Should this fail (or the process
        // die here), `open` audits the version from the history on the next start.
        let draft = audit_draft(self.current().as_deref(), &record, origin);
        let audit = self.audit.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || audit.append(draft))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::error!(version = record.version, error = %e, "audit append failed; it is recovered on restart");
        }
        let current = Arc::new(Current::new(record, policy_json));
        tracing::info!(
            version = current.record.version,
            kind = current.record.kind.as_str(),
            actor = %current.record.actor,
            summary = %current.record.summary,
            "committed"
        );
        self.make_current(current);
        Ok(())
    }

    /// The record of `version` and the policy document in force at it.
    pub async fn policy_at(&self, version: u64) -> Result<(VersionRecord, String), ControlError> {
        if version == 0 {
            let c = self
                .current()
                .ok_or_else(|| ControlError::NotFound("no policy has been applied yet".into()))?;
            return Ok((c.record.clone(), c.policy_json.to_string()));
        }
        let store = self.store.clone();
        let found = blocking(move || {
            let policy = match store.get(version)? {
                Some(record) => store
                    .policy(record.policy_version)?
                    .map(|policy| (record, policy)),
                None => None,
            };
            match policy {
                Some(found) => Ok(Ok(found)),
                // Not there (or pruned between the two reads): say which.
                None => Ok(Err(missing_version(&*store, version)?)),
            }
        })
        .await?;
        found
    }

    /// Versions below `before` (0 = all), newest first.
    pub async fn history(
        &self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<VersionRecord>, ControlError> {
        let store = self.store.clone();
        let before = (before != 0).then_some(before);
        blocking(move || store.history(before, limit)).await
    }

    /// The bootstrap policy: applied only to an empty store.
    pub async fn bootstrap(&self, policy_json: &str) -> Result<Option<Outcome>, ControlError> {
        if self.current().is_some() {
            return Ok(None);
        }
        let change = Change {
            actor: "bootstrap".into(),
            comment: "--bootstrap-policy".into(),
            origin: AuditKind::AutomaticAction,
        };
        match self
            .apply_as(ChangeKind::Bootstrap, policy_json, change, 0)
            .await
        {
            Ok(o) => Ok(Some(o)),
            // Replicas starting together: another one bootstrapped the store first.
            Err(ControlError::Conflict(_)) if self.current().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn check_expected(current: Option<&Current>, expected: u64) -> Result<(), ControlError> {
    let now = current.map(|c| c.record.version).unwrap_or(0);
    if expected != 0 && expected != now {
        return Err(ControlError::Conflict(format!(
            "expected version {expected}, but the current version is {now}; nothing was changed"
        )));
    }
    Ok(())
}

/// Why `version` cannot be read: pruned by retention, never committed, or (a kept
/// version without its policy document) a corrupt store.
fn missing_version(s: &dyn Store, version: u64) -> Result<ControlError, StoreError> {
    let latest = s.latest()?.map(|r| r.version).unwrap_or(0);
    let oldest = s.oldest()?.unwrap_or(0);
    Ok(if version > latest {
        ControlError::NotFound(format!(
            "version {version} does not exist (the newest is {latest})"
        ))
    } else if version < oldest {
        ControlError::NotFound(format!(
            "version {version} is no longer kept: the store keeps the newest versions \
             ([retention] keep_versions), the oldest kept is {oldest}"
        ))
    } else {
        ControlError::Store(StoreError::Corrupt {
            version,
            message: "the version or the policy document it runs is missing".into(),
        })
    })
}

/// The store's newest version and the policy in force at it.
fn load_latest(s: &dyn Store) -> Result<Option<Current>, StoreError> {
    let Some(record) = s.latest()? else {
        return Ok(None);
    };
    let policy = s
        .policy(record.policy_version)?
        .ok_or_else(|| StoreError::Corrupt {
            version: record.version,
            message: format!("policy of version {} is missing", record.policy_version),
        })?;
    Ok(Some(Current::new(record, policy.into())))
}

fn policy_summary(
    accepted: &Accepted,
    policy_json: &str,
    current: Option<&Current>,
    what: &str,
) -> String {
    let name = accepted.name.as_deref().unwrap_or("(unnamed)");
    let mut s = format!("policy {name} [{}] {what}", policy_digest(policy_json));
    if let Some(c) = current {
        let added: Vec<&str> = accepted
            .stacks
            .iter()
            .filter(|i| c.record.stack(&i.name).is_none())
            .map(|i| i.name.as_str())
            .collect();
        let removed: Vec<&str> = c
            .record
            .stacks
            .iter()
            .filter(|s| !accepted.stacks.iter().any(|i| i.name == s.name))
            .map(|s| s.name.as_str())
            .collect();
        if !added.is_empty() {
            s.push_str(&format!("; stacks added: {}", added.join(", ")));
        }
        if !removed.is_empty() {
            s.push_str(&format!("; stacks removed: {}", removed.join(", ")));
        }
    }
    s
}

fn or_default(reason: &str, default: &str) -> String {
    if reason.trim().is_empty() {
        default.to_string()
    } else {
        reason.trim().to_string()
    }
}

/// Change `s` as `op` says; returns the kind and summary of the change. Leaves `s` equal
/// to its old value when the operation changes nothing.
/// What `op` would make of `s` (for previews, e.g. the guardrails' shift estimate).
pub fn preview_stack_op(s: &StackRuntime, op: &StackOp) -> Result<StackRuntime, ControlError> {
    let mut after = s.clone();
    apply_stack_op(&mut after, op, now_unix_ms())?;
    Ok(after)
}

fn apply_stack_op(
    s: &mut StackRuntime,
    op: &StackOp,
    now_ms: u64,
) -> Result<(ChangeKind, String), ControlError> {
    let name = s.name.clone();
    Ok(match op {
        StackOp::SetWeight { percent, reason } => {
            if *percent > 100 {
                return Err(ControlError::InvalidArgument(format!(
                    "a weight is a whole percent 0..=100, got {percent}"
                )));
            }
            let old = s.weight_percent;
            if old != *percent {
                s.weight_percent = *percent;
                s.weight_reason = if *percent < 100 {
                    or_default(reason, "weight set by operator")
                } else {
                    String::new()
                };
            }
            (
                ChangeKind::StackWeight,
                with_reason(format!("{name} weight {old}% -> {percent}%"), reason),
            )
        }
        StackOp::Drain { reason, deadline } => {
            let deadline_ms = match deadline {
                None => 0,
                Some(d) if d.is_zero() => 0,
                Some(d) => u64::try_from(d.as_millis())
                    .ok()
                    .and_then(|d| now_ms.checked_add(d))
                    .ok_or_else(|| {
                        ControlError::InvalidArgument(format!(
                            "a drain deadline of {}s is too far in the future",
                            d.as_secs()
                        ))
                    })?,
            };
            if !s.draining || s.evacuating || s.drain_deadline_unix_ms != deadline_ms {
                s.draining = true;
                s.evacuating = false;
                s.drain_deadline_unix_ms = deadline_ms;
                s.drain_reason = or_default(reason, "drained by operator");
            }
            let what = match deadline {
                Some(d) if deadline_ms != 0 => {
                    format!(
                        "{name} draining, sticky sessions for at most {}s",
                        d.as_secs()
                    )
                }
                _ => format!("{name} draining, sticky sessions until their cookies expire"),
            };
            (ChangeKind::StackDrain, with_reason(what, reason))
        }
        StackOp::Evacuate { reason } => {
            if !s.evacuating {
                s.evacuating = true;
                s.draining = false;
                s.drain_deadline_unix_ms = 0;
                s.drain_reason = or_default(reason, "evacuated by operator");
            }
            (
                ChangeKind::StackEvacuate,
                with_reason(format!("{name} evacuating"), reason),
            )
        }
        StackOp::Undrain { reason } => {
            if s.draining || s.evacuating {
                s.draining = false;
                s.evacuating = false;
                s.drain_deadline_unix_ms = 0;
                s.drain_reason.clear();
            }
            (
                ChangeKind::StackUndrain,
                with_reason(format!("{name} no longer draining or evacuating"), reason),
            )
        }
        StackOp::MarkUnhealthy { reason } => {
            if reason.trim().is_empty() {
                return Err(ControlError::InvalidArgument(
                    "reason is required to mark a stack unhealthy".into(),
                ));
            }
            s.healthy = false;
            s.health_reason = reason.trim().to_string();
            (
                ChangeKind::StackUnhealthy,
                with_reason(format!("{name} unhealthy"), reason),
            )
        }
        StackOp::MarkHealthy { reason } => {
            if !s.healthy {
                s.healthy = true;
                s.health_reason.clear();
            }
            (
                ChangeKind::StackHealthy,
                with_reason(format!("{name} healthy"), reason),
            )
        }
        StackOp::Register { endpoint } => {
            s.registered = true;
            s.deregister_reason.clear();
            if !endpoint.is_empty() {
                s.endpoint = endpoint.clone();
            }
            let what = if endpoint.is_empty() {
                format!("{name} registered")
            } else {
                format!("{name} registered at {endpoint}")
            };
            (ChangeKind::StackRegister, what)
        }
        StackOp::Deregister { reason } => {
            if s.registered {
                s.registered = false;
                s.deregister_reason = or_default(reason, "deregistered");
            }
            (
                ChangeKind::StackDeregister,
                with_reason(format!("{name} deregistered"), reason),
            )
        }
    })
}

fn with_reason(summary: String, reason: &str) -> String {
    if reason.trim().is_empty() {
        summary
    } else {
        format!("{summary}: {}", reason.trim())
    }
}

/// The audit entry of a committed version: the stack or policy it changed, before → after.
fn audit_draft(prev: Option<&Current>, record: &VersionRecord, origin: AuditKind) -> AuditDraft {
    let policy_view = |r: &VersionRecord| {
        serde_json::json!({
            "version": r.version,
            "policy_version": r.policy_version,
            "policy_name": r.policy_name,
            "policy_digest": r.policy_digest,
        })
    };
    let (subject, before, after) = if record.policy_version == record.version {
        (
            "policy".to_string(),
            prev.map(|c| policy_view(&c.record))
                .unwrap_or(serde_json::Value::Null),
            policy_view(record),
        )
    } else if record.kind == ChangeKind::RuleShare {
        let view = |r: &VersionRecord| serde_json::to_value(&r.rule_stacks).unwrap_or_default();
        (
            "rule_stacks".to_string(),
            prev.map(|c| view(&c.record)).unwrap_or_default(),
            view(record),
        )
    } else {
        // A stack operation changes one stack, or several in one version.
        let old = |name: &str| {
            prev.and_then(|c| c.record.stack(name))
                .map(|old| serde_json::to_value(old).unwrap_or_default())
                .unwrap_or_default()
        };
        let changed: Vec<&StackRuntime> = record
            .stacks
            .iter()
            .filter(|s| {
                prev.and_then(|c| c.record.stack(&s.name))
                    .is_none_or(|old| old != *s)
            })
            .collect();
        match changed.as_slice() {
            [s] => (
                format!("stack/{}", s.name),
                old(&s.name),
                serde_json::to_value(s).unwrap_or_default(),
            ),
            many => (
                format!(
                    "stacks/{}",
                    many.iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                serde_json::Value::Object(
                    many.iter()
                        .map(|s| (s.name.clone(), old(&s.name)))
                        .collect(),
                ),
                serde_json::Value::Object(
                    many.iter()
                        .map(|s| (s.name.clone(), serde_json::to_value(s).unwrap_or_default()))
                        .collect(),
                ),
            ),
        }
    };
    AuditDraft::new(
        record.created_unix_ms,
        record.actor.clone(),
        origin,
        subject,
        format!(
            "v{} {}: {}",
            record.version,
            record.kind.as_str(),
            record.summary
        ),
    )
    .reason(record.comment.clone())
    .change(before, after)
    .version(record.version)
}

/// Audit every committed version newer than the newest one the audit log names (a crash
/// between a version's commit and its audit entry, or a store from before the audit
/// log). Returns how many entries it added.
fn audit_missing_versions(audit: &AuditLog, store: &dyn Store) -> Result<usize, ControlError> {
    let audit_err = |e: crate::brain::audit::AuditError| {
        ControlError::Store(match e {
            crate::brain::audit::AuditError::Store(s) => s,
            other => StoreError::Backend(other.to_string()),
        })
    };
    let Some(latest) = store.latest()? else {
        return Ok(0);
    };
    let audited = audit.last_version().map_err(audit_err)?.unwrap_or(0);
    if audited >= latest.version {
        return Ok(0);
    }
    let mut added = 0;
    let mut prev: Option<Current> = match audited {
        0 => None,
        v => store
            .get(v)?
            .map(|record| Current::new(record, Arc::from(""))),
    };
    for v in audited + 1..=latest.version {
        let Some(record) = store.get(v)? else {
            continue;
        };
        let origin = if record.actor == "bootstrap" {
            AuditKind::AutomaticAction
        } else {
            AuditKind::ManualChange
        };
        let mut draft = audit_draft(prev.as_ref(), &record, origin);
        draft.evidence = "recovered from the version history".into();
        audit.append(draft).map_err(audit_err)?;
        added += 1;
        prev = Some(Current::new(record, Arc::from("")));
    }
    Ok(added)
}

#[cfg(test)]
mod tests;
