//! The proxy-wasm adapter: binds the pure routing core to Envoy. It reads what the core
//! needs from the host, applies the decision (routing header or local reply), sets the
//! affinity cookie and records outcomes and metrics. It must never trap: every host call
//! result is handled, and when the host misbehaves the request still gets a decision.
#![allow(unsafe_code)]

mod abi;
mod control;
mod metrics;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

use crate::affinity::{Keyring, KEYS_ENV};
use crate::classify::Request;
use crate::headers::{parse_pairs_into, parse_status, recycle};
use crate::policy::{validate_bytes, Policy, StackId};
use crate::router::{AffinityEvent, Decision, How, Outcome, Router};
use metrics::Metrics;

/// Request header carrying the chosen stack; Envoy's route table maps it to a cluster.
pub const STACK_HEADER: &str = "x-switchyard-stack";
/// Optional response header explaining the decision.
pub const DECISION_HEADER: &str = "x-switchyard-decision";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Per-VM state shared by the root context and its HTTP contexts.
struct Shared {
    router: Router,
    metrics: Metrics,
    /// Version key of the control-plane snapshot last applied (0: plugin configuration).
    snapshot_version: u64,
    /// Policy text of the last applied snapshot (skip recompiling on health-only changes).
    snapshot_policy: String,
    /// The request clock (Unix ms): read from the host on every tick and on every request
    /// whose latency is sampled (1 in [`metrics::LATENCY_SAMPLE`]), reused by the others.
    /// A host call costs about 1% of a request's CPU in Envoy; the price is that time
    /// windows, cookie expiry and breaker open periods see time up to one tick (200 ms) or
    /// eight requests late. Failures and sampled latencies always read the real clock.
    clock_ms: u64,
    /// The request path's header-pairs vector, kept empty between requests (no allocation
    /// per request).
    pairs: Vec<(&'static [u8], &'static [u8])>,
}

impl Shared {
    /// Apply a newer control-plane snapshot if the singleton wrote one: on a wake-up
    /// from the singleton and on every tick, never per request (a host call costs about
    /// as much as a whole routing decision). One small shared-data read; the snapshot
    /// itself is read and decoded only when the version changed. Any problem keeps the
    /// current state (fail static).
    fn refresh(&mut self) {
        let version = control::read_version();
        if version == 0 || version == self.snapshot_version {
            return;
        }
        self.snapshot_version = version;
        let Ok((Some(bytes), _)) = hostcalls::get_shared_data(crate::snapshot::SNAPSHOT_KEY) else {
            return;
        };
        let snapshot = match crate::snapshot::Snapshot::decode(&bytes) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot decode snapshot {version} from shared data: {e}");
                self.metrics.filter_error();
                return;
            }
        };
        if snapshot.policy_json != self.snapshot_policy {
            match crate::policy::validate_json(&snapshot.policy_json) {
                Ok(v) => {
                    let policy = Arc::new(v.policy);
                    self.metrics = Metrics::define(&policy);
                    self.router.set_policy(policy);
                    self.snapshot_policy = snapshot.policy_json.clone();
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
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<RefCell<Shared>>>,
    keys: Option<Keyring>,
    keys_checked: bool,
    /// Health probes in flight: call token → (policy, stack).
    probes: Vec<(u32, Arc<Policy>, StackId)>,
    ticks: u64,
    /// Set when this root is the control singleton rather than a filter.
    control: Option<control::Control>,
    /// Worker → singleton telemetry queue, once resolved.
    telemetry_queue: Option<u32>,
    /// This worker's wake queue: the singleton pokes it after writing a snapshot.
    wake_queue: Option<u32>,
}

/// Tick period of worker root contexts: health probes are due at most this late, and a
/// snapshot whose wake-up was lost is applied at most this late.
const TICK: Duration = Duration::from_millis(200);
/// Counters are flushed every this many ticks (once a second).
const FLUSH_EVERY: u64 = 5;
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

impl Root {
    fn load_keys(&mut self) {
        if self.keys_checked {
            return;
        }
        self.keys_checked = true;
        match std::env::var(KEYS_ENV) {
            Ok(spec) => match Keyring::parse(&spec) {
                Ok(k) => {
                    info!(
                        "affinity keys loaded (signing key id '{}')",
                        k.current_kid()
                    );
                    self.keys = Some(k);
                }
                Err(e) => error!("{KEYS_ENV} is invalid ({e}); affinity cookies are disabled"),
            },
            Err(_) => {
                warn!("{KEYS_ENV} is not set in the VM environment; affinity cookies are disabled")
            }
        }
    }
}

impl Context for Root {
    fn on_grpc_stream_initial_metadata(&mut self, token: u32, _: u32) {
        if let Some(c) = &mut self.control {
            c.on_stream_open(token);
        }
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        if let Some(c) = &mut self.control {
            c.on_stream_message(token, size);
        }
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        if let Some(c) = &mut self.control {
            c.on_stream_close(token, status, now_ms());
        }
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, _: usize) {
        if let Some(c) = &mut self.control {
            c.on_call_response(token, status);
        }
    }

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
        let Some(shared) = &self.shared else { return };
        let mut s = shared.borrow_mut();
        if !Arc::ptr_eq(&policy, s.router.policy()) {
            return;
        }
        if let Some(state) = s.router.probe_result(id, ok, now_ms()) {
            let name = policy.stacks.get(id).map_or("?", |st| st.name.as_str());
            info!("health probe of stack '{name}' succeeded: circuit breaker is now {state:?}");
            s.metrics.breaker_state(id, state);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        if control::is_control_config(&config) {
            self.control = control::Control::start(&config, now_ms());
            return self.control.is_some();
        }
        self.load_keys();
        let validated = match validate_bytes(&config) {
            Ok(v) => v,
            Err(invalid) => {
                for e in &invalid.errors {
                    error!("invalid policy in plugin configuration: {e}");
                }
                return false;
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
        match &self.shared {
            Some(shared) => {
                let mut s = shared.borrow_mut();
                s.metrics = Metrics::define(&policy);
                s.router.set_policy(policy);
                // The plugin's policy is the bootstrap; a control-plane snapshot, if one
                // was applied, still wins: forget it so `refresh` below applies it again.
                s.snapshot_version = 0;
                s.snapshot_policy.clear();
            }
            None => {
                let metrics = Metrics::define(&policy);
                let router = Router::new(policy, self.keys.clone());
                self.shared = Some(Rc::new(RefCell::new(Shared {
                    router,
                    metrics,
                    snapshot_version: 0,
                    snapshot_policy: String::new(),
                    clock_ms: now_ms(),
                    pairs: Vec::new(),
                })));
            }
        }
        // Register for wake-ups first, then read the snapshot: one written in between is
        // either seen now or announced on the queue (see `control::wake_workers`).
        if self.wake_queue.is_none() {
            self.wake_queue = control::register_wake_queue();
        }
        if let Some(shared) = &self.shared {
            shared.borrow_mut().refresh();
        }
        let _ = hostcalls::set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        if let Some(c) = &mut self.control {
            c.on_tick(now);
            return;
        }
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let mut s = shared.borrow_mut();
        s.clock_ms = now;
        s.refresh();
        let Shared {
            router, metrics, ..
        } = &mut *s;
        self.ticks += 1;
        if self.ticks.is_multiple_of(FLUSH_EVERY) {
            metrics.flush();
            if self.telemetry_queue.is_none() {
                self.telemetry_queue =
                    hostcalls::resolve_shared_queue(&vm_id(), crate::snapshot::TELEMETRY_QUEUE)
                        .ok()
                        .flatten();
            }
            metrics.send_telemetry(self.telemetry_queue, now);
            for id in 0..router.policy().stacks.len() {
                let state = router.breaker_state(id, now);
                metrics.breaker_state(id, state);
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
        if let Some(c) = &mut self.control {
            c.drain_queue();
            return;
        }
        if self.wake_queue == Some(queue) {
            while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue) {}
            if let Some(shared) = &self.shared {
                shared.borrow_mut().refresh();
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Flow {
            shared: self.shared.clone(),
            policy: None,
            stack: None,
            started_ms: 0,
            sampled: false,
            set_cookie: None,
            decision: None,
            responded: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream.
struct Flow {
    shared: Option<Rc<RefCell<Shared>>>,
    /// Policy the decision was made under (stack ids are only meaningful with it).
    policy: Option<Arc<Policy>>,
    stack: Option<StackId>,
    /// Request time (Unix ms, the request clock; the real clock when `sampled`).
    started_ms: u64,
    /// This request's latency is sampled.
    sampled: bool,
    set_cookie: Option<String>,
    decision: Option<String>,
    responded: bool,
}

impl Context for Flow {}

impl Flow {
    fn decide(&mut self, shared: &mut Shared) -> Decision {
        // No snapshot check here: the singleton's wake-up (and the tick) apply new ones.
        self.sampled = shared.metrics.sample_latency();
        let now = if self.sampled {
            shared.clock_ms = now_ms();
            shared.clock_ms
        } else {
            shared.clock_ms
        };
        self.started_ms = now;
        let raw = abi::header_map(MapType::HttpRequestHeaders);
        let mut pairs: Vec<(&[u8], &[u8])> = std::mem::take(&mut shared.pairs);
        let decision = match raw.as_deref() {
            Some(buf) if parse_pairs_into(buf, &mut pairs) => {
                Self::decide_pairs(shared, &pairs, now)
            }
            _ => {
                // The host did not give us the request: route by the default rule, count it.
                shared.metrics.filter_error();
                shared.router.decide_default(now)
            }
        };
        shared.pairs = recycle(pairs);
        decision
    }

    fn decide_pairs(shared: &mut Shared, pairs: &[(&[u8], &[u8])], now: u64) -> Decision {
        let policy = shared.router.policy();
        let geo = policy.classify.geo_header.as_deref().map(str::as_bytes);
        // One pass: client-supplied internal headers, and whether the geo header came.
        let (mut stack_header, mut decision_header, mut geo_header_present) = (false, false, false);
        for (n, _) in pairs {
            let n: &[u8] = n;
            if n == STACK_HEADER.as_bytes() {
                stack_header = true;
            } else if n == DECISION_HEADER.as_bytes() {
                decision_header = true;
            } else if geo == Some(n) {
                geo_header_present = true;
            }
        }
        let needs_source =
            policy.uses_client_ip || (!policy.classify.cidrs.is_empty() && !geo_header_present);
        // Client-supplied internal headers never reach the decision or the upstream.
        for (present, internal) in [
            (stack_header, STACK_HEADER),
            (decision_header, DECISION_HEADER),
        ] {
            if present {
                shared.metrics.spoofed_header();
                if hostcalls::set_map_value(MapType::HttpRequestHeaders, internal, None).is_err() {
                    shared.metrics.filter_error();
                }
            }
        }
        let source = if !needs_source {
            None
        } else {
            hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| crate::cidr::parse_socket_address(&s))
        };
        let req = Request {
            headers: pairs,
            source,
            now_ms: now,
        };
        shared.router.decide(&req)
    }
}

/// This VM's id (the queue namespace shared with the singleton).
fn vm_id() -> String {
    hostcalls::get_property(vec!["plugin_vm_id"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "switchyard".into())
}

impl HttpContext for Flow {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            // No policy configured yet: leave routing to Envoy's default route.
            return Action::Continue;
        };
        let mut guard = shared.borrow_mut();
        let s = &mut *guard;
        let decision = self.decide(s);
        let policy = Arc::clone(s.router.policy());
        let rule_id = policy
            .rules
            .get(decision.rule)
            .map_or("default", |r| r.id.as_str());
        s.metrics.decision(&decision);
        match &decision.outcome {
            Outcome::Stack { id, how } => {
                let name = policy.stacks.get(*id).map_or("", |st| st.name.as_str());
                if hostcalls::set_map_value(MapType::HttpRequestHeaders, STACK_HEADER, Some(name))
                    .is_err()
                {
                    s.metrics.filter_error();
                }
                if policy.debug_header {
                    self.decision = Some(format!(
                        "rule={rule_id}; stack={name}; reason={}{}",
                        how.as_str(),
                        affinity_note(decision.affinity, *how)
                    ));
                }
                self.stack = Some(*id);
                self.set_cookie = decision.set_cookie;
                self.policy = Some(policy);
                Action::Continue
            }
            Outcome::Local(reply) => {
                let body = format!(
                    "{{\"error\":\"no_eligible_stack\",\"rule\":{},\"message\":{},\"retry_after_s\":{}}}",
                    json_string(rule_id),
                    json_string(&reply.message),
                    reply.retry_after_s
                );
                let retry = reply.retry_after_s.to_string();
                let decision_header = format!("rule={rule_id}; reason=no_eligible_stack");
                let mut headers = vec![
                    ("content-type", "application/json"),
                    ("retry-after", retry.as_str()),
                ];
                if policy.debug_header {
                    headers.push((DECISION_HEADER, decision_header.as_str()));
                }
                if hostcalls::send_http_response(
                    u32::from(reply.status),
                    headers,
                    Some(body.as_bytes()),
                )
                .is_err()
                {
                    s.metrics.filter_error();
                    return Action::Continue;
                }
                self.responded = true;
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let (Some(shared), Some(stack)) = (self.shared.clone(), self.stack) else {
            return Action::Continue;
        };
        self.responded = true;
        if let Some(cookie) = self.set_cookie.take() {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, "set-cookie", &cookie);
        }
        if let Some(d) = self.decision.take() {
            let _ =
                hostcalls::set_map_value(MapType::HttpResponseHeaders, DECISION_HEADER, Some(&d));
        }
        let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| parse_status(&s));
        let mut guard = shared.borrow_mut();
        let s = &mut *guard;
        // Host calls are the filter's main cost: the clock is read again only for failures
        // (the breaker needs the real time to open) and for the sampled latency.
        let sampled = self.sampled;
        let failed = status.is_none_or(|c| c >= 500);
        let now = if sampled || failed {
            now_ms()
        } else {
            self.started_ms
        };
        if self.same_policy(s) {
            if let Some(state) = s.router.record(stack, status, now) {
                let name = s
                    .router
                    .policy()
                    .stacks
                    .get(stack)
                    .map_or("?", |st| st.name.as_str());
                warn!("circuit breaker of stack '{name}' is now {state:?}");
                s.metrics.breaker_state(stack, state);
            }
            s.metrics.response(
                stack,
                status,
                sampled.then(|| now.saturating_sub(self.started_ms)),
            );
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.responded {
            return;
        }
        // The stream ended without response headers. Upstream failures (connect failure,
        // reset, timeout) reach `on_http_response_headers` as Envoy's local 503/504, so
        // what ends here is almost always the client going away: count it, but never
        // against the stack's circuit breaker (five cancelled requests must not open it).
        let (Some(shared), Some(stack)) = (self.shared.clone(), self.stack) else {
            return;
        };
        let mut guard = shared.borrow_mut();
        let s = &mut *guard;
        if self.same_policy(s) {
            s.metrics.response(stack, None, None);
        }
    }
}

impl Flow {
    fn same_policy(&self, s: &Shared) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, s.router.policy()))
    }
}

fn affinity_note(event: AffinityEvent, how: How) -> &'static str {
    match (event, how) {
        (_, How::Sticky) | (AffinityEvent::Off, _) => "",
        (AffinityEvent::Miss, _) | (AffinityEvent::Hit, _) => "; affinity=new",
        (AffinityEvent::Forged, _) => "; affinity=forged",
        (AffinityEvent::Expired, _) => "; affinity=expired",
        (AffinityEvent::Stale, _) => "; affinity=stale",
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
