//! Anytime-valid sequential tests for rollout gates.
//!
//! A rollout checks its gates after every telemetry window, for as long as a step lasts.
//! A fixed-sample test (a t-test, Mann-Whitney) checked that often halts healthy
//! releases at many times its nominal rate. Every test here is an *e-process*: a
//! non-negative (super)martingale under the null hypothesis, so by Ville's inequality
//! `P(sup_t E_t >= 1/alpha) <= alpha` however often it is looked at, and a step may stop
//! the moment the evidence is strong enough (Ramdas, Grünwald, Vovk, Shafer, "Game-theoretic
//! statistics and safe anytime-valid inference", Statistical Science 2023).
//!
//! Two tests:
//!
//! - [`TwoArm`]: release vs the concurrent stable stack. Conditional on the number of
//!   *events* (errors, over-budget responses, or a KPI's good outcomes) both stacks saw
//!   in a window, the release's count is binomial with probability
//!   `theta = rho*d / (rho*d + 1 - rho)`, where `rho` is the release's *measured
//!   exposure* (its share of the two stacks' requests in that window) and `d` the ratio
//!   of the release's per-request event rate to the stable one's. This is the Poisson
//!   conditioning of Lindon, Sanden, Shirikian et al., "Rapid Regression Detection in
//!   Software Deployments through Sequential Testing" (KDD 2022). With fixed request
//!   counts the conditional law is hypergeometric rather than binomial; the binomial
//!   likelihood ratio is convex in the count, so by Hoeffding (1963, Thm 4) its
//!   expectation under the hypergeometric is at most its (unit) expectation under the
//!   binomial: it stays a supermartingale. Because `rho` may change every window
//!   (warm-up, sticky users), the statistic is a product of per-window ratios, mixed over
//!   a fixed grid of alternatives (a mixture of martingales is a martingale) instead of a
//!   conjugate beta prior, which would need a constant `rho`.
//! - [`RateCs`]: an absolute rate vs a threshold (error rate < 0.1 %; p99 < 500 ms read
//!   as "fraction of responses over 500 ms < 1 %"), through Robbins' beta-binomial
//!   mixture confidence sequence (Robbins 1970; Howard, Ramdas, McAuliffe, Sekhon,
//!   "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Stat.
//!   2021): `CS_t = { p : B(a+x, b+n-x) / B(a,b) / (p^x (1-p)^(n-x)) < 1/alpha }`,
//!   valid simultaneously for every `t`. The prior `Beta(1, 1/p0 - 1)` has its mean at
//!   the threshold `p0`, which is where the test needs its power.
//!
//! Both sides of a gate are tested: *Fail* rejects "the release is acceptable" at level
//! `alpha`, *Pass* rejects "the release is unacceptable" at level `beta`. Neither ever
//! decides on too little data: with no evidence a test says [`Verdict::Continue`], and a
//! rollout that reaches its maximum dwell that way is inconclusive, never passed.
//!
//! **Users, not requests.** Requests of one user are correlated (one broken cart gives
//! many errors). When a gate counts by users, counts are divided by the design effect
//! `D = requests / distinct users` of the release (Kish 1965: the variance inflation of
//! cluster sampling is `1 + (m - 1) * icc <= m` for clusters of `m`), i.e. each user is
//! treated as one independent observation carrying `D` requests. That is the
//! conservative end (within-user correlation 1): it slows decisions by up to `D` but
//! keeps the error guarantees when users repeat themselves. Distinct users come from the
//! filter's affinity cookies (`StackWindow::new_users`).
//!
//! No special-function crate is needed: the only one used, `ln Γ`, is a 30-line Lanczos
//! approximation tested below against exact values.

use serde::{Deserialize, Serialize};

/// The outcome of one test at one point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Evidence that the release is acceptable.
    Pass,
    /// Evidence that the release is worse than allowed.
    Fail,
    /// Not enough evidence either way yet.
    Continue,
}

/// A test's verdict with what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub verdict: Verdict,
    /// Natural log of the deciding e-value: of the Fail side when it decided or leads,
    /// else of the Pass side.
    pub log_e: f64,
    /// Effective sample size: events (two-arm test) or trials (rate test), after the
    /// design-effect division when counting by users.
    pub n: f64,
    /// Anytime-valid confidence in the verdict's direction: `1 - 1/max E` (0 when the
    /// e-value never exceeded 1).
    pub confidence: f64,
    /// Point estimate: the rate ratio (two-arm test) or the rate (rate test).
    pub estimate: Option<f64>,
    /// Confidence sequence bounds at the Fail level, where computed (rate test).
    pub bounds: Option<(f64, f64)>,
}

/// Which direction of a two-arm ratio is a regression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Worse {
    /// More events per request is worse (errors, slow responses).
    Higher,
    /// Fewer events per request is worse (orders, payments).
    Lower,
}

/// A two-arm test's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TwoArmConfig {
    pub worse: Worse,
    /// Relative tolerance `m`: the release is acceptable while its per-request rate is
    /// within `(1 + m)` (Higher) or `(1 - m)` (Lower) of the stable stack's.
    pub tolerance: f64,
    /// Fail level: probability of ever failing an acceptable release.
    pub alpha: f64,
    /// Pass level: probability of ever passing an unacceptable release.
    pub beta: f64,
}

/// Multipliers of the boundary ratio used as alternatives. Fixed grids keep the
/// statistic a mixture of martingales with known weights (uniform).
/// Ratios above the boundary (a higher rate).
const UP_GRID: [f64; 7] = [1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0];
/// Ratios below the boundary (a lower rate).
const DOWN_GRID: [f64; 7] = [0.95, 0.9, 0.8, 0.67, 0.5, 0.33, 0.2];
/// Ratios just above a lower-is-worse boundary: a healthy release sits at `1/(1-m)`.
const NEAR_UP_GRID: [f64; 7] = [1.02, 1.05, 1.08, 1.12, 1.2, 1.5, 2.0];

/// A mixture of likelihood ratios against one boundary, accumulated in log space.
#[derive(Debug, Clone)]
struct Mixture {
    /// Per alternative: the ratio `d1` and the running log likelihood ratio.
    alts: Vec<(f64, f64)>,
    max_log_e: f64,
}

impl Mixture {
    fn new(alts: impl Iterator<Item = f64>) -> Self {
        Self {
            alts: alts.map(|d| (d, 0.0)).collect(),
            max_log_e: 0.0,
        }
    }

    fn log_e(&self) -> f64 {
        let m = self
            .alts
            .iter()
            .map(|(_, l)| *l)
            .fold(f64::NEG_INFINITY, f64::max);
        if !m.is_finite() {
            return m;
        }
        let s: f64 = self.alts.iter().map(|(_, l)| (l - m).exp()).sum();
        m + (s / self.alts.len() as f64).ln()
    }

    /// Feed `x` events out of `k` with null probability `theta0`; `theta1` maps each
    /// alternative ratio to its probability.
    fn observe(&mut self, x: f64, k: f64, theta0: f64, theta1: impl Fn(f64) -> f64) {
        for (d, l) in &mut self.alts {
            let t1 = theta1(*d);
            *l += x * (t1 / theta0).ln() + (k - x) * ((1.0 - t1) / (1.0 - theta0)).ln();
        }
        self.max_log_e = self.max_log_e.max(self.log_e());
    }
}

/// Probability that an event falls on the release arm when its rate is `d` times the
/// stable one's and it receives the share `rho` of requests.
fn theta(rho: f64, d: f64) -> f64 {
    rho * d / (rho * d + 1.0 - rho)
}

/// Release vs stable: is the release's per-request event rate outside the tolerance?
/// Feed it window by window with [`TwoArm::observe`].
#[derive(Debug, Clone)]
pub struct TwoArm {
    config: TwoArmConfig,
    /// Boundary ratio `1 ± m`.
    boundary: f64,
    fail: Mixture,
    pass: Mixture,
    release_events: f64,
    stable_events: f64,
    release_requests: f64,
    stable_requests: f64,
}

impl TwoArm {
    pub fn new(config: TwoArmConfig) -> Self {
        let (boundary, fail_grid, pass_grid) = match config.worse {
            Worse::Higher => (1.0 + config.tolerance, UP_GRID, DOWN_GRID),
            Worse::Lower => ((1.0 - config.tolerance).max(1e-6), DOWN_GRID, NEAR_UP_GRID),
        };
        Self {
            config,
            boundary,
            fail: Mixture::new(fail_grid.iter().map(|r| r * boundary)),
            pass: Mixture::new(pass_grid.iter().map(|r| r * boundary)),
            release_events: 0.0,
            stable_events: 0.0,
            release_requests: 0.0,
            stable_requests: 0.0,
        }
    }

    /// One window: events and requests of each arm, and the design effect `D >= 1` to
    /// divide the event counts by (1 when counting requests).
    pub fn observe(
        &mut self,
        release_events: u64,
        stable_events: u64,
        release_requests: u64,
        stable_requests: u64,
        design_effect: f64,
    ) {
        self.release_requests += release_requests as f64;
        self.stable_requests += stable_requests as f64;
        self.release_events += release_events as f64;
        self.stable_events += stable_events as f64;
        let total = release_requests + stable_requests;
        if release_requests == 0 || stable_requests == 0 {
            return; // one arm saw nothing: the window says nothing about the ratio
        }
        let k = (release_events + stable_events) as f64;
        if k == 0.0 {
            return;
        }
        let d = design_effect.max(1.0);
        let rho = release_requests as f64 / total as f64;
        let theta0 = theta(rho, self.boundary);
        let x = release_events as f64 / d;
        let k = k / d;
        self.fail.observe(x, k, theta0, |d1| theta(rho, d1));
        self.pass.observe(x, k, theta0, |d1| theta(rho, d1));
    }

    /// The verdict now (running maxima: the test may stop at any crossing).
    pub fn result(&self) -> TestResult {
        let fail_hit = self.fail.max_log_e >= (1.0 / self.config.alpha).ln();
        let pass_hit = self.pass.max_log_e >= (1.0 / self.config.beta).ln();
        let (verdict, log_e) = if fail_hit {
            (Verdict::Fail, self.fail.max_log_e)
        } else if pass_hit {
            (Verdict::Pass, self.pass.max_log_e)
        } else if self.fail.max_log_e >= self.pass.max_log_e {
            (Verdict::Continue, self.fail.max_log_e)
        } else {
            (Verdict::Continue, self.pass.max_log_e)
        };
        let estimate = if self.release_requests > 0.0
            && self.stable_requests > 0.0
            && self.stable_events > 0.0
        {
            Some(
                (self.release_events / self.release_requests)
                    / (self.stable_events / self.stable_requests),
            )
        } else {
            None
        };
        TestResult {
            verdict,
            log_e,
            n: self.release_events + self.stable_events,
            confidence: confidence(log_e),
            estimate,
            bounds: None,
        }
    }
}

fn confidence(log_e: f64) -> f64 {
    if log_e <= 0.0 {
        0.0
    } else {
        1.0 - (-log_e).exp()
    }
}

/// A rate test's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateConfig {
    /// The threshold `p0`: acceptable while the rate is below it.
    pub threshold: f64,
    /// Fail level: probability of ever failing when the rate is at most `p0`.
    pub alpha: f64,
    /// Pass level: probability of ever passing when the rate is at least `p0`.
    pub beta: f64,
}

/// An absolute rate vs a threshold, by a confidence sequence. Feed it with
/// [`RateCs::observe`]; the Fail side and the Pass side may be fed different counts (a
/// histogram gives a certain and a possible count of slow responses).
#[derive(Debug, Clone)]
pub struct RateCs {
    config: RateConfig,
    /// (bad, trials) fed to the Fail side and to the Pass side.
    fail: (f64, f64),
    pass: (f64, f64),
    fail_hit_log_e: f64,
    pass_hit_log_e: f64,
}

impl RateCs {
    pub fn new(config: RateConfig) -> Self {
        Self {
            config,
            fail: (0.0, 0.0),
            pass: (0.0, 0.0),
            fail_hit_log_e: 0.0,
            pass_hit_log_e: 0.0,
        }
    }

    fn prior(&self) -> (f64, f64) {
        let p0 = self.config.threshold.clamp(1e-9, 0.5);
        (1.0, 1.0 / p0 - 1.0)
    }

    /// One window. `bad_lo <= bad_hi`: the count certainly bad (Fail side) and the count
    /// possibly bad (Pass side); equal for exact counts. `design_effect >= 1`.
    pub fn observe(&mut self, bad_lo: u64, bad_hi: u64, trials: u64, design_effect: f64) {
        let d = design_effect.max(1.0);
        let t = trials as f64 / d;
        self.fail.0 += bad_lo as f64 / d;
        self.fail.1 += t;
        self.pass.0 += bad_hi.max(bad_lo) as f64 / d;
        self.pass.1 += t;
        let p0 = self.config.threshold;
        let (a, b) = self.prior();
        let (x, n) = self.fail;
        if n > 0.0 && x / n > p0 {
            self.fail_hit_log_e = self.fail_hit_log_e.max(log_mixture_e(a, b, x, n, p0));
        }
        let (x, n) = self.pass;
        if n > 0.0 && x / n < p0 {
            self.pass_hit_log_e = self.pass_hit_log_e.max(log_mixture_e(a, b, x, n, p0));
        }
    }

    /// The verdict now, with the confidence sequence at the Fail level.
    pub fn result(&self) -> TestResult {
        let mut r = self.verdict_only();
        let (x, n) = self.fail;
        let (a, b) = self.prior();
        r.bounds = (n > 0.0).then(|| confidence_sequence(a, b, x, n, self.config.alpha));
        r
    }

    /// The verdict now without the (bisection-computed) bounds: cheap enough to call
    /// after every simulated window.
    pub fn verdict_only(&self) -> TestResult {
        let fail_hit = self.fail_hit_log_e >= (1.0 / self.config.alpha).ln();
        let pass_hit = self.pass_hit_log_e >= (1.0 / self.config.beta).ln();
        let (verdict, log_e) = if fail_hit {
            (Verdict::Fail, self.fail_hit_log_e)
        } else if pass_hit {
            (Verdict::Pass, self.pass_hit_log_e)
        } else {
            (
                Verdict::Continue,
                self.fail_hit_log_e.max(self.pass_hit_log_e),
            )
        };
        let (x, n) = self.fail;
        TestResult {
            verdict,
            log_e,
            n,
            confidence: confidence(log_e),
            estimate: (n > 0.0).then(|| x / n),
            bounds: None,
        }
    }
}

/// ln of Robbins' beta-binomial mixture e-value at `p`: prior `Beta(a, b)`, `x` bad of `n`.
fn log_mixture_e(a: f64, b: f64, x: f64, n: f64, p: f64) -> f64 {
    ln_beta(a + x, b + n - x) - ln_beta(a, b) - x * p.ln() - (n - x) * (1.0 - p).ln()
}

/// The set `{p : E(p) < 1/alpha}` (an interval: `ln E` is convex in `p`).
pub fn confidence_sequence(a: f64, b: f64, x: f64, n: f64, alpha: f64) -> (f64, f64) {
    let level = (1.0 / alpha).ln();
    let centre = ((x + a) / (n + a + b)).clamp(1e-12, 1.0 - 1e-12);
    let inside = |p: f64| log_mixture_e(a, b, x, n, p) < level;
    let bisect = |mut good: f64, mut bad: f64| {
        for _ in 0..60 {
            let mid = 0.5 * (good + bad);
            if inside(mid) {
                good = mid;
            } else {
                bad = mid;
            }
        }
        good
    };
    let lo = if inside(1e-15) {
        0.0
    } else {
        bisect(centre, 1e-15)
    };
    let hi = if inside(1.0 - 1e-15) {
        1.0
    } else {
        bisect(centre, 1.0 - 1e-15)
    };
    (lo, hi)
}

/// `ln B(a, b)`.
fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// `ln Γ(x)` for `x > 0`: Lanczos approximation (g = 7, 9 terms), relative error
/// below 1e-13 over the range used here; reflection for `x < 0.5`.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Γ(x) Γ(1-x) = π / sin(πx)
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut s = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        s += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + s.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials_and_half_integers() {
        let mut fact = 1.0f64;
        for n in 1..30 {
            // Γ(n) = (n-1)!
            assert!((ln_gamma(n as f64) - fact.ln()).abs() < 1e-10, "n={n}");
            fact *= n as f64;
        }
        let sqrt_pi = std::f64::consts::PI.sqrt();
        assert!((ln_gamma(0.5) - sqrt_pi.ln()).abs() < 1e-12);
        assert!((ln_gamma(1.5) - (sqrt_pi / 2.0).ln()).abs() < 1e-12);
        assert!(
            (ln_gamma(1e5)
                - (1e5f64 * 1e5f64.ln() - 1e5 - 0.5 * 1e5f64.ln()
                    + 0.5 * (2.0 * std::f64::consts::PI).ln()
                    + 1.0 / 12e5))
                .abs()
                < 1e-6
        );
    }

    fn two_arm(worse: Worse, tol: f64) -> TwoArm {
        TwoArm::new(TwoArmConfig {
            worse,
            tolerance: tol,
            alpha: 0.01,
            beta: 0.05,
        })
    }

    #[test]
    fn two_arm_continues_without_evidence() {
        let mut t = two_arm(Worse::Higher, 0.0);
        assert_eq!(t.result().verdict, Verdict::Continue);
        // events at exactly the exposure share: no evidence of regression
        t.observe(5, 95, 1_000, 19_000, 1.0);
        let r = t.result();
        assert_eq!(r.verdict, Verdict::Continue);
        assert_eq!(r.n, 100.0);
        assert!((r.estimate.unwrap() - 1.0).abs() < 1e-9);
        // one arm without traffic adds nothing
        t.observe(50, 0, 100, 0, 1.0);
        assert_eq!(t.result().verdict, Verdict::Continue);
    }

    #[test]
    fn two_arm_fails_a_clear_regression_and_passes_a_clear_improvement() {
        let mut bad = two_arm(Worse::Higher, 0.0);
        // release has 5 % of requests but 20 % of the errors
        for _ in 0..5 {
            bad.observe(20, 80, 500, 9_500, 1.0);
        }
        let r = bad.result();
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.confidence > 0.99);
        assert!(r.estimate.unwrap() > 4.0);

        let mut good = two_arm(Worse::Higher, 0.25);
        for _ in 0..40 {
            good.observe(25, 475, 1_000, 19_000, 1.0);
        }
        assert_eq!(good.result().verdict, Verdict::Pass);
    }

    #[test]
    fn kpi_direction_fails_when_the_release_converts_less() {
        let mut t = two_arm(Worse::Lower, 0.05);
        // release: 10 % of requests, 5 % of orders (half the conversion)
        for _ in 0..10 {
            t.observe(10, 190, 1_000, 9_000, 1.0);
        }
        assert_eq!(t.result().verdict, Verdict::Fail);
        let mut ok = two_arm(Worse::Lower, 0.05);
        for _ in 0..200 {
            ok.observe(100, 900, 1_000, 9_000, 1.0);
        }
        assert_eq!(ok.result().verdict, Verdict::Pass);
    }

    #[test]
    fn counting_by_users_needs_more_evidence() {
        let mut by_req = two_arm(Worse::Higher, 0.0);
        let mut by_user = two_arm(Worse::Higher, 0.0);
        for _ in 0..3 {
            by_req.observe(12, 88, 500, 9_500, 1.0);
            by_user.observe(12, 88, 500, 9_500, 4.0);
        }
        assert!(by_req.result().log_e > 2.0 * by_user.result().log_e);
        assert_eq!(by_req.result().verdict, Verdict::Fail);
        assert_ne!(by_user.result().verdict, Verdict::Fail);
    }

    fn rate(p0: f64) -> RateCs {
        RateCs::new(RateConfig {
            threshold: p0,
            alpha: 0.01,
            beta: 0.05,
        })
    }

    #[test]
    fn rate_passes_below_and_fails_above_the_threshold() {
        let mut low = rate(0.001);
        let mut high = rate(0.001);
        for _ in 0..100 {
            low.observe(0, 0, 1_000, 1.0);
            high.observe(5, 5, 1_000, 1.0);
        }
        let l = low.result();
        assert_eq!(l.verdict, Verdict::Pass);
        assert!(l.bounds.unwrap().1 < 0.001);
        let h = high.result();
        assert_eq!(h.verdict, Verdict::Fail);
        assert!(h.bounds.unwrap().0 > 0.001);
        assert!((h.estimate.unwrap() - 0.005).abs() < 1e-12);
    }

    #[test]
    fn rate_continues_on_little_data_and_at_the_threshold() {
        let mut t = rate(0.01);
        t.observe(0, 0, 10, 1.0);
        assert_eq!(t.result().verdict, Verdict::Continue);
        let mut at = rate(0.01);
        for _ in 0..200 {
            at.observe(10, 10, 1_000, 1.0);
        }
        let r = at.result();
        assert_eq!(r.verdict, Verdict::Continue);
        let (lo, hi) = r.bounds.unwrap();
        assert!(lo < 0.01 && 0.01 < hi, "{lo} {hi}");
    }

    #[test]
    fn rate_pass_side_uses_the_possible_count() {
        // certainly-bad 0, possibly-bad 3 %: cannot pass a 1 % threshold, cannot fail
        let mut t = rate(0.01);
        for _ in 0..100 {
            t.observe(0, 30, 1_000, 1.0);
        }
        assert_eq!(t.result().verdict, Verdict::Continue);
    }
}
