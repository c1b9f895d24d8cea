//! Finding (and when stale, building) the `.wasm` files the tests load, so that no test
//! ever fails with "build it first". The filter comes from `scripts/build-wasm.sh`, the
//! same step `make wasm` runs, so tests load exactly the module that ships (optimised,
//! at [`FILTER_WASM`]); cargo inside that script decides what is stale. The probe guest
//! is rebuilt when a source file is newer than its module.

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
        message: format!("running {}: {e}", cmd.get_program().to_string_lossy()),
    })?;
    if !out.status.success() {
        return Err(HostError::Load {
            what: what.into(),
            message: format!(
                "{what} build failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Where `scripts/build-wasm.sh` (`make wasm`) puts the shipped filter module, relative to
/// the workspace root. Nothing else writes this path.
pub const FILTER_WASM: &str = switchyard_harness::wasm::FILTER_WASM;

/// The shipped filter module, [`FILTER_WASM`]: `$SWITCHYARD_WASM` when set to an existing
/// file, else built or refreshed once per process — the harness's one lookup
/// ([`switchyard_harness::wasm::filter_wasm`]), shared with the end-to-end suites.
pub fn filter_wasm() -> Result<PathBuf, HostError> {
    switchyard_harness::wasm::filter_wasm().map_err(load_error)
}

/// Runs `scripts/build-wasm.sh` (cargo with the `wasm` profile, then wasm-opt; both
/// skipped when nothing changed) and returns the module's path, [`FILTER_WASM`].
pub fn build_filter_wasm() -> Result<PathBuf, HostError> {
    switchyard_harness::wasm::build_filter_wasm().map_err(load_error)
}

fn load_error(e: switchyard_harness::HarnessError) -> HostError {
    HostError::Load {
        what: FILTER_WASM.into(),
        message: e.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn sha256(path: &Path) -> String {
        let out = Command::new("sha256sum").arg(path).output().unwrap();
        assert!(out.status.success(), "sha256sum {}", path.display());
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    fn has_wasm_opt() -> bool {
        Command::new("wasm-opt").arg("--version").output().is_ok()
    }

    /// The tests load the module `make wasm` ships: the script's one output path, run
    /// through wasm-opt (when installed) rather than cargo's raw artifact, and a second
    /// build with nothing changed leaves the file alone (same inode, same mtime).
    #[test]
    fn tests_load_the_module_make_wasm_ships_and_a_rebuild_rewrites_nothing() {
        let root = workspace_root();
        let first = build_filter_wasm().unwrap();
        assert_eq!(first, root.join(FILTER_WASM));
        let meta = std::fs::metadata(&first).unwrap();

        let raw = root.join("target/wasm32-wasip1/wasm/switchyard_filter.wasm");
        assert!(raw.exists(), "cargo's artifact of the wasm profile");
        if has_wasm_opt() {
            assert_ne!(
                sha256(&first),
                sha256(&raw),
                "the module is wasm-opt's output"
            );
            assert!(meta.len() <= 409_600, "{} bytes: over budget", meta.len());
        } else {
            eprintln!("wasm-opt not installed: the module is cargo's, unoptimised");
        }
        let record = std::fs::read_to_string(first.with_extension("wasm.inputs")).unwrap();
        assert!(record.contains(&sha256(&raw)), "{record}");

        let second = build_filter_wasm().unwrap();
        assert_eq!(second, first);
        let again = std::fs::metadata(&second).unwrap();
        assert_eq!(again.ino(), meta.ino(), "the module was replaced");
        assert_eq!(again.modified().unwrap(), meta.modified().unwrap());
    }
}
