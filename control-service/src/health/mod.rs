//! Multi-layer active health checks and the fast path (issue 10 §2, paper §8.2).
//!
//! - [`config`]: the `[health]` section of the config file, parsed then compiled.
//! - [`probe`]: one TCP connect or HTTP exchange per check run.
//! - [`eval`]: thresholds, layers, verdicts and the fast path's decisions (pure).
//! - [`residency`]: which residency-bound rules an evacuation strands.
//! - [`feed`]: per-node breaker evidence from the fleet's telemetry windows.
//!
//! The [`Monitor`] runs every check on its own cadence (one tokio task each), feeds the
//! results to the tracker and, after each result and on a short tick, evaluates every
//! stack. A hard-down stack is evacuated at once with no approval (actor
//! `health-check`); that is the only routing change this module ever makes. A stack
//! that recovers is marked recovered and stays evacuated until a human undrains it: the
//! fast path takes a dead stack out, people decide when it is trusted again.
//!
//! Each action is returned as a [`FastPathAction`], logged, kept (the last
//! [`RECENT_ACTIONS`]) and broadcast ([`Monitor::subscribe`]): the hook for the audit
//! chain. The evacuation itself is a version in the history like any stack operation.

pub mod config;
pub mod eval;
pub mod feed;
pub mod probe;
pub mod residency;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::brain::clock::{Clock, UnixMs};
use crate::control::{Change, Control, StackOp};

pub use config::{HealthConfig, Layer};
pub use eval::{CheckState, NodeSample, StackHealth, Verdict};

use eval::{Decision, Observation, StackFacts, Tracker};

/// The actor recorded on every change the fast path makes.
pub const ACTOR: &str = "health-check";
/// How many fast-path actions status keeps.
pub const RECENT_ACTIONS: usize = 32;
/// Evaluate at least this often even without new probe results (breaker telemetry,
/// operator changes, retries of a failed evacuation).
const EVALUATE_EVERY: Duration = Duration::from_millis(250);

/// Per-node breaker evidence: per stack, the current sample of every node with fresh
/// telemetry. Supplied by the server from the fleet's telemetry.
pub type BreakerFeed = Arc<dyn Fn() -> BTreeMap<String, Vec<NodeSample>> + Send + Sync>;

/// What the fast path did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FastPathKind {
    /// The stack was evacuated (a new version).
    Evacuated,
    /// A stack the fast path evacuated passes its checks again; it stays evacuated until
    /// `switchyard stacks undrain`.
    Recovered,
}

/// One fast-path action: what the audit chain records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FastPathAction {
    pub at_unix_ms: UnixMs,
    pub stack: String,
    pub kind: FastPathKind,
    pub actor: String,
    /// The failing (or recovered) layer, or `breakers`.
    pub source: String,
    /// The reason recorded with the change.
    pub reason: String,
    /// The evidence: each failing check with its last result, or the breaker counts.
    pub evidence: Vec<String>,
    /// Residency-bound rules left with no eligible stack (their requests now get the
    /// rule's local reply).
    pub stranded_rules: Vec<String>,
    /// The version the evacuation created (none for a recovery).
    pub version: Option<u64>,
}

/// Everything status shows about health.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub fast_path: bool,
    pub breakers: bool,
    pub stacks: BTreeMap<String, StackHealth>,
    pub checks: Vec<CheckState>,
    pub recent_actions: Vec<FastPathAction>,
}

/// Runs the checks and the fast path.
pub struct Monitor {
    control: Arc<Control>,
    config: HealthConfig,
    clock: Arc<dyn Clock>,
    tracker: Mutex<Tracker>,
    recent: Mutex<VecDeque<FastPathAction>>,
    actions: broadcast::Sender<FastPathAction>,
    breakers: Option<BreakerFeed>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is plain data updates: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Monitor {
    pub fn new(
        control: Arc<Control>,
        config: HealthConfig,
        clock: Arc<dyn Clock>,
        breakers: Option<BreakerFeed>,
    ) -> Arc<Self> {
        let tracker = Tracker::new(&config.checks, config.fast_path, config.breakers);
        Arc::new(Self {
            control,
            config,
            clock,
            tracker: Mutex::new(tracker),
            recent: Mutex::new(VecDeque::new()),
            actions: broadcast::channel(64).0,
            breakers,
        })
    }

    /// Every fast-path action from now on (the audit hook).
    pub fn subscribe(&self) -> broadcast::Receiver<FastPathAction> {
        self.actions.subscribe()
    }

    /// Start one task per check and the evaluator; all stop when `shutdown` is cancelled.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        self.show_in_status();
        let (tx, mut rx) = mpsc::channel::<(usize, Observation)>(1024);
        let mut tasks = Vec::new();
        for (index, spec) in self.config.checks.iter().enumerate() {
            let spec = spec.clone();
            let tx = tx.clone();
            let shutdown = shutdown.clone();
            let clock = self.clock.clone();
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(spec.interval);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = every.tick() => {}
                    }
                    let outcome = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        o = probe::run(&spec.probe, spec.timeout) => o,
                    };
                    let obs = Observation {
                        at_ms: clock.now_ms(),
                        ok: outcome.ok,
                        latency_ms: Some(outcome.latency_ms),
                        detail: outcome.detail,
                    };
                    if tx.send((index, obs)).await.is_err() {
                        return;
                    }
                }
            }));
        }
        drop(tx);
        let me = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(EVALUATE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = rx.recv() => match got {
                        Some((index, obs)) => me.record(index, obs),
                        // No checks (breaker evidence only): just tick.
                        None => {
                            every.tick().await;
                        }
                    },
                    _ = every.tick() => {}
                }
                me.evaluate().await;
            }
        }));
        tasks
    }

    /// Count one probe result.
    pub fn record(&self, index: usize, obs: Observation) {
        let mut t = lock(&self.tracker);
        let name = t.checks().get(index).map(|c| c.name.clone());
        if let (Some(status), Some(name)) = (t.record(index, obs), name) {
            let c = &t.checks()[index];
            let detail = c.last.as_ref().map(|o| o.detail.as_str()).unwrap_or("");
            tracing::info!(check = %name, stack = %c.stack, layer = c.layer.as_str(),
                status = ?status, last = detail, "health check changed");
        }
    }

    /// Evaluate every stack and carry out the fast path's decisions; returns the actions
    /// taken.
    pub async fn evaluate(&self) -> Vec<FastPathAction> {
        let now = self.clock.now_ms();
        let current = self.control.current();
        let samples = match (&self.breakers, self.config.breakers) {
            (Some(feed), true) => feed(),
            _ => BTreeMap::new(),
        };
        let decisions: Vec<Decision> = {
            let mut t = lock(&self.tracker);
            let mut stacks = t.stacks();
            if let Some(c) = &current {
                stacks.extend(c.record.stacks.iter().map(|s| s.name.clone()));
            }
            let mut out = Vec::new();
            for stack in &stacks {
                if self.breakers.is_some() && self.config.breakers {
                    t.breaker_samples(stack, samples.get(stack).map(Vec::as_slice).unwrap_or(&[]));
                }
                let facts = current
                    .as_ref()
                    .and_then(|c| c.record.stack(stack))
                    .map(|s| StackFacts {
                        known: true,
                        evacuating: s.evacuating,
                    })
                    .unwrap_or_default();
                out.extend(t.evaluate(stack, facts, now));
            }
            out
        };
        let mut done = Vec::new();
        for d in decisions {
            match d {
                Decision::Note { stack, message } => {
                    tracing::warn!(%stack, "health: {message}");
                }
                Decision::Recovered { stack, evidence } => {
                    let action = FastPathAction {
                        at_unix_ms: now,
                        stack: stack.clone(),
                        kind: FastPathKind::Recovered,
                        actor: ACTOR.into(),
                        source: "checks".into(),
                        reason: format!(
                            "{stack} passes its health checks again; it stays evacuated until \
                             an operator runs `switchyard stacks undrain {stack}`"
                        ),
                        evidence,
                        stranded_rules: vec![],
                        version: None,
                    };
                    self.publish(&action);
                    done.push(action);
                }
                Decision::Evacuate {
                    stack,
                    source,
                    evidence,
                } => {
                    if let Some(action) = self.evacuate(&stack, source, evidence, now).await {
                        done.push(action);
                    }
                }
            }
        }
        done
    }

    async fn evacuate(
        &self,
        stack: &str,
        source: String,
        evidence: Vec<String>,
        now: UnixMs,
    ) -> Option<FastPathAction> {
        let stranded = self
            .control
            .current()
            .map(|c| residency::stranded_rules(&c.policy_json, &c.record, stack))
            .unwrap_or_default();
        let mut reason = format!("fast path: {source} down: {}", evidence.join("; "));
        if !stranded.is_empty() {
            reason.push_str(&format!(
                "; residency: rule(s) {} have no other eligible stack in their regions and \
                 answer with their local reply",
                stranded.join(", ")
            ));
        }
        let change = Change {
            actor: ACTOR.into(),
            comment: "hard down: evacuated without approval".into(),
            origin: crate::brain::audit::AuditKind::AutomaticAction,
        };
        match self
            .control
            .stack_op(
                stack,
                StackOp::Evacuate {
                    reason: reason.clone(),
                },
                change,
            )
            .await
        {
            Ok(outcome) => {
                lock(&self.tracker).evacuated(stack);
                let action = FastPathAction {
                    at_unix_ms: now,
                    stack: stack.to_string(),
                    kind: FastPathKind::Evacuated,
                    actor: ACTOR.into(),
                    source,
                    reason,
                    evidence,
                    stranded_rules: stranded,
                    version: outcome.changed.then_some(outcome.record.version),
                };
                self.publish(&action);
                Some(action)
            }
            Err(e) => {
                // Retried on the next evaluation.
                tracing::error!(%stack, error = %e, "fast path: evacuation failed; will retry");
                None
            }
        }
    }

    fn publish(&self, action: &FastPathAction) {
        match action.kind {
            FastPathKind::Evacuated => tracing::warn!(
                stack = %action.stack, version = ?action.version,
                stranded_rules = ?action.stranded_rules,
                "fast path: evacuated: {}", action.reason
            ),
            FastPathKind::Recovered => {
                tracing::warn!(stack = %action.stack, "fast path: recovered: {}", action.reason)
            }
        }
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT_ACTIONS {
            recent.pop_front();
        }
        recent.push_back(action.clone());
        // Nobody listening is fine.
        let _ = self.actions.send(action.clone());
    }

    /// One stack's health, if any check or telemetry speaks about it.
    pub fn stack_health(&self, stack: &str) -> Option<StackHealth> {
        let t = lock(&self.tracker);
        t.stacks().contains(stack).then(|| t.health(stack))
    }

    /// From now on status (`switchyard status`, `stacks list`) shows each stack's
    /// verdict from this monitor (done by [`Monitor::spawn`]).
    pub fn show_in_status(self: &Arc<Self>) {
        // Weak: the fleet lives in the control core this monitor holds.
        let me = Arc::downgrade(self);
        self.control
            .fleet()
            .attach_health(Arc::new(move |stack: &str| me.upgrade()?.health_view(stack)));
    }

    /// One stack's verdict and failing layers, as status shows them.
    pub fn health_view(&self, stack: &str) -> Option<crate::fleet::StackHealthView> {
        let h = self.stack_health(stack)?;
        let verdict = match serde_json::to_value(h.verdict) {
            Ok(serde_json::Value::String(v)) => v,
            _ => "unknown".into(),
        };
        let mut failing_layers: Vec<String> = h
            .layers
            .iter()
            .filter(|(_, s)| **s == eval::Status::Down)
            .map(|(l, _)| l.as_str().to_string())
            .collect();
        if h.verdict == Verdict::HardDown && failing_layers.is_empty() {
            // Hard down on telemetry alone: breakers open on most nodes.
            failing_layers.push("breakers".into());
        }
        Some(crate::fleet::StackHealthView {
            verdict,
            failing_layers,
            evidence: h.evidence,
        })
    }

    /// The small per-stack `health` object of `GET /api/v1/stacks`: verdict, layer
    /// states and the fast path's state; `null` for a stack nothing speaks about.
    pub fn stack_summary(&self, stack: &str) -> serde_json::Value {
        match self.stack_health(stack) {
            None => serde_json::Value::Null,
            Some(h) => serde_json::json!({
                "verdict": h.verdict,
                "layers": h.layers,
                "fast_path": h.fast_path,
            }),
        }
    }

    /// Everything, for `GET /api/v1/health`.
    pub fn report(&self) -> HealthReport {
        let t = lock(&self.tracker);
        HealthReport {
            fast_path: self.config.fast_path,
            breakers: self.config.breakers,
            stacks: t
                .stacks()
                .into_iter()
                .map(|s| {
                    let h = t.health(&s);
                    (s, h)
                })
                .collect(),
            checks: t.checks().to_vec(),
            recent_actions: lock(&self.recent).iter().cloned().collect(),
        }
    }
}

/// `GET /api/v1/health`: every stack's layers and verdict, every check's last result,
/// the recent fast-path actions.
pub fn router(monitor: Arc<Monitor>) -> axum::Router {
    axum::Router::new().route(
        "/api/v1/health",
        axum::routing::get(move || {
            let m = monitor.clone();
            async move { axum::Json(m.report()) }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::clock::ManualClock;
    use crate::model::ChangeKind;
    use crate::store::MemoryStore;

    const POLICY: &str = r#"{
      "stacks": [ {"name":"blue","region":"us"}, {"name":"green","region":"us"},
                  {"name":"eu","region":"eu"} ],
      "rules": [ { "id": "eu-only", "match": {"regions": ["eu"]},
                   "route": { "targets": [ {"stack": "eu"} ], "residency": ["eu"] } } ],
      "default": { "targets": [ {"stack": "blue"}, {"stack": "green"} ], "affinity": true }
    }"#;

    async fn control() -> Arc<Control> {
        let c = Control::open(Arc::new(MemoryStore::new())).await.unwrap();
        c.bootstrap(POLICY).await.unwrap();
        c
    }

    fn tcp(stack: &str) -> config::CheckSpec {
        config::CheckSpec {
            name: format!("{stack}/infrastructure"),
            stack: stack.into(),
            layer: Layer::Infrastructure,
            probe: config::ProbeSpec::Tcp {
                address: "127.0.0.1:1".into(),
            },
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            fall: 2,
            rise: 2,
        }
    }

    fn obs(clock: &ManualClock, ok: bool) -> Observation {
        clock.advance(100);
        Observation {
            at_ms: clock.now_ms(),
            ok,
            latency_ms: Some(0),
            detail: if ok {
                "connected"
            } else {
                "connect 127.0.0.1:1: refused"
            }
            .into(),
        }
    }

    #[tokio::test]
    async fn a_dead_stack_is_evacuated_once_with_a_reason_and_recovery_waits() {
        let control = control().await;
        let clock = ManualClock::new(1_000);
        let cfg = HealthConfig {
            checks: vec![tcp("blue"), tcp("eu")],
            ..HealthConfig::default()
        };
        let m = Monitor::new(control.clone(), cfg, Arc::new(clock.clone()), None);
        let mut audit = m.subscribe();
        for ok in [true, false] {
            m.record(0, obs(&clock, ok));
            assert_eq!(m.evaluate().await, vec![]);
        }
        m.record(0, obs(&clock, false));
        let acted = m.evaluate().await;
        assert_eq!(acted.len(), 1, "{acted:?}");
        let a = &acted[0];
        assert_eq!(
            (a.stack.as_str(), a.kind.clone()),
            ("blue", FastPathKind::Evacuated)
        );
        assert_eq!(
            (a.actor.as_str(), a.source.as_str()),
            (ACTOR, "infrastructure")
        );
        assert!(a.reason.starts_with("fast path: infrastructure down: infrastructure check blue/infrastructure down after 2 consecutive failures (last: connect 127.0.0.1:1: refused)"), "{}", a.reason);
        assert!(a.stranded_rules.is_empty());
        assert_eq!(audit.try_recv().unwrap(), *a);
        let cur = control.current().unwrap();
        assert_eq!(Some(cur.record.version), a.version);
        assert_eq!(cur.record.kind, ChangeKind::StackEvacuate);
        assert_eq!(cur.record.actor, ACTOR);
        let blue = cur.record.stack("blue").unwrap();
        assert!(blue.evacuating && blue.drain_reason == a.reason);
        // Still down: nothing more.
        m.record(0, obs(&clock, false));
        assert_eq!(m.evaluate().await, vec![]);
        assert_eq!(control.current_version(), cur.record.version);
        // Recovers: marked, not returned.
        m.record(0, obs(&clock, true));
        m.record(0, obs(&clock, true));
        let acted = m.evaluate().await;
        assert_eq!(acted.len(), 1);
        assert_eq!(acted[0].kind, FastPathKind::Recovered);
        assert!(acted[0].reason.contains("switchyard stacks undrain blue"));
        assert!(
            control
                .current()
                .unwrap()
                .record
                .stack("blue")
                .unwrap()
                .evacuating
        );
        assert_eq!(control.current_version(), cur.record.version);
        let r = m.report();
        assert_eq!(r.recent_actions.len(), 2);
        assert!(matches!(
            r.stacks["blue"].fast_path,
            eval::Episode::Recovered { .. }
        ));
        assert_eq!(r.stacks["blue"].verdict, Verdict::Healthy);
    }

    #[tokio::test]
    async fn status_shows_each_stacks_verdict_and_failing_layer_once_the_monitor_runs() {
        let control = control().await;
        assert_eq!(control.fleet().stack_health("blue"), None, "no monitor");
        let clock = ManualClock::new(1_000);
        let cfg = HealthConfig {
            checks: vec![tcp("blue")],
            fast_path: false,
            ..HealthConfig::default()
        };
        let m = Monitor::new(control.clone(), cfg, Arc::new(clock.clone()), None);
        m.show_in_status();
        let fleet = control.fleet();
        assert_eq!(fleet.stack_health("green").unwrap().verdict, "unknown");
        m.record(0, obs(&clock, false));
        m.record(0, obs(&clock, false));
        let blue = fleet.stack_health("blue").unwrap();
        assert_eq!(
            (blue.verdict.as_str(), blue.failing_layers.as_slice()),
            ("hard_down", &["infrastructure".to_string()][..])
        );
        assert!(blue.evidence[0].contains("refused"), "{blue:?}");
        let names = ["blue".to_string(), "green".to_string()];
        let status = fleet.with_series(crate::fleet::FleetStatus::default(), &names);
        assert_eq!(status.health["blue"], blue);
        assert_eq!(status.health["green"].verdict, "unknown");
        m.record(0, obs(&clock, true));
        m.record(0, obs(&clock, true));
        let blue = fleet.stack_health("blue").unwrap();
        assert_eq!((blue.verdict.as_str(), blue.failing_layers.len()), ("healthy", 0));
    }

    #[tokio::test]
    async fn evacuating_the_last_stack_of_a_residency_says_so() {
        let control = control().await;
        let clock = ManualClock::new(1_000);
        let cfg = HealthConfig {
            checks: vec![tcp("eu")],
            ..HealthConfig::default()
        };
        let m = Monitor::new(control.clone(), cfg, Arc::new(clock.clone()), None);
        m.record(0, obs(&clock, false));
        m.record(0, obs(&clock, false));
        let acted = m.evaluate().await;
        assert_eq!(acted.len(), 1);
        assert_eq!(acted[0].stranded_rules, ["eu-only"]);
        assert!(
            acted[0]
                .reason
                .contains("residency: rule(s) eu-only have no other eligible stack"),
            "{}",
            acted[0].reason
        );
        assert!(
            control
                .current()
                .unwrap()
                .record
                .stack("eu")
                .unwrap()
                .evacuating,
            "the dead stack still leaves"
        );
    }

    #[tokio::test]
    async fn breakers_open_on_most_nodes_evacuate_through_the_feed() {
        let control = control().await;
        let clock = ManualClock::new(1_000);
        let window = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let w = window.clone();
        let feed: BreakerFeed = Arc::new(move || {
            let win = w.load(std::sync::atomic::Ordering::SeqCst);
            let opens = u64::from(win > 1);
            BTreeMap::from([(
                "green".to_string(),
                vec![
                    NodeSample {
                        node: "envoy-1".into(),
                        window_ms: win,
                        requests: 10,
                        breaker_opens: opens,
                    },
                    NodeSample {
                        node: "envoy-2".into(),
                        window_ms: win,
                        requests: 10,
                        breaker_opens: opens,
                    },
                    NodeSample {
                        node: "envoy-3".into(),
                        window_ms: win,
                        requests: 10,
                        breaker_opens: 0,
                    },
                ],
            )])
        });
        let m = Monitor::new(
            control.clone(),
            HealthConfig::default(),
            Arc::new(clock.clone()),
            Some(feed),
        );
        assert_eq!(m.evaluate().await, vec![]);
        assert_eq!(m.stack_health("green").unwrap().verdict, Verdict::Unknown);
        window.store(2, std::sync::atomic::Ordering::SeqCst);
        let acted = m.evaluate().await;
        assert_eq!(acted.len(), 1, "{acted:?}");
        assert_eq!(acted[0].source, "breakers");
        assert!(
            acted[0]
                .reason
                .contains("circuit breakers open on 2 of 3 reporting nodes (envoy-1, envoy-2)"),
            "{}",
            acted[0].reason
        );
        assert!(
            control
                .current()
                .unwrap()
                .record
                .stack("green")
                .unwrap()
                .evacuating
        );
        // Without the feed switched on in config, breakers are ignored.
        let off = HealthConfig {
            breakers: false,
            ..HealthConfig::default()
        };
        let m2 = Monitor::new(control.clone(), off, Arc::new(clock), None);
        assert_eq!(m2.evaluate().await, vec![]);
    }
}
