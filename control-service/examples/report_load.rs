//! Telemetry load: N simulated Envoys against a real `switchyard-control` process, each
//! holding a Watch stream open (as the wasm singleton does) and sending one telemetry
//! `Report` per second through the real gRPC DataPlane API, with realistic batches (per
//! stack: status classes, a sparse latency histogram over the filter's fixed buckets,
//! KPI counts, per-rule exposure, affinity counters). Measures the server's CPU% and RSS
//! in alternating phases: idle (streams open, no reports) and reporting, A B A B, so the
//! two are compared side by side on the same noisy machine.
//!
//! ```text
//! cargo build --release -p switchyard-control --bins --examples
//! taskset -c 1 target/release/examples/report_load --envoys 100 --seconds 60 --server-cpu 0
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use switchyard_control::proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

mod support;
use support::{cpu_ms, rss_kib};

#[derive(Parser, Debug)]
#[command(about = "Telemetry Report load on the Switchyard control service: CPU and RSS vs idle")]
struct Args {
    /// Simulated Envoys (one connection, one Watch stream, one Report per period each).
    #[arg(long, default_value_t = 100)]
    envoys: usize,
    /// Length of each phase, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Idle/reporting pairs (A B A B ...).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Milliseconds between two Reports of one Envoy.
    #[arg(long, default_value_t = 1000)]
    period_ms: u64,
    /// Stacks in the policy (each batch reports all of them plus `_local`).
    #[arg(long, default_value_t = 4)]
    stacks: usize,
    /// The server binary to start [default: ../switchyard-control next to this example].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Pin the server to this CPU (taskset -c N); run this program under taskset too.
    #[arg(long)]
    server_cpu: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Four stacks, two rules, three KPIs: the shape of the demo policy.
fn policy(stacks: usize) -> String {
    let defs: Vec<String> = (0..stacks)
        .map(|i| format!(r#"{{"name":"stack-{i}","region":"us"}}"#))
        .collect();
    let targets: Vec<String> = (0..stacks)
        .map(|i| format!(r#"{{"stack":"stack-{i}"}}"#))
        .collect();
    format!(
        r#"{{"name":"report-load","stacks":[{}],
  "kpis":[{{"name":"orders","method":"POST","path_prefix":"/checkout","status":"2xx"}},
          {{"name":"checkout_failures","path_prefix":"/checkout","status":"5xx"}},
          {{"name":"signups","method":"POST","path_prefix":"/account","status":"201"}}],
  "rules":[{{"id":"checkout","match":{{"methods":["POST"],"path_prefixes":["/checkout"]}},"route":{{"targets":[{}]}}}}],
  "default":{{"targets":[{}],"affinity":true}}}}"#,
        defs.join(","),
        targets.join(","),
        targets.join(",")
    )
}

/// A cheap deterministic generator (xorshift64*), so every run sends the same load.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One second of one Envoy: ~150 requests per stack, a few 4xx/5xx, latencies around
/// 20-80 ms in ~15 histogram buckets (samples: one response in 8), KPI and rule counts.
fn batch(node: &str, stacks: usize, window_end: u64, window_ms: u32, rng: &mut Rng) -> v1::TelemetryBatch {
    let mut out = Vec::with_capacity(stacks + 1);
    for i in 0..stacks {
        let requests = 100 + rng.below(100);
        let s5 = rng.below(3);
        let s4 = rng.below(5);
        let mut latency_buckets = Vec::new();
        let mut left = requests / 8;
        // Buckets 40..70 of the filter's layout hold a few ms to ~100 ms.
        let mut b = 40 + rng.below(5) as u32;
        while left > 0 && b < 100 {
            let c = 1 + rng.below(left.min(6));
            latency_buckets.extend([b, c as u32]);
            left -= c;
            b += 1 + rng.below(2) as u32;
        }
        let orders = requests / 20;
        out.push(v1::StackTelemetry {
            stack: format!("stack-{i}"),
            requests,
            status_2xx: requests - s4 - s5,
            status_4xx: s4,
            status_5xx: s5,
            latency_ms_sum: requests * (20 + rng.below(60)),
            affinity_hit: requests / 2,
            affinity_miss: requests / 10,
            affinity_forged: 0,
            local_replies: 0,
            latency_buckets,
            kpis: vec![
                v1::NamedCount { name: "orders".into(), count: orders },
                v1::NamedCount { name: "checkout_failures".into(), count: s5.min(orders) },
                v1::NamedCount { name: "signups".into(), count: rng.below(3) },
            ],
            by_rule: vec![
                v1::NamedCount { name: "checkout".into(), count: orders },
                v1::NamedCount { name: "default".into(), count: requests - orders },
            ],
            new_users: requests / 10,
            sticky_requests: requests / 2,
            breaker_opens: 0,
        });
    }
    out.push(v1::StackTelemetry {
        stack: "_local".into(),
        requests: rng.below(2),
        local_replies: rng.below(2),
        ..Default::default()
    });
    v1::TelemetryBatch {
        node_id: node.to_string(),
        window_end_unix_ms: window_end,
        window_ms,
        stacks: out,
        dropped: 0,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One simulated Envoy: its Watch stream (acknowledging every snapshot) and, while
/// `reporting` is set, one Report per period, its phase staggered by its index.
async fn envoy(
    channel: Channel,
    idx: usize,
    args: Arc<Args>,
    reporting: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let node = format!("load-{idx}");
    let mut watch = v1::data_plane_client::DataPlaneClient::new(channel.clone());
    let (tx, rx) = mpsc::channel(4);
    let _ = tx
        .send(v1::WatchRequest {
            node_id: node.clone(),
            ..Default::default()
        })
        .await;
    if let Ok(r) = watch.watch(ReceiverStream::new(rx)).await {
        let mut stream = r.into_inner();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(s)) = stream.message().await {
                let _ = tx
                    .send(v1::WatchRequest {
                        ack_version: s.version,
                        ..Default::default()
                    })
                    .await;
            }
        });
    }
    let mut client = v1::data_plane_client::DataPlaneClient::new(channel);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (idx as u64 + 1));
    let period = Duration::from_millis(args.period_ms);
    let offset = period.mul_f64(idx as f64 / args.envoys as f64);
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !reporting.load(Relaxed) {
            continue;
        }
        let b = batch(&node, args.stacks, now_ms(), args.period_ms as u32, &mut rng);
        match client.report(b).await {
            Ok(_) => sent.fetch_add(1, Relaxed),
            Err(_) => failed.fetch_add(1, Relaxed),
        };
    }
}

/// CPU% (of one core) and RSS at the end of one phase.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Phase {
    cpu_percent: f64,
    rss_kib: u64,
}

async fn measure(pid: u32, seconds: u64) -> Phase {
    let (c0, t0) = (cpu_ms(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let wall = t0.elapsed().as_secs_f64() * 1000.0;
    Phase {
        cpu_percent: (cpu_ms(pid) - c0) / wall * 100.0,
        rss_kib: rss_kib(pid),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    // A private loopback benchmark: no tokens (the auth layer's cost is not measured).
    let server = support::start_server(
        args.server_bin.clone(),
        args.server_cpu,
        "report-load",
        &["--no-auth"],
    );
    let pid = server.child.id();
    let endpoint = Endpoint::from_shared(server.url.clone())
        .expect("url")
        .tcp_nodelay(true);
    let control = endpoint.connect().await.expect("connect");
    v1::policies_client::PoliciesClient::new(control)
        .apply(v1::ApplyPolicyRequest {
            policy_json: policy(args.stacks),
            actor: "report_load".into(),
            ..Default::default()
        })
        .await
        .expect("apply the policy");
    let rss_empty = rss_kib(pid);

    let reporting = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    for i in 0..args.envoys {
        // One connection per Envoy, as in a real fleet.
        let channel = endpoint.connect().await.expect("connect");
        tokio::spawn(envoy(
            channel,
            i,
            args.clone(),
            reporting.clone(),
            sent.clone(),
            failed.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut idle = Vec::new();
    let mut load = Vec::new();
    let mut reports_per_s = Vec::new();
    for round in 0..args.rounds {
        reporting.store(false, Relaxed);
        tokio::time::sleep(Duration::from_millis(args.period_ms)).await;
        let a = measure(pid, args.seconds).await;
        reporting.store(true, Relaxed);
        tokio::time::sleep(Duration::from_millis(args.period_ms)).await;
        let n0 = sent.load(Relaxed);
        let b = measure(pid, args.seconds).await;
        let rate = (sent.load(Relaxed) - n0) as f64 / args.seconds as f64;
        eprintln!(
            "round {}: idle {:.2}% CPU {} KiB | reporting {:.2}% CPU {} KiB, {:.0} reports/s",
            round + 1,
            a.cpu_percent,
            a.rss_kib,
            b.cpu_percent,
            b.rss_kib,
            rate
        );
        idle.push(a);
        load.push(b);
        reports_per_s.push(rate);
    }
    let idle_cpu = median(idle.iter().map(|p| p.cpu_percent).collect());
    let load_cpu = median(load.iter().map(|p| p.cpu_percent).collect());
    let rps = median(reports_per_s);
    let cpu_ms_per_report = (load_cpu - idle_cpu) * 10.0 / rps.max(1e-9);
    let result = serde_json::json!({
        "envoys": args.envoys,
        "stacks_per_batch": args.stacks + 1,
        "period_ms": args.period_ms,
        "phase_seconds": args.seconds,
        "rounds": args.rounds,
        "reports_per_s_median": rps,
        "reports_failed": failed.load(Relaxed),
        "server_rss_kib_no_envoys": rss_empty,
        "idle": idle,
        "reporting": load,
        "cpu_percent_median": { "idle": idle_cpu, "reporting": load_cpu, "added": load_cpu - idle_cpu },
        "cpu_ms_per_report": cpu_ms_per_report,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
    } else {
        println!(
            "{} Envoys, one Report per {} ms each ({} stacks per batch), {} x ({} s idle, {} s reporting)",
            args.envoys,
            args.period_ms,
            args.stacks + 1,
            args.rounds,
            args.seconds,
            args.seconds
        );
        println!(
            "server CPU (median of rounds, % of one core): idle {idle_cpu:.2}%, reporting {load_cpu:.2}% (+{:.2} points, {cpu_ms_per_report:.3} ms CPU per report)",
            load_cpu - idle_cpu,
        );
        println!(
            "server RSS: {} KiB before the Envoys connected; last idle phase {} KiB, last reporting phase {} KiB",
            rss_empty,
            idle.last().map_or(0, |p| p.rss_kib),
            load.last().map_or(0, |p| p.rss_kib)
        );
        println!(
            "reports: {rps:.0}/s accepted (median), {} failed",
            failed.load(Relaxed)
        );
    }
    drop(server);
}
