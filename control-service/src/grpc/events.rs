//! `switchyard.v1.Events`: the event registry (deployments, campaigns, maintenance).

use super::*;

/// `switchyard.v1.Events`.
pub struct EventsService {
    autopilot: Arc<crate::autopilot::Autopilot>,
}

impl EventsService {
    pub fn new(autopilot: Arc<crate::autopilot::Autopilot>) -> Self {
        Self { autopilot }
    }
}

impl From<crate::autopilot::EventCommandError> for Status {
    fn from(e: crate::autopilot::EventCommandError) -> Self {
        use crate::autopilot::EventCommandError as C;
        use crate::brain::events::EventError as E;
        match e {
            C::Autopilot(a) => a.into(),
            C::Event(e @ E::Invalid(_)) => Status::invalid_argument(e.to_string()),
            C::Event(e @ E::Duplicate(_)) => Status::already_exists(e.to_string()),
            C::Event(e) => Status::internal(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl v1::events_server::Events for EventsService {
    async fn add(
        &self,
        request: Request<v1::AddEventRequest>,
    ) -> Result<Response<v1::EventInfo>, Status> {
        let who = identity(&request);
        let json = crate::auth::event_with_actor(who.as_ref(), request.into_inner().event_json);
        let e = self.autopilot.add_event(json).await?;
        Ok(Response::new(proto::event_info(&e)))
    }

    async fn list(
        &self,
        _: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        let all = self.autopilot.events().await?;
        Ok(Response::new(v1::ListEventsResponse {
            events: all.iter().map(proto::event_info).collect(),
        }))
    }

    async fn remove(
        &self,
        request: Request<v1::RemoveEventRequest>,
    ) -> Result<Response<v1::RemoveEventResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        let actor = crate::auth::actor(who.as_ref(), r.actor);
        if self.autopilot.remove_event(&r.id, &actor).await? {
            Ok(Response::new(v1::RemoveEventResponse {}))
        } else {
            Err(Status::not_found(format!("event {} not found", r.id)))
        }
    }
}
