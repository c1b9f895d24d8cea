use super::*;

fn shipped(s: Scenario) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/scenarios")
        .join(s.file())
}

/// The shipped files are exactly what the generator makes; with
/// `SWITCHYARD_WRITE_SCENARIOS=1` this test rewrites them.
#[test]
fn shipped_scenarios_match_the_generator() {
    for s in Scenario::ALL {
        let json = to_json(&generate(s));
        assert!(
            json.len() < 2_000_000,
            "{} is {} bytes",
            s.file(),
            json.len()
        );
        let path = shipped(s);
        if std::env::var_os("SWITCHYARD_WRITE_SCENARIOS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &json).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (regenerate with SWITCHYARD_WRITE_SCENARIOS=1)",
                path.display()
            )
        });
        assert!(on_disk == json, "{} differs from the generator", s.file());
        assert_eq!(Trace::parse(&on_disk).unwrap(), generate(s));
    }
}

#[test]
fn the_detector_meets_every_scenario() {
    let mut failures = Vec::new();
    for s in Scenario::ALL {
        let trace = Trace::parse(&std::fs::read_to_string(shipped(s)).unwrap()).unwrap();
        let r = run_detector(&trace, DetectorConfig::default());
        let mins = |v: Option<i64>| v.map(|ms| format!("{:.1} min", ms as f64 / 60_000.0));
        println!(
            "{:<11} false alarms {} (stray warnings {}), first warn {:?}, confirmed {:?}, lead before breach: warn {:?} confirmed {:?}, suspect {:?}",
            trace.name,
            r.false_alarms.len(),
            r.stray_warnings,
            r.first_warn_ms.map(|t| t - trace.start_ms),
            r.first_confirmed_ms.map(|t| t - trace.start_ms),
            mins(r.lead_warn_ms),
            mins(r.lead_confirmed_ms),
            r.suspect
        );
        for p in r.check(&trace) {
            failures.push(format!("{}: {p}", trace.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn an_unannounced_flash_sale_does_alarm() {
    // The same trace without its campaign event: the volume jump is confirmed, so
    // the quiet run above is the event's doing.
    let mut t = generate(Scenario::FlashSale);
    t.events.clear();
    let r = run_detector(&t, DetectorConfig::default());
    assert!(
        r.false_alarms.iter().any(|a| a.starts_with("group:eu/rps")),
        "{:?}",
        r.false_alarms
    );
}

#[test]
fn lognormal_latency_hits_its_percentiles() {
    let l = lognormal_latency(100_000, 60.0, 250.0);
    assert_eq!(l.to_histogram().total(), 100_000);
    let p50 = l.quantile_ms(0.5).unwrap();
    let p99 = l.quantile_ms(0.99).unwrap();
    assert!((50.0..70.0).contains(&p50), "{p50}");
    assert!((210.0..290.0).contains(&p99), "{p99}");
}

#[test]
fn malformed_traces_are_rejected_with_paths() {
    let mut t = generate(Scenario::DeadStack);
    t.windows.truncate(3);
    let good = serde_json::to_string(&t).unwrap();
    assert!(Trace::parse(&good).is_ok());
    let mut bad = t.clone();
    bad.format = "v0".into();
    bad.windows[1].t += 1;
    bad.windows[2].stacks.get_mut("blue").unwrap().err = 1_000_000;
    bad.windows[2]
        .stacks
        .insert("pink".into(), Sample::default());
    let err = Trace::parse(&serde_json::to_string(&bad).unwrap()).unwrap_err();
    let text = err.to_string();
    for want in [
        "format:",
        "windows[1].t:",
        "windows[2].stacks.blue.err:",
        "windows[2].stacks.pink: unknown stack",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    let err = Trace::parse(&good.replace("\"window_ms\"", "\"window_mz\"")).unwrap_err();
    assert!(err.to_string().contains("window_mz"), "{err}");
    assert!(Trace::parse("[]").is_err());
}

#[test]
fn the_workflow_recommends_on_the_right_stack_and_before_the_slow_burn_breach() {
    use crate::brain::incident::{IncidentConfig, Phase};
    for s in Scenario::ALL {
        let trace = generate(s);
        let store = std::sync::Arc::new(crate::store::MemoryStore::new());
        let r = run_workflow(
            &trace,
            DetectorConfig::default(),
            IncidentConfig::default(),
            store,
        )
        .unwrap();
        let recs = r
            .decisions
            .iter()
            .filter(|d| d.phase == Phase::AwaitingApproval)
            .count();
        println!(
            "{:<11} incidents opened {}, recommendations {}, first {:?} on {:?} at +{:?} min, lead before breach {:?} min",
            trace.name,
            r.decisions.iter().filter(|d| d.phase == Phase::Validating).count(),
            recs,
            r.first_recommendation,
            r.first_recommendation_stack,
            r.first_recommendation_ms.map(|t| (t - trace.start_ms) / 60_000),
            r.lead_ms.map(|ms| ms as f64 / 60_000.0)
        );
        // Nothing is ever executed without approval.
        assert!(
            !r.decisions.iter().any(|d| d.phase == Phase::Executing),
            "{}",
            trace.name
        );
        match s {
            Scenario::Clean7d | Scenario::FlashSale => {
                assert_eq!(recs, 0, "{}: {:#?}", trace.name, r.decisions)
            }
            _ => {
                let want = trace
                    .expect
                    .confirm
                    .as_deref()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap();
                assert_eq!(
                    r.first_recommendation_stack.as_deref(),
                    Some(want),
                    "{}",
                    trace.name
                );
                assert!(
                    r.first_recommendation.is_some(),
                    "{}: a routing action",
                    trace.name
                );
            }
        }
        if s == Scenario::SlowBurn {
            assert!(
                r.lead_ms.unwrap() > 15 * 60_000,
                "recommend > 15 min before the breach"
            );
        }
    }
}
