//! Drain and evacuate end to end: the real control service, the real Envoy
//! (`--concurrency 2`), the singleton in the real `.wasm`, the operator CLI. A user
//! holding an affinity cookie for a drained stack stays on it (no new users come, the
//! cookie is not extended) until the drain deadline; an evacuated stack's cookie holders
//! move at once and get a new cookie.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchyard_e2e::*;

fn policy(targets: &str) -> String {
    format!(
        r#"{{
  "stacks": [ {{ "name": "blue", "region": "us" }}, {{ "name": "green", "region": "us" }}, {{ "name": "canary", "region": "us" }} ],
  "affinity": {{ "ttl_s": 600 }},
  "default": {{ "targets": [ {targets} ], "affinity": true }},
  "debug_header": true
}}"#
    )
}

fn ok(out: std::process::Output) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "CLI failed: {text}");
    text
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

/// Requests with `cookie` over four connections (both Envoy workers): who served them
/// and whether any response set a new affinity cookie.
fn with_cookie(port: u16, cookie: &str, n: usize) -> (HashMap<String, usize>, Vec<String>) {
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(port).unwrap()).collect();
    let mut served = HashMap::new();
    let mut set = Vec::new();
    for i in 0..n {
        let r = clients[i % 4].get("/", &[("cookie", cookie)]).unwrap();
        *served
            .entry(r.served_by().unwrap_or("?").to_string())
            .or_insert(0) += 1;
        set.extend(r.affinity_cookie());
    }
    (served, set)
}

/// Poll until a request with `cookie` is served by `stack`; that response.
fn wait_moved(port: u16, cookie: &str, stack: &str, timeout: Duration) -> Option<Response> {
    let start = Instant::now();
    let mut c = Client::connect(port).unwrap();
    while start.elapsed() < timeout {
        let r = c.get("/", &[("cookie", cookie)]).unwrap();
        if r.served_by() == Some(stack) {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn drain_keeps_sticky_users_until_the_deadline_and_evacuate_moves_them_at_once() {
    let shop = Shop::start();
    let dir = TestDir::new("drain");
    let grpc = ReservedPort::new().unwrap();
    let control = ControlService::start(&dir.join("data"), grpc.port());
    let mut ports = shop.ports();
    ports.insert("control", grpc.port());
    ports.insert("node", 1);
    let envoy = Envoy::start(&policy(r#"{ "stack": "canary" }"#), &ports, 2);
    let file = dir.join("policy.json");
    std::fs::write(
        &file,
        policy(r#"{ "stack": "blue" }, { "stack": "green" }"#),
    )
    .unwrap();
    ok(control.cli(&["policy", "apply", file.to_str().unwrap()]));
    wait_routing(envoy.port, &["blue", "green"], Duration::from_secs(10))
        .expect("the control service's policy on every worker");

    let blue_user = user_on(envoy.port, "blue");
    let green_user = user_on(envoy.port, "green");
    assert_eq!(
        with_cookie(envoy.port, &blue_user, 20).0,
        HashMap::from([("blue".to_string(), 20)])
    );

    // Drain blue (no deadline yet): once applied, new users never get blue ...
    ok(control.cli(&["stacks", "drain", "blue", "--reason", "patching"]));
    wait_routing(envoy.port, &["green"], Duration::from_secs(10))
        .expect("the drain reaches every worker");
    assert_eq!(
        spread(envoy.port, 4, 200, &[]),
        HashMap::from([("green".to_string(), 200)]),
        "a new user went to the draining stack"
    );
    // ... while the user holding a blue cookie stays on blue, and the cookie is not
    // extended.
    let (served, set) = with_cookie(envoy.port, &blue_user, 40);
    assert_eq!(served, HashMap::from([("blue".to_string(), 40)]));
    assert!(
        set.is_empty(),
        "a cookie for a draining stack was set: {set:?}"
    );
    let list = ok(control.cli(&["stacks", "list"]));
    assert!(
        list.contains("draining (sticky until cookies expire)"),
        "{list}"
    );

    // A 2 s deadline: afterwards the blue user moves, with a new cookie (waited for by
    // polling).
    ok(control.cli(&["stacks", "drain", "blue", "--deadline", "2s"]));
    let list = ok(control.cli(&["stacks", "list"]));
    assert!(list.contains("draining (sticky until 20"), "{list}");
    let moved = wait_moved(envoy.port, &blue_user, "green", Duration::from_secs(30))
        .expect("the blue user moved after the drain deadline");
    let new_cookie = moved
        .affinity_cookie()
        .expect("a re-pointed user gets a new cookie");
    assert_eq!(
        with_cookie(envoy.port, &new_cookie, 20),
        (HashMap::from([("green".to_string(), 20)]), vec![])
    );

    // Blue back in service; evacuate green: its cookie holder moves at once (the cookie
    // is valid for ten minutes) and gets a new cookie in the same response.
    ok(control.cli(&["stacks", "undrain", "blue"]));
    ok(control.cli(&["stacks", "evacuate", "green", "--reason", "rolled back"]));
    let moved = wait_moved(envoy.port, &green_user, "blue", Duration::from_secs(10))
        .expect("the green user moved off the evacuated stack");
    let new_cookie = moved
        .affinity_cookie()
        .expect("an evacuated user gets a new cookie at once");
    assert_eq!(
        with_cookie(envoy.port, &new_cookie, 20),
        (HashMap::from([("blue".to_string(), 20)]), vec![])
    );
    assert_eq!(
        with_cookie(envoy.port, &green_user, 20).0,
        HashMap::from([("blue".to_string(), 20)]),
        "an old green cookie still reached the evacuated stack"
    );
    assert_eq!(
        spread(envoy.port, 4, 100, &[]),
        HashMap::from([("blue".to_string(), 100)])
    );
    let list = ok(control.cli(&["stacks", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("green") && l.contains("evacuating")),
        "{list}"
    );
}
