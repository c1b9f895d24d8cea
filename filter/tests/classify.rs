//! Classification: the one-pass request scan (header and cookie slots, user-agent
//! substrings found together) must classify exactly like looking every input up on its
//! own, which is what the reference below does with `Request::header` / `cookie`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use proptest::prelude::*;
use switchyard_filter::classify::{classify, Attributes, Found, Request};
use switchyard_filter::hash::{bucket, hash64};
use switchyard_filter::policy::{validate_json, KeyDoc, Policy};

/// Every kind of input at once: a geo header with a country table and CIDRs, channels by
/// path, by header (two share one) and by user agent, a cohort header, user keys from a
/// header then two cookies, and the affinity cookie.
const POLICY: &str = r#"{
  "stacks": [ { "name": "a", "region": "us" }, { "name": "b", "region": "eu" } ],
  "classify": {
    "geo": { "header": "x-geo", "countries": { "US": "us", "de": "eu" },
             "cidrs": [ { "cidr": "10.20.0.0/16", "region": "eu" } ] },
    "channels": [
      { "name": "partner", "headers": ["x-partner", "x-api-key"], "path_prefixes": ["/partner/"] },
      { "name": "pos", "headers": ["x-api-key"], "path_prefixes": ["/pos/"] },
      { "name": "mobile", "user_agent_contains": ["ShopApp", "okhttp"] },
      { "name": "bot", "user_agent_contains": ["bot", "Spider", "shopapp/9"] }
    ],
    "cohort_header": "x-cohort",
    "user_key": [ { "header": "x-sub" }, { "cookie": "session" }, { "cookie": "sid" } ]
  },
  "affinity": { "cookie": "aff" },
  "rules": [
    { "id": "gold", "match": { "cohorts": ["gold", "beta"] }, "route": { "targets": [ { "stack": "a" } ] } },
    { "id": "plat", "match": { "cohorts": ["platinum"] }, "route": { "targets": [ { "stack": "b" } ] } }
  ],
  "default": { "targets": [ { "stack": "a" } ], "affinity": true }
}"#;

fn policy() -> Policy {
    validate_json(POLICY)
        .unwrap_or_else(|e| panic!("{e}"))
        .policy
}

/// What classification must find, computed the slow, obvious way.
fn reference<'a>(p: &Policy, req: &Request<'a>) -> Attributes<'a> {
    let c = &p.classify;
    let mut hostile = false;
    let mut path: &[u8] = b"/";
    let mut method: &[u8] = b"GET";
    let mut ua: &[u8] = b"";
    for (n, v) in req.headers {
        match *n {
            b":path" => path = v.split(|&b| b == b'?').next().unwrap(),
            b":method" => method = v,
            b"user-agent" => ua = v,
            _ => {}
        }
    }
    let (mut region, mut country) = (None, None);
    let mut geo_ambiguous = false;
    match req.header(c.geo_header.as_deref().unwrap()) {
        // More than one value: a comma list is as ambiguous as a repeated header.
        Found::One(v) if v.contains(&b',') => {
            hostile = true;
            geo_ambiguous = true;
        }
        Found::One(v) => {
            let v = v.trim_ascii();
            if v.len() == 2 && v.iter().all(u8::is_ascii_alphabetic) {
                let code = [v[0].to_ascii_uppercase(), v[1].to_ascii_uppercase()];
                country = Some(code);
                region = p.country_region(code);
            }
            if region.is_none() {
                region = std::str::from_utf8(v).ok().and_then(|s| p.region_id(s));
            }
        }
        Found::Repeated => {
            hostile = true;
            geo_ambiguous = true;
        }
        Found::Absent => {}
    }
    if region.is_none() {
        region = req.source.and_then(|ip| c.cidrs.lookup(ip));
    }
    let ua_lower = String::from_utf8_lossy(ua).to_ascii_lowercase();
    let channel = c
        .channels
        .iter()
        .find(|ch| {
            ch.path_prefixes
                .iter()
                .any(|x| path.starts_with(x.as_bytes()))
                || ch.headers.iter().any(|h| req.header(h) != Found::Absent)
                || ch
                    .user_agent_contains
                    .iter()
                    .any(|s| ua_lower.contains(s.as_str()))
        })
        .map_or(c.default_channel, |ch| ch.id);
    let cohort = match req.header(c.cohort_header.as_deref().unwrap()) {
        Found::One(v) if !v.is_empty() => Some(v),
        Found::Repeated => {
            hostile = true;
            None
        }
        _ => None,
    };
    let user_key = c
        .user_key
        .iter()
        .find_map(|k| req.key_hash(k, &mut hostile));
    Attributes {
        region,
        country,
        channel,
        cohort,
        cohort_id: cohort
            .and_then(|v| p.cohorts.iter().position(|c| **c == *v))
            .map(|i| i as u32),
        path,
        method,
        user_key,
        bucket: user_key.map(|k| bucket(k, c.bucket_salt.as_bytes())),
        affinity_cookie: req.cookie(&p.affinity.cookie),
        hostile,
        geo_ambiguous,
    }
}

fn header_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "x-geo",
        "x-cohort",
        "x-sub",
        "x-partner",
        "x-api-key",
        "cookie",
        "user-agent",
        ":path",
        ":method",
        "accept",
        "x-geox",
        "x-co",
        "x-request-id",
        "x-forwarded-for",
        "set-cookie",
    ])
    .prop_map(String::from)
}

fn cookie_header() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "session", "sid", "aff", "_ga", "sessio", "session2", "", " session",
    ]);
    let value = prop::sample::select(vec!["v1", "\"quoted\"", " spaced ", "", "\"", "a=b", "x"]);
    prop::collection::vec((name, value, any::<bool>()), 0..5).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(n, v, no_eq)| {
                if no_eq {
                    n.to_string()
                } else {
                    format!("{n}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(";")
    })
}

fn header_value(name: &str) -> BoxedStrategy<String> {
    match name {
        "cookie" => cookie_header().boxed(),
        "user-agent" => prop::sample::select(vec![
            "Mozilla/5.0",
            "ShopApp/9.1 (iOS)",
            "SHOPAPP",
            "okhttp/4",
            "Googlebot/2.1",
            "sPiDeR",
            "shopapp/9",
            "xbo",
            "bot",
            "ShopAp",
            "",
        ])
        .prop_map(String::from)
        .boxed(),
        ":path" => prop::sample::select(vec![
            "/",
            "/partner/x",
            "/pos/1?a=b",
            "/partne",
            "/pos",
            "?x",
        ])
        .prop_map(String::from)
        .boxed(),
        "x-geo" => prop::sample::select(vec![
            "US", "de", " DE ", "eu", "us", "XX", "U", "", "D3", "US, de", ",",
        ])
        .prop_map(String::from)
        .boxed(),
        "x-cohort" => prop::sample::select(vec!["gold", "beta", "platinum", "GOLD", "", "silver"])
            .prop_map(String::from)
            .boxed(),
        _ => "[a-z0-9]{0,6}".boxed(),
    }
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        header_name().prop_flat_map(|n| header_value(&n).prop_map(move |v| (n.clone(), v))),
        0..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn one_pass_scan_classifies_like_the_reference(
        h in headers(),
        ip in prop::option::of((any::<bool>(), any::<[u8; 4]>())),
    ) {
        let p = policy();
        let pairs: Vec<(&[u8], &[u8])> = h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        // Half of the addresses fall in the policy's EU range.
        let source = ip.map(|(eu, o)| IpAddr::from(if eu { [10, 20, o[2], o[3]] } else { o }));
        let req = Request { headers: &pairs, source, now_ms: 0 };
        prop_assert_eq!(classify(&p, &req), reference(&p, &req));
    }
}

#[test]
fn cookie_slots_see_every_cookie_header_and_repeats() {
    let p = policy();
    let req = |h: &[(&'static str, &'static str)]| -> Vec<(&'static [u8], &'static [u8])> {
        h.iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    };
    let one = req(&[
        ("cookie", "_ga=1; aff=\"v1.k.a\" ; x=2"),
        ("cookie", "session=s1"),
    ]);
    let a = classify(
        &p,
        &Request {
            headers: &one,
            source: None,
            now_ms: 0,
        },
    );
    assert_eq!(a.affinity_cookie, Found::One(b"v1.k.a"));
    assert_eq!(a.user_key, Some(hash64(0x0053_794b_6579, b"s1")));
    assert!(!a.hostile);

    // The user key cookie twice, across two headers: hostile, and the next source is used.
    let two = req(&[("cookie", "session=s1; sid=z"), ("cookie", "session=s2")]);
    let a = classify(
        &p,
        &Request {
            headers: &two,
            source: None,
            now_ms: 0,
        },
    );
    assert!(a.hostile);
    assert_eq!(a.user_key, Some(hash64(0x0053_794b_6579, b"z")));
    assert!(matches!(p.classify.user_key[1], KeyDoc::Cookie(_)));
}

#[test]
fn user_agent_substrings_match_case_insensitively_anywhere() {
    let p = policy();
    let channel = |ua: &'static str| {
        let h: Vec<(&[u8], &[u8])> = vec![(b"user-agent", ua.as_bytes())];
        let a = classify(
            &p,
            &Request {
                headers: &h,
                source: None,
                now_ms: 0,
            },
        );
        p.channels[usize::from(a.channel)].clone()
    };
    assert_eq!(channel("Dalvik OKHTTP"), "mobile"); // at the very end, other case
    assert_eq!(channel("shopapp/9.0"), "mobile"); // an earlier channel wins over "bot"
    assert_eq!(channel("Mozilla (compatible; Googlebot)"), "bot");
    assert_eq!(channel("Mozilla/5.0"), "web");
    assert_eq!(channel("Spide"), "web"); // a prefix of a substring is not a match
}

#[test]
fn cohorts_are_matched_by_id_in_rule_order() {
    let p = policy();
    assert_eq!(p.cohorts.len(), 3);
    assert!(
        p.cohorts.windows(2).all(|w| w[0] < w[1]),
        "sorted for binary search"
    );
    for (cohort, rule) in [
        ("gold", "gold"),
        ("beta", "gold"),
        ("platinum", "plat"),
        ("GOLD", "default"),
        ("silver", "default"),
    ] {
        let h: Vec<(&[u8], &[u8])> = vec![(b"x-cohort", cohort.as_bytes())];
        let mut r = switchyard_filter::router::Router::new(std::sync::Arc::new(policy()), None);
        let d = r.decide(&Request {
            headers: &h,
            source: None,
            now_ms: 0,
        });
        assert_eq!(p.rules[d.rule].id, rule, "cohort {cohort}");
    }
}

#[test]
fn too_many_user_agent_substrings_are_rejected_by_field() {
    let subs: Vec<String> = (0..65).map(|i| format!("\"agent-{i}\"")).collect();
    let json = format!(
        r#"{{ "stacks": [ {{ "name": "a", "region": "us" }} ],
             "classify": {{ "channels": [ {{ "name": "many", "user_agent_contains": [{}] }} ] }},
             "default": {{ "targets": [ {{ "stack": "a" }} ] }} }}"#,
        subs.join(",")
    );
    let err = validate_json(&json).expect_err("65 substrings must be rejected");
    let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["classify.channels[0].user_agent_contains[64]"]);
    // 64 is fine.
    let ok = json.replace(",\"agent-64\"", "");
    assert!(validate_json(&ok).is_ok());
}
