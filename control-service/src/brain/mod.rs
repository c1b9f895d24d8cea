//! The routing brain: decides when and how far to move traffic, and records why.
//!
//! Modules follow the paper's phases. Each is pure logic over plain data, takes the
//! time from a [`clock::Clock`] (or a `now` argument) and persists through the
//! [`crate::store::Store`] trait, so it is tested with a manual clock and runs unchanged
//! on redb or etcd. The gRPC and HTTP layers only translate.
//!
//! - [`clock`]: time, real or manual.
//! - [`signals`]: per-stack signals over one window (what every judgement reads).
//! - [`series`]: telemetry folded into aligned windows, persisted as a ring per stack.
//! - [`audit`]: the hash-chained log of every decision and change.
//! - [`stats`]: anytime-valid sequential tests behind the rollout gates.
//! - [`rollout`]: SLO-gated progressive delivery, a persisted state machine per rollout.
//! - [`guardrails`]: limits every traffic change must pass (rate, one at a time, approval).
//! - [`events`]: the event registry (deployments, campaigns, load tests, maintenance) and
//!   Alertmanager webhooks.
//! - [`baseline`] and [`detection`]: seasonal baselines, two-stage thresholds, cross-stack
//!   delta localisation, leading indicators.
//! - [`incident`]: the ITR workflow, a persisted state machine per incident.
//! - [`scenario`]: telemetry traces (docs/traces.md) and their replay.

//!
//! Key space owned by the brain in the store (see [`crate::store::Store::commit`]):
//! `series/`, `events/`, `incident/`, `rollout/`, `guard/`, `audit/`.

pub mod audit;
pub mod baseline;
pub mod clock;
pub mod detection;
pub mod events;
pub mod guardrails;
pub mod incident;
pub mod rollout;
pub mod scenario;
pub mod series;
pub mod signals;
pub mod stats;
