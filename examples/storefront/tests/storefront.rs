//! End-to-end tests of the storefront binary: each test starts its own process on
//! port 0, learns the port from stdout and talks HTTP/1.1 to it over a plain
//! `TcpStream`, so tests run in parallel and assert only on what a client sees.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running storefront, killed on drop if the test did not stop it.
struct Stack {
    child: Child,
    port: u16,
}

impl Stack {
    fn start(name: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-storefront"))
            .args(["--name", name, "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn storefront");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read listening line");
        let port = line
            .trim_end()
            .strip_prefix("listening on 127.0.0.1:")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("port");
        Self { child, port }
    }

    fn conn(&self) -> Conn {
        Conn::open(self.port)
    }

    /// One request on a fresh connection.
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.conn().send(method, path, headers, body)
    }

    fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], "")
    }

    fn post(&self, path: &str, body: &str) -> Reply {
        self.send("POST", path, &[("content-type", "application/json")], body)
    }

    fn signal(&mut self, sig: &str) -> ExitStatus {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "storefront did not exit after {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// A keep-alive HTTP/1.1 client connection; enough for bodies with `content-length`.
struct Conn {
    reader: BufReader<TcpStream>,
    port: u16,
}

impl Conn {
    fn open(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Self {
            reader: BufReader::new(stream),
            port,
        }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n",
            self.port
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .expect("write request");

        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("header colon");
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("content-length"))
            .expect("response has content-length");
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).expect("body");
        Reply {
            status,
            headers,
            body: String::from_utf8(body).expect("utf-8 body"),
        }
    }
}

#[test]
fn pages_answer_with_the_stack_name() {
    let s = Stack::start("blue", &["--region", "eu-1"]);

    let home = s.get("/");
    assert_eq!(home.status, 200);
    assert_eq!(home.header("x-served-by"), Some("blue"));
    assert_eq!(home.header("content-type"), Some("application/json"));
    let j = home.json();
    assert_eq!(j["stack"], "blue");
    assert_eq!(j["page"], "home");
    assert_eq!(j["region"], "eu-1");

    let products = s.get("/products");
    assert_eq!(products.status, 200);
    assert_eq!(products.header("x-served-by"), Some("blue"));
    let j = products.json();
    assert_eq!(j["stack"], "blue");
    assert!(j["products"].as_array().expect("products list").len() >= 3);

    let health = s.get("/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(
        health.json(),
        serde_json::json!({"status": "ok", "stack": "blue", "region": "eu-1"})
    );
}

#[test]
fn checkout_gives_unique_order_ids() {
    let s = Stack::start("green", &[]);
    let mut c = s.conn();
    let a = c.send("POST", "/checkout", &[], r#"{"cart":["tee-navy"]}"#);
    let b = c.send("POST", "/checkout", &[], "not even json");
    for r in [&a, &b] {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-served-by"), Some("green"));
        assert_eq!(r.json()["stack"], "green");
    }
    let (ida, idb) = (a.json()["order_id"].clone(), b.json()["order_id"].clone());
    assert!(ida.is_string());
    assert_ne!(ida, idb);

    let wrong = s.get("/checkout");
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
    assert_eq!(wrong.header("x-served-by"), Some("green"));
}

#[test]
fn checkout_honours_idempotency_keys() {
    let s = Stack::start("green", &[]);
    let mut c = s.conn();
    let key = [("Idempotency-Key", "order-7")];
    let a = c.send("POST", "/checkout", &key, r#"{"cart":["tee-navy"]}"#);
    let b = c.send("POST", "/checkout", &key, r#"{"cart":["tee-navy"]}"#);
    let other = c.send("POST", "/checkout", &[("Idempotency-Key", "order-8")], "{}");
    assert_eq!((a.status, b.status, other.status), (200, 200, 200));
    assert_eq!(
        a.json()["order_id"],
        b.json()["order_id"],
        "one order per key"
    );
    assert_eq!(b.json()["replayed"], true);
    assert!(a.json().get("replayed").is_none());
    assert_ne!(a.json()["order_id"], other.json()["order_id"]);
    let bad = c.send(
        "POST",
        "/checkout",
        &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
        "{}",
    );
    assert_eq!(bad.status, 400);
    let stats = c.send("GET", "/admin/stats", &[], "").json();
    assert_eq!(stats["orders_placed"], 2);
    assert_eq!(stats["orders_replayed"], 1);
}

#[test]
fn unknown_paths_are_404_json_with_served_by() {
    let s = Stack::start("canary", &[]);
    for path in ["/nope", "/admin/nope", "/echoes"] {
        let r = s.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.header("x-served-by"), Some("canary"));
        assert_eq!(r.json()["error"], "not found");
    }
}

#[test]
fn echo_reports_headers_as_received() {
    let s = Stack::start("blue", &[]);
    let r = s.send(
        "PUT",
        "/echo/deep/path?x=1",
        &[
            ("x-tag", "one"),
            ("x-other", "z"),
            ("x-tag", "two"),
            ("cookie", "a=1"),
        ],
        "hello",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-by"), Some("blue"));
    let j = r.json();
    assert_eq!(j["stack"], "blue");
    assert_eq!(j["method"], "PUT");
    assert_eq!(j["path"], "/echo/deep/path");
    assert_eq!(j["query"], "x=1");
    assert_eq!(j["body_bytes"], 5);
    let pairs: Vec<(String, String)> = j["headers"]
        .as_array()
        .expect("headers list")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let tags: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "x-tag")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tags, ["one", "two"]);
    assert!(pairs.contains(&("x-other".into(), "z".into())));
    assert!(pairs.contains(&("cookie".into(), "a=1".into())));
    assert_eq!(s.get("/echo").json()["path"], "/echo");
}

#[test]
fn error_rate_flag_fails_an_exact_fraction() {
    let s = Stack::start("canary", &["--error-rate", "0.25"]);
    let mut c = s.conn();
    let statuses: Vec<u16> = (0..8).map(|_| c.send("GET", "/", &[], "").status).collect();
    assert_eq!(statuses, [200, 200, 200, 500, 200, 200, 200, 500]);

    let failed = c.send("GET", "/products", &[], "");
    let failed = [
        failed,
        c.send("GET", "/", &[], ""),
        c.send("GET", "/", &[], ""),
        c.send("GET", "/", &[], ""),
    ]
    .into_iter()
    .find(|r| r.status == 500)
    .expect("a 500 in the next four");
    assert_eq!(failed.header("x-served-by"), Some("canary"));
    assert_eq!(failed.json()["error"], "injected fault");

    // Health and admin paths are never failed.
    for _ in 0..8 {
        assert_eq!(c.send("GET", "/healthz", &[], "").status, 200);
        assert_eq!(c.send("GET", "/admin/faults", &[], "").status, 200);
    }
    let stats = c.send("GET", "/admin/stats", &[], "").json();
    assert_eq!(stats["errors_injected"], 3);
}

#[test]
fn admin_sets_error_rate_at_runtime() {
    let s = Stack::start("green", &[]);
    let r = s.post("/admin/faults", r#"{"error_rate": 0.5}"#);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"error_rate": 0.5, "latency_ms": 0, "healthy": true, "index_lag": 0})
    );

    let mut c = s.conn();
    let failed = (0..100)
        .filter(|_| c.send("GET", "/products", &[], "").status == 500)
        .count();
    assert_eq!(failed, 50);

    let stats = s.get("/admin/stats").json();
    assert_eq!(stats["errors_injected"], 50);
    assert_eq!(stats["by_path"]["/products"], 100);
    assert_eq!(stats["by_path"]["/admin/faults"], 1);
    // The stats request counts itself.
    assert_eq!(stats["requests_total"], 102);

    assert_eq!(s.post("/admin/faults", r#"{"error_rate": 0}"#).status, 200);
    assert!((0..20).all(|_| c.send("GET", "/", &[], "").status == 200));
}

#[test]
fn admin_marks_unhealthy_and_adds_latency() {
    let s = Stack::start("eu-1", &["--latency-ms", "150"]);
    assert_eq!(s.get("/admin/faults").json()["latency_ms"], 150);

    let t = Instant::now();
    assert_eq!(s.get("/").status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "latency flag not applied"
    );

    let r = s.post("/admin/faults", r#"{"healthy": false, "latency_ms": 0}"#);
    assert_eq!(r.status, 200);
    let h = s.get("/healthz");
    assert_eq!(h.status, 503);
    assert_eq!(h.header("x-served-by"), Some("eu-1"));
    assert_eq!(h.json()["stack"], "eu-1");
    // Unhealthy only changes what /healthz says; the shop still answers.
    assert_eq!(s.get("/").status, 200);

    assert_eq!(s.post("/admin/faults", r#"{"healthy": true}"#).status, 200);
    assert_eq!(s.get("/healthz").status, 200);
}

#[test]
fn integrity_reports_catalog_and_search_index_counts() {
    let s = Stack::start("blue", &[]);
    let r = s.get("/integrity");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-by"), Some("blue"));
    assert_eq!(
        r.json(),
        serde_json::json!({"stack": "blue", "catalog_count": 3, "search_index_count": 3})
    );
    let r = s.post("/admin/faults", r#"{"index_lag": 2}"#);
    assert_eq!(r.json()["index_lag"], 2);
    assert_eq!(s.get("/integrity").json()["search_index_count"], 1);
    // Lag beyond the catalog bottoms out at an empty index.
    s.post("/admin/faults", r#"{"index_lag": 50}"#);
    assert_eq!(s.get("/integrity").json()["search_index_count"], 0);
    // Like /healthz, it is never failed or delayed by shop faults.
    s.post("/admin/faults", r#"{"error_rate": 1, "latency_ms": 5000}"#);
    assert_eq!(s.get("/integrity").status, 200);
    assert_eq!(
        s.post("/admin/faults", r#"{"index_lag": 1000001}"#).status,
        400
    );
}

#[test]
fn bad_admin_input_is_400_and_changes_nothing() {
    let s = Stack::start("blue", &["--error-rate", "0.1"]);
    let before = s.get("/admin/faults").json();
    for body in [
        "{not json",
        r#"{"error_rate": 1.5, "healthy": false}"#,
        r#"{"error_rate": -0.1}"#,
        r#"{"latency_ms": -5}"#,
        r#"{"latency_ms": 999999999}"#,
        r#"{"healthy": "nope"}"#,
        r#"{"index_lag": -1}"#,
        r#"{"error_rate": 0.2, "surprise": 1}"#,
        "[0.5]",
        "",
    ] {
        let r = s.post("/admin/faults", body);
        assert_eq!(r.status, 400, "{body:?}");
        assert_eq!(r.header("x-served-by"), Some("blue"));
        assert!(
            r.json()["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{body:?}"
        );
    }
    let huge = format!(r#"{{"healthy": false, "pad": "{}"}}"#, "x".repeat(100_000));
    assert_eq!(s.post("/admin/faults", &huge).status, 413);
    assert_eq!(s.get("/admin/faults").json(), before);
}

#[test]
fn bad_flags_are_refused() {
    for args in [
        &["--name", "x", "--error-rate", "2"][..],
        &["--name", "x", "--workers", "0"],
        &["--name", "x", "--port", "70000"],
        &["--name", "x", "--latency-ms", "60001"],
        &["--name", ""],
        &["--name", "bad\nname"],
        &["--port", "0"],
    ] {
        let status = Command::new(env!("CARGO_BIN_EXE_switchyard-storefront"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run");
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn sigterm_and_sigint_exit_zero() {
    let mut s = Stack::start("blue", &["--workers", "2"]);
    // An idle kept-alive connection must not hold shutdown up.
    let mut idle = s.conn();
    assert_eq!(idle.send("GET", "/", &[], "").status, 200);
    assert_eq!(s.signal("TERM").code(), Some(0));

    let mut s = Stack::start("green", &[]);
    assert_eq!(s.signal("INT").code(), Some(0));
}

#[test]
fn many_requests_on_one_connection() {
    let s = Stack::start("blue", &["--workers", "2"]);
    let mut c = s.conn();
    for i in 0..2000 {
        let r = c.send("GET", "/products", &[], "");
        assert_eq!(r.status, 200, "request {i}");
    }
}
