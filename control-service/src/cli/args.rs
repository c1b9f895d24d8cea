//! The command line as clap parses it: global options, verbs and their arguments. No
//! behaviour here; `switchyard --help` is generated from these doc comments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Operator CLI of the Switchyard control service.
#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Operate the Switchyard control service"
)]
pub struct Cli {
    /// Control service gRPC address: host:port or http://host:port (no TLS yet)
    /// [env: SWITCHYARD_SERVER] [default: 127.0.0.1:18000]
    // Environment and default are applied in `Ctx`, not by clap: clap would list an
    // argument taken from the environment in usage messages as if it were required.
    #[arg(long, global = true, value_name = "ADDR")]
    pub server: Option<String>,
    /// Print JSON instead of tables, errors included (one object on stdout with a `code`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Bearer token [env: SWITCHYARD_TOKEN]. Prefer --token-file: a flag shows in `ps`
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// File holding the bearer token [env: SWITCHYARD_TOKEN_FILE] [default:
    /// .run/admin.token when it exists: the token `make run` generates]
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Who is making the change, for a control service running without authentication
    /// [env: SWITCHYARD_ACTOR] [default: $USER, else $LOGNAME, else the user name of the
    /// process, else "cli"]. With authentication the audit log records the token's
    /// identity and ignores this
    #[arg(long, global = true, value_name = "NAME")]
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
    /// SLO-gated progressive delivery of a release stack (docs/rollouts.md).
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// The hash-chained audit log of every decision and change.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Incidents of the ITR workflow: evidence, approval, rejection (docs/detection.md).
    #[command(subcommand)]
    Incidents(IncidentsCmd),
    /// The event registry: deployments, load tests, campaigns, maintenance.
    #[command(subcommand)]
    Events(EventsCmd),
    /// Bearer tokens of the control service's APIs (role admin; docs/security.md).
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// The connected Envoys (version applied, last report, connected since), rules in
    /// degraded mode, each stack's health-check state and each intake's queue (depth,
    /// oldest order, drain rate, dead letters, last scrape or its error).
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

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Start moving traffic to a release stack, step by step behind SLO gates.
    Start {
        /// The release stack.
        #[arg(long, value_name = "STACK")]
        stack: String,
        /// The stable stack it is compared with and takes traffic from.
        #[arg(long, value_name = "STACK")]
        stable: String,
        /// What moves: `policy` (the whole policy, through the stacks' factors) or a rule
        /// id (that rule's traffic only; every other rule is untouched).
        #[arg(long, default_value = "policy")]
        scope: String,
        /// Release share per step, percent, e.g. 0,5,20,50,100 [default: the paper's
        /// Table 2: 5, 20, 50, 100 over 30 min, 2 h, 4 h].
        #[arg(long, value_delimiter = ',', value_name = "PERCENTS")]
        plan: Vec<u32>,
        /// Minimum time each step is observed (e.g. 10m) [default: 10m with --plan].
        #[arg(long, value_parser = parse_duration_s, value_name = "DURATION")]
        step: Option<u64>,
        /// A step without a decision by then is inconclusive and pauses [default: 6 × --step].
        #[arg(long, value_parser = parse_duration_s, value_name = "DURATION")]
        max_step: Option<u64>,
        /// Warm-up ramp before each step is judged [default: 5m].
        #[arg(long, value_parser = parse_duration_s, value_name = "DURATION")]
        warmup: Option<u64>,
        /// Roll back on a failed gate without asking (pre-approval).
        #[arg(long)]
        auto_rollback: bool,
        /// Gate: the release's error rate must stay below this [default: 0.001].
        #[arg(long, value_name = "RATE")]
        max_error_rate: Option<f64>,
        /// Gate: at most 1 % of the release's responses slower than this (e.g. 500ms)
        /// [default: 500ms].
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        latency_budget: Option<u64>,
        /// No KPI gates (the policy's `kpis` add one each by default).
        #[arg(long)]
        no_kpi_gates: bool,
        /// Rollout id [default: STACK-<unix time>].
        #[arg(long)]
        id: Option<String>,
    },
    /// Every rollout, newest first.
    List,
    /// One rollout with every step's gates (default: the newest).
    Status { id: Option<String> },
    /// Hold the rollout where it is.
    Pause { id: String },
    /// Continue a paused rollout (for a pause that needs approval, this approves).
    Resume { id: String },
    /// Jump to 100 % and finish; the release's users stay, the stable stack drains.
    Promote { id: String },
    /// Stop and roll back: the release is evacuated, all traffic to the stable stack.
    Abort { id: String },
    /// Approve the rollback a halted rollout proposes.
    Rollback { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Audit entries, newest first (or oldest first from --after).
    List {
        /// At most this many entries (1..=1000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Oldest first, starting after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        /// Only entries about this subject or below it (`stack/green`, `policy`, `rollout/`).
        #[arg(long, value_name = "PREFIX", default_value = "")]
        subject: String,
    },
    /// Recompute the hash chain; exit 1 and name the first broken entry if it does not verify.
    Verify,
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
    /// Every stack of the current policy with its weight, health and traffic (a HEALTH
    /// column, e.g. `hard_down (component)`, when the control service runs health checks).
    List,
    /// Set a stack's weight factor, 0..=100 (100 = the policy's own weights).
    Weight {
        stack: String,
        /// Whole percent, 0..=100.
        #[arg(value_parser = parse_percent, allow_negative_numbers = true)]
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

/// A weight factor in whole percent, 0..=100: the one parser for every weight argument,
/// so `101`, `-1` and `ten` get the same message.
pub fn parse_percent(text: &str) -> Result<u32, String> {
    match text.trim().parse::<i64>() {
        Ok(p) if (0..=100).contains(&p) => Ok(p as u32),
        _ => Err("a weight is a whole percent 0..=100".to_string()),
    }
}

/// A duration in whole seconds: `90`, `90s`, `30m`, `2h`, `1h30m`, `1d`.
/// A duration in milliseconds: `250ms`, or anything [`parse_duration_s`] takes.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{text:?} is not a duration (e.g. 250ms, 2s, 1m)"));
    }
    parse_duration_s(t).map(|s| s * 1000)
}

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

#[derive(Debug, Subcommand)]
pub enum IncidentsCmd {
    /// Incidents, newest first.
    List {
        /// At most this many (1..=1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// One incident with its evidence bundle and history.
    Show { id: u64 },
    /// Approve the proposed action: it is carried out at once, through the guardrails.
    Approve {
        id: u64,
        /// Why (kept in the incident and the audit log).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject the proposed action; the incident closes.
    Reject {
        id: u64,
        /// Why (required).
        #[arg(long)]
        comment: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Register an event.
    Add {
        /// deployment, load_test, campaign or maintenance.
        #[arg(long)]
        kind: String,
        /// Where it applies: `all`, a segment (`eu` or `segment:eu`), `rule:ID`, or
        /// `stacks:a,b`.
        #[arg(long)]
        scope: String,
        /// Start: RFC 3339, Unix ms, `now`, or relative to now (`+1h`, `-30m`).
        #[arg(long)]
        from: String,
        /// End, in the same forms.
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Event id [default: assigned].
        #[arg(long)]
        id: Option<String>,
    },
    /// Every registered event.
    List,
    /// Remove an event.
    #[command(name = "rm")]
    Remove { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create a token and print it (once: the service keeps only its SHA-256).
    Create {
        /// The identity, recorded as the actor of every change made with the token.
        #[arg(long)]
        name: String,
        /// viewer, operator, approver, admin or dataplane.
        #[arg(long, value_enum)]
        role: crate::auth::Role,
    },
    /// Every token with its id, name, role and state (never a secret).
    List,
    /// Revoke a token by its id (or at least its first 8 hex digits).
    Revoke { id: String },
    /// The identity and role of the token this CLI sends.
    Whoami,
}
