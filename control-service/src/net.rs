//! Admission on the control service's listeners: the one accept loop in front of the
//! gRPC and the HTTP listener, plain or TLS.
//!
//! Decides: how many connections a listener holds at once (`[limits]`: a slot per
//! connection, given back when the connection closes), how long a new connection may
//! take to send its first byte (plain) or finish its TLS handshake, and how long to wait
//! after a failed `accept` (out of file descriptors and the like).
//!
//! Never: lets a client hang at the limit (it is accepted and closed at once, so it sees
//! EOF, not a timeout), retries a failing `accept` in a busy loop, lets a slow or silent
//! client hold up the others (each first byte or handshake is awaited in its own task),
//! or logs one line per refused connection (refusals, timeouts and accept errors are
//! logged at most once per [`LOG_EVERY`], with the count since the last line).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Default connection limit of the gRPC listener: one connection per Envoy (and a few
/// operators), so a fleet of thousands fits.
pub const DEFAULT_GRPC_MAX_CONNECTIONS: usize = 8_192;
/// Default connection limit of the HTTP listener (operators, Prometheus, webhooks).
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1_024;
/// Default time a new connection has to send its first byte or finish its TLS handshake.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Highest configurable connection limit (far beyond any fd limit we would run with).
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Refusals, first-byte timeouts and accept errors are each logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// First wait after a failed `accept`; doubles on every failure in a row up to
/// [`BACKOFF_MAX`], back to this after a success.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Resolved `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub grpc_max_connections: usize,
    pub http_max_connections: usize,
    /// Plain text: until the first byte; TLS: until the handshake is done.
    pub first_byte_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            grpc_max_connections: DEFAULT_GRPC_MAX_CONNECTIONS,
            http_max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
        }
    }
}

/// One listener's slots and counters (what `/metrics` shows).
pub struct ListenerStats {
    name: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    refused: AtomicU64,
    timed_out: AtomicU64,
    accept_errors: AtomicU64,
}

impl ListenerStats {
    pub fn new(name: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Self {
            name,
            max,
            slots: Arc::new(Semaphore::new(max)),
            refused: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        })
    }
    /// `grpc` or `http`.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// The configured limit.
    pub fn max(&self) -> usize {
        self.max
    }
    /// Connections holding a slot now (handshaking or served).
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }
    /// Connections accepted and closed at once because every slot was taken.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Connections closed because their first byte (or TLS handshake) did not come in time.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }
    /// Failed `accept` calls (EMFILE, ENFILE, ENOBUFS…).
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }
}

/// Every listener's stats, for `/metrics` (an `axum::Extension`).
#[derive(Default)]
pub struct Connections(Mutex<Vec<Arc<ListenerStats>>>);

impl Connections {
    pub fn add(&self, l: Arc<ListenerStats>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(l);
    }
    pub fn listeners(&self) -> Vec<Arc<ListenerStats>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// An admitted TCP connection: holds its listener's slot until it is dropped (when the
/// HTTP/2 or HTTP/1 connection on it ends, or its handshake fails).
pub struct Conn {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// tonic sees the TCP connection's addresses (and, under TLS, `TlsConnectInfo` of them
/// with the client certificate, which the authentication layer reads).
impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Why a connection was dropped before it was served.
#[derive(Debug)]
pub enum Refused {
    /// The client closed before sending anything.
    Closed,
    /// The handshake failed (logged with the reason).
    Handshake(String),
}

/// What a new connection must do before it is served, under the first-byte deadline.
pub trait Handshake: Send + Sync + 'static {
    type Io: Send + 'static;
    fn handshake(&self, conn: Conn) -> impl Future<Output = Result<Self::Io, Refused>> + Send;
}

/// Plain text: the client must send its first byte (the HTTP/2 preface or an HTTP/1
/// request line); it is peeked, not read.
pub struct FirstByte;

impl Handshake for FirstByte {
    type Io = Conn;
    async fn handshake(&self, conn: Conn) -> Result<Conn, Refused> {
        let mut b = [0u8; 1];
        match conn.io.peek(&mut b).await {
            Ok(0) => Err(Refused::Closed),
            Ok(_) => Ok(conn),
            Err(_) => Err(Refused::Closed),
        }
    }
}

/// At most one log line per [`LOG_EVERY`]; `hit` answers how many events the line covers.
struct Throttle {
    last: Option<Instant>,
    pending: u64,
}

impl Throttle {
    const fn new() -> Self {
        Self {
            last: None,
            pending: 0,
        }
    }
    fn hit(&mut self) -> Option<u64> {
        self.pending += 1;
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// Accept errors that concern one connection only (it went away before we took it):
/// accept again at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Accept on `listener` under `stats`' limit; each admitted connection's handshake runs
/// in its own task with `first_byte_timeout`, and finished ones arrive on the returned
/// channel with the peer's address. Stops accepting when `shutdown` is cancelled.
pub fn accept<H: Handshake>(
    listener: TcpListener,
    stats: Arc<ListenerStats>,
    first_byte_timeout: Duration,
    handshake: H,
    shutdown: CancellationToken,
) -> (mpsc::Receiver<(H::Io, SocketAddr)>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let handshake = Arc::new(handshake);
    let timeouts = Arc::new(Mutex::new(Throttle::new()));
    let what = stats.name;
    let task = tokio::spawn(async move {
        let mut refusals = Throttle::new();
        let mut errors = Throttle::new();
        let mut backoff = BACKOFF_MIN;
        loop {
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) if is_connection_error(&e) => continue,
                    Err(e) => {
                        stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(n) = errors.hit() {
                            tracing::warn!(
                                listener = what, error = %e, failures = n, retry_in = ?backoff,
                                "accept failed (out of file descriptors?); backing off"
                            );
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                },
            };
            backoff = BACKOFF_MIN;
            let Ok(slot) = stats.slots.clone().try_acquire_owned() else {
                // Closed at once: the client sees EOF now rather than waiting in a queue.
                drop(tcp);
                stats.refused.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = refusals.hit() {
                    tracing::warn!(
                        listener = what, limit = stats.max, refused = n, last_peer = %addr,
                        "connection limit reached: closing new connections ([limits])"
                    );
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let conn = Conn {
                io: tcp,
                _slot: slot,
            };
            let (tx, handshake, stats, timeouts) = (
                tx.clone(),
                handshake.clone(),
                stats.clone(),
                timeouts.clone(),
            );
            tokio::spawn(async move {
                match tokio::time::timeout(first_byte_timeout, handshake.handshake(conn)).await {
                    Ok(Ok(io)) => {
                        let _ = tx.send((io, addr)).await;
                    }
                    Ok(Err(Refused::Closed)) => {}
                    Ok(Err(Refused::Handshake(e))) => {
                        tracing::info!(listener = what, peer = %addr, error = %e, "TLS handshake refused")
                    }
                    Err(_) => {
                        stats.timed_out.fetch_add(1, Ordering::Relaxed);
                        let n = timeouts.lock().unwrap_or_else(|p| p.into_inner()).hit();
                        if let Some(n) = n {
                            tracing::info!(
                                listener = what, last_peer = %addr, closed = n, timeout = ?first_byte_timeout,
                                "closed connections that sent nothing (or no TLS handshake) in time"
                            );
                        }
                    }
                }
            });
        }
    });
    (rx, task)
}

/// Admitted connections as an `axum::serve` listener.
pub struct Admitted<Io> {
    rx: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

impl<Io> Admitted<Io> {
    pub fn new(rx: mpsc::Receiver<(Io, SocketAddr)>, local: SocketAddr) -> Self {
        Self { rx, local }
    }
}

impl<Io> axum::serve::Listener for Admitted<Io>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Admitted connections as tonic's incoming stream.
pub fn incoming<Io: Send + 'static>(
    rx: mpsc::Receiver<(Io, SocketAddr)>,
) -> impl tokio_stream::Stream<Item = Result<Io, io::Error>> + Send {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        |(io, _)| Ok::<_, io::Error>(io),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listen(
        max: usize,
        timeout: Duration,
    ) -> (
        SocketAddr,
        Arc<ListenerStats>,
        mpsc::Receiver<(Conn, SocketAddr)>,
        CancellationToken,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stats = ListenerStats::new("test", max);
        let stop = CancellationToken::new();
        let (rx, _task) = accept(l, stats.clone(), timeout, FirstByte, stop.clone());
        (addr, stats, rx, stop)
    }

    #[tokio::test]
    async fn the_limit_closes_extra_connections_and_a_closed_one_frees_its_slot() {
        let (addr, stats, mut rx, stop) = listen(2, Duration::from_secs(60)).await;
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"x").await.unwrap();
            clients.push(c);
        }
        let mut served = vec![rx.recv().await.unwrap().0, rx.recv().await.unwrap().0];
        assert_eq!(stats.open(), 2);
        // The third is closed at once: EOF, not a hang.
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(extra.read(&mut buf).await.unwrap_or(0), 0);
        assert_eq!(stats.refused(), 1);
        // A served connection ends: its slot is free for the next client.
        drop(served.pop());
        assert_eq!(stats.open(), 1);
        let mut next = TcpStream::connect(addr).await.unwrap();
        next.write_all(b"y").await.unwrap();
        let (mut conn, _) = rx.recv().await.unwrap();
        let mut got = [0u8; 1];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"y", "the first byte is peeked, not consumed");
        assert_eq!((stats.open(), stats.refused()), (2, 1));
        stop.cancel();
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_timeout() {
        let (addr, stats, _rx, stop) = listen(4, Duration::from_millis(200)).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        // The server closes it (EOF) once the deadline passes, and frees its slot.
        assert_eq!(silent.read(&mut buf).await.unwrap_or(0), 0);
        assert_eq!(stats.timed_out(), 1);
        while stats.open() != 0 {
            tokio::task::yield_now().await;
        }
        stop.cancel();
    }

    #[test]
    fn the_throttle_logs_once_per_period_with_the_count() {
        let mut t = Throttle::new();
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        t.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(t.hit(), Some(3));
    }
}
