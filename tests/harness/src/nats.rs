//! A real NATS server with JetStream (Debian's `nats-server`, installed by `make setup`)
//! on 127.0.0.1: client and monitoring ports reserved, its file store in a temporary
//! directory, killed with the test. It can be killed (`kill -9`) and restarted on the
//! same ports and store, which is what durability tests need.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::HarnessError;
use crate::ports::ReservedPort;
use crate::proc::{Proc, TestDir};

/// How long the server may take to report JetStream healthy.
const READY: Duration = Duration::from_secs(20);

/// The nats-server binary: `$NATS_SERVER`, else `nats-server` where Debian puts it.
pub fn nats_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(p);
    }
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("nats-server");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("nats-server")
}

/// A running NATS server with JetStream.
pub struct NatsServer {
    dir: TestDir,
    client: ReservedPort,
    monitor: ReservedPort,
    proc: Option<Proc>,
}

impl NatsServer {
    /// Start it and wait until JetStream is healthy; panics with its log otherwise.
    pub fn start() -> NatsServer {
        Self::try_start().unwrap_or_else(|e| panic!("nats-server: {e}"))
    }

    pub fn try_start() -> Result<NatsServer, HarnessError> {
        let io = |e| HarnessError::io("nats-server", "reserving a port", e);
        let mut s = NatsServer {
            dir: TestDir::new("nats"),
            client: ReservedPort::new().map_err(io)?,
            monitor: ReservedPort::new().map_err(io)?,
            proc: None,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let mut cmd = Command::new(nats_bin());
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(self.client.port().to_string())
            .args(["-m"])
            .arg(self.monitor.port().to_string())
            .args(["--jetstream", "--store_dir"])
            .arg(self.dir.join("store"));
        let mut proc = Proc::spawn("nats-server", cmd, self.dir.path())?;
        proc.wait_http_ok(self.monitor.addr(), "/healthz", READY)?;
        self.proc = Some(proc);
        Ok(())
    }

    /// `host:port` for clients.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client.port())
    }

    /// `kill -9` it (the store stays for [`NatsServer::restart`]).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Start a killed server again on its ports and store; waits until healthy.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn()
            .unwrap_or_else(|e| panic!("nats-server restart: {e}"));
    }

    /// Its process, while running (logs, pid).
    pub fn proc(&mut self) -> Option<&mut Proc> {
        self.proc.as_mut()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
