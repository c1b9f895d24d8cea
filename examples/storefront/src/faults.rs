//! Fault injection: decides, per shop request, whether to delay it and whether to
//! answer 500 instead. It must never pick failures at random: tests count them, so
//! `error_rate` r fails exactly ⌊n·r⌋ of the first n requests since the rate was set
//! (r rounded to parts per billion).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest latency the admin endpoint or the flag accepts, in milliseconds.
///
/// A delay longer than a minute only wedges test harnesses; Envoy timeouts are far
/// shorter.
pub const MAX_LATENCY_MS: u64 = 60_000;

/// Largest `index_lag` accepted.
pub const MAX_INDEX_LAG: u64 = 1_000_000;

/// Resolution of the error-rate sequence: the rate is rounded to parts per billion.
const SCALE: u128 = 1_000_000_000;

/// The faults in force, as `GET /admin/faults` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultSettings {
    /// Fraction of shop requests answered 500, in `0.0..=1.0`.
    pub error_rate: f64,
    /// Delay added before every shop response.
    pub latency_ms: u64,
    /// What `/healthz` reports.
    pub healthy: bool,
    /// Products missing from the search index: `/integrity` reports that many fewer
    /// indexed products than catalog products.
    pub index_lag: u64,
}

/// A `POST /admin/faults` body as received: every field optional, nothing else allowed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    /// New error rate, if given.
    pub error_rate: Option<f64>,
    /// New added latency, if given.
    pub latency_ms: Option<u64>,
    /// New health, if given.
    pub healthy: Option<bool>,
    /// New search-index lag, if given.
    pub index_lag: Option<u64>,
}

/// Why a fault setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFault {
    /// `error_rate` was not a finite number in `0..=1`.
    #[error("error_rate: must be a number between 0 and 1")]
    ErrorRate,
    /// `latency_ms` exceeded [`MAX_LATENCY_MS`].
    #[error("latency_ms: must be at most {MAX_LATENCY_MS}")]
    LatencyMs,
    /// `index_lag` exceeded [`MAX_INDEX_LAG`].
    #[error("index_lag: must be at most {MAX_INDEX_LAG}")]
    IndexLag,
}

/// Checks an error rate given by flag or admin request.
pub fn validate_error_rate(rate: f64) -> Result<f64, InvalidFault> {
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(InvalidFault::ErrorRate)
    }
}

/// Checks an added latency given by flag or admin request.
pub fn validate_latency_ms(ms: u64) -> Result<u64, InvalidFault> {
    if ms <= MAX_LATENCY_MS {
        Ok(ms)
    } else {
        Err(InvalidFault::LatencyMs)
    }
}

/// What to do with one shop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer 500 instead of the page.
    pub fail: bool,
}

#[derive(Debug)]
struct Inner {
    settings: FaultSettings,
    /// `error_rate` in parts per [`SCALE`], rounded.
    rate_scaled: u128,
    /// Shop requests seen since `error_rate` was last set.
    seq: u128,
}

/// Shared fault state; one per process, cloned by `Arc` into every connection.
#[derive(Debug)]
pub struct Faults {
    inner: Mutex<Inner>,
}

impl Faults {
    /// Starts with the given settings, which must already be validated.
    pub fn new(settings: FaultSettings) -> Self {
        Self {
            inner: Mutex::new(Inner {
                settings,
                rate_scaled: scale(settings.error_rate),
                seq: 0,
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> FaultSettings {
        self.lock().settings
    }

    /// Applies an update whole, or nothing of it when any field is invalid.
    ///
    /// Setting `error_rate` (even to its current value) restarts the failure
    /// sequence, so a test that sets 0.5 then sends 100 requests sees exactly 50 fail.
    pub fn update(&self, update: &FaultUpdate) -> Result<FaultSettings, InvalidFault> {
        let error_rate = update.error_rate.map(validate_error_rate).transpose()?;
        let latency_ms = update.latency_ms.map(validate_latency_ms).transpose()?;
        if update.index_lag.is_some_and(|n| n > MAX_INDEX_LAG) {
            return Err(InvalidFault::IndexLag);
        }
        let mut inner = self.lock();
        if let Some(rate) = error_rate {
            inner.settings.error_rate = rate;
            inner.rate_scaled = scale(rate);
            inner.seq = 0;
        }
        if let Some(ms) = latency_ms {
            inner.settings.latency_ms = ms;
        }
        if let Some(healthy) = update.healthy {
            inner.settings.healthy = healthy;
        }
        if let Some(lag) = update.index_lag {
            inner.settings.index_lag = lag;
        }
        Ok(inner.settings)
    }

    /// Decides the fate of the next shop request.
    ///
    /// Request n (counting from 0) fails when ⌊(n+1)·r⌋ > ⌊n·r⌋: an accumulator
    /// that spreads failures evenly, so 0.25 fails every 4th request and 0.5 every
    /// 2nd, starting with the last of each group.
    pub fn next_verdict(&self) -> Verdict {
        let mut inner = self.lock();
        let n = inner.seq;
        inner.seq = n.wrapping_add(1);
        let r = inner.rate_scaled;
        let fail = (n + 1) * r / SCALE > n * r / SCALE;
        Verdict {
            delay: Duration::from_millis(inner.settings.latency_ms),
            fail,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock, but a poisoned lock must not take
        // the demo down either.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn scale(rate: f64) -> u128 {
    // The rate is validated to 0..=1, so the product fits comfortably.
    (rate * SCALE as f64).round() as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(error_rate: f64) -> Faults {
        Faults::new(FaultSettings {
            error_rate,
            latency_ms: 0,
            healthy: true,
            index_lag: 0,
        })
    }

    fn failures(f: &Faults, n: usize) -> Vec<bool> {
        (0..n).map(|_| f.next_verdict().fail).collect()
    }

    #[test]
    fn quarter_fails_every_fourth() {
        let f = faults(0.25);
        let got = failures(&f, 8);
        assert_eq!(got, [false, false, false, true, false, false, false, true]);
    }

    #[test]
    fn exact_counts_for_awkward_rates() {
        for (rate, n, want) in [
            (0.1, 100, 10),
            (0.3, 1000, 300),
            (0.75, 100, 75),
            (0.0, 50, 0),
            (1.0, 50, 50),
        ] {
            let f = faults(rate);
            let got = failures(&f, n).into_iter().filter(|&x| x).count();
            assert_eq!(got, want, "rate {rate}");
        }
    }

    #[test]
    fn setting_the_rate_restarts_the_sequence() {
        let f = faults(0.5);
        assert_eq!(failures(&f, 1), [false]);
        f.update(&FaultUpdate {
            error_rate: Some(0.5),
            ..FaultUpdate::default()
        })
        .unwrap();
        assert_eq!(failures(&f, 2), [false, true]);
    }

    #[test]
    fn invalid_update_changes_nothing() {
        let f = faults(0.2);
        let before = f.settings();
        let bad = FaultUpdate {
            error_rate: Some(0.9),
            latency_ms: Some(MAX_LATENCY_MS + 1),
            healthy: Some(false),
            index_lag: None,
        };
        assert_eq!(f.update(&bad), Err(InvalidFault::LatencyMs));
        for rate in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let bad = FaultUpdate {
                error_rate: Some(rate),
                healthy: Some(false),
                ..FaultUpdate::default()
            };
            assert_eq!(f.update(&bad), Err(InvalidFault::ErrorRate));
        }
        let bad = FaultUpdate {
            index_lag: Some(MAX_INDEX_LAG + 1),
            healthy: Some(false),
            ..FaultUpdate::default()
        };
        assert_eq!(f.update(&bad), Err(InvalidFault::IndexLag));
        assert_eq!(f.settings(), before);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<FaultUpdate>(r#"{"error_rat": 0.5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
