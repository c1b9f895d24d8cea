//! Reference order intake for Switchyard's degraded mode (issue 15, `docs/degraded-mode.md`).
//!
//! When no checkout stack is eligible, the filter routes `POST /checkout` here instead of
//! answering 503. The intake persists the order in NATS JetStream (publish acknowledged
//! by the broker's file store) before it answers `202 Accepted` with an order reference;
//! `GET /orders/{ref}` tells queued → placed → failed. A drainer consumes the queue at a
//! configured rate once the stacks take traffic again, replaying each order through Envoy
//! (so routing, residency and stickiness apply) with its idempotency key, so the order
//! is placed exactly once; an order that keeps failing goes to a dead-letter stream with
//! its reason. `GET /metrics` exposes queue depth, oldest age, drain rate, dead letters.

mod api;
mod broker;
mod drain;
mod metrics;
mod order;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "switchyard-intake",
    about = "Durable order intake for Switchyard's degraded mode"
)]
pub struct Args {
    /// HTTP listen address (Envoy's intake cluster points here).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// NATS server (JetStream enabled).
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats: String,
    /// The region this intake serves: names its stream (`ORDERS_<REGION>`), its status
    /// bucket and its dead-letter stream. An EU intake holds EU orders only.
    #[arg(long, default_value = "us")]
    pub region: String,
    /// Where the drainer replays orders: Envoy's listener, e.g. http://127.0.0.1:10000.
    #[arg(long, default_value = "http://127.0.0.1:10000")]
    pub upstream: String,
    /// Orders placed per second at most while draining.
    #[arg(long, default_value_t = 5.0)]
    pub drain_rate: f64,
    /// Attempts that reach a stack and fail (5xx, 408, 429) before an order is
    /// dead-lettered. Attempts while no stack is eligible do not count.
    #[arg(long, default_value_t = 5)]
    pub max_attempts: u32,
    /// Largest order body accepted (bytes); larger is 413.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_body: usize,
    /// Base of the status URL in 202 answers (default: http://<listen>).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Seconds between retries while no stack is eligible.
    #[arg(long, default_value_t = 1.0)]
    pub retry_s: f64,
    /// Completion webhook: each order's final status (placed or failed) is POSTed here as
    /// the JSON of `GET /orders/{ref}`, after it is recorded (best effort: 3 tries; the
    /// status URL stays the source of truth).
    #[arg(long)]
    pub webhook: Option<String>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("switchyard-intake: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    if !(args.drain_rate > 0.0 && args.drain_rate.is_finite()) {
        return Err("--drain-rate must be a positive number".into());
    }
    let region = args.region.to_ascii_lowercase();
    if region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("--region must be letters and digits".into());
    }
    let broker = broker::Broker::connect(&args.nats, &region)
        .await
        .map_err(|e| format!("NATS at {}: {e}", args.nats))?;
    let metrics = Arc::new(metrics::Metrics::new(&region, args.drain_rate));
    let public = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let state = Arc::new(api::State {
        broker: broker.clone(),
        metrics: Arc::clone(&metrics),
        region: region.clone(),
        public_url: public.trim_end_matches('/').to_string(),
        max_body: args.max_body,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    eprintln!(
        "switchyard-intake: region {region}, listening on {}, NATS {}, draining to {} at {}/s",
        args.listen, args.nats, args.upstream, args.drain_rate
    );
    let drainer = drain::Drainer {
        broker,
        metrics,
        upstream: args.upstream.trim_end_matches('/').to_string(),
        interval: Duration::from_secs_f64(1.0 / args.drain_rate),
        retry: Duration::from_secs_f64(args.retry_s.max(0.05)),
        max_attempts: args.max_attempts.max(1),
        webhook: args.webhook.clone(),
    };
    tokio::spawn(drainer.run());
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}
