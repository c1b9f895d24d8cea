//! The probes: one TCP connect or one HTTP/1.1 exchange per check run, each bounded by
//! the check's timeout, each answering success or failure with a line saying what was
//! seen. No thresholds and no state here ([`super::eval`] does that).
//!
//! HTTP uses hyper's low-level HTTP/1 client connection (hyper is already in the tree
//! through axum and tonic, with the `client` and `http1` features on): a fresh connection
//! per probe, so a probe measures reachability too, and hyper's parser handles chunked
//! and length-delimited bodies, which a hand-written client would have to get right.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::config::{HttpTarget, ProbeSpec, Tolerance};

/// Largest answer read from a health endpoint.
pub const MAX_ANSWER: usize = 64 * 1024;

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub ok: bool,
    /// Time from the start to the full answer (or to the failure).
    pub latency_ms: u64,
    pub detail: String,
}

/// Run `spec` once, giving up after `timeout`.
pub async fn run(spec: &ProbeSpec, timeout: Duration) -> ProbeOutcome {
    let start = Instant::now();
    let result = tokio::time::timeout(timeout, attempt(spec)).await;
    let latency_ms = start.elapsed().as_millis() as u64;
    match result {
        Err(_) => ProbeOutcome {
            ok: false,
            latency_ms,
            detail: format!("{}: timed out after {} ms", what(spec), timeout.as_millis()),
        },
        Ok(Err(e)) => ProbeOutcome {
            ok: false,
            latency_ms,
            detail: format!("{}: {e}", what(spec)),
        },
        Ok(Ok(verdict)) => judge(spec, verdict, latency_ms),
    }
}

fn what(spec: &ProbeSpec) -> String {
    match spec {
        ProbeSpec::Tcp { address } => format!("connect {address}"),
        ProbeSpec::Http { target, .. } | ProbeSpec::Integrity { target, .. } => {
            format!("GET {}", target.url())
        }
        ProbeSpec::Api { target, method, .. } => format!("{method} {}", target.url()),
    }
}

/// A completed exchange, judged against the check once its latency is known.
enum Seen {
    Connected,
    Answer { status: u16, body: Bytes },
}

async fn attempt(spec: &ProbeSpec) -> Result<Seen, String> {
    match spec {
        ProbeSpec::Tcp { address } => {
            TcpStream::connect(address.as_str())
                .await
                .map_err(|e| e.to_string())?;
            Ok(Seen::Connected)
        }
        ProbeSpec::Http { target, .. } | ProbeSpec::Integrity { target, .. } => {
            exchange(target, "GET", None).await
        }
        ProbeSpec::Api {
            target,
            method,
            body,
            ..
        } => exchange(target, method, body.as_deref()).await,
    }
}

/// Aborts the connection task when the probe ends, also on timeout.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange(target: &HttpTarget, method: &str, body: Option<&str>) -> Result<Seen, String> {
    let stream = TcpStream::connect(target.authority.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = Request::builder()
        .method(method)
        .uri(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(USER_AGENT, "switchyard-health-check")
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("answer larger than {MAX_ANSWER} bytes")
            } else {
                format!("reading the answer: {e}")
            }
        })?
        .to_bytes();
    Ok(Seen::Answer { status, body })
}

/// One GET of `target` within `timeout`: its status and body (other pollers of stack
/// endpoints use it, e.g. the saturation scrapes).
pub async fn get(target: &HttpTarget, timeout: Duration) -> Result<(u16, Bytes), String> {
    match tokio::time::timeout(timeout, exchange(target, "GET", None)).await {
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Seen::Answer { status, body })) => Ok((status, body)),
        Ok(Ok(Seen::Connected)) => Err("no answer".into()),
    }
}

fn status_ok(status: u16, expect: Option<u16>) -> bool {
    match expect {
        Some(e) => status == e,
        None => (200..300).contains(&status),
    }
}

fn expected(expect: Option<u16>) -> String {
    expect.map_or_else(|| "2xx".to_string(), |e| e.to_string())
}

fn judge(spec: &ProbeSpec, seen: Seen, latency_ms: u64) -> ProbeOutcome {
    let fail = |detail: String| ProbeOutcome {
        ok: false,
        latency_ms,
        detail,
    };
    let pass = |detail: String| ProbeOutcome {
        ok: true,
        latency_ms,
        detail,
    };
    let (status, body) = match seen {
        Seen::Connected => return pass(format!("{}: connected in {latency_ms} ms", what(spec))),
        Seen::Answer { status, body } => (status, body),
    };
    let expect = match spec {
        ProbeSpec::Tcp { .. } => None,
        ProbeSpec::Http { expect_status, .. }
        | ProbeSpec::Api { expect_status, .. }
        | ProbeSpec::Integrity { expect_status, .. } => *expect_status,
    };
    if !status_ok(status, expect) {
        return fail(format!(
            "{}: {status} (expected {}) in {latency_ms} ms",
            what(spec),
            expected(expect)
        ));
    }
    match spec {
        ProbeSpec::Api { budget, .. } => {
            let budget_ms = budget.as_millis() as u64;
            if latency_ms > budget_ms {
                fail(format!(
                    "{}: {status} in {latency_ms} ms, over the {budget_ms} ms budget",
                    what(spec)
                ))
            } else {
                pass(format!("{}: {status} in {latency_ms} ms", what(spec)))
            }
        }
        ProbeSpec::Integrity {
            left,
            right,
            tolerance,
            ..
        } => match compare(&body, left, right, tolerance) {
            Ok(seen) => pass(format!("{}: {seen}", what(spec))),
            Err(e) => fail(format!("{}: {e}", what(spec))),
        },
        _ => pass(format!("{}: {status} in {latency_ms} ms", what(spec))),
    }
}

/// Compare two numbers of a JSON answer by pointer; `Ok` says what agreed, `Err` what did
/// not (or why the answer could not be read).
pub fn compare(
    body: &[u8],
    left: &str,
    right: &str,
    tolerance: &Tolerance,
) -> Result<String, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let number = |ptr: &str| -> Result<f64, String> {
        match doc.pointer(ptr) {
            None => Err(format!("{ptr} is not in the answer")),
            Some(v) => v.as_f64().ok_or_else(|| {
                let mut shown = v.to_string();
                if shown.len() > 40 {
                    shown.truncate(40);
                    shown.push('…');
                }
                format!("{ptr} is not a number: {shown}")
            }),
        }
    };
    let (a, b) = (number(left)?, number(right)?);
    if tolerance.accepts(a, b) {
        Ok(format!("{left} = {a}, {right} = {b}"))
    } else {
        let allowed = match (tolerance.absolute, tolerance.ratio) {
            (None, None) => "they must be equal".to_string(),
            (Some(t), None) => format!("tolerance {t}"),
            (None, Some(r)) => format!("tolerance {}%", r * 100.0),
            (Some(t), Some(r)) => format!("tolerance {t} or {}%", r * 100.0),
        };
        Err(format!(
            "{left} = {a} and {right} = {b} differ by {} ({allowed})",
            (a - b).abs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A one-trick HTTP server on 127.0.0.1: answers every connection with `answer`
    /// after `delay`. Dropped with the test's runtime.
    async fn server(answer: &'static str, delay: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    // Read the request head (and a small body) before answering.
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    tokio::time::sleep(delay).await;
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        addr
    }

    fn json_answer(status: &str, body: &str) -> &'static str {
        Box::leak(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    }

    fn target(addr: SocketAddr, path: &str) -> HttpTarget {
        HttpTarget::parse(&format!("http://{addr}{path}")).unwrap()
    }

    fn integrity(addr: SocketAddr, tolerance: Tolerance) -> ProbeSpec {
        ProbeSpec::Integrity {
            target: target(addr, "/integrity"),
            expect_status: None,
            left: "/catalog_count".into(),
            right: "/search_index_count".into(),
            tolerance,
        }
    }

    const EXACT: Tolerance = Tolerance {
        absolute: None,
        ratio: None,
    };

    #[tokio::test]
    async fn tcp_connects_or_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spec = ProbeSpec::Tcp {
            address: addr.to_string(),
        };
        let o = run(&spec, Duration::from_secs(2)).await;
        assert!(o.ok, "{o:?}");
        assert!(o.detail.contains("connected"), "{o:?}");
        drop(listener);
        let o = run(&spec, Duration::from_secs(2)).await;
        assert!(!o.ok);
        assert!(
            o.detail.starts_with(&format!("connect {addr}: "))
                && o.detail.to_lowercase().contains("refused"),
            "{o:?}"
        );
    }

    #[tokio::test]
    async fn http_status_decides() {
        let ok = server(json_answer("200 OK", r#"{"status":"ok"}"#), Duration::ZERO).await;
        let bad = server(
            json_answer("500 Internal Server Error", "{}"),
            Duration::ZERO,
        )
        .await;
        let spec = |addr, expect| ProbeSpec::Http {
            target: target(addr, "/healthz"),
            expect_status: expect,
        };
        let o = run(&spec(ok, None), Duration::from_secs(2)).await;
        assert!(o.ok, "{o:?}");
        assert!(
            o.detail
                .starts_with(&format!("GET http://{ok}/healthz: 200 in ")),
            "{o:?}"
        );
        let o = run(&spec(bad, None), Duration::from_secs(2)).await;
        assert!(!o.ok);
        assert!(o.detail.contains(": 500 (expected 2xx)"), "{o:?}");
        let o = run(&spec(ok, Some(204)), Duration::from_secs(2)).await;
        assert!(!o.ok && o.detail.contains(": 200 (expected 204)"), "{o:?}");
    }

    #[tokio::test]
    async fn http_to_a_closed_port_fails_with_connect() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let o = run(
            &ProbeSpec::Http {
                target: target(addr, "/healthz"),
                expect_status: None,
            },
            Duration::from_secs(2),
        )
        .await;
        assert!(!o.ok && o.detail.contains(": connect: "), "{o:?}");
    }

    #[tokio::test]
    async fn api_over_budget_fails_and_within_passes() {
        let slow = server(json_answer("200 OK", "{}"), Duration::from_millis(300)).await;
        let spec = |budget| ProbeSpec::Api {
            target: target(slow, "/checkout"),
            method: "POST".into(),
            body: Some(r#"{"sku":"tee-navy"}"#.into()),
            expect_status: Some(200),
            budget: Duration::from_millis(budget),
        };
        let o = run(&spec(50), Duration::from_secs(5)).await;
        assert!(!o.ok, "{o:?}");
        assert!(o.latency_ms >= 300, "{o:?}");
        assert!(
            o.detail
                .starts_with(&format!("POST http://{slow}/checkout: 200 in "))
                && o.detail.ends_with("ms, over the 50 ms budget"),
            "{o:?}"
        );
        let o = run(&spec(4_000), Duration::from_secs(5)).await;
        assert!(o.ok, "{o:?}");
        // And a timeout shorter than the answer is a timeout.
        let o = run(&spec(50), Duration::from_millis(100)).await;
        assert!(
            !o.ok && o.detail.ends_with("timed out after 100 ms"),
            "{o:?}"
        );
    }

    #[tokio::test]
    async fn integrity_compares_two_numbers() {
        let equal = server(
            json_answer(
                "200 OK",
                r#"{"catalog_count":120,"search_index_count":120}"#,
            ),
            Duration::ZERO,
        )
        .await;
        let o = run(&integrity(equal, EXACT), Duration::from_secs(2)).await;
        assert!(o.ok, "{o:?}");
        assert!(
            o.detail
                .ends_with("/catalog_count = 120, /search_index_count = 120"),
            "{o:?}"
        );

        let drift = server(
            json_answer(
                "200 OK",
                r#"{"catalog_count":1000,"search_index_count":985}"#,
            ),
            Duration::ZERO,
        )
        .await;
        let o = run(&integrity(drift, EXACT), Duration::from_secs(2)).await;
        assert!(!o.ok);
        assert!(
            o.detail.ends_with(
                "/catalog_count = 1000 and /search_index_count = 985 differ by 15 (they must be equal)"
            ),
            "{o:?}"
        );
        let two_pct = Tolerance {
            absolute: None,
            ratio: Some(0.02),
        };
        assert!(
            run(&integrity(drift, two_pct), Duration::from_secs(2))
                .await
                .ok
        );
        let abs = Tolerance {
            absolute: Some(10.0),
            ratio: None,
        };
        let o = run(&integrity(drift, abs), Duration::from_secs(2)).await;
        assert!(!o.ok && o.detail.contains("(tolerance 10)"), "{o:?}");
    }

    #[tokio::test]
    async fn integrity_reports_bad_answers_clearly() {
        for (body, want) in [
            (
                "{\"catalog_count\": 12",
                "malformed JSON: EOF while parsing an object",
            ),
            (
                "<html>oops</html>",
                "malformed JSON: expected value at line 1 column 1",
            ),
            (
                r#"{"catalog_count": 12}"#,
                "/search_index_count is not in the answer",
            ),
            (
                r#"{"catalog_count": "12", "search_index_count": 12}"#,
                "/catalog_count is not a number: \"12\"",
            ),
        ] {
            let addr = server(json_answer("200 OK", body), Duration::ZERO).await;
            let o = run(&integrity(addr, EXACT), Duration::from_secs(2)).await;
            assert!(!o.ok, "{body}: {o:?}");
            assert!(o.detail.contains(want), "{body}: {o:?}");
        }
        let err = server(json_answer("503 Service Unavailable", "{}"), Duration::ZERO).await;
        let o = run(&integrity(err, EXACT), Duration::from_secs(2)).await;
        assert!(!o.ok && o.detail.contains(": 503 (expected 2xx)"), "{o:?}");
    }

    #[tokio::test]
    async fn oversized_and_chunked_answers() {
        let big = "x".repeat(MAX_ANSWER + 1);
        let addr = server(json_answer("200 OK", &big), Duration::ZERO).await;
        let o = run(&integrity(addr, EXACT), Duration::from_secs(2)).await;
        assert!(
            !o.ok && o.detail.contains("answer larger than 65536 bytes"),
            "{o:?}"
        );
        let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                       14\r\n{\"catalog_count\":7,\"\r\n\
                       17\r\nsearch_index_count\":7} \r\n0\r\n\r\n";
        let addr = server(chunked, Duration::ZERO).await;
        let o = run(&integrity(addr, EXACT), Duration::from_secs(2)).await;
        assert!(o.ok, "{o:?}");
    }
}
