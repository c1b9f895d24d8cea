//! Request counters for `GET /admin/stats`. They count what arrived, including admin
//! and health requests; they must never grow without bound, so distinct paths are
//! capped and the rest counted under [`OTHER_PATHS`].

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// Distinct paths tracked before further new paths are lumped together.
pub const MAX_TRACKED_PATHS: usize = 256;

/// Key under which requests to untracked paths are counted.
pub const OTHER_PATHS: &str = "(other)";

/// What `GET /admin/stats` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Every request received, whatever its answer.
    pub requests_total: u64,
    /// Requests answered 500 by fault injection.
    pub errors_injected: u64,
    /// Requests answered 404.
    pub not_found: u64,
    /// Requests per path (query string excluded).
    pub by_path: BTreeMap<String, u64>,
    /// Orders placed by `POST /checkout`.
    pub orders_placed: u64,
    /// Checkouts answered with an earlier order (repeated `Idempotency-Key`).
    pub orders_replayed: u64,
}

/// Shared counters; one per process.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsSnapshot>,
}

impl Stats {
    /// Counts one request to `path`.
    pub fn record_request(&self, path: &str) {
        let mut s = self.lock();
        s.requests_total += 1;
        if let Some(n) = s.by_path.get_mut(path) {
            *n += 1;
        } else if s.by_path.len() < MAX_TRACKED_PATHS {
            s.by_path.insert(path.to_owned(), 1);
        } else {
            *s.by_path.entry(OTHER_PATHS.to_owned()).or_insert(0) += 1;
        }
    }

    /// Counts one injected 500.
    pub fn record_injected_error(&self) {
        self.lock().errors_injected += 1;
    }

    /// Counts one order placed.
    pub fn record_order(&self) {
        self.lock().orders_placed += 1;
    }

    /// Counts one checkout answered with an earlier order.
    pub fn record_replayed_order(&self) {
        self.lock().orders_replayed += 1;
    }

    /// Counts one 404.
    pub fn record_not_found(&self) {
        self.lock().not_found += 1;
    }

    /// A consistent copy of all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsSnapshot> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_path() {
        let s = Stats::default();
        s.record_request("/");
        s.record_request("/");
        s.record_request("/products");
        s.record_injected_error();
        let snap = s.snapshot();
        assert_eq!(snap.requests_total, 3);
        assert_eq!(snap.errors_injected, 1);
        assert_eq!(snap.by_path["/"], 2);
        assert_eq!(snap.by_path["/products"], 1);
    }

    #[test]
    fn distinct_paths_are_capped() {
        let s = Stats::default();
        for i in 0..MAX_TRACKED_PATHS + 10 {
            s.record_request(&format!("/echo/{i}"));
        }
        s.record_request("/echo/0");
        let snap = s.snapshot();
        // Capacity is the tracked paths plus the one overflow bucket.
        assert_eq!(snap.by_path.len(), MAX_TRACKED_PATHS + 1);
        assert_eq!(snap.by_path[OTHER_PATHS], 10);
        assert_eq!(snap.by_path["/echo/0"], 2);
        assert_eq!(snap.requests_total, MAX_TRACKED_PATHS as u64 + 11);
    }
}
