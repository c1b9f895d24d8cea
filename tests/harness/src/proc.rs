//! Child processes for tests: each in its own process group with stdout and stderr in
//! files, killed (group and all) on drop, and explained when the test fails.
//!
//! The group matters: a server started through a wrapper script, or one that forks
//! helpers, would otherwise outlive the test. A test runner killed by a signal runs no
//! destructors, so its children are left behind then (they are in their own group, so a
//! terminal's Ctrl-C does not reach them either): `pkill -g <pgid>` cleans up.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::HarnessError;
use crate::http::{Client, Response};

/// Lines of each log printed when a test fails.
pub const TAIL_LINES: usize = 40;

const POLL: Duration = Duration::from_millis(25);

/// A per-test temporary directory, removed on drop unless the test is failing (then it
/// is kept and its path printed, logs included).
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// A fresh directory named `switchyard-<tag>-…` under the system temp dir.
    pub fn new(tag: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("switchyard-{tag}-"))
            .tempdir()
            .expect("a temporary directory");
        let path = dir.path().to_path_buf();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("[harness] test failed: kept {}", d.keep().display());
            }
        }
    }
}

/// A running child process. See the module docs.
pub struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    reaped: Option<ExitStatus>,
}

impl Proc {
    /// Spawn `cmd` as `name` in its own process group, stdout and stderr to
    /// `<dir>/<name>.stdout` and `<dir>/<name>.stderr` (stdin closed).
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc, HarnessError> {
        use std::os::unix::process::CommandExt;
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let out = std::fs::File::create(&stdout)
            .map_err(|e| HarnessError::io(name, format!("creating {}", stdout.display()), e))?;
        let err = std::fs::File::create(&stderr)
            .map_err(|e| HarnessError::io(name, format!("creating {}", stderr.display()), e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io(name, format!("spawning {:?}", cmd.get_program()), e))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            reaped: None,
        })
    }

    /// The name it was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The file its stdout goes to.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// The file its stderr goes to.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// The last `n` lines of stdout and of stderr, labelled.
    pub fn tail(&self, n: usize) -> String {
        let mut out = String::new();
        for (label, text) in [("stdout", self.stdout()), ("stderr", self.stderr())] {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            out.push_str(&format!(
                "--- {} {label}: last {} of {} lines ---\n",
                self.name,
                lines.len() - from,
                lines.len()
            ));
            for l in &lines[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    /// SIGKILL the whole process group and reap the child. Idempotent.
    pub fn kill(&mut self) {
        let pgid = rustix::process::Pid::from_child(&self.child);
        // The group outlives its leader: kill it even when the leader already exited.
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        if self.reaped.is_none() {
            let _ = self.child.kill();
            self.reaped = self.child.wait().ok();
        }
    }

    /// SIGSTOP the whole process group: it stops running (timers, leases, sockets all
    /// frozen) without exiting, as a process stalled by the kernel or a debugger would.
    /// [`Proc::resume`] continues it; [`Proc::kill`] works on a stopped process too.
    pub fn pause(&mut self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// SIGCONT the whole process group (after [`Proc::pause`]).
    pub fn resume(&mut self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&mut self, sig: rustix::process::Signal) {
        if self.exited().is_some() {
            return;
        }
        let pgid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(pgid, sig);
    }

    /// An error about this process, with its log tail.
    pub fn error(&self, what: impl Into<String>) -> HarnessError {
        HarnessError::Other(format!(
            "{}: {}\n{}",
            self.name,
            what.into(),
            self.tail(TAIL_LINES)
        ))
    }

    /// Poll `probe` until it returns `Some`, for at most `timeout`; fail early (with the
    /// exit status) if the process exits, or with a timeout naming `what`.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&mut Proc) -> Option<T>,
    ) -> Result<T, HarnessError> {
        let start = Instant::now();
        loop {
            if let Some(v) = probe(self) {
                return Ok(v);
            }
            if let Some(status) = self.exited() {
                // One last look: it may have done what we wait for, then exited.
                if let Some(v) = probe(self) {
                    return Ok(v);
                }
                return Err(HarnessError::Exited {
                    name: self.name.clone(),
                    what: what.to_string(),
                    status: status.to_string(),
                    tail: self.tail(TAIL_LINES),
                });
            }
            if start.elapsed() >= timeout {
                return Err(HarnessError::Timeout {
                    name: self.name.clone(),
                    what: what.to_string(),
                    waited: start.elapsed(),
                    tail: self.tail(TAIL_LINES),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until a line of stdout or stderr satisfies `matches`; returns that line.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, HarnessError> {
        self.wait_until(what, timeout, |p| {
            [p.stdout(), p.stderr()]
                .iter()
                .flat_map(|t| t.lines())
                .find(|l| matches(l))
                .map(str::to_string)
        })
    }

    /// Wait until `addr` accepts TCP connections.
    pub fn wait_tcp(&mut self, addr: SocketAddr, timeout: Duration) -> Result<(), HarnessError> {
        self.wait_until(&format!("a TCP listener on {addr}"), timeout, |_| {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ())
        })
    }

    /// Wait until `GET path` on `addr` answers 200; returns that response.
    pub fn wait_http_ok(
        &mut self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<Response, HarnessError> {
        self.wait_until(
            &format!("200 from GET http://{addr}{path}"),
            timeout,
            |_| {
                let mut c = Client::connect_addr(addr).ok()?;
                c.get(path, &[]).ok().filter(|r| r.status == 200)
            },
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[harness] test failed; {} (pid {}):\n{}",
                self.name,
                self.pid(),
                self.tail(TAIL_LINES)
            );
        }
        self.kill();
    }
}
