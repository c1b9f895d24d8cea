//! Guardrails (paper §12.2): the limits every traffic change must pass, manual or
//! automatic, before it executes.
//!
//! - **Approval**: a shift above `approval_above_percent` of a scope's traffic, or a
//!   change touching a stack labelled primary, needs a named human approver.
//! - **Automatic rollback** only where pre-approved (a rollout's `auto_rollback`).
//! - **Rate**: at most `max_shift_percent` of a scope's traffic moved per sliding
//!   `window_ms` (the sum of absolute share moves). A human-approved change may exceed it
//!   (approval is the gate for big shifts) and a rollback to the baseline is never held
//!   back by it (an immediate rollback must stay immediate); both still count.
//! - **One change at a time**: a permit holds the lease `guard/executing`, written with a
//!   condition, until the executor records the change; a plan step, an incident action
//!   and a manual change (stack operation, policy apply or rollback) therefore serialise.
//!   A lease expires after `lease_ms`, so a crashed executor cannot block changes forever.
//! - **Freeze**: after an incident action, the stacks it touched are frozen for a while
//!   (`incident/freeze/<stack>`, written by the incident workflow, which also keeps its
//!   own actions off them). Rollout steps, promotions and manual changes touching a
//!   frozen stack are refused until the freeze ends; a rollback to the baseline is not
//!   (and the executor never asks for taking traffic off a stack in an emergency).
//!
//! Every refusal names the guardrail and, where waiting helps, when the change would be
//! allowed. This module never executes a change; it only grants, refuses and records.
//! State lives under `guard/` in the store.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::clock::UnixMs;
use crate::store::{key_u64, Batch, Store, StoreError};

/// The lease key: present while a change executes.
pub const LEASE_KEY: &str = "guard/executing";
const MOVES_PREFIX: &str = "guard/moves/";

/// Limits, defaults from the paper's §12.2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Most traffic (percent of a scope) moved per window without approval.
    pub max_shift_percent: u32,
    /// The sliding window of the rate limit.
    pub window_ms: u64,
    /// A single change moving more than this needs a human approver.
    pub approval_above_percent: u32,
    /// Stacks labelled primary: any change touching one needs a human approver.
    pub primary_stacks: BTreeSet<String>,
    /// How long a permit holds the lease unless recorded earlier.
    pub lease_ms: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            max_shift_percent: 20,
            window_ms: 15 * 60_000,
            approval_above_percent: 20,
            primary_stacks: BTreeSet::new(),
            lease_ms: 60_000,
        }
    }
}

/// What kind of change asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A rollout plan step (or one increment of its warm-up ramp).
    PlanStep,
    /// A rollout promoted to 100 % by a human.
    Promote,
    /// Back to the baseline: a rollout's rollback or abort.
    Rollback,
    /// An action of the incident workflow.
    Incident,
    /// A change an operator typed.
    Manual,
}

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Origin {
    /// The brain, on its own (`actor` names the component, e.g. `rollout:r1`).
    Automatic { actor: String },
    /// An operator.
    Human { actor: String },
}

impl Origin {
    pub fn actor(&self) -> &str {
        match self {
            Origin::Automatic { actor } | Origin::Human { actor } => actor,
        }
    }
}

/// A change asking to execute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposedChange {
    /// `"policy"` or a rule id.
    pub scope: String,
    pub kind: ChangeKind,
    pub origin: Origin,
    /// The stacks whose share changes.
    pub stacks: Vec<String>,
    /// Percent of the scope's traffic that moves (absolute share difference).
    pub shift_percent: u32,
    /// The human who approved this change, if any.
    #[serde(default)]
    pub approved_by: Option<String>,
    /// For an automatic rollback: whether a human pre-approved it.
    #[serde(default)]
    pub pre_approved: bool,
    /// One line for refusals and the lease (e.g. `green 5% -> 20%`).
    pub summary: String,
}

/// Which guardrail refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guardrail {
    Approval,
    AutoRollback,
    RateLimit,
    OneChangeAtATime,
    Freeze,
}

impl Guardrail {
    pub fn as_str(self) -> &'static str {
        match self {
            Guardrail::Approval => "approval",
            Guardrail::AutoRollback => "auto_rollback",
            Guardrail::RateLimit => "rate_limit",
            Guardrail::OneChangeAtATime => "one_change_at_a_time",
            Guardrail::Freeze => "freeze",
        }
    }
}

/// A change refused, why, and when it would be allowed (`None`: waiting does not help,
/// e.g. it needs an approver).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("refused by {}: {reason}{}", guardrail.as_str(), allowed_note(*allowed_at))]
pub struct Refusal {
    pub guardrail: Guardrail,
    pub reason: String,
    pub allowed_at: Option<UnixMs>,
}

/// `; allowed from <time>` when waiting helps.
fn allowed_note(at: Option<UnixMs>) -> String {
    at.map(|t| format!("; allowed from {}", super::clock::utc(t)))
        .unwrap_or_default()
}

/// Errors of [`Guardrails`].
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt guard state at {key}: {message}")]
    Corrupt { key: String, message: String },
}

/// Permission to execute one change; holds the lease until recorded or expired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Permit {
    /// Unique per permit; the lease carries it.
    pub token: String,
    pub change: ProposedChange,
    pub granted_ms: UnixMs,
    pub expires_ms: UnixMs,
    /// Limits waived and why (e.g. the rate limit, for an approved change).
    pub notes: Vec<String>,
}

/// The lease record at [`LEASE_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub token: String,
    pub holder: String,
    pub summary: String,
    pub granted_ms: UnixMs,
    pub expires_ms: UnixMs,
    /// Held for a person's change: another person's change takes it over instead of
    /// being refused (people's changes queue in the executor; a lease left by a
    /// crashed executor mid-change must not lock operators out until it expires).
    #[serde(default)]
    pub manual: bool,
}

/// A change the executor applied (or gave up on) under a permit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutedChange {
    pub permit: Permit,
    /// False when the executor could not apply it: nothing counts towards the rate.
    pub applied: bool,
}

/// One recorded move, under `guard/moves/<scope>/<time>/<token>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Move {
    at_ms: UnixMs,
    shift_percent: u32,
    kind: ChangeKind,
    actor: String,
}

static TOKENS: AtomicU64 = AtomicU64::new(0);

/// The guardrails over one store.
#[derive(Clone)]
pub struct Guardrails {
    store: Arc<dyn Store>,
    config: GuardConfig,
}

impl Guardrails {
    pub fn new(store: Arc<dyn Store>, config: GuardConfig) -> Self {
        Self { store, config }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Check `change` against every guardrail; on success take the lease and return the
    /// permit. Static refusals (approval, pre-approval) come before the rate limit, which
    /// comes before the lease, so the first refusal is the one that matters most.
    pub fn check(&self, change: &ProposedChange, now: UnixMs) -> Result<Permit, GuardError> {
        let mut notes = Vec::new();
        // a pre-approved rollback was approved by a human when the rollout was created
        let pre_approved_rollback = change.kind == ChangeKind::Rollback && change.pre_approved;
        if change.approved_by.is_none() && !pre_approved_rollback {
            if change.shift_percent > self.config.approval_above_percent {
                return Err(Refusal {
                    guardrail: Guardrail::Approval,
                    reason: format!(
                        "{}: moves {}% of {} (above {}%): needs a human approver",
                        change.summary,
                        change.shift_percent,
                        change.scope,
                        self.config.approval_above_percent
                    ),
                    allowed_at: None,
                }
                .into());
            }
            if let Some(p) = change
                .stacks
                .iter()
                .find(|s| self.config.primary_stacks.contains(*s))
            {
                return Err(Refusal {
                    guardrail: Guardrail::Approval,
                    reason: format!(
                        "{}: touches primary stack {p}: needs a human approver",
                        change.summary
                    ),
                    allowed_at: None,
                }
                .into());
            }
        }
        if change.kind == ChangeKind::Rollback
            && matches!(change.origin, Origin::Automatic { .. })
            && !change.pre_approved
            && change.approved_by.is_none()
        {
            return Err(Refusal {
                guardrail: Guardrail::AutoRollback,
                reason: format!(
                    "{}: automatic rollback was not pre-approved: needs a human",
                    change.summary
                ),
                allowed_at: None,
            }
            .into());
        }
        if matches!(
            change.kind,
            ChangeKind::PlanStep | ChangeKind::Promote | ChangeKind::Manual
        ) {
            self.check_freeze(change, now)?;
        }
        if change.kind == ChangeKind::Rollback {
            notes.push("rate limit not applied: rollback to the baseline".to_string());
        } else if let Some(approver) = &change.approved_by {
            notes.push(format!("rate limit waived: approved by {approver}"));
        } else {
            self.check_rate(change, now)?;
        }
        let token = format!(
            "{}@{}#{}",
            change.origin.actor(),
            now,
            TOKENS.fetch_add(1, Ordering::Relaxed)
        );
        let lease = Lease {
            token: token.clone(),
            holder: change.origin.actor().to_string(),
            summary: change.summary.clone(),
            granted_ms: now,
            expires_ms: now + self.config.lease_ms,
            manual: change.kind == ChangeKind::Manual,
        };
        self.take_lease(&lease, now)?;
        Ok(Permit {
            token,
            change: change.clone(),
            granted_ms: now,
            expires_ms: lease.expires_ms,
            notes,
        })
    }

    /// Record an executed change: it counts towards the rate limit (when applied) and its
    /// lease is released (when still ours). Idempotent per permit.
    pub fn record(&self, executed: &ExecutedChange, now: UnixMs) -> Result<(), GuardError> {
        let permit = &executed.permit;
        let mut batch = Batch::new();
        if let Some((bytes, lease)) = self.lease()? {
            if lease.token == permit.token {
                batch = batch.equals(LEASE_KEY, bytes).delete(LEASE_KEY);
            }
        }
        if executed.applied && permit.change.shift_percent > 0 {
            let mv = Move {
                at_ms: now,
                shift_percent: permit.change.shift_percent,
                kind: permit.change.kind,
                actor: permit.change.origin.actor().to_string(),
            };
            let prefix = moves_prefix(&permit.change.scope);
            batch = batch
                .put(
                    format!("{prefix}{}/{}", key_u64(now), permit.token),
                    to_json(&mv),
                )
                // housekeeping: moves older than two windows never matter again
                .delete_range(
                    prefix.clone(),
                    format!(
                        "{prefix}{}",
                        key_u64(now.saturating_sub(2 * self.config.window_ms))
                    ),
                );
        }
        match self.store.commit(&batch) {
            Ok(()) => Ok(()),
            // the lease changed between read and write (expired and taken): record the
            // move without touching the new holder's lease
            Err(StoreError::Conflict { .. }) => self.record_without_lease(executed, now),
            Err(e) => Err(e.into()),
        }
    }

    fn record_without_lease(
        &self,
        executed: &ExecutedChange,
        now: UnixMs,
    ) -> Result<(), GuardError> {
        if !executed.applied || executed.permit.change.shift_percent == 0 {
            return Ok(());
        }
        let p = &executed.permit;
        let mv = Move {
            at_ms: now,
            shift_percent: p.change.shift_percent,
            kind: p.change.kind,
            actor: p.change.origin.actor().to_string(),
        };
        let key = format!(
            "{}{}/{}",
            moves_prefix(&p.change.scope),
            key_u64(now),
            p.token
        );
        self.store.commit(&Batch::new().put(key, to_json(&mv)))?;
        Ok(())
    }

    /// Give a permit back without executing (e.g. the caller lost a race elsewhere).
    pub fn release(&self, permit: &Permit) -> Result<(), GuardError> {
        if let Some((bytes, lease)) = self.lease()? {
            if lease.token == permit.token {
                match self
                    .store
                    .commit(&Batch::new().equals(LEASE_KEY, bytes).delete(LEASE_KEY))
                {
                    Ok(()) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// The lease, if one is held and unexpired at `now`.
    pub fn holder(&self, now: UnixMs) -> Result<Option<Lease>, GuardError> {
        Ok(self.lease()?.map(|(_, l)| l).filter(|l| l.expires_ms > now))
    }

    /// Percent of `scope` moved in the window ending at `now`.
    pub fn shift_in_window(&self, scope: &str, now: UnixMs) -> Result<u32, GuardError> {
        Ok(self
            .moves_in_window(scope, now)?
            .iter()
            .map(|m| m.shift_percent)
            .sum())
    }

    /// Refuse a change touching a stack an incident action froze.
    fn check_freeze(&self, change: &ProposedChange, now: UnixMs) -> Result<(), GuardError> {
        for stack in &change.stacks {
            let freeze = super::incident::freeze_of(&*self.store, stack, now).map_err(|e| {
                GuardError::Corrupt {
                    key: format!("incident/freeze/{stack}"),
                    message: e.to_string(),
                }
            })?;
            if let Some(f) = freeze {
                return Err(Refusal {
                    guardrail: Guardrail::Freeze,
                    reason: format!(
                        "{}: {stack} is frozen after incident {}'s action ({}) until {}",
                        change.summary,
                        f.incident,
                        f.action,
                        super::clock::utc(f.until_ms)
                    ),
                    allowed_at: Some(f.until_ms),
                }
                .into());
            }
        }
        Ok(())
    }

    fn check_rate(&self, change: &ProposedChange, now: UnixMs) -> Result<(), GuardError> {
        let moves = self.moves_in_window(&change.scope, now)?;
        let used: u32 = moves.iter().map(|m| m.shift_percent).sum();
        let max = self.config.max_shift_percent;
        if used + change.shift_percent <= max {
            return Ok(());
        }
        // oldest first: wait until enough of them leave the window
        let mut left = used;
        let mut allowed_at = None;
        for m in &moves {
            left -= m.shift_percent;
            if left + change.shift_percent <= max {
                allowed_at = Some(m.at_ms + self.config.window_ms);
                break;
            }
        }
        Err(Refusal {
            guardrail: Guardrail::RateLimit,
            reason: format!(
                "{}: {}% of {} already moved in the last {} min; {}% more exceeds {}%",
                change.summary,
                used,
                change.scope,
                self.config.window_ms / 60_000,
                change.shift_percent,
                max
            ),
            allowed_at,
        }
        .into())
    }

    fn moves_in_window(&self, scope: &str, now: UnixMs) -> Result<Vec<Move>, GuardError> {
        let prefix = moves_prefix(scope);
        let since = now.saturating_sub(self.config.window_ms);
        // keys sort by time: start just before the window
        let after = format!("{prefix}{}", key_u64(since));
        let mut out = Vec::new();
        let mut cursor = Some(after);
        loop {
            let page = self.store.scan(&prefix, cursor.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            cursor = Some(last.clone());
            for (key, bytes) in &page {
                let m: Move = from_json(key, bytes)?;
                if m.at_ms > since && m.at_ms <= now {
                    out.push(m);
                }
            }
            if page.len() < 256 {
                break;
            }
        }
        out.sort_by_key(|m| m.at_ms);
        Ok(out)
    }

    fn lease(&self) -> Result<Option<(Vec<u8>, Lease)>, GuardError> {
        match self.store.read(LEASE_KEY)? {
            None => Ok(None),
            Some(bytes) => {
                let l = from_json(LEASE_KEY, &bytes)?;
                Ok(Some((bytes, l)))
            }
        }
    }

    fn take_lease(&self, lease: &Lease, now: UnixMs) -> Result<(), GuardError> {
        // People's changes queue behind each other in one process; on replicas sharing a
        // store they race for the lease instead, and a person's change may take over
        // another person's lease: try again rather than refuse (the routing versions'
        // compare-and-set then decides between conflicting changes).
        const ATTEMPTS: u32 = 8;
        let mut attempt = 1;
        loop {
            let current = self.lease()?;
            let batch = match &current {
                None => Batch::new().absent(LEASE_KEY),
                Some((bytes, held)) if held.expires_ms <= now || (held.manual && lease.manual) => {
                    Batch::new().equals(LEASE_KEY, bytes.clone())
                }
                Some((_, held)) => return Err(held_refusal(held).into()),
            }
            .put(LEASE_KEY, to_json(lease));
            match self.store.commit(&batch) {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict { .. }) => {
                    // someone else took it between our read and write
                    match self.lease()? {
                        Some((_, held))
                            if !(held.manual && lease.manual) || attempt == ATTEMPTS =>
                        {
                            return Err(held_refusal(&held).into())
                        }
                        None if attempt == ATTEMPTS => {
                            return Err(Refusal {
                                guardrail: Guardrail::OneChangeAtATime,
                                reason: "another change raced for the lease".into(),
                                allowed_at: Some(now),
                            }
                            .into())
                        }
                        _ => attempt += 1,
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn held_refusal(held: &Lease) -> Refusal {
    Refusal {
        guardrail: Guardrail::OneChangeAtATime,
        reason: format!(
            "another change is executing: {} by {} since {}",
            held.summary,
            held.holder,
            super::clock::utc(held.granted_ms)
        ),
        allowed_at: Some(held.expires_ms),
    }
}

/// Scope ids may contain `/`: escape it so one scope's prefix never covers another's.
fn moves_prefix(scope: &str) -> String {
    let esc = scope.replace('%', "%25").replace('/', "%2F");
    format!("{MOVES_PREFIX}{esc}/")
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // plain data structs: serialisation cannot fail
    serde_json::to_vec(v).unwrap_or_default()
}

fn from_json<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, GuardError> {
    serde_json::from_slice(bytes).map_err(|e| GuardError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const MIN: u64 = 60_000;

    fn guard(cfg: GuardConfig) -> (Arc<MemoryStore>, Guardrails) {
        let store = Arc::new(MemoryStore::new());
        (store.clone(), Guardrails::new(store, cfg))
    }

    fn change(shift: u32) -> ProposedChange {
        ProposedChange {
            scope: "policy".into(),
            kind: ChangeKind::PlanStep,
            origin: Origin::Automatic {
                actor: "rollout:r1".into(),
            },
            stacks: vec!["green".into(), "blue".into()],
            shift_percent: shift,
            approved_by: None,
            pre_approved: false,
            summary: format!("green +{shift}%"),
        }
    }

    fn refusal(r: Result<Permit, GuardError>) -> Refusal {
        match r {
            Err(GuardError::Refused(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn done(g: &Guardrails, p: Permit, now: UnixMs) {
        g.record(
            &ExecutedChange {
                permit: p,
                applied: true,
            },
            now,
        )
        .unwrap();
    }

    #[test]
    fn a_freeze_holds_rollout_steps_and_manual_changes_on_its_stacks_until_it_ends() {
        let (store, g) = guard(GuardConfig::default());
        let t0 = 1_796_100_000_000;
        // Incident 7's action froze green for 15 minutes.
        let freeze = crate::brain::incident::Freeze {
            stack: "green".into(),
            until_ms: t0 + 15 * MIN,
            incident: 7,
            action: "shift 10% from green to blue".into(),
        };
        store
            .commit(&Batch::new().put(
                "incident/freeze/green",
                serde_json::to_vec(&freeze).unwrap(),
            ))
            .unwrap();
        for kind in [
            ChangeKind::PlanStep,
            ChangeKind::Promote,
            ChangeKind::Manual,
        ] {
            let mut c = change(5);
            c.kind = kind;
            // a human approver does not lift a freeze
            c.approved_by = (kind != ChangeKind::PlanStep).then(|| "alice".to_string());
            let r = refusal(g.check(&c, t0 + MIN));
            assert_eq!(r.guardrail, Guardrail::Freeze, "{kind:?}");
            assert_eq!(r.allowed_at, Some(t0 + 15 * MIN));
            let msg = GuardError::from(r).to_string();
            assert!(
                msg.contains("green is frozen after incident 7")
                    && msg.ends_with("allowed from 2026-12-01T04:55:00Z"),
                "{msg}"
            );
        }
        // A stack not frozen, a rollback to the baseline and the incident's own actions
        // (the workflow checks those itself) are not held.
        let mut other = change(5);
        other.stacks = vec!["canary".into()];
        done(&g, g.check(&other, t0 + MIN).unwrap(), t0 + MIN);
        for kind in [ChangeKind::Rollback, ChangeKind::Incident] {
            let mut c = change(5);
            c.kind = kind;
            c.approved_by = Some("alice".into());
            done(&g, g.check(&c, t0 + 2 * MIN).unwrap(), t0 + 2 * MIN);
        }
        // The freeze ends: the step goes through.
        done(
            &g,
            g.check(&change(5), t0 + 15 * MIN).unwrap(),
            t0 + 15 * MIN,
        );
    }

    #[test]
    fn a_persons_change_takes_over_another_persons_lease_but_not_the_brains() {
        let (_, g) = guard(GuardConfig::default());
        let manual = |actor: &str| {
            let mut c = change(0);
            c.kind = ChangeKind::Manual;
            c.origin = Origin::Human {
                actor: actor.into(),
            };
            c.approved_by = Some(actor.into());
            c
        };
        // bob's change never recorded (his executor died): alice is not locked out
        let _bob = g.check(&manual("bob"), 1_000).unwrap();
        let alice = g.check(&manual("alice"), 1_001).unwrap();
        assert_eq!(g.holder(1_001).unwrap().unwrap().holder, "alice");
        // the brain waits for her
        let r = refusal(g.check(&change(5), 1_002));
        assert_eq!(r.guardrail, Guardrail::OneChangeAtATime);
        assert!(r.reason.contains("alice"), "{}", r.reason);
        done(&g, alice, 1_003);
        // and a person is refused while the brain's change executes
        let step = g.check(&change(5), 1_004).unwrap();
        let r = refusal(g.check(&manual("carol"), 1_005));
        assert!(r.reason.contains("rollout:r1"), "{}", r.reason);
        done(&g, step, 1_006);
    }

    #[test]
    fn rate_limit_refuses_past_the_budget_and_says_when() {
        let (_, g) = guard(GuardConfig::default());
        let t0 = 1_000 * MIN;
        let p = g.check(&change(15), t0).unwrap();
        done(&g, p, t0);
        let p = g.check(&change(5), t0 + MIN).unwrap();
        done(&g, p, t0 + MIN);
        assert_eq!(g.shift_in_window("policy", t0 + MIN).unwrap(), 20);
        let r = refusal(g.check(&change(5), t0 + 2 * MIN));
        assert_eq!(r.guardrail, Guardrail::RateLimit);
        // the 15 % move leaves the window 15 min after it was made
        assert_eq!(r.allowed_at, Some(t0 + 15 * MIN));
        assert!(r.reason.contains("20% of policy"), "{}", r.reason);
        // other scopes have their own budget
        let mut other = change(5);
        other.scope = "rule/eu".into();
        let p = g.check(&other, t0 + 2 * MIN).unwrap();
        done(&g, p, t0 + 2 * MIN);
        // at allowed_at the change passes
        let p = g.check(&change(5), t0 + 15 * MIN).unwrap();
        done(&g, p, t0 + 15 * MIN);
    }

    #[test]
    fn big_shifts_and_primary_stacks_need_an_approver() {
        let mut cfg = GuardConfig::default();
        cfg.primary_stacks.insert("blue".into());
        let (_, g) = guard(cfg);
        let mut c = change(30);
        c.stacks = vec!["green".into(), "canary".into()];
        let r = refusal(g.check(&c, 0));
        assert_eq!((r.guardrail, r.allowed_at), (Guardrail::Approval, None));
        let r = refusal(g.check(&change(5), 0));
        assert_eq!(r.guardrail, Guardrail::Approval);
        assert!(r.reason.contains("primary stack blue"), "{}", r.reason);
        // approved: passes, and the big shift waives the rate limit
        c.approved_by = Some("alice".into());
        let t0 = 1_000 * MIN;
        let p = g.check(&c, t0).unwrap();
        assert!(p.notes[0].contains("approved by alice"));
        done(&g, p, t0);
        assert_eq!(g.shift_in_window("policy", t0 + 1).unwrap(), 30);
    }

    #[test]
    fn automatic_rollback_only_when_pre_approved_and_never_rate_limited() {
        let (_, g) = guard(GuardConfig::default());
        let p = g.check(&change(20), 0).unwrap();
        done(&g, p, 0);
        let mut rb = change(20);
        rb.kind = ChangeKind::Rollback;
        let r = refusal(g.check(&rb, MIN));
        assert_eq!(r.guardrail, Guardrail::AutoRollback);
        rb.pre_approved = true;
        let p = g.check(&rb, MIN).unwrap();
        assert!(p.notes[0].contains("rollback"));
        g.release(&p).unwrap();
        // pre-approval covers a big rollback onto a primary stack too
        let mut cfg = GuardConfig::default();
        cfg.primary_stacks.insert("blue".into());
        let (_, g) = guard(cfg);
        rb.shift_percent = 50;
        g.check(&rb, MIN).unwrap();
    }

    #[test]
    fn one_change_at_a_time_until_recorded_or_expired() {
        let (store, g) = guard(GuardConfig::default());
        let first = g.check(&change(5), 0).unwrap();
        let mut manual = change(5);
        manual.kind = ChangeKind::Manual;
        manual.origin = Origin::Human {
            actor: "bob".into(),
        };
        let r = refusal(g.check(&manual, 10));
        assert_eq!(r.guardrail, Guardrail::OneChangeAtATime);
        assert_eq!(r.allowed_at, Some(first.expires_ms));
        assert!(r.reason.contains("rollout:r1"), "{}", r.reason);
        // a second Guardrails over the same store sees the same lease
        let g2 = Guardrails::new(store, GuardConfig::default());
        assert_eq!(
            refusal(g2.check(&manual, 10)).guardrail,
            Guardrail::OneChangeAtATime
        );
        done(&g, first, 20);
        assert!(g.holder(20).unwrap().is_none());
        let second = g2.check(&manual, 30).unwrap();
        // the holder crashes: after expiry the lease can be taken over
        let third = g.check(&change(5), second.expires_ms).unwrap();
        // the crashed holder's late record counts its move but keeps the new lease
        done(&g2, second, third.granted_ms + 1);
        assert_eq!(
            g.holder(third.granted_ms + 1).unwrap().unwrap().token,
            third.token
        );
        assert_eq!(
            g.shift_in_window("policy", third.granted_ms + 1).unwrap(),
            10
        );
    }

    #[test]
    fn released_or_failed_changes_do_not_count() {
        let (_, g) = guard(GuardConfig::default());
        let p = g.check(&change(20), 0).unwrap();
        g.release(&p).unwrap();
        let p = g.check(&change(20), 1).unwrap();
        g.record(
            &ExecutedChange {
                permit: p,
                applied: false,
            },
            2,
        )
        .unwrap();
        assert_eq!(g.shift_in_window("policy", 3).unwrap(), 0);
        g.check(&change(20), 3).unwrap();
    }
}
