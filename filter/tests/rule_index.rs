//! The rule index (bit sets of rules per attribute value) must pick exactly the rule a
//! plain first-match walk over every rule picks, for any policy and request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use switchyard_filter::classify::{classify, Attributes, Request};
use switchyard_filter::policy::{validate_json, Condition, Policy};
use switchyard_filter::router::Router;

fn subset(options: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    prop::sample::subsequence(options, 0..=options.len().min(3))
}

fn rule_match() -> impl Strategy<Value = Value> {
    (
        subset(&["us", "eu"]),
        subset(&["US", "DE", "fr", "JP"]),
        subset(&["partner", "mobile", "web"]),
        subset(&["gold", "beta", "staff"]),
        subset(&["GET", "post", "PUT"]),
        subset(&["/a", "/b/"]),
    )
        .prop_map(|(regions, countries, channels, cohorts, methods, paths)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("regions", regions),
                ("countries", countries),
                ("channels", channels),
                ("cohorts", cohorts),
                ("methods", methods),
                ("path_prefixes", paths),
            ] {
                if !v.is_empty() {
                    m.insert(k.into(), json!(v));
                }
            }
            Value::Object(m)
        })
}

fn policy(matches: &[Value]) -> Arc<Policy> {
    let rules: Vec<Value> = matches
        .iter()
        .enumerate()
        .map(|(i, m)| json!({ "id": format!("r{i}"), "priority": i, "match": m, "route": { "targets": [ { "stack": "a" } ] } }))
        .collect();
    let doc = json!({
        "stacks": [ { "name": "a", "region": "us" }, { "name": "b", "region": "eu" } ],
        "classify": {
            "geo": { "header": "x-geo", "countries": { "US": "us", "DE": "eu", "FR": "eu" } },
            "channels": [
                { "name": "partner", "headers": ["x-partner"] },
                { "name": "mobile", "user_agent_contains": ["app"] }
            ],
            "cohort_header": "x-cohort"
        },
        "rules": rules,
        "default": { "targets": [ { "stack": "b" } ] }
    });
    Arc::new(
        validate_json(&doc.to_string())
            .unwrap_or_else(|e| panic!("{e}"))
            .policy,
    )
}

/// First match the slow way: every rule, every condition.
fn walk(p: &Policy, a: &Attributes) -> usize {
    let ok = |c: &Condition| {
        (c.regions.is_empty() || a.region.is_some_and(|r| c.regions.contains(&r)))
            && (c.countries.is_empty() || a.country.is_some_and(|cc| c.countries.contains(&cc)))
            && (c.channels.is_empty() || c.channels.contains(&a.channel))
            && (c.cohorts.is_empty()
                || a.cohort
                    .is_some_and(|co| c.cohorts.iter().any(|&id| *p.cohorts[id as usize] == *co)))
            && (c.methods.is_empty()
                || c.methods
                    .iter()
                    .any(|m| m.as_bytes().eq_ignore_ascii_case(a.method)))
            && (c.path_prefixes.is_empty()
                || c.path_prefixes
                    .iter()
                    .any(|x| a.path.starts_with(x.as_bytes())))
    };
    p.rules.iter().position(|r| ok(&r.cond)).unwrap()
}

fn request() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    (
        prop::option::of(prop::sample::select(vec![
            "US", "de", "FR", "JP", "XX", "eu",
        ])),
        any::<bool>(),
        prop::sample::select(vec!["Mozilla", "ShopApp/1"]),
        prop::option::of(prop::sample::select(vec![
            "gold", "beta", "staff", "other", "",
        ])),
        prop::sample::select(vec!["GET", "POST", "put", "DELETE", "get"]),
        prop::sample::select(vec!["/", "/a", "/ab", "/b/c", "/b"]),
    )
        .prop_map(|(geo, partner, ua, cohort, method, path)| {
            let mut h = vec![(":method", method), (":path", path), ("user-agent", ua)];
            if let Some(g) = geo {
                h.push(("x-geo", g));
            }
            if partner {
                h.push(("x-partner", "p1"));
            }
            if let Some(c) = cohort {
                h.push(("x-cohort", c));
            }
            h
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn index_picks_the_first_matching_rule(
        matches in prop::collection::vec(rule_match(), 0..140),
        requests in prop::collection::vec(request(), 1..20),
    ) {
        let p = policy(&matches);
        let mut router = Router::new(Arc::clone(&p), None);
        for h in &requests {
            let pairs: Vec<(&[u8], &[u8])> = h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
            let req = Request { headers: &pairs, source: None, now_ms: 0 };
            let expected = walk(&p, &classify(&p, &req));
            prop_assert_eq!(router.decide(&req).rule, expected, "request {:?}", h);
        }
    }
}
