//! Write latency of a policy apply, etcd vs redb, side by side in one run: one control
//! service on a 3-member etcd cluster (`--store etcd`) and one on redb (the default), the
//! same release binary, the same ~1 KB policies; applies interleaved A B, B A, … so
//! both see the same machine. Latency = the Apply RPC as a client sees it (validation,
//! the durable commit, the answer).
//!
//! ```text
//! cargo build --release -p switchyard-control -p switchyard-replicas-bench
//! target/release/store_write_latency --applies 200
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use clap::Parser;
use switchyard_e2e::replicas::Replicas;
use switchyard_e2e::{ControlService, ReservedPort, TestDir};
use switchyard_replicas_bench::*;

#[derive(Parser, Debug)]
#[command(about = "Policy apply latency on etcd vs redb")]
struct Args {
    /// Applies per backend.
    #[arg(long, default_value_t = 200)]
    applies: usize,
    /// Stacks in the policy (8 ≈ 1 KB).
    #[arg(long, default_value_t = 8)]
    stacks: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let etcd = Replicas::start(1, "log_level = \"warn\"");
    let dir = TestDir::new("write-latency");
    let port = ReservedPort::new().unwrap();
    let redb = ControlService::start_with(&dir.join("data"), port.port(), &["--log-level", "warn"]);
    let mut backends = [
        (
            "etcd",
            Operator::connect(etcd.ports()[0], &etcd.replica(0).admin_token()).await,
        ),
        (
            "redb",
            Operator::connect(port.port(), &redb.admin_token()).await,
        ),
    ];
    // Warm both up (connections, first versions).
    for (name, op) in backends.iter_mut() {
        for k in 0..5 {
            op.apply(&policy(args.stacks, &format!("warm-{name}-{k}")))
                .await
                .expect("apply");
        }
    }
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for k in 0..args.applies {
        let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
        for b in order {
            let doc = policy(args.stacks, &format!("bench-{}-{k}", backends[b].0));
            let t0 = Instant::now();
            backends[b].1.apply(&doc).await.expect("apply");
            times[b].push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let [mut e, mut r] = times;
    let (se, sr) = (summary(&mut e), summary(&mut r));
    let ratio = |k: &str| {
        let r = se[k].as_f64().unwrap() / sr[k].as_f64().unwrap();
        (r * 100.0).round() / 100.0
    };
    let result = serde_json::json!({
        "bench": "write_latency",
        "applies_per_backend": args.applies,
        "policy_bytes": policy(args.stacks, "x").len(),
        "etcd_3_members_ms": se,
        "redb_ms": sr,
        "ratio_etcd_over_redb": { "p50": ratio("p50"), "p99": ratio("p99") },
    });
    report("write_latency", &result);
}
