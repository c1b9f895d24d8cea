//! End-to-end routing through the real Envoy with the built `.wasm` and real stacks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_e2e::*;

/// A policy exercising every classification dimension. `now` places the campaign windows.
fn segmentation_policy(now: u64) -> String {
    let active = (rfc3339(now - 3600), rfc3339(now + 3600));
    let future = (rfc3339(now + 86_400), rfc3339(now + 2 * 86_400));
    format!(
        r#"{{
  "name": "e2e-segmentation",
  "stacks": [
    {{ "name": "blue",   "region": "us", "weight": 50 }},
    {{ "name": "green",  "region": "us", "weight": 50 }},
    {{ "name": "canary", "region": "us", "weight": 0 }},
    {{ "name": "eu",     "region": "eu", "weight": 100 }}
  ],
  "classify": {{
    "geo": {{
      "header": "x-geo-country",
      "countries": {{ "DE": "eu", "FR": "eu", "US": "us" }},
      "cidrs": [ {{ "cidr": "127.0.0.0/8", "region": "lab" }} ]
    }},
    "channels": [
      {{ "name": "partner", "headers": ["x-partner-key"] }},
      {{ "name": "pos", "path_prefixes": ["/pos/"] }},
      {{ "name": "mobile", "user_agent_contains": ["SwitchyardShop-iOS"] }}
    ],
    "cohort_header": "x-jwt-cohort",
    "user_key": [ {{ "header": "x-jwt-sub" }}, {{ "cookie": "session" }} ]
  }},
  "rules": [
    {{ "id": "eu", "priority": 1, "match": {{ "regions": ["eu"] }},
       "route": {{ "targets": [ {{ "stack": "eu" }} ], "residency": ["eu"] }} }},
    {{ "id": "partner", "priority": 2, "match": {{ "channels": ["partner"] }},
       "route": {{ "targets": [ {{ "stack": "green" }} ] }} }},
    {{ "id": "pos", "priority": 3, "match": {{ "channels": ["pos"] }},
       "route": {{ "targets": [ {{ "stack": "blue" }} ] }} }},
    {{ "id": "mobile", "priority": 4, "match": {{ "channels": ["mobile"] }},
       "route": {{ "targets": [ {{ "stack": "green" }} ] }} }},
    {{ "id": "beta", "priority": 5, "match": {{ "cohorts": ["beta"] }},
       "route": {{ "targets": [ {{ "stack": "canary", "weight": 1 }} ] }} }},
    {{ "id": "flash-sale", "priority": 6, "match": {{ "path_prefixes": ["/sale/"], "time": {{ "campaigns": [ {{ "start": "{}", "end": "{}" }} ] }} }},
       "route": {{ "targets": [ {{ "stack": "green" }} ] }} }},
    {{ "id": "presale", "priority": 7, "match": {{ "path_prefixes": ["/presale/"], "time": {{ "campaigns": [ {{ "start": "{}", "end": "{}" }} ] }} }},
       "route": {{ "targets": [ {{ "stack": "canary", "weight": 1 }} ] }} }},
    {{ "id": "lab-net", "priority": 8, "match": {{ "regions": ["lab"], "path_prefixes": ["/lab/"] }},
       "route": {{ "targets": [ {{ "stack": "eu" }} ] }} }},
    {{ "id": "slice", "priority": 9, "match": {{ "percent": {{ "from": 0, "to": 10 }} }},
       "route": {{ "targets": [ {{ "stack": "canary", "weight": 1 }} ] }} }}
  ],
  "default": {{ "targets": [ {{ "stack": "blue" }} ] }},
  "debug_header": true
}}"#,
        active.0, active.1, future.0, future.1
    )
}

fn served(c: &mut Client, path: &str, headers: &[(&str, &str)]) -> String {
    let r = c.get(path, headers).unwrap();
    assert!(
        r.status < 500,
        "{path} {headers:?}: {} {}",
        r.status,
        r.text()
    );
    r.served_by().unwrap_or("?").to_string()
}

#[test]
fn segmentation_by_geo_channel_time_cohort_and_percentage() {
    let shop = Shop::start();
    let envoy = Envoy::start(&segmentation_policy(now_s()), &shop.ports(), 2);
    let mut c = envoy.client();

    // Geography: trusted edge header (country → region), then CIDR on source.address.
    assert_eq!(served(&mut c, "/", &[("x-geo-country", "DE")]), "eu");
    assert_eq!(served(&mut c, "/", &[("x-geo-country", "fr")]), "eu");
    assert_eq!(served(&mut c, "/", &[("x-geo-country", "US")]), "blue");
    assert_eq!(
        served(&mut c, "/lab/x", &[]),
        "eu",
        "127.0.0.1 is in the lab CIDR"
    );
    assert_eq!(
        served(&mut c, "/lab/x", &[("x-geo-country", "US")]),
        "blue",
        "the edge header wins over CIDR"
    );

    // Channel: API key header, path prefix, user agent.
    assert_eq!(served(&mut c, "/", &[("x-partner-key", "k-123")]), "green");
    assert_eq!(served(&mut c, "/pos/terminal", &[]), "blue");
    assert_eq!(
        served(&mut c, "/", &[("user-agent", "SwitchyardShop-iOS/5.1")]),
        "green"
    );
    assert_eq!(
        served(&mut c, "/", &[("user-agent", "Mozilla/5.0")]),
        "blue"
    );

    // Time: an active campaign routes, a future one does not.
    assert_eq!(served(&mut c, "/sale/shoes", &[]), "green");
    assert_eq!(served(&mut c, "/presale/shoes", &[]), "blue");

    // Cohort: only from a verified JWT claim, never from a header the client sets.
    let beta = jwt("user-7", "beta", JWT_SECRET);
    assert_eq!(
        served(&mut c, "/", &[("authorization", &format!("Bearer {beta}"))]),
        "canary"
    );
    assert_eq!(
        served(&mut c, "/", &[("x-jwt-cohort", "beta")]),
        "blue",
        "client-set claim header is stripped"
    );
    let forged = jwt("user-7", "beta", b"not-the-key-not-the-key-not-the-key");
    let r = c
        .get("/", &[("authorization", &format!("Bearer {forged}"))])
        .unwrap();
    assert_eq!(
        r.status, 401,
        "a JWT with a bad signature is rejected by jwt_authn"
    );

    // Percentage: the users whose bucket is below 10% go to canary, the rest do not.
    let mut in_slice = 0;
    for i in 0..200 {
        let session = format!("session=s-{i}");
        let key_hash =
            switchyard_filter::hash::hash64(0x0053_794b_6579, format!("s-{i}").as_bytes());
        let expect_canary = switchyard_filter::hash::bucket(key_hash, b"switchyard") < 1000;
        let got = served(&mut c, "/", &[("cookie", &session)]);
        assert_eq!(got == "canary", expect_canary, "user s-{i}");
        in_slice += usize::from(expect_canary);
    }
    assert!(
        (8..=40).contains(&in_slice),
        "about 10% of 200 users in the slice, got {in_slice}"
    );
}

#[test]
fn spoofed_routing_headers_have_no_effect() {
    let shop = Shop::start();
    let envoy = Envoy::start(&segmentation_policy(now_s()), &shop.ports(), 2);
    let mut c = envoy.client();
    for _ in 0..50 {
        let r = c
            .get(
                "/echo",
                &[
                    ("x-switchyard-stack", "canary"),
                    ("x-switchyard-decision", "rule=evil"),
                ],
            )
            .unwrap();
        assert_eq!(r.served_by(), Some("blue"));
        let echoed = r.json();
        let names: Vec<String> = echoed["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_str().unwrap().to_string())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("x-switchyard")),
            "no routing header reaches the stack: {names:?}"
        );
    }
    // Repeated routing-relevant headers are hostile: the attribute is ignored.
    assert_eq!(
        served(
            &mut c,
            "/",
            &[("x-geo-country", "DE"), ("x-geo-country", "US")]
        ),
        "blue"
    );
    assert!(envoy.wait_counter("hostile_requests", 1) >= 1);
}

fn affinity_policy() -> String {
    r#"{
  "stacks": [
    { "name": "blue",  "region": "us" },
    { "name": "green", "region": "us" },
    { "name": "canary", "region": "us" }
  ],
  "affinity": { "ttl_s": 600 },
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" }, { "stack": "canary" } ], "affinity": true }
}"#
    .to_string()
}

#[test]
fn stickiness_holds_for_1000_requests_and_bad_cookies_are_reassigned() {
    let shop = Shop::start();
    let envoy = Envoy::start(&affinity_policy(), &shop.ports(), 2);
    let mut c = envoy.client();
    let first = c.get("/", &[]).unwrap();
    let cookie = first
        .affinity_cookie()
        .expect("a new user gets an affinity cookie");
    let set = first.header("set-cookie").unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Max-Age=600"),
        "{set}"
    );
    let stack = first.served_by().unwrap().to_string();
    assert!(
        cookie.contains(&format!(".{stack}.")),
        "cookie {cookie} names the serving stack {stack}"
    );

    // 1,000 requests over several connections (both Envoy workers) stay on the stack.
    for conn in 0..4 {
        let mut c = envoy.client();
        for _ in 0..250 {
            let r = c.get("/", &[("cookie", &cookie)]).unwrap();
            assert_eq!(r.served_by(), Some(stack.as_str()), "connection {conn}");
            assert!(
                r.affinity_cookie().is_none(),
                "a fresh cookie is not re-issued"
            );
        }
    }
    assert!(envoy.wait_counter(&format!("stack.{stack}.affinity_hit"), 1000) >= 1000);

    // Forged: the signature does not match (stack swapped).
    let other = if stack == "blue" { "green" } else { "blue" };
    let forged = cookie.replace(&format!(".{stack}."), &format!(".{other}."));
    let r = c.get("/", &[("cookie", &forged)]).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.affinity_cookie().is_some(), "a forged cookie is replaced");
    assert!(envoy.wait_counter("affinity_forged", 1) >= 1);

    // Expired and unknown-key cookies, correctly signed with the test keys.
    let keys = switchyard_filter::affinity::Keyring::parse(TEST_KEYS).unwrap();
    let expired = format!("sy_aff={}", keys.sign(other, 1, now_s() - 10));
    let r = c.get("/", &[("cookie", &expired)]).unwrap();
    assert!(
        r.affinity_cookie().is_some(),
        "an expired cookie is replaced"
    );
    assert!(envoy.wait_counter("affinity_expired", 1) >= 1);
    let stranger =
        switchyard_filter::affinity::Keyring::parse("zz=some-other-secret-abcdef").unwrap();
    let unknown = format!("sy_aff={}", stranger.sign(other, 1, now_s() + 600));
    let r = c.get("/", &[("cookie", &unknown)]).unwrap();
    assert!(
        r.affinity_cookie().is_some(),
        "an unknown-key cookie is replaced"
    );
    assert!(envoy.wait_counter("affinity_forged", 2) >= 2);

    // Rotation: a cookie signed with the previous key (second in the list) still holds.
    let previous =
        switchyard_filter::affinity::Keyring::parse("t0=e2e-previous-secret-987").unwrap();
    let old = format!("sy_aff={}", previous.sign(other, 1, now_s() + 600));
    let r = c.get("/", &[("cookie", &old)]).unwrap();
    assert_eq!(r.served_by(), Some(other), "previous key still verifies");
}

#[test]
fn weighted_spread_within_3_percent_over_10000_requests() {
    let policy = r#"{
  "stacks": [ { "name": "blue", "region": "us" }, { "name": "green", "region": "us" }, { "name": "canary", "region": "us" } ],
  "default": { "targets": [ { "stack": "blue", "weight": 60 }, { "stack": "green", "weight": 30 }, { "stack": "canary", "weight": 10 } ] }
}"#;
    let shop = Shop::start();
    let envoy = Envoy::start(policy, &shop.ports(), 2);
    let counts = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let counts = Arc::clone(&counts);
            let port = envoy.port;
            std::thread::spawn(move || {
                let mut c = Client::connect(port).unwrap();
                for _ in 0..2500 {
                    let r = c.get("/", &[]).unwrap();
                    *counts
                        .lock()
                        .unwrap()
                        .entry(r.served_by().unwrap_or("?").to_string())
                        .or_default() += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let counts = counts.lock().unwrap();
    let total: u32 = counts.values().sum();
    assert_eq!(total, 10_000);
    for (stack, weight) in [("blue", 0.60), ("green", 0.30), ("canary", 0.10)] {
        let share = f64::from(counts.get(stack).copied().unwrap_or(0)) / f64::from(total);
        assert!(
            (share - weight).abs() <= 0.03,
            "{stack}: {share:.4} vs {weight} ({counts:?})"
        );
    }
    println!("weighted spread over 10000 requests: {counts:?}");
}

#[test]
fn killed_stack_is_skipped_within_one_second() {
    let policy = r#"{
  "stacks": [ { "name": "blue", "region": "us", "health_path": "/healthz" }, { "name": "green", "region": "us" } ],
  "breaker": { "consecutive_failures": 3, "open_ms": 1000, "max_open_ms": 4000 },
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ] }
}"#;
    let mut shop = Shop::start();
    let envoy = Envoy::start(policy, &shop.ports(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<(Instant, u16, String)>::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, log, port) = (Arc::clone(&stop), Arc::clone(&log), envoy.port);
            std::thread::spawn(move || {
                let mut c = Client::connect(port).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let r = c.get("/", &[]).unwrap();
                    log.lock().unwrap().push((
                        Instant::now(),
                        r.status,
                        r.served_by().unwrap_or("-").to_string(),
                    ));
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = Instant::now();
    shop.stack("blue").kill();
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let log = log.lock().unwrap();
    let before: Vec<_> = log.iter().filter(|(t, _, _)| *t < killed_at).collect();
    assert!(
        before.iter().any(|(_, _, s)| s == "blue"),
        "blue served before the kill"
    );
    let after: Vec<_> = log.iter().filter(|(t, _, _)| *t >= killed_at).collect();
    let failures: Vec<_> = after.iter().filter(|(_, st, _)| *st != 200).collect();
    let last_failure = failures
        .iter()
        .map(|(t, _, _)| t.duration_since(killed_at))
        .max();
    println!(
        "stack killed: {} requests after the kill, {} client-visible failures, last failure {:?} after the kill",
        after.len(),
        failures.len(),
        last_failure
    );
    let late: Vec<_> = after
        .iter()
        .filter(|(t, st, _)| t.duration_since(killed_at) > Duration::from_secs(1) && *st != 200)
        .collect();
    assert!(
        late.is_empty(),
        "no failures later than 1 s after the kill: {} late",
        late.len()
    );
    assert!(after
        .iter()
        .filter(|(t, _, _)| t.duration_since(killed_at) > Duration::from_secs(1))
        .all(|(_, _, s)| s == "green"));
    assert!(
        failures.len() <= 20,
        "failures before the breaker opened: {}",
        failures.len()
    );
}

#[test]
fn residency_is_honoured_when_the_only_in_region_stack_is_down() {
    let policy = r#"{
  "stacks": [ { "name": "blue", "region": "us" }, { "name": "eu", "region": "eu", "health_path": "/healthz" } ],
  "classify": { "geo": { "header": "x-geo-country", "countries": { "DE": "eu" } } },
  "breaker": { "consecutive_failures": 2, "open_ms": 60000, "max_open_ms": 60000 },
  "rules": [ { "id": "eu", "match": { "regions": ["eu"] },
      "route": { "targets": [ { "stack": "eu" } ], "residency": ["eu"],
                 "fallback": { "local": { "status": 503, "retry_after_s": 30, "message": "EU traffic stays in the EU" } } } } ],
  "default": { "targets": [ { "stack": "blue" } ], "fallback": { "targets": [ { "stack": "eu" } ] } }
}"#;
    let mut shop = Shop::start();
    let envoy = Envoy::start(policy, &shop.ports(), 1);
    let mut c = envoy.client();
    assert_eq!(served(&mut c, "/", &[("x-geo-country", "DE")]), "eu");
    shop.stack("eu").kill();
    // The first requests fail until the breaker opens; none ever goes to blue.
    let mut local = None;
    for _ in 0..20 {
        let r = c.get("/", &[("x-geo-country", "DE")]).unwrap();
        assert_ne!(
            r.served_by(),
            Some("blue"),
            "EU traffic never leaves the EU"
        );
        if r.header("retry-after").is_some() {
            local = Some(r);
            break;
        }
    }
    let r = local.expect("a local reply once the EU stack is known down");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("30"));
    let body = r.json();
    assert_eq!(body["error"], "no_eligible_stack");
    assert_eq!(body["rule"], "eu");
    assert_eq!(body["message"], "EU traffic stays in the EU");
    // Traffic without residency still flows.
    assert_eq!(served(&mut c, "/", &[]), "blue");
}

#[test]
fn an_eu_visitor_with_an_appended_geo_header_stays_in_the_eu() {
    // An edge that appends its geo header instead of overwriting the client's: the
    // request reaches Envoy with two values, as two header lines or as one comma list.
    // `most_restrictive` keeps it on the EU rule, and the EU rule's residency keeps it in
    // the EU when the EU stack is down (issue 14, item 5).
    let policy = r#"{
  "stacks": [ { "name": "blue", "region": "us" }, { "name": "eu", "region": "eu", "health_path": "/healthz" } ],
  "classify": { "geo": { "header": "x-geo-country", "countries": { "DE": "eu", "US": "us" },
                         "ambiguous": { "mode": "most_restrictive" } } },
  "breaker": { "consecutive_failures": 2, "open_ms": 60000, "max_open_ms": 60000 },
  "rules": [ { "id": "eu", "match": { "regions": ["eu"] },
      "route": { "targets": [ { "stack": "eu" } ], "residency": ["eu"],
                 "fallback": { "local": { "status": 503, "retry_after_s": 30, "message": "EU traffic stays in the EU" } } } } ],
  "default": { "targets": [ { "stack": "blue" } ], "fallback": { "targets": [ { "stack": "eu" } ] } },
  "debug_header": true
}"#;
    let mut shop = Shop::start();
    let envoy = Envoy::start(policy, &shop.ports(), 1);
    let mut c = envoy.client();
    let appended: [&[(&str, &str)]; 3] = [
        &[("x-geo-country", "DE"), ("x-geo-country", "US")],
        &[("x-geo-country", "US"), ("x-geo-country", "DE")],
        &[("x-geo-country", "US, DE")],
    ];
    for headers in appended {
        let r = c.get("/", headers).unwrap();
        assert_eq!(r.served_by(), Some("eu"), "{headers:?}: {}", r.text());
        let decision = r.header("x-switchyard-decision").unwrap_or("");
        assert!(decision.starts_with("rule=eu;"), "{headers:?}: {decision}");
    }
    // Two values without residency: no region from the header, the default rule.
    assert_eq!(
        served(
            &mut c,
            "/",
            &[("x-geo-country", "US"), ("x-geo-country", "JP")]
        ),
        "blue"
    );

    shop.stack("eu").kill();
    let mut local = None;
    for _ in 0..20 {
        let r = c.get("/", appended[0]).unwrap();
        assert_ne!(
            r.served_by(),
            Some("blue"),
            "EU traffic never leaves the EU"
        );
        if r.header("retry-after").is_some() {
            local = Some(r);
            break;
        }
    }
    let r = local.expect("the local reply once the EU stack is known down");
    assert_eq!(r.status, 503);
    let body = r.json();
    assert_eq!(body["error"], "no_eligible_stack");
    assert_eq!(body["rule"], "eu");
}
