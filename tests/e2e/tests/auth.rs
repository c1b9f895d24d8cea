//! A real Envoy against a control service that requires credentials: with its dataplane
//! token (credential injector, file-based SDS, as envoy/envoy.yaml ships it) it follows
//! the control service and reports telemetry; with a forged token it is refused and
//! keeps serving the policy it was configured with (fail static).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_e2e::*;

const POLICY: &str = r#"{"name":"auth-e2e","stacks":[{"name":"blue","region":"us"},{"name":"green","region":"us"}],
"default":{"targets":[{"stack":"blue","weight":50},{"stack":"green","weight":50}]}}"#;

fn status(control: &ControlService) -> Value {
    let out = control.cli(&["--json", "status"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn node<'a>(s: &'a Value, id: &str) -> Option<&'a Value> {
    s["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node_id"].as_str() == Some(id))
}

#[test]
fn envoy_routes_and_reports_with_its_dataplane_token_and_a_forged_one_is_refused() {
    let shop = Shop::start();
    let dir = TestDir::new("auth");
    let grpc = ReservedPort::new().unwrap();
    let control = ControlService::start(&dir.join("data"), grpc.port());
    let file = dir.join("policy.json");
    std::fs::write(&file, POLICY).unwrap();
    let out = control.cli(&["policy", "apply", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // Without the admin token the CLI is refused.
    let out = std::process::Command::new(switchyard_harness::workspace_bin("switchyard"))
        .args(["--server", &format!("127.0.0.1:{}", grpc.port()), "status"])
        .env_remove("SWITCHYARD_TOKEN")
        .env_remove("SWITCHYARD_TOKEN_FILE")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthenticated"),
        "{out:?}"
    );

    let mut ports = shop.ports();
    ports.insert("control", grpc.port());
    ports.insert("node", 1);
    let envoy = Envoy::start(POLICY, &ports, 1);

    // The control service moves all traffic to green: the Envoy follows, so its Watch
    // stream was accepted with the dataplane token.
    let out = control.cli(&["stacks", "weight", "blue", "0"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_routing(envoy.port, &["green"], Duration::from_secs(10)).is_some(),
        "the Envoy did not follow the control service"
    );
    // …and its telemetry is accepted (Report needs the dataplane role).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(&control);
        let n = node(&s, "envoy-1").cloned().unwrap_or_default();
        if n["connected"] == true && n["last_report_unix_ms"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no report from envoy-1: {s}");
        spread(envoy.port, 1, 5, &[]);
        std::thread::sleep(Duration::from_millis(200));
    }

    // An Envoy presenting a forged token: refused, never listed, and it serves the
    // policy of its own configuration (blue and green) rather than the control
    // service's (green only).
    let forged = dir.join("forged.yaml");
    let sds = std::fs::read_to_string(&dataplane_token().sds).unwrap();
    std::fs::write(
        &forged,
        sds.replace(
            &dataplane_token().token,
            &format!("syt_{}", "0f".repeat(32)),
        ),
    )
    .unwrap();
    ports.insert("node", 2);
    let config = render_config(POLICY, &ports).replace(
        &dataplane_token().sds.display().to_string(),
        &forged.display().to_string(),
    );
    let opts = switchyard_harness::EnvoyOptions {
        concurrency: 1,
        log_level: "warn".into(),
        env: vec![("SWITCHYARD_AFFINITY_KEYS".into(), TEST_KEYS.into())],
        ..Default::default()
    };
    let intruder = switchyard_harness::Envoy::start(&config, &opts);
    let port = intruder.listener(LISTENER).port();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !control
        .proc
        .stderr()
        .contains("unauthenticated call refused")
    {
        assert!(
            Instant::now() < deadline,
            "the forged token was not refused:\n{}",
            control.proc.tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let counts = spread(port, 2, 40, &[]);
    assert!(
        counts.contains_key("blue") && counts.contains_key("green"),
        "the intruder serves its own policy: {counts:?}"
    );
    let s = status(&control);
    assert!(
        node(&s, "envoy-2").is_none(),
        "a refused Envoy is listed: {s}"
    );
    assert_eq!(
        node(&s, "envoy-1").unwrap()["connected"],
        true,
        "the real Envoy stays connected"
    );
}
