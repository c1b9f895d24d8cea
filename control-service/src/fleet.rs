//! The Envoys (nodes) connected to this control service: their Watch streams, the
//! versions they were sent and acknowledged, and the latest telemetry each reported.
//!
//! In memory only: after a restart, nodes reconnect and report again within seconds.
//! Telemetry is kept as the latest batch per node; later work (SLO-gated rollouts,
//! incident workflow) reads it from here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::{Deserialize, Serialize};

use crate::brain::series::{NodeBatch, Series};
use crate::brain::signals::StackWindow;
use crate::model::now_unix_ms;

/// A node's latest window counts only while it is this recent.
pub const TELEMETRY_FRESH_MS: u64 = 15_000;
/// Above this many tracked nodes, nodes disconnected for longer than
/// [`FORGET_AFTER_MS`] are forgotten.
const MAX_NODES: usize = 10_000;
const FORGET_AFTER_MS: u64 = 600_000;
/// Bounds on what one telemetry batch may carry.
pub const MAX_STACKS_PER_BATCH: usize = 256;
pub const MAX_NAME_LEN: usize = 256;
/// Bounds on the running totals: stacks, and KPI names per stack.
const MAX_TOTAL_STACKS: usize = 256;
const MAX_TOTAL_KPIS: usize = 64;

/// Counters of one stack over one window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackCounters {
    pub requests: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub latency_ms_sum: u64,
    pub affinity_hit: u64,
    pub affinity_miss: u64,
    pub affinity_forged: u64,
    pub local_replies: u64,
}

impl StackCounters {
    pub fn add(&mut self, o: &StackCounters) {
        self.requests = self.requests.saturating_add(o.requests);
        self.status_2xx = self.status_2xx.saturating_add(o.status_2xx);
        self.status_4xx = self.status_4xx.saturating_add(o.status_4xx);
        self.status_5xx = self.status_5xx.saturating_add(o.status_5xx);
        self.latency_ms_sum = self.latency_ms_sum.saturating_add(o.latency_ms_sum);
        self.affinity_hit = self.affinity_hit.saturating_add(o.affinity_hit);
        self.affinity_miss = self.affinity_miss.saturating_add(o.affinity_miss);
        self.affinity_forged = self.affinity_forged.saturating_add(o.affinity_forged);
        self.local_replies = self.local_replies.saturating_add(o.local_replies);
    }
}

/// Everything the nodes reported for one stack since this control service started:
/// monotonic counters for Prometheus (`/metrics`), which `rate()` turns into rates and
/// which add up over control-service replicas (each node reports to one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackTotals {
    pub requests: u64,
    /// 5xx responses and resets.
    pub errors: u64,
    /// Count per KPI the policy declares.
    pub kpis: BTreeMap<String, u64>,
}

/// One telemetry batch as received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Telemetry {
    pub received_unix_ms: u64,
    pub window_end_unix_ms: u64,
    pub window_ms: u32,
    pub dropped: u64,
    pub stacks: BTreeMap<String, StackCounters>,
}

/// What the control service knows about one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    pub connected: bool,
    pub streams: u32,
    pub connected_since_unix_ms: u64,
    pub disconnected_unix_ms: u64,
    pub applied_version: u64,
    pub last_ack_unix_ms: u64,
    pub sent_version: u64,
    pub last_report_unix_ms: u64,
    pub peer: String,
    pub telemetry: Option<Telemetry>,
}

/// A stack's latest window of the brain's series (`GET /api/v1/status`, `stacks`):
/// latency percentiles and KPI counts over every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StackLatest {
    /// Window start (Unix ms) and length; the newest window may still be filling.
    pub window_start_unix_ms: u64,
    pub window_ms: u64,
    pub requests: u64,
    pub errors: u64,
    /// Latency percentiles (ms) of the sampled responses; `null` without samples.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Count per KPI declared in the policy.
    pub kpis: BTreeMap<String, u64>,
}

impl StackLatest {
    pub fn of(w: &StackWindow) -> Self {
        Self {
            window_start_unix_ms: w.start_ms,
            window_ms: w.window_ms,
            requests: w.requests,
            errors: w.errors,
            p50_ms: w.latency.quantile_ms(0.50),
            p95_ms: w.latency.quantile_ms(0.95),
            p99_ms: w.latency.quantile_ms(0.99),
            kpis: w.kpis.clone(),
        }
    }
}

/// A stack's health-check state as status shows it (from the health monitor, when the
/// config has a `[health]` section).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackHealthView {
    /// `healthy`, `degraded` (an upper layer is down: for a human), `hard_down` (an
    /// infrastructure or component check is down, or breakers are open on most nodes:
    /// the fast path evacuates) or `unknown` (no check has an opinion yet).
    pub verdict: String,
    /// The layers with a failing check, e.g. `component`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_layers: Vec<String>,
    /// Why it is not healthy: each failing check's last result, or the breaker counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
}

/// Each stack's health, when the health monitor runs (`None` = nothing speaks about it).
pub type HealthFeed = Arc<dyn Fn(&str) -> Option<StackHealthView> + Send + Sync>;
/// Every configured intake's last scrape.
pub type IntakeFeed = Arc<dyn Fn() -> Vec<crate::degraded::IntakeStatus> + Send + Sync>;

/// The fleet as every edge describes it: `GET /api/v1/status`, `switchyard --json status`
/// (converted from the gRPC `StatusResponse`) and the console to come. One schema,
/// documented in control-service/README.md ("Status JSON").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The version in force (0 = no policy yet).
    pub current_version: u64,
    pub started_unix_ms: u64,
    /// Store backend and location, e.g. `redb:/var/lib/switchyard/switchyard.redb`.
    pub store: String,
    /// Open Watch streams, over every node.
    pub watch_streams: u64,
    /// Connected nodes that applied the current version.
    pub nodes_current: u64,
    /// Every node known, sorted by node id.
    pub nodes: Vec<NodeView>,
    /// Per stack, its latest window of the brain's series (HTTP status only; absent
    /// when no series runs or no window holds data).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stacks: BTreeMap<String, StackLatest>,
    /// Rules in degraded mode: no stack they may use is left, so Envoys queue their
    /// requests at the intake (docs/degraded-mode.md). Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<crate::degraded::DegradedRoute>,
    /// The replica that answered (`[replica] id`).
    #[serde(default)]
    pub replica_id: String,
    /// Whether it leads (runs the background work); always true alone on redb.
    #[serde(default)]
    pub leader: bool,
    /// Per configured intake (`[degraded] intakes`), its queue as last scraped: depth,
    /// oldest age, drain rate, dead letters, or the scrape error. Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intakes: Vec<crate::degraded::IntakeStatus>,
    /// Per stack of the current policy, its health-check state. Absent when the control
    /// service runs no health checks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health: BTreeMap<String, StackHealthView>,
}

impl FleetStatus {
    /// The status from the nodes; the counts are derived here, once, for every edge.
    pub fn new(
        current_version: u64,
        started_unix_ms: u64,
        store: String,
        mut nodes: Vec<NodeView>,
    ) -> Self {
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let nodes_current = nodes
            .iter()
            .filter(|n| n.connected && current_version != 0 && n.applied_version == current_version)
            .count() as u64;
        let watch_streams = nodes.iter().map(|n| u64::from(n.streams)).sum();
        Self {
            current_version,
            started_unix_ms,
            store,
            watch_streams,
            nodes_current,
            nodes,
            stacks: BTreeMap::new(),
            degraded: Vec::new(),
            replica_id: String::new(),
            leader: false,
            intakes: Vec::new(),
            health: BTreeMap::new(),
        }
    }
}

/// Registry of nodes. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Fleet {
    nodes: Arc<Mutex<HashMap<String, NodeView>>>,
    /// The brain's time series, once the server attached it: reports are folded into it.
    series: Arc<OnceLock<Arc<Series>>>,
    /// The health monitor's verdicts, once it runs.
    health: Arc<OnceLock<HealthFeed>>,
    /// The intakes' scrapes, once they run.
    intakes: Arc<OnceLock<IntakeFeed>>,
    /// Per stack, every batch's counts added up.
    totals: Arc<Mutex<BTreeMap<String, StackTotals>>>,
}

/// One open Watch stream; the node counts as connected while any of its streams is.
pub struct StreamGuard {
    fleet: Fleet,
    node_id: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut nodes = self.fleet.lock();
        if let Some(n) = nodes.get_mut(&self.node_id) {
            n.streams = n.streams.saturating_sub(1);
            if n.streams == 0 {
                n.connected = false;
                n.disconnected_unix_ms = now_unix_ms();
            }
        }
    }
}

impl StreamGuard {
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

impl Fleet {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, NodeView>> {
        // Every update below is a few field stores; a poisoned map is still consistent.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry<'a>(nodes: &'a mut HashMap<String, NodeView>, node_id: &str) -> &'a mut NodeView {
        if !nodes.contains_key(node_id) && nodes.len() >= MAX_NODES {
            let now = now_unix_ms();
            nodes.retain(|_, n| {
                n.connected || now.saturating_sub(n.disconnected_unix_ms) < FORGET_AFTER_MS
            });
        }
        nodes
            .entry(node_id.to_string())
            .or_insert_with(|| NodeView {
                node_id: node_id.to_string(),
                ..NodeView::default()
            })
    }

    /// A Watch stream opened. The node counts as having applied `last_applied_version`.
    pub fn connect(&self, node_id: &str, peer: &str, last_applied_version: u64) -> StreamGuard {
        let now = now_unix_ms();
        let mut nodes = self.lock();
        let n = Self::entry(&mut nodes, node_id);
        if n.streams == 0 {
            n.connected_since_unix_ms = now;
        }
        n.streams += 1;
        n.connected = true;
        n.peer = peer.to_string();
        n.applied_version = last_applied_version;
        drop(nodes);
        StreamGuard {
            fleet: self.clone(),
            node_id: node_id.to_string(),
        }
    }

    /// A snapshot of `version` was handed to the node's stream.
    pub fn sent(&self, node_id: &str, version: u64) {
        if let Some(n) = self.lock().get_mut(node_id) {
            n.sent_version = version;
        }
    }

    /// The node acknowledged that it applied `version`.
    pub fn ack(&self, node_id: &str, version: u64) {
        if let Some(n) = self.lock().get_mut(node_id) {
            n.applied_version = version;
            n.last_ack_unix_ms = now_unix_ms();
        }
    }

    /// Keep a node's latest telemetry batch.
    pub fn report(&self, node_id: &str, mut telemetry: Telemetry) {
        let now = now_unix_ms();
        telemetry.received_unix_ms = now;
        let mut nodes = self.lock();
        let n = Self::entry(&mut nodes, node_id);
        n.last_report_unix_ms = now;
        n.telemetry = Some(telemetry);
    }

    /// Add a node's batch to the running totals (every batch counts, late or not: the
    /// totals are what was reported, not what a window holds).
    pub fn count(&self, batch: &NodeBatch) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        for s in &batch.stacks {
            if !totals.contains_key(&s.stack) && totals.len() >= MAX_TOTAL_STACKS {
                continue;
            }
            let t = totals.entry(s.stack.clone()).or_default();
            t.requests = t.requests.saturating_add(s.requests);
            t.errors = t.errors.saturating_add(s.errors);
            for (k, v) in &s.kpis {
                if let Some(c) = t.kpis.get_mut(k) {
                    *c = c.saturating_add(*v);
                } else if t.kpis.len() < MAX_TOTAL_KPIS {
                    t.kpis.insert(k.clone(), *v);
                }
            }
        }
    }

    /// Per stack, everything reported since start ([`Fleet::count`]).
    pub fn totals(&self) -> BTreeMap<String, StackTotals> {
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Attach the series reports are folded into (once; later calls are ignored).
    pub fn attach_series(&self, series: Arc<Series>) {
        let _ = self.series.set(series);
    }

    /// The series, if attached.
    pub fn series(&self) -> Option<&Arc<Series>> {
        self.series.get()
    }

    /// Attach the health monitor's verdicts (once; later calls are ignored).
    pub fn attach_health(&self, feed: HealthFeed) {
        let _ = self.health.set(feed);
    }

    /// Attach the intakes' scrapes (once; later calls are ignored).
    pub fn attach_intakes(&self, feed: IntakeFeed) {
        let _ = self.intakes.set(feed);
    }

    /// A stack's health-check state: `None` without a health monitor; `unknown` when
    /// the monitor runs but nothing speaks about the stack.
    pub fn stack_health(&self, stack: &str) -> Option<StackHealthView> {
        let feed = self.health.get()?;
        Some(feed(stack).unwrap_or_else(|| StackHealthView {
            verdict: "unknown".into(),
            ..Default::default()
        }))
    }

    /// `status` with what the control service observes beside the nodes: the latest
    /// series window and the health-check state of each named stack (the current
    /// policy's), and every intake's last scrape. What both edges report. Reads the
    /// store: call it off the async workers.
    pub fn with_series(&self, mut status: FleetStatus, stacks: &[String]) -> FleetStatus {
        status.stacks = self.latest_windows(stacks.iter().map(String::as_str));
        status.health = stacks
            .iter()
            .filter_map(|s| Some((s.clone(), self.stack_health(s)?)))
            .collect();
        status.intakes = self.intakes.get().map(|f| f()).unwrap_or_default();
        status
    }

    /// The latest window of each named stack that has one (from the series).
    pub fn latest_windows<'a>(
        &self,
        stacks: impl IntoIterator<Item = &'a str>,
    ) -> BTreeMap<String, StackLatest> {
        let Some(series) = self.series() else {
            return BTreeMap::new();
        };
        stacks
            .into_iter()
            .filter_map(|name| match series.latest(name, 1) {
                Ok(w) => w.last().map(|w| (name.to_string(), StackLatest::of(w))),
                Err(e) => {
                    tracing::warn!(stack = name, error = %e, "cannot read the series");
                    None
                }
            })
            .collect()
    }

    /// Every node known, sorted by node id.
    pub fn nodes(&self) -> Vec<NodeView> {
        let mut v: Vec<NodeView> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    /// Per stack, the sum of the latest fresh window of every node.
    pub fn stack_totals(&self) -> BTreeMap<String, StackCounters> {
        let now = now_unix_ms();
        let mut out: BTreeMap<String, StackCounters> = BTreeMap::new();
        for n in self.lock().values() {
            let Some(t) = &n.telemetry else { continue };
            if now.saturating_sub(t.received_unix_ms) > TELEMETRY_FRESH_MS {
                continue;
            }
            for (stack, c) in &t.stacks {
                out.entry(stack.clone()).or_default().add(c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_is_connected_while_any_stream_is_open() {
        let fleet = Fleet::new();
        let a = fleet.connect("envoy-1", "127.0.0.1:1", 3);
        let b = fleet.connect("envoy-1", "127.0.0.1:2", 3);
        assert_eq!(fleet.nodes()[0].streams, 2);
        drop(a);
        assert!(fleet.nodes()[0].connected);
        drop(b);
        let n = &fleet.nodes()[0];
        assert!(!n.connected);
        assert!(n.disconnected_unix_ms > 0);
    }

    #[test]
    fn acks_and_reports_are_recorded() {
        let fleet = Fleet::new();
        let _g = fleet.connect("envoy-1", "p", 0);
        fleet.sent("envoy-1", 4);
        fleet.ack("envoy-1", 4);
        let mut t = Telemetry::default();
        t.stacks.insert(
            "blue".into(),
            StackCounters {
                requests: 10,
                status_5xx: 1,
                ..Default::default()
            },
        );
        fleet.report("envoy-1", t.clone());
        fleet.report("envoy-2", t);
        let nodes = fleet.nodes();
        assert_eq!(nodes[0].applied_version, 4);
        assert_eq!(nodes[0].sent_version, 4);
        assert!(nodes[0].last_report_unix_ms > 0);
        assert!(!nodes[1].connected);
        assert_eq!(fleet.stack_totals()["blue"].requests, 20);
    }

    #[test]
    fn totals_add_up_every_batch_and_kpi() {
        use crate::brain::series::StackSample;
        let fleet = Fleet::new();
        let sample = |requests, errors, orders| StackSample {
            stack: "blue".into(),
            requests,
            errors,
            kpis: [("orders".to_string(), orders)].into(),
            ..Default::default()
        };
        let batch = |s: Vec<StackSample>| NodeBatch {
            node_id: "envoy-1".into(),
            window_end_ms: 0,
            stacks: s,
        };
        fleet.count(&batch(vec![sample(10, 1, 2)]));
        fleet.count(&batch(vec![sample(5, 0, 1), sample(1, 1, 0)]));
        let t = &fleet.totals()["blue"];
        assert_eq!((t.requests, t.errors), (16, 2));
        assert_eq!(t.kpis["orders"], 3);
    }
}
