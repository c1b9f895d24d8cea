use super::*;
use crate::model::{ChangeKind, StackRuntime};

/// The shipped degraded-mode demo policy: `eu-checkout` queues at `intake_eu` (EU only),
/// `checkout` queues at `intake_us` (blue, green).
fn policy() -> Policy {
    let json = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/intake/policy.json"
    ))
    .unwrap();
    switchyard_filter::policy::validate_json(&json)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .policy
}

fn record(edit: impl Fn(&mut StackRuntime)) -> VersionRecord {
    let stacks = [
        ("blue", "us"),
        ("green", "us"),
        ("canary", "us"),
        ("eu", "eu"),
    ]
    .iter()
    .map(|(n, r)| {
        let mut s = StackRuntime::new(n, r, 1, 0, "test");
        edit(&mut s);
        s
    })
    .collect();
    VersionRecord {
        version: 1,
        created_unix_ms: 0,
        kind: ChangeKind::PolicyApply,
        summary: String::new(),
        actor: String::new(),
        comment: String::new(),
        policy_version: 1,
        policy_name: None,
        policy_digest: String::new(),
        stacks,
        rule_stacks: Vec::new(),
    }
}

#[test]
fn no_rule_is_degraded_while_a_stack_it_may_use_serves() {
    assert_eq!(degraded_routes(&policy(), &record(|_| {})), vec![]);
    // One checkout stack left is enough.
    let r = record(|s| s.healthy = s.name != "blue");
    assert_eq!(degraded_routes(&policy(), &r), vec![]);
}

#[test]
fn every_checkout_stack_out_puts_checkout_in_degraded_mode_with_the_reasons() {
    let r = record(|s| match s.name.as_str() {
        "blue" => s.healthy = false,
        "green" => s.draining = true,
        _ => {}
    });
    assert_eq!(
        degraded_routes(&policy(), &r),
        vec![DegradedRoute {
            rule: "checkout".into(),
            queue: "intake_us".into(),
            reason: "blue: unhealthy, green: draining".into(),
        }]
    );
}

#[test]
fn the_eu_stack_out_degrades_only_the_eu_checkout_and_rules_without_a_queue_never() {
    let r = record(|s| {
        if s.name == "eu" {
            s.evacuating = true
        }
    });
    // eu-residency also lost its only stack, but it names no queue: local reply, not
    // degraded mode.
    assert_eq!(
        degraded_routes(&policy(), &r),
        vec![DegradedRoute {
            rule: "eu-checkout".into(),
            queue: "intake_eu".into(),
            reason: "eu: evacuating".into(),
        }]
    );
    let r = record(|s| {
        if s.name == "eu" {
            s.weight_percent = 0
        }
    });
    assert_eq!(degraded_routes(&policy(), &r)[0].reason, "eu: weight 0");
}
