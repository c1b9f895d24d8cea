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

use crate::auth::layer::StreamCredential;
use crate::auth::Identity;
use crate::codec::{Encoded, SmallBufferCodec};
use crate::control::{Change, Control, ControlError, Outcome, StackOp};
use crate::fleet::MAX_NAME_LEN;
use crate::proto::{self, v1};

/// Limits on history pages.
const DEFAULT_HISTORY: usize = 20;
const MAX_HISTORY: usize = 1000;

/// At most this many policy problems go into a status (message and details).
pub const MAX_STATUS_ISSUES: usize = 50;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::InvalidPolicy(issues) => {
                // Status message and details travel in HTTP/2 trailers, whose size is
                // limited: send the first problems and the count, never all of them.
                let shown = &issues[..issues.len().min(MAX_STATUS_ISSUES)];
                let violations: Vec<FieldViolation> = shown
                    .iter()
                    .map(|i| FieldViolation::new(&i.path, &i.message))
                    .collect();
                let mut message = format!(
                    "invalid policy ({} problem{}):\n{}",
                    issues.len(),
                    if issues.len() == 1 { "" } else { "s" },
                    shown
                        .iter()
                        .map(|i| format!("  {}", clip(&i.to_string(), 300)))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                if issues.len() > shown.len() {
                    message.push_str(&format!(
                        "\n  … and {} more (`switchyard policy validate FILE` lists every one)",
                        issues.len() - shown.len()
                    ));
                }
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ControlError::InvalidArgument(m) => Status::invalid_argument(m),
            ControlError::NotFound(m) => Status::not_found(m),
            ControlError::FailedPrecondition(m) => Status::failed_precondition(m),
            ControlError::Conflict(m) => Status::aborted(m),
            ControlError::Unavailable(m) => Status::unavailable(m),
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
    /// How often a stream opened with a bearer token checks that the token is still
    /// valid (a revoked or expired one ends the stream with UNAUTHENTICATED). Tokens are
    /// cached for 5 s, so a revocation on another replica ends it within about this + 5 s.
    pub credential_recheck: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            first_message_timeout: Duration::from_secs(10),
            credential_recheck: Duration::from_secs(5),
        }
    }
}

/// The encoded wire forms of the newest published snapshots: each converted and encoded
/// once per version, then shared by every Watch stream (a fan-out to 1,000 Envoys must
/// not encode 1,000 times). A few versions are kept, so streams still sending the one
/// before the newest share its bytes too.
#[derive(Debug, Default)]
struct WireSnapshot {
    recent: Mutex<std::collections::VecDeque<(u64, Encoded)>>,
}

/// Versions [`WireSnapshot`] keeps encoded.
const WIRE_KEEP: usize = 4;

impl WireSnapshot {
    /// The encoded `s`, encoding it only if no stream did so before.
    fn of(&self, s: &Snapshot) -> Encoded {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, w)) = recent.iter().find(|(v, _)| *v == s.version) {
            return w.clone();
        }
        let w = Encoded(proto::snapshot(s).encode_to_vec().into());
        // Newest last; a version older than every kept one is encoded but not kept.
        let at = recent.partition_point(|(v, _)| *v < s.version);
        if at > 0 || recent.len() < WIRE_KEEP {
            recent.insert(at, (s.version, w.clone()));
            if recent.len() > WIRE_KEEP {
                recent.pop_front();
            }
        }
        w
    }

    #[cfg(test)]
    fn cached(&self) -> Vec<u64> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().map(|(v, _)| *v).collect()
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
    svc: DataPlaneService,
    peer: String,
    credential: Option<StreamCredential>,
    mut inbound: Streaming<v1::WatchRequest>,
    tx: SnapshotTx,
) {
    let DataPlaneService {
        control,
        shutdown,
        settings,
        wire,
    } = svc;
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
    // Only versions newer than what the node has are ever sent: a replica that is behind
    // holds the stream until it catches up, and never sends a node back in time.
    let mut sent = first.last_applied_version;
    if sent > control.current_version() && !in_store(&control, sent).await {
        // The node's version is not in this store at all (the store was replaced):
        // waiting would never end, so it gets the current state.
        tracing::warn!(node = %node, last_applied = sent, "node reports a version this store never had; sending the current one");
        sent = 0;
    }
    let mut inbound_open = true;
    // Send what is current now, then whatever is newest each time something changes.
    let mut pending = snapshots.borrow_and_update().clone();
    let every = settings.credential_recheck.max(Duration::from_millis(10));
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        if let Some(s) = pending.take() {
            if s.version > sent {
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
            _ = recheck.tick(), if credential.is_some() => {
                if let Some(Err(why)) = match &credential {
                    Some(c) => Some(c.still_valid().await),
                    None => None,
                } {
                    tracing::info!(node = %node, %peer, reason = %why, "watch credential no longer valid");
                    let _ = tokio::time::timeout(
                        Duration::from_millis(200),
                        tx.send(Err(Status::unauthenticated(format!(
                            "the stream's credential is no longer valid: {why}"
                        )))),
                    )
                    .await;
                    break "credential revoked";
                }
            }
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

/// Whether `version` was ever committed to the store (the newest version reaches it).
/// When the store cannot say (unreachable), assume it was: holding is the safe answer.
async fn in_store(control: &Control, version: u64) -> bool {
    let store = control.store();
    match tokio::task::spawn_blocking(move || store.latest()).await {
        Ok(Ok(latest)) => latest.is_some_and(|r| r.version >= version),
        _ => true,
    }
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
        let credential = request.extensions().get::<StreamCredential>().cloned();
        let inbound = request.into_inner();
        // Small buffer: the watch channel coalesces, so a slow client gets the newest
        // snapshot instead of a backlog.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(run_watch(
            self.clone(),
            peer,
            credential,
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
        fleet.count(&samples);
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

/// The authenticated caller (put there by the auth layer); `None` with authentication off.
fn identity<T>(request: &Request<T>) -> Option<Identity> {
    request.extensions().get::<Identity>().cloned()
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

/// `switchyard.v1.Audit`.
pub struct AuditService {
    control: Arc<Control>,
}

impl AuditService {
    pub fn new(control: Arc<Control>) -> Self {
        Self { control }
    }
}

fn audit_status(e: crate::brain::audit::AuditError) -> Status {
    tracing::error!(error = %e, "audit log read failed");
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl v1::audit_server::Audit for AuditService {
    async fn list(
        &self,
        request: Request<v1::AuditListRequest>,
    ) -> Result<Response<v1::AuditListResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 50,
            n => n.min(1000) as usize,
        };
        let log = self.control.audit().clone();
        let prefix = r.subject_prefix;
        let (entries, head) = tokio::task::spawn_blocking(move || {
            let head = log.head()?.map(|h| h.seq).unwrap_or(0);
            let matches =
                |e: &crate::brain::audit::AuditEntry| e.draft.subject.starts_with(&prefix);
            let mut out = Vec::new();
            if r.newest {
                // Walk back from the head in pages until `limit` entries match.
                let mut upto = head;
                while upto > 0 && out.len() < limit {
                    let from = upto.saturating_sub(256);
                    let page = log.list(Some(from), (upto - from) as usize)?;
                    out.extend(page.into_iter().rev().filter(|e| matches(e)));
                    upto = from;
                }
                out.truncate(limit);
            } else {
                let mut after = r.after_seq;
                while out.len() < limit {
                    let page = log.list(Some(after), 256)?;
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    out.extend(page.into_iter().filter(|e| matches(e)));
                }
                out.truncate(limit);
            }
            Ok::<_, crate::brain::audit::AuditError>((out, head))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(audit_status)?;
        Ok(Response::new(v1::AuditListResponse {
            entries: entries.iter().map(proto::audit_entry).collect(),
            head_seq: head,
        }))
    }

    async fn verify(
        &self,
        _: Request<v1::AuditVerifyRequest>,
    ) -> Result<Response<v1::AuditVerifyResponse>, Status> {
        let log = self.control.audit().clone();
        let v = tokio::task::spawn_blocking(move || log.verify())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(audit_status)?;
        Ok(Response::new(proto::audit_verification(&v)))
    }
}

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

/// `switchyard.v1.Tokens`: bearer tokens over the API (admin), and "who am I".
pub struct TokensService {
    control: Arc<Control>,
}

impl TokensService {
    pub fn new(control: Arc<Control>) -> Self {
        Self { control }
    }

    /// Run `f` on the token store off the async workers.
    async fn tokens<T: Send + 'static>(
        &self,
        f: impl FnOnce(crate::auth::Tokens<'_>) -> Result<T, crate::auth::TokenError> + Send + 'static,
    ) -> Result<T, Status> {
        use crate::auth::TokenError as E;
        let store = self.control.store();
        tokio::task::spawn_blocking(move || f(crate::auth::Tokens::new(&*store)))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                E::Invalid(_) | E::Ambiguous(_) => Status::invalid_argument(e.to_string()),
                E::NotFound(_) => Status::not_found(e.to_string()),
                E::Random(_) | E::Store(_) | E::Corrupt { .. } => {
                    tracing::error!(error = %e, "token store");
                    Status::internal(format!("nothing was changed: {e}"))
                }
            })
    }

    async fn audit(&self, actor: &str, subject: String, summary: String) {
        use crate::brain::audit::{AuditDraft, AuditKind};
        let draft = AuditDraft::new(
            crate::model::now_unix_ms(),
            actor,
            AuditKind::Note,
            subject,
            summary,
        );
        let log = self.control.audit().clone();
        match tokio::task::spawn_blocking(move || log.append(draft)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit append failed"),
            Err(e) => tracing::error!(error = %e, "audit task failed"),
        }
    }
}

#[tonic::async_trait]
impl v1::tokens_server::Tokens for TokensService {
    async fn create(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let who = identity(&request);
        let r = request.into_inner();
        let role = crate::auth::Role::parse(&r.role).ok_or_else(|| {
            Status::invalid_argument(format!(
                "role {:?}: one of viewer, operator, approver, admin, dataplane",
                r.role
            ))
        })?;
        let by = crate::auth::actor(who.as_ref(), "anonymous".into());
        let (name, creator) = (r.name.clone(), by.clone());
        let (token, record) = self
            .tokens(move |t| t.create(&name, role, &creator, crate::model::now_unix_ms()))
            .await?;
        self.audit(
            &by,
            format!("token/{}", record.id),
            format!(
                "token {} created for {} (role {})",
                record.id, record.name, role
            ),
        )
        .await;
        Ok(Response::new(v1::CreateTokenResponse {
            token,
            info: Some(proto::token_info(&record)),
        }))
    }

    async fn list(
        &self,
        _: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        let all = self.tokens(|t| t.list()).await?;
        Ok(Response::new(v1::ListTokensResponse {
            tokens: all.iter().map(proto::token_info).collect(),
        }))
    }

    async fn revoke(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::TokenInfo>, Status> {
        let who = identity(&request);
        let id = request.into_inner().id;
        let record = self
            .tokens(move |t| t.revoke(&id, crate::model::now_unix_ms()))
            .await?;
        self.audit(
            &crate::auth::actor(who.as_ref(), "anonymous".into()),
            format!("token/{}", record.id),
            format!("token {} of {} revoked", record.id, record.name),
        )
        .await;
        Ok(Response::new(proto::token_info(&record)))
    }

    async fn who_am_i(
        &self,
        request: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let who = identity(&request).ok_or_else(|| {
            Status::failed_precondition("this control service runs without authentication")
        })?;
        let (credential, token_id) = match &who.credential {
            crate::auth::Credential::Token { id } => ("token".to_string(), id.clone()),
            crate::auth::Credential::Certificate { subject } => {
                (format!("certificate {subject}"), String::new())
            }
        };
        Ok(Response::new(v1::WhoAmIResponse {
            name: who.name.clone(),
            role: who.role.to_string(),
            credential,
            token_id,
        }))
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
            ..Default::default()
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
        // The version before the newest is still shared, not encoded per stream.
        assert_eq!(a.0.as_ptr(), wire.of(&snapshot(3)).0.as_ptr());
    }

    #[test]
    fn the_newest_versions_stay_encoded_and_old_ones_do_not_evict_them() {
        let wire = WireSnapshot::default();
        for v in [5, 7, 6, 8, 9] {
            wire.of(&snapshot(v));
        }
        assert_eq!(wire.cached(), vec![6, 7, 8, 9]);
        // Older than everything kept: encoded for its stream, the cache unchanged.
        assert_eq!(
            wire.of(&snapshot(2)).0,
            proto::snapshot(&snapshot(2)).encode_to_vec()
        );
        assert_eq!(wire.cached(), vec![6, 7, 8, 9]);
        let ten = wire.of(&snapshot(10));
        assert_eq!(wire.cached(), vec![7, 8, 9, 10]);
        assert_eq!(ten.0.as_ptr(), wire.of(&snapshot(10)).0.as_ptr());
    }
}
