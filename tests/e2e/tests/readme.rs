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
//!
//! The rollout transcript ("The brain: …") is replayed by its own test, under load, on
//! the demo's compressed durations ([`the_readme_rollout_transcript_is_what_the_brain_does`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use switchyard_e2e::transcript::{matches, normalize, transcripts, Shell};
use switchyard_e2e::*;

/// The cookie keys `scripts/run.sh` gives Envoy (the key id shows in cookies).
const DEMO_KEYS: &str = "demo1=demo-affinity-secret-change-me";

#[test]
fn the_readme_transcripts_are_what_the_demo_does() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let steps = transcripts(&readme, Some("What it looks like"));
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

/// Background load through Envoy until dropped (the README's other terminal):
/// `connections` threads, each GET `/` at most 50 times a second. Capped, so that a fast
/// machine does not decide the p99 gate sooner than the transcript shows (about 400
/// requests/s in all here).
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, connections: usize) -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut c = Client::connect(port).ok();
                    while !stop.load(Ordering::SeqCst) {
                        if c.as_mut().is_none_or(|c| c.get("/", &[]).is_err()) {
                            c = Client::connect(port).ok();
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How long a read-only step of the rollout transcript may take to show the README's
/// output ("30 s later" is the longest wait it names).
const ROLLOUT_SETTLE: Duration = Duration::from_secs(90);

/// The README's rollout transcript ("The brain: …") replayed against what `make run`
/// starts — the control service on examples/demo-control.toml (compressed durations,
/// health checks; the stacks' addresses re-pointed at the test's), the demo policy,
/// Envoy with two workers — under steady load, as the README's `wrk -c8` gives it.
/// `scripts/chaos.sh` acts on the test's stacks through a run directory of its own. A
/// read-only command (`rollout status`, `stacks list`, `audit …`) is repeated until its
/// output matches — the README says "45 s later" — for at most [`ROLLOUT_SETTLE`];
/// everything else runs once. Masked as in every replay (`transcript::normalize`): ages,
/// times, the telemetry columns, the gates' N/CONFIDENCE/ESTIMATE, audit sequence
/// numbers, the audit chain's length and head; a `...` line stands for any lines.
#[test]
fn the_readme_rollout_transcript_is_what_the_brain_does() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let steps = transcripts(
        &readme,
        Some("The brain: rollouts behind SLO gates, the fast path, the audit chain"),
    );
    assert!(
        steps.len() >= 10,
        "found only {} transcript commands: {steps:#?}",
        steps.len()
    );

    let shop = Shop::start();
    let dir = TestDir::new("readme-rollout");
    // examples/demo-control.toml with the health checks on the test's stacks, without
    // the intakes (this test starts none).
    let mut config = std::fs::read_to_string(root().join("examples/demo-control.toml")).unwrap();
    for (name, port) in [
        ("blue", 8081),
        ("green", 8082),
        ("canary", 8083),
        ("eu", 8084),
    ] {
        let from = format!("127.0.0.1:{port}");
        assert!(config.contains(&from), "demo-control.toml names {from}");
        config = config.replace(&from, &format!("127.0.0.1:{}", shop.ports()[name]));
    }
    if let Some(i) = config.find("\n[degraded]") {
        config.truncate(i + 1);
    }
    let config_path = dir.join("demo-control.toml");
    std::fs::write(&config_path, config).unwrap();
    let grpc = ReservedPort::new().unwrap();
    let control = ControlService::start_with(
        &dir.join("data"),
        grpc.port(),
        &["--config", config_path.to_str().unwrap()],
    );
    let demo = std::fs::read_to_string(root().join("examples/policies/demo.json")).unwrap();
    let demo_path = root().join("examples/policies/demo.json");
    let applied = control.cli(&["policy", "apply", demo_path.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    let mut ports = shop.ports();
    ports.insert("control", grpc.port());
    ports.insert("node", 1);
    let envoy = Envoy::start_with_keys(&demo, &ports, 2, DEMO_KEYS);
    wait_until_current(&control);

    // scripts/chaos.sh finds the stacks through the run directory, as make run writes it.
    let run = dir.join("run");
    std::fs::create_dir_all(run.join("pids")).unwrap();
    let mut specs = Vec::new();
    for name in ["blue", "green", "canary", "eu"] {
        let region = if name == "eu" { "eu" } else { "us" };
        specs.push(format!("{name}:{}:{region}", shop.ports()[name]));
    }
    std::fs::write(run.join("stacks"), specs.join(" ")).unwrap();
    let mut shop = shop;
    for name in ["blue", "green", "canary", "eu"] {
        let pid = shop.stack(name).proc.pid();
        std::fs::write(run.join(format!("pids/{name}.pid")), pid.to_string()).unwrap();
    }

    let bin = switchyard_harness::bin_dir();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut shell = Shell::start(&[
        ("USER", "alice".into()),
        ("PATH", path),
        ("SWITCHYARD_RUN_DIR", run.display().to_string()),
        ("SWITCHYARD_BIN", bin.display().to_string()),
        (
            "SWITCHYARD_SERVER",
            format!("http://127.0.0.1:{}", grpc.port()),
        ),
        (
            "SWITCHYARD_TOKEN_FILE",
            control.admin_token_file().display().to_string(),
        ),
    ]);
    let read_only = |c: &str| {
        [
            "rollout status",
            "stacks list",
            "audit list",
            "audit verify",
        ]
        .iter()
        .any(|r| c.contains(r))
    };
    let load = Load::start(envoy.port, 8);
    let mut failures = Vec::new();
    for step in &steps {
        let want = normalize(&step.output);
        let started = std::time::Instant::now();
        let mut raw = shell.run(&step.command);
        let mut got = normalize(&raw);
        while !matches(&want, &got)
            && read_only(&step.command)
            && started.elapsed() < ROLLOUT_SETTLE
        {
            std::thread::sleep(Duration::from_millis(500));
            raw = shell.run(&step.command);
            got = normalize(&raw);
        }
        // The run as a transcript (what the README shows, before masking).
        println!(
            "TRANSCRIPT README.md:{} after {:?}\n$ {}\n{}",
            step.line,
            started.elapsed(),
            step.command,
            raw.join("\n")
        );
        if !matches(&want, &got) {
            failures.push(format!(
                "README.md:{}: $ {}\n  README:\n    {}\n  got:\n    {}",
                step.line,
                step.command,
                want.join("\n    "),
                got.join("\n    ")
            ));
        }
    }
    drop(load);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
