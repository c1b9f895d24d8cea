//! Starting and stopping the control service: store, control core, gRPC and HTTP
//! listeners, health and reflection, graceful shutdown.
//!
//! On etcd several replicas run side by side (`replica.rs`): each serves the APIs and
//! Watch and follows the versions the others commit, and its background work — the
//! health monitor, the autopilot's ticks and the fast path — runs only while it leads.
//! The series flush runs on every replica (each holds its own nodes' telemetry; the
//! flush merges into the stored window conditionally, so replicas never lose each
//! other's counts).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::brain::series::Series;
use crate::config::{ServeConfig, StoreKind};
use crate::control::Control;
use crate::grpc::{
    AuditService, DataPlaneService, FleetService, PoliciesService, RolloutsService, StacksService,
};
use crate::proto::{self, v1};
use crate::replica::Replica;
use crate::store::{EtcdStore, MemoryStore, RedbStore, Store};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A started server. Drop does not stop it: call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    /// Both listeners speak TLS (`[tls]`).
    pub tls: bool,
    pub http_addr: Option<SocketAddr>,
    pub control: Arc<Control>,
    /// The health checks and fast path, when the config has a `[health]` section.
    pub health: Option<Arc<crate::health::Monitor>>,
    shutdown: CancellationToken,
    /// Cancelled by [`RunningServer::kill`]: stop without resigning the leadership.
    resign: CancellationToken,
    grace: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// URL of the gRPC listener: `https://` when it speaks TLS, else `http://`.
    pub fn grpc_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// Stop: end every Watch stream (UNAVAILABLE, so clients reconnect elsewhere or
    /// later), stop accepting, and wait for in-flight calls up to the grace period.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Stop as a crash would, for failover tests: the leadership is not resigned (the
    /// other replicas wait for its lease to expire) and Watch streams end at once.
    pub async fn kill(self) {
        self.resign.cancel();
        self.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
        futures_join(self.tasks).await;
    }

    /// This replica's id and whether it leads now.
    pub fn role(&self) -> &std::sync::Arc<crate::replica::Role> {
        self.control.role()
    }

    /// Wait until the server stopped (after the token was cancelled).
    pub async fn wait(self) {
        let grace = self.grace;
        self.shutdown.cancelled().await;
        let all = futures_join(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(?grace, "graceful shutdown timed out; exiting anyway");
        }
    }
}

/// Persist the series' closed windows once a second (a window closes at most once per
/// `window_ms`; a second keeps the newest closed window visible in the store soon after
/// its grace period). The store is written off the async workers. On shutdown the open
/// windows are stored too (partial; after a restart their later batches merge in).
async fn flush_series(series: Arc<Series>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = every.tick() => false,
        };
        let s = series.clone();
        let now = crate::model::now_unix_ms();
        let flushed =
            tokio::task::spawn_blocking(move || if last { s.flush_all(now) } else { s.flush(now) })
                .await;
        match flushed {
            Ok(Ok(n)) if n > 0 => tracing::debug!(windows = n, "series windows persisted"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot persist the series; will retry"),
            Err(e) => tracing::warn!(error = %e, "series flush task failed"),
        }
        if last {
            return;
        }
    }
}

/// The gRPC services whose grpc.health.v1 status this server reports, `""` (the
/// server as a whole: what Envoy's `grpc_health_check: {}` and kubelet probes ask) first.
const HEALTH_SERVICES: [&str; 8] = [
    "",
    <DataPlaneService as tonic::server::NamedService>::NAME,
    v1::policies_server::SERVICE_NAME,
    v1::stacks_server::SERVICE_NAME,
    v1::fleet_server::SERVICE_NAME,
    v1::audit_server::SERVICE_NAME,
    v1::rollouts_server::SERVICE_NAME,
    v1::tokens_server::SERVICE_NAME,
];

/// How often a replica on etcd checks that it can still read the store.
const STORE_CHECK_EVERY: Duration = Duration::from_secs(1);

async fn set_health(
    health: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    for name in HEALTH_SERVICES {
        health.set_service_status(name, status).await;
    }
}

/// grpc.health.v1 follows the store: NOT_SERVING for every service while a read of the
/// newest version answers [`crate::store::StoreError::Unavailable`] (etcd down, no quorum,
/// a partition: the replica can serve only its last snapshot and refuses writes), SERVING
/// again once one succeeds. Transitions are logged once. Stops at `shutdown`, so it never
/// undoes the NOT_SERVING that shutdown sets.
async fn follow_store(
    store: Arc<dyn crate::store::Store>,
    health: tonic_health::server::HealthReporter,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut reachable = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let s = store.clone();
        let read = tokio::task::spawn_blocking(move || s.latest().map(|_| ())).await;
        if shutdown.is_cancelled() {
            return;
        }
        let now = match read {
            Ok(Ok(())) => true,
            Ok(Err(crate::store::StoreError::Unavailable(e))) => {
                if reachable {
                    tracing::warn!(error = %e, "store unreachable: gRPC health NOT_SERVING (Envoys move to another replica)");
                }
                false
            }
            // Another failure is not "unreachable" (the store answered): say so, keep the status.
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "store health read failed");
                reachable
            }
            Err(_) => return,
        };
        if now != reachable {
            if now {
                tracing::info!("store reachable again: gRPC health SERVING");
            }
            let status = if now {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            set_health(&health, status).await;
            reachable = now;
        }
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// The store the configuration names (blocking).
pub fn open_store(cfg: &ServeConfig) -> Result<Arc<dyn Store>, BoxError> {
    Ok(open_replica(cfg)?.store())
}

/// The store the configuration names, as this replica sees it: alone on redb or memory,
/// one of several (fenced while it leads) on etcd. Blocking.
fn open_replica(cfg: &ServeConfig) -> Result<Replica, BoxError> {
    let settings = cfg.replica.clone();
    Ok(match cfg.store {
        StoreKind::Redb => Replica::standalone(Arc::new(RedbStore::open(&cfg.data_dir)?), settings),
        StoreKind::Memory => Replica::standalone(Arc::new(MemoryStore::new()), settings),
        StoreKind::Etcd => Replica::on_etcd(Arc::new(EtcdStore::connect(&cfg.etcd)?), settings),
    })
}

/// Open the store, restore state, apply the bootstrap policy to an empty store, bind
/// the listeners and start serving. Returns once both listeners accept connections.
pub async fn start(cfg: ServeConfig) -> Result<RunningServer, BoxError> {
    // Certificates first: a file that cannot be read fails the start before anything runs.
    let tls = cfg
        .tls
        .as_ref()
        .map(crate::tls::server_configs)
        .transpose()?;
    let replica = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || open_replica(&cfg)).await??
    };
    let store = replica.store();
    tracing::info!(store = %store.describe(), replica = %cfg.replica.id, "store open");
    let control = Control::open_as(store.clone(), replica.role()).await?;
    let series = Arc::new(Series::new(store, cfg.series));
    control.fleet().attach_series(series.clone());

    if let Some(path) = &cfg.bootstrap_policy {
        let doc = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("reading bootstrap policy {}: {e}", path.display()))?;
        match control.bootstrap(&doc).await {
            Ok(Some(o)) => {
                tracing::info!(version = o.record.version, path = %path.display(), "bootstrap policy applied")
            }
            Ok(None) => {
                tracing::info!(path = %path.display(), "store holds state; bootstrap policy ignored")
            }
            Err(e) => return Err(format!("bootstrap policy {}: {e}", path.display()).into()),
        }
    }

    let shutdown = CancellationToken::new();
    let resign = CancellationToken::new();
    let mut tasks = Vec::new();
    // Versions other replicas commit (etcd only).
    tasks.extend(control.follow(shutdown.clone()));

    // Per-node breaker evidence for the fast path: each stack's newest series window.
    let monitor = cfg.health.clone().map(|h| {
        let c = control.clone();
        let feed = crate::health::feed::from_windows(control.clone(), move |stack: &str| {
            c.fleet().series()?.latest(stack, 1).ok()?.pop()
        });
        crate::health::Monitor::new(
            control.clone(),
            h,
            Arc::new(crate::brain::clock::SystemClock),
            Some(feed),
        )
    });
    // The brain at work: rollouts judged and moved on every tick.
    let autopilot = crate::autopilot::Autopilot::new(
        control.clone(),
        series.clone(),
        Arc::new(crate::brain::clock::SystemClock),
        cfg.autopilot.clone(),
    );
    // The leader's background work, started on each term and stopped when it ends.
    let work: crate::replica::StartWork = {
        let (monitor, autopilot) = (monitor.clone(), autopilot.clone());
        let (c, retention) = (control.clone(), cfg.retention.clone());
        Box::new(move |stop: CancellationToken| {
            let mut tasks = vec![c.spawn_upkeep(retention.clone(), stop.clone())];
            if let Some(m) = &monitor {
                tasks.extend(m.spawn(stop.clone()));
                tracing::info!("health checks running");
            }
            tasks.push(autopilot.spawn(stop.clone()));
            if let Some(m) = &monitor {
                // A fast-path evacuation opens an incident awaiting a human for recovery.
                tasks.push(autopilot.follow_fast_path(m.subscribe(), stop.clone()));
            }
            tasks
        })
    };
    tasks.push(replica.spawn(work, shutdown.clone(), resign.clone()));
    tasks.push(tokio::spawn(flush_series(series, shutdown.clone())));
    tasks.extend(crate::intakes::spawn(
        &cfg.intakes,
        control.fleet(),
        shutdown.clone(),
    ));

    let connections = Arc::new(crate::net::Connections::default());
    let grpc_listener = TcpListener::bind(cfg.grpc).await?;
    let grpc_addr = grpc_listener.local_addr()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::Serving).await;
    // On etcd, the health follows the store: a replica that cannot reach it serves stale
    // snapshots and refuses writes, so its health checks send Envoys to another replica.
    if cfg.store == StoreKind::Etcd {
        tasks.push(tokio::spawn(follow_store(
            control.store(),
            health.clone(),
            STORE_CHECK_EVERY,
            shutdown.clone(),
        )));
    }

    // Credentials: one layer in front of every gRPC service and HTTP route.
    let auth = cfg.auth.enabled.then(|| {
        let certs = cfg
            .tls
            .as_ref()
            .map(|t| t.identities.clone())
            .unwrap_or_default();
        crate::auth::layer::Authenticator::new(control.store()).with_certs(certs)
    });
    match &auth {
        Some(_) => tracing::info!("authentication required (docs/security.md)"),
        None => tracing::warn!(
            "authentication DISABLED: anyone who reaches these ports can change routing"
        ),
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Find dead Envoys (and let them find us) even when nothing changes for hours.
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(4096))
        .layer(crate::auth::layer::GrpcAuthLayer::new(auth.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(DataPlaneService::new(
            control.clone(),
            shutdown.clone(),
            cfg.watch.clone(),
        ))
        .add_service(v1::policies_server::PoliciesServer::new(
            PoliciesService::new(control.clone()).with_autopilot(autopilot.clone()),
        ))
        .add_service(v1::stacks_server::StacksServer::new(
            StacksService::new(control.clone()).with_autopilot(autopilot.clone()),
        ))
        .add_service(v1::fleet_server::FleetServer::new(FleetService::new(
            control.clone(),
        )))
        .add_service(v1::audit_server::AuditServer::new(AuditService::new(
            control.clone(),
        )))
        .add_service(v1::rollouts_server::RolloutsServer::new(
            RolloutsService::new(autopilot.clone()),
        ))
        .add_service(v1::incidents_server::IncidentsServer::new(
            crate::grpc::IncidentsService::new(autopilot.clone()),
        ))
        .add_service(v1::events_server::EventsServer::new(
            crate::grpc::EventsService::new(autopilot.clone()),
        ))
        .add_service(v1::tokens_server::TokensServer::new(
            crate::grpc::TokensService::new(control.clone()),
        ));
    {
        let health = health.clone();
        let stop = shutdown.clone();
        let signal = async move {
            stop.cancelled().await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        };
        // One admission path for both listeners (crate::net): a slot per connection, a
        // deadline for the first byte or the TLS handshake, back-off on accept errors.
        let stats = crate::net::ListenerStats::new("grpc", cfg.limits.grpc_max_connections);
        connections.add(stats.clone());
        let first_byte = cfg.limits.first_byte_timeout;
        let served = match &tls {
            Some((grpc_tls, _)) => {
                let (accepted, task) = crate::net::accept(
                    grpc_listener,
                    stats,
                    first_byte,
                    crate::tls::Handshake::new(grpc_tls.clone()),
                    shutdown.clone(),
                );
                tasks.push(task);
                let incoming = crate::net::incoming(accepted);
                tokio::spawn(
                    async move { router.serve_with_incoming_shutdown(incoming, signal).await },
                )
            }
            None => {
                let (accepted, task) = crate::net::accept(
                    grpc_listener,
                    stats,
                    first_byte,
                    crate::net::FirstByte,
                    shutdown.clone(),
                );
                tasks.push(task);
                let incoming = crate::net::incoming(accepted);
                tokio::spawn(
                    async move { router.serve_with_incoming_shutdown(incoming, signal).await },
                )
            }
        };
        tasks.push(tokio::spawn(async move {
            match served.await {
                Ok(Err(e)) => tracing::error!(error = %e, "gRPC server failed"),
                Err(e) => tracing::error!(error = %e, "gRPC server task failed"),
                Ok(Ok(())) => {}
            }
        }));
    }
    tracing::info!(addr = %grpc_addr, tls = tls.is_some(), "gRPC serving");

    let http_addr = match cfg.http {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            let addr = listener.local_addr()?;
            let mut app =
                crate::http::router(control.clone()).layer(axum::Extension(autopilot.clone()));
            if let Some(m) = &monitor {
                app = crate::health::router(m.clone()).merge(app.layer(axum::Extension(m.clone())));
            }
            // After every route is mounted: the middleware guards the routes above it.
            if let Some(auth) = &auth {
                app = app.route_layer(axum::middleware::from_fn_with_state(
                    auth.clone(),
                    crate::auth::layer::http_auth,
                ));
            }
            let stop = shutdown.clone();
            let stopped = async move { stop.cancelled().await };
            let stats = crate::net::ListenerStats::new("http", cfg.limits.http_max_connections);
            connections.add(stats.clone());
            let first_byte = cfg.limits.first_byte_timeout;
            let app = app.layer(axum::Extension(connections.clone()));
            let served = match &tls {
                Some((_, http_tls)) => {
                    let (accepted, task) = crate::net::accept(
                        listener,
                        stats,
                        first_byte,
                        crate::tls::Handshake::new(http_tls.clone()),
                        shutdown.clone(),
                    );
                    tasks.push(task);
                    let listener = crate::tls::TlsListener::new(accepted, addr);
                    // Each request carries its connection's client certificate.
                    let app =
                        app.into_make_service_with_connect_info::<crate::auth::layer::PeerCerts>();
                    tokio::spawn(async move {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stopped)
                            .await
                    })
                }
                None => {
                    let (accepted, task) = crate::net::accept(
                        listener,
                        stats,
                        first_byte,
                        crate::net::FirstByte,
                        shutdown.clone(),
                    );
                    tasks.push(task);
                    let listener = crate::net::Admitted::new(accepted, addr);
                    tokio::spawn(async move {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stopped)
                            .await
                    })
                }
            };
            tasks.push(tokio::spawn(async move {
                match served.await {
                    Ok(Err(e)) => tracing::error!(error = %e, "HTTP server failed"),
                    Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
                    Ok(Ok(())) => {}
                }
            }));
            tracing::info!(%addr, tls = tls.is_some(), "HTTP serving");
            Some(addr)
        }
        None => None,
    };

    Ok(RunningServer {
        grpc_addr,
        tls: tls.is_some(),
        http_addr,
        control,
        health: monitor,
        shutdown,
        resign,
        grace: cfg.shutdown_grace,
        tasks,
    })
}
