//! Who is calling, and what they may do: identities, roles, bearer tokens and the access
//! table that maps every gRPC method and HTTP route to the permission it needs.
//!
//! Decides: whether a credential names a live identity ([`tokens`] for bearer tokens,
//! [`certs`] for client certificates verified by TLS), which permission
//! each endpoint needs ([`access`]), and whether a role grants it ([`Role::grants`]).
//! Enforced in one place, in front of every handler ([`layer`]: a tower layer for
//! gRPC, an axum middleware for HTTP); handlers only read the [`Identity`] the layer put
//! into the request's extensions, and record it as the audit actor.
//!
//! Never: stores a token (only its SHA-256), compares secrets in variable time, or lets a
//! request through to a handler when no access rule names its endpoint (fail closed).
//! Token records live in the [`Store`](crate::store::Store) key space under `auth/`, so
//! replicas sharing an etcd cluster share them.

pub mod access;
pub mod certs;
pub mod layer;
pub mod tokens;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use access::Permission;
pub use tokens::{TokenError, TokenRecord, Tokens};

/// What an identity may do. One role per credential; see [`Role::grants`].
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything (status, policy, history, audit, incidents), follow Watch.
    Viewer,
    /// A viewer who also changes routing: policies, weights, drains, rollouts, events,
    /// alerts — within the guardrails.
    Operator,
    /// A viewer who also approves or rejects proposals (never their own).
    Approver,
    /// Everything, including tokens.
    Admin,
    /// What an Envoy gets: Watch and Report, nothing else.
    Dataplane,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Operator,
        Role::Approver,
        Role::Admin,
        Role::Dataplane,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Dataplane => "dataplane",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may do what `p` guards. Operator and approver are disjoint on
    /// purpose (four eyes: who moves traffic is not who approves the brain's proposals);
    /// the data plane reads nothing an operator sees.
    pub fn grants(self, p: Permission) -> bool {
        use Permission as P;
        match p {
            P::Open | P::Authenticated => true,
            P::Read | P::Watch => self != Role::Dataplane || p == P::Watch,
            P::Report => matches!(self, Role::Dataplane | Role::Admin),
            P::Operate => matches!(self, Role::Operator | Role::Admin),
            P::Approve => matches!(self, Role::Approver | Role::Admin),
            P::Admin => self == Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credential {
    /// A bearer token (its public id, never the secret).
    Token { id: String },
    /// A client certificate verified at the TLS handshake: the subject that mapped it
    /// (`CN=…`, `DNS:…` or `URI:…`).
    Certificate { subject: String },
}

/// An authenticated caller, as the layer puts it into request extensions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The name recorded as the actor of every change this caller makes.
    pub name: String,
    pub role: Role,
    pub credential: Credential,
}

/// The actor to record for a change: the authenticated identity when there is one (the
/// `actor` a client claims is not trusted), else what the client claimed (a server with
/// authentication disabled: development only).
pub fn actor(identity: Option<&Identity>, claimed: String) -> String {
    match identity {
        Some(i) => i.name.clone(),
        None => claimed,
    }
}

/// An event document (JSON) with its `actor` set to the authenticated identity; as sent
/// when there is none, or when it is not a JSON object (the registry rejects it then).
pub fn event_with_actor(identity: Option<&Identity>, json: String) -> String {
    let Some(i) = identity else { return json };
    match serde_json::from_str::<serde_json::Value>(&json) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("actor".into(), serde_json::Value::String(i.name.clone()));
            serde_json::Value::Object(m).to_string()
        }
        _ => json,
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `authorization: Bearer <token>`")]
    Missing,
    #[error("malformed authorization header: expected `Bearer <token>`")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token {0} was revoked")]
    Revoked(String),
    #[error("cannot check credentials: {0}")]
    Store(String),
}

/// Names that the system itself uses as audit actors: no credential may take them, so
/// an entry by `brain` or `rollout:…` is always the machine's.
pub fn reserved_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["brain", "autopilot", "system", "http", "anonymous"].contains(&n.as_str())
        || n.starts_with("rollout")
}

/// A name an identity may have: 1..=64 of `A-Z a-z 0-9 . _ @ -`, not reserved.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("name: 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
    {
        return Err(format!(
            "name {name:?}: only letters, digits, '.', '_', '@' and '-'"
        ));
    }
    if reserved_name(name) {
        return Err(format!(
            "name {name:?} is reserved for the system's own audit entries"
        ));
    }
    Ok(())
}

/// The self-approval rule: an approver never approves (or rejects) a proposal they made.
pub fn may_decide(identity: Option<&Identity>, proposer: &str) -> Result<(), String> {
    match identity {
        Some(i) if !proposer.is_empty() && i.name == proposer => Err(format!(
            "{} proposed this; another approver must decide",
            i.name
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission as P;

    #[test]
    fn roles_grant_what_the_table_in_docs_security_says() {
        let table = [
            (
                Role::Viewer,
                [P::Read, P::Watch],
                [P::Report, P::Operate, P::Approve, P::Admin],
            ),
            (
                Role::Dataplane,
                [P::Watch, P::Report],
                [P::Read, P::Operate, P::Approve, P::Admin],
            ),
        ];
        for (role, yes, no) in table {
            for p in yes {
                assert!(role.grants(p), "{role} {p:?}");
            }
            for p in no {
                assert!(!role.grants(p), "{role} {p:?}");
            }
        }
        assert!(Role::Operator.grants(P::Operate) && !Role::Operator.grants(P::Approve));
        assert!(Role::Approver.grants(P::Approve) && !Role::Approver.grants(P::Operate));
        assert!(!Role::Operator.grants(P::Admin) && !Role::Approver.grants(P::Admin));
        for p in [
            P::Read,
            P::Watch,
            P::Report,
            P::Operate,
            P::Approve,
            P::Admin,
        ] {
            assert!(Role::Admin.grants(p), "{p:?}");
        }
        for r in Role::ALL {
            assert!(r.grants(P::Open) && r.grants(P::Authenticated));
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn the_authenticated_identity_is_the_actor() {
        let alice = Identity {
            name: "alice".into(),
            role: Role::Operator,
            credential: Credential::Token { id: "x".into() },
        };
        assert_eq!(actor(Some(&alice), "mallory".into()), "alice");
        assert_eq!(actor(None, "dev".into()), "dev");
        assert!(may_decide(Some(&alice), "alice").is_err());
        assert!(may_decide(Some(&alice), "brain").is_ok());
        assert!(may_decide(None, "alice").is_ok());
    }

    #[test]
    fn names_are_checked_and_system_names_reserved() {
        assert!(check_name("alice@example.com").is_ok());
        assert!(check_name("envoy-eu-1").is_ok());
        for bad in [
            "",
            "a b",
            "x/y",
            "brain",
            "Brain",
            "rollout:r1",
            "rollout-bot",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
    }
}
