//! `GET /api/v1/whoami`: who the caller is and which of the console's actions their role
//! allows, so the pages can hide or disable buttons a viewer may not press.
//!
//! Decides nothing new: every answer is the access table's (`auth/access.rs`) rule for
//! the action's route, checked with [`Role::grants`]. The buttons are a courtesy; the
//! auth middleware still refuses a forged call. Never reveals more than the caller
//! already holds: their own name, role and the public id of their token.

use axum::http::Method;
use axum::Json;
use serde_json::{json, Map, Value};

use crate::auth::{access, Credential, Identity, Permission, Role};

/// Each console action, by the name the pages use, and the route it posts to.
pub const ACTIONS: [(&str, &str); 6] = [
    ("incident_decision", "/api/v1/incidents/{id}/{decision}"),
    ("rollout_command", "/api/v1/rollouts/{id}/{action}"),
    ("stack_op", "/api/v1/stacks/{name}/{op}"),
    ("policy_apply", "/api/v1/policy/apply"),
    ("policy_validate", "/api/v1/policy/validate"),
    ("explain", "/api/v1/explain"),
];

/// Whether `role` (`None`: authentication is off, everything passes) may post to `route`
/// as the access table says; a route without a rule is refused, as the middleware does.
fn may(role: Option<Role>, route: &str) -> bool {
    match (role, access::http(route, &Method::POST)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(r), Some(need)) => r.grants(need),
    }
}

/// The body of the answer for `who` (`None`: a server without authentication).
pub fn describe(who: Option<&Identity>) -> Value {
    let role = who.map(|w| w.role);
    let actions: Map<String, Value> = ACTIONS
        .iter()
        .map(|(name, route)| ((*name).to_string(), Value::Bool(may(role, route))))
        .collect();
    let permissions: Map<String, Value> = [
        ("read", Permission::Read),
        ("watch", Permission::Watch),
        ("report", Permission::Report),
        ("operate", Permission::Operate),
        ("approve", Permission::Approve),
        ("admin", Permission::Admin),
    ]
    .into_iter()
    .map(|(name, p)| {
        (
            name.to_string(),
            Value::Bool(role.is_none_or(|r| r.grants(p))),
        )
    })
    .collect();
    match who {
        Some(w) => {
            let credential = match &w.credential {
                Credential::Token { id } => json!({ "kind": "token", "id": id }),
                Credential::Certificate { subject } => {
                    json!({ "kind": "certificate", "subject": subject })
                }
            };
            json!({
                "authenticated": true,
                "name": w.name,
                "role": w.role.as_str(),
                "credential": credential,
                "permissions": permissions,
                "actions": actions,
            })
        }
        None => json!({
            "authenticated": false,
            "name": null,
            "role": null,
            "note": "this control service runs without authentication: every action is allowed and audited under the name the request claims",
            "permissions": permissions,
            "actions": actions,
        }),
    }
}

/// `GET /api/v1/whoami`.
pub async fn whoami(who: Option<axum::Extension<Identity>>) -> Json<Value> {
    Json(describe(who.map(|w| w.0).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_role(role: Role) -> Value {
        describe(Some(&Identity {
            name: "x".into(),
            role,
            credential: Credential::Token { id: "abc".into() },
        }))
    }

    #[test]
    fn actions_follow_the_access_table() {
        let v = as_role(Role::Viewer);
        assert_eq!(v["role"], "viewer");
        for a in [
            "incident_decision",
            "rollout_command",
            "stack_op",
            "policy_apply",
        ] {
            assert_eq!(v["actions"][a], false, "viewer {a}");
        }
        assert_eq!(v["actions"]["policy_validate"], true);
        assert_eq!(v["actions"]["explain"], true);
        let a = as_role(Role::Approver);
        assert_eq!(a["actions"]["incident_decision"], true);
        assert_eq!(a["actions"]["stack_op"], false);
        let o = as_role(Role::Operator);
        assert_eq!(o["actions"]["incident_decision"], false);
        assert_eq!(o["actions"]["stack_op"], true);
        assert_eq!(o["actions"]["policy_apply"], true);
        let admin = as_role(Role::Admin);
        assert!(ACTIONS
            .iter()
            .all(|(name, _)| admin["actions"][name] == true));
        assert_eq!(admin["credential"]["id"], "abc");
        let off = describe(None);
        assert_eq!(off["authenticated"], false);
        assert!(ACTIONS.iter().all(|(name, _)| off["actions"][name] == true));
    }

    #[test]
    fn every_action_route_has_an_access_rule() {
        for (name, route) in ACTIONS {
            assert!(
                access::http(route, &Method::POST).is_some(),
                "{name}: {route}"
            );
        }
    }
}
