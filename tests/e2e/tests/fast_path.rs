//! The fast path end to end: the real control service with active health checks on two
//! demo storefront stacks, the real Envoy (`--concurrency 2`) under steady client
//! traffic. `kill -9` blue: the checks find it dead, the control service evacuates it
//! with no approval, and once the Envoy applied that version no request is routed to
//! blue and a user holding a blue cookie is moved to green with a new cookie. Restarted,
//! blue is marked recovered but stays evacuated until an operator undrains it. Before
//! that, an integrity failure on green only degrades it: nothing moves.
//!
//! The filter's own circuit breaker is off in this policy, so what is measured is the
//! control path alone (with the breaker on, each Envoy worker stops sooner by itself).
//! Timings are printed, never asserted: `FAST_PATH kill_to_last_routed_ms=…`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_e2e::*;

const POLICY: &str = r#"{
  "stacks": [ { "name": "blue", "region": "us" }, { "name": "green", "region": "us" } ],
  "affinity": { "ttl_s": 600 },
  "breaker": { "enabled": false },
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ], "affinity": true },
  "debug_header": true
}"#;

/// Every bounded wait in this test.
const WAIT: Duration = Duration::from_secs(15);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Checks of all four layers for one stack, every 200 ms, down after 2 failures.
fn checks(stack: &str, port: u16) -> String {
    format!(
        r#"
[[health.checks]]
stack = "{stack}"
layer = "infrastructure"
address = "127.0.0.1:{port}"

[[health.checks]]
stack = "{stack}"
layer = "component"
url = "http://127.0.0.1:{port}/healthz"
expect_status = 200

[[health.checks]]
stack = "{stack}"
layer = "api"
url = "http://127.0.0.1:{port}/products"
latency_budget_ms = 150

[[health.checks]]
stack = "{stack}"
layer = "integrity"
url = "http://127.0.0.1:{port}/integrity"
left = "/catalog_count"
right = "/search_index_count"
"#
    )
}

/// The control service with a config file; its HTTP port read from its banner.
struct Control {
    proc: Proc,
    http: u16,
    grpc: u16,
}

impl Control {
    fn start(dir: &TestDir, grpc: u16, health: &str) -> Control {
        std::fs::write(dir.join("policy.json"), POLICY).unwrap();
        let config = dir.join("control.toml");
        std::fs::write(
            &config,
            format!(
                "store = \"memory\"\ngrpc = \"127.0.0.1:{grpc}\"\nhttp = \"127.0.0.1:0\"\n\
                 bootstrap_policy = \"policy.json\"\n\n\
                 [health]\ninterval_ms = 200\ntimeout_ms = 200\nfall = 2\nrise = 2\n{health}"
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

    /// Poll `f` over `GET path` until it gives a value (bounded).
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
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until every node applied at least `version`.
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

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(switchyard_harness::workspace_bin("switchyard"))
            .args(["--server", &format!("http://127.0.0.1:{}", self.grpc)])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "CLI failed: {text}");
        text
    }
}

/// The stack a request was routed to, from the filter's debug header (present on
/// Envoy's own 503 for a dead upstream too).
fn routed_to(r: &Response) -> Option<String> {
    r.header("x-switchyard-decision")?
        .split("; ")
        .find_map(|kv| kv.strip_prefix("stack="))
        .map(str::to_string)
}

/// One request of the background traffic.
struct Sent {
    at_ms: u64,
    routed: Option<String>,
    status: u16,
}

/// Steady traffic over four connections until stopped (or 60 s at most).
struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(port).unwrap()).collect();
            let mut i = 0;
            while !s.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                let at_ms = unix_ms();
                if let Ok(r) = clients[i % 4].get("/", &[]) {
                    l.lock().unwrap().push(Sent {
                        at_ms,
                        routed: routed_to(&r),
                        status: r.status,
                    });
                }
                i += 1;
            }
        });
        Traffic {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// A new user sent to `stack`: their affinity cookie (`name=value`).
fn user_on(port: u16, stack: &str) -> String {
    let mut c = Client::connect(port).unwrap();
    for _ in 0..50 {
        let r = c.get("/", &[]).unwrap();
        if r.served_by() == Some(stack) {
            return r.affinity_cookie().expect("a new user gets a cookie");
        }
    }
    panic!("no new user was sent to {stack}");
}

fn health_of<'a>(h: &'a Value, stack: &str) -> &'a Value {
    &h["stacks"][stack]
}

#[test]
fn a_killed_stack_is_evacuated_by_the_fast_path() {
    let mut blue = Stack::start("blue", 0);
    let green = Stack::start("green", 0);
    let dir = TestDir::new("fast-path");
    let grpc = ReservedPort::new().unwrap();
    let control = Control::start(
        &dir,
        grpc.port(),
        &(checks("blue", blue.port) + &checks("green", green.port)),
    );
    let ports: HashMap<&str, u16> = HashMap::from([
        ("blue", blue.port),
        ("green", green.port),
        ("control", grpc.port()),
        ("node", 1),
    ]);
    let envoy = Envoy::start(POLICY, &ports, 2);
    control.wait_applied(1);
    control.wait(
        "both stacks healthy on every layer",
        "/api/v1/health",
        |h| {
            ["blue", "green"]
                .iter()
                .all(|s| {
                    let st = health_of(h, s);
                    st["verdict"] == "healthy"
                        && st["layers"].as_object().map(|l| l.len()) == Some(4)
                })
                .then_some(())
        },
    );
    // An integrity failure (green's search index lags its catalog) only degrades green:
    // shown in status, never acted on.
    let fault = |body: &str| {
        let r = Client::connect(green.port)
            .unwrap()
            .request_with_body("POST", "/admin/faults", &[], Some(body.as_bytes()))
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    };
    fault(r#"{"index_lag": 1}"#);
    let evidence = control.wait(
        "green degraded by its integrity check",
        "/api/v1/health",
        |h| {
            let g = health_of(h, "green");
            (g["verdict"] == "degraded" && g["layers"]["integrity"] == "down")
                .then(|| g["evidence"].clone())
        },
    );
    assert!(
        evidence
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains(
                "/catalog_count = 3 and /search_index_count = 2 differ by 1 (they must be equal)"
            )),
        "{evidence:#}"
    );
    fault(r#"{"index_lag": 0}"#);
    control.wait("green healthy again", "/api/v1/health", |h| {
        (health_of(h, "green")["verdict"] == "healthy").then_some(())
    });
    let history = control.get("/api/v1/history?limit=5");
    assert_eq!(
        history["current_version"], 1,
        "a degraded stack moved nothing: {history:#}"
    );

    let blue_user = user_on(envoy.port, "blue");
    let green_user = user_on(envoy.port, "green");

    // Steady traffic reaches both stacks.
    let traffic = Traffic::start(envoy.port);
    let start = Instant::now();
    while traffic.log.lock().unwrap().len() < 200 {
        assert!(start.elapsed() < WAIT, "no traffic flowed");
        std::thread::sleep(Duration::from_millis(10));
    }

    let kill_ms = unix_ms();
    blue.kill();

    // The fast path: an evacuation by `health-check`, with the failing layer and its
    // evidence as the reason.
    let evac = control.wait("the fast-path evacuation", "/api/v1/history?limit=5", |h| {
        h["versions"]
            .as_array()?
            .iter()
            .find(|v| v["kind"] == "stack_evacuate" && v["actor"] == "health-check")
            .cloned()
    });
    let evac_version = evac["version"].as_u64().unwrap();
    let evac_ms = evac["created_unix_ms"].as_u64().unwrap();
    let summary = evac["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("blue evacuating: fast path: ")
            && (summary
                .contains("infrastructure down: infrastructure check blue/infrastructure down")
                || summary.contains("component down: component check blue/component down")),
        "{summary}"
    );
    control.wait_applied(evac_version);
    let applied_ms = unix_ms();
    // Let traffic run on the new version for a moment, then stop it.
    let start = Instant::now();
    while traffic
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.at_ms > applied_ms)
        .count()
        < 200
    {
        assert!(start.elapsed() < WAIT, "traffic stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = traffic.stop();

    // No request sent after the Envoy applied the evacuation was routed to blue.
    let late: Vec<&Sent> = log
        .iter()
        .filter(|s| s.at_ms > applied_ms && s.routed.as_deref() != Some("green"))
        .collect();
    assert!(
        late.is_empty(),
        "{} requests after the evacuation went elsewhere than green, e.g. routed {:?} status {}",
        late.len(),
        late[0].routed,
        late[0].status
    );
    assert_eq!(
        spread(envoy.port, 4, 100, &[]),
        HashMap::from([("green".to_string(), 100)])
    );
    // The blue user moved, with a new cookie at once; the green user stayed.
    let mut c = Client::connect(envoy.port).unwrap();
    let r = c.get("/", &[("cookie", &blue_user)]).unwrap();
    assert_eq!(r.served_by(), Some("green"), "the blue user was not moved");
    assert!(
        r.affinity_cookie().is_some(),
        "a moved user gets a new cookie"
    );
    let r = c.get("/", &[("cookie", &green_user)]).unwrap();
    assert_eq!((r.served_by(), r.affinity_cookie()), (Some("green"), None));

    // Status: blue hard down on its lower layers, evacuated by the fast path, and the
    // action recorded. Each layer's check keeps its own schedule: the TCP check may reach
    // its second failure a cycle after the HTTP checks that triggered the evacuation.
    let h = control.wait("blue's infrastructure layer down", "/api/v1/health", |h| {
        (health_of(h, "blue")["layers"]["infrastructure"] == "down").then(|| h.clone())
    });
    let b = health_of(&h, "blue");
    assert_eq!(b["verdict"], "hard_down", "{b:#}");
    assert_eq!(b["layers"]["infrastructure"], "down", "{b:#}");
    assert_eq!(b["fast_path"]["state"], "down", "{b:#}");
    assert_eq!(b["fast_path"]["evacuated"], true, "{b:#}");
    assert_ne!(health_of(&h, "green")["verdict"], "hard_down");
    let action = &h["recent_actions"][0];
    assert_eq!(
        (&action["kind"], &action["stack"], &action["version"]),
        (
            &Value::from("evacuated"),
            &Value::from("blue"),
            &Value::from(evac_version)
        ),
        "{h:#}"
    );
    // The evacuation is an incident for the operator: executed without approval, awaiting
    // a human for recovery (`switchyard incidents list`).
    let proposal = control.wait("an incident for blue", "/api/v1/incidents", |v| {
        v["incidents"]
            .as_array()?
            .iter()
            .find(|i| i["stack"] == "blue" && i["phase"] == "awaiting_approval")
            .map(|i| i["proposal"].as_str().unwrap_or_default().to_string())
    });
    assert!(
        proposal.starts_with("restore the weights of blue"),
        "{proposal}"
    );
    let listed = control.cli(&["incidents", "list"]);
    assert!(
        listed.contains("blue") && listed.contains("awaiting_approval"),
        "{listed}"
    );
    let detect_ms = h["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["stack"] == "blue" && c["status"] == "down")
        .filter_map(|c| c["since_ms"].as_u64())
        .min()
        .unwrap();

    let last_routed_ms = log
        .iter()
        .filter(|s| s.routed.as_deref() == Some("blue"))
        .map(|s| s.at_ms)
        .max()
        .unwrap();
    let failed = log
        .iter()
        .filter(|s| s.at_ms >= kill_ms && s.status != 200)
        .count();
    println!(
        "FAST_PATH kill_to_detect_ms={} kill_to_evacuated_ms={} kill_to_applied_ms={} \
         detect_to_last_routed_ms={} kill_to_last_routed_ms={} failed_requests={} requests={}",
        detect_ms as i64 - kill_ms as i64,
        evac_ms as i64 - kill_ms as i64,
        applied_ms as i64 - kill_ms as i64,
        last_routed_ms as i64 - detect_ms as i64,
        last_routed_ms as i64 - kill_ms as i64,
        failed,
        log.len()
    );

    // Blue comes back on its port: recovered, but it stays evacuated until an operator
    // undrains it.
    let blue = Stack::start("blue", blue.port);
    control.wait("blue marked recovered", "/api/v1/health", |h| {
        (health_of(h, "blue")["fast_path"]["state"] == "recovered").then_some(())
    });
    let h = control.get("/api/v1/health");
    assert!(
        h["recent_actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "recovered" && a["stack"] == "blue"),
        "{h:#}"
    );
    assert_eq!(
        spread(envoy.port, 4, 40, &[]),
        HashMap::from([("green".to_string(), 40)]),
        "a recovered stack must wait for a human"
    );
    let stacks = control.get("/api/v1/stacks");
    let b = stacks["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "blue")
        .unwrap();
    assert_eq!(b["evacuating"], true, "{b:#}");
    assert_eq!(b["health"]["fast_path"]["state"], "recovered", "{b:#}");
    assert_eq!(b["health"]["layers"]["infrastructure"], "up", "{b:#}");
    assert!(
        b["reason"].as_str().unwrap().starts_with("fast path: "),
        "{b:#}"
    );
    control.cli(&["stacks", "undrain", "blue", "--reason", "checked by hand"]);
    wait_routing(envoy.port, &["blue", "green"], WAIT).expect("undrain routes to blue again");
    let start = Instant::now();
    while !spread(envoy.port, 4, 40, &[]).contains_key("blue") {
        assert!(
            start.elapsed() < WAIT,
            "blue never served again after undrain"
        );
    }
    drop(blue);
}
