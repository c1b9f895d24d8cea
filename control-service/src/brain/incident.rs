//! The ITR incident workflow (paper §8.4) as a persisted state machine per incident.
//!
//! ```text
//! trigger ─▶ validating ──(re-check after validate_ms: still there?)──▶ dismissed
//!                │ yes
//!                ▼
//!           correlating ─▶ localising ─▶ checking_dependencies ─▶ scoring
//!                                                                   │
//!                 rejected ◀──(reject)── awaiting_approval ◀────────┘◀──────────┐
//!                                          │ approve (refused while frozen)     │
//!                                          ▼                                    │
//!                                      executing ──(executor confirms)──▶ verifying
//!                                                                   │ recovered │ not: next
//!                                                                   ▼           │ action or
//!                                                               resolved        │ rollback
//! ```
//!
//! Nothing moves before a human approves: the engine only *emits* the approved action
//! for the executor (weights are pushed elsewhere) and re-emits it on every tick until
//! the executor confirms, so a restart between approval and execution loses nothing.
//! Execution is claimed: the approval claims the action (`claimed_ms`) and the executor
//! writes the routing version only while the incident record is exactly as claimed; a
//! tick takes over a claim older than `claim_ms`. So an action is carried out once, also
//! when several replicas see it approved (the one that took the approval executes it;
//! the leader steps in only if that one died).
//! After an action, a freeze window on every stack it touched refuses any other action
//! there (no oscillation) except this incident's own rollback.
//!
//! State lives in the store only (the engine holds none): `incident/item/<id>` (the
//! incident, JSON), `incident/open/<scope>` (one open incident per scope: duplicate
//! triggers merge into it), `incident/freeze/<stack>` and `incident/seq`. Every change is
//! one conditional [`Batch`] on the bytes that were read, so two engines (or a restarted
//! one) never overwrite each other; a new engine over the same store resumes every open
//! incident. Every transition yields a [`Decision`] for the audit log.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use super::clock::UnixMs;
use super::detection::{Finding, Reason, Severity};
use super::events::{AlertTrigger, Event, EventKind, Scope};
use crate::store::{key_u64, Batch, Store, StoreError};

const SEQ: &str = "incident/seq";
const ITEM: &str = "incident/item/";
const OPEN: &str = "incident/open/";
const FREEZE: &str = "incident/freeze/";

/// The store key of incident `id`'s record (an executor's claim is a condition on it).
pub fn item_key(id: u64) -> String {
    format!("{ITEM}{}", key_u64(id))
}

mod analysis;
mod model;

pub use model::*;

fn enc(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

/// Does event `e`'s scope cover `stack`, with the segments and rules its status says it
/// serves (a stack the context does not know serves none)?
fn covers(e: &Event, stack: &str, stacks: &[StackStatus]) -> bool {
    match stacks.iter().find(|s| s.name == stack) {
        Some(s) => e.scope.covers(stack, &s.segments, &s.rules),
        None => e.scope.covers(stack, &[], &[]),
    }
}

/// The group of `stack` (unknown stacks are in `default`, as in the detector).
fn group_of<'a>(stack: &str, stacks: &'a [StackStatus]) -> &'a str {
    stacks
        .iter()
        .find(|s| s.name == stack)
        .map_or("default", |s| s.group.as_str())
}

/// The freeze an incident action left on `stack`, if one is in force at `now` (the
/// guardrails read it too: a freeze holds rollout steps and manual changes as well).
pub fn freeze_of(
    store: &dyn Store,
    stack: &str,
    now: UnixMs,
) -> Result<Option<Freeze>, IncidentError> {
    let Some(b) = store.read(&format!("{FREEZE}{}", enc(stack)))? else {
        return Ok(None);
    };
    let f: Freeze = serde_json::from_slice(&b).map_err(|e| IncidentError::Corrupt {
        key: format!("{FREEZE}{stack}"),
        message: e.to_string(),
    })?;
    Ok((f.until_ms > now).then_some(f))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, IncidentError> {
    serde_json::to_vec(v).map_err(|e| IncidentError::Store(StoreError::Backend(e.to_string())))
}

/// The localisation of a stack alone in its group says this (scoring reads it).
const ALONE: &str = "it has no peer in its group";

/// One analysis phase: fills the evidence, returns the transition's note.
type AnalysisStep<'a> = dyn Fn(&mut Incident, &mut Evidence) -> String + 'a;

/// The workflow over a store. Holds no state of its own.
pub struct IncidentEngine {
    store: Arc<dyn Store>,
    cfg: IncidentConfig,
}

impl IncidentEngine {
    pub fn new(store: Arc<dyn Store>, cfg: IncidentConfig) -> Self {
        Self { store, cfg }
    }

    pub fn config(&self) -> &IncidentConfig {
        &self.cfg
    }

    fn load(&self, id: u64) -> Result<(Incident, Vec<u8>), IncidentError> {
        let key = format!("{ITEM}{}", key_u64(id));
        let bytes = self.store.read(&key)?.ok_or(IncidentError::NotFound(id))?;
        let inc = serde_json::from_slice(&bytes).map_err(|e| IncidentError::Corrupt {
            key,
            message: e.to_string(),
        })?;
        Ok((inc, bytes))
    }

    pub fn get(&self, id: u64) -> Result<Option<Incident>, IncidentError> {
        match self.load(id) {
            Ok((i, _)) => Ok(Some(i)),
            Err(IncidentError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The id of the newest incident (ids are gapless from 1), if any.
    pub fn newest_id(&self) -> Result<Option<u64>, IncidentError> {
        Ok(self
            .store
            .read(SEQ)?
            .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok()))
    }

    /// Ids of open incidents, ascending.
    pub fn open_ids(&self) -> Result<Vec<u64>, IncidentError> {
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.scan(OPEN, after.as_deref(), 256)?;
            for (_, v) in &page {
                if let Some(id) = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()) {
                    ids.push(id);
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == 256 => after = Some(k.clone()),
                _ => break,
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    pub fn open(&self) -> Result<Vec<Incident>, IncidentError> {
        self.open_ids()?
            .into_iter()
            .map(|id| self.load(id).map(|(i, _)| i))
            .collect()
    }

    /// The freeze on a stack, if one is in force at `now`.
    pub fn freeze(&self, stack: &str, now: UnixMs) -> Result<Option<Freeze>, IncidentError> {
        freeze_of(&*self.store, stack, now)
    }

    /// Write `inc` over the `old` bytes (conditionally), plus `extra` ops; closing an
    /// incident releases its scope.
    fn save(&self, inc: &Incident, old: &[u8], extra: Batch) -> Result<(), IncidentError> {
        let key = format!("{ITEM}{}", key_u64(inc.id));
        let mut b = extra;
        b.conditions.insert(
            0,
            crate::store::Condition::Equals(key.clone(), old.to_vec()),
        );
        b = b.put(key, to_json(inc)?);
        if !inc.phase.is_open() {
            let open = format!("{OPEN}{}", enc(&inc.scope));
            b = b.equals(open.clone(), inc.id.to_string()).delete(open);
        }
        self.store.commit(&b)?;
        Ok(())
    }

    fn step(
        &self,
        inc: &mut Incident,
        to: Phase,
        now: UnixMs,
        actor: &str,
        note: String,
    ) -> Decision {
        inc.history.push(Transition {
            at_ms: now,
            from: Some(inc.phase),
            to,
            actor: actor.into(),
            note: note.clone(),
        });
        inc.phase = to;
        inc.updated_ms = now;
        Decision {
            at_ms: now,
            incident: inc.id,
            phase: to,
            stack: inc.stack.clone(),
            action: inc.proposal().map(Action::describe),
            confidence: inc.confidence(),
            actor: actor.into(),
            note,
        }
    }

    /// Open an incident for a trigger, or add the trigger to the open incident of its
    /// scope (one open incident per scope).
    pub fn trigger(&self, t: Trigger, now: UnixMs) -> Result<Outcome, IncidentError> {
        if t.scope.is_empty() || t.scope.len() > 128 {
            return Err(IncidentError::Invalid("trigger scope"));
        }
        let open_key = format!("{OPEN}{}", enc(&t.scope));
        if let Some(id) = self.store.read(&open_key)? {
            let id: u64 = std::str::from_utf8(&id)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| IncidentError::Corrupt {
                    key: open_key.clone(),
                    message: "not an incident id".into(),
                })?;
            let (mut inc, old) = self.load(id)?;
            let dup = t.fingerprint.is_some()
                && inc.triggers.iter().any(|x| x.fingerprint == t.fingerprint);
            if !dup {
                inc.trigger_count += 1;
                if inc.triggers.len() < self.cfg.max_triggers {
                    inc.triggers.push(t);
                }
                inc.updated_ms = now;
                self.save(&inc, &old, Batch::new().equals(open_key, id.to_string()))?;
            }
            return Ok(Outcome {
                incident: inc,
                decisions: Vec::new(),
                action: None,
                claim: None,
            });
        }
        let seq_old = self.store.read(SEQ)?;
        let id = seq_old
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        let note = format!("opened by {:?}: {}", t.source, t.summary);
        let mut inc = Incident {
            id,
            scope: t.scope.clone(),
            stack: t.stack.clone(),
            signal: t.signal.clone(),
            phase: Phase::Validating,
            opened_ms: now,
            updated_ms: now,
            triggers: vec![t],
            trigger_count: 1,
            recheck_at_ms: Some(now + self.cfg.validate_ms),
            evidence: None,
            executed: Vec::new(),
            verify_until_ms: None,
            attempt: 0,
            approvals: Vec::new(),
            resolved_alerts: Vec::new(),
            history: Vec::new(),
            claimed_ms: None,
        };
        inc.history.push(Transition {
            at_ms: now,
            from: None,
            to: Phase::Validating,
            actor: "brain".into(),
            note: note.clone(),
        });
        let key = format!("{ITEM}{}", key_u64(id));
        let mut b = Batch::new().absent(key.clone()).absent(open_key.clone());
        b = match seq_old {
            Some(old) => b.equals(SEQ, old),
            None => b.absent(SEQ),
        };
        b = b
            .put(key, to_json(&inc)?)
            .put(open_key, id.to_string())
            .put(SEQ, id.to_string());
        self.store.commit(&b)?;
        let d = Decision {
            at_ms: now,
            incident: id,
            phase: Phase::Validating,
            stack: inc.stack.clone(),
            action: None,
            confidence: None,
            actor: "brain".into(),
            note,
        };
        Ok(Outcome {
            incident: inc,
            decisions: vec![d],
            action: None,
            claim: None,
        })
    }

    /// Feed an Alertmanager webhook: firing alerts trigger, resolved ones are noted on
    /// the open incident that their firing opened.
    pub fn ingest_alerts(
        &self,
        alerts: &[AlertTrigger],
        now: UnixMs,
    ) -> Result<Vec<Outcome>, IncidentError> {
        let mut out = Vec::new();
        for a in alerts {
            if let Some(t) = Trigger::from_alert(a) {
                out.push(self.trigger(t, now)?);
                continue;
            }
            for id in self.open_ids()? {
                let (mut inc, old) = self.load(id)?;
                if inc
                    .triggers
                    .iter()
                    .any(|t| t.fingerprint.as_deref() == Some(&a.fingerprint))
                    && !inc.resolved_alerts.contains(&a.fingerprint)
                {
                    inc.resolved_alerts.push(a.fingerprint.clone());
                    inc.updated_ms = now;
                    self.save(&inc, &old, Batch::new())?;
                }
            }
        }
        Ok(out)
    }

    /// Advance every open incident that can move at `now`. An incident another engine
    /// changed meanwhile is skipped (it moves on the next tick).
    pub fn tick(&self, now: UnixMs, ctx: &Context<'_>) -> Result<TickOutput, IncidentError> {
        let mut out = TickOutput::default();
        for id in self.open_ids()? {
            match self.advance(id, now, ctx, &mut out) {
                Ok(()) | Err(IncidentError::Store(StoreError::Conflict { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn advance(
        &self,
        id: u64,
        now: UnixMs,
        ctx: &Context<'_>,
        out: &mut TickOutput,
    ) -> Result<(), IncidentError> {
        let (mut inc, mut old) = self.load(id)?;
        match inc.phase {
            Phase::Validating if inc.recheck_at_ms.is_some_and(|t| now >= t) => {
                if !self.persists(&inc, ctx) {
                    let d = self.step(
                        &mut inc,
                        Phase::Dismissed,
                        now,
                        "brain",
                        "did not persist at the re-check".into(),
                    );
                    self.save(&inc, &old, Batch::new())?;
                    out.decisions.push(d);
                    return Ok(());
                }
                let mut ev = Evidence::default();
                // Each analysis phase is its own persisted transition.
                let phases: [(Phase, &AnalysisStep); 5] = [
                    (Phase::Correlating, &|i, ev| self.correlate(i, ctx, ev)),
                    (Phase::Localising, &|i, ev| self.localise(i, ctx, ev)),
                    (Phase::CheckingDependencies, &|i, ev| self.plan(i, ctx, ev)),
                    (Phase::Scoring, &|i, ev| self.score(i, ctx, ev)),
                    (Phase::AwaitingApproval, &|_, ev| match &ev.proposed {
                        Some(a) => format!(
                            "proposing: {} (confidence {:.2})",
                            a.describe(),
                            ev.confidence
                        ),
                        None => format!(
                            "no routing action fits; human decision needed (confidence {:.2})",
                            ev.confidence
                        ),
                    }),
                ];
                inc.attempt = 1;
                for (phase, f) in phases {
                    let note = f(&mut inc, &mut ev);
                    inc.evidence = Some(ev.clone());
                    let d = self.step(&mut inc, phase, now, "brain", note);
                    self.save(&inc, &old, Batch::new())?;
                    old = to_json(&inc)?;
                    out.decisions.push(d);
                }
            }
            Phase::Executing => {
                // The approval claimed it; a claim gone stale (its executor died) is
                // taken over, one replica winning the conditional save.
                let Some(action) = inc.proposal().cloned() else {
                    return Ok(());
                };
                let stale = inc
                    .claimed_ms
                    .is_none_or(|t| now >= t.saturating_add(self.cfg.claim_ms));
                if stale {
                    let since = inc.claimed_ms.unwrap_or(inc.updated_ms);
                    inc.claimed_ms = Some(now);
                    self.save(&inc, &old, Batch::new())?;
                    out.actions.push(Claimed {
                        id,
                        action,
                        record: to_json(&inc)?,
                        stale_since_ms: Some(since),
                    });
                }
            }
            Phase::Verifying if inc.verify_until_ms.is_some_and(|t| now >= t) => {
                if self.recovered(&inc, ctx) {
                    let d = self.step(
                        &mut inc,
                        Phase::Resolved,
                        now,
                        "brain",
                        "signal recovered after the action".into(),
                    );
                    self.save(&inc, &old, Batch::new())?;
                    out.decisions.push(d);
                    return Ok(());
                }
                inc.attempt += 1;
                let mut ev = inc.evidence.clone().unwrap_or_default();
                let note = self.escalate(&mut inc, ctx, &mut ev);
                inc.evidence = Some(ev);
                let d = self.step(&mut inc, Phase::AwaitingApproval, now, "brain", note);
                self.save(&inc, &old, Batch::new())?;
                out.decisions.push(d);
            }
            _ => {}
        }
        Ok(())
    }

    fn live<'a>(
        &self,
        ctx: &'a Context<'_>,
        stack: &'a str,
    ) -> impl Iterator<Item = &'a Finding> + 'a {
        ctx.findings.iter().filter(move |f| f.stack == stack)
    }

    /// The persistence re-check: the same kind of evidence as a trigger is still there
    /// (a stale hard-down finding counts: the stack is still dark).
    fn persists(&self, inc: &Incident, ctx: &Context<'_>) -> bool {
        if self.live(ctx, &inc.scope).any(Finding::worth_an_incident) {
            return true;
        }
        let unhealthy = inc
            .stack
            .as_deref()
            .is_some_and(|s| ctx.stacks.iter().any(|x| x.name == s && !x.healthy));
        let alert_firing = inc.triggers.iter().any(|t| {
            t.source == TriggerSource::Alertmanager
                && t.fingerprint
                    .as_ref()
                    .is_some_and(|f| !inc.resolved_alerts.contains(f))
        });
        unhealthy || alert_firing
    }

    /// Approve the proposal: the incident moves to executing and the action is returned
    /// for the executor. Refused while a stack of the action is frozen by another action
    /// (except this incident's own rollback).
    pub fn approve(
        &self,
        id: u64,
        actor: &str,
        comment: &str,
        now: UnixMs,
    ) -> Result<Outcome, IncidentError> {
        if actor.trim().is_empty() {
            return Err(IncidentError::Invalid("actor"));
        }
        let (mut inc, old) = self.load(id)?;
        if inc.phase != Phase::AwaitingApproval {
            return Err(IncidentError::WrongPhase {
                id,
                phase: inc.phase,
                want: Phase::AwaitingApproval,
            });
        }
        let action = inc.proposal().cloned();
        if let Some(a) = &action {
            for s in a.stacks() {
                if let Some(f) = self.freeze(&s, now)? {
                    let own_rollback = f.incident == id && matches!(a, Action::Restore { .. });
                    if !own_rollback {
                        return Err(IncidentError::Frozen {
                            stack: s,
                            until_ms: f.until_ms,
                            incident: f.incident,
                        });
                    }
                }
            }
        }
        inc.approvals.push(Approval {
            at_ms: now,
            actor: actor.into(),
            comment: comment.into(),
            approved: true,
            action: action.clone(),
        });
        let (to, note) = match &action {
            Some(a) => (
                Phase::Executing,
                format!("approved: {} — {comment}", a.describe()),
            ),
            None => (
                Phase::Resolved,
                format!("acknowledged without a routing action — {comment}"),
            ),
        };
        if action.is_some() {
            inc.claimed_ms = Some(now);
        }
        let d = self.step(&mut inc, to, now, actor, note);
        self.save(&inc, &old, Batch::new())?;
        let claim = match action {
            Some(_) => Some(to_json(&inc)?),
            None => None,
        };
        Ok(Outcome {
            incident: inc,
            decisions: vec![d],
            action,
            claim,
        })
    }

    /// Reject the proposal: the incident closes with the comment.
    pub fn reject(
        &self,
        id: u64,
        actor: &str,
        comment: &str,
        now: UnixMs,
    ) -> Result<Outcome, IncidentError> {
        if actor.trim().is_empty() {
            return Err(IncidentError::Invalid("actor"));
        }
        if comment.trim().is_empty() {
            return Err(IncidentError::Invalid("comment (say why)"));
        }
        let (mut inc, old) = self.load(id)?;
        if inc.phase != Phase::AwaitingApproval {
            return Err(IncidentError::WrongPhase {
                id,
                phase: inc.phase,
                want: Phase::AwaitingApproval,
            });
        }
        inc.approvals.push(Approval {
            at_ms: now,
            actor: actor.into(),
            comment: comment.into(),
            approved: false,
            action: inc.proposal().cloned(),
        });
        let d = self.step(
            &mut inc,
            Phase::Rejected,
            now,
            actor,
            format!("rejected — {comment}"),
        );
        self.save(&inc, &old, Batch::new())?;
        Ok(Outcome {
            incident: inc,
            decisions: vec![d],
            action: None,
            claim: None,
        })
    }

    /// The health checks' fast path already evacuated `stack` (to `to`) without approval:
    /// open an incident for it (or add to the open one of that stack) with the
    /// evacuation recorded as executed, and await a human for recovery: the proposal is
    /// to restore the stack's weights from before, once a person trusts it again.
    /// Nothing is frozen: the evacuation was an emergency, not a choice to hold.
    pub fn fast_path(
        &self,
        stack: &str,
        to: Vec<String>,
        summary: &str,
        now: UnixMs,
    ) -> Result<Outcome, IncidentError> {
        let opened = self.trigger(Trigger::health_check(stack, "fast_path", summary, now), now)?;
        let mut decisions = opened.decisions;
        let (mut inc, old) = self.load(opened.incident.id)?;
        let action = Action::Evacuate {
            stack: stack.into(),
            to,
        };
        if inc.executed.last() == Some(&action) && inc.phase == Phase::AwaitingApproval {
            // the same evacuation again (e.g. reported twice): nothing new
            return Ok(Outcome {
                incident: inc,
                decisions,
                action: None,
                claim: None,
            });
        }
        inc.executed.push(action.clone());
        inc.recheck_at_ms = None;
        let executed = format!(
            "fast path executed without approval: {} ({summary})",
            action.describe()
        );
        if matches!(inc.phase, Phase::Executing | Phase::Verifying) {
            // an approved action of its own is under way: the evacuation is noted
            inc.history.push(Transition {
                at_ms: now,
                from: Some(inc.phase),
                to: inc.phase,
                actor: "health-check".into(),
                note: executed,
            });
            inc.updated_ms = now;
        } else {
            let restore = Action::Restore {
                stacks: vec![stack.into()],
            };
            let ev = inc.evidence.get_or_insert_with(Evidence::default);
            ev.delta_stack = Some(stack.into());
            ev.localisation = format!("{stack} is hard down (health checks)");
            ev.proposed = Some(restore.clone());
            ev.expected_effect = format!(
                "{stack} takes traffic again as before the evacuation; approve only once it \
                 passes its checks and is trusted again"
            );
            ev.confidence = 1.0;
            ev.factors = vec![("hard down: health checks".into(), 1.0)];
            decisions.push(self.step(
                &mut inc,
                Phase::AwaitingApproval,
                now,
                "health-check",
                format!(
                    "{executed}; awaiting a human for recovery: {}",
                    restore.describe()
                ),
            ));
        }
        self.save(&inc, &old, Batch::new())?;
        Ok(Outcome {
            incident: inc,
            decisions,
            action: None,
            claim: None,
        })
    }

    /// The executor applied (`ok`) or failed to apply the approved action. On success
    /// the incident verifies recovery and the touched stacks freeze; on failure it goes
    /// back to awaiting approval.
    pub fn executed(
        &self,
        id: u64,
        ok: bool,
        note: &str,
        now: UnixMs,
    ) -> Result<Outcome, IncidentError> {
        self.executed_as(id, ok, note, now, None)
    }

    /// [`IncidentEngine::executed`] by the holder of `claim` (the record's bytes as claimed):
    /// [`IncidentError::ClaimLost`] when the record changed since (another executor took
    /// the claim over, or confirmed it).
    pub fn executed_as(
        &self,
        id: u64,
        ok: bool,
        note: &str,
        now: UnixMs,
        claim: Option<&[u8]>,
    ) -> Result<Outcome, IncidentError> {
        let (mut inc, old) = self.load(id)?;
        if claim.is_some_and(|c| c != old.as_slice()) {
            return Err(IncidentError::ClaimLost { id });
        }
        if inc.phase != Phase::Executing {
            return Err(IncidentError::WrongPhase {
                id,
                phase: inc.phase,
                want: Phase::Executing,
            });
        }
        let action = inc
            .proposal()
            .cloned()
            .ok_or(IncidentError::Invalid("executing without an action"))?;
        let mut b = Batch::new();
        inc.claimed_ms = None;
        let d = if ok {
            inc.executed.push(action.clone());
            inc.verify_until_ms = Some(now + self.cfg.verify_ms);
            for s in action.stacks() {
                let f = Freeze {
                    stack: s.clone(),
                    until_ms: now + self.cfg.freeze_ms,
                    incident: id,
                    action: action.describe(),
                };
                b = b.put(format!("{FREEZE}{}", enc(&s)), to_json(&f)?);
            }
            self.step(
                &mut inc,
                Phase::Verifying,
                now,
                "executor",
                format!("executed: {} {note}", action.describe()),
            )
        } else {
            self.step(
                &mut inc,
                Phase::AwaitingApproval,
                now,
                "executor",
                format!("execution failed: {note}"),
            )
        };
        self.save(&inc, &old, b)?;
        Ok(Outcome {
            incident: inc,
            decisions: vec![d],
            action: None,
            claim: None,
        })
    }
}

#[cfg(test)]
mod tests;
