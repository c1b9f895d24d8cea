//! The chaos suite (`make chaos`; `#[ignore]`d, so not part of `make test`): the faults of
//! the paper's §9.2 as they reach a gateway, on the real Envoy with the real `.wasm`, the
//! demo storefront stacks and the real control service, all on loopback.
//!
//! Every scenario states its steady-state hypothesis, runs bounded load (a few
//! connections, each pacing its requests), checks the hypothesis holds before the fault,
//! injects the fault, and prints a verdict with figures: requests sent, client-visible
//! failures (anything but the expected status, transport errors included), time to
//! recovery (fault → last client-visible failure, or "none"), p99 latency before and
//! during the fault, and acknowledged data lost (control-service store and audit log,
//! where the scenario touches them). Verdict lines also go to `target/chaos/<name>.txt`
//! for docs/RELIABILITY.md.
//!
//! The assertions are on what must never happen (data loss, failures outside the
//! explained bound, a gateway that stops serving); figures are printed, never asserted
//! against the clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_e2e::*;

use crate::load::{ms, p99, Load, Sample, Stream};

// ---------------------------------------------------------------------------------------
// Verdicts

/// The figures of one scenario.
struct Verdict {
    name: &'static str,
    hypothesis: &'static str,
    lines: Vec<String>,
}

impl Verdict {
    fn new(name: &'static str, hypothesis: &'static str) -> Verdict {
        println!("\n=== chaos: {name}\nhypothesis: {hypothesis}");
        Verdict {
            name,
            hypothesis,
            lines: Vec::new(),
        }
    }

    fn line(&mut self, l: impl Into<String>) {
        let l = l.into();
        println!("  {l}");
        self.lines.push(l);
    }

    /// Summarises the samples of `streams` (all when empty): before `fault`, from `fault`
    /// to `heal` (or the end), and the time to recovery. A failure is any status not in
    /// `ok`. Returns (sent, failures from the fault on).
    fn load(
        &mut self,
        label: &str,
        samples: &[Sample],
        streams: &[&str],
        ok: &[u16],
        fault: Duration,
        heal: Option<Duration>,
    ) -> (usize, usize) {
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| streams.is_empty() || streams.contains(&s.stream))
            .collect();
        let bad = |s: &&Sample| !ok.contains(&s.status);
        let before: Vec<&Sample> = mine.iter().copied().filter(|s| s.at < fault).collect();
        let during: Vec<&Sample> = mine
            .iter()
            .copied()
            .filter(|s| s.at >= fault && heal.is_none_or(|h| s.at < h))
            .collect();
        let failures: Vec<&Sample> = mine
            .iter()
            .copied()
            .filter(|s| s.at >= fault)
            .filter(bad)
            .collect();
        let mut kinds: HashMap<u16, usize> = HashMap::new();
        for f in &failures {
            *kinds.entry(f.status).or_insert(0) += 1;
        }
        let mut kinds: Vec<String> = kinds
            .into_iter()
            .map(|(k, n)| {
                if k == 0 {
                    format!("{n}× transport error")
                } else {
                    format!("{n}× {k}")
                }
            })
            .collect();
        kinds.sort();
        // Recovery: from the fault to the end of the last failure (sent + latency).
        let recovery = failures
            .iter()
            .map(|f| (f.at + f.latency).saturating_sub(fault))
            .max();
        let mut by: HashMap<&str, usize> = HashMap::new();
        for s in &during {
            *by.entry(s.served_by.as_str()).or_insert(0) += 1;
        }
        let mut by: Vec<String> = by.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        by.sort();
        self.line(format!(
            "{label}: sent {} ({} before the fault, {} during); client-visible failures {} {}; \
             steady-state failures {}; recovery {}; p99 before {}, during {}; served during: {}",
            mine.len(),
            before.len(),
            during.len(),
            failures.len(),
            if kinds.is_empty() {
                String::new()
            } else {
                format!("({})", kinds.join(", "))
            },
            before.iter().copied().filter(bad).count(),
            recovery.map_or("none needed".to_string(), ms),
            ms(p99(&before)),
            ms(p99(&during)),
            by.join(" "),
        ));
        (mine.len(), failures.len())
    }

    fn finish(self) {
        let dir = root().join("target/chaos");
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = format!("### {}\n\nHypothesis: {}\n\n", self.name, self.hypothesis);
        for l in &self.lines {
            text.push_str(&format!("- {l}\n"));
        }
        std::fs::write(dir.join(format!("{}.txt", self.name)), text).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures

/// Two stacks, blue and green, half each; probes on /healthz close an open breaker.
const TWO: &str = r#"{
  "stacks": [
    { "name": "blue",  "region": "us", "health_path": "/healthz" },
    { "name": "green", "region": "us", "health_path": "/healthz" },
    { "name": "canary", "region": "us", "health_path": "/healthz" }
  ],
  "classify": { "channels": [ { "name": "mobile", "user_agent_contains": ["SwitchyardShop-iOS"] } ] },
  "breaker": { "consecutive_failures": 5, "open_ms": 2000 },
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ] },
  "debug_header": true
}"#;

fn policy_to(targets: &str) -> String {
    TWO.replace(
        r#""default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ] }"#,
        &format!(r#""default": {{ "targets": [ {targets} ] }}"#),
    )
}

/// Envoy (two workers) in front of `ports`; the control port is a reserved one that
/// refuses connections unless the scenario runs a control service there.
fn envoy(ports: &HashMap<&str, u16>, control: u16, policy: &str) -> Envoy {
    let mut p = ports.clone();
    p.insert("control", control);
    p.insert("node", 1);
    Envoy::start(policy, &p, 2)
}

fn fault(port: u16, body: &str) {
    let r = Client::connect(port)
        .unwrap()
        .request_with_body(
            "POST",
            "/admin/faults",
            &[("content-type", b"application/json")],
            Some(body.as_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

fn settle(d: Duration) {
    std::thread::sleep(d);
}

/// Sends SIGSTOP / SIGCONT to a process (the `kill` utility: the suite has no libc).
fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// A stand-in stack for path-level faults (the demo storefront's faults apply to every
/// shop path): answers every request 200 with `x-served-by`, except `fault_path`, which
/// per mode answers 500 (1) or never answers until the mode changes (2).
struct PathFaultStack {
    port: u16,
    mode: Arc<AtomicU8>,
}

impl PathFaultStack {
    fn start(name: &'static str, fault_path: &'static str) -> PathFaultStack {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(0));
        let m = mode.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let m = m.clone();
                std::thread::spawn(move || Self::serve(conn, name, fault_path, &m));
            }
        });
        PathFaultStack { port, mode }
    }

    fn serve(conn: TcpStream, name: &str, fault_path: &str, mode: &AtomicU8) {
        let mut out = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            let status = if path == fault_path {
                match mode.load(Ordering::SeqCst) {
                    1 => "500 Internal Server Error",
                    2 => {
                        while mode.load(Ordering::SeqCst) == 2 {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        "200 OK"
                    }
                    _ => "200 OK",
                }
            } else {
                "200 OK"
            };
            let msg =
                format!("HTTP/1.1 {status}\r\nx-served-by: {name}\r\ncontent-length: 2\r\n\r\nok");
            if out.write_all(msg.as_bytes()).is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios: the data plane

#[test]
#[ignore = "chaos suite: make chaos"]
fn stack_killed_under_load() {
    let mut shop = Shop::start();
    let control = ReservedPort::new().unwrap();
    let envoy = envoy(&shop.ports(), control.port(), TWO);
    let mut v = Verdict::new(
        "stack_killed_under_load",
        "every request is answered 200 by blue or green; when blue dies (kill -9), at most \
         consecutive_failures (5) requests per Envoy worker fail before its breaker opens, \
         and none after (probes on /healthz keep blue out while it is dead)",
    );
    let mut load = Load::start(envoy.port);
    load.add(&Stream::get("web", "/"), 8);
    settle(Duration::from_secs(3));
    let at = load.now();
    shop.stack("blue").kill();
    settle(Duration::from_secs(8));
    let samples = load.stop();
    let (_, failed) = v.load("all traffic", &samples, &[], &[200], at, None);
    let late = samples
        .iter()
        .filter(|s| s.at > at + Duration::from_secs(3) && s.status != 200)
        .count();
    v.line(format!("failures later than 3 s after the kill: {late}"));
    v.finish();
    // 2 workers × 5 consecutive failures, plus requests in flight at the kill (8 conns).
    assert!(
        failed <= 2 * 5 + 8,
        "failures beyond the breaker bound: {failed}"
    );
    assert_eq!(late, 0, "blue's breaker did not keep the dead stack out");
}

#[test]
#[ignore = "chaos suite: make chaos"]
fn stack_slowed_down() {
    let mut shop = Shop::start();
    let control = ReservedPort::new().unwrap();
    let envoy = envoy(&shop.ports(), control.port(), TWO);
    let mut v = Verdict::new(
        "stack_slowed_down",
        "300 ms added to every blue response: no request fails (slowness is not failure to \
         the data plane; moving traffic off a slow stack is the control plane's incident \
         workflow, with approval); blue's half of the traffic gets the latency, green's not",
    );
    let mut load = Load::start(envoy.port);
    load.add(&Stream::get("web", "/"), 8);
    settle(Duration::from_secs(3));
    let at = load.now();
    fault(shop.stack("blue").port, r#"{"latency_ms": 300}"#);
    settle(Duration::from_secs(6));
    let healed = load.now();
    fault(shop.stack("blue").port, r#"{"latency_ms": 0}"#);
    settle(Duration::from_secs(2));
    let samples = load.stop();
    let (_, failed) = v.load("all traffic", &samples, &[], &[200], at, Some(healed));
    let green: Vec<Sample> = samples
        .iter()
        .filter(|s| s.served_by == "green")
        .cloned()
        .collect();
    v.load("served by green", &green, &[], &[200], at, Some(healed));
    v.finish();
    assert_eq!(failed, 0);
}

#[test]
#[ignore = "chaos suite: make chaos"]
fn checkout_endpoint_timing_out() {
    let blue = PathFaultStack::start("blue", "/checkout");
    let green = PathFaultStack::start("green", "/checkout");
    let control = ReservedPort::new().unwrap();
    let ports = HashMap::from([("blue", blue.port), ("green", green.port)]);
    let envoy = envoy(&ports, control.port(), TWO);
    let mut v = Verdict::new(
        "checkout_endpoint_timing_out",
        "blue's POST /checkout stops answering (every other path fine): checkouts routed to \
         blue time out at the client (10 s); the stack-level breaker does not open (blue's \
         other paths succeed), browsing is unaffected; checkouts recover when blue answers again",
    );
    let mut load = Load::start(envoy.port);
    load.add(&Stream::get("browse", "/"), 6);
    load.add(
        &Stream {
            name: "checkout",
            method: "POST",
            path: "/checkout",
            headers: Vec::new(),
            pace: Duration::from_millis(20),
        },
        2,
    );
    settle(Duration::from_secs(3));
    let at = load.now();
    blue.mode.store(2, Ordering::SeqCst);
    settle(Duration::from_secs(12));
    let healed = load.now();
    blue.mode.store(0, Ordering::SeqCst);
    settle(Duration::from_secs(3));
    let samples = load.stop();
    v.load(
        "checkout",
        &samples,
        &["checkout"],
        &[200],
        at,
        Some(healed),
    );
    let (_, browse_failed) = v.load("browse", &samples, &["browse"], &[200], at, Some(healed));
    v.finish();
    assert_eq!(browse_failed, 0, "browsing hurt by a checkout fault");
}

#[test]
#[ignore = "chaos suite: make chaos"]
fn five_xx_on_one_path_only() {
    let blue = PathFaultStack::start("blue", "/checkout");
    let green = PathFaultStack::start("green", "/checkout");
    let control = ReservedPort::new().unwrap();
    let ports = HashMap::from([("blue", blue.port), ("green", green.port)]);
    let envoy = envoy(&ports, control.port(), TWO);
    let mut v = Verdict::new(
        "five_xx_on_one_path_only",
        "blue answers 500 on POST /checkout only: the client sees those 500s on blue's share \
         of checkouts; the breaker counts consecutive failures per stack, and blue's \
         successful browsing keeps resetting it, so only the control plane (KPI/incident) \
         moves checkouts; browsing is unaffected",
    );
    let mut load = Load::start(envoy.port);
    load.add(&Stream::get("browse", "/"), 6);
    load.add(
        &Stream {
            name: "checkout",
            method: "POST",
            path: "/checkout",
            headers: Vec::new(),
            pace: Duration::from_millis(20),
        },
        2,
    );
    settle(Duration::from_secs(3));
    let at = load.now();
    blue.mode.store(1, Ordering::SeqCst);
    settle(Duration::from_secs(6));
    let healed = load.now();
    blue.mode.store(0, Ordering::SeqCst);
    settle(Duration::from_secs(2));
    let samples = load.stop();
    v.load(
        "checkout",
        &samples,
        &["checkout"],
        &[200],
        at,
        Some(healed),
    );
    let (_, browse_failed) = v.load("browse", &samples, &["browse"], &[200], at, Some(healed));
    v.finish();
    assert_eq!(browse_failed, 0);
}

#[test]
#[ignore = "chaos suite: make chaos"]
fn flash_sale_spike_on_one_segment() {
    let shop = Shop::start();
    let control = ReservedPort::new().unwrap();
    let envoy = envoy(&shop.ports(), control.port(), TWO);
    let mut v = Verdict::new(
        "flash_sale_spike_on_one_segment",
        "the mobile segment goes from 4 to 40 connections (10×) while web stays at 4: no \
         request of either segment fails; web's p99 stays within a few ms of its baseline",
    );
    let mobile = Stream::get("mobile", "/products").header("user-agent", "SwitchyardShop-iOS/5");
    let mut load = Load::start(envoy.port);
    load.add(&Stream::get("web", "/"), 4);
    load.add(&mobile, 4);
    settle(Duration::from_secs(3));
    let at = load.now();
    load.add(&mobile, 36);
    settle(Duration::from_secs(6));
    let samples = load.stop();
    let (_, web_failed) = v.load("web", &samples, &["web"], &[200], at, None);
    let (_, mobile_failed) = v.load("mobile", &samples, &["mobile"], &[200], at, None);
    let rps = |name: &str, from: Duration, to: Duration| {
        samples
            .iter()
            .filter(|s| s.stream == name && s.at >= from && s.at < to)
            .count() as f64
            / (to - from).as_secs_f64()
    };
    let end = samples.last().map(|s| s.at).unwrap_or(at);
    v.line(format!(
        "mobile rps {:.0} before, {:.0} during the spike; web rps {:.0} before, {:.0} during",
        rps("mobile", Duration::ZERO, at),
        rps("mobile", at, end),
        rps("web", Duration::ZERO, at),
        rps("web", at, end)
    ));
    v.finish();
    assert_eq!(web_failed + mobile_failed, 0);
}

// ---------------------------------------------------------------------------------------
// Scenarios: the control plane

/// The control service on a data directory (redb store) and a fixed port, with the CLI.
struct Plane {
    dir: TestDir,
    grpc: ReservedPort,
    pushes: usize,
}

impl Plane {
    fn new(tag: &str) -> Plane {
        Plane {
            dir: TestDir::new(tag),
            grpc: ReservedPort::new().unwrap(),
            pushes: 0,
        }
    }

    fn start(&self, data: &std::path::Path) -> ControlService {
        ControlService::start(data, self.grpc.port())
    }

    /// `policy apply`; Ok(version) when acknowledged.
    fn push(&mut self, c: &ControlService, policy: &str) -> Result<u64, String> {
        self.pushes += 1;
        let file = self.dir.join(format!("policy-{}.json", self.pushes));
        std::fs::write(&file, policy).unwrap();
        let out = Command::new(switchyard_harness::workspace_bin("switchyard"))
            .args(["--server", &format!("http://127.0.0.1:{}", c.grpc)])
            .arg("--token-file")
            .arg(c.admin_token_file())
            .args(["--json", "--timeout", "3", "policy", "apply"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        v["version"]
            .as_u64()
            .or_else(|| v["policy"]["version"].as_u64())
            .ok_or_else(|| format!("no version in {text}"))
    }

    /// Every policy version in the store (`policy history`) and the audit entry count.
    fn history(&self, c: &ControlService) -> (Vec<u64>, usize) {
        let run = |args: &[&str]| {
            let out = Command::new(switchyard_harness::workspace_bin("switchyard"))
                .args(["--server", &format!("http://127.0.0.1:{}", c.grpc)])
                .arg("--token-file")
                .arg(c.admin_token_file())
                .arg("--json")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        };
        let versions = collect_u64(&run(&["policy", "history"]), "version");
        let audit = collect_u64(&run(&["audit", "list", "--limit", "1000"]), "seq").len();
        (versions, audit)
    }
}

/// Every number under a key named `key`, anywhere in the document.
fn collect_u64(v: &serde_json::Value, key: &str) -> Vec<u64> {
    let mut out = Vec::new();
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    if let Some(n) = x.as_u64() {
                        out.push(n);
                    }
                }
                out.extend(collect_u64(x, key));
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| out.extend(collect_u64(x, key))),
        _ => {}
    }
    out.sort();
    out.dedup();
    out
}

/// Polls until every request of a burst is served by `stack`; the time it took.
fn until_routed(port: u16, stack: &str) -> Option<Duration> {
    wait_routing(port, &[stack], Duration::from_secs(20))
}

fn control_down_scenario(name: &'static str, hypothesis: &'static str, stop_not_kill: bool) {
    let shop = Shop::start();
    let mut plane = Plane::new(name);
    let data = plane.dir.join("data");
    let mut control = plane.start(&data);
    let mut acked = vec![plane
        .push(&control, &policy_to(r#"{ "stack": "green" }"#))
        .unwrap()];
    let envoy = envoy(&shop.ports(), plane.grpc.port(), TWO);
    assert!(
        until_routed(envoy.port, "green").is_some(),
        "control policy served"
    );
    acked.push(
        plane
            .push(&control, &policy_to(r#"{ "stack": "blue" }"#))
            .unwrap(),
    );
    assert!(until_routed(envoy.port, "blue").is_some());
    let (versions_before, audit_before) = plane.history(&control);

    let mut v = Verdict::new(name, hypothesis);
    let mut load = Load::start(envoy.port);
    load.add(&Stream::get("web", "/"), 8);
    settle(Duration::from_secs(2));
    let at = load.now();
    if stop_not_kill {
        signal(control.proc.pid(), "STOP");
    } else {
        control.kill();
    }
    // While it is down, a push is not acknowledged (it must fail, not hang).
    let t = Instant::now();
    let refused = plane.push(&control, &policy_to(r#"{ "stack": "green" }"#));
    v.line(format!(
        "push while down: {} after {}",
        if refused.is_err() {
            "refused (not acknowledged)"
        } else {
            "ACKNOWLEDGED"
        },
        ms(t.elapsed())
    ));
    if let Ok(n) = refused {
        acked.push(n);
    }
    settle(Duration::from_secs(8));
    let back = load.now();
    let t = Instant::now();
    if stop_not_kill {
        signal(control.proc.pid(), "CONT");
    } else {
        control = plane.start(&data);
    }
    let version = loop {
        match plane.push(&control, &policy_to(r#"{ "stack": "green" }"#)) {
            Ok(n) => break n,
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "no push after recovery: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    acked.push(version);
    let push_took = t.elapsed();
    let routed = until_routed(envoy.port, "green");
    v.line(format!(
        "after the control service is back: push acknowledged after {}, Envoy routing the \
         pushed policy {} later",
        ms(push_took),
        routed.map_or("NEVER".into(), ms)
    ));
    let samples = load.stop();
    // Requests before `back` were served by the last-known-good snapshot (blue); later ones
    // move to green when the new version lands: both are 200s.
    let (_, failed) = v.load("all traffic", &samples, &[], &[200], at, Some(back));
    let (versions, audit) = plane.history(&control);
    let lost: Vec<&u64> = acked.iter().filter(|n| !versions.contains(n)).collect();
    v.line(format!(
        "acknowledged policy versions {acked:?}; in the store afterwards {versions:?}; \
         acknowledged data lost: {} versions; audit entries {audit_before} before, {audit} after \
         (history had {versions_before:?})",
        lost.len()
    ));
    v.finish();
    assert!(lost.is_empty(), "acknowledged versions lost: {lost:?}");
    assert!(audit >= audit_before, "audit entries lost");
    assert_eq!(
        failed, 0,
        "fail static: no request may fail while the control plane is gone"
    );
    assert!(routed.is_some(), "the Envoy never resynced");
}

#[test]
#[ignore = "chaos suite: make chaos"]
fn control_service_killed() {
    control_down_scenario(
        "control_service_killed",
        "kill -9 of the control service under load: no request fails (every VM keeps its \
         last-known-good snapshot); a push while it is down is refused, not half-applied; \
         restarted on the same store, every acknowledged version and audit entry is there \
         and the Envoy resyncs",
        false,
    );
}

#[test]
#[ignore = "chaos suite: make chaos"]
fn control_service_black_holed() {
    control_down_scenario(
        "control_service_black_holed",
        "SIGSTOP of the control service (connections accepted, nothing answered) under \
         load: no request fails; a push times out unacknowledged; after SIGCONT pushes land \
         and the Envoy follows, nothing acknowledged is lost",
        true,
    );
}

#[test]
#[ignore = "chaos suite: make chaos"]
fn traffic_shifted_onto_a_cold_stack() {
    let shop = Shop::start();
    let mut plane = Plane::new("cold");
    let data = plane.dir.join("data");
    let control = plane.start(&data);
    plane
        .push(&control, &policy_to(r#"{ "stack": "blue" }"#))
        .unwrap();
    // The canary has served nothing: no pooled connection in Envoy, nothing warmed.
    let envoy = envoy(&shop.ports(), plane.grpc.port(), TWO);
    assert!(until_routed(envoy.port, "blue").is_some());
    let mut v = Verdict::new(
        "traffic_shifted_onto_a_cold_stack",
        "all traffic moves in one push from blue to the canary, which has served nothing \
         (no warm connections in Envoy's pool, nothing cached): no request fails; \
         the first second on the cold stack has a p99 close to the warm one",
    );
    let mut load = Load::start(envoy.port);
    load.add(&Stream::get("web", "/products"), 8);
    settle(Duration::from_secs(3));
    let at = load.now();
    plane
        .push(&control, &policy_to(r#"{ "stack": "canary" }"#))
        .unwrap();
    settle(Duration::from_secs(5));
    let samples = load.stop();
    let (_, failed) = v.load("all traffic", &samples, &[], &[200], at, None);
    let cold: Vec<&Sample> = samples.iter().filter(|s| s.served_by == "canary").collect();
    let first = cold.first().map(|s| s.at).unwrap_or(at);
    let first_second: Vec<&Sample> = cold
        .iter()
        .copied()
        .filter(|s| s.at < first + Duration::from_secs(1))
        .collect();
    v.line(format!(
        "push → first request on the cold stack {}; its first second: {} requests, p99 {}",
        ms(first.saturating_sub(at)),
        first_second.len(),
        ms(p99(&first_second))
    ));
    v.finish();
    assert_eq!(failed, 0);
}

/// A tmpfs of `size` mounted at `dir` (root only), unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs (needs root)");
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
#[ignore = "chaos suite: make chaos (needs root for the tmpfs)"]
fn store_disk_full() {
    let shop = Shop::start();
    let mut plane = Plane::new("diskfull");
    let disk = SmallDisk::mount(&plane.dir.join("disk"), "8m");
    let data = disk.0.join("data");
    let mut control = plane.start(&data);
    let mut acked = vec![plane
        .push(&control, &policy_to(r#"{ "stack": "blue" }"#))
        .unwrap()];
    let envoy = envoy(&shop.ports(), plane.grpc.port(), TWO);
    assert!(until_routed(envoy.port, "blue").is_some());
    let mut v = Verdict::new(
        "store_disk_full",
        "the store's filesystem fills up (an 8 MB tmpfs, filled by another file): pushes \
         either succeed or fail with an error and change nothing; traffic keeps being \
         served; once space is freed pushes work again without a restart, and after a \
         restart every acknowledged version is there",
    );
    let mut load = Load::start(envoy.port);
    load.add(&Stream::get("web", "/"), 4);
    settle(Duration::from_secs(2));
    let at = load.now();
    // Fill the disk.
    let filler = disk.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);
    let mut refused = 0;
    let mut errors = Vec::new();
    for i in 0..5 {
        let stack = if i % 2 == 0 { "green" } else { "blue" };
        match plane.push(
            &control,
            &policy_to(&format!(r#"{{ "stack": "{stack}" }}"#)),
        ) {
            Ok(n) => acked.push(n),
            Err(e) => {
                refused += 1;
                errors.push(
                    e.lines()
                        .find(|l| l.contains("message"))
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                );
            }
        }
    }
    v.line(format!(
        "5 pushes on a full disk: {refused} refused, {} acknowledged (a push identical to \
         the version in force is acknowledged as unchanged, without a write); first error: {}",
        5 - refused,
        errors.first().cloned().unwrap_or_default()
    ));
    let alive = control.proc.exited().is_none();
    v.line(format!(
        "control service still running on a full disk: {alive}"
    ));
    std::fs::remove_file(&filler).unwrap();
    let freed = load.now();
    if !alive {
        control = plane.start(&data);
    }
    let t = Instant::now();
    // The redb store reopens itself after the I/O error: no restart.
    let after = loop {
        match plane.push(&control, &policy_to(r#"{ "stack": "green" }"#)) {
            Ok(n) => break n,
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "no push within 30 s of freeing space, without a restart: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    acked.push(after);
    v.line(format!(
        "space freed → push acknowledged after {} by the same process (no restart)",
        ms(t.elapsed())
    ));
    assert!(until_routed(envoy.port, "green").is_some());
    let samples = load.stop();
    let (_, failed) = v.load("all traffic", &samples, &[], &[200], at, Some(freed));
    control.kill();
    let control = plane.start(&data);
    let (versions, _) = plane.history(&control);
    let lost: Vec<&u64> = acked.iter().filter(|n| !versions.contains(n)).collect();
    v.line(format!(
        "acknowledged versions {acked:?}; after a restart the store has {versions:?}; \
         acknowledged data lost: {}",
        lost.len()
    ));
    v.finish();
    assert!(lost.is_empty(), "acknowledged versions lost: {lost:?}");
    assert_eq!(failed, 0);
}

#[test]
#[ignore = "chaos suite: make chaos"]
fn envoy_hot_restarted() {
    let shop = Shop::start();
    let control = ReservedPort::new().unwrap();
    let mut ports = shop.ports();
    ports.insert("control", control.port());
    ports.insert("node", 1);
    let mut envoy = Envoy::start(TWO, &ports, 2);
    // Epoch 1: the same bootstrap with the listener on the port epoch 0 bound (the
    // harness starts every listener on port 0; admin stays on 0), the same base id.
    let base_id = std::fs::read_to_string(envoy.inner.dir().join("base-id")).unwrap();
    let any = "address: 127.0.0.1, port_value: 0 }";
    let yaml = render_config(TWO, &ports);
    let listener_at = yaml
        .match_indices(any)
        .nth(1)
        .expect("the listener's address")
        .0;
    let yaml = format!(
        "{}address: 127.0.0.1, port_value: {} }}{}",
        &yaml[..listener_at],
        envoy.port,
        &yaml[listener_at + any.len()..]
    );
    let dir = TestDir::new("envoy-epoch1");
    std::fs::write(dir.join("envoy.yaml"), yaml).unwrap();
    let admin_path = dir.join("admin-address");
    let mut cmd = Command::new(envoy_bin());
    cmd.arg("-c")
        .arg(dir.join("envoy.yaml"))
        .args(["--concurrency", "2", "--log-level", "warning"])
        .args(["--base-id", base_id.trim(), "--restart-epoch", "1"])
        .args(["--drain-time-s", "2", "--parent-shutdown-time-s", "5"])
        .arg("--admin-address-path")
        .arg(&admin_path)
        .env("SWITCHYARD_AFFINITY_KEYS", TEST_KEYS);

    let mut v = Verdict::new(
        "envoy_hot_restarted",
        "a hot restart (a second Envoy, --restart-epoch 1, same base id) takes the listening \
         socket over while the old one drains for 2 s and exits after 5 s: requests keep \
         being served throughout; the only client-visible failures are requests racing a \
         keep-alive connection the draining Envoy closes (at most one per connection)",
    );
    let mut load = Load::start(envoy.port);
    load.add(&Stream::get("web", "/"), 8);
    settle(Duration::from_secs(3));
    let at = load.now();
    let mut child = Proc::spawn("envoy-epoch1", cmd, dir.path()).unwrap();
    let admin: std::net::SocketAddr = child
        .wait_until("the admin address file", Duration::from_secs(30), |_| {
            std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
        .unwrap();
    child
        .wait_http_ok(admin, "/ready", Duration::from_secs(30))
        .unwrap();
    let ready = load.now();
    settle(Duration::from_secs(8));
    let parent_gone = envoy.inner.proc().exited().is_some();
    let samples = load.stop();
    v.line(format!(
        "new Envoy ready {} after it was started; old Envoy exited: {parent_gone}",
        ms(ready - at)
    ));
    let (_, failed) = v.load("all traffic", &samples, &[], &[200], at, None);
    let after = samples
        .iter()
        .filter(|s| s.at > ready + Duration::from_secs(6) && s.status != 200)
        .count();
    v.line(format!(
        "failures after the old Envoy's shutdown time: {after}"
    ));
    v.finish();
    assert!(parent_gone, "the old Envoy did not hand over and exit");
    assert_eq!(after, 0, "the new Envoy does not serve");
    assert!(failed <= 8, "more failures than connections: {failed}");
}
