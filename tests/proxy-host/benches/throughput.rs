//! Host throughput: filter requests per second through the built switchyard_filter.wasm
//! on one core, module compiled once and cached. A program, not a timed test:
//!   taskset -c 1 cargo bench -p switchyard-proxy-host --bench throughput
//! Prints the median of interleaved rounds per request shape, plus compile and
//! instantiate times.

use std::time::{Duration, Instant};

use switchyard_proxy_host::build::filter_wasm;
use switchyard_proxy_host::{Request, Switchyard, WasmModule};

fn shapes(cookie: &str) -> Vec<(&'static str, Request)> {
    vec![
        ("plain GET, new visitor", Request::get("/")),
        (
            "returning visitor with affinity cookie",
            Request::get("/cart").cookie("sy_aff", cookie),
        ),
        (
            "browser-like, 12 headers, EU geo",
            Request::get("/products/42?ref=home")
                .header(
                    "user-agent",
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36",
                )
                .header("accept", "text/html,application/xhtml+xml")
                .header("accept-language", "de-DE,de;q=0.9")
                .header("accept-encoding", "gzip, br")
                .header("x-geo-country", "DE")
                .header("x-request-id", "0b7c1d9e-1f1e-4c35-9a3e-7d1c2b3a4f5e")
                .header("x-forwarded-proto", "https")
                .cookie("session", "abc123")
                .source("198.51.100.23:50123"),
        ),
        (
            "mobile app, consistent hash",
            Request::get("/api/feed")
                .header("user-agent", "SwitchyardShop-iOS/5.1")
                .header("x-jwt-sub", "user-1234"),
        ),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let per_round: usize = std::env::var("SWITCHYARD_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rounds = 5;
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let path = filter_wasm().expect("filter .wasm");
    let t = Instant::now();
    let module = WasmModule::from_file(&path).expect("compiles");
    let compile = t.elapsed();
    let t = Instant::now();
    let _ = WasmModule::from_file(&path).expect("cached");
    let cached = t.elapsed();
    let _ = module;

    let t = Instant::now();
    let mut sy = Switchyard::builder()
        .log_capacity(1_000)
        .build()
        .expect("filter starts");
    let instantiate = t.elapsed();
    let first = sy.send(Request::get("/")).unwrap();
    let cookie = first.set_cookie("sy_aff").expect("cookie").value;
    let shapes = shapes(&cookie);
    for (_, req) in &shapes {
        for _ in 0..2_000 {
            sy.send(req.clone()).unwrap();
        }
    }
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); shapes.len()];
    // Interleave shapes round by round (A B C D A B C D ...) so drift hits all alike.
    for _ in 0..rounds {
        for (i, (_, req)) in shapes.iter().enumerate() {
            let t = Instant::now();
            for _ in 0..per_round {
                let ex = sy.send(req.clone()).unwrap();
                std::hint::black_box(&ex);
            }
            let secs = t.elapsed().as_secs_f64();
            results[i].push(per_round as f64 / secs);
            // Keep virtual time moving like a live worker (ticks, metric flushes).
            sy.advance(Duration::from_secs(1)).unwrap();
        }
    }
    println!(
        "module: {} ({} bytes)",
        path.display(),
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
    );
    println!("compile once: {:.0} ms; cached lookup: {:.3} ms; VM start (instantiate + configure): {:.2} ms",
        compile.as_secs_f64() * 1e3, cached.as_secs_f64() * 1e3, instantiate.as_secs_f64() * 1e3);
    for (i, (name, _)) in shapes.iter().enumerate() {
        let mut r = results[i].clone();
        r.sort_by(|a, b| a.total_cmp(b));
        let median = r[r.len() / 2];
        println!(
            "{name}: median {:.0} req/s ({:.1} µs/request); rounds {}",
            median,
            1e6 / median,
            r.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    assert!(sy.host_errors().is_empty());
}
