//! The conformance scenarios on the real Envoy (the binary `make setup` installs, or
//! $ENVOY) with the built filter: the same files, the same checks as on the host
//! (`conformance.rs`). Each stack is a route on `x-switchyard-stack` with a direct
//! response (status from the scenario's `upstreams`, `x-served-by: <stack>`), so the
//! filter's response path and breakers see real statuses. Client addresses travel in
//! `x-forwarded-for` on a connection manager that trusts it (`use_remote_address:
//! false`), so `source.address` is that IP with port 0. Skipped without an Envoy binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_proxy_host::build::{filter_wasm, workspace_root};
use switchyard_proxy_host::fixture::TEST_KEYS;
use switchyard_proxy_host::scenario::{self, Observed, Outgoing, Scenario};

struct Envoy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(addr: &str, raw: &str) -> std::io::Result<(String, String)> {
    // Reads one response by its content-length: Envoy keeps a closing connection open
    // for its delayed-close timeout (1 s), so waiting for EOF would slow every request.
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(raw.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                })
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            if let Some(len) = len {
                while buf.len() < end + 4 + len {
                    let n = s.read(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[end + 4..(end + 4 + len).min(buf.len())])
                    .into_owned();
                return Ok((head, body));
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            let text = String::from_utf8_lossy(&buf).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            return Ok((head.to_string(), body.to_string()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

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

fn start(bin: &std::path::Path, yaml: &str) -> Envoy {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let admin_path = dir.path().join("admin");
    let log = dir.path().join("envoy.log");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&cfg)
        .args([
            "--concurrency",
            "1",
            "-l",
            "warning",
            "--use-dynamic-base-id",
            "--admin-address-path",
        ])
        .arg(&admin_path)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("envoy starts");
    let mut envoy = Envoy {
        child,
        port: 0,
        log,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(admin) = std::fs::read_to_string(&admin_path) {
            if let Ok((_, body)) = http(
                admin.trim(),
                "GET /listeners HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
            ) {
                if let Some(p) = body
                    .lines()
                    .find_map(|l| l.strip_prefix("main::127.0.0.1:"))
                    .and_then(|p| p.trim().parse().ok())
                {
                    envoy.port = p;
                    return envoy;
                }
            }
        }
        if let Ok(Some(status)) = envoy.child.try_wait() {
            panic!(
                "envoy exited {status}:\n{}",
                std::fs::read_to_string(&envoy.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "envoy did not come up:\n{}",
        std::fs::read_to_string(&envoy.log).unwrap_or_default()
    );
}

fn send(envoy: &Envoy, o: &Outgoing) -> Result<Observed, String> {
    let mut raw = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        o.method,
        o.path,
        o.authority.as_deref().unwrap_or("shop.example.com")
    );
    for (k, v) in &o.headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(src) = &o.source {
        let ip = src
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| src.clone());
        raw.push_str(&format!("x-forwarded-for: {ip}\r\n"));
    }
    raw.push_str("Connection: close\r\n\r\n");
    let (head, body) =
        http(&format!("127.0.0.1:{}", envoy.port), &raw).map_err(|e| e.to_string())?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
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
    let bin = std::env::var("ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join(".tools/envoy"));
    if !bin.exists() {
        eprintln!("SKIPPED: no Envoy binary (make setup installs .tools/envoy, or set ENVOY)");
        return;
    }
    let wasm = filter_wasm().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut failures = Vec::new();
    for (file, s) in scenario::load_dir(&dir).unwrap() {
        if s.steps.iter().any(|st| !st.upstreams.is_empty()) {
            eprintln!("{file}: SKIPPED on Envoy (step-level upstreams need a reconfiguration)");
            continue;
        }
        let envoy = start(&bin, &config(&s, &wasm));
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
            Err(e) => failures.push(format!(
                "{e}\nEnvoy log:\n{}",
                std::fs::read_to_string(&envoy.log).unwrap_or_default()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
