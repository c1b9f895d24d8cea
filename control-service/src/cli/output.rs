//! What the CLI prints: tables, times, JSON, and failures with their exit codes.
//!
//! Every failure is a [`Failure`] and is printed by [`report`], once, when the command
//! ends; commands never print errors themselves. Results go to stdout, everything else
//! (warnings, errors, headers around a document) to stderr.

use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::proto::v1;
use crate::validate::Issue;

/// Exit code of a rejected or failed operation (invalid policy, unknown stack, ...).
pub const EXIT_REJECTED: u8 = 1;
/// Exit code of a usage error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the control service cannot be reached or did not answer in time.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Why a command failed, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// The stable machine-readable name of the outcome, printed as `code` with `--json`
    /// (see [`report`] for the list).
    pub kind: &'static str,
    pub message: String,
    /// Field problems of a rejected policy, each with its path.
    pub issues: Vec<Issue>,
}

impl Failure {
    fn new(code: u8, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            kind,
            message: message.into(),
            issues: Vec::new(),
        }
    }

    /// A local operation failed (reading the policy file, ...): exit 1, `failed`.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(EXIT_REJECTED, "failed", message)
    }

    /// A bad command line: exit 2, `usage`.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, "usage", message)
    }

    /// A command line clap rejected: a value its parser refused (a weight above 100, a
    /// deadline that is not a duration) is `invalid_value`, anything else `usage`.
    pub fn from_clap(e: &clap::Error) -> Self {
        let kind = match e.kind() {
            clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue => {
                "invalid_value"
            }
            _ => "usage",
        };
        // clap's text without its "Usage:" and "For more information" tail, on one line.
        let text = e.to_string();
        let message = text
            .lines()
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
            .trim_start_matches("error: ")
            .to_string();
        Self::new(EXIT_USAGE, kind, message)
    }

    /// The control service cannot be reached: exit 3, `unreachable`.
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(EXIT_UNREACHABLE, "unreachable", message)
    }

    /// A policy that failed validation, with every problem: exit 1, `invalid_policy`.
    pub fn invalid_policy(issues: Vec<Issue>) -> Self {
        let message = format!(
            "invalid policy ({} problem{})",
            issues.len(),
            if issues.len() == 1 { "" } else { "s" }
        );
        Self {
            issues,
            ..Self::new(EXIT_REJECTED, "invalid_policy", message)
        }
    }

    /// A failed policy call: its field violations when the server sent them. A status
    /// carries at most the first 50 problems; its message says how many there are.
    pub fn from_policy_call(s: Status) -> Self {
        match violations(&s) {
            Some(issues) if !issues.is_empty() => {
                let shown = issues.len();
                let mut f = Self::invalid_policy(issues);
                let total = s
                    .message()
                    .strip_prefix("invalid policy (")
                    .and_then(|m| m.split(' ').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(shown);
                if total > shown {
                    f.message = format!(
                        "invalid policy ({total} problems; the first {shown} follow, \
                         `switchyard policy validate FILE` lists every one)"
                    );
                }
                f
            }
            _ => s.into(),
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let (code, kind) = match s.code() {
            Code::Unavailable => (EXIT_UNREACHABLE, "unreachable"),
            Code::DeadlineExceeded => (EXIT_UNREACHABLE, "deadline_exceeded"),
            Code::InvalidArgument => (EXIT_REJECTED, "invalid_argument"),
            Code::NotFound => (EXIT_REJECTED, "not_found"),
            Code::FailedPrecondition => (EXIT_REJECTED, "failed_precondition"),
            Code::OutOfRange => (EXIT_REJECTED, "out_of_range"),
            Code::ResourceExhausted => (EXIT_REJECTED, "refused"),
            Code::Aborted => (EXIT_REJECTED, "aborted"),
            Code::Internal => (EXIT_REJECTED, "internal"),
            Code::Unauthenticated => (EXIT_REJECTED, "unauthenticated"),
            Code::PermissionDenied => (EXIT_REJECTED, "permission_denied"),
            _ => (EXIT_REJECTED, "failed"),
        };
        Self::new(
            code,
            kind,
            format!("{}: {}", code_name(s.code()), s.message()),
        )
    }
}

fn code_name(c: Code) -> &'static str {
    match c {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::FailedPrecondition => "failed precondition",
        Code::OutOfRange => "out of range",
        Code::ResourceExhausted => "refused by a guardrail",
        Code::Aborted => "aborted (changed concurrently)",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Internal => "internal error",
        Code::Unauthenticated => {
            "unauthenticated (give a token: --token-file, SWITCHYARD_TOKEN; docs/security.md)"
        }
        Code::PermissionDenied => "permission denied",
        _ => "error",
    }
}

/// The field violations of an INVALID_ARGUMENT status, if it carries them.
fn violations(s: &Status) -> Option<Vec<Issue>> {
    if s.code() != Code::InvalidArgument {
        return None;
    }
    let bad = s.get_details_bad_request()?;
    Some(
        bad.field_violations
            .into_iter()
            .map(|v| Issue {
                path: v.field,
                message: v.description,
            })
            .collect(),
    )
}

/// Print a failure, once.
///
/// Without `--json`: an invalid policy as a header and one line per field path, anything
/// else as one line, all on stderr. With `--json`: one JSON object on stdout (where
/// scripts already read results) and nothing on stderr:
/// `{"ok": false, "code": …, "message": …, "exit_code": …}`, plus `"valid": false` and
/// `"errors": [{"path", "message"}]` for an invalid policy. `code` is one of `usage`,
/// `invalid_value`, `out_of_range`, `invalid_policy`, `invalid_argument`, `not_found`,
/// `failed_precondition`, `refused` (a guardrail), `aborted`, `unreachable`,
/// `deadline_exceeded`, `internal`, `unauthenticated`, `permission_denied`, `failed`,
/// `audit_broken` (`audit verify` found a broken chain; exit 1).
pub fn report(f: &Failure, json_out: bool) {
    if json_out {
        let mut v = json!({
            "ok": false,
            "code": f.kind,
            "message": f.message,
            "exit_code": f.code,
        });
        if f.kind == "invalid_policy" {
            v["valid"] = json!(false);
            v["errors"] = json!(f.issues);
        }
        print_json(&v);
        return;
    }
    if f.kind == "invalid_policy" {
        eprintln!("{}:", f.message);
        for i in &f.issues {
            eprintln!("  {}: {}", i.path, i.message);
        }
        return;
    }
    eprintln!("switchyard: {}", f.message);
}

pub fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("switchyard: cannot encode JSON: {e}"),
    }
}

pub fn print_warnings(warnings: &[v1::FieldIssue]) {
    for w in warnings {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
}

pub fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "(unnamed)"
    } else {
        name
    }
}

/// The result of a policy change (apply, rollback).
pub fn print_change(json_out: bool, r: &v1::ChangeResponse) {
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

/// The result of a stack operation, with the stack's new state.
pub fn print_stack_change(
    json_out: bool,
    r: &v1::StackChangeResponse,
    all: Option<&v1::ListStacksResponse>,
    weights: Option<&PolicyWeights>,
) {
    if json_out {
        print_json(r);
        return;
    }
    if r.changed {
        let summary = r.info.as_ref().map(|i| i.summary.as_str()).unwrap_or("");
        println!("version {}: {summary}", r.version);
    } else {
        println!("unchanged (version {})", r.version);
    }
    // The changed stack's row; its SHARE needs every stack, so take the others from
    // `all` when the caller has it.
    if let Some(s) = &r.stack {
        let mut stacks = all.map(|a| a.stacks.clone()).unwrap_or_default();
        match stacks.iter_mut().find(|o| o.name == s.name) {
            Some(o) => *o = s.clone(),
            None => stacks.push(s.clone()),
        }
        let weights = if all.is_some() { weights } else { None };
        print_stacks(
            &v1::ListStacksResponse {
                version: r.version,
                stacks,
            },
            weights,
            Some(&s.name),
        );
    }
}

/// The audit log, newest first; `*` marks the version in force.
pub fn print_history(r: &v1::HistoryResponse) {
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
}

pub fn print_rollouts(rollouts: &[v1::RolloutStatus]) {
    let mut rows = vec![row([
        "ID",
        "RELEASE",
        "STABLE",
        "PHASE",
        "STEP",
        "SHARE",
        "CREATED (UTC)",
    ])];
    for r in rollouts {
        rows.push(vec![
            r.id.clone(),
            r.release.clone(),
            r.stable.clone(),
            r.phase.clone(),
            if r.step == 0 {
                "-".into()
            } else {
                format!("{}/{}", r.step, r.plan.len())
            },
            format!("{}%", r.share_percent),
            fmt_time(r.created_unix_ms),
        ]);
    }
    print_table(&rows);
}

/// One rollout: where it is, and every step's gates with sample size and confidence.
pub fn print_rollout(r: &v1::RolloutStatus, now_ms: u64) {
    let plan: Vec<String> = r.plan.iter().map(|p| format!("{p}%")).collect();
    println!(
        "rollout {}: {} vs {} ({}), {}{}",
        r.id,
        r.release,
        r.stable,
        r.scope,
        r.phase,
        if r.step > 0 {
            format!(" step {}/{}", r.step, r.plan.len())
        } else {
            String::new()
        }
    );
    println!(
        "  release share {}% · plan {} · auto-rollback {} · updated {}",
        r.share_percent,
        plan.join(" → "),
        if r.auto_rollback { "yes" } else { "no" },
        ago(now_ms, r.updated_unix_ms)
    );
    if !r.reason.is_empty() {
        println!("  {}", r.reason);
    }
    if r.blast_radius >= 0.0 {
        println!(
            "  users who reached {}: {:.2}% of the scope's users",
            r.release,
            r.blast_radius * 100.0
        );
    }
    let mut rows = vec![row([
        "STEP",
        "SHARE",
        "OUTCOME",
        "GATE",
        "VERDICT",
        "N",
        "CONFIDENCE",
        "ESTIMATE",
    ])];
    for (i, s) in r.steps.iter().enumerate() {
        let outcome = if s.outcome.is_empty() {
            "running".to_string()
        } else {
            s.outcome.clone()
        };
        if s.gates.is_empty() {
            rows.push(vec![
                (i + 1).to_string(),
                format!("{}%", s.share_percent),
                outcome.clone(),
                "-".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for (j, g) in s.gates.iter().enumerate() {
            rows.push(vec![
                if j == 0 {
                    (i + 1).to_string()
                } else {
                    String::new()
                },
                if j == 0 {
                    format!("{}%", s.share_percent)
                } else {
                    String::new()
                },
                if j == 0 {
                    outcome.clone()
                } else {
                    String::new()
                },
                format!("{}{}", g.gate, if g.blocking { "" } else { " (sentinel)" }),
                g.verdict.clone(),
                format!("{:.0}", g.n),
                format!("{:.3}", g.confidence),
                if g.estimate.is_nan() {
                    "-".into()
                } else {
                    format!("{:.4}", g.estimate)
                },
            ]);
        }
    }
    if rows.len() > 1 {
        print_table(&rows);
    }
}

pub fn print_audit(r: &v1::AuditListResponse) {
    let mut rows = vec![row([
        "SEQ",
        "TIME (UTC)",
        "KIND",
        "ACTOR",
        "SUBJECT",
        "SUMMARY",
    ])];
    for e in &r.entries {
        let mut summary = e.summary.clone();
        if !e.reason.is_empty() {
            summary.push_str(&format!(" — {}", e.reason));
        }
        rows.push(vec![
            e.seq.to_string(),
            fmt_time(e.at_unix_ms),
            e.kind.clone(),
            e.actor.clone(),
            e.subject.clone(),
            summary,
        ]);
    }
    print_table(&rows);
}

/// What the policy itself gives each stack: its weight in the default route and whether
/// any route (default or rule) gives it a weight above 0. Read from the document so that
/// `stacks list` can show the policy weight beside the operator's factor.
#[derive(Debug, Default)]
pub struct PolicyWeights {
    /// Weight in the default route's targets; absent = not a default target.
    pub default: std::collections::BTreeMap<String, u64>,
    /// Stacks some route sends traffic to (weight > 0).
    pub routed: std::collections::BTreeSet<String>,
}

impl PolicyWeights {
    /// From a policy document; anything unexpected counts as absent (the server has
    /// validated the document already).
    pub fn from_policy(doc: &serde_json::Value) -> Self {
        let stack_weight = |name: &str| -> u64 {
            doc["stacks"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == name))
                .and_then(|s| s["weight"].as_u64())
                .unwrap_or(100)
        };
        let targets = |route: &serde_json::Value| -> Vec<(String, u64)> {
            route["targets"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| {
                            let name = t["stack"].as_str()?;
                            let w = t["weight"].as_u64().unwrap_or_else(|| stack_weight(name));
                            Some((name.to_string(), w))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Self::default();
        for (name, w) in targets(&doc["default"]) {
            *out.default.entry(name.clone()).or_default() += w;
            if w > 0 {
                out.routed.insert(name);
            }
        }
        for rule in doc["rules"].as_array().into_iter().flatten() {
            for (name, w) in targets(&rule["route"]) {
                if w > 0 {
                    out.routed.insert(name);
                }
            }
        }
        out
    }

    /// The share of new default-route visitors each stack gets now, in percent: policy
    /// weight times effective factor, normalised over the default targets.
    fn default_shares(
        &self,
        stacks: &[v1::StackStatus],
    ) -> std::collections::BTreeMap<String, u64> {
        let weighted: Vec<(String, u64)> = stacks
            .iter()
            .map(|s| {
                let w = self.default.get(&s.name).copied().unwrap_or(0);
                (s.name.clone(), w * u64::from(s.effective_weight_percent))
            })
            .collect();
        let total: u64 = weighted.iter().map(|(_, w)| w).sum();
        weighted
            .into_iter()
            .map(|(n, w)| (n, (w * 100 + total / 2).checked_div(total).unwrap_or(0)))
            .collect()
    }
}

/// What routing does with the stack: `serving` only when it takes new visitors.
fn stack_state(s: &v1::StackStatus, weights: Option<&PolicyWeights>) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !s.registered {
        parts.push("deregistered".into());
    }
    if !s.healthy {
        parts.push("unhealthy".into());
    }
    if s.evacuating {
        parts.push("evacuating".into());
    } else if s.draining {
        parts.push(match s.drain_deadline_unix_ms {
            0 => "draining (sticky until cookies expire)".to_string(),
            d if d <= crate::model::now_unix_ms() => {
                "draining (deadline passed: evacuated)".to_string()
            }
            d => format!("draining (sticky until {} UTC)", fmt_time(d)),
        });
    }
    if parts.is_empty() {
        if s.weight_percent == 0 {
            parts.push("out (weight 0)".into());
        } else if weights.is_some_and(|w| !w.routed.contains(&s.name)) {
            parts.push("out (policy weight 0)".into());
        }
    }
    if parts.is_empty() {
        "serving".into()
    } else {
        parts.join(",")
    }
}

/// The stacks table. With the policy's weights: POLICY (weight in the default route,
/// `-` when not a default target) beside FACTOR (the operator's weight factor), and SHARE,
/// the percentage of new default-route visitors the stack gets now.
/// `only` prints just that stack's row (shares are still computed over every stack).
pub fn print_stacks(
    r: &v1::ListStacksResponse,
    weights: Option<&PolicyWeights>,
    only: Option<&str>,
) {
    let shares = weights.map(|w| w.default_shares(&r.stacks));
    // HEALTH only when the control service runs health checks.
    let health = r.stacks.iter().any(|s| s.health.is_some());
    let mut header = row([
        "STACK", "REGION", "POLICY", "FACTOR", "SHARE", "STATE", "REQ", "5XX", "CHANGED", "REASON",
    ]);
    if health {
        header.insert(6, "HEALTH".into());
    }
    let mut rows = vec![header];
    for s in r.stacks.iter().filter(|s| only.is_none_or(|o| o == s.name)) {
        let t = s.telemetry.clone().unwrap_or_default();
        let unknown = || "?".to_string();
        let mut cells = vec![
            s.name.clone(),
            s.region.clone(),
            weights.map_or_else(unknown, |w| {
                w.default
                    .get(&s.name)
                    .map_or_else(|| "-".into(), |p| p.to_string())
            }),
            format!("{}%", s.weight_percent),
            shares
                .as_ref()
                .and_then(|sh| sh.get(&s.name))
                .map_or_else(unknown, |p| format!("{p}%")),
            stack_state(s, weights),
            t.requests.to_string(),
            t.status_5xx.to_string(),
            format!("v{} {}", s.changed_version, s.changed_by),
            s.reason.clone(),
        ];
        if health {
            cells.insert(6, s.health.as_ref().map_or_else(unknown, health_cell));
        }
        rows.push(cells);
    }
    print_table(&rows);
}

/// `healthy`, `unknown`, `hard_down (component)`.
fn health_cell(h: &v1::StackHealthStatus) -> String {
    if h.failing_layers.is_empty() {
        h.verdict.clone()
    } else {
        format!("{} ({})", h.verdict, h.failing_layers.join(","))
    }
}

/// One row per intake: its queue as last scraped, or why the scrape failed.
fn intake_rows(intakes: &[v1::IntakeStatus], now_ms: u64) -> Vec<Vec<String>> {
    let mut rows = vec![row([
        "INTAKE", "QUEUED", "OLDEST", "DRAIN", "DEAD", "DRAINER", "SCRAPED", "ERROR",
    ])];
    let dash = || "-".to_string();
    for i in intakes {
        rows.push(vec![
            i.cluster.clone(),
            i.queue_depth.map_or_else(dash, |d| d.to_string()),
            i.oldest_age_s.map_or_else(dash, |a| format!("{a:.1}s")),
            i.drain_rate_per_s.map_or_else(dash, |r| format!("{r:.1}/s")),
            i.dead_letters.map_or_else(dash, |d| d.to_string()),
            match (i.scraped_unix_ms, i.waiting) {
                (0, _) => dash(),
                (_, true) => "waiting for a stack".into(),
                (_, false) => "running".into(),
            },
            ago(now_ms, i.scraped_unix_ms),
            if i.error.is_empty() {
                String::new()
            } else {
                format!("{} ({})", i.error, ago(now_ms, i.error_unix_ms))
            },
        ]);
    }
    rows
}

/// The fleet: a summary line, then one row per Envoy.
pub fn print_status(r: &v1::StatusResponse, now_ms: u64) {
    let connected = r.nodes.iter().filter(|n| n.connected).count();
    println!(
        "version {} · {} of {} connected node(s) on it · store {} · up since {}",
        r.current_version,
        r.nodes_current,
        connected,
        r.store,
        fmt_time(r.started_unix_ms)
    );
    if !r.replica_id.is_empty() {
        let role = if r.leader { "leader" } else { "follower" };
        println!("replica {} · {role}", r.replica_id);
    }
    for d in &r.degraded {
        println!(
            "DEGRADED: rule {} queues its requests at {} (no stack left: {})",
            d.rule, d.queue, d.reason
        );
    }
    if !r.health.is_empty() {
        let stacks: Vec<String> = r
            .health
            .iter()
            .map(|h| {
                let mut t = format!("{} {}", h.stack, health_cell(h));
                if let Some(e) = h.evidence.first() {
                    t.push_str(&format!(": {e}"));
                }
                t
            })
            .collect();
        println!("health: {}", stacks.join(" · "));
    }
    if !r.intakes.is_empty() {
        print_table(&intake_rows(&r.intakes, now_ms));
    }
    if r.nodes.is_empty() {
        println!("no Envoy has connected yet");
        return;
    }
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
                format!("gone {}", ago(now_ms, n.disconnected_unix_ms))
            },
            format!("v{}", n.applied_version),
            format!("v{}", n.sent_version),
            fmt_time(n.connected_since_unix_ms),
            ago(now_ms, n.last_ack_unix_ms),
            ago(now_ms, n.last_report_unix_ms),
            n.peer.clone(),
        ]);
    }
    print_table(&rows);
}

/// One received snapshot: a JSON line, or a one-line summary.
pub fn print_snapshot(json_out: bool, s: &v1::Snapshot, now_ms: u64) {
    if json_out {
        match serde_json::to_string(s) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("switchyard: {e}"),
        }
        return;
    }
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
        fmt_time(now_ms),
        s.policy_json.len(),
        stacks.join(", ")
    );
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

pub fn print_incidents(incidents: &[v1::IncidentSummary]) {
    let mut rows = vec![row([
        "ID",
        "STACK",
        "SIGNAL",
        "PHASE",
        "CONFIDENCE",
        "PROPOSAL",
        "OPENED (UTC)",
    ])];
    for i in incidents {
        rows.push(vec![
            i.id.to_string(),
            if i.stack.is_empty() {
                i.scope.clone()
            } else {
                i.stack.clone()
            },
            i.signal.clone(),
            i.phase.clone(),
            if i.confidence < 0.0 {
                "-".into()
            } else {
                format!("{:.2}", i.confidence)
            },
            if i.proposal.is_empty() {
                "-".into()
            } else {
                i.proposal.clone()
            },
            fmt_time(i.opened_unix_ms),
        ]);
    }
    print_table(&rows);
}

/// One incident: where it is, the evidence bundle, approvals and history.
pub fn print_incident(i: &serde_json::Value, now_ms: u64) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "incident {}: {} on {} ({}), {}",
        i["id"],
        s(&i["signal"]),
        i["stack"]
            .as_str()
            .unwrap_or(i["scope"].as_str().unwrap_or("-")),
        s(&i["phase"]),
        ago(now_ms, i["opened_ms"].as_u64().unwrap_or(0))
    );
    let ev = &i["evidence"];
    if ev.is_object() {
        println!("  localisation: {}", s(&ev["localisation"]));
        if let Some(p) = ev["proposed"].as_object() {
            println!("  proposed:     {}", serde_json::Value::Object(p.clone()));
        }
        println!("  expected:     {}", s(&ev["expected_effect"]));
        println!("  confidence:   {}", ev["confidence"]);
        for sig in ev["signals"].as_array().into_iter().flatten() {
            println!(
                "  signal {} {}: {} observed {} baseline {}",
                s(&sig["stack"]),
                s(&sig["signal"]),
                s(&sig["severity"]),
                sig["observed"],
                sig["baseline"]
            );
        }
        for e in ev["events"].as_array().into_iter().flatten() {
            println!("  event {}: {}", s(&e["id"]), s(&e["relation"]));
        }
        for d in ev["dependencies"].as_array().into_iter().flatten() {
            println!(
                "  target {}: {:.1} -> {:.1} req/s (limit {:.1}) {}",
                s(&d["stack"]),
                d["current_rps"].as_f64().unwrap_or(0.0),
                d["projected_rps"].as_f64().unwrap_or(0.0),
                d["limit_rps"].as_f64().unwrap_or(0.0),
                if d["ok"].as_bool() == Some(true) {
                    "ok"
                } else {
                    "no room"
                }
            );
        }
        for a in ev["alternatives"].as_array().into_iter().flatten() {
            println!("  alternative: {}", s(&a["why_not"]));
        }
    }
    for a in i["approvals"].as_array().into_iter().flatten() {
        println!(
            "  {} by {} at {}: {}",
            if a["approved"].as_bool() == Some(true) {
                "approved"
            } else {
                "rejected"
            },
            s(&a["actor"]),
            fmt_time(a["at_ms"].as_u64().unwrap_or(0)),
            s(&a["comment"])
        );
    }
    println!("  history:");
    for h in i["history"].as_array().into_iter().flatten() {
        println!(
            "    {}  {:<22} {:<10} {}",
            fmt_time(h["at_ms"].as_u64().unwrap_or(0)),
            s(&h["to"]),
            s(&h["actor"]),
            s(&h["note"])
        );
    }
}

pub fn print_events(events: &[v1::EventInfo]) {
    let mut rows = vec![row([
        "ID",
        "KIND",
        "SCOPE",
        "FROM (UTC)",
        "TO (UTC)",
        "BY",
        "DESCRIPTION",
    ])];
    for e in events {
        rows.push(vec![
            e.id.clone(),
            e.kind.clone(),
            e.scope.clone(),
            fmt_time(e.from_unix_ms),
            fmt_time(e.to_unix_ms),
            e.actor.clone(),
            e.description.clone(),
        ]);
    }
    print_table(&rows);
}

/// Tokens as a table: id, name, role, created, by whom, state.
pub fn print_tokens(tokens: &[v1::TokenInfo]) {
    if tokens.is_empty() {
        println!("no tokens");
        return;
    }
    println!(
        "{:<16}  {:<24} {:<9} {:<20} {:<16} STATE",
        "ID", "NAME", "ROLE", "CREATED", "BY"
    );
    for t in tokens {
        let state = if t.revoked_unix_ms == 0 {
            "valid".to_string()
        } else {
            format!("revoked {}", fmt_time(t.revoked_unix_ms))
        };
        println!(
            "{:<16}  {:<24} {:<9} {:<20} {:<16} {state}",
            t.id,
            t.name,
            t.role,
            fmt_time(t.created_unix_ms),
            t.created_by
        );
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
    fn intake_rows_show_the_last_figures_or_why_the_scrape_failed() {
        let ok = v1::IntakeStatus {
            cluster: "intake_us".into(),
            queue_depth: Some(24),
            oldest_age_s: Some(12.34),
            drain_rate_per_s: Some(0.0),
            dead_letters: Some(0),
            waiting: true,
            scraped_unix_ms: 9_000,
            ..Default::default()
        };
        let never = v1::IntakeStatus {
            cluster: "intake_eu".into(),
            error: "connection refused".into(),
            error_unix_ms: 8_000,
            ..Default::default()
        };
        let rows = intake_rows(&[ok, never], 10_000);
        assert_eq!(
            rows[1],
            ["intake_us", "24", "12.3s", "0.0/s", "0", "waiting for a stack", "1s ago", ""]
        );
        assert_eq!(
            rows[2],
            ["intake_eu", "-", "-", "-", "-", "-", "never", "connection refused (2s ago)"]
        );
    }

    #[test]
    fn health_cells_name_the_failing_layers() {
        let mut h = v1::StackHealthStatus {
            stack: "blue".into(),
            verdict: "healthy".into(),
            ..Default::default()
        };
        assert_eq!(health_cell(&h), "healthy");
        h.verdict = "hard_down".into();
        h.failing_layers = vec!["infrastructure".into(), "component".into()];
        assert_eq!(health_cell(&h), "hard_down (infrastructure,component)");
    }

    #[test]
    fn maps_status_codes_to_exit_codes() {
        assert_eq!(
            Failure::from(Status::unavailable("down")).code,
            EXIT_UNREACHABLE
        );
        assert_eq!(
            Failure::from(Status::deadline_exceeded("slow")).code,
            EXIT_UNREACHABLE
        );
        let f = Failure::from(Status::not_found("stack \"x\""));
        assert_eq!(
            (f.code, f.message.as_str()),
            (EXIT_REJECTED, "not found: stack \"x\"")
        );
    }
}
