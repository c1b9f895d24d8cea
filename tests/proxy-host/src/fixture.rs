//! The Switchyard filter on this host, set up in one line: a process with N worker VMs
//! running the built `switchyard_filter.wasm` with a policy as plugin configuration and
//! affinity keys in the VM environment, as Envoy would run it.

use std::path::Path;
use std::time::Duration;

use crate::build::filter_wasm;
use crate::error::HostError;
use crate::http::{Exchange, Request};
use crate::module::WasmModule;
use crate::process::{Process, VmId, DEFAULT_START_UNIX_SECS};
use crate::vm::VmSpec;

/// Request header the filter writes with the chosen stack.
pub const STACK_HEADER: &str = "x-switchyard-stack";
/// Response header explaining the decision (when the policy enables it).
pub const DECISION_HEADER: &str = "x-switchyard-decision";
/// Affinity keys the fixture gives every VM unless told otherwise.
pub const TEST_KEYS: &str = "k1=test-secret-number-one,k0=test-secret-number-zero";

/// Builder for a [`Switchyard`] process.
pub struct SwitchyardBuilder {
    policy: String,
    workers: usize,
    keys: Option<String>,
    start_unix_secs: u64,
    vm_id: String,
    wasm: Option<std::path::PathBuf>,
    log_capacity: usize,
    singleton: Option<String>,
    peer: Option<Box<dyn crate::process::GrpcPeer>>,
}

/// Plugin configuration of the control singleton for `cluster`, as node `node_id`.
pub fn control_config(cluster: &str, node_id: &str) -> String {
    format!(r#"{{"role": "control", "cluster": "{cluster}", "node_id": "{node_id}"}}"#)
}

impl SwitchyardBuilder {
    /// Also start the control singleton (same module and vm_id) with this plugin
    /// configuration, before the workers, as Envoy starts bootstrap extensions first.
    pub fn singleton(mut self, config: impl Into<String>) -> Self {
        self.singleton = Some(config.into());
        self
    }

    /// The gRPC peer the process uses (installed before any VM starts).
    pub fn grpc_peer(mut self, peer: impl crate::process::GrpcPeer + 'static) -> Self {
        self.peer = Some(Box::new(peer));
        self
    }

    pub fn policy(mut self, json: impl Into<String>) -> Self {
        self.policy = json.into();
        self
    }

    /// A policy file, relative to the workspace root when not absolute.
    pub fn policy_file(mut self, path: impl AsRef<Path>) -> Self {
        let p = path.as_ref();
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            crate::build::workspace_root().join(p)
        };
        self.policy =
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// `SWITCHYARD_AFFINITY_KEYS` in the VM environment; `None` leaves it unset.
    pub fn affinity_keys(mut self, keys: Option<&str>) -> Self {
        self.keys = keys.map(str::to_string);
        self
    }

    /// Virtual wall-clock start, seconds since the Unix epoch.
    pub fn start_at(mut self, unix_secs: u64) -> Self {
        self.start_unix_secs = unix_secs;
        self
    }

    pub fn vm_id(mut self, id: &str) -> Self {
        self.vm_id = id.into();
        self
    }

    /// Load this `.wasm` instead of the workspace's filter build.
    pub fn wasm(mut self, path: impl AsRef<Path>) -> Self {
        self.wasm = Some(path.as_ref().to_path_buf());
        self
    }

    pub fn log_capacity(mut self, n: usize) -> Self {
        self.log_capacity = n;
        self
    }

    /// The VM spec every worker gets.
    pub fn spec(&self) -> Result<VmSpec, HostError> {
        let path = match &self.wasm {
            Some(p) => p.clone(),
            None => filter_wasm()?,
        };
        let module = WasmModule::from_file(path)?;
        let mut spec = VmSpec::new(module)
            .vm_id(&self.vm_id)
            .root_id("switchyard")
            .plugin_config(&self.policy)
            .log_capacity(self.log_capacity);
        if let Some(k) = &self.keys {
            spec = spec.env("SWITCHYARD_AFFINITY_KEYS", k);
        }
        Ok(spec)
    }

    pub fn build(mut self) -> Result<Switchyard, HostError> {
        let spec = self.spec()?;
        let mut process = Process::starting_at(self.start_unix_secs * 1_000_000_000);
        if let Some(peer) = self.peer.take() {
            process.set_grpc_peer_boxed(peer);
        }
        let singleton = match &self.singleton {
            Some(cfg) => Some(
                process.spawn(
                    spec.clone()
                        .root_id("switchyard-control")
                        .plugin_config(cfg.as_bytes())
                        .name("singleton"),
                )?,
            ),
            None => None,
        };
        let mut workers = Vec::new();
        for i in 0..self.workers {
            workers.push(
                process.spawn(
                    spec.clone()
                        .seed(0x5eed + i as u64)
                        .name(&format!("worker{i}")),
                )?,
            );
        }
        Ok(Switchyard {
            process,
            workers,
            singleton,
        })
    }
}

/// A simulated Envoy running the filter on N workers.
pub struct Switchyard {
    pub process: Process,
    pub workers: Vec<VmId>,
    pub singleton: Option<VmId>,
}

impl Switchyard {
    /// Starts from `examples/policies/demo.json`, one worker, test keys.
    pub fn builder() -> SwitchyardBuilder {
        SwitchyardBuilder {
            policy: String::new(),
            workers: 1,
            keys: Some(TEST_KEYS.into()),
            start_unix_secs: DEFAULT_START_UNIX_SECS,
            vm_id: "switchyard".into(),
            wasm: None,
            log_capacity: 20_000,
            singleton: None,
            peer: None,
        }
        .policy_file("examples/policies/demo.json")
    }

    /// Sends a request through worker 0.
    pub fn send(&mut self, req: Request) -> Result<Exchange, HostError> {
        let w = self.workers[0];
        self.process.send(w, req)
    }

    pub fn send_on(&mut self, worker: usize, req: Request) -> Result<Exchange, HostError> {
        let w = self.workers[worker];
        self.process.send(w, req)
    }

    /// Reconfigure worker `worker`'s plugin in place with a new policy document.
    pub fn reconfigure(&mut self, worker: usize, policy: &str) -> Result<bool, HostError> {
        let w = self.workers[worker];
        let accepted = self.process.vm(w).reconfigure(policy)?;
        self.process.flush()?;
        Ok(accepted)
    }

    pub fn advance(&mut self, d: Duration) -> Result<(), HostError> {
        self.process.advance(d)
    }

    /// `proxy_define_metric` calls so far (every VM).
    pub fn metric_definitions(&self) -> u64 {
        self.process.shared().metric_definitions()
    }

    /// Value of a counter or gauge (0 when never defined).
    pub fn metric(&self, name: &str) -> i64 {
        self.process.shared().metric(name).map_or(0, |m| m.value)
    }

    pub fn histogram(&self, name: &str) -> Vec<u64> {
        self.process
            .shared()
            .metric(name)
            .map(|m| m.samples)
            .unwrap_or_default()
    }

    /// Host errors of every worker (bad pointers, malformed buffers); should be empty.
    pub fn host_errors(&self) -> Vec<String> {
        self.workers
            .iter()
            .flat_map(|w| self.process.vm_ref(*w).host_errors().to_vec())
            .collect()
    }

    pub fn singleton_logs(&self) -> String {
        self.singleton
            .map(|s| self.process.vm_ref(s).logs_text())
            .unwrap_or_default()
    }

    pub fn logs_text(&self, worker: usize) -> String {
        self.process.vm_ref(self.workers[worker]).logs_text()
    }
}

/// An upstream where the named stacks answer `status` and the rest 200.
pub fn stacks_failing(failing: &[&str], status: u16) -> crate::http::Upstream {
    let failing: Vec<String> = failing.iter().map(|s| s.to_string()).collect();
    std::sync::Arc::new(move |h: &[crate::abi::Pair]| {
        let stack = h
            .iter()
            .find(|(k, _)| k == STACK_HEADER)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        if stack.is_some_and(|s| failing.contains(&s)) {
            crate::http::Response::status(status)
        } else {
            crate::http::Response::status(200)
        }
    })
}

impl Exchange {
    /// The stack the filter routed to (`x-switchyard-stack` as forwarded upstream).
    pub fn stack(&self) -> Option<&str> {
        self.upstream_header(STACK_HEADER)
    }

    /// The `x-switchyard-decision` response header.
    pub fn decision(&self) -> Option<&str> {
        self.response_header(DECISION_HEADER)
    }
}
