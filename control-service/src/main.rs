//! `switchyard-control`: the Switchyard control service.

use std::io::{IsTerminal, Write};

use clap::{Parser, Subcommand};
use switchyard_control::config::{self, LogFormat, ServeArgs};
use switchyard_control::server;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "switchyard-control",
    version,
    about = "Switchyard control service: pushes policy and stack weights into every Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC and HTTP servers.
    Serve(ServeArgs),
}

fn init_logs(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (a harness that stopped reading) must never panic a task: the
        // default reports write errors with eprintln!, which panics, and panics abort in
        // release builds.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    let cfg = match config::resolve(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard-control: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logs(cfg.log_format, &cfg.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard-control: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match server::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("switchyard-control: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        // Harnesses wait for this exact line.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "grpc listening on {}", running.grpc_addr);
        if let Some(http) = running.http_addr {
            let _ = writeln!(out, "http listening on {http}");
        }
        let _ = out.flush();
        drop(out);
        let token = running.shutdown_token();
        tokio::spawn(async move {
            shutdown_signal().await;
            token.cancel();
            tracing::info!("shutdown requested");
        });
        running.wait().await;
        tracing::info!("stopped");
        std::process::ExitCode::SUCCESS
    })
}
