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

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::clock::UnixMs;
use super::guardrails::{
    ChangeKind, GuardError, Guardrail, Guardrails, Origin, Permit, ProposedChange, Refusal,
};
use super::signals::StackWindow;
use super::stats::Verdict;
use crate::store::{Batch, Store, StoreError};
pub use gates::{CountBy, GateVerdict, Gates, KpiGate};

/// The scope meaning "the whole policy" (the stacks' operator factors).
pub const SCOPE_POLICY: &str = "policy";
const STATE_PREFIX: &str = "rollout/r/";
const SCOPE_PREFIX: &str = "rollout/scope/";
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
    fn actor(&self) -> &str {
        match self {
            Command::Start { actor }
            | Command::Pause { actor }
            | Command::Resume { actor }
            | Command::Promote { actor }
            | Command::Abort { actor }
            | Command::Rollback { actor } => actor,
        }
    }
    fn name(&self) -> &'static str {
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

/// Operator weight factors (0..=100) of the release and stable stacks that give the
/// release a `share_percent` of the scope, given their policy weights, and the share
/// they actually give (factors are whole numbers).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Factors {
    pub release: u32,
    pub stable: u32,
    pub share_percent: f64,
}

/// The factors closest to `share_percent` for policy weights `release_weight` and
/// `stable_weight`; among equally close ones, the largest (the stacks' other scopes keep
/// as much weight as possible).
pub fn operator_factors(
    share_percent: u32,
    release_weight: u32,
    stable_weight: u32,
) -> Result<Factors, RolloutError> {
    let target = f64::from(share_percent.min(100));
    if share_percent > 0 && release_weight == 0 {
        return Err(RolloutError::Factors("the release has policy weight 0"));
    }
    if share_percent < 100 && stable_weight == 0 {
        return Err(RolloutError::Factors(
            "the stable stack has policy weight 0",
        ));
    }
    if share_percent == 0 {
        return Ok(Factors {
            release: 0,
            stable: 100,
            share_percent: 0.0,
        });
    }
    if share_percent >= 100 {
        return Ok(Factors {
            release: 100,
            stable: 0,
            share_percent: 100.0,
        });
    }
    let (wr, ws) = (f64::from(release_weight), f64::from(stable_weight));
    let mut best = (
        f64::INFINITY,
        0u32,
        Factors {
            release: 0,
            stable: 0,
            share_percent: 0.0,
        },
    );
    for fr in 1..=100u32 {
        for fs in 1..=100u32 {
            let share = 100.0 * wr * f64::from(fr) / (wr * f64::from(fr) + ws * f64::from(fs));
            let err = (share - target).abs();
            let size = fr.max(fs) * 1_000 + fr + fs;
            if err < best.0 - 1e-12 || ((err - best.0).abs() <= 1e-12 && size > best.1) {
                best = (
                    err,
                    size,
                    Factors {
                        release: fr,
                        stable: fs,
                        share_percent: share,
                    },
                );
            }
        }
    }
    Ok(best.2)
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

/// One command or tick in progress: the rollout being changed and what it produced.
struct Run<'a> {
    engine: &'a RolloutEngine,
    r: Rollout,
    now: UnixMs,
    actions: Vec<Action>,
    decisions: Vec<Decision>,
    permits: Vec<Permit>,
}

impl<'a> Run<'a> {
    fn new(engine: &'a RolloutEngine, r: Rollout, now: UnixMs) -> Self {
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

    fn decide(&mut self, actor: &str, action: Option<String>, reason: String) {
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
    fn permit(
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

    fn set_share(
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

    fn begin_step(&mut self, step: usize, actor: &str) -> Result<(), RolloutError> {
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
        self.decide(actor, None, format!("step {step}: warming up to {share}%"));
        self.advance(&[])
    }

    fn end_step(&mut self, outcome: StepOutcome) {
        if let Some(s) = self.r.steps.last_mut() {
            if s.outcome.is_none() {
                s.outcome = Some(outcome);
                s.ended_ms = Some(self.now);
            }
        }
    }

    /// Roll back to 0 %, evacuating the release; `human`: on a person's command.
    fn rollback(
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

    fn count_users(&mut self, windows: &[StackWindow]) {
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
    fn advance(&mut self, windows: &[StackWindow]) -> Result<(), RolloutError> {
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
                        format!("step {step}: ramp to {target}%"),
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
            format!("step {step}: warm at {target}%, observing"),
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
                let reason = format!("step {step}: gate failed: {}", failed.join(", "));
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
                    format!("step {step}: all gates passed"),
                    verdicts,
                );
                self.begin_step(step + 1, &actor)?;
            }
            _ if self.now >= deadline => {
                let detail = if release_requests == 0 {
                    format!("step {step}: no release traffic within the maximum dwell")
                } else {
                    let open: Vec<&str> = verdicts
                        .iter()
                        .filter(|g| g.blocking && g.verdict != Verdict::Pass)
                        .map(|g| g.gate.as_str())
                        .collect();
                    format!(
                        "step {step}: no decision within the maximum dwell (undecided: {})",
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
    fn commit(mut self, snap: &Snapshot) -> Result<Outcome, RolloutError> {
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

    fn into_outcome(self) -> Outcome {
        Outcome {
            rollout: self.r,
            actions: self.actions,
            decisions: self.decisions,
        }
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
