//! State-machine tests under a manual clock: every transition, the guardrails on the
//! rollout's moves, concurrent writers, restart.

use std::sync::Arc;

use switchyard_filter::histogram::bucket_of;

use super::*;
use crate::brain::clock::{Clock, ManualClock};
use crate::brain::guardrails::{
    ChangeKind, ExecutedChange, GuardConfig, GuardError, Guardrail, Origin, Permit, ProposedChange,
};
use crate::brain::signals::Latency;
use crate::brain::stats::Verdict;
use crate::store::{MemoryStore, RedbStore};

const WINDOW: u64 = 10_000;
const T0: u64 = 1_800_000_000_000;

/// How the release behaves in the generated windows.
#[derive(Clone, Copy)]
struct Traffic {
    rps: u64,
    release_error_rate: f64,
    /// Orders per request on the release (the stable stack: 3 %).
    release_order_rate: f64,
}

const HEALTHY: Traffic = Traffic {
    rps: 2_000,
    release_error_rate: 0.0,
    release_order_rate: 0.03,
};

/// A test bench: store, guardrails, engine, clock, the executor's view of the share
/// and every window generated so far.
struct Bench {
    store: Arc<dyn Store>,
    guard: Guardrails,
    engine: RolloutEngine,
    clock: ManualClock,
    windows: Vec<StackWindow>,
    actions: Vec<Action>,
    decisions: Vec<Decision>,
    traffic: Traffic,
    /// Share the executor applied.
    applied: u32,
}

impl Bench {
    fn new() -> Self {
        Self::with(Arc::new(MemoryStore::new()), GuardConfig::default())
    }

    fn with(store: Arc<dyn Store>, cfg: GuardConfig) -> Self {
        let guard = Guardrails::new(store.clone(), cfg);
        Self {
            engine: RolloutEngine::new(store.clone(), guard.clone()),
            store,
            guard,
            clock: ManualClock::new(T0),
            windows: Vec::new(),
            actions: Vec::new(),
            decisions: Vec::new(),
            traffic: HEALTHY,
            applied: 0,
        }
    }

    fn now(&self) -> UnixMs {
        self.clock.now_ms()
    }

    /// Play the executor: apply and record every SetShare.
    fn execute(&mut self, out: &Outcome) {
        for a in &out.actions {
            if let Action::SetShare {
                share_percent,
                permit,
                ..
            } = a
            {
                self.applied = *share_percent;
                self.guard
                    .record(
                        &ExecutedChange {
                            permit: permit.clone(),
                            applied: true,
                        },
                        self.now(),
                    )
                    .unwrap();
            }
        }
        self.actions.extend(out.actions.iter().cloned());
        self.decisions.extend(out.decisions.iter().cloned());
    }

    fn create(&mut self, spec: RolloutSpec) -> Rollout {
        let out = self.engine.create(spec, self.now()).unwrap();
        self.execute(&out);
        out.rollout
    }

    fn command(&mut self, id: &str, cmd: Command) -> Result<Rollout, RolloutError> {
        let out = self.engine.command(id, cmd, self.now())?;
        self.execute(&out);
        Ok(out.rollout)
    }

    /// One window of traffic at the applied share, then a tick.
    fn step(&mut self, id: &str) -> Rollout {
        let start = self.now();
        self.windows
            .extend(windows(start, self.applied, self.traffic));
        self.clock.advance(WINDOW);
        let out = self.engine.tick(id, self.now(), &self.windows).unwrap();
        self.execute(&out);
        out.rollout
    }

    /// Step until `done` or `max` windows.
    fn run_until(&mut self, id: &str, max: usize, done: impl Fn(&Rollout) -> bool) -> Rollout {
        for _ in 0..max {
            let r = self.step(id);
            if done(&r) {
                return r;
            }
        }
        panic!(
            "not reached after {max} windows: {:?}",
            self.engine.get(id).unwrap().unwrap().phase
        );
    }

    fn shares(&self) -> Vec<(u32, MoveMode)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::SetShare {
                    share_percent,
                    mode,
                    ..
                } => Some((*share_percent, *mode)),
                _ => None,
            })
            .collect()
    }
}

/// Both stacks' windows for one 10 s window: the release gets `share` percent of the
/// requests; all responses at 50 ms; one new user per 10 requests.
fn windows(start: UnixMs, share: u32, t: Traffic) -> Vec<StackWindow> {
    let total = t.rps * WINDOW / 1_000;
    let rel = total * u64::from(share) / 100;
    let mk = |stack: &str, n: u64, err: f64, orders: f64| {
        let mut w = StackWindow::new(stack, start, WINDOW);
        w.requests = n;
        w.errors = (n as f64 * err).round() as u64;
        w.kpis
            .insert("orders".into(), (n as f64 * orders).round() as u64);
        if n > 0 {
            w.latency = Latency {
                buckets: vec![(bucket_of(50_000) as u16, n as u32)],
            };
        }
        w.new_users = n / 10;
        w.by_rule.insert("checkout".into(), n);
        w
    };
    vec![
        mk("green", rel, t.release_error_rate, t.release_order_rate),
        mk("blue", total - rel, 0.0, 0.03),
    ]
}

const MIN: u64 = 60_000;

/// A compressed plan: 5 % and 20 % for 10–30 min each, then 100 %.
fn spec(id: &str) -> RolloutSpec {
    let mut s = RolloutSpec::new(id, "green", "blue", SCOPE_POLICY);
    s.plan = plan_from_shares(&[0, 5, 20, 100], 10 * MIN, 30 * MIN);
    s.warmup_ms = MIN;
    s.created_by = "alice".into();
    s
}

fn alice() -> String {
    "alice".into()
}

#[test]
fn healthy_release_goes_through_every_step_to_completed() {
    let mut b = Bench::new();
    let r = b.create(spec("r1"));
    assert_eq!(r.phase, Phase::Pending);
    assert_eq!(b.shares(), vec![]);
    let r = b.command("r1", Command::Start { actor: alice() }).unwrap();
    assert!(matches!(r.phase, Phase::Warming { step: 0, .. }));
    // the first ramp move goes out with the start
    assert_eq!(b.shares(), vec![(5, MoveMode::Keep)]);
    let r = b.run_until("r1", 20, |r| matches!(r.phase, Phase::Observing { .. }));
    // observation begins after the warm-up
    assert!(b.now() >= T0 + MIN);
    assert_eq!(r.steps[0].observe_since_ms, Some(b.now()));
    // 20 % -> 100 % in 5 % moves takes four 15-minute rate-limit windows
    let r = b.run_until("r1", 1_000, |r| !r.phase.is_open());
    assert_eq!(r.phase, Phase::Completed);
    assert_eq!(r.share_percent, 100);
    // every move a step up of at most 5 %, sticky users kept
    let shares = b.shares();
    assert!(shares.iter().all(|(_, m)| *m == MoveMode::Keep));
    assert_eq!(
        shares.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=20).map(|i| i * 5).collect::<Vec<_>>()
    );
    // each observed step kept its gates with sample sizes and confidence
    for s in &r.steps[..2] {
        assert_eq!(s.outcome, Some(StepOutcome::Passed));
        assert!(s.ended_ms.unwrap() >= s.observe_since_ms.unwrap() + 10 * MIN);
        assert!(!s.gates.is_empty());
        for g in s.gates.iter().filter(|g| g.blocking) {
            assert_eq!(g.verdict, Verdict::Pass, "{g:?}");
            assert!(g.n > 0.0 && g.confidence >= 0.95, "{g:?}");
        }
        let e = s.exposure.unwrap();
        assert!((e - f64::from(s.share_percent) / 100.0).abs() < 0.01, "{e}");
    }
    assert_eq!(r.steps[2].outcome, Some(StepOutcome::Passed));
    let passed: Vec<&Decision> = b
        .decisions
        .iter()
        .filter(|d| d.reason.contains("all gates passed"))
        .collect();
    assert_eq!(passed.len(), 2);
    assert!(passed.iter().all(|d| !d.gates.is_empty()));
    // the scope is free again, the lease too
    assert!(b.engine.open().unwrap().is_empty());
    assert!(b.guard.holder(b.now()).unwrap().is_none());
    b.create(spec("r2"));
    // blast radius: the release reached a growing share of users
    let f = r.blast.fraction().unwrap();
    assert!(f > 0.05 && f < 1.0, "{f}");
}

#[test]
fn ramp_is_held_back_by_the_rate_limit_and_resumes_when_allowed() {
    let mut b = Bench::new();
    let mut s = spec("r1");
    // 5 % then straight to 40 %: 35 % within 15 minutes is over the 20 % budget
    s.plan = plan_from_shares(&[0, 5, 40, 100], 2 * MIN, 30 * MIN);
    b.create(s);
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    let r = b.run_until("r1", 200, |r| r.blocked.is_some());
    let blocked = r.blocked.clone().unwrap();
    assert_eq!(blocked.guardrail, "rate_limit");
    let allowed_at = blocked.allowed_at.unwrap();
    assert!(allowed_at > b.now());
    assert_eq!(b.guard.shift_in_window("policy", b.now()).unwrap(), 20);
    let held = b
        .decisions
        .iter()
        .filter(|d| d.reason.contains("held back"))
        .count();
    // nothing moves until allowed_at; one decision for the whole wait
    while b.now() + WINDOW < allowed_at {
        let r = b.step("r1");
        assert_eq!(r.share_percent, 20);
    }
    assert_eq!(
        b.decisions
            .iter()
            .filter(|d| d.reason.contains("held back"))
            .count(),
        held
    );
    let r = b.run_until("r1", 5, |r| r.share_percent == 25);
    assert!(b.now() >= allowed_at);
    assert!(r.blocked.is_none());
}

#[test]
fn a_freeze_on_the_release_holds_the_next_move_until_it_ends() {
    let mut b = Bench::new();
    b.create(spec("r1"));
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    let r = b.run_until("r1", 20, |r| r.share_percent == 5);
    assert!(r.blocked.is_none());
    // An incident action on green freezes it for 30 minutes.
    let until = b.now() + 30 * MIN;
    let freeze = crate::brain::incident::Freeze {
        stack: "green".into(),
        until_ms: until,
        incident: 3,
        action: "shift 5% from green to blue".into(),
    };
    b.store
        .commit(&Batch::new().put(
            "incident/freeze/green",
            serde_json::to_vec(&freeze).unwrap(),
        ))
        .unwrap();
    let r = b.run_until("r1", 400, |r| r.blocked.is_some());
    let blocked = r.blocked.clone().unwrap();
    assert_eq!(blocked.guardrail, "freeze");
    assert_eq!(blocked.allowed_at, Some(until));
    assert!(blocked.reason.contains("incident 3"), "{}", blocked.reason);
    while b.now() + WINDOW < until {
        assert_eq!(b.step("r1").share_percent, 5, "moved during the freeze");
    }
    let r = b.run_until("r1", 5, |r| r.share_percent > 5);
    assert!(b.now() >= until && r.blocked.is_none());
    // A rollback is never held by a freeze: freeze again, abort evacuates at once.
    let freeze = crate::brain::incident::Freeze {
        until_ms: b.now() + 30 * MIN,
        ..freeze
    };
    b.store
        .commit(&Batch::new().put(
            "incident/freeze/green",
            serde_json::to_vec(&freeze).unwrap(),
        ))
        .unwrap();
    let r = b.command("r1", Command::Abort { actor: alice() }).unwrap();
    assert_eq!((r.phase, r.share_percent), (Phase::Aborted, 0));
}

#[test]
fn primary_stack_needs_approval_and_resume_approves_the_step() {
    let mut cfg = GuardConfig::default();
    cfg.primary_stacks.insert("blue".into());
    let mut b = Bench::with(Arc::new(MemoryStore::new()), cfg);
    b.create(spec("r1"));
    let r = b.command("r1", Command::Start { actor: alice() }).unwrap();
    let Phase::Paused {
        reason: PauseReason::NeedsApproval { reason },
        ..
    } = &r.phase
    else {
        panic!("{:?}", r.phase)
    };
    assert!(reason.contains("primary stack blue"), "{reason}");
    assert_eq!(b.shares(), vec![]);
    // ticks do nothing while it waits
    assert_eq!(b.step("r1").share_percent, 0);
    let r = b
        .command(
            "r1",
            Command::Resume {
                actor: "bob".into(),
            },
        )
        .unwrap();
    assert_eq!(r.approved, Some((0, "bob".into())));
    assert_eq!(b.shares(), vec![(5, MoveMode::Keep)]);
    assert!(b
        .decisions
        .iter()
        .any(|d| d.actor == "bob" && d.reason.starts_with("approved")));
}

#[test]
fn breach_halts_and_proposes_rollback_then_rollback_evacuates() {
    let mut b = Bench::new();
    b.create(spec("r1"));
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    b.traffic.release_error_rate = 0.02;
    let r = b.run_until("r1", 100, |r| matches!(r.phase, Phase::Halted { .. }));
    let Phase::Halted { step: 0, reason } = &r.phase else {
        panic!("{:?}", r.phase)
    };
    assert!(reason.contains("error_rate"), "{reason}");
    assert_eq!(r.steps[0].outcome, Some(StepOutcome::Failed));
    // proposed, not executed: still at 5 %
    assert_eq!(r.share_percent, 5);
    assert!(matches!(
        b.actions.last(),
        Some(Action::ProposeRollback { .. })
    ));
    let d = b.decisions.last().unwrap();
    assert_eq!(d.phase, "halted");
    assert!(d.action.as_deref().unwrap().contains("propose rollback"));
    let failed = d.gates.iter().find(|g| g.gate == "error_rate").unwrap();
    assert_eq!(failed.verdict, Verdict::Fail);
    assert!(failed.confidence >= 0.99 && failed.n > 0.0);
    // halted without auto_rollback: ticks change nothing
    let before = b.actions.len();
    b.step("r1");
    assert_eq!(b.actions.len(), before);
    // a promote is refused while halted
    assert!(matches!(
        b.command("r1", Command::Promote { actor: alice() }),
        Err(RolloutError::NotNow { .. })
    ));
    let r = b
        .command(
            "r1",
            Command::Rollback {
                actor: "bob".into(),
            },
        )
        .unwrap();
    assert_eq!(r.phase, Phase::RolledBack);
    assert_eq!(b.shares().last(), Some(&(0, MoveMode::Evacuate)));
    assert!(b.engine.open().unwrap().is_empty());
    // blast radius of the bad release: about its 5 % share of users
    let f = r.blast.fraction().unwrap();
    assert!(f > 0.03 && f < 0.06, "{f}");
}

#[test]
fn a_kpi_dip_with_healthy_infrastructure_halts_on_the_kpi_gate() {
    let mut b = Bench::new();
    let mut s = spec("r1");
    s.gates = Gates::with_kpis(["orders"]);
    b.create(s);
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    // no errors, fast responses, but a fifth fewer orders per request
    b.traffic.release_order_rate = 0.024;
    let r = b.run_until("r1", 200, |r| matches!(r.phase, Phase::Halted { .. }));
    let d = b.decisions.last().unwrap();
    let failed: Vec<&str> = d
        .gates
        .iter()
        .filter(|g| g.verdict == Verdict::Fail)
        .map(|g| g.gate.as_str())
        .collect();
    assert_eq!(failed, vec!["kpi:orders"]);
    let kpi = d.gates.iter().find(|g| g.gate == "kpi:orders").unwrap();
    assert!((kpi.estimate.unwrap() - 0.8).abs() < 0.02, "{kpi:?}");
    assert!(matches!(r.phase, Phase::Halted { step: 0, .. }));
}

#[test]
fn a_planned_step_down_drains() {
    let mut b = Bench::new();
    let mut s = spec("r1");
    s.plan = plan_from_shares(&[0, 10, 5, 100], 10 * MIN, 30 * MIN);
    b.create(s);
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    b.run_until("r1", 200, |r| {
        r.phase.step() == Some(1) && r.share_percent == 5
    });
    assert_eq!(
        b.shares(),
        vec![
            (5, MoveMode::Keep),
            (10, MoveMode::Keep),
            (5, MoveMode::Drain)
        ]
    );
}

#[test]
fn auto_rollback_executes_at_once_when_pre_approved() {
    let mut b = Bench::new();
    let mut s = spec("r1");
    s.auto_rollback = true;
    b.create(s);
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    b.traffic.release_error_rate = 0.05;
    let r = b.run_until("r1", 100, |r| !r.phase.is_open());
    assert_eq!(r.phase, Phase::RolledBack);
    assert_eq!(b.shares().last(), Some(&(0, MoveMode::Evacuate)));
    let last = b.decisions.last().unwrap();
    assert!(last.reason.contains("automatic rollback"), "{last:?}");
    assert!(last.actor.starts_with("rollout:"));
}

#[test]
fn auto_rollback_onto_a_primary_stack_needs_no_further_approval() {
    let mut cfg = GuardConfig::default();
    cfg.primary_stacks.insert("blue".into());
    let mut b = Bench::with(Arc::new(MemoryStore::new()), cfg);
    let mut s = spec("r1");
    s.auto_rollback = true;
    b.create(s);
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    b.command(
        "r1",
        Command::Resume {
            actor: "bob".into(),
        },
    )
    .unwrap();
    b.traffic.release_error_rate = 0.05;
    let r = b.run_until("r1", 100, |r| !r.phase.is_open());
    assert_eq!(r.phase, Phase::RolledBack);
    assert_eq!(b.shares().last(), Some(&(0, MoveMode::Evacuate)));
}

#[test]
fn a_ramp_held_by_the_lease_retries_on_the_next_tick() {
    let mut b = Bench::new();
    let mut s = spec("r1");
    s.plan = plan_from_shares(&[0, 10, 100], 10 * MIN, 30 * MIN);
    b.create(s);
    // 0 -> 10 % in two moves over the 1-minute warm-up: the second is due at 30 s
    let first = b
        .engine
        .command("r1", Command::Start { actor: alice() }, T0)
        .unwrap();
    // the executor is slow: the first move is not recorded when the second is due
    b.clock.advance(40_000);
    let r = b.engine.tick("r1", b.now(), &[]).unwrap().rollout;
    let blocked = r.blocked.unwrap();
    assert_eq!(blocked.guardrail, "one_change_at_a_time");
    assert_eq!(blocked.allowed_at, Some(T0 + 60_000));
    b.execute(&first);
    // the record released the lease: the next tick moves, well before the expiry
    b.clock.advance(WINDOW);
    let out = b.engine.tick("r1", b.now(), &[]).unwrap();
    b.execute(&out);
    assert!(b.now() < T0 + 60_000);
    assert_eq!(out.rollout.share_percent, 10);
    assert!(out.rollout.blocked.is_none());
}

#[test]
fn auto_rollback_waits_for_the_lease_and_retries() {
    let mut b = Bench::new();
    let mut s = spec("r1");
    s.auto_rollback = true;
    b.create(s);
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    b.traffic.release_error_rate = 0.05;
    b.run_until("r1", 100, |r| matches!(r.phase, Phase::Observing { .. }));
    // an operator's change is executing when the gate fails
    let manual = b
        .guard
        .check(
            &ProposedChange {
                scope: "rule/other".into(),
                kind: ChangeKind::Manual,
                origin: Origin::Human {
                    actor: "carol".into(),
                },
                stacks: vec!["canary".into()],
                shift_percent: 5,
                approved_by: None,
                pre_approved: false,
                summary: "canary weight 95".into(),
            },
            b.now(),
        )
        .unwrap();
    let r = b.run_until("r1", 100, |r| matches!(r.phase, Phase::Halted { .. }));
    let blocked = r.blocked.unwrap();
    assert_eq!(blocked.guardrail, "one_change_at_a_time");
    assert!(blocked.reason.contains("carol"), "{}", blocked.reason);
    b.guard
        .record(
            &ExecutedChange {
                permit: manual,
                applied: true,
            },
            b.now(),
        )
        .unwrap();
    let r = b.step("r1");
    assert_eq!(r.phase, Phase::RolledBack);
}

#[test]
fn a_step_undecided_at_its_maximum_dwell_names_the_step_and_the_open_gates() {
    let mut b = Bench::new();
    b.create(spec("r1"));
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    b.run_until("r1", 20, |r| matches!(r.phase, Phase::Observing { .. }));
    // Errors on the release right at the gate's limit (0.1 %) and little traffic: the
    // error-rate test can tell neither pass nor fail before the maximum dwell.
    b.traffic = Traffic {
        rps: 20,
        release_error_rate: 0.001,
        ..HEALTHY
    };
    let r = b.run_until("r1", 400, |r| matches!(r.phase, Phase::Paused { .. }));
    let Phase::Paused {
        reason: PauseReason::Inconclusive { detail },
        ..
    } = &r.phase
    else {
        panic!("{:?}", r.phase)
    };
    // Steps count from 1 for people, as in every other decision of the rollout.
    assert!(
        detail.starts_with("step 1: no decision within the maximum dwell (undecided: error_rate"),
        "{detail}"
    );
    assert_eq!(r.share_percent, 5);
}

#[test]
fn inconclusive_step_pauses_and_resume_observes_longer() {
    let mut b = Bench::new();
    b.create(spec("r1"));
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    b.run_until("r1", 20, |r| matches!(r.phase, Phase::Observing { .. }));
    // traffic vanishes: never a silent pass
    b.traffic.rps = 0;
    let r = b.run_until("r1", 400, |r| matches!(r.phase, Phase::Paused { .. }));
    let Phase::Paused {
        reason: PauseReason::Inconclusive { detail },
        resume,
        ..
    } = &r.phase
    else {
        panic!("{:?}", r.phase)
    };
    assert!(detail.contains("no release traffic"), "{detail}");
    assert_eq!(r.share_percent, 5);
    let Phase::Observing {
        since_ms,
        deadline_ms,
        ..
    } = **resume
    else {
        panic!()
    };
    assert!(b.now() >= deadline_ms);
    // paused: nothing moves
    for _ in 0..5 {
        assert!(matches!(b.step("r1").phase, Phase::Paused { .. }));
    }
    b.traffic = HEALTHY;
    let r = b.command("r1", Command::Resume { actor: alice() }).unwrap();
    let Phase::Observing {
        since_ms: s2,
        deadline_ms: d2,
        ..
    } = r.phase
    else {
        panic!("{:?}", r.phase)
    };
    assert_eq!(s2, since_ms);
    assert_eq!(d2, b.now() + 30 * MIN);
    let r = b.run_until("r1", 200, |r| r.phase.step() == Some(1));
    assert_eq!(r.steps[0].outcome, Some(StepOutcome::Passed));
}

#[test]
fn human_pause_and_resume() {
    let mut b = Bench::new();
    b.create(spec("r1"));
    assert!(matches!(
        b.command("r1", Command::Pause { actor: alice() }),
        Err(RolloutError::NotNow {
            command: "pause",
            phase: "pending"
        })
    ));
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    assert!(matches!(
        b.command("r1", Command::Start { actor: alice() }),
        Err(RolloutError::NotNow { .. })
    ));
    let r = b
        .command(
            "r1",
            Command::Pause {
                actor: "bob".into(),
            },
        )
        .unwrap();
    assert!(matches!(
        r.phase,
        Phase::Paused {
            reason: PauseReason::Human { .. },
            ..
        }
    ));
    for _ in 0..100 {
        assert_eq!(b.step("r1").share_percent, 5);
    }
    let r = b
        .command(
            "r1",
            Command::Resume {
                actor: "bob".into(),
            },
        )
        .unwrap();
    // the warm-up already elapsed: observing right away
    assert!(
        matches!(r.phase, Phase::Observing { step: 0, .. }),
        "{:?}",
        r.phase
    );
    assert!(matches!(
        b.command("r1", Command::Rollback { actor: alice() }),
        Err(RolloutError::NotNow { .. })
    ));
}

#[test]
fn promote_jumps_to_100_keeping_sticky_users() {
    let mut b = Bench::new();
    b.create(spec("r1"));
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    b.run_until("r1", 20, |r| matches!(r.phase, Phase::Observing { .. }));
    let r = b
        .command(
            "r1",
            Command::Promote {
                actor: "bob".into(),
            },
        )
        .unwrap();
    assert_eq!(r.phase, Phase::Promoted);
    assert_eq!(b.shares().last(), Some(&(100, MoveMode::Keep)));
    assert_eq!(r.steps[0].outcome, Some(StepOutcome::Interrupted));
    // the approved 95 % move counted towards the scope's budget
    assert_eq!(b.guard.shift_in_window("policy", b.now()).unwrap(), 100);
}

#[test]
fn abort_evacuates_the_release_and_frees_the_scope() {
    let mut b = Bench::new();
    b.create(spec("r1"));
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    b.run_until("r1", 20, |r| r.share_percent == 5);
    let r = b
        .command(
            "r1",
            Command::Abort {
                actor: "bob".into(),
            },
        )
        .unwrap();
    assert_eq!(r.phase, Phase::Aborted);
    assert_eq!(b.shares().last(), Some(&(0, MoveMode::Evacuate)));
    assert!(matches!(
        b.command(
            "r1",
            Command::Abort {
                actor: "bob".into()
            }
        ),
        Err(RolloutError::NotNow { .. })
    ));
    // aborting a pending rollout moves nothing
    b.create(spec("r2"));
    let n = b.actions.len();
    let r = b
        .command(
            "r2",
            Command::Abort {
                actor: "bob".into(),
            },
        )
        .unwrap();
    assert_eq!((r.phase, b.actions.len()), (Phase::Aborted, n));
}

#[test]
fn one_open_rollout_per_scope_and_unique_ids() {
    let b = Bench::new();
    b.engine.create(spec("r1"), T0).unwrap();
    match b.engine.create(spec("r2"), T0) {
        Err(RolloutError::ScopeBusy { holder, .. }) => assert_eq!(holder, "r1"),
        other => panic!("{other:?}"),
    }
    let mut other = spec("r1");
    other.scope = "checkout".into();
    assert!(matches!(
        b.engine.create(other, T0),
        Err(RolloutError::Exists(_))
    ));
    let mut bad = spec("bad id");
    bad.plan[0].share_percent = 0;
    bad.stable = "green".into();
    let Err(RolloutError::Invalid(p)) = b.engine.create(bad, T0) else {
        panic!()
    };
    let p = p.join("\n");
    for field in ["id:", "stable:", "plan[0].share_percent"] {
        assert!(p.contains(field), "{p}");
    }
}

#[test]
fn concurrent_engines_one_wins_the_other_gets_a_conflict() {
    let mut b = Bench::new();
    b.create(spec("r1"));
    let other = RolloutEngine::new(b.store.clone(), b.guard.clone());
    // both read the same state
    let mine = b.engine.load("r1").unwrap();
    let theirs = other.load("r1").unwrap();
    b.engine
        .command_on(mine, Command::Start { actor: alice() }, T0)
        .unwrap();
    match other.command_on(
        theirs,
        Command::Abort {
            actor: "bob".into(),
        },
        T0,
    ) {
        Err(RolloutError::Conflict(id)) => assert_eq!(id, "r1"),
        x => panic!("{x:?}"),
    }
    // the loser wrote nothing
    assert!(matches!(
        b.engine.get("r1").unwrap().unwrap().phase,
        Phase::Warming { .. }
    ));
    // a tick that loses the race gives its permit back
    let lease = b.guard.holder(T0).unwrap().unwrap();
    b.guard
        .record(
            &ExecutedChange {
                permit: Permit {
                    token: lease.token,
                    change: ProposedChange {
                        scope: "policy".into(),
                        kind: ChangeKind::PlanStep,
                        origin: Origin::Automatic { actor: "x".into() },
                        stacks: vec![],
                        shift_percent: 0,
                        approved_by: None,
                        pre_approved: false,
                        summary: String::new(),
                    },
                    granted_ms: T0,
                    expires_ms: T0,
                    notes: vec![],
                },
                applied: false,
            },
            T0,
        )
        .unwrap();
    let t = T0 + 20 * MIN;
    let a = b.engine.load("r1").unwrap();
    let c = other.load("r1").unwrap();
    b.engine
        .command_on(a, Command::Pause { actor: alice() }, t)
        .unwrap();
    assert!(matches!(
        other.tick_on(c, t, &[]),
        Err(RolloutError::Conflict(_))
    ));
    assert!(b.guard.holder(t).unwrap().is_none());
}

#[test]
fn a_manual_change_is_refused_while_a_rollout_move_executes() {
    let mut b = Bench::new();
    b.create(spec("r1"));
    let out = b
        .engine
        .command("r1", Command::Start { actor: alice() }, T0)
        .unwrap();
    // the executor has not recorded the move yet
    assert_eq!(out.actions.len(), 1);
    let err = b
        .guard
        .check(
            &ProposedChange {
                scope: "policy".into(),
                kind: ChangeKind::Manual,
                origin: Origin::Human {
                    actor: "carol".into(),
                },
                stacks: vec!["blue".into()],
                shift_percent: 10,
                approved_by: None,
                pre_approved: false,
                summary: "blue weight 90".into(),
            },
            T0 + 1,
        )
        .unwrap_err();
    let GuardError::Refused(r) = err else {
        panic!()
    };
    assert_eq!(r.guardrail, Guardrail::OneChangeAtATime);
    assert!(r.reason.contains("rollout:r1"), "{}", r.reason);
    b.execute(&out);
}

#[test]
fn a_new_engine_over_the_same_redb_resumes_mid_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let (now, windows, applied, id_phase) = {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let mut b = Bench::with(store, GuardConfig::default());
        b.create(spec("r1"));
        b.command("r1", Command::Start { actor: alice() }).unwrap();
        let r = b.run_until("r1", 100, |r| matches!(r.phase, Phase::Observing { .. }));
        for _ in 0..5 {
            b.step("r1");
        }
        (b.now(), b.windows.clone(), b.applied, r.phase)
    };
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
    let mut b = Bench::with(store, GuardConfig::default());
    b.clock.set(now);
    b.windows = windows;
    b.applied = applied;
    let open = b.engine.open().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].phase, id_phase);
    assert_eq!(open[0].share_percent, 5);
    let r = b.run_until("r1", 1_000, |r| !r.phase.is_open());
    assert_eq!(r.phase, Phase::Completed);
    // it went on from 5 %, not from the start
    assert_eq!(b.shares().first(), Some(&(10, MoveMode::Keep)));
}

#[test]
fn rule_scope_measures_exposure_from_the_rule_counts() {
    let mut b = Bench::new();
    let mut s = spec("r1");
    s.scope = "checkout".into();
    b.create(s);
    b.command("r1", Command::Start { actor: alice() }).unwrap();
    let r = b.run_until("r1", 200, |r| r.steps.len() == 2);
    let e = r.steps[0].exposure.unwrap();
    assert!((e - 0.05).abs() < 0.005, "{e}");
    assert!(b.guard.shift_in_window("checkout", b.now()).unwrap() > 0);
    assert_eq!(b.guard.shift_in_window("policy", b.now()).unwrap(), 0);
}

#[test]
fn operator_factors_give_the_share() {
    // exact beats "keep the stable stack at 100": 5/(5+95)
    let f = operator_factors(5, 100, 100).unwrap();
    assert_eq!((f.release, f.stable), (5, 95));
    assert!((f.share_percent - 5.0).abs() < 1e-9, "{f:?}");
    let f = operator_factors(50, 100, 100).unwrap();
    assert_eq!((f.release, f.stable), (100, 100));
    // 96*1 / (96*1 + 8*3) = 0.8 exactly; the largest exact pair
    let f = operator_factors(80, 1, 3).unwrap();
    assert_eq!((f.release, f.stable), (96, 8));
    assert_eq!(operator_factors(0, 5, 5).unwrap().release, 0);
    let f = operator_factors(100, 5, 5).unwrap();
    assert_eq!((f.release, f.stable), (100, 0));
    assert!(operator_factors(5, 0, 10).is_err());
    assert!(operator_factors(5, 10, 0).is_err());
    // near the ends whole factors run out: 30:70 cannot go past 3000/3070
    let f = operator_factors(99, 30, 70).unwrap();
    assert_eq!((f.release, f.stable), (100, 1));
    for share in 1..=95 {
        let f = operator_factors(share, 30, 70).unwrap();
        assert!(
            (f.share_percent - f64::from(share)).abs() < 0.6,
            "{share} {f:?}"
        );
    }
}

#[test]
fn default_plan_is_table_2() {
    let s = RolloutSpec::new("r", "green", "blue", SCOPE_POLICY);
    assert!(s.problems().is_empty(), "{:?}", s.problems());
    let shares: Vec<u32> = s.plan.iter().map(|p| p.share_percent).collect();
    assert_eq!(shares, vec![5, 20, 50, 100]);
    assert_eq!(
        (s.plan[0].min_dwell_ms, s.plan[0].max_dwell_ms),
        (30 * MIN, 60 * MIN)
    );
    assert_eq!(s.plan[2].max_dwell_ms, 8 * 60 * MIN);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<RolloutSpec>(&json).unwrap(), s);
}
