//! The policy gate: every policy the control service accepts passes the filter crate's
//! own validator, so a policy accepted here is exactly one the filter accepts.
//!
//! This module is the only place that talks to the filter's policy API. It never
//! changes anything; callers decide what to do with the verdict.

use serde_json::Value;

use switchyard_filter::policy;

/// A problem (or warning) with one field of a policy document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Issue {
    /// Field path, e.g. `rules[2].route.targets[0].stack`; `$` is the whole document.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What the control service needs to know about an accepted policy.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The policy's `name`, if any.
    pub name: Option<String>,
    /// Stacks in document order, with their region.
    pub stacks: Vec<StackInfo>,
    pub warnings: Vec<Issue>,
}

/// A stack as the policy defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackInfo {
    pub name: String,
    pub region: String,
}

/// Largest policy document accepted. Every Envoy keeps the snapshot in shared data and
/// each worker copies it when it changes, so keep documents small.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// Validate a policy document with the filter's validator.
///
/// On rejection, returns every issue the validator found.
pub fn check(policy_json: &str) -> Result<Accepted, Vec<Issue>> {
    if policy_json.len() > MAX_POLICY_BYTES {
        return Err(vec![Issue {
            path: "$".into(),
            message: format!(
                "the document is {} bytes; at most {MAX_POLICY_BYTES} are accepted",
                policy_json.len()
            ),
        }]);
    }
    let validated = policy::validate_json(policy_json).map_err(|invalid| {
        invalid
            .errors
            .into_iter()
            .map(|e| Issue {
                path: e.path,
                message: e.message,
            })
            .collect::<Vec<_>>()
    })?;
    let names = validated.policy.stack_names();
    // The document parsed, so it is a JSON object; read the display-only facts (name,
    // regions) from it instead of from the filter's compiled internals.
    let doc: Value = serde_json::from_str(policy_json).unwrap_or(Value::Null);
    let region_of = |name: &str| -> String {
        doc.get("stacks")
            .and_then(Value::as_array)
            .and_then(|stacks| {
                stacks
                    .iter()
                    .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
            })
            .and_then(|s| s.get("region"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(Accepted {
        name: doc.get("name").and_then(Value::as_str).map(str::to_string),
        stacks: names
            .iter()
            .map(|n| StackInfo {
                name: n.clone(),
                region: region_of(n),
            })
            .collect(),
        warnings: validated
            .warnings
            .into_iter()
            .map(|w| Issue {
                path: w.path,
                message: w.message,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_minimal_policy() {
        let ok = check(
            r#"{"name":"p","stacks":[{"name":"blue","region":"us"},{"name":"green","region":"eu"}],
                "default":{"targets":[{"stack":"blue"}]}}"#,
        )
        .unwrap();
        assert_eq!(ok.name.as_deref(), Some("p"));
        assert_eq!(
            ok.stacks,
            vec![
                StackInfo {
                    name: "blue".into(),
                    region: "us".into()
                },
                StackInfo {
                    name: "green".into(),
                    region: "eu".into()
                },
            ]
        );
    }

    #[test]
    fn rejects_oversized_documents() {
        let big = format!("{{\"name\":\"{}\"}}", "x".repeat(MAX_POLICY_BYTES));
        assert_eq!(check(&big).unwrap_err()[0].path, "$");
    }

    #[test]
    fn rejects_with_field_paths() {
        let errs = check(r#"{"stacks":[{"name":"blue","region":"us"}],"default":{"targets":[{"stack":"nope"}]}}"#)
            .unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.path.contains("default") && e.path.contains("stack")),
            "{errs:?}"
        );
    }
}
