//! The one lookup of the shipped filter module for every test suite. It runs
//! `scripts/build-wasm.sh`, the single producer `make wasm` runs too, so tests load
//! exactly the module that ships; cargo and the script decide what is stale.
//!
//! It lives here, in the light harness crate, rather than in the wasmtime host: an
//! end-to-end suite that only drives Envoy must not pull wasmtime into its build (a
//! crate built on its own resolves its dependencies' features anew, and wasmtime is the
//! slowest thing in the workspace to compile).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::error::HarnessError;

/// The module's path under the workspace root; nothing but `scripts/build-wasm.sh`
/// writes it.
pub const FILTER_WASM: &str = "target/switchyard/switchyard_filter.wasm";

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The shipped filter module: `$SWITCHYARD_WASM` when it names an existing file (used as
/// is: `make test` exports the module it just built; benchmarks point it at theirs),
/// otherwise [`build_filter_wasm`] once per process.
pub fn filter_wasm() -> Result<PathBuf, HarnessError> {
    if let Ok(p) = std::env::var("SWITCHYARD_WASM") {
        let p = PathBuf::from(p);
        if p.exists() {
            return Ok(p);
        }
    }
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = DONE.get() {
        return Ok(p.clone());
    }
    let wasm = build_filter_wasm()?;
    let _ = DONE.set(wasm.clone());
    Ok(wasm)
}

/// Runs `scripts/build-wasm.sh -q` (cargo with the `wasm` profile, then wasm-opt; both
/// skipped when nothing changed) and returns [`FILTER_WASM`] under the workspace root.
pub fn build_filter_wasm() -> Result<PathBuf, HarnessError> {
    let _g = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = crate::workspace_root();
    let mut cmd = Command::new("bash");
    cmd.current_dir(&root)
        .arg(root.join("scripts/build-wasm.sh"))
        .arg("-q")
        .env(
            "CARGO",
            std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        );
    // Let the child cargo pick its own settings, not the ones `cargo test` exported.
    for (k, _) in std::env::vars() {
        if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k == "RUSTFLAGS" {
            cmd.env_remove(&k);
        }
    }
    let what = "switchyard_filter.wasm (scripts/build-wasm.sh)";
    let out = cmd.output().map_err(|source| HarnessError::Io {
        name: "build-wasm".into(),
        what: what.into(),
        source,
    })?;
    if !out.status.success() {
        return Err(HarnessError::Other(format!(
            "{what} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let wasm = root.join(FILTER_WASM);
    if !wasm.exists() {
        return Err(HarnessError::Other(format!(
            "{what} built nothing at {}",
            wasm.display()
        )));
    }
    Ok(wasm)
}
