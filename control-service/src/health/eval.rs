//! Health evaluation: probe results → check states (thresholds) → layer states → one
//! verdict per stack → the fast path's decisions.
//!
//! Pure and clock-free: every call takes `now`; the runner ([`super::Monitor`]) feeds it
//! probe results and fleet telemetry and executes what it decides. It never changes
//! routing itself, and it decides at most one evacuation per down episode: once a human
//! undoes it (`undrain`), the fast path leaves the stack alone until it has been seen
//! healthy again.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::config::{CheckSpec, Layer};
use crate::brain::clock::UnixMs;

/// State of one check (or one layer) after thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Passing (the first success, or `rise` in a row after being down).
    Up,
    /// No result yet, and not yet `fall` failures.
    Unknown,
    /// `fall` failures in a row.
    Down,
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    pub at_ms: UnixMs,
    pub ok: bool,
    /// Time to the answer (or to the failure), when measured.
    pub latency_ms: Option<u64>,
    /// What was seen, e.g. `200 in 3 ms` or `connect 127.0.0.1:8081: connection refused`.
    pub detail: String,
}

/// A check with its thresholds applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckState {
    pub name: String,
    pub stack: String,
    pub layer: Layer,
    #[serde(skip)]
    pub fall: u32,
    #[serde(skip)]
    pub rise: u32,
    pub status: Status,
    /// Consecutive successes / failures up to now.
    pub ok_streak: u32,
    pub fail_streak: u32,
    /// When `status` last changed (0 = never).
    pub since_ms: UnixMs,
    pub last: Option<Observation>,
}

impl CheckState {
    pub fn new(spec: &CheckSpec) -> Self {
        Self {
            name: spec.name.clone(),
            stack: spec.stack.clone(),
            layer: spec.layer,
            fall: spec.fall,
            rise: spec.rise,
            status: Status::Unknown,
            ok_streak: 0,
            fail_streak: 0,
            since_ms: 0,
            last: None,
        }
    }

    /// Count one result; returns the new status when it changed.
    ///
    /// Unknown → Up on the first success (a freshly started control service trusts a stack
    /// that answers), Unknown/Up → Down after `fall` failures in a row, Down → Up after
    /// `rise` successes in a row. Anything that alternates faster than the thresholds
    /// (flapping) keeps the status it had.
    pub fn observe(&mut self, obs: Observation) -> Option<Status> {
        if obs.ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
        }
        let next = match self.status {
            Status::Unknown if obs.ok => Status::Up,
            Status::Down if self.ok_streak >= self.rise => Status::Up,
            Status::Unknown | Status::Up if self.fail_streak >= self.fall => Status::Down,
            s => s,
        };
        let at = obs.at_ms;
        self.last = Some(obs);
        if next != self.status {
            self.status = next;
            self.since_ms = at;
            Some(next)
        } else {
            None
        }
    }

    fn evidence(&self) -> String {
        let last = self
            .last
            .as_ref()
            .map(|o| o.detail.as_str())
            .unwrap_or("no result yet");
        format!(
            "{} check {} down after {} consecutive failures (last: {last})",
            self.layer.as_str(),
            self.name,
            self.fail_streak
        )
    }
}

/// What one node's telemetry says about one stack: its counts in the node's current
/// window (a single ~1 s batch, or a longer window still filling: counts may grow
/// between samples of the same window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSample {
    pub node: String,
    /// Identifies the window (its start or end), so growth within one window is told
    /// from a new window.
    pub window_ms: UnixMs,
    /// Requests the node routed to the stack in that window so far.
    pub requests: u64,
    /// Circuit-breaker openings for the stack in that window so far.
    pub breaker_opens: u64,
}

/// Nodes reporting, and those whose breaker for a stack is open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BreakerView {
    pub reporting: usize,
    pub open: Vec<String>,
}

impl BreakerView {
    /// Open on most (more than half) of the nodes reporting.
    pub fn majority_open(&self) -> bool {
        self.reporting > 0 && self.open.len() * 2 > self.reporting
    }
}

#[derive(Debug, Clone, Copy)]
struct Latch {
    open: bool,
    window_ms: UnixMs,
    requests: u64,
    breaker_opens: u64,
}

/// Breaker state per node and stack, latched from telemetry: a node reports openings
/// (transitions), not the state, so a breaker counts as open from a sample with a new
/// opening until a later sample shows the node routing new requests to the stack.
#[derive(Debug, Default)]
pub struct BreakerLatches {
    latches: BTreeMap<(String, String), Latch>,
}

impl BreakerLatches {
    /// Fold the latest samples of every node with fresh telemetry for `stack`; nodes not
    /// in `samples` no longer report and are forgotten.
    pub fn update(&mut self, stack: &str, samples: &[NodeSample]) -> BreakerView {
        let reporting: BTreeSet<&str> = samples.iter().map(|s| s.node.as_str()).collect();
        self.latches
            .retain(|(node, s), _| s != stack || reporting.contains(node.as_str()));
        let mut view = BreakerView {
            reporting: reporting.len(),
            open: Vec::new(),
        };
        for s in samples {
            let latch = self
                .latches
                .entry((s.node.clone(), stack.to_string()))
                .or_insert(Latch {
                    open: false,
                    window_ms: s.window_ms,
                    requests: 0,
                    breaker_opens: 0,
                });
            // What is new since the last sample: the growth of the same window, or all
            // of a new one.
            let (new_requests, new_opens) = if latch.window_ms == s.window_ms {
                (
                    s.requests.saturating_sub(latch.requests),
                    s.breaker_opens.saturating_sub(latch.breaker_opens),
                )
            } else {
                (s.requests, s.breaker_opens)
            };
            if new_opens > 0 {
                latch.open = true;
            } else if new_requests > 0 {
                latch.open = false;
            }
            latch.window_ms = s.window_ms;
            latch.requests = s.requests;
            latch.breaker_opens = s.breaker_opens;
            if latch.open && !view.open.contains(&s.node) {
                view.open.push(s.node.clone());
            }
        }
        view
    }
}

/// A stack's overall health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No check has an opinion yet (and no breaker evidence).
    Unknown,
    Healthy,
    /// An upper layer (api, integrity) is down: a matter for a human.
    Degraded,
    /// An infrastructure or component check is down, or breakers are open on most
    /// reporting nodes: the fast path evacuates.
    HardDown,
}

/// Where the fast path stands for one stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Episode {
    /// Nothing to do.
    Normal,
    /// Hard-down since `since_ms`; `evacuated` once the evacuation is in force (by the
    /// fast path or already by someone else).
    Down { since_ms: UnixMs, evacuated: bool },
    /// A human ended the evacuation while the stack was still down: left alone until it
    /// is seen healthy.
    Overridden { since_ms: UnixMs },
    /// Passes its checks again after a fast-path evacuation; stays evacuated until a
    /// human runs `switchyard stacks undrain`.
    Recovered { since_ms: UnixMs },
}

/// What the routing state says about a stack (read from the current version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StackFacts {
    /// The stack is in the current policy.
    pub known: bool,
    pub evacuating: bool,
}

/// What the fast path decided in one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Evacuate now, without approval. `source` names the failing layer (or `breakers`).
    Evacuate {
        stack: String,
        source: String,
        evidence: Vec<String>,
    },
    /// A fast-path-evacuated stack is healthy again; it waits for a human undrain.
    Recovered {
        stack: String,
        evidence: Vec<String>,
    },
    /// Worth a log line, nothing to do (already evacuated, fast path off, …).
    Note { stack: String, message: String },
}

/// One stack's evaluated health, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackHealth {
    pub verdict: Verdict,
    /// Per layer that has checks: the worst check status.
    pub layers: BTreeMap<Layer, Status>,
    pub breakers: BreakerView,
    pub fast_path: Episode,
    /// Why it is not healthy (empty when healthy).
    pub evidence: Vec<String>,
}

/// Every check's state and every stack's fast-path episode.
#[derive(Debug)]
pub struct Tracker {
    checks: Vec<CheckState>,
    latches: BreakerLatches,
    breakers: BTreeMap<String, BreakerView>,
    episodes: BTreeMap<String, Episode>,
    fast_path: bool,
    use_breakers: bool,
}

impl Tracker {
    pub fn new(checks: &[CheckSpec], fast_path: bool, use_breakers: bool) -> Self {
        Self {
            checks: checks.iter().map(CheckState::new).collect(),
            latches: BreakerLatches::default(),
            breakers: BTreeMap::new(),
            episodes: BTreeMap::new(),
            fast_path,
            use_breakers,
        }
    }

    /// Count a probe result of check `index`; returns the check's new status if it changed.
    pub fn record(&mut self, index: usize, obs: Observation) -> Option<Status> {
        self.checks.get_mut(index)?.observe(obs)
    }

    pub fn checks(&self) -> &[CheckState] {
        &self.checks
    }

    /// Fold the latest telemetry samples of `stack` (every node with fresh telemetry).
    pub fn breaker_samples(&mut self, stack: &str, samples: &[NodeSample]) {
        let view = self.latches.update(stack, samples);
        self.breakers.insert(stack.to_string(), view);
    }

    /// The stacks this tracker has an opinion about: every checked stack and every stack
    /// telemetry was folded for.
    pub fn stacks(&self) -> BTreeSet<String> {
        self.checks
            .iter()
            .map(|c| c.stack.clone())
            .chain(self.breakers.keys().cloned())
            .collect()
    }

    /// The current health of `stack`.
    pub fn health(&self, stack: &str) -> StackHealth {
        let mut layers: BTreeMap<Layer, Status> = BTreeMap::new();
        let mut evidence = Vec::new();
        for c in self.checks.iter().filter(|c| c.stack == stack) {
            let l = layers.entry(c.layer).or_insert(Status::Up);
            *l = (*l).max(c.status);
            if c.status == Status::Down {
                evidence.push(c.evidence());
            }
        }
        let breakers = self.breakers.get(stack).cloned().unwrap_or_default();
        let breakers_down = self.use_breakers && breakers.majority_open();
        if breakers_down {
            evidence.push(format!(
                "circuit breakers open on {} of {} reporting nodes ({})",
                breakers.open.len(),
                breakers.reporting,
                breakers.open.join(", ")
            ));
        }
        let hard_down = breakers_down
            || layers
                .iter()
                .any(|(l, s)| l.is_hard() && *s == Status::Down);
        let verdict = if hard_down {
            Verdict::HardDown
        } else if layers.values().any(|s| *s == Status::Down) {
            Verdict::Degraded
        } else if layers.is_empty() || layers.values().all(|s| *s == Status::Unknown) {
            Verdict::Unknown
        } else {
            Verdict::Healthy
        };
        StackHealth {
            verdict,
            layers,
            breakers,
            fast_path: self.episodes.get(stack).copied().unwrap_or(Episode::Normal),
            evidence,
        }
    }

    /// Whether every hard layer of `stack` has checks and all of them are up: the only
    /// evidence of recovery the fast path accepts (an evacuated stack gets no traffic, so
    /// its breakers cannot show recovery).
    fn hard_layers_up(&self, stack: &str) -> bool {
        let mut any = false;
        for c in self
            .checks
            .iter()
            .filter(|c| c.stack == stack && c.layer.is_hard())
        {
            any = true;
            if c.status != Status::Up {
                return false;
            }
        }
        any
    }

    /// Evaluate `stack` against its routing state; moves its episode and returns what to
    /// do. The runner reports back with [`Tracker::evacuated`] once an evacuation is in force.
    pub fn evaluate(&mut self, stack: &str, facts: StackFacts, now: UnixMs) -> Vec<Decision> {
        let health = self.health(stack);
        let episode = self.episodes.get(stack).copied().unwrap_or(Episode::Normal);
        let mut out = Vec::new();
        let next = if health.verdict == Verdict::HardDown {
            match episode {
                Episode::Normal | Episode::Recovered { .. } => {
                    let evacuated = facts.evacuating;
                    if evacuated {
                        out.push(Decision::Note {
                            stack: stack.into(),
                            message: format!(
                                "hard down and already evacuating: {}",
                                health.evidence.join("; ")
                            ),
                        });
                    } else {
                        out.extend(self.evacuate(stack, facts, &health));
                    }
                    Episode::Down {
                        since_ms: now,
                        evacuated,
                    }
                }
                Episode::Down {
                    since_ms,
                    evacuated: false,
                } => {
                    // Still to do: the last attempt failed (or the fast path is off).
                    let evacuated = facts.evacuating;
                    if !evacuated && self.fast_path && facts.known {
                        out.extend(self.evacuate(stack, facts, &health));
                    }
                    Episode::Down {
                        since_ms,
                        evacuated,
                    }
                }
                Episode::Down {
                    evacuated: true, ..
                } if !facts.evacuating => {
                    out.push(Decision::Note {
                        stack: stack.into(),
                        message: "evacuation ended by an operator while still hard down; \
                                  the fast path leaves it alone until it is healthy again"
                            .into(),
                    });
                    Episode::Overridden { since_ms: now }
                }
                e => e,
            }
        } else {
            match episode {
                Episode::Down {
                    evacuated: true, ..
                } if facts.evacuating => {
                    if self.hard_layers_up(stack) {
                        out.push(Decision::Recovered {
                            stack: stack.into(),
                            evidence: self
                                .checks
                                .iter()
                                .filter(|c| c.stack == stack && c.layer.is_hard())
                                .map(|c| {
                                    format!(
                                        "{} check {} up ({} consecutive successes)",
                                        c.layer.as_str(),
                                        c.name,
                                        c.ok_streak
                                    )
                                })
                                .collect(),
                        });
                        Episode::Recovered { since_ms: now }
                    } else {
                        // No check can show recovery (breaker evidence only): stays down
                        // until a human decides.
                        episode
                    }
                }
                Episode::Recovered { .. } if facts.evacuating => episode,
                Episode::Down { .. } | Episode::Overridden { .. } | Episode::Recovered { .. } => {
                    Episode::Normal
                }
                Episode::Normal => Episode::Normal,
            }
        };
        if next == Episode::Normal {
            self.episodes.remove(stack);
        } else {
            self.episodes.insert(stack.to_string(), next);
        }
        out
    }

    fn evacuate(&self, stack: &str, facts: StackFacts, health: &StackHealth) -> Vec<Decision> {
        if !self.fast_path {
            return vec![Decision::Note {
                stack: stack.into(),
                message: format!(
                    "hard down; the fast path is off, not evacuating: {}",
                    health.evidence.join("; ")
                ),
            }];
        }
        if !facts.known {
            return vec![Decision::Note {
                stack: stack.into(),
                message: format!(
                    "hard down but not in the current policy: {}",
                    health.evidence.join("; ")
                ),
            }];
        }
        let source = health
            .layers
            .iter()
            .find(|(l, s)| l.is_hard() && **s == Status::Down)
            .map(|(l, _)| l.as_str())
            .unwrap_or("breakers");
        vec![Decision::Evacuate {
            stack: stack.into(),
            source: source.into(),
            evidence: health.evidence.clone(),
        }]
    }

    /// The evacuation decided for `stack` is in force.
    pub fn evacuated(&mut self, stack: &str) {
        if let Some(Episode::Down { evacuated, .. }) = self.episodes.get_mut(stack) {
            *evacuated = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::brain::clock::{Clock, ManualClock};
    use crate::health::config::{ProbeSpec, Tolerance};

    fn spec(stack: &str, layer: Layer, fall: u32, rise: u32) -> CheckSpec {
        CheckSpec {
            name: format!("{stack}/{}", layer.as_str()),
            stack: stack.into(),
            layer,
            probe: match layer {
                Layer::Infrastructure => ProbeSpec::Tcp {
                    address: "127.0.0.1:1".into(),
                },
                _ => ProbeSpec::Integrity {
                    target: crate::health::config::HttpTarget::parse("http://127.0.0.1:1/")
                        .unwrap(),
                    expect_status: None,
                    left: "/a".into(),
                    right: "/b".into(),
                    tolerance: Tolerance {
                        absolute: None,
                        ratio: None,
                    },
                },
            },
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(100),
            fall,
            rise,
        }
    }

    /// A tracker, its clock and a helper that records results in order.
    struct Rig {
        t: Tracker,
        clock: ManualClock,
    }

    impl Rig {
        fn new(specs: &[CheckSpec]) -> Self {
            Self {
                t: Tracker::new(specs, true, true),
                clock: ManualClock::new(1_000_000),
            }
        }
        fn probe(&mut self, index: usize, ok: bool) -> Option<Status> {
            self.clock.advance(200);
            let obs = Observation {
                at_ms: self.clock.now_ms(),
                ok,
                latency_ms: Some(1),
                detail: if ok {
                    "200 in 1 ms"
                } else {
                    "connection refused"
                }
                .into(),
            };
            self.t.record(index, obs)
        }
        fn eval(&mut self, stack: &str, evacuating: bool) -> Vec<Decision> {
            self.t.evaluate(
                stack,
                StackFacts {
                    known: true,
                    evacuating,
                },
                self.clock.now_ms(),
            )
        }
    }

    #[test]
    fn thresholds_take_a_check_down_and_back() {
        let mut r = Rig::new(&[spec("blue", Layer::Infrastructure, 3, 2)]);
        assert_eq!(r.t.checks()[0].status, Status::Unknown);
        assert_eq!(r.probe(0, true), Some(Status::Up), "first success is up");
        assert_eq!(r.probe(0, false), None);
        assert_eq!(r.probe(0, false), None);
        assert_eq!(r.probe(0, false), Some(Status::Down), "third failure");
        let down_at = r.clock.now_ms();
        assert_eq!(r.t.checks()[0].since_ms, down_at);
        assert_eq!(r.probe(0, true), None, "one success is not enough");
        assert_eq!(r.probe(0, false), None);
        assert_eq!(r.probe(0, true), None);
        assert_eq!(r.probe(0, true), Some(Status::Up), "rise = 2 in a row");
    }

    #[test]
    fn a_check_failing_from_the_start_goes_down_after_fall() {
        let mut r = Rig::new(&[spec("blue", Layer::Infrastructure, 2, 1)]);
        assert_eq!(r.probe(0, false), None);
        assert_eq!(r.t.checks()[0].status, Status::Unknown);
        assert_eq!(r.probe(0, false), Some(Status::Down));
    }

    #[test]
    fn flapping_faster_than_the_thresholds_changes_nothing() {
        let mut r = Rig::new(&[spec("blue", Layer::Component, 2, 2)]);
        r.probe(0, true);
        for i in 0..20 {
            assert_eq!(r.probe(0, i % 2 == 0), None, "probe {i}");
        }
        assert_eq!(r.t.checks()[0].status, Status::Up);
        // And once down, flapping does not bring it back.
        r.probe(0, false);
        r.probe(0, false);
        assert_eq!(r.t.checks()[0].status, Status::Down);
        for i in 0..20 {
            assert_eq!(r.probe(0, i % 2 == 0), None, "probe {i}");
        }
        assert_eq!(r.t.checks()[0].status, Status::Down);
        assert!(r
            .eval("blue", false)
            .iter()
            .any(|d| matches!(d, Decision::Evacuate { .. })));
    }

    #[test]
    fn layers_and_verdicts() {
        let specs = [
            spec("blue", Layer::Infrastructure, 1, 1),
            spec("blue", Layer::Component, 1, 1),
            spec("blue", Layer::Api, 1, 1),
            spec("blue", Layer::Integrity, 1, 1),
        ];
        let mut r = Rig::new(&specs);
        assert_eq!(r.t.health("blue").verdict, Verdict::Unknown);
        for i in 0..4 {
            r.probe(i, true);
        }
        let h = r.t.health("blue");
        assert_eq!(h.verdict, Verdict::Healthy);
        assert!(h.layers.values().all(|s| *s == Status::Up) && h.layers.len() == 4);
        // The integrity layer down only degrades: no evacuation.
        r.probe(3, false);
        let h = r.t.health("blue");
        assert_eq!(h.verdict, Verdict::Degraded);
        assert_eq!(h.layers[&Layer::Integrity], Status::Down);
        assert!(
            h.evidence[0].contains("integrity check blue/integrity down"),
            "{h:?}"
        );
        assert_eq!(r.eval("blue", false), vec![]);
        // The api layer too.
        r.probe(2, false);
        assert_eq!(r.t.health("blue").verdict, Verdict::Degraded);
        assert_eq!(r.eval("blue", false), vec![]);
        // The component layer down is hard down.
        r.probe(1, false);
        assert_eq!(r.t.health("blue").verdict, Verdict::HardDown);
        match &r.eval("blue", false)[..] {
            [Decision::Evacuate {
                stack,
                source,
                evidence,
            }] => {
                assert_eq!((stack.as_str(), source.as_str()), ("blue", "component"));
                assert!(
                    evidence.iter().any(|e| e.contains(
                        "component check blue/component down after 1 consecutive failures \
                         (last: connection refused)"
                    )),
                    "{evidence:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Other stacks are unaffected.
        assert_eq!(r.t.health("green").verdict, Verdict::Unknown);
    }

    #[test]
    fn one_evacuation_per_episode_then_recovery_waits_for_a_human() {
        let mut r = Rig::new(&[spec("blue", Layer::Infrastructure, 2, 3)]);
        r.probe(0, true);
        assert_eq!(r.eval("blue", false), vec![]);
        r.probe(0, false);
        r.probe(0, false);
        let d = r.eval("blue", false);
        assert!(
            matches!(&d[..], [Decision::Evacuate { source, .. }] if source == "infrastructure")
        );
        // The first attempt failed (store error): the next evaluation tries again.
        let d = r.eval("blue", false);
        assert!(matches!(&d[..], [Decision::Evacuate { .. }]), "{d:?}");
        r.t.evacuated("blue");
        // In force: nothing more while down.
        r.probe(0, false);
        assert_eq!(r.eval("blue", true), vec![]);
        assert!(matches!(
            r.t.health("blue").fast_path,
            Episode::Down {
                evacuated: true,
                ..
            }
        ));
        // Back up past `rise`: recovered, still evacuated, no routing change.
        r.probe(0, true);
        r.probe(0, true);
        assert_eq!(r.eval("blue", true), vec![]);
        r.probe(0, true);
        let d = r.eval("blue", true);
        assert!(
            matches!(&d[..], [Decision::Recovered { evidence, .. }]
            if evidence[0].contains("3 consecutive successes")),
            "{d:?}"
        );
        assert!(matches!(
            r.t.health("blue").fast_path,
            Episode::Recovered { .. }
        ));
        assert_eq!(r.eval("blue", true), vec![], "recovered is reported once");
        // A human undrains: back to normal.
        assert_eq!(r.eval("blue", false), vec![]);
        assert_eq!(r.t.health("blue").fast_path, Episode::Normal);
        // It dies again: a new episode, a new evacuation.
        r.probe(0, false);
        r.probe(0, false);
        assert!(matches!(
            &r.eval("blue", false)[..],
            [Decision::Evacuate { .. }]
        ));
    }

    #[test]
    fn a_human_undrain_while_down_is_respected() {
        let mut r = Rig::new(&[spec("blue", Layer::Infrastructure, 1, 1)]);
        r.probe(0, false);
        assert!(matches!(
            &r.eval("blue", false)[..],
            [Decision::Evacuate { .. }]
        ));
        r.t.evacuated("blue");
        assert_eq!(r.eval("blue", true), vec![]);
        // Operator undrains although it is still down.
        let d = r.eval("blue", false);
        assert!(matches!(&d[..], [Decision::Note { message, .. }] if message.contains("operator")));
        r.probe(0, false);
        assert_eq!(r.eval("blue", false), vec![], "no fight with the operator");
        // Once seen healthy, a new failure is a new episode.
        r.probe(0, true);
        assert_eq!(r.eval("blue", false), vec![]);
        assert_eq!(r.t.health("blue").fast_path, Episode::Normal);
        r.probe(0, false);
        assert!(matches!(
            &r.eval("blue", false)[..],
            [Decision::Evacuate { .. }]
        ));
    }

    #[test]
    fn already_evacuated_or_fast_path_off_or_unknown_stack_only_notes() {
        let mut r = Rig::new(&[spec("blue", Layer::Infrastructure, 1, 1)]);
        r.probe(0, false);
        let d = r.eval("blue", true);
        assert!(
            matches!(&d[..], [Decision::Note { message, .. }] if message.contains("already evacuating"))
        );
        assert!(matches!(
            r.t.health("blue").fast_path,
            Episode::Down {
                evacuated: true,
                ..
            }
        ));

        let mut off = Tracker::new(&[spec("blue", Layer::Infrastructure, 1, 1)], false, true);
        off.record(
            0,
            Observation {
                at_ms: 1,
                ok: false,
                latency_ms: None,
                detail: "refused".into(),
            },
        );
        let d = off.evaluate(
            "blue",
            StackFacts {
                known: true,
                evacuating: false,
            },
            2,
        );
        assert!(
            matches!(&d[..], [Decision::Note { message, .. }] if message.contains("fast path is off"))
        );
        assert_eq!(
            off.evaluate(
                "blue",
                StackFacts {
                    known: true,
                    evacuating: false
                },
                3
            ),
            vec![]
        );

        let d = r.t.evaluate("gone", StackFacts::default(), 5);
        assert_eq!(d, vec![], "no checks, no opinion");
        let mut r = Rig::new(&[spec("gone", Layer::Infrastructure, 1, 1)]);
        r.probe(0, false);
        let d = r.t.evaluate("gone", StackFacts::default(), 5);
        assert!(
            matches!(&d[..], [Decision::Note { message, .. }] if message.contains("not in the current policy"))
        );
    }

    fn sample(node: &str, window: u64, requests: u64, opens: u64) -> NodeSample {
        NodeSample {
            node: node.into(),
            window_ms: window,
            requests,
            breaker_opens: opens,
        }
    }

    #[test]
    fn breakers_open_on_most_nodes_are_hard_down() {
        let mut r = Rig::new(&[]);
        r.t.breaker_samples(
            "blue",
            &[
                sample("n1", 1, 10, 1),
                sample("n2", 1, 10, 0),
                sample("n3", 1, 10, 0),
            ],
        );
        assert_eq!(r.t.health("blue").breakers.open, ["n1"]);
        assert_eq!(r.t.health("blue").verdict, Verdict::Unknown);
        // n1 stays open (no traffic to blue, no new batch needed), n2 opens: 2 of 3.
        r.t.breaker_samples(
            "blue",
            &[
                sample("n1", 2, 0, 0),
                sample("n2", 2, 3, 1),
                sample("n3", 2, 10, 0),
            ],
        );
        let h = r.t.health("blue");
        assert_eq!(h.verdict, Verdict::HardDown);
        assert!(
            h.evidence[0].contains("open on 2 of 3 reporting nodes (n1, n2)"),
            "{h:?}"
        );
        let d = r.eval("blue", false);
        assert!(matches!(&d[..], [Decision::Evacuate { source, .. }] if source == "breakers"));
        r.t.evacuated("blue");
        // Evacuated: no traffic, the latches hold; without checks nothing shows recovery.
        r.t.breaker_samples(
            "blue",
            &[
                sample("n1", 3, 0, 0),
                sample("n2", 3, 0, 0),
                sample("n3", 3, 0, 0),
            ],
        );
        assert_eq!(r.eval("blue", true), vec![]);
        assert!(matches!(
            r.t.health("blue").fast_path,
            Episode::Down {
                evacuated: true,
                ..
            }
        ));
    }

    #[test]
    fn breaker_latches_clear_on_traffic_and_forget_silent_nodes() {
        let mut l = BreakerLatches::default();
        let v = l.update("blue", &[sample("n1", 1, 5, 2), sample("n2", 1, 5, 1)]);
        assert_eq!((v.reporting, v.open.len()), (2, 2));
        assert!(v.majority_open());
        // The same batch seen again changes nothing.
        assert_eq!(
            l.update("blue", &[sample("n1", 1, 5, 2), sample("n2", 1, 5, 1)]),
            v
        );
        // n1 routes to blue again without an opening: closed. n2 stopped reporting.
        let v = l.update("blue", &[sample("n1", 2, 7, 0)]);
        assert_eq!(
            v,
            BreakerView {
                reporting: 1,
                open: vec![]
            }
        );
        // n2 is back with nothing new: it was forgotten, so closed.
        let v = l.update("blue", &[sample("n1", 3, 7, 0), sample("n2", 4, 0, 0)]);
        assert!(v.open.is_empty() && !v.majority_open());
        // One of two is not most.
        let v = l.update("blue", &[sample("n1", 5, 0, 1), sample("n2", 5, 3, 0)]);
        assert_eq!(v.open, ["n1"]);
        assert!(!v.majority_open());
        assert!(!BreakerView::default().majority_open());
    }

    #[test]
    fn breaker_latches_follow_a_window_that_is_still_filling() {
        let mut l = BreakerLatches::default();
        assert!(l.update("blue", &[sample("n1", 10, 50, 0)]).open.is_empty());
        // Same window: an opening appears, while requests grew before it.
        assert_eq!(l.update("blue", &[sample("n1", 10, 55, 1)]).open, ["n1"]);
        // Same window, nothing new: still open.
        assert_eq!(l.update("blue", &[sample("n1", 10, 55, 1)]).open, ["n1"]);
        // Same window, requests flow again: closed (the old opening is not new).
        assert!(l.update("blue", &[sample("n1", 10, 60, 1)]).open.is_empty());
        // Other stacks keep their own latches.
        assert_eq!(l.update("green", &[sample("n1", 10, 0, 2)]).open, ["n1"]);
        assert!(l.update("blue", &[sample("n1", 10, 60, 1)]).open.is_empty());
    }
}
