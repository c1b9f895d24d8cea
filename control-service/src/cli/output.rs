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

mod operations;
mod routing;
pub use operations::*;
pub use routing::*;

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
            [
                "intake_us",
                "24",
                "12.3s",
                "0.0/s",
                "0",
                "waiting for a stack",
                "1s ago",
                ""
            ]
        );
        assert_eq!(
            rows[2],
            [
                "intake_eu",
                "-",
                "-",
                "-",
                "-",
                "-",
                "never",
                "connection refused (2s ago)"
            ]
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
