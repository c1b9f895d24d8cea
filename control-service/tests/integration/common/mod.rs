//! Shared fixtures: an in-process server on 127.0.0.1:0 with a tempdir store, clients,
//! and policy documents.
#![allow(dead_code)]

use std::time::Duration;

use switchyard_control::config::ServeConfig;
use switchyard_control::proto::v1;
use switchyard_control::server::{self, RunningServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

pub type Policies = v1::policies_client::PoliciesClient<Channel>;
pub type Stacks = v1::stacks_client::StacksClient<Channel>;
pub type Fleet = v1::fleet_client::FleetClient<Channel>;
pub type DataPlane = v1::data_plane_client::DataPlaneClient<Channel>;

/// A policy routing over `stacks` (all in region `us`), named `name`.
pub fn policy(name: &str, stacks: &[&str]) -> String {
    let defs: Vec<String> = stacks
        .iter()
        .map(|s| format!(r#"{{"name":"{s}","region":"us"}}"#))
        .collect();
    let targets: Vec<String> = stacks
        .iter()
        .map(|s| format!(r#"{{"stack":"{s}"}}"#))
        .collect();
    format!(
        r#"{{"name":"{name}","stacks":[{}],"default":{{"targets":[{}]}}}}"#,
        defs.join(","),
        targets.join(",")
    )
}

/// A policy with three distinct problems.
pub const INVALID: &str = r#"{"name":"broken","stacks":[{"name":"blue","region":"us"},{"name":"bad name!","region":""}],
  "default":{"targets":[{"stack":"purple"}]}}"#;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub channel: Channel,
}

impl Harness {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_with(dir, |_| {}).await
    }

    pub async fn start_with(dir: tempfile::TempDir, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut cfg = ServeConfig::ephemeral(dir.path());
        tweak(&mut cfg);
        let server = server::start(cfg).await.expect("server starts");
        let channel = Channel::from_shared(server.grpc_url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        Self {
            dir,
            server,
            channel,
        }
    }

    /// Stop the server, keeping the data directory for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        self.server.shutdown().await;
        self.dir
    }

    pub fn policies(&self) -> Policies {
        v1::policies_client::PoliciesClient::new(self.channel.clone())
    }
    pub fn stacks(&self) -> Stacks {
        v1::stacks_client::StacksClient::new(self.channel.clone())
    }
    pub fn fleet(&self) -> Fleet {
        v1::fleet_client::FleetClient::new(self.channel.clone())
    }
    pub fn data_plane(&self) -> DataPlane {
        v1::data_plane_client::DataPlaneClient::new(self.channel.clone())
    }

    pub async fn apply(&self, doc: &str) -> v1::ChangeResponse {
        self.policies()
            .apply(v1::ApplyPolicyRequest {
                policy_json: doc.to_string(),
                actor: "test".into(),
                ..Default::default()
            })
            .await
            .expect("apply")
            .into_inner()
    }

    pub async fn watch(&self, node_id: &str, last_applied: u64) -> Watch {
        Watch::open(self.data_plane(), node_id, last_applied).await
    }

    pub async fn status(&self) -> v1::StatusResponse {
        self.fleet()
            .status(v1::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    pub fn http_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.server.http_addr.expect("http enabled")
        )
    }
}

pub fn reason_req(stack: &str, reason: &str) -> v1::StackReasonRequest {
    v1::StackReasonRequest {
        stack: stack.into(),
        reason: reason.into(),
        actor: "test".into(),
    }
}

pub fn drain_req(stack: &str, reason: &str, deadline_seconds: u64) -> v1::DrainStackRequest {
    v1::DrainStackRequest {
        stack: stack.into(),
        reason: reason.into(),
        actor: "test".into(),
        deadline_seconds,
    }
}

/// A Watch stream as the wasm singleton drives it.
pub struct Watch {
    pub tx: mpsc::Sender<v1::WatchRequest>,
    pub rx: Streaming<v1::Snapshot>,
}

impl Watch {
    pub async fn open(mut client: DataPlane, node_id: &str, last_applied: u64) -> Self {
        let (tx, rx) = mpsc::channel(8);
        tx.send(v1::WatchRequest {
            node_id: node_id.into(),
            last_applied_version: last_applied,
            ack_version: 0,
        })
        .await
        .expect("queue first message");
        let rx = client
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch opens")
            .into_inner();
        Self { tx, rx }
    }

    /// The next snapshot, within 5 s.
    pub async fn next(&mut self) -> v1::Snapshot {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a snapshot within 5 s")
            .expect("stream ok")
            .expect("stream open")
    }

    /// Nothing arrives within `wait`.
    pub async fn expect_quiet(&mut self, wait: Duration) {
        if let Ok(m) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("expected no message, got {m:?}");
        }
    }

    pub async fn ack(&self, version: u64) {
        self.tx
            .send(v1::WatchRequest {
                ack_version: version,
                ..Default::default()
            })
            .await
            .expect("ack");
    }
}

/// Poll `f` until it returns true, for up to 5 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Minimal HTTP/1.1 GET (Connection: close): status code and body.
pub async fn http_get(url: &str) -> (u16, String) {
    let (status, _, body) = http_request("GET", url).await;
    (status, body)
}

/// Minimal HTTP/1.1 request without a body (Connection: close): status code, the
/// lower-cased `content-type` (empty if none) and body.
pub async fn http_request(method: &str, url: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .expect("connect http");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

pub async fn http_json(url: &str) -> serde_json::Value {
    let (status, body) = http_get(url).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("json body")
}

/// The real `switchyard-control` binary, serving on ephemeral ports.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub grpc: String,
    pub http: String,
}

impl ServerProcess {
    /// Start `switchyard-control serve` on `data_dir` and wait for its ready line.
    pub fn spawn(data_dir: &std::path::Path, extra: &[&str]) -> Self {
        Self::spawn_with_env(data_dir, extra, &[])
    }

    /// The same with `env` added to the server's environment.
    pub fn spawn_with_env(
        data_dir: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        use std::io::BufRead;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("log file");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard-control"))
            // Suites about something else call without tokens; tests/integration/access.rs covers auth.
            .args([
                "serve",
                "--no-auth",
                "--grpc",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn switchyard-control");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut grpc = String::new();
        let mut http = String::new();
        for line in lines.by_ref() {
            let line = line.expect("read stdout");
            if let Some(addr) = line.strip_prefix("grpc listening on ") {
                grpc = format!("http://{addr}");
            } else if let Some(addr) = line.strip_prefix("http listening on ") {
                http = format!("http://{addr}");
                break;
            }
        }
        assert!(!grpc.is_empty(), "server printed its gRPC address");
        Self { child, grpc, http }
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}
