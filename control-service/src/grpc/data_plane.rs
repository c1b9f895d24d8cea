//! `switchyard.v1.DataPlane`: Watch (snapshots pushed to every Envoy, each version encoded
//! once) and Report (telemetry), served without tonic's generated server.

use super::*;

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
            // e.g. a first message over the size limit (OUT_OF_RANGE): the client is told
            // why, instead of a stream that ends with OK.
            tracing::debug!(%peer, %status, "watch stream failed before its first message");
            let _ = tokio::time::timeout(Duration::from_millis(200), tx.send(Err(status))).await;
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
        tokio::spawn(run_watch(self.clone(), peer, credential, inbound, tx));
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
