//! SLO-gated rollouts end to end: the real control service with the brain ticking
//! (windows, guardrails and step durations compressed by its config file), the real
//! Envoy (`--concurrency 2`) reporting telemetry from the real `.wasm`, demo stacks under
//! steady client load.
//!
//! - A healthy green goes through every step to 100 %; new users end up on green and the
//!   audit chain holds every decision.
//! - A green failing 8 % of its requests halts at the first step with a rollback
//!   proposal; nothing rolls back until a human approves; the approved rollback
//!   evacuates green, and a user holding a green cookie moves at once.
//! - A rollout scoped to one rule moves green's share of that rule's traffic only: the
//!   default rule's blue/green split stays as the policy says, through every step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_e2e::*;

const POLICY: &str = r#"{
  "stacks": [ { "name": "blue", "region": "us" }, { "name": "green", "region": "us" },
              { "name": "canary", "region": "us" } ],
  "affinity": { "ttl_s": 600 },
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ], "affinity": true },
  "debug_header": true
}"#;

/// One-second windows, a fast tick, and guardrails loose enough for seconds-long steps.
const CONFIG: &str = r#"
series_window_ms = 1000
series_grace_ms = 300

[autopilot]
tick_ms = 200
shift_window_s = 1
max_shift_percent = 100
approval_above_percent = 100
lease_s = 5
"#;

fn ok(out: std::process::Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "CLI failed: {text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: std::process::Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// New visitors (no cookie) over four connections until stopped; counts who served them
/// per second of the run.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<HashMap<String, u64>>>>,
    sent: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        Load::on(port, "/", 4)
    }

    /// New visitors to `path` over `conns` connections.
    fn on(port: u16, path: &'static str, conns: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(vec![HashMap::new()]));
        let sent = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let threads = (0..conns)
            .map(|_| {
                let (stop, served, sent) = (stop.clone(), served.clone(), sent.clone());
                std::thread::spawn(move || {
                    let mut c = Client::connect(port).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(r) = c.get(path, &[]) else { continue };
                        sent.fetch_add(1, Ordering::Relaxed);
                        let who = if r.status == 200 {
                            r.served_by().unwrap_or("?").to_string()
                        } else {
                            format!("status {}", r.status)
                        };
                        let sec = start.elapsed().as_secs() as usize;
                        let mut s = served.lock().unwrap();
                        while s.len() <= sec {
                            s.push(HashMap::new());
                        }
                        *s[sec].entry(who).or_insert(0) += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            served,
            sent,
            threads,
        }
    }

    /// Who served the last `secs` full seconds.
    fn recent(&self, secs: usize) -> HashMap<String, u64> {
        let s = self.served.lock().unwrap();
        let end = s.len().saturating_sub(1);
        let mut out = HashMap::new();
        for m in &s[end.saturating_sub(secs)..end] {
            for (k, v) in m {
                *out.entry(k.clone()).or_insert(0) += v;
            }
        }
        out
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

struct Setup {
    shop: Shop,
    control: ControlService,
    envoy: Envoy,
    _grpc: ReservedPort,
    _dir: TestDir,
}

fn setup(tag: &str) -> Setup {
    let s = setup_with(tag, POLICY);
    // The release starts with no traffic.
    ok(s.control
        .cli(&["stacks", "weight", "green", "0", "--reason", "new release"]));
    wait_routing(s.envoy.port, &["blue"], Duration::from_secs(10))
        .expect("green at 0 on every worker");
    s
}

fn setup_with(tag: &str, policy: &str) -> Setup {
    let shop = Shop::start();
    let dir = TestDir::new(tag);
    let grpc = ReservedPort::new().unwrap();
    let config = dir.join("control.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let control = ControlService::start_with(
        &dir.join("data"),
        grpc.port(),
        &["--config", config.to_str().unwrap()],
    );
    let mut ports = shop.ports();
    ports.insert("control", grpc.port());
    ports.insert("node", 1);
    let envoy = Envoy::start(policy, &ports, 2);
    let file = dir.join("policy.json");
    std::fs::write(&file, policy).unwrap();
    ok(control.cli(&["policy", "apply", file.to_str().unwrap()]));
    Setup {
        shop,
        control,
        envoy,
        _grpc: grpc,
        _dir: dir,
    }
}

/// Poll the rollout until `done` says so (bounded); the last status.
fn wait_rollout(
    control: &ControlService,
    id: &str,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = json(control.cli(&["--json", "rollout", "status", id]));
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "rollout {id} after {:?}: {s:#}\n{}",
            start.elapsed(),
            control.proc.tail(30)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_healthy_release_goes_through_every_step_to_100_percent() {
    let s = setup("rollout-healthy");
    let load = Load::start(s.envoy.port);
    let started = Instant::now();
    let out = ok(s.control.cli(&[
        "rollout",
        "start",
        "--stack",
        "green",
        "--stable",
        "blue",
        "--plan",
        "0,20,50,100",
        "--step",
        "2s",
        "--max-step",
        "60s",
        "--warmup",
        "1s",
        "--max-error-rate",
        "0.02",
        "--no-kpi-gates",
        "--id",
        "r1",
    ]));
    assert!(
        out.starts_with("rollout r1: green vs blue (policy), warming step 1/3"),
        "{out}"
    );

    // Step 2 (50 %) observed: about half of the new users on green.
    let at_50 = wait_rollout(&s.control, "r1", Duration::from_secs(90), |v| {
        v["phase"] == "observing" && v["step"] == 2
    });
    assert_eq!(at_50["steps"][0]["outcome"], "passed", "{at_50:#}");
    let step1 = at_50["steps"][0]["gates"].as_array().unwrap();
    assert!(
        step1
            .iter()
            .any(|g| g["gate"] == "error_rate" && g["verdict"] == "pass"),
        "{step1:?}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mid = load.recent(1);
    let green = *mid.get("green").unwrap_or(&0) as f64;
    let total: u64 = mid.values().sum();
    let share = green / total as f64;
    assert!(
        (0.3..0.7).contains(&share),
        "share at the 50 % step: {mid:?}"
    );

    let end = wait_rollout(&s.control, "r1", Duration::from_secs(120), |v| {
        v["phase"] == "completed"
    });
    eprintln!("ROLLOUT healthy: completed in {:?}", started.elapsed());
    assert_eq!(end["share_percent"], 100);
    for (i, step) in end["steps"].as_array().unwrap().iter().enumerate().take(2) {
        assert_eq!(step["outcome"], "passed", "step {i}: {end:#}");
    }
    // Blue drains: soon a whole second of new users all go to green (the state says
    // completed as soon as it is persisted; the last move reaches Envoy a tick later).
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let last = load.recent(1);
        if last.keys().collect::<Vec<_>>() == vec!["green"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "new users still reach blue after completion: {last:?}"
        );
    }
    let sent = load.stop();
    eprintln!("ROLLOUT healthy: {sent} requests");

    // Every step is in the audit log, and the chain verifies.
    let audit = json(s.control.cli(&[
        "--json",
        "audit",
        "list",
        "--subject",
        "rollout/r1",
        "--limit",
        "1000",
    ]));
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries.len() >= 4, "{audit:#}");
    let moves = json(s.control.cli(&[
        "--json",
        "audit",
        "list",
        "--subject",
        "stacks/",
        "--limit",
        "1000",
    ]));
    assert!(
        moves["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "rollout:r1"),
        "{moves:#}"
    );
    let verify = json(s.control.cli(&["--json", "audit", "verify"]));
    assert_eq!(verify["ok"], true, "{verify:#}");
    drop(s.shop);
}

#[test]
fn a_failing_release_halts_and_rolls_back_only_after_approval() {
    let mut s = setup("rollout-bad");
    // Green answers 8 % of requests with 500.
    let green_port = s.shop.stack("green").port;
    let r = Client::connect(green_port)
        .unwrap()
        .request_with_body(
            "POST",
            "/admin/faults",
            &[("content-type", b"application/json")],
            Some(br#"{"error_rate": 0.08}"#),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let load = Load::start(s.envoy.port);
    ok(s.control.cli(&[
        "rollout",
        "start",
        "--stack",
        "green",
        "--stable",
        "blue",
        "--plan",
        "0,5,20,50,100",
        "--step",
        "2s",
        "--max-step",
        "60s",
        "--warmup",
        "1s",
        "--max-error-rate",
        "0.02",
        "--no-kpi-gates",
        "--id",
        "r2",
    ]));
    let halted = wait_rollout(&s.control, "r2", Duration::from_secs(90), |v| {
        v["phase"] == "halted"
    });
    assert_eq!(halted["step"], 1, "{halted:#}");
    assert_eq!(
        halted["share_percent"], 5,
        "halted at the first (5 %) step: {halted:#}"
    );
    let gates = halted["steps"][0]["gates"].as_array().unwrap();
    assert!(
        gates.iter().any(|g| g["verdict"] == "fail"),
        "a failed gate: {gates:?}"
    );
    let text = ok(s.control.cli(&["rollout", "status", "r2"]));
    assert!(text.contains("fail"), "{text}");

    // A green user, then: nothing moves before approval.
    let mut c = Client::connect(s.envoy.port).unwrap();
    let cookie = (0..200)
        .find_map(|_| {
            let r = c.get("/", &[]).unwrap();
            (r.served_by() == Some("green"))
                .then(|| r.affinity_cookie())
                .flatten()
        })
        .expect("a user on green at the halted step");
    std::thread::sleep(Duration::from_secs(2));
    let still = json(s.control.cli(&["--json", "rollout", "status", "r2"]));
    assert_eq!(still["phase"], "halted");
    assert_eq!(
        still["share_percent"], halted["share_percent"],
        "moved without approval"
    );
    let proposals = json(s.control.cli(&[
        "--json",
        "audit",
        "list",
        "--subject",
        "rollout/r2",
        "--limit",
        "100",
    ]));
    assert!(
        proposals["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "recommendation"),
        "{proposals:#}"
    );

    // Approve: green is evacuated, its cookie holder moves at once.
    let out = ok(s
        .control
        .cli(&["--actor", "alice", "rollout", "rollback", "r2"]));
    assert!(out.contains("rolled_back"), "{out}");
    let start = Instant::now();
    loop {
        let r = c.get("/", &[("cookie", &cookie)]).unwrap();
        if r.served_by() == Some("blue") {
            eprintln!(
                "ROLLOUT bad: green user moved {:?} after approval",
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the green user did not move"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let list = ok(s.control.cli(&["stacks", "list"]));
    assert!(list.contains("evacuat"), "{list}");
    let end = json(s.control.cli(&["--json", "rollout", "status", "r2"]));
    eprintln!(
        "ROLLOUT bad: blast radius {:.4} (users who reached green)",
        end["blast_radius"].as_f64().unwrap_or(-1.0)
    );
    load.stop();
}

/// Rule `catalog` (/products) and the default rule both split blue/green 50/50.
const RULE_POLICY: &str = r#"{
  "stacks": [ { "name": "blue", "region": "us" }, { "name": "green", "region": "us" } ],
  "affinity": { "ttl_s": 600 },
  "rules": [ { "id": "catalog", "match": { "path_prefixes": ["/products"] },
               "route": { "targets": [ { "stack": "blue" }, { "stack": "green" } ], "affinity": true } } ],
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ], "affinity": true },
  "debug_header": true
}"#;

/// Green's share of what `load` saw served in its last `secs` full seconds.
fn green_share(load: &Load, secs: usize) -> (f64, HashMap<String, u64>) {
    let seen = load.recent(secs);
    let total: u64 = seen.values().sum();
    let green = *seen.get("green").unwrap_or(&0) as f64;
    (green / total.max(1) as f64, seen)
}

#[test]
fn a_rule_scoped_rollout_moves_green_within_that_rule_only() {
    let s = setup_with("rollout-rule", RULE_POLICY);
    let catalog = Load::on(s.envoy.port, "/products", 2);
    let home = Load::on(s.envoy.port, "/", 2);
    std::thread::sleep(Duration::from_millis(2500));
    let (before, seen) = green_share(&home, 2);
    assert!(
        (0.35..0.65).contains(&before),
        "default rule before: {seen:?}"
    );

    let out = ok(s.control.cli(&[
        "rollout",
        "start",
        "--stack",
        "green",
        "--stable",
        "blue",
        "--scope",
        "catalog",
        "--plan",
        "0,10,100",
        "--step",
        "2s",
        "--max-step",
        "60s",
        "--warmup",
        "1s",
        "--max-error-rate",
        "0.02",
        "--no-kpi-gates",
        "--id",
        "rc",
    ]));
    assert!(
        out.starts_with("rollout rc: green vs blue (catalog), warming step 1/2"),
        "{out}"
    );

    // The 10 % step observed: about a tenth of the catalog's new users on green, half of
    // the default rule's, as before.
    let at_10 = wait_rollout(&s.control, "rc", Duration::from_secs(90), |v| {
        v["phase"] == "observing" && v["step"] == 1
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (rule, seen) = green_share(&catalog, 1);
    assert!(
        (0.02..0.25).contains(&rule),
        "catalog at the 10 % step: {seen:?}"
    );
    let (other, seen) = green_share(&home, 1);
    assert!(
        (0.35..0.65).contains(&other),
        "default rule moved: {seen:?}"
    );
    // The stacks' own factors did not move: only the rule's did.
    let stacks = json(s.control.cli(&["--json", "stacks", "list"]));
    for st in stacks["stacks"].as_array().unwrap() {
        assert_eq!(st["effective_weight_percent"], 100, "{stacks:#}");
    }

    let end = wait_rollout(&s.control, "rc", Duration::from_secs(120), |v| {
        v["phase"] == "completed"
    });
    assert_eq!(end["steps"][0]["outcome"], "passed", "{end:#}");
    // Exposure was measured within the rule (its requests only), not over all traffic.
    let exposure = end["steps"][0]["exposure"].as_f64().unwrap_or(f64::NAN);
    assert!((0.02..0.25).contains(&exposure), "{at_10:#}\n{end:#}");
    // The catalog soon goes all to green; the default rule still splits.
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let last = catalog.recent(1);
        if last.keys().collect::<Vec<_>>() == vec!["green"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "new catalog users still reach blue after completion: {last:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(1100));
    let (other, seen) = green_share(&home, 1);
    assert!(
        (0.35..0.65).contains(&other),
        "default rule after: {seen:?}"
    );
    catalog.stop();
    home.stop();

    // Every move is a rule_share version by the rollout, audited; the chain verifies.
    let moves = json(s.control.cli(&[
        "--json",
        "audit",
        "list",
        "--subject",
        "rule_stacks",
        "--limit",
        "100",
    ]));
    let moves = moves["entries"].as_array().unwrap();
    assert!(moves.len() >= 2, "{moves:#?}");
    assert!(
        moves.iter().all(|e| e["actor"] == "rollout:rc"),
        "{moves:#?}"
    );
    let verify = json(s.control.cli(&["--json", "audit", "verify"]));
    assert_eq!(verify["ok"], true, "{verify:#}");
    drop(s.shop);
}
