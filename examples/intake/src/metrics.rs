//! The intake's Prometheus metrics: counters kept here, queue gauges read from the broker
//! at scrape time (the broker is the truth about depth and age).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::broker::Broker;

/// Why an order was refused (label `reason`).
#[derive(Debug, Clone, Copy)]
pub enum Rejected {
    Method = 0,
    TooLarge,
    BadKey,
    NotJson,
}
const REJECTED: [&str; 4] = ["method", "too_large", "bad_key", "not_json"];

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    unavailable: AtomicU64,
    placed: AtomicU64,
    dead_letters: AtomicU64,
    degraded: AtomicU64,
    rejected: [AtomicU64; 4],
}

pub struct Metrics {
    region: String,
    drain_rate: f64,
    c: Counters,
}

impl Metrics {
    pub fn new(region: &str, drain_rate: f64) -> Self {
        Self {
            region: region.to_string(),
            drain_rate,
            c: Counters::default(),
        }
    }
    pub fn accepted(&self) {
        self.c.accepted.fetch_add(1, Relaxed);
    }
    pub fn duplicate(&self) {
        self.c.duplicates.fetch_add(1, Relaxed);
    }
    pub fn unavailable(&self) {
        self.c.unavailable.fetch_add(1, Relaxed);
    }
    pub fn placed(&self) {
        self.c.placed.fetch_add(1, Relaxed);
    }
    pub fn dead_letter(&self) {
        self.c.dead_letters.fetch_add(1, Relaxed);
    }
    pub fn rejected(&self, why: Rejected) {
        self.c.rejected[why as usize].fetch_add(1, Relaxed);
    }
    pub fn set_degraded(&self, yes: bool) {
        self.c.degraded.store(u64::from(yes), Relaxed);
    }

    /// The exposition text. Queue gauges are -1 when the broker cannot be asked.
    pub async fn render(&self, broker: &Broker) -> String {
        let (depth, age) = broker.depth(&broker.stream).await.unwrap_or((u64::MAX, 0));
        let (dead, _) = broker
            .depth(&broker.dead_stream)
            .await
            .unwrap_or((u64::MAX, 0));
        let gauge = |n: u64| if n == u64::MAX { -1.0 } else { n as f64 };
        let r = &self.region;
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP switchyard_intake_{name} {help}");
            let _ = writeln!(out, "# TYPE switchyard_intake_{name} {kind}");
            let _ = writeln!(out, "switchyard_intake_{name}{{region=\"{r}\"}} {value}");
        };
        let c = &self.c;
        put(
            "accepted_total",
            "counter",
            "Orders persisted and answered 202.",
            c.accepted.load(Relaxed) as f64,
        );
        put(
            "duplicates_total",
            "counter",
            "Retries of an order already queued (same idempotency key): answered 202, queued once.",
            c.duplicates.load(Relaxed) as f64,
        );
        put(
            "unavailable_total",
            "counter",
            "Orders answered 503 because the broker did not confirm them (nothing accepted).",
            c.unavailable.load(Relaxed) as f64,
        );
        put(
            "queue_depth",
            "gauge",
            "Orders queued and not yet placed or dead-lettered.",
            gauge(depth),
        );
        put(
            "queue_oldest_age_seconds",
            "gauge",
            "Age of the oldest queued order.",
            age as f64 / 1000.0,
        );
        put(
            "drain_rate_limit",
            "gauge",
            "Configured drain rate, orders per second.",
            self.drain_rate,
        );
        put(
            "placed_total",
            "counter",
            "Orders placed by the drainer (rate() of it is the drain rate).",
            c.placed.load(Relaxed) as f64,
        );
        put(
            "dead_letters_total",
            "counter",
            "Orders moved to the dead-letter stream.",
            c.dead_letters.load(Relaxed) as f64,
        );
        put(
            "dead_letter_depth",
            "gauge",
            "Orders in the dead-letter stream.",
            gauge(dead),
        );
        put(
            "degraded",
            "gauge",
            "1 while the drainer finds no eligible checkout stack.",
            c.degraded.load(Relaxed) as f64,
        );
        let _ = writeln!(out, "# HELP switchyard_intake_rejected_total Orders refused with a 4xx, by reason (nothing queued).");
        let _ = writeln!(out, "# TYPE switchyard_intake_rejected_total counter");
        for (i, why) in REJECTED.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchyard_intake_rejected_total{{region=\"{r}\",reason=\"{why}\"}} {}",
                c.rejected[i].load(Relaxed)
            );
        }
        out
    }
}
