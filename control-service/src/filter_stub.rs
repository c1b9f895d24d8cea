//! TEMPORARY compile-time stand-in for `switchyard_filter::policy` until the filter
//! crate exports it. Same API; much weaker checks. Removed when the real one lands.
#![allow(dead_code)]

use serde_json::Value;

pub struct FieldIssue {
    pub path: String,
    pub message: String,
}
pub struct Policy {
    names: Vec<String>,
}
impl Policy {
    pub fn stack_names(&self) -> Vec<String> {
        self.names.clone()
    }
}
pub struct Validated {
    pub policy: Policy,
    pub warnings: Vec<FieldIssue>,
}
pub struct Invalid {
    pub errors: Vec<FieldIssue>,
}

pub fn validate_json(json: &str) -> Result<Validated, Invalid> {
    let issue = |p: &str, m: &str| FieldIssue {
        path: p.into(),
        message: m.into(),
    };
    let doc: Value = serde_json::from_str(json).map_err(|e| Invalid {
        errors: vec![issue("$", &e.to_string())],
    })?;
    let mut errors = Vec::new();
    let mut names = Vec::new();
    match doc.get("stacks").and_then(Value::as_array) {
        Some(stacks) if !stacks.is_empty() => {
            for (i, s) in stacks.iter().enumerate() {
                match s.get("name").and_then(Value::as_str) {
                    Some(n) if !n.is_empty() => names.push(n.to_string()),
                    _ => errors.push(issue(&format!("stacks[{i}].name"), "required")),
                }
                if s.get("region").and_then(Value::as_str).is_none() {
                    errors.push(issue(&format!("stacks[{i}].region"), "required"));
                }
            }
        }
        _ => errors.push(issue("stacks", "at least one stack is required")),
    }
    match doc
        .get("default")
        .and_then(|d| d.get("targets"))
        .and_then(Value::as_array)
    {
        Some(targets) => {
            for (i, t) in targets.iter().enumerate() {
                let s = t.get("stack").and_then(Value::as_str).unwrap_or("");
                if !names.iter().any(|n| n == s) {
                    errors.push(issue(
                        &format!("default.targets[{i}].stack"),
                        "unknown stack",
                    ));
                }
            }
        }
        None => errors.push(issue("default", "missing field `default`")),
    }
    if errors.is_empty() {
        Ok(Validated {
            policy: Policy { names },
            warnings: vec![],
        })
    } else {
        Err(Invalid { errors })
    }
}
