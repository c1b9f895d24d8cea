//! The built switchyard_filter.wasm on the host: every pipeline stage, its edge cases,
//! and behaviour over virtual time.

use std::collections::HashMap;
use std::time::Duration;

use switchyard_proxy_host::fixture::{stacks_failing, TEST_KEYS};
use switchyard_proxy_host::grpc::HttpReply;
use switchyard_proxy_host::process::DEFAULT_START_UNIX_SECS;
use switchyard_proxy_host::{HostError, Request, Response, Switchyard};

fn demo() -> Switchyard {
    Switchyard::builder().build().expect("demo policy loads")
}

fn rfc3339(unix: u64) -> String {
    switchyard_filter::schedule::format_rfc3339(unix as i64)
}

fn two_stacks(extra: &str) -> String {
    format!(
        r#"{{
  "name": "two",
  "stacks": [
    {{ "name": "blue", "region": "us", "weight": 50 }},
    {{ "name": "green", "region": "us", "weight": 50 }}
  ],
  "breaker": {{ "consecutive_failures": 5, "open_ms": 2000, "half_open_requests": 2 }},
  {extra}
  "default": {{ "targets": [ {{ "stack": "blue" }}, {{ "stack": "green" }} ], "affinity": true }},
  "debug_header": true
}}"#
    )
}

#[test]
fn default_route_sets_the_stack_header_and_an_affinity_cookie() {
    let mut sy = demo();
    let ex = sy.send(Request::get("/")).unwrap();
    let stack = ex.stack().expect("routed").to_string();
    assert!(stack == "blue" || stack == "green", "{stack}");
    assert_eq!(
        ex.decision(),
        Some(format!("rule=default; stack={stack}; reason=weighted; affinity=new").as_str())
    );
    let cookie = ex.set_cookie("sy_aff").expect("affinity cookie");
    assert_eq!(cookie.max_age(), Some(3600));
    assert!(cookie.attribute("httponly").is_some());
    assert!(
        cookie.value.contains(&format!(".{stack}.1.")),
        "{}",
        cookie.value
    );
    assert!(sy.host_errors().is_empty(), "{:?}", sy.host_errors());
}

#[test]
fn smooth_weighted_round_robin_splits_evenly() {
    let mut sy = demo();
    let mut counts = HashMap::new();
    for _ in 0..100 {
        let ex = sy.send(Request::get("/")).unwrap();
        *counts.entry(ex.stack().unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("blue"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("green"), Some(&50), "{counts:?}");
}

#[test]
fn client_supplied_routing_headers_are_removed() {
    let mut sy = demo();
    let ex = sy
        .send(
            Request::get("/")
                .header("x-switchyard-stack", "canary")
                .header("x-switchyard-decision", "forged"),
        )
        .unwrap();
    assert_eq!(ex.upstream_headers("x-switchyard-stack").len(), 1);
    assert_ne!(ex.stack(), Some("canary"));
    assert!(ex.upstream_header("x-switchyard-decision").is_none());
    sy.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(sy.metric("switchyard.spoofed_headers_removed"), 2);
}

#[test]
fn geo_by_trusted_header_and_by_client_cidr() {
    let mut sy = demo();
    let ex = sy
        .send(Request::get("/").header("x-geo-country", "DE"))
        .unwrap();
    assert_eq!(ex.stack(), Some("eu"));
    assert!(ex.decision().unwrap().starts_with("rule=eu-residency;"));
    let ex = sy.send(Request::get("/").source("10.20.3.4:5555")).unwrap();
    assert_eq!(ex.stack(), Some("eu"));
    let ex = sy.send(Request::get("/").source("10.21.3.4:5555")).unwrap();
    assert_ne!(ex.stack(), Some("eu"));
    let ex = sy
        .send(Request::get("/").header("x-geo-country", "US"))
        .unwrap();
    assert_ne!(ex.stack(), Some("eu"));
}

#[test]
fn channels_and_cohorts() {
    let mut sy = demo();
    assert_eq!(
        sy.send(Request::get("/api").header("x-partner-key", "p1"))
            .unwrap()
            .stack(),
        Some("green")
    );
    assert_eq!(
        sy.send(Request::get("/partner/orders")).unwrap().stack(),
        Some("green")
    );
    assert_eq!(
        sy.send(Request::get("/").header("x-jwt-cohort", "premium"))
            .unwrap()
            .stack(),
        Some("blue")
    );
    assert_eq!(
        sy.send(Request::get("/").header("x-jwt-cohort", "beta"))
            .unwrap()
            .stack(),
        Some("canary")
    );
}

#[test]
fn mobile_users_hash_consistently_across_workers() {
    let mut sy = Switchyard::builder().workers(3).build().unwrap();
    for user in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        let mut seen = Vec::new();
        for w in 0..3 {
            for _ in 0..3 {
                let req = Request::get("/")
                    .header("user-agent", "SwitchyardShop-iOS/5.1")
                    .header("x-jwt-sub", user);
                let ex = sy.send_on(w, req).unwrap();
                assert!(
                    ex.decision().unwrap().contains("reason=hash"),
                    "{:?}",
                    ex.decision()
                );
                seen.push(ex.stack().unwrap().to_string());
            }
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "user {user} moved: {seen:?}");
    }
}

#[test]
fn affinity_cookie_keeps_the_user_on_the_stack() {
    let mut sy = demo();
    let first = sy.send(Request::get("/")).unwrap();
    let stack = first.stack().unwrap().to_string();
    let cookie = first.set_cookie("sy_aff").unwrap();
    for _ in 0..10 {
        let ex = sy
            .send(Request::get("/").cookie("sy_aff", &cookie.value))
            .unwrap();
        assert_eq!(ex.stack(), Some(stack.as_str()));
        assert!(
            ex.decision().unwrap().contains("reason=affinity"),
            "{:?}",
            ex.decision()
        );
        assert!(ex.set_cookie("sy_aff").is_none(), "no refresh while young");
    }
    // Past half its life the cookie is refreshed.
    sy.advance(Duration::from_secs(1801)).unwrap();
    let ex = sy
        .send(Request::get("/").cookie("sy_aff", &cookie.value))
        .unwrap();
    assert_eq!(ex.stack(), Some(stack.as_str()));
    assert!(ex.set_cookie("sy_aff").is_some());
}

#[test]
fn expired_forged_stale_and_repeated_cookies_are_reassigned_never_errors() {
    let mut sy = demo();
    let first = sy.send(Request::get("/")).unwrap();
    let value = first.set_cookie("sy_aff").unwrap().value;

    let mut forged = value.clone();
    forged.pop();
    forged.push(if value.ends_with('A') { 'B' } else { 'A' });
    let ex = sy
        .send(Request::get("/").cookie("sy_aff", &forged))
        .unwrap();
    assert!(
        ex.decision().unwrap().ends_with("affinity=forged"),
        "{:?}",
        ex.decision()
    );
    assert!(ex.set_cookie("sy_aff").is_some());

    // Another epoch, correctly signed with the VM's own key.
    let keys = switchyard_filter::affinity::Keyring::parse(TEST_KEYS).unwrap();
    let stale = keys.sign("blue", 0, DEFAULT_START_UNIX_SECS + 600);
    let ex = sy.send(Request::get("/").cookie("sy_aff", &stale)).unwrap();
    assert!(
        ex.decision().unwrap().ends_with("affinity=stale"),
        "{:?}",
        ex.decision()
    );

    // Two cookies of the routing name: hostile, treated as forged.
    let ex = sy
        .send(
            Request::get("/")
                .cookie("sy_aff", &value)
                .cookie("sy_aff", &value),
        )
        .unwrap();
    assert!(
        ex.decision().unwrap().ends_with("affinity=forged"),
        "{:?}",
        ex.decision()
    );

    sy.advance(Duration::from_secs(3600)).unwrap();
    let ex = sy.send(Request::get("/").cookie("sy_aff", &value)).unwrap();
    assert!(
        ex.decision().unwrap().ends_with("affinity=expired"),
        "{:?}",
        ex.decision()
    );
    assert!(ex.stack().is_some());
    sy.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(sy.metric("switchyard.affinity_forged"), 2);
    assert_eq!(sy.metric("switchyard.affinity_stale"), 1);
    assert_eq!(sy.metric("switchyard.affinity_expired"), 1);
    assert_eq!(sy.metric("switchyard.hostile_requests"), 1);
}

#[test]
fn without_keys_no_cookie_is_set_and_the_log_says_why() {
    let mut sy = Switchyard::builder().affinity_keys(None).build().unwrap();
    let ex = sy.send(Request::get("/")).unwrap();
    assert!(ex.stack().is_some());
    assert!(ex.set_cookie("sy_aff").is_none());
    assert!(
        sy.logs_text(0)
            .contains("SWITCHYARD_AFFINITY_KEYS is not set"),
        "{}",
        sy.logs_text(0)
    );
}

#[test]
fn an_invalid_policy_is_rejected_with_the_field_path() {
    let err = Switchyard::builder()
        .policy(r#"{"stacks": [], "default": {"targets": [{"stack": "nope"}]}, "bogus": 1}"#)
        .build();
    match err {
        Err(HostError::ConfigureRejected { logs, .. }) => {
            assert!(logs.contains("invalid policy"), "{logs}")
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("accepted an invalid policy"),
    }
}

#[test]
fn breaker_opens_then_half_opens_then_closes() {
    let mut sy = Switchyard::builder()
        .policy(two_stacks(""))
        .build()
        .unwrap();
    let failing_blue = stacks_failing(&["blue"], 503);
    // Blue fails five times in a row: its breaker opens.
    let mut blue_failures = 0;
    while blue_failures < 5 {
        let ex = sy
            .send(Request::get("/").upstream(failing_blue.clone()))
            .unwrap();
        if ex.stack() == Some("blue") {
            blue_failures += 1;
        }
    }
    for _ in 0..20 {
        let ex = sy
            .send(Request::get("/").upstream(failing_blue.clone()))
            .unwrap();
        assert_eq!(ex.stack(), Some("green"), "blue is open");
    }
    assert!(sy
        .logs_text(0)
        .contains("circuit breaker of stack 'blue' is now Open"));
    sy.advance(Duration::from_millis(1999)).unwrap();
    assert_eq!(sy.send(Request::get("/")).unwrap().stack(), Some("green"));
    assert_eq!(sy.send(Request::get("/")).unwrap().stack(), Some("green"));
    sy.advance(Duration::from_millis(1)).unwrap();
    // Half-open: at most two trial requests reach blue; both succeed and it closes.
    let mut trials = 0;
    for _ in 0..10 {
        if sy.send(Request::get("/")).unwrap().stack() == Some("blue") {
            trials += 1;
        }
    }
    assert!(trials >= 2, "blue got {trials} requests after closing");
    assert!(
        sy.logs_text(0)
            .contains("circuit breaker of stack 'blue' is now Closed"),
        "{}",
        sy.logs_text(0)
    );
    // Closed again: the even split is back.
    let blues = (0..20)
        .filter(|_| sy.send(Request::get("/")).unwrap().stack() == Some("blue"))
        .count();
    assert_eq!(blues, 10);
    sy.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(sy.metric("switchyard.stack.blue.breaker_state"), 0);
    assert_eq!(sy.metric("switchyard.stack.blue.rq_5xx"), 5);
}

#[test]
fn a_failed_trial_reopens_the_breaker_for_longer() {
    let mut sy = Switchyard::builder()
        .policy(two_stacks(""))
        .build()
        .unwrap();
    let failing_blue = stacks_failing(&["blue"], 503);
    let mut n = 0;
    while n < 5 {
        if sy
            .send(Request::get("/").upstream(failing_blue.clone()))
            .unwrap()
            .stack()
            == Some("blue")
        {
            n += 1;
        }
    }
    sy.advance(Duration::from_millis(2000)).unwrap();
    // The trial fails: open again for 2 × open_ms.
    loop {
        if sy
            .send(Request::get("/").upstream(failing_blue.clone()))
            .unwrap()
            .stack()
            == Some("blue")
        {
            break;
        }
    }
    sy.advance(Duration::from_millis(3999)).unwrap();
    assert!((0..6).all(|_| sy.send(Request::get("/")).unwrap().stack() == Some("green")));
    sy.advance(Duration::from_millis(1)).unwrap();
    assert!((0..6).any(|_| sy.send(Request::get("/")).unwrap().stack() == Some("blue")));
}

#[test]
fn breakers_are_per_worker() {
    let mut sy = Switchyard::builder()
        .policy(two_stacks(""))
        .workers(2)
        .build()
        .unwrap();
    let failing_blue = stacks_failing(&["blue"], 503);
    let mut n = 0;
    while n < 5 {
        if sy
            .send_on(0, Request::get("/").upstream(failing_blue.clone()))
            .unwrap()
            .stack()
            == Some("blue")
        {
            n += 1;
        }
    }
    assert!((0..4).all(|_| sy.send_on(0, Request::get("/")).unwrap().stack() == Some("green")));
    assert!((0..4).any(|_| sy.send_on(1, Request::get("/")).unwrap().stack() == Some("blue")));
}

#[test]
fn health_probes_close_an_open_breaker() {
    let policy = two_stacks("").replace(
        r#"{ "name": "blue", "region": "us", "weight": 50 }"#,
        r#"{ "name": "blue", "region": "us", "weight": 50, "health_path": "/healthz" }"#,
    );
    let mut sy = Switchyard::builder().policy(policy).build().unwrap();
    let probes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = probes.clone();
    sy.process.set_http_responder(move |_, call| {
        seen.lock().unwrap().push((
            call.upstream.clone(),
            call.header(":path").unwrap_or("").to_string(),
        ));
        Some(HttpReply::status(200, "ok"))
    });
    let failing_blue = stacks_failing(&["blue"], 503);
    let mut n = 0;
    while n < 5 {
        if sy
            .send(Request::get("/").upstream(failing_blue.clone()))
            .unwrap()
            .stack()
            == Some("blue")
        {
            n += 1;
        }
    }
    sy.advance(Duration::from_secs(3)).unwrap();
    assert!(
        probes
            .lock()
            .unwrap()
            .contains(&("blue".to_string(), "/healthz".to_string())),
        "{:?}",
        probes.lock().unwrap()
    );
    assert!(
        sy.logs_text(0)
            .contains("health probe of stack 'blue' succeeded"),
        "{}",
        sy.logs_text(0)
    );
    assert!((0..4).any(|_| sy.send(Request::get("/")).unwrap().stack() == Some("blue")));
}

#[test]
fn residency_never_fails_over_outside_the_region_it_sends_a_local_503() {
    let mut sy = demo();
    let failing_eu = stacks_failing(&["eu"], 503);
    for _ in 0..5 {
        let ex = sy
            .send(
                Request::get("/")
                    .header("x-geo-country", "FR")
                    .upstream(failing_eu.clone()),
            )
            .unwrap();
        assert_eq!(ex.stack(), Some("eu"));
    }
    let ex = sy
        .send(Request::get("/").header("x-geo-country", "FR"))
        .unwrap();
    assert!(
        ex.upstream_request.is_none(),
        "EU traffic left the EU: {:?}",
        ex.stack()
    );
    let local = ex.local_response.as_ref().expect("local reply");
    assert_eq!(local.status, 503);
    assert_eq!(local.header("retry-after"), Some("10"));
    assert_eq!(local.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&local.body).unwrap();
    assert_eq!(body["error"], "no_eligible_stack");
    assert_eq!(body["rule"], "eu-residency");
    assert_eq!(ex.status(), 503);
    assert!(
        ex.set_cookie("sy_aff").is_none(),
        "no cookie on a local reply"
    );
    assert_eq!(
        ex.decision(),
        Some("rule=eu-residency; reason=no_eligible_stack")
    );
    sy.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(sy.metric("switchyard.local_replies"), 1);
}

#[test]
fn campaign_windows_open_and_close_on_the_virtual_clock() {
    let t0 = DEFAULT_START_UNIX_SECS;
    let rules = format!(
        r#""rules": [ {{ "id": "flash", "priority": 1,
            "match": {{ "path_prefixes": ["/sale/"], "time": {{ "campaigns": [ {{ "name": "flash", "start": "{}", "end": "{}" }} ] }} }},
            "route": {{ "targets": [ {{ "stack": "green" }} ] }} }} ],"#,
        rfc3339(t0 + 3600),
        rfc3339(t0 + 7200)
    );
    let mut sy = Switchyard::builder()
        .policy(two_stacks(&rules))
        .build()
        .unwrap();
    let rule = |sy: &mut Switchyard| {
        sy.send(Request::get("/sale/shoes"))
            .unwrap()
            .decision()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(rule(&mut sy), "rule=default");
    sy.advance(Duration::from_secs(3599)).unwrap();
    assert_eq!(rule(&mut sy), "rule=default");
    sy.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(rule(&mut sy), "rule=flash");
    assert_eq!(
        sy.send(Request::get("/sale/hats")).unwrap().stack(),
        Some("green")
    );
    sy.advance(Duration::from_secs(3599)).unwrap();
    assert_eq!(rule(&mut sy), "rule=flash");
    sy.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(rule(&mut sy), "rule=default", "end is exclusive");
}

#[test]
fn daily_windows_and_days_of_week() {
    // 2026-01-05 is a Monday; the window is 09:00–17:00 UTC on weekdays.
    let rules = r#""rules": [ { "id": "office", "priority": 1,
        "match": { "time": { "windows": [ { "start": "09:00", "end": "17:00" } ], "days": ["mon", "tue", "wed", "thu", "fri"] } },
        "route": { "targets": [ { "stack": "green" } ] } } ],"#;
    let mut sy = Switchyard::builder()
        .policy(two_stacks(rules))
        .build()
        .unwrap();
    let rule = |sy: &mut Switchyard| {
        sy.send(Request::get("/"))
            .unwrap()
            .decision()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(rule(&mut sy), "rule=default", "Monday 00:00");
    sy.advance(Duration::from_secs(9 * 3600)).unwrap();
    assert_eq!(rule(&mut sy), "rule=office", "Monday 09:00");
    sy.advance(Duration::from_secs(8 * 3600)).unwrap();
    assert_eq!(rule(&mut sy), "rule=default", "Monday 17:00");
    sy.advance(Duration::from_secs(5 * 86_400 - 8 * 3600))
        .unwrap();
    assert_eq!(rule(&mut sy), "rule=default", "Saturday 09:00");
}

#[test]
fn metrics_count_per_stack_and_record_latency() {
    let mut sy = demo();
    // 16 responses: the latency histogram samples 1 response in 8.
    for _ in 0..15 {
        sy.send(Request::get("/").respond(Response::status(200)))
            .unwrap();
    }
    sy.send(
        Request::get("/")
            .header("x-partner-key", "k")
            .respond(Response::status(404)),
    )
    .unwrap();
    sy.advance(Duration::from_secs(1)).unwrap();
    let total =
        sy.metric("switchyard.stack.blue.rq_total") + sy.metric("switchyard.stack.green.rq_total");
    assert_eq!(total, 16);
    assert_eq!(sy.metric("switchyard.stack.green.rq_4xx"), 1);
    assert_eq!(sy.metric("switchyard.rule.partner-api.matched"), 1);
    assert_eq!(sy.metric("switchyard.rule.default.matched"), 15);
    let latencies = sy.histogram("switchyard.stack.blue.latency_ms").len()
        + sy.histogram("switchyard.stack.green.latency_ms").len();
    assert_eq!(latencies, 2, "1 response in 8 has its latency recorded");
}

/// A stream that ends without response headers is counted (`rq_reset`) but never
/// opens the breaker: upstream failures reach the filter as Envoy's own 503/504 with
/// headers, so what ends without any is almost always the client going away, and five
/// cancelled requests must not take a stack out.
#[test]
fn a_stream_without_response_is_counted_but_does_not_open_the_breaker() {
    let mut sy = Switchyard::builder()
        .policy(two_stacks(""))
        .build()
        .unwrap();
    let reset = std::sync::Arc::new(|_: &[switchyard_proxy_host::abi::Pair]| Response::reset());
    let mut blue_resets = 0;
    while blue_resets < 5 {
        let ex = sy.send(Request::get("/").upstream(reset.clone())).unwrap();
        if ex.stack() == Some("blue") {
            blue_resets += 1;
        }
    }
    sy.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(sy.metric("switchyard.stack.blue.rq_reset"), 5);
    assert!(
        (0..6).any(|_| sy.send(Request::get("/")).unwrap().stack() == Some("blue")),
        "client resets leave blue's breaker closed"
    );
}

#[test]
fn percentage_buckets_are_stable_and_about_the_right_size() {
    let mut sy = demo();
    let mut in_slice = 0;
    for u in 0..2000 {
        let req = || Request::get("/").header("x-jwt-sub", format!("user-{u}"));
        let a = sy.send(req()).unwrap();
        let b = sy.send(req()).unwrap();
        let slice_a = a.decision().unwrap().starts_with("rule=canary-slice;");
        let slice_b = b.decision().unwrap().starts_with("rule=canary-slice;");
        assert_eq!(slice_a, slice_b, "user-{u} moved between buckets");
        if slice_a {
            assert_eq!(a.stack(), Some("canary"));
            in_slice += 1;
        }
    }
    assert!(
        (60..=140).contains(&in_slice),
        "{in_slice} of 2000 users in a 5% slice"
    );
}

#[test]
fn ipv6_and_odd_client_addresses_never_break_routing() {
    let mut sy = demo();
    for addr in [
        "[2001:db8::7]:443",
        "[::ffff:10.20.1.1]:80",
        "10.20.1.1:0",
        "not an address",
        "",
    ] {
        let ex = sy.send(Request::get("/").source(addr)).unwrap();
        assert!(ex.stack().is_some(), "{addr}: {:?}", ex.local_response);
    }
    let ex = sy
        .send(Request::get("/").property("source.address", "10.20.9.9:1"))
        .unwrap();
    assert_eq!(ex.stack(), Some("eu"));
    assert!(sy.host_errors().is_empty());
}

#[test]
fn repeated_routing_headers_are_hostile_and_never_pick_a_rule() {
    let mut sy = demo();
    let ex = sy
        .send(
            Request::get("/")
                .header("x-jwt-cohort", "beta")
                .header("x-jwt-cohort", "beta"),
        )
        .unwrap();
    assert_ne!(
        ex.stack(),
        Some("canary"),
        "a repeated cohort header chose the beta rule: {:?}",
        ex.decision()
    );
    let ex = sy
        .send(
            Request::get("/")
                .header("x-partner-key", "a")
                .header("x-partner-key", "b"),
        )
        .unwrap();
    assert!(ex.stack().is_some());
    sy.advance(Duration::from_secs(1)).unwrap();
    assert!(sy.metric("switchyard.hostile_requests") >= 1);
}

/// The demo policy with `classify.geo.ambiguous` replaced (`None`: removed).
fn demo_ambiguous(mode: Option<serde_json::Value>) -> Switchyard {
    let path = switchyard_proxy_host::build::workspace_root().join("examples/policies/demo.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let geo = doc["classify"]["geo"].as_object_mut().unwrap();
    match mode {
        Some(m) => geo.insert("ambiguous".into(), m),
        None => geo.remove("ambiguous"),
    };
    Switchyard::builder()
        .policy(doc.to_string())
        .build()
        .expect("policy loads")
}

#[test]
fn an_eu_visitor_with_an_appended_geo_header_stays_in_the_eu() {
    // The demo policy: `most_restrictive`.
    let mut sy = demo();
    for req in [
        Request::get("/cart")
            .header("x-geo-country", "DE")
            .header("x-geo-country", "US"),
        Request::get("/cart")
            .header("x-geo-country", "US")
            .header("x-geo-country", "DE"),
        Request::get("/cart").header("x-geo-country", "US, DE"),
    ] {
        let ex = sy.send(req).unwrap();
        assert_eq!(ex.stack(), Some("eu"), "{:?}", ex.decision());
        assert!(ex.decision().unwrap().starts_with("rule=eu-residency;"));
    }
    // No EU value: the values carry no residency, the header gives no region.
    let ex = sy
        .send(
            Request::get("/")
                .header("x-geo-country", "US")
                .header("x-geo-country", "CA"),
        )
        .unwrap();
    assert!(ex.decision().unwrap().starts_with("rule=default;"));
    sy.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(sy.metric("switchyard.hostile_requests"), 4);

    // The residency holds when the EU stack is down too: the local 503, never the US.
    let failing_eu = stacks_failing(&["eu"], 503);
    for _ in 0..6 {
        let ex = sy
            .send(
                Request::get("/")
                    .header("x-geo-country", "FR")
                    .header("x-geo-country", "US")
                    .upstream(failing_eu.clone()),
            )
            .unwrap();
        assert!(ex.stack().is_none() || ex.stack() == Some("eu"));
    }
    let ex = sy
        .send(
            Request::get("/")
                .header("x-geo-country", "US")
                .header("x-geo-country", "FR"),
        )
        .unwrap();
    assert_eq!(ex.status(), 503);
    assert_eq!(
        ex.decision(),
        Some("rule=eu-residency; reason=no_eligible_stack")
    );
}

#[test]
fn ambiguous_geography_without_the_setting_leaves_the_eu() {
    // Why validation warns: the hole the setting closes.
    let mut sy = demo_ambiguous(None);
    let ex = sy
        .send(
            Request::get("/")
                .header("x-geo-country", "DE")
                .header("x-geo-country", "US"),
        )
        .unwrap();
    assert_ne!(ex.stack(), Some("eu"));
    assert!(ex.decision().unwrap().starts_with("rule=default;"));
}

#[test]
fn ambiguous_geography_rejected_or_assumed() {
    let mut sy = demo_ambiguous(Some(serde_json::json!({ "mode": "reject" })));
    let ex = sy
        .send(
            Request::get("/")
                .header("x-geo-country", "DE")
                .header("x-geo-country", "US"),
        )
        .unwrap();
    assert!(ex.upstream_request.is_none());
    let local = ex.local_response.as_ref().expect("local reply");
    assert_eq!(local.status, 400);
    assert_eq!(local.header("retry-after"), None);
    assert_eq!(local.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&local.body).unwrap();
    assert_eq!(body["error"], "ambiguous_geo");
    assert_eq!(body["retry_after_s"], 0);
    assert!(ex.set_cookie("sy_aff").is_none());
    assert_eq!(ex.decision(), Some("rule=default; reason=ambiguous_geo"));
    // One value: routed as always.
    let ex = sy
        .send(Request::get("/").header("x-geo-country", "DE"))
        .unwrap();
    assert_eq!(ex.stack(), Some("eu"));

    let mut sy = demo_ambiguous(Some(
        serde_json::json!({ "mode": "assume", "region": "eu" }),
    ));
    let ex = sy
        .send(
            Request::get("/")
                .header("x-geo-country", "US")
                .header("x-geo-country", "CA"),
        )
        .unwrap();
    assert_eq!(ex.stack(), Some("eu"));
}

#[test]
fn huge_and_many_headers_still_get_a_decision() {
    let mut sy = demo();
    let mut req = Request::get("/").header("x-big", vec![b'a'; 256 * 1024]);
    for i in 0..500 {
        req = req.header(&format!("x-h{i}"), "v");
    }
    let ex = sy.send(req.header("x-geo-country", "NL")).unwrap();
    assert_eq!(ex.stack(), Some("eu"));
}

#[test]
fn breaker_opened_counts_openings_not_seconds_open() {
    let mut sy = Switchyard::builder()
        .policy(two_stacks(""))
        .build()
        .unwrap();
    let failing_blue = stacks_failing(&["blue"], 503);
    let fail_blue_once = |sy: &mut Switchyard| loop {
        let ex = sy
            .send(Request::get("/").upstream(failing_blue.clone()))
            .unwrap();
        if ex.stack() == Some("blue") {
            break;
        }
    };
    for _ in 0..5 {
        fail_blue_once(&mut sy);
    }
    // Open for open_ms (2 s), flushed every second: two flushes see it open.
    sy.advance(Duration::from_millis(1500)).unwrap();
    assert_eq!(sy.metric("switchyard.stack.blue.breaker_state"), 1);
    assert_eq!(sy.metric("switchyard.stack.blue.breaker_opened"), 1);
    sy.advance(Duration::from_millis(500)).unwrap();
    // Half-open; the trial fails: the second opening (for 4 s), and blue keeps failing
    // every request it gets for several flush intervals.
    fail_blue_once(&mut sy);
    for _ in 0..6 {
        sy.advance(Duration::from_secs(1)).unwrap();
        for _ in 0..4 {
            sy.send(Request::get("/").upstream(failing_blue.clone()))
                .unwrap();
        }
    }
    assert!(
        sy.logs_text(0).matches("is now Open").count() >= 2,
        "{}",
        sy.logs_text(0)
    );
    let openings = sy.logs_text(0).matches("'blue' is now Open").count() as i64;
    sy.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(
        sy.metric("switchyard.stack.blue.breaker_opened"),
        openings,
        "one count per opening"
    );
}
