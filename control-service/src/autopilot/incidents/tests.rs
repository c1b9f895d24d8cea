use super::*;

/// blue (policy weight 1, factor `blue_factor`, maybe evacuating) and green (weight 3).
fn current(blue_factor: u32, blue_evacuating: bool) -> Current {
    let stack = |name: &str, factor: u32, evacuating: bool| {
        serde_json::json!({
            "name": name, "weight_percent": factor, "healthy": true, "draining": false,
            "evacuating": evacuating, "registered": true, "changed_version": 1,
            "changed_unix_ms": 1
        })
    };
    let record = serde_json::from_value(serde_json::json!({
        "version": 7, "created_unix_ms": 1, "kind": "stack_weight", "summary": "",
        "policy_version": 1, "policy_digest": "x",
        "stacks": [stack("blue", blue_factor, blue_evacuating), stack("green", 100, false)],
    }))
    .expect("record");
    Current::new(
        record,
        r#"{"stacks":[{"name":"blue"},{"name":"green"}],
            "default":{"targets":[{"stack":"blue","weight":1},{"stack":"green","weight":3}]}}"#
            .into(),
    )
}

fn prior(factor: u32) -> BTreeMap<String, Prior> {
    ["blue", "green"]
        .into_iter()
        .map(|s| {
            (
                s.to_string(),
                Prior {
                    weight_percent: if s == "blue" { factor } else { 100 },
                    draining: false,
                    evacuating: false,
                },
            )
        })
        .collect()
}

fn weights(ops: &[(String, StackOp)]) -> Vec<(String, String)> {
    ops.iter()
        .map(|(s, op)| {
            let what = match op {
                StackOp::SetWeight { percent, .. } => format!("weight {percent}"),
                StackOp::Evacuate { .. } => "evacuate".into(),
                StackOp::Undrain { .. } => "undrain".into(),
                other => format!("{other:?}"),
            };
            (s.clone(), what)
        })
        .collect()
}

#[test]
fn shares_follow_weights_factors_and_evacuations() {
    let s = default_shares(&current(100, false));
    assert_eq!((s["blue"], s["green"]), (25.0, 75.0));
    let s = default_shares(&current(0, true));
    assert_eq!((s["blue"], s["green"]), (0.0, 100.0));
}

#[test]
fn a_shift_lowers_the_factor_of_the_stack_it_moves_from() {
    let shift = Action::Shift {
        scope: "blue".into(),
        from: "blue".into(),
        to: vec!["green".into()],
        percent: 50,
    };
    let ops = ops_for(&shift, &current(80, false), &prior(80), "r").unwrap();
    assert_eq!(weights(&ops), [("blue".into(), "weight 40".into())]);
    let evac = Action::Evacuate {
        stack: "blue".into(),
        to: vec!["green".into()],
    };
    let ops = ops_for(&evac, &current(80, false), &prior(80), "r").unwrap();
    assert_eq!(weights(&ops), [("blue".into(), "evacuate".into())]);
    let gone = Action::Evacuate {
        stack: "purple".into(),
        to: vec![],
    };
    assert!(ops_for(&gone, &current(80, false), &prior(80), "r").is_err());
}

#[test]
fn a_restore_puts_back_the_weights_from_before_the_incident() {
    let restore = Action::Restore {
        stacks: vec!["blue".into(), "green".into()],
    };
    // blue was shifted (80 -> 40) then evacuated; the restore undoes both, and
    // leaves green (unchanged) alone.
    let ops = ops_for(&restore, &current(40, true), &prior(80), "r").unwrap();
    assert_eq!(
        weights(&ops),
        [
            ("blue".into(), "undrain".into()),
            ("blue".into(), "weight 80".into())
        ]
    );
    // Nothing to restore: no operation.
    let ops = ops_for(&restore, &current(80, false), &prior(80), "r").unwrap();
    assert!(ops.is_empty());
}
