//! docs/getting-started.md replayed: `scripts/run.sh` (what `make run` runs, on this
//! build's binaries) starts the demo exactly as a new user's `make run` does — same
//! ports, same `.run/` layout, two Envoy workers — and every `$ command` of the guide's
//! transcripts then runs, in order, in one shell. Its output must be the guide's, modulo
//! what changes from run to run (cookie values, timestamps, ages, the telemetry columns
//! of `stacks` tables: `transcript::normalize`).
//!
//! The guide's commands name `target/release/` and `.run/`; they are rewritten to this
//! build's binaries and the test's run directory. A command that only reads (a `curl`,
//! `stacks list`, `status`) may be repeated until its output matches, for at most
//! [`SETTLE`]: a change reaches Envoy, and the fast path reacts, asynchronously — a
//! person types slower than this loop. Everything else runs once.
//!
//! The demo listens on its fixed ports: this test fails with a clear message when
//! another `make run` holds them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_e2e::transcript::{normalize, transcripts, Shell};
use switchyard_e2e::*;

/// The ports `scripts/run.sh` insists on.
const PORTS: [u16; 11] = [
    10000, 9901, 8081, 8082, 8083, 8084, 8090, 8091, 4222, 18000, 18080,
];

/// Ceiling on how long a read-only command may take to show the guide's output.
const SETTLE: Duration = Duration::from_secs(20);

/// Whether a command only reads, so repeating it changes nothing a later step shows.
fn read_only(command: &str) -> bool {
    let c = command.trim_start();
    (c.starts_with("curl ") && !c.contains(" -X ") && !c.contains(" -d "))
        || c.starts_with("for i in") && c.contains("curl ")
        || c.contains("switchyard stacks list")
        || c.contains("switchyard status")
        || c.contains("switchyard rollout status")
        || c.contains("scripts/chaos.sh status")
}

#[test]
fn the_getting_started_guide_works_as_written() {
    let doc = std::fs::read_to_string(root().join("docs/getting-started.md")).unwrap();
    let steps = transcripts(&doc, None);
    assert!(
        steps.len() >= 12,
        "found only {} transcript commands: {steps:#?}",
        steps.len()
    );
    for port in PORTS {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is in use: stop `make run` (or whatever holds it) and run this test again"
        );
    }

    let dir = TestDir::new("getting-started");
    let run_dir = dir.join("run");
    let bin = switchyard_harness::bin_dir();
    let _ = wasm_path();
    let mut cmd = run_sh();
    cmd.current_dir(root())
        .env("SWITCHYARD_RUN_DIR", &run_dir)
        .env("SWITCHYARD_BIN", &bin)
        .env("ENVOY", envoy_bin());
    let demo = Proc::spawn("make-run", cmd, dir.path()).unwrap();
    let start = Instant::now();
    while !demo.stdout().contains("Switchyard is running") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the demo did not come up:\n{}",
            demo.tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let rewrite = |c: &str| {
        c.replace("target/release/", &format!("{}/", bin.display()))
            .replace(".run/", &format!("{}/", run_dir.display()))
    };
    let mut shell = Shell::start(&[
        ("SWITCHYARD_RUN_DIR", run_dir.display().to_string()),
        ("SWITCHYARD_BIN", bin.display().to_string()),
        (
            "SWITCHYARD_TOKEN_FILE",
            run_dir.join("admin.token").display().to_string(),
        ),
        // make run serves TLS + mTLS with its demo CA; the CLI finds `.run/tls/` by
        // itself, here the run directory is elsewhere.
        (
            "SWITCHYARD_CA",
            run_dir.join("tls/ca.pem").display().to_string(),
        ),
        (
            "SWITCHYARD_CERT",
            run_dir.join("tls/admin.pem").display().to_string(),
        ),
        (
            "SWITCHYARD_KEY",
            run_dir.join("tls/admin.key").display().to_string(),
        ),
    ]);
    let mut failures = Vec::new();
    for step in &steps {
        let want = normalize(&step.output);
        let command = rewrite(&step.command);
        let started = Instant::now();
        let mut got = normalize(&shell.run(&command));
        while got != want && read_only(&step.command) && started.elapsed() < SETTLE {
            std::thread::sleep(Duration::from_millis(200));
            got = normalize(&shell.run(&command));
        }
        if got != want {
            failures.push(format!(
                "docs/getting-started.md:{}: $ {}\n  the guide:\n    {}\n  got:\n    {}",
                step.line,
                step.command,
                want.join("\n    "),
                got.join("\n    ")
            ));
        }
    }
    // Ctrl-C, as the guide says, before judging: it also stops the stack the guide
    // revived (not a child of run.sh), which must not outlive a failed run.
    let status = Command::new("kill")
        .args(["-INT", &demo.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    while !demo.stdout().contains("stopped.") && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        failures.is_empty(),
        "{}\n\nthe demo's log:\n{}",
        failures.join("\n\n"),
        demo.tail(20)
    );
    assert!(demo.stdout().contains("stopped."), "{}", demo.tail(10));
}

#[test]
fn only_reads_are_repeated() {
    for c in [
        "curl -s localhost:10000/",
        "for i in 1 2 3; do curl -s localhost:10000/; done",
        "target/release/switchyard stacks list",
        "target/release/switchyard rollout status first",
    ] {
        assert!(read_only(c), "{c}");
    }
    for c in [
        "target/release/switchyard stacks weight green 0",
        "scripts/chaos.sh kill blue",
        "curl -s -X POST localhost:18080/api/v1/stacks/blue/drain",
        "target/release/switchyard rollout start --stack green",
    ] {
        assert!(!read_only(c), "{c}");
    }
}
