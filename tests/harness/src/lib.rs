//! One harness for Switchyard's end-to-end suites: start real servers (Envoy, the demo
//! storefront, the control service, and later etcd, Prometheus, a browser, a broker),
//! learn their ports without races, wait until they serve, talk HTTP/1.1 to them, and
//! leave nothing running — with their logs printed when a test fails.
//!
//! - [`Proc`]: a child in its own process group, stdout/stderr captured to files in a
//!   per-test [`TestDir`], the whole group killed on drop (also on panic), the last lines
//!   of its logs printed when the test panics; `wait_*` helpers that fail with the
//!   process's name and log tail.
//! - [`ports`]: port 0 wherever the server can report what it bound; for servers that
//!   need an explicit port, a held reservation and a retry on "address in use".
//! - [`Envoy`]: the real binary with a bootstrap YAML, admin and listener ports read back.
//! - [`Client`]: a keep-alive HTTP/1.1 client that sends headers verbatim.
//! - [`EtcdCluster`]: real etcd members on reserved ports, killable and restartable.
//! - [`prometheus`]: real Prometheus and Alertmanager, `promtool`, and the shipped
//!   `examples/prometheus` with its durations compressed for tests.
//! - [`browser`]: a headless Chromium session over WebDriver (chromedriver).
//!
//! It never does date arithmetic (`switchyard_filter::schedule` does) and never builds
//! the `.wasm` itself ([`filter_wasm`] asks the proxy-host's build module).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;
pub mod envoy;
pub mod error;
pub mod etcd;
pub mod http;
pub mod nats;
pub mod ports;
pub mod proc;
pub mod prometheus;
pub mod wasm;

use std::path::PathBuf;

pub use envoy::{Envoy, EnvoyOptions};
pub use error::HarnessError;
pub use etcd::{EtcdCluster, EtcdServer};
pub use http::{Client, Response};
pub use nats::NatsServer;
pub use ports::ReservedPort;
pub use proc::{Proc, TestDir};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    here.canonicalize().unwrap_or(here)
}

/// The Envoy binary: `$ENVOY` if set and non-empty, else `.tools/envoy` (`make setup`).
pub fn envoy_bin() -> PathBuf {
    match std::env::var("ENVOY") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(".tools/envoy"),
    }
}

/// The Envoy binary if there is one: suites that can run without Envoy skip with a
/// message instead of failing on a machine without `make setup`.
pub fn envoy_bin_if_present() -> Option<PathBuf> {
    let p = envoy_bin();
    p.exists().then_some(p)
}

/// The switchyard filter's `.wasm`, the single lookup every suite uses (it builds the
/// module when missing or stale). Re-point it here, and only here.
pub fn filter_wasm() -> PathBuf {
    wasm::filter_wasm().unwrap_or_else(|e| panic!("the switchyard .wasm: {e}"))
}

/// Where the workspace's native binaries under test are: the profile the calling test
/// was built with (`make test` builds them in the dev profile, benchmarks in release).
pub fn bin_dir() -> PathBuf {
    workspace_root().join(if cfg!(debug_assertions) {
        "target/debug"
    } else {
        "target/release"
    })
}

/// A workspace binary from [`bin_dir`], with a message that says how to build it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it (`cargo build -p <crate>`) or run the tests through `make test`",
        p.display()
    );
    p
}
