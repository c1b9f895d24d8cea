//! What the brain judges on: per-stack signals over one fixed window, merged across
//! every Envoy that reported. Telemetry ingestion produces [`StackWindow`]s, the series
//! store keeps a ring of them, and detection, rollout gates and replay read them.
//!
//! A window is identified by its start (`start_ms`, aligned to `window_ms`). All counts
//! are for that window only (deltas).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchyard_filter::histogram::{Histogram, BUCKETS};

use super::clock::UnixMs;

/// Latency histogram as stored and exchanged: sparse (bucket, count) pairs over the
/// filter's fixed bucket layout ([`switchyard_filter::histogram`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// (bucket index, count), bucket indices ascending and below `BUCKETS`.
    pub buckets: Vec<(u16, u32)>,
}

impl Latency {
    pub fn from_histogram(h: &Histogram) -> Self {
        Self {
            buckets: h.nonzero().map(|(i, c)| (i as u16, c)).collect(),
        }
    }

    /// The histogram these pairs describe; pairs outside the layout are dropped.
    pub fn to_histogram(&self) -> Histogram {
        let mut h = Histogram::new();
        for (i, c) in &self.buckets {
            if usize::from(*i) < BUCKETS {
                h.add_bucket(usize::from(*i), *c);
            }
        }
        h
    }

    pub fn merge(&mut self, other: &Latency) {
        let mut h = self.to_histogram();
        h.merge(&other.to_histogram());
        *self = Self::from_histogram(&h);
    }

    /// Quantile in milliseconds (fractional), `None` when no latency was recorded.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.to_histogram()
            .quantile(q)
            .map(|us| us as f64 / 1_000.0)
    }
}

/// One node's share of a stack's window, kept so that a stack failing in one zone only
/// is visible as such.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSlice {
    pub requests: u64,
    pub errors: u64,
    pub local_replies: u64,
    pub breaker_opens: u64,
}

/// Signals of one stack over one window, merged across nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StackWindow {
    pub stack: String,
    /// Window start (Unix ms), a multiple of `window_ms`.
    pub start_ms: UnixMs,
    pub window_ms: u64,
    /// Requests routed to the stack.
    pub requests: u64,
    /// Of those, answered 5xx (by the stack or by Envoy on its behalf).
    pub errors: u64,
    /// Requests the filter answered itself while this stack was the intended target
    /// (nothing eligible, fallback local reply).
    #[serde(default)]
    pub local_replies: u64,
    /// Circuit-breaker openings (closed/half-open → open transitions).
    #[serde(default)]
    pub breaker_opens: u64,
    /// Response latency.
    #[serde(default)]
    pub latency: Latency,
    /// Business outcomes declared in the policy's `kpis`, by KPI name.
    #[serde(default)]
    pub kpis: BTreeMap<String, u64>,
    /// Requests routed to the stack per policy rule id: the stack's measured exposure
    /// within a scope is its count here over the sum of all stacks' counts for that rule.
    #[serde(default)]
    pub by_rule: BTreeMap<String, u64>,
    /// Users newly assigned to the stack in this window (affinity cookies issued): the
    /// sum over windows counts distinct users who reached the stack.
    #[serde(default)]
    pub new_users: u64,
    /// Requests from users who already held a valid cookie for the stack.
    #[serde(default)]
    pub sticky_requests: u64,
    /// Per reporting node.
    #[serde(default)]
    pub by_node: BTreeMap<String, NodeSlice>,
}

impl StackWindow {
    pub fn new(stack: &str, start_ms: UnixMs, window_ms: u64) -> Self {
        Self {
            stack: stack.to_string(),
            start_ms,
            window_ms,
            ..Self::default()
        }
    }

    /// Error rate (0.0..=1.0); 0 when there were no requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// KPI per 1,000 requests routed to the stack (normalised by traffic share).
    pub fn kpi_per_1000(&self, kpi: &str) -> Option<f64> {
        if self.requests == 0 {
            return None;
        }
        Some(*self.kpis.get(kpi).unwrap_or(&0) as f64 * 1_000.0 / self.requests as f64)
    }

    /// Add another window's counts for the same stack (another node, or a finer window
    /// folded into a coarser one).
    pub fn merge(&mut self, other: &StackWindow) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.local_replies += other.local_replies;
        self.breaker_opens += other.breaker_opens;
        self.latency.merge(&other.latency);
        for (k, v) in &other.kpis {
            *self.kpis.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.by_rule {
            *self.by_rule.entry(k.clone()).or_default() += v;
        }
        self.new_users += other.new_users;
        self.sticky_requests += other.sticky_requests;
        for (node, s) in &other.by_node {
            let mine = self.by_node.entry(node.clone()).or_default();
            mine.requests += s.requests;
            mine.errors += s.errors;
            mine.local_replies += s.local_replies;
            mine.breaker_opens += s.breaker_opens;
        }
    }
}

/// Measured exposure: per rule id, each stack's share of the rule's requests over
/// `windows` (the filter's per-rule counts, summed by stack). What a rule-scoped rollout
/// normalises by, and what `/api/v1/telemetry` shows.
pub fn exposure(windows: &[StackWindow]) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for w in windows {
        for (rule, n) in &w.by_rule {
            *counts
                .entry(rule.clone())
                .or_default()
                .entry(w.stack.clone())
                .or_default() += n;
        }
    }
    counts
        .into_iter()
        .filter_map(|(rule, by_stack)| {
            let total: u64 = by_stack.values().sum();
            (total > 0).then(|| {
                let shares = by_stack
                    .into_iter()
                    .map(|(stack, n)| (stack, n as f64 / total as f64))
                    .collect();
                (rule, shares)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn exposure_is_each_stacks_share_of_a_rules_requests() {
        let w = |stack: &str, rules: &[(&str, u64)]| {
            let mut w = StackWindow::new(stack, 0, 1000);
            w.by_rule = rules.iter().map(|(r, n)| (r.to_string(), *n)).collect();
            w
        };
        let e = exposure(&[
            w("blue", &[("catalog", 90), ("default", 50)]),
            w("green", &[("catalog", 10), ("default", 50)]),
            w("green", &[("idle", 0)]),
        ]);
        assert_eq!(e["catalog"]["green"], 0.1);
        assert_eq!(e["catalog"]["blue"], 0.9);
        assert_eq!(e["default"]["green"], 0.5);
        assert!(!e.contains_key("idle"), "no requests, no share");
    }
    use super::*;

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = StackWindow::new("green", 60_000, 10_000);
        a.requests = 100;
        a.errors = 2;
        a.kpis.insert("orders".into(), 5);
        let mut h = Histogram::new();
        h.record(100_000);
        a.latency = Latency::from_histogram(&h);
        a.by_node.insert(
            "n1".into(),
            NodeSlice {
                requests: 100,
                errors: 2,
                ..Default::default()
            },
        );
        let mut b = StackWindow::new("green", 60_000, 10_000);
        b.requests = 300;
        b.errors = 1;
        b.kpis.insert("orders".into(), 7);
        let mut h2 = Histogram::new();
        h2.record(300_000);
        h2.record(300_000);
        b.latency = Latency::from_histogram(&h2);
        b.by_node.insert(
            "n2".into(),
            NodeSlice {
                requests: 300,
                errors: 1,
                ..Default::default()
            },
        );
        a.merge(&b);
        assert_eq!((a.requests, a.errors), (400, 3));
        assert_eq!(a.kpi_per_1000("orders"), Some(30.0));
        assert_eq!(a.latency.to_histogram().total(), 3);
        let p50 = a.latency.quantile_ms(0.5).unwrap();
        assert!((270.0..330.0).contains(&p50), "{p50}");
        assert_eq!(a.by_node.len(), 2);
        assert!((a.error_rate() - 0.0075).abs() < 1e-12);
    }

    #[test]
    fn empty_windows_have_no_rates() {
        let w = StackWindow::new("blue", 0, 10_000);
        assert_eq!(w.error_rate(), 0.0);
        assert_eq!(w.kpi_per_1000("orders"), None);
        assert_eq!(w.latency.quantile_ms(0.99), None);
    }

    #[test]
    fn out_of_layout_buckets_are_dropped() {
        let l = Latency {
            buckets: vec![(3, 1), (60_000, 9)],
        };
        assert_eq!(l.to_histogram().total(), 1);
    }
}
