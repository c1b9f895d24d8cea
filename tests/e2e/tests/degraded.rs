//! Degraded mode end to end (issue 15): the real Envoy with the built .wasm, demo
//! storefront stacks, the reference intake (`examples/intake`) on a real NATS JetStream.
//! With every checkout stack down, orders are queued (202 + reference) instead of
//! failing; after recovery each acknowledged order is placed exactly once, at the
//! configured drain rate; a broker `kill -9` mid-outage loses nothing acknowledged; an
//! intake that is down is answered with the route's local reply.
//!
//! Bounded waits only; the one timing check is a lower bound (the drain cannot be
//! faster than its rate), which a slow machine cannot break.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_e2e::*;
use switchyard_harness::NatsServer;

/// blue and green take checkout; both probe `/healthz` when their breaker is open, so
/// while they are down the breaker stays open and every order is queued.
const POLICY: &str = r#"{
  "stacks": [
    { "name": "blue", "region": "us", "health_path": "/healthz" },
    { "name": "green", "region": "us", "health_path": "/healthz" }
  ],
  "breaker": { "consecutive_failures": 2, "open_ms": 500, "max_open_ms": 1000 },
  "rules": [
    { "id": "checkout", "match": { "methods": ["POST"], "path_prefixes": ["/checkout"] },
      "route": { "targets": [ { "stack": "blue" }, { "stack": "green" } ],
                 "balance": { "mode": "hash", "key": { "header": "idempotency-key" } },
                 "fallback": { "queue": { "cluster": "intake_us", "region": "us" },
                               "local": { "status": 503, "retry_after_s": 9, "message": "checkout unavailable" } } } }
  ],
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ] },
  "debug_header": true
}"#;

/// Every bounded wait.
const WAIT: Duration = Duration::from_secs(40);
/// The drainer's rate (orders per second).
const RATE: f64 = 10.0;

struct Intake {
    proc: Proc,
    port: u16,
}

impl Intake {
    fn start(dir: &TestDir, port: u16, nats: &str, envoy_port: u16) -> Intake {
        Self::start_with(dir, port, nats, envoy_port, &[])
    }

    fn start_with(dir: &TestDir, port: u16, nats: &str, envoy_port: u16, extra: &[&str]) -> Intake {
        let mut cmd = Command::new(switchyard_harness::workspace_bin("switchyard-intake"));
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--nats",
            nats,
            "--region",
            "us",
            "--upstream",
            &format!("http://127.0.0.1:{envoy_port}"),
            "--drain-rate",
            &RATE.to_string(),
            "--retry-s",
            "0.2",
        ]);
        cmd.args(extra);
        let mut proc = Proc::spawn("intake", cmd, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        proc.wait_http_ok(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "/healthz",
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Intake { proc, port }
    }

    fn get(&self, path: &str) -> Response {
        Client::connect(self.port).unwrap().get(path, &[]).unwrap()
    }

    fn status(&self, reference: &str) -> Value {
        let r = self.get(&format!("/orders/{reference}"));
        assert_eq!(r.status, 200, "{reference}: {}", r.text());
        r.json()
    }

    /// One Prometheus sample of the intake.
    fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find(|l| l.starts_with(&format!("switchyard_intake_{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }
}

/// A completion-webhook receiver on 127.0.0.1: records every POSTed JSON body (one
/// request per connection: it answers `connection: close`).
struct Webhook {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start() -> Webhook {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        sink.lock().unwrap().push(v);
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Webhook { port, got }
    }
}

/// Envoy, two stacks, a reserved intake port.
struct Rig {
    envoy: Envoy,
    blue: Stack,
    green: Stack,
    intake_port: ReservedPort,
    dir: TestDir,
}

impl Rig {
    fn start() -> Rig {
        let blue = Stack::start("blue", 0);
        let green = Stack::start("green", 0);
        let intake_port = ReservedPort::new().unwrap();
        let ports = HashMap::from([
            ("blue", blue.port),
            ("green", green.port),
            ("intake_us", intake_port.port()),
        ]);
        let envoy = Envoy::start(POLICY, &ports, 1);
        Rig {
            envoy,
            blue,
            green,
            intake_port,
            dir: TestDir::new("degraded"),
        }
    }

    /// Kill both stacks and wait until their breakers are open (a `GET /` gets the
    /// default route's local reply).
    fn stacks_down(&mut self) {
        self.blue.kill();
        self.green.kill();
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.envoy.client().get("/", &[]).unwrap();
            if r.status == 503 && r.text().contains("no_eligible_stack") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "breakers never opened: {}",
                r.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start both stacks again on their ports (their breakers close on the next probe).
    fn stacks_up(&mut self) {
        self.blue = Stack::start("blue", self.blue.port);
        self.green = Stack::start("green", self.green.port);
    }

    /// Orders each stack placed (and replayed) since it started.
    fn placed(&self) -> (u64, u64) {
        let mut out = (0, 0);
        for s in [&self.blue, &self.green] {
            let st = Client::connect(s.port)
                .unwrap()
                .get("/admin/stats", &[])
                .unwrap()
                .json();
            out.0 += st["orders_placed"].as_u64().unwrap();
            out.1 += st["orders_replayed"].as_u64().unwrap();
        }
        out
    }
}

/// `POST /checkout` with a JSON cart through Envoy, on a fresh connection.
fn order(envoy: &Envoy, headers: &[(&str, &str)], body: &str) -> Response {
    let h: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (*n, v.as_bytes()))
        .chain([("content-type", &b"application/json"[..])])
        .collect();
    envoy
        .client()
        .request_with_body("POST", "/checkout", &h, Some(body.as_bytes()))
        .unwrap()
}

/// A 202 from the intake: its reference.
fn accepted(r: &Response) -> String {
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("x-switchyard-intake"), Some("us"));
    let j = r.json();
    let reference = j["reference"].as_str().unwrap().to_string();
    assert!(j["status_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/orders/{reference}")));
    reference
}

/// Wait until every reference is placed; returns their status records.
fn wait_placed(intake: &Intake, refs: &BTreeSet<String>) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let all: Vec<Value> = refs.iter().map(|r| intake.status(r)).collect();
        if all.iter().all(|s| s["status"] == "placed") {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "not all placed: {:?}\n{}",
            all.iter()
                .filter(|s| s["status"] != "placed")
                .collect::<Vec<_>>(),
            intake.proc.tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn orders_are_queued_while_checkout_is_down_and_placed_exactly_once_after() {
    let nats = NatsServer::start();
    let mut rig = Rig::start();
    let webhook = Webhook::start();
    let intake = Intake::start_with(
        &rig.dir,
        rig.intake_port.port(),
        &nats.addr(),
        rig.envoy.port,
        &[
            "--webhook",
            &format!("http://127.0.0.1:{}/done", webhook.port),
        ],
    );
    rig.stacks_down();

    // A bounded order load while nothing is eligible: every order is acknowledged.
    let mut refs = BTreeSet::new();
    for i in 0..20 {
        let key = format!("e2e-order-{i}");
        let r = order(
            &rig.envoy,
            &[("idempotency-key", &key)],
            &format!(r#"{{"cart":["tee-navy"],"n":{i}}}"#),
        );
        refs.insert(accepted(&r));
    }
    // Without a key the filter generates one: still one order each.
    for _ in 0..3 {
        refs.insert(accepted(&order(
            &rig.envoy,
            &[],
            r#"{"cart":["mug-envoy"]}"#,
        )));
    }
    assert_eq!(refs.len(), 23);
    // A client retry with the same key is the same order.
    let again = accepted(&order(
        &rig.envoy,
        &[("idempotency-key", "e2e-order-3")],
        r#"{"cart":["tee-navy"],"n":3}"#,
    ));
    assert!(refs.contains(&again));
    // Forged routing context from the client has no effect.
    let forged = accepted(&order(
        &rig.envoy,
        &[
            ("idempotency-key", "e2e-forged"),
            ("x-switchyard-queue-rule", "vip"),
            ("x-switchyard-queue-stack", "eu"),
        ],
        "{}",
    ));
    refs.insert(forged.clone());
    let st = intake.status(&forged);
    assert_eq!(
        (
            st["status"].as_str(),
            st["rule"].as_str(),
            st["intended_stack"].as_str()
        ),
        (Some("queued"), Some("checkout"), Some("blue"))
    );
    // Bad input: a clear 4xx, nothing queued.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000));
    assert_eq!(
        order(&rig.envoy, &[("idempotency-key", "e2e-big")], &big).status,
        413
    );
    assert_eq!(
        order(&rig.envoy, &[("idempotency-key", "not a key!")], "{}").status,
        400
    );
    assert_eq!(
        order(&rig.envoy, &[("idempotency-key", "e2e-text")], "cart=tee").status,
        400
    );
    assert_eq!(intake.metric("accepted_total"), 24.0);
    assert_eq!(intake.metric("duplicates_total"), 1.0);
    assert_eq!(intake.metric("queue_depth"), 24.0);
    assert!(intake.metric("queue_oldest_age_seconds") > 0.0);
    assert!(rig.envoy.wait_counter("queued_requests", 28) >= 28);

    // Recovery: the drainer places every order once, no faster than its rate.
    rig.stacks_up();
    let placed = wait_placed(&intake, &refs);
    let times: Vec<u64> = placed
        .iter()
        .map(|s| s["updated_ms"].as_u64().unwrap())
        .collect();
    let spread = times.iter().max().unwrap() - times.iter().min().unwrap();
    // Figure for docs/BENCHMARKS.md (printed, not asserted beyond the rate floor below).
    eprintln!(
        "drain: {} queued orders placed in {spread} ms at --drain-rate {RATE} (ideal {} ms)",
        refs.len(),
        ((refs.len() - 1) as f64 / RATE * 1000.0) as u64
    );
    let floor = ((refs.len() - 1) as f64 / RATE * 1000.0 * 0.9) as u64;
    assert!(
        spread >= floor,
        "{} orders placed within {spread} ms: faster than {RATE}/s",
        refs.len()
    );
    let (orders, replayed) = rig.placed();
    assert_eq!(
        orders,
        refs.len() as u64,
        "0 lost, 0 duplicated (replays: {replayed})"
    );
    assert_eq!(intake.metric("placed_total"), refs.len() as f64);
    assert_eq!(intake.metric("queue_depth"), 0.0);
    assert_eq!(intake.metric("dead_letters_total"), 0.0);
    for s in &placed {
        assert!(
            matches!(s["placed_by"].as_str(), Some("blue" | "green")),
            "{s}"
        );
        assert!(s["order"]["order_id"].is_string(), "{s}");
    }
    // The completion webhook heard of every order once, as placed.
    let start = std::time::Instant::now();
    while webhook.got.lock().unwrap().len() < refs.len() && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = webhook.got.lock().unwrap().clone();
    let heard: BTreeSet<String> = got
        .iter()
        .map(|v| v["reference"].as_str().unwrap().to_string())
        .collect();
    assert_eq!((got.len(), &heard), (refs.len(), &refs), "{got:?}");
    assert!(got.iter().all(|v| v["status"] == "placed"), "{got:?}");
}

#[test]
fn a_broker_killed_mid_outage_loses_nothing_acknowledged() {
    let mut nats = NatsServer::start();
    let mut rig = Rig::start();
    let intake = Intake::start(
        &rig.dir,
        rig.intake_port.port(),
        &nats.addr(),
        rig.envoy.port,
    );
    rig.stacks_down();

    let mut refs = BTreeSet::new();
    for i in 0..10 {
        let key = format!("kill-{i}");
        refs.insert(accepted(&order(
            &rig.envoy,
            &[("idempotency-key", &key)],
            "{}",
        )));
    }
    nats.kill();
    // While the broker is gone nothing is acknowledged: the intake says so (503).
    let r = order(&rig.envoy, &[("idempotency-key", "kill-10")], "{}");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-switchyard-intake"), Some("us"));
    nats.restart();
    // Clients retry with their keys until acknowledged.
    for i in 10..15 {
        let key = format!("kill-{i}");
        let deadline = Instant::now() + WAIT;
        loop {
            let r = order(&rig.envoy, &[("idempotency-key", &key)], "{}");
            if r.status == 202 {
                refs.insert(accepted(&r));
                break;
            }
            assert!(Instant::now() < deadline, "{}", r.text());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert_eq!(refs.len(), 15);
    rig.stacks_up();
    wait_placed(&intake, &refs);
    let (orders, _) = rig.placed();
    assert_eq!(orders, 15, "every acknowledged order placed once");
}

#[test]
fn an_intake_that_is_down_gets_the_routes_local_reply() {
    let mut rig = Rig::start();
    rig.stacks_down();
    // Nothing listens on the intake's port: Envoy cannot connect.
    let started = Instant::now();
    let r = order(&rig.envoy, &[("idempotency-key", "nobody-home")], "{}");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("9"));
    assert!(r.text().contains("checkout unavailable"), "{}", r.text());
    println!(
        "DEGRADED intake_down_answer_ms={}",
        started.elapsed().as_millis()
    );
}
