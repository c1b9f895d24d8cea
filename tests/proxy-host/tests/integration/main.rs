//! The wasmtime host's tests, one binary (each file is a module): a binary per file linked
//! wasmtime and tonic with debug info again and again (300–530 MB apiece). Run one file's
//! tests with its module name as the filter:
//! `cargo test -p switchyard-proxy-host --test integration randomized::`.

mod conformance;
mod conformance_envoy;
mod envoy_fidelity;
mod filter;
mod grpc;
mod probe;
mod queue;
mod randomized;
mod singleton;
mod telemetry;
mod wat;
