//! The brain at work: runs the rollout engine on the telemetry series every tick,
//! carries out what it decides through [`Control`] (so every routing change is a
//! version, pushed to every Envoy and audited), records each move with the guardrails,
//! and appends every decision to the audit log.
//!
//! The brain's modules decide and never execute; this is the one executor. The gRPC and
//! HTTP layers call it for operator commands (start, pause, resume, promote, abort,
//! rollback) and otherwise only read.
//!
//! Imports: `autopilot → {brain, control, model, store}`; only edges import it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

mod incidents;
pub mod replay;
pub mod saturation;
pub use incidents::{EventCommandError, IncidentCommandError, IncidentSettings};

use crate::brain::audit::{AuditDraft, AuditKind};
use crate::brain::clock::{Clock, UnixMs};
use crate::brain::guardrails::{ExecutedChange, GuardConfig, Guardrails};
use crate::brain::rollout::{
    operator_factors, Action, Command, Decision, MoveMode, Outcome, Rollout, RolloutEngine,
    RolloutError, RolloutSpec, SCOPE_POLICY,
};
use crate::brain::series::Series;
use crate::brain::signals::StackWindow;
use crate::control::{Change, Control, ControlError, StackOp};
use crate::model::RuleStack;

/// How the autopilot runs.
#[derive(Debug, Clone)]
pub struct AutopilotSettings {
    /// How often open rollouts are judged and moved on.
    pub tick: Duration,
    pub guard: GuardConfig,
    /// Detector and incident workflow.
    pub incidents: IncidentSettings,
    /// Saturation scrapes per stack, fed to the detector.
    pub saturation: Vec<saturation::SaturationSource>,
    /// How often each saturation source is polled.
    pub saturation_every: Duration,
}

impl Default for AutopilotSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            guard: GuardConfig::default(),
            incidents: IncidentSettings::default(),
            saturation: Vec::new(),
            saturation_every: Duration::from_secs(5),
        }
    }
}

/// Errors of an operator command.
#[derive(Debug, thiserror::Error)]
pub enum AutopilotError {
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Invalid(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// The executor of the brain's decisions.
pub struct Autopilot {
    control: Arc<Control>,
    series: Arc<Series>,
    rollouts: RolloutEngine,
    guard: Guardrails,
    incidents: Arc<incidents::Desk>,
    clock: Arc<dyn Clock>,
    settings: AutopilotSettings,
    /// One tick or command at a time: the engine's writes are conditional anyway, this
    /// just keeps them from failing against each other inside one process.
    busy: tokio::sync::Mutex<()>,
    /// The latest scraped saturation per stack.
    saturation: Arc<saturation::Saturation>,
    /// Operators' changes queue behind each other (the control's writer lock serialises
    /// them anyway): the one-change lease refuses a person only for the brain's changes,
    /// never for another person's change a few milliseconds long.
    manual: tokio::sync::Mutex<()>,
}

async fn blocking<T, F>(f: F) -> Result<T, AutopilotError>
where
    F: FnOnce() -> Result<T, AutopilotError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AutopilotError::Internal(e.to_string()))?
}

impl Autopilot {
    pub fn new(
        control: Arc<Control>,
        series: Arc<Series>,
        clock: Arc<dyn Clock>,
        settings: AutopilotSettings,
    ) -> Arc<Self> {
        let store = control.store();
        let guard = Guardrails::new(store.clone(), settings.guard.clone());
        Arc::new(Self {
            rollouts: RolloutEngine::new(store.clone(), guard.clone()),
            incidents: Arc::new(incidents::Desk::new(store, settings.incidents.clone())),
            guard,
            control,
            series,
            clock,
            settings,
            busy: tokio::sync::Mutex::new(()),
            manual: tokio::sync::Mutex::new(()),
            saturation: Arc::new(saturation::Saturation::default()),
        })
    }

    pub fn settings(&self) -> &AutopilotSettings {
        &self.settings
    }

    pub fn now(&self) -> UnixMs {
        self.clock.now_ms()
    }

    /// The latest scraped saturation per stack.
    pub fn saturation(&self) -> &Arc<saturation::Saturation> {
        &self.saturation
    }

    /// Tick every `settings.tick` until `shutdown` (and poll the saturation sources).
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        // The scrapers end with `shutdown` too.
        drop(saturation::spawn(
            self.settings.saturation.clone(),
            self.settings.saturation_every,
            self.saturation.clone(),
            self.clock.clone(),
            shutdown.clone(),
        ));
        let me = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(me.settings.tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                if let Err(e) = me.tick().await {
                    tracing::warn!(error = %e, "autopilot tick");
                }
            }
        })
    }

    /// An operator's stack change, through the guardrails: a change that moves traffic
    /// (weight, drain, undrain, healthy, register) waits for no one but is refused while
    /// another change holds the one-change lease (a rollout step, an incident action) or
    /// while an incident action's freeze window is on the stack (the refusal says until
    /// when), and counts towards the scope's rate limit; the operator is a human, so the
    /// approval and rate-limit guardrails are theirs to override (recorded as approved by
    /// them). Taking traffic OFF a stack in an emergency (evacuate, unhealthy, deregister)
    /// is never refused.
    pub async fn manual_stack_op(
        &self,
        stack: &str,
        op: StackOp,
        change: Change,
    ) -> Result<crate::control::Outcome, AutopilotError> {
        use crate::brain::guardrails::{ChangeKind, Origin, ProposedChange};
        let _queued = self.manual.lock().await;
        let emergency = matches!(
            op,
            StackOp::Evacuate { .. } | StackOp::MarkUnhealthy { .. } | StackOp::Deregister { .. }
        );
        let current = self.control.current();
        let shift = current
            .as_ref()
            .and_then(|c| manual_shift(&c.policy_json, &c.record.stacks, stack, &op));
        let permit = match (emergency, shift) {
            (true, _) => None,
            (false, shift) => {
                let proposed = ProposedChange {
                    scope: SCOPE_POLICY.to_string(),
                    kind: ChangeKind::Manual,
                    origin: Origin::Human {
                        actor: change.actor.clone(),
                    },
                    stacks: vec![stack.to_string()],
                    shift_percent: shift.unwrap_or(0),
                    approved_by: Some(change.actor.clone()),
                    pre_approved: false,
                    summary: format!("manual change of {stack} by {}", change.actor),
                };
                let guard = self.guard.clone();
                let now = self.now();
                Some(
                    blocking(move || {
                        guard
                            .check(&proposed, now)
                            .map_err(|e| AutopilotError::Rollout(e.into()))
                    })
                    .await?,
                )
            }
        };
        let outcome = self.control.stack_op(stack, op, change).await;
        if let Some(permit) = permit {
            let guard = self.guard.clone();
            let now = self.now();
            let executed = ExecutedChange {
                permit,
                applied: outcome.as_ref().is_ok_and(|o| o.changed),
            };
            blocking(move || {
                guard
                    .record(&executed, now)
                    .map_err(|e| AutopilotError::Internal(e.to_string()))
            })
            .await?;
        }
        Ok(outcome?)
    }

    /// An operator's policy apply, under the one-change lease: refused (with the holder
    /// and when it would be allowed) while a rollout step or an incident action executes.
    pub async fn manual_policy_apply(
        &self,
        policy_json: &str,
        change: Change,
        expected_version: u64,
    ) -> Result<crate::control::Outcome, AutopilotError> {
        let _queued = self.manual.lock().await;
        let permit = self
            .manual_lease(&change, format!("policy apply by {}", change.actor))
            .await?;
        let outcome = self
            .control
            .apply_policy(policy_json, change, expected_version)
            .await;
        self.record_manual(permit, &outcome).await?;
        Ok(outcome?)
    }

    /// An operator's policy rollback, under the one-change lease (see
    /// [`Autopilot::manual_policy_apply`]).
    pub async fn manual_policy_rollback(
        &self,
        to_version: u64,
        change: Change,
        expected_version: u64,
    ) -> Result<crate::control::Outcome, AutopilotError> {
        let _queued = self.manual.lock().await;
        let permit = self
            .manual_lease(
                &change,
                format!("policy rollback to v{to_version} by {}", change.actor),
            )
            .await?;
        let outcome = self
            .control
            .rollback(to_version, change, expected_version)
            .await;
        self.record_manual(permit, &outcome).await?;
        Ok(outcome?)
    }

    /// The lease for a person's change of the whole policy (no share moves by itself:
    /// the approval and rate guardrails do not apply, the lease does).
    async fn manual_lease(
        &self,
        change: &Change,
        summary: String,
    ) -> Result<crate::brain::guardrails::Permit, AutopilotError> {
        use crate::brain::guardrails::{ChangeKind, Origin, ProposedChange};
        let proposed = ProposedChange {
            scope: SCOPE_POLICY.to_string(),
            kind: ChangeKind::Manual,
            origin: Origin::Human {
                actor: change.actor.clone(),
            },
            stacks: Vec::new(),
            shift_percent: 0,
            approved_by: Some(change.actor.clone()),
            pre_approved: false,
            summary,
        };
        let guard = self.guard.clone();
        let now = self.now();
        blocking(move || {
            guard
                .check(&proposed, now)
                .map_err(|e| AutopilotError::Rollout(e.into()))
        })
        .await
    }

    async fn record_manual(
        &self,
        permit: crate::brain::guardrails::Permit,
        outcome: &Result<crate::control::Outcome, ControlError>,
    ) -> Result<(), AutopilotError> {
        let guard = self.guard.clone();
        let now = self.now();
        let executed = ExecutedChange {
            permit,
            applied: outcome.as_ref().is_ok_and(|o| o.changed),
        };
        blocking(move || {
            guard
                .record(&executed, now)
                .map_err(|e| AutopilotError::Internal(e.to_string()))
        })
        .await
    }

    /// Judge and move on every open rollout once, then run the incident workflow once.
    pub async fn tick(&self) -> Result<(), AutopilotError> {
        self.tick_rollouts().await?;
        let _busy = self.busy.lock().await;
        self.tick_incidents().await
    }

    async fn tick_rollouts(&self) -> Result<(), AutopilotError> {
        let _busy = self.busy.lock().await;
        let engine = self.rollouts.clone();
        let open = blocking(move || Ok(engine.open()?)).await?;
        for r in open {
            let now = self.now();
            let windows = self.windows(&r, now).await?;
            let engine = self.rollouts.clone();
            let id = r.spec.id.clone();
            let outcome = match blocking(move || Ok(engine.tick(&id, now, &windows)?)).await {
                Ok(o) => o,
                Err(AutopilotError::Rollout(RolloutError::Conflict(id))) => {
                    tracing::debug!(rollout = %id, "changed concurrently; next tick");
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.carry_out(outcome).await?;
        }
        Ok(())
    }

    /// Both stacks' windows the next tick of `r` needs.
    async fn windows(&self, r: &Rollout, now: UnixMs) -> Result<Vec<StackWindow>, AutopilotError> {
        let series = self.series.clone();
        let (release, stable) = (r.spec.release.clone(), r.spec.stable.clone());
        let since = r.windows_since();
        blocking(move || {
            let mut w = series
                .range(&release, since, now + 1)
                .map_err(|e| AutopilotError::Internal(e.to_string()))?;
            w.extend(
                series
                    .range(&stable, since, now + 1)
                    .map_err(|e| AutopilotError::Internal(e.to_string()))?,
            );
            Ok(w)
        })
        .await
    }

    /// Create and start a rollout.
    pub async fn start_rollout(&self, spec: RolloutSpec) -> Result<Rollout, AutopilotError> {
        let current = self
            .control
            .current()
            .ok_or_else(|| AutopilotError::Invalid("no policy has been applied yet".into()))?;
        for (field, stack) in [("release", &spec.release), ("stable", &spec.stable)] {
            if current.record.stack(stack).is_none() {
                return Err(AutopilotError::Invalid(format!(
                    "{field}: stack {stack:?} is not in the current policy"
                )));
            }
        }
        let Some(targets) = scope_targets(&current.policy_json, &spec.scope) else {
            return Err(AutopilotError::Invalid(format!(
                "scope: {:?} is neither {SCOPE_POLICY:?} (the whole policy) nor a rule of the \
                 current policy (rules: {})",
                spec.scope,
                rule_ids(&current.policy_json).join(", ")
            )));
        };
        let route = if spec.scope == SCOPE_POLICY {
            "the policy's default route".to_string()
        } else {
            format!("rule {}'s route", spec.scope)
        };
        let (wr, ws) = weights_of(&targets, &spec.release, &spec.stable);
        if wr == 0 {
            return Err(AutopilotError::Invalid(format!(
                "release: {} has no weight in {route}: give it a target weight (the rollout \
                 moves its factor on top of it)",
                spec.release
            )));
        }
        if ws == 0 {
            return Err(AutopilotError::Invalid(format!(
                "stable: {} has no weight in {route}",
                spec.stable
            )));
        }
        let _busy = self.busy.lock().await;
        let actor = spec.created_by.clone();
        let id = spec.id.clone();
        let now = self.now();
        let engine = self.rollouts.clone();
        let created = blocking(move || Ok(engine.create(spec, now)?)).await?;
        self.carry_out(created).await?;
        let engine = self.rollouts.clone();
        let started =
            blocking(move || Ok(engine.command(&id, Command::Start { actor }, now)?)).await?;
        let rollout = started.rollout.clone();
        self.carry_out(started).await?;
        Ok(rollout)
    }

    /// An operator command on a rollout.
    pub async fn command(&self, id: &str, cmd: Command) -> Result<Rollout, AutopilotError> {
        let _busy = self.busy.lock().await;
        let engine = self.rollouts.clone();
        let id = id.to_string();
        let now = self.now();
        let outcome = blocking(move || Ok(engine.command(&id, cmd, now)?)).await?;
        let rollout = outcome.rollout.clone();
        self.carry_out(outcome).await?;
        Ok(rollout)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Rollout>, AutopilotError> {
        let engine = self.rollouts.clone();
        let id = id.to_string();
        blocking(move || Ok(engine.get(&id)?)).await
    }

    pub async fn list(&self) -> Result<Vec<Rollout>, AutopilotError> {
        let engine = self.rollouts.clone();
        blocking(move || Ok(engine.list()?)).await
    }

    /// Execute the actions, record them with the guardrails, audit the decisions.
    async fn carry_out(&self, outcome: Outcome) -> Result<(), AutopilotError> {
        for d in &outcome.decisions {
            self.audit(decision_draft(d)).await;
        }
        for action in outcome.actions {
            match action {
                Action::SetShare {
                    rollout_id,
                    scope,
                    release,
                    stable,
                    from_percent,
                    share_percent,
                    mode,
                    permit,
                } => {
                    let applied = if scope == SCOPE_POLICY {
                        self.set_share(
                            &rollout_id,
                            &release,
                            &stable,
                            from_percent,
                            share_percent,
                            mode,
                        )
                        .await
                    } else {
                        self.set_rule_share(
                            &rollout_id,
                            &scope,
                            (&release, &stable),
                            from_percent,
                            share_percent,
                            mode,
                        )
                        .await
                    };
                    if let Err(e) = &applied {
                        tracing::error!(rollout = %rollout_id, error = %e, "could not apply a share move");
                    }
                    let guard = self.guard.clone();
                    let now = self.now();
                    let executed = ExecutedChange {
                        permit,
                        applied: applied.is_ok(),
                    };
                    blocking(move || {
                        guard
                            .record(&executed, now)
                            .map_err(|e| AutopilotError::Internal(e.to_string()))
                    })
                    .await?;
                    applied?;
                }
                Action::ProposeRollback {
                    rollout_id,
                    release,
                    stable,
                    reason,
                    ..
                } => {
                    let draft = AuditDraft::new(
                        self.now(),
                        format!("rollout:{rollout_id}"),
                        AuditKind::Recommendation,
                        format!("rollout/{rollout_id}"),
                        format!(
                            "proposes rolling back: evacuate {release}, all traffic to {stable} \
                             (approve: switchyard rollout rollback {rollout_id})"
                        ),
                    )
                    .reason(reason);
                    self.audit(draft).await;
                }
            }
        }
        Ok(())
    }

    /// Move the release's share of the whole policy through the two stacks' operator
    /// factors, as one version.
    async fn set_share(
        &self,
        rollout_id: &str,
        release: &str,
        stable: &str,
        from_percent: u32,
        share_percent: u32,
        mode: MoveMode,
    ) -> Result<(), AutopilotError> {
        let current = self
            .control
            .current()
            .ok_or_else(|| AutopilotError::Invalid("no policy".into()))?;
        let (wr, ws) = policy_weights(&current.policy_json, release, stable);
        let reason = format!("rollout {rollout_id}: {from_percent}% -> {share_percent}%");
        let weight = |percent: u32| StackOp::SetWeight {
            percent,
            reason: reason.clone(),
        };
        let stable_state = current.record.stack(stable);
        let mut ops: Vec<(String, StackOp)> = Vec::new();
        // The stable stack is back in full service whenever it is to take traffic.
        if share_percent < 100 && stable_state.is_some_and(|s| s.draining || s.evacuating) {
            ops.push((
                stable.into(),
                StackOp::Undrain {
                    reason: reason.clone(),
                },
            ));
        }
        match (share_percent, mode) {
            (0, MoveMode::Evacuate) => {
                ops.push((
                    release.into(),
                    StackOp::Evacuate {
                        reason: reason.clone(),
                    },
                ));
                ops.push((stable.into(), weight(100)));
            }
            (0, _) => {
                ops.push((
                    release.into(),
                    StackOp::Drain {
                        reason: reason.clone(),
                        deadline: None,
                    },
                ));
                ops.push((stable.into(), weight(100)));
            }
            (100.., _) => {
                // Promotion: the stable stack takes no new users; its sessions finish.
                if current
                    .record
                    .stack(release)
                    .is_some_and(|s| s.draining || s.evacuating)
                {
                    ops.push((
                        release.into(),
                        StackOp::Undrain {
                            reason: reason.clone(),
                        },
                    ));
                }
                ops.push((release.into(), weight(100)));
                ops.push((
                    stable.into(),
                    StackOp::Drain {
                        reason: reason.clone(),
                        deadline: None,
                    },
                ));
            }
            (share, _) => {
                let f = operator_factors(share, wr, ws)?;
                if current
                    .record
                    .stack(release)
                    .is_some_and(|s| s.draining || s.evacuating)
                {
                    ops.push((
                        release.into(),
                        StackOp::Undrain {
                            reason: reason.clone(),
                        },
                    ));
                }
                ops.push((release.into(), weight(f.release)));
                ops.push((stable.into(), weight(f.stable)));
            }
        }
        let change = Change {
            actor: format!("rollout:{rollout_id}"),
            comment: reason.clone(),
            origin: AuditKind::AutomaticAction,
        };
        self.control.stack_ops(ops, change).await?;
        Ok(())
    }

    /// Move the release's share of one rule's traffic through the two stacks' factors
    /// within that rule, as one version; every other rule routes as before. A step down
    /// to 0 drains (the rule's sessions on the release finish) or evacuates (its cookie
    /// holders move at once); at 100 the stable stack drains within the rule.
    async fn set_rule_share(
        &self,
        rollout_id: &str,
        rule: &str,
        (release, stable): (&str, &str),
        from_percent: u32,
        share_percent: u32,
        mode: MoveMode,
    ) -> Result<(), AutopilotError> {
        let current = self
            .control
            .current()
            .ok_or_else(|| AutopilotError::Invalid("no policy".into()))?;
        let targets = scope_targets(&current.policy_json, rule).ok_or_else(|| {
            AutopilotError::Invalid(format!("rule {rule} is not in the current policy"))
        })?;
        let (wr, ws) = weights_of(&targets, release, stable);
        let (fr, fs, evacuate) = match (share_percent, mode) {
            (0, mode) => (0, 100, mode == MoveMode::Evacuate),
            (100.., _) => (100, 0, false),
            (share, _) => {
                let f = operator_factors(share, wr, ws)?;
                (f.release, f.stable, false)
            }
        };
        let entry = |stack: &str, weight_percent, evacuating| RuleStack {
            rule: rule.to_string(),
            stack: stack.to_string(),
            weight_percent,
            evacuating,
        };
        let reason =
            format!("rollout {rollout_id}: {from_percent}% -> {share_percent}% of rule {rule}");
        let change = Change {
            actor: format!("rollout:{rollout_id}"),
            comment: reason,
            origin: AuditKind::AutomaticAction,
        };
        self.control
            .set_rule_stacks(
                rule,
                vec![entry(release, fr, evacuate), entry(stable, fs, false)],
                change,
            )
            .await?;
        Ok(())
    }

    async fn audit(&self, draft: AuditDraft) {
        let log = self.control.audit().clone();
        let r = tokio::task::spawn_blocking(move || log.append(draft)).await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit append failed"),
            Err(e) => tracing::error!(error = %e, "audit task failed"),
        }
    }
}

/// The audit entry of a rollout decision.
fn decision_draft(d: &Decision) -> AuditDraft {
    let human = !d.actor.is_empty() && !d.actor.starts_with("rollout");
    let kind = if human {
        match d.phase.as_str() {
            "rolled_back" | "aborted" | "promoted" => AuditKind::Approval,
            _ => AuditKind::ManualChange,
        }
    } else if d.phase == "halted" {
        AuditKind::Recommendation
    } else if d.action.is_some() {
        AuditKind::AutomaticAction
    } else {
        AuditKind::Note
    };
    let summary = match (&d.step, &d.action) {
        (Some(step), Some(a)) => format!("{} (step {}): {a}", d.phase, step + 1),
        (None, Some(a)) => format!("{}: {a}", d.phase),
        (Some(step), None) => format!("{} (step {})", d.phase, step + 1),
        (None, None) => d.phase.clone(),
    };
    AuditDraft::new(
        d.at_ms,
        if d.actor.is_empty() {
            format!("rollout:{}", d.rollout_id)
        } else {
            d.actor.clone()
        },
        kind,
        format!("rollout/{}", d.rollout_id),
        summary,
    )
    .reason(d.reason.clone())
    .evidence(if d.gates.is_empty() {
        String::new()
    } else {
        format!("rollout/{} gates", d.rollout_id)
    })
    .change(
        serde_json::Value::Null,
        serde_json::to_value(&d.gates).unwrap_or_default(),
    )
}

/// Percent of the default route's new visitors that `op` on `stack` would move (the
/// absolute change of the stack's share), or `None` when it cannot be previewed.
pub fn manual_shift(
    policy_json: &str,
    stacks: &[crate::model::StackRuntime],
    stack: &str,
    op: &StackOp,
) -> Option<u32> {
    let weights: Vec<(String, f64)> = default_targets(policy_json)
        .into_iter()
        .map(|(n, w)| (n, f64::from(w)))
        .collect();
    let share = |states: &[crate::model::StackRuntime]| -> f64 {
        let eff = |name: &str| {
            states
                .iter()
                .find(|s| s.name == name)
                .map(|s| f64::from(s.effective_weight_percent()))
                .unwrap_or(0.0)
        };
        let total: f64 = weights.iter().map(|(n, w)| w * eff(n)).sum();
        let mine: f64 = weights
            .iter()
            .filter(|(n, _)| n == stack)
            .map(|(n, w)| w * eff(n))
            .sum();
        if total > 0.0 {
            100.0 * mine / total
        } else {
            0.0
        }
    };
    let before = share(stacks);
    let mut after_states = stacks.to_vec();
    let i = after_states.iter().position(|s| s.name == stack)?;
    after_states[i] = crate::control::preview_stack_op(&after_states[i], op).ok()?;
    let after = share(&after_states);
    Some((after - before).abs().round() as u32)
}

/// One KPI gate (default tolerance) per KPI the policy in force declares.
pub fn kpi_gates(pilot: &Autopilot) -> Vec<crate::brain::rollout::KpiGate> {
    let Some(current) = pilot.control.current() else {
        return Vec::new();
    };
    let doc: serde_json::Value = serde_json::from_str(&current.policy_json).unwrap_or_default();
    let names: Vec<&str> = doc["kpis"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["name"].as_str())
        .collect();
    crate::brain::rollout::Gates::with_kpis(names).kpis
}

/// The release's and the stable stack's weights in the policy's default route (0 when
/// not a target there).
pub fn policy_weights(policy_json: &str, release: &str, stable: &str) -> (u32, u32) {
    weights_of(&default_targets(policy_json), release, stable)
}

/// The release's and the stable stack's weights among `targets` (0 when not one).
fn weights_of(targets: &[(String, u32)], release: &str, stable: &str) -> (u32, u32) {
    let mut wr = 0;
    let mut ws = 0;
    for (name, w) in targets {
        if name == release {
            wr = *w;
        } else if name == stable {
            ws = *w;
        }
    }
    (wr, ws)
}

/// The targets and policy weights of a rollout scope's route: the default route for
/// [`SCOPE_POLICY`] and the rule `default`, the rule's own route for a rule id; `None`
/// when the policy has no such rule.
pub fn scope_targets(policy_json: &str, scope: &str) -> Option<Vec<(String, u32)>> {
    let doc: serde_json::Value = serde_json::from_str(policy_json).unwrap_or_default();
    let route = if scope == SCOPE_POLICY || scope == "default" {
        &doc["default"]
    } else {
        &doc["rules"]
            .as_array()?
            .iter()
            .find(|r| r["id"].as_str() == Some(scope))?["route"]
    };
    Some(targets_of(route))
}

/// The rule ids of a policy document, in order, `default` last.
fn rule_ids(policy_json: &str) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(policy_json).unwrap_or_default();
    doc["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .chain(["default".to_string()])
        .collect()
}

fn targets_of(route: &serde_json::Value) -> Vec<(String, u32)> {
    route["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t["stack"].as_str()?.to_string(),
                t["weight"].as_u64().unwrap_or(1) as u32,
            ))
        })
        .collect()
}

/// The default route's targets and their policy weights (1 when not given), in policy
/// order; empty when the document cannot be read. The one reader of the default route
/// for the autopilot (shares, shifts, rollout factors, the detector's topology).
pub fn default_targets(policy_json: &str) -> Vec<(String, u32)> {
    let doc: serde_json::Value = serde_json::from_str(policy_json).unwrap_or_default();
    targets_of(&doc["default"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::clock::ManualClock;
    use crate::brain::guardrails::{ChangeKind, Origin, ProposedChange};
    use crate::brain::series::SeriesSettings;
    use crate::store::{MemoryStore, Store};

    const POLICY: &str = r#"{"stacks":[{"name":"blue","region":"us"},{"name":"green","region":"us"}],
      "default":{"targets":[{"stack":"blue"},{"stack":"green"}]}}"#;

    async fn pilot() -> (Arc<Control>, Arc<Autopilot>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let control = Control::open(store.clone()).await.unwrap();
        control
            .apply_policy(POLICY, Change::manual("alice", ""), 0)
            .await
            .unwrap();
        let series = Arc::new(Series::new(store, SeriesSettings::default()));
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        let pilot = Autopilot::new(control.clone(), series, clock, AutopilotSettings::default());
        (control, pilot)
    }

    const RULE_POLICY: &str = r#"{"stacks":[{"name":"blue","region":"us"},{"name":"green","region":"us"}],
      "rules":[{"id":"beta","match":{"path_prefixes":["/beta"]},
                "route":{"targets":[{"stack":"blue","weight":3},{"stack":"green"}]}}],
      "default":{"targets":[{"stack":"blue"},{"stack":"green"}]}}"#;

    fn rule_spec(scope: &str) -> RolloutSpec {
        let mut spec = RolloutSpec::new("r1", "green", "blue", scope);
        spec.plan = crate::brain::rollout::plan_from_shares(&[20, 100], 60_000, 120_000);
        spec.warmup_ms = 0;
        spec.ramp_step_percent = 20;
        spec.created_by = "alice".into();
        spec
    }

    #[tokio::test]
    async fn a_rule_scoped_rollout_moves_the_share_within_that_rule_only() {
        let (control, pilot) = pilot().await;
        control
            .apply_policy(RULE_POLICY, Change::manual("alice", ""), 0)
            .await
            .unwrap();
        let r = pilot.start_rollout(rule_spec("beta")).await.unwrap();
        assert_eq!(r.share_percent, 20);
        let cur = control.current().unwrap();
        // blue has weight 3 in beta: green 1·f_r / (1·f_r + 3·f_s) = 20 % → 75 : 100.
        let beta = |stack: &str| {
            cur.record
                .rule_stacks
                .iter()
                .find(|r| r.rule == "beta" && r.stack == stack)
                .map(|r| (r.weight_percent, r.evacuating))
        };
        assert_eq!(beta("green"), Some((75, false)));
        assert_eq!(beta("blue"), Some((100, false)));
        assert_eq!(cur.record.kind, crate::model::ChangeKind::RuleShare);
        // The stacks' own factors (every other rule) are untouched, and every Envoy gets
        // the rule's shares in the snapshot.
        assert!(cur.record.stacks.iter().all(|s| s.weight_percent == 100));
        let snap = cur.snapshot();
        assert!(snap
            .stacks
            .iter()
            .all(|s| s.weight_percent == 100 && s.rule.is_empty()));
        assert_eq!(snap.rule_stacks.len(), 2);
        assert!(snap.rule_stacks.iter().all(|s| s.rule == "beta"));
        // A policy edit keeps the rule's shares.
        control
            .apply_policy(
                &RULE_POLICY.replace("\"us\"", "\"eu\""),
                Change::manual("alice", ""),
                0,
            )
            .await
            .unwrap();
        assert_eq!(control.current().unwrap().record.rule_stacks.len(), 2);
        // Abort: green evacuated from beta (its cookie holders move at once), still
        // untouched elsewhere.
        pilot
            .command(
                "r1",
                Command::Abort {
                    actor: "alice".into(),
                },
            )
            .await
            .unwrap();
        let cur = control.current().unwrap();
        let green: Vec<_> = cur
            .record
            .rule_stacks
            .iter()
            .filter(|r| r.stack == "green")
            .collect();
        assert_eq!(green.len(), 1);
        assert_eq!((green[0].weight_percent, green[0].evacuating), (0, true));
        assert!(cur
            .record
            .stacks
            .iter()
            .all(|s| s.weight_percent == 100 && !s.evacuating));
    }

    #[tokio::test]
    async fn a_rollout_scope_must_be_the_policy_or_a_rule_where_both_stacks_have_weight() {
        let (control, pilot) = pilot().await;
        control
            .apply_policy(RULE_POLICY, Change::manual("alice", ""), 0)
            .await
            .unwrap();
        let err = pilot
            .start_rollout(rule_spec("gamma"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gamma") && err.contains("beta, default"),
            "{err}"
        );
        let one_sided = RULE_POLICY.replace(r#"{"stack":"blue","weight":3},"#, "");
        control
            .apply_policy(&one_sided, Change::manual("alice", ""), 0)
            .await
            .unwrap();
        let err = pilot
            .start_rollout(rule_spec("beta"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("stable: blue has no weight in rule beta's route"),
            "{err}"
        );
        assert!(pilot.list().await.unwrap().is_empty(), "nothing created");
        assert!(control.current().unwrap().record.rule_stacks.is_empty());
    }

    fn rollout_step() -> ProposedChange {
        ProposedChange {
            scope: SCOPE_POLICY.into(),
            kind: ChangeKind::PlanStep,
            origin: Origin::Automatic {
                actor: "rollout:r1".into(),
            },
            stacks: vec!["green".into()],
            shift_percent: 5,
            approved_by: None,
            pre_approved: false,
            summary: "green 0% -> 5%".into(),
        }
    }

    #[tokio::test]
    async fn a_policy_apply_or_rollback_is_refused_while_another_change_holds_the_lease() {
        let (control, pilot) = pilot().await;
        let held = pilot.guard.check(&rollout_step(), pilot.now()).unwrap();
        let edited = POLICY.replace("\"us\"", "\"eu\"");
        let err = pilot
            .manual_policy_apply(&edited, Change::manual("bob", ""), 0)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("one_change_at_a_time") && err.contains("rollout:r1"),
            "{err}"
        );
        assert!(err.contains("allowed from"), "says when: {err}");
        let err = pilot
            .manual_policy_rollback(1, Change::manual("bob", ""), 0)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("rollout:r1"), "{err}");
        assert_eq!(control.current_version(), 1, "nothing changed");
        // Once the step is recorded, the apply goes through and gives the lease back.
        pilot
            .guard
            .record(
                &ExecutedChange {
                    permit: held,
                    applied: true,
                },
                pilot.now(),
            )
            .unwrap();
        let out = pilot
            .manual_policy_apply(&edited, Change::manual("bob", ""), 0)
            .await
            .unwrap();
        assert!(out.changed);
        assert!(pilot.guard.holder(pilot.now()).unwrap().is_none());
        // A rollback too; the lease is free again for the next rollout step.
        let out = pilot
            .manual_policy_rollback(1, Change::manual("bob", ""), 0)
            .await
            .unwrap();
        assert!(out.changed);
        assert!(pilot.guard.check(&rollout_step(), pilot.now()).is_ok());
    }

    #[tokio::test]
    async fn a_freeze_refuses_manual_changes_on_its_stack_but_never_an_evacuation() {
        let (control, pilot) = pilot().await;
        let until = pilot.now() + 15 * 60_000;
        let freeze = crate::brain::incident::Freeze {
            stack: "green".into(),
            until_ms: until,
            incident: 4,
            action: "shift 10% from green to blue".into(),
        };
        control
            .store()
            .commit(&crate::store::Batch::new().put(
                "incident/freeze/green",
                serde_json::to_vec(&freeze).unwrap(),
            ))
            .unwrap();
        let weight = |percent| StackOp::SetWeight {
            percent,
            reason: "x".into(),
        };
        let err = pilot
            .manual_stack_op("green", weight(50), Change::manual("bob", ""))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refused by freeze") && err.contains("incident 4"),
            "{err}"
        );
        assert!(
            err.contains(&format!("allowed from {}", crate::brain::clock::utc(until))),
            "{err}"
        );
        assert_eq!(control.current_version(), 1, "nothing changed");
        // Another stack is not frozen; taking green's traffic off is never refused.
        assert!(
            pilot
                .manual_stack_op("blue", weight(50), Change::manual("bob", ""))
                .await
                .unwrap()
                .changed
        );
        for op in [
            StackOp::Evacuate {
                reason: "on fire".into(),
            },
            StackOp::MarkUnhealthy {
                reason: "on fire".into(),
            },
        ] {
            assert!(
                pilot
                    .manual_stack_op("green", op, Change::manual("bob", ""))
                    .await
                    .unwrap()
                    .changed
            );
        }
    }

    #[tokio::test]
    async fn a_fast_path_evacuation_opens_an_incident_awaiting_a_human_for_recovery() {
        use crate::brain::incident::{Action, Phase};
        use crate::health::{FastPathAction, FastPathKind};
        let (control, pilot) = pilot().await;
        // green at 60 before it died; the fast path evacuates it (as the monitor does).
        control
            .stack_op(
                "green",
                StackOp::SetWeight {
                    percent: 60,
                    reason: "canary".into(),
                },
                Change::manual("alice", ""),
            )
            .await
            .unwrap();
        let out = control
            .stack_op(
                "green",
                StackOp::Evacuate {
                    reason: "fast path: http down".into(),
                },
                Change::manual(crate::health::ACTOR, "hard down"),
            )
            .await
            .unwrap();
        let action = FastPathAction {
            at_unix_ms: pilot.now(),
            stack: "green".into(),
            kind: FastPathKind::Evacuated,
            actor: crate::health::ACTOR.into(),
            source: "http".into(),
            reason: "fast path: http down: connection refused".into(),
            evidence: vec!["http: connection refused".into()],
            stranded_rules: vec![],
            version: Some(out.record.version),
        };
        let inc = pilot.record_fast_path(&action).await.unwrap().unwrap();
        assert_eq!(inc.phase, Phase::AwaitingApproval);
        assert_eq!(inc.stack.as_deref(), Some("green"));
        assert_eq!(
            inc.executed,
            vec![Action::Evacuate {
                stack: "green".into(),
                to: vec!["blue".into()]
            }]
        );
        assert_eq!(
            inc.proposal(),
            Some(&Action::Restore {
                stacks: vec!["green".into()]
            })
        );
        // It is what `incidents list` shows; the same report again adds nothing.
        let listed = pilot.incidents(10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, inc.id);
        let again = pilot.record_fast_path(&action).await.unwrap().unwrap();
        assert_eq!(again.executed.len(), 1);
        assert_eq!(pilot.incidents(10).await.unwrap().len(), 1);
        // Nothing moves until a person approves the recovery; then green is back as it
        // was before it died (undrained, factor 60).
        assert!(
            control
                .current()
                .unwrap()
                .record
                .stack("green")
                .unwrap()
                .evacuating
        );
        pilot
            .approve_incident(inc.id, "alice", "fixed")
            .await
            .unwrap();
        let green = control
            .current()
            .unwrap()
            .record
            .stack("green")
            .unwrap()
            .clone();
        assert!(!green.evacuating, "{green:?}");
        assert_eq!(green.weight_percent, 60);
        // A recovery report opens nothing.
        let recovered = FastPathAction {
            kind: FastPathKind::Recovered,
            version: None,
            ..action
        };
        assert!(pilot.record_fast_path(&recovered).await.unwrap().is_none());
    }

    #[test]
    fn manual_shift_is_the_change_of_the_stacks_default_route_share() {
        let stacks = vec![
            crate::model::StackRuntime::new("blue", "us", 1, 0, "t"),
            crate::model::StackRuntime::new("green", "us", 1, 0, "t"),
        ];
        let w = |percent| StackOp::SetWeight {
            percent,
            reason: String::new(),
        };
        // 50/50 → green at factor 0: green's share 50 % → 0 %.
        assert_eq!(manual_shift(POLICY, &stacks, "green", &w(0)), Some(50));
        assert_eq!(manual_shift(POLICY, &stacks, "green", &w(100)), Some(0));
        // Factor 50 against 100: 1/3 of the traffic, a move of 17 points.
        assert_eq!(manual_shift(POLICY, &stacks, "green", &w(50)), Some(17));
        assert_eq!(manual_shift(POLICY, &stacks, "purple", &w(50)), None);
    }

    #[tokio::test]
    async fn a_manual_change_waits_for_no_one_but_is_refused_while_another_holds_the_lease() {
        let (control, pilot) = pilot().await;
        // A rollout step holds the one-change lease.
        let held = pilot
            .guard
            .check(
                &ProposedChange {
                    scope: SCOPE_POLICY.into(),
                    kind: ChangeKind::PlanStep,
                    origin: Origin::Automatic {
                        actor: "rollout:r1".into(),
                    },
                    stacks: vec!["green".into()],
                    shift_percent: 5,
                    approved_by: None,
                    pre_approved: false,
                    summary: "green 0% -> 5%".into(),
                },
                pilot.now(),
            )
            .unwrap();
        let err = pilot
            .manual_stack_op(
                "green",
                StackOp::SetWeight {
                    percent: 0,
                    reason: "x".into(),
                },
                Change::manual("bob", ""),
            )
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("rollout:r1"), "{msg}");
        assert_eq!(control.current_version(), 1, "nothing changed");
        // Getting traffic off a stack is never refused.
        let out = pilot
            .manual_stack_op(
                "green",
                StackOp::Evacuate {
                    reason: "on fire".into(),
                },
                Change::manual("bob", ""),
            )
            .await
            .unwrap();
        assert!(out.changed);
        // Once the step is recorded, manual changes go through (approved by their author:
        // no rate limit for a human).
        pilot
            .guard
            .record(
                &ExecutedChange {
                    permit: held,
                    applied: true,
                },
                pilot.now(),
            )
            .unwrap();
        let out = pilot
            .manual_stack_op(
                "blue",
                StackOp::SetWeight {
                    percent: 10,
                    reason: "x".into(),
                },
                Change::manual("bob", ""),
            )
            .await
            .unwrap();
        assert!(out.changed);
    }
}
