//! Switchyard routing filter.
//!
//! Pure modules decide where a request goes and build and test natively; the `wasm`
//! module is the thin proxy-wasm adapter compiled to `wasm32-wasip1`. The control service
//! depends on this crate to validate policies, so both accept exactly the same documents.
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod affinity;
pub mod balance;
pub mod breaker;
pub mod cidr;
pub mod classify;
pub mod hash;
pub mod headers;
pub mod histogram;
pub mod policy;
pub mod router;
pub mod schedule;
pub mod shared_data;
pub mod snapshot;

#[cfg(all(target_arch = "wasm32", feature = "adapter"))]
mod wasm;
