//! A real Envoy follows the control service over mTLS with the demo certificates
//! (`switchyard-control certs demo`, as `make run` makes them; envoy/envoy.yaml's
//! `UpstreamTlsContext` with file-based SDS) and no token: its certificate alone is its
//! credential (`CN=envoy` → envoy, role dataplane). An Envoy presenting another CA's
//! certificate is refused at the handshake, gets no snapshot, and serves the policy of its
//! own configuration (fail static).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_e2e::*;

const POLICY: &str = r#"{"name":"tls-e2e","stacks":[{"name":"blue","region":"us"},{"name":"green","region":"us"}],
"default":{"targets":[{"stack":"blue","weight":50},{"stack":"green","weight":50}]}}"#;

/// The shipped config without the control cluster's credential injector: the client
/// certificate is Envoy's only credential.
fn without_token(config: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in config.lines() {
        match line.trim() {
            "- name: envoy.filters.http.credential_injector" => skipping = true,
            "- name: envoy.filters.http.upstream_codec" => skipping = false,
            _ => {}
        }
        if !skipping {
            out.push(line);
        }
    }
    assert!(out.len() < config.lines().count(), "the injector was found");
    out.join("\n") + "\n"
}

fn start_envoy(
    ports: &HashMap<&str, u16>,
    cert_sds: &DemoCerts,
    ca_sds: &DemoCerts,
) -> switchyard_harness::Envoy {
    let config = without_token(&render_config_tls(
        POLICY,
        ports,
        &cert_sds.file("envoy-sds-cert.yaml"),
        &ca_sds.file("envoy-sds-ca.yaml"),
    ));
    let opts = switchyard_harness::EnvoyOptions {
        concurrency: 1,
        log_level: "warn".into(),
        env: vec![("SWITCHYARD_AFFINITY_KEYS".into(), TEST_KEYS.into())],
        ..Default::default()
    };
    switchyard_harness::Envoy::start(&config, &opts)
}

fn node_connected(control: &ControlService, id: &str) -> bool {
    let out = control.cli(&["--json", "status"]);
    assert!(out.status.success(), "{out:?}");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| n["node_id"].as_str() == Some(id) && n["connected"] == true)
}

#[test]
fn envoy_follows_the_control_service_over_mtls_and_a_wrong_certificate_gets_no_snapshot() {
    let shop = Shop::start();
    let dir = TestDir::new("tls");
    let certs = DemoCerts::new("tls-certs");
    let grpc = ReservedPort::new().unwrap();
    let args = certs.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let control = ControlService::start_with(&dir.join("data"), grpc.port(), &args);
    let file = dir.join("policy.json");
    std::fs::write(&file, POLICY).unwrap();
    // The CLI over TLS (https://, --ca) with the admin token.
    let out = control.cli(&["policy", "apply", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    let mut ports = shop.ports();
    ports.insert("control", grpc.port());
    ports.insert("node", 1);
    let envoy = start_envoy(&ports, &certs, &certs);
    let port = envoy.listener(LISTENER).port();
    let out = control.cli(&["stacks", "weight", "blue", "0"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_routing(port, &["green"], Duration::from_secs(15)).is_some(),
        "the Envoy did not follow the control service over mTLS:\n{}\n{}",
        envoy.log(),
        control.proc.tail(20)
    );
    assert!(node_connected(&control, "envoy-1"));

    // Another CA's client certificate (the CA it trusts for the server is the right one).
    let other = DemoCerts::new("tls-other");
    ports.insert("node", 2);
    let intruder = start_envoy(&ports, &other, &certs);
    let port = intruder.listener(LISTENER).port();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !control.proc.stderr().contains("TLS handshake refused") {
        assert!(
            Instant::now() < deadline,
            "the wrong certificate was not refused:\n{}",
            control.proc.tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let counts = spread(port, 2, 40, &[]);
    assert!(
        counts.contains_key("blue") && counts.contains_key("green"),
        "the intruder got no snapshot and serves its own policy: {counts:?}"
    );
    assert!(!node_connected(&control, "envoy-2"));
    // The first Envoy still follows.
    assert!(wait_routing(
        envoy.listener(LISTENER).port(),
        &["green"],
        Duration::from_secs(5)
    )
    .is_some());
}
