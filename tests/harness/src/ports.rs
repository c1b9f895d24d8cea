//! Ports without races.
//!
//! First choice, always: let the server bind port 0 and read back what it bound —
//! Envoy's admin API (`/listeners?format=json`) and `--admin-address-path`, the
//! storefront's and control service's `listening on` line.
//!
//! For a server that must be told its port up front (etcd; a control service whose
//! address Envoy must know before it starts, or that restarts on the same port),
//! [`ReservedPort`] holds the port with a bound socket that does **not** listen:
//! connections to it are refused (they never hang in a backlog), and because it sets
//! `SO_REUSEADDR`, a server that also sets it — std, tokio, Go's `net`, Envoy all do —
//! can bind the port while the reservation is still held, so there is no gap.
//! [`start_on_port`] starts a server that way and retries on another port when the start
//! fails with "address in use".
//!
//! Residual race: a server that binds *without* `SO_REUSEADDR` cannot bind while the
//! reservation is held, so on the retry the reservation is released just before the
//! start, and another process can take the port in that window (the retry then moves on
//! to a new port). And a reservation cannot stop another process that uses
//! `SO_REUSEADDR` and asks for this port explicitly.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;

use crate::error::HarnessError;

/// A loopback port held by a bound, non-listening socket until dropped or released.
pub struct ReservedPort {
    socket: Option<OwnedFd>,
    port: u16,
}

impl ReservedPort {
    /// Reserve a free port on 127.0.0.1.
    pub fn new() -> std::io::Result<ReservedPort> {
        use rustix::net::{bind, getsockname, socket, sockopt, AddressFamily, SocketType};
        let fd = socket(AddressFamily::INET, SocketType::STREAM, None)?;
        sockopt::set_socket_reuseaddr(&fd, true)?;
        bind(&fd, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        let addr = SocketAddrV4::try_from(getsockname(&fd)?)
            .map_err(|_| std::io::Error::other("getsockname: not IPv4"))?;
        Ok(ReservedPort {
            socket: Some(fd),
            port: addr.port(),
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Give up the reservation now (for a server that binds without `SO_REUSEADDR`).
    pub fn release(mut self) -> u16 {
        self.socket = None;
        self.port
    }
}

/// Start a server on a reserved port: `start(port)` runs while the port is held (see the
/// module docs); when it fails with "address in use", try again on a fresh port, released
/// just before the start this time, up to `attempts` times in all.
pub fn start_on_port<T>(
    attempts: usize,
    mut start: impl FnMut(u16) -> Result<T, HarnessError>,
) -> Result<T, HarnessError> {
    let mut last = None;
    let mut held =
        Some(ReservedPort::new().map_err(|e| HarnessError::io("harness", "reserving a port", e))?);
    for attempt in 0..attempts.max(1) {
        let reserved = match held.take() {
            Some(r) => r,
            None => ReservedPort::new()
                .map_err(|e| HarnessError::io("harness", "reserving a port", e))?,
        };
        let port = reserved.port();
        // Every attempt after the first releases before starting: the server may be
        // one that cannot share the port.
        let guard = if attempt == 0 {
            Some(reserved)
        } else {
            reserved.release();
            None
        };
        match start(port) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_addr_in_use() => last = Some(e),
            Err(e) => return Err(e),
        }
        drop(guard);
    }
    Err(last.unwrap_or_else(|| HarnessError::Other("no attempt made".into())))
}
