//! What the replicated control plane's benchmarks share: authenticated gRPC clients,
//! percentiles, a process's memory and CPU, pinning to a core.
//!
//! The programs (`src/bin/`, run by `make bench`, figures in docs/BENCHMARKS.md):
//! - `replicas_failover`: the leader killed → another replica leads (p50/p99 over runs); Envoys
//!   connected and current after the replica they stream from is killed.
//! - `replicas_fanout`: Watch streams across the replicas, push latency and memory per stream.
//! - `store_write_latency`: a policy apply on etcd (3 members) vs redb, interleaved.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use switchyard_control::proto::v1;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

/// A channel that carries a token.
pub type Conn = InterceptedService<Channel, Bearer>;

/// Connect one HTTP/2 connection to `127.0.0.1:port` with `token`.
pub async fn connect(port: u16, token: &str) -> Conn {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    let bearer = Bearer(format!("Bearer {token}").parse().unwrap());
    InterceptedService::new(channel, bearer)
}

/// The operator API clients on one connection.
pub struct Operator {
    pub policies: v1::policies_client::PoliciesClient<Conn>,
    pub stacks: v1::stacks_client::StacksClient<Conn>,
}

impl Operator {
    pub async fn connect(port: u16, token: &str) -> Operator {
        let c = connect(port, token).await;
        Operator {
            policies: v1::policies_client::PoliciesClient::new(c.clone()),
            stacks: v1::stacks_client::StacksClient::new(c),
        }
    }

    /// Apply `doc`; its new version.
    pub async fn apply(&mut self, doc: &str) -> Result<u64, tonic::Status> {
        let r = self
            .policies
            .apply(v1::ApplyPolicyRequest {
                policy_json: doc.to_string(),
                actor: "bench".into(),
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().version)
    }

    /// Set a stack's weight; the new version.
    pub async fn weight(&mut self, stack: &str, percent: u32) -> Result<u64, tonic::Status> {
        let r = self
            .stacks
            .set_weight(v1::SetWeightRequest {
                stack: stack.into(),
                weight_percent: percent,
                reason: "bench".into(),
                actor: "bench".into(),
            })
            .await?;
        Ok(r.into_inner().version)
    }
}

/// A policy over `stacks` stacks named `name` (8 stacks ≈ 1 KB, as the single-replica
/// `watch_load` uses).
pub fn policy(stacks: usize, name: &str) -> String {
    let defs: Vec<String> = (0..stacks)
        .map(|i| format!(r#"{{"name":"stack-{i}","region":"region-{}"}}"#, i % 3))
        .collect();
    let targets: Vec<String> = (0..stacks)
        .map(|i| format!(r#"{{"stack":"stack-{i}","weight":{}}}"#, 10 + i))
        .collect();
    format!(
        r#"{{"name":"{name}","stacks":[{}],"rules":[{{"id":"mobile","priority":1,"match":{{"path_prefixes":["/m/"]}},"route":{{"targets":[{}],"affinity":true}}}}],"default":{{"targets":[{}]}}}}"#,
        defs.join(","),
        targets.join(","),
        targets.join(",")
    )
}

/// The `p`th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sort and summarise: `{"n", "p50", "p99", "max"}` in the values' unit.
pub fn summary(values: &mut [f64]) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    serde_json::json!({
        "n": values.len(),
        "p50": round1(percentile(values, 50.0)),
        "p99": round1(percentile(values, 99.0)),
        "max": round1(values.last().copied().unwrap_or(f64::NAN)),
    })
}

/// One decimal.
pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Resident memory of a process, KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of a process, ms (`/proc/<pid>/stat`, USER_HZ 100).
pub fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) * 10.0
}

/// Pin a process (all its threads) to `cpus` (`taskset -a -p -c`), if taskset exists.
pub fn pin(pid: u32, cpus: &str) {
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
}

/// Print a result as one JSON document and, if `BENCH_OUT_DIR` is set, write it there
/// as `<name>.json`.
pub fn report(name: &str, result: &serde_json::Value) {
    let text = serde_json::to_string_pretty(result).unwrap();
    println!("{text}");
    if let Ok(dir) = std::env::var("BENCH_OUT_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            std::path::Path::new(&dir).join(format!("{name}.json")),
            text,
        );
    }
}
