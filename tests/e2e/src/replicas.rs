//! Several control-service replicas on one etcd cluster, and Envoys whose control
//! cluster lists every replica (`envoy/control-replicas.yaml`): the fixture of
//! `tests/replicas.rs` and of the failover benchmarks (`examples/replicas_bench.rs`).
//!
//! Each replica is a [`ControlService`] (the real `switchyard-control` binary, with
//! authentication on) started with `--config` on a file that says `store = "etcd"`, so
//! its tokens and its data live in etcd; each has its own reserved gRPC port, held for
//! the fixture's life so a replica restarts where the Envoys expect it.
//!
//! Who leads is read from each replica's `switchyard --json status` ([`leader_flag`], the
//! one place that knows how a replica says so).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchyard_harness::EtcdCluster;

use crate::{root, ControlService, Envoy, ReservedPort, TestDir, LISTENER, TEST_KEYS};

/// Whether a replica's `switchyard --json status` says it is the leader (`leader`);
/// `None` when it does not say. The one place that knows the field.
pub fn leader_flag(status: &serde_json::Value) -> Option<bool> {
    status["leader"].as_bool()
}

/// Replicas of the control service on an etcd cluster.
pub struct Replicas {
    /// The etcd cluster they share (kill, restart and find its leader through it).
    pub etcd: EtcdCluster,
    replicas: Vec<Option<ControlService>>,
    /// SIGSTOPped: asking it anything would only time out.
    paused: Vec<bool>,
    ports: Vec<ReservedPort>,
    config: PathBuf,
    dir: TestDir,
    files: AtomicUsize,
}

impl Replicas {
    /// `n` replicas on a fresh 3-member etcd cluster; `config_toml` is added to the
    /// replicas' config file (after the store settings).
    pub fn start(n: usize, config_toml: &str) -> Replicas {
        Replicas::start_on(EtcdCluster::start(3), n, config_toml)
    }

    /// `n` replicas on the given etcd cluster.
    pub fn start_on(etcd: EtcdCluster, n: usize, config_toml: &str) -> Replicas {
        let dir = TestDir::new("replicas");
        let endpoints = etcd
            .client_urls()
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.join("control.toml");
        std::fs::write(
            &config,
            format!("store = \"etcd\"\netcd_endpoints = [{endpoints}]\n{config_toml}\n"),
        )
        .unwrap();
        let ports: Vec<ReservedPort> = (0..n).map(|_| ReservedPort::new().unwrap()).collect();
        let mut r = Replicas {
            etcd,
            replicas: (0..n).map(|_| None).collect(),
            paused: vec![false; n],
            ports,
            config,
            dir,
            files: AtomicUsize::new(0),
        };
        for i in 0..n {
            r.restart(i);
        }
        r
    }

    /// Number of replicas (running or not).
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Every replica's gRPC port, in order.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.iter().map(ReservedPort::port).collect()
    }

    /// Replica `i`; panics if it is down.
    pub fn replica(&self, i: usize) -> &ControlService {
        self.replicas[i]
            .as_ref()
            .unwrap_or_else(|| panic!("replica {i} is down"))
    }

    /// Replica `i`, mutably; panics if it is down.
    pub fn replica_mut(&mut self, i: usize) -> &mut ControlService {
        self.replicas[i]
            .as_mut()
            .unwrap_or_else(|| panic!("replica {i} is down"))
    }

    /// Whether replica `i` runs (it may be paused).
    pub fn is_up(&self, i: usize) -> bool {
        self.replicas[i].is_some()
    }

    /// Whether replica `i` runs and is not paused.
    pub fn is_serving(&self, i: usize) -> bool {
        self.is_up(i) && !self.paused[i]
    }

    /// `kill -9` replica `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.replicas[i].take() {
            c.kill();
        }
        self.paused[i] = false;
    }

    /// SIGSTOP replica `i`: it keeps its sockets and its leadership key's lease stops
    /// being renewed.
    pub fn pause(&mut self, i: usize) {
        self.replica_mut(i).proc.pause();
        self.paused[i] = true;
    }

    /// SIGCONT replica `i` after [`Replicas::pause`].
    pub fn resume(&mut self, i: usize) {
        self.replica_mut(i).proc.resume();
        self.paused[i] = false;
    }

    /// (Re)start replica `i` on its port and data directory; waits until it serves.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let data = self.dir.join(format!("replica-{i}"));
        let id = format!("r{i}");
        let c = ControlService::start_with(
            &data,
            self.ports[i].port(),
            &[
                "--config",
                self.config.to_str().unwrap(),
                "--replica-id",
                &id,
            ],
        );
        self.replicas[i] = Some(c);
    }

    /// Run the operator CLI (admin token, 3 s timeout) against replica `i`.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        self.cli_timeout(i, 3, args)
    }

    /// Run the operator CLI against replica `i` with `--timeout secs`.
    pub fn cli_timeout(&self, i: usize, secs: u32, args: &[&str]) -> Output {
        let secs = secs.to_string();
        let mut all = vec!["--timeout", secs.as_str()];
        all.extend_from_slice(args);
        self.replica(i).cli(&all)
    }

    /// Run the CLI with `--json` against replica `i` (3 s timeout): whether it succeeded,
    /// and what it printed on stdout as JSON (`Null` if it printed none). A failure is
    /// `{"ok": false, "code": …, "message": …}` (`code` is e.g. `aborted`, `unreachable`).
    pub fn cli_json(&self, i: usize, args: &[&str]) -> (bool, serde_json::Value) {
        self.cli_json_timeout(i, 3, args)
    }

    /// [`Replicas::cli_json`] with `--timeout secs`.
    pub fn cli_json_timeout(
        &self,
        i: usize,
        secs: u32,
        args: &[&str],
    ) -> (bool, serde_json::Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli_timeout(i, secs, &all);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.success(), v)
    }

    /// Write `policy` to a file and `switchyard policy apply` it on replica `i` (10 s
    /// timeout: a write may wait for etcd), with `extra` arguments.
    pub fn apply(&self, i: usize, policy: &str, extra: &[&str]) -> (bool, serde_json::Value) {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.join(format!("policy-{n}.json"));
        std::fs::write(&file, policy).unwrap();
        let mut args = vec!["policy", "apply", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.cli_json_timeout(i, 10, &args)
    }

    /// `switchyard --json status` of replica `i`, if it runs, is not paused and answers.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        if !self.is_serving(i) {
            return None;
        }
        let (ok, v) = self.cli_json(i, &["status"]);
        ok.then_some(v)
    }

    /// The version in force on replica `i` (`current_version` of its status).
    pub fn current_version(&self, i: usize) -> Option<u64> {
        self.status(i)?["current_version"].as_u64()
    }

    /// Wait up to `timeout` until every serving replica has `version` in force.
    pub fn wait_converged(&self, version: u64, timeout: Duration) {
        let start = Instant::now();
        loop {
            let seen: Vec<Option<u64>> = (0..self.len())
                .filter(|&i| self.is_serving(i))
                .map(|i| self.current_version(i))
                .collect();
            if seen.iter().all(|v| *v == Some(version)) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "replicas did not all reach version {version} within {timeout:?}: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every version replica `i` has, oldest first (`policy history`), as JSON
    /// `VersionInfo`s (`version`, `kind`, `summary`, `actor`, `policy_name`, …).
    pub fn history(&self, i: usize) -> Vec<serde_json::Value> {
        let (ok, v) = self.cli_json_timeout(i, 10, &["policy", "history", "--limit", "100000"]);
        assert!(ok, "policy history on replica {i}: {v}");
        let mut versions = v["versions"].as_array().cloned().unwrap_or_default();
        versions.reverse();
        versions
    }

    /// The replica that says it leads, if exactly one of the running ones does.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = (0..self.len())
            .filter(|&i| self.status(i).as_ref().and_then(leader_flag) == Some(true))
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Wait up to `timeout` for a leader other than `not`; the leader and how long it took.
    pub fn wait_leader(&self, timeout: Duration, not: Option<usize>) -> (usize, Duration) {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader().filter(|l| Some(*l) != not) {
                return (l, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "no replica (other than {not:?}) leads after {timeout:?}; statuses: {:#?}",
                (0..self.len()).map(|i| self.status(i)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The running replicas that hold a connected Watch stream of `node_id`.
    pub fn streaming(&self, node_id: &str) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| {
                self.status(i).is_some_and(|s| {
                    s["nodes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|n| n["node_id"] == node_id && n["connected"].as_bool() == Some(true))
                })
            })
            .collect()
    }

    /// Start an Envoy (cookie keys [`TEST_KEYS`]) whose control cluster lists every
    /// replica; `stack_ports["node"]` names it `envoy-<n>`.
    pub fn envoy(
        &self,
        policy_json: &str,
        stack_ports: &HashMap<&str, u16>,
        concurrency: u32,
    ) -> Envoy {
        let mut ports = stack_ports.clone();
        ports.insert("control", self.ports[0].port());
        let yaml = replicas_config(&crate::render_config(policy_json, &ports), &self.ports());
        let opts = switchyard_harness::EnvoyOptions {
            concurrency,
            log_level: "warn".into(),
            env: vec![("SWITCHYARD_AFFINITY_KEYS".into(), TEST_KEYS.into())],
            ..Default::default()
        };
        let inner = switchyard_harness::Envoy::start(&yaml, &opts);
        let port = inner.listener(LISTENER).port();
        Envoy {
            port,
            admin: inner.admin_addr().port(),
            config: inner.config_path().to_path_buf(),
            inner,
        }
    }
}

/// The version an Envoy's control singleton applied last
/// (`switchyard.control.applied_version`).
pub fn applied_version(envoy: &Envoy) -> u64 {
    let name = "wasmcustom.switchyard.control.applied_version";
    envoy.stats(name).get(name).copied().unwrap_or(0)
}

/// Wait up to `timeout` until `envoy` applied at least `version`; how long it took.
pub fn wait_applied(envoy: &Envoy, version: u64, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if applied_version(envoy) >= version {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Envoy's downstream response counts on the storefront listener:
/// `(2xx, 4xx, 5xx)`, for "no request failed" across a fault.
pub fn responses(envoy: &Envoy) -> (u64, u64, u64) {
    let s = envoy.stats("^http\\.storefront\\.downstream_rq_[245]xx$");
    let get = |c: &str| {
        s.get(&format!("http.storefront.downstream_rq_{c}"))
            .copied()
            .unwrap_or(0)
    };
    (get("2xx"), get("4xx"), get("5xx"))
}

/// Indentation of a line (spaces).
fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// A bootstrap rendered from `envoy/envoy.yaml` with the `switchyard_control` cluster's
/// keys replaced by those of `envoy/control-replicas.yaml`, with one endpoint per port.
/// The cluster's other keys (protocol options, credential injector, TLS) are kept.
pub fn replicas_config(rendered: &str, ports: &[u16]) -> String {
    let snippet = std::fs::read_to_string(root().join("envoy/control-replicas.yaml")).unwrap();
    // The snippet's keys, the endpoint lines expanded to one per replica.
    let mut keys = Vec::new();
    let mut body = Vec::new();
    let mut endpoint_done = false;
    for line in snippet.lines() {
        let t = line.trim_start();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if indent(line) == 0 && !t.starts_with('-') {
            keys.push(t.split(':').next().unwrap().to_string());
        }
        if t.starts_with("- endpoint:") {
            if !endpoint_done {
                for p in ports {
                    let pos = line.find("port_value: ").unwrap() + "port_value: ".len();
                    let end = pos + line[pos..].find(' ').unwrap();
                    body.push(format!("{}{p}{}", &line[..pos], &line[end..]));
                }
                endpoint_done = true;
            }
            continue;
        }
        body.push(line.to_string());
    }
    assert!(
        endpoint_done,
        "envoy/control-replicas.yaml lists no endpoint"
    );

    let lines: Vec<&str> = rendered.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "- name: switchyard_control")
        .expect("envoy.yaml has the switchyard_control cluster");
    let cluster_indent = indent(lines[start]);
    let key_indent = cluster_indent + 2;
    let end = (start + 1..lines.len())
        .find(|&j| {
            let t = lines[j].trim_start();
            !t.is_empty() && !t.starts_with('#') && indent(lines[j]) <= cluster_indent
        })
        .unwrap_or(lines.len());
    let mut out: Vec<String> = lines[..=start].iter().map(|s| s.to_string()).collect();
    let mut j = start + 1;
    while j < end {
        let l = lines[j];
        let replaced = indent(l) == key_indent
            && keys
                .iter()
                .any(|k| l.trim_start().starts_with(&format!("{k}:")));
        if replaced {
            j += 1;
            while j < end && (lines[j].trim().is_empty() || indent(lines[j]) > key_indent) {
                j += 1;
            }
            continue;
        }
        out.push(l.to_string());
        j += 1;
    }
    let pad = " ".repeat(key_indent);
    out.extend(body.iter().map(|b| format!("{pad}{b}")));
    out.extend(lines[end..].iter().map(|s| s.to_string()));
    out.join("\n") + "\n"
}
