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
