//! Queue visibility end to end (issue 15 §4): the control service scrapes the real
//! reference intake (`examples/intake`, on a real NATS JetStream) and `switchyard status`
//! shows its queue. The real Envoy with the built .wasm queues orders at the intake while
//! every checkout stack is down; status shows the depth, then 0 once the stacks are back
//! and the drainer placed them; an intake that stops answering shows its scrape error.
//!
//! Bounded waits only, no timed assertions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_e2e::*;
use switchyard_harness::NatsServer;

/// blue and green take checkout and probe `/healthz` while their breaker is open; with
/// both down every order goes to `intake_us`.
const POLICY: &str = r#"{
  "stacks": [
    { "name": "blue", "region": "us", "health_path": "/healthz" },
    { "name": "green", "region": "us", "health_path": "/healthz" }
  ],
  "breaker": { "consecutive_failures": 2, "open_ms": 500, "max_open_ms": 1000 },
  "rules": [
    { "id": "checkout", "match": { "methods": ["POST"], "path_prefixes": ["/checkout"] },
      "route": { "targets": [ { "stack": "blue" }, { "stack": "green" } ],
                 "fallback": { "queue": { "cluster": "intake_us", "region": "us" },
                               "local": { "status": 503, "message": "checkout unavailable" } } } }
  ],
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ] }
}"#;

const WAIT: Duration = Duration::from_secs(40);
/// Orders queued during the outage.
const ORDERS: u64 = 12;

/// `switchyard --json status`, parsed.
fn status(control: &ControlService) -> Value {
    let out = control.cli(&["--json", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Poll status until `ok` holds for the first intake; returns that intake.
fn wait_intake(control: &ControlService, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(control);
        let intake = &s["intakes"][0];
        if ok(intake) {
            return intake.clone();
        }
        assert!(Instant::now() < deadline, "never {what}: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn status_shows_the_intake_queue_fill_during_an_outage_and_drain_after() {
    let nats = NatsServer::start();
    let mut blue = Stack::start("blue", 0);
    let mut green = Stack::start("green", 0);
    let intake_port = ReservedPort::new().unwrap();
    let ports = HashMap::from([
        ("blue", blue.port),
        ("green", green.port),
        ("intake_us", intake_port.port()),
    ]);
    let envoy = Envoy::start(POLICY, &ports, 1);
    let dir = TestDir::new("intake-status");

    let mut cmd = Command::new(switchyard_harness::workspace_bin("switchyard-intake"));
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{}", intake_port.port()),
        "--nats",
        &nats.addr(),
        "--region",
        "us",
        "--upstream",
        &format!("http://127.0.0.1:{}", envoy.port),
        "--drain-rate",
        "10",
        "--retry-s",
        "0.2",
    ]);
    let mut intake = Proc::spawn("intake", cmd, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    intake
        .wait_http_ok(intake_port.addr(), "/healthz", WAIT)
        .unwrap_or_else(|e| panic!("{e}"));

    let config = dir.join("control.toml");
    std::fs::write(
        &config,
        format!(
            "[degraded]\nscrape_every_ms = 200\nscrape_timeout_ms = 500\n\
             intakes = [{{ cluster = \"intake_us\", url = \"http://127.0.0.1:{}/metrics\" }}]\n",
            intake_port.port()
        ),
    )
    .unwrap();
    let grpc = ReservedPort::new().unwrap();
    let control = ControlService::start_with(
        &dir.join("data"),
        grpc.port(),
        &["--config", config.to_str().unwrap()],
    );
    let idle = wait_intake(&control, "scraped", |i| i["scraped_unix_ms"].is_u64());
    assert_eq!(
        (&idle["cluster"], &idle["queue_depth"], &idle["dead_letters"]),
        (&Value::from("intake_us"), &Value::from(0), &Value::from(0)),
        "{idle}"
    );

    // Every checkout stack down: wait until the breakers are open.
    blue.kill();
    green.kill();
    let deadline = Instant::now() + WAIT;
    loop {
        let r = envoy.client().get("/", &[]).unwrap();
        if r.status == 503 && r.text().contains("no_eligible_stack") {
            break;
        }
        assert!(Instant::now() < deadline, "breakers never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..ORDERS {
        let key = format!("visibility-{i}");
        let r = envoy
            .client()
            .request_with_body(
                "POST",
                "/checkout",
                &[
                    ("content-type", &b"application/json"[..]),
                    ("idempotency-key", key.as_bytes()),
                ],
                Some(br#"{"cart":["tee-navy"]}"#),
            )
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
    }
    let queued = wait_intake(&control, "showed the queued orders", |i| {
        i["queue_depth"] == ORDERS && i["waiting"] == true
    });
    assert!(queued["oldest_age_s"].as_f64().unwrap() > 0.0, "{queued}");
    assert_eq!(queued["dead_letters"], 0, "{queued}");
    assert!(queued.get("error").is_none(), "{queued}");
    // The text form: one row per intake.
    let out = control.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("switchyard status during the outage:\n{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("intake_us"))
        .unwrap_or_else(|| panic!("{text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], ORDERS.to_string(), "{row}");
    assert!(row.contains("waiting for a stack"), "{row}");

    // Recovery: the drainer places every order; status sees the queue empty and the rate.
    blue = Stack::start("blue", blue.port);
    green = Stack::start("green", green.port);
    let drained = wait_intake(&control, "showed the queue drained", |i| {
        i["queue_depth"] == 0 && i["drain_rate_per_s"].as_f64().is_some_and(|r| r > 0.0)
    });
    assert_eq!(drained["dead_letters"], 0, "{drained}");
    assert_eq!(drained["waiting"], false, "{drained}");
    let out = control.cli(&["status"]);
    println!(
        "switchyard status after the drain:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The intake gone: status still answers, with the scrape error and the last figures.
    intake.kill();
    let gone = wait_intake(&control, "showed the scrape error", |i| i["error"].is_string());
    assert_eq!(gone["queue_depth"], 0, "last figures kept: {gone}");
    drop((blue, green));
}
