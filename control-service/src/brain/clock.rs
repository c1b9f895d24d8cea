//! Time for the brain. Every brain module takes the time from a [`Clock`] and never
//! sleeps: the runtime calls each module's `tick(now)`; tests drive a [`ManualClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch.
pub type UnixMs = u64;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> UnixMs;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMs {
        crate::model::now_unix_ms()
    }
}

/// A clock that moves only when told to: for tests and for replaying traces.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start_ms: UnixMs) -> Self {
        Self(Arc::new(AtomicU64::new(start_ms)))
    }
    /// Move forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    /// Jump to `ms` (never backwards: an earlier time is ignored).
    pub fn set(&self, ms: UnixMs) {
        self.0.fetch_max(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMs {
        self.0.load(Ordering::SeqCst)
    }
}

/// `ms` as an RFC 3339 UTC time to the second (`2026-12-01T06:40:00Z`), for messages
/// that say when something will be allowed.
pub fn utc(ms: UnixMs) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_civil_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_737_600_999), "2026-11-27T00:00:00Z");
        assert_eq!(utc(1_796_100_000_000), "2026-12-01T04:40:00Z");
        assert_eq!(utc(4_107_542_399_000), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn manual_clock_moves_only_forward_when_told() {
        let c = ManualClock::new(1_000);
        let shared = c.clone();
        assert_eq!(c.now_ms(), 1_000);
        c.advance(500);
        assert_eq!(shared.now_ms(), 1_500);
        c.set(1_200);
        assert_eq!(c.now_ms(), 1_500);
        c.set(9_000);
        assert_eq!(shared.now_ms(), 9_000);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
