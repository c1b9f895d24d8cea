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
mod manual;
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

impl AutopilotError {
    /// The store could not take the change now (etcd unreachable or without quorum, or
    /// this replica was fenced off as a former leader): the edges answer UNAVAILABLE.
    /// Errors the executor flattened to text keep the store error's display prefix.
    pub fn is_unavailable(&self) -> bool {
        use crate::brain::rollout::RolloutError as R;
        match self {
            AutopilotError::Control(ControlError::Unavailable(_)) => true,
            AutopilotError::Rollout(R::Store(e)) => e.is_unavailable(),
            AutopilotError::Internal(m) => m.starts_with("store unavailable: "),
            _ => false,
        }
    }
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
mod tests;
