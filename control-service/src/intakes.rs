//! Intake scrapes (issue 15 §4, docs/degraded-mode.md): the control service polls each
//! configured intake's Prometheus text (`[degraded] intakes`) and keeps, per intake, the
//! figures of its last successful scrape, its last error, and a minute of
//! `placed_total` samples from which the drain rate follows. Status (gRPC, HTTP, CLI,
//! console) reads only that kept state: each scrape runs in its own task with a bounded
//! timeout, so a slow or dead intake never delays status. Reads; never changes routing.
//!
//! The figures are re-exported nowhere else: Prometheus scrapes the intakes themselves
//! (`switchyard_intake_*`), and a second copy under the control service's `/metrics`
//! would be counted twice by any sum over jobs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::degraded::IntakeStatus;
use crate::fleet::Fleet;
use crate::health::config::HttpTarget;

/// The drain rate is measured over this much scrape history.
pub const RATE_WINDOW_MS: u64 = 60_000;
/// Default time between scrapes of one intake.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);
/// Default bound on one scrape (connect, request, answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// One intake to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeSource {
    /// The intake cluster a route's queue fallback names.
    pub cluster: String,
    pub url: String,
    target: HttpTarget,
}

impl IntakeSource {
    /// An intake from the config's `cluster` and plain-HTTP metrics `url`; the error
    /// names the field.
    pub fn new(cluster: &str, url: &str) -> Result<Self, String> {
        if cluster.is_empty()
            || !cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(format!(
                "cluster: {cluster:?} must be a cluster name (letters, digits, _ - .)"
            ));
        }
        let target = HttpTarget::parse(url).map_err(|e| format!("url: {e}"))?;
        Ok(Self {
            cluster: cluster.into(),
            url: url.into(),
            target,
        })
    }
}

/// Which intakes to scrape, how often, and for how long at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeSettings {
    pub sources: Vec<IntakeSource>,
    pub every: Duration,
    pub timeout: Duration,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            every: DEFAULT_EVERY,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What one scrape read from an intake's `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub queue_depth: u64,
    pub oldest_age_s: f64,
    pub placed_total: u64,
    pub dead_letters: u64,
    pub waiting: bool,
}

/// The sample in an intake's Prometheus text (`examples/intake/src/metrics.rs`). The
/// intake writes -1 for a queue gauge it cannot read from its broker: that is an error
/// here, not a depth.
pub fn parse(text: &str) -> Result<Sample, String> {
    let value = |name: &str| -> Result<f64, String> {
        let full = format!("switchyard_intake_{name}");
        let v = crate::autopilot::saturation::prometheus_value(text, &full)
            .ok_or_else(|| format!("no {full} sample (is this an intake's /metrics?)"))?;
        if !v.is_finite() {
            return Err(format!("{full} is {v}"));
        }
        Ok(v)
    };
    let count = |name: &str| -> Result<u64, String> {
        let v = value(name)?;
        if v < 0.0 {
            return Err(format!(
                "switchyard_intake_{name} is {v}: the intake cannot read its broker"
            ));
        }
        Ok(v as u64)
    };
    let oldest_age_s = value("queue_oldest_age_seconds")?;
    if oldest_age_s < 0.0 {
        return Err(format!(
            "switchyard_intake_queue_oldest_age_seconds is {oldest_age_s}"
        ));
    }
    Ok(Sample {
        queue_depth: count("queue_depth")?,
        oldest_age_s,
        placed_total: count("placed_total")?,
        dead_letters: count("dead_letter_depth")?,
        // Older intakes do not expose it: not waiting.
        waiting: value("degraded").is_ok_and(|v| v > 0.0),
    })
}

/// One intake's scrape history.
#[derive(Debug, Clone, Default)]
pub struct IntakeState {
    last: Option<(u64, Sample)>,
    /// `(at, placed_total)` of the successful scrapes of the last [`RATE_WINDOW_MS`].
    placed: VecDeque<(u64, u64)>,
    error: Option<(u64, String)>,
}

impl IntakeState {
    /// Fold the outcome of the scrape made at `at_ms`.
    pub fn observe(&mut self, at_ms: u64, read: Result<Sample, String>) {
        match read {
            Err(e) => self.error = Some((at_ms, e)),
            Ok(s) => {
                self.error = None;
                // A counter that went down: the intake restarted. Its history says
                // nothing about the new process's rate.
                if self.placed.back().is_some_and(|(_, p)| *p > s.placed_total) {
                    self.placed.clear();
                }
                self.placed.push_back((at_ms, s.placed_total));
                while self
                    .placed
                    .front()
                    .is_some_and(|(t, _)| *t + RATE_WINDOW_MS < at_ms)
                {
                    self.placed.pop_front();
                }
                self.last = Some((at_ms, s));
            }
        }
    }

    /// Orders placed per second between the oldest and newest scrape of the window.
    fn drain_rate(&self) -> Option<f64> {
        let (t0, p0) = *self.placed.front()?;
        let (t1, p1) = *self.placed.back()?;
        (t1 > t0).then(|| (p1 - p0) as f64 * 1000.0 / (t1 - t0) as f64)
    }

    /// What status shows for this intake.
    pub fn status(&self, cluster: &str, url: &str) -> IntakeStatus {
        let sample = self.last.map(|(_, s)| s);
        IntakeStatus {
            cluster: cluster.into(),
            url: url.into(),
            queue_depth: sample.map(|s| s.queue_depth),
            oldest_age_s: sample.map(|s| s.oldest_age_s),
            drain_rate_per_s: self.drain_rate(),
            dead_letters: sample.map(|s| s.dead_letters),
            waiting: sample.is_some_and(|s| s.waiting),
            scraped_unix_ms: self.last.map(|(t, _)| t),
            error: self.error.as_ref().map(|(_, e)| e.clone()),
            error_unix_ms: self.error.as_ref().map(|(t, _)| *t),
        }
    }
}

/// Every configured intake's state, in configuration order.
pub struct Intakes {
    sources: Vec<(String, String)>,
    states: Mutex<BTreeMap<String, IntakeState>>,
}

impl Intakes {
    pub fn new(sources: &[IntakeSource]) -> Self {
        Self {
            sources: sources
                .iter()
                .map(|s| (s.cluster.clone(), s.url.clone()))
                .collect(),
            states: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, cluster: &str, at_ms: u64, read: Result<Sample, String>) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.to_string())
            .or_default()
            .observe(at_ms, read);
    }

    /// Every intake, scraped or not yet.
    pub fn status(&self) -> Vec<IntakeStatus> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        self.sources
            .iter()
            .map(|(cluster, url)| {
                states
                    .get(cluster)
                    .map(|s| s.status(cluster, url))
                    .unwrap_or_else(|| IntakeState::default().status(cluster, url))
            })
            .collect()
    }
}

/// Scrape every intake of `settings` until `shutdown` (one task each) and show them in
/// `fleet`'s status. Nothing configured, nothing started.
pub fn spawn(
    settings: &IntakeSettings,
    fleet: &Fleet,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    if settings.sources.is_empty() {
        return Vec::new();
    }
    let intakes = Arc::new(Intakes::new(&settings.sources));
    let view = intakes.clone();
    fleet.attach_intakes(Arc::new(move || view.status()));
    let timeout = settings.timeout.min(settings.every);
    settings
        .sources
        .iter()
        .cloned()
        .map(|src| {
            let (intakes, shutdown, every) = (intakes.clone(), shutdown.clone(), settings.every);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let read = crate::health::probe::get(&src.target, timeout)
                        .await
                        .and_then(|(status, body)| match status {
                            200..=299 => parse(&String::from_utf8_lossy(&body)),
                            s => Err(format!("HTTP {s}")),
                        });
                    if let Err(e) = &read {
                        tracing::debug!(cluster = %src.cluster, url = %src.url, error = %e, "intake scrape");
                    }
                    intakes.observe(&src.cluster, crate::model::now_unix_ms(), read);
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
