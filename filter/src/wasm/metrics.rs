//! Switchyard's metrics in Envoy's stats (`/stats`, `/stats/prometheus`). Counters are
//! accumulated in the VM and flushed to the host once a second (the root context's tick):
//! one host call per counter per second instead of several per request. The latency
//! histogram and breaker gauges go to the host directly.
//!
//! Names: `switchyard.stack.<stack>.<metric>`, `switchyard.rule.<rule>.matched` and
//! `switchyard.<metric>`; Envoy prefixes them with `wasmcustom.`, and the bootstrap's
//! `stats_tags` turn the stack and rule into Prometheus labels.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::breaker::State;
use std::sync::Arc;

use crate::policy::{response_mask, Policy, StackId};
use crate::router::{AffinityEvent, Decision, How, Outcome};
use crate::snapshot::{StackTelemetry, TelemetryBatch};

const NO_METRIC: u32 = u32::MAX;
/// One response in this many, per stack, has its latency recorded. Envoy's own per-cluster
/// `upstream_rq_time` keeps every sample; this histogram is the per-stack view at a
/// fraction of the host calls.
pub const LATENCY_SAMPLE: u64 = 8;

/// Per-stack counters, in this order.
#[derive(Clone, Copy)]
enum StackCounter {
    Requests = 0,
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
    Reset,
    AffinityHit,
    AffinityMiss,
    BreakerOpened,
    Fallback,
}
const STACK_COUNTERS: [&str; 10] = [
    "rq_total",
    "rq_2xx",
    "rq_3xx",
    "rq_4xx",
    "rq_5xx",
    "rq_reset",
    "affinity_hit",
    "affinity_miss",
    "breaker_opened",
    "fallback_routed",
];

#[derive(Clone, Copy)]
enum GlobalCounter {
    AffinityForged = 0,
    AffinityExpired,
    AffinityStale,
    Hostile,
    Spoofed,
    LocalReplies,
    FilterErrors,
    Queued,
}
const GLOBAL_COUNTERS: [&str; 8] = [
    "affinity_forged",
    "affinity_expired",
    "affinity_stale",
    "hostile_requests",
    "spoofed_headers_removed",
    "local_replies",
    "filter_errors",
    "queued_requests",
];

/// Metric ids and pending counter increments of one VM.
pub struct Metrics {
    counter_ids: Vec<u32>,
    pending: Vec<i64>,
    stacks: usize,
    rules: usize,
    latency: Vec<u32>,
    breaker: Vec<u32>,
    /// Per-stack telemetry for the control service, plus one entry for local replies.
    telemetry: Vec<StackTelemetry>,
    /// Telemetry batches that could not be queued (reported with the next one).
    telemetry_dropped: u64,
    /// Requests routed per stack, for latency sampling.
    routed: Vec<u64>,
    /// The policy (its KPIs and rule ids name the counts below).
    policy: Arc<Policy>,
    /// This window's count per (stack, KPI): `stack * kpis + kpi`.
    kpi_counts: Vec<u64>,
    /// This window's routed requests per (stack, rule): `stack * rules + rule`.
    rule_counts: Vec<u64>,
    /// Every metric this VM defined, by name, kept across policies: Envoy allocates a
    /// new metric for each `define_metric` call, even for a name it has, so defining a
    /// policy's metrics again on every push grew its heap (found by the soak).
    known: Vec<(String, u32)>,
}

/// The host's id for metric `name`, defined once per VM.
fn define_in(known: &mut Vec<(String, u32)>, kind: MetricType, name: String) -> u32 {
    if let Some((_, id)) = known.iter().find(|(n, _)| *n == name) {
        return *id;
    }
    let id = hostcalls::define_metric(kind, &name).unwrap_or(NO_METRIC);
    if id != NO_METRIC {
        known.push((name, id));
    }
    id
}

impl Metrics {
    /// Define every metric of a policy with the host (the names `known` from the
    /// previous policy keep their ids).
    pub fn define(policy: &Arc<Policy>, mut known: Vec<(String, u32)>) -> Self {
        let mut define = |kind, name: String| define_in(&mut known, kind, name);
        let mut counter_ids = Vec::new();
        for s in &policy.stacks {
            for c in STACK_COUNTERS {
                counter_ids.push(define(
                    MetricType::Counter,
                    format!("switchyard.stack.{}.{c}", s.name),
                ));
            }
        }
        for r in &policy.rules {
            counter_ids.push(define(
                MetricType::Counter,
                format!("switchyard.rule.{}.matched", r.id),
            ));
        }
        for c in GLOBAL_COUNTERS {
            counter_ids.push(define(MetricType::Counter, format!("switchyard.{c}")));
        }
        let latency = policy
            .stacks
            .iter()
            .map(|s| {
                define(
                    MetricType::Histogram,
                    format!("switchyard.stack.{}.latency_ms", s.name),
                )
            })
            .collect();
        let breaker = policy
            .stacks
            .iter()
            .map(|s| {
                define(
                    MetricType::Gauge,
                    format!("switchyard.stack.{}.breaker_state", s.name),
                )
            })
            .collect();
        let pending = vec![0; counter_ids.len()];
        let mut telemetry: Vec<StackTelemetry> = policy
            .stacks
            .iter()
            .map(|s| StackTelemetry {
                stack: s.name.clone(),
                ..Default::default()
            })
            .collect();
        telemetry.push(StackTelemetry {
            stack: "_local".into(),
            ..Default::default()
        });
        let (stacks, rules, kpis) = (policy.stacks.len(), policy.rules.len(), policy.kpis.len());
        Self {
            telemetry,
            telemetry_dropped: 0,
            routed: vec![0; stacks],
            policy: Arc::clone(policy),
            kpi_counts: vec![0; stacks * kpis],
            rule_counts: vec![0; stacks * rules],
            counter_ids,
            pending,
            stacks: policy.stacks.len(),
            rules: policy.rules.len(),
            latency,
            breaker,
            known,
        }
    }

    /// The names this VM defined and their ids, for the next policy's [`Metrics::define`].
    pub fn take_known(&mut self) -> Vec<(String, u32)> {
        std::mem::take(&mut self.known)
    }

    fn bump(&mut self, index: usize) {
        if let Some(p) = self.pending.get_mut(index) {
            *p += 1;
        }
    }

    fn stack(&mut self, id: StackId, c: StackCounter) {
        if id < self.stacks {
            self.bump(id * STACK_COUNTERS.len() + c as usize);
        }
    }

    fn global(&mut self, c: GlobalCounter) {
        self.bump(self.stacks * STACK_COUNTERS.len() + self.rules + c as usize);
    }

    /// Count a decision.
    pub fn decision(&mut self, d: &Decision) {
        if d.rule < self.rules {
            self.bump(self.stacks * STACK_COUNTERS.len() + d.rule);
        }
        if d.hostile {
            self.global(GlobalCounter::Hostile);
        }
        match d.affinity {
            AffinityEvent::Forged => self.global(GlobalCounter::AffinityForged),
            AffinityEvent::Expired => self.global(GlobalCounter::AffinityExpired),
            AffinityEvent::Stale => self.global(GlobalCounter::AffinityStale),
            _ => {}
        }
        match d.outcome {
            Outcome::Stack { id, how } => {
                if d.rule < self.rules {
                    if let Some(c) = self.rule_counts.get_mut(id * self.rules + d.rule) {
                        *c += 1;
                    }
                }
                if let Some(t) = self.telemetry.get_mut(id).filter(|_| id < self.stacks) {
                    if how == How::Sticky {
                        t.sticky_requests += 1;
                    } else if d.set_cookie.is_some() {
                        t.new_users += 1;
                    }
                    match d.affinity {
                        AffinityEvent::Hit => t.affinity_hit += 1,
                        AffinityEvent::Off => {}
                        AffinityEvent::Forged => {
                            t.affinity_forged += 1;
                            t.affinity_miss += 1;
                        }
                        _ => t.affinity_miss += 1,
                    }
                }
                match d.affinity {
                    AffinityEvent::Hit => self.stack(id, StackCounter::AffinityHit),
                    AffinityEvent::Off => {}
                    _ => self.stack(id, StackCounter::AffinityMiss),
                }
                if how == How::Fallback {
                    self.stack(id, StackCounter::Fallback);
                }
            }
            Outcome::Queue { .. } => self.global(GlobalCounter::Queued),
            Outcome::Local(_) => {
                self.global(GlobalCounter::LocalReplies);
                if let Some(t) = self.telemetry.last_mut() {
                    t.local_replies += 1;
                }
            }
        }
    }

    /// Whether the latency of this request, routed to stack `id`, is sampled (one in
    /// [`LATENCY_SAMPLE`] of each stack's requests).
    pub fn sample_latency(&mut self, id: StackId) -> bool {
        self.routed.get_mut(id).is_some_and(|n| {
            *n += 1;
            n.is_multiple_of(LATENCY_SAMPLE)
        })
    }

    /// Count a response from a stack (`None`: the stream ended without one), with its
    /// latency (µs) when sampled, and the KPIs its request matched (`kpis`, a mask from
    /// [`crate::policy::request_mask`]) whose status matches.
    pub fn response(
        &mut self,
        id: StackId,
        status: Option<u32>,
        latency_us: Option<u64>,
        kpis: u16,
    ) {
        let latency_ms = latency_us.map(|us| us / 1_000);
        self.stack(id, StackCounter::Requests);
        let class = match status {
            Some(200..=299) => StackCounter::Status2xx,
            Some(300..=399) => StackCounter::Status3xx,
            Some(400..=499) => StackCounter::Status4xx,
            Some(_) => StackCounter::Status5xx,
            None => StackCounter::Reset,
        };
        self.stack(id, class);
        if let Some(t) = self.telemetry.get_mut(id).filter(|_| id < self.stacks) {
            t.requests += 1;
            match status {
                Some(200..=299) => t.status_2xx += 1,
                Some(400..=499) => t.status_4xx += 1,
                Some(500..) | None => t.status_5xx += 1,
                _ => {}
            }
            // Unbiased estimate of the window's latency sum from the samples.
            t.latency_ms_sum += latency_ms.unwrap_or(0) * LATENCY_SAMPLE;
            if let Some(us) = latency_us {
                t.latency.record(us);
            }
            if kpis != 0 {
                let mut hits = response_mask(&self.policy.kpis, kpis, status);
                let base = id * self.policy.kpis.len();
                while hits != 0 {
                    let i = hits.trailing_zeros() as usize;
                    hits &= hits - 1;
                    if let Some(c) = self.kpi_counts.get_mut(base + i) {
                        *c += 1;
                    }
                }
            }
        }
        if let (Some(ms), Some(&h)) = (latency_ms, self.latency.get(id)) {
            if h != NO_METRIC {
                let _ = hostcalls::record_metric(h, ms);
            }
        }
    }

    /// Publish a breaker state change (a transition the breaker reported): a change to
    /// Open counts one `breaker_opened`.
    pub fn breaker_changed(&mut self, id: StackId, state: State) {
        if state == State::Open {
            self.stack(id, StackCounter::BreakerOpened);
            if let Some(t) = self.telemetry.get_mut(id).filter(|_| id < self.stacks) {
                t.breaker_opens += 1;
            }
        }
        self.breaker_gauge(id, state);
    }

    /// Republish a breaker's current state in its gauge (the flush does this every
    /// second, so a state reached lazily, e.g. Open → HalfOpen, shows). Counts nothing:
    /// a counter must count transitions, never re-count a state.
    pub fn breaker_gauge(&mut self, id: StackId, state: State) {
        if let Some(&g) = self.breaker.get(id) {
            if g != NO_METRIC {
                let _ = hostcalls::record_metric(g, state.gauge() as u64);
            }
        }
    }

    pub fn spoofed_header(&mut self) {
        self.global(GlobalCounter::Spoofed);
    }

    pub fn filter_error(&mut self) {
        self.global(GlobalCounter::FilterErrors);
    }

    /// This window's telemetry for the control singleton, encoded, and a new window; `None`
    /// when there is nothing to report. Bounded: one batch per flush, one entry per stack
    /// plus local replies. Say whether it was queued with [`Metrics::telemetry_queued`].
    pub fn take_telemetry(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        // Named counts move into the stacks' entries (only the non-zero ones).
        let p = &self.policy;
        let (kpis, rules) = (p.kpis.len(), p.rules.len());
        for (id, t) in self.telemetry.iter_mut().take(self.stacks).enumerate() {
            for (k, c) in p
                .kpis
                .iter()
                .zip(self.kpi_counts.iter_mut().skip(id * kpis))
            {
                if *c > 0 {
                    t.kpis.push((k.name.clone(), std::mem::take(c)));
                }
            }
            for (r, c) in p
                .rules
                .iter()
                .zip(self.rule_counts.iter_mut().skip(id * rules))
            {
                if *c > 0 {
                    t.by_rule.push((r.id.clone(), std::mem::take(c)));
                }
            }
        }
        if self.telemetry_dropped == 0 && self.telemetry.iter().all(StackTelemetry::is_empty) {
            return None;
        }
        // Moved out, each entry replaced by an empty one for the next window.
        let stacks: Vec<StackTelemetry> = self
            .telemetry
            .iter_mut()
            .filter(|t| !t.is_empty())
            .map(|t| {
                let fresh = StackTelemetry {
                    stack: t.stack.clone(),
                    ..Default::default()
                };
                std::mem::replace(t, fresh)
            })
            .collect();
        let batch = TelemetryBatch {
            node_id: String::new(),
            window_end_unix_ms: now_ms,
            window_ms: 1000,
            stacks,
            dropped: self.telemetry_dropped,
        };
        Some(batch.encode())
    }

    /// Whether the batch from [`Metrics::take_telemetry`] was queued; one that was not is
    /// counted and reported with the next.
    pub fn telemetry_queued(&mut self, queued: bool) {
        self.telemetry_dropped = if queued {
            0
        } else {
            self.telemetry_dropped + 1
        };
    }

    /// Send accumulated counter increments to the host.
    pub fn flush(&mut self) {
        for (p, &id) in self.pending.iter_mut().zip(&self.counter_ids) {
            if *p != 0 && id != NO_METRIC {
                let _ = hostcalls::increment_metric(id, *p);
            }
            *p = 0;
        }
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        // A policy swap replaces the metrics: do not lose what was counted.
        self.flush();
    }
}
