//! Local circuit breaker, one per stack per worker: the sub-second failover path that does
//! not wait for any control plane. Decides whether a stack may take a request right now;
//! it only sees outcomes this worker observed.

use crate::policy::BreakerDoc;

const BUCKETS: usize = 10;

/// Breaker state as exported in metrics (0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// Circuit breaker for one stack.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    consecutive: u32,
    /// Rolling window: (bucket start ms, requests, failures).
    window: [(u64, u32, u32); BUCKETS],
    open_until_ms: u64,
    /// Consecutive openings without a full recovery (exponential open time).
    trips: u32,
    trials_started: u32,
    trials_ok: u32,
    /// Recover by active health probes rather than trial requests.
    probe: bool,
    probe_in_flight: bool,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: State::Closed,
            consecutive: 0,
            window: [(0, 0, 0); BUCKETS],
            open_until_ms: 0,
            trips: 0,
            trials_started: 0,
            trials_ok: 0,
            probe: false,
            probe_in_flight: false,
        }
    }
}

impl Breaker {
    /// A breaker that recovers through active health probes: while open, no user request
    /// is risked on the stack; a successful probe closes it.
    pub fn probing() -> Self {
        Self {
            probe: true,
            ..Self::default()
        }
    }

    /// Whether a health probe should be sent now (marks it in flight).
    pub fn start_probe(&mut self, cfg: &BreakerDoc, now_ms: u64) -> bool {
        let due = cfg.enabled
            && self.probe
            && self.state == State::Open
            && now_ms >= self.open_until_ms
            && !self.probe_in_flight;
        if due {
            self.probe_in_flight = true;
        }
        due
    }

    /// Outcome of a health probe. Returns the new state when it changed.
    pub fn probe_result(&mut self, cfg: &BreakerDoc, now_ms: u64, ok: bool) -> Option<State> {
        self.probe_in_flight = false;
        if self.state != State::Open {
            return None;
        }
        if ok {
            *self = Breaker::probing();
            Some(State::Closed)
        } else {
            self.trip(cfg, now_ms);
            None
        }
    }

    /// Current state, moving Open → HalfOpen when the open time is over (probing breakers
    /// stay open until a probe succeeds).
    pub fn state(&mut self, cfg: &BreakerDoc, now_ms: u64) -> State {
        if self.state == State::Open && now_ms >= self.open_until_ms && !self.probe {
            self.state = State::HalfOpen;
            self.trials_started = 0;
            self.trials_ok = 0;
        }
        if !cfg.enabled {
            return State::Closed;
        }
        self.state
    }

    /// Whether the stack may take a request now (does not reserve a trial).
    pub fn available(&mut self, cfg: &BreakerDoc, now_ms: u64) -> bool {
        match self.state(cfg, now_ms) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => self.trials_started < cfg.half_open_requests,
        }
    }

    /// The request was sent to this stack (reserves a half-open trial).
    pub fn on_pick(&mut self, cfg: &BreakerDoc, now_ms: u64) {
        if self.state(cfg, now_ms) == State::HalfOpen {
            self.trials_started += 1;
        }
    }

    /// Record the outcome of a request sent to this stack. Returns the new state when it
    /// changed.
    pub fn record(&mut self, cfg: &BreakerDoc, now_ms: u64, ok: bool) -> Option<State> {
        if !cfg.enabled {
            return None;
        }
        let before = self.state(cfg, now_ms);
        match before {
            State::Closed => {
                self.count(cfg, now_ms, ok);
                self.consecutive = if ok { 0 } else { self.consecutive + 1 };
                let (total, failed) = self.totals(cfg, now_ms);
                let rate_trip = total >= cfg.min_requests
                    && f64::from(failed) >= cfg.error_rate * f64::from(total);
                if !ok && (self.consecutive >= cfg.consecutive_failures || rate_trip) {
                    self.trip(cfg, now_ms);
                }
            }
            State::HalfOpen => {
                if ok {
                    self.trials_ok += 1;
                    if self.trials_ok >= cfg.half_open_requests {
                        *self = Breaker {
                            probe: self.probe,
                            ..Breaker::default()
                        };
                    }
                } else {
                    self.trip(cfg, now_ms);
                }
            }
            // Late answers of requests sent before the breaker opened.
            State::Open => {}
        }
        (self.state != before).then_some(self.state)
    }

    fn trip(&mut self, cfg: &BreakerDoc, now_ms: u64) {
        let factor = 1u64 << self.trips.min(16);
        let open_for = cfg.open_ms.saturating_mul(factor).min(cfg.max_open_ms);
        self.trips = self.trips.saturating_add(1);
        self.state = State::Open;
        self.open_until_ms = now_ms.saturating_add(open_for);
        self.consecutive = 0;
        self.window = [(0, 0, 0); BUCKETS];
    }

    fn bucket_ms(cfg: &BreakerDoc) -> u64 {
        (cfg.window_ms / BUCKETS as u64).max(1)
    }

    fn count(&mut self, cfg: &BreakerDoc, now_ms: u64, ok: bool) {
        let width = Self::bucket_ms(cfg);
        let start = now_ms - now_ms % width;
        let slot = &mut self.window[((now_ms / width) % BUCKETS as u64) as usize];
        if slot.0 != start {
            *slot = (start, 0, 0);
        }
        slot.1 += 1;
        if !ok {
            slot.2 += 1;
        }
    }

    fn totals(&self, cfg: &BreakerDoc, now_ms: u64) -> (u32, u32) {
        let horizon = now_ms.saturating_sub(cfg.window_ms);
        let width = Self::bucket_ms(cfg);
        self.window
            .iter()
            .filter(|(start, _, _)| start + width > horizon)
            .fold((0, 0), |(t, f), (_, n, e)| (t + n, f + e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerDoc {
        BreakerDoc::default()
    }

    #[test]
    fn consecutive_failures_open_then_half_open_then_close() {
        let c = cfg();
        let mut b = Breaker::default();
        let t = 1_000_000;
        for i in 0..4 {
            assert_eq!(b.record(&c, t + i, false), None);
        }
        assert_eq!(b.record(&c, t + 4, false), Some(State::Open));
        assert!(!b.available(&c, t + 5));
        // After open_ms: half-open, a limited number of trials.
        let t2 = t + 4 + c.open_ms;
        assert!(b.available(&c, t2));
        for _ in 0..c.half_open_requests {
            assert!(b.available(&c, t2));
            b.on_pick(&c, t2);
        }
        assert!(
            !b.available(&c, t2),
            "no more trials than half_open_requests"
        );
        for i in 0..c.half_open_requests {
            b.record(&c, t2 + 1, true);
            let _ = i;
        }
        assert_eq!(b.state(&c, t2 + 2), State::Closed);
    }

    #[test]
    fn failed_trial_reopens_for_longer() {
        let c = cfg();
        let mut b = Breaker::default();
        let t = 5_000;
        for i in 0..5 {
            b.record(&c, t + i, false);
        }
        let t2 = t + 4 + c.open_ms;
        b.on_pick(&c, t2);
        assert_eq!(b.record(&c, t2, false), Some(State::Open));
        assert!(
            !b.available(&c, t2 + c.open_ms),
            "second opening lasts 2x open_ms"
        );
        assert!(b.available(&c, t2 + 2 * c.open_ms));
    }

    #[test]
    fn error_rate_trips_without_consecutive_failures() {
        let c = cfg();
        let mut b = Breaker::default();
        let t = 50_000;
        let mut opened = false;
        for i in 0..40u64 {
            // Alternate ok/fail: 50% errors, never 5 in a row.
            if b.record(&c, t + i * 10, i % 2 == 0) == Some(State::Open) {
                opened = true;
                assert!(i >= u64::from(c.min_requests) - 1);
                break;
            }
        }
        assert!(opened);
    }

    #[test]
    fn old_errors_leave_the_window() {
        let c = cfg();
        let mut b = Breaker::default();
        let t = 100_000;
        for i in 0..15u64 {
            b.record(&c, t + i, i % 4 != 0);
        }
        // Much later, successes only: old failures do not count.
        for i in 0..30u64 {
            assert_eq!(b.record(&c, t + 60_000 + i, true), None);
        }
        assert_eq!(b.state(&c, t + 70_000), State::Closed);
    }

    #[test]
    fn probing_breaker_waits_for_a_probe() {
        let c = cfg();
        let mut b = Breaker::probing();
        let t = 10_000;
        for i in 0..5 {
            b.record(&c, t + i, false);
        }
        let later = t + 10 * c.open_ms;
        assert!(
            !b.available(&c, later),
            "no trial user requests while probing"
        );
        assert!(b.start_probe(&c, later));
        assert!(!b.start_probe(&c, later), "one probe in flight");
        assert_eq!(b.probe_result(&c, later, false), None);
        assert!(
            !b.start_probe(&c, later + 1),
            "failed probe: open again, with backoff"
        );
        assert!(b.start_probe(&c, later + 2 * c.open_ms));
        assert_eq!(
            b.probe_result(&c, later + 2 * c.open_ms, true),
            Some(State::Closed)
        );
        assert!(b.available(&c, later + 2 * c.open_ms));
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let c = BreakerDoc {
            enabled: false,
            ..cfg()
        };
        let mut b = Breaker::default();
        for i in 0..100 {
            b.record(&c, i, false);
        }
        assert!(b.available(&c, 100));
    }
}
