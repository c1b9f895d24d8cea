//! The control service's Prometheus exposition (`GET /metrics`, open like `/healthz`: no
//! token). Two parts:
//!
//! - its own state: the version in force, Watch streams, nodes, whether this replica
//!   leads, and each stack's routing state (gauges);
//! - per stack, the running totals of what the Envoys reported since this process
//!   started (counters): requests, errors and every KPI the policy declares. The KPI
//!   counters exist only here (the filter reports KPIs to the control service, not to
//!   Envoy's stats); `examples/prometheus` turns them into KPI rates. Per-stack error
//!   rate and latency percentiles come from every Envoy's own `/stats/prometheus`.
//!
//! It only reads; it never changes anything. `docs/observability.md` lists every series.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;

use crate::control::Control;
use crate::fleet::{StackCounters, StackTotals};
use crate::model::StackRuntime;
use crate::net::{Connections, ListenerStats};

/// `GET /metrics`. The listeners' connection counters come as an extension (the
/// server adds it; a router built without it shows none).
pub async fn serve(
    State(control): State<Arc<Control>>,
    listeners: Option<axum::Extension<Arc<Connections>>>,
) -> impl IntoResponse {
    let mut text = render(&control);
    if let Some(axum::Extension(l)) = listeners {
        let mut out = Exposition(text);
        connections(&mut out, &l.listeners());
        text = out.0;
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

/// The whole exposition.
pub fn render(control: &Control) -> String {
    let mut out = Exposition::default();
    state(&mut out, control);
    let fleet = control.fleet();
    window(&mut out, &fleet.stack_totals());
    // Every stack of the policy starts at 0, so `rate()` sees its first reported requests.
    let mut totals = fleet.totals();
    for s in control.current().iter().flat_map(|c| &c.record.stacks) {
        totals.entry(s.name.clone()).or_default();
    }
    reported(&mut out, &totals);
    out.0
}

/// Prometheus text format, one metric family at a time.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// A family: `# HELP`, `# TYPE`, then one line per (labels, value).
    fn family<V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (String, V)>,
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "{name}{labels} {v}");
        }
    }
}

/// Escape a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn stack_label(stack: &str) -> String {
    format!("{{stack=\"{}\"}}", label(stack))
}

/// The version, streams, nodes and each stack's routing state.
fn state(out: &mut Exposition, control: &Control) {
    let current = control.current();
    let version = current.as_ref().map(|c| c.record.version).unwrap_or(0);
    let nodes = control.fleet().nodes();
    let connected = nodes.iter().filter(|n| n.connected).count();
    let on_current = nodes
        .iter()
        .filter(|n| n.connected && version != 0 && n.applied_version == version)
        .count();
    let one = |v: f64| [(String::new(), v)];
    out.family(
        "switchyard_control_version",
        "gauge",
        "Current version (policy and stack changes share one sequence).",
        one(version as f64),
    );
    out.family(
        "switchyard_control_watch_streams",
        "gauge",
        "Open Watch streams.",
        one(control.subscribers() as f64),
    );
    out.family(
        "switchyard_control_nodes_connected",
        "gauge",
        "Nodes (Envoys) with an open Watch stream.",
        one(connected as f64),
    );
    out.family(
        "switchyard_control_nodes_on_current_version",
        "gauge",
        "Connected nodes whose acknowledged version is the current one.",
        one(on_current as f64),
    );
    out.family(
        "switchyard_control_started_unix_seconds",
        "gauge",
        "When this control service started.",
        one(control.started_unix_ms() as f64 / 1000.0),
    );
    out.family(
        "switchyard_control_leader",
        "gauge",
        "1 while this replica leads (runs health checks, rollouts, incident timers), else 0.",
        [(
            format!("{{replica=\"{}\"}}", label(control.role().id())),
            if control.role().is_leader() { 1.0 } else { 0.0 },
        )],
    );
    let Some(c) = &current else { return };
    let stacks = &c.record.stacks;
    let per = |f: &dyn Fn(&StackRuntime) -> f64| -> Vec<(String, f64)> {
        stacks
            .iter()
            .map(|s| (stack_label(&s.name), f(s)))
            .collect()
    };
    out.family(
        "switchyard_control_stack_effective_weight_percent",
        "gauge",
        "Weight factor Envoys apply to new visitors (0 while draining, evacuating, unhealthy or deregistered).",
        per(&|s| f64::from(s.effective_weight_percent())),
    );
    out.family(
        "switchyard_control_stack_healthy",
        "gauge",
        "1 if the stack is healthy and registered.",
        per(&|s| if s.eligible() { 1.0 } else { 0.0 }),
    );
    out.family(
        "switchyard_control_stack_draining",
        "gauge",
        "1 if the stack is draining.",
        per(&|s| if s.draining { 1.0 } else { 0.0 }),
    );
    out.family(
        "switchyard_control_stack_evacuating",
        "gauge",
        "1 if everyone is being moved off the stack.",
        per(&|s| if s.evacuating { 1.0 } else { 0.0 }),
    );
}

/// The latest telemetry window, summed over nodes (what `switchyard stacks list` shows).
fn window(out: &mut Exposition, totals: &BTreeMap<String, StackCounters>) {
    let per = |f: &dyn Fn(&StackCounters) -> u64| -> Vec<(String, u64)> {
        totals.iter().map(|(k, c)| (stack_label(k), f(c))).collect()
    };
    out.family(
        "switchyard_control_stack_window_requests",
        "gauge",
        "Requests in the latest telemetry window, summed over nodes.",
        per(&|c| c.requests),
    );
    out.family(
        "switchyard_control_stack_window_5xx",
        "gauge",
        "5xx responses in the latest telemetry window, summed over nodes.",
        per(&|c| c.status_5xx),
    );
}

/// Running totals of every report since start: counters, for `rate()`.
fn reported(out: &mut Exposition, totals: &BTreeMap<String, StackTotals>) {
    out.family(
        "switchyard_control_stack_requests_total",
        "counter",
        "Requests the Envoys reported for the stack since this control service started.",
        totals.iter().map(|(k, t)| (stack_label(k), t.requests)),
    );
    out.family(
        "switchyard_control_stack_errors_total",
        "counter",
        "5xx responses and resets the Envoys reported for the stack since this control service started.",
        totals.iter().map(|(k, t)| (stack_label(k), t.errors)),
    );
    out.family(
        "switchyard_control_stack_kpi_total",
        "counter",
        "Requests counting towards each KPI of the policy (kpis), per stack, since this control service started.",
        totals.iter().flat_map(|(k, t)| {
            t.kpis.iter().map(move |(kpi, n)| {
                (
                    format!("{{stack=\"{}\",kpi=\"{}\"}}", label(k), label(kpi)),
                    *n,
                )
            })
        }),
    );
}

/// Each listener's connections: open, its limit, and the counters of admission.
fn connections(out: &mut Exposition, listeners: &[Arc<ListenerStats>]) {
    let per = |f: &dyn Fn(&ListenerStats) -> u64| -> Vec<(String, u64)> {
        listeners
            .iter()
            .map(|l| (format!("{{listener=\"{}\"}}", label(l.name())), f(l)))
            .collect()
    };
    out.family(
        "switchyard_control_connections_open",
        "gauge",
        "TCP connections the listener holds now (handshaking or served).",
        per(&|l| l.open() as u64),
    );
    out.family(
        "switchyard_control_connections_max",
        "gauge",
        "The listener's connection limit ([limits]).",
        per(&|l| l.max() as u64),
    );
    out.family(
        "switchyard_control_connections_refused_total",
        "counter",
        "Connections accepted and closed at once because the listener was at its limit.",
        per(&|l| l.refused()),
    );
    out.family(
        "switchyard_control_connections_timed_out_total",
        "counter",
        "Connections closed because they sent no byte (or finished no TLS handshake) within first_byte_timeout_ms.",
        per(&|l| l.timed_out()),
    );
    out.family(
        "switchyard_control_accept_errors_total",
        "counter",
        "Failed accept calls (out of file descriptors and the like); the listener backs off up to 1 s.",
        per(&|l| l.accept_errors()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_carry_stack_and_kpi_labels_escaped() {
        let mut totals = BTreeMap::new();
        totals.insert(
            "blue".to_string(),
            StackTotals {
                requests: 12,
                errors: 3,
                kpis: [("orders".to_string(), 4)].into(),
            },
        );
        totals.insert("we\"ird".to_string(), StackTotals::default());
        let mut out = Exposition::default();
        reported(&mut out, &totals);
        let text = out.0;
        for line in [
            "# TYPE switchyard_control_stack_requests_total counter",
            "switchyard_control_stack_requests_total{stack=\"blue\"} 12",
            "switchyard_control_stack_errors_total{stack=\"blue\"} 3",
            "switchyard_control_stack_kpi_total{stack=\"blue\",kpi=\"orders\"} 4",
            "switchyard_control_stack_requests_total{stack=\"we\\\"ird\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
