//! Every end-to-end suite in one test binary: the real Envoy with the built `.wasm`, the
//! real control service, the demo stacks and the real servers each suite needs. One
//! binary links once (20 suites each linked on their own took minutes of `make test`).
//!
//! Each suite is a module in its own file beside this one; run one with its module path:
//! `cargo test -p switchyard-e2e --test e2e fast_path:: -- --nocapture`. `make test` runs
//! them one at a time (`--test-threads 1`): they bind ports, start Envoys and measure.
//! The `#[ignore]`d ones are `make chaos` (`chaos::`, `replicas::`) and `make soak`.

/// Bounded load generator shared by the chaos and soak suites.
mod load;

mod alerting;
mod auth;
mod chaos;
mod config;
mod console;
mod control;
mod degraded;
mod demo;
mod drain;
mod fast_path;
mod getting_started;
mod incident;
mod intake_status;
mod istio;
mod readme;
mod replicas;
mod rollout;
mod routing;
mod soak;
mod telemetry;
mod tls;
