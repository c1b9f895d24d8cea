//! A real etcd (Debian's `etcd-server`, installed by `make setup`) on 127.0.0.1: one
//! member or a cluster of several, each on reserved client and peer ports, in its own
//! data directory, killed with the test.
//!
//! Members can be stopped (`kill -9`), paused (`SIGSTOP`) and restarted on the same
//! ports and data, which is what failover tests need.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::HarnessError;
use crate::ports::ReservedPort;
use crate::proc::{Proc, TestDir};

/// How long a member may take to answer its health endpoint.
const READY: Duration = Duration::from_secs(20);

/// The etcd binary: `$ETCD`, else `etcd` on the PATH (Debian puts it in /usr/bin).
pub fn etcd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ETCD") {
        return PathBuf::from(p);
    }
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join("etcd");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("etcd")
}

struct Member {
    name: String,
    client: ReservedPort,
    peer: ReservedPort,
    proc: Option<Proc>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    dir: TestDir,
    members: Vec<Member>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Start `n` members and wait until every one is healthy. Panics with the logs when
    /// etcd is missing or does not come up.
    pub fn start(n: usize) -> EtcdCluster {
        Self::try_start(n).unwrap_or_else(|e| panic!("etcd: {e}"))
    }

    pub fn try_start(n: usize) -> Result<EtcdCluster, HarnessError> {
        let dir = TestDir::new("etcd");
        let mut members = Vec::new();
        for i in 0..n.max(1) {
            let io = |e| HarnessError::io("etcd", "reserving a port", e);
            members.push(Member {
                name: format!("m{i}"),
                client: ReservedPort::new().map_err(io)?,
                peer: ReservedPort::new().map_err(io)?,
                proc: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer.port()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            dir,
            members,
            initial_cluster,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), HarnessError> {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client.port());
        let peer = format!("http://127.0.0.1:{}", m.peer.port());
        let data = self.dir.join(format!("{}.data", m.name));
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg("switchyard-test")
            .arg("--initial-cluster-state")
            .arg("new")
            // Fast elections on loopback: failover tests should not wait seconds.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn");
        // etcd 3.4 on arm64 and some other platforms refuses to start without this.
        cmd.env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        let proc = Proc::spawn(&m.name, cmd, self.dir.path())?;
        self.members[i].proc = Some(proc);
        Ok(())
    }

    fn wait_healthy(&mut self, i: usize) -> Result<(), HarnessError> {
        let port = self.members[i].client.port();
        let proc = self.members[i]
            .proc
            .as_mut()
            .ok_or_else(|| HarnessError::Other(format!("etcd member {i} is not running")))?;
        proc.wait_until("GET /health answering healthy", READY, |_| {
            let mut c = crate::Client::connect(port).ok()?;
            let r = c.get("/health", &[]).ok()?;
            (r.status == 200 && r.text().contains("true")).then_some(())
        })
    }

    /// Client URLs of every member (`http://127.0.0.1:PORT`).
    pub fn client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client.port()))
            .collect()
    }

    /// Client URL of member `i`.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client.port())
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `kill -9` member `i` (its data stays for [`EtcdCluster::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    /// Start a killed member again on its ports and data, and wait until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        // Rejoin an existing cluster: its data directory holds the membership.
        self.spawn(i)
            .unwrap_or_else(|e| panic!("etcd restart: {e}"));
        self.wait_healthy(i)
            .unwrap_or_else(|e| panic!("etcd restart: {e}"));
    }

    /// Whether member `i` is running (not killed).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].proc.is_some()
    }

    /// `POST /v3/maintenance/status` of member `i` (etcd's JSON gateway): its member id
    /// and the leader it follows, as etcd prints them (decimal strings). `None` when the
    /// member is down or does not answer, e.g. while it has no quorum.
    pub fn status(&self, i: usize) -> Option<(String, String)> {
        self.members[i].proc.as_ref()?;
        let mut c = crate::Client::connect(self.members[i].client.port()).ok()?;
        let r = c
            .request_with_body(
                "POST",
                "/v3/maintenance/status",
                &[("content-type", b"application/json")],
                Some(b"{}"),
            )
            .ok()?;
        if r.status != 200 {
            return None;
        }
        let doc = r.json();
        let me = doc["header"]["member_id"].as_str()?.to_string();
        let leader = doc["leader"].as_str()?.to_string();
        Some((me, leader))
    }

    /// The member that is the Raft leader now, as the running members see it: the one
    /// whose own id is the leader id it reports. `None` without a leader (no quorum, an
    /// election in progress).
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| matches!(self.status(i), Some((me, l)) if me == l))
    }

    /// Wait up to `timeout` for a leader ([`EtcdCluster::leader`]); panics without one.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let start = std::time::Instant::now();
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            assert!(
                start.elapsed() < timeout,
                "etcd elected no leader within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Process id of member `i`, if running (for SIGSTOP/SIGCONT).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].proc.as_ref().map(Proc::pid)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut p) = m.proc.take() {
                p.kill();
            }
        }
    }
}

/// One etcd member: the common case.
pub struct EtcdServer(EtcdCluster);

impl EtcdServer {
    pub fn start() -> EtcdServer {
        EtcdServer(EtcdCluster::start(1))
    }

    pub fn client_url(&self) -> String {
        self.0.client_url(0)
    }

    /// `kill -9` it.
    pub fn stop(&mut self) {
        self.0.kill(0);
    }
}
