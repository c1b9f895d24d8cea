//! The ITR incident workflow end to end: the real Envoy (two workers) with the real
//! .wasm, two demo storefront stacks under bounded client traffic, the real control
//! service with compressed windows and durations (a config file). Latency injected on
//! blue opens an incident naming blue; nothing moves before approval; approved through
//! the CLI, blue's share drops (checked on what Envoy routes); the next action the
//! workflow proposes on blue, inside the freeze window, is refused.
//!
//! Timings are printed (`INCIDENT fault_to_proposal_ms=…`), never asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_e2e::*;

const POLICY: &str = r#"{
  "stacks": [ { "name": "blue", "region": "us" }, { "name": "green", "region": "us" } ],
  "breaker": { "enabled": false },
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ] },
  "debug_header": true
}"#;

/// Windows of 2 s (Envoy reports every second), confirmation after 2 anomalous
/// windows, a 2 s persistence re-check, 2 s post-action validation, a 2 min freeze.
const CONFIG: &str = "\
series_window_ms = 2000
series_grace_ms = 1200

[autopilot]
tick_ms = 100
incident_validate_ms = 2000
incident_verify_ms = 2000
incident_freeze_ms = 120000
detect_confirm_windows = 2
detect_min_requests = 20
slo_p99_ms = 250.0
incident_capacity_rps = { blue = 10000.0, green = 10000.0 }
";

/// Every bounded wait in this test.
const WAIT: Duration = Duration::from_secs(30);

struct Control {
    proc: Proc,
    http: u16,
    grpc: u16,
}

impl Control {
    fn start(dir: &TestDir, grpc: u16) -> Control {
        std::fs::write(dir.join("policy.json"), POLICY).unwrap();
        let config = dir.join("control.toml");
        std::fs::write(
            &config,
            format!(
                "store = \"memory\"\ngrpc = \"127.0.0.1:{grpc}\"\nhttp = \"127.0.0.1:0\"\n\
                 bootstrap_policy = \"policy.json\"\n{CONFIG}"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(switchyard_harness::workspace_bin("switchyard-control"));
        // Not about credentials (tests/access.rs and control.rs are).
        cmd.args(["serve", "--no-auth", "--config", config.to_str().unwrap()]);
        let mut proc = Proc::spawn("control", cmd, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let line = proc
            .wait_for_line("its `http listening on` line", WAIT, |l| {
                l.starts_with("http listening on")
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let http = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        Control { proc, http, grpc }
    }

    fn get(&self, path: &str) -> Value {
        let r = Client::connect(self.http).unwrap().get(path, &[]).unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    }

    fn wait<T>(&self, what: &str, path: &str, f: impl Fn(&Value) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            let v = self.get(path);
            if let Some(t) = f(&v) {
                return t;
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; last {path}: {v:#}\n{}",
                self.proc.tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_applied(&self, version: u64) {
        self.wait("the Envoy to apply the version", "/api/v1/status", |s| {
            let nodes = s["nodes"].as_array()?;
            (!nodes.is_empty()
                && nodes
                    .iter()
                    .all(|n| n["applied_version"].as_u64().unwrap_or(0) >= version))
            .then_some(())
        });
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(switchyard_harness::workspace_bin("switchyard"))
            .args(["--server", &format!("http://127.0.0.1:{}", self.grpc)])
            .args(["--actor", "oncall"])
            .args(args)
            .output()
            .unwrap()
    }

    fn weights(&self) -> HashMap<String, u64> {
        self.get("/api/v1/stacks")["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["weight_percent"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

/// Blue's share of `n` requests through Envoy.
fn blue_share(port: u16, n: usize) -> f64 {
    let counts = spread(port, 8, n, &[]);
    let blue = *counts.get("blue").unwrap_or(&0) as f64;
    let served: usize = counts
        .iter()
        .filter(|(k, _)| *k == "blue" || *k == "green")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(served, n, "every request served: {counts:?}");
    blue / n as f64
}

/// The incident about `stack`, once it is in `phase`.
fn incident_in(control: &Control, stack: &str, phase: &str) -> Value {
    control.wait(
        &format!("an incident on {stack} in {phase}"),
        "/api/v1/incidents",
        |v| {
            v["incidents"]
                .as_array()?
                .iter()
                .find(|i| i["stack"] == stack && i["phase"] == phase)
                .cloned()
        },
    )
}

#[test]
fn latency_on_one_stack_opens_an_incident_approved_share_moves_freeze_refuses_next() {
    let blue = Stack::start("blue", 0);
    let green = Stack::start("green", 0);
    let dir = TestDir::new("incident");
    let grpc = ReservedPort::new().unwrap();
    let control = Control::start(&dir, grpc.port());
    let ports: HashMap<&str, u16> = HashMap::from([
        ("blue", blue.port),
        ("green", green.port),
        ("control", grpc.port()),
        ("node", 1),
    ]);
    let envoy = Envoy::start(POLICY, &ports, 2);
    control.wait_applied(1);
    let before = blue_share(envoy.port, 200);
    assert!((0.35..=0.65).contains(&before), "blue's share {before}");

    let traffic = Traffic::start(envoy.port, 8);
    // A healthy stretch (two windows) first: telemetry flows, nothing is proposed.
    control.wait("telemetry from the Envoy", "/api/v1/telemetry", |t| {
        (t.to_string().contains("blue") && t.to_string().contains("green")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));

    let fault_at = Instant::now();
    fault(blue.port, r#"{"latency_ms": 300}"#);
    let inc = incident_in(&control, "blue", "awaiting_approval");
    let fault_to_proposal = fault_at.elapsed();
    let id = inc["id"].as_u64().unwrap();
    let detail = control.get(&format!("/api/v1/incidents/{id}"));
    let ev = &detail["incident"]["evidence"];
    assert_eq!(ev["delta_stack"], "blue", "{ev:#}");
    assert_eq!(ev["proposed"]["kind"], "shift", "{ev:#}");
    assert_eq!(ev["proposed"]["from"], "blue", "{ev:#}");
    assert!(
        ev["signals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["stack"] == "blue" && s["signal"] == "p99_ms"),
        "p99 of blue in the evidence: {ev:#}"
    );
    // Nothing moved before approval.
    let version_before = control.get("/api/v1/stacks")["version"].as_u64().unwrap();
    assert_eq!(version_before, 1, "a version before approval");
    assert_eq!(control.weights()["blue"], 100);
    assert_eq!(control.weights()["green"], 100);

    // Approve through the CLI: blue's operator factor halves, as one version.
    let out = control.cli(&[
        "incidents",
        "approve",
        &id.to_string(),
        "--comment",
        "blue p99 at 300 ms",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(control.weights()["blue"], 50);
    let version = control.get("/api/v1/stacks")["version"].as_u64().unwrap();
    assert_eq!(version, 2);

    // Blue stays slow: after the post-action validation the workflow proposes the next
    // action on blue, which the freeze window refuses.
    let next = incident_in(&control, "blue", "awaiting_approval");
    assert_eq!(next["id"], id, "the same incident proposes again");
    let out = control.cli(&["incidents", "approve", &id.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("blue is frozen until"), "{err}");
    assert_eq!(
        control.weights()["blue"],
        50,
        "the refused action moved traffic"
    );
    assert_eq!(
        control.get("/api/v1/stacks")["version"],
        version,
        "a version after the refusal"
    );
    let sent = traffic.stop();

    // Envoy routes on the approved move: blue 50 × 50 % against green's 50 → one third.
    fault(blue.port, r#"{"latency_ms": 0}"#);
    control.wait_applied(version);
    let after = blue_share(envoy.port, 300);
    assert!(
        (0.2..=0.45).contains(&after),
        "blue's share after the move {after} (before {before})"
    );
    let audit = control.get("/api/v1/audit?limit=100");
    let subject = format!("incident/{id}");
    for kind in ["recommendation", "approval", "execution", "refusal"] {
        assert!(
            audit["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["subject"] == subject.as_str() && e["kind"] == kind),
            "{kind} not audited"
        );
    }
    println!(
        "INCIDENT fault_to_proposal_ms={} requests={sent} blue_share_before={before:.2} after={after:.2}",
        fault_to_proposal.as_millis()
    );
}
