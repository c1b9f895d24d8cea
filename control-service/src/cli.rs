//! `switchyard`: the operator CLI. Readable tables by default, `--json` for scripts.
//!
//! Exit codes: 0 success, 1 rejected or failed (invalid policy, unknown stack, ...),
//! 2 usage error, 3 control service unreachable.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::model::now_unix_ms;
use crate::proto::v1;
use crate::validate;

/// Operator CLI of the Switchyard control service.
#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Operate the Switchyard control service"
)]
pub struct Cli {
    /// Control service gRPC address.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_SERVER",
        default_value = "http://127.0.0.1:18000"
    )]
    pub server: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Who is making the change (kept in the audit log) [default: $USER].
    #[arg(long, global = true, env = "SWITCHYARD_ACTOR")]
    pub actor: Option<String>,
    /// Timeout of each call, in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate, apply, read, audit and roll back the routing policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Weight, drain and health of the stacks.
    #[command(subcommand)]
    Stacks(StacksCmd),
    /// The connected Envoys: version applied, last report, connected since.
    Status,
    /// Follow the Watch stream as an Envoy would (acknowledging each version) and print
    /// every snapshot: for debugging what the data plane receives.
    Watch {
        /// Node id to present.
        #[arg(long, default_value = "switchyard-cli")]
        node_id: String,
        /// Version already applied (0 = send the current snapshot at once).
        #[arg(long, default_value_t = 0)]
        last_applied: u64,
        /// Exit after this many snapshots (0 = follow until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file (`-` = stdin) without applying it.
    Validate {
        file: PathBuf,
        /// Validate locally with the filter's validator, without a control service.
        #[arg(long)]
        offline: bool,
    },
    /// Validate and apply a policy file (`-` = stdin) as a new version.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Print the policy in force (or at --version).
    Get {
        #[arg(long, default_value_t = 0)]
        version: u64,
    },
    /// Every version, newest first: the audit log.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only versions below this one.
        #[arg(long, default_value_t = 0)]
        before: u64,
    },
    /// Re-apply the policy of an earlier version as a new version.
    Rollback {
        version: u64,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Why (kept in the audit log).
    #[arg(long, default_value = "")]
    pub comment: String,
    /// Only if this is still the current version (compare-and-set).
    #[arg(long, default_value_t = 0)]
    pub expect_version: u64,
}

#[derive(Debug, Subcommand)]
pub enum StacksCmd {
    /// Every stack of the current policy with its weight, health and traffic.
    List,
    /// Set a stack's weight factor, 0..=100 (100 = the policy's own weights).
    Weight {
        stack: String,
        percent: u32,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Planned maintenance: no new visitors; users with an affinity cookie for the stack
    /// stay until it expires or the deadline passes (its weight is kept for undrain).
    Drain {
        stack: String,
        /// End the drain after this long (e.g. 90s, 30m, 1h30m); then everyone moves.
        /// Default: until the affinity cookies expire.
        #[arg(long, value_parser = parse_duration_s)]
        deadline: Option<u64>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Get everyone off a stack now: affinity cookie holders move too.
    Evacuate {
        stack: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// End a drain or an evacuation: the stack takes traffic again.
    Undrain {
        stack: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove a stack from every target set.
    Unhealthy {
        stack: String,
        #[arg(long)]
        reason: String,
    },
    /// Put an unhealthy stack back.
    Healthy {
        stack: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Mark a stack present again, optionally with its endpoint.
    Register {
        stack: String,
        #[arg(long, default_value = "")]
        endpoint: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// The stack is gone: it gets no traffic.
    Deregister {
        stack: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn rejected(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let code = if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) {
            3
        } else {
            1
        };
        Self {
            code,
            message: format!("{}: {}", code_name(s.code()), s.message()),
        }
    }
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::FailedPrecondition => "failed precondition",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Internal => "internal error",
        _ => "error",
    }
}

/// Run the CLI with these arguments; prints to stdout/stderr and returns the exit code.
pub fn main_with(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("switchyard: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

struct Ctx<'a> {
    cli: &'a Cli,
    channel: Option<Channel>,
}

impl Ctx<'_> {
    async fn channel(&mut self) -> Result<Channel, Failure> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let endpoint = Channel::from_shared(self.cli.server.clone())
            .map_err(|e| Failure::rejected(format!("bad --server {:?}: {e}", self.cli.server)))?
            .connect_timeout(Duration::from_secs(self.cli.timeout.max(1)))
            .timeout(Duration::from_secs(self.cli.timeout.max(1)));
        let channel = endpoint.connect().await.map_err(|e| Failure {
            code: 3,
            message: format!(
                "cannot reach the control service at {}: {e}",
                self.cli.server
            ),
        })?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    fn actor(&self) -> String {
        self.cli
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "cli".into())
    }
}

fn read_file(path: &PathBuf) -> Result<String, Failure> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::rejected(format!("reading stdin: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(path)
        .map_err(|e| Failure::rejected(format!("reading {}: {e}", path.display())))
}

fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("switchyard: cannot encode JSON: {e}"),
    }
}

/// The field violations of an INVALID_ARGUMENT status, if it carries them.
fn violations(s: &Status) -> Option<Vec<validate::Issue>> {
    if s.code() != Code::InvalidArgument {
        return None;
    }
    let bad = s.get_details_bad_request()?;
    Some(
        bad.field_violations
            .into_iter()
            .map(|v| validate::Issue {
                path: v.field,
                message: v.description,
            })
            .collect(),
    )
}

/// Report an invalid policy: every field path, to stderr (or as JSON on stdout).
fn invalid_policy(json_out: bool, issues: &[validate::Issue]) -> Failure {
    if json_out {
        print_json(&json!({ "valid": false, "errors": issues }));
    } else {
        eprintln!(
            "invalid policy ({} problem{}):",
            issues.len(),
            if issues.len() == 1 { "" } else { "s" }
        );
        for i in issues {
            eprintln!("  {}: {}", i.path, i.message);
        }
    }
    Failure {
        code: 1,
        message: String::new(),
    }
}

fn policy_failure(json_out: bool, s: Status) -> Failure {
    match violations(&s) {
        Some(issues) if !issues.is_empty() => invalid_policy(json_out, &issues),
        _ => s.into(),
    }
}

fn print_warnings(warnings: &[v1::FieldIssue]) {
    for w in warnings {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    let mut ctx = Ctx { cli, channel: None };
    match &cli.command {
        Command::Policy(cmd) => policy(&mut ctx, cmd).await,
        Command::Stacks(cmd) => stacks(&mut ctx, cmd).await,
        Command::Status => status(&mut ctx).await,
        Command::Watch {
            node_id,
            last_applied,
            count,
        } => watch(&mut ctx, node_id, *last_applied, *count).await,
    }
}

async fn policy(ctx: &mut Ctx<'_>, cmd: &PolicyCmd) -> Result<(), Failure> {
    let json_out = ctx.cli.json;
    match cmd {
        PolicyCmd::Validate { file, offline } => {
            let doc = read_file(file)?;
            let (stacks, warnings) = if *offline {
                let ok =
                    validate::check(&doc).map_err(|issues| invalid_policy(json_out, &issues))?;
                let warnings: Vec<v1::FieldIssue> =
                    ok.warnings.iter().map(crate::proto::field_issue).collect();
                (
                    ok.stacks.into_iter().map(|s| s.name).collect::<Vec<_>>(),
                    warnings,
                )
            } else {
                let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await?);
                let r = client
                    .validate(v1::ValidatePolicyRequest { policy_json: doc })
                    .await
                    .map_err(|s| policy_failure(json_out, s))?
                    .into_inner();
                (r.stacks, r.warnings)
            };
            if json_out {
                print_json(&json!({ "valid": true, "stacks": stacks, "warnings": warnings }));
            } else {
                print_warnings(&warnings);
                println!("valid: {} stack(s): {}", stacks.len(), stacks.join(", "));
            }
            Ok(())
        }
        PolicyCmd::Apply { file, change } => {
            let doc = read_file(file)?;
            let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await?);
            let r = client
                .apply(v1::ApplyPolicyRequest {
                    policy_json: doc,
                    actor: ctx.actor(),
                    comment: change.comment.clone(),
                    expected_version: change.expect_version,
                })
                .await
                .map_err(|s| policy_failure(json_out, s))?
                .into_inner();
            print_change(json_out, &r);
            Ok(())
        }
        PolicyCmd::Get { version } => {
            let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await?);
            let r = client
                .get(v1::GetPolicyRequest { version: *version })
                .await?
                .into_inner();
            if json_out {
                let policy: Value =
                    serde_json::from_str(&r.policy_json).unwrap_or(Value::String(r.policy_json));
                print_json(&json!({ "info": r.info, "policy": policy }));
            } else {
                if let Some(i) = &r.info {
                    eprintln!(
                        "# version {} (policy set at v{}: {} [{}])",
                        i.version,
                        i.policy_version,
                        display_name(&i.policy_name),
                        i.policy_digest
                    );
                }
                // The document itself on stdout, so `policy get > p.json` round-trips.
                println!("{}", r.policy_json.trim_end());
            }
            Ok(())
        }
        PolicyCmd::History { limit, before } => {
            let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await?);
            let r = client
                .history(v1::HistoryRequest {
                    limit: *limit,
                    before_version: *before,
                })
                .await?
                .into_inner();
            if json_out {
                print_json(&r);
                return Ok(());
            }
            let mut rows = vec![row([
                "",
                "VERSION",
                "TIME (UTC)",
                "KIND",
                "ACTOR",
                "SUMMARY",
            ])];
            for v in &r.versions {
                let mut summary = v.summary.clone();
                if !v.comment.is_empty() {
                    summary.push_str(&format!(" — {}", v.comment));
                }
                rows.push(vec![
                    if v.version == r.current_version {
                        "*".into()
                    } else {
                        String::new()
                    },
                    v.version.to_string(),
                    fmt_time(v.created_unix_ms),
                    v.kind.clone(),
                    v.actor.clone(),
                    summary,
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        PolicyCmd::Rollback { version, change } => {
            let mut client = v1::policies_client::PoliciesClient::new(ctx.channel().await?);
            let r = client
                .rollback(v1::RollbackRequest {
                    to_version: *version,
                    actor: ctx.actor(),
                    comment: change.comment.clone(),
                    expected_version: change.expect_version,
                })
                .await
                .map_err(|s| policy_failure(json_out, s))?
                .into_inner();
            print_change(json_out, &r);
            Ok(())
        }
    }
}

fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "(unnamed)"
    } else {
        name
    }
}

fn print_change(json_out: bool, r: &v1::ChangeResponse) {
    if json_out {
        print_json(r);
        return;
    }
    print_warnings(&r.warnings);
    let summary = r.info.as_ref().map(|i| i.summary.as_str()).unwrap_or("");
    if r.changed {
        println!("version {}: {summary}", r.version);
    } else {
        println!("unchanged: version {} already has this policy", r.version);
    }
}

async fn stacks(ctx: &mut Ctx<'_>, cmd: &StacksCmd) -> Result<(), Failure> {
    let json_out = ctx.cli.json;
    let mut client = v1::stacks_client::StacksClient::new(ctx.channel().await?);
    let actor = ctx.actor();
    let reason_req = |stack: &str, reason: &str| v1::StackReasonRequest {
        stack: stack.to_string(),
        reason: reason.to_string(),
        actor: actor.clone(),
    };
    let r = match cmd {
        StacksCmd::List => {
            let r = client.list(v1::ListStacksRequest {}).await?.into_inner();
            if json_out {
                print_json(&r);
            } else {
                print_stacks(&r);
            }
            return Ok(());
        }
        StacksCmd::Weight {
            stack,
            percent,
            reason,
        } => {
            if *percent > 100 {
                return Err(Failure {
                    code: 2,
                    message: format!("PERCENT must be 0..=100, got {percent}"),
                });
            }
            client
                .set_weight(v1::SetWeightRequest {
                    stack: stack.clone(),
                    weight_percent: *percent,
                    reason: reason.clone(),
                    actor: actor.clone(),
                })
                .await?
        }
        StacksCmd::Drain {
            stack,
            deadline,
            reason,
        } => {
            client
                .drain(v1::DrainStackRequest {
                    stack: stack.clone(),
                    reason: reason.clone(),
                    actor: actor.clone(),
                    deadline_seconds: deadline.unwrap_or(0),
                })
                .await?
        }
        StacksCmd::Evacuate { stack, reason } => client.evacuate(reason_req(stack, reason)).await?,
        StacksCmd::Undrain { stack, reason } => client.undrain(reason_req(stack, reason)).await?,
        StacksCmd::Unhealthy { stack, reason } => {
            client.mark_unhealthy(reason_req(stack, reason)).await?
        }
        StacksCmd::Healthy { stack, reason } => {
            client.mark_healthy(reason_req(stack, reason)).await?
        }
        StacksCmd::Register {
            stack,
            endpoint,
            comment,
        } => {
            client
                .register(v1::RegisterStackRequest {
                    stack: stack.clone(),
                    endpoint: endpoint.clone(),
                    actor: actor.clone(),
                    comment: comment.clone(),
                })
                .await?
        }
        StacksCmd::Deregister { stack, reason } => {
            client
                .deregister(v1::DeregisterStackRequest {
                    stack: stack.clone(),
                    reason: reason.clone(),
                    actor: actor.clone(),
                })
                .await?
        }
    }
    .into_inner();
    if json_out {
        print_json(&r);
    } else {
        if r.changed {
            let summary = r.info.as_ref().map(|i| i.summary.as_str()).unwrap_or("");
            println!("version {}: {summary}", r.version);
        } else {
            println!("unchanged (version {})", r.version);
        }
        if let Some(s) = &r.stack {
            print_stacks(&v1::ListStacksResponse {
                version: r.version,
                stacks: vec![s.clone()],
            });
        }
    }
    Ok(())
}

fn stack_state(s: &v1::StackStatus) -> String {
    let mut parts = Vec::new();
    if !s.registered {
        parts.push("deregistered");
    }
    if !s.healthy {
        parts.push("unhealthy");
    }
    let drain;
    if s.evacuating {
        parts.push("evacuating");
    } else if s.draining {
        drain = match s.drain_deadline_unix_ms {
            0 => "draining (sticky until cookies expire)".to_string(),
            d if d <= now_unix_ms() => "draining (deadline passed: evacuated)".to_string(),
            d => format!("draining (sticky until {} UTC)", fmt_time(d)),
        };
        parts.push(&drain);
    }
    if parts.is_empty() {
        "serving".into()
    } else {
        parts.join(",")
    }
}

/// A duration in whole seconds: `90`, `90s`, `30m`, `2h`, `1h30m`, `1d`.
pub fn parse_duration_s(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 90s, 30m, 1h30m)");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(s) = text.parse::<u64>() {
        return Ok(s);
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n = number.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
    }
    if number.is_some() {
        return Err(bad());
    }
    Ok(total)
}

fn print_stacks(r: &v1::ListStacksResponse) {
    let mut rows = vec![row([
        "STACK",
        "REGION",
        "WEIGHT",
        "EFFECTIVE",
        "STATE",
        "REQ",
        "5XX",
        "CHANGED",
        "REASON",
    ])];
    for s in &r.stacks {
        let t = s.telemetry.clone().unwrap_or_default();
        rows.push(vec![
            s.name.clone(),
            s.region.clone(),
            format!("{}%", s.weight_percent),
            format!("{}%", s.effective_weight_percent),
            stack_state(s),
            t.requests.to_string(),
            t.status_5xx.to_string(),
            format!("v{} {}", s.changed_version, s.changed_by),
            s.reason.clone(),
        ]);
    }
    print_table(&rows);
}

async fn status(ctx: &mut Ctx<'_>) -> Result<(), Failure> {
    let mut client = v1::fleet_client::FleetClient::new(ctx.channel().await?);
    let r = client.status(v1::StatusRequest {}).await?.into_inner();
    if ctx.cli.json {
        print_json(&r);
        return Ok(());
    }
    let connected = r.nodes.iter().filter(|n| n.connected).count();
    println!(
        "version {} · {} of {} connected node(s) on it · store {} · up since {}",
        r.current_version,
        r.nodes_current,
        connected,
        r.store,
        fmt_time(r.started_unix_ms)
    );
    if r.nodes.is_empty() {
        println!("no Envoy has connected yet");
        return Ok(());
    }
    let now = now_unix_ms();
    let mut rows = vec![row([
        "NODE",
        "STATE",
        "APPLIED",
        "SENT",
        "CONNECTED SINCE",
        "LAST ACK",
        "LAST REPORT",
        "PEER",
    ])];
    for n in &r.nodes {
        rows.push(vec![
            n.node_id.clone(),
            if n.connected {
                "connected".into()
            } else if n.disconnected_unix_ms == 0 {
                // Reports telemetry but never opened a Watch stream.
                "not watching".into()
            } else {
                format!("gone {}", ago(now, n.disconnected_unix_ms))
            },
            format!("v{}", n.applied_version),
            format!("v{}", n.sent_version),
            fmt_time(n.connected_since_unix_ms),
            ago(now, n.last_ack_unix_ms),
            ago(now, n.last_report_unix_ms),
            n.peer.clone(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

async fn watch(
    ctx: &mut Ctx<'_>,
    node_id: &str,
    last_applied: u64,
    count: u64,
) -> Result<(), Failure> {
    // No per-call timeout on a stream that lives for hours: a channel of its own.
    let channel = Channel::from_shared(ctx.cli.server.clone())
        .map_err(|e| Failure::rejected(format!("bad --server {:?}: {e}", ctx.cli.server)))?
        .connect_timeout(Duration::from_secs(ctx.cli.timeout.max(1)))
        .connect()
        .await
        .map_err(|e| Failure {
            code: 3,
            message: format!(
                "cannot reach the control service at {}: {e}",
                ctx.cli.server
            ),
        })?;
    let mut client = v1::data_plane_client::DataPlaneClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx
        .send(v1::WatchRequest {
            node_id: node_id.to_string(),
            last_applied_version: last_applied,
            ack_version: 0,
        })
        .await;
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut seen = 0;
    while let Some(s) = stream.message().await? {
        if ctx.cli.json {
            match serde_json::to_string(&s) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("switchyard: {e}"),
            }
        } else {
            let stacks: Vec<String> = s
                .stacks
                .iter()
                .map(|st| {
                    let mut t = format!("{} {}%", st.name, st.weight_percent);
                    if !st.healthy {
                        t.push_str(" unhealthy");
                    }
                    if st.evacuating {
                        t.push_str(" evacuating");
                    } else if st.draining {
                        t.push_str(" draining");
                        if st.drain_deadline_unix_ms != 0 {
                            t.push_str(&format!(
                                " (sticky until {})",
                                fmt_time(st.drain_deadline_unix_ms)
                            ));
                        }
                    }
                    t
                })
                .collect();
            println!(
                "v{}  {}  policy {} bytes  stacks: {}",
                s.version,
                fmt_time(now_unix_ms()),
                s.policy_json.len(),
                stacks.join(", ")
            );
        }
        let _ = tx
            .send(v1::WatchRequest {
                ack_version: s.version,
                ..Default::default()
            })
            .await;
        seen += 1;
        if count != 0 && seen >= count {
            break;
        }
    }
    Ok(())
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// `2026-11-25 15:04:05` (UTC); `-` for 0.
pub fn fmt_time(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    switchyard_filter::schedule::format_utc((unix_ms / 1000) as i64)
}

/// `3s ago`, `5m ago`, `2h ago`; `never` for 0.
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(fmt_time(0), "-");
        assert_eq!(fmt_time(1_000), "1970-01-01 00:00:01");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(fmt_time(1_795_000_000_000), "2026-11-18 11:06:40");
    }

    #[test]
    fn formats_ages() {
        assert_eq!(ago(10_000, 0), "never");
        assert_eq!(ago(10_000, 7_000), "3s ago");
        assert_eq!(ago(1_000_000, 400_000), "10m ago");
    }

    #[test]
    fn parses_the_documented_commands() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("switchyard").chain(args.iter().copied()))
        };
        assert!(parse(&["policy", "validate", "p.json", "--offline"]).is_ok());
        assert!(parse(&["policy", "rollback", "3", "--json"]).is_ok());
        assert!(parse(&["stacks", "weight", "green", "20"]).is_ok());
        assert!(
            parse(&["stacks", "unhealthy", "green"]).is_err(),
            "--reason is required"
        );
        assert!(parse(&["--server", "http://127.0.0.1:1", "status"]).is_ok());
    }
}
