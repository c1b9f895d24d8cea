//! The incident workflow's data: phases, triggers, actions, evidence, the persisted
//! incident, its decisions and configuration. The engine is in the parent module.

use serde::{Deserialize, Serialize};

use super::super::clock::UnixMs;
use super::super::detection::{Finding, Reason, Severity};
use super::super::events::{AlertStatus, AlertTrigger, Event, EventKind};
use crate::store::StoreError;

/// Where an incident is in the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Validating,
    Correlating,
    Localising,
    CheckingDependencies,
    Scoring,
    AwaitingApproval,
    Executing,
    Verifying,
    Resolved,
    Rejected,
    Dismissed,
}

impl Phase {
    pub fn is_open(self) -> bool {
        !matches!(self, Phase::Resolved | Phase::Rejected | Phase::Dismissed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Validating => "validating",
            Phase::Correlating => "correlating",
            Phase::Localising => "localising",
            Phase::CheckingDependencies => "checking_dependencies",
            Phase::Scoring => "scoring",
            Phase::AwaitingApproval => "awaiting_approval",
            Phase::Executing => "executing",
            Phase::Verifying => "verifying",
            Phase::Resolved => "resolved",
            Phase::Rejected => "rejected",
            Phase::Dismissed => "dismissed",
        }
    }
}

/// Who raised a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerSource {
    Detector,
    HealthCheck,
    Alertmanager,
}

/// A reason to open (or add to) an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub source: TriggerSource,
    pub stack: Option<String>,
    /// Dedup scope: the stack when known, else e.g. `group:web`, `checkout`, `all`.
    pub scope: String,
    pub signal: String,
    pub summary: String,
    pub at_ms: UnixMs,
    /// Alertmanager's fingerprint, to match its `resolved` notification.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

impl Trigger {
    pub fn from_finding(f: &Finding) -> Self {
        let stack = (!f.stack.starts_with("group:")).then(|| f.stack.clone());
        Self {
            source: TriggerSource::Detector,
            scope: f.stack.clone(),
            stack,
            signal: f.signal.key(),
            summary: format!(
                "{} {} {:?}: observed {:.4}, baseline {}, reasons {:?}",
                f.stack,
                f.signal,
                f.severity,
                f.observed,
                f.baseline.map_or("none".into(), |b| format!("{b:.4}")),
                f.reasons
            ),
            at_ms: f.at_ms,
            fingerprint: None,
        }
    }

    /// A firing alert as a trigger (`None` for a resolved one).
    pub fn from_alert(a: &AlertTrigger) -> Option<Self> {
        (a.status == AlertStatus::Firing).then(|| Self {
            source: TriggerSource::Alertmanager,
            stack: a.stack.clone(),
            scope: a.stack.clone().unwrap_or_else(|| a.scope.clone()),
            signal: a.name.clone(),
            summary: a.summary.clone(),
            at_ms: a.starts_at_ms,
            fingerprint: Some(a.fingerprint.clone()),
        })
    }

    /// A failing health check of a stack.
    pub fn health_check(stack: &str, check: &str, summary: &str, at_ms: UnixMs) -> Self {
        Self {
            source: TriggerSource::HealthCheck,
            stack: Some(stack.into()),
            scope: stack.into(),
            signal: format!("health:{check}"),
            summary: summary.into(),
            at_ms,
            fingerprint: None,
        }
    }
}

/// The findings worth an incident: confirmed ones, and warnings from the leading
/// indicators (trend, saturation) so that the workflow can recommend before the breach.
pub fn triggers_from_findings(findings: &[Finding]) -> Vec<Trigger> {
    findings
        .iter()
        .filter(|f| !f.stale && f.worth_an_incident())
        .map(Trigger::from_finding)
        .collect()
}

/// A routing change the executor can apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// Move `percent` of `from`'s traffic in `scope` to `to` (split by headroom).
    Shift {
        scope: String,
        from: String,
        to: Vec<String>,
        percent: u8,
    },
    /// Move all of `stack`'s traffic, sticky users included, to `to`.
    Evacuate { stack: String, to: Vec<String> },
    /// Put back the weights from before this incident's actions (a rollback).
    Restore { stacks: Vec<String> },
}

impl Action {
    /// Stacks whose share changes.
    pub fn stacks(&self) -> Vec<String> {
        match self {
            Action::Shift { from, to, .. } => std::iter::once(from.clone())
                .chain(to.iter().cloned())
                .collect(),
            Action::Evacuate { stack, to } => std::iter::once(stack.clone())
                .chain(to.iter().cloned())
                .collect(),
            Action::Restore { stacks } => stacks.clone(),
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Action::Shift {
                scope,
                from,
                to,
                percent,
            } => {
                format!(
                    "shift {percent}% of {scope} traffic from {from} to {}",
                    to.join("+")
                )
            }
            Action::Evacuate { stack, to } => format!("evacuate {stack} to {}", to.join("+")),
            Action::Restore { stacks } => format!(
                "restore the weights of {} from before the incident",
                stacks.join("+")
            ),
        }
    }
}

/// A stack as the dependency checks see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackStatus {
    pub name: String,
    /// Stacks serving the same traffic; traffic only moves within a group (residency
    /// and segment rules are expressed by grouping).
    #[serde(default = "default_group")]
    pub group: String,
    /// Segments it serves (e.g. its region): an event scoped to one of them (scope
    /// `segment:eu`) applies to the stack, as in the detector's [`StackInfo`].
    ///
    /// [`StackInfo`]: super::super::detection::StackInfo
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// Ids of the rules that target it (for events scoped to a rule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// Health checks pass and breakers are closed.
    pub healthy: bool,
    /// Requests per second it carries now.
    pub rps: f64,
    /// The most it carried recently (e.g. the peak window of the last week).
    pub peak_rps: f64,
    /// Known capacity, when configured; otherwise the recent peak is the limit.
    #[serde(default)]
    pub capacity_rps: Option<f64>,
}

fn default_group() -> String {
    "default".into()
}

/// What the engine reads on each tick.
#[derive(Debug, Default, Clone, Copy)]
pub struct Context<'a> {
    /// The detector's findings of the latest window.
    pub findings: &'a [Finding],
    pub stacks: &'a [StackStatus],
    pub events: &'a [Event],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalEvidence {
    pub stack: String,
    pub signal: String,
    pub severity: Severity,
    pub observed: f64,
    pub baseline: Option<f64>,
    pub score: f64,
    pub cross_stack_z: Option<f64>,
    pub localised: bool,
    pub reasons: Vec<Reason>,
    pub lead_time_ms: Option<u64>,
    pub series: Vec<(UnixMs, f64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEvidence {
    pub id: String,
    pub kind: EventKind,
    pub relation: String,
    pub suspect: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyCheck {
    pub stack: String,
    pub healthy: bool,
    pub current_rps: f64,
    pub projected_rps: f64,
    pub limit_rps: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    pub action: Option<Action>,
    pub why_not: String,
}

/// Why the workflow proposes what it proposes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub signals: Vec<SignalEvidence>,
    pub events: Vec<EventEvidence>,
    /// The stack the problem is localised to, if any.
    pub delta_stack: Option<String>,
    pub localisation: String,
    pub dependencies: Vec<DependencyCheck>,
    pub proposed: Option<Action>,
    pub expected_effect: String,
    pub alternatives: Vec<Alternative>,
    pub confidence: f64,
    /// What moved the confidence, and by how much.
    pub factors: Vec<(String, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: UnixMs,
    pub from: Option<Phase>,
    pub to: Phase,
    pub actor: String,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub at_ms: UnixMs,
    pub actor: String,
    pub comment: String,
    pub approved: bool,
    pub action: Option<Action>,
}

/// One incident, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    pub scope: String,
    pub stack: Option<String>,
    pub signal: String,
    pub phase: Phase,
    pub opened_ms: UnixMs,
    pub updated_ms: UnixMs,
    /// The first triggers (at most `max_triggers`), and how many arrived in all.
    pub triggers: Vec<Trigger>,
    pub trigger_count: u32,
    pub recheck_at_ms: Option<UnixMs>,
    pub evidence: Option<Evidence>,
    /// Actions executed, in order.
    pub executed: Vec<Action>,
    pub verify_until_ms: Option<UnixMs>,
    /// Proposals made so far (1 for the first).
    pub attempt: u32,
    pub approvals: Vec<Approval>,
    /// Alertmanager fingerprints reported resolved.
    pub resolved_alerts: Vec<String>,
    pub history: Vec<Transition>,
    /// While executing: when the approved action was claimed for execution (by the
    /// approval, or by a leader taking over a claim older than `claim_ms`). Whoever
    /// holds the claim writes the routing version only if the incident is still
    /// exactly as claimed, so an action is carried out once however many replicas
    /// see it approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_ms: Option<UnixMs>,
}

impl Incident {
    pub fn proposal(&self) -> Option<&Action> {
        self.evidence.as_ref()?.proposed.as_ref()
    }
    /// Once scored.
    pub fn confidence(&self) -> Option<f64> {
        self.evidence
            .as_ref()
            .filter(|e| !e.factors.is_empty())
            .map(|e| e.confidence)
    }
}

/// What the audit log records of a transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at_ms: UnixMs,
    pub incident: u64,
    pub phase: Phase,
    pub stack: Option<String>,
    pub action: Option<String>,
    pub confidence: Option<f64>,
    pub actor: String,
    pub note: String,
}

/// A stack's freeze after an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub stack: String,
    pub until_ms: UnixMs,
    pub incident: u64,
    pub action: String,
}

/// Workflow tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IncidentConfig {
    /// Persistence validation: re-check this long after the first trigger.
    pub validate_ms: u64,
    /// Post-action validation: judge recovery this long after execution.
    pub verify_ms: u64,
    /// No other action on the touched stacks for this long after an action.
    pub freeze_ms: u64,
    /// Share of the delta stack's traffic a first (non hard-down) proposal moves.
    pub shift_percent: u8,
    /// A deployment this long before the incident is correlated.
    pub deploy_lookback_ms: u64,
    /// Proposals before the workflow stops proposing and leaves it to a human.
    pub max_attempts: u32,
    pub max_triggers: usize,
    /// An approved action whose execution was claimed this long ago and is still not
    /// confirmed (its executor died between the approval and the routing version) is
    /// claimed again by the next tick and carried out, unless its routing version is
    /// already in the history.
    pub claim_ms: u64,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            validate_ms: 3 * 60_000,
            verify_ms: 5 * 60_000,
            freeze_ms: 15 * 60_000,
            shift_percent: 50,
            deploy_lookback_ms: 30 * 60_000,
            max_attempts: 3,
            max_triggers: 20,
            claim_ms: 30_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error("incident {0} not found")]
    NotFound(u64),
    #[error("incident {id} is {phase}, not {want}", phase = .phase.as_str(), want = .want.as_str())]
    WrongPhase { id: u64, phase: Phase, want: Phase },
    #[error("stack {stack} is frozen until {until_ms} (after incident {incident}'s action); no other action before then")]
    Frozen {
        stack: String,
        until_ms: UnixMs,
        incident: u64,
    },
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("incident {id}: its action was claimed by another executor since")]
    ClaimLost { id: u64 },
    #[error("corrupt incident record {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result of an operation on one incident.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub incident: Incident,
    pub decisions: Vec<Decision>,
    /// An action to execute now (after an approval).
    pub action: Option<Action>,
    /// The incident record as claimed for executing `action` (see [`Claimed::record`]).
    pub claim: Option<Vec<u8>>,
}

/// An approved action claimed for execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: u64,
    pub action: Action,
    /// The incident record's bytes as claimed: the routing version is written only if
    /// the record still holds them (`Condition::Equals` on [`item_key`]).
    ///
    /// [`item_key`]: super::item_key
    pub record: Vec<u8>,
    /// Taken over from a stale claim made then: its executor may have written the
    /// routing version before it died (look in the history before carrying it out).
    pub stale_since_ms: Option<UnixMs>,
}

/// Result of a tick.
#[derive(Debug, Clone, Default)]
pub struct TickOutput {
    pub decisions: Vec<Decision>,
    /// Approved actions not yet confirmed by the executor whose claim went stale,
    /// claimed anew by this tick.
    pub actions: Vec<Claimed>,
}
