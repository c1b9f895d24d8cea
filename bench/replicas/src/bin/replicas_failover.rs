//! Failover of the replicated control plane (3 replicas on a 3-member etcd cluster):
//!
//! 1. `leader`: `kill -9` the leader, time until another replica says it leads (its
//!    `switchyard --json status`, polled; the CLI's start-up bounds the resolution to
//!    ~0.1 s), restart the killed one, repeat `--runs` times. Goal: p99 ≤ lease TTL + 1 s.
//! 2. `envoys`: `--envoys` real Envoys (`--concurrency 1`, the replicas' control
//!    cluster, `envoy/control-replicas.yaml`) under bounded load; `kill -9` the replica
//!    most of them stream from, commit a change on another replica at once, time until
//!    every Envoy applied it (which needs it connected again), restart, repeat
//!    `--rounds` times; count failed requests (Envoy's own 4xx/5xx counters). Goal: all
//!    current within 5 s, 0 failed.
//!
//! ```text
//! cargo build --release -p switchyard-control -p switchyard-storefront -p switchyard-replicas-bench
//! make wasm && target/release/replicas_failover --runs 10 --rounds 5 --envoys 4
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use switchyard_e2e::replicas::{applied_version, responses, Replicas};
use switchyard_e2e::{Envoy, Shop, Traffic};
use switchyard_replicas_bench::*;

#[derive(Parser, Debug)]
#[command(about = "Leader failover and Envoy failover of the replicated control plane")]
struct Args {
    /// Leader kills to time.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Replica kills under Envoys to time.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Envoys following the replicas.
    #[arg(long, default_value_t = 4)]
    envoys: usize,
    /// Only this part: `leader` or `envoys`.
    #[arg(long)]
    only: Option<String>,
}

const POLICY: &str = r#"{
  "name": "failover",
  "stacks": [ { "name": "blue", "region": "us" }, { "name": "green", "region": "us" } ],
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ] }
}"#;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn leader_failover(runs: usize) -> serde_json::Value {
    let mut r = Replicas::start(3, "log_level = \"warn\"");
    let (ok, v) = r.apply(0, POLICY, &[]);
    assert!(ok, "{v}");
    let mut took = Vec::new();
    for run in 0..runs {
        let (leader, _) = r.wait_leader(Duration::from_secs(60), None);
        r.kill(leader);
        let t0 = Instant::now();
        let (next, _) = r.wait_leader(Duration::from_secs(60), Some(leader));
        let t = t0.elapsed();
        eprintln!("run {run}: replica {leader} killed, replica {next} leads after {t:?}");
        took.push(ms(t));
        r.restart(leader);
        // Let the restarted replica catch up before the next kill.
        std::thread::sleep(Duration::from_secs(2));
    }
    serde_json::json!({ "runs": runs, "new_leader_ms": summary(&mut took) })
}

/// Which replica each Envoy streams from (by `node_id`), from the replicas' status.
fn streams(r: &Replicas) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for i in (0..r.len()).filter(|&i| r.is_serving(i)) {
        if let Some(s) = r.status(i) {
            for n in s["nodes"].as_array().into_iter().flatten() {
                if n["connected"] == true {
                    out.insert(n["node_id"].as_str().unwrap_or("").to_string(), i);
                }
            }
        }
    }
    out
}

fn envoy_failover(rounds: usize, n_envoys: usize) -> serde_json::Value {
    let shop = Shop::start();
    let mut r = Replicas::start(3, "log_level = \"warn\"");
    let envoys: Vec<Envoy> = (0..n_envoys)
        .map(|k| {
            let mut ports = shop.ports();
            ports.insert("node", k as u16 + 1);
            r.envoy(POLICY, &ports, 1)
        })
        .collect();
    let (ok, v) = r.apply(0, POLICY, &[]);
    assert!(ok, "{v}");
    let before: Vec<(u64, u64, u64)> = envoys.iter().map(responses).collect();
    let traffic: Vec<Traffic> = envoys.iter().map(|e| Traffic::start(e.port, 2)).collect();
    let mut all_current = Vec::new();
    let mut per_envoy = Vec::new();
    let mut moved = 0;
    for round in 0..rounds {
        // Wait until every Envoy streams from some replica, then kill the busiest one.
        let start = Instant::now();
        let on = loop {
            let on = streams(&r);
            if (1..=n_envoys).all(|k| on.contains_key(&format!("envoy-{k}"))) {
                break on;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "envoys not all connected: {on:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut load = vec![0usize; r.len()];
        for i in on.values() {
            load[*i] += 1;
        }
        let victim = (0..r.len()).max_by_key(|&i| load[i]).unwrap();
        let writer = (victim + 1) % r.len();
        moved += load[victim];
        r.kill(victim);
        let t0 = Instant::now();
        let w = if round % 2 == 0 { "40" } else { "60" };
        let (ok, v) = r.cli_json_timeout(writer, 10, &["stacks", "weight", "green", w]);
        assert!(ok, "{v}");
        let version = v["version"].as_u64().unwrap();
        let mut current: Vec<Option<Duration>> = vec![None; envoys.len()];
        while current.iter().any(Option::is_none) {
            for (k, e) in envoys.iter().enumerate() {
                if current[k].is_none() && applied_version(e) >= version {
                    current[k] = Some(t0.elapsed());
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "round {round}: Envoys current after 60 s: {current:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let times: Vec<f64> = current.iter().map(|d| ms(d.unwrap())).collect();
        let worst = times.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "round {round}: replica {victim} ({} Envoys on it) killed; all {} Envoys current (v{version}) after {worst:.0} ms",
            load[victim],
            envoys.len()
        );
        all_current.push(worst);
        per_envoy.extend(times);
        r.restart(victim);
        std::thread::sleep(Duration::from_secs(2));
    }
    let sent: usize = traffic.into_iter().map(Traffic::stop).sum();
    let mut failed = 0;
    let mut succeeded = 0;
    for (e, b) in envoys.iter().zip(&before) {
        let a = responses(e);
        succeeded += a.0 - b.0;
        failed += (a.1 - b.1) + (a.2 - b.2);
    }
    serde_json::json!({
        "rounds": rounds,
        "envoys": n_envoys,
        "envoys_on_killed_replicas": moved,
        "all_envoys_current_ms": summary(&mut all_current),
        "each_envoy_current_ms": summary(&mut per_envoy),
        "requests": { "sent": sent, "succeeded": succeeded, "failed": failed },
    })
}

fn main() {
    let args = Args::parse();
    let mut result = serde_json::json!({ "bench": "failover" });
    if args.only.as_deref() != Some("envoys") {
        result["leader"] = leader_failover(args.runs);
    }
    if args.only.as_deref() != Some("leader") {
        result["envoys"] = envoy_failover(args.rounds, args.envoys);
    }
    report("failover", &result);
}
