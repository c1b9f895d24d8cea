//! Telemetry traces for replay (format in `docs/traces.md`), the deterministic generator
//! of the shipped scenarios (`examples/scenarios/`), and a run of the detector over a
//! trace that reports what it found against the trace's expectations.
//!
//! A trace carries, per window and stack, counts and latency percentiles (or a sparse
//! histogram); [`Trace::windows`] turns one window into [`StackWindow`]s, synthesising a
//! log-normal histogram through the two percentiles when no histogram is given. Parsing
//! validates strictly and names the field path of every problem.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchyard_filter::histogram::{upper_bound, BUCKETS};

use super::clock::UnixMs;
use super::detection::{
    erfc, DetectContext, Detector, DetectorConfig, Finding, Severity, Slo, StackInfo,
};
use super::events::{valid_name, Event};
use super::signals::{Latency, NodeSlice, StackWindow};

/// The format tag of version 1.
pub const FORMAT: &str = "switchyard-trace/1";

/// A telemetry trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    pub format: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub window_ms: u64,
    pub start_ms: UnixMs,
    pub stacks: Vec<StackInfo>,
    #[serde(default)]
    pub slo: Slo,
    #[serde(default)]
    pub events: Vec<Event>,
    /// When the true SLO breach begins (`None`: never).
    pub breach_at_ms: Option<UnixMs>,
    #[serde(default)]
    pub expect: Expect,
    pub windows: Vec<TraceWindow>,
}

/// What a correct detector does on this trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// `stack/signal` that must be confirmed (e.g. `green/p99_ms`).
    pub confirm: Option<String>,
    /// ... within this long after `fault_at_ms`.
    pub confirm_within_ms: Option<u64>,
    /// When the fault starts (may precede the SLO breach).
    pub fault_at_ms: Option<UnixMs>,
    /// A warning must come before `breach_at_ms`.
    pub warn_before_breach: bool,
    /// The confirmed finding must name this event as the suspect deployment.
    pub suspect_event: Option<String>,
    /// Other confirmed findings that are not false alarms (`stack/signal`, `stack/*`).
    pub allowed: Vec<String>,
}

/// One window: its start and each stack's sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceWindow {
    pub t: UnixMs,
    pub stacks: BTreeMap<String, Sample>,
}

/// One stack over one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub req: u64,
    #[serde(default)]
    pub err: u64,
    /// Latency percentiles (ms); ignored when `hist` is given.
    #[serde(default)]
    pub p50: f64,
    #[serde(default)]
    pub p99: f64,
    /// Sparse histogram over the filter's bucket layout: [[bucket, count], …].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hist: Option<Vec<(u16, u32)>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kpi: BTreeMap<String, u64>,
    /// Saturation 0..1 (e.g. connection-pool use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sat: Option<f64>,
    /// Breaker openings.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub brk: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A trace that failed validation: every problem with its field path.
#[derive(Debug, thiserror::Error)]
#[error("invalid trace: {}", .0.join("; "))]
pub struct TraceError(pub Vec<String>);

impl Trace {
    /// Parse and validate.
    pub fn parse(json: &str) -> Result<Self, TraceError> {
        let t: Trace =
            serde_json::from_str(json).map_err(|e| TraceError(vec![format!("$: {e}")]))?;
        t.validate()?;
        Ok(t)
    }

    pub fn validate(&self) -> Result<(), TraceError> {
        let mut p = Vec::new();
        if self.format != FORMAT {
            p.push(format!("format: must be {FORMAT:?}"));
        }
        if self.window_ms == 0 || self.window_ms > 86_400_000 {
            p.push("window_ms: must be 1 ms to 1 day".into());
        }
        if self.stacks.is_empty() {
            p.push("stacks: at least one stack".into());
        }
        for (i, s) in self.stacks.iter().enumerate() {
            if !valid_name(&s.name) {
                p.push(format!(
                    "stacks[{i}].name: must be 1-64 of A-Z a-z 0-9 . _ -"
                ));
            }
            if self.stacks[..i].iter().any(|o| o.name == s.name) {
                p.push(format!("stacks[{i}].name: duplicate {:?}", s.name));
            }
        }
        if !(self.slo.error_rate > 0.0 && self.slo.error_rate < 1.0) {
            p.push("slo.error_rate: must be in (0, 1)".into());
        }
        if !(self.slo.p99_ms > 0.0 && self.slo.p99_ms.is_finite()) {
            p.push("slo.p99_ms: must be positive".into());
        }
        for (i, e) in self.events.iter().enumerate() {
            if e.to_ms < e.from_ms {
                p.push(format!("events[{i}].to: must not be before from"));
            }
            if !valid_name(&e.id) {
                p.push(format!("events[{i}].id: must be 1-64 of A-Z a-z 0-9 . _ -"));
            }
        }
        for (i, w) in self.windows.iter().enumerate() {
            let want = self.start_ms + i as u64 * self.window_ms;
            if w.t != want {
                p.push(format!(
                    "windows[{i}].t: must be {want} (start_ms + i·window_ms)"
                ));
            }
            for (name, s) in &w.stacks {
                let path = format!("windows[{i}].stacks.{name}");
                if !self.stacks.iter().any(|x| &x.name == name) {
                    p.push(format!("{path}: unknown stack"));
                }
                if s.err > s.req {
                    p.push(format!("{path}.err: more errors than requests"));
                }
                if s.hist.is_none()
                    && s.req > 0
                    && !(s.p50 > 0.0 && s.p50 <= s.p99 && s.p99.is_finite())
                {
                    p.push(format!("{path}.p99: need 0 < p50 <= p99 (ms) or a hist"));
                }
                if let Some(h) = &s.hist {
                    if h.iter().any(|(b, _)| usize::from(*b) >= BUCKETS) {
                        p.push(format!("{path}.hist: bucket index out of range"));
                    }
                }
                if s.sat.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                    p.push(format!("{path}.sat: must be in 0..1"));
                }
            }
            if p.len() > 50 {
                p.push("…".into());
                break;
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(TraceError(p))
        }
    }

    /// The stacks' windows of window `i`.
    pub fn windows(&self, i: usize) -> Vec<StackWindow> {
        let w = &self.windows[i];
        w.stacks
            .iter()
            .map(|(name, s)| {
                let mut sw = StackWindow::new(name, w.t, self.window_ms);
                sw.requests = s.req;
                sw.errors = s.err;
                sw.breaker_opens = s.brk;
                sw.kpis = s.kpi.clone();
                sw.latency = match &s.hist {
                    Some(h) => Latency { buckets: h.clone() },
                    None => lognormal_latency(s.req, s.p50, s.p99),
                };
                if s.brk > 0 {
                    sw.by_node.insert(
                        "trace".into(),
                        NodeSlice {
                            requests: s.req,
                            errors: s.err,
                            local_replies: 0,
                            breaker_opens: s.brk,
                        },
                    );
                }
                sw
            })
            .collect()
    }

    /// Saturation inputs of window `i`.
    pub fn saturation(&self, i: usize) -> BTreeMap<String, f64> {
        self.windows[i]
            .stacks
            .iter()
            .filter_map(|(n, s)| s.sat.map(|v| (n.clone(), v)))
            .collect()
    }
}

fn phi(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// `n` latencies spread log-normally with the given median and p99 (ms), binned into the
/// filter's buckets (cumulative rounding keeps the total exactly `n`).
pub fn lognormal_latency(n: u64, p50_ms: f64, p99_ms: f64) -> Latency {
    if n == 0 || p50_ms <= 0.0 {
        return Latency::default();
    }
    let mu = (p50_ms * 1_000.0).ln();
    let sigma = ((p99_ms.max(p50_ms) / p50_ms).ln() / 2.326_348).max(0.01);
    let cdf = |us: f64| {
        if us <= 0.0 {
            0.0
        } else {
            phi((us.ln() - mu) / sigma)
        }
    };
    let mut buckets = Vec::new();
    let mut prev = 0u64;
    for b in 0..BUCKETS {
        let upper = if b + 1 == BUCKETS {
            n
        } else {
            ((cdf((upper_bound(b) + 1) as f64) * n as f64).round() as u64).min(n)
        };
        if upper > prev {
            buckets.push((b as u16, (upper - prev).min(u64::from(u32::MAX)) as u32));
            prev = upper;
        }
    }
    Latency { buckets }
}

/// What a detector run over a trace saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub name: String,
    /// Findings when they started or escalated (first warn, first confirmed of a streak).
    pub timeline: Vec<Finding>,
    /// Confirmed streaks outside the expectation.
    pub false_alarms: Vec<String>,
    /// Warn-only streaks outside the expectation.
    pub stray_warnings: usize,
    /// For the expected `stack/signal`.
    pub first_warn_ms: Option<UnixMs>,
    pub first_confirmed_ms: Option<UnixMs>,
    pub suspect: Option<String>,
    /// `breach_at - first warn` (positive: before the breach).
    pub lead_warn_ms: Option<i64>,
    pub lead_confirmed_ms: Option<i64>,
}

fn matches(pattern: &str, f: &Finding) -> bool {
    match pattern.split_once('/') {
        Some((s, "*")) => s == f.stack,
        Some((s, sig)) => s == f.stack && sig == f.signal.key(),
        None => false,
    }
}

/// Run a fresh detector over every window of the trace.
pub fn run_detector(trace: &Trace, mut cfg: DetectorConfig) -> RunReport {
    cfg.slo = trace.slo;
    let mut d = Detector::new(cfg);
    let mut r = RunReport {
        name: trace.name.clone(),
        ..RunReport::default()
    };
    let mut reported: BTreeMap<(String, String), (u64, Severity)> = BTreeMap::new();
    let mut stray: BTreeMap<(String, String), bool> = BTreeMap::new();
    for i in 0..trace.windows.len() {
        let sat = trace.saturation(i);
        let ctx = DetectContext {
            events: &trace.events,
            saturation: Some(&sat),
            topology: &trace.stacks,
        };
        let ws = trace.windows(i);
        for f in d.observe(&ws, &ctx) {
            if f.stale {
                continue;
            }
            let key = (f.stack.clone(), f.signal.key());
            let prev = reported.get(&key).copied();
            let new_streak = prev.is_none_or(|(onset, _)| onset != f.onset_ms);
            let escalated = new_streak || prev.is_some_and(|(_, s)| s < f.severity);
            if !escalated {
                continue;
            }
            reported.insert(key.clone(), (f.onset_ms, f.severity));
            let expected = trace
                .expect
                .confirm
                .as_deref()
                .is_some_and(|p| matches(p, &f));
            if expected {
                if r.first_warn_ms.is_none() {
                    r.first_warn_ms = Some(f.at_ms);
                }
                if f.severity == Severity::Confirmed && r.first_confirmed_ms.is_none() {
                    r.first_confirmed_ms = Some(f.at_ms);
                    r.suspect = f.suspect_deployment().map(str::to_string);
                }
            } else if !trace.expect.allowed.iter().any(|p| matches(p, &f)) {
                if f.severity == Severity::Confirmed {
                    r.false_alarms.push(format!(
                        "{}/{} at {} ({:?}, observed {:.4}, baseline {:?})",
                        f.stack, f.signal, f.at_ms, f.reasons, f.observed, f.baseline
                    ));
                    stray.insert(key.clone(), true);
                } else {
                    stray.entry(key.clone()).or_insert(false);
                    r.stray_warnings += 1;
                }
            }
            r.timeline.push(f);
        }
    }
    if let Some(b) = trace.breach_at_ms {
        r.lead_warn_ms = r.first_warn_ms.map(|w| b as i64 - w as i64);
        r.lead_confirmed_ms = r.first_confirmed_ms.map(|w| b as i64 - w as i64);
    }
    r
}

impl RunReport {
    /// Problems against the trace's expectations (empty: as expected).
    pub fn check(&self, trace: &Trace) -> Vec<String> {
        let e = &trace.expect;
        let mut p = Vec::new();
        if !self.false_alarms.is_empty() {
            p.push(format!("false alarms: {:?}", self.false_alarms));
        }
        if let Some(c) = &e.confirm {
            match self.first_confirmed_ms {
                None => p.push(format!("{c} never confirmed")),
                Some(at) => {
                    if let (Some(within), Some(fault)) = (e.confirm_within_ms, e.fault_at_ms) {
                        if at > fault + within {
                            p.push(format!(
                                "{c} confirmed {} ms after the fault (limit {within})",
                                at - fault
                            ));
                        }
                    }
                }
            }
            if e.warn_before_breach {
                match (self.first_warn_ms, trace.breach_at_ms) {
                    (Some(w), Some(b)) if w < b => {}
                    (w, b) => p.push(format!(
                        "no warning before the breach (warn {w:?}, breach {b:?})"
                    )),
                }
            }
            if e.suspect_event.is_some() && self.suspect != e.suspect_event {
                p.push(format!(
                    "suspect {:?}, want {:?}",
                    self.suspect, e.suspect_event
                ));
            }
        }
        p
    }
}

/// What the whole pipeline (detector → triggers → incident workflow) did on a trace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkflowReport {
    pub name: String,
    /// Every workflow transition, in order.
    pub decisions: Vec<super::incident::Decision>,
    /// When the first proposal awaiting approval appeared, and for which stack.
    pub first_recommendation_ms: Option<UnixMs>,
    pub first_recommendation_stack: Option<String>,
    pub first_recommendation: Option<String>,
    /// `breach_at - first recommendation`.
    pub lead_ms: Option<i64>,
}

/// Replay a trace through the detector and the incident workflow on `store`, under a
/// virtual clock at each window's end. Nobody approves: the report shows what would be
/// recommended, and when. Stack status for the dependency checks comes from the trace:
/// current and peak requests/s seen so far, and the capacity the trace declares; a stack
/// with a hard-down finding is unhealthy.
pub fn run_workflow(
    trace: &Trace,
    mut dcfg: DetectorConfig,
    icfg: super::incident::IncidentConfig,
    store: std::sync::Arc<dyn crate::store::Store>,
) -> Result<WorkflowReport, super::incident::IncidentError> {
    use super::detection::Reason;
    use super::incident::{triggers_from_findings, Context, IncidentEngine, Phase, StackStatus};
    dcfg.slo = trace.slo;
    let mut d = Detector::new(dcfg);
    let engine = IncidentEngine::new(store, icfg);
    let mut r = WorkflowReport {
        name: trace.name.clone(),
        ..WorkflowReport::default()
    };
    let mut peak: BTreeMap<String, f64> = BTreeMap::new();
    let secs = trace.window_ms as f64 / 1_000.0;
    for i in 0..trace.windows.len() {
        let now = trace.windows[i].t + trace.window_ms;
        let sat = trace.saturation(i);
        let ws = trace.windows(i);
        let findings = d.observe(
            &ws,
            &DetectContext {
                events: &trace.events,
                saturation: Some(&sat),
                topology: &trace.stacks,
            },
        );
        let mut stacks = Vec::new();
        for st in &trace.stacks {
            let rps = ws
                .iter()
                .find(|w| w.stack == st.name)
                .map_or(0.0, |w| w.requests as f64 / secs);
            let p = peak.entry(st.name.clone()).or_insert(0.0);
            *p = p.max(rps);
            stacks.push(StackStatus {
                name: st.name.clone(),
                group: st.group.clone(),
                segments: st.segments.clone(),
                rules: st.rules.clone(),
                healthy: !findings
                    .iter()
                    .any(|f| f.stack == st.name && f.reasons.contains(&Reason::HardDown)),
                rps,
                peak_rps: *p,
                capacity_rps: st.capacity_rps,
            });
        }
        for t in triggers_from_findings(&findings) {
            r.decisions.extend(engine.trigger(t, now)?.decisions);
        }
        let out = engine.tick(
            now,
            &Context {
                findings: &findings,
                stacks: &stacks,
                events: &trace.events,
            },
        )?;
        for dcs in &out.decisions {
            if dcs.phase == Phase::AwaitingApproval && r.first_recommendation_ms.is_none() {
                r.first_recommendation_ms = Some(dcs.at_ms);
                r.first_recommendation_stack = dcs.stack.clone();
                r.first_recommendation = dcs.action.clone();
            }
        }
        r.decisions.extend(out.decisions);
    }
    if let (Some(b), Some(f)) = (trace.breach_at_ms, r.first_recommendation_ms) {
        r.lead_ms = Some(b as i64 - f as i64);
    }
    Ok(r)
}

/// Deterministic pseudo-random numbers (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 40.0 {
            let l = (-lambda).exp();
            let (mut k, mut p) = (0u64, 1.0);
            loop {
                p *= self.unit();
                if p <= l {
                    return k;
                }
                k += 1;
            }
        }
        (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64
    }
}

/// The shipped scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Clean7d,
    FlashSale,
    SlowBurn,
    KpiDip,
    BadCanary,
    DeadStack,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Clean7d,
        Scenario::FlashSale,
        Scenario::SlowBurn,
        Scenario::KpiDip,
        Scenario::BadCanary,
        Scenario::DeadStack,
    ];
    /// File name under `examples/scenarios/`.
    pub fn file(self) -> &'static str {
        match self {
            Scenario::Clean7d => "clean-7d.json",
            Scenario::FlashSale => "flash-sale.json",
            Scenario::SlowBurn => "slow-burn.json",
            Scenario::KpiDip => "kpi-dip.json",
            Scenario::BadCanary => "bad-canary.json",
            Scenario::DeadStack => "dead-stack.json",
        }
    }
}

const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;
/// Monday 2026-11-02 00:00 UTC.
pub const SCENARIO_EPOCH: UnixMs = 1_796_083_200_000 - 29 * DAY;

/// Load of the storefront at `t` relative to its daily peak (0.25..1): lowest at 04:00,
/// highest at 16:00, weekends at 60 %.
pub fn diurnal(t: UnixMs) -> f64 {
    let h = (t % DAY) as f64 / HOUR as f64;
    let shape = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * (h - 4.0) / 24.0).cos();
    let weekend = super::baseline::is_weekend(t / HOUR);
    (0.25 + 0.75 * shape) * if weekend { 0.6 } else { 1.0 }
}

/// What a stack does at a time (means; the generator adds noise).
#[derive(Debug, Clone, Copy)]
struct Profile {
    rps: f64,
    err_rate: f64,
    p50: f64,
    p99: f64,
    orders_per_req: f64,
    sat: f64,
    brk: u64,
}

fn healthy(peak_rps: f64, t: UnixMs) -> Profile {
    let load = diurnal(t);
    let h = (t % DAY) as f64 / HOUR as f64;
    let conv = 0.8 + 0.4 * (0.5 - 0.5 * (2.0 * std::f64::consts::PI * (h - 8.0) / 24.0).cos());
    Profile {
        rps: peak_rps * load,
        err_rate: 0.0004,
        p50: 60.0 * (1.0 + 0.15 * load),
        p99: 220.0 * (1.0 + 0.2 * load),
        orders_per_req: 0.025 * conv,
        sat: 0.2 + 0.4 * load,
        brk: 0,
    }
}

fn sample(rng: &mut Rng, p: &Profile, window_ms: u64) -> Sample {
    let secs = window_ms as f64 / 1_000.0;
    let wobble = (1.0 + 0.02 * rng.normal()).max(0.0);
    let req = rng.poisson(p.rps * secs * wobble);
    let err = rng.poisson(req as f64 * p.err_rate).min(req);
    let orders = rng.poisson(req as f64 * p.orders_per_req);
    let j = 1.0 + 0.03 * rng.normal();
    let round = |v: f64| (v * 10.0).round() / 10.0;
    let mut kpi = BTreeMap::new();
    kpi.insert("orders".to_string(), orders);
    Sample {
        req,
        err,
        p50: round(p.p50 * j),
        p99: round(p.p99 * j),
        hist: None,
        kpi,
        sat: Some(((p.sat + 0.02 * rng.normal()).clamp(0.0, 1.0) * 1_000.0).round() / 1_000.0),
        brk: p.brk,
    }
}

fn stack(name: &str, group: &str, segments: &[&str]) -> StackInfo {
    StackInfo {
        name: name.into(),
        group: group.into(),
        segments: segments.iter().map(|s| s.to_string()).collect(),
        rules: Vec::new(),
        // Provisioned for 2.5× its own daily peak (the generator's peaks: 100 rps per
        // web stack, 40 for eu).
        capacity_rps: Some(if group == "eu" { 100.0 } else { 250.0 }),
    }
}

#[allow(clippy::too_many_arguments)] // a table-like constructor of the generator's events
fn event(
    id: &str,
    kind: super::events::EventKind,
    stacks: Option<&[&str]>,
    segment: Option<&str>,
    from: u64,
    to: u64,
    description: &str,
    actor: &str,
) -> Event {
    use super::events::Scope;
    Event {
        id: id.into(),
        kind,
        scope: match (stacks, segment) {
            (Some(s), _) => Scope::Stacks(s.iter().map(|x| x.to_string()).collect()),
            (None, Some(s)) => Scope::Segment(s.into()),
            _ => Scope::All,
        },
        from_ms: from,
        to_ms: to,
        description: description.into(),
        actor: actor.into(),
    }
}

/// Generate a scenario (deterministic: the same bytes every time).
pub fn generate(s: Scenario) -> Trace {
    use super::events::EventKind as K;
    let mut rng = Rng::new(0x5717_C4A2_D000 + s as u64);
    let week = matches!(s, Scenario::Clean7d | Scenario::FlashSale);
    // Week-long traces start Monday 00:00; the others Monday 08:00 (four hours of
    // normal traffic before the noon fault, enough for the rolling baseline).
    let start = if week {
        SCENARIO_EPOCH
    } else {
        SCENARIO_EPOCH + 8 * HOUR
    };
    let (name, description, window_ms, len_ms, stacks): (&str, &str, u64, u64, Vec<StackInfo>) = match s {
        Scenario::Clean7d => (
            "clean-7d",
            "Seven clean days (Monday to Sunday) with daily and weekly seasonality: blue and green share the web traffic 50/50, eu serves the eu segment. Expect no confirmed finding.",
            5 * MIN,
            7 * DAY,
            vec![stack("blue", "web", &["default"]), stack("green", "web", &["default"]), stack("eu", "eu", &["eu"])],
        ),
        Scenario::FlashSale => (
            "flash-sale",
            "The clean week with an announced flash sale on Saturday 10:00-14:00: ten times the traffic on the eu segment, latency up 30 %, conversion up 50 %. Expect no alarm.",
            5 * MIN,
            7 * DAY,
            vec![stack("blue", "web", &["default"]), stack("green", "web", &["default"]), stack("eu", "eu", &["eu"])],
        ),
        Scenario::SlowBurn => (
            "slow-burn",
            "Green's p99 creeps up linearly from its normal ~260 ms at 12:00 and crosses the 500 ms SLO about 65 minutes later; blue stays healthy. Expect a warning well before the breach.",
            MIN,
            6 * HOUR,
            vec![stack("blue", "web", &["default"]), stack("green", "web", &["default"])],
        ),
        Scenario::KpiDip => (
            "kpi-dip",
            "At 12:00 green's checkout starts failing silently (orders per 1,000 requests down 40 %) with healthy errors and latency, five minutes after a deployment on green. Expect a confirmed finding on green's orders KPI naming the deployment.",
            MIN,
            6 * HOUR,
            vec![stack("blue", "web", &["default"]), stack("green", "web", &["default"])],
        ),
        Scenario::BadCanary => (
            "bad-canary",
            "A canary takes 5 % of the traffic from 11:00 (deployment event); its error rate is 2 % against 0.04 % on stable and its p99 40 % higher. Expect a confirmed, localised finding on the canary naming its deployment.",
            MIN,
            4 * HOUR,
            vec![stack("stable", "web", &["default"]), stack("canary", "web", &["default"])],
        ),
        Scenario::DeadStack => (
            "dead-stack",
            "Green dies at 12:00: its first window is all 5xx with its breakers opening, then the filter routes its traffic to blue. Expect green confirmed within one minute.",
            MIN,
            6 * HOUR,
            vec![stack("blue", "web", &["default"]), stack("green", "web", &["default"])],
        ),
    };
    let day = |d: u64| SCENARIO_EPOCH + d * DAY;
    let noon = SCENARIO_EPOCH + 12 * HOUR;
    let mut events = Vec::new();
    let mut breach_at = None;
    let mut expect = Expect::default();
    match s {
        Scenario::Clean7d => {}
        Scenario::FlashSale => {
            events.push(event(
                "flash-sale-eu",
                K::Campaign,
                None,
                Some("eu"),
                day(5) + 10 * HOUR,
                day(5) + 14 * HOUR,
                "Flash sale, eu segment, announced by marketing",
                "marketing",
            ));
        }
        Scenario::SlowBurn => {
            expect.confirm = Some("green/p99_ms".into());
            expect.warn_before_breach = true;
            expect.fault_at_ms = Some(noon);
            expect.allowed = vec!["green/*".into()];
        }
        Scenario::KpiDip => {
            events.push(event(
                "deploy-green-42",
                K::Deployment,
                Some(&["green"]),
                None,
                noon - 5 * MIN,
                noon - 4 * MIN,
                "green v42",
                "ci",
            ));
            expect.confirm = Some("green/kpi:orders".into());
            expect.fault_at_ms = Some(noon);
            expect.confirm_within_ms = Some(15 * MIN);
            expect.suspect_event = Some("deploy-green-42".into());
            breach_at = Some(noon);
        }
        Scenario::BadCanary => {
            events.push(event(
                "deploy-canary-7",
                K::Deployment,
                Some(&["canary"]),
                None,
                SCENARIO_EPOCH + 11 * HOUR - MIN,
                SCENARIO_EPOCH + 11 * HOUR,
                "canary v7 to 5 %",
                "ci",
            ));
            expect.confirm = Some("canary/error_rate".into());
            expect.fault_at_ms = Some(SCENARIO_EPOCH + 11 * HOUR);
            expect.confirm_within_ms = Some(10 * MIN);
            expect.suspect_event = Some("deploy-canary-7".into());
            expect.allowed = vec!["canary/*".into()];
            breach_at = Some(SCENARIO_EPOCH + 11 * HOUR);
        }
        Scenario::DeadStack => {
            expect.confirm = Some("green/error_rate".into());
            expect.fault_at_ms = Some(noon);
            expect.confirm_within_ms = Some(MIN);
            expect.allowed = vec!["green/*".into()];
            breach_at = Some(noon);
        }
    }
    let mut windows = Vec::new();
    let mut t = start;
    while t < start + len_ms {
        let mut w = TraceWindow {
            t,
            stacks: BTreeMap::new(),
        };
        for st in &stacks {
            let peak = if st.group == "eu" { 40.0 } else { 100.0 };
            let mut p = healthy(peak, t);
            match (s, st.name.as_str()) {
                (Scenario::FlashSale, "eu")
                    if t >= day(5) + 10 * HOUR && t < day(5) + 14 * HOUR =>
                {
                    p.rps *= 10.0;
                    p.p50 *= 1.2;
                    p.p99 *= 1.3;
                    p.orders_per_req *= 1.5;
                    p.sat = 0.8;
                }
                (Scenario::SlowBurn, "green") if t >= noon => {
                    let mins = (t - noon) as f64 / MIN as f64;
                    p.p99 += 4.0 * mins;
                    p.p50 += 0.5 * mins;
                }
                (Scenario::KpiDip, "green") if t >= noon => p.orders_per_req *= 0.6,
                (Scenario::BadCanary, "stable") if t >= SCENARIO_EPOCH + 11 * HOUR => p.rps *= 0.95,
                (Scenario::BadCanary, "canary") => {
                    if t < SCENARIO_EPOCH + 11 * HOUR {
                        continue;
                    }
                    p.rps *= 0.05;
                    p.err_rate = 0.02;
                    p.p99 *= 1.4;
                }
                (Scenario::DeadStack, "green") if t >= noon => {
                    if t == noon {
                        p.err_rate = 1.0;
                        p.brk = 2;
                    } else {
                        p.rps = 0.0;
                    }
                }
                (Scenario::DeadStack, "blue") if t > noon => p.rps *= 2.0,
                _ => {}
            }
            let mut smp = sample(&mut rng, &p, window_ms);
            if s == Scenario::DeadStack && st.name == "green" && t == noon {
                smp.err = smp.req;
            }
            if s == Scenario::SlowBurn && st.name == "green" && breach_at.is_none() && p.p99 > 500.0
            {
                breach_at = Some(t);
            }
            w.stacks.insert(st.name.clone(), smp);
        }
        windows.push(w);
        t += window_ms;
    }
    Trace {
        format: FORMAT.into(),
        name: name.into(),
        description: description.into(),
        window_ms,
        start_ms: start,
        stacks,
        slo: Slo::default(),
        events,
        breach_at_ms: breach_at,
        expect,
        windows,
    }
}

/// The trace as shipped: one window per line, so diffs stay readable.
pub fn to_json(t: &Trace) -> String {
    let mut head = t.clone();
    head.windows.clear();
    let mut s = serde_json::to_string_pretty(&head).unwrap_or_default();
    // Replace the empty windows array with one window per line.
    if let Some(pos) = s.rfind("\"windows\": []") {
        s.truncate(pos);
        s.push_str("\"windows\": [\n");
        for (i, w) in t.windows.iter().enumerate() {
            s.push_str("    ");
            s.push_str(&serde_json::to_string(w).unwrap_or_default());
            s.push_str(if i + 1 < t.windows.len() { ",\n" } else { "\n" });
        }
        s.push_str("  ]\n}\n");
    }
    s
}

pub mod attribution;

#[cfg(test)]
mod tests;
