//! Control-plane benchmarks against the real Envoy (`--concurrency 2`):
//! 1. propagation: from `policy apply` returning to the first response routed by the new
//!    policy on every connection (4 connections spread over both workers), 100 applies;
//! 2. per-request cost of control-plane state: RPS of the filter fed by the control
//!    service vs. the same policy static in the plugin configuration, interleaved.
//!
//! `cargo run --release -p switchyard-e2e --example control_bench` (after `make build`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_e2e::*;

fn policy(stack: &str) -> String {
    format!(
        r#"{{ "stacks": [ {{ "name": "blue", "region": "us" }}, {{ "name": "green", "region": "us" }} ],
  "default": {{ "targets": [ {{ "stack": "{stack}" }} ] }} }}"#
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn wrk(port: u16, secs: u32) -> f64 {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c16",
            &format!("-d{secs}s"),
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("wrk is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {text}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("APPLIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let shop = Shop::start();
    let dir = TestDir::new("bench");
    let grpc = ReservedPort::new().unwrap();
    let control = ControlService::start(&dir.join("data"), grpc.port());
    let mut ports = shop.ports();
    ports.insert("control", grpc.port());
    let fed = Envoy::start(&policy("blue"), &ports, 2);

    // 1. Propagation.
    let mut clients: Vec<Client> = (0..4).map(|_| fed.client()).collect();
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let target = if i % 2 == 0 { "green" } else { "blue" };
        let file = dir.join("p.json");
        std::fs::write(&file, policy(target)).unwrap();
        let out = control.cli(&["policy", "apply", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t0 = Instant::now();
        let mut done = [false; 4];
        while !done.iter().all(|d| *d) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "apply {i} did not propagate"
            );
            for (c, d) in clients.iter_mut().zip(done.iter_mut()) {
                if !*d {
                    *d = c.get("/", &[]).unwrap().served_by() == Some(target);
                }
            }
        }
        samples.push(t0.elapsed());
    }
    samples.sort();
    println!(
        "| propagation over {rounds} applies | p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms |",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3
    );

    // 2. RPS: control-fed vs static, same policy, interleaved.
    let file = dir.join("p.json");
    std::fs::write(&file, policy("blue")).unwrap();
    assert!(control
        .cli(&["policy", "apply", file.to_str().unwrap()])
        .status
        .success());
    assert!(wait_routing(fed.port, &["blue"], Duration::from_secs(5)).is_some());
    let mut static_ports = shop.ports();
    // Held but never listening (connections refused): plugin policy only.
    let nobody = ReservedPort::new().unwrap();
    static_ports.insert("control", nobody.port());
    let fixed = Envoy::start(&policy("blue"), &static_ports, 2);
    let secs: u32 = std::env::var("RPS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    wrk(fed.port, 1);
    wrk(fixed.port, 1);
    for _ in 0..5 {
        a.push(wrk(fed.port, secs));
        b.push(wrk(fixed.port, secs));
    }
    let (ma, mb) = (median(a.clone()), median(b.clone()));
    println!("| RPS, filter fed by the control service | median {ma:.0} | runs {a:.0?} |");
    println!("| RPS, same policy static | median {mb:.0} | runs {b:.0?} |");
    println!("| ratio fed / static | {:.3} | goal ≥ 0.97 |", ma / mb);
}
