//! The soak (`make soak`, SOAK_MINUTES, default 30; `#[ignore]`d, not part of `make test`):
//! the real Envoy (two workers) with the real `.wasm`, the demo stacks and the control
//! service on a redb store, under steady bounded load, with a policy push every 3 s and a
//! stack weight change every minute. Every 10 s it samples Envoy's RSS, heap
//! (`server.memory_allocated`) and open fds, every wasm stat Envoy has, and the control
//! service's RSS, fds and store size. At the end: growth of each resource from the end
//! of the warm-up (the first fifth of the run, at least 1 minute) to the end, the p99 of
//! every request of the run, and the failures. Figures go to `target/soak/result.txt`
//! (`result-push-<N>s.txt` with another SOAK_PUSH_SECONDS).
//!
//! SOAK_PUSH_SECONDS (default 3) sets the push interval; 0 turns pushes off, to tell
//! growth driven by pushes from growth driven by requests (docs/RELIABILITY.md).
//!
//! Nothing here is asserted against the clock; the assertions are on failures (none
//! allowed) and on every push being acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use switchyard_e2e::*;

use crate::load::{ms, p99, Load, Stream};

const POLICY: &str = r#"{
  "name": "soak-NAME",
  "stacks": [
    { "name": "blue",  "region": "us", "health_path": "/healthz" },
    { "name": "green", "region": "us", "health_path": "/healthz" }
  ],
  "affinity": { "cookie": "sy_aff", "ttl_s": 600, "secure": false, "epoch": 1 },
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ], "affinity": true },
  "debug_header": true
}"#;

/// One resource sample.
#[derive(Debug, Clone, Copy, Default)]
struct Res {
    at: Duration,
    envoy_rss_kb: u64,
    envoy_fds: u64,
    envoy_heap: u64,
    control_rss_kb: u64,
    control_fds: u64,
    store_bytes: u64,
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

fn growth(name: &str, warm: u64, end: u64) -> String {
    let pct = if warm == 0 {
        0.0
    } else {
        (end as f64 - warm as f64) * 100.0 / warm as f64
    };
    format!("{name}: {warm} after warm-up → {end} at the end ({pct:+.2} %)")
}

#[test]
#[ignore = "soak: make soak (SOAK_MINUTES)"]
fn soak() {
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30);
    let run = Duration::from_secs(minutes * 60);
    let push_every: u64 = std::env::var("SOAK_PUSH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let warmup = (run / 5).max(Duration::from_secs(60)).min(run / 2);

    let shop = Shop::start();
    let dir = TestDir::new("soak");
    let grpc = ReservedPort::new().unwrap();
    let data = dir.join("data");
    let mut control = ControlService::start(&data, grpc.port());
    let push = |control: &ControlService, n: usize| {
        let file = dir.join("policy.json");
        std::fs::write(&file, POLICY.replace("NAME", &n.to_string())).unwrap();
        let out = control.cli(&["policy", "apply", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "push {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    push(&control, 0);
    let mut ports = shop.ports();
    ports.insert("control", grpc.port());
    ports.insert("node", 1);
    let mut envoy = Envoy::start(POLICY, &ports, 2);
    let envoy_pid = envoy.inner.proc().pid();
    let control_pid = control.proc.pid();

    let mut load = Load::start_for(envoy.port, run + Duration::from_secs(60));
    load.add(&Stream::get("web", "/"), 6);
    load.add(
        &Stream::get("mobile", "/products").header("user-agent", "SwitchyardShop-iOS/5"),
        2,
    );
    let start = Instant::now();
    let mut samples: Vec<Res> = Vec::new();
    let (mut pushes, mut weights) = (0usize, 0usize);
    let (mut next_push, mut next_weight, mut next_sample) =
        (Duration::ZERO, Duration::from_secs(60), Duration::ZERO);
    while start.elapsed() < run {
        let now = start.elapsed();
        if push_every > 0 && now >= next_push {
            pushes += 1;
            push(&control, pushes);
            next_push += Duration::from_secs(push_every);
        }
        if now >= next_weight {
            weights += 1;
            let w = if weights % 2 == 0 { "100" } else { "50" };
            let out = control.cli(&["stacks", "weight", "blue", w]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            next_weight += Duration::from_secs(60);
        }
        if now >= next_sample {
            let heap = envoy.inner.stats_matching("server.memory_allocated");
            samples.push(Res {
                at: now,
                envoy_rss_kb: rss_kb(envoy_pid),
                envoy_fds: fds(envoy_pid),
                envoy_heap: heap.get("server.memory_allocated").copied().unwrap_or(0),
                control_rss_kb: rss_kb(control_pid),
                control_fds: fds(control_pid),
                store_bytes: dir_bytes(&data),
            });
            next_sample += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let requests = load.stop();
    let wasm_stats = envoy.inner.stats_matching("wasm");
    control.kill();

    let warm = samples
        .iter()
        .find(|s| s.at >= warmup)
        .copied()
        .unwrap_or_default();
    let end = samples.last().copied().unwrap_or_default();
    let failures = requests.iter().filter(|s| s.status != 200).count();
    let all: Vec<&crate::load::Sample> = requests.iter().collect();
    let mut out = vec![
        format!(
            "soak: {minutes} min, warm-up {} s; {} requests (8 connections, paced 10 ms), \
             {failures} failures; p99 of the whole run {}; {pushes} policy pushes (every \
             {push_every} s), {weights} weight changes (every 60 s)",
            warmup.as_secs(),
            requests.len(),
            ms(p99(&all)),
        ),
        growth("Envoy RSS (kB)", warm.envoy_rss_kb, end.envoy_rss_kb),
        growth(
            "Envoy heap, server.memory_allocated (bytes)",
            warm.envoy_heap,
            end.envoy_heap,
        ),
        growth("Envoy open fds", warm.envoy_fds, end.envoy_fds),
        growth(
            "control service RSS (kB)",
            warm.control_rss_kb,
            end.control_rss_kb,
        ),
        growth(
            "control service open fds",
            warm.control_fds,
            end.control_fds,
        ),
        growth("store size (bytes)", warm.store_bytes, end.store_bytes),
    ];
    let mut ws: Vec<String> = wasm_stats
        .iter()
        .filter(|(k, _)| !k.starts_with("wasmcustom."))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    ws.sort();
    out.push(format!("Envoy's wasm stats at the end: {}", ws.join(" ")));
    out.push("samples (s: envoy rss kB, heap, fds | control rss kB, fds, store bytes):".into());
    for s in &samples {
        out.push(format!(
            "  {:>5}: {} {} {} | {} {} {}",
            s.at.as_secs(),
            s.envoy_rss_kb,
            s.envoy_heap,
            s.envoy_fds,
            s.control_rss_kb,
            s.control_fds,
            s.store_bytes
        ));
    }
    let text = out.join("\n") + "\n";
    println!("{text}");
    let dirp = root().join("target/soak");
    std::fs::create_dir_all(&dirp).unwrap();
    let file = if push_every == 3 {
        "result.txt".to_string()
    } else {
        format!("result-push-{push_every}s.txt")
    };
    std::fs::write(dirp.join(file), &text).unwrap();
    assert_eq!(failures, 0, "requests failed during the soak");
}
