//! `switchyard.v1.Rollouts`: SLO-gated rollouts, started and steered by people.

use super::*;

/// `switchyard.v1.Rollouts`.
pub struct RolloutsService {
    autopilot: Arc<crate::autopilot::Autopilot>,
}

impl RolloutsService {
    pub fn new(autopilot: Arc<crate::autopilot::Autopilot>) -> Self {
        Self { autopilot }
    }
}

impl From<crate::autopilot::AutopilotError> for Status {
    fn from(e: crate::autopilot::AutopilotError) -> Self {
        use crate::autopilot::AutopilotError as A;
        use crate::brain::rollout::RolloutError as R;
        if e.is_unavailable() && !matches!(e, A::Control(_)) {
            return Status::unavailable(format!("nothing was changed: {e}"));
        }
        match e {
            A::Control(c) => c.into(),
            A::Invalid(m) => Status::invalid_argument(m),
            A::Internal(m) => Status::internal(m),
            A::Rollout(r) => match r {
                R::Invalid(_) => Status::invalid_argument(r.to_string()),
                R::NotFound(_) => Status::not_found(r.to_string()),
                R::Exists(_) | R::ScopeBusy { .. } | R::NotNow { .. } | R::Factors(_) => {
                    Status::failed_precondition(r.to_string())
                }
                R::Refused(_) => Status::resource_exhausted(r.to_string()),
                R::Conflict(_) => Status::aborted(r.to_string()),
                other => Status::internal(other.to_string()),
            },
        }
    }
}

impl RolloutsService {
    /// Resuming a pause that waits for a human approver is that approval: never by the
    /// rollout's own creator.
    async fn check_approval(&self, who: Option<&Identity>, id: &str) -> Result<(), Status> {
        use crate::brain::rollout::{PauseReason, Phase};
        if let Some(r) = self.autopilot.get(id).await? {
            if let Phase::Paused {
                reason: PauseReason::NeedsApproval { .. },
                ..
            } = r.phase
            {
                crate::auth::may_decide(who, &r.spec.created_by)
                    .map_err(Status::permission_denied)?;
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl v1::rollouts_server::Rollouts for RolloutsService {
    async fn start(
        &self,
        request: Request<v1::StartRolloutRequest>,
    ) -> Result<Response<v1::RolloutStatus>, Status> {
        use crate::brain::rollout::{plan_from_shares, RolloutSpec};
        let who = identity(&request);
        let r = request.into_inner();
        let now = self.autopilot.now();
        let id = if r.id.is_empty() {
            format!("{}-{}", r.release, now / 1000)
        } else {
            r.id
        };
        let scope = if r.scope.is_empty() {
            crate::brain::rollout::SCOPE_POLICY.to_string()
        } else {
            r.scope
        };
        let mut spec = RolloutSpec::new(&id, &r.release, &r.stable, &scope);
        if !r.plan.is_empty() {
            const MIN: u64 = 60_000;
            let min = if r.min_dwell_ms > 0 {
                r.min_dwell_ms
            } else {
                10 * MIN
            };
            let max = if r.max_dwell_ms > 0 {
                r.max_dwell_ms
            } else {
                (6 * min).max(min)
            };
            spec.plan = plan_from_shares(&r.plan, min, max);
        } else if r.min_dwell_ms > 0 || r.max_dwell_ms > 0 {
            for step in &mut spec.plan {
                if r.min_dwell_ms > 0 {
                    step.min_dwell_ms = r.min_dwell_ms;
                }
                if r.max_dwell_ms > 0 {
                    step.max_dwell_ms = r.max_dwell_ms;
                }
            }
        }
        if r.warmup_ms > 0 {
            spec.warmup_ms = r.warmup_ms;
        }
        spec.auto_rollback = r.auto_rollback;
        spec.created_by = crate::auth::actor(who.as_ref(), r.actor);
        if r.max_error_rate > 0.0 {
            spec.gates.max_error_rate = Some(r.max_error_rate);
        }
        if r.latency_budget_ms > 0.0 {
            spec.gates.latency_budget_ms = Some(r.latency_budget_ms);
        }
        if r.skip_kpi_gates {
            spec.gates.kpis.clear();
        } else {
            spec.gates.kpis = crate::autopilot::kpi_gates(&self.autopilot);
        }
        let rollout = self.autopilot.start_rollout(spec).await?;
        Ok(Response::new(proto::rollout_status(&rollout)))
    }

    async fn get(
        &self,
        request: Request<v1::GetRolloutRequest>,
    ) -> Result<Response<v1::RolloutStatus>, Status> {
        let id = request.into_inner().id;
        match self.autopilot.get(&id).await? {
            Some(r) => Ok(Response::new(proto::rollout_status(&r))),
            None => Err(Status::not_found(format!("rollout {id} not found"))),
        }
    }

    async fn list(
        &self,
        _: Request<v1::ListRolloutsRequest>,
    ) -> Result<Response<v1::ListRolloutsResponse>, Status> {
        let mut all = self.autopilot.list().await?;
        all.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        Ok(Response::new(v1::ListRolloutsResponse {
            rollouts: all.iter().map(proto::rollout_status).collect(),
        }))
    }

    async fn command(
        &self,
        request: Request<v1::RolloutCommandRequest>,
    ) -> Result<Response<v1::RolloutStatus>, Status> {
        use crate::brain::rollout::Command;
        let who = identity(&request);
        let r = request.into_inner();
        if r.command == "resume" {
            self.check_approval(who.as_ref(), &r.id).await?;
        }
        let actor = crate::auth::actor(who.as_ref(), r.actor);
        let cmd = match r.command.as_str() {
            "pause" => Command::Pause { actor },
            "resume" => Command::Resume { actor },
            "promote" => Command::Promote { actor },
            "abort" => Command::Abort { actor },
            "rollback" => Command::Rollback { actor },
            other => {
                return Err(Status::invalid_argument(format!(
                    "command: {other:?} is not one of pause, resume, promote, abort, rollback"
                )))
            }
        };
        let rollout = self.autopilot.command(&r.id, cmd).await?;
        Ok(Response::new(proto::rollout_status(&rollout)))
    }
}
