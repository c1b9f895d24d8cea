//! Degraded mode as the control service sees it (docs/degraded-mode.md): a rule whose
//! route names a queue fallback and has no stack left that it may use — every target and
//! fallback target (within the route's residency) is unhealthy, drained, evacuating,
//! deregistered or at weight 0 in the version in force. Envoys then queue that rule's
//! requests at the intake instead of failing them; `switchyard status` and
//! `GET /api/v1/status` say so.
//!
//! Judged from the stacks' states the control service sets (health checks, the fast path,
//! operators), not from each Envoy's local circuit breakers: a stack that only trips
//! breakers on some nodes is queued by those nodes without showing here.

use serde::{Deserialize, Serialize};
use switchyard_filter::policy::{Policy, Route};

use crate::model::VersionRecord;

/// One rule in degraded mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DegradedRoute {
    /// The rule id (`default` for the default route).
    pub rule: String,
    /// The intake cluster its requests are queued at.
    pub queue: String,
    /// Why each stack the route may use is out, e.g. `blue: unhealthy`.
    pub reason: String,
}

/// One intake's queue as the control service last scraped it from the intake's
/// Prometheus text (`[degraded] intakes`, docs/degraded-mode.md). The figures are those
/// of the last successful scrape; `error` says the latest attempt failed and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntakeStatus {
    /// The intake cluster a route's queue fallback names (e.g. `intake_us`).
    pub cluster: String,
    /// Where its metrics are scraped.
    pub url: String,
    /// Orders queued, not yet placed or dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    /// Age of the oldest queued order, seconds (0 with an empty queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_s: Option<f64>,
    /// Orders placed per second over the last minute of scrapes (absent until two
    /// scrapes are apart in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_rate_per_s: Option<f64>,
    /// Orders in the dead-letter stream (failed for good, with their reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
    /// The intake's drainer finds no eligible checkout stack (it waits, retrying).
    #[serde(default)]
    pub waiting: bool,
    /// When the figures above were read (Unix ms); absent before the first success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scraped_unix_ms: Option<u64>,
    /// Why the latest scrape failed; absent when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the latest scrape failed (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_unix_ms: Option<u64>,
}

/// Every rule of `policy` in degraded mode under the stack states of `record`.
pub fn degraded_routes(policy: &Policy, record: &VersionRecord) -> Vec<DegradedRoute> {
    policy
        .rules
        .iter()
        .filter_map(|rule| {
            let queue = rule.route.queue.as_ref()?;
            let out = unusable(policy, &rule.route, record)?;
            Some(DegradedRoute {
                rule: rule.id.clone(),
                queue: queue.cluster.clone(),
                reason: out.join(", "),
            })
        })
        .collect()
}

/// Why every stack `route` may use is out, or `None` when one is usable.
fn unusable(policy: &Policy, route: &Route, record: &VersionRecord) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for t in route.targets.iter().chain(&route.fallback) {
        let Some(stack) = policy.stacks.get(t.stack) else {
            continue;
        };
        if route.residency & (1u64 << t.stack) == 0 {
            continue;
        }
        let why = match record.stack(&stack.name) {
            None => "not registered".to_string(),
            Some(s) if !s.eligible() => {
                if !s.healthy {
                    "unhealthy".to_string()
                } else {
                    "not eligible".to_string()
                }
            }
            Some(s) if s.evacuating => "evacuating".to_string(),
            Some(s) if s.draining => "draining".to_string(),
            Some(s) if s.effective_weight_percent() == 0 || t.weight == 0 => "weight 0".to_string(),
            Some(_) => return None,
        };
        let line = format!("{}: {why}", stack.name);
        if !out.contains(&line) {
            out.push(line);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
