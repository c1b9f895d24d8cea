//! End-to-end harness: the real Envoy binary with the built `.wasm`, real demo stacks,
//! and a small HTTP/1.1 client that can send exactly the bytes a hostile client would.
//!
//! Everything binds 127.0.0.1 on free ports and is killed on drop, so a failing test
//! leaves nothing running.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The Envoy binary: `$ENVOY`, else the pinned one `make setup` links.
pub fn envoy_bin() -> PathBuf {
    match std::env::var("ENVOY") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => root().join(".tools/envoy"),
    }
}

/// The filter under test, the one module `scripts/build-wasm.sh` produces (`make test`
/// builds it first).
pub fn wasm_path() -> PathBuf {
    let p = root().join("target/switchyard/switchyard_filter.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `make wasm` (scripts/build-wasm.sh) or the tests through `make test`",
        p.display()
    );
    p
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Cookie signing keys every test Envoy gets.
pub const TEST_KEYS: &str = "t1=e2e-test-secret-0123456789,t0=e2e-previous-secret-987";

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A demo storefront stack.
pub struct Stack {
    pub proc: Proc,
    pub port: u16,
}

/// Where the workspace binaries under test are: the profile this harness was built with
/// (`make test` builds them in the dev profile, benchmarks in release).
pub fn bin_dir() -> PathBuf {
    root().join(if cfg!(debug_assertions) {
        "target/debug"
    } else {
        "target/release"
    })
}

fn storefront_bin() -> PathBuf {
    let p = bin_dir().join("switchyard-storefront");
    assert!(
        p.exists(),
        "{} is missing: run the tests through `make test`",
        p.display()
    );
    p
}

impl Stack {
    /// Start a stack on `port` (0 = any free port).
    pub fn start(name: &str, port: u16) -> Stack {
        let mut child = Command::new(storefront_bin())
            .args(["--name", name, "--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("storefront said {line:?}"));
        Stack {
            proc: Proc {
                child,
                name: name.to_string(),
            },
            port,
        }
    }

    /// SIGKILL the stack.
    pub fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// A running Envoy with the switchyard filter.
pub struct Envoy {
    pub proc: Proc,
    pub port: u16,
    pub admin: u16,
    pub config: PathBuf,
    _dir: TempDir,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "switchyard-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Render `envoy/envoy.yaml` for a test: ports, policy and wasm path replaced.
pub fn render_config(
    policy_json: &str,
    listener: u16,
    admin: u16,
    stack_ports: &HashMap<&str, u16>,
) -> String {
    let text = std::fs::read_to_string(root().join("envoy/envoy.yaml")).unwrap();
    let defaults = [
        ("blue", 8081u16),
        ("green", 8082),
        ("canary", 8083),
        ("eu", 8084),
        ("control", 18000),
    ];
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut in_policy = false;
    while let Some(line) = lines.next() {
        if line.trim() == "# switchyard-policy" {
            in_policy = true;
        }
        if in_policy && line.trim() == "value: |" {
            out.push(line.to_string());
            let indent = line.len() - line.trim_start().len() + 2;
            while let Some(next) = lines.peek() {
                let ni = next.len() - next.trim_start().len();
                if next.trim().is_empty() || ni >= indent {
                    lines.next();
                } else {
                    break;
                }
            }
            for pl in policy_json.lines() {
                out.push(format!("{}{}", " ".repeat(indent), pl));
            }
            in_policy = false;
            continue;
        }
        let mut l = line.replace("port_value: 10000", &format!("port_value: {listener}"));
        l = l.replace("port_value: 9901", &format!("port_value: {admin}"));
        for (name, default) in defaults {
            if let Some(p) = stack_ports.get(name) {
                l = l.replace(
                    &format!("port_value: {default} "),
                    &format!("port_value: {p} "),
                );
            }
        }
        l = l.replace(
            "filename: target/switchyard/switchyard_filter.wasm",
            &format!("filename: {}", wasm_path().display()),
        );
        if let Some(node) = stack_ports.get("node") {
            l = l.replace(
                "\"node_id\": \"envoy-local\"",
                &format!("\"node_id\": \"envoy-{node}\""),
            );
        }
        out.push(l);
    }
    out.join("\n") + "\n"
}

impl Envoy {
    /// Start Envoy with `policy_json` and the given stack ports, wait until it serves.
    pub fn start(policy_json: &str, stack_ports: &HashMap<&str, u16>, concurrency: u32) -> Envoy {
        Envoy::start_with_keys(policy_json, stack_ports, concurrency, TEST_KEYS)
    }

    /// [`Envoy::start`] with the given cookie keys.
    pub fn start_with_keys(
        policy_json: &str,
        stack_ports: &HashMap<&str, u16>,
        concurrency: u32,
        keys: &str,
    ) -> Envoy {
        let dir = TempDir::new("envoy");
        let port = free_port();
        let admin = free_port();
        let config = dir.0.join("envoy.yaml");
        std::fs::write(
            &config,
            render_config(policy_json, port, admin, stack_ports),
        )
        .unwrap();
        let log = std::fs::File::create(dir.0.join("envoy.log")).unwrap();
        let child = Command::new(envoy_bin())
            .args([
                "-c",
                config.to_str().unwrap(),
                "--concurrency",
                &concurrency.to_string(),
            ])
            .args(["--log-level", "warn", "--base-id", &free_port().to_string()])
            .env("SWITCHYARD_AFFINITY_KEYS", keys)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let envoy = Envoy {
            proc: Proc {
                child,
                name: "envoy".into(),
            },
            port,
            admin,
            config,
            _dir: dir,
        };
        envoy.wait_ready();
        envoy
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut c) = Client::connect(self.admin) {
                if let Ok(r) = c.get("/ready", &[]) {
                    if r.status == 200 {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("envoy did not become ready; log:\n{}", self.log());
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("envoy.log")).unwrap_or_default()
    }

    /// A client connected to the listener.
    pub fn client(&self) -> Client {
        Client::connect(self.port).unwrap()
    }

    /// All counters and gauges from `/stats` whose name contains `filter`.
    pub fn stats(&self, filter: &str) -> HashMap<String, u64> {
        let mut c = Client::connect(self.admin).unwrap();
        let r = c.get(&format!("/stats?filter={filter}"), &[]).unwrap();
        r.text()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// A switchyard counter (`switchyard.<name>`), after the filter's once-a-second flush.
    pub fn counter(&self, name: &str) -> u64 {
        let full = format!("wasmcustom.switchyard.{name}");
        self.stats(&full).get(&full).copied().unwrap_or(0)
    }

    /// Wait (up to 5 s) until a counter reaches at least `min`; returns its value.
    pub fn wait_counter(&self, name: &str, min: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.counter(name);
            if v >= min || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Which stack served the request.
    pub fn served_by(&self) -> Option<&str> {
        self.header("x-served-by")
    }

    /// `name=value` of the affinity cookie set, if any.
    pub fn affinity_cookie(&self) -> Option<String> {
        self.headers_named("set-cookie")
            .into_iter()
            .find(|c| c.starts_with("sy_aff="))
            .map(|c| c.split(';').next().unwrap_or("").to_string())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A keep-alive HTTP/1.1 client over one connection that sends headers verbatim
/// (repeats and arbitrary bytes included).
pub struct Client {
    port: u16,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Client {
            port,
            reader: BufReader::new(s),
        })
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        self.request("GET", path, &h)
    }

    /// Send a request; reconnects once if the server had closed the connection.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> std::io::Result<Response> {
        match self.try_request(method, path, headers) {
            Ok(r) => Ok(r),
            Err(_) => {
                *self = Client::connect(self.port)?;
                self.try_request(method, path, headers)
            }
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: shop.test\r\n").into_bytes();
        for (n, v) in headers {
            req.extend_from_slice(n.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\n");
        }
        if method == "POST" {
            req.extend_from_slice(b"content-length: 0\r\n");
        }
        req.extend_from_slice(b"\r\n");
        self.reader.get_mut().write_all(&req)?;
        read_response(&mut self.reader)
    }
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l)?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v): &(String, String)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut l = String::new();
            r.read_line(&mut l)?;
            let size = usize::from_str_radix(l.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| bad("chunk size"))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The JWT key of the demo provider in envoy/envoy.yaml.
pub const JWT_SECRET: &[u8] = b"switchyard-demo-jwt-secret-change-me";

fn b64url(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An HS256 JWT for the demo provider with the given subject and cohort.
pub fn jwt(sub: &str, cohort: &str, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let header = b64url(br#"{"alg":"HS256","typ":"JWT","kid":"demo"}"#);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let payload = b64url(
        format!(r#"{{"iss":"switchyard-demo","sub":"{sub}","cohort":"{cohort}","exp":{exp}}}"#)
            .as_bytes(),
    );
    let signing = format!("{header}.{payload}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing.as_bytes());
    format!("{signing}.{}", b64url(&mac.finalize().into_bytes()))
}

/// Unix time now, in seconds.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 3339 UTC timestamp of a unix time.
pub fn rfc3339(unix_s: u64) -> String {
    switchyard_filter::schedule::format_rfc3339(unix_s as i64)
}

/// Standard set of four stacks (blue, green, canary, eu) on free ports.
pub struct Shop {
    pub stacks: Vec<Stack>,
}

impl Shop {
    pub fn start() -> Shop {
        Shop {
            stacks: ["blue", "green", "canary", "eu"]
                .iter()
                .map(|n| Stack::start(n, 0))
                .collect(),
        }
    }

    pub fn ports(&self) -> HashMap<&str, u16> {
        self.stacks
            .iter()
            .map(|s| (s.proc.name.as_str(), s.port))
            .collect()
    }

    pub fn stack(&mut self, name: &str) -> &mut Stack {
        self.stacks
            .iter_mut()
            .find(|s| s.proc.name == name)
            .unwrap()
    }
}

/// The control service binary, started on a data directory.
pub struct ControlService {
    pub proc: Proc,
    pub grpc: u16,
}

fn control_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests through `make test`",
        p.display()
    );
    p
}

impl ControlService {
    /// Start on `grpc` (a fixed port, so Envoy can be pointed at it before it runs).
    pub fn start(data_dir: &std::path::Path, grpc: u16) -> ControlService {
        let mut child = Command::new(control_bin("switchyard-control"))
            .args([
                "serve",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--grpc",
                &format!("127.0.0.1:{grpc}"),
                "--no-http",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains("grpc listening on"),
            "control service said {line:?}"
        );
        ControlService {
            proc: Proc {
                child,
                name: "control".into(),
            },
            grpc,
        }
    }

    /// SIGKILL it.
    pub fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    /// Run the operator CLI against it.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(control_bin("switchyard"))
            .args(["--server", &format!("http://127.0.0.1:{}", self.grpc)])
            .args(args)
            .output()
            .unwrap()
    }
}

/// Spread `n` requests over `conns` connections (so both Envoy workers serve) and count
/// which stack answered; failures count under their status code.
pub fn spread(
    port: u16,
    conns: usize,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut clients: Vec<Client> = (0..conns).map(|_| Client::connect(port).unwrap()).collect();
    for i in 0..n {
        let r = clients[i % conns].get("/", headers).unwrap();
        let key = if r.status == 200 {
            r.served_by().unwrap_or("?").to_string()
        } else {
            format!("status {}", r.status)
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// Poll until every one of a burst of requests is served by a stack in `allowed`.
/// Returns how long it took, or `None` after `timeout`.
pub fn wait_routing(port: u16, allowed: &[&str], timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let counts = spread(port, 4, 16, &[]);
        if counts.keys().all(|k| allowed.contains(&k.as_str())) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}
