//! The filter's pure-core unit tests, compiled for wasm32-wasip1 and run on this crate's
//! wasmtime runner: catches 32-bit `usize`, getrandom and clock differences that native
//! tests cannot. (`guests/core-wasm32` compiles `filter/src/lib.rs` as its library.)

use std::process::Command;

#[test]
fn pure_core_unit_tests_pass_on_wasm32() {
    let root = switchyard_proxy_host::build::workspace_root();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .current_dir(&root)
        .env(
            "CARGO_TARGET_WASM32_WASIP1_RUNNER",
            env!("CARGO_BIN_EXE_wasm32-runner"),
        )
        .args([
            "test",
            "--lib",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(root.join("tests/proxy-host/guests/core-wasm32/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/proxy-host-guests"))
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "wasm32 core tests failed:\n{stdout}\n{stderr}"
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("test result:"))
        .unwrap_or_default();
    assert!(summary.contains(" 0 failed"), "{summary}");
    let passed: usize = summary
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 20, "only {passed} tests ran on wasm32:\n{stdout}");
    eprintln!("wasm32: {summary}");
}
