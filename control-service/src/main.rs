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
    /// Run the detector and the incident workflow on a telemetry trace (docs/traces.md)
    /// under a virtual clock and print the timeline of decisions. Exit 0: the outcome the
    /// trace expects (or it expects nothing); 1: it differs; 2: the trace is unreadable or
    /// malformed.
    Replay(ReplayArgs),
    /// Bearer tokens, written straight into the store: the first admin token of a new
    /// installation (then `switchyard tokens …` over the API). The redb store must not be
    /// open in a running server; etcd may be.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Certificates made offline (docs/security.md).
    #[command(subcommand)]
    Certs(CertsCmd),
}

#[derive(Subcommand)]
enum CertsCmd {
    /// A demo CA and certificates for TLS and mTLS on one machine: ca.pem, server.pem/.key
    /// (127.0.0.1, ::1, localhost), envoy.pem/.key (CN=envoy), admin.pem/.key (CN=admin),
    /// and Envoy's file-based SDS secrets (envoy-sds-cert.yaml, envoy-sds-ca.yaml). Valid
    /// for a year; the CA's key is not kept. Never overwrites a file. `make run` uses it.
    Demo {
        /// Directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
}

fn certs_demo(out: &std::path::Path) -> std::process::ExitCode {
    match switchyard_control::tls::pki::write_demo(out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            eprintln!(
                "demo certificates written to {}: serve with --tls-cert {0}/server.pem \
                 --tls-key {0}/server.key --tls-client-ca {0}/ca.pem \
                 --tls-identity CN=envoy=envoy:dataplane --tls-identity CN=admin=admin:admin",
                out.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard-control certs demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token and print it (or write it to --output). Shown once.
    Create(TokenCreateArgs),
    /// Install a token generated elsewhere (`syt_` and 64 hex digits, read from a file),
    /// e.g. the one a deployment also hands to Envoy. Idempotent.
    Import(TokenImportArgs),
}

#[derive(clap::Args)]
struct TokenImportArgs {
    /// File holding the token.
    #[arg(long, value_name = "PATH")]
    token_file: std::path::PathBuf,
    #[command(flatten)]
    common: TokenCreateArgs,
}

#[derive(clap::Args)]
struct TokenCreateArgs {
    /// The identity, recorded as the actor of every change made with the token.
    #[arg(long)]
    name: String,
    /// viewer, operator, approver, admin or dataplane.
    #[arg(long, value_enum)]
    role: switchyard_control::auth::Role,
    /// Write the token to this file (mode 0600) instead of stdout (`create` only).
    #[arg(long, value_name = "PATH")]
    output: Option<std::path::PathBuf>,
    /// The server's config file (for its store settings).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Data directory of the store [default: ./switchyard-data].
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Store backend [default: redb].
    #[arg(long, value_enum)]
    store: Option<config::StoreKind>,
    /// etcd client URLs, comma-separated, for `--store etcd`.
    #[arg(long, env = "SWITCHYARD_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix in etcd [default: /switchyard/].
    #[arg(long)]
    etcd_prefix: Option<String>,
}

fn token_create(
    args: TokenCreateArgs,
    import: Option<std::path::PathBuf>,
) -> std::process::ExitCode {
    use switchyard_control::auth::Tokens;
    use switchyard_control::brain::audit::{AuditDraft, AuditKind, AuditLog};
    let fail = |msg: String| {
        eprintln!("switchyard-control token: {msg}");
        std::process::ExitCode::FAILURE
    };
    let serve = ServeArgs {
        config: args.config,
        data_dir: args.data_dir,
        store: args.store,
        etcd_endpoints: args.etcd_endpoints,
        etcd_prefix: args.etcd_prefix,
        ..ServeArgs::default()
    };
    let cfg = match config::resolve(&serve) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let store = match server::open_store(&cfg) {
        Ok(s) => s,
        Err(e) => {
            return fail(format!(
                "cannot open the store (is a server using it?): {e}"
            ))
        }
    };
    let now = switchyard_control::model::now_unix_ms();
    let by = "switchyard-control token";
    if let Some(path) = import {
        let token = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().to_string(),
            Err(e) => return fail(format!("{}: {e}", path.display())),
        };
        return match Tokens::new(&*store).import(&token, &args.name, args.role, by, now) {
            Ok(r) => {
                // A repeated import changes nothing and records nothing.
                if r.created_ms == now {
                    let draft = AuditDraft::new(
                        now,
                        by,
                        AuditKind::Note,
                        format!("token/{}", r.id),
                        format!(
                            "token {} imported for {} (role {}) offline",
                            r.id, r.name, r.role
                        ),
                    );
                    if let Err(e) = AuditLog::new(store.clone()).append(draft) {
                        return fail(format!("token installed but not audited: {e}"));
                    }
                }
                eprintln!("token {} for {} (role {}) installed", r.id, r.name, r.role);
                std::process::ExitCode::SUCCESS
            }
            Err(e) => fail(e.to_string()),
        };
    }
    let (token, record) = match Tokens::new(&*store).create(&args.name, args.role, by, now) {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    let draft = AuditDraft::new(
        now,
        by,
        AuditKind::Note,
        format!("token/{}", record.id),
        format!(
            "token {} created for {} (role {}) offline",
            record.id, record.name, record.role
        ),
    );
    if let Err(e) = AuditLog::new(store.clone()).append(draft) {
        return fail(format!("token created but not audited: {e}"));
    }
    match &args.output {
        Some(path) => {
            if let Err(e) = write_secret(path, &token) {
                return fail(format!("{}: {e}", path.display()));
            }
            eprintln!(
                "token {} for {} (role {}) written to {}",
                record.id,
                record.name,
                record.role,
                path.display()
            );
        }
        None => {
            println!("{token}");
            eprintln!(
                "token {} for {} (role {}): shown once",
                record.id, record.name, record.role
            );
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Write a secret to a new file only its owner can read.
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    writeln!(f, "{secret}")
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The trace (JSON, `switchyard-trace/1`).
    file: std::path::PathBuf,
    /// One JSON object per line: each decision (time, incident, phase, stack, action,
    /// confidence), then `{"summary": …}`.
    #[arg(long)]
    json: bool,
    /// Approve every proposal this long after it appears (e.g. 5m), so the workflow runs
    /// to the end. Default: nobody approves.
    #[arg(long, value_parser = switchyard_control::cli::args::parse_duration_s, value_name = "DURATION")]
    approve_after: Option<u64>,
}

fn replay(args: ReplayArgs) -> std::process::ExitCode {
    use switchyard_control::autopilot::replay::{replay, ReplayOptions};
    use switchyard_control::brain::scenario::Trace;
    let fail = |msg: String| {
        eprintln!("switchyard-control replay: {msg}");
        std::process::ExitCode::from(2)
    };
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: {e}", args.file.display())),
    };
    let trace = match Trace::parse(&text) {
        Ok(t) => t,
        Err(e) => {
            return fail(format!(
                "{}: not a valid trace:\n  {}",
                args.file.display(),
                e.0.join("\n  ")
            ))
        }
    };
    let opts = ReplayOptions {
        approve_after_ms: args.approve_after.map(|s| s * 1000),
        ..ReplayOptions::default()
    };
    let report = match replay(&trace, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard-control replay: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let s = &report.summary;
    if args.json {
        for e in &report.timeline {
            let _ = writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default());
        }
        let _ = writeln!(out, "{}", serde_json::json!({ "summary": s }));
    } else {
        let time = |ms: u64| switchyard_filter::schedule::format_utc((ms / 1000) as i64);
        for e in &report.timeline {
            let _ = writeln!(
                out,
                "{}  #{:<3} {:<22} {:<8} {}{}  {}",
                time(e.at_ms),
                e.incident,
                e.phase,
                e.stack.as_deref().unwrap_or("-"),
                e.action.as_deref().unwrap_or("-"),
                e.confidence
                    .map(|c| format!(" ({c:.2})"))
                    .unwrap_or_default(),
                e.note
            );
        }
        let ms = |v: Option<i64>| {
            v.map_or("-".to_string(), |v| {
                format!("{:.1} min", v as f64 / 60_000.0)
            })
        };
        let _ = writeln!(out, "--");
        let _ = writeln!(
            out,
            "trace {}: {} windows, {} incident(s), {} executed, {} approval(s) refused by a freeze",
            s.name, s.windows, s.incidents, s.executed, s.frozen_refusals
        );
        let _ = writeln!(
            out,
            "first recommendation: {} on {}",
            s.recommendation.as_deref().unwrap_or("none"),
            s.recommended_stack.as_deref().unwrap_or("-")
        );
        let _ = writeln!(
            out,
            "fault onset -> recommendation: {}; lead before breach: {}",
            ms(s.onset_to_recommendation_ms),
            ms(s.lead_before_breach_ms)
        );
        let _ = writeln!(
            out,
            "suspect deployment: {}",
            s.suspect_event.as_deref().unwrap_or("-")
        );
        for p in &s.problems {
            let _ = writeln!(out, "PROBLEM: {p}");
        }
        if s.problems.is_empty() {
            let _ = writeln!(out, "as expected");
        }
    }
    if s.problems.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
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
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Replay(args) => return replay(args),
        Command::Token(TokenCmd::Create(args)) => return token_create(args, None),
        Command::Token(TokenCmd::Import(a)) => return token_create(a.common, Some(a.token_file)),
        Command::Certs(CertsCmd::Demo { out }) => return certs_demo(&out),
    };
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
