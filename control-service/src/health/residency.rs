//! Residency before an evacuation: which residency-bound rules would be left with no
//! stack to serve them once a stack leaves. The fast path evacuates a dead stack anyway
//! (it cannot serve either way) but says so, because those requests now get the rule's
//! local reply instead of leaving their region.
//!
//! Reads the policy document as JSON (it was validated when applied) and the stacks'
//! live state from the version record; never changes anything.

use serde_json::Value;

use crate::model::VersionRecord;

/// Ids of residency-bound rules that use `leaving` and would have no other eligible
/// stack inside their residency. The default route is named `default`.
pub fn stranded_rules(policy_json: &str, record: &VersionRecord, leaving: &str) -> Vec<String> {
    let Ok(doc) = serde_json::from_str::<Value>(policy_json) else {
        return Vec::new();
    };
    let mut routes: Vec<(String, &Value)> = doc
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let id = r
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            r.get("route").map(|route| (id, route))
        })
        .collect();
    if let Some(d) = doc.get("default") {
        routes.push(("default".into(), d));
    }
    let mut out = Vec::new();
    for (id, route) in routes {
        let Some(regions) = route.get("residency").and_then(Value::as_array) else {
            continue;
        };
        let regions: Vec<&str> = regions.iter().filter_map(Value::as_str).collect();
        let targets = route
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(
                route
                    .pointer("/fallback/targets")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            );
        // Stacks this route may use: named with a weight above 0, inside the residency.
        let usable: Vec<&str> = targets
            .filter(|t| t.get("weight").and_then(Value::as_u64) != Some(0))
            .filter_map(|t| t.get("stack").and_then(Value::as_str))
            .filter(|name| {
                record
                    .stack(name)
                    .is_some_and(|s| regions.contains(&s.region.as_str()))
            })
            .collect();
        if !usable.contains(&leaving) {
            continue;
        }
        let others = usable.iter().any(|name| {
            *name != leaving
                && record
                    .stack(name)
                    .is_some_and(|s| s.effective_weight_percent() > 0)
        });
        if !others {
            out.push(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChangeKind, StackRuntime};

    fn record(stacks: &[(&str, &str)]) -> VersionRecord {
        VersionRecord {
            rule_stacks: Vec::new(),
            version: 1,
            created_unix_ms: 0,
            kind: ChangeKind::Bootstrap,
            summary: String::new(),
            actor: String::new(),
            comment: String::new(),
            policy_version: 1,
            policy_name: None,
            policy_digest: String::new(),
            stacks: stacks
                .iter()
                .map(|(n, r)| StackRuntime::new(n, r, 1, 0, "t"))
                .collect(),
        }
    }

    const POLICY: &str = r#"{
      "stacks": [ {"name":"blue","region":"us"}, {"name":"green","region":"us"},
                  {"name":"eu1","region":"eu"}, {"name":"eu2","region":"eu"} ],
      "rules": [
        { "id": "eu-residency", "match": {"regions": ["eu"]},
          "route": { "targets": [ {"stack": "eu1"} ], "residency": ["eu"],
                     "fallback": { "targets": [ {"stack": "eu2"}, {"stack": "blue"} ] } } },
        { "id": "us-only", "match": {"regions": ["us"]},
          "route": { "targets": [ {"stack": "blue"}, {"stack": "green", "weight": 0} ], "residency": ["us"] } }
      ],
      "default": { "targets": [ {"stack": "blue"}, {"stack": "green"} ] }
    }"#;

    #[test]
    fn a_rule_with_another_stack_in_its_region_is_fine() {
        let r = record(&[
            ("blue", "us"),
            ("green", "us"),
            ("eu1", "eu"),
            ("eu2", "eu"),
        ]);
        assert!(stranded_rules(POLICY, &r, "eu1").is_empty());
        assert!(
            stranded_rules(POLICY, &r, "green").is_empty(),
            "weight 0: not used"
        );
    }

    #[test]
    fn the_last_stack_in_the_residency_strands_the_rule() {
        let mut r = record(&[
            ("blue", "us"),
            ("green", "us"),
            ("eu1", "eu"),
            ("eu2", "eu"),
        ]);
        // eu2 already evacuated: eu1 is the last EU stack; blue (US) never counts for EU.
        r.stacks[3].evacuating = true;
        assert_eq!(stranded_rules(POLICY, &r, "eu1"), ["eu-residency"]);
        // blue is the only usable stack of us-only (green has weight 0 there); the
        // default route has no residency.
        assert_eq!(stranded_rules(POLICY, &r, "blue"), ["us-only"]);
        assert!(stranded_rules("not json", &r, "blue").is_empty());
    }
}
