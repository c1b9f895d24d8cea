//! Fan-out load client: opens N Watch streams against a real `switchyard-control`
//! process, commits changes, and measures how long each stream takes to receive each
//! new version, plus the server's memory per stream.
//!
//! ```text
//! cargo build --release -p switchyard-control --bins --examples
//! target/release/examples/watch_load --streams 1000 --rounds 20
//! ```
//!
//! By default it starts the server binary next to its own directory
//! (`target/release/switchyard-control`) on a temporary data directory, with
//! `--no-auth` (the client sends no token; auth is on by default). Latency of one
//! sample = from just before the change RPC is sent (so it includes the durable commit)
//! to the moment that stream receives the new snapshot.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use switchyard_control::proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

mod support;
use support::{cpu_ms, rss_kib};

#[derive(Parser, Debug)]
#[command(about = "Watch fan-out load client for the Switchyard control service")]
struct Args {
    /// Concurrent Watch streams.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// TCP connections to spread them over (0 = one per stream, like real Envoys).
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Changes to commit and measure.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Pause between changes, in milliseconds.
    #[arg(long, default_value_t = 250)]
    gap_ms: u64,
    /// Stacks in the generated policy.
    #[arg(long, default_value_t = 8)]
    stacks: usize,
    /// The server binary to start [default: ../switchyard-control next to this example].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Pin the server to this CPU (taskset -c N); run the client under taskset too.
    #[arg(long)]
    server_cpu: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn policy(stacks: usize, name: &str) -> String {
    let defs: Vec<String> = (0..stacks)
        .map(|i| {
            format!(
                r#"{{"name":"stack-{i}","region":"region-{}","labels":["tier-{}"]}}"#,
                i % 3,
                i % 2
            )
        })
        .collect();
    let targets: Vec<String> = (0..stacks)
        .map(|i| format!(r#"{{"stack":"stack-{i}","weight":{}}}"#, 10 + i))
        .collect();
    format!(
        r#"{{"name":"{name}","stacks":[{}],"rules":[{{"id":"mobile","priority":1,"match":{{"path_prefixes":["/m/"]}},"route":{{"targets":[{}],"affinity":true}}}}],"default":{{"targets":[{}]}}}}"#,
        defs.join(","),
        targets.join(","),
        targets.join(",")
    )
}

/// (stream index, version, when received)
type Receipt = (usize, u64, Instant);

async fn run_stream(channel: Channel, idx: usize, receipts: mpsc::UnboundedSender<Receipt>) {
    let mut client = v1::data_plane_client::DataPlaneClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let _ = tx
        .send(v1::WatchRequest {
            node_id: format!("load-{idx}"),
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
        let now = Instant::now();
        let _ = receipts.send((idx, s.version, now));
        // Acknowledge like the wasm singleton does.
        let _ = tx
            .send(v1::WatchRequest {
                ack_version: s.version,
                ..Default::default()
            })
            .await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // A private loopback benchmark: auth is on by default since the tokens landed, and
    // this client carries no token, so the server runs with `--no-auth` (the auth
    // layer's cost is not what this measures; report_load does the same).
    let server = support::start_server(
        args.server_bin.clone(),
        args.server_cpu,
        "watch-load",
        &["--no-auth"],
    );
    let pid = server.child.id();
    let endpoint = Endpoint::from_shared(server.url.clone())
        .expect("url")
        .tcp_nodelay(true);
    let control = endpoint.connect().await.expect("connect");
    let mut policies = v1::policies_client::PoliciesClient::new(control.clone());
    let mut stacks = v1::stacks_client::StacksClient::new(control.clone());
    let doc = policy(args.stacks, "load-0");
    let policy_bytes = doc.len();
    policies
        .apply(v1::ApplyPolicyRequest {
            policy_json: doc,
            actor: "watch_load".into(),
            ..Default::default()
        })
        .await
        .expect("apply initial policy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(pid);

    let connections = if args.connections == 0 {
        args.streams
    } else {
        args.connections
    };
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(endpoint.connect().await.expect("connect"));
    }
    let (rtx, mut rrx) = mpsc::unbounded_channel::<Receipt>();
    let open_start = Instant::now();
    for i in 0..args.streams {
        tokio::spawn(run_stream(
            channels[i % connections].clone(),
            i,
            rtx.clone(),
        ));
    }
    drop(rtx);
    // Every stream first receives the current version (1).
    let mut ready = vec![false; args.streams];
    let mut n_ready = 0;
    while n_ready < args.streams {
        let (idx, _, _) = tokio::time::timeout(Duration::from_secs(60), rrx.recv())
            .await
            .expect("streams open within 60 s")
            .expect("receipts");
        if !ready[idx] {
            ready[idx] = true;
            n_ready += 1;
        }
    }
    let open_time = open_start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_open = rss_kib(pid);

    let cpu_before = cpu_ms(pid);
    let mut samples: Vec<f64> = Vec::with_capacity(args.streams * args.rounds);
    let mut round_max: Vec<f64> = Vec::new();
    let mut commits: Vec<f64> = Vec::new();
    for round in 0..args.rounds {
        let t0 = Instant::now();
        // Alternate a weight change and a full policy change.
        let version = if round % 2 == 0 {
            stacks
                .set_weight(v1::SetWeightRequest {
                    stack: "stack-0".into(),
                    weight_percent: if round % 4 == 0 { 50 } else { 60 },
                    reason: "load test".into(),
                    actor: "watch_load".into(),
                })
                .await
                .expect("set weight")
                .into_inner()
                .version
        } else {
            policies
                .apply(v1::ApplyPolicyRequest {
                    policy_json: policy(args.stacks, &format!("load-{round}")),
                    actor: "watch_load".into(),
                    ..Default::default()
                })
                .await
                .expect("apply")
                .into_inner()
                .version
        };
        commits.push(t0.elapsed().as_secs_f64() * 1000.0);
        let mut got = vec![false; args.streams];
        let mut n = 0;
        let mut worst = 0.0f64;
        while n < args.streams {
            let (idx, v, at) = tokio::time::timeout(Duration::from_secs(30), rrx.recv())
                .await
                .expect("every stream receives the version within 30 s")
                .expect("receipts");
            if v == version && !got[idx] {
                got[idx] = true;
                n += 1;
                let ms = at.duration_since(t0).as_secs_f64() * 1000.0;
                worst = worst.max(ms);
                samples.push(ms);
            }
        }
        round_max.push(worst);
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    let rss_after = rss_kib(pid);
    let cpu_per_change = (cpu_ms(pid) - cpu_before) / args.rounds as f64;

    samples.sort_by(f64::total_cmp);
    round_max.sort_by(f64::total_cmp);
    commits.sort_by(f64::total_cmp);
    let per_stream_kib = (rss_open.saturating_sub(rss_before)) as f64 / args.streams as f64;
    let result = serde_json::json!({
        "streams": args.streams,
        "connections": connections,
        "rounds": args.rounds,
        "policy_bytes": policy_bytes,
        "open_all_streams_ms": open_time.as_secs_f64() * 1000.0,
        "receive_ms": {
            "p50": percentile(&samples, 50.0),
            "p99": percentile(&samples, 99.0),
            "max": samples.last().copied().unwrap_or(0.0),
        },
        "last_stream_per_round_ms": {
            "p50": percentile(&round_max, 50.0),
            "p99": percentile(&round_max, 99.0),
            "max": round_max.last().copied().unwrap_or(0.0),
        },
        "commit_rpc_ms": { "p50": percentile(&commits, 50.0), "max": commits.last().copied().unwrap_or(0.0) },
        "server_rss_kib": { "before_streams": rss_before, "streams_open": rss_open, "after_rounds": rss_after },
        "server_rss_per_stream_kib": per_stream_kib,
        "server_cpu_ms_per_change": cpu_per_change,
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    } else {
        println!(
            "{} Watch streams over {} connection(s), {} changes, policy {} bytes",
            args.streams, connections, args.rounds, policy_bytes
        );
        println!(
            "opened all streams (each got v1) in {:.0} ms",
            open_time.as_secs_f64() * 1000.0
        );
        println!(
            "receive latency per stream (change RPC sent -> snapshot received), {} samples: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            samples.len(),
            percentile(&samples, 50.0),
            percentile(&samples, 99.0),
            samples.last().copied().unwrap_or(0.0)
        );
        println!(
            "last stream per change: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            percentile(&round_max, 50.0),
            percentile(&round_max, 99.0),
            round_max.last().copied().unwrap_or(0.0)
        );
        println!(
            "commit RPC (durable): p50 {:.1} ms  max {:.1} ms",
            percentile(&commits, 50.0),
            commits.last().copied().unwrap_or(0.0)
        );
        println!(
            "server VmRSS: {} KiB before streams, {} KiB with streams open, {} KiB after the changes -> {:.1} KiB per stream",
            rss_before, rss_open, rss_after, per_stream_kib
        );
        println!(
            "server CPU per change (commit + {} snapshots sent + acks): {:.1} ms",
            args.streams, cpu_per_change
        );
    }
    drop(server);
}
