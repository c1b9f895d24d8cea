use super::*;
use crate::brain::clock::{Clock, ManualClock};
use crate::brain::detection::{Correlation, CrossStack, Signal};
use crate::brain::events::{Event, Scope};
use crate::store::{MemoryStore, RedbStore};

const T0: u64 = 1_796_090_400_000;
const MIN: u64 = 60_000;

fn finding(stack: &str, signal: Signal, severity: Severity, localised: bool) -> Finding {
    Finding {
        stack: stack.into(),
        signal,
        severity,
        at_ms: T0,
        onset_ms: T0 - 3 * MIN,
        change_ms: None,
        ramp_from_ms: None,
        under_maintenance: false,
        windows: 3,
        observed: 0.02,
        baseline: Some(0.0004),
        baseline_source: None,
        score: 9.0,
        cross: localised.then_some(CrossStack {
            others: 0.0004,
            z: 12.0,
            ratio: 50.0,
        }),
        localised,
        reasons: if localised {
            vec![Reason::Baseline, Reason::CrossStack]
        } else {
            vec![Reason::Baseline]
        },
        lead_time_ms: Some(0),
        events: Vec::new(),
        series: vec![(T0 - MIN, 0.01), (T0, 0.02)],
        stale: false,
    }
}

fn stacks(peak: f64) -> Vec<StackStatus> {
    ["blue", "green"]
        .iter()
        .map(|n| StackStatus {
            name: n.to_string(),
            group: "default".into(),
            segments: Vec::new(),
            rules: Vec::new(),
            healthy: true,
            rps: 100.0,
            peak_rps: peak,
            capacity_rps: None,
        })
        .collect()
}

struct Fx {
    clock: ManualClock,
    engine: IncidentEngine,
    stacks: Vec<StackStatus>,
}

impl Fx {
    fn new() -> Self {
        Self::on(Arc::new(MemoryStore::new()))
    }
    fn on(store: Arc<dyn Store>) -> Self {
        Self {
            clock: ManualClock::new(T0),
            engine: IncidentEngine::new(store, IncidentConfig::default()),
            stacks: stacks(300.0),
        }
    }
    fn now(&self) -> u64 {
        self.clock.now_ms()
    }
    fn tick(&self, findings: &[Finding]) -> TickOutput {
        let ctx = Context {
            findings,
            stacks: &self.stacks,
            events: &[],
        };
        self.engine.tick(self.now(), &ctx).unwrap()
    }
    fn open_on(&self, f: &Finding) -> u64 {
        self.engine
            .trigger(Trigger::from_finding(f), self.now())
            .unwrap()
            .incident
            .id
    }
    fn phase(&self, id: u64) -> Phase {
        self.engine.get(id).unwrap().unwrap().phase
    }
    /// Trigger on `f` and tick past the re-check with `f` still present.
    fn to_approval(&self, f: &Finding) -> u64 {
        let id = self.open_on(f);
        self.clock.advance(self.engine.config().validate_ms);
        self.tick(std::slice::from_ref(f));
        assert_eq!(self.phase(id), Phase::AwaitingApproval);
        id
    }
}

fn phases(d: &[Decision]) -> Vec<Phase> {
    d.iter().map(|d| d.phase).collect()
}

#[test]
fn every_transition_from_trigger_to_resolved() {
    let fx = Fx::new();
    let f = finding("green", Signal::P99, Severity::Confirmed, true);
    let out = fx
        .engine
        .trigger(Trigger::from_finding(&f), fx.now())
        .unwrap();
    let id = out.incident.id;
    assert_eq!(phases(&out.decisions), [Phase::Validating]);
    // Before the re-check nothing moves.
    fx.clock.advance(MIN);
    let t = fx.tick(std::slice::from_ref(&f));
    assert!(t.decisions.is_empty() && t.actions.is_empty());
    fx.clock.advance(2 * MIN);
    let t = fx.tick(std::slice::from_ref(&f));
    assert_eq!(
        phases(&t.decisions),
        [
            Phase::Correlating,
            Phase::Localising,
            Phase::CheckingDependencies,
            Phase::Scoring,
            Phase::AwaitingApproval
        ]
    );
    assert!(t.actions.is_empty(), "nothing moves before approval");
    let inc = fx.engine.get(id).unwrap().unwrap();
    let ev = inc.evidence.clone().unwrap();
    assert_eq!(ev.delta_stack.as_deref(), Some("green"));
    let shift = Action::Shift {
        scope: "green".into(),
        from: "green".into(),
        to: vec!["blue".into()],
        percent: 50,
    };
    assert_eq!(ev.proposed.as_ref(), Some(&shift));
    assert_eq!(ev.dependencies.len(), 1);
    assert!(ev.dependencies[0].ok && ev.dependencies[0].projected_rps == 150.0);
    assert!(ev
        .alternatives
        .iter()
        .any(|a| matches!(a.action, Some(Action::Evacuate { .. }))));
    assert_eq!(ev.signals[0].series.len(), 2);
    assert!(ev.confidence > 0.5, "{:?}", ev.factors);
    assert_eq!(
        t.decisions[4].action.as_deref(),
        Some(shift.describe().as_str())
    );
    assert_eq!(t.decisions[4].confidence, Some(ev.confidence));
    // Still nothing moves on later ticks without approval.
    fx.clock.advance(10 * MIN);
    assert!(fx.tick(std::slice::from_ref(&f)).actions.is_empty());
    let out = fx.engine.approve(id, "alice", "go", fx.now()).unwrap();
    assert_eq!(out.action.as_ref(), Some(&shift));
    assert_eq!(phases(&out.decisions), [Phase::Executing]);
    assert_eq!(out.decisions[0].actor, "alice");
    // The approval claimed the action for its executor: ticks leave it alone...
    let claim = out.claim.clone().expect("claimed by the approval");
    assert!(fx.tick(std::slice::from_ref(&f)).actions.is_empty());
    // ...until the claim is stale (the executor died): the next tick claims it anew,
    // once, and the dead executor's confirmation is refused.
    fx.clock.advance(30_000);
    let t = fx.tick(std::slice::from_ref(&f));
    assert_eq!(t.actions.len(), 1, "taken over");
    assert_eq!((t.actions[0].id, &t.actions[0].action), (id, &shift));
    assert!(t.actions[0].stale_since_ms.is_some());
    assert!(fx.tick(std::slice::from_ref(&f)).actions.is_empty());
    assert!(matches!(
        fx.engine
            .executed_as(id, true, "late", fx.now(), Some(&claim)),
        Err(IncidentError::ClaimLost { .. })
    ));
    let out = fx
        .engine
        .executed_as(
            id,
            true,
            "weights pushed",
            fx.now(),
            Some(&t.actions[0].record),
        )
        .unwrap();
    assert_eq!(phases(&out.decisions), [Phase::Verifying]);
    assert!(fx.engine.freeze("green", fx.now()).unwrap().is_some());
    assert!(fx.engine.freeze("blue", fx.now()).unwrap().is_some());
    assert!(
        fx.tick(&[]).decisions.is_empty(),
        "verification waits for verify_ms"
    );
    fx.clock.advance(5 * MIN);
    assert_eq!(phases(&fx.tick(&[]).decisions), [Phase::Resolved]);
    assert!(fx.engine.open_ids().unwrap().is_empty());
    let inc = fx.engine.get(id).unwrap().unwrap();
    assert_eq!(
        inc.history.iter().map(|t| t.to).collect::<Vec<_>>(),
        [
            Phase::Validating,
            Phase::Correlating,
            Phase::Localising,
            Phase::CheckingDependencies,
            Phase::Scoring,
            Phase::AwaitingApproval,
            Phase::Executing,
            Phase::Verifying,
            Phase::Resolved
        ]
    );
    assert_eq!(inc.executed, vec![shift]);
    // Closed: a new trigger on the scope opens a new incident.
    assert_ne!(fx.open_on(&f), id);
}

#[test]
fn a_trigger_that_does_not_persist_is_dismissed() {
    let fx = Fx::new();
    let f = finding("green", Signal::ErrorRate, Severity::Confirmed, true);
    let id = fx.open_on(&f);
    fx.clock.advance(3 * MIN);
    let t = fx.tick(&[]);
    assert_eq!(phases(&t.decisions), [Phase::Dismissed]);
    assert_eq!(fx.phase(id), Phase::Dismissed);
    assert!(fx.engine.open_ids().unwrap().is_empty());
}

#[test]
fn rejection_closes_with_actor_and_comment() {
    let fx = Fx::new();
    let f = finding("green", Signal::ErrorRate, Severity::Confirmed, true);
    let id = fx.to_approval(&f);
    let before = fx.engine.get(id).unwrap();
    assert!(matches!(
        fx.engine.reject(id, "bob", " ", fx.now()),
        Err(IncidentError::Invalid(_))
    ));
    assert!(matches!(
        fx.engine.approve(id, "", "x", fx.now()),
        Err(IncidentError::Invalid(_))
    ));
    assert_eq!(
        fx.engine.get(id).unwrap(),
        before,
        "refused calls change nothing"
    );
    let out = fx
        .engine
        .reject(id, "bob", "known flaky dependency", fx.now())
        .unwrap();
    assert_eq!(phases(&out.decisions), [Phase::Rejected]);
    assert_eq!(out.decisions[0].actor, "bob");
    let inc = fx.engine.get(id).unwrap().unwrap();
    assert_eq!(inc.approvals[0].comment, "known flaky dependency");
    assert!(!inc.approvals[0].approved);
    assert!(matches!(
        fx.engine.approve(id, "alice", "", fx.now()),
        Err(IncidentError::WrongPhase {
            phase: Phase::Rejected,
            ..
        })
    ));
    assert!(fx.engine.open_ids().unwrap().is_empty());
    assert!(fx.tick(&[f]).actions.is_empty());
}

#[test]
fn the_freeze_window_blocks_a_second_action() {
    let mut fx = Fx::new();
    fx.stacks.push(StackStatus {
        name: "canary".into(),
        group: "default".into(),
        segments: Vec::new(),
        rules: Vec::new(),
        healthy: true,
        rps: 10.0,
        peak_rps: 300.0,
        capacity_rps: None,
    });
    let g = finding("green", Signal::ErrorRate, Severity::Confirmed, true);
    let first = fx.to_approval(&g);
    fx.engine.approve(first, "alice", "", fx.now()).unwrap();
    fx.engine.executed(first, true, "", fx.now()).unwrap();
    let frozen_until = fx.now() + 15 * MIN;
    // A second incident, on canary, wants to move traffic to blue and green.
    let c = finding("canary", Signal::ErrorRate, Severity::Confirmed, true);
    let second = fx.to_approval(&c);
    let proposal = fx
        .engine
        .get(second)
        .unwrap()
        .unwrap()
        .proposal()
        .cloned()
        .unwrap();
    assert!(
        proposal.stacks().contains(&"blue".to_string()),
        "{proposal:?}"
    );
    let before = fx.engine.get(second).unwrap();
    let err = fx
        .engine
        .approve(second, "alice", "", fx.now())
        .unwrap_err();
    match &err {
        IncidentError::Frozen {
            until_ms, incident, ..
        } => {
            assert_eq!((*until_ms, *incident), (frozen_until, first));
        }
        e => panic!("{e}"),
    }
    assert!(err.to_string().contains("frozen until"), "{err}");
    assert_eq!(fx.engine.get(second).unwrap(), before);
    fx.clock.set(frozen_until);
    let out = fx
        .engine
        .approve(second, "alice", "freeze over", fx.now())
        .unwrap();
    assert_eq!(out.action, Some(proposal));
}

#[test]
fn duplicate_triggers_merge_into_one_open_incident_per_scope() {
    let fx = Fx::new();
    let f = finding("green", Signal::P99, Severity::Confirmed, true);
    let a = fx.open_on(&f);
    let b = fx.open_on(&finding(
        "green",
        Signal::ErrorRate,
        Severity::Confirmed,
        true,
    ));
    let hc = fx
        .engine
        .trigger(
            Trigger::health_check("green", "http", "503", fx.now()),
            fx.now(),
        )
        .unwrap();
    assert_eq!((a, b, hc.incident.id), (a, a, a));
    assert!(hc.decisions.is_empty());
    let other = fx.open_on(&finding("blue", Signal::P99, Severity::Confirmed, true));
    assert_ne!(other, a);
    let inc = fx.engine.get(a).unwrap().unwrap();
    assert_eq!((inc.trigger_count, inc.triggers.len()), (3, 3));
    // The same Alertmanager alert delivered twice counts once.
    let am = crate::brain::events::parse_alertmanager(
        r#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"X","stack":"green"},"startsAt":"2026-12-01T02:00:00Z","fingerprint":"f1"}]}"#,
    )
    .unwrap();
    fx.engine.ingest_alerts(&am, fx.now()).unwrap();
    fx.engine.ingest_alerts(&am, fx.now()).unwrap();
    assert_eq!(fx.engine.get(a).unwrap().unwrap().trigger_count, 4);
    assert_eq!(fx.engine.open_ids().unwrap(), vec![a, other]);
}

#[test]
fn an_alert_resolved_before_the_recheck_is_dismissed() {
    let fx = Fx::new();
    let body = |status: &str| {
        format!(
            r#"{{"version":"4","status":"{status}","alerts":[{{"status":"{status}","labels":{{"alertname":"HighLatency","switchyard_stack":"green"}},"startsAt":"2026-12-01T02:00:00Z","fingerprint":"ab"}}]}}"#
        )
    };
    let firing = crate::brain::events::parse_alertmanager(&body("firing")).unwrap();
    let out = fx.engine.ingest_alerts(&firing, fx.now()).unwrap();
    let id = out[0].incident.id;
    // Still firing at the re-check (no finding needed): the workflow goes on.
    let fx2 = Fx::new();
    let id2 = fx2.engine.ingest_alerts(&firing, fx2.now()).unwrap()[0]
        .incident
        .id;
    fx2.clock.advance(3 * MIN);
    fx2.tick(&[]);
    assert_eq!(fx2.phase(id2), Phase::AwaitingApproval);
    // Resolved first: dismissed.
    let resolved = crate::brain::events::parse_alertmanager(&body("resolved")).unwrap();
    fx.engine.ingest_alerts(&resolved, fx.now()).unwrap();
    fx.clock.advance(3 * MIN);
    fx.tick(&[]);
    assert_eq!(fx.phase(id), Phase::Dismissed);
}

#[test]
fn no_recovery_proposes_the_next_action_then_a_rollback() {
    let fx = Fx::new();
    let g = finding("green", Signal::ErrorRate, Severity::Confirmed, true);
    let id = fx.to_approval(&g);
    fx.engine.approve(id, "alice", "", fx.now()).unwrap();
    fx.engine.executed(id, true, "", fx.now()).unwrap();
    fx.clock.advance(5 * MIN);
    // Green still bad after the 50 % shift: propose evacuating the rest.
    let t = fx.tick(std::slice::from_ref(&g));
    assert_eq!(phases(&t.decisions), [Phase::AwaitingApproval]);
    let next = fx.engine.get(id).unwrap().unwrap().proposal().cloned();
    assert_eq!(
        next,
        Some(Action::Evacuate {
            stack: "green".into(),
            to: vec!["blue".into()]
        })
    );
    // The escalation is a second action: it waits for the freeze.
    assert!(matches!(
        fx.engine.approve(id, "alice", "", fx.now()),
        Err(IncidentError::Frozen { .. })
    ));
    fx.clock.advance(10 * MIN);
    fx.engine.approve(id, "alice", "", fx.now()).unwrap();
    fx.engine.executed(id, true, "", fx.now()).unwrap();
    fx.clock.advance(5 * MIN);
    // The errors followed the traffic to blue: roll back.
    let b = finding("blue", Signal::ErrorRate, Severity::Confirmed, false);
    fx.tick(&[b]);
    let inc = fx.engine.get(id).unwrap().unwrap();
    assert_eq!(inc.phase, Phase::AwaitingApproval);
    let restore = Action::Restore {
        stacks: vec!["green".into(), "blue".into()],
    };
    assert_eq!(inc.proposal(), Some(&restore));
    // Its own rollback is allowed inside the freeze.
    let out = fx.engine.approve(id, "alice", "undo", fx.now()).unwrap();
    assert_eq!(out.action, Some(restore));
}

#[test]
fn dependency_checks_pick_what_fits_or_nothing() {
    let mut fx = Fx::new();
    // Blue has room for 30 more rps: 50 % (50 rps) does not fit, 25 % does.
    fx.stacks = stacks(130.0);
    let g = finding("green", Signal::P99, Severity::Confirmed, true);
    let id = fx.to_approval(&g);
    let ev = fx.engine.get(id).unwrap().unwrap().evidence.unwrap();
    assert!(
        matches!(ev.proposed, Some(Action::Shift { percent: 25, .. })),
        "{:?}",
        ev.proposed
    );
    assert!(
        ev.alternatives.iter().any(|a| a
            .why_not
            .contains("blue would carry 150 rps > its limit 130")),
        "{:?}",
        ev.alternatives
    );
    // No room at all, and a hard-down stack: nothing fits; a human decides.
    let mut fx = Fx::new();
    fx.stacks = stacks(100.0);
    let mut dead = finding("green", Signal::ErrorRate, Severity::Confirmed, false);
    dead.reasons = vec![Reason::HardDown];
    let id = fx.to_approval(&dead);
    let inc = fx.engine.get(id).unwrap().unwrap();
    let ev = inc.evidence.clone().unwrap();
    assert_eq!(ev.proposed, None);
    assert!(ev.localisation.contains("hard down"));
    assert!(ev
        .alternatives
        .iter()
        .any(|a| matches!(a.action, Some(Action::Evacuate { .. }))));
    // Approving "no action" acknowledges and resolves.
    let out = fx
        .engine
        .approve(id, "alice", "will scale blue", fx.now())
        .unwrap();
    assert_eq!((out.action, out.incident.phase), (None, Phase::Resolved));
}

#[test]
fn stacks_deviating_together_get_no_routing_action() {
    let fx = Fx::new();
    let g = finding("green", Signal::P99, Severity::Confirmed, false);
    let b = finding("blue", Signal::P99, Severity::Confirmed, false);
    let id = fx.open_on(&g);
    fx.clock.advance(3 * MIN);
    fx.tick(&[g, b]);
    let ev = fx.engine.get(id).unwrap().unwrap().evidence.unwrap();
    assert_eq!((ev.delta_stack, ev.proposed), (None, None));
    assert!(
        ev.localisation.contains("deviate together"),
        "{}",
        ev.localisation
    );
}

#[test]
fn a_deployment_before_the_onset_raises_confidence() {
    let conf = |with_deploy: bool| {
        let fx = Fx::new();
        let mut f = finding("green", Signal::ErrorRate, Severity::Confirmed, true);
        if with_deploy {
            f.events.push(Correlation {
                event_id: "deploy-7".into(),
                kind: EventKind::Deployment,
                relation: "deployment on green 2 min before the onset".into(),
                suspect: true,
            });
        }
        let id = fx.to_approval(&f);
        fx.engine.get(id).unwrap().unwrap().evidence.unwrap()
    };
    let (without, with) = (conf(false), conf(true));
    assert!(
        with.confidence > without.confidence + 0.1,
        "{} vs {}",
        with.confidence,
        without.confidence
    );
    assert_eq!(with.events[0].id, "deploy-7");
    assert!(with.events[0].suspect);
    // From the registry too, when the finding carries no correlation.
    let fx = Fx::new();
    let f = finding("green", Signal::ErrorRate, Severity::Confirmed, true);
    let id = fx.open_on(&f);
    fx.clock.advance(3 * MIN);
    let deploy = Event {
        id: "deploy-8".into(),
        kind: EventKind::Deployment,
        scope: Scope::Stacks(vec!["green".into()]),
        from_ms: T0 - 10 * MIN,
        to_ms: T0 - 9 * MIN,
        description: String::new(),
        actor: "ci".into(),
    };
    let ctx = Context {
        findings: std::slice::from_ref(&f),
        stacks: &fx.stacks,
        events: std::slice::from_ref(&deploy),
    };
    fx.engine.tick(fx.now(), &ctx).unwrap();
    let ev = fx.engine.get(id).unwrap().unwrap().evidence.unwrap();
    assert!(
        ev.events.iter().any(|e| e.id == "deploy-8" && e.suspect),
        "{:?}",
        ev.events
    );
}

#[test]
fn concurrent_approvals_apply_once() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let fx = Fx::on(store.clone());
    let other = IncidentEngine::new(store, IncidentConfig::default());
    let id = fx.to_approval(&finding("green", Signal::P99, Severity::Confirmed, true));
    fx.engine.approve(id, "alice", "", fx.now()).unwrap();
    assert!(matches!(
        other.approve(id, "bob", "", fx.now()),
        Err(IncidentError::WrongPhase {
            phase: Phase::Executing,
            ..
        })
    ));
    let inc = other.get(id).unwrap().unwrap();
    assert_eq!(inc.approvals.len(), 1);
}

#[test]
fn a_restart_resumes_every_open_incident() {
    let dir = tempfile::tempdir().unwrap();
    let g = finding("green", Signal::ErrorRate, Severity::Confirmed, true);
    let b = finding("blue", Signal::P99, Severity::Confirmed, true);
    let (first, second, at) = {
        let fx = Fx::on(Arc::new(RedbStore::open(dir.path()).unwrap()));
        let first = fx.to_approval(&g);
        fx.clock.advance(MIN);
        let second = fx.open_on(&b);
        assert_eq!(fx.phase(second), Phase::Validating);
        (first, second, fx.now())
    };
    let fx = Fx::on(Arc::new(RedbStore::open(dir.path()).unwrap()));
    fx.clock.set(at);
    let open: Vec<(u64, Phase)> = fx
        .engine
        .open()
        .unwrap()
        .iter()
        .map(|i| (i.id, i.phase))
        .collect();
    assert_eq!(
        open,
        vec![
            (first, Phase::AwaitingApproval),
            (second, Phase::Validating)
        ]
    );
    let out = fx
        .engine
        .approve(first, "alice", "after restart", fx.now())
        .unwrap();
    assert!(out.action.is_some());
    fx.clock.advance(3 * MIN);
    let t = fx.tick(&[g, b]);
    assert_eq!(t.actions.len(), 1, "its stale claim is taken over");
    assert_eq!(fx.phase(second), Phase::AwaitingApproval);
    // A restart between that claim and the execution loses nothing either: once the
    // claim is stale (claim_ms) the restarted engine carries it out.
    drop(fx);
    let fx = Fx::on(Arc::new(RedbStore::open(dir.path()).unwrap()));
    fx.clock.set(at + 3 * MIN);
    assert!(fx.tick(&[]).actions.is_empty(), "claimed 0 s ago");
    fx.clock.set(at + 3 * MIN + 30_000);
    assert_eq!(fx.tick(&[]).actions[0].id, first);
    fx.engine.executed(first, true, "", fx.now()).unwrap();
    assert_eq!(fx.phase(first), Phase::Verifying);
}

#[test]
fn a_malformed_webhook_opens_nothing() {
    let fx = Fx::new();
    // One good alert and one without a fingerprint: the whole payload is refused.
    let body = r#"{"version":"4","status":"firing","alerts":[
        {"status":"firing","labels":{"stack":"green"},"startsAt":"2026-12-01T02:00:00Z","fingerprint":"ok"},
        {"status":"firing","labels":{"stack":"blue"},"startsAt":"2026-12-01T02:00:00Z"}]}"#;
    let err = crate::brain::events::parse_alertmanager(body).unwrap_err();
    assert_eq!(err.problems()[0].field, "alerts[1].fingerprint");
    assert!(fx.engine.open_ids().unwrap().is_empty());
    assert!(matches!(
        fx.engine
            .trigger(Trigger::health_check("", "http", "", fx.now()), fx.now()),
        Err(IncidentError::Invalid(_))
    ));
    assert!(fx.engine.open_ids().unwrap().is_empty());
}

#[test]
fn an_incident_blames_one_deployment_by_the_attribution_rules() {
    let ev = |id: &str, kind: EventKind, from: u64, to: u64| Event {
        id: id.into(),
        kind,
        scope: Scope::Stacks(vec!["green".into()]),
        from_ms: from,
        to_ms: to,
        description: String::new(),
        actor: "ci".into(),
    };
    let deploy = |id: &str, from: u64| ev(id, EventKind::Deployment, from, from + MIN);
    let run = |findings: &[Finding], events: &[Event]| {
        let fx = Fx::new();
        let id = fx.open_on(&findings[0]);
        fx.clock.advance(3 * MIN);
        let ctx = Context {
            findings,
            stacks: &fx.stacks,
            events,
        };
        fx.engine.tick(fx.now(), &ctx).unwrap();
        let ev = fx.engine.get(id).unwrap().unwrap().evidence.unwrap();
        let suspects: Vec<String> = ev
            .events
            .iter()
            .filter(|e| e.suspect)
            .map(|e| e.id.clone())
            .collect();
        (suspects, ev.events)
    };
    let relation = |evs: &[EventEvidence], id: &str| {
        evs.iter()
            .find(|e| e.id == id)
            .map(|e| e.relation.clone())
            .unwrap_or_default()
    };
    // The streak began at T0-3 min but the change at T0-6 min (summed counts lag): v2
    // (T0-8) is the latest deployment before it; the "hotfix" at T0-4 came after the
    // change began; v1 is older.
    let mut g = finding("green", Signal::ErrorRate, Severity::Confirmed, true);
    g.change_ms = Some(T0 - 6 * MIN);
    let events = [
        deploy("v1", T0 - 25 * MIN),
        deploy("v2", T0 - 8 * MIN),
        deploy("hotfix", T0 - 4 * MIN),
    ];
    let (suspects, evs) = run(std::slice::from_ref(&g), &events);
    assert_eq!(suspects, ["v2"], "{evs:#?}");
    assert!(
        relation(&evs, "hotfix").contains("after the onset"),
        "{evs:#?}"
    );
    assert!(relation(&evs, "v1").contains("a later deployment is the suspect"));
    // Spatial: green and blue deviate together (neither against the other); a
    // deployment on green alone does not explain blue.
    let g = finding("green", Signal::P99, Severity::Confirmed, false);
    let b = finding("blue", Signal::P99, Severity::Confirmed, false);
    let (suspects, evs) = run(&[g.clone(), b], &[deploy("v3", T0 - 5 * MIN)]);
    assert!(suspects.is_empty(), "{evs:#?}");
    assert!(
        relation(&evs, "v3").contains("blue deviate too"),
        "{evs:#?}"
    );
    // Alone, the same deployment is the suspect.
    let (suspects, _) = run(std::slice::from_ref(&g), &[deploy("v3", T0 - 5 * MIN)]);
    assert_eq!(suspects, ["v3"]);
    // An anomaly that began during announced maintenance is the maintenance's.
    let g = finding("green", Signal::ErrorRate, Severity::Confirmed, true);
    let (suspects, evs) = run(
        std::slice::from_ref(&g),
        &[
            deploy("v4", T0 - 5 * MIN),
            ev("mnt", EventKind::Maintenance, T0 - 4 * MIN, T0 + 20 * MIN),
        ],
    );
    assert!(suspects.is_empty(), "{evs:#?}");
    assert!(evs.iter().any(|e| e.id == "mnt"), "{evs:#?}");
    assert!(relation(&evs, "v4").contains("maintenance mnt"), "{evs:#?}");
}

/// blue and green in group `default` (segment `us`), eu alone in group `eu` (segment
/// `eu`), as a shop with an EU residency stack runs them.
fn with_eu() -> Vec<StackStatus> {
    let mut s = stacks(300.0);
    for x in &mut s {
        x.segments = vec!["us".into()];
    }
    s.push(StackStatus {
        name: "eu".into(),
        group: "eu".into(),
        segments: vec!["eu".into()],
        rules: Vec::new(),
        healthy: true,
        rps: 40.0,
        peak_rps: 60.0,
        capacity_rps: None,
    });
    s
}

/// A confirmed KPI drop on a stack judged against its baseline only (no peer).
fn kpi_drop(stack: &str) -> Finding {
    let mut f = finding(
        stack,
        Signal::Kpi("orders".into()),
        Severity::Confirmed,
        false,
    );
    f.observed = 11.0;
    f.baseline = Some(24.0);
    f.score = 5.2;
    f
}

/// Trigger on `findings[0]`, tick past the re-check with `findings` and `events`, and
/// return the evidence.
fn analyse(stacks: Vec<StackStatus>, findings: &[Finding], events: &[Event]) -> Evidence {
    let mut fx = Fx::new();
    fx.stacks = stacks;
    let id = fx.open_on(&findings[0]);
    fx.clock.advance(fx.engine.config().validate_ms);
    let ctx = Context {
        findings,
        stacks: &fx.stacks,
        events,
    };
    fx.engine.tick(fx.now(), &ctx).unwrap();
    let inc = fx.engine.get(id).unwrap().unwrap();
    assert_eq!(inc.phase, Phase::AwaitingApproval, "{:#?}", inc.history);
    inc.evidence.unwrap()
}

#[test]
fn a_stack_alone_in_its_group_is_named_with_its_reason_and_less_confidence() {
    let ev = analyse(with_eu(), &[kpi_drop("eu")], &[]);
    assert_eq!(ev.delta_stack.as_deref(), Some("eu"), "{}", ev.localisation);
    assert!(
        ev.localisation
            .contains("deviates from its own seasonal baseline")
            && ev.localisation.contains("no peer in its group eu"),
        "{}",
        ev.localisation
    );
    assert!(
        ev.factors
            .iter()
            .any(|(why, v)| why.contains("no peer in its group") && *v < 0.0),
        "{:?}",
        ev.factors
    );
    // Traffic only moves within a group: nowhere to move eu's, a human decides.
    assert_eq!(ev.proposed, None);
    assert!(
        ev.alternatives
            .iter()
            .any(|a| a.why_not.contains("no other stack serves its group eu")),
        "{:#?}",
        ev.alternatives
    );
    // Lower than the same drop localised against peers (nor does anything fit), but
    // named; higher than one its peers do not confirm, with a target as well.
    let mut peers = kpi_drop("green");
    peers.localised = true;
    peers.cross = Some(CrossStack {
        others: 24.0,
        z: 6.0,
        ratio: 0.45,
    });
    peers.reasons.push(Reason::CrossStack);
    let with_peers = analyse(with_eu(), &[peers], &[]);
    let unconfirmed = analyse(with_eu(), &[kpi_drop("green")], &[]);
    let factor = |e: &Evidence, name: &str| {
        e.factors
            .iter()
            .find(|(n, _)| n.contains(name))
            .map_or(0.0, |(_, v)| *v)
    };
    assert!(
        factor(&unconfirmed, "not localised") < factor(&ev, "no peer in its group")
            && ev.confidence < with_peers.confidence,
        "{:?} / {:?} / {}",
        unconfirmed.factors,
        ev.factors,
        with_peers.confidence
    );
    // The shift it proposes stays in its group: blue, not eu.
    assert_eq!(
        with_peers.proposed.as_ref().map(Action::stacks),
        Some(vec!["green".to_string(), "blue".to_string()])
    );
}

#[test]
fn findings_on_another_group_do_not_make_a_problem_look_shared() {
    // green deviates (not localised: e.g. no history for the cross-stack test yet) and
    // so does eu, in another group: green is still the only one of its group.
    let g = finding("green", Signal::P99, Severity::Confirmed, false);
    let eu = finding("eu", Signal::P99, Severity::Confirmed, false);
    let ev = analyse(with_eu(), &[g.clone(), eu.clone()], &[]);
    assert_eq!(
        ev.delta_stack.as_deref(),
        Some("green"),
        "{}",
        ev.localisation
    );
    assert!(
        !ev.localisation.contains("deviate together"),
        "{}",
        ev.localisation
    );
    // eu's own incident is not blamed on green's either.
    let ev = analyse(with_eu(), &[eu, g.clone()], &[]);
    assert_eq!(ev.delta_stack.as_deref(), Some("eu"), "{}", ev.localisation);
    // A peer of its own group still makes it shared.
    let b = finding("blue", Signal::P99, Severity::Confirmed, false);
    let ev = analyse(with_eu(), &[g, b], &[]);
    assert_eq!(ev.delta_stack, None);
    assert!(ev.localisation.contains("green and blue deviate together"));
}

#[test]
fn a_segment_scoped_deployment_in_the_registry_matches_the_stacks_serving_it() {
    let deploy = |id: &str, scope: Scope| Event {
        id: id.into(),
        kind: EventKind::Deployment,
        scope,
        from_ms: T0 - 10 * MIN,
        to_ms: T0 - 9 * MIN,
        description: String::new(),
        actor: "ci".into(),
    };
    // The finding carries no correlation: only the registry knows the deployment.
    let f = kpi_drop("eu");
    let ev = analyse(
        with_eu(),
        std::slice::from_ref(&f),
        &[
            deploy("deploy-eu-13", Scope::Segment("eu".into())),
            deploy("deploy-us-14", Scope::Segment("us".into())),
        ],
    );
    let suspects: Vec<&str> = ev
        .events
        .iter()
        .filter(|e| e.suspect)
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(suspects, ["deploy-eu-13"], "{:#?}", ev.events);
    assert!(
        ev.events[0].relation.contains("eu (segment:eu)"),
        "{:#?}",
        ev.events
    );
    assert!(
        !ev.events.iter().any(|e| e.id == "deploy-us-14"),
        "another segment's deployment is not correlated: {:#?}",
        ev.events
    );
    // The spatial rule reads segments too: green and blue deviate together and a
    // deployment scoped to a segment only blue serves leaves green out.
    let mut stacks = with_eu();
    stacks[0].segments = vec!["us".into(), "beta".into()];
    let b = finding("blue", Signal::P99, Severity::Confirmed, false);
    let g = finding("green", Signal::P99, Severity::Confirmed, false);
    let ev = analyse(
        stacks,
        &[b, g],
        &[deploy("deploy-beta-15", Scope::Segment("beta".into()))],
    );
    let beta = ev.events.iter().find(|e| e.id == "deploy-beta-15").unwrap();
    assert!(
        !beta.suspect && beta.relation.contains("green deviate too"),
        "{beta:?}"
    );
}
