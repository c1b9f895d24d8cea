//! README.md's transcripts replayed (issue 16): every `$ command` of the transcripts in
//! "What it looks like" runs, in order, in one shell, against what `make run` starts —
//! the demo stacks, the control service with the demo policy applied as version 1 by
//! `make-run`, and Envoy with the shipped bootstrap and the demo policy — and its output
//! must be the README's, modulo what legitimately changes from run to run: cookie
//! signatures and expiry, timestamps, and the REQ/5XX telemetry columns of `stacks`
//! tables. Addresses are rewritten to the test's ports.
//!
//! Envoy runs one worker here (`make run` starts two): round-robin state is per worker,
//! so only one worker makes the README's order of blue/green picks reproducible.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use switchyard_e2e::*;

/// The cookie keys `scripts/run.sh` gives Envoy (the key id shows in cookies).
const DEMO_KEYS: &str = "demo1=demo-affinity-secret-change-me";

/// One `$ command` of a transcript and the output the README shows for it.
#[derive(Debug)]
struct Step {
    line: usize,
    command: String,
    output: Vec<String>,
}

/// The transcripts of the README section `section`: its fenced blocks without an info
/// string whose first line is a `$ ` command.
fn transcripts(readme: &str, section: &str) -> Vec<Step> {
    let start = readme
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("README.md has no section `## {section}`"));
    let end = readme[start + 1..]
        .find("\n## ")
        .map_or(readme.len(), |e| start + 1 + e);
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
struct Shell {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const END: &str = "__switchyard_readme_step_end__";

impl Shell {
    fn start(env: &[(&str, String)]) -> Shell {
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
    fn run(&mut self, command: &str) -> Vec<String> {
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
fn mask(text: &str, pattern: &str, with: &str) -> String {
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
/// (column widths follow the values).
fn normalize(lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    // Byte ranges of the REQ..CHANGED columns of the `stacks` table being read.
    let mut telemetry: Option<(usize, usize)> = None;
    for line in lines {
        let mut l = line.clone();
        if let (Some(req), Some(changed)) = (l.find("  REQ  "), l.find("  CHANGED")) {
            telemetry = Some((req + 2, changed + 2));
        } else if let Some((from, to)) = telemetry {
            if l.trim().is_empty() {
                telemetry = None;
            } else if l.len() >= to && l.is_char_boundary(from) && l.is_char_boundary(to) {
                l.replace_range(from..to, " <telemetry> ");
            }
        }
        l = mask(&l, "sy_aff=v1.*", "sy_aff=<cookie>");
        l = mask(&l, "####-##-## ##:##:##", "<time>");
        out.push(l.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    out
}

#[test]
fn the_readme_transcripts_are_what_the_demo_does() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let steps = transcripts(&readme, "What it looks like");
    assert!(
        steps.len() >= 12,
        "found only {} transcript commands: {steps:#?}",
        steps.len()
    );

    // What `make run` starts (scripts/run.sh), on the test's ports.
    let shop = Shop::start();
    let dir = TestDir::new("readme");
    let grpc = ReservedPort::new().unwrap();
    let control = ControlService::start(&dir.join("data"), grpc.port());
    let demo = std::fs::read_to_string(root().join("examples/policies/demo.json")).unwrap();
    let demo_path = root().join("examples/policies/demo.json");
    let applied = control.cli(&["policy", "apply", demo_path.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    let mut ports = shop.ports();
    ports.insert("control", grpc.port());
    ports.insert("node", 1);
    let envoy = Envoy::start_with_keys(&demo, &ports, 1, DEMO_KEYS);
    // No request before the transcript's first (round-robin state and counters are part
    // of what it shows): wait for the singleton to acknowledge version 1 instead.
    wait_until_current(&control);

    let bin = switchyard_harness::workspace_bin("switchyard");
    let rewrite = |cmd: &str| {
        cmd.replace("localhost:10000", &format!("127.0.0.1:{}", envoy.port))
            .replace("localhost:9901", &format!("127.0.0.1:{}", envoy.admin))
            // The test's control service speaks plain text (make run's, TLS): say so, so a
            // developer's .run/tls/ca.pem (which the CLI would pick up) changes nothing.
            .replace(
                "--server 127.0.0.1:18000",
                "--server http://127.0.0.1:18000",
            )
            .replace("127.0.0.1:18000", &format!("127.0.0.1:{}", grpc.port()))
            .replace("target/release/switchyard", bin.to_str().unwrap())
    };
    let mut shell = Shell::start(&[
        ("USER", "alice".into()),
        (
            "SWITCHYARD_SERVER",
            format!("http://127.0.0.1:{}", grpc.port()),
        ),
        (
            "SWITCHYARD_TOKEN_FILE",
            control.admin_token_file().display().to_string(),
        ),
    ]);
    let mut failures = Vec::new();
    for step in &steps {
        let want = normalize(&step.output);
        let command = rewrite(&step.command);
        let mut got = normalize(&shell.run(&command));
        // Envoy flushes its counters once a second: a stats read may need to wait.
        let mut tries = 0;
        while got != want && step.command.contains("9901/stats") && tries < 50 {
            std::thread::sleep(Duration::from_millis(100));
            got = normalize(&shell.run(&command));
            tries += 1;
        }
        // A change reaches Envoy asynchronously; a person types slower than this loop.
        if step.command.contains("switchyard stacks") || step.command.contains("switchyard policy")
        {
            wait_until_current(&control);
        }
        if got != want {
            failures.push(format!(
                "README.md:{}: $ {}\n  README:\n    {}\n  got:\n    {}",
                step.line,
                step.command,
                want.join("\n    "),
                got.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Wait (up to 5 s) until the Envoy acknowledged the control service's current version.
fn wait_until_current(control: &ControlService) {
    let mut status = serde_json::Value::Null;
    for _ in 0..50 {
        let out = control.cli(&["--json", "status"]);
        status = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let current = &status["current_version"];
        if current.as_u64().is_some_and(|v| v > 0)
            && status["nodes"][0]["applied_version"] == *current
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the Envoy never acknowledged the current version: {status}");
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
