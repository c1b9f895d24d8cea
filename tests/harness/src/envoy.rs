//! The real Envoy binary with a given bootstrap.
//!
//! Ports: write listeners and the admin with `port_value: 0`. The admin address comes
//! from `--admin-address-path`, the listeners' bound addresses from the admin API
//! (`/listeners?format=json`) once `/ready` says LIVE. `--use-dynamic-base-id` keeps
//! parallel Envoys' shared memory apart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::HarnessError;
use crate::http::{Client, Response};
use crate::proc::{Proc, TestDir};

/// How to start an Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// `--concurrency` (worker threads).
    pub concurrency: u32,
    /// `--log-level`.
    pub log_level: String,
    /// Environment variables for the process (e.g. secrets the wasm reads).
    pub env: Vec<(String, String)>,
    /// Further command-line arguments.
    pub args: Vec<String>,
    /// How long to wait for LIVE and bound listeners.
    pub ready_timeout: Duration,
    /// The binary ([`crate::envoy_bin`] by default).
    pub bin: PathBuf,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            concurrency: 1,
            log_level: "warning".into(),
            env: Vec::new(),
            args: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            bin: crate::envoy_bin(),
        }
    }
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    proc: Proc,
    admin: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
    config: PathBuf,
    dir: TestDir,
}

impl Envoy {
    /// Write `yaml` to a fresh test dir, start Envoy on it, wait until the admin says
    /// LIVE and every listener is bound. Panics with the log tail if it does not.
    pub fn start(yaml: &str, opts: &EnvoyOptions) -> Envoy {
        Envoy::try_start(yaml, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Envoy::start`], returning the error instead.
    pub fn try_start(yaml: &str, opts: &EnvoyOptions) -> Result<Envoy, HarnessError> {
        let dir = TestDir::new("envoy");
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, yaml)
            .map_err(|e| HarnessError::io("envoy", "writing the bootstrap", e))?;
        let admin_path = dir.join("admin-address");
        let mut cmd = Command::new(&opts.bin);
        cmd.arg("-c")
            .arg(&config)
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args(["--log-level", &opts.log_level])
            .arg("--use-dynamic-base-id")
            .arg("--base-id-path")
            .arg(dir.join("base-id"))
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(&opts.args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)));
        let mut proc = Proc::spawn("envoy", cmd, dir.path())?;
        let t = opts.ready_timeout;
        let admin: SocketAddr = proc.wait_until("the admin address file", t, |_| {
            std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })?;
        proc.wait_http_ok(admin, "/ready", t)?;
        let listeners = proc.wait_until("listeners bound (admin /listeners)", t, |_| {
            let r = Client::connect_addr(admin)
                .ok()?
                .get("/listeners?format=json", &[])
                .ok()?;
            parse_listeners(&r.json())
        })?;
        Ok(Envoy {
            proc,
            admin,
            listeners,
            config,
            dir,
        })
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The bound address of listener `name`. Panics (naming the ones there are) if none.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self.listeners.get(name).unwrap_or_else(|| {
            panic!(
                "envoy has no listener {name:?}; it has {:?}",
                self.listeners.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Every listener's bound address by name.
    pub fn listeners(&self) -> &HashMap<String, SocketAddr> {
        &self.listeners
    }

    /// The bootstrap it runs.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Its test directory (bootstrap, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Envoy's log so far (its application log goes to stderr).
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// A client for listener `name`.
    pub fn client(&self, name: &str) -> Client {
        Client::connect_addr(self.listener(name)).expect("connect to the envoy listener")
    }

    /// `GET path` on the admin API.
    pub fn admin_get(&self, path: &str) -> Response {
        Client::connect_addr(self.admin)
            .and_then(|mut c| c.get(path, &[]))
            .unwrap_or_else(|e| panic!("envoy admin GET {path}: {e}\n{}", self.proc.tail(40)))
    }

    /// `/stats?format=json`, flattened to `name → value` (counters and gauges;
    /// histograms are left out).
    pub fn stats(&self) -> HashMap<String, u64> {
        self.stats_matching("")
    }

    /// [`Envoy::stats`] restricted to names matching the admin's `filter` regex.
    pub fn stats_matching(&self, filter: &str) -> HashMap<String, u64> {
        let path = if filter.is_empty() {
            "/stats?format=json".to_string()
        } else {
            format!("/stats?format=json&filter={filter}")
        };
        let doc = self.admin_get(&path).json();
        doc["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].as_u64()?)))
            .collect()
    }

    /// `/stats/prometheus` as text.
    pub fn stats_prometheus(&self) -> String {
        self.admin_get("/stats/prometheus").text()
    }

    /// `/config_dump` as JSON.
    pub fn config_dump(&self) -> serde_json::Value {
        self.admin_get("/config_dump").json()
    }
}

/// `name → bound address` from `/listeners?format=json`, or `None` while a listener still
/// reports port 0.
fn parse_listeners(doc: &serde_json::Value) -> Option<HashMap<String, SocketAddr>> {
    let mut out = HashMap::new();
    for l in doc["listener_statuses"].as_array()? {
        let name = l["name"].as_str()?;
        let sa = &l["local_address"]["socket_address"];
        let port = sa["port_value"].as_u64()?;
        if port == 0 {
            return None;
        }
        let addr: SocketAddr = format!("{}:{port}", sa["address"].as_str()?).parse().ok()?;
        out.insert(name.to_string(), addr);
    }
    Some(out)
}
