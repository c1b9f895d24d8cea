use super::*;
use crate::brain::clock::ManualClock;
use crate::brain::guardrails::{ChangeKind, Origin, ProposedChange};
use crate::brain::series::SeriesSettings;
use crate::store::{MemoryStore, Store};

const POLICY: &str = r#"{"stacks":[{"name":"blue","region":"us"},{"name":"green","region":"us"}],
  "default":{"targets":[{"stack":"blue"},{"stack":"green"}]}}"#;

async fn pilot() -> (Arc<Control>, Arc<Autopilot>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let control = Control::open(store.clone()).await.unwrap();
    control
        .apply_policy(POLICY, Change::manual("alice", ""), 0)
        .await
        .unwrap();
    let series = Arc::new(Series::new(store, SeriesSettings::default()));
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let pilot = Autopilot::new(control.clone(), series, clock, AutopilotSettings::default());
    (control, pilot)
}

const RULE_POLICY: &str = r#"{"stacks":[{"name":"blue","region":"us"},{"name":"green","region":"us"}],
  "rules":[{"id":"beta","match":{"path_prefixes":["/beta"]},
            "route":{"targets":[{"stack":"blue","weight":3},{"stack":"green"}]}}],
  "default":{"targets":[{"stack":"blue"},{"stack":"green"}]}}"#;

fn rule_spec(scope: &str) -> RolloutSpec {
    let mut spec = RolloutSpec::new("r1", "green", "blue", scope);
    spec.plan = crate::brain::rollout::plan_from_shares(&[20, 100], 60_000, 120_000);
    spec.warmup_ms = 0;
    spec.ramp_step_percent = 20;
    spec.created_by = "alice".into();
    spec
}

#[tokio::test]
async fn a_rule_scoped_rollout_moves_the_share_within_that_rule_only() {
    let (control, pilot) = pilot().await;
    control
        .apply_policy(RULE_POLICY, Change::manual("alice", ""), 0)
        .await
        .unwrap();
    let r = pilot.start_rollout(rule_spec("beta")).await.unwrap();
    assert_eq!(r.share_percent, 20);
    let cur = control.current().unwrap();
    // blue has weight 3 in beta: green 1·f_r / (1·f_r + 3·f_s) = 20 % → 75 : 100.
    let beta = |stack: &str| {
        cur.record
            .rule_stacks
            .iter()
            .find(|r| r.rule == "beta" && r.stack == stack)
            .map(|r| (r.weight_percent, r.evacuating))
    };
    assert_eq!(beta("green"), Some((75, false)));
    assert_eq!(beta("blue"), Some((100, false)));
    assert_eq!(cur.record.kind, crate::model::ChangeKind::RuleShare);
    // The stacks' own factors (every other rule) are untouched, and every Envoy gets
    // the rule's shares in the snapshot.
    assert!(cur.record.stacks.iter().all(|s| s.weight_percent == 100));
    let snap = cur.snapshot();
    assert!(snap
        .stacks
        .iter()
        .all(|s| s.weight_percent == 100 && s.rule.is_empty()));
    assert_eq!(snap.rule_stacks.len(), 2);
    assert!(snap.rule_stacks.iter().all(|s| s.rule == "beta"));
    // A policy edit keeps the rule's shares.
    control
        .apply_policy(
            &RULE_POLICY.replace("\"us\"", "\"eu\""),
            Change::manual("alice", ""),
            0,
        )
        .await
        .unwrap();
    assert_eq!(control.current().unwrap().record.rule_stacks.len(), 2);
    // Abort: green evacuated from beta (its cookie holders move at once), still
    // untouched elsewhere.
    pilot
        .command(
            "r1",
            Command::Abort {
                actor: "alice".into(),
            },
        )
        .await
        .unwrap();
    let cur = control.current().unwrap();
    let green: Vec<_> = cur
        .record
        .rule_stacks
        .iter()
        .filter(|r| r.stack == "green")
        .collect();
    assert_eq!(green.len(), 1);
    assert_eq!((green[0].weight_percent, green[0].evacuating), (0, true));
    assert!(cur
        .record
        .stacks
        .iter()
        .all(|s| s.weight_percent == 100 && !s.evacuating));
}

#[tokio::test]
async fn a_rollout_scope_must_be_the_policy_or_a_rule_where_both_stacks_have_weight() {
    let (control, pilot) = pilot().await;
    control
        .apply_policy(RULE_POLICY, Change::manual("alice", ""), 0)
        .await
        .unwrap();
    let err = pilot
        .start_rollout(rule_spec("gamma"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gamma") && err.contains("beta, default"),
        "{err}"
    );
    let one_sided = RULE_POLICY.replace(r#"{"stack":"blue","weight":3},"#, "");
    control
        .apply_policy(&one_sided, Change::manual("alice", ""), 0)
        .await
        .unwrap();
    let err = pilot
        .start_rollout(rule_spec("beta"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stable: blue has no weight in rule beta's route"),
        "{err}"
    );
    assert!(pilot.list().await.unwrap().is_empty(), "nothing created");
    assert!(control.current().unwrap().record.rule_stacks.is_empty());
}

fn rollout_step() -> ProposedChange {
    ProposedChange {
        scope: SCOPE_POLICY.into(),
        kind: ChangeKind::PlanStep,
        origin: Origin::Automatic {
            actor: "rollout:r1".into(),
        },
        stacks: vec!["green".into()],
        shift_percent: 5,
        approved_by: None,
        pre_approved: false,
        summary: "green 0% -> 5%".into(),
    }
}

#[tokio::test]
async fn a_policy_apply_or_rollback_is_refused_while_another_change_holds_the_lease() {
    let (control, pilot) = pilot().await;
    let held = pilot.guard.check(&rollout_step(), pilot.now()).unwrap();
    let edited = POLICY.replace("\"us\"", "\"eu\"");
    let err = pilot
        .manual_policy_apply(&edited, Change::manual("bob", ""), 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("one_change_at_a_time") && err.contains("rollout:r1"),
        "{err}"
    );
    assert!(err.contains("allowed from"), "says when: {err}");
    let err = pilot
        .manual_policy_rollback(1, Change::manual("bob", ""), 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("rollout:r1"), "{err}");
    assert_eq!(control.current_version(), 1, "nothing changed");
    // Once the step is recorded, the apply goes through and gives the lease back.
    pilot
        .guard
        .record(
            &ExecutedChange {
                permit: held,
                applied: true,
            },
            pilot.now(),
        )
        .unwrap();
    let out = pilot
        .manual_policy_apply(&edited, Change::manual("bob", ""), 0)
        .await
        .unwrap();
    assert!(out.changed);
    assert!(pilot.guard.holder(pilot.now()).unwrap().is_none());
    // A rollback too; the lease is free again for the next rollout step.
    let out = pilot
        .manual_policy_rollback(1, Change::manual("bob", ""), 0)
        .await
        .unwrap();
    assert!(out.changed);
    assert!(pilot.guard.check(&rollout_step(), pilot.now()).is_ok());
}

#[tokio::test]
async fn a_freeze_refuses_manual_changes_on_its_stack_but_never_an_evacuation() {
    let (control, pilot) = pilot().await;
    let until = pilot.now() + 15 * 60_000;
    let freeze = crate::brain::incident::Freeze {
        stack: "green".into(),
        until_ms: until,
        incident: 4,
        action: "shift 10% from green to blue".into(),
    };
    control
        .store()
        .commit(&crate::store::Batch::new().put(
            "incident/freeze/green",
            serde_json::to_vec(&freeze).unwrap(),
        ))
        .unwrap();
    let weight = |percent| StackOp::SetWeight {
        percent,
        reason: "x".into(),
    };
    let err = pilot
        .manual_stack_op("green", weight(50), Change::manual("bob", ""))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refused by freeze") && err.contains("incident 4"),
        "{err}"
    );
    assert!(
        err.contains(&format!("allowed from {}", crate::brain::clock::utc(until))),
        "{err}"
    );
    assert_eq!(control.current_version(), 1, "nothing changed");
    // Another stack is not frozen; taking green's traffic off is never refused.
    assert!(
        pilot
            .manual_stack_op("blue", weight(50), Change::manual("bob", ""))
            .await
            .unwrap()
            .changed
    );
    for op in [
        StackOp::Evacuate {
            reason: "on fire".into(),
        },
        StackOp::MarkUnhealthy {
            reason: "on fire".into(),
        },
    ] {
        assert!(
            pilot
                .manual_stack_op("green", op, Change::manual("bob", ""))
                .await
                .unwrap()
                .changed
        );
    }
}

#[tokio::test]
async fn a_fast_path_evacuation_opens_an_incident_awaiting_a_human_for_recovery() {
    use crate::brain::incident::{Action, Phase};
    use crate::health::{FastPathAction, FastPathKind};
    let (control, pilot) = pilot().await;
    // green at 60 before it died; the fast path evacuates it (as the monitor does).
    control
        .stack_op(
            "green",
            StackOp::SetWeight {
                percent: 60,
                reason: "canary".into(),
            },
            Change::manual("alice", ""),
        )
        .await
        .unwrap();
    let out = control
        .stack_op(
            "green",
            StackOp::Evacuate {
                reason: "fast path: http down".into(),
            },
            Change::manual(crate::health::ACTOR, "hard down"),
        )
        .await
        .unwrap();
    let action = FastPathAction {
        at_unix_ms: pilot.now(),
        stack: "green".into(),
        kind: FastPathKind::Evacuated,
        actor: crate::health::ACTOR.into(),
        source: "http".into(),
        reason: "fast path: http down: connection refused".into(),
        evidence: vec!["http: connection refused".into()],
        stranded_rules: vec![],
        version: Some(out.record.version),
    };
    let inc = pilot.record_fast_path(&action).await.unwrap().unwrap();
    assert_eq!(inc.phase, Phase::AwaitingApproval);
    assert_eq!(inc.stack.as_deref(), Some("green"));
    assert_eq!(
        inc.executed,
        vec![Action::Evacuate {
            stack: "green".into(),
            to: vec!["blue".into()]
        }]
    );
    assert_eq!(
        inc.proposal(),
        Some(&Action::Restore {
            stacks: vec!["green".into()]
        })
    );
    // It is what `incidents list` shows; the same report again adds nothing.
    let listed = pilot.incidents(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, inc.id);
    let again = pilot.record_fast_path(&action).await.unwrap().unwrap();
    assert_eq!(again.executed.len(), 1);
    assert_eq!(pilot.incidents(10).await.unwrap().len(), 1);
    // Nothing moves until a person approves the recovery; then green is back as it
    // was before it died (undrained, factor 60).
    assert!(
        control
            .current()
            .unwrap()
            .record
            .stack("green")
            .unwrap()
            .evacuating
    );
    pilot
        .approve_incident(inc.id, "alice", "fixed")
        .await
        .unwrap();
    let green = control
        .current()
        .unwrap()
        .record
        .stack("green")
        .unwrap()
        .clone();
    assert!(!green.evacuating, "{green:?}");
    assert_eq!(green.weight_percent, 60);
    // A recovery report opens nothing.
    let recovered = FastPathAction {
        kind: FastPathKind::Recovered,
        version: None,
        ..action
    };
    assert!(pilot.record_fast_path(&recovered).await.unwrap().is_none());
}

#[test]
fn manual_shift_is_the_change_of_the_stacks_default_route_share() {
    let stacks = vec![
        crate::model::StackRuntime::new("blue", "us", 1, 0, "t"),
        crate::model::StackRuntime::new("green", "us", 1, 0, "t"),
    ];
    let w = |percent| StackOp::SetWeight {
        percent,
        reason: String::new(),
    };
    // 50/50 → green at factor 0: green's share 50 % → 0 %.
    assert_eq!(manual_shift(POLICY, &stacks, "green", &w(0)), Some(50));
    assert_eq!(manual_shift(POLICY, &stacks, "green", &w(100)), Some(0));
    // Factor 50 against 100: 1/3 of the traffic, a move of 17 points.
    assert_eq!(manual_shift(POLICY, &stacks, "green", &w(50)), Some(17));
    assert_eq!(manual_shift(POLICY, &stacks, "purple", &w(50)), None);
}

#[tokio::test]
async fn a_manual_change_waits_for_no_one_but_is_refused_while_another_holds_the_lease() {
    let (control, pilot) = pilot().await;
    // A rollout step holds the one-change lease.
    let held = pilot
        .guard
        .check(
            &ProposedChange {
                scope: SCOPE_POLICY.into(),
                kind: ChangeKind::PlanStep,
                origin: Origin::Automatic {
                    actor: "rollout:r1".into(),
                },
                stacks: vec!["green".into()],
                shift_percent: 5,
                approved_by: None,
                pre_approved: false,
                summary: "green 0% -> 5%".into(),
            },
            pilot.now(),
        )
        .unwrap();
    let err = pilot
        .manual_stack_op(
            "green",
            StackOp::SetWeight {
                percent: 0,
                reason: "x".into(),
            },
            Change::manual("bob", ""),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("rollout:r1"), "{msg}");
    assert_eq!(control.current_version(), 1, "nothing changed");
    // Getting traffic off a stack is never refused.
    let out = pilot
        .manual_stack_op(
            "green",
            StackOp::Evacuate {
                reason: "on fire".into(),
            },
            Change::manual("bob", ""),
        )
        .await
        .unwrap();
    assert!(out.changed);
    // Once the step is recorded, manual changes go through (approved by their author:
    // no rate limit for a human).
    pilot
        .guard
        .record(
            &ExecutedChange {
                permit: held,
                applied: true,
            },
            pilot.now(),
        )
        .unwrap();
    let out = pilot
        .manual_stack_op(
            "blue",
            StackOp::SetWeight {
                percent: 10,
                reason: "x".into(),
            },
            Change::manual("bob", ""),
        )
        .await
        .unwrap();
    assert!(out.changed);
}
