//! Time-aware seasonal baselines: what a signal of a stack normally is at this hour.
//!
//! Each (stack, signal) keeps one robust summary per completed hour — the median and
//! the median absolute deviation (MAD) of that hour's window values — for the last few
//! weeks, plus the raw values of the last hour for a rolling fallback. The expected
//! value at time `t` comes from the first source with enough data:
//!
//! 1. **hour of week**: the same hour in at least `min_weeks` previous weeks (up to
//!    `weeks`): median of their medians;
//! 2. **hour of day, same day type** (warm-up): the same hour on at least `min_days`
//!    previous days of the same type (weekday or weekend) within `day_lookback_days`;
//!    weekends are kept apart because they differ most from weekdays;
//! 3. **rolling**: the median of the last `rolling_ms` of learned windows (at least
//!    `min_rolling` of them, the newest at most `rolling_max_age_ms` old);
//! 4. nothing: warm-up, no baseline judgement (cross-stack and hard rules still work).
//!
//! The spread is `1.4826 · sqrt(median(MAD)² + MAD(medians)²)`: within-hour noise plus
//! week-to-week (or day-to-day) variation, scaled to a standard deviation for normal
//! data. Robust statistics keep one bad hour in the history from moving the baseline.
//!
//! Persistence: only the hourly summaries are stored (`series/baseline/…`, written by the
//! detector); they are a few numbers per hour, far smaller than the windows they
//! summarise, and they outlive the window ring. The rolling fallback is rebuilt from
//! live windows after a restart. This module does no I/O.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::clock::UnixMs;

pub const HOUR_MS: u64 = 3_600_000;
const HOURS_PER_WEEK: u64 = 168;
/// Scales a MAD to a standard deviation for normally distributed data.
pub const MAD_TO_SIGMA: f64 = 1.4826;

/// Baseline tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BaselineConfig {
    /// Weeks of hour-of-week history used (and retained, plus one).
    pub weeks: usize,
    /// Weeks needed before hour-of-week is used.
    pub min_weeks: usize,
    /// Days looked back for the hour-of-day fallback.
    pub day_lookback_days: u64,
    /// Days (of the same type) needed for the hour-of-day fallback.
    pub min_days: usize,
    /// Span of the rolling fallback.
    pub rolling_ms: u64,
    /// Windows needed in that span for the rolling fallback.
    pub min_rolling: usize,
    /// The rolling fallback is dropped when nothing was learned for this long.
    pub rolling_max_age_ms: u64,
    /// Offset of the business's local time from UTC, in minutes (hours and weekends are
    /// local).
    pub tz_offset_minutes: i64,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            weeks: 4,
            min_weeks: 2,
            day_lookback_days: 14,
            min_days: 2,
            rolling_ms: HOUR_MS,
            min_rolling: 10,
            rolling_max_age_ms: 6 * HOUR_MS,
            tz_offset_minutes: 0,
        }
    }
}

impl BaselineConfig {
    /// Local hour index (hours since the epoch, shifted by the time zone).
    pub fn hour_of(&self, at_ms: UnixMs) -> u64 {
        let shifted = at_ms as i64 + self.tz_offset_minutes * 60_000;
        (shifted.max(0) as u64) / HOUR_MS
    }
    fn retention_hours(&self) -> u64 {
        (self.weeks as u64 + 1) * HOURS_PER_WEEK
    }
}

/// 0 = Monday 00:00 (the epoch fell on a Thursday).
pub fn hour_of_week(hour: u64) -> u64 {
    (hour + 72) % HOURS_PER_WEEK
}

pub fn is_weekend(hour: u64) -> bool {
    hour_of_week(hour) >= 120
}

/// Robust summary of one completed hour of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HourSummary {
    /// Local hour index.
    pub hour: u64,
    pub median: f64,
    pub mad: f64,
    /// Windows summarised.
    pub n: u32,
}

/// Which source gave the expected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    HourOfWeek,
    HourOfDay,
    Rolling,
}

/// What the signal normally is now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    pub median: f64,
    /// Robust standard deviation.
    pub sigma: f64,
    pub source: Source,
    /// Hours (or windows, for rolling) behind it.
    pub samples: usize,
}

/// Median of a non-empty slice (sorted copy).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Median absolute deviation from the median.
pub fn mad(v: &[f64]) -> Option<f64> {
    let m = median(v)?;
    let d: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    median(&d)
}

/// Baseline state of one (stack, signal).
#[derive(Debug, Clone, Default)]
pub struct SignalBaseline {
    /// Completed hours, oldest first.
    hours: VecDeque<HourSummary>,
    cur_hour: Option<u64>,
    cur: Vec<f64>,
    /// (time, value) of recent windows, oldest first.
    recent: VecDeque<(UnixMs, f64)>,
}

impl SignalBaseline {
    /// Rebuild from stored hourly summaries (any order).
    pub fn from_summaries(mut s: Vec<HourSummary>) -> Self {
        s.sort_by_key(|h| h.hour);
        s.dedup_by_key(|h| h.hour);
        Self {
            hours: s.into(),
            ..Self::default()
        }
    }

    pub fn summaries(&self) -> impl Iterator<Item = &HourSummary> {
        self.hours.iter()
    }

    /// Learn one window's value. Returns the summary of the hour that just completed,
    /// if this window starts a new hour (the caller persists it).
    pub fn observe(
        &mut self,
        cfg: &BaselineConfig,
        at_ms: UnixMs,
        value: f64,
    ) -> Option<HourSummary> {
        if !value.is_finite() {
            return None;
        }
        let hour = cfg.hour_of(at_ms);
        let mut done = None;
        if self.cur_hour != Some(hour) {
            done = self.close_hour(cfg);
            self.cur_hour = Some(hour);
        }
        self.cur.push(value);
        self.recent.push_back((at_ms, value));
        while let Some((t, _)) = self.recent.front() {
            if t + cfg.rolling_ms <= at_ms {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        done
    }

    fn close_hour(&mut self, cfg: &BaselineConfig) -> Option<HourSummary> {
        let hour = self.cur_hour?;
        let (m, d) = (median(&self.cur)?, mad(&self.cur)?);
        let s = HourSummary {
            hour,
            median: m,
            mad: d,
            n: self.cur.len() as u32,
        };
        self.cur.clear();
        if self.hours.back().is_some_and(|h| h.hour >= hour) {
            return None;
        }
        self.hours.push_back(s);
        while self
            .hours
            .front()
            .is_some_and(|h| h.hour + cfg.retention_hours() < hour)
        {
            self.hours.pop_front();
        }
        Some(s)
    }

    /// The expected value at `at_ms`, from the best source with enough data.
    pub fn expected(&self, cfg: &BaselineConfig, at_ms: UnixMs) -> Option<Expected> {
        let hour = cfg.hour_of(at_ms);
        let past = || self.hours.iter().rev().filter(move |h| h.hour < hour);
        let weekly: Vec<&HourSummary> = past()
            .filter(|h| (hour - h.hour).is_multiple_of(HOURS_PER_WEEK))
            .take(cfg.weeks)
            .collect();
        if weekly.len() >= cfg.min_weeks.max(1) {
            return Some(combine(&weekly, Source::HourOfWeek));
        }
        let daily: Vec<&HourSummary> = past()
            .filter(|h| {
                (hour - h.hour).is_multiple_of(24)
                    && hour - h.hour <= cfg.day_lookback_days * 24
                    && is_weekend(h.hour) == is_weekend(hour)
            })
            .collect();
        if daily.len() >= cfg.min_days.max(1) {
            return Some(combine(&daily, Source::HourOfDay));
        }
        // Rolling: the last `rolling_ms` of *learned* windows (the detector does not
        // learn anomalous windows, so during an anomaly this keeps the reference from
        // before it), as long as they are not older than `rolling_max_age_ms`.
        let newest = self
            .recent
            .iter()
            .rev()
            .find(|(t, _)| *t < at_ms)
            .map(|(t, _)| *t)?;
        if newest + cfg.rolling_max_age_ms < at_ms {
            return None;
        }
        let vals: Vec<f64> = self
            .recent
            .iter()
            .filter(|(t, _)| *t <= newest && t + cfg.rolling_ms > newest)
            .map(|(_, v)| *v)
            .collect();
        if vals.len() >= cfg.min_rolling.max(1) {
            return Some(Expected {
                median: median(&vals)?,
                sigma: MAD_TO_SIGMA * mad(&vals)?,
                source: Source::Rolling,
                samples: vals.len(),
            });
        }
        None
    }
}

fn combine(hours: &[&HourSummary], source: Source) -> Expected {
    let medians: Vec<f64> = hours.iter().map(|h| h.median).collect();
    let mads: Vec<f64> = hours.iter().map(|h| h.mad).collect();
    let within = median(&mads).unwrap_or(0.0);
    let between = mad(&medians).unwrap_or(0.0);
    Expected {
        median: median(&medians).unwrap_or(0.0),
        sigma: MAD_TO_SIGMA * (within * within + between * between).sqrt(),
        source,
        samples: hours.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    // 2026-11-30 00:00 UTC, a Monday.
    const MONDAY: u64 = 1_796_083_200_000 - 86_400_000;

    #[test]
    fn calendar_helpers() {
        let cfg = BaselineConfig::default();
        assert_eq!(hour_of_week(cfg.hour_of(MONDAY)), 0);
        assert!(!is_weekend(cfg.hour_of(MONDAY + 4 * 86_400_000)));
        assert!(is_weekend(cfg.hour_of(MONDAY + 5 * 86_400_000)));
        let east = BaselineConfig {
            tz_offset_minutes: 60,
            ..cfg
        };
        assert_eq!(hour_of_week(east.hour_of(MONDAY)), 1);
        assert_eq!(median(&[3.0, 1.0, 2.0, 100.0]), Some(2.5));
        assert_eq!(mad(&[1.0, 2.0, 3.0, 4.0, 100.0]), Some(1.0));
    }

    /// Feed `days` days of 10-minute windows of `f(t)`.
    fn feed(
        b: &mut SignalBaseline,
        cfg: &BaselineConfig,
        from: u64,
        days: u64,
        f: impl Fn(u64) -> f64,
    ) -> Vec<HourSummary> {
        let mut out = Vec::new();
        let mut t = from;
        while t < from + days * 86_400_000 {
            out.extend(b.observe(cfg, t, f(t)));
            t += 10 * MIN;
        }
        out
    }

    #[test]
    fn warm_up_falls_back_from_week_to_day_to_rolling() {
        let cfg = BaselineConfig {
            min_rolling: 5,
            ..BaselineConfig::default()
        };
        let mut b = SignalBaseline::default();
        assert!(b.expected(&cfg, MONDAY).is_none());
        // Traffic: 100 at night, 1000 from 08:00 to 20:00; weekends a third of that.
        let f = |t: u64| {
            let h = cfg.hour_of(t);
            let day = if (8..20).contains(&(h % 24)) {
                1000.0
            } else {
                100.0
            };
            if is_weekend(h) {
                day / 3.0
            } else {
                day
            }
        };
        // 40 minutes in: 4 windows, not enough for rolling.
        for i in 0..4 {
            b.observe(&cfg, MONDAY + i * 10 * MIN, 100.0);
        }
        assert!(b.expected(&cfg, MONDAY + 40 * MIN).is_none());
        b.observe(&cfg, MONDAY + 40 * MIN, 100.0);
        assert_eq!(
            b.expected(&cfg, MONDAY + 50 * MIN).unwrap().source,
            Source::Rolling
        );
        let mut b = SignalBaseline::default();
        let done = feed(&mut b, &cfg, MONDAY, 1, f);
        assert_eq!(done.len(), 23, "hours completed on day one");
        // Tuesday 00:00: only one previous weekday → rolling (last hour).
        let e = b.expected(&cfg, MONDAY + 86_400_000).unwrap();
        assert_eq!(e.source, Source::Rolling);
        // Three weekdays later: hour of day, same type.
        feed(&mut b, &cfg, MONDAY + 86_400_000, 2, f);
        let e = b
            .expected(&cfg, MONDAY + 3 * 86_400_000 + 10 * HOUR_MS)
            .unwrap();
        assert_eq!((e.source, e.median), (Source::HourOfDay, 1000.0));
        // Saturday 10:00 after a weekday-only history: weekday hours are not used.
        feed(&mut b, &cfg, MONDAY + 3 * 86_400_000, 2, f);
        let sat10 = MONDAY + 5 * 86_400_000 + 10 * HOUR_MS;
        feed(&mut b, &cfg, MONDAY + 5 * 86_400_000, 0, f);
        let mut b2 = b.clone();
        for i in 0..60 {
            b2.observe(&cfg, sat10 - HOUR_MS + i * MIN, f(sat10 - HOUR_MS));
        }
        let e = b2.expected(&cfg, sat10).unwrap();
        assert_eq!(e.source, Source::Rolling);
        // Two more weeks: hour of week.
        feed(&mut b, &cfg, MONDAY + 5 * 86_400_000, 16, f);
        let e = b
            .expected(&cfg, MONDAY + 21 * 86_400_000 + 10 * HOUR_MS)
            .unwrap();
        assert_eq!(e.source, Source::HourOfWeek);
        assert_eq!(e.samples, 3);
        assert_eq!(e.median, 1000.0);
        let e = b
            .expected(&cfg, MONDAY + 26 * 86_400_000 + 10 * HOUR_MS)
            .unwrap();
        assert!((e.median - 1000.0 / 3.0).abs() < 1e-9, "weekend {e:?}");
    }

    #[test]
    fn one_bad_week_does_not_move_the_baseline_and_restore_matches() {
        let cfg = BaselineConfig::default();
        let mut b = SignalBaseline::default();
        let mut all = Vec::new();
        for w in 0..3u64 {
            let bad = w == 1;
            all.extend(feed(&mut b, &cfg, MONDAY + w * 7 * 86_400_000, 7, |t| {
                let jitter = ((t / MIN) % 7) as f64;
                if bad {
                    500.0 + jitter
                } else {
                    200.0 + jitter
                }
            }));
        }
        let at = MONDAY + 21 * 86_400_000 + 3 * HOUR_MS;
        let e = b.expected(&cfg, at).unwrap();
        assert_eq!(e.source, Source::HourOfWeek);
        assert!((e.median - 203.0).abs() < 5.0, "{e:?}");
        // Restored from the persisted summaries, the seasonal answer is the same.
        let r = SignalBaseline::from_summaries(all);
        assert_eq!(r.expected(&cfg, at), Some(e));
    }
}
