//! Saturation scrapes (issue 10 §3, leading indicators): per stack, an optional HTTP
//! endpoint the control service polls for a 0..1 saturation figure (connection-pool use,
//! queue fill, ...), fed to the detector's saturation input on every tick. A figure
//! older than three polls is not fed (a stack that stopped answering is the health
//! checks' business, not a saturation of 0).
//!
//! A source is a plain-HTTP URL and either a JSON pointer (`/pool/in_use_ratio`: the
//! answer is JSON, the value there a number or a numeric string) or a Prometheus
//! text-format metric name (`storefront_saturation`: the first sample of that name,
//! labels ignored). Values are clamped to 0..1.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::brain::clock::{Clock, UnixMs};
use crate::health::config::HttpTarget;

/// Where a stack's saturation is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaturationSource {
    pub stack: String,
    pub target: HttpTarget,
    pub url: String,
    pub read: Read,
}

/// How the answer is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// A JSON pointer into a JSON answer.
    Pointer(String),
    /// A Prometheus text-format metric name.
    Metric(String),
}

impl SaturationSource {
    /// A source from the config's `url` and exactly one of `pointer` or `metric`.
    pub fn new(
        stack: &str,
        url: &str,
        pointer: Option<String>,
        metric: Option<String>,
    ) -> Result<Self, String> {
        let target = HttpTarget::parse(url).map_err(|e| format!("{stack}.url: {e}"))?;
        let read = match (pointer, metric) {
            (Some(p), None) if p.is_empty() || p.starts_with('/') => Read::Pointer(p),
            (Some(p), None) => return Err(format!("{stack}.pointer: {p:?} must start with /")),
            (None, Some(m)) if !m.is_empty() && !m.contains(char::is_whitespace) => Read::Metric(m),
            (None, Some(m)) => return Err(format!("{stack}.metric: {m:?} is not a metric name")),
            _ => return Err(format!("{stack}: give exactly one of pointer or metric")),
        };
        Ok(Self {
            stack: stack.into(),
            target,
            url: url.into(),
            read,
        })
    }

    /// The saturation in an answer body.
    pub fn value(&self, body: &[u8]) -> Result<f64, String> {
        let v = match &self.read {
            Read::Pointer(p) => {
                let doc: serde_json::Value =
                    serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
                let at = doc.pointer(p).ok_or_else(|| format!("nothing at {p}"))?;
                match at {
                    serde_json::Value::Number(n) => n.as_f64(),
                    serde_json::Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| format!("{p} is not a number: {at}"))?
            }
            Read::Metric(m) => prometheus_value(&String::from_utf8_lossy(body), m)
                .ok_or_else(|| format!("no sample of {m}"))?,
        };
        if !v.is_finite() {
            return Err(format!("{v} is not a finite number"));
        }
        Ok(v.clamp(0.0, 1.0))
    }
}

/// The first sample of `name` in Prometheus text format (`name 0.5`, `name{a="b"} 0.5`,
/// optionally followed by a timestamp).
pub(crate) fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = if let Some(labels) = rest.strip_prefix('{') {
                &labels[labels.find('}')? + 1..]
            } else if rest.starts_with(char::is_whitespace) {
                rest
            } else {
                return None; // another metric sharing the prefix
            };
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// The latest saturation per stack, with when it was read.
#[derive(Default)]
pub struct Saturation {
    latest: Mutex<BTreeMap<String, (f64, UnixMs)>>,
    /// Last error per stack (for status and logs).
    errors: Mutex<BTreeMap<String, String>>,
}

impl Saturation {
    pub fn set(&self, stack: &str, value: f64, at: UnixMs) {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stack.into(), (value, at));
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(stack);
    }

    fn failed(&self, stack: &str, why: String) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stack.into(), why);
    }

    /// Values read after `since`: the detector's saturation input.
    pub fn fresh(&self, since: UnixMs) -> BTreeMap<String, f64> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, (_, at))| *at > since)
            .map(|(k, (v, _))| (k.clone(), *v))
            .collect()
    }

    /// Every stack's latest value, when it was read, and its last error.
    pub fn report(&self) -> serde_json::Value {
        let latest = self
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        serde_json::json!({ "latest": latest, "errors": errors })
    }
}

/// Poll every source every `every` until `shutdown`.
pub fn spawn(
    sources: Vec<SaturationSource>,
    every: Duration,
    sink: Arc<Saturation>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    sources
        .into_iter()
        .map(|src| {
            let (sink, clock, shutdown) = (sink.clone(), clock.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let timeout = every.min(Duration::from_secs(5));
                    let read = crate::health::probe::get(&src.target, timeout)
                        .await
                        .and_then(|(status, body)| match status {
                            200..=299 => src.value(&body),
                            s => Err(format!("HTTP {s}")),
                        });
                    match read {
                        Ok(v) => sink.set(&src.stack, v, clock.now_ms()),
                        Err(e) => {
                            tracing::debug!(stack = %src.stack, url = %src.url, error = %e, "saturation scrape");
                            sink.failed(&src.stack, e);
                        }
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(pointer: Option<&str>, metric: Option<&str>) -> Result<SaturationSource, String> {
        SaturationSource::new(
            "blue",
            "http://127.0.0.1:8081/admin/stats",
            pointer.map(str::to_string),
            metric.map(str::to_string),
        )
    }

    #[test]
    fn a_json_pointer_reads_a_number_or_a_numeric_string() {
        let s = src(Some("/pool/in_use_ratio"), None).unwrap();
        assert_eq!(s.value(br#"{"pool":{"in_use_ratio":0.42}}"#), Ok(0.42));
        assert_eq!(s.value(br#"{"pool":{"in_use_ratio":"0.9"}}"#), Ok(0.9));
        assert_eq!(
            s.value(br#"{"pool":{"in_use_ratio":3}}"#),
            Ok(1.0),
            "clamped"
        );
        assert!(s
            .value(br#"{"pool":{}}"#)
            .unwrap_err()
            .contains("nothing at"));
        assert!(s.value(br#"{"pool":{"in_use_ratio":true}}"#).is_err());
        assert!(s.value(b"<html>").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn a_prometheus_metric_reads_its_first_sample() {
        let s = src(None, Some("pool_use")).unwrap();
        let text = "# HELP pool_use Pool use.\n# TYPE pool_use gauge\n\
                    pool_use_max 1\npool_use{pool=\"db\"} 0.75 1700000000000\npool_use 0.1\n";
        assert_eq!(s.value(text.as_bytes()), Ok(0.75));
        assert_eq!(s.value(b"pool_use 0.25\n"), Ok(0.25));
        assert!(
            s.value(b"pool_use_max 1\n").is_err(),
            "a longer name is another metric"
        );
        assert!(s.value(b"pool_use NaN\n").is_err());
    }

    #[test]
    fn a_source_needs_a_url_and_exactly_one_way_to_read() {
        assert!(src(None, None).unwrap_err().contains("exactly one"));
        assert!(src(Some("/a"), Some("b"))
            .unwrap_err()
            .contains("exactly one"));
        assert!(src(Some("a"), None)
            .unwrap_err()
            .contains("must start with /"));
        assert!(src(None, Some("a b")).is_err());
        assert!(SaturationSource::new("x", "ftp://h/", Some("/a".into()), None).is_err());
    }

    #[test]
    fn only_fresh_values_feed_the_detector() {
        let s = Saturation::default();
        s.set("blue", 0.9, 1_000);
        s.set("green", 0.2, 5_000);
        assert_eq!(s.fresh(2_000), BTreeMap::from([("green".to_string(), 0.2)]));
        s.failed("green", "HTTP 503".into());
        assert_eq!(s.report()["errors"]["green"], "HTTP 503");
    }
}
