//! Replay the Envoy benchmark's request mix (a `load.lua` written by
//! bench/load/gen_load.py) through the filter on the wasmtime host, for profiling the
//! guest under the same load as bench/run.sh (variant c):
//!
//!   python3 bench/load/gen_load.py k1=0123456789abcdef0123 256 7 > /tmp/load.lua
//!   SWITCHYARD_WASM_PERFMAP=1 perf record -g cargo run --release -p switchyard-proxy-host \
//!     --features wasmtime/profiling --example replay -- /tmp/load.lua [rounds]
//!
//! Prints requests per second; with perf, `[JIT]` symbols are the guest's functions.

use std::time::Instant;

use switchyard_proxy_host::{Request, Switchyard};

/// Requests of a load.lua: one JSON string literal per line, raw HTTP/1.1.
fn load(path: &str) -> Vec<Request> {
    let text = std::fs::read_to_string(path).expect("load.lua");
    text.lines()
        .filter_map(|l| l.trim().strip_suffix(',').filter(|l| l.starts_with('"')))
        .map(|l| {
            let raw: String = serde_json::from_str(l).expect("JSON string");
            let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
            let mut lines = head.split("\r\n");
            let start = lines.next().unwrap_or("GET / HTTP/1.1");
            let mut parts = start.split(' ');
            let (method, path) = (parts.next().unwrap_or("GET"), parts.next().unwrap_or("/"));
            let mut req = Request::new(method, path).source("203.0.113.7:40000");
            for h in lines {
                if let Some((n, v)) = h.split_once(": ") {
                    let n = n.to_ascii_lowercase();
                    req = if n == "host" {
                        req.authority(v)
                    } else {
                        req.header(&n, v)
                    };
                }
            }
            // What Envoy adds before the filter runs.
            req = req
                .header("x-forwarded-proto", "http")
                .header("x-request-id", "6f1c2b7e-3d4a-4f5b-9c8d-0e1f2a3b4c5d");
            if !body.is_empty() {
                req = req.body(body);
            }
            req
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let requests = load(args.get(1).map_or("/tmp/load.lua", String::as_str));
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(400);
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/policies/realistic.json"
    );
    let mut sy = Switchyard::builder()
        .policy_file(policy)
        .affinity_keys(if std::env::var_os("REPLAY_NO_KEYS").is_some() {
            None
        } else {
            Some("k1=0123456789abcdef0123")
        })
        .log_capacity(1_000)
        .build()
        .expect("filter starts");
    let t = Instant::now();
    let mut cookies = 0usize;
    for _ in 0..rounds {
        for r in &requests {
            let ex = sy.send(r.clone()).expect("exchange");
            cookies += usize::from(ex.response_header("set-cookie").is_some());
        }
    }
    let n = rounds * requests.len();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{n} requests ({} distinct): {:.0} req/s, {:.2} µs/request; set-cookie on {:.1}%",
        requests.len(),
        n as f64 / secs,
        secs * 1e6 / n as f64,
        cookies as f64 * 100.0 / n as f64
    );
    assert!(sy.host_errors().is_empty(), "{:?}", sy.host_errors());
}
