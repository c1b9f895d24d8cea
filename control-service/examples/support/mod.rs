//! What the load programs share: start a real `switchyard-control` process on a
//! temporary data directory, and read a process's RSS and CPU time from `/proc`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Resident set size of a process, KiB (0 when unreadable).
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

/// User + system CPU time of a process, in milliseconds (from /proc/<pid>/stat).
pub fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) * 10.0
}

/// A running control service; killed on drop, its data directory removed.
pub struct Server {
    pub child: Child,
    /// `http://` URL of its gRPC listener.
    pub url: String,
    pub dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Start `bin` (default: `switchyard-control` next to this example's directory) with
/// `serve` on an ephemeral gRPC port, no HTTP, logs at warn, plus `extra` arguments;
/// pinned to `cpu` with taskset when given.
pub fn start_server(bin: Option<PathBuf>, cpu: Option<usize>, tag: &str, extra: &[&str]) -> Server {
    let bin = bin.unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        exe.parent()
            .and_then(|p| p.parent())
            .expect("target dir")
            .join("switchyard-control")
    });
    assert!(
        bin.exists(),
        "{} not found: cargo build --release -p switchyard-control --bins",
        bin.display()
    );
    let dir = std::env::temp_dir().join(format!("switchyard-{tag}-{}", std::process::id()));
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let mut child = cmd
        .args([
            "serve",
            "--grpc",
            "127.0.0.1:0",
            "--no-http",
            "--log-level",
            "warn",
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start server");
    let out = child.stdout.take().expect("stdout");
    let mut url = String::new();
    for line in std::io::BufReader::new(out).lines() {
        let line = line.expect("read");
        if let Some(addr) = line.strip_prefix("grpc listening on ") {
            url = format!("http://{addr}");
            break;
        }
    }
    assert!(!url.is_empty(), "server did not start");
    Server { child, url, dir }
}
