//! Switchyard control service: holds the desired routing state (policy and per-stack
//! weight and health), stores every change as a numbered version, and pushes each
//! version to every connected Envoy over a gRPC Watch stream.
//!
//! Modules: [`validate`] (the filter's policy validator), [`model`] (versions and stack
//! state), [`store`] (durable history), [`control`] (every change), [`fleet`] (connected
//! Envoys and their telemetry), [`proto`] (wire types and conversions), [`grpc`] and
//! [`http`] (front ends), [`config`] and [`server`] (running it), [`cli`] (the
//! `switchyard` operator CLI).
//!
//! Imports point one way, from the edges to the domain, never back:
//! `server → {config, grpc, http, control, store, proto}`, `config → grpc` (Watch
//! settings), `grpc → {control, fleet, proto}`, `http → {control, fleet, model}`,
//! `cli → {proto, model, validate}`, `proto → {model, fleet, validate}` (and `codec`, from
//! the generated code), `control → {model, fleet, store, validate}`, `fleet → model`,
//! `store → model`. Only the edges (`grpc`, `server`, `cli`) import `proto`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod codec;
pub mod config;
pub mod control;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod model;
pub mod proto;
pub mod server;
pub mod store;
pub mod validate;
