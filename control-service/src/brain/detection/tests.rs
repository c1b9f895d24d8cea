use super::*;
use crate::brain::events::Scope;
use crate::brain::scenario::lognormal_latency;
use crate::store::MemoryStore;

const T0: u64 = 1_796_083_200_000 - 86_400_000; // Monday 00:00 UTC
const MIN: u64 = 60_000;

fn win(stack: &str, start: u64, req: u64, err: u64, p99: f64, orders: u64) -> StackWindow {
    let mut w = StackWindow::new(stack, start, MIN);
    w.requests = req;
    w.errors = err;
    w.latency = lognormal_latency(req, 60.0, p99);
    w.kpis.insert("orders".into(), orders);
    w
}

fn of<'a>(f: &'a [Finding], stack: &str, s: &Signal) -> Option<&'a Finding> {
    f.iter().find(|f| f.stack == stack && &f.signal == s)
}

#[test]
fn the_count_test_respects_counts_and_traffic_share() {
    // Twice the rate on tiny counts is not evidence.
    assert!(count_delta_z(2, 100, 1, 100) < 1.0);
    // The same ratio on large counts is.
    assert!(count_delta_z(200, 10_000, 100, 10_000) > 5.0);
    // A 10 % stack with the same rate as the others: nothing.
    assert!(count_delta_z(50, 1_000, 450, 9_000).abs() < 0.5);
    // The same 10 % stack at twice the rate: localised.
    assert!(count_delta_z(100, 1_000, 450, 9_000) > 4.0);
    assert_eq!(count_delta_z(0, 1_000, 0, 1_000), 0.0);
    // Five errors where 1.2 are expected happen about once in 130 windows: z ≈ 2.4.
    let z = poisson_upper_z(5, 1.2);
    assert!((2.3..2.5).contains(&z), "{z}");
    assert!(poisson_upper_z(30, 1.2) > 8.0);
    assert_eq!(poisson_upper_z(1, 1.2), 0.0);
    assert!(p_upper(4.0) < 1e-4 && (p_upper(0.0) - 0.5).abs() < 1e-6);
}

#[test]
fn a_cross_stack_delta_is_localised_without_any_history() {
    let mut d = Detector::new(DetectorConfig::default());
    let ctx = DetectContext::default();
    let mut sev = Vec::new();
    for i in 0..3 {
        let t = T0 + i * MIN;
        let f = d.observe(
            &[
                win("blue", t, 3_000, 1, 250.0, 75),
                win("green", t, 3_000, 60, 250.0, 75),
            ],
            &ctx,
        );
        let g = of(&f, "green", &Signal::ErrorRate).expect("green flagged");
        assert!(
            g.localised && g.reasons.contains(&Reason::CrossStack),
            "{g:?}"
        );
        assert_eq!(g.baseline, None, "no history yet");
        assert!(g.cross.unwrap().z > 6.0);
        assert!(
            of(&f, "blue", &Signal::ErrorRate).is_none(),
            "the healthy stack is not blamed"
        );
        sev.push(g.severity);
        assert_eq!(g.onset_ms, T0);
        assert_eq!(g.windows, i as u32 + 1);
    }
    assert_eq!(sev, [Severity::Warn, Severity::Warn, Severity::Confirmed]);
}

#[test]
fn a_hard_down_stack_confirms_at_once_and_stays_reported_while_dark() {
    let mut d = Detector::new(DetectorConfig::default());
    let ctx = DetectContext::default();
    let mut dead = win("green", T0, 3_000, 3_000, 250.0, 0);
    dead.breaker_opens = 2;
    let f = d.observe(&[win("blue", T0, 3_000, 1, 250.0, 75), dead], &ctx);
    let g = of(&f, "green", &Signal::ErrorRate).unwrap();
    assert_eq!(g.severity, Severity::Confirmed);
    assert!(g.reasons.contains(&Reason::HardDown));
    assert_eq!(
        of(&f, "green", &Signal::Breakers).unwrap().severity,
        Severity::Confirmed
    );
    // Traffic routed away: nothing to judge, the finding stays (stale).
    let f = d.observe(
        &[
            win("blue", T0 + MIN, 6_000, 2, 250.0, 150),
            win("green", T0 + MIN, 0, 0, 250.0, 0),
        ],
        &ctx,
    );
    let g = of(&f, "green", &Signal::ErrorRate).unwrap();
    assert!(g.stale && g.at_ms == T0 + 2 * MIN);
    // Healthy traffic again: gone.
    let f = d.observe(
        &[
            win("blue", T0 + 2 * MIN, 3_000, 1, 250.0, 75),
            win("green", T0 + 2 * MIN, 3_000, 1, 250.0, 75),
        ],
        &ctx,
    );
    assert!(of(&f, "green", &Signal::ErrorRate).is_none(), "{f:?}");
}

#[test]
fn maintenance_caps_severity_and_deployments_are_suspects() {
    let ev = |id: &str, kind, from| Event {
        id: id.into(),
        kind,
        scope: Scope::Stacks(vec!["green".into()]),
        from_ms: from,
        to_ms: from + 10 * MIN,
        description: String::new(),
        actor: "ops".into(),
    };
    let run = |events: &[Event]| {
        let mut d = Detector::new(DetectorConfig::default());
        let ctx = DetectContext {
            events,
            ..DetectContext::default()
        };
        let f = d.observe(
            &[
                win("blue", T0, 3_000, 1, 250.0, 75),
                win("green", T0, 3_000, 3_000, 250.0, 0),
            ],
            &ctx,
        );
        of(&f, "green", &Signal::ErrorRate).unwrap().clone()
    };
    // A deployment 5 min before the onset is the suspect.
    let g = run(&[ev("dep", EventKind::Deployment, T0 - 5 * MIN)]);
    assert_eq!(g.severity, Severity::Confirmed, "hard down");
    assert_eq!(g.suspect_deployment(), Some("dep"));
    let dep = g.events.iter().find(|c| c.event_id == "dep").unwrap();
    assert!(dep.relation.contains("5 min before"), "{}", dep.relation);
    // The same during announced maintenance: capped at warn, and the anomaly that
    // began during the maintenance is the maintenance's, not the deployment's.
    let g = run(&[
        ev("mnt", EventKind::Maintenance, T0),
        ev("dep", EventKind::Deployment, T0 - 5 * MIN),
    ]);
    assert_eq!(g.severity, Severity::Warn, "maintenance caps at warn");
    assert_eq!(g.suspect_deployment(), None);
    assert!(g.events.iter().any(|c| c.event_id == "mnt" && !c.suspect));
    assert!(g.events.iter().any(|c| c.event_id == "dep" && !c.suspect));
}

#[test]
fn the_latest_deployment_before_the_onset_is_the_one_suspect() {
    let ev = |id: &str, from| Event {
        id: id.into(),
        kind: EventKind::Deployment,
        scope: Scope::Stacks(vec!["green".into()]),
        from_ms: from,
        to_ms: from + MIN,
        description: String::new(),
        actor: "ci".into(),
    };
    // v1 20 min before, v2 3 min before, a hotfix 2 min after the onset window.
    let events = [
        ev("v1", T0 - 20 * MIN),
        ev("v2", T0 - 3 * MIN),
        ev("hotfix", T0 + 3 * MIN),
    ];
    let ctx = DetectContext {
        events: &events,
        ..DetectContext::default()
    };
    let mut d = Detector::new(DetectorConfig::default());
    let mut last = None;
    for k in 0..5 {
        let t = T0 + k * MIN;
        let f = d.observe(
            &[
                win("blue", t, 3_000, 1, 250.0, 75),
                win("green", t, 3_000, 3_000, 250.0, 0),
            ],
            &ctx,
        );
        last = of(&f, "green", &Signal::ErrorRate).cloned();
    }
    let g = last.unwrap();
    assert_eq!(g.onset_ms, T0);
    assert_eq!(g.suspect_deployment(), Some("v2"));
    let rel = |id: &str| {
        g.events
            .iter()
            .find(|c| c.event_id == id)
            .map(|c| (c.suspect, c.relation.clone()))
            .unwrap()
    };
    assert!(!rel("v1").0 && rel("v1").1.contains("a later deployment is the suspect"));
    assert!(!rel("hotfix").0 && rel("hotfix").1.contains("after the onset"));
}

#[test]
fn saturation_warns_then_confirms() {
    let mut d = Detector::new(DetectorConfig::default());
    let sat: BTreeMap<String, f64> = [("green".to_string(), 0.9), ("blue".to_string(), 0.5)].into();
    let ctx = DetectContext {
        saturation: Some(&sat),
        ..DetectContext::default()
    };
    let mut last = None;
    for i in 0..3 {
        let t = T0 + i * MIN;
        let f = d.observe(
            &[
                win("blue", t, 3_000, 1, 250.0, 75),
                win("green", t, 3_000, 1, 250.0, 75),
            ],
            &ctx,
        );
        assert!(of(&f, "blue", &Signal::Saturation).is_none());
        last = of(&f, "green", &Signal::Saturation).map(|f| f.severity);
    }
    assert_eq!(last, Some(Severity::Confirmed));
}

#[test]
fn baselines_survive_a_restart_through_the_store() {
    let store = MemoryStore::new();
    let mut d = Detector::new(DetectorConfig::default());
    let ctx = DetectContext::default();
    let step = 10 * MIN;
    let mut t = T0;
    let mut written = 0;
    while t < T0 + 3 * 86_400_000 {
        let mut ws = Vec::new();
        for s in ["blue", "green"] {
            let mut w = win(s, t, 3_000, 1, 200.0 + ((t / step) % 5) as f64, 75);
            w.window_ms = step;
            ws.push(w);
        }
        d.observe(&ws, &ctx);
        written += d.flush(&store).unwrap();
        t += step;
    }
    assert!(written > 0);
    assert!(!store
        .scan("series/baseline/green/p99_ms/", None, 1)
        .unwrap()
        .is_empty());
    let at = t + 10 * HOUR_MS;
    let before = d.expected("green", &Signal::P99, at).unwrap();
    assert_eq!(before.source, Source::HourOfDay);
    let r = Detector::restore(DetectorConfig::default(), &store).unwrap();
    assert_eq!(r.expected("green", &Signal::P99, at), Some(before));
    assert_eq!(
        r.expected("group:default", &Signal::Rps, at),
        d.expected("group:default", &Signal::Rps, at)
    );
}

#[test]
fn the_change_onset_is_found_before_a_late_streak() {
    let w = MIN;
    let series = |vals: &[f64]| -> Vec<(u64, f64)> {
        vals.iter()
            .enumerate()
            .map(|(i, v)| (T0 + (i as u64 + 1) * w, *v))
            .collect()
    };
    // A step from 20 to 12 orders per 1,000 at window 3; the summed test fired at 6.
    let step = series(&[20.0, 21.0, 19.5, 12.0, 11.0, 13.0, 12.5, 11.5, 12.0]);
    assert_eq!(
        estimate_onset(&step, T0 + 6 * w, w, 20.0, false),
        ChangeOnset::at(T0 + 3 * w)
    );
    // Nothing before the streak past halfway: the onset stands.
    let sudden = series(&[20.0, 21.0, 19.5, 20.5, 12.0, 11.0]);
    let at = ChangeOnset::at(T0 + 4 * w);
    assert_eq!(estimate_onset(&sudden, T0 + 4 * w, w, 20.0, false), at);
    // Wrong direction (a KPI going up): no estimate.
    assert_eq!(estimate_onset(&sudden, T0 + 4 * w, w, 10.0, false), at);
    // A ramp of +5 ms a window from 250 ms starting at window 0, flagged at window 30:
    // followed back to where it left the reference.
    let ramp: Vec<f64> = (0..40).map(|i| 250.0 + 5.0 * i as f64).collect();
    // Past halfway (337.5 ms) from window 18 on: the step estimate; the line meets
    // 250 ms at window 0: the ramp estimate.
    let est = estimate_onset(&series(&ramp), T0 + 30 * w, w, 250.0, true);
    assert_eq!(est.step, T0 + 18 * w);
    assert!(
        est.ramp <= T0 + w,
        "{}",
        (est.ramp as i64 - T0 as i64) / 60_000
    );
    // At most an hour back.
    let long: Vec<f64> = (0..60).map(|i| 400.0 + 5.0 * i as f64).collect();
    let est = estimate_onset(&series(&long), T0 + 50 * w, w, 100.0, true);
    assert_eq!(est.ramp, T0 + 50 * w - 60 * MIN);
}

#[test]
fn maintenance_and_its_summed_tail_open_nothing() {
    // Maintenance on green T0..T0+10 min; green fails from T0 to T0+20 min.
    let events = [Event {
        id: "mnt".into(),
        kind: EventKind::Maintenance,
        scope: Scope::Stacks(vec!["green".into()]),
        from_ms: T0,
        to_ms: T0 + 10 * MIN,
        description: String::new(),
        actor: "ops".into(),
    }];
    let ctx = DetectContext {
        events: &events,
        ..DetectContext::default()
    };
    let mut d = Detector::new(DetectorConfig::default());
    let mut seen = Vec::new();
    for k in 0..20 {
        let t = T0 + k * MIN;
        let f = d.observe(
            &[
                win("blue", t, 3_000, 1, 250.0, 75),
                win("green", t, 3_000, 60, 250.0, 75),
            ],
            &ctx,
        );
        if let Some(g) = of(&f, "green", &Signal::ErrorRate) {
            seen.push((k, g.severity, g.under_maintenance, g.worth_an_incident()));
        }
    }
    for (k, sev, under, worth) in &seen {
        // During the maintenance and the 5 windows after it (the summed counts still
        // hold its errors): warn only, nothing worth an incident, even a trend.
        if *k < 15 {
            assert!(*under && !*worth, "{seen:?}");
            assert_eq!(*sev, Severity::Warn, "{seen:?}");
        }
    }
    // Still failing after that: confirmed.
    assert!(
        seen.iter()
            .any(|(k, sev, _, _)| *k >= 15 && *sev == Severity::Confirmed),
        "{seen:?}"
    );
}

/// A stack alone in its group (its own residency) has no peer for the cross-stack test:
/// a KPI drop too small for one window's few orders is found on its counts summed over
/// `count_windows`, against its own baseline; clean windows raise nothing.
#[test]
fn a_kpi_drop_on_a_stack_alone_in_its_group_is_confirmed_against_its_baseline() {
    use crate::brain::scenario::Rng;
    let topology = [
        StackInfo {
            name: "blue".into(),
            group: "web".into(),
            ..StackInfo::default()
        },
        StackInfo {
            name: "green".into(),
            group: "web".into(),
            ..StackInfo::default()
        },
        StackInfo {
            name: "eu".into(),
            group: "eu".into(),
            segments: vec!["eu".into()],
            ..StackInfo::default()
        },
    ];
    let ctx = DetectContext {
        topology: &topology,
        ..DetectContext::default()
    };
    let cfg = DetectorConfig::default();
    let mut d = Detector::new(cfg.clone());
    let mut rng = Rng::new(7);
    let kpi = Signal::Kpi("orders".into());
    // 30 rps on eu at 24 orders per 1,000 requests: ~43 orders a window, so halving it
    // is ~3 σ of one window's noise (below warn_z) but far more on five summed.
    let start = T0 + 8 * 60 * MIN;
    let drop_at = 120;
    let mut first_confirmed = None;
    for k in 0..drop_at + 15 {
        let t = start + k * MIN;
        let rate = if k >= drop_at { 0.012 } else { 0.024 };
        let req = rng.poisson(1_800.0);
        let eu = win("eu", t, req, 0, 250.0, rng.poisson(req as f64 * rate));
        let web = |s: &str, rng: &mut Rng| win(s, t, 3_000, 1, 250.0, rng.poisson(75.0));
        let (b, g) = (web("blue", &mut rng), web("green", &mut rng));
        let f = d.observe(&[b, g, eu], &ctx);
        if k < drop_at {
            assert!(f.iter().all(|f| f.signal != kpi), "window {k}: {f:?}");
            continue;
        }
        let Some(x) = of(&f, "eu", &kpi) else {
            continue;
        };
        // Judged against its baseline only: no peer, nothing localised.
        assert!(x.cross.is_none() && !x.localised, "{x:?}");
        assert_eq!(x.reasons, [Reason::Baseline]);
        assert_eq!(x.baseline_source, Some(Source::Rolling));
        if x.severity == Severity::Confirmed && first_confirmed.is_none() {
            first_confirmed = Some(k - drop_at);
            assert!(x.score >= cfg.warn_z, "{x:?}");
        }
        assert!(of(&f, "blue", &kpi).is_none() && of(&f, "green", &kpi).is_none());
    }
    let after = first_confirmed.expect("the drop on eu is confirmed");
    assert!(after <= 8, "confirmed {after} windows after the drop");
}
