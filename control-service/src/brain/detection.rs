//! Detection (paper §8.1): turns each window of per-stack signals into [`Finding`]s.
//!
//! For every stack and signal (error rate, p99, each KPI per 1,000 requests, saturation,
//! breaker openings; requests/s per group of stacks serving the same traffic) a window
//! is *anomalous* when any of these holds:
//!
//! - **baseline**: it deviates from the seasonal baseline ([`super::baseline`]) by at
//!   least `warn_z` robust standard deviations (sampling noise of the window's counts
//!   added, relative floors applied, widened during an announced campaign); a stack
//!   with no peer in its group also has its KPIs judged on the counts summed over
//!   `count_windows` windows (one window holds too few business events);
//! - **cross-stack delta**: it deviates from the pooled other stacks of its group once
//!   traffic share is accounted for — a conditional binomial test on counts (errors, KPI
//!   events, requests slower than the others' p99) plus a minimum effect size. This
//!   needs no history: it localises a bad canary from its first windows;
//! - **SLO**: the error rate is significantly above the SLO, or p99 is above it;
//! - **trend** (leading indicator): p99 or error rate is rising and the least-squares
//!   projection reaches the SLO within `trend_horizon_ms`, while the value is already
//!   off its baseline (or the others) by `trend_z`;
//! - **saturation**: the stack's saturation input is at least `saturation_warn`;
//! - **hard down**: error rate at least `hard_error_rate`, or breakers opened on at
//!   least half the reporting nodes.
//!
//! Two stages: an anomalous window yields a `warn` finding; `confirm_windows` anomalous
//! windows in a row (or a hard-down window) yield `confirmed`. Announced campaigns and
//! load tests suppress the traffic-volume signal and widen baselines; maintenance caps
//! severity at warn; a deployment on the stack shortly before the onset is attached as
//! a suspect. Anomalous windows are not learned into the baseline.
//!
//! The detector keeps hourly baseline summaries and persists them with [`Detector::flush`]
//! under `series/baseline/<stack>/<signal>/<hour>`; [`Detector::restore`] reloads them.
//! Streaks and the rolling fallback are rebuilt from live windows after a restart.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use switchyard_filter::histogram::BUCKETS;

use super::baseline::{BaselineConfig, Expected, HourSummary, SignalBaseline, Source, HOUR_MS};
use super::clock::UnixMs;
use super::events::{Event, EventKind};
use super::signals::StackWindow;
use crate::store::{key_u64, Batch, Store, StoreError};

mod attribution;
mod statistics;
use statistics::{alone_kpi_z, latency_total, requests_above, slope_fit};
pub use statistics::{count_delta_z, erfc, p_upper, poisson_upper_z, quantile_interpolated};

pub use attribution::{began_during, deployment_candidate, estimate_onset, ChangeOnset};

/// Key prefix of persisted baseline summaries.
pub const BASELINE_PREFIX: &str = "series/baseline/";

/// A judged signal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Signal {
    ErrorRate,
    P99,
    /// Business outcome per 1,000 requests.
    Kpi(String),
    /// Requests per second of a group of stacks.
    Rps,
    Saturation,
    Breakers,
}

impl Signal {
    /// `Some(true)` when higher is worse, `Some(false)` when lower is worse, `None` when
    /// both are (volume, breakers).
    pub fn bad_direction(&self) -> Option<bool> {
        match self {
            Signal::ErrorRate | Signal::P99 | Signal::Saturation => Some(true),
            Signal::Kpi(_) => Some(false),
            Signal::Rps | Signal::Breakers => None,
        }
    }

    pub fn key(&self) -> String {
        match self {
            Signal::ErrorRate => "error_rate".into(),
            Signal::P99 => "p99_ms".into(),
            Signal::Kpi(k) => format!("kpi:{k}"),
            Signal::Rps => "rps".into(),
            Signal::Saturation => "saturation".into(),
            Signal::Breakers => "breakers".into(),
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "error_rate" => Signal::ErrorRate,
            "p99_ms" => Signal::P99,
            "rps" => Signal::Rps,
            "saturation" => Signal::Saturation,
            "breakers" => Signal::Breakers,
            k => Signal::Kpi(
                k.strip_prefix("kpi:")
                    .filter(|k| !k.is_empty())?
                    .to_string(),
            ),
        })
    }
}

impl From<Signal> for String {
    fn from(s: Signal) -> String {
        s.key()
    }
}

impl TryFrom<String> for Signal {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Signal::parse(&s).ok_or_else(|| format!("unknown signal {s:?}"))
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warn,
    Confirmed,
}

/// Why a window was anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Baseline,
    CrossStack,
    Slo,
    Trend,
    Saturation,
    HardDown,
}

/// The SLO the leading indicators project towards.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Error rate (0..1), e.g. 0.001.
    pub error_rate: f64,
    pub p99_ms: f64,
}

impl Default for Slo {
    fn default() -> Self {
        Self {
            error_rate: 0.001,
            p99_ms: 500.0,
        }
    }
}

/// Detector tuning; defaults are documented in `docs/detection.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectorConfig {
    pub baseline: BaselineConfig,
    pub slo: Slo,
    /// Robust z-score from the baseline that makes a window anomalous.
    pub warn_z: f64,
    /// Anomalous windows in a row that confirm.
    pub confirm_windows: u32,
    /// Requests a stack needs in a window for its rates to be judged.
    pub min_requests: u64,
    /// z of the cross-stack count test.
    pub cross_z: f64,
    /// Minimum effect sizes of a cross-stack delta: error-rate ratio, and the absolute
    /// difference of error rates.
    pub cross_error_ratio: f64,
    pub cross_error_diff: f64,
    /// KPI rate at most this fraction of the others'.
    pub cross_kpi_ratio: f64,
    /// Share of requests slower than the others' p99, relative to theirs.
    pub cross_tail_ratio: f64,
    /// Relative floors of the baseline spread.
    pub latency_floor: f64,
    pub kpi_floor: f64,
    /// Relative floor of the spread when a stack with no peer in its group is judged on
    /// its KPI counts summed over `count_windows` windows.
    pub kpi_alone_floor: f64,
    pub rps_floor: f64,
    /// Absolute floor of the error-rate spread.
    pub error_floor: f64,
    /// z above the SLO error rate that counts as a breach.
    pub slo_z: f64,
    pub hard_error_rate: f64,
    /// Windows in the trend fit, projection horizon, and the deviation the trend needs.
    pub trend_windows: usize,
    pub trend_horizon_ms: u64,
    pub trend_z: f64,
    pub saturation_warn: f64,
    /// Baseline spread multiplier during an announced campaign or load test.
    pub campaign_widen: f64,
    /// A deployment this long before the onset is a suspect.
    pub deploy_lookback_ms: u64,
    /// Points of series kept per finding.
    pub series_len: usize,
    /// Windows whose counts (errors, KPI events) are summed for the cross-stack tests:
    /// such events are sparse and one window rarely holds enough of them.
    pub count_windows: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            baseline: BaselineConfig::default(),
            slo: Slo::default(),
            warn_z: 4.0,
            confirm_windows: 3,
            min_requests: 50,
            cross_z: 4.0,
            cross_error_ratio: 1.5,
            cross_error_diff: 0.0005,
            cross_kpi_ratio: 0.85,
            cross_tail_ratio: 3.0,
            latency_floor: 0.15,
            kpi_floor: 0.1,
            kpi_alone_floor: 0.05,
            rps_floor: 0.2,
            error_floor: 0.0002,
            slo_z: 3.0,
            hard_error_rate: 0.5,
            trend_windows: 10,
            trend_horizon_ms: 30 * 60_000,
            trend_z: 3.0,
            saturation_warn: 0.85,
            campaign_widen: 3.0,
            deploy_lookback_ms: 30 * 60_000,
            series_len: 15,
            count_windows: 5,
        }
    }
}

/// Where a stack sits: its group (stacks serving the same traffic, compared with each
/// other), and the segments and rules it serves (for event scopes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StackInfo {
    pub name: String,
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default)]
    pub segments: Vec<String>,
    #[serde(default)]
    pub rules: Vec<String>,
    /// Requests/s the stack is known to sustain (for the workflow's dependency checks;
    /// without it the recent peak is the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_rps: Option<f64>,
}

fn default_group() -> String {
    "default".into()
}

/// What the detector reads besides the windows.
#[derive(Debug, Default, Clone, Copy)]
pub struct DetectContext<'a> {
    /// Registered events (any; the detector filters by time and scope).
    pub events: &'a [Event],
    /// Saturation per stack (0..1), e.g. connection-pool use.
    pub saturation: Option<&'a BTreeMap<String, f64>>,
    /// Stacks' groups, segments and rules; unknown stacks are in group `default`.
    pub topology: &'a [StackInfo],
}

/// The stack compared with the pooled others of its group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CrossStack {
    /// The others' value of the signal.
    pub others: f64,
    /// Signed so that positive is worse for this stack.
    pub z: f64,
    /// This stack's rate over the others' (errors, KPI, slow-request share).
    pub ratio: f64,
}

/// An event correlated with a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correlation {
    pub event_id: String,
    pub kind: EventKind,
    pub relation: String,
    /// A deployment on this stack shortly before the onset: a likely cause.
    pub suspect: bool,
}

/// One anomalous (stack, signal) in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// A stack, or `group:<name>` for the volume of a group.
    pub stack: String,
    pub signal: Signal,
    pub severity: Severity,
    /// End of the judged window.
    pub at_ms: UnixMs,
    /// Start of the first anomalous window of this streak.
    pub onset_ms: UnixMs,
    /// When the change most likely began ([`estimate_onset`]): at or before `onset_ms`,
    /// which lags it when counts are summed over windows or a ramp takes time to cross
    /// a threshold. Attribution measures time from here. `None`: `onset_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_ms: Option<UnixMs>,
    /// Where a ramp's trend line meets the normal value, if earlier still: widens the
    /// lookback for deployments (never excludes one: extrapolation is uncertain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_from_ms: Option<UnixMs>,
    /// Announced maintenance on the stack is going on (or ended less than
    /// `count_windows` windows ago): severity capped at warn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub under_maintenance: bool,
    /// Anomalous windows in a row.
    pub windows: u32,
    pub observed: f64,
    pub baseline: Option<f64>,
    pub baseline_source: Option<Source>,
    /// Robust z-score from the baseline (positive = worse), 0 without a baseline.
    pub score: f64,
    pub cross: Option<CrossStack>,
    /// The stack deviates from the others of its group: the delta stack.
    pub localised: bool,
    pub reasons: Vec<Reason>,
    /// Projected time until the SLO is breached (0 when already breached).
    pub lead_time_ms: Option<u64>,
    pub events: Vec<Correlation>,
    /// Recent values (window end, value), oldest first.
    pub series: Vec<(UnixMs, f64)>,
    /// Re-reported from an earlier window: the stack has too little traffic now to
    /// judge (e.g. after a hard down), and nothing showed recovery.
    #[serde(default)]
    pub stale: bool,
}

impl Finding {
    /// Confirmed, or a leading indicator (trend, saturation) warning: worth opening an
    /// incident so the workflow can recommend before the SLO breach.
    /// Not a leading indicator under announced maintenance (it caps severity at warn:
    /// a warning there opens nothing).
    pub fn worth_an_incident(&self) -> bool {
        self.severity == Severity::Confirmed
            || (!self.under_maintenance
                && self
                    .reasons
                    .iter()
                    .any(|r| matches!(r, Reason::Trend | Reason::Saturation)))
    }

    pub fn suspect_deployment(&self) -> Option<&str> {
        self.events
            .iter()
            .find(|c| c.suspect)
            .map(|c| c.event_id.as_str())
    }
}

type Key = (String, Signal);

#[derive(Debug, Clone)]
struct Streak {
    onset_ms: UnixMs,
    windows: u32,
}

/// Per-window values of one stack.
struct Cand {
    signal: Signal,
    observed: f64,
    expected: Option<Expected>,
    z: f64,
    cross: Option<CrossStack>,
    reasons: Vec<Reason>,
    lead: Option<u64>,
    hard: bool,
    learn: bool,
}

/// The detector: baselines, streaks and recent series per (stack, signal).
#[derive(Debug, Default)]
pub struct Detector {
    cfg: DetectorConfig,
    baselines: BTreeMap<Key, SignalBaseline>,
    streaks: BTreeMap<Key, Streak>,
    series: BTreeMap<Key, VecDeque<(UnixMs, f64)>>,
    last: BTreeMap<Key, Finding>,
    /// Per (stack, error rate or KPI): recent [k, n, k_others, n_others].
    counts: BTreeMap<Key, VecDeque<[u64; 4]>>,
    pending: Vec<(Key, HourSummary)>,
}

/// Windows of history per (stack, signal) kept for [`estimate_onset`].
const ONSET_HISTORY: usize = 60;

impl Detector {
    pub fn new(cfg: DetectorConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// A detector whose baselines are reloaded from the summaries in `store`.
    pub fn restore(cfg: DetectorConfig, store: &dyn Store) -> Result<Self, StoreError> {
        let mut d = Self::new(cfg);
        let mut by_key: BTreeMap<Key, Vec<HourSummary>> = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.scan(BASELINE_PREFIX, after.as_deref(), 1_000)?;
            for (k, v) in &page {
                let rest = &k[BASELINE_PREFIX.len()..];
                let mut parts = rest.rsplitn(3, '/');
                let (_, sig, stack) = (parts.next(), parts.next(), parts.next());
                let (Some(sig), Some(stack)) = (sig.and_then(Signal::parse), stack) else {
                    continue;
                };
                let Ok(s) = serde_json::from_slice::<HourSummary>(v) else {
                    continue;
                };
                by_key.entry((stack.to_string(), sig)).or_default().push(s);
            }
            match page.last() {
                Some((k, _)) if page.len() == 1_000 => after = Some(k.clone()),
                _ => break,
            }
        }
        for (k, s) in by_key {
            d.baselines.insert(k, SignalBaseline::from_summaries(s));
        }
        Ok(d)
    }

    /// Write the hourly summaries completed since the last flush, and drop summaries
    /// older than the retention. Returns how many were written.
    pub fn flush(&mut self, store: &dyn Store) -> Result<usize, StoreError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let mut b = Batch::new();
        let keep_hours = (self.cfg.baseline.weeks as u64 + 1) * 168;
        let mut oldest: BTreeMap<&Key, u64> = BTreeMap::new();
        for (k, s) in &self.pending {
            let prefix = format!("{BASELINE_PREFIX}{}/{}/", k.0, k.1.key());
            let v = serde_json::to_vec(s).map_err(|e| StoreError::Backend(e.to_string()))?;
            b = b.put(format!("{prefix}{}", key_u64(s.hour)), v);
            let e = oldest.entry(k).or_insert(s.hour);
            *e = (*e).max(s.hour);
        }
        for (k, newest) in oldest {
            let prefix = format!("{BASELINE_PREFIX}{}/{}/", k.0, k.1.key());
            let before = format!("{prefix}{}", key_u64(newest.saturating_sub(keep_hours)));
            b = b.delete_range(prefix, before);
        }
        store.commit(&b)?;
        let n = self.pending.len();
        self.pending.clear();
        Ok(n)
    }

    /// The expected value of a (stack, signal) at a time, if the baseline has one.
    pub fn expected(&self, stack: &str, signal: &Signal, at_ms: UnixMs) -> Option<Expected> {
        self.baselines
            .get(&(stack.to_string(), signal.clone()))?
            .expected(&self.cfg.baseline, at_ms)
    }

    /// Judge one window: `windows` are the stacks' windows with the same start.
    pub fn observe(&mut self, windows: &[StackWindow], ctx: &DetectContext<'_>) -> Vec<Finding> {
        let Some(first) = windows.first() else {
            return Vec::new();
        };
        let start = first.start_ms;
        let window_ms = first.window_ms.max(1);
        let at = start + window_ms;
        let info = |name: &str| -> StackInfo {
            ctx.topology
                .iter()
                .find(|s| s.name == name)
                .cloned()
                .unwrap_or_else(|| StackInfo {
                    name: name.to_string(),
                    group: default_group(),
                    ..StackInfo::default()
                })
        };
        let covers = |e: &Event, i: &StackInfo| e.scope.covers(&i.name, &i.segments, &i.rules);
        let active =
            |e: &Event, kinds: &[EventKind]| kinds.contains(&e.kind) && e.overlaps(start, at);
        let mut out = Vec::new();
        let mut groups: BTreeMap<String, Vec<&StackWindow>> = BTreeMap::new();
        for w in windows {
            groups.entry(info(&w.stack).group).or_default().push(w);
        }
        let mut seen: BTreeSet<Key> = BTreeSet::new();
        for w in windows {
            let i = info(&w.stack);
            let campaign = ctx
                .events
                .iter()
                .any(|e| active(e, &[EventKind::Campaign, EventKind::LoadTest]) && covers(e, &i));
            // Maintenance, or its tail: the cross-stack tests sum the last
            // `count_windows` windows, which still hold the maintenance's own errors
            // for that long after it ends.
            let tail = self.cfg.count_windows as u64 * window_ms;
            let maintenance = ctx.events.iter().any(|e| {
                e.kind == EventKind::Maintenance
                    && e.overlaps(start.saturating_sub(tail), at)
                    && covers(e, &i)
            });
            let widen = if campaign {
                self.cfg.campaign_widen
            } else {
                1.0
            };
            let peers: Vec<&StackWindow> = groups[&i.group]
                .iter()
                .copied()
                .filter(|o| o.stack != w.stack)
                .collect();
            self.count_events(w, &peers);
            let cands = self.candidates(w, &peers, widen, ctx.saturation, at);
            for c in cands {
                let key = (w.stack.clone(), c.signal.clone());
                seen.insert(key.clone());
                self.push_series(&key, at, c.observed);
                let anomalous = !c.reasons.is_empty();
                if !anomalous {
                    self.streaks.remove(&key);
                    self.last.remove(&key);
                    if c.learn && !campaign {
                        self.learn(&key, start, c.observed);
                    }
                    continue;
                }
                let streak = self.streaks.entry(key.clone()).or_insert(Streak {
                    onset_ms: start,
                    windows: 0,
                });
                streak.windows += 1;
                let mut severity = if c.hard || streak.windows >= self.cfg.confirm_windows {
                    Severity::Confirmed
                } else {
                    Severity::Warn
                };
                if maintenance {
                    severity = Severity::Warn;
                }
                let (onset, n) = (streak.onset_ms, streak.windows);
                let reference = c.expected.map(|e| e.median).or(c.cross.map(|x| x.others));
                let change: ChangeOnset = match (reference, c.signal.bad_direction()) {
                    (Some(r), Some(up)) => {
                        let hist: Vec<(UnixMs, f64)> = self
                            .series
                            .get(&key)
                            .map_or_else(Vec::new, |s| s.iter().copied().collect());
                        estimate_onset(&hist, onset, window_ms, r, up)
                    }
                    _ => ChangeOnset::at(onset),
                };
                let events =
                    self.correlate(ctx.events, &i, change, at, window_ms, campaign, maintenance);
                let f = Finding {
                    stack: w.stack.clone(),
                    signal: c.signal.clone(),
                    severity,
                    at_ms: at,
                    onset_ms: onset,
                    change_ms: (change.step < onset).then_some(change.step),
                    ramp_from_ms: (change.ramp < change.step).then_some(change.ramp),
                    under_maintenance: maintenance,
                    windows: n,
                    observed: c.observed,
                    baseline: c.expected.map(|e| e.median),
                    baseline_source: c.expected.map(|e| e.source),
                    score: c.z,
                    localised: c.reasons.contains(&Reason::CrossStack),
                    cross: c.cross,
                    reasons: c.reasons,
                    lead_time_ms: c.lead,
                    events,
                    series: self.series_of(&key),
                    stale: false,
                };
                self.last.insert(key, f.clone());
                out.push(f);
            }
        }
        // A stack that went hard down and now has too little traffic to judge stays
        // reported (stale) until a judged window shows it healthy.
        for (key, f) in &self.last {
            if seen.contains(key) || !f.reasons.contains(&Reason::HardDown) {
                continue;
            }
            if windows.iter().any(|w| w.stack == key.0) || at.saturating_sub(f.at_ms) <= HOUR_MS {
                let mut f = f.clone();
                f.at_ms = at;
                f.stale = true;
                out.push(f);
            }
        }
        // Volume per group: judged on the group's total, suppressed by campaigns.
        for (g, ws) in &groups {
            let total: u64 = ws.iter().map(|w| w.requests).sum();
            let rps = total as f64 * 1_000.0 / window_ms as f64;
            let key = (format!("group:{g}"), Signal::Rps);
            let campaign = ws.iter().any(|w| {
                let i = info(&w.stack);
                ctx.events.iter().any(|e| {
                    active(e, &[EventKind::Campaign, EventKind::LoadTest]) && covers(e, &i)
                })
            });
            self.push_series(&key, at, rps);
            let expected = self
                .baselines
                .get(&key)
                .and_then(|b| b.expected(&self.cfg.baseline, start));
            let z = expected.map(|e| {
                let sigma = e.sigma.max(self.cfg.rps_floor * e.median).max(1.0);
                (rps - e.median).abs() / sigma
            });
            let anomalous = !campaign && z.is_some_and(|z| z >= self.cfg.warn_z);
            if !anomalous {
                self.streaks.remove(&key);
                if !campaign {
                    self.learn(&key, start, rps);
                }
                continue;
            }
            let streak = self.streaks.entry(key.clone()).or_insert(Streak {
                onset_ms: start,
                windows: 0,
            });
            streak.windows += 1;
            out.push(Finding {
                stack: key.0.clone(),
                signal: Signal::Rps,
                severity: if streak.windows >= self.cfg.confirm_windows {
                    Severity::Confirmed
                } else {
                    Severity::Warn
                },
                at_ms: at,
                onset_ms: streak.onset_ms,
                change_ms: None,
                ramp_from_ms: None,
                under_maintenance: false,
                windows: streak.windows,
                observed: rps,
                baseline: expected.map(|e| e.median),
                baseline_source: expected.map(|e| e.source),
                score: z.unwrap_or(0.0),
                cross: None,
                localised: false,
                reasons: vec![Reason::Baseline],
                lead_time_ms: None,
                events: Vec::new(),
                series: self.series_of(&key),
                stale: false,
            });
        }
        out
    }

    fn push_counts(&mut self, key: Key, c: [u64; 4]) {
        let d = self.counts.entry(key).or_default();
        d.push_back(c);
        while d.len() > self.cfg.count_windows.max(1) {
            d.pop_front();
        }
    }

    fn summed(&self, key: &Key) -> Option<[u64; 4]> {
        self.counts.get(key).map(|d| {
            d.iter().fold([0u64; 4], |mut a, x| {
                for i in 0..4 {
                    a[i] += x[i];
                }
                a
            })
        })
    }

    fn count_events(&mut self, w: &StackWindow, peers: &[&StackWindow]) {
        let mut names: BTreeSet<&String> = w.kpis.keys().collect();
        for p in peers {
            names.extend(p.kpis.keys());
        }
        let n_o: u64 = peers.iter().map(|p| p.requests).sum();
        let e_o: u64 = peers.iter().map(|p| p.errors).sum();
        self.push_counts(
            (w.stack.clone(), Signal::ErrorRate),
            [w.errors, w.requests, e_o, n_o],
        );
        for name in names {
            let k_o: u64 = peers.iter().map(|p| *p.kpis.get(name).unwrap_or(&0)).sum();
            self.push_counts(
                (w.stack.clone(), Signal::Kpi(name.clone())),
                [*w.kpis.get(name).unwrap_or(&0), w.requests, k_o, n_o],
            );
        }
    }

    fn learn(&mut self, key: &Key, start: UnixMs, v: f64) {
        let b = self.baselines.entry(key.clone()).or_default();
        if let Some(s) = b.observe(&self.cfg.baseline, start, v) {
            self.pending.push((key.clone(), s));
        }
    }

    fn push_series(&mut self, key: &Key, at: UnixMs, v: f64) {
        let s = self.series.entry(key.clone()).or_default();
        s.push_back((at, v));
        let keep = self
            .cfg
            .series_len
            .max(self.cfg.trend_windows)
            .max(ONSET_HISTORY);
        while s.len() > keep {
            s.pop_front();
        }
    }

    fn series_of(&self, key: &Key) -> Vec<(UnixMs, f64)> {
        let s = self
            .series
            .get(key)
            .map(|s| s.iter().copied().collect::<Vec<_>>())
            .unwrap_or_default();
        let skip = s.len().saturating_sub(self.cfg.series_len);
        s[skip..].to_vec()
    }

    /// Time until the SLO at the current slope, when rising.
    fn lead(&self, key: &Key, slo: f64, current: f64) -> Option<u64> {
        if current >= slo {
            return Some(0);
        }
        let s = self.series.get(key)?;
        let skip = s.len().saturating_sub(self.cfg.trend_windows);
        let pts: Vec<(UnixMs, f64)> = s.iter().skip(skip).copied().collect();
        let (slope, fitted, r2) = slope_fit(&pts)?;
        // A rise that does not explain most of the variation is noise, not a trend.
        if slope <= 0.0 || r2 < 0.5 {
            return None;
        }
        let from = fitted.max(current);
        if from >= slo {
            return Some(0);
        }
        Some(((slo - from) / slope) as u64)
    }

    fn candidates(
        &self,
        w: &StackWindow,
        peers: &[&StackWindow],
        widen: f64,
        saturation: Option<&BTreeMap<String, f64>>,
        at: UnixMs,
    ) -> Vec<Cand> {
        let cfg = &self.cfg;
        let mut out = Vec::new();
        let n = w.requests;
        let start = w.start_ms;
        let exp = |s: &Signal| self.expected(&w.stack, s, start);
        let peer_n: u64 = peers.iter().map(|p| p.requests).sum();
        let have_peers = peer_n >= cfg.min_requests;
        let key = |s: Signal| (w.stack.clone(), s);
        if let Some(sat) = saturation.and_then(|m| m.get(&w.stack)).copied() {
            let mut reasons = Vec::new();
            if sat >= cfg.saturation_warn {
                reasons.push(Reason::Saturation);
            }
            out.push(Cand {
                signal: Signal::Saturation,
                observed: sat,
                expected: None,
                z: 0.0,
                cross: None,
                reasons,
                lead: None,
                hard: false,
                learn: false,
            });
        }
        let nodes = w.by_node.len();
        let opened = w.by_node.values().filter(|s| s.breaker_opens > 0).count();
        if w.breaker_opens > 0 && (nodes == 0 || opened * 2 >= nodes) {
            out.push(Cand {
                signal: Signal::Breakers,
                observed: w.breaker_opens as f64,
                expected: None,
                z: 0.0,
                cross: None,
                reasons: vec![Reason::HardDown],
                lead: None,
                hard: true,
                learn: false,
            });
        }
        if n < cfg.min_requests {
            return out;
        }
        // Error rate.
        {
            let x = w.error_rate();
            let e = exp(&Signal::ErrorRate);
            // Errors are sparse counts: test the count against a Poisson with the
            // baseline rate plus one spread (at least one expected error), exactly for
            // small means, and express the tail as a z.
            let z = e.map_or(0.0, |e| {
                let lambda = ((e.median + e.sigma).max(cfg.error_floor) * n as f64).max(1.0);
                poisson_upper_z(w.errors, lambda) / widen
            });
            let mut reasons = Vec::new();
            if z >= cfg.warn_z {
                reasons.push(Reason::Baseline);
            }
            // This window alone (fast on a big delta) or summed over the last
            // `count_windows` (sparse errors on a small canary), whichever is stronger.
            let cross = have_peers.then(|| {
                let k_o: u64 = peers.iter().map(|p| p.errors).sum();
                let r_o = k_o as f64 / peer_n as f64;
                let one = count_delta_z(w.errors, n, k_o, peer_n);
                let [ks, ns, kos, nos] = self
                    .summed(&key(Signal::ErrorRate))
                    .unwrap_or([w.errors, n, k_o, peer_n]);
                let sum = count_delta_z(ks, ns, kos, nos);
                let (z, ratio) = if sum > one {
                    (
                        sum,
                        (ks as f64 / ns.max(1) as f64)
                            / ((kos as f64).max(0.5) / nos.max(1) as f64),
                    )
                } else {
                    (one, x / (k_o as f64).max(0.5) * peer_n as f64)
                };
                CrossStack {
                    others: r_o,
                    z,
                    ratio,
                }
            });
            let localised = cross.is_some_and(|c| {
                c.z >= cfg.cross_z
                    && c.ratio >= cfg.cross_error_ratio
                    && x - c.others >= cfg.cross_error_diff
            });
            if localised {
                reasons.push(Reason::CrossStack);
            }
            let slo = cfg.slo.error_rate;
            let slo_z = (w.errors as f64 - n as f64 * slo) / (n as f64 * slo * (1.0 - slo)).sqrt();
            if slo_z >= cfg.slo_z {
                reasons.push(Reason::Slo);
            }
            let lead = self.lead(&key(Signal::ErrorRate), slo, x);
            let hard = x >= cfg.hard_error_rate && w.errors >= 5;
            if hard {
                reasons.push(Reason::HardDown);
            }
            if lead.is_some_and(|l| l <= cfg.trend_horizon_ms)
                && (z >= cfg.trend_z || cross.is_some_and(|c| c.z >= cfg.trend_z))
            {
                reasons.push(Reason::Trend);
            }
            out.push(Cand {
                signal: Signal::ErrorRate,
                observed: x,
                expected: e,
                z,
                cross,
                reasons,
                lead,
                hard,
                learn: true,
            });
        }
        // p99.
        if let Some(x) = quantile_interpolated(&w.latency, 0.99) {
            let e = exp(&Signal::P99);
            let z = e.map_or(0.0, |e| {
                let sigma = e.sigma.max(cfg.latency_floor * e.median).max(2.0) * widen;
                (x - e.median) / sigma
            });
            let mut reasons = Vec::new();
            if z >= cfg.warn_z {
                reasons.push(Reason::Baseline);
            }
            let cross = if have_peers {
                let mut pooled = StackWindow::default();
                for p in peers {
                    pooled.latency.merge(&p.latency);
                }
                pooled.latency.quantile_ms(0.99).map(|p99_o| {
                    let b = switchyard_filter::histogram::bucket_of((p99_o * 1_000.0) as u64);
                    let (t_i, n_i) = (requests_above(w, b), latency_total(w));
                    let (t_o, n_o) = (requests_above(&pooled, b), latency_total(&pooled));
                    CrossStack {
                        others: p99_o,
                        z: count_delta_z(t_i, n_i, t_o, n_o),
                        ratio: (t_i as f64 / n_i.max(1) as f64)
                            / ((t_o as f64).max(0.5) / n_o.max(1) as f64),
                    }
                })
            } else {
                None
            };
            if cross.is_some_and(|c| c.z >= cfg.cross_z && c.ratio >= cfg.cross_tail_ratio) {
                reasons.push(Reason::CrossStack);
            }
            if x > cfg.slo.p99_ms {
                reasons.push(Reason::Slo);
            }
            let lead = self.lead(&key(Signal::P99), cfg.slo.p99_ms, x);
            if lead.is_some_and(|l| l <= cfg.trend_horizon_ms)
                && (z >= cfg.trend_z || cross.is_some_and(|c| c.z >= cfg.trend_z))
            {
                reasons.push(Reason::Trend);
            }
            out.push(Cand {
                signal: Signal::P99,
                observed: x,
                expected: e,
                z,
                cross,
                reasons,
                lead,
                hard: false,
                learn: true,
            });
        }
        // KPIs: every KPI any stack of the group counted.
        let mut names: BTreeSet<&String> = w.kpis.keys().collect();
        for p in peers {
            names.extend(p.kpis.keys());
        }
        for name in names {
            let sig = Signal::Kpi(name.clone());
            let k = *w.kpis.get(name).unwrap_or(&0);
            let x = k as f64 * 1_000.0 / n as f64;
            let e = exp(&sig);
            let z = e.map_or(0.0, |e| {
                let sampling = e.median * 1_000.0 / n as f64;
                let sigma = (e.sigma * e.sigma + sampling)
                    .sqrt()
                    .max(cfg.kpi_floor * e.median)
                    .max(1e-6)
                    * widen;
                (e.median - x) / sigma
            });
            let sums = self
                .summed(&(w.stack.clone(), sig.clone()))
                .unwrap_or([k, n, 0, 0]);
            // Alone (no peer with traffic in its group), the baseline is the only
            // reference, and one window holds too few events for it: judge the counts
            // summed over the last `count_windows` windows against the baseline too.
            let z = match e.filter(|_| !have_peers) {
                Some(e) => {
                    let windows = self.counts.get(&key(sig.clone())).map_or(1, VecDeque::len);
                    z.max(alone_kpi_z(cfg, &e, sums[0], sums[1], n, windows) / widen)
                }
                None => z,
            };

            let mut reasons = Vec::new();
            if z >= cfg.warn_z {
                reasons.push(Reason::Baseline);
            }
            let cross = have_peers.then(|| {
                let [k_s, n_s, k_o, n_o] = sums;
                let r_s = k_s as f64 * 1_000.0 / n_s.max(1) as f64;
                let r_o = k_o as f64 * 1_000.0 / n_o.max(1) as f64;
                CrossStack {
                    others: r_o,
                    z: -count_delta_z(k_s, n_s, k_o, n_o),
                    ratio: if r_o > 0.0 { r_s / r_o } else { 1.0 },
                }
            });
            if cross.is_some_and(|c| c.z >= cfg.cross_z && c.ratio <= cfg.cross_kpi_ratio) {
                reasons.push(Reason::CrossStack);
            }
            out.push(Cand {
                signal: sig,
                observed: x,
                expected: e,
                z,
                cross,
                reasons,
                lead: None,
                hard: false,
                learn: true,
            });
        }
        let _ = at;
        out
    }
}

#[cfg(test)]
mod tests;
