//! The per-request context of a worker VM: reads the request headers in one host call,
//! asks the router for a decision, applies it (routing header or local reply), sets the
//! affinity cookie and records the outcome. This is the benchmarked path: it must add no
//! host call per request, and when the host misbehaves the request still gets a decision.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::worker::WorkerState;
use super::{abi, now_us};
use crate::classify::Request;
use crate::headers::{parse_pairs_into, parse_status, recycle};
use crate::policy::{request_mask, LocalReply, Policy, StackId};
use crate::router::{AffinityEvent, Decision, How, Outcome};

/// Request header carrying the chosen stack; Envoy's route table maps it to a cluster.
pub const STACK_HEADER: &str = "x-switchyard-stack";
/// Optional response header explaining the decision.
pub const DECISION_HEADER: &str = "x-switchyard-decision";
/// Degraded mode (`docs/degraded-mode.md`): the routing context a queued request carries
/// to the intake, always set by the filter (a client's values are replaced), and the
/// idempotency key (the client's, else generated).
pub const QUEUE_RULE_HEADER: &str = "x-switchyard-queue-rule";
pub const QUEUE_STACK_HEADER: &str = "x-switchyard-queue-stack";
pub const QUEUE_SEGMENT_HEADER: &str = "x-switchyard-queue-segment";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Set by the intake on each of its responses: a queued request's 5xx without it came
/// from Envoy (the intake is unreachable), and is replaced by the route's local reply.
pub const INTAKE_HEADER: &str = "x-switchyard-intake";

/// Queued requests of this VM: with the time and the request, the seed of generated
/// idempotency keys (proxy-wasm has no OS randomness).
static QUEUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One HTTP stream.
pub struct Flow {
    /// The worker's state; `None` in a VM that is not a configured worker (pass-through).
    shared: Option<Rc<RefCell<WorkerState>>>,
    /// Policy the decision was made under (stack ids are only meaningful with it).
    policy: Option<Arc<Policy>>,
    stack: Option<StackId>,
    /// Request time (Unix µs: the request clock; the real clock, read after the
    /// decision, when `sampled`).
    started_us: u64,
    /// This request's latency is sampled.
    sampled: bool,
    /// The policy's KPIs whose method and path this request matched (bit per KPI).
    kpis: u16,
    set_cookie: Option<String>,
    decision: Option<String>,
    responded: bool,
    /// A queued request: the index of its rule, whose local reply is sent instead of
    /// Envoy's own 5xx when the intake cannot be reached.
    queued: Option<usize>,
}

impl Context for Flow {}

impl Flow {
    pub fn new(shared: Option<Rc<RefCell<WorkerState>>>) -> Self {
        Flow {
            shared,
            policy: None,
            stack: None,
            started_us: 0,
            sampled: false,
            kpis: 0,
            set_cookie: None,
            decision: None,
            responded: false,
            queued: None,
        }
    }

    fn decide(&mut self, shared: &mut WorkerState) -> Decision {
        // No snapshot check here: the singleton's wake-up (and the tick) apply new ones.
        let now = shared.clock_ms;
        self.started_us = now * 1_000;
        let raw = abi::header_map(MapType::HttpRequestHeaders);
        let mut pairs: Vec<(&[u8], &[u8])> = std::mem::take(&mut shared.pairs);
        let decision = match raw.as_deref() {
            Some(buf) if parse_pairs_into(buf, &mut pairs) => {
                self.kpis = kpi_candidates(shared.router.policy(), &pairs);
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

    fn decide_pairs(shared: &mut WorkerState, pairs: &[(&[u8], &[u8])], now: u64) -> Decision {
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
                // Sampled per stack: a worker-wide 1-in-8 would alias with round-robin
                // (two stacks alternating: every sample on the same one).
                if s.metrics.sample_latency(*id) {
                    let us = now_us();
                    self.sampled = true;
                    self.started_us = us;
                    s.clock_ms = us / 1_000;
                }
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
            Outcome::Queue {
                intended,
                region,
                channel,
            } => {
                let Some(rule) = policy.rules.get(decision.rule) else {
                    return Action::Continue;
                };
                fn name(v: Option<&String>) -> &str {
                    v.map_or("-", |s| s.as_str())
                }
                let segment = format!(
                    "{}/{}",
                    name(region.and_then(|r| policy.regions.get(usize::from(r)))),
                    name(policy.channels.get(usize::from(*channel)))
                );
                let key =
                    match hostcalls::get_map_value(MapType::HttpRequestHeaders, IDEMPOTENCY_HEADER)
                    {
                        Ok(Some(k)) => k,
                        _ => generated_key(s.clock_ms),
                    };
                let cluster = rule.route.queue.as_ref().map_or("", |q| q.cluster.as_str());
                for (header, value) in [
                    (STACK_HEADER, cluster),
                    (IDEMPOTENCY_HEADER, key.as_str()),
                    (QUEUE_RULE_HEADER, rule_id),
                    (
                        QUEUE_STACK_HEADER,
                        name(intended.and_then(|i| policy.stacks.get(i)).map(|s| &s.name)),
                    ),
                    (QUEUE_SEGMENT_HEADER, segment.as_str()),
                ] {
                    if hostcalls::set_map_value(MapType::HttpRequestHeaders, header, Some(value))
                        .is_err()
                    {
                        s.metrics.filter_error();
                    }
                }
                self.queued = Some(decision.rule);
                self.policy = Some(policy);
                Action::Continue
            }
            Outcome::Local(reply) => {
                if send_local(rule_id, reply, policy.debug_header).is_err() {
                    s.metrics.filter_error();
                    return Action::Continue;
                }
                self.responded = true;
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(rule) = self.queued.take() {
            // Envoy's own 5xx (connect failure, no healthy host, timeout) carries no
            // intake header: the intake is unreachable, answer as if nothing were queued.
            self.responded = true;
            let header = |h| hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, h);
            let failed = matches!(header(":status"), Ok(Some(c)) if c.first() == Some(&b'5'));
            if failed && !matches!(header(INTAKE_HEADER), Ok(Some(_))) {
                if let Some(p) = &self.policy {
                    if let Some(rule) = p.rules.get(rule) {
                        if send_local(&rule.id, &rule.route.local, p.debug_header).is_ok() {
                            return Action::Pause;
                        }
                    }
                }
            }
            return Action::Continue;
        }
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
        let end_us = if sampled || failed {
            now_us()
        } else {
            self.started_us
        };
        let now = end_us / 1_000;
        if self.same_policy(s) {
            if let Some(state) = s.router.record(stack, status, now) {
                let name = s
                    .router
                    .policy()
                    .stacks
                    .get(stack)
                    .map_or("?", |st| st.name.as_str());
                warn!("circuit breaker of stack '{name}' is now {state:?}");
                s.metrics.breaker_changed(stack, state);
            }
            s.metrics.response(
                stack,
                status,
                sampled.then(|| end_us.saturating_sub(self.started_us)),
                self.kpis,
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
            s.metrics.response(stack, None, None, 0);
        }
    }
}

impl Flow {
    fn same_policy(&self, s: &WorkerState) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, s.router.policy()))
    }
}

/// The KPIs whose method and path prefix this request matches; nothing to scan when the
/// policy declares none (the common case pays one length check).
fn kpi_candidates(policy: &Policy, pairs: &[(&[u8], &[u8])]) -> u16 {
    if policy.kpis.is_empty() {
        return 0;
    }
    let (mut method, mut path): (&[u8], &[u8]) = (b"", b"");
    for (n, v) in pairs {
        match *n {
            b":method" => method = v,
            b":path" => path = v,
            _ => {}
        }
    }
    request_mask(&policy.kpis, method, path)
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

/// Send a local reply: the route's (nothing eligible, or a queue's intake unreachable),
/// or the one for ambiguous geography.
fn send_local(
    rule_id: &str,
    reply: &LocalReply,
    debug: bool,
) -> Result<(), proxy_wasm::types::Status> {
    let body = format!(
        "{{\"error\":\"{}\",\"rule\":{},\"message\":{},\"retry_after_s\":{}}}",
        reply.reason,
        json_string(rule_id),
        json_string(&reply.message),
        reply.retry_after_s
    );
    let retry = reply.retry_after_s.to_string();
    let decision_header = format!("rule={rule_id}; reason={}", reply.reason);
    let mut headers = vec![("content-type", "application/json")];
    if reply.retry_after_s > 0 {
        headers.push(("retry-after", retry.as_str()));
    }
    if debug {
        headers.push((DECISION_HEADER, decision_header.as_str()));
    }
    hostcalls::send_http_response(u32::from(reply.status), headers, Some(body.as_bytes()))
}

/// An idempotency key for a queued request without one: `sy-` and 32 hex digits from
/// this VM's queued-request counter, the time and the request's `x-request-id` (Envoy's
/// random UUID), through the stable hash. Unique enough to tell orders apart, never a
/// secret.
fn generated_key(now_ms: u64) -> String {
    let n = QUEUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-request-id")
        .ok()
        .flatten()
        .unwrap_or_default();
    let a = crate::hash::hash64(n ^ now_us(), &id);
    let b = crate::hash::hash64(a ^ now_ms.rotate_left(32), &id);
    format!("sy-{a:016x}{b:016x}")
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
