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
//!
//! Key space owned by the brain in the store (see [`crate::store::Store::commit`]):
//! `series/`, `events/`, `incident/`, `rollout/`, `guard/`, `audit/`.

pub mod clock;
pub mod series;
pub mod signals;
