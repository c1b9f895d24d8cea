//! The detector's own cost: judgements per second over S stacks × 10 signals (error rate,
//! p99, breaker openings, saturation and 6 KPIs per stack, plus requests/s of their group).
//!
//! ```text
//! cargo build --release -p switchyard-control --example detector_cost
//! taskset -c 1 target/release/examples/detector_cost --stacks 16 --windows 3000
//! ```
//!
//! Windows are generated first (deterministic, log-normal latency, Poisson counts, one
//! error burst on one stack so the anomaly paths run too) and only `Detector::observe`
//! is timed. Prints one line per run and the median of the runs.

use std::collections::BTreeMap;
use std::time::Instant;

use clap::Parser;
use switchyard_control::brain::detection::{DetectContext, Detector, DetectorConfig, StackInfo};
use switchyard_control::brain::scenario::{lognormal_latency, Rng};
use switchyard_control::brain::signals::StackWindow;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 16)]
    stacks: usize,
    /// KPIs per stack (10 signals per stack with the default 6).
    #[arg(long, default_value_t = 6)]
    kpis: usize,
    /// Windows per run (one minute each).
    #[arg(long, default_value_t = 3000)]
    windows: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn main() {
    let a = Args::parse();
    let window_ms = 60_000;
    let names: Vec<String> = (0..a.stacks).map(|i| format!("s{i:02}")).collect();
    let topology: Vec<StackInfo> = names
        .iter()
        .map(|n| StackInfo {
            name: n.clone(),
            group: "default".into(),
            ..StackInfo::default()
        })
        .collect();
    let mut rng = Rng::new(7);
    let start = 1_796_083_200_000u64;
    let windows: Vec<Vec<StackWindow>> = (0..a.windows)
        .map(|w| {
            let t = start + w as u64 * window_ms;
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mut sw = StackWindow::new(n, t, window_ms);
                    sw.requests = rng.poisson(3_000.0);
                    let burst = i == 3 && w % 500 >= 400 && w % 500 < 420;
                    sw.errors = rng.poisson(if burst { 300.0 } else { 3.0 });
                    sw.latency = lognormal_latency(sw.requests, 40.0, 220.0);
                    for k in 0..a.kpis {
                        sw.kpis.insert(format!("kpi{k}"), rng.poisson(30.0));
                    }
                    sw
                })
                .collect()
        })
        .collect();
    let sat: BTreeMap<String, f64> = names.iter().map(|n| (n.clone(), 0.5)).collect();
    let signals = 4 + a.kpis;
    let mut rates = Vec::new();
    for run in 0..a.runs {
        let mut d = Detector::new(DetectorConfig::default());
        let ctx = DetectContext {
            events: &[],
            saturation: Some(&sat),
            topology: &topology,
        };
        let mut findings = 0usize;
        let t0 = Instant::now();
        for ws in &windows {
            findings += d.observe(ws, &ctx).len();
        }
        let secs = t0.elapsed().as_secs_f64();
        let judged = (a.windows * a.stacks * signals) as f64;
        let rate = judged / secs;
        println!(
            "run {run}: {} windows x {} stacks x {signals} signals in {:.3} s: {:.0} judgements/s, \
             {:.1} us per window, {findings} findings",
            a.windows,
            a.stacks,
            secs,
            rate,
            secs * 1e6 / a.windows as f64
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median: {:.0} judgements/s ({:.1} us per window of {} stacks)",
        rates[rates.len() / 2],
        (a.stacks * signals) as f64 / rates[rates.len() / 2] * 1e6,
        a.stacks
    );
}
