//! Degraded mode on the host (issue 15): the built .wasm queues a request in the route's
//! intake when no stack is eligible, with an idempotency key and the routing context the
//! intake trusts only from the filter; the client's values of those headers never reach
//! it, and an unreachable intake is answered with the route's local reply.

use switchyard_proxy_host::fixture::stacks_failing;
use switchyard_proxy_host::{Request, Response, Switchyard};

/// blue and green (us) and eu; `POST /checkout` queues in `intake_us`, the EU rule in
/// `intake_eu`, the default route has no queue.
const POLICY: &str = r#"{
  "stacks": [
    { "name": "blue", "region": "us" }, { "name": "green", "region": "us" },
    { "name": "eu", "region": "eu" }
  ],
  "classify": { "geo": { "header": "x-geo-country", "countries": { "DE": "eu" } } },
  "breaker": { "consecutive_failures": 2, "open_ms": 60000, "max_open_ms": 60000 },
  "rules": [
    { "id": "eu-checkout", "priority": 1, "match": { "regions": ["eu"], "methods": ["POST"], "path_prefixes": ["/checkout"] },
      "route": { "targets": [ { "stack": "eu" } ], "residency": ["eu"],
                 "fallback": { "queue": { "cluster": "intake_eu", "region": "eu" } } } },
    { "id": "checkout", "priority": 2, "match": { "methods": ["POST"], "path_prefixes": ["/checkout"] },
      "route": { "targets": [ { "stack": "blue" }, { "stack": "green" } ],
                 "fallback": { "queue": { "cluster": "intake_us", "region": "us", "when": "no_eligible" },
                               "local": { "status": 503, "retry_after_s": 7, "message": "checkout is down" } } } }
  ],
  "default": { "targets": [ { "stack": "blue" }, { "stack": "green" } ] },
  "debug_header": true
}"#;

/// Every stack's breaker open: each fails (500) until its breaker opens.
fn all_down() -> Switchyard {
    let mut sy = Switchyard::builder().policy(POLICY).build().unwrap();
    let failing = stacks_failing(&["blue", "green", "eu"], 500);
    for _ in 0..4 {
        sy.send(Request::get("/").upstream(failing.clone()))
            .unwrap();
    }
    for _ in 0..2 {
        sy.send(
            Request::post("/checkout")
                .header("x-geo-country", "DE")
                .upstream(failing.clone()),
        )
        .unwrap();
    }
    sy
}

/// The intake: answers 202 with its marker header.
fn intake() -> Response {
    Response::status(202).header("x-switchyard-intake", "us")
}

#[test]
fn no_eligible_stack_queues_in_the_intake_with_key_and_context() {
    let mut sy = all_down();
    let ex = sy
        .send(Request::post("/checkout").respond(intake()))
        .unwrap();
    assert_eq!(ex.stack(), Some("intake_us"));
    assert_eq!(ex.status(), 202);
    assert_eq!(
        ex.upstream_header("x-switchyard-queue-rule"),
        Some("checkout")
    );
    assert_eq!(ex.upstream_header("x-switchyard-queue-stack"), Some("blue"));
    assert_eq!(
        ex.upstream_header("x-switchyard-queue-segment"),
        Some("-/web")
    );
    let key = ex.upstream_header("idempotency-key").unwrap().to_string();
    assert!(
        key.len() == 35
            && key.starts_with("sy-")
            && key[3..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    // Another order gets another key.
    let other = sy
        .send(Request::post("/checkout").respond(intake()))
        .unwrap();
    assert_ne!(other.upstream_header("idempotency-key"), Some(key.as_str()));
    // Routes without a queue still answer locally.
    let ex = sy.send(Request::get("/")).unwrap();
    assert_eq!(ex.status(), 503);
    assert!(ex.stack().is_none());
    sy.advance(std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(sy.metric("switchyard.queued_requests"), 2);
    assert!(sy.host_errors().is_empty(), "{:?}", sy.host_errors());
}

#[test]
fn the_clients_key_is_kept_and_forged_context_is_replaced() {
    let mut sy = all_down();
    let ex = sy
        .send(
            Request::post("/checkout")
                .header("idempotency-key", "order-42")
                .header("x-switchyard-queue-rule", "vip")
                .header("x-switchyard-queue-rule", "vip2")
                .header("x-switchyard-queue-stack", "eu")
                .header("x-switchyard-queue-segment", "eu/partner")
                .respond(intake()),
        )
        .unwrap();
    assert_eq!(ex.upstream_headers("idempotency-key"), vec!["order-42"]);
    assert_eq!(
        ex.upstream_headers("x-switchyard-queue-rule"),
        vec!["checkout"]
    );
    assert_eq!(
        ex.upstream_headers("x-switchyard-queue-stack"),
        vec!["blue"]
    );
    assert_eq!(
        ex.upstream_headers("x-switchyard-queue-segment"),
        vec!["-/web"]
    );
}

#[test]
fn residency_an_eu_order_is_queued_in_the_eu_intake() {
    let mut sy = all_down();
    let ex = sy
        .send(
            Request::post("/checkout")
                .header("x-geo-country", "DE")
                .respond(intake()),
        )
        .unwrap();
    assert_eq!(ex.stack(), Some("intake_eu"));
    assert_eq!(
        ex.upstream_header("x-switchyard-queue-rule"),
        Some("eu-checkout")
    );
    assert_eq!(ex.upstream_header("x-switchyard-queue-stack"), Some("eu"));
    assert_eq!(
        ex.upstream_header("x-switchyard-queue-segment"),
        Some("eu/web")
    );
}

#[test]
fn an_unreachable_intake_gets_the_routes_local_reply() {
    let mut sy = all_down();
    // Envoy's own 503 (no intake header): the route's local reply instead.
    let ex = sy
        .send(Request::post("/checkout").respond(Response::status(503)))
        .unwrap();
    assert_eq!(ex.status(), 503);
    assert_eq!(ex.response_header("retry-after"), Some("7"));
    assert!(
        ex.body_str().contains("checkout is down"),
        "{}",
        ex.body_str()
    );
    // The intake's own answers pass, whatever their status.
    let ex = sy
        .send(
            Request::post("/checkout").respond(
                Response::status(503)
                    .header("x-switchyard-intake", "us")
                    .body("broker down"),
            ),
        )
        .unwrap();
    assert_eq!(ex.body_str(), "broker down");
    assert!(sy.host_errors().is_empty(), "{:?}", sy.host_errors());
}

#[test]
fn healthy_stacks_are_used_and_nothing_is_queued() {
    let mut sy = Switchyard::builder().policy(POLICY).build().unwrap();
    let ex = sy.send(Request::post("/checkout")).unwrap();
    assert!(matches!(ex.stack(), Some("blue" | "green")));
    assert!(ex.upstream_header("idempotency-key").is_none());
    sy.advance(std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(sy.metric("switchyard.queued_requests"), 0);
}
