//! `switchyard.v1.Stacks`: operators' changes to one stack (weight, drain, evacuate…).

use super::*;

/// `switchyard.v1.Stacks`.
pub struct StacksService {
    control: Arc<Control>,
    autopilot: Option<Arc<crate::autopilot::Autopilot>>,
}

impl StacksService {
    pub fn new(control: Arc<Control>) -> Self {
        Self {
            control,
            autopilot: None,
        }
    }

    /// Operator changes go through the brain's guardrails (one change at a time).
    pub fn with_autopilot(mut self, autopilot: Arc<crate::autopilot::Autopilot>) -> Self {
        self.autopilot = Some(autopilot);
        self
    }

    async fn change(
        &self,
        stack: &str,
        op: StackOp,
        actor: String,
        comment: String,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let change = Change::manual(actor, comment);
        let outcome = match &self.autopilot {
            Some(pilot) => pilot.manual_stack_op(stack, op, change).await?,
            None => self.control.stack_op(stack, op, change).await?,
        };
        let fleet = self.control.fleet();
        let totals = fleet.stack_totals();
        let status = outcome.record.stack(stack).map(|s| {
            let mut st = proto::stack_status(s, totals.get(stack));
            st.health = fleet
                .stack_health(stack)
                .map(|h| proto::stack_health(stack, &h));
            st
        });
        Ok(Response::new(v1::StackChangeResponse {
            version: outcome.record.version,
            changed: outcome.changed,
            stack: status,
            info: Some(proto::version_info(&outcome.record)),
        }))
    }
}

#[tonic::async_trait]
impl v1::stacks_server::Stacks for StacksService {
    async fn list(
        &self,
        _: Request<v1::ListStacksRequest>,
    ) -> Result<Response<v1::ListStacksResponse>, Status> {
        let fleet = self.control.fleet();
        let totals = fleet.stack_totals();
        let (version, stacks) = match self.control.current() {
            Some(c) => (
                c.record.version,
                c.record
                    .stacks
                    .iter()
                    .map(|s| {
                        let mut st = proto::stack_status(s, totals.get(&s.name));
                        st.health = fleet
                            .stack_health(&s.name)
                            .map(|h| proto::stack_health(&s.name, &h));
                        st
                    })
                    .collect(),
            ),
            None => (0, vec![]),
        };
        Ok(Response::new(v1::ListStacksResponse { version, stacks }))
    }

    async fn register(
        &self,
        request: Request<v1::RegisterStackRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::Register {
                endpoint: r.endpoint,
            },
            crate::auth::actor(who.as_ref(), r.actor),
            r.comment,
        )
        .await
    }

    async fn deregister(
        &self,
        request: Request<v1::DeregisterStackRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::Deregister { reason: r.reason },
            crate::auth::actor(who.as_ref(), r.actor),
            String::new(),
        )
        .await
    }

    async fn set_weight(
        &self,
        request: Request<v1::SetWeightRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        let op = StackOp::SetWeight {
            percent: r.weight_percent,
            reason: r.reason,
        };
        self.change(
            &r.stack,
            op,
            crate::auth::actor(who.as_ref(), r.actor),
            String::new(),
        )
        .await
    }

    async fn drain(
        &self,
        request: Request<v1::DrainStackRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        let op = StackOp::Drain {
            reason: r.reason,
            deadline: (r.deadline_seconds != 0)
                .then(|| std::time::Duration::from_secs(r.deadline_seconds)),
        };
        self.change(
            &r.stack,
            op,
            crate::auth::actor(who.as_ref(), r.actor),
            String::new(),
        )
        .await
    }

    async fn evacuate(
        &self,
        request: Request<v1::StackReasonRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::Evacuate { reason: r.reason },
            crate::auth::actor(who.as_ref(), r.actor),
            String::new(),
        )
        .await
    }

    async fn undrain(
        &self,
        request: Request<v1::StackReasonRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::Undrain { reason: r.reason },
            crate::auth::actor(who.as_ref(), r.actor),
            String::new(),
        )
        .await
    }

    async fn mark_unhealthy(
        &self,
        request: Request<v1::StackReasonRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::MarkUnhealthy { reason: r.reason },
            crate::auth::actor(who.as_ref(), r.actor),
            String::new(),
        )
        .await
    }

    async fn mark_healthy(
        &self,
        request: Request<v1::StackReasonRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::MarkHealthy { reason: r.reason },
            crate::auth::actor(who.as_ref(), r.actor),
            String::new(),
        )
        .await
    }
}
