//! Request counters for `GET /admin/stats`. They count what arrived, including admin
//! and health requests; they must never grow without bound, so distinct paths are
//! capped and the rest counted under [`OTHER_PATHS`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Nominal worker pool of a stack: `saturation` in `/admin/stats` is the requests in
/// flight over this (a figure the control service can scrape as a leading indicator).
pub const POOL: u64 = 64;

/// Shared counters; one per process.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsSnapshot>,
    in_flight: AtomicU64,
}

/// One request in flight, until dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

    /// Count a request in flight until the guard is dropped.
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Requests in flight now, and that over [`POOL`] (capped at 1).
    pub fn saturation(&self) -> (u64, f64) {
        let n = self.in_flight.load(Ordering::Relaxed);
        (n, (n as f64 / POOL as f64).min(1.0))
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
    fn saturation_is_requests_in_flight_over_the_pool() {
        let s = Stats::default();
        let a = s.enter();
        let b = s.enter();
        assert_eq!(s.saturation(), (2, 2.0 / POOL as f64));
        drop(a);
        assert_eq!(s.saturation().0, 1);
        let many: Vec<_> = (0..2 * POOL).map(|_| s.enter()).collect();
        assert_eq!(s.saturation().1, 1.0);
        drop(many);
        drop(b);
        assert_eq!(s.saturation(), (0, 0.0));
    }

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
