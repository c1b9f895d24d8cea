//! The transitions of one command or tick: ramp, settle, judge, halt, roll back. Every
//! share move asks the guardrails first; what happened is collected as actions and
//! decisions and persisted by [`Run::commit`] conditionally on the state read.

use super::gates::{self, GateVerdict};
use super::{
    scope_key, state_key, to_json, Action, Blocked, Decision, MoveMode, Outcome, PauseReason,
    Phase, Rollout, RolloutEngine, RolloutError, Snapshot, StepOutcome, StepRecord, SCOPE_POLICY,
};
use crate::brain::clock::UnixMs;
use crate::brain::guardrails::{ChangeKind, Guardrail, Origin, Permit, ProposedChange, Refusal};
use crate::brain::signals::StackWindow;
use crate::brain::stats::Verdict;
use crate::store::{Batch, StoreError};

/// One command or tick in progress: the rollout being changed and what it produced.
pub(super) struct Run<'a> {
    engine: &'a RolloutEngine,
    pub(super) r: Rollout,
    now: UnixMs,
    actions: Vec<Action>,
    decisions: Vec<Decision>,
    permits: Vec<Permit>,
}

impl<'a> Run<'a> {
    pub(super) fn new(engine: &'a RolloutEngine, r: Rollout, now: UnixMs) -> Self {
        Self {
            engine,
            r,
            now,
            actions: Vec::new(),
            decisions: Vec::new(),
            permits: Vec::new(),
        }
    }

    fn actor(&self) -> String {
        format!("rollout:{}", self.r.spec.id)
    }

    pub(super) fn decide(&mut self, actor: &str, action: Option<String>, reason: String) {
        self.decide_on(actor, action, reason, Vec::new());
    }

    /// A decision that rests on gate verdicts.
    fn decide_on(
        &mut self,
        actor: &str,
        action: Option<String>,
        reason: String,
        gates: Vec<GateVerdict>,
    ) {
        self.decisions.push(Decision {
            at_ms: self.now,
            rollout_id: self.r.spec.id.clone(),
            phase: self.r.phase.name().to_string(),
            step: self.r.phase.step(),
            gates,
            action,
            reason,
            actor: actor.to_string(),
        });
    }

    /// Ask the guardrails for a move of the release to `to` percent.
    pub(super) fn permit(
        &mut self,
        kind: ChangeKind,
        to: u32,
        approver: Option<&str>,
    ) -> Result<Permit, RolloutError> {
        let from = self.r.share_percent;
        let human = approver.is_some() && kind != ChangeKind::PlanStep;
        let origin = if human {
            Origin::Human {
                actor: approver.unwrap_or_default().to_string(),
            }
        } else {
            Origin::Automatic {
                actor: self.actor(),
            }
        };
        let change = ProposedChange {
            scope: self.r.spec.scope.clone(),
            kind,
            origin,
            stacks: vec![self.r.spec.release.clone(), self.r.spec.stable.clone()],
            shift_percent: from.abs_diff(to),
            approved_by: approver.map(str::to_string),
            pre_approved: kind == ChangeKind::Rollback && self.r.spec.auto_rollback,
            summary: format!(
                "rollout {}: {} {from}% -> {to}% of {}",
                self.r.spec.id, self.r.spec.release, self.r.spec.scope
            ),
        };
        let permit = self.engine.guard.check(&change, self.now)?;
        self.permits.push(permit.clone());
        Ok(permit)
    }

    pub(super) fn set_share(
        &mut self,
        to: u32,
        from: u32,
        mode: MoveMode,
        permit: Permit,
        actor: &str,
        reason: String,
    ) {
        self.r.share_percent = to;
        self.r.blocked = None;
        let line = format!("set {} to {to}% ({:?})", self.r.spec.release, mode).to_lowercase();
        self.actions.push(Action::SetShare {
            rollout_id: self.r.spec.id.clone(),
            scope: self.r.spec.scope.clone(),
            release: self.r.spec.release.clone(),
            stable: self.r.spec.stable.clone(),
            from_percent: from,
            share_percent: to,
            mode,
            permit,
        });
        self.decide(actor, Some(line), reason);
    }

    /// Note a refused automatic move; a decision only when the refusal changed.
    fn blocked(&mut self, refusal: Refusal) {
        let b = Blocked {
            guardrail: refusal.guardrail.as_str().to_string(),
            reason: refusal.reason.clone(),
            allowed_at: refusal.allowed_at,
        };
        if self.r.blocked.as_ref() != Some(&b) {
            self.r.blocked = Some(b);
            let actor = self.actor();
            self.decide(&actor, None, format!("held back: {refusal}"));
        }
    }

    pub(super) fn begin_step(&mut self, step: usize, actor: &str) -> Result<(), RolloutError> {
        self.r.phase = Phase::Warming {
            step,
            from_percent: self.r.share_percent,
            started_ms: self.now,
            reached_ms: None,
        };
        self.r.steps.push(StepRecord {
            index: step,
            share_percent: self.r.spec.plan[step].share_percent,
            warm_started_ms: self.now,
            observe_since_ms: None,
            ended_ms: None,
            outcome: None,
            gates: Vec::new(),
            exposure: None,
        });
        let share = self.r.spec.plan[step].share_percent;
        self.decide(
            actor,
            None,
            format!("step {}: warming up to {share}%", step + 1),
        );
        self.advance(&[])
    }

    pub(super) fn end_step(&mut self, outcome: StepOutcome) {
        if let Some(s) = self.r.steps.last_mut() {
            if s.outcome.is_none() {
                s.outcome = Some(outcome);
                s.ended_ms = Some(self.now);
            }
        }
    }

    /// Roll back to 0 %, evacuating the release; `human`: on a person's command.
    pub(super) fn rollback(
        &mut self,
        actor: &str,
        human: bool,
        then: Phase,
        reason: String,
    ) -> Result<(), RolloutError> {
        let from = self.r.share_percent;
        if from == 0 {
            self.end_step(StepOutcome::Interrupted);
            self.r.phase = then;
            self.decide(actor, None, reason);
            return Ok(());
        }
        let permit = self.permit(ChangeKind::Rollback, 0, human.then_some(actor))?;
        self.end_step(StepOutcome::Interrupted);
        self.r.phase = then;
        self.set_share(0, from, MoveMode::Evacuate, permit, actor, reason);
        Ok(())
    }

    pub(super) fn count_users(&mut self, windows: &[StackWindow]) {
        let after = self.r.blast.counted_through_ms;
        let mut newest = after;
        for w in windows {
            if after.is_some_and(|t| w.start_ms <= t) || w.start_ms < self.r.created_ms {
                continue;
            }
            if w.stack == self.r.spec.release {
                self.r.blast.release_users += w.new_users;
            } else if w.stack == self.r.spec.stable {
                self.r.blast.stable_users += w.new_users;
            } else {
                continue;
            }
            newest = Some(newest.map_or(w.start_ms, |n: UnixMs| n.max(w.start_ms)));
        }
        self.r.blast.counted_through_ms = newest;
    }

    /// The automatic part: ramp, settle, judge. Loops while a transition enables the
    /// next (e.g. a passed step starts the next step's first move in the same tick).
    pub(super) fn advance(&mut self, windows: &[StackWindow]) -> Result<(), RolloutError> {
        for _ in 0..4 {
            let before = self.r.phase.clone();
            match before.clone() {
                Phase::Warming {
                    step,
                    from_percent,
                    started_ms,
                    reached_ms,
                } => self.warm(step, from_percent, started_ms, reached_ms)?,
                Phase::Observing {
                    step,
                    since_ms,
                    deadline_ms,
                } => self.observe(step, since_ms, deadline_ms, windows)?,
                Phase::Halted { .. } if self.r.spec.auto_rollback => {
                    let actor = self.actor();
                    match self.rollback(
                        &actor,
                        false,
                        Phase::RolledBack,
                        "automatic rollback (pre-approved)".into(),
                    ) {
                        Ok(()) => {}
                        Err(RolloutError::Refused(r)) => self.blocked(r),
                        Err(e) => return Err(e),
                    }
                }
                _ => {}
            }
            if self.r.phase == before {
                break;
            }
        }
        Ok(())
    }

    fn warm(
        &mut self,
        step: usize,
        from: u32,
        started: UnixMs,
        reached: Option<UnixMs>,
    ) -> Result<(), RolloutError> {
        let plan = self.r.spec.plan[step].clone();
        let target = plan.share_percent;
        let ramp = self.r.spec.ramp_step_percent.max(1);
        let moves = from.abs_diff(target).div_ceil(ramp).max(1);
        let warmup = self.r.spec.warmup_ms;
        let current = self.r.share_percent;
        if current != target {
            // increment i (1-based) is due at started + (i-1) * warmup / moves
            let due = if warmup == 0 {
                moves
            } else {
                ((self.now.saturating_sub(started) as u128 * u128::from(moves) / u128::from(warmup))
                    as u32
                    + 1)
                .min(moves)
            };
            let desired_gap = (due * ramp).min(from.abs_diff(target));
            let desired = if target > from {
                from + desired_gap
            } else {
                from - desired_gap
            };
            if desired == current {
                return Ok(());
            }
            // held by the rate limit: retry when it allows (a held lease is retried on
            // every tick, since the executor usually records well before it expires)
            if self
                .r
                .blocked
                .as_ref()
                .filter(|b| b.guardrail == Guardrail::RateLimit.as_str())
                .and_then(|b| b.allowed_at)
                .is_some_and(|t| self.now < t)
            {
                return Ok(());
            }
            let next = if desired > current {
                current + ramp.min(desired - current)
            } else {
                current - ramp.min(current - desired)
            };
            let approver = self
                .r
                .approved
                .as_ref()
                .filter(|(s, _)| *s == step)
                .map(|(_, a)| a.clone());
            match self.permit(ChangeKind::PlanStep, next, approver.as_deref()) {
                Ok(permit) => {
                    let mode = if next >= current {
                        MoveMode::Keep
                    } else {
                        MoveMode::Drain
                    };
                    let actor = self.actor();
                    self.set_share(
                        next,
                        current,
                        mode,
                        permit,
                        &actor,
                        format!("step {}: ramp to {target}%", step + 1),
                    );
                    if next == target {
                        self.r.phase = Phase::Warming {
                            step,
                            from_percent: from,
                            started_ms: started,
                            reached_ms: Some(self.now),
                        };
                    }
                }
                Err(RolloutError::Refused(r)) if r.allowed_at.is_none() => {
                    let reason = r.to_string();
                    let resume = self.r.phase.clone();
                    self.r.blocked = None;
                    self.r.phase = Phase::Paused {
                        reason: PauseReason::NeedsApproval {
                            reason: reason.clone(),
                        },
                        resume: Box::new(resume),
                        paused_ms: self.now,
                    };
                    let actor = self.actor();
                    self.decide(&actor, None, format!("waiting for approval: {reason}"));
                }
                Err(RolloutError::Refused(r)) => self.blocked(r),
                Err(e) => return Err(e),
            }
            return Ok(());
        }
        let reached = reached.unwrap_or(started);
        let settle = warmup / u64::from(moves);
        if self.now < (started + warmup).max(reached + settle) {
            return Ok(());
        }
        let actor = self.actor();
        if target == 100 {
            self.end_step(StepOutcome::Passed);
            self.r.phase = Phase::Completed;
            self.decide(&actor, None, "release at 100%: completed".into());
            return Ok(());
        }
        self.r.phase = Phase::Observing {
            step,
            since_ms: self.now,
            deadline_ms: self.now + plan.max_dwell_ms,
        };
        if let Some(s) = self.r.steps.last_mut() {
            s.observe_since_ms = Some(self.now);
        }
        self.decide(
            &actor,
            None,
            format!("step {}: warm at {target}%, observing", step + 1),
        );
        Ok(())
    }

    fn observe(
        &mut self,
        step: usize,
        since: UnixMs,
        deadline: UnixMs,
        windows: &[StackWindow],
    ) -> Result<(), RolloutError> {
        let spec = self.r.spec.clone();
        let pairs = gates::pair_windows(windows, &spec.release, &spec.stable, since);
        let mut eval = gates::GateEval::new(&spec.gates);
        let (mut rel_scope, mut all_scope) = (0u64, 0u64);
        for (r, s) in &pairs {
            eval.observe(r, s, self.r.blast.release_users);
            let scoped = |w: &StackWindow| {
                if spec.scope == SCOPE_POLICY {
                    w.requests
                } else {
                    w.by_rule.get(&spec.scope).copied().unwrap_or(0)
                }
            };
            rel_scope += scoped(r);
            all_scope += scoped(r) + scoped(s);
        }
        let verdicts = eval.verdicts();
        let verdict = gates::combine(&verdicts);
        let min_dwell = spec.plan[step].min_dwell_ms;
        let release_requests: u64 = pairs.iter().map(|(r, _)| r.requests).sum();
        if let Some(s) = self.r.steps.last_mut() {
            s.gates = verdicts.clone();
            s.exposure = (all_scope > 0).then(|| rel_scope as f64 / all_scope as f64);
        }
        let actor = self.actor();
        match verdict {
            Verdict::Fail => {
                let failed: Vec<&str> = verdicts
                    .iter()
                    .filter(|g| g.verdict == Verdict::Fail)
                    .map(|g| g.gate.as_str())
                    .collect();
                let reason = format!("step {}: gate failed: {}", step + 1, failed.join(", "));
                self.end_step(StepOutcome::Failed);
                self.r.phase = Phase::Halted {
                    step,
                    reason: reason.clone(),
                };
                let proposal = format!("propose rollback of {} to 0% (evacuate)", spec.release);
                self.actions.push(Action::ProposeRollback {
                    rollout_id: spec.id.clone(),
                    scope: spec.scope.clone(),
                    release: spec.release.clone(),
                    stable: spec.stable.clone(),
                    reason: reason.clone(),
                });
                self.decide_on(&actor, Some(proposal), reason, verdicts);
            }
            Verdict::Pass if self.now >= since + min_dwell => {
                self.end_step(StepOutcome::Passed);
                self.decide_on(
                    &actor,
                    None,
                    format!("step {}: all gates passed", step + 1),
                    verdicts,
                );
                self.begin_step(step + 1, &actor)?;
            }
            _ if self.now >= deadline => {
                let detail = if release_requests == 0 {
                    format!(
                        "step {}: no release traffic within the maximum dwell",
                        step + 1
                    )
                } else {
                    let open: Vec<&str> = verdicts
                        .iter()
                        .filter(|g| g.blocking && g.verdict != Verdict::Pass)
                        .map(|g| g.gate.as_str())
                        .collect();
                    format!(
                        "step {}: no decision within the maximum dwell (undecided: {})",
                        step + 1,
                        open.join(", ")
                    )
                };
                self.end_step(StepOutcome::Inconclusive);
                // resuming observes the same step longer: reopen its record
                if let Some(s) = self.r.steps.last_mut() {
                    s.outcome = None;
                    s.ended_ms = None;
                }
                self.r.phase = Phase::Paused {
                    reason: PauseReason::Inconclusive {
                        detail: detail.clone(),
                    },
                    resume: Box::new(Phase::Observing {
                        step,
                        since_ms: since,
                        deadline_ms: deadline,
                    }),
                    paused_ms: self.now,
                };
                self.decide_on(
                    &actor,
                    None,
                    format!("inconclusive, asking a human: {detail}"),
                    verdicts,
                );
            }
            _ => {}
        }
        Ok(())
    }

    /// Persist conditionally on the bytes read; on a lost race give back every permit.
    pub(super) fn commit(mut self, snap: &Snapshot) -> Result<Outcome, RolloutError> {
        self.r.updated_ms = self.now;
        let key = state_key(&self.r.spec.id);
        let mut batch = Batch::new()
            .equals(key.clone(), snap.bytes.clone())
            .put(key, to_json(&self.r));
        if !self.r.phase.is_open() {
            let sk = scope_key(&self.r.spec.scope);
            batch = batch
                .equals(sk.clone(), self.r.spec.id.as_bytes().to_vec())
                .delete(sk);
        }
        match self.engine.store.commit(&batch) {
            Ok(()) => Ok(self.into_outcome()),
            Err(e) => {
                for p in &self.permits {
                    let _ = self.engine.guard.release(p);
                }
                match e {
                    StoreError::Conflict { .. } => Err(RolloutError::Conflict(self.r.spec.id)),
                    e => Err(e.into()),
                }
            }
        }
    }

    pub(super) fn into_outcome(self) -> Outcome {
        Outcome {
            rollout: self.r,
            actions: self.actions,
            decisions: self.decisions,
        }
    }
}
