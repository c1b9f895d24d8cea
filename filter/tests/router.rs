//! The decision pipeline, natively: classification → rule → health → balance → affinity.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;
use switchyard_filter::affinity::Keyring;
use switchyard_filter::classify::Request;
use switchyard_filter::policy::{validate_json, Policy};
use switchyard_filter::router::{AffinityEvent, How, Outcome, Router, StackHealth};
use switchyard_filter::snapshot::StackState;

const KEYS: &str = "k2=current-secret-0123456789,k1=previous-secret-0123456789";
const T0: u64 = 1_795_737_600_000; // 2026-11-27T00:00:00Z

fn policy(json: &str) -> Arc<Policy> {
    Arc::new(validate_json(json).unwrap_or_else(|e| panic!("{e}")).policy)
}

fn demo() -> Arc<Policy> {
    policy(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/policies/demo.json"
        ))
        .unwrap(),
    )
}

/// Decide for headers given as strings.
fn decide(
    r: &mut Router,
    headers: &[(&str, &str)],
    source: Option<&str>,
    now_ms: u64,
) -> switchyard_filter::router::Decision {
    let h: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    let source: Option<IpAddr> = source.map(|s| s.parse().unwrap());
    r.decide(&Request {
        headers: &h,
        source,
        now_ms,
    })
}

fn stack_of(p: &Policy, d: &switchyard_filter::router::Decision) -> String {
    match d.outcome {
        Outcome::Stack { id, .. } => p.stacks[id].name.clone(),
        Outcome::Local(_) => "<local>".into(),
        Outcome::Queue { .. } => "<queue>".into(),
    }
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

#[test]
fn demo_rules_route_each_segment() {
    let p = demo();
    let mut r = Router::new(Arc::clone(&p), Keyring::parse(KEYS).ok());
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str, &'a str);
    let cases: &[Case] = &[
        (&[("x-geo-country", "DE")], None, "eu-residency", "eu"),
        (&[], Some("10.20.3.4"), "eu-residency", "eu"),
        (&[("x-partner-key", "p")], None, "partner-api", "green"),
        (
            &[(":path", "/partner/orders")],
            None,
            "partner-api",
            "green",
        ),
        (&[("x-jwt-cohort", "beta")], None, "beta-cohort", "canary"),
        (&[("x-jwt-cohort", "gold")], None, "premium-cohort", "blue"),
    ];
    for (headers, source, rule, stack) in cases {
        let d = decide(&mut r, headers, *source, T0);
        assert_eq!(p.rules[d.rule].id, *rule, "{headers:?}");
        assert_eq!(stack_of(&p, &d), *stack, "{headers:?}");
    }
}

#[test]
fn hostile_repeats_are_ignored_and_flagged() {
    let p = demo();
    let mut r = Router::new(Arc::clone(&p), None);
    let d = decide(
        &mut r,
        &[("x-jwt-cohort", "beta"), ("x-jwt-cohort", "gold")],
        None,
        T0,
    );
    assert!(d.hostile);
    assert_ne!(p.rules[d.rule].id, "beta-cohort");
    assert_ne!(p.rules[d.rule].id, "premium-cohort");
}

#[test]
fn affinity_cookie_round_trip_and_reassignment() {
    let p = demo();
    let mut r = Router::new(Arc::clone(&p), Keyring::parse(KEYS).ok());
    let first = decide(&mut r, &[], None, T0);
    let set = first.set_cookie.clone().expect("new users get a cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax"));
    let stack = stack_of(&p, &first);
    let cookie = cookie_value(&set);
    for i in 0..1000 {
        let d = decide(
            &mut r,
            &[("cookie", &format!("a=b; {cookie}"))],
            None,
            T0 + i,
        );
        assert_eq!(stack_of(&p, &d), stack);
        assert_eq!(d.affinity, AffinityEvent::Hit);
        assert!(matches!(
            d.outcome,
            Outcome::Stack {
                how: How::Sticky,
                ..
            }
        ));
        assert!(d.set_cookie.is_none());
    }
    // Past half its life: refreshed, same stack.
    let d = decide(&mut r, &[("cookie", &cookie)], None, T0 + 1_900_000);
    assert_eq!(stack_of(&p, &d), stack);
    assert!(d.set_cookie.is_some());
    // Expired.
    let d = decide(&mut r, &[("cookie", &cookie)], None, T0 + 3_600_000);
    assert_eq!(d.affinity, AffinityEvent::Expired);
    assert!(d.set_cookie.is_some());
    // Forged: flip one signature character.
    let mut forged = cookie.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let d = decide(&mut r, &[("cookie", &forged)], None, T0);
    assert_eq!(d.affinity, AffinityEvent::Forged);
    // Two affinity cookies: hostile, treated as forged.
    let d = decide(
        &mut r,
        &[("cookie", &cookie), ("cookie", &cookie)],
        None,
        T0,
    );
    assert_eq!(d.affinity, AffinityEvent::Forged);
    assert!(d.hostile);
}

#[test]
fn stickiness_yields_when_the_stack_is_unhealthy() {
    let p = demo();
    let mut r = Router::new(Arc::clone(&p), Keyring::parse(KEYS).ok());
    let first = decide(&mut r, &[], None, T0);
    let stack = stack_of(&p, &first);
    let cookie = cookie_value(&first.set_cookie.unwrap());
    r.set_health([(stack.as_str(), 100, false)]);
    let d = decide(&mut r, &[("cookie", &cookie)], None, T0);
    assert_ne!(stack_of(&p, &d), stack);
    assert_eq!(d.affinity, AffinityEvent::Miss);
    assert!(d.set_cookie.is_some(), "reassigned users get a new cookie");
}

#[test]
fn residency_is_never_left_and_local_reply_is_documented() {
    let p = demo();
    let mut r = Router::new(Arc::clone(&p), None);
    r.set_health([("eu", 100, false)]);
    let d = decide(&mut r, &[("x-geo-country", "DE")], None, T0);
    match d.outcome {
        Outcome::Local(reply) => {
            assert_eq!(reply.status, 503);
            assert_eq!(reply.retry_after_s, 10);
        }
        other => panic!("expected a local reply, got {other:?}"),
    }
}

#[test]
fn breaker_opens_and_traffic_moves_off() {
    let p = policy(
        r#"{ "stacks": [ { "name": "a", "region": "x" }, { "name": "b", "region": "x" } ],
        "breaker": { "consecutive_failures": 3, "open_ms": 1000 },
        "default": { "targets": [ { "stack": "a" }, { "stack": "b" } ] } }"#,
    );
    let mut r = Router::new(Arc::clone(&p), None);
    let a = p.stack_id("a").unwrap();
    for i in 0..3 {
        r.record(a, Some(503), T0 + i);
    }
    for i in 0..100 {
        let d = decide(&mut r, &[], None, T0 + 10 + i);
        assert_eq!(stack_of(&p, &d), "b");
    }
    // After open_ms the breaker lets trials through, and successes close it.
    let later = T0 + 2000;
    let mut saw_a = 0;
    for i in 0..10 {
        let d = decide(&mut r, &[], None, later + i);
        if let Outcome::Stack { id, .. } = d.outcome {
            if id == a {
                saw_a += 1;
                r.record(a, Some(200), later + i);
            }
        }
    }
    assert!(saw_a >= 3, "trial requests reach a again: {saw_a}");
}

#[test]
fn weight_factor_zero_drains_a_stack() {
    let p = policy(
        r#"{ "stacks": [ { "name": "a", "region": "x" }, { "name": "b", "region": "x" } ],
        "default": { "targets": [ { "stack": "a" }, { "stack": "b" } ] } }"#,
    );
    let mut r = Router::new(Arc::clone(&p), None);
    r.set_health([("a", 0, true)]);
    for _ in 0..100 {
        assert_eq!(stack_of(&p, &decide(&mut r, &[], None, T0)), "b");
    }
}

#[test]
fn time_windows_open_and_close() {
    let p = policy(
        r#"{ "stacks": [ { "name": "a", "region": "x" }, { "name": "sale", "region": "x" } ],
        "rules": [ { "id": "flash", "match": { "time": { "campaigns": [ { "start": "2026-11-27T08:00:00Z", "end": "2026-11-27T10:00:00Z" } ] } },
                     "route": { "targets": [ { "stack": "sale" } ] } } ],
        "default": { "targets": [ { "stack": "a" } ] } }"#,
    );
    let mut r = Router::new(Arc::clone(&p), None);
    let h = 3_600_000;
    assert_eq!(
        stack_of(&p, &decide(&mut r, &[], None, T0 + 8 * h - 1)),
        "a"
    );
    assert_eq!(stack_of(&p, &decide(&mut r, &[], None, T0 + 8 * h)), "sale");
    assert_eq!(
        stack_of(&p, &decide(&mut r, &[], None, T0 + 10 * h - 1)),
        "sale"
    );
    assert_eq!(stack_of(&p, &decide(&mut r, &[], None, T0 + 10 * h)), "a");
}

fn weighted_policy(weights: &[u32]) -> Arc<Policy> {
    let stacks: Vec<String> = (0..weights.len())
        .map(|i| format!(r#"{{ "name": "s{i}", "region": "x" }}"#))
        .collect();
    let targets: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!(r#"{{ "stack": "s{i}", "weight": {w} }}"#))
        .collect();
    policy(&format!(
        r#"{{ "stacks": [{}], "default": {{ "targets": [{}] }} }}"#,
        stacks.join(","),
        targets.join(",")
    ))
}

fn hash_policy(n: usize) -> Arc<Policy> {
    let stacks: Vec<String> = (0..n)
        .map(|i| format!(r#"{{ "name": "s{i}", "region": "x" }}"#))
        .collect();
    let targets: Vec<String> = (0..n)
        .map(|i| format!(r#"{{ "stack": "s{i}" }}"#))
        .collect();
    policy(&format!(
        r#"{{ "stacks": [{}], "classify": {{ "user_key": [ {{ "header": "x-user" }} ] }},
             "default": {{ "targets": [{}], "balance": {{ "mode": "hash", "key": "user" }} }} }}"#,
        stacks.join(","),
        targets.join(",")
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Weighted spread is within ±3% of the weights over 10,000 requests.
    #[test]
    fn weighted_spread_within_3_percent(weights in proptest::collection::vec(1u32..100, 2..6)) {
        let p = weighted_policy(&weights);
        let mut r = Router::new(Arc::clone(&p), None);
        let mut counts = vec![0u32; weights.len()];
        for i in 0..10_000u64 {
            if let Outcome::Stack { id, .. } = decide(&mut r, &[], None, T0 + i).outcome {
                counts[id] += 1;
            }
        }
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let want = f64::from(w) / f64::from(total);
            let got = f64::from(counts[i]) / 10_000.0;
            prop_assert!((got - want).abs() <= 0.03, "stack {} got {} want {}", i, got, want);
        }
    }

    /// When one of N stacks leaves, at most ~1/N of keys move (only its own), and they
    /// return when it comes back.
    #[test]
    fn hash_disruption_is_minimal(n in 2usize..10, leaving in 0usize..10) {
        let leaving = leaving % n;
        let p = hash_policy(n);
        let mut r = Router::new(Arc::clone(&p), None);
        let users: Vec<String> = (0..3000).map(|i| format!("user-{i}")).collect();
        let route = |r: &mut Router| -> Vec<String> {
            users.iter().map(|u| stack_of(&p, &decide(r, &[("x-user", u)], None, T0))).collect()
        };
        let before = route(&mut r);
        r.set_health([(format!("s{leaving}").as_str(), 100, false)]);
        let during = route(&mut r);
        let moved = before.iter().zip(&during).filter(|(b, d)| b != d).count();
        for (b, d) in before.iter().zip(&during) {
            if b != d {
                prop_assert_eq!(b, &format!("s{leaving}"));
            }
        }
        prop_assert!((moved as f64) / 3000.0 <= 1.5 / n as f64, "moved {} of 3000 with n={}", moved, n);
        r.set_health(std::iter::empty());
        prop_assert_eq!(route(&mut r), before);
    }

    /// Whatever the headers, a decision is made and residency is never left.
    #[test]
    fn never_leaves_residency(
        country in "[A-Z]{2}|DE|FR",
        cohort in "[a-z]{0,6}|beta|gold",
        cookie in "[ -~]{0,80}",
        eu_healthy in any::<bool>(),
        blue_healthy in any::<bool>(),
    ) {
        let p = demo();
        let mut r = Router::new(Arc::clone(&p), Keyring::parse(KEYS).ok());
        r.set_health([("eu", 100, eu_healthy), ("blue", 100, blue_healthy)]);
        let d = decide(&mut r, &[("x-geo-country", &country), ("x-jwt-cohort", &cohort), ("cookie", &cookie)], None, T0);
        if p.rules[d.rule].id == "eu-residency" {
            let s = stack_of(&p, &d);
            prop_assert!(s == "eu" || s == "<local>", "EU request went to {}", s);
        }
    }
}

#[test]
fn unreadable_request_goes_by_the_default_rule() {
    let p = demo();
    let mut r = Router::new(Arc::clone(&p), Keyring::parse(KEYS).ok());
    for i in 0..20 {
        let d = r.decide_default(T0 + i);
        assert_eq!(p.rules[d.rule].id, "default");
        let s = stack_of(&p, &d);
        assert!(s == "blue" || s == "green", "{s}");
    }
}

// ----- drain, evacuate, weight 0, unhealthy -------------------------------------------

const MIN: u64 = 60_000;

/// blue and green, sticky; `only_blue` routes to blue alone with green as fallback.
fn sticky_policy(only_blue: bool) -> Arc<Policy> {
    let route = if only_blue {
        r#""targets": [ { "stack": "blue" } ], "fallback": { "targets": [ { "stack": "green" } ] }"#
    } else {
        r#""targets": [ { "stack": "blue" }, { "stack": "green" } ]"#
    };
    policy(&format!(
        r#"{{ "stacks": [ {{ "name": "blue", "region": "x" }}, {{ "name": "green", "region": "x" }} ],
        "affinity": {{ "cookie": "sy_aff", "ttl_s": 3600, "secure": false, "epoch": 1 }},
        "default": {{ {route}, "affinity": true }} }}"#
    ))
}

/// Apply control-plane stack states the way the worker does.
fn apply(r: &mut Router, states: &[StackState]) {
    r.set_stacks(states.iter().map(|st| StackHealth {
        name: &st.name,
        factor: st.factor(),
        healthy: st.healthy,
        sticky_until_ms: st.sticky_until_ms(),
    }));
}

fn state(name: &str) -> StackState {
    StackState {
        name: name.into(),
        weight_percent: 100,
        healthy: true,
        ..Default::default()
    }
}

fn draining(name: &str, deadline_unix_ms: u64) -> StackState {
    StackState {
        draining: true,
        drain_deadline_unix_ms: deadline_unix_ms,
        ..state(name)
    }
}

/// A router and the cookie of a user it put on blue.
fn blue_user(p: &Arc<Policy>) -> (Router, String) {
    let mut r = Router::new(Arc::clone(p), Keyring::parse(KEYS).ok());
    for i in 0..10 {
        let d = decide(&mut r, &[], None, T0 + i);
        if stack_of(p, &d) == "blue" {
            return (r, cookie_value(&d.set_cookie.unwrap()));
        }
    }
    panic!("nobody was sent to blue");
}

#[test]
fn draining_keeps_cookie_holders_and_takes_no_new_users() {
    let p = sticky_policy(false);
    let (mut r, cookie) = blue_user(&p);
    apply(&mut r, &[draining("blue", 0), state("green")]);
    for i in 0..200 {
        let d = decide(&mut r, &[], None, T0 + i);
        assert_eq!(
            stack_of(&p, &d),
            "green",
            "a new user went to the draining stack"
        );
    }
    // Past half the cookie's life: still blue, but the cookie is not extended.
    for t in [T0 + 1, T0 + 1_900_000, T0 + 3_599_999] {
        let d = decide(&mut r, &[("cookie", &cookie)], None, t);
        assert_eq!(stack_of(&p, &d), "blue");
        assert_eq!(d.affinity, AffinityEvent::Hit);
        assert!(matches!(
            d.outcome,
            Outcome::Stack {
                how: How::Sticky,
                ..
            }
        ));
        assert_eq!(
            d.set_cookie, None,
            "a cookie for a draining stack was refreshed"
        );
    }
    // The cookie expires: the user moves and gets a cookie for the new stack.
    let d = decide(&mut r, &[("cookie", &cookie)], None, T0 + 3_600_000);
    assert_eq!(stack_of(&p, &d), "green");
    assert!(d.set_cookie.unwrap().contains("green"));
}

#[test]
fn drain_deadline_ends_stickiness() {
    let p = sticky_policy(false);
    let (mut r, cookie) = blue_user(&p);
    apply(&mut r, &[draining("blue", T0 + MIN), state("green")]);
    let d = decide(&mut r, &[("cookie", &cookie)], None, T0 + MIN - 1);
    assert_eq!((stack_of(&p, &d), d.set_cookie), ("blue".into(), None));
    let d = decide(&mut r, &[("cookie", &cookie)], None, T0 + MIN);
    assert_eq!(stack_of(&p, &d), "green");
    assert_eq!(d.affinity, AffinityEvent::Miss);
    let moved = cookie_value(&d.set_cookie.expect("re-pointed users get a new cookie"));
    let d = decide(&mut r, &[("cookie", &moved)], None, T0 + MIN + 1);
    assert_eq!(
        (stack_of(&p, &d), d.affinity),
        ("green".into(), AffinityEvent::Hit)
    );
}

#[test]
fn draining_the_only_target_keeps_its_users_while_new_ones_fall_back() {
    let p = sticky_policy(true);
    let (mut r, cookie) = blue_user(&p);
    apply(&mut r, &[draining("blue", 0), state("green")]);
    let d = decide(&mut r, &[], None, T0);
    assert!(matches!(
        d.outcome,
        Outcome::Stack {
            how: How::Fallback,
            ..
        }
    ));
    assert_eq!(stack_of(&p, &d), "green");
    let d = decide(&mut r, &[("cookie", &cookie)], None, T0);
    assert_eq!((stack_of(&p, &d), d.set_cookie), ("blue".into(), None));
}

#[test]
fn evacuate_weight_zero_and_unhealthy_move_cookie_holders_at_once() {
    let p = sticky_policy(false);
    let cases = [
        StackState {
            evacuating: true,
            ..state("blue")
        },
        StackState {
            evacuating: true,
            ..draining("blue", T0 + MIN)
        },
        StackState {
            weight_percent: 0,
            ..state("blue")
        },
        StackState {
            healthy: false,
            ..state("blue")
        },
        StackState {
            healthy: false,
            ..draining("blue", 0)
        },
    ];
    for blue in cases {
        let (mut r, cookie) = blue_user(&p);
        apply(&mut r, &[blue.clone(), state("green")]);
        let d = decide(&mut r, &[("cookie", &cookie)], None, T0 + 1);
        assert_eq!(stack_of(&p, &d), "green", "{blue:?}");
        assert_eq!(d.affinity, AffinityEvent::Miss);
        let set = d.set_cookie.expect("a new cookie in the same response");
        let d = decide(&mut r, &[("cookie", &cookie_value(&set))], None, T0 + 2);
        assert_eq!(stack_of(&p, &d), "green");
        for i in 0..50 {
            assert_eq!(stack_of(&p, &decide(&mut r, &[], None, T0 + i)), "green");
        }
    }
}

#[test]
fn a_drain_does_not_add_a_stack_to_a_route_that_does_not_use_it() {
    let p = policy(
        r#"{ "stacks": [ { "name": "blue", "region": "x" }, { "name": "green", "region": "x" } ],
        "affinity": { "cookie": "sy_aff", "ttl_s": 3600, "secure": false, "epoch": 1 },
        "rules": [ { "id": "beta", "match": { "cohorts": ["beta"] },
                     "route": { "targets": [ { "stack": "green" } ], "affinity": true } } ],
        "classify": { "cohort_header": "x-jwt-cohort" },
        "default": { "targets": [ { "stack": "blue" }, { "stack": "green", "weight": 0 } ], "affinity": true } }"#,
    );
    let (mut r, blue) = blue_user(&p);
    let beta = [("x-jwt-cohort", "beta")];
    let green = cookie_value(&decide(&mut r, &beta, None, T0).set_cookie.unwrap());
    apply(&mut r, &[draining("blue", 0), draining("green", 0)]);
    // A blue cookie on the beta route (green only): not honoured.
    let d = decide(&mut r, &[beta[0], ("cookie", &blue)], None, T0);
    assert_ne!(stack_of(&p, &d), "blue");
    // A green cookie on the default route, where green's policy weight is 0.
    let d = decide(&mut r, &[("cookie", &green)], None, T0);
    assert_ne!(stack_of(&p, &d), "green");
    // Each on its own route: kept.
    let d = decide(&mut r, &[beta[0], ("cookie", &green)], None, T0);
    assert_eq!(stack_of(&p, &d), "green");
    let d = decide(&mut r, &[("cookie", &blue)], None, T0);
    assert_eq!(stack_of(&p, &d), "blue");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Against a plain model: a blue cookie is honoured exactly when blue is healthy,
    /// and either takes traffic or drains before its deadline and is not evacuating;
    /// a draining stack's cookie is never refreshed; new users only reach stacks that
    /// take traffic.
    #[test]
    fn drain_states_match_the_model(
        weight in prop_oneof![Just(0u32), Just(100u32), 1u32..100],
        healthy in any::<bool>(),
        is_draining in any::<bool>(),
        deadline in prop_oneof![Just(0u64), 1u64..2 * MIN],
        evacuating in any::<bool>(),
        at in 0u64..2 * MIN,
    ) {
        let p = sticky_policy(false);
        let (mut r, cookie) = blue_user(&p);
        let blue = StackState {
            weight_percent: weight,
            healthy,
            draining: is_draining,
            drain_deadline_unix_ms: if deadline == 0 { 0 } else { T0 + deadline },
            evacuating,
            ..state("blue")
        };
        apply(&mut r, &[blue, state("green")]);
        let now = T0 + at;
        let takes_traffic = healthy && !is_draining && !evacuating && weight > 0;
        let sticky = healthy
            && !evacuating
            && (takes_traffic || (is_draining && (deadline == 0 || at < deadline)));
        let d = decide(&mut r, &[("cookie", &cookie)], None, now);
        prop_assert_eq!(stack_of(&p, &d) == "blue", sticky);
        if sticky && !takes_traffic {
            prop_assert_eq!(d.set_cookie.clone(), None);
        }
        if !sticky {
            prop_assert!(d.set_cookie.unwrap().contains("green"));
        }
        if !takes_traffic {
            for i in 0..20 {
                prop_assert_eq!(stack_of(&p, &decide(&mut r, &[], None, now + i)), "green");
            }
        }
    }
}
