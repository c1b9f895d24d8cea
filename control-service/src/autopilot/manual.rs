//! People's changes through the guardrails: operators' stack operations and policy
//! applies/rollbacks take the one-change lease (queued behind each other), respect
//! freezes, and are recorded against the scope's rate limit.

use super::*;

impl Autopilot {
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
}
