//! The harness's own behaviour: process groups die with the test (also when it panics),
//! waits fail with the process's name and log tail, reserved ports refuse connections
//! and hand over, the HTTP client sends bytes verbatim and reads what servers send, and
//! Envoy's port-0 listeners are read back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use switchyard_harness::ports::start_on_port;
use switchyard_harness::{Client, Envoy, EnvoyOptions, HarnessError, Proc, ReservedPort, TestDir};

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    c
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next()),
            Some("Z") | Some("X")
        ),
        Err(_) => false,
    }
}

/// Wait (bounded) for `pid` to die; whether it did.
fn dies(pid: u32) -> bool {
    for _ in 0..200 {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Start a shell that forks a long sleep; returns the proc and the sleep's pid.
fn shell_with_grandchild(dir: &TestDir) -> (Proc, u32) {
    let mut p = Proc::spawn("forker", sh("sleep 300 & echo child $!; wait"), dir.path()).unwrap();
    let line = p
        .wait_for_line("the child's pid", Duration::from_secs(10), |l| {
            l.starts_with("child ")
        })
        .unwrap();
    let pid: u32 = line["child ".len()..].trim().parse().unwrap();
    assert!(alive(pid));
    (p, pid)
}

#[test]
fn dropping_a_proc_kills_its_whole_process_group() {
    let dir = TestDir::new("group");
    let (p, grandchild) = shell_with_grandchild(&dir);
    let leader = p.pid();
    drop(p);
    assert!(dies(leader), "the leader is killed");
    assert!(dies(grandchild), "the forked grandchild is killed too");
}

#[test]
fn a_panicking_test_still_kills_its_children() {
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let dir = TestDir::new("panic");
        let (_p, grandchild) = shell_with_grandchild(&dir);
        tx.send(grandchild).unwrap();
        panic!("the test fails");
    })
    .join();
    assert!(r.is_err());
    let grandchild = rx.recv().unwrap();
    assert!(dies(grandchild));
}

#[test]
fn a_process_that_exits_while_waited_for_is_named_with_its_log_tail() {
    let dir = TestDir::new("exit");
    let mut p = Proc::spawn(
        "crasher",
        sh("echo starting up; echo 'fatal: no config' >&2; exit 3"),
        dir.path(),
    )
    .unwrap();
    let e = p
        .wait_for_line("a ready line", Duration::from_secs(10), |l| l == "ready")
        .unwrap_err();
    assert!(matches!(e, HarnessError::Exited { .. }), "{e}");
    let text = e.to_string();
    for want in [
        "crasher",
        "exit status: 3",
        "a ready line",
        "starting up",
        "fatal: no config",
    ] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
}

#[test]
fn a_wait_that_times_out_names_the_process_and_what_it_waited_for() {
    let dir = TestDir::new("timeout");
    let mut p = Proc::spawn("sleeper", sh("echo 'still booting'; sleep 300"), dir.path()).unwrap();
    let port = ReservedPort::new().unwrap();
    let e = p
        .wait_tcp(port.addr(), Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(e, HarnessError::Timeout { .. }), "{e}");
    let text = e.to_string();
    for want in ["sleeper", "a TCP listener on", "still booting"] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
    assert!(p.exited().is_none(), "a timeout does not kill it");
}

#[test]
fn wait_http_ok_waits_for_a_200() {
    let dir = TestDir::new("http-ok");
    let mut p = Proc::spawn("server", sh("sleep 300"), dir.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // 503 first, then 200: the wait must not stop at the first answer.
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let mut s = conn.unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let (status, body) = if i < 2 {
                ("503 No", "wait")
            } else {
                ("200 OK", "up")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let r = p
        .wait_http_ok(addr, "/health", Duration::from_secs(10))
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "up"));
}

#[test]
fn a_reserved_port_refuses_connections_and_hands_over_to_a_reuseaddr_server() {
    let reserved = ReservedPort::new().unwrap();
    assert_ne!(reserved.port(), 0);
    let e = TcpStream::connect(reserved.addr()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    // A fresh reservation never gets a held port.
    let other = ReservedPort::new().unwrap();
    assert_ne!(other.port(), reserved.port());
    // std binds with SO_REUSEADDR, as tokio, Go and Envoy do: it can take the port while
    // the reservation still holds it.
    let server = TcpListener::bind(reserved.addr()).unwrap();
    assert!(TcpStream::connect(reserved.addr()).is_ok());
    drop(server);
}

#[test]
fn start_on_port_retries_on_address_in_use_and_only_then() {
    let mut ports = Vec::new();
    let got = start_on_port(3, |port| {
        ports.push(port);
        if ports.len() == 1 {
            Err(HarnessError::Other(
                "etcd: listen tcp 127.0.0.1: bind: address already in use".into(),
            ))
        } else {
            Ok(port)
        }
    })
    .unwrap();
    assert_eq!(ports.len(), 2);
    assert_ne!(ports[0], ports[1], "the retry takes a fresh port");
    assert_eq!(got, ports[1]);

    let mut calls = 0;
    let e = start_on_port(3, |_| -> Result<(), _> {
        calls += 1;
        Err(HarnessError::Other("config error".into()))
    })
    .unwrap_err();
    assert_eq!(calls, 1, "other errors are not retried: {e}");
}

/// A server that records each request's head and answers the given raw responses in
/// turn, closing the connection after each `connection: close` one.
fn scripted_server(answers: Vec<&'static str>) -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut answers = answers.into_iter();
        for conn in listener.incoming() {
            let s = conn.unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            loop {
                let mut head = String::new();
                loop {
                    // Bytes, not `read_line`: the client sends non-UTF-8 header values.
                    let mut l = Vec::new();
                    if r.read_until(b'\n', &mut l).unwrap_or(0) == 0 {
                        break;
                    }
                    head.push_str(&String::from_utf8_lossy(&l));
                    if l == b"\r\n" {
                        break;
                    }
                }
                if head.is_empty() {
                    break;
                }
                tx.send(head).unwrap();
                let Some(a) = answers.next() else { return };
                w.write_all(a.as_bytes()).unwrap();
                if a.contains("connection: close") {
                    break;
                }
            }
        }
    });
    (port, rx)
}

#[test]
fn the_client_sends_headers_verbatim_and_reads_cookies_chunks_and_closes() {
    let (port, heads) = scripted_server(vec![
        "HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nset-cookie: sy_aff=xyz; HttpOnly\r\nContent-Length: 5\r\n\r\nhello",
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ]);
    let mut c = Client::connect(port).unwrap();
    let r = c
        .request(
            "GET",
            "/a",
            &[("x-dup", b"1"), ("x-dup", b"2"), ("x-raw", b"\xff\x01")],
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.headers_named("set-cookie").len(), 2);
    assert_eq!(r.set_cookie("sy_aff").as_deref(), Some("sy_aff=xyz"));
    assert_eq!(r.set_cookie("a").as_deref(), Some("a=1"));
    assert_eq!(r.set_cookie("b"), None);
    let head = heads.recv().unwrap();
    assert!(
        head.starts_with("GET /a HTTP/1.1\r\nhost: localhost\r\n"),
        "{head:?}"
    );
    assert!(
        head.contains("x-dup: 1\r\nx-dup: 2\r\nx-raw: \u{fffd}\u{1}\r\n"),
        "{head:?}"
    );

    // Same connection (keep-alive); a chunked body; then the server closes.
    let r = c.get("/b", &[("host", "shop.test")]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (201, "abcde"));
    let head = heads.recv().unwrap();
    assert!(
        head.contains("host: shop.test\r\n") && !head.contains("localhost"),
        "{head:?}"
    );

    // The closed connection is replaced transparently.
    let r = c.request("POST", "/c", &[]).unwrap();
    assert_eq!(r.text(), "ok");
    assert!(heads.recv().unwrap().contains("content-length: 0\r\n"));
}

#[test]
fn request_once_does_not_resend() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut s = conn.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap_or(0);
            tx.send(n).unwrap();
            // Hang up without answering.
        }
    });
    let mut c = Client::connect(port).unwrap();
    assert!(c.request_once("GET", "/", &[]).is_err());
    assert!(rx.recv().unwrap() > 0);
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "sent once"
    );
}

#[test]
fn envoy_on_port_zero_reports_bound_listeners_stats_and_config() {
    if switchyard_harness::envoy_bin_if_present().is_none() {
        eprintln!("SKIPPED: no Envoy binary (make setup installs .tools/envoy, or set ENVOY)");
        return;
    }
    let listener = |name: &str, body: &str| {
        format!(
            r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: {body} }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#
        )
    };
    let yaml = format!(
        "static_resources:\n  listeners:{}{}\nadmin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n",
        listener("front", "front-body"),
        listener("back", "back-body")
    );
    // Two at once: port 0 and dynamic base ids keep them apart.
    let opts = EnvoyOptions::default();
    let (a, b) = (Envoy::start(&yaml, &opts), Envoy::start(&yaml, &opts));
    let mut ports: Vec<u16> = [&a, &b]
        .iter()
        .flat_map(|e| {
            [
                e.listener("front").port(),
                e.listener("back").port(),
                e.admin_addr().port(),
            ]
        })
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 6, "six distinct bound ports");
    assert!(!ports.contains(&0));

    let mut front = a.client("front");
    for _ in 0..3 {
        assert_eq!(front.get("/", &[]).unwrap().text(), "front-body");
    }
    assert_eq!(b.client("back").get("/", &[]).unwrap().text(), "back-body");
    let stats = a.stats_matching("http.front.downstream_rq_total");
    assert_eq!(
        stats.get("http.front.downstream_rq_total"),
        Some(&3),
        "{stats:?}"
    );
    assert!(a.stats().contains_key("server.live"));
    assert!(a
        .stats_prometheus()
        .contains("envoy_http_downstream_rq_total"));
    let dump = a.config_dump().to_string();
    assert!(dump.contains("front-body") && dump.contains("back-body"));
    assert!(a.config_path().exists());
}

/// The state letter of `pid` (`R`, `S`, `T` stopped, …).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

#[test]
fn pause_stops_the_whole_group_and_resume_continues_it() {
    let dir = TestDir::new("pause");
    let (mut p, child) = shell_with_grandchild(&dir);
    p.pause();
    let stopped = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        state(p.pid()) == Some('T') && state(child) == Some('T')
    });
    assert!(stopped, "{:?} {:?}", state(p.pid()), state(child));
    p.resume();
    let running = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        state(p.pid()) != Some('T') && state(child) != Some('T')
    });
    assert!(running, "{:?} {:?}", state(p.pid()), state(child));
    // A paused process is still killed with its group.
    p.pause();
    p.kill();
    assert!(dies(child));
}

#[test]
fn etcd_names_its_leader_and_elects_another_when_it_dies() {
    if !switchyard_harness::etcd::etcd_bin().exists() {
        eprintln!("etcd not installed (make setup): skipped");
        return;
    }
    let mut etcd = switchyard_harness::EtcdCluster::start(3);
    let leader = etcd.wait_leader(Duration::from_secs(10));
    assert_eq!(etcd.leader(), Some(leader));
    etcd.kill(leader);
    assert!(!etcd.is_running(leader));
    let next = etcd.wait_leader(Duration::from_secs(10));
    assert_ne!(next, leader);
    // Without quorum there is no leader.
    etcd.kill(next);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(etcd.leader(), None);
    etcd.restart(leader);
    etcd.wait_leader(Duration::from_secs(10));
}
