//! The `make run` demo itself (`scripts/run.sh`, on the debug binaries) and the chaos
//! helper that breaks it: a killed stack stays dead while Envoy and the control service
//! go on serving, a revived stack serves again, and Ctrl-C stops everything, revived
//! stacks included.
//!
//! The demo listens on its fixed ports (10000, 9901, 8081–8084, 18000, 18080): this test
//! fails with a clear message when another `make run` holds them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use switchyard_e2e::*;

const PORTS: [u16; 8] = [10000, 9901, 8081, 8082, 8083, 8084, 18000, 18080];

fn chaos(run_dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(root().join("scripts/chaos.sh"))
        .args(args)
        .current_dir(root())
        .env("SWITCHYARD_RUN_DIR", run_dir)
        .env("SWITCHYARD_BIN", switchyard_harness::bin_dir())
        .output()
        .expect("run chaos.sh")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn pid_file(run_dir: &std::path::Path, name: &str) -> u32 {
    std::fs::read_to_string(run_dir.join("pids").join(format!("{name}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Requests through Envoy until `n` in a row are answered 200 (by a stack other than
/// `not`), or the timeout passes.
fn serves_without(not: &str, n: usize, timeout: Duration) -> bool {
    let start = Instant::now();
    let mut in_a_row = 0;
    while start.elapsed() < timeout {
        let r = Client::connect(10000).and_then(|mut c| c.get("/", &[]));
        match r {
            Ok(r) if r.status == 200 && r.served_by() != Some(not) => {
                in_a_row += 1;
                if in_a_row >= n {
                    return true;
                }
            }
            _ => {
                in_a_row = 0;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    false
}

#[test]
fn a_killed_stack_stays_dead_while_the_demo_goes_on() {
    for port in PORTS {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is in use: stop `make run` (or whatever holds it) and run this test again"
        );
    }
    let dir = TestDir::new("demo");
    let run_dir = dir.join("run");
    // The demo's policy and Envoy config as shipped; the module the tests use.
    let _ = wasm_path();
    let mut cmd = run_sh();
    cmd.current_dir(root())
        .env("SWITCHYARD_RUN_DIR", &run_dir)
        .env("SWITCHYARD_BIN", switchyard_harness::bin_dir())
        .env("ENVOY", envoy_bin());
    let demo = Proc::spawn("run", cmd, dir.path()).unwrap();
    let start = Instant::now();
    while !demo.stdout().contains("Switchyard is running") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "demo did not come up:\n{}",
            demo.tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        serves_without("none", 5, Duration::from_secs(10)),
        "demo serves"
    );

    // Kill blue: the demo goes on, Envoy routes around the dead stack.
    let o = chaos(&run_dir, &["kill", "blue"]);
    assert!(o.status.success(), "{}", text(&o));
    let blue = pid_file(&run_dir, "blue");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!alive(blue), "blue was killed");
    assert!(
        alive(demo.pid()),
        "run.sh exited after a stack died:\n{}",
        demo.tail(20)
    );
    assert!(
        serves_without("blue", 30, Duration::from_secs(20)),
        "Envoy keeps serving without blue"
    );
    let o = chaos(&run_dir, &["status"]);
    assert!(text(&o).contains("blue: DOWN"), "{}", text(&o));
    assert!(alive(demo.pid()), "{}", demo.tail(20));

    // Bad requests are refused with a usage message and change nothing.
    let o = chaos(&run_dir, &["kill", "purple"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown stack 'purple'"), "{}", text(&o));

    // Revive it, slow green down and heal it.
    let o = chaos(&run_dir, &["revive", "blue"]);
    assert!(o.status.success(), "{}", text(&o));
    let revived = pid_file(&run_dir, "blue");
    assert!(alive(revived));
    let o = chaos(&run_dir, &["slow", "green", "40"]);
    assert!(text(&o).contains("\"latency_ms\":40"), "{}", text(&o));
    let o = chaos(&run_dir, &["heal", "green"]);
    assert!(text(&o).contains("\"latency_ms\":0"), "{}", text(&o));

    // Ctrl-C stops everything, the revived stack (not a child of run.sh) included.
    let others: Vec<u32> = ["green", "canary", "eu", "control", "envoy"]
        .iter()
        .map(|n| pid_file(&run_dir, n))
        .collect();
    let status = Command::new("kill")
        .args(["-INT", &demo.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    while alive(demo.pid()) || alive(revived) || others.iter().any(|p| alive(*p)) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still running after Ctrl-C:\n{}",
            demo.tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(demo.stdout().contains("stopped."), "{}", demo.tail(10));
}
