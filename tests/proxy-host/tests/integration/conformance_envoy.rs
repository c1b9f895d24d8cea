//! The conformance scenarios on the real Envoy (the binary `make setup` installs, or
//! $ENVOY) with the built filter: the same files, the same checks as on the host
//! (`conformance.rs`). Each stack is a route on `x-switchyard-stack` with a direct
//! response (status from the scenario's `upstreams`, `x-served-by: <stack>`), so the
//! filter's response path and breakers see real statuses. Client addresses travel in
//! `x-forwarded-for` on a connection manager that trusts it (`use_remote_address:
//! false`), so `source.address` is that IP with port 0. Skipped without an Envoy binary.

use std::time::Duration;

use switchyard_harness::{Client, Envoy, EnvoyOptions};
use switchyard_proxy_host::fixture::TEST_KEYS;
use switchyard_proxy_host::scenario::{self, Observed, Outgoing, Scenario};

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn config(s: &Scenario, wasm: &std::path::Path) -> String {
    let policy = s.policy_text().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&policy).unwrap();
    let mut routes = String::new();
    for st in doc["stacks"].as_array().unwrap() {
        let name = st["name"].as_str().unwrap();
        let status = s.upstreams.get(name).map_or(200, |u| u.status);
        routes.push_str(&format!(
            r#"
              - match: {{ prefix: "/", headers: [ {{ name: x-switchyard-stack, string_match: {{ exact: {n} }} }} ] }}
                direct_response: {{ status: {status}, body: {{ inline_string: {b} }} }}
                response_headers_to_add: [ {{ header: {{ key: x-served-by, value: {n} }} }} ]"#,
            n = yaml_str(name),
            b = yaml_str(&format!("served-by {name}")),
        ));
    }
    let keys = s
        .affinity_keys
        .clone()
        .unwrap_or_else(|| TEST_KEYS.to_string());
    format!(
        r#"
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: conformance
          use_remote_address: false
          xff_num_trusted_hops: 0
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:{routes}
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 404, body: {{ inline_string: "no stack" }} }}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: switchyard
                root_id: switchyard
                configuration: {{ "@type": type.googleapis.com/google.protobuf.StringValue, value: {policy} }}
                vm_config:
                  vm_id: switchyard
                  runtime: envoy.wasm.runtime.v8
                  environment_variables: {{ key_values: {{ SWITCHYARD_AFFINITY_KEYS: {keys} }} }}
                  code: {{ local: {{ filename: {wasm} }} }}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
"#,
        policy = yaml_str(&policy),
        keys = yaml_str(&keys),
        wasm = yaml_str(&wasm.display().to_string()),
    )
}

fn send(envoy: &Envoy, o: &Outgoing) -> Result<Observed, String> {
    let mut headers: Vec<(String, String)> = vec![(
        "host".into(),
        o.authority.as_deref().unwrap_or("shop.example.com").into(),
    )];
    headers.extend(o.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(src) = &o.source {
        let ip = src
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| src.clone());
        headers.push(("x-forwarded-for".into(), ip));
    }
    // One connection per request, as a client population would.
    headers.push(("connection".into(), "close".into()));
    let header_refs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let r = Client::connect_addr(envoy.listener("main"))
        .and_then(|mut c| c.request_once(&o.method, &o.path, &header_refs))
        .map_err(|e| e.to_string())?;
    let body = r.text();
    let (status, headers) = (r.status, r.headers);
    let stack = headers
        .iter()
        .find(|(k, _)| k == "x-served-by")
        .map(|(_, v)| v.clone());
    Ok(Observed {
        stack,
        status,
        headers,
        body,
    })
}

#[test]
fn every_scenario_holds_on_the_real_envoy() {
    if switchyard_harness::envoy_bin_if_present().is_none() {
        eprintln!("SKIPPED: no Envoy binary (make setup installs .tools/envoy, or set ENVOY)");
        return;
    }
    let wasm = switchyard_harness::filter_wasm();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut failures = Vec::new();
    for (file, s) in scenario::load_dir(&dir).unwrap() {
        if s.steps.iter().any(|st| !st.upstreams.is_empty()) {
            eprintln!("{file}: SKIPPED on Envoy (step-level upstreams need a reconfiguration)");
            continue;
        }
        let envoy = Envoy::start(&config(&s, &wasm), &EnvoyOptions::default());
        let result = scenario::run_with(
            &s,
            |o| send(&envoy, o),
            |ms| {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            },
        );
        match result {
            Ok(n) => eprintln!("{file}: {n} requests ok on Envoy"),
            Err(e) => failures.push(format!("{e}\nEnvoy log:\n{}", envoy.log())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
