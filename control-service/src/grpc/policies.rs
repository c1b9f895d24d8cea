//! `switchyard.v1.Policies`: apply, validate, history and rollback of policies.

use super::*;

/// `switchyard.v1.Policies`.
pub struct PoliciesService {
    control: Arc<Control>,
    autopilot: Option<Arc<crate::autopilot::Autopilot>>,
}

impl PoliciesService {
    pub fn new(control: Arc<Control>) -> Self {
        Self {
            control,
            autopilot: None,
        }
    }

    /// Applies and rollbacks take the brain's one-change lease.
    pub fn with_autopilot(mut self, autopilot: Arc<crate::autopilot::Autopilot>) -> Self {
        self.autopilot = Some(autopilot);
        self
    }
}

#[tonic::async_trait]
impl v1::policies_server::Policies for PoliciesService {
    async fn validate(
        &self,
        request: Request<v1::ValidatePolicyRequest>,
    ) -> Result<Response<v1::ValidatePolicyResponse>, Status> {
        let r = request.into_inner();
        let accepted = match self.control.validate(&r.policy_json) {
            Ok(a) => a,
            Err(ControlError::InvalidPolicy(issues)) if r.full_report => {
                return Ok(Response::new(v1::ValidatePolicyResponse {
                    valid: false,
                    errors: proto::field_issues(&issues),
                    ..Default::default()
                }));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(v1::ValidatePolicyResponse {
            warnings: proto::field_issues(&accepted.warnings),
            stacks: accepted.stacks.into_iter().map(|s| s.name).collect(),
            valid: true,
            errors: Vec::new(),
        }))
    }

    async fn apply(
        &self,
        request: Request<v1::ApplyPolicyRequest>,
    ) -> Result<Response<v1::ChangeResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        let change = Change::manual(crate::auth::actor(who.as_ref(), r.actor), r.comment);
        let outcome = match &self.autopilot {
            Some(pilot) => {
                pilot
                    .manual_policy_apply(&r.policy_json, change, r.expected_version)
                    .await?
            }
            None => {
                self.control
                    .apply_policy(&r.policy_json, change, r.expected_version)
                    .await?
            }
        };
        Ok(Response::new(change_response(outcome)))
    }

    async fn get(
        &self,
        request: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::PolicyAtVersion>, Status> {
        let (record, policy_json) = self.control.policy_at(request.into_inner().version).await?;
        Ok(Response::new(v1::PolicyAtVersion {
            info: Some(proto::version_info(&record)),
            policy_json,
        }))
    }

    async fn history(
        &self,
        request: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit as usize {
            0 => DEFAULT_HISTORY,
            n => n.min(MAX_HISTORY),
        };
        let records = self.control.history(r.before_version, limit).await?;
        Ok(Response::new(v1::HistoryResponse {
            versions: records.iter().map(proto::version_info).collect(),
            current_version: self.control.current_version(),
        }))
    }

    async fn rollback(
        &self,
        request: Request<v1::RollbackRequest>,
    ) -> Result<Response<v1::ChangeResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        let change = Change::manual(crate::auth::actor(who.as_ref(), r.actor), r.comment);
        let outcome = match &self.autopilot {
            Some(pilot) => {
                pilot
                    .manual_policy_rollback(r.to_version, change, r.expected_version)
                    .await?
            }
            None => {
                self.control
                    .rollback(r.to_version, change, r.expected_version)
                    .await?
            }
        };
        Ok(Response::new(change_response(outcome)))
    }
}
