//! The shipped Envoy bootstrap is valid and carries the shipped demo policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use switchyard_e2e::*;

#[test]
fn envoy_yaml_validates_with_the_real_envoy() {
    let dir = TestDir::new("validate");
    // Validate the file as shipped, with the wasm path made absolute.
    let config = dir.join("envoy.yaml");
    let text = std::fs::read_to_string(root().join("envoy/envoy.yaml")).unwrap();
    let text = text
        .replace(
            "filename: target/",
            &format!("filename: {}/target/", root().display()),
        )
        // The control token's SDS file must exist (make run writes .run/'s).
        .replace(
            "path: .run/control-token.yaml",
            &format!("path: {}", dataplane_token().sds.display()),
        );
    // …and so must the control cluster's TLS SDS files (make run writes .run/tls/).
    let certs = DemoCerts::new("validate-certs");
    let text = text.replace(
        "path: .run/tls/",
        &format!(
            "path: {}/",
            certs.file("ca.pem").parent().unwrap().display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "-c",
            config.to_str().unwrap(),
            "--log-level",
            "info",
        ])
        .env("SWITCHYARD_AFFINITY_KEYS", TEST_KEYS)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "envoy --mode validate failed:\n{log}");
    assert!(
        log.contains("policy 'demo-storefront' loaded"),
        "the filter loaded the policy:\n{log}"
    );
}

#[test]
fn envoy_yaml_policy_is_the_demo_policy() {
    let text = std::fs::read_to_string(root().join("envoy/envoy.yaml")).unwrap();
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != "# switchyard-policy");
    let header = lines
        .by_ref()
        .find(|l| l.trim() == "value: |")
        .expect("policy block");
    let indent = header.len() - header.trim_start().len() + 2;
    let block: String = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| format!("{l}\n"))
        .collect();
    let inline: serde_json::Value = serde_json::from_str(&block).unwrap();
    let demo: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/policies/demo.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        inline, demo,
        "envoy/envoy.yaml must embed examples/policies/demo.json"
    );
}

#[test]
fn invalid_policy_is_rejected_by_envoy_with_the_field_named() {
    let dir = TestDir::new("invalid");
    let policy = r#"{ "stacks": [ { "name": "blue", "region": "us" } ], "default": { "targets": [ { "stack": "purple" } ] } }"#;
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, render_config(policy, &Default::default())).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "an invalid policy must fail the configuration"
    );
    assert!(
        log.contains("default.targets[0].stack: unknown stack 'purple'"),
        "log names the field:\n{log}"
    );
}
