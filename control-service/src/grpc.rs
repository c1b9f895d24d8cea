//! gRPC front end: the data plane (Watch, Report) for Envoys and the operator services
//! (Policies, Stacks, Fleet). Thin: every decision is the control core's.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use switchyard_filter::snapshot::Snapshot;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService, UnaryService};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::codec::{Encoded, SmallBufferCodec};
use crate::control::{Change, Control, ControlError, Outcome, StackOp};
use crate::fleet::MAX_NAME_LEN;
use crate::proto::{self, v1};

/// Limits on history pages.
const DEFAULT_HISTORY: usize = 20;
const MAX_HISTORY: usize = 1000;

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::InvalidPolicy(issues) => {
                let violations: Vec<FieldViolation> = issues
                    .iter()
                    .map(|i| FieldViolation::new(&i.path, &i.message))
                    .collect();
                let message = format!(
                    "invalid policy ({} problem{}):\n{}",
                    issues.len(),
                    if issues.len() == 1 { "" } else { "s" },
                    issues
                        .iter()
                        .map(|i| format!("  {i}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ControlError::InvalidArgument(m) => Status::invalid_argument(m),
            ControlError::NotFound(m) => Status::not_found(m),
            ControlError::FailedPrecondition(m) => Status::failed_precondition(m),
            e @ (ControlError::Store(_) | ControlError::Task(_)) => {
                tracing::error!(error = %e, "store failure");
                Status::internal(format!("nothing was changed: {e}"))
            }
        }
    }
}

/// Settings of Watch streams.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// How long a new stream may take to send its first message.
    pub first_message_timeout: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            first_message_timeout: Duration::from_secs(10),
        }
    }
}

/// The encoded wire form of the newest published snapshot: converted and encoded once
/// per version, then shared by every Watch stream (a fan-out to 1,000 Envoys must not
/// encode 1,000 times).
#[derive(Debug, Default)]
struct WireSnapshot {
    newest: Mutex<Option<(u64, Encoded)>>,
}

impl WireSnapshot {
    /// The encoded `s`, encoding it only if no stream did so before.
    fn of(&self, s: &Snapshot) -> Encoded {
        let encode = || Encoded(proto::snapshot(s).encode_to_vec().into());
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        match &*newest {
            Some((v, w)) if *v == s.version => w.clone(),
            // A stream still behind: encode for it, keep the newer one cached.
            Some((v, _)) if *v > s.version => encode(),
            _ => {
                let w = encode();
                *newest = Some((s.version, w.clone()));
                w
            }
        }
    }
}

/// `switchyard.v1.DataPlane`. Served by hand rather than through the generated server,
/// whose Watch would re-encode a `v1::Snapshot` per stream: Watch sends [`Encoded`]
/// snapshots (the same bytes on the wire), Report is an ordinary unary call.
#[derive(Clone)]
pub struct DataPlaneService {
    control: Arc<Control>,
    shutdown: CancellationToken,
    settings: WatchSettings,
    wire: Arc<WireSnapshot>,
}

impl DataPlaneService {
    pub fn new(
        control: Arc<Control>,
        shutdown: CancellationToken,
        settings: WatchSettings,
    ) -> Self {
        Self {
            control,
            shutdown,
            settings,
            wire: Arc::default(),
        }
    }
}

type SnapshotTx = mpsc::Sender<Result<Encoded, Status>>;

/// One Watch stream, from its first message until the client leaves or we shut down.
async fn run_watch(
    control: Arc<Control>,
    shutdown: CancellationToken,
    settings: WatchSettings,
    wire: Arc<WireSnapshot>,
    peer: String,
    mut inbound: Streaming<v1::WatchRequest>,
    tx: SnapshotTx,
) {
    let first = tokio::select! {
        first = tokio::time::timeout(settings.first_message_timeout, inbound.message()) => first,
        _ = shutdown.cancelled() => {
            let _ = tx.send(Err(Status::unavailable("control service shutting down"))).await;
            return;
        }
    };
    let first = match first {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return,
        Ok(Err(status)) => {
            tracing::debug!(%peer, %status, "watch stream failed before its first message");
            return;
        }
        Err(_) => {
            let _ = tx
                .send(Err(Status::deadline_exceeded(
                    "no WatchRequest received in time",
                )))
                .await;
            return;
        }
    };
    if first.node_id.is_empty() || first.node_id.len() > MAX_NAME_LEN {
        let _ = tx
            .send(Err(Status::invalid_argument(format!(
                "the first WatchRequest must carry node_id (1..={MAX_NAME_LEN} bytes)"
            ))))
            .await;
        return;
    }
    let fleet = control.fleet().clone();
    let guard = fleet.connect(&first.node_id, &peer, first.last_applied_version);
    let node = guard.node_id().to_string();
    tracing::info!(node = %node, %peer, last_applied = first.last_applied_version, "watch opened");
    if first.ack_version != 0 {
        fleet.ack(&node, first.ack_version);
    }

    let mut snapshots = control.subscribe();
    let mut sent = first.last_applied_version;
    let mut inbound_open = true;
    // Send what is current now, then whatever is newest each time something changes.
    let mut pending = snapshots.borrow_and_update().clone();
    let reason = loop {
        if let Some(s) = pending.take() {
            if s.version != sent {
                let send = tokio::select! {
                    r = tx.send(Ok(wire.of(&s))) => r.is_ok(),
                    _ = shutdown.cancelled() => false,
                };
                if !send {
                    break if shutdown.is_cancelled() {
                        "shutdown"
                    } else {
                        "client gone"
                    };
                }
                sent = s.version;
                fleet.sent(&node, sent);
            }
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break "control closed";
                }
                pending = snapshots.borrow_and_update().clone();
            }
            msg = inbound.message(), if inbound_open => match msg {
                Ok(Some(m)) => {
                    if m.ack_version != 0 {
                        fleet.ack(&node, m.ack_version);
                        tracing::debug!(node = %node, version = m.ack_version, "ack");
                    }
                }
                // Half-closed: no more acknowledgements, but keep pushing snapshots.
                Ok(None) => inbound_open = false,
                Err(_) => break "client gone",
            },
            _ = tx.closed() => break "client gone",
            _ = shutdown.cancelled() => break "shutdown",
        }
    };
    if reason == "shutdown" {
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            tx.send(Err(Status::unavailable("control service shutting down"))),
        )
        .await;
    }
    tracing::info!(node = %node, %peer, reason, "watch closed");
    drop(guard);
}

impl DataPlaneService {
    fn watch(
        &self,
        request: Request<Streaming<v1::WatchRequest>>,
    ) -> Response<ReceiverStream<Result<Encoded, Status>>> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let inbound = request.into_inner();
        // Small buffer: the watch channel coalesces, so a slow client gets the newest
        // snapshot instead of a backlog.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(run_watch(
            self.control.clone(),
            self.shutdown.clone(),
            self.settings.clone(),
            self.wire.clone(),
            peer,
            inbound,
            tx,
        ));
        Response::new(ReceiverStream::new(rx))
    }

    fn report(
        &self,
        request: Request<v1::TelemetryBatch>,
    ) -> Result<Response<v1::ReportAck>, Status> {
        let batch = request.into_inner();
        let telemetry = proto::telemetry(&batch).map_err(Status::invalid_argument)?;
        let samples = proto::node_batch(&batch).map_err(Status::invalid_argument)?;
        let fleet = self.control.fleet();
        fleet.report(&batch.node_id, telemetry);
        if let Some(series) = fleet.series() {
            // The node cannot do anything about a late or refused batch: say so in the
            // log, acknowledge the call.
            if let Err(e) = series.ingest(&samples, crate::model::now_unix_ms()) {
                tracing::warn!(node = %batch.node_id, error = %e, "telemetry not added to the series");
            }
        }
        Ok(Response::new(v1::ReportAck {}))
    }
}

struct WatchMethod(DataPlaneService);

impl StreamingService<v1::WatchRequest> for WatchMethod {
    type Response = Encoded;
    type ResponseStream = ReceiverStream<Result<Encoded, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<v1::WatchRequest>>) -> Self::Future {
        let response = self.0.watch(request);
        Box::pin(async move { Ok(response) })
    }
}

struct ReportMethod(DataPlaneService);

impl UnaryService<v1::TelemetryBatch> for ReportMethod {
    type Response = v1::ReportAck;
    type Future = BoxFuture<Response<v1::ReportAck>, Status>;

    fn call(&mut self, request: Request<v1::TelemetryBatch>) -> Self::Future {
        let response = self.0.report(request);
        Box::pin(async move { response })
    }
}

impl<B> Service<http::Request<B>> for DataPlaneService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        match req.uri().path() {
            "/switchyard.v1.DataPlane/Watch" => Box::pin(async move {
                let mut grpc = Grpc::new(SmallBufferCodec::<Encoded, v1::WatchRequest>::default());
                Ok(grpc.streaming(WatchMethod(svc), req).await)
            }),
            "/switchyard.v1.DataPlane/Report" => Box::pin(async move {
                let mut grpc =
                    Grpc::new(SmallBufferCodec::<v1::ReportAck, v1::TelemetryBatch>::default());
                Ok(grpc.unary(ReportMethod(svc), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

impl NamedService for DataPlaneService {
    const NAME: &'static str = v1::data_plane_server::SERVICE_NAME;
}

fn change_response(o: Outcome) -> v1::ChangeResponse {
    v1::ChangeResponse {
        version: o.record.version,
        changed: o.changed,
        warnings: proto::field_issues(&o.warnings),
        info: Some(proto::version_info(&o.record)),
    }
}

/// `switchyard.v1.Policies`.
pub struct PoliciesService {
    control: Arc<Control>,
}

impl PoliciesService {
    pub fn new(control: Arc<Control>) -> Self {
        Self { control }
    }
}

#[tonic::async_trait]
impl v1::policies_server::Policies for PoliciesService {
    async fn validate(
        &self,
        request: Request<v1::ValidatePolicyRequest>,
    ) -> Result<Response<v1::ValidatePolicyResponse>, Status> {
        let accepted = self.control.validate(&request.into_inner().policy_json)?;
        Ok(Response::new(v1::ValidatePolicyResponse {
            warnings: proto::field_issues(&accepted.warnings),
            stacks: accepted.stacks.into_iter().map(|s| s.name).collect(),
        }))
    }

    async fn apply(
        &self,
        request: Request<v1::ApplyPolicyRequest>,
    ) -> Result<Response<v1::ChangeResponse>, Status> {
        let r = request.into_inner();
        let change = Change {
            actor: r.actor,
            comment: r.comment,
        };
        let outcome = self
            .control
            .apply_policy(&r.policy_json, change, r.expected_version)
            .await?;
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
        let r = request.into_inner();
        let change = Change {
            actor: r.actor,
            comment: r.comment,
        };
        let outcome = self
            .control
            .rollback(r.to_version, change, r.expected_version)
            .await?;
        Ok(Response::new(change_response(outcome)))
    }
}

/// `switchyard.v1.Stacks`.
pub struct StacksService {
    control: Arc<Control>,
}

impl StacksService {
    pub fn new(control: Arc<Control>) -> Self {
        Self { control }
    }

    async fn change(
        &self,
        stack: &str,
        op: StackOp,
        actor: String,
        comment: String,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let outcome = self
            .control
            .stack_op(stack, op, Change { actor, comment })
            .await?;
        let totals = self.control.fleet().stack_totals();
        let status = outcome
            .record
            .stack(stack)
            .map(|s| proto::stack_status(s, totals.get(stack)));
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
        let totals = self.control.fleet().stack_totals();
        let (version, stacks) = match self.control.current() {
            Some(c) => (
                c.record.version,
                c.record
                    .stacks
                    .iter()
                    .map(|s| proto::stack_status(s, totals.get(&s.name)))
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
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::Register {
                endpoint: r.endpoint,
            },
            r.actor,
            r.comment,
        )
        .await
    }

    async fn deregister(
        &self,
        request: Request<v1::DeregisterStackRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::Deregister { reason: r.reason },
            r.actor,
            String::new(),
        )
        .await
    }

    async fn set_weight(
        &self,
        request: Request<v1::SetWeightRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let r = request.into_inner();
        let op = StackOp::SetWeight {
            percent: r.weight_percent,
            reason: r.reason,
        };
        self.change(&r.stack, op, r.actor, String::new()).await
    }

    async fn drain(
        &self,
        request: Request<v1::DrainStackRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let r = request.into_inner();
        let op = StackOp::Drain {
            reason: r.reason,
            deadline: (r.deadline_seconds != 0)
                .then(|| std::time::Duration::from_secs(r.deadline_seconds)),
        };
        self.change(&r.stack, op, r.actor, String::new()).await
    }

    async fn evacuate(
        &self,
        request: Request<v1::StackReasonRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::Evacuate { reason: r.reason },
            r.actor,
            String::new(),
        )
        .await
    }

    async fn undrain(
        &self,
        request: Request<v1::StackReasonRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::Undrain { reason: r.reason },
            r.actor,
            String::new(),
        )
        .await
    }

    async fn mark_unhealthy(
        &self,
        request: Request<v1::StackReasonRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::MarkUnhealthy { reason: r.reason },
            r.actor,
            String::new(),
        )
        .await
    }

    async fn mark_healthy(
        &self,
        request: Request<v1::StackReasonRequest>,
    ) -> Result<Response<v1::StackChangeResponse>, Status> {
        let r = request.into_inner();
        self.change(
            &r.stack,
            StackOp::MarkHealthy { reason: r.reason },
            r.actor,
            String::new(),
        )
        .await
    }
}

/// `switchyard.v1.Fleet`.
pub struct FleetService {
    control: Arc<Control>,
}

impl FleetService {
    pub fn new(control: Arc<Control>) -> Self {
        Self { control }
    }
}

/// Status of the fleet as the operator API reports it (with the series' latest
/// windows: reads the store).
pub fn status(control: &Control) -> v1::StatusResponse {
    let names: Vec<String> = control
        .current()
        .map(|c| c.record.stacks.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    let status = control.fleet().with_series(control.fleet_status(), &names);
    proto::status_response(&status)
}

#[tonic::async_trait]
impl v1::fleet_server::Fleet for FleetService {
    async fn status(
        &self,
        _: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let control = self.control.clone();
        tokio::task::spawn_blocking(move || status(&control))
            .await
            .map(Response::new)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use switchyard_filter::snapshot::StackState;

    use super::*;

    fn snapshot(version: u64) -> Snapshot {
        Snapshot {
            version,
            policy_version: version,
            policy_json: format!("{{\"v\":{version}}}"),
            stacks: vec![StackState {
                name: "blue".into(),
                weight_percent: 100,
                healthy: true,
                reason: String::new(),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn streams_share_one_encoding_per_version() {
        let wire = WireSnapshot::default();
        let a = wire.of(&snapshot(3));
        let b = wire.of(&snapshot(3));
        assert_eq!(
            a.0.as_ptr(),
            b.0.as_ptr(),
            "the second stream encoded again"
        );
        assert_eq!(a.0, proto::snapshot(&snapshot(3)).encode_to_vec());

        let newer = wire.of(&snapshot(4));
        assert_eq!(newer.0, proto::snapshot(&snapshot(4)).encode_to_vec());
        // A stream that is behind gets its own version, without evicting the newest.
        assert_eq!(wire.of(&snapshot(3)).0, a.0);
        assert_eq!(newer.0.as_ptr(), wire.of(&snapshot(4)).0.as_ptr());
    }
}
