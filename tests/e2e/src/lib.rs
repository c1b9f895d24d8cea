//! End-to-end fixtures for Switchyard on the shared harness (`switchyard-harness`): the
//! shipped Envoy bootstrap rendered for a test, the demo storefront stacks, the control
//! service and its CLI, the demo JWT provider, and traffic helpers that count which stack
//! served. Processes, ports, Envoy and the HTTP client are the harness's; this crate only
//! knows what is specific to Switchyard's demo shop.
//!
//! Everything binds 127.0.0.1 (port 0 wherever the server reports what it bound) and is
//! killed on drop, so a failing test leaves nothing running and prints its logs' tails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Control-service replicas on etcd and Envoys that fail over between them.
pub mod replicas;

pub use switchyard_harness::{Client, Proc, ReservedPort, Response, TestDir};

pub mod transcript;

/// Repository root.
/// `bash scripts/run.sh` as a terminal starts it: with SIGINT at its default disposition.
/// A test process started in the background by a script (`cmd &`, `nohup`) inherits
/// SIGINT *ignored*, and bash cannot trap a signal ignored on entry, so the tests' Ctrl-C
/// (`kill -INT`) would stop nothing. python3 (needed by `make setup` already) resets it
/// and execs bash, so the pid is the script's.
pub fn run_sh() -> std::process::Command {
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); \
         os.execvp('bash', ['bash'] + sys.argv[1:])",
    ])
    .arg(root().join("scripts/run.sh"));
    cmd
}

pub fn root() -> PathBuf {
    switchyard_harness::workspace_root()
}

/// The Envoy binary: `$ENVOY`, else the pinned one `make setup` links.
pub fn envoy_bin() -> PathBuf {
    switchyard_harness::envoy_bin()
}

/// The filter under test.
pub fn wasm_path() -> PathBuf {
    switchyard_harness::filter_wasm()
}

/// Cookie signing keys every test Envoy gets.
pub const TEST_KEYS: &str = "t1=e2e-test-secret-0123456789,t0=e2e-previous-secret-987";

/// How long a demo server may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What the demo shop's responses say.
pub trait ShopResponse {
    /// Which stack served the request (`x-served-by`).
    fn served_by(&self) -> Option<&str>;
    /// `name=value` of the affinity cookie set, if any.
    fn affinity_cookie(&self) -> Option<String>;
}

impl ShopResponse for Response {
    fn served_by(&self) -> Option<&str> {
        self.header("x-served-by")
    }

    fn affinity_cookie(&self) -> Option<String> {
        self.set_cookie("sy_aff")
    }
}

/// The port in a `... listening on 127.0.0.1:PORT` line.
fn listening_port(line: &str) -> Option<u16> {
    line.trim().rsplit(':').next()?.parse().ok()
}

/// A demo storefront stack.
pub struct Stack {
    pub proc: Proc,
    pub port: u16,
    _dir: TestDir,
}

impl Stack {
    /// Start a stack on `port` (0 = any free port; it prints the one it bound).
    pub fn start(name: &str, port: u16) -> Stack {
        let dir = TestDir::new(&format!("stack-{name}"));
        let mut cmd = Command::new(switchyard_harness::workspace_bin("switchyard-storefront"));
        cmd.args(["--name", name, "--port", &port.to_string()]);
        let mut proc = Proc::spawn(name, cmd, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let line = proc
            .wait_for_line("its `listening on` line", START_TIMEOUT, |l| {
                l.starts_with("listening on") && listening_port(l).is_some()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        Stack {
            port: listening_port(&line).unwrap(),
            proc,
            _dir: dir,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        self.proc.name()
    }

    /// SIGKILL the stack.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// A running Envoy with the switchyard filter and the shipped bootstrap.
pub struct Envoy {
    /// The harness's Envoy (admin, stats, config dump, log).
    pub inner: switchyard_harness::Envoy,
    /// The `storefront` listener's port.
    pub port: u16,
    /// The admin port.
    pub admin: u16,
    /// The rendered bootstrap.
    pub config: PathBuf,
}

/// The name of the shipped bootstrap's listener.
pub const LISTENER: &str = "storefront";

/// Render `envoy/envoy.yaml` for a test: the listener and admin on port 0 (the harness
/// reads the bound ports back), the stacks' and control service's ports, the policy and
/// the wasm path replaced; `stack_ports["node"]` names the node `envoy-<n>`. The control
/// cluster speaks plain text (the `control-tls` block is dropped), as
/// [`ControlService::start`] serves; [`render_config_tls`] keeps it.
pub fn render_config(policy_json: &str, stack_ports: &HashMap<&str, u16>) -> String {
    render(policy_json, stack_ports, None)
}

/// [`render_config`] with the control cluster over mTLS, as shipped: Envoy's client
/// certificate from the SDS file `cert_sds`, the CA it trusts from `ca_sds` (what
/// `switchyard-control certs demo` writes: [`DemoCerts`]).
pub fn render_config_tls(
    policy_json: &str,
    stack_ports: &HashMap<&str, u16>,
    cert_sds: &Path,
    ca_sds: &Path,
) -> String {
    render(policy_json, stack_ports, Some((cert_sds, ca_sds)))
}

fn render(
    policy_json: &str,
    stack_ports: &HashMap<&str, u16>,
    tls: Option<(&Path, &Path)>,
) -> String {
    let text = std::fs::read_to_string(root().join("envoy/envoy.yaml")).unwrap();
    let defaults = [
        ("blue", 8081u16),
        ("green", 8082),
        ("canary", 8083),
        ("eu", 8084),
        ("intake_us", 8090),
        ("intake_eu", 8091),
        ("control", 18000),
    ];
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut in_policy = false;
    let mut in_tls = false;
    while let Some(line) = lines.next() {
        match line.trim() {
            "# control-tls:begin" => in_tls = true,
            "# control-tls:end" => in_tls = false,
            _ => {}
        }
        if in_tls && tls.is_none() {
            continue;
        }
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
        let mut l = line.replace("port_value: 10000", "port_value: 0");
        l = l.replace("port_value: 9901", "port_value: 0");
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
        l = l.replace(
            "path: .run/control-token.yaml",
            &format!("path: {}", dataplane_token().sds.display()),
        );
        if let Some((cert, ca)) = tls {
            l = l.replace(
                "path: .run/tls/envoy-sds-cert.yaml",
                &format!("path: {}", cert.display()),
            );
            l = l.replace(
                "path: .run/tls/envoy-sds-ca.yaml",
                &format!("path: {}", ca.display()),
            );
        }
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
        let opts = switchyard_harness::EnvoyOptions {
            concurrency,
            log_level: "warn".into(),
            env: vec![("SWITCHYARD_AFFINITY_KEYS".into(), keys.into())],
            ..Default::default()
        };
        let inner =
            switchyard_harness::Envoy::start(&render_config(policy_json, stack_ports), &opts);
        let port = inner.listener(LISTENER).port();
        Envoy {
            port,
            admin: inner.admin_addr().port(),
            config: inner.config_path().to_path_buf(),
            inner,
        }
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// A client connected to the listener.
    pub fn client(&self) -> Client {
        Client::connect(self.port).unwrap()
    }

    /// All counters and gauges from `/stats` whose name matches `filter`.
    pub fn stats(&self, filter: &str) -> HashMap<String, u64> {
        self.inner.stats_matching(filter)
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
        self.stacks.iter().map(|s| (s.name(), s.port)).collect()
    }

    pub fn stack(&mut self, name: &str) -> &mut Stack {
        self.stacks.iter_mut().find(|s| s.name() == name).unwrap()
    }
}

/// The dataplane credential every test Envoy presents to the control service: one random
/// token per test process, as a token file (what `switchyard-control token import` reads)
/// and as the SDS file Envoy's control cluster reads (see envoy/envoy.yaml).
pub struct DataplaneToken {
    pub token: String,
    pub file: PathBuf,
    pub sds: PathBuf,
}

/// The identity the test Envoys' dataplane token carries.
pub const DATAPLANE_NAME: &str = "e2e-envoy";

/// This process's [`DataplaneToken`], created on first use (under `target/e2e-tokens/`).
pub fn dataplane_token() -> &'static DataplaneToken {
    static TOKEN: std::sync::OnceLock<DataplaneToken> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("random bytes for the dataplane token");
        let token = format!(
            "syt_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let dir = root()
            .join("target/e2e-tokens")
            .join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dataplane.token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let sds = dir.join("control-token.yaml");
        std::fs::write(
            &sds,
            format!(
                "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  \
                 name: switchyard_control_token\n  generic_secret:\n    secret:\n      \
                 inline_string: \"Bearer {token}\"\n"
            ),
        )
        .unwrap();
        DataplaneToken { token, file, sds }
    })
}

/// A demo CA and its certificates, as `switchyard-control certs demo` makes them for
/// `make run` (server: 127.0.0.1/localhost; clients `CN=envoy`, `CN=admin`; Envoy's SDS
/// files), in a directory of their own. Each one is a different CA.
pub struct DemoCerts {
    dir: TestDir,
}

impl DemoCerts {
    pub fn new(tag: &str) -> DemoCerts {
        let dir = TestDir::new(tag);
        let out = Command::new(switchyard_harness::workspace_bin("switchyard-control"))
            .args(["certs", "demo", "--out"])
            .arg(dir.join("tls"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "switchyard-control certs demo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        DemoCerts { dir }
    }

    /// One of the files (`ca.pem`, `envoy-sds-cert.yaml`, …).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join("tls").join(name)
    }

    /// `serve` flags for TLS and mTLS as `make run` passes them: the server certificate,
    /// client certificates verified against this CA, `CN=envoy` → envoy (dataplane),
    /// `CN=admin` → admin (admin).
    pub fn serve_args(&self) -> Vec<String> {
        let f = |n: &str| self.file(n).display().to_string();
        vec![
            "--tls-cert".into(),
            f("server.pem"),
            "--tls-key".into(),
            f("server.key"),
            "--tls-client-ca".into(),
            f("ca.pem"),
            "--tls-identity".into(),
            "CN=envoy=envoy:dataplane".into(),
            "--tls-identity".into(),
            "CN=admin=admin:admin".into(),
        ]
    }
}

/// The control service binary, started on a data directory, with authentication on: the
/// test Envoys' [`dataplane_token`] is installed in its store and an admin token is
/// created beside the data directory ([`ControlService::admin_token`]; [`ControlService::cli`]
/// sends it).
pub struct ControlService {
    pub proc: Proc,
    pub grpc: u16,
    admin_token_file: PathBuf,
    /// The CA of its TLS certificate, when it serves TLS (`--tls-client-ca` given to
    /// [`ControlService::start_with`] names it).
    ca: Option<PathBuf>,
    _dir: TestDir,
}

/// Run `switchyard-control token …` offline on a data directory; panics with its output.
pub fn token_command(data_dir: &Path, store_args: &[&str], args: &[&str]) {
    let out = Command::new(switchyard_harness::workspace_bin("switchyard-control"))
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .args(store_args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "switchyard-control token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ControlService {
    /// Start on `grpc`: a fixed port, so Envoy can be pointed at it before it runs and it
    /// can restart where Envoy expects it. Hold that port with a [`ReservedPort`] for the
    /// test's life: the service binds it with `SO_REUSEADDR`, so it can while it is held.
    pub fn start(data_dir: &Path, grpc: u16) -> ControlService {
        Self::start_with(data_dir, grpc, &[])
    }

    /// [`ControlService::start`] with more `serve` arguments (e.g. `--config FILE`).
    pub fn start_with(data_dir: &Path, grpc: u16, extra: &[&str]) -> ControlService {
        let dir = TestDir::new("control");
        // The store settings of `extra` (a config file) apply to the tokens too.
        let store_args: Vec<&str> = extra
            .windows(2)
            .filter(|w| w[0] == "--config")
            .flat_map(|w| w.iter().copied())
            .collect();
        let dp = dataplane_token();
        token_command(
            data_dir,
            &store_args,
            &[
                "import",
                "--name",
                DATAPLANE_NAME,
                "--role",
                "dataplane",
                "--token-file",
                dp.file.to_str().unwrap(),
            ],
        );
        // Kept beside the data directory, so a restart on it keeps its admin.
        let admin_token_file = data_dir.with_extension("admin-token");
        if !admin_token_file.exists() {
            token_command(
                data_dir,
                &store_args,
                &[
                    "create",
                    "--name",
                    // What `make run` names its admin token: transcripts (README) match.
                    "make-run",
                    "--role",
                    "admin",
                    "--output",
                    admin_token_file.to_str().unwrap(),
                ],
            );
        }
        let mut cmd = Command::new(switchyard_harness::workspace_bin("switchyard-control"));
        cmd.args([
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--grpc",
            &format!("127.0.0.1:{grpc}"),
            "--no-http",
        ]);
        cmd.args(extra);
        let mut proc = Proc::spawn("control", cmd, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        proc.wait_for_line("its `grpc listening on` line", START_TIMEOUT, |l| {
            l.contains("grpc listening on")
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let ca = extra
            .windows(2)
            .find(|w| w[0] == "--tls-client-ca")
            .map(|w| PathBuf::from(w[1]));
        ControlService {
            proc,
            grpc,
            admin_token_file,
            ca,
            _dir: dir,
        }
    }

    /// A token with role admin on this control service.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(&self.admin_token_file)
            .unwrap()
            .trim()
            .to_string()
    }

    /// The file holding [`ControlService::admin_token`] (for `--token-file`).
    pub fn admin_token_file(&self) -> &Path {
        &self.admin_token_file
    }

    /// SIGKILL it.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Run the operator CLI against it (over TLS, trusting its CA, when it serves TLS).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(switchyard_harness::workspace_bin("switchyard"));
        match &self.ca {
            Some(ca) => cmd
                .args(["--server", &format!("https://127.0.0.1:{}", self.grpc)])
                .arg("--ca")
                .arg(ca),
            None => cmd.args(["--server", &format!("http://127.0.0.1:{}", self.grpc)]),
        };
        cmd.arg("--token-file")
            .arg(&self.admin_token_file)
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

/// Bounded background load through Envoy: `connections` threads each GET `/` at most
/// ~100 times a second, for at most 60 s or until [`Traffic::stop`] (which returns the
/// number of requests sent).
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<usize>>,
}

impl Traffic {
    pub fn start(port: u16, connections: usize) -> Traffic {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut c = Client::connect(port).unwrap();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst)
                        && started.elapsed() < Duration::from_secs(60)
                    {
                        if c.get("/", &[]).is_err() {
                            c = Client::connect(port).unwrap();
                        }
                        n += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    n
                })
            })
            .collect();
        Traffic { stop, threads }
    }

    pub fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.threads.into_iter().map(|t| t.join().unwrap()).sum()
    }
}

/// Set a demo stack's faults (`POST /admin/faults`, e.g. `{"latency_ms": 300}`).
pub fn fault(port: u16, body: &str) {
    let r = Client::connect(port)
        .unwrap()
        .request_with_body(
            "POST",
            "/admin/faults",
            &[("content-type", b"application/json")],
            Some(body.as_bytes()),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
