//! `switchyard.v1.Incidents`: the ITR workflow's incidents, approved or rejected.

use super::*;

/// `switchyard.v1.Incidents`.
pub struct IncidentsService {
    autopilot: Arc<crate::autopilot::Autopilot>,
}

impl IncidentsService {
    pub fn new(autopilot: Arc<crate::autopilot::Autopilot>) -> Self {
        Self { autopilot }
    }
}

impl From<crate::autopilot::IncidentCommandError> for Status {
    fn from(e: crate::autopilot::IncidentCommandError) -> Self {
        use crate::autopilot::IncidentCommandError as C;
        use crate::brain::incident::IncidentError as I;
        match e {
            C::Autopilot(a) => a.into(),
            C::NotExecuted(m) => {
                Status::failed_precondition(format!("approved, but not carried out: {m}"))
            }
            C::Incident(i) => match i {
                I::NotFound(_) => Status::not_found(i.to_string()),
                I::WrongPhase { .. } | I::Frozen { .. } => {
                    Status::failed_precondition(i.to_string())
                }
                I::Invalid(_) => Status::invalid_argument(i.to_string()),
                I::Store(crate::store::StoreError::Conflict { .. }) => {
                    Status::aborted(i.to_string())
                }
                other => Status::internal(other.to_string()),
            },
        }
    }
}

impl IncidentsService {
    /// An approver never decides on a proposal they made: the proposer is whoever moved
    /// the incident to awaiting approval (the brain, for every proposal today).
    async fn check_not_own(&self, who: Option<&Identity>, id: u64) -> Result<(), Status> {
        use crate::brain::incident::Phase;
        if let Some(i) = self.autopilot.incident(id).await? {
            let proposer = i
                .history
                .iter()
                .rev()
                .find(|t| t.to == Phase::AwaitingApproval)
                .map(|t| t.actor.as_str())
                .unwrap_or_default();
            crate::auth::may_decide(who, proposer).map_err(Status::permission_denied)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl v1::incidents_server::Incidents for IncidentsService {
    async fn list(
        &self,
        request: Request<v1::ListIncidentsRequest>,
    ) -> Result<Response<v1::ListIncidentsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 50,
            n => n.min(1000) as usize,
        };
        let all = self.autopilot.incidents(limit).await?;
        Ok(Response::new(v1::ListIncidentsResponse {
            incidents: all.iter().map(proto::incident_summary).collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<v1::GetIncidentRequest>,
    ) -> Result<Response<v1::IncidentDetail>, Status> {
        let id = request.into_inner().id;
        match self.autopilot.incident(id).await? {
            Some(i) => Ok(Response::new(proto::incident_detail(&i))),
            None => Err(Status::not_found(format!("incident {id} not found"))),
        }
    }

    async fn approve(
        &self,
        request: Request<v1::IncidentDecisionRequest>,
    ) -> Result<Response<v1::IncidentDetail>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        self.check_not_own(who.as_ref(), r.id).await?;
        let actor = crate::auth::actor(who.as_ref(), r.actor);
        let i = self
            .autopilot
            .approve_incident(r.id, &actor, &r.comment)
            .await?;
        Ok(Response::new(proto::incident_detail(&i)))
    }

    async fn reject(
        &self,
        request: Request<v1::IncidentDecisionRequest>,
    ) -> Result<Response<v1::IncidentDetail>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        self.check_not_own(who.as_ref(), r.id).await?;
        let actor = crate::auth::actor(who.as_ref(), r.actor);
        let i = self
            .autopilot
            .reject_incident(r.id, &actor, &r.comment)
            .await?;
        Ok(Response::new(proto::incident_detail(&i)))
    }
}
