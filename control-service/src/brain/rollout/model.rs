//! The rollout's data: plan, spec, phases, commands, actions, decisions and the record
//! kept per step. Plain serde data; the transitions live in `rollout/step.rs`.

use serde::{Deserialize, Serialize};

use super::gates::{GateVerdict, Gates};
use crate::brain::clock::UnixMs;
use crate::brain::guardrails::{GuardError, Permit, Refusal};
use crate::store::StoreError;

/// The scope meaning "the whole policy" (the stacks' operator factors).
pub const SCOPE_POLICY: &str = "policy";
const MIN: u64 = 60_000;

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStep {
    /// Release share of the scope (1..=100).
    pub share_percent: u32,
    /// Observe at least this long before passing.
    pub min_dwell_ms: u64,
    /// Without a decision by then, the step is inconclusive.
    pub max_dwell_ms: u64,
}

/// The paper's Table 2: 5 % for 30–60 min, 20 % for 2–4 h, 50 % for 4–8 h, then 100 %.
pub fn table2_plan() -> Vec<PlanStep> {
    vec![
        PlanStep {
            share_percent: 5,
            min_dwell_ms: 30 * MIN,
            max_dwell_ms: 60 * MIN,
        },
        PlanStep {
            share_percent: 20,
            min_dwell_ms: 120 * MIN,
            max_dwell_ms: 240 * MIN,
        },
        PlanStep {
            share_percent: 50,
            min_dwell_ms: 240 * MIN,
            max_dwell_ms: 480 * MIN,
        },
        PlanStep {
            share_percent: 100,
            min_dwell_ms: 0,
            max_dwell_ms: 0,
        },
    ]
}

/// A plan from shares as typed (`0,5,20,50,100`; a leading 0 is the baseline and
/// dropped) with one min/max dwell for every step.
pub fn plan_from_shares(shares: &[u32], min_dwell_ms: u64, max_dwell_ms: u64) -> Vec<PlanStep> {
    let skip = usize::from(shares.first() == Some(&0));
    shares[skip..]
        .iter()
        .map(|&share_percent| PlanStep {
            share_percent,
            min_dwell_ms,
            max_dwell_ms,
        })
        .collect()
}

/// What a rollout is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    pub id: String,
    /// The stack being released.
    pub release: String,
    /// The baseline stack serving the rest of the scope.
    pub stable: String,
    /// [`SCOPE_POLICY`] or a rule id.
    pub scope: String,
    pub plan: Vec<PlanStep>,
    /// Warm-up before observing each step: the ramp spreads over it.
    pub warmup_ms: u64,
    /// Largest single move of the ramp.
    pub ramp_step_percent: u32,
    pub gates: Gates,
    /// Rollback on a failed gate without asking (pre-approved by a human).
    pub auto_rollback: bool,
    pub created_by: String,
}

impl RolloutSpec {
    /// Defaults: Table 2, a 5-minute warm-up in moves of at most 5 %, the §12.1 gates,
    /// no automatic rollback.
    pub fn new(id: &str, release: &str, stable: &str, scope: &str) -> Self {
        Self {
            id: id.into(),
            release: release.into(),
            stable: stable.into(),
            scope: scope.into(),
            plan: table2_plan(),
            warmup_ms: 5 * MIN,
            ramp_step_percent: 5,
            gates: Gates::default(),
            auto_rollback: false,
            created_by: String::new(),
        }
    }

    /// Every problem, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !id_ok(&self.id) {
            out.push(format!("id: {:?} must be 1-128 of [A-Za-z0-9-_.]", self.id));
        }
        if self.release.is_empty() {
            out.push("release: empty".into());
        }
        if self.stable.is_empty() {
            out.push("stable: empty".into());
        }
        if self.release == self.stable {
            out.push(format!("stable: same stack as release ({})", self.release));
        }
        if self.scope.is_empty() {
            out.push("scope: empty".into());
        }
        if self.plan.is_empty() {
            out.push("plan: empty".into());
        }
        for (i, s) in self.plan.iter().enumerate() {
            if s.share_percent == 0 || s.share_percent > 100 {
                out.push(format!(
                    "plan[{i}].share_percent: {} not in 1..=100",
                    s.share_percent
                ));
            }
            if s.share_percent < 100 && s.min_dwell_ms > s.max_dwell_ms {
                out.push(format!("plan[{i}]: min dwell above max dwell"));
            }
            if s.share_percent < 100 && s.max_dwell_ms == 0 {
                out.push(format!(
                    "plan[{i}].max_dwell_ms: 0 leaves no time to decide"
                ));
            }
            if s.share_percent == 100 && i + 1 != self.plan.len() {
                out.push(format!("plan[{i}]: 100% must be the last step"));
            }
        }
        if self.plan.last().is_some_and(|s| s.share_percent != 100) {
            out.push("plan: the last step must be 100%".into());
        }
        if self.ramp_step_percent == 0 || self.ramp_step_percent > 100 {
            out.push(format!(
                "ramp_step_percent: {} not in 1..=100",
                self.ramp_step_percent
            ));
        }
        out.extend(self.gates.problems());
        out
    }
}

/// Why a rollout is paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PauseReason {
    /// An operator paused it.
    Human { actor: String },
    /// The step reached its maximum dwell without a decision.
    Inconclusive { detail: String },
    /// A guardrail wants a human approver for the next move.
    NeedsApproval { reason: String },
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Phase {
    Pending,
    /// Ramping to (or settling at) plan step `step`.
    Warming {
        step: usize,
        from_percent: u32,
        started_ms: UnixMs,
        /// When the step's share was reached.
        reached_ms: Option<UnixMs>,
    },
    /// Judging step `step` on the windows since `since_ms`.
    Observing {
        step: usize,
        since_ms: UnixMs,
        deadline_ms: UnixMs,
    },
    Paused {
        reason: PauseReason,
        /// The phase a resume returns to.
        resume: Box<Phase>,
        /// When it paused.
        #[serde(default)]
        paused_ms: UnixMs,
    },
    /// A gate failed; a rollback was proposed (and is retried while `auto_rollback`).
    Halted {
        step: usize,
        reason: String,
    },
    Completed,
    RolledBack,
    Aborted,
    Promoted,
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Warming { .. } => "warming",
            Phase::Observing { .. } => "observing",
            Phase::Paused { .. } => "paused",
            Phase::Halted { .. } => "halted",
            Phase::Completed => "completed",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
            Phase::Promoted => "promoted",
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(
            self,
            Phase::Completed | Phase::RolledBack | Phase::Aborted | Phase::Promoted
        )
    }

    /// The plan step this phase is about.
    pub fn step(&self) -> Option<usize> {
        match self {
            Phase::Warming { step, .. }
            | Phase::Observing { step, .. }
            | Phase::Halted { step, .. } => Some(*step),
            Phase::Paused { resume, .. } => resume.step(),
            _ => None,
        }
    }
}

/// How users move when a share changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveMode {
    /// Sticky users stay where they are (step up, promote).
    Keep,
    /// No new users; sessions on the release finish (a planned step down).
    Drain,
    /// The release's sticky users move at once, cookies re-pointed (rollback).
    Evacuate,
}

/// What the executor is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Set the release's share of the scope; record `permit` once applied.
    SetShare {
        rollout_id: String,
        scope: String,
        release: String,
        stable: String,
        from_percent: u32,
        share_percent: u32,
        mode: MoveMode,
        permit: Permit,
    },
    /// A rollback awaiting a human (`rollback` command).
    ProposeRollback {
        rollout_id: String,
        scope: String,
        release: String,
        stable: String,
        reason: String,
    },
}

/// What happened and why, for the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at_ms: UnixMs,
    pub rollout_id: String,
    /// Phase after the decision.
    pub phase: String,
    pub step: Option<usize>,
    /// Gate verdicts behind it (with sample sizes and confidence), when gates decided.
    pub gates: Vec<GateVerdict>,
    /// The action taken or proposed, in one line.
    pub action: Option<String>,
    pub reason: String,
    pub actor: String,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Passed,
    Failed,
    Inconclusive,
    /// Left by promote or abort.
    Interrupted,
}

/// One step's record, kept in the rollout's state and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub index: usize,
    pub share_percent: u32,
    pub warm_started_ms: UnixMs,
    pub observe_since_ms: Option<UnixMs>,
    pub ended_ms: Option<UnixMs>,
    pub outcome: Option<StepOutcome>,
    /// Latest verdict of every gate, with sample size and confidence.
    pub gates: Vec<GateVerdict>,
    /// Measured release share of the scope's requests while observing.
    pub exposure: Option<f64>,
}

/// Distinct users who reached the release stack over users in the scope, during the
/// rollout (from the affinity cookies issued: `StackWindow::new_users`). Users holding a
/// stable cookie from before the rollout are not counted, so the fraction errs high.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlastRadius {
    pub release_users: u64,
    pub stable_users: u64,
    /// Newest window start counted (windows are counted once).
    pub counted_through_ms: Option<UnixMs>,
}

impl BlastRadius {
    pub fn fraction(&self) -> Option<f64> {
        let all = self.release_users + self.stable_users;
        (all > 0).then(|| self.release_users as f64 / all as f64)
    }
}

/// A move a guardrail held back, kept until it goes through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocked {
    pub guardrail: String,
    pub reason: String,
    pub allowed_at: Option<UnixMs>,
}

/// A rollout as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub spec: RolloutSpec,
    pub phase: Phase,
    /// The release share last handed to the executor.
    pub share_percent: u32,
    pub steps: Vec<StepRecord>,
    pub blast: BlastRadius,
    /// A human approved moves of this step (for guardrails that need one).
    pub approved: Option<(usize, String)>,
    pub blocked: Option<Blocked>,
    pub created_ms: UnixMs,
    pub updated_ms: UnixMs,
}

impl Rollout {
    /// Windows the next tick needs: both stacks' windows starting at or after this
    /// (those the current step observes, and those not yet counted for the blast
    /// radius).
    pub fn windows_since(&self) -> UnixMs {
        let uncounted = self
            .blast
            .counted_through_ms
            .map(|t| t + 1)
            .unwrap_or(self.created_ms);
        let observing = match &self.phase {
            Phase::Observing { since_ms, .. } => Some(*since_ms),
            Phase::Paused { resume, .. } => match resume.as_ref() {
                Phase::Observing { since_ms, .. } => Some(*since_ms),
                _ => None,
            },
            _ => None,
        };
        observing.map_or(uncounted, |s| s.min(uncounted))
    }
}

/// A command from an operator (or the API on one's behalf).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Start {
        actor: String,
    },
    Pause {
        actor: String,
    },
    /// Continue a paused rollout; for a pause that needs approval, this is the approval.
    Resume {
        actor: String,
    },
    /// Jump to 100 % and finish; sticky users stay where they are.
    Promote {
        actor: String,
    },
    /// Back to the stable stack, evacuating the release; ends the rollout.
    Abort {
        actor: String,
    },
    /// Approve the rollback a halt proposed.
    Rollback {
        actor: String,
    },
}

impl Command {
    /// Who gave the command.
    pub fn actor(&self) -> &str {
        match self {
            Command::Start { actor }
            | Command::Pause { actor }
            | Command::Resume { actor }
            | Command::Promote { actor }
            | Command::Abort { actor }
            | Command::Rollback { actor } => actor,
        }
    }
    /// The command's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Start { .. } => "start",
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::Promote { .. } => "promote",
            Command::Abort { .. } => "abort",
            Command::Rollback { .. } => "rollback",
        }
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("invalid rollout: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("rollout {0} not found")]
    NotFound(String),
    #[error("rollout {0} already exists")]
    Exists(String),
    #[error("scope {scope} already has an open rollout ({holder})")]
    ScopeBusy { scope: String, holder: String },
    #[error("cannot {command} a rollout that is {phase}")]
    NotNow {
        command: &'static str,
        phase: &'static str,
    },
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Another writer changed the rollout since it was read; nothing was written.
    #[error("rollout {0} changed concurrently; nothing written")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt rollout state at {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("operator factors: {0}")]
    Factors(&'static str),
}

impl From<GuardError> for RolloutError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::Refused(r) => RolloutError::Refused(r),
            GuardError::Store(s) => RolloutError::Store(s),
            GuardError::Corrupt { key, message } => RolloutError::Corrupt { key, message },
        }
    }
}
