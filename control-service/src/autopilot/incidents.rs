//! The incident side of the executor: every tick, the newest closed telemetry windows
//! go to the [`Detector`], its findings open (or join) incidents, the
//! [`IncidentEngine`] advances them, and the actions a human approved are carried out
//! through the guardrails and [`Control::stack_ops`] (one version per action), with the
//! weights from before the incident kept so that a `Restore` puts them back.
//!
//! It never moves traffic on its own: an action runs only after [`Autopilot::approve_incident`]
//! (or, after a restart, when the engine re-emits an approved action it never saw
//! confirmed). Every decision is appended to the audit log under `incident/<id>`.
//!
//! Topology (which stacks are compared with each other): every stack that is a target of
//! the policy's default route is in group `default`; any other stack is a group of its
//! own (it is compared with its baseline only). A stack's segments are its region, its
//! rules are the ids of the rules that target it. `[autopilot] incident_groups` and
//! `incident_capacity_rps` override group and capacity per stack.
//!
//! Keys owned here: `incident/prior/<id>` (the weights before the incident's first action).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{blocking, Autopilot, AutopilotError};
use crate::brain::audit::{AuditDraft, AuditKind};
use crate::brain::clock::UnixMs;
use crate::brain::detection::{
    DetectContext, Detector, DetectorConfig, Finding, Reason, StackInfo,
};
use crate::brain::events::{AlertTrigger, Event, EventRegistry};
use crate::brain::guardrails::{ChangeKind, ExecutedChange, GuardError, Origin, ProposedChange};
use crate::brain::incident::{
    item_key, triggers_from_findings, Action, Claimed, Context, Decision, Incident, IncidentConfig,
    IncidentEngine, IncidentError, Phase, StackStatus,
};
use crate::brain::series::Series;
use crate::control::{Change, Current, StackOp};
use crate::store::{key_u64, Batch, Condition, Store};

const PRIOR: &str = "incident/prior/";

/// Most closed windows one tick catches up on (after a pause or a restart).
const MAX_CATCH_UP: u64 = 12;

/// Detector and workflow settings, plus topology overrides.
#[derive(Debug, Clone, Default)]
pub struct IncidentSettings {
    pub detector: DetectorConfig,
    pub workflow: IncidentConfig,
    /// Group per stack (default: see the module docs).
    pub groups: BTreeMap<String, String>,
    /// Known capacity per stack (requests/s), for the dependency checks.
    pub capacity_rps: BTreeMap<String, f64>,
}

/// Errors of an incident command.
#[derive(Debug, thiserror::Error)]
pub enum IncidentCommandError {
    #[error(transparent)]
    Incident(#[from] IncidentError),
    #[error(transparent)]
    Autopilot(#[from] AutopilotError),
    /// Approved, but the action could not be carried out (a guardrail refused it, or
    /// the routing change failed): the incident is back awaiting approval.
    #[error("approved, but not carried out: {0}")]
    NotExecuted(String),
}

/// What the detector side remembers between ticks (rebuilt after a restart: baselines
/// come back from the store, streaks from the next windows).
#[derive(Default)]
struct DeskState {
    detector: Option<Detector>,
    /// Start of the next window to observe.
    next_window: Option<UnixMs>,
    /// Findings of the newest observed window: what the workflow judges on until the
    /// next window closes.
    findings: Vec<Finding>,
    rps: BTreeMap<String, f64>,
    peak_rps: BTreeMap<String, f64>,
}

/// Decisions to audit and approved actions to run.
type StepOutput = (Vec<Decision>, Vec<Claimed>);

/// The incident machinery the autopilot owns.
pub(super) struct Desk {
    pub(super) engine: IncidentEngine,
    settings: IncidentSettings,
    state: std::sync::Mutex<DeskState>,
}

impl Desk {
    pub(super) fn new(store: Arc<dyn Store>, settings: IncidentSettings) -> Self {
        Self {
            engine: IncidentEngine::new(store, settings.workflow.clone()),
            settings,
            state: std::sync::Mutex::new(DeskState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The detector's view of the policy's stacks.
    fn topology(&self, current: &Current) -> Vec<StackInfo> {
        let doc: serde_json::Value = serde_json::from_str(&current.policy_json).unwrap_or_default();
        let default_targets: Vec<String> = super::default_targets(&current.policy_json)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        current
            .record
            .stacks
            .iter()
            .map(|s| {
                let rules = doc["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| {
                        r["route"]["targets"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|t| t["stack"].as_str() == Some(&s.name))
                    })
                    .filter_map(|r| r["id"].as_str().map(str::to_string))
                    .collect();
                let group = self
                    .settings
                    .groups
                    .get(&s.name)
                    .cloned()
                    .unwrap_or_else(|| {
                        if default_targets.contains(&s.name) {
                            "default".into()
                        } else {
                            s.name.clone()
                        }
                    });
                StackInfo {
                    name: s.name.clone(),
                    group,
                    segments: if s.region.is_empty() {
                        vec![]
                    } else {
                        vec![s.region.clone()]
                    },
                    rules,
                    capacity_rps: self.settings.capacity_rps.get(&s.name).copied(),
                }
            })
            .collect()
    }

    /// Observe the windows closed since the last call, open incidents from the findings,
    /// tick the workflow. Returns the decisions to audit and the approved actions to run.
    fn step(
        &self,
        now: UnixMs,
        series: &Series,
        store: &dyn Store,
        current: &Current,
        saturation: &BTreeMap<String, f64>,
    ) -> Result<StepOutput, AutopilotError> {
        let internal = |e: &dyn std::fmt::Display| AutopilotError::Internal(e.to_string());
        let topology = self.topology(current);
        let events = EventRegistry::new(store).all().map_err(|e| internal(&e))?;
        let ss = series.settings();
        let window = ss.window_ms.max(1);
        let closed_end = series.align(now.saturating_sub(ss.grace_ms));
        let newest = closed_end.checked_sub(window);
        let mut decisions = Vec::new();
        let mut st = self.lock();
        if st.detector.is_none() {
            st.detector = Some(
                Detector::restore(self.settings.detector.clone(), store)
                    .map_err(|e| internal(&e))?,
            );
        }
        if let Some(newest) = newest {
            let mut start = st.next_window.unwrap_or(newest);
            start = start.max(newest.saturating_sub((MAX_CATCH_UP - 1) * window));
            let mut observed = false;
            while start <= newest {
                let mut ws = Vec::new();
                for s in &topology {
                    let w = series
                        .range(&s.name, start, start + 1)
                        .map_err(|e| internal(&e))?;
                    ws.extend(w);
                }
                let ctx = DetectContext {
                    events: &events,
                    saturation: Some(saturation),
                    topology: &topology,
                };
                let detector = st.detector.as_mut().expect("restored above");
                let findings = detector.observe(&ws, &ctx);
                for t in triggers_from_findings(&findings) {
                    decisions.extend(self.engine.trigger(t, now)?.decisions);
                }
                let secs = window as f64 / 1000.0;
                st.rps.clear();
                for w in &ws {
                    let rps = w.requests as f64 / secs;
                    st.rps.insert(w.stack.clone(), rps);
                    let p = st.peak_rps.entry(w.stack.clone()).or_insert(0.0);
                    *p = p.max(rps);
                }
                st.findings = findings;
                observed = true;
                start += window;
            }
            st.next_window = Some(start);
            if observed {
                if let Some(d) = st.detector.as_mut() {
                    d.flush(store).map_err(|e| internal(&e))?;
                }
            }
        }
        let stacks: Vec<StackStatus> = topology
            .iter()
            .map(|s| {
                let runtime = current.record.stack(&s.name);
                let hard_down = st
                    .findings
                    .iter()
                    .any(|f| f.stack == s.name && f.reasons.contains(&Reason::HardDown));
                StackStatus {
                    name: s.name.clone(),
                    group: s.group.clone(),
                    segments: s.segments.clone(),
                    rules: s.rules.clone(),
                    healthy: runtime.is_some_and(|r| r.healthy && !r.evacuating) && !hard_down,
                    rps: st.rps.get(&s.name).copied().unwrap_or(0.0),
                    peak_rps: st.peak_rps.get(&s.name).copied().unwrap_or(0.0),
                    capacity_rps: s.capacity_rps,
                }
            })
            .collect();
        let out = self.engine.tick(
            now,
            &Context {
                findings: &st.findings,
                stacks: &stacks,
                events: &events,
            },
        )?;
        decisions.extend(out.decisions);
        Ok((decisions, out.actions))
    }
}

impl From<IncidentError> for AutopilotError {
    fn from(e: IncidentError) -> Self {
        AutopilotError::Internal(e.to_string())
    }
}

/// A stack's routing state before an incident's first action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Prior {
    weight_percent: u32,
    draining: bool,
    evacuating: bool,
}

/// The stacks' shares of the default route (percent), with the operator factors and
/// drains of `record` applied.
fn default_shares(current: &Current) -> BTreeMap<String, f64> {
    let mut raw = BTreeMap::new();
    for (name, w) in super::default_targets(&current.policy_json) {
        let w = f64::from(w);
        let eff = match current.record.stack(&name) {
            Some(s) if s.healthy && !s.draining && !s.evacuating => {
                w * f64::from(s.weight_percent) / 100.0
            }
            _ => 0.0,
        };
        raw.insert(name, eff);
    }
    let total: f64 = raw.values().sum();
    raw.into_iter()
        .map(|(k, v)| (k, if total > 0.0 { 100.0 * v / total } else { 0.0 }))
        .collect()
}

/// The stack operations that carry out `action` on `current`.
fn ops_for(
    action: &Action,
    current: &Current,
    prior: &BTreeMap<String, Prior>,
    reason: &str,
) -> Result<Vec<(String, StackOp)>, AutopilotError> {
    let reason = reason.to_string();
    let runtime = |s: &str| {
        current
            .record
            .stack(s)
            .ok_or_else(|| AutopilotError::Invalid(format!("stack {s:?} is not in the policy")))
    };
    let mut ops = Vec::new();
    match action {
        Action::Shift { from, percent, .. } => {
            let r = runtime(from)?;
            let keep = u32::from(100 - (*percent).min(100));
            ops.push((
                from.clone(),
                StackOp::SetWeight {
                    percent: r.weight_percent * keep / 100,
                    reason,
                },
            ));
        }
        Action::Evacuate { stack, .. } => {
            runtime(stack)?;
            ops.push((stack.clone(), StackOp::Evacuate { reason }));
        }
        Action::Restore { stacks } => {
            for s in stacks {
                let r = runtime(s)?;
                let Some(p) = prior.get(s) else { continue };
                if (r.draining || r.evacuating) && !(p.draining || p.evacuating) {
                    ops.push((
                        s.clone(),
                        StackOp::Undrain {
                            reason: reason.clone(),
                        },
                    ));
                }
                if r.weight_percent != p.weight_percent {
                    ops.push((
                        s.clone(),
                        StackOp::SetWeight {
                            percent: p.weight_percent,
                            reason: reason.clone(),
                        },
                    ));
                }
            }
        }
    }
    Ok(ops)
}

/// The audit entry of a workflow decision.
fn decision_draft(d: &Decision) -> AuditDraft {
    let kind = match d.phase {
        Phase::AwaitingApproval if d.action.is_some() => AuditKind::Recommendation,
        Phase::Executing => AuditKind::Approval,
        Phase::Resolved if d.actor != "brain" && d.actor != "executor" => AuditKind::Approval,
        Phase::Rejected => AuditKind::Rejection,
        Phase::Verifying => AuditKind::Execution,
        _ => AuditKind::Note,
    };
    let summary = match &d.action {
        Some(a) if kind != AuditKind::Note => format!("{}: {a}", d.phase.as_str()),
        _ => d.phase.as_str().to_string(),
    };
    let mut draft = AuditDraft::new(
        d.at_ms,
        d.actor.clone(),
        kind,
        format!("incident/{}", d.incident),
        summary,
    )
    .reason(d.note.clone())
    .evidence(format!("incident/{} evidence bundle", d.incident));
    if let Some(c) = d.confidence {
        draft = draft.change(
            serde_json::Value::Null,
            serde_json::json!({ "stack": d.stack, "confidence": c }),
        );
    }
    draft
}

impl Autopilot {
    /// One pass of the incident workflow (called by [`Autopilot::tick`]).
    pub(super) async fn tick_incidents(&self) -> Result<(), AutopilotError> {
        let Some(current) = self.control.current() else {
            return Ok(());
        };
        let now = self.now();
        let desk = self.incidents.clone();
        let series = self.series.clone();
        let store = self.control.store();
        // Figures older than three polls are not fed.
        let every = self.settings.saturation_every.as_millis() as u64;
        let saturation = self.saturation.fresh(now.saturating_sub(3 * every));
        let (decisions, actions) =
            blocking(move || desk.step(now, &series, &*store, &current, &saturation)).await?;
        for d in &decisions {
            self.audit(decision_draft(d)).await;
        }
        for claimed in actions {
            let id = claimed.id;
            tracing::info!(
                incident = id,
                "carrying out an approved action whose executor is gone"
            );
            if let Err(why) = self.execute_incident(claimed).await? {
                tracing::warn!(incident = id, reason = %why, "approved action not carried out");
            }
        }
        Ok(())
    }

    /// Carry out an approved action: guardrails, one routing version (written only while
    /// the incident is still as claimed), the guardrails' record, and the engine told.
    /// Returns the routing version, or why the action was not carried out. A claim lost
    /// to another executor changes nothing here and leaves the incident to that one.
    async fn execute_incident(
        &self,
        claimed: Claimed,
    ) -> Result<Result<u64, String>, AutopilotError> {
        let Claimed {
            id,
            action,
            record: claim,
            stale_since_ms,
        } = claimed;
        let reason = format!("incident {id}: {}", action.describe());
        // Taken over from an executor that died: it may have written the version.
        if let Some(since) = stale_since_ms {
            let recent = self
                .control
                .history(0, 50)
                .await
                .map_err(|e| AutopilotError::Internal(e.to_string()))?;
            if let Some(v) = recent
                .iter()
                .find(|v| v.comment == reason && v.created_unix_ms >= since)
            {
                let version = v.version;
                let note = format!("(version {version}, written by the previous executor)");
                return self.confirm_executed(id, Ok(version), note, &claim).await;
            }
        }
        let Some(current) = self.control.current() else {
            return Err(AutopilotError::Invalid("no policy".into()));
        };
        let engine_store = self.control.store();
        let approver = {
            let desk = self.incidents.clone();
            blocking(move || Ok(desk.engine.get(id)?)).await?
        }
        .and_then(|i| i.approvals.iter().rev().find(|a| a.approved).cloned())
        .map(|a| a.actor)
        .unwrap_or_else(|| "unknown".into());
        // Keep the weights from before the incident's first action.
        let prior: BTreeMap<String, Prior> = current
            .record
            .stacks
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    Prior {
                        weight_percent: s.weight_percent,
                        draining: s.draining,
                        evacuating: s.evacuating,
                    },
                )
            })
            .collect();
        let prior = {
            let store = engine_store.clone();
            blocking(move || {
                let key = format!("{PRIOR}{}", key_u64(id));
                let internal = |e: &dyn std::fmt::Display| AutopilotError::Internal(e.to_string());
                if let Some(b) = store.read(&key).map_err(|e| internal(&e))? {
                    return serde_json::from_slice(&b).map_err(|e| internal(&e));
                }
                let bytes = serde_json::to_vec(&prior).map_err(|e| internal(&e))?;
                match store.commit(&Batch::new().absent(key.clone()).put(key, bytes)) {
                    Ok(()) | Err(crate::store::StoreError::Conflict { .. }) => Ok(prior),
                    Err(e) => Err(internal(&e)),
                }
            })
            .await?
        };
        let before = default_shares(&current);
        let ops = ops_for(&action, &current, &prior, &reason);
        let shift = match &action {
            Action::Shift { from, percent, .. } => {
                before.get(from).copied().unwrap_or(0.0) * f64::from(*percent) / 100.0
            }
            Action::Evacuate { stack, .. } => before.get(stack).copied().unwrap_or(0.0),
            Action::Restore { .. } => before
                .values()
                .map(|v| 100.0 - v)
                .fold(0.0, f64::max)
                .min(100.0),
        };
        let change = ProposedChange {
            scope: "policy".into(),
            kind: if matches!(action, Action::Restore { .. }) {
                ChangeKind::Rollback
            } else {
                ChangeKind::Incident
            },
            origin: Origin::Human {
                actor: approver.clone(),
            },
            stacks: action.stacks(),
            shift_percent: shift.round() as u32,
            approved_by: Some(approver.clone()),
            pre_approved: false,
            summary: reason.clone(),
        };
        let now = self.now();
        let guard = self.guard.clone();
        let permit = blocking(move || match guard.check(&change, now) {
            Ok(p) => Ok(Ok(p)),
            Err(GuardError::Refused(r)) => Ok(Err(r)),
            Err(e) => Err(AutopilotError::Internal(e.to_string())),
        })
        .await?;
        let result: Result<u64, String> = match (permit, ops) {
            (Err(refusal), _) => {
                self.audit(
                    AuditDraft::new(
                        now,
                        "guardrails",
                        AuditKind::Refusal,
                        format!("incident/{id}"),
                        reason.clone(),
                    )
                    .reason(refusal.to_string()),
                )
                .await;
                Err(refusal.to_string())
            }
            (Ok(permit), ops) => {
                let applied = match ops {
                    Ok(ops) if ops.is_empty() => Ok(current.record.version),
                    Ok(ops) => self
                        .control
                        .stack_ops_when(
                            ops,
                            Change {
                                actor: approver.clone(),
                                comment: reason.clone(),
                                origin: AuditKind::Execution,
                            },
                            vec![Condition::Equals(item_key(id), claim.clone())],
                        )
                        .await
                        .map(|o| o.record.version)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                // A claim lost to another executor fails the condition: nothing was
                // written, and `confirm_executed` leaves the incident to that executor.
                let guard = self.guard.clone();
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
                applied
            }
        };
        let note = match &result {
            Ok(v) => format!("(version {v})"),
            Err(e) => format!("failed: {e}"),
        };
        self.confirm_executed(id, result, note, &claim).await
    }

    /// Tell the engine how the claimed action went (unless the claim was lost meanwhile)
    /// and audit its decision.
    async fn confirm_executed(
        &self,
        id: u64,
        result: Result<u64, String>,
        note: String,
        claim: &[u8],
    ) -> Result<Result<u64, String>, AutopilotError> {
        let desk = self.incidents.clone();
        let now = self.now();
        let ok = result.is_ok();
        let claim = claim.to_vec();
        let outcome =
            blocking(move || Ok(desk.engine.executed_as(id, ok, &note, now, Some(&claim)))).await?;
        let outcome = match outcome {
            Ok(o) => o,
            Err(IncidentError::ClaimLost { .. }) => {
                return Ok(Err(format!(
                    "incident {id}: another executor took the action over"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        for d in &outcome.decisions {
            let mut draft = decision_draft(d);
            if let Ok(v) = result {
                draft = draft.version(v);
            }
            self.audit(draft).await;
        }
        Ok(result)
    }

    /// Record a fast-path evacuation (the health checks took a hard-down stack out
    /// without approval) as an incident awaiting a human for recovery, so it is in
    /// `incidents list` with its evidence; the weights from before the evacuation are
    /// kept so that approving the proposed restore puts them back.
    pub async fn record_fast_path(
        &self,
        action: &crate::health::FastPathAction,
    ) -> Result<Option<Incident>, AutopilotError> {
        let (crate::health::FastPathKind::Evacuated, Some(version)) =
            (&action.kind, action.version)
        else {
            return Ok(None);
        };
        let before = self.control.policy_at(version.saturating_sub(1)).await.ok();
        let Some(current) = self.control.current() else {
            return Ok(None);
        };
        let to: Vec<String> = current
            .record
            .stacks
            .iter()
            .filter(|s| s.name != action.stack && s.effective_weight_percent() > 0)
            .map(|s| s.name.clone())
            .collect();
        let prior: Option<BTreeMap<String, Prior>> = before.map(|(record, _)| {
            record
                .stacks
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        Prior {
                            weight_percent: s.weight_percent,
                            draining: s.draining,
                            evacuating: s.evacuating,
                        },
                    )
                })
                .collect()
        });
        let _busy = self.busy.lock().await;
        let desk = self.incidents.clone();
        let store = self.control.store();
        let (stack, summary, now) = (action.stack.clone(), action.reason.clone(), self.now());
        let outcome = blocking(move || {
            let outcome = desk.engine.fast_path(&stack, to, &summary, now)?;
            if let Some(prior) = prior {
                let key = format!("{PRIOR}{}", key_u64(outcome.incident.id));
                let bytes = serde_json::to_vec(&prior)
                    .map_err(|e| AutopilotError::Internal(e.to_string()))?;
                match store.commit(&Batch::new().absent(key.clone()).put(key, bytes)) {
                    Ok(()) | Err(crate::store::StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(AutopilotError::Internal(e.to_string())),
                }
            }
            Ok(outcome)
        })
        .await?;
        for d in &outcome.decisions {
            self.audit(decision_draft(d).version(version)).await;
        }
        Ok(Some(outcome.incident))
    }

    /// Follow the health monitor's fast-path actions until `shutdown`.
    pub fn follow_fast_path(
        self: &Arc<Self>,
        mut actions: tokio::sync::broadcast::Receiver<crate::health::FastPathAction>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let action = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = actions.recv() => a,
                };
                match action {
                    Ok(a) => {
                        if let Err(e) = me.record_fast_path(&a).await {
                            tracing::error!(stack = %a.stack, error = %e, "fast path: incident not recorded");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "fast path actions missed");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }

    /// Approve an incident's proposal and carry it out at once. Refused while a stack
    /// of the action is frozen by another action.
    pub async fn approve_incident(
        &self,
        id: u64,
        actor: &str,
        comment: &str,
    ) -> Result<Incident, IncidentCommandError> {
        let _busy = self.busy.lock().await;
        let desk = self.incidents.clone();
        let (actor_s, comment_s) = (actor.to_string(), comment.to_string());
        let now = self.now();
        let outcome =
            tokio::task::spawn_blocking(move || desk.engine.approve(id, &actor_s, &comment_s, now))
                .await
                .map_err(|e| AutopilotError::Internal(e.to_string()))?;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e @ IncidentError::Frozen { .. }) => {
                self.audit(
                    AuditDraft::new(
                        now,
                        actor,
                        AuditKind::Refusal,
                        format!("incident/{id}"),
                        "approval refused: freeze window",
                    )
                    .reason(e.to_string()),
                )
                .await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        for d in &outcome.decisions {
            self.audit(decision_draft(d)).await;
        }
        if let (Some(action), Some(record)) = (outcome.action, outcome.claim) {
            let claimed = Claimed {
                id,
                action,
                record,
                stale_since_ms: None,
            };
            if let Err(why) = self.execute_incident(claimed).await? {
                return Err(IncidentCommandError::NotExecuted(why));
            }
        }
        Ok(self.incident(id).await?.unwrap_or(outcome.incident))
    }

    /// Reject an incident's proposal (the comment says why).
    pub async fn reject_incident(
        &self,
        id: u64,
        actor: &str,
        comment: &str,
    ) -> Result<Incident, IncidentCommandError> {
        let _busy = self.busy.lock().await;
        let desk = self.incidents.clone();
        let (actor, comment) = (actor.to_string(), comment.to_string());
        let now = self.now();
        let outcome =
            tokio::task::spawn_blocking(move || desk.engine.reject(id, &actor, &comment, now))
                .await
                .map_err(|e| AutopilotError::Internal(e.to_string()))??;
        for d in &outcome.decisions {
            self.audit(decision_draft(d)).await;
        }
        Ok(outcome.incident)
    }

    /// Feed an Alertmanager webhook's alerts to the workflow. Returns the ids of the
    /// incidents they opened or joined.
    pub async fn ingest_alerts(
        &self,
        alerts: Vec<AlertTrigger>,
    ) -> Result<Vec<u64>, IncidentCommandError> {
        let _busy = self.busy.lock().await;
        let desk = self.incidents.clone();
        let now = self.now();
        let outcomes = tokio::task::spawn_blocking(move || desk.engine.ingest_alerts(&alerts, now))
            .await
            .map_err(|e| AutopilotError::Internal(e.to_string()))??;
        let mut ids = Vec::new();
        for o in &outcomes {
            for d in &o.decisions {
                self.audit(decision_draft(d)).await;
            }
            if !ids.contains(&o.incident.id) {
                ids.push(o.incident.id);
            }
        }
        Ok(ids)
    }

    /// One incident.
    pub async fn incident(&self, id: u64) -> Result<Option<Incident>, AutopilotError> {
        let desk = self.incidents.clone();
        blocking(move || Ok(desk.engine.get(id)?)).await
    }

    /// Every incident, newest first (at most `limit`).
    pub async fn incidents(&self, limit: usize) -> Result<Vec<Incident>, AutopilotError> {
        let desk = self.incidents.clone();
        blocking(move || {
            let Some(newest) = desk.engine.newest_id()? else {
                return Ok(vec![]);
            };
            let mut out = Vec::new();
            let mut id = newest;
            while id > 0 && out.len() < limit {
                if let Some(i) = desk.engine.get(id)? {
                    out.push(i);
                }
                id -= 1;
            }
            Ok(out)
        })
        .await
    }

    /// Registered events, by id.
    pub async fn events(&self) -> Result<Vec<Event>, AutopilotError> {
        let store = self.control.store();
        blocking(move || {
            EventRegistry::new(&*store)
                .all()
                .map_err(|e| AutopilotError::Internal(e.to_string()))
        })
        .await
    }
}

impl Autopilot {
    /// Register an event (JSON as `docs/detection.md` describes); audited.
    pub async fn add_event(&self, json: String) -> Result<Event, EventCommandError> {
        let store = self.control.store();
        let event =
            tokio::task::spawn_blocking(move || EventRegistry::new(&*store).add_json(&json))
                .await
                .map_err(|e| AutopilotError::Internal(e.to_string()))??;
        self.audit(
            AuditDraft::new(
                self.now(),
                event.actor.clone(),
                AuditKind::Note,
                format!("event/{}", event.id),
                format!(
                    "event {} registered: {} on {}",
                    event.id,
                    event.kind.as_str(),
                    event.scope.label()
                ),
            )
            .reason(event.description.clone())
            .change(
                serde_json::Value::Null,
                serde_json::to_value(&event).unwrap_or_default(),
            ),
        )
        .await;
        Ok(event)
    }

    /// Remove an event; `false` when there was none with that id.
    pub async fn remove_event(&self, id: &str, actor: &str) -> Result<bool, EventCommandError> {
        let store = self.control.store();
        let key = id.to_string();
        let removed = tokio::task::spawn_blocking(move || EventRegistry::new(&*store).remove(&key))
            .await
            .map_err(|e| AutopilotError::Internal(e.to_string()))??;
        if removed {
            self.audit(AuditDraft::new(
                self.now(),
                actor,
                AuditKind::Note,
                format!("event/{id}"),
                format!("event {id} removed"),
            ))
            .await;
        }
        Ok(removed)
    }
}

/// Errors of an event command.
#[derive(Debug, thiserror::Error)]
pub enum EventCommandError {
    #[error(transparent)]
    Event(#[from] crate::brain::events::EventError),
    #[error(transparent)]
    Autopilot(#[from] AutopilotError),
}

#[cfg(test)]
mod tests;
