//! `switchyard-storefront`: one stack (blue, green, canary, …) of the demo shop behind
//! Envoy. It tells who served each request and can be told to fail or slow down, for
//! end-to-end, SLO and chaos tests. It must print nothing on stdout but the one
//! `listening on` line that harnesses wait for.

#![forbid(unsafe_code)]
// Request paths answer errors, they never panic; tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod faults;
mod routes;
mod server;
mod stats;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::faults::{FaultSettings, Faults};
use crate::routes::Shop;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(name = "switchyard-storefront", version, about)]
struct Args {
    /// Stack name, sent in `x-served-by` and every JSON body (e.g. blue, canary).
    #[arg(long, value_parser = parse_name)]
    name: String,
    /// TCP port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// Region label echoed in JSON bodies.
    #[arg(long)]
    region: Option<String>,
    /// Fraction of shop requests answered 500, 0..=1 (every 1/rate-th request).
    #[arg(long, default_value_t = 0.0, value_parser = parse_error_rate)]
    error_rate: f64,
    /// Milliseconds added before every shop response.
    #[arg(long, default_value_t = 0, value_parser = parse_latency_ms)]
    latency_ms: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
}

fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    hyper::header::HeaderValue::from_str(s)
        .map_err(|_| "must be printable text without control characters")?;
    Ok(s.to_owned())
}

fn parse_error_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    faults::validate_error_rate(rate).map_err(|e| e.to_string())
}

fn parse_latency_ms(s: &str) -> Result<u64, String> {
    let ms: u64 = s.parse().map_err(|e| format!("{e}"))?;
    faults::validate_latency_ms(ms).map_err(|e| e.to_string())
}

/// Writes a diagnostic line to stderr; never panics, even if stderr is closed.
pub(crate) fn log(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "switchyard-storefront: {msg}");
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.workers))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(format_args!("cannot start runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(format_args!("{e}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let faults = Faults::new(FaultSettings {
        error_rate: args.error_rate,
        latency_ms: args.latency_ms,
        healthy: true,
        index_lag: 0,
    });
    let name = args.name.clone();
    let shop = Shop::new(args.name, args.region, faults)
        .map_err(|_| format!("--name {name:?} cannot be sent as a header value"))?;

    // Signals are hooked before we announce the port, so a harness that sends
    // SIGTERM right after reading the line still gets a clean exit.
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;

    let listener = TcpListener::bind(SocketAddr::new(args.bind, args.port))
        .await
        .map_err(|e| format!("cannot bind {}:{}: {e}", args.bind, args.port))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    announce(addr).map_err(|e| format!("cannot write to stdout: {e}"))?;
    log(format_args!("stack {name} serving on {addr}"));

    let shutdown = async move {
        let which = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        log(format_args!("{which}: shutting down"));
    };
    if !server::serve(listener, Arc::new(shop), shutdown).await {
        log(format_args!(
            "connections still open after {:?}; exiting anyway",
            server::DRAIN_TIMEOUT
        ));
    }
    Ok(())
}

/// Prints the one stdout line harnesses wait for, flushed at once.
fn announce(addr: SocketAddr) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()
}
