//! The telemetry the brain judges on, through the real .wasm: requests on a worker, the
//! shared queue, the singleton's Report call. Checks the latency histogram, KPI counts,
//! requests per rule, new users and sticky requests, breaker openings and local replies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_filter::snapshot::{StackTelemetry, TelemetryBatch};
use switchyard_proxy_host::fixture::control_config;
use switchyard_proxy_host::{Request, Response, ScriptedPeer, Switchyard};

const WATCH: &str = "/switchyard.v1.DataPlane/Watch";
const REPORT: &str = "/switchyard.v1.DataPlane/Report";

const POLICY: &str = r#"{"name": "kpis", "stacks": [
    {"name": "blue", "region": "us"}, {"name": "green", "region": "us"}],
  "affinity": {"cookie": "sy_aff", "ttl_s": 3600, "secure": false, "epoch": 1},
  "breaker": {"consecutive_failures": 2},
  "kpis": [
    {"name": "orders", "method": "POST", "path_prefix": "/checkout", "status": "2xx"},
    {"name": "checkout_errors", "path_prefix": "/checkout", "status": "5xx"}],
  "rules": [{"id": "api", "match": {"path_prefixes": ["/api/"]},
             "route": {"targets": [{"stack": "green"}]}}],
  "default": {"targets": [{"stack": "blue"}], "affinity": true}}"#;

/// Every stack's telemetry over all reports, merged.
fn merged(batches: &[TelemetryBatch]) -> BTreeMap<String, StackTelemetry> {
    let mut out: BTreeMap<String, StackTelemetry> = BTreeMap::new();
    for s in batches.iter().flat_map(|b| &b.stacks) {
        out.entry(s.stack.clone())
            .and_modify(|m| m.merge(s))
            .or_insert_with(|| s.clone());
    }
    out
}

fn count(list: &[(String, u64)], name: &str) -> u64 {
    list.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, c)| *c)
        .sum()
}

#[test]
fn reports_carry_histogram_kpis_exposure_and_users() {
    let batches: Arc<Mutex<Vec<TelemetryBatch>>> = Arc::default();
    let seen = batches.clone();
    // A control service that never sends a snapshot (the plugin's policy serves) and
    // records every Report.
    let peer = ScriptedPeer::new()
        .stream(WATCH, |_, _| vec![])
        .unary(REPORT, move |_, _, msg| {
            seen.lock()
                .unwrap()
                .push(TelemetryBatch::decode(msg).map_err(|e| (3, e.to_string()))?);
            Ok(Vec::new())
        });
    let mut sy = Switchyard::builder()
        .policy(POLICY)
        .singleton(control_config("control", "n1"))
        .workers(1)
        .grpc_peer(peer)
        .build()
        .unwrap();

    // Blue (default rule, affinity): 8 orders from new users, one failed checkout, a
    // GET of the checkout page (no KPI), three sticky requests.
    let first = sy.send(Request::post("/checkout")).unwrap();
    assert_eq!(first.stack(), Some("blue"));
    let cookie = first
        .set_cookie("sy_aff")
        .expect("a new user gets a cookie");
    for _ in 0..7 {
        sy.send(Request::post("/checkout/confirm")).unwrap();
    }
    let failed = sy
        .send(Request::post("/checkout").respond(Response::status(503)))
        .unwrap();
    assert_eq!(failed.status(), 503);
    sy.send(Request::get("/checkout")).unwrap();
    for _ in 0..3 {
        let ex = sy
            .send(Request::get("/").cookie("sy_aff", &cookie.value))
            .unwrap();
        assert!(
            ex.set_cookie("sy_aff").is_none(),
            "a sticky user keeps its cookie"
        );
    }
    // Green (rule "api", no affinity): four good requests, then two failures open its
    // breaker, and the next request gets the filter's local reply.
    for _ in 0..4 {
        assert_eq!(
            sy.send(Request::get("/api/items")).unwrap().stack(),
            Some("green")
        );
    }
    for _ in 0..2 {
        sy.send(Request::get("/api/items").respond(Response::status(503)))
            .unwrap();
    }
    let local = sy.send(Request::get("/api/items")).unwrap();
    assert_eq!(local.stack(), None, "breaker open: nothing eligible");

    sy.advance(Duration::from_secs(3)).unwrap();
    let batches = batches.lock().unwrap();
    assert!(!batches.is_empty(), "no Report:\n{}", sy.singleton_logs());
    let stacks = merged(&batches);

    let blue = &stacks["blue"];
    assert_eq!(blue.requests, 13);
    assert_eq!(count(&blue.kpis, "orders"), 8);
    assert_eq!(count(&blue.kpis, "checkout_errors"), 1);
    assert_eq!(blue.by_rule, vec![("default".to_string(), 13)]);
    assert_eq!(blue.new_users, 10, "every request without a cookie got one");
    assert_eq!(blue.sticky_requests, 3);
    assert_eq!(blue.breaker_opens, 0);

    let green = &stacks["green"];
    assert_eq!(green.requests, 6);
    assert!(green.kpis.is_empty(), "{:?}", green.kpis);
    assert_eq!(green.by_rule, vec![("api".to_string(), 6)]);
    assert_eq!((green.new_users, green.sticky_requests), (0, 0));
    assert_eq!(green.breaker_opens, 1);
    assert_eq!(stacks["_local"].local_replies, 1);

    // One response in eight of each stack is timed: blue's 8th of 13 (green's 6 have
    // none); the virtual clock stands still within a request, so it took 0 µs.
    assert_eq!(blue.latency.total(), 1);
    assert_eq!(blue.latency.counts()[0], 1);
    assert_eq!(blue.latency.quantile(0.99), Some(0));
    assert!(green.latency.is_empty());
}

/// Latency samples are taken per stack: two stacks in strict alternation each get one
/// in eight of their own responses timed (a worker-wide one-in-eight would time only
/// one of them).
#[test]
fn round_robin_stacks_each_get_latency_samples() {
    let batches: Arc<Mutex<Vec<TelemetryBatch>>> = Arc::default();
    let seen = batches.clone();
    let peer = ScriptedPeer::new()
        .stream(WATCH, |_, _| vec![])
        .unary(REPORT, move |_, _, msg| {
            seen.lock()
                .unwrap()
                .push(TelemetryBatch::decode(msg).map_err(|e| (3, e.to_string()))?);
            Ok(Vec::new())
        });
    let mut sy = Switchyard::builder()
        .policy(
            r#"{"stacks": [{"name": "blue", "region": "us"}, {"name": "green", "region": "us"}],
                "default": {"targets": [{"stack": "blue"}, {"stack": "green"}]}}"#,
        )
        .singleton(control_config("control", "n1"))
        .workers(1)
        .grpc_peer(peer)
        .build()
        .unwrap();
    let mut served = Vec::new();
    for _ in 0..32 {
        served.push(
            sy.send(Request::get("/"))
                .unwrap()
                .stack()
                .unwrap()
                .to_string(),
        );
    }
    assert!(served.windows(2).all(|w| w[0] != w[1]), "{served:?}");
    sy.advance(Duration::from_secs(3)).unwrap();
    let stacks = merged(&batches.lock().unwrap());
    assert_eq!(stacks["blue"].latency.total(), 2);
    assert_eq!(stacks["green"].latency.total(), 2);
}
