//! The singleton role: the root context of the VM Envoy runs once per process
//! (bootstrap `envoy.bootstrap.wasm`, `singleton: true`, same `vm_id` as the filter) on
//! the main thread. It keeps a `Watch` stream to the control service open, publishes each
//! valid snapshot into shared data as the only writer (which wakes the workers),
//! acknowledges it, reconnects with jittered exponential backoff, and drains worker
//! telemetry from the shared queue into one `Report` call per interval.
//!
//! It must never block or trap the main thread: every tick does a bounded amount of work,
//! and when the control service is away the workers keep their last-known-good snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::{BufferType, MetricType};
use serde::Deserialize;

use super::{now_ms, shared};
use crate::hash::hash64;
use crate::policy::validate_json;
use crate::shared_data::{PolicyId, MAX_DRAIN, MAX_TELEMETRY_STACKS};
use crate::snapshot::{grpc_service, Snapshot, StackTelemetry, TelemetryBatch, WatchRequest};

const SERVICE: &str = "switchyard.v1.DataPlane";
/// Tick period of the singleton: reconnects and reports are due at most this late.
const TICK: Duration = Duration::from_millis(100);

/// Plugin configuration of the singleton (`"role": "control"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Must be `control` (checked by [`is_singleton_config`]).
    #[allow(dead_code)]
    pub role: String,
    /// Envoy cluster of the control service (HTTP/2).
    pub cluster: String,
    /// Identity reported to the control service.
    pub node_id: String,
    #[serde(default = "d_initial")]
    pub reconnect_initial_ms: u64,
    #[serde(default = "d_max")]
    pub reconnect_max_ms: u64,
    #[serde(default = "d_report")]
    pub report_interval_ms: u64,
}

fn d_initial() -> u64 {
    250
}
fn d_max() -> u64 {
    5_000
}
fn d_report() -> u64 {
    1_000
}

/// Probe of a plugin configuration: the singleton's has `"role": "control"`.
#[derive(Deserialize)]
struct RoleProbe {
    #[serde(default)]
    role: Option<String>,
}

/// Whether a plugin configuration is the singleton's (else it is a worker's policy).
pub fn is_singleton_config(bytes: &[u8]) -> bool {
    serde_json::from_slice::<RoleProbe>(bytes)
        .ok()
        .and_then(|p| p.role)
        .is_some_and(|r| r == "control")
}

struct Ids {
    connected: u32,
    stale: u32,
    version: u32,
    reconnects: u32,
    applied: u32,
    rejected: u32,
    reports_ok: u32,
    reports_failed: u32,
    dropped: u32,
}

fn metric(kind: MetricType, name: &str) -> u32 {
    hostcalls::define_metric(kind, name).unwrap_or(u32::MAX)
}

fn set_gauge(id: u32, v: u64) {
    if id != u32::MAX {
        let _ = hostcalls::record_metric(id, v);
    }
}

fn bump(id: u32, by: u64) {
    if id != u32::MAX && by > 0 {
        let _ = hostcalls::increment_metric(id, by as i64);
    }
}

/// The singleton's root context.
pub struct SingletonRoot {
    cfg: ControlConfig,
    /// Serialized `GrpcService{envoy_grpc{cluster_name}}`.
    upstream: String,
    stream: Option<u32>,
    /// The current stream has delivered headers or a message.
    connected: bool,
    applied: u64,
    /// Policy of the last snapshot that passed validation (an equal one is not validated
    /// again).
    validated: Option<PolicyId>,
    backoff_ms: u64,
    next_attempt_ms: u64,
    queue: Option<u32>,
    /// Last time the control service was heard from (stream open or message).
    last_contact_ms: u64,
    telemetry: BTreeMap<String, StackTelemetry>,
    dropped: u64,
    last_report_ms: u64,
    report_in_flight: Option<u32>,
    ids: Ids,
}

impl SingletonRoot {
    /// Validate the configuration and start; `None` (with a log line) if it is invalid.
    pub fn start(config: &[u8], now_ms: u64) -> Option<SingletonRoot> {
        let cfg: ControlConfig = match serde_json::from_slice(config) {
            Ok(c) => c,
            Err(e) => {
                error!("invalid control singleton configuration: {e}");
                return None;
            }
        };
        if cfg.cluster.is_empty() || cfg.cluster.len() > 100 || !cfg.cluster.is_ascii() {
            error!(
                "invalid control singleton configuration: cluster must be 1-100 ASCII characters"
            );
            return None;
        }
        if cfg.reconnect_initial_ms == 0
            || cfg.reconnect_max_ms < cfg.reconnect_initial_ms
            || cfg.report_interval_ms < 100
        {
            error!("invalid control singleton configuration: need 0 < reconnect_initial_ms <= reconnect_max_ms and report_interval_ms >= 100");
            return None;
        }
        let upstream = String::from_utf8(grpc_service(&cfg.cluster)).ok()?;
        let queue = shared::register_telemetry_queue();
        let applied = shared::read_version();
        let ids = Ids {
            connected: metric(MetricType::Gauge, "switchyard.control.connected"),
            stale: metric(MetricType::Gauge, "switchyard.control.stale_seconds"),
            version: metric(MetricType::Gauge, "switchyard.control.applied_version"),
            reconnects: metric(MetricType::Counter, "switchyard.control.reconnects"),
            applied: metric(MetricType::Counter, "switchyard.control.snapshots_applied"),
            rejected: metric(MetricType::Counter, "switchyard.control.snapshots_rejected"),
            reports_ok: metric(MetricType::Counter, "switchyard.control.reports_sent"),
            reports_failed: metric(MetricType::Counter, "switchyard.control.reports_failed"),
            dropped: metric(MetricType::Counter, "switchyard.control.telemetry_dropped"),
        };
        set_gauge(ids.version, applied);
        let _ = hostcalls::set_tick_period(TICK);
        info!("control singleton for node '{}' starting; cluster '{}', last applied version {applied}", cfg.node_id, cfg.cluster);
        let mut c = SingletonRoot {
            backoff_ms: cfg.reconnect_initial_ms,
            cfg,
            upstream,
            stream: None,
            connected: false,
            applied,
            validated: None,
            next_attempt_ms: 0,
            queue,
            last_contact_ms: now_ms,
            telemetry: BTreeMap::new(),
            dropped: 0,
            last_report_ms: now_ms,
            report_in_flight: None,
            ids,
        };
        c.connect(now_ms);
        Some(c)
    }

    fn connect(&mut self, now_ms: u64) {
        match hostcalls::open_grpc_stream(&self.upstream, SERVICE, "Watch", vec![]) {
            Ok(token) => {
                let hello = WatchRequest {
                    node_id: self.cfg.node_id.clone(),
                    last_applied_version: self.applied,
                    ack_version: 0,
                }
                .encode();
                if hostcalls::send_grpc_stream_message(token, Some(&hello), false).is_err() {
                    let _ = hostcalls::cancel_grpc_stream(token);
                    self.schedule_retry(now_ms);
                    return;
                }
                self.stream = Some(token);
                self.connected = false;
            }
            Err(e) => {
                warn!(
                    "cannot open the Watch stream to '{}': {e:?}",
                    self.cfg.cluster
                );
                self.schedule_retry(now_ms);
            }
        }
    }

    fn schedule_retry(&mut self, now_ms: u64) {
        // Full jitter in [backoff/2, backoff]: many Envoys must not reconnect in lockstep.
        let r = hash64(now_ms, self.cfg.node_id.as_bytes());
        let half = self.backoff_ms / 2;
        let delay = half + r % (half + 1);
        self.next_attempt_ms = now_ms + delay;
        self.backoff_ms = (self.backoff_ms * 2).min(self.cfg.reconnect_max_ms);
        bump(self.ids.reconnects, 1);
    }

    /// Periodic work: reconnect when due, send telemetry when due.
    fn tick(&mut self, now_ms: u64) {
        // Staleness: 0 while connected, else seconds since the control service was last
        // heard from (the data plane serves its last-known-good snapshot meanwhile).
        if self.stream.is_some() && self.connected {
            self.last_contact_ms = now_ms;
        }
        set_gauge(
            self.ids.stale,
            now_ms.saturating_sub(self.last_contact_ms) / 1000,
        );
        if self.stream.is_none() && now_ms >= self.next_attempt_ms {
            self.connect(now_ms);
        }
        if now_ms.saturating_sub(self.last_report_ms) >= self.cfg.report_interval_ms {
            self.drain_queue();
            self.report(now_ms);
        }
    }

    /// The stream delivered its headers: the control service is reachable.
    fn on_stream_open(&mut self, token: u32) {
        if self.stream == Some(token) {
            self.connected = true;
            set_gauge(self.ids.connected, 1);
        }
    }

    /// A snapshot arrived on the Watch stream.
    fn on_stream_message(&mut self, token: u32, size: usize) {
        if self.stream != Some(token) {
            return;
        }
        self.connected = true;
        set_gauge(self.ids.connected, 1);
        self.backoff_ms = self.cfg.reconnect_initial_ms;
        let Some(bytes) = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
        else {
            return;
        };
        let snapshot = match Snapshot::decode(&bytes) {
            Ok(s) => s,
            Err(e) => {
                error!("undecodable snapshot from the control service: {e}");
                bump(self.ids.rejected, 1);
                return;
            }
        };
        let policy = PolicyId::of(&snapshot);
        if self.validated != Some(policy) {
            if let Err(invalid) = validate_json(&snapshot.policy_json) {
                // The control service validates with this same code; this is a mismatch of
                // versions. Keep serving the last good snapshot.
                error!(
                    "snapshot {} rejected, keeping version {}: {invalid}",
                    snapshot.version, self.applied
                );
                bump(self.ids.rejected, 1);
                return;
            }
            self.validated = Some(policy);
        }
        if let Err(e) = shared::publish(&bytes, snapshot.version) {
            error!(
                "cannot write snapshot {} to shared data: {e:?}",
                snapshot.version
            );
            return;
        }
        self.applied = snapshot.version;
        set_gauge(self.ids.version, snapshot.version);
        bump(self.ids.applied, 1);
        info!(
            "applied snapshot version {} ({} stacks)",
            snapshot.version,
            snapshot.stacks.len()
        );
        let ack = WatchRequest {
            node_id: self.cfg.node_id.clone(),
            last_applied_version: self.applied,
            ack_version: snapshot.version,
        }
        .encode();
        let _ = hostcalls::send_grpc_stream_message(token, Some(&ack), false);
    }

    /// The Watch stream ended: keep serving, reconnect later.
    fn on_stream_close(&mut self, token: u32, status: u32, now_ms: u64) {
        if self.stream != Some(token) {
            return;
        }
        self.stream = None;
        self.connected = false;
        set_gauge(self.ids.connected, 0);
        warn!(
            "Watch stream closed (grpc status {status}); serving version {} until reconnected",
            self.applied
        );
        self.schedule_retry(now_ms);
    }

    /// A `Report` call finished.
    fn on_call_response(&mut self, token: u32, status: u32) {
        if self.report_in_flight == Some(token) {
            self.report_in_flight = None;
            bump(
                if status == 0 {
                    self.ids.reports_ok
                } else {
                    self.ids.reports_failed
                },
                1,
            );
        }
    }

    /// Worker telemetry is waiting in the queue.
    fn drain_queue(&mut self) {
        let Some(q) = self.queue else { return };
        for _ in 0..MAX_DRAIN {
            let Some(msg) = shared::next_telemetry(q) else {
                break;
            };
            match TelemetryBatch::decode(&msg) {
                Ok(batch) => {
                    self.dropped += batch.dropped;
                    for s in batch.stacks {
                        if let Some(agg) = self.telemetry.get_mut(&s.stack) {
                            agg.merge(&s);
                        } else if self.telemetry.len() < MAX_TELEMETRY_STACKS {
                            self.telemetry.insert(s.stack.clone(), s);
                        } else {
                            self.dropped += 1;
                        }
                    }
                }
                Err(_) => self.dropped += 1,
            }
        }
    }

    fn report(&mut self, now_ms: u64) {
        if self.report_in_flight.is_some() {
            return; // keep aggregating until the previous call is answered
        }
        let window_ms = now_ms.saturating_sub(self.last_report_ms);
        self.last_report_ms = now_ms;
        if self.telemetry.is_empty() && self.dropped == 0 {
            return;
        }
        let batch = TelemetryBatch {
            node_id: self.cfg.node_id.clone(),
            window_end_unix_ms: now_ms,
            window_ms: window_ms.min(u64::from(u32::MAX)) as u32,
            stacks: std::mem::take(&mut self.telemetry).into_values().collect(),
            dropped: self.dropped,
        };
        bump(self.ids.dropped, self.dropped);
        self.dropped = 0;
        match hostcalls::dispatch_grpc_call(
            &self.upstream,
            SERVICE,
            "Report",
            vec![],
            Some(&batch.encode()),
            Duration::from_secs(2),
        ) {
            Ok(token) => self.report_in_flight = Some(token),
            Err(_) => bump(self.ids.reports_failed, 1),
        }
    }
}

impl Context for SingletonRoot {
    fn on_grpc_stream_initial_metadata(&mut self, token: u32, _: u32) {
        self.on_stream_open(token);
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        self.on_stream_message(token, size);
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        self.on_stream_close(token, status, now_ms());
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, _: usize) {
        self.on_call_response(token, status);
    }
}

impl RootContext for SingletonRoot {
    fn on_tick(&mut self) {
        self.tick(now_ms());
    }

    /// The only queue the singleton owns is the telemetry queue.
    fn on_queue_ready(&mut self, _: u32) {
        self.drain_queue();
    }
}
