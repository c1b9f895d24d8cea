//! The control plane end to end: the real control service, the real Envoy
//! (`--concurrency 2`), the singleton in the real `.wasm`, the operator CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_e2e::*;

fn policy(default_targets: &str) -> String {
    format!(
        r#"{{
  "stacks": [ {{ "name": "blue", "region": "us" }}, {{ "name": "green", "region": "us" }}, {{ "name": "canary", "region": "us" }} ],
  "default": {{ "targets": [ {default_targets} ] }}
}}"#
    )
}

const BLUE: &str = r#"{ "stack": "blue" }"#;
const GREEN: &str = r#"{ "stack": "green" }"#;
const GREEN_CANARY: &str = r#"{ "stack": "green" }, { "stack": "canary" }"#;

struct Setup {
    shop: Shop,
    dir: TestDir,
    /// Held for the test's life: Envoy is pointed at it before the service first starts,
    /// and the service restarts on it.
    grpc: ReservedPort,
    applied: AtomicUsize,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            shop: Shop::start(),
            dir: TestDir::new("control"),
            grpc: ReservedPort::new().unwrap(),
            applied: AtomicUsize::new(0),
        }
    }

    fn envoy(&self, plugin_policy: &str, node: u16) -> Envoy {
        let mut ports = self.shop.ports();
        ports.insert("control", self.grpc.port());
        ports.insert("node", node);
        Envoy::start(plugin_policy, &ports, 2)
    }

    fn control(&self) -> ControlService {
        ControlService::start(&self.dir.join("data"), self.grpc.port())
    }

    fn apply(&self, control: &ControlService, policy: &str) -> std::process::Output {
        let n = self.applied.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.join(format!("policy-{n}.json"));
        std::fs::write(&file, policy).unwrap();
        control.cli(&["policy", "apply", file.to_str().unwrap()])
    }
}

fn ok(out: std::process::Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "CLI failed: {text}");
    text
}

#[test]
fn policy_and_weights_reach_every_worker_and_bad_policies_change_nothing() {
    let s = Setup::new();
    let control = s.control();
    let envoy = s.envoy(&policy(BLUE), 1);
    assert!(
        wait_routing(envoy.port, &["blue"], Duration::from_secs(5)).is_some(),
        "plugin policy serves first"
    );

    ok(s.apply(&control, &policy(GREEN_CANARY)));
    let took = wait_routing(envoy.port, &["green", "canary"], Duration::from_secs(5))
        .expect("new policy on every worker");
    let counts = spread(envoy.port, 4, 400, &[]);
    assert!(
        counts.keys().all(|k| k == "green" || k == "canary"),
        "{counts:?}"
    );
    assert!(
        counts.get("canary").copied().unwrap_or(0) > 100,
        "{counts:?}"
    );
    println!("policy applied → routed on every worker after {took:?}");

    // Weight 0: no request reaches the stack once propagated.
    ok(control.cli(&["stacks", "weight", "canary", "0"]));
    assert!(wait_routing(envoy.port, &["green"], Duration::from_secs(5)).is_some());
    let counts = spread(envoy.port, 4, 400, &[]);
    assert_eq!(counts, HashMap::from([("green".to_string(), 400)]));

    // An invalid policy is rejected with its field paths, and the old one keeps serving.
    let out = s.apply(&control, r#"{ "stacks": [ { "name": "blue", "region": "us" } ], "default": { "targets": [ { "stack": "purple" } ] } }"#);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "invalid policy accepted: {text}");
    assert!(
        text.contains("default.targets[0].stack"),
        "field path named: {text}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        spread(envoy.port, 4, 200, &[]),
        HashMap::from([("green".to_string(), 200)])
    );

    // The control service knows the Envoy and the version it applied.
    let status = ok(control.cli(&["--json", "status"]));
    assert!(
        status.contains("envoy-1"),
        "node listed in status: {status}"
    );

    // Telemetry: workers → shared queue → singleton → Report, once a second.
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut reported = 0;
    while Instant::now() < deadline && reported == 0 {
        spread(envoy.port, 2, 50, &[]);
        std::thread::sleep(Duration::from_millis(500));
        let list: serde_json::Value =
            serde_json::from_str(&ok(control.cli(&["--json", "stacks", "list"]))).unwrap();
        let green = list["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["name"] == "green")
            .cloned()
            .unwrap_or_default();
        reported = green["telemetry"]["requests"]
            .as_u64()
            .or_else(|| {
                green["telemetry"]["requests"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
    }
    assert!(
        reported > 0,
        "green's requests reached the control service through Report"
    );
}

#[test]
fn fail_static_while_the_control_service_is_down_then_resync() {
    let s = Setup::new();
    let mut control = s.control();
    ok(s.apply(&control, &policy(GREEN)));
    let envoy = s.envoy(&policy(BLUE), 2);
    assert!(
        wait_routing(envoy.port, &["green"], Duration::from_secs(5)).is_some(),
        "control state replaces the plugin policy"
    );

    // Steady traffic while the control service is killed for 30 s.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let traffic: Vec<_> = (0..2)
        .map(|_| {
            let (stop, seen, port) = (Arc::clone(&stop), Arc::clone(&seen), envoy.port);
            std::thread::spawn(move || {
                let mut c = Client::connect(port).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let key = match c.get("/", &[]) {
                        Ok(r) if r.status == 200 => r.served_by().unwrap_or("?").to_string(),
                        Ok(r) => format!("status {}", r.status),
                        Err(e) => format!("error {e}"),
                    };
                    *seen.lock().unwrap().entry(key).or_insert(0) += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    control.kill();
    std::thread::sleep(Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.join().unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let total: usize = seen.values().sum();
    println!("30 s without the control service: {total} requests, {seen:?}");
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec!["green"],
        "zero failures, routing unchanged: {seen:?}"
    );
    assert!(total > 1000);

    // Restart: Envoy reconnects within its backoff bound (5 s max, jittered) and resyncs.
    let control = s.control();
    ok(s.apply(&control, &policy(BLUE)));
    let took = wait_routing(envoy.port, &["blue"], Duration::from_secs(10))
        .expect("resynced after restart");
    println!("control service restarted → new policy served after {took:?}");
    assert!(
        took <= Duration::from_secs(7),
        "within the reconnect backoff bound: {took:?}"
    );
}

#[test]
fn envoy_started_without_the_control_service_serves_its_plugin_policy_until_it_comes() {
    let s = Setup::new();
    let envoy = s.envoy(&policy(BLUE), 3);
    let start = Instant::now();
    assert_eq!(
        spread(envoy.port, 4, 100, &[]),
        HashMap::from([("blue".to_string(), 100)])
    );
    std::thread::sleep(Duration::from_secs(1));
    let control = s.control();
    ok(s.apply(&control, &policy(GREEN)));
    let took = wait_routing(envoy.port, &["green"], Duration::from_secs(10))
        .expect("control state takes over");
    println!(
        "control service came up {:?} after Envoy; its policy served {took:?} after apply",
        start.elapsed()
    );
    assert_eq!(
        spread(envoy.port, 4, 200, &[]),
        HashMap::from([("green".to_string(), 200)])
    );
}
