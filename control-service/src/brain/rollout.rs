//! Progressive delivery (paper §4, Table 2; issue 10 §5): one persisted state machine per
//! rollout that moves a release stack's share of a scope step by step behind SLO gates.
//!
//! A rollout is `pending` until started; each plan step first *warms* (a linear ramp from
//! the previous share, in increments of at most `ramp_step_percent`, then a settle time:
//! cold caches look like failures) and then *observes*: the gates ([`gates`]) judge the
//! release against the concurrent stable stack on the windows since observation began.
//! A step passes when every blocking gate passed and its minimum dwell is over; it halts
//! when any gate failed (a rollback is proposed, and executed at once when
//! `auto_rollback` was pre-approved); it pauses as *inconclusive* when its maximum dwell
//! ends without a decision — never a silent pass, also when traffic vanished.
//!
//! The engine decides; it never executes. Every share move first passes the
//! [`Guardrails`] (which grant a permit holding the one-change lease) and is returned as
//! an [`Action::SetShare`] carrying that permit: the executor applies it and records it
//! with [`Guardrails::record`]. What should be audited is returned as [`Decision`]s.
//!
//! State lives under `rollout/`: `rollout/r/<id>` (the rollout, JSON) and
//! `rollout/scope/<scope>` (the one open rollout of a scope). Every write is conditional
//! on the bytes read, so a write that lost a race is a [`RolloutError::Conflict`], never
//! a silent overwrite; a new engine over the same store resumes every open rollout where
//! it was.

pub mod gates;
pub mod sim;

mod factors;
mod model;
mod step;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::clock::UnixMs;
use super::guardrails::{ChangeKind, Guardrails};
use super::signals::StackWindow;
use crate::store::{Batch, Store, StoreError};
pub use factors::{operator_factors, Factors};
pub use gates::{CountBy, GateVerdict, Gates, KpiGate};
pub use model::*;
use step::Run;

const STATE_PREFIX: &str = "rollout/r/";
const SCOPE_PREFIX: &str = "rollout/scope/";

/// The result of a command or a tick: the rollout as now persisted, what to execute,
/// what to audit.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub rollout: Rollout,
    pub actions: Vec<Action>,
    pub decisions: Vec<Decision>,
}

/// A rollout as read, with the bytes every later write is conditional on.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub rollout: Rollout,
    bytes: Vec<u8>,
}

/// The rollout engine: stateless over its store, so any number of engines (and a
/// restarted one) see the same rollouts.
#[derive(Clone)]
pub struct RolloutEngine {
    store: Arc<dyn Store>,
    guard: Guardrails,
}

impl RolloutEngine {
    pub fn new(store: Arc<dyn Store>, guard: Guardrails) -> Self {
        Self { store, guard }
    }

    /// Create a pending rollout. At most one open rollout per scope.
    pub fn create(&self, spec: RolloutSpec, now: UnixMs) -> Result<Outcome, RolloutError> {
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(RolloutError::Invalid(problems));
        }
        let id = spec.id.clone();
        let scope_key = scope_key(&spec.scope);
        let rollout = Rollout {
            spec,
            phase: Phase::Pending,
            share_percent: 0,
            steps: Vec::new(),
            blast: BlastRadius::default(),
            approved: None,
            blocked: None,
            created_ms: now,
            updated_ms: now,
        };
        let batch = Batch::new()
            .absent(state_key(&id))
            .absent(scope_key.clone())
            .put(state_key(&id), to_json(&rollout))
            .put(scope_key.clone(), id.as_bytes().to_vec());
        match self.store.commit(&batch) {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                if self.store.read(&state_key(&id))?.is_some() {
                    return Err(RolloutError::Exists(id));
                }
                let holder = self
                    .store
                    .read(&scope_key)?
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                return Err(RolloutError::ScopeBusy {
                    scope: rollout.spec.scope,
                    holder,
                });
            }
            Err(e) => return Err(e.into()),
        }
        let decision = Decision {
            at_ms: now,
            rollout_id: id,
            phase: "pending".into(),
            step: None,
            gates: Vec::new(),
            action: None,
            reason: format!(
                "created: {} vs {} in {}, plan {}",
                rollout.spec.release,
                rollout.spec.stable,
                rollout.spec.scope,
                rollout
                    .spec
                    .plan
                    .iter()
                    .map(|s| s.share_percent.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            actor: rollout.spec.created_by.clone(),
        };
        Ok(Outcome {
            rollout,
            actions: Vec::new(),
            decisions: vec![decision],
        })
    }

    /// Read one rollout with the bytes later writes are conditional on.
    pub fn load(&self, id: &str) -> Result<Snapshot, RolloutError> {
        let key = state_key(id);
        let bytes = self
            .store
            .read(&key)?
            .ok_or_else(|| RolloutError::NotFound(id.to_string()))?;
        let rollout = from_json(&key, &bytes)?;
        Ok(Snapshot { rollout, bytes })
    }

    pub fn get(&self, id: &str) -> Result<Option<Rollout>, RolloutError> {
        match self.load(id) {
            Ok(s) => Ok(Some(s.rollout)),
            Err(RolloutError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every rollout, in id order.
    pub fn list(&self) -> Result<Vec<Rollout>, RolloutError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.scan(STATE_PREFIX, after.as_deref(), 256)?;
            for (k, v) in &page {
                out.push(from_json(k, v)?);
            }
            match page.last() {
                Some((k, _)) if page.len() == 256 => after = Some(k.clone()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The rollouts still open: what a restarted control service ticks.
    pub fn open(&self) -> Result<Vec<Rollout>, RolloutError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.phase.is_open())
            .collect())
    }

    /// Apply an operator command.
    pub fn command(&self, id: &str, cmd: Command, now: UnixMs) -> Result<Outcome, RolloutError> {
        let snap = self.load(id)?;
        self.command_on(snap, cmd, now)
    }

    /// Apply an operator command to a rollout as read in `snap`.
    pub fn command_on(
        &self,
        snap: Snapshot,
        cmd: Command,
        now: UnixMs,
    ) -> Result<Outcome, RolloutError> {
        let mut run = Run::new(self, snap.rollout.clone(), now);
        let actor = cmd.actor().to_string();
        let not_now = |r: &Rollout| RolloutError::NotNow {
            command: cmd.name(),
            phase: r.phase.name(),
        };
        match (&cmd, run.r.phase.clone()) {
            (Command::Start { .. }, Phase::Pending) => {
                run.decide(&actor, None, "started".into());
                run.begin_step(0, &actor)?;
            }
            (Command::Pause { .. }, p @ (Phase::Warming { .. } | Phase::Observing { .. })) => {
                run.r.phase = Phase::Paused {
                    reason: PauseReason::Human {
                        actor: actor.clone(),
                    },
                    resume: Box::new(p),
                    paused_ms: now,
                };
                run.decide(&actor, None, "paused by operator".into());
            }
            (
                Command::Resume { .. },
                Phase::Paused {
                    reason,
                    resume,
                    paused_ms,
                },
            ) => {
                let mut next = *resume;
                let why = match reason {
                    PauseReason::Human { .. } => {
                        // the time paused does not count against the maximum dwell
                        if let Phase::Observing { deadline_ms, .. } = &mut next {
                            *deadline_ms += now.saturating_sub(paused_ms);
                        }
                        "resumed".to_string()
                    }
                    PauseReason::Inconclusive { .. } => {
                        // more time to decide: the evidence so far stays valid
                        if let Phase::Observing {
                            step, deadline_ms, ..
                        } = &mut next
                        {
                            *deadline_ms = now + run.r.spec.plan[*step].max_dwell_ms;
                        }
                        "resumed after an inconclusive step: observing longer".to_string()
                    }
                    PauseReason::NeedsApproval { reason } => {
                        run.r.approved = next.step().map(|s| (s, actor.clone()));
                        format!("approved: {reason}")
                    }
                };
                run.r.phase = next;
                run.decide(&actor, None, why);
                run.advance(&[])?;
            }
            (Command::Promote { .. }, p)
                if p.is_open() && !matches!(p, Phase::Pending | Phase::Halted { .. }) =>
            {
                let from = run.r.share_percent;
                let permit = run.permit(ChangeKind::Promote, 100, Some(&actor))?;
                run.end_step(StepOutcome::Interrupted);
                run.r.phase = Phase::Promoted;
                run.set_share(100, from, MoveMode::Keep, permit, &actor, "promoted".into());
            }
            (Command::Abort { .. }, Phase::Pending) => {
                run.r.phase = Phase::Aborted;
                run.decide(&actor, None, "aborted before start".into());
            }
            (Command::Abort { .. }, p) if p.is_open() => {
                run.rollback(&actor, true, Phase::Aborted, "aborted by operator".into())?;
            }
            (Command::Rollback { .. }, Phase::Halted { .. }) => {
                run.rollback(&actor, true, Phase::RolledBack, "rollback approved".into())?;
            }
            _ => return Err(not_now(&run.r)),
        }
        run.commit(&snap)
    }

    /// Move the rollout on: ramp, judge the gates on `windows` (both stacks' windows,
    /// at least those since [`Rollout::windows_since`]), pass, halt or pause.
    pub fn tick(
        &self,
        id: &str,
        now: UnixMs,
        windows: &[StackWindow],
    ) -> Result<Outcome, RolloutError> {
        let snap = self.load(id)?;
        self.tick_on(snap, now, windows)
    }

    /// [`RolloutEngine::tick`] on a rollout as read in `snap`.
    pub fn tick_on(
        &self,
        snap: Snapshot,
        now: UnixMs,
        windows: &[StackWindow],
    ) -> Result<Outcome, RolloutError> {
        let mut run = Run::new(self, snap.rollout.clone(), now);
        if run.r.phase.is_open() {
            run.count_users(windows);
            run.advance(windows)?;
        }
        if run.r == snap.rollout {
            return Ok(run.into_outcome());
        }
        run.commit(&snap)
    }
}
fn state_key(id: &str) -> String {
    format!("{STATE_PREFIX}{id}")
}

fn scope_key(scope: &str) -> String {
    format!(
        "{SCOPE_PREFIX}{}",
        scope.replace('%', "%25").replace('/', "%2F")
    )
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // plain data: serialisation cannot fail
    serde_json::to_vec(v).unwrap_or_default()
}

fn from_json<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, RolloutError> {
    serde_json::from_slice(bytes).map_err(|e| RolloutError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
