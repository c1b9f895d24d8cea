//! Per-rule factor overrides (a rule-scoped rollout): a stack's share moves within one
//! rule's traffic while every other rule routes as before; a drain keeps the rule's
//! cookie holders, an evacuation moves them at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use switchyard_filter::affinity::Keyring;
use switchyard_filter::classify::Request;
use switchyard_filter::policy::{validate_json, Policy};
use switchyard_filter::router::{AffinityEvent, Decision, Outcome, Router, StackHealth};
use switchyard_filter::snapshot::StackState;

const KEYS: &str = "k2=current-secret-0123456789";
const T0: u64 = 1_795_737_600_000;

/// blue and green share every route 50/50; rule `beta` takes `/beta`.
fn policy() -> Arc<Policy> {
    let json = r#"{ "stacks": [ { "name": "blue", "region": "x" }, { "name": "green", "region": "x" } ],
        "affinity": { "cookie": "sy_aff", "ttl_s": 3600, "secure": false, "epoch": 1 },
        "rules": [ { "id": "beta", "match": { "path_prefixes": ["/beta"] },
                     "route": { "targets": [ { "stack": "blue" }, { "stack": "green" } ], "affinity": true } } ],
        "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ], "affinity": true } }"#;
    Arc::new(validate_json(json).unwrap().policy)
}

fn decide(r: &mut Router, path: &str, cookie: Option<&str>, now_ms: u64) -> Decision {
    let mut h: Vec<(&[u8], &[u8])> = vec![(b":path", path.as_bytes())];
    if let Some(c) = cookie {
        h.push((b"cookie", c.as_bytes()));
    }
    r.decide(&Request {
        headers: &h,
        source: None,
        now_ms,
    })
}

fn stack(p: &Policy, d: &Decision) -> String {
    match d.outcome {
        Outcome::Stack { id, .. } => p.stacks[id].name.clone(),
        Outcome::Local(_) => "<local>".into(),
        Outcome::Queue { .. } => "<queue>".into(),
    }
}

/// Green's count among `n` new users of `path`.
fn green_of(r: &mut Router, p: &Policy, path: &str, n: u64) -> u64 {
    (0..n)
        .filter(|i| stack(p, &decide(r, path, None, T0 + i)) == "green")
        .count() as u64
}

fn full(r: &mut Router, green_factor: u32) {
    r.set_stacks([
        StackHealth {
            name: "blue",
            factor: 100,
            healthy: true,
            sticky_until_ms: u64::MAX,
        },
        StackHealth {
            name: "green",
            factor: green_factor,
            healthy: true,
            sticky_until_ms: if green_factor > 0 { u64::MAX } else { 0 },
        },
    ]);
}

/// Apply `(rule, stack, percent, evacuating)` states the way the worker does.
fn over(r: &mut Router, states: &[(&str, &str, u32, bool)]) {
    let states: Vec<StackState> = states
        .iter()
        .map(|&(rule, name, weight_percent, evacuating)| StackState {
            name: name.into(),
            weight_percent,
            evacuating,
            rule: rule.into(),
            ..Default::default()
        })
        .collect();
    r.set_rule_stacks(&states);
}

/// A router and the cookie of a user it put on green.
fn green_user(p: &Arc<Policy>) -> (Router, String) {
    let mut r = Router::new(Arc::clone(p), Keyring::parse(KEYS).ok());
    for i in 0..10 {
        let d = decide(&mut r, "/beta", None, T0 + i);
        if stack(p, &d) == "green" {
            let set = d.set_cookie.unwrap();
            return (r, set.split(';').next().unwrap().to_string());
        }
    }
    panic!("nobody was sent to green");
}

#[test]
fn an_override_moves_the_share_within_its_rule_only() {
    let p = policy();
    let mut r = Router::new(Arc::clone(&p), None);
    full(&mut r, 100);
    assert_eq!(green_of(&mut r, &p, "/beta", 1000), 500);
    // green at 25 % of its weight in beta: 1 : 0.25 → a fifth of beta's new users.
    over(&mut r, &[("beta", "green", 25, false)]);
    assert_eq!(green_of(&mut r, &p, "/beta", 1000), 200);
    assert_eq!(
        green_of(&mut r, &p, "/", 1000),
        500,
        "the default rule moved"
    );
    // The override multiplies the stack's own factor: green at 50 % everywhere and 25 %
    // of that in beta (1 : 0.125 → 1/9 of beta).
    full(&mut r, 50);
    over(&mut r, &[("beta", "green", 25, false)]);
    assert_eq!(green_of(&mut r, &p, "/beta", 900), 100);
    assert_eq!(green_of(&mut r, &p, "/", 900), 300);
    // ... so it never brings back a stack weighted to 0.
    full(&mut r, 0);
    over(&mut r, &[("beta", "green", 100, false)]);
    assert_eq!(green_of(&mut r, &p, "/beta", 100), 0);
    // set_stacks clears them; unknown rules and stacks are ignored.
    full(&mut r, 100);
    assert_eq!(green_of(&mut r, &p, "/beta", 1000), 500);
    over(
        &mut r,
        &[("nope", "green", 0, false), ("beta", "purple", 0, true)],
    );
    assert_eq!(green_of(&mut r, &p, "/beta", 1000), 500);
    // Both stacks of the rule overridden: the release takes all of it.
    over(
        &mut r,
        &[("beta", "green", 100, false), ("beta", "blue", 0, false)],
    );
    assert_eq!(green_of(&mut r, &p, "/beta", 100), 100);
    assert_eq!(green_of(&mut r, &p, "/", 100), 50);
}

#[test]
fn a_rule_drain_keeps_the_rules_cookie_holders_without_extending_their_cookies() {
    let p = policy();
    let (mut r, cookie) = green_user(&p);
    full(&mut r, 100);
    over(&mut r, &[("beta", "green", 0, false)]);
    assert_eq!(
        green_of(&mut r, &p, "/beta", 200),
        0,
        "new users to a drained stack"
    );
    // Past half the cookie's life: still green, never refreshed.
    let d = decide(&mut r, "/beta", Some(&cookie), T0 + 2_000_000);
    assert_eq!(
        (stack(&p, &d), d.affinity),
        ("green".into(), AffinityEvent::Hit)
    );
    assert_eq!(d.set_cookie, None);
    // Elsewhere green takes traffic: the cookie is honoured and refreshed as usual.
    let d = decide(&mut r, "/", Some(&cookie), T0 + 2_000_000);
    assert_eq!(stack(&p, &d), "green");
    assert!(d.set_cookie.is_some());
}

#[test]
fn a_rule_evacuation_moves_the_rules_cookie_holders_at_once_and_no_one_else() {
    let p = policy();
    let (mut r, cookie) = green_user(&p);
    full(&mut r, 100);
    over(&mut r, &[("beta", "green", 0, true)]);
    let d = decide(&mut r, "/beta", Some(&cookie), T0 + 1);
    assert_eq!(
        (stack(&p, &d), d.affinity),
        ("blue".into(), AffinityEvent::Miss)
    );
    assert!(
        d.set_cookie.unwrap().contains("blue"),
        "re-pointed in the same response"
    );
    let d = decide(&mut r, "/", Some(&cookie), T0 + 1);
    assert_eq!(
        (stack(&p, &d), d.affinity),
        ("green".into(), AffinityEvent::Hit)
    );
}
