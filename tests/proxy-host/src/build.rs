//! Finding (and when stale, building) the `.wasm` files the tests load, so that no test
//! ever fails with "build it first". Builds run `cargo` for `wasm32-wasip1`; the result
//! is checked against the newest source file, so an edited filter is rebuilt.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use crate::error::HostError;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    let mut newest = None;
    for entry in std::fs::read_dir(path).ok()?.flatten() {
        let p = entry.path();
        if p.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if let Some(t) = newest_mtime(&p) {
            newest = newest.max(Some(t));
        }
    }
    newest
}

fn is_stale(wasm: &Path, sources: &[PathBuf]) -> bool {
    let Some(built) = std::fs::metadata(wasm).ok().and_then(|m| m.modified().ok()) else {
        return true;
    };
    sources
        .iter()
        .filter_map(|s| newest_mtime(s))
        .any(|t| t > built)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(mut cmd: Command, what: &str) -> Result<(), HostError> {
    // Let the child cargo pick its own settings, not the ones cargo test exported.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME"
            || k == "RUSTFLAGS"
            || k == "CARGO_TARGET_DIR"
        {
            cmd.env_remove(&k);
        }
    }
    let out = cmd.output().map_err(|e| HostError::Load {
        what: what.into(),
        message: format!("running cargo: {e}"),
    })?;
    if !out.status.success() {
        return Err(HostError::Load {
            what: what.into(),
            message: format!(
                "cargo build failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// `target/wasm32-wasip1/release/switchyard_filter.wasm`, rebuilt first when missing or
/// older than `filter/` (or `SWITCHYARD_WASM` if set, used as is).
pub fn filter_wasm() -> Result<PathBuf, HostError> {
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
    let _g = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = workspace_root();
    let wasm = root.join("target/wasm32-wasip1/release/switchyard_filter.wasm");
    let sources = vec![root.join("filter"), root.join("Cargo.lock")];
    if is_stale(&wasm, &sources) {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(&root).args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "-p",
            "switchyard-filter",
        ]);
        run(cmd, "switchyard_filter.wasm")?;
    }
    if !wasm.exists() {
        return Err(HostError::Load {
            what: wasm.display().to_string(),
            message: "cargo built nothing".into(),
        });
    }
    let _ = DONE.set(wasm.clone());
    Ok(wasm)
}

/// The probe guest (`tests/proxy-host/guests/probe`), built into its own target
/// directory (it is not a workspace member).
pub fn probe_wasm() -> Result<PathBuf, HostError> {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = DONE.get() {
        return Ok(p.clone());
    }
    let _g = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = workspace_root();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/probe");
    let target = root.join("target/proxy-host-guests");
    let wasm = target.join("wasm32-wasip1/release/switchyard_probe_guest.wasm");
    if is_stale(&wasm, &[dir.join("src"), dir.join("Cargo.toml")]) {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(&dir)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip1",
                "--target-dir",
            ])
            .arg(&target);
        run(cmd, "probe guest")?;
    }
    let _ = DONE.set(wasm.clone());
    Ok(wasm)
}
