//! SLO gates of one rollout step: which tests run, on which counts, and how their
//! verdicts combine. Defaults from the paper's §12.1: error rate < 0.1 %, p99 < 500 ms,
//! business KPIs within 5 % of the stable stack normalised by traffic share.
//!
//! Gates read the release and stable stacks' windows since the step's observation
//! began; nothing here keeps state between calls, so a restarted engine re-evaluates
//! the same windows to the same verdicts.

use serde::{Deserialize, Serialize};
use switchyard_filter::histogram::{lower_bound, upper_bound};

use crate::brain::signals::{Latency, StackWindow};
use crate::brain::stats::{RateConfig, RateCs, TestResult, TwoArm, TwoArmConfig, Verdict, Worse};

/// What one observation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountBy {
    /// Every request is an observation.
    #[default]
    Requests,
    /// Every user (affinity cookie) is one observation: counts are divided by the
    /// release's requests per user (see [`crate::brain::stats`]).
    Users,
}

/// A business KPI gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiGate {
    /// The KPI's name in the policy's `kpis`.
    pub name: String,
    /// Relative tolerance per 1,000 requests vs the stable stack (0.05 = within 5 %).
    #[serde(default = "default_kpi_tolerance")]
    pub tolerance: f64,
}

fn default_kpi_tolerance() -> f64 {
    0.05
}

/// The gates of every step of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gates {
    /// Probability of halting an acceptable release in one step, split evenly over the
    /// gates (each gate tests at `alpha / gates`).
    pub alpha: f64,
    /// Probability of passing a step whose release is unacceptable on some gate.
    pub beta: f64,
    /// Release error rate must stay below this (absolute). `None`: no such gate.
    pub max_error_rate: Option<f64>,
    /// Latency budget for the p99 gate, in ms. `None`: no latency gates.
    pub latency_budget_ms: Option<f64>,
    /// Fraction of release responses allowed over the budget (0.01 = p99).
    pub max_over_budget: f64,
    /// Release vs stable error rate: halt when the release's is worse than `1 + tolerance`
    /// times the stable one's. A sentinel: it can halt a step but never holds one back.
    pub error_ratio_tolerance: Option<f64>,
    /// The same for the fraction of responses over the latency budget.
    pub latency_ratio_tolerance: Option<f64>,
    /// KPI gates; these must pass (business outcomes are the authoritative signal).
    pub kpis: Vec<KpiGate>,
    pub count_by: CountBy,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            alpha: 0.01,
            beta: 0.05,
            max_error_rate: Some(0.001),
            latency_budget_ms: Some(500.0),
            max_over_budget: 0.01,
            error_ratio_tolerance: Some(0.1),
            latency_ratio_tolerance: Some(0.1),
            kpis: Vec::new(),
            count_by: CountBy::Requests,
        }
    }
}

impl Gates {
    /// The defaults plus one gate (default tolerance) per KPI the policy declares.
    pub fn with_kpis<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            kpis: names
                .into_iter()
                .map(|name| KpiGate {
                    name: name.to_string(),
                    tolerance: default_kpi_tolerance(),
                })
                .collect(),
            ..Self::default()
        }
    }

    /// Problems with the configuration, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let unit = |v: f64| v > 0.0 && v < 1.0;
        if !unit(self.alpha) {
            out.push(format!("gates.alpha: {} is not in (0, 1)", self.alpha));
        }
        if !unit(self.beta) {
            out.push(format!("gates.beta: {} is not in (0, 1)", self.beta));
        }
        if let Some(r) = self.max_error_rate {
            if !unit(r) {
                out.push(format!("gates.max_error_rate: {r} is not in (0, 1)"));
            }
        }
        if let Some(b) = self.latency_budget_ms {
            if !(b > 0.0 && b.is_finite()) {
                out.push(format!("gates.latency_budget_ms: {b} is not positive"));
            }
            if !unit(self.max_over_budget) {
                out.push(format!(
                    "gates.max_over_budget: {} is not in (0, 1)",
                    self.max_over_budget
                ));
            }
        }
        for (name, t) in [
            ("error_ratio_tolerance", self.error_ratio_tolerance),
            ("latency_ratio_tolerance", self.latency_ratio_tolerance),
        ] {
            if let Some(t) = t {
                if !(t >= 0.0 && t.is_finite()) {
                    out.push(format!("gates.{name}: {t} is negative"));
                }
            }
        }
        for (i, k) in self.kpis.iter().enumerate() {
            if k.name.is_empty() {
                out.push(format!("gates.kpis[{i}].name: empty"));
            }
            if !(k.tolerance > 0.0 && k.tolerance < 1.0) {
                out.push(format!(
                    "gates.kpis[{i}].tolerance: {} is not in (0, 1)",
                    k.tolerance
                ));
            }
        }
        if self.gate_count() == 0 {
            out.push("gates: none enabled".into());
        }
        out
    }

    fn gate_count(&self) -> usize {
        let lat = self.latency_budget_ms.is_some() as usize;
        self.max_error_rate.is_some() as usize
            + lat
            + self.error_ratio_tolerance.is_some() as usize
            + lat * self.latency_ratio_tolerance.is_some() as usize
            + self.kpis.len()
    }
}

/// One gate's verdict in one step, as kept in the rollout's state and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateVerdict {
    /// `error_rate`, `p99`, `errors_vs_stable`, `latency_vs_stable`, `kpi:<name>`.
    pub gate: String,
    pub verdict: Verdict,
    /// Whether the step waits for this gate to pass (sentinels only halt).
    pub blocking: bool,
    /// Effective sample size (events or requests, per user when counting users).
    pub n: f64,
    /// Anytime-valid confidence in the verdict's direction.
    pub confidence: f64,
    /// ln of the deciding e-value.
    pub log_e: f64,
    /// Rate (absolute gates) or release/stable ratio (comparative gates).
    pub estimate: Option<f64>,
    /// Confidence-sequence bounds of the rate, where computed.
    #[serde(default)]
    pub bounds: Option<(f64, f64)>,
}

impl GateVerdict {
    fn from(gate: String, blocking: bool, r: TestResult) -> Self {
        Self {
            gate,
            verdict: r.verdict,
            blocking,
            n: r.n,
            confidence: r.confidence,
            log_e: r.log_e,
            estimate: r.estimate,
            bounds: r.bounds,
        }
    }
}

/// The step's verdict: Fail when any gate failed, Pass when every blocking gate passed,
/// else Continue.
pub fn combine(verdicts: &[GateVerdict]) -> Verdict {
    if verdicts.iter().any(|v| v.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if verdicts
        .iter()
        .filter(|v| v.blocking)
        .all(|v| v.verdict == Verdict::Pass)
        && verdicts.iter().any(|v| v.blocking)
    {
        Verdict::Pass
    } else {
        Verdict::Continue
    }
}

/// Responses over `budget_us`: (certainly over, possibly over) from the bucket bounds.
fn over_budget(l: &Latency, budget_us: u64) -> (u64, u64, u64) {
    let (mut lo, mut hi, mut total) = (0u64, 0u64, 0u64);
    for (i, c) in &l.buckets {
        let i = usize::from(*i);
        let c = u64::from(*c);
        total += c;
        if lower_bound(i) > budget_us {
            lo += c;
        }
        if upper_bound(i) > budget_us {
            hi += c;
        }
    }
    (lo, hi, total)
}

/// The running tests of one step, fed window by window (the simulation feeds it
/// incrementally; the engine re-feeds a step's windows on every tick).
#[derive(Debug, Clone)]
pub struct GateEval {
    gates: Gates,
    error_rate: Option<RateCs>,
    p99: Option<RateCs>,
    errors_vs_stable: Option<TwoArm>,
    latency_vs_stable: Option<TwoArm>,
    kpis: Vec<(String, TwoArm)>,
    release_requests: u64,
    release_users: u64,
}

impl GateEval {
    pub fn new(gates: &Gates) -> Self {
        let k = gates.gate_count().max(1) as f64;
        let alpha = gates.alpha / k;
        let beta = gates.beta;
        let rate = |threshold| {
            RateCs::new(RateConfig {
                threshold,
                alpha,
                beta,
            })
        };
        let two = |worse, tolerance| {
            TwoArm::new(TwoArmConfig {
                worse,
                tolerance,
                alpha,
                beta,
            })
        };
        let lat = gates.latency_budget_ms.is_some();
        Self {
            error_rate: gates.max_error_rate.map(rate),
            p99: lat.then(|| rate(gates.max_over_budget)),
            errors_vs_stable: gates.error_ratio_tolerance.map(|t| two(Worse::Higher, t)),
            latency_vs_stable: gates
                .latency_ratio_tolerance
                .filter(|_| lat)
                .map(|t| two(Worse::Higher, t)),
            kpis: gates
                .kpis
                .iter()
                .map(|k| (k.name.clone(), two(Worse::Lower, k.tolerance)))
                .collect(),
            gates: gates.clone(),
            release_requests: 0,
            release_users: 0,
        }
    }

    /// Feed one window of each stack (same window start). `prior_users`: release users
    /// known from earlier steps, used for the design effect when this step has seen no
    /// new ones.
    pub fn observe(&mut self, release: &StackWindow, stable: &StackWindow, prior_users: u64) {
        self.release_requests += release.requests;
        self.release_users += release.new_users;
        let d = match self.gates.count_by {
            CountBy::Requests => 1.0,
            CountBy::Users => {
                let users = if self.release_users > 0 {
                    self.release_users
                } else {
                    prior_users
                };
                if users == 0 {
                    1.0
                } else {
                    (self.release_requests as f64 / users as f64).max(1.0)
                }
            }
        };
        if let Some(t) = &mut self.error_rate {
            t.observe(release.errors, release.errors, release.requests, d);
        }
        if let Some(e) = &mut self.errors_vs_stable {
            e.observe(
                release.errors,
                stable.errors,
                release.requests,
                stable.requests,
                d,
            );
        }
        if let Some(budget_ms) = self.gates.latency_budget_ms {
            let budget_us = (budget_ms * 1_000.0) as u64;
            let (r_lo, r_hi, r_n) = over_budget(&release.latency, budget_us);
            let (_, s_hi, s_n) = over_budget(&stable.latency, budget_us);
            if let Some(t) = &mut self.p99 {
                t.observe(r_lo, r_hi, r_n, d);
            }
            if let Some(t) = &mut self.latency_vs_stable {
                t.observe(r_hi, s_hi, r_n, s_n, d);
            }
        }
        for (name, t) in &mut self.kpis {
            let r = release.kpis.get(name).copied().unwrap_or(0);
            let s = stable.kpis.get(name).copied().unwrap_or(0);
            t.observe(r, s, release.requests, stable.requests, d);
        }
    }

    /// The step's verdict now ([`combine`] of [`GateEval::verdicts`], without computing
    /// confidence bounds).
    pub fn verdict(&self) -> Verdict {
        let mut any_fail = false;
        let mut all_pass = true;
        let mut any_blocking = false;
        let mut see = |v: Verdict, blocking: bool| {
            any_fail |= v == Verdict::Fail;
            if blocking {
                any_blocking = true;
                all_pass &= v == Verdict::Pass;
            }
        };
        for t in [&self.error_rate, &self.p99].into_iter().flatten() {
            see(t.verdict_only().verdict, true);
        }
        for t in [&self.errors_vs_stable, &self.latency_vs_stable]
            .into_iter()
            .flatten()
        {
            see(t.result().verdict, false);
        }
        for (_, t) in &self.kpis {
            see(t.result().verdict, true);
        }
        if any_fail {
            Verdict::Fail
        } else if all_pass && any_blocking {
            Verdict::Pass
        } else {
            Verdict::Continue
        }
    }

    /// Every gate's verdict now.
    pub fn verdicts(&self) -> Vec<GateVerdict> {
        let mut out = Vec::new();
        if let Some(t) = &self.error_rate {
            out.push(GateVerdict::from("error_rate".into(), true, t.result()));
        }
        if let Some(t) = &self.p99 {
            out.push(GateVerdict::from("p99".into(), true, t.result()));
        }
        if let Some(t) = &self.errors_vs_stable {
            out.push(GateVerdict::from(
                "errors_vs_stable".into(),
                false,
                t.result(),
            ));
        }
        if let Some(t) = &self.latency_vs_stable {
            out.push(GateVerdict::from(
                "latency_vs_stable".into(),
                false,
                t.result(),
            ));
        }
        for (name, t) in &self.kpis {
            out.push(GateVerdict::from(format!("kpi:{name}"), true, t.result()));
        }
        out
    }
}

/// Pair the two stacks' windows by start time, from `since_ms` on, in time order. A
/// window only one stack reported counts as zero for the other.
pub fn pair_windows<'a>(
    windows: &'a [StackWindow],
    release: &str,
    stable: &str,
    since_ms: u64,
) -> Vec<(StackWindow, StackWindow)> {
    use std::collections::BTreeMap;
    let mut by_start: BTreeMap<u64, (Option<&'a StackWindow>, Option<&'a StackWindow>)> =
        BTreeMap::new();
    for w in windows.iter().filter(|w| w.start_ms >= since_ms) {
        let e = by_start.entry(w.start_ms).or_default();
        if w.stack == release {
            e.0 = Some(w);
        } else if w.stack == stable {
            e.1 = Some(w);
        }
    }
    by_start
        .into_iter()
        .filter(|(_, (r, s))| r.is_some() || s.is_some())
        .map(|(start, (r, s))| {
            let window_ms = r.or(s).map(|w| w.window_ms).unwrap_or(0);
            (
                r.cloned()
                    .unwrap_or_else(|| StackWindow::new(release, start, window_ms)),
                s.cloned()
                    .unwrap_or_else(|| StackWindow::new(stable, start, window_ms)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_filter::histogram::Histogram;

    fn window(stack: &str, start: u64, requests: u64, errors: u64, slow: u64) -> StackWindow {
        let mut w = StackWindow::new(stack, start, 10_000);
        w.requests = requests;
        w.errors = errors;
        let mut h = Histogram::new();
        for i in 0..requests {
            h.record(if i < slow { 900_000 } else { 50_000 });
        }
        w.latency = Latency::from_histogram(&h);
        w
    }

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        assert!(Gates::default().problems().is_empty());
        let g = Gates {
            alpha: 2.0,
            kpis: vec![KpiGate {
                name: "".into(),
                tolerance: 0.0,
            }],
            ..Gates::default()
        };
        let p = g.problems().join("\n");
        assert!(p.contains("gates.alpha"), "{p}");
        assert!(p.contains("gates.kpis[0].name"), "{p}");
        assert!(p.contains("gates.kpis[0].tolerance"), "{p}");
    }

    #[test]
    fn healthy_release_passes_and_slow_release_fails_p99() {
        let gates = Gates::default();
        let mut ok = GateEval::new(&gates);
        let mut slow = GateEval::new(&gates);
        for i in 0..100 {
            ok.observe(
                &window("g", i, 1_000, 0, 2),
                &window("b", i, 9_000, 0, 18),
                0,
            );
            slow.observe(
                &window("g", i, 1_000, 0, 50),
                &window("b", i, 9_000, 0, 18),
                0,
            );
        }
        let v = ok.verdicts();
        assert_eq!(combine(&v), Verdict::Pass, "{v:?}");
        let v = slow.verdicts();
        assert_eq!(combine(&v), Verdict::Fail);
        let p99 = v.iter().find(|g| g.gate == "p99").unwrap();
        assert_eq!(p99.verdict, Verdict::Fail);
        assert!(p99.bounds.unwrap().0 > 0.01);
        let rel = v.iter().find(|g| g.gate == "latency_vs_stable").unwrap();
        assert_eq!(rel.verdict, Verdict::Fail);
        assert!(!rel.blocking);
    }

    #[test]
    fn counting_by_users_divides_by_requests_per_user() {
        let by_users = Gates {
            count_by: CountBy::Users,
            ..Gates::default()
        };
        let mut req = GateEval::new(&Gates::default());
        let mut usr = GateEval::new(&by_users);
        for i in 0..100 {
            // 1,000 release requests from 50 new users a window: 20 requests per user
            let mut r = window("g", i, 1_000, 3, 0);
            r.new_users = 50;
            let s = window("b", i, 9_000, 0, 0);
            req.observe(&r, &s, 0);
            usr.observe(&r, &s, 0);
        }
        let find = |v: &[GateVerdict], g: &str| v.iter().find(|x| x.gate == g).unwrap().clone();
        let (a, b) = (
            find(&req.verdicts(), "error_rate"),
            find(&usr.verdicts(), "error_rate"),
        );
        assert!((a.n / b.n - 20.0).abs() < 1e-9, "{} {}", a.n, b.n);
        // 0.3 % errors: clear by requests, not yet by users
        assert_eq!(a.verdict, Verdict::Fail);
        assert_eq!(b.verdict, Verdict::Continue);
    }

    #[test]
    fn no_traffic_never_passes() {
        let mut e = GateEval::new(&Gates::default());
        for i in 0..1_000 {
            e.observe(&window("g", i, 0, 0, 0), &window("b", i, 1_000, 0, 0), 0);
        }
        assert_eq!(combine(&e.verdicts()), Verdict::Continue);
    }

    #[test]
    fn kpi_gate_blocks_until_it_passes() {
        let gates = Gates {
            kpis: vec![KpiGate {
                name: "orders".into(),
                tolerance: 0.05,
            }],
            ..Gates::default()
        };
        let mut e = GateEval::new(&gates);
        let mut r = window("g", 0, 1_000, 0, 0);
        let mut s = window("b", 0, 9_000, 0, 0);
        r.kpis.insert("orders".into(), 5);
        s.kpis.insert("orders".into(), 45);
        for _ in 0..100 {
            e.observe(&r, &s, 0);
        }
        let v = e.verdicts();
        // the absolute gates passed, the KPI has 500 release orders: not yet enough
        assert_eq!(v[0].verdict, Verdict::Pass);
        assert_eq!(combine(&v), Verdict::Continue);
    }

    #[test]
    fn pairing_fills_missing_windows_and_drops_old_ones() {
        let ws = vec![
            window("g", 0, 1, 0, 0),
            window("g", 10_000, 2, 0, 0),
            window("b", 10_000, 3, 0, 0),
            window("b", 20_000, 4, 0, 0),
            window("x", 20_000, 9, 0, 0),
        ];
        let p = pair_windows(&ws, "g", "b", 10_000);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].0.requests, p[0].1.requests), (2, 3));
        assert_eq!((p[1].0.requests, p[1].1.requests), (0, 4));
        assert_eq!(p[1].0.stack, "g");
    }
}
