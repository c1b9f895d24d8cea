//! Replaying the transcripts of the docs: every `$ command` of a Markdown document's
//! plain fenced blocks runs in one bash (variables carry over between commands), and its
//! output must be the document's, modulo what changes from run to run ([`normalize`]).
//! README.md (`tests/readme.rs`) and docs/getting-started.md (`tests/getting_started.rs`)
//! are checked this way.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::root;

/// One `$ command` of a transcript and the output the README shows for it.
#[derive(Debug)]
pub struct Step {
    /// Line of the command in the document (1-based).
    pub line: usize,
    pub command: String,
    pub output: Vec<String>,
}

/// The transcripts of a Markdown document's section `## section` (`None`: the whole
/// document): its fenced blocks without an info string whose first line is a `$ `
/// command. Blocks with an info string (`sh`, `json`, …) are not transcripts.
pub fn transcripts(readme: &str, section: Option<&str>) -> Vec<Step> {
    let (start, end) = match section {
        Some(section) => {
            let start = readme
                .find(&format!("\n## {section}\n"))
                .unwrap_or_else(|| panic!("no section `## {section}`"));
            let end = readme[start + 1..]
                .find("\n## ")
                .map_or(readme.len(), |e| start + 1 + e);
            (start, end)
        }
        None => (0, readme.len()),
    };
    let first_line = readme[..start].lines().count() + 1;
    let mut steps: Vec<Step> = Vec::new();
    // Inside a fence; inside a fence without an info string; reading a transcript.
    let (mut in_block, mut plain, mut transcript) = (false, false, false);
    for (i, line) in readme[start..end].lines().enumerate() {
        if line.starts_with("```") {
            in_block = !in_block;
            plain = in_block && line.trim() == "```";
            transcript = false;
        } else if !plain {
            continue;
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            transcript = true;
            steps.push(Step {
                line: first_line + i,
                command: cmd.to_string(),
                output: Vec::new(),
            });
        } else if transcript {
            steps.last_mut().unwrap().output.push(line.to_string());
        }
    }
    for s in &mut steps {
        while s.output.last().is_some_and(|l| l.trim().is_empty()) {
            s.output.pop();
        }
    }
    steps
}

/// A bash that keeps its variables between commands (`C=$(…)` is used later).
pub struct Shell {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const END: &str = "__switchyard_transcript_step_end__";

impl Shell {
    /// bash in the repository root with `env` added.
    pub fn start(env: &[(&str, String)]) -> Shell {
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc"])
            .current_dir(root())
            .env_remove("SWITCHYARD_ACTOR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Shell {
            child,
            stdin,
            stdout,
        }
    }

    /// Run one command line; its stdout and stderr lines.
    pub fn run(&mut self, command: &str) -> Vec<String> {
        writeln!(self.stdin, "{{ {command}\n}} 2>&1; echo {END}").unwrap();
        self.stdin.flush().unwrap();
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "the shell exited during `{command}`"
            );
            let line = line.trim_end_matches('\n');
            if line == END {
                return out;
            }
            out.push(line.to_string());
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` with every match of `pattern` replaced; in `pattern`, `#` matches one ASCII
/// digit and `*` a run of characters up to the next `;`, space or end of line.
pub fn mask(text: &str, pattern: &str, with: &str) -> String {
    fn matches(p: &[u8], t: &[u8]) -> Option<usize> {
        let mut i = 0;
        for &c in p {
            match c {
                b'#' if t.get(i).is_some_and(u8::is_ascii_digit) => i += 1,
                b'*' => {
                    while t.get(i).is_some_and(|&b| b != b';' && b != b' ') {
                        i += 1;
                    }
                }
                c if t.get(i) == Some(&c) => i += 1,
                _ => return None,
            }
        }
        Some(i)
    }
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        match matches(p, &t[i..]) {
            Some(n) if n > 0 => {
                out.extend_from_slice(with.as_bytes());
                i += n;
            }
            _ => {
                out.push(t[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Output lines with what changes from run to run masked and runs of spaces collapsed
/// (column widths follow the values): cookie values, timestamps, "updated 3s ago", token
/// ids, pids, a rollout's "users who reached" line, the fast path's evidence, and the
/// HEALTH..CHANGED health and telemetry columns of `stacks` tables.
pub fn normalize(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    // Byte ranges of the REQ..CHANGED columns of the `stacks` table being read.
    let mut telemetry: Option<(usize, usize)> = None;
    // Where the N column starts in a rollout's gate table being read: N, CONFIDENCE and
    // ESTIMATE follow the traffic's timing (the verdict is kept).
    let mut gate_counts: Option<usize> = None;
    // Reading an `audit list` table: its SEQ column counts every change before.
    let mut audit = false;
    for line in lines {
        let mut l = line.clone();
        let continues = |l: &str| l.starts_with(|c: char| c == ' ' || c.is_ascii_digit());
        if l.starts_with("STEP ") && l.contains("  VERDICT  ") && l.contains("  CONFIDENCE") {
            gate_counts = l.find("  N  ").map(|n| n + 2);
        } else if let Some(n) = gate_counts {
            if !continues(&l) {
                gate_counts = None;
            } else if l.len() > n && l.is_char_boundary(n) {
                l.replace_range(n.., " <n>");
            }
        }
        if l.starts_with("SEQ  TIME (UTC)") {
            audit = true;
        } else if audit {
            let digits = l.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                audit = false;
            } else {
                l.replace_range(..digits, "<seq>");
            }
        }
        l = mask(
            &l,
            "audit chain intact: * entries, head *",
            "audit chain intact: <n> entries, head <head>",
        );
        if let (Some(req), Some(changed)) = (l.find("  REQ  "), l.find("  CHANGED")) {
            // With health checks the table has a HEALTH column before REQ: its verdict
            // follows the checks' timing, so it is masked with the telemetry.
            let from = l.find("  HEALTH  ").unwrap_or(req);
            telemetry = Some((from + 2, changed + 2));
        } else if let Some((from, to)) = telemetry {
            if l.trim().is_empty() {
                telemetry = None;
            } else if l.len() >= to && l.is_char_boundary(from) && l.is_char_boundary(to) {
                l.replace_range(from..to, " <telemetry> ");
            }
        }
        l = mask(&l, "sy_aff=v1.*", "sy_aff=<cookie>");
        l = mask(&l, "####-##-## ##:##:##", "<time>");
        l = mask(&l, "updated * ago", "updated <age> ago");
        // `switchyard tokens whoami`: the token's public id differs per installation.
        l = mask(&l, ", token *", ", token <id>");
        l = mask(&l, "(pid *", "(pid <pid>)");
        // The fast path names the first of a dead stack's checks to fail twice: its
        // infrastructure (TCP) or component (HTTP) check, whichever the timing favours.
        if let Some(i) = l.find("fast path: ") {
            l.truncate(i + "fast path: ".len());
            l.push_str("<evidence>");
        }
        // A rollout's blast-radius line appears once a telemetry window has counted the
        // scope's users, which depends on where the window boundaries fall.
        if l.trim_start().starts_with("users who reached ") {
            continue;
        }
        out.push(l.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    out
}

/// Whether normalized output `got` is the document's `want`, where a `...` line of
/// `want` stands for any number of lines (the document elides them).
pub fn matches(want: &[String], got: &[String]) -> bool {
    match want.split_first() {
        None => got.is_empty(),
        Some((w, rest)) if w == "..." => (0..=got.len()).any(|i| matches(rest, &got[i..])),
        Some((w, rest)) => got.first() == Some(w) && matches(rest, &got[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ellipsis_stands_for_any_lines() {
        let v = |s: &[&str]| s.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        assert!(matches(&v(&["a", "...", "d"]), &v(&["a", "b", "c", "d"])));
        assert!(matches(&v(&["a", "...", "d"]), &v(&["a", "d"])));
        assert!(!matches(&v(&["a", "...", "d"]), &v(&["a", "b"])));
        assert!(!matches(&v(&["a"]), &v(&["a", "b"])));
    }

    #[test]
    fn gate_counts_audit_sequence_and_chain_heads_are_masked() {
        let v = |s: &[&str]| s.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let a = v(&[
            "STEP  SHARE  OUTCOME  GATE        VERDICT  N      CONFIDENCE  ESTIMATE",
            "1     5%     passed   error_rate  pass     7010   1.000       0.0000",
            "                      p99         pass     876    0.999       0.0000",
            "SEQ  TIME (UTC)           KIND            ACTOR  SUBJECT  SUMMARY",
            "29   2026-12-01 04:00:17  recommendation  r      s        halted",
            "audit chain intact: 31 entries, head e15dbd523ca79a6a",
        ]);
        let b = v(&[
            "STEP  SHARE  OUTCOME  GATE        VERDICT  N     CONFIDENCE  ESTIMATE",
            "1     5%     passed   error_rate  pass     512   0.990       0.0010",
            "                      p99         pass     76    0.951       0.0000",
            "SEQ  TIME (UTC)           KIND            ACTOR  SUBJECT  SUMMARY",
            "7    2027-01-01 04:00:17  recommendation  r      s        halted",
            "audit chain intact: 9 entries, head 0123456789abcdef",
        ]);
        assert_eq!(normalize(&a), normalize(&b));
        let mut c = b.clone();
        c[1] = "1     5%     passed   error_rate  fail     512   0.990       0.0010".into();
        assert_ne!(normalize(&a), normalize(&c), "the verdict is kept");
    }

    #[test]
    fn normalizing_masks_only_what_changes_between_runs() {
        let lines = |s: &[&str]| s.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let a = lines(&[
            "set-cookie: sy_aff=v1.demo1.blue.1.1795625212.eyUD2KNSRcNah18AOhcMcg; Max-Age=3600; Path=/",
            "STACK  REGION  POLICY  FACTOR  SHARE  STATE           REQ  5XX  CHANGED   REASON",
            "green  us      50      0%      0%     out (weight 0)  2    0    v2 alice  bad deploy",
            "",
            "*  3        2026-12-01 03:14:30  stack_weight  alice     green weight 0% -> 100%",
        ]);
        let b = lines(&[
            "set-cookie: sy_aff=v1.demo1.blue.1.1796098464.BmGOzfg43wacD5QKaRbT3Q; Max-Age=3600; Path=/",
            "STACK  REGION  POLICY  FACTOR  SHARE  STATE           REQ   5XX  CHANGED   REASON",
            "green  us      50      0%      0%     out (weight 0)  1234  0    v2 alice  bad deploy",
            "",
            "*  3        2027-01-02 13:14:15  stack_weight  alice     green weight 0% -> 100%",
        ]);
        assert_eq!(normalize(&a), normalize(&b));
        for (i, changed) in [
            (0, "set-cookie: sy_aff=v1.x; Max-Age=60; Path=/"),
            (
                2,
                "green  us      50      0%      0%     serving         2    0    v2 alice  bad deploy",
            ),
            (
                4,
                "*  4        2026-12-01 03:14:30  stack_weight  alice     green weight 0% -> 100%",
            ),
        ] {
            let mut c = a.clone();
            c[i] = changed.to_string();
            assert_ne!(normalize(&a), normalize(&c), "{changed}");
        }
    }
}
