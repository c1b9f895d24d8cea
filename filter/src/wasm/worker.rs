//! The worker role: the root context of a filter VM (one per Envoy worker thread). It
//! owns the compiled policy and the router, applies control-plane snapshots from shared
//! data when the singleton wakes it (and on its tick), flushes metrics and queues
//! telemetry once a second, and sends the circuit breakers' health probes. Per-request
//! work is in `http.rs`; this module must never add host calls to the request path.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::MapType;

use super::http::Flow;
use super::metrics::Metrics;
use super::{now_ms, shared};
use crate::affinity::{Keyring, KEYS_ENV};
use crate::policy::{validate_bytes, validate_json, Policy, StackId};
use crate::router::Router;
use crate::shared_data::{Applied, PolicyId, WORKER_TICK_MS};
use crate::snapshot::Snapshot;

/// Counters are flushed every this many ticks (once a second).
const FLUSH_EVERY: u64 = 5;
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Per-VM state shared by the worker's root context and its HTTP contexts.
pub struct WorkerState {
    pub router: Router,
    pub metrics: Metrics,
    /// What was applied from shared data (snapshot version, policy identity).
    applied: Applied,
    /// The request clock (Unix ms): read from the host on every tick and on every request
    /// whose latency is sampled (1 in [`super::metrics::LATENCY_SAMPLE`] per stack, read
    /// after its decision), reused by the others. A host call costs about 1% of a request's CPU in Envoy; the price is that
    /// time windows, cookie expiry and breaker open periods see time up to one tick
    /// (200 ms) or eight requests late. Failures and sampled latencies always read the
    /// real clock.
    pub clock_ms: u64,
    /// The request path's header-pairs vector, kept empty between requests (no allocation
    /// per request).
    pub pairs: Vec<(&'static [u8], &'static [u8])>,
}

impl WorkerState {
    /// Apply a newer control-plane snapshot if the singleton published one: on a wake-up
    /// from the singleton and on every tick, never per request (a host call costs about
    /// as much as a whole routing decision). One small shared-data read; the snapshot
    /// itself is read and decoded only when the version changed, and its policy compiled
    /// only when the policy's identity changed. Any problem keeps the current state (fail
    /// static). The ordering rules are `crate::shared_data`'s.
    fn refresh(&mut self) {
        let version = shared::read_version();
        if !self.applied.announces(version) {
            return;
        }
        // Seen even if it cannot be applied: a bad snapshot is not re-read every tick.
        self.applied.seen(version);
        let Some(bytes) = shared::read_snapshot() else {
            return;
        };
        let snapshot = match Snapshot::decode(&bytes) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot decode snapshot {version} from shared data: {e}");
                self.metrics.filter_error();
                return;
            }
        };
        let policy_id = PolicyId::of(&snapshot);
        if self.applied.needs_compile(policy_id) {
            match validate_json(&snapshot.policy_json) {
                Ok(v) => {
                    let policy = Arc::new(v.policy);
                    info!(
                        "policy '{}' ({policy_id}) of snapshot {} compiled",
                        policy.name.as_deref().unwrap_or("unnamed"),
                        snapshot.version
                    );
                    self.metrics = Metrics::define(&policy, self.metrics.take_known());
                    self.router.set_policy(policy);
                    self.applied.compiled(policy_id);
                }
                Err(e) => {
                    error!(
                        "snapshot {} carries an invalid policy, keeping the current one: {e}",
                        snapshot.version
                    );
                    self.metrics.filter_error();
                    return;
                }
            }
        }
        self.router
            .set_stacks(snapshot.stacks.iter().map(|st| crate::router::StackHealth {
                name: &st.name,
                factor: st.factor(),
                healthy: st.healthy,
                sticky_until_ms: st.sticky_until_ms(),
            }));
        self.router.set_rule_stacks(&snapshot.rule_stacks);
        // The snapshot read may be newer than the version key read before it; the key is
        // compared again on the next wake-up or tick.
        self.applied.seen(snapshot.version);
    }
}

/// A worker VM's root context.
pub struct WorkerRoot {
    state: Rc<RefCell<WorkerState>>,
    /// Health probes in flight: call token → (policy, stack).
    probes: Vec<(u32, Arc<Policy>, StackId)>,
    ticks: u64,
    telemetry: shared::TelemetrySender,
    /// This worker's wake queue: the singleton pokes it after publishing a snapshot.
    wake_queue: Option<u32>,
}

/// The policy of a worker's plugin configuration, validated; `None` (with a log line for
/// every problem) if it is invalid.
fn configured_policy(config: &[u8]) -> Option<Arc<Policy>> {
    let validated = match validate_bytes(config) {
        Ok(v) => v,
        Err(invalid) => {
            for e in &invalid.errors {
                error!("invalid policy in plugin configuration: {e}");
            }
            return None;
        }
    };
    for w in &validated.warnings {
        warn!("policy warning: {w}");
    }
    let policy = Arc::new(validated.policy);
    info!(
        "policy '{}' loaded: {} stacks, {} rules",
        policy.name.as_deref().unwrap_or("unnamed"),
        policy.stacks.len(),
        policy.rules.len()
    );
    Some(policy)
}

/// The affinity keyring from the VM environment (read once per VM).
fn load_keys() -> Option<Keyring> {
    match std::env::var(KEYS_ENV) {
        Ok(spec) => match Keyring::parse(&spec) {
            Ok(k) => {
                info!(
                    "affinity keys loaded (signing key id '{}')",
                    k.current_kid()
                );
                Some(k)
            }
            Err(e) => {
                error!("{KEYS_ENV} is invalid ({e}); affinity cookies are disabled");
                None
            }
        },
        Err(_) => {
            warn!("{KEYS_ENV} is not set in the VM environment; affinity cookies are disabled");
            None
        }
    }
}

impl WorkerRoot {
    /// Start from the plugin configuration (a policy document); `None` if it is invalid.
    pub fn start(config: &[u8]) -> Option<WorkerRoot> {
        let keys = load_keys();
        let policy = configured_policy(config)?;
        let state = WorkerState {
            metrics: Metrics::define(&policy, Vec::new()),
            router: Router::new(policy, keys),
            applied: Applied::default(),
            clock_ms: now_ms(),
            pairs: Vec::new(),
        };
        let mut root = WorkerRoot {
            state: Rc::new(RefCell::new(state)),
            probes: Vec::new(),
            ticks: 0,
            telemetry: shared::TelemetrySender::default(),
            wake_queue: None,
        };
        root.subscribe();
        Some(root)
    }

    /// The plugin configuration was replaced in place; `false` (changing nothing) if it
    /// is invalid.
    pub fn reconfigure(&mut self, config: &[u8]) -> bool {
        let Some(policy) = configured_policy(config) else {
            return false;
        };
        {
            let mut s = self.state.borrow_mut();
            s.metrics = Metrics::define(&policy, s.metrics.take_known());
            s.router.set_policy(policy);
            // The plugin's policy is the bootstrap; a control-plane snapshot, if one was
            // applied, still wins: forget it so `subscribe` applies it again.
            s.applied.forget();
        }
        self.subscribe();
        true
    }

    /// Take a wake queue (once), then apply what the singleton published: in this order,
    /// so that a snapshot published in between is either read now or announced on the
    /// queue. Then tick.
    fn subscribe(&mut self) {
        if self.wake_queue.is_none() {
            self.wake_queue = shared::register_wake_queue();
        }
        self.state.borrow_mut().refresh();
        let _ = hostcalls::set_tick_period(Duration::from_millis(WORKER_TICK_MS));
    }
}

impl Context for WorkerRoot {
    fn on_http_call_response(&mut self, token: u32, _: usize, _: usize, _: usize) {
        let Some(pos) = self.probes.iter().position(|(t, _, _)| *t == token) else {
            return;
        };
        let (_, policy, id) = self.probes.swap_remove(pos);
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u32>().ok());
        let ok = matches!(status, Some(200..=299));
        let mut s = self.state.borrow_mut();
        if !Arc::ptr_eq(&policy, s.router.policy()) {
            return;
        }
        if let Some(state) = s.router.probe_result(id, ok, now_ms()) {
            let name = policy.stacks.get(id).map_or("?", |st| st.name.as_str());
            info!("health probe of stack '{name}' succeeded: circuit breaker is now {state:?}");
            s.metrics.breaker_changed(id, state);
        }
    }
}

impl RootContext for WorkerRoot {
    fn on_tick(&mut self) {
        let now = now_ms();
        let state = Rc::clone(&self.state);
        let mut s = state.borrow_mut();
        s.clock_ms = now;
        s.refresh();
        let WorkerState {
            router, metrics, ..
        } = &mut *s;
        self.ticks += 1;
        if self.ticks.is_multiple_of(FLUSH_EVERY) {
            metrics.flush();
            if let Some(batch) = metrics.take_telemetry(now) {
                let queued = self.telemetry.send(&batch);
                metrics.telemetry_queued(queued);
            }
            for id in 0..router.policy().stacks.len() {
                let state = router.breaker_state(id, now);
                metrics.breaker_gauge(id, state);
            }
        }
        let policy = Arc::clone(router.policy());
        for id in router.probes_due(now) {
            let Some(stack) = policy.stacks.get(id) else {
                continue;
            };
            let Some(path) = stack.health_path.as_deref() else {
                continue;
            };
            let headers = vec![
                (":method", "GET"),
                (":path", path),
                (":authority", stack.name.as_str()),
                ("user-agent", "switchyard-probe"),
            ];
            match hostcalls::dispatch_http_call(
                &stack.cluster,
                headers,
                None,
                vec![],
                PROBE_TIMEOUT,
            ) {
                Ok(token) => self.probes.push((token, Arc::clone(&policy), id)),
                Err(e) => {
                    warn!(
                        "health probe of stack '{}' could not be sent: {e:?}",
                        stack.name
                    );
                    router.probe_result(id, false, now);
                }
            }
        }
    }

    fn on_queue_ready(&mut self, queue: u32) {
        if self.wake_queue == Some(queue) {
            shared::drain_wake_queue(queue);
            self.state.borrow_mut().refresh();
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Flow::new(Some(Rc::clone(&self.state)))))
    }
}
