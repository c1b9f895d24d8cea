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

use std::time::Duration;

use switchyard_e2e::transcript::{normalize, transcripts, Shell};
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
            .replace("127.0.0.1:18000", &format!("127.0.0.1:{}", grpc.port()))
            .replace("target/release/switchyard", bin.to_str().unwrap())
    };
    let mut shell = Shell::start(&[
        ("USER", "alice".into()),
        ("SWITCHYARD_SERVER", format!("127.0.0.1:{}", grpc.port())),
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
