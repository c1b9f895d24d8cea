//! The control service's integration tests, one binary (each file is a module): a test
//! binary per file linked the whole service and its dependencies with debug info again
//! and again (~250 MB each, most of `make test`'s build). Run one file's tests with its
//! module name as the filter: `cargo test -p switchyard-control --test integration access::`.

mod common;

mod access;
mod api;
mod cli;
mod cli_docs;
mod console;
mod crash;
mod docs_json;
mod grpc_health;
mod hostile_clients;
mod incidents;
mod replay;
mod replicas;
mod retention;
mod series;
mod tls;
mod wire;
