//! Conformance: the scenario files of the wasmtime host (`tests/proxy-host/scenarios`) run
//! here against the real Envoy with the built `.wasm`. Both runners must agree; a step
//! that fails here but passes on the host is a fidelity bug of the host (or the reverse).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard_e2e::*;
use switchyard_proxy_host::scenario::{OneOrMany, Scenario};

fn allows(o: &OneOrMany, s: &str) -> bool {
    match o {
        OneOrMany::One(x) => x == s,
        OneOrMany::Many(v) => v.iter().any(|x| x == s),
    }
}

fn corrupt(value: &str) -> String {
    let mut v = value.to_string();
    let last = v.pop().unwrap_or('A');
    v.push(if last == 'A' { 'B' } else { 'A' });
    v
}

/// Run one scenario on a fresh one-worker Envoy; returns every failed expectation.
fn run(s: &Scenario) -> Vec<String> {
    let policy = match (&s.policy, &s.policy_inline) {
        (Some(p), None) => std::fs::read_to_string(root().join(p)).unwrap(),
        (None, Some(v)) => serde_json::to_string_pretty(v).unwrap(),
        _ => panic!("{}: exactly one of policy and policy_inline", s.name),
    };
    let stacks: Vec<FakeStack> = ["blue", "green", "canary", "eu"].iter().map(|n| FakeStack::start(n)).collect();
    let ports: HashMap<&str, u16> = stacks.iter().map(|f| (f.name.as_str(), f.port)).collect();
    let keys = s.affinity_keys.clone().unwrap_or_else(|| TEST_KEYS.to_string());
    // The filter alone, as on the host: no identity layer in front of it (the shipped
    // bootstrap strips client-set claim headers before jwt_authn; scenarios set them).
    let envoy = Envoy::start_with(&policy, &ports, 1, &keys, true);
    let mut client = envoy.client();
    let mut failures = Vec::new();
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut served: HashMap<String, String> = HashMap::new();
    for step in &s.steps {
        if step.advance_ms > 0 {
            std::thread::sleep(Duration::from_millis(step.advance_ms));
        }
        for f in &stacks {
            let st = step.upstreams.get(&f.name).or_else(|| s.upstreams.get(&f.name)).map_or(200, |u| u.status);
            f.status.store(st, Ordering::SeqCst);
        }
        for i in 0..step.repeat {
            let r = &step.request;
            let mut headers: Vec<(String, String)> = r.headers.clone();
            for (n, v) in &r.cookies {
                headers.push(("cookie".into(), format!("{n}={v}")));
            }
            if let Some(from) = &r.cookie_from {
                match cookies.get(from) {
                    Some(c) => {
                        let c = if r.cookie_forged { corrupt(c) } else { c.clone() };
                        headers.push(("cookie".into(), c));
                    }
                    None => failures.push(format!("{}: step '{from}' set no cookie", step.name)),
                }
            }
            if let Some(src) = &r.source {
                // Envoy takes the remote address from XFF (use_remote_address: false).
                let ip = src.rsplit_once(':').filter(|_| !src.contains('[') && src.matches(':').count() == 1).map_or(src.as_str(), |(ip, _)| ip);
                headers.push(("x-forwarded-for".into(), ip.trim_matches(|c| c == '[' || c == ']').to_string()));
            }
            if let Some(a) = &r.authority {
                headers.push(("host".into(), a.clone()));
            }
            let before: usize = stacks.iter().map(|f| f.received.load(Ordering::SeqCst)).sum();
            let h: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
            let resp = client.request(&r.method, &r.path, &h).unwrap();
            let after: usize = stacks.iter().map(|f| f.received.load(Ordering::SeqCst)).sum();
            let upstream_saw = after > before;
            let stack = if upstream_saw { resp.served_by().map(str::to_string) } else { None };
            let tag = format!("{} #{i}", step.name);
            let e = &step.expect;
            if let Some(want) = &e.stack {
                match &stack {
                    Some(got) if allows(want, got) => {}
                    got => failures.push(format!("{tag}: stack {got:?}, want {want:?}")),
                }
            }
            if let Some(no) = e.no_upstream {
                if no == upstream_saw {
                    failures.push(format!("{tag}: upstream saw the request: {upstream_saw}"));
                }
            }
            if let Some(st) = e.status {
                if resp.status != st {
                    failures.push(format!("{tag}: status {}, want {st}", resp.status));
                }
            }
            if let Some(ra) = &e.retry_after {
                if resp.header("retry-after") != Some(ra.as_str()) {
                    failures.push(format!("{tag}: retry-after {:?}, want {ra}", resp.header("retry-after")));
                }
            }
            if let Some(b) = &e.body_contains {
                if !resp.text().contains(b.as_str()) {
                    failures.push(format!("{tag}: body {:?} lacks {b:?}", resp.text()));
                }
            }
            if let Some(p) = &e.decision_prefix {
                if !resp.header("x-switchyard-decision").is_some_and(|d| d.starts_with(p.as_str())) {
                    failures.push(format!("{tag}: decision {:?}, want prefix {p:?}", resp.header("x-switchyard-decision")));
                }
            }
            let set_cookie = resp.affinity_cookie();
            if let Some(want) = e.set_cookie {
                if set_cookie.is_some() != want {
                    failures.push(format!("{tag}: set-cookie {set_cookie:?}, want present={want}"));
                }
            }
            if let Some(other) = &e.same_stack_as {
                if served.get(other) != stack.as_ref() || stack.is_none() {
                    failures.push(format!("{tag}: stack {stack:?}, want the same as '{other}' ({:?})", served.get(other)));
                }
            }
            if let Some(c) = set_cookie {
                cookies.insert(step.name.clone(), c);
            }
            if let Some(st) = stack {
                served.insert(step.name.clone(), st);
            }
        }
    }
    if !failures.is_empty() {
        eprintln!("envoy log:\n{}", envoy.log());
    }
    failures
}

#[test]
fn scenario_files_hold_on_the_real_envoy() {
    let dir = root().join("tests/proxy-host/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir.display());
    let mut all = Vec::new();
    for f in &files {
        let s = Scenario::load(f).unwrap();
        let failures = run(&s);
        println!("scenario {}: {} steps, {} failures", s.name, s.steps.len(), failures.len());
        all.extend(failures.into_iter().map(|x| format!("{}: {x}", s.name)));
    }
    assert!(all.is_empty(), "Envoy disagrees with the scenarios:\n{}", all.join("\n"));
}
