//! Connection plumbing: accepts TCP connections and serves HTTP/1.1 with keep-alive on
//! each until told to stop. It decides nothing about requests (see `routes`) and must
//! never let one bad connection stop the accept loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::routes::{self, Shop};

/// How long in-flight requests may run after a shutdown signal before we exit anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `listener` until `shutdown` completes, then drains open connections for at
/// most [`DRAIN_TIMEOUT`]. Returns whether every connection closed in time.
pub async fn serve(
    listener: TcpListener,
    shop: Arc<Shop>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let mut http = http1::Builder::new();
    // hyper's header-read timeout (30 s by default) also runs while a kept-alive
    // connection sits idle, so it would close Envoy's pooled connections under it
    // and race with new requests (503s in SLO tests). Envoy owns idle timeouts here.
    http.keep_alive(true).header_read_timeout(None);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Usually EMFILE: back off briefly rather than spin.
                        crate::log(format_args!("accept failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small JSON replies on kept-alive connections: don't let Nagle hold them.
                let _ = stream.set_nodelay(true);
                let shop = Arc::clone(&shop);
                let service = service_fn(move |req| routes::handle(Arc::clone(&shop), req));
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    // A client that hangs up mid-request is normal for a load test.
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_ok()
}
