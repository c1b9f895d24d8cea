//! Simulated rollout steps: synthetic windows for a release and a stable stack, fed to
//! the real gates, to measure false halts (A/A), detection time of regressions and the
//! dwell time a healthy release needs. Deterministic (seeded xorshift), no
//! dependencies; used by the tests below and by the dwell-time table in
//! `docs/rollouts.md` (`cargo test -p switchyard-control --release --lib
//! rollout::sim::tests::dwell_table -- --ignored --nocapture`).

use switchyard_filter::histogram::bucket_of;

use super::gates::{GateEval, Gates};
use crate::brain::signals::{Latency, StackWindow};
use crate::brain::stats::Verdict;

/// A small deterministic generator (xorshift64*); statistical quality is ample for
/// simulation, and it keeps the crate free of `rand`.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // splitmix the seed so nearby seeds give unrelated streams; never zero
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Binomial(n, p) by geometric skips: O(n * min(p, 1-p)).
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if p <= 0.0 || n == 0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let l = (1.0 - p).ln();
        let (mut pos, mut count) = (0u64, 0u64);
        loop {
            let skip = (self.unit().ln() / l).floor();
            if skip >= (n - pos) as f64 {
                return count;
            }
            pos += skip as u64 + 1;
            count += 1;
            if pos >= n {
                return count;
            }
        }
    }
}

/// Per-request behaviour of one stack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arm {
    pub error_rate: f64,
    /// Fraction of responses over the latency budget (they are recorded at 900 ms, the
    /// rest at 50 ms).
    pub slow_rate: f64,
    /// KPI events (`orders`) per request.
    pub kpi_rate: f64,
}

impl Arm {
    /// A healthy stack: 0.02 % errors, 0.2 % slow, 3 orders per 100 requests.
    pub fn healthy() -> Self {
        Self {
            error_rate: 0.0002,
            slow_rate: 0.002,
            kpi_rate: 0.03,
        }
    }
}

/// One simulated step.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Requests per second over both stacks.
    pub total_rps: f64,
    /// Release share of requests (0..1).
    pub release_share: f64,
    pub window_ms: u64,
    /// Longest the step runs (the max dwell).
    pub max_ms: u64,
    /// Shortest the step runs: a Pass before it is not taken (the min dwell).
    pub min_ms: u64,
    pub stable: Arm,
    pub release: Arm,
    pub gates: Gates,
    /// Keep checking after a Pass until the max dwell (A/A: count every false halt).
    pub run_after_pass: bool,
}

/// How one simulated step ended.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRun {
    pub verdict: Verdict,
    /// When the verdict was reached (ms since the step began), `None` when it never was.
    pub at_ms: Option<u64>,
    /// Gates that failed, when it failed.
    pub failed: Vec<String>,
}

fn window(
    stack: &str,
    start: u64,
    window_ms: u64,
    n: u64,
    arm: &Arm,
    rng: &mut XorShift,
) -> StackWindow {
    let mut w = StackWindow::new(stack, start, window_ms);
    w.requests = n;
    w.errors = rng.binomial(n, arm.error_rate);
    let slow = rng.binomial(n, arm.slow_rate);
    let mut buckets = Vec::new();
    if n > slow {
        buckets.push((bucket_of(50_000) as u16, (n - slow) as u32));
    }
    if slow > 0 {
        buckets.push((bucket_of(900_000) as u16, slow as u32));
    }
    w.latency = Latency { buckets };
    w.kpis
        .insert("orders".into(), rng.binomial(n, arm.kpi_rate));
    w
}

/// Run one step of `s` with `seed`, checking the gates after every window.
pub fn run_step(s: &Scenario, seed: u64) -> StepRun {
    let mut rng = XorShift::new(seed);
    let mut eval = GateEval::new(&s.gates);
    let per_window = (s.total_rps * s.window_ms as f64 / 1_000.0).round() as u64;
    let mut passed_at = None;
    let mut t = 0;
    while t < s.max_ms {
        let r_n = rng.binomial(per_window, s.release_share);
        let r = window("release", t, s.window_ms, r_n, &s.release, &mut rng);
        let st = window(
            "stable",
            t,
            s.window_ms,
            per_window - r_n,
            &s.stable,
            &mut rng,
        );
        eval.observe(&r, &st, 0);
        t += s.window_ms;
        match eval.verdict() {
            Verdict::Fail => {
                return StepRun {
                    verdict: Verdict::Fail,
                    at_ms: Some(t),
                    failed: eval
                        .verdicts()
                        .into_iter()
                        .filter(|g| g.verdict == Verdict::Fail)
                        .map(|g| g.gate)
                        .collect(),
                }
            }
            Verdict::Pass if passed_at.is_none() && t >= s.min_ms => {
                passed_at = Some(t);
                if !s.run_after_pass {
                    break;
                }
            }
            _ => {}
        }
    }
    StepRun {
        verdict: if passed_at.is_some() {
            Verdict::Pass
        } else {
            Verdict::Continue
        },
        at_ms: passed_at,
        failed: Vec::new(),
    }
}

/// Outcomes of many runs of one scenario.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub runs: usize,
    pub fails: usize,
    pub passes: usize,
    /// Neither within the max dwell: inconclusive.
    pub inconclusive: usize,
    /// Decision times (ms), ascending.
    pub fail_ms: Vec<u64>,
    pub pass_ms: Vec<u64>,
}

impl Summary {
    /// The `q` quantile of pass times over *all* runs (`None` when fewer than that
    /// share passed).
    pub fn pass_quantile_ms(&self, q: f64) -> Option<u64> {
        quantile(&self.pass_ms, self.runs, q)
    }

    /// The `q` quantile of fail times over all runs.
    pub fn fail_quantile_ms(&self, q: f64) -> Option<u64> {
        quantile(&self.fail_ms, self.runs, q)
    }
}

fn quantile(sorted: &[u64], runs: usize, q: f64) -> Option<u64> {
    let k = ((q * runs as f64).ceil() as usize).max(1);
    sorted.get(k - 1).copied()
}

/// Run `runs` steps with seeds `seed..seed+runs`.
pub fn run_many(s: &Scenario, runs: usize, seed: u64) -> Summary {
    let mut out = Summary {
        runs,
        ..Summary::default()
    };
    for i in 0..runs {
        let r = run_step(s, seed.wrapping_add(i as u64));
        match r.verdict {
            Verdict::Fail => {
                out.fails += 1;
                out.fail_ms.extend(r.at_ms);
            }
            Verdict::Pass => {
                out.passes += 1;
                out.pass_ms.extend(r.at_ms);
            }
            Verdict::Continue => out.inconclusive += 1,
        }
    }
    out.fail_ms.sort_unstable();
    out.pass_ms.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn scenario(rps: f64, share: f64, release: Arm) -> Scenario {
        Scenario {
            total_rps: rps,
            release_share: share,
            window_ms: 10_000,
            max_ms: 60 * MIN,
            min_ms: 0,
            stable: Arm::healthy(),
            release,
            gates: Gates::default(),
            run_after_pass: false,
        }
    }

    #[test]
    fn binomial_sampler_has_the_right_mean() {
        let mut rng = XorShift::new(7);
        for (n, p) in [(1_000u64, 0.01), (200, 0.3), (500, 0.9), (10, 0.0)] {
            let total: u64 = (0..2_000).map(|_| rng.binomial(n, p)).sum();
            let mean = total as f64 / 2_000.0;
            let sd = (n as f64 * p * (1.0 - p) / 2_000.0).sqrt();
            assert!(
                (mean - n as f64 * p).abs() <= 4.0 * sd + 1e-9,
                "{n} {p} {mean}"
            );
        }
    }

    /// A/A: the same behaviour on both stacks, checked after every 10 s window for an
    /// hour (360 looks), 500 rollouts: at most 1 % may halt.
    #[test]
    fn a_a_false_halts_stay_below_one_percent() {
        let mut s = scenario(200.0, 0.05, Arm::healthy());
        s.gates = Gates::with_kpis(["orders"]);
        s.run_after_pass = true;
        let sum = run_many(&s, 500, 1);
        assert!(sum.fails <= 5, "{} false halts of 500", sum.fails);
        // with errors near the stable rate the test still must not halt: noisier arms
        let noisy = Arm {
            error_rate: 0.02,
            slow_rate: 0.005,
            kpi_rate: 0.03,
        };
        let mut s = scenario(200.0, 0.2, noisy);
        s.stable = noisy;
        s.run_after_pass = true;
        s.max_ms = 20 * MIN;
        s.gates.max_error_rate = None; // the stable stack itself is above that SLO
        let sum = run_many(&s, 500, 1_000);
        assert!(sum.fails <= 5, "{} false halts of 500", sum.fails);
    }

    /// 2x the stable error rate at 5 % exposure and 200 req/s, stable at 1 % errors:
    /// caught within 10 minutes in at least 95 % of runs, by the comparative gate.
    #[test]
    fn doubled_error_rate_is_caught_within_ten_minutes() {
        let stable = Arm {
            error_rate: 0.01,
            ..Arm::healthy()
        };
        let release = Arm {
            error_rate: 0.02,
            ..Arm::healthy()
        };
        let mut s = scenario(200.0, 0.05, release);
        s.stable = stable;
        s.max_ms = 10 * MIN;
        s.run_after_pass = true; // the plan's min dwell (30 min) outlasts the 10 min
        s.gates.max_error_rate = None; // isolate the comparative gate
        let sum = run_many(&s, 200, 77);
        assert!(sum.fails >= 190, "caught {} of 200", sum.fails);
        for seed in 77..87 {
            let one = run_step(&s, seed);
            if one.verdict == Verdict::Fail {
                assert_eq!(one.failed, vec!["errors_vs_stable".to_string()]);
            }
        }
    }

    #[test]
    fn healthy_release_reaches_pass() {
        let s = scenario(200.0, 0.05, Arm::healthy());
        let sum = run_many(&s, 50, 5);
        assert!(sum.passes >= 48, "{sum:?}");
        assert_eq!(sum.fails, 0);
    }

    #[test]
    fn vanished_traffic_is_inconclusive() {
        let mut s = scenario(200.0, 0.0, Arm::healthy());
        s.max_ms = 30 * MIN;
        let r = run_step(&s, 3);
        assert_eq!((r.verdict, r.at_ms), (Verdict::Continue, None));
    }

    /// The table in docs/rollouts.md: time a healthy release needs to pass a step.
    #[test]
    #[ignore = "prints the dwell-time table; run in release"]
    fn dwell_table() {
        println!("| req/s | share | median | p95 | passed by 8 h | false halts |");
        println!("|---|---|---|---|---|---|");
        for rps in [50.0, 200.0, 2_000.0] {
            for share in [0.05, 0.2, 0.5] {
                let mut s = scenario(rps, share, Arm::healthy());
                s.max_ms = 8 * 60 * MIN;
                let sum = run_many(&s, 200, 42);
                let fmt = |v: Option<u64>| {
                    v.map(|ms| format!("{:.1} min", ms as f64 / MIN as f64))
                        .unwrap_or_else(|| "> 8 h".into())
                };
                println!(
                    "| {rps} | {}% | {} | {} | {}/{} | {} |",
                    share * 100.0,
                    fmt(sum.pass_quantile_ms(0.5)),
                    fmt(sum.pass_quantile_ms(0.95)),
                    sum.passes,
                    sum.runs,
                    sum.fails
                );
            }
        }
        println!();
        println!("With an `orders` KPI gate (3 orders per 100 requests, within 5 %):");
        println!();
        println!("| req/s | share | median | p95 | passed by 8 h | false halts |");
        println!("|---|---|---|---|---|---|");
        for rps in [50.0, 200.0, 2_000.0] {
            for share in [0.05, 0.2, 0.5] {
                let mut s = scenario(rps, share, Arm::healthy());
                s.gates = Gates::with_kpis(["orders"]);
                s.max_ms = 8 * 60 * MIN;
                let sum = run_many(&s, 100, 42);
                let fmt = |v: Option<u64>| {
                    v.map(|ms| format!("{:.1} min", ms as f64 / MIN as f64))
                        .unwrap_or_else(|| "> 8 h".into())
                };
                println!(
                    "| {rps} | {}% | {} | {} | {}/{} | {} |",
                    share * 100.0,
                    fmt(sum.pass_quantile_ms(0.5)),
                    fmt(sum.pass_quantile_ms(0.95)),
                    sum.passes,
                    sum.runs,
                    sum.fails
                );
            }
        }
        println!();
        println!("2x the stable error rate at 5 % share, 200 req/s, 200 runs of 10 min:");
        println!();
        println!("| stable error rate | caught, default gates | median | caught, comparative gate only | median |");
        println!("|---|---|---|---|---|");
        let fmt = |v: Option<u64>| {
            v.map(|ms| format!("{:.1} min", ms as f64 / MIN as f64))
                .unwrap_or_else(|| "-".into())
        };
        for base in [0.0005, 0.001, 0.002, 0.005, 0.01] {
            let mut s = scenario(
                200.0,
                0.05,
                Arm {
                    error_rate: 2.0 * base,
                    ..Arm::healthy()
                },
            );
            s.stable.error_rate = base;
            s.max_ms = 10 * MIN;
            s.run_after_pass = true;
            let all = run_many(&s, 200, 9);
            s.gates.max_error_rate = None;
            let cmp = run_many(&s, 200, 9);
            println!(
                "| {}% | {}/{} | {} | {}/{} | {} |",
                base * 100.0,
                all.fails,
                all.runs,
                fmt(all.fail_quantile_ms(0.5)),
                cmp.fails,
                cmp.runs,
                fmt(cmp.fail_quantile_ms(0.5)),
            );
        }
    }
}
