//! Watch fan-out across control-service replicas: `--streams` Watch streams (as Envoys
//! open them, node ids `fanout-<n>`, acknowledging each snapshot) spread evenly over
//! the replicas, many streams per HTTP/2 connection; then `--rounds` changes, each sent
//! to the next replica in turn (so most streams learn it through etcd), alternating a
//! weight change and a whole-policy change.
//!
//! Push latency of one sample: from just before the change RPC is sent (so it includes
//! the durable commit in etcd) to the moment one stream receives that version. Memory per
//! stream: the replicas' summed VmRSS with every stream open minus before, divided by the
//! streams.
//!
//! ```text
//! cargo build --release -p switchyard-control -p switchyard-replicas-bench
//! target/release/replicas_fanout --replicas 3 --streams 10000 --connections 4 --rounds 20 --pin
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use clap::Parser;
use switchyard_control::proto::v1;
use switchyard_e2e::dataplane_token;
use switchyard_e2e::replicas::Replicas;
use switchyard_replicas_bench::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser, Debug)]
#[command(about = "Watch fan-out across control-service replicas on etcd")]
struct Args {
    /// Control-service replicas (on a 3-member etcd cluster).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Watch streams in all.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// HTTP/2 connections per replica the streams share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Changes to commit and measure.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Pause between changes, ms.
    #[arg(long, default_value_t = 500)]
    gap_ms: u64,
    /// Streams opened at a time (each batch waits for its first snapshots).
    #[arg(long, default_value_t = 500)]
    open_batch: usize,
    /// Stacks in the policy (8 ≈ 1 KB).
    #[arg(long, default_value_t = 8)]
    stacks: usize,
    /// Pin etcd and the replicas to CPU 0, this program to CPU 1.
    #[arg(long)]
    pin: bool,
}

/// (stream, version, when received)
type Receipt = (usize, u64, Instant);

async fn watch(conn: Conn, idx: usize, receipts: mpsc::UnboundedSender<Receipt>) {
    let mut client = v1::data_plane_client::DataPlaneClient::new(conn);
    let (tx, rx) = mpsc::channel(4);
    let _ = tx
        .send(v1::WatchRequest {
            node_id: format!("fanout-{idx}"),
            last_applied_version: 0,
            ack_version: 0,
        })
        .await;
    let mut stream = match client.watch(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            eprintln!("stream {idx}: {e}");
            return;
        }
    };
    while let Ok(Some(s)) = stream.message().await {
        let _ = receipts.send((idx, s.version, Instant::now()));
        let _ = tx
            .send(v1::WatchRequest {
                ack_version: s.version,
                ..Default::default()
            })
            .await;
    }
}

fn pids(r: &Replicas) -> Vec<u32> {
    (0..r.len()).map(|i| r.replica(i).proc.pid()).collect()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let r = Replicas::start(args.replicas, "log_level = \"warn\"");
    if args.pin {
        for m in 0..r.etcd.len() {
            if let Some(p) = r.etcd.pid(m) {
                pin(p, "0");
            }
        }
        for p in pids(&r) {
            pin(p, "0");
        }
        pin(std::process::id(), "1");
    }
    let admin: Vec<String> = (0..r.len()).map(|i| r.replica(i).admin_token()).collect();
    let mut ops = Vec::new();
    for (i, port) in r.ports().into_iter().enumerate() {
        ops.push(Operator::connect(port, &admin[i]).await);
    }
    let first = ops[0]
        .apply(&policy(args.stacks, "fanout-0"))
        .await
        .expect("initial policy");
    let policy_bytes = policy(args.stacks, "fanout-0").len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = |r: &Replicas| pids(r).into_iter().map(rss_kib).sum::<u64>();
    let cpu = |r: &Replicas| pids(r).into_iter().map(cpu_ms).sum::<f64>();
    let rss_before = rss(&r);

    let token = &dataplane_token().token;
    let mut conns = Vec::new();
    for port in r.ports() {
        let mut per = Vec::new();
        for _ in 0..args.connections.max(1) {
            per.push(connect(port, token).await);
        }
        conns.push(per);
    }
    let (rtx, mut rrx) = mpsc::unbounded_channel::<Receipt>();
    let opened = Instant::now();
    // Open in batches, each waited for: Envoys do not all connect in the same
    // millisecond, and what is measured is the push to streams already open.
    let mut ready = vec![false; args.streams];
    let mut n = 0;
    let batch = args.open_batch.max(1);
    for from in (0..args.streams).step_by(batch) {
        let to = (from + batch).min(args.streams);
        for i in from..to {
            let replica = i % conns.len();
            let conn = conns[replica][(i / conns.len()) % conns[replica].len()].clone();
            tokio::spawn(watch(conn, i, rtx.clone()));
        }
        while n < to {
            let (idx, v, _) = tokio::time::timeout(Duration::from_secs(60), rrx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{n} of {to} streams opened so far got a snapshot in 60 s")
                })
                .expect("receipts");
            if v >= first && !ready[idx] {
                ready[idx] = true;
                n += 1;
            }
        }
    }
    drop(rtx);
    let open_ms = opened.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open = rss(&r);

    let cpu_before = cpu(&r);
    let mut samples = Vec::with_capacity(args.streams * args.rounds);
    let mut last_per_round = Vec::new();
    let mut commits = Vec::new();
    for round in 0..args.rounds {
        let via = round % ops.len();
        let t0 = Instant::now();
        let version = if round % 2 == 0 {
            ops[via]
                .weight("stack-0", if round % 4 == 0 { 50 } else { 60 })
                .await
        } else {
            ops[via]
                .apply(&policy(args.stacks, &format!("fanout-{}", round + 1)))
                .await
        }
        .expect("change");
        commits.push(t0.elapsed().as_secs_f64() * 1000.0);
        let mut got = vec![false; args.streams];
        let mut n = 0;
        let mut worst = 0.0f64;
        while n < args.streams {
            let (idx, v, at) = tokio::time::timeout(Duration::from_secs(60), rrx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "round {round}: {n} of {} streams got v{version}",
                        args.streams
                    )
                })
                .expect("receipts");
            if v >= version && !got[idx] {
                got[idx] = true;
                n += 1;
                let ms = at.duration_since(t0).as_secs_f64() * 1000.0;
                worst = worst.max(ms);
                samples.push(ms);
            }
        }
        last_per_round.push(worst);
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    let cpu_per_change = (cpu(&r) - cpu_before) / args.rounds as f64;
    let rss_after = rss(&r);
    let per_stream_kib = rss_open.saturating_sub(rss_before) as f64 / args.streams as f64;
    let result = serde_json::json!({
        "bench": "fanout",
        "replicas": args.replicas,
        "streams": args.streams,
        "connections_per_replica": args.connections,
        "rounds": args.rounds,
        "policy_bytes": policy_bytes,
        "pinned": args.pin,
        "open_batch": args.open_batch,
        "open_all_streams_ms": round1(open_ms),
        "receive_ms": summary(&mut samples),
        "last_stream_per_change_ms": summary(&mut last_per_round),
        "commit_rpc_ms": summary(&mut commits),
        "replicas_rss_kib": { "before_streams": rss_before, "streams_open": rss_open, "after_rounds": rss_after },
        "rss_per_stream_kib": round1(per_stream_kib),
        "replicas_cpu_ms_per_change": round1(cpu_per_change),
    });
    report("fanout", &result);
}
