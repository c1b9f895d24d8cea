//! The gRPC and HTTP APIs against an in-process server with a real (tempdir) store.

use std::time::Duration;

use crate::common::*;
use switchyard_control::proto::v1;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn apply_get_history_rollback() {
    let h = Harness::start().await;
    let p1 = policy("one", &["blue", "green"]);
    let p2 = policy("two", &["blue", "green", "canary"]);

    let r1 = h.apply(&p1).await;
    assert_eq!((r1.version, r1.changed), (1, true));
    let r2 = h.apply(&p2).await;
    assert_eq!((r2.version, r2.changed), (2, true));
    assert!(r2.info.unwrap().summary.contains("stacks added: canary"));
    // The same document again changes nothing.
    let again = h.apply(&p2).await;
    assert_eq!((again.version, again.changed), (2, false));

    let mut pol = h.policies();
    let cur = pol
        .get(v1::GetPolicyRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cur.policy_json, p2);
    let old = pol
        .get(v1::GetPolicyRequest { version: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.policy_json, p1);
    assert_eq!(old.info.unwrap().policy_name, "one");
    let missing = pol
        .get(v1::GetPolicyRequest { version: 99 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let rb = pol
        .rollback(v1::RollbackRequest {
            to_version: 1,
            actor: "alice".into(),
            comment: "canary misbehaves".into(),
            expected_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rb.version, rb.changed), (3, true));
    let info = rb.info.unwrap();
    assert_eq!(info.kind, "policy_rollback");
    assert_eq!(info.policy_version, 3);
    let cur = pol
        .get(v1::GetPolicyRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cur.policy_json, p1);

    let hist = pol
        .history(v1::HistoryRequest {
            limit: 0,
            before_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hist.current_version, 3);
    let versions: Vec<u64> = hist.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![3, 2, 1]);
    assert_eq!(hist.versions[0].actor, "alice");
    assert_eq!(hist.versions[0].comment, "canary misbehaves");
    let page = pol
        .history(v1::HistoryRequest {
            limit: 1,
            before_version: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2]
    );

    let bad = pol
        .rollback(v1::RollbackRequest {
            to_version: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::NotFound);
    h.stop().await;
}

#[tokio::test]
async fn invalid_policy_is_rejected_with_every_field_path_and_nothing_changes() {
    let h = Harness::start().await;
    let good = policy("good", &["blue", "green"]);
    h.apply(&good).await;
    let mut w = h.watch("envoy-1", 1).await;

    let err = h
        .policies()
        .apply(v1::ApplyPolicyRequest {
            policy_json: INVALID.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for path in [
        "stacks[1].name",
        "stacks[1].region",
        "default.targets[0].stack",
    ] {
        assert!(
            err.message().contains(path),
            "message lists {path}: {}",
            err.message()
        );
    }
    let details = err.get_details_bad_request().expect("BadRequest details");
    let fields: Vec<&str> = details
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(
        fields,
        vec![
            "stacks[1].name",
            "stacks[1].region",
            "default.targets[0].stack"
        ]
    );

    // Validate says the same and changes nothing either.
    let verr = h
        .policies()
        .validate(v1::ValidatePolicyRequest {
            policy_json: INVALID.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        verr.get_details_bad_request()
            .unwrap()
            .field_violations
            .len(),
        3
    );
    let syntax = h
        .policies()
        .apply(v1::ApplyPolicyRequest {
            policy_json: "{not json".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(syntax.code(), Code::InvalidArgument);

    let cur = h
        .policies()
        .get(v1::GetPolicyRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cur.info.unwrap().version, 1);
    assert_eq!(cur.policy_json, good);
    w.expect_quiet(Duration::from_millis(200)).await;
    h.stop().await;
}

/// A policy with `n` rules, each naming a stack that does not exist.
fn policy_with_bad_rules(n: usize) -> String {
    let rules: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id":"r{i}","match":{{"path_prefixes":["/p{i}"]}},"route":{{"targets":[{{"stack":"missing-{i}"}}]}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"name":"big","stacks":[{{"name":"blue","region":"us"}}],"rules":[{}],"default":{{"targets":[{{"stack":"blue"}}]}}}}"#,
        rules.join(",")
    )
}

#[tokio::test]
async fn thousands_of_problems_fit_in_a_status_and_full_report_has_them_all() {
    let h = Harness::start().await;
    let doc = policy_with_bad_rules(3_000);
    // Apply: a bounded INVALID_ARGUMENT, not an HTTP/2 protocol error.
    let err = h
        .policies()
        .apply(v1::ApplyPolicyRequest {
            policy_json: doc.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("invalid policy (3000 problems)"),
        "{}",
        &err.message()[..200]
    );
    assert!(
        err.message().contains("… and 2950 more"),
        "{}",
        err.message()
    );
    let shown = err.get_details_bad_request().unwrap().field_violations;
    assert_eq!(shown.len(), 50);
    assert_eq!(shown[0].field, "rules[0].route.targets[0].stack");
    // Validate with full_report: every problem, in the body.
    let r = h
        .policies()
        .validate(v1::ValidatePolicyRequest {
            policy_json: doc,
            full_report: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.valid);
    assert_eq!(r.errors.len(), 3_000);
    assert_eq!(r.errors[2_999].path, "rules[2999].route.targets[0].stack");
    assert_eq!(h.status().await.current_version, 0, "nothing applied");
    h.stop().await;
}

#[tokio::test]
async fn validate_returns_stacks_and_warnings() {
    let h = Harness::start().await;
    let r = h
        .policies()
        .validate(v1::ValidatePolicyRequest {
            policy_json: policy("v", &["blue", "green"]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.stacks, vec!["blue", "green"]);
    assert_eq!(
        h.status().await.current_version,
        0,
        "validate changes nothing"
    );
    h.stop().await;
}

#[tokio::test]
async fn expected_version_is_compare_and_set() {
    let h = Harness::start().await;
    h.apply(&policy("a", &["blue"])).await;
    let stale = h
        .policies()
        .apply(v1::ApplyPolicyRequest {
            policy_json: policy("b", &["blue"]),
            expected_version: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    let ok = h
        .policies()
        .apply(v1::ApplyPolicyRequest {
            policy_json: policy("b", &["blue"]),
            expected_version: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.version, 2);
    h.stop().await;
}

fn stack<'a>(s: &'a v1::Snapshot, name: &str) -> &'a v1::StackState {
    s.stacks
        .iter()
        .find(|x| x.name == name)
        .expect("stack in snapshot")
}

#[tokio::test]
async fn stack_operations_make_versions_that_reach_watch_streams() {
    let h = Harness::start().await;
    h.apply(&policy("p", &["blue", "green"])).await;
    let mut w = h.watch("envoy-1", 0).await;
    let s = w.next().await;
    assert_eq!(s.version, 1);
    assert_eq!(s.stacks.len(), 2);
    assert_eq!(
        *stack(&s, "green"),
        v1::StackState {
            name: "green".into(),
            weight_percent: 100,
            healthy: true,
            reason: String::new(),
            draining: false,
            drain_deadline_unix_ms: 0,
            evacuating: false,
            rule: String::new(),
        }
    );

    let mut st = h.stacks();
    let r = st
        .set_weight(v1::SetWeightRequest {
            stack: "green".into(),
            weight_percent: 0,
            reason: "hold".into(),
            actor: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.changed), (2, true));
    let s = w.next().await;
    assert_eq!(s.version, 2);
    assert_eq!(
        s.policy_version, 1,
        "a stack change keeps the policy version"
    );
    assert_eq!(stack(&s, "green").weight_percent, 0);
    assert_eq!(stack(&s, "green").reason, "hold");
    assert_eq!(stack(&s, "blue").weight_percent, 100);

    st.set_weight(v1::SetWeightRequest {
        stack: "green".into(),
        weight_percent: 40,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(stack(&w.next().await, "green").weight_percent, 40);

    st.drain(drain_req("green", "deploy", 0)).await.unwrap();
    let s = w.next().await;
    let g = stack(&s, "green");
    assert!(g.draining && g.healthy);
    assert_eq!(g.weight_percent, 0, "draining means no new traffic");
    assert_eq!(g.reason, "deploy");

    st.undrain(reason_req("green", "")).await.unwrap();
    assert_eq!(
        stack(&w.next().await, "green").weight_percent,
        40,
        "weight restored"
    );

    let err = st
        .mark_unhealthy(reason_req("green", " "))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "a reason is required");
    st.mark_unhealthy(reason_req("green", "5xx burst"))
        .await
        .unwrap();
    let s = w.next().await;
    assert!(!stack(&s, "green").healthy);
    assert_eq!(stack(&s, "green").reason, "5xx burst");
    st.mark_healthy(reason_req("green", "")).await.unwrap();
    assert!(stack(&w.next().await, "green").healthy);

    st.deregister(v1::DeregisterStackRequest {
        stack: "blue".into(),
        reason: "reprovision".into(),
        actor: "t".into(),
    })
    .await
    .unwrap();
    let s = w.next().await;
    assert!(!stack(&s, "blue").healthy);
    assert_eq!(stack(&s, "blue").reason, "reprovision");
    let r = st
        .register(v1::RegisterStackRequest {
            stack: "blue".into(),
            endpoint: "http://blue:8080/health".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.stack.as_ref().unwrap().endpoint,
        "http://blue:8080/health"
    );
    let s = w.next().await;
    assert!(stack(&s, "blue").healthy);
    assert_eq!(s.version, 9);

    // A no-op makes no version and sends nothing.
    let r = st
        .mark_healthy(reason_req("blue", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.changed), (9, false));
    w.expect_quiet(Duration::from_millis(150)).await;

    // Unknown stacks and out-of-range weights are rejected.
    assert_eq!(
        st.drain(drain_req("purple", "", 0))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let err = st
        .set_weight(v1::SetWeightRequest {
            stack: "blue".into(),
            weight_percent: 101,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Stack state survives a policy edit; the policy's new stack starts at defaults.
    h.apply(&policy("p2", &["blue", "green", "canary"])).await;
    let s = w.next().await;
    assert_eq!(stack(&s, "green").weight_percent, 40);
    assert_eq!(stack(&s, "canary").weight_percent, 100);

    let list = st
        .list(v1::ListStacksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.stacks
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec!["blue", "green", "canary"]
    );
    assert_eq!(list.stacks[1].weight_percent, 40);
    assert_eq!(
        list.stacks[1].changed_version, 7,
        "last changed by mark_healthy"
    );
    h.stop().await;
}

#[tokio::test]
async fn stack_operations_need_a_policy() {
    let h = Harness::start().await;
    let err = h
        .stacks()
        .drain(drain_req("blue", "", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    h.stop().await;
}

#[tokio::test]
async fn watch_sends_current_on_connect_and_skips_it_when_already_applied() {
    let h = Harness::start().await;
    // Before any policy: nothing to send; the first apply arrives.
    let mut early = h.watch("early", 0).await;
    early.expect_quiet(Duration::from_millis(100)).await;
    h.apply(&policy("p", &["blue"])).await;
    assert_eq!(early.next().await.version, 1);

    // Connecting with an older version: the current snapshot at once.
    let mut stale = h.watch("stale", 0).await;
    let s = stale.next().await;
    assert_eq!(s.version, 1);
    assert_eq!(s.policy_json, policy("p", &["blue"]));

    // Connecting with the current version: nothing until the next change.
    let mut current = h.watch("current", 1).await;
    current.expect_quiet(Duration::from_millis(150)).await;
    h.apply(&policy("p2", &["blue"])).await;
    let s = current.next().await;
    assert_eq!(
        (s.version, s.policy_version),
        (2, 2),
        "a policy change is a new policy version"
    );
    assert_eq!(stale.next().await.version, 2);

    // A version the service never had (its store was replaced): sent, since it differs.
    let mut ahead = h.watch("ahead", 99).await;
    assert_eq!(ahead.next().await.version, 2);
    h.stop().await;
}

#[tokio::test]
async fn watch_requires_a_node_id() {
    let h = Harness::start().await;
    let mut w = h.watch("", 0).await;
    let err = w.rx.message().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn acks_are_recorded_in_status() {
    let h = Harness::start().await;
    h.apply(&policy("p", &["blue"])).await;
    let mut w = h.watch("envoy-a", 0).await;
    let s = w.next().await;
    w.ack(s.version).await;
    eventually("ack recorded", || async {
        let st = h.status().await;
        st.nodes
            .iter()
            .any(|n| n.node_id == "envoy-a" && n.applied_version == 1 && n.last_ack_unix_ms > 0)
    })
    .await;
    let st = h.status().await;
    let n = &st.nodes[0];
    assert!(n.connected);
    assert_eq!(n.streams, 1);
    assert_eq!(n.sent_version, 1);
    assert!(n.connected_since_unix_ms > 0);
    assert!(n.peer.starts_with("127.0.0.1:"));
    assert_eq!(st.nodes_current, 1);

    // The node goes away: still listed, not connected.
    drop(w);
    eventually("disconnect seen", || async {
        let st = h.status().await;
        !st.nodes[0].connected && st.nodes[0].disconnected_unix_ms > 0
    })
    .await;
    h.stop().await;
}

fn batch(node: &str, requests: u64) -> v1::TelemetryBatch {
    v1::TelemetryBatch {
        node_id: node.into(),
        window_end_unix_ms: 1_000,
        window_ms: 1_000,
        dropped: 2,
        stacks: vec![v1::StackTelemetry {
            stack: "blue".into(),
            requests,
            status_2xx: requests - 1,
            status_5xx: 1,
            latency_ms_sum: 10 * requests,
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn reports_are_kept_per_node_and_per_stack() {
    let h = Harness::start().await;
    h.apply(&policy("p", &["blue", "green"])).await;
    let mut dp = h.data_plane();
    dp.report(batch("envoy-1", 10)).await.unwrap();
    dp.report(batch("envoy-2", 5)).await.unwrap();
    // The latest batch replaces the previous one.
    dp.report(batch("envoy-1", 20)).await.unwrap();

    let st = h.status().await;
    let n1 = st.nodes.iter().find(|n| n.node_id == "envoy-1").unwrap();
    assert!(n1.last_report_unix_ms > 0);
    assert_eq!(n1.dropped, 2);
    assert_eq!(n1.stacks[0].requests, 20);

    let list = h
        .stacks()
        .list(v1::ListStacksRequest {})
        .await
        .unwrap()
        .into_inner();
    let blue = list.stacks.iter().find(|s| s.name == "blue").unwrap();
    assert_eq!(blue.telemetry.as_ref().unwrap().requests, 25);
    assert_eq!(blue.telemetry.as_ref().unwrap().status_5xx, 2);

    let t = http_json(&h.http_url("/api/v1/telemetry")).await;
    assert_eq!(t["stacks"]["blue"]["requests"], 25);
    assert_eq!(t["nodes"]["envoy-2"]["stacks"]["blue"]["requests"], 5);

    let err = dp.report(batch("", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test]
async fn http_api_serves_health_status_policy_stacks_history() {
    let h = Harness::start().await;
    let (code, body) = http_get(&h.http_url("/api/v1/policy")).await;
    assert_eq!(code, 404, "{body}");
    h.apply(&policy("p", &["blue", "green"])).await;
    let (code, body) = http_get(&h.http_url("/healthz")).await;
    assert_eq!((code, body.trim()), (200, "ok"));
    let s = http_json(&h.http_url("/api/v1/status")).await;
    assert_eq!(s["current_version"], 1);
    let p = http_json(&h.http_url("/api/v1/policy")).await;
    assert_eq!(p["info"]["version"], 1);
    assert_eq!(p["policy"]["name"], "p");
    assert_eq!(p["stacks"][1]["name"], "green");
    let p1 = http_json(&h.http_url("/api/v1/policy?version=1")).await;
    assert_eq!(p1["info"]["policy_name"], "p");
    let st = http_json(&h.http_url("/api/v1/stacks")).await;
    assert_eq!(st["stacks"][0]["effective_weight_percent"], 100);
    let hist = http_json(&h.http_url("/api/v1/history?limit=5")).await;
    assert_eq!(hist["versions"][0]["kind"], "policy_apply");

    h.stacks().drain(drain_req("green", "", 0)).await.unwrap();
    let audit = http_json(&h.http_url("/api/v1/audit?limit=5")).await;
    assert_eq!(audit["entries"][0]["subject"], "stack/green");
    assert_eq!(audit["entries"][0]["after"]["draining"], true);
    assert_eq!(audit["entries"][1]["subject"], "policy");
    let audit = http_json(&h.http_url("/api/v1/audit?after=1")).await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1);
    let verified = http_json(&h.http_url("/api/v1/audit/verify")).await;
    assert_eq!(
        (verified["ok"].as_bool(), verified["entries"].as_u64()),
        (Some(true), Some(2))
    );
    let (code, metrics) = http_get(&h.http_url("/metrics")).await;
    assert_eq!(code, 200);
    for line in [
        "switchyard_control_version 2",
        "switchyard_control_watch_streams 0",
        "switchyard_control_stack_effective_weight_percent{stack=\"blue\"} 100",
        "switchyard_control_stack_effective_weight_percent{stack=\"green\"} 0",
        "switchyard_control_stack_draining{stack=\"green\"} 1",
        "switchyard_control_stack_evacuating{stack=\"green\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    h.stop().await;
}

#[tokio::test]
async fn drain_with_deadline_evacuate_and_undrain() {
    let h = Harness::start().await;
    h.apply(&policy("p", &["blue", "green"])).await;
    let mut w = h.watch("envoy-1", 0).await;
    assert_eq!(w.next().await.version, 1);
    let mut st = h.stacks();

    // Drain with a deadline: the server turns "seconds from now" into an absolute time.
    let before = switchyard_control::model::now_unix_ms();
    let r = st
        .drain(drain_req("blue", "maintenance", 120))
        .await
        .unwrap()
        .into_inner();
    let after = switchyard_control::model::now_unix_ms();
    assert!(r.changed);
    assert_eq!(r.info.unwrap().kind, "stack_drain");
    let s = w.next().await;
    let b = stack(&s, "blue");
    assert!(b.draining && !b.evacuating && b.healthy);
    assert_eq!(b.weight_percent, 0);
    assert!(
        (before + 120_000..=after + 120_000).contains(&b.drain_deadline_unix_ms),
        "{} not 120 s after {before}..{after}",
        b.drain_deadline_unix_ms
    );
    let status = r.stack.unwrap();
    assert_eq!(status.drain_deadline_unix_ms, b.drain_deadline_unix_ms);
    assert!(status.draining && !status.evacuating);

    // The HTTP status shows the deadline.
    let j = http_json(&h.http_url("/api/v1/stacks")).await;
    let blue = &j["stacks"][0];
    assert_eq!(blue["draining"], true);
    assert_eq!(blue["evacuating"], false);
    assert_eq!(blue["drain_deadline_unix_ms"], b.drain_deadline_unix_ms);
    let want =
        switchyard_filter::schedule::format_rfc3339((b.drain_deadline_unix_ms / 1000) as i64);
    assert_eq!(blue["drain_deadline"], want.as_str());

    // Draining again without a deadline replaces it.
    st.drain(drain_req("blue", "", 0)).await.unwrap();
    let b = stack(&w.next().await, "blue").clone();
    assert!(b.draining);
    assert_eq!(b.drain_deadline_unix_ms, 0);
    let j = http_json(&h.http_url("/api/v1/stacks")).await;
    assert!(j["stacks"][0]["drain_deadline"].is_null());

    // Evacuate: everyone off now; it replaces the drain.
    let r = st
        .evacuate(reason_req("blue", "rolled back"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.info.unwrap().kind, "stack_evacuate");
    let s = w.next().await;
    let b = stack(&s, "blue");
    assert!(b.evacuating && !b.draining);
    assert_eq!((b.weight_percent, b.drain_deadline_unix_ms), (0, 0));
    assert_eq!(b.reason, "rolled back");
    let again = st
        .evacuate(reason_req("blue", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    let (_, metrics) = http_get(&h.http_url("/metrics")).await;
    assert!(metrics
        .lines()
        .any(|l| l == "switchyard_control_stack_evacuating{stack=\"blue\"} 1"));

    // Undrain ends the evacuation.
    st.undrain(reason_req("blue", "")).await.unwrap();
    let s = w.next().await;
    let b = stack(&s, "blue");
    assert!(!b.evacuating && !b.draining);
    assert_eq!(b.weight_percent, 100);
    assert_eq!(
        st.evacuate(reason_req("purple", ""))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    h.stop().await;
}

#[tokio::test]
async fn restart_restores_every_version() {
    let h = Harness::start().await;
    h.apply(&policy("a", &["blue", "green"])).await;
    h.stacks()
        .set_weight(v1::SetWeightRequest {
            stack: "green".into(),
            weight_percent: 20,
            ..Default::default()
        })
        .await
        .unwrap();
    h.apply(&policy("b", &["blue", "green"])).await;
    h.stacks()
        .drain(drain_req("blue", "maint", 0))
        .await
        .unwrap();
    let before = h
        .policies()
        .history(v1::HistoryRequest {
            limit: 100,
            before_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let dir = h.stop().await;

    let h = Harness::start_in(dir).await;
    let after = h
        .policies()
        .history(v1::HistoryRequest {
            limit: 100,
            before_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before);
    assert_eq!(after.current_version, 4);
    for (v, name) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
        let p = h
            .policies()
            .get(v1::GetPolicyRequest { version: v })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            p.policy_json,
            policy(name, &["blue", "green"]),
            "version {v}"
        );
    }
    // Envoys reconnecting get the restored state, stack state included.
    let s = h.watch("envoy", 0).await.next().await;
    assert_eq!(s.version, 4);
    assert_eq!(stack(&s, "green").weight_percent, 20);
    assert!(stack(&s, "blue").draining);
    // And versions continue from there.
    assert_eq!(h.apply(&policy("c", &["blue"])).await.version, 5);
    h.stop().await;
}

#[tokio::test]
async fn bootstrap_policy_applies_only_to_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("boot.json");
    std::fs::write(&file, policy("boot", &["blue"])).unwrap();
    let f = file.clone();
    let h = Harness::start_with(dir, move |c| c.bootstrap_policy = Some(f)).await;
    let hist = h
        .policies()
        .history(v1::HistoryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hist.versions[0].kind, "bootstrap");
    h.apply(&policy("later", &["blue"])).await;
    let dir = h.stop().await;
    let h = Harness::start_with(dir, move |c| c.bootstrap_policy = Some(file)).await;
    let cur = h
        .policies()
        .get(v1::GetPolicyRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cur.info.unwrap().policy_name,
        "later",
        "bootstrap ignored when the store has state"
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_unavailable() {
    let h = Harness::start().await;
    h.apply(&policy("p", &["blue"])).await;
    let mut w = h.watch("envoy", 0).await;
    w.next().await;
    let stopping = tokio::spawn(h.stop());
    let err = tokio::time::timeout(Duration::from_secs(5), w.rx.message())
        .await
        .expect("stream ends promptly")
        .expect_err("ends with a status");
    assert_eq!(err.code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let h = Harness::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    for service in ["", "switchyard.v1.DataPlane", "switchyard.v1.Policies"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(h.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "switchyard.v1.DataPlane",
        "switchyard.v1.Policies",
        "switchyard.v1.Stacks",
        "switchyard.v1.Fleet",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} in {names:?}");
    }
    h.stop().await;
}

/// Paused clock: the 10 s first-message deadline passes without waiting 10 s.
#[tokio::test(start_paused = true)]
async fn watch_without_a_first_message_times_out() {
    let h = Harness::start().await;
    let (_tx, rx) = tokio::sync::mpsc::channel::<v1::WatchRequest>(1);
    let started = tokio::time::Instant::now();
    let mut stream = h
        .data_plane()
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "virtual time advanced past the deadline"
    );
    assert!(
        h.status().await.nodes.is_empty(),
        "a stream without a node id is not a node"
    );
    h.stop().await;
}

/// Errors name what the user typed or sees (a version, a weight), not request fields.
#[tokio::test]
async fn argument_errors_speak_the_users_words() {
    let h = Harness::start().await;
    h.apply(&policy("one", &["blue", "green"])).await;
    let e = h
        .policies()
        .rollback(v1::RollbackRequest {
            to_version: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "the version to roll back to must be 1 or more");
    let e = h
        .stacks()
        .set_weight(v1::SetWeightRequest {
            stack: "green".into(),
            weight_percent: 101,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "a weight is a whole percent 0..=100, got 101",
        "the same words as the CLI's weight parser"
    );
    let e = h
        .stacks()
        .drain(v1::DrainStackRequest {
            stack: "green".into(),
            deadline_seconds: u64::MAX,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.message().starts_with("a drain deadline of "),
        "{}",
        e.message()
    );
}

/// An HTTP API error: the status, a JSON body `{"error": {"code", "message"}}`.
async fn api_error(method: &str, url: &str, status: u16, code: &str) -> String {
    let (got, content_type, body) = http_request(method, url).await;
    assert_eq!(got, status, "{method} {url}: {body}");
    assert_eq!(content_type, "application/json", "{method} {url}: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body:?}"));
    assert_eq!(v["error"]["code"], code, "{url}: {v}");
    let message = v["error"]["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty(), "{url}: {v}");
    message
}

#[tokio::test]
async fn every_http_api_error_is_json() {
    let h = Harness::start().await;
    api_error("GET", &h.http_url("/api/v1/policy"), 404, "not_found").await;
    h.apply(&policy("p", &["blue", "green"])).await;
    let m = api_error(
        "GET",
        &h.http_url("/api/v1/policy?version=abc"),
        400,
        "bad_query",
    )
    .await;
    assert!(m.starts_with("bad query parameter: version"), "{m}");
    api_error(
        "GET",
        &h.http_url("/api/v1/history?limit=-3"),
        400,
        "bad_query",
    )
    .await;
    api_error(
        "GET",
        &h.http_url("/api/v1/policy?version=9"),
        404,
        "not_found",
    )
    .await;
    let m = api_error("GET", &h.http_url("/api/v1/nope"), 404, "not_found").await;
    assert!(m.contains("/api/v1/nope"), "{m}");
    api_error(
        "POST",
        &h.http_url("/api/v1/stacks"),
        405,
        "method_not_allowed",
    )
    .await;

    // `/` points at the API (and says the console comes later).
    let (status, content_type, body) = http_request("GET", &h.http_url("/")).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["endpoints"]["/api/v1/status"].is_string(), "{v}");
    assert!(v["console"].as_str().unwrap().contains("console"), "{v}");
    h.stop().await;
}
