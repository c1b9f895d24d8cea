//! "Why did this request go there?": a pasted request (headers, cookie, client address,
//! time) run through the filter crate's own classifier and router against the policy and
//! stack states in force, reporting each step: classification, matched rule, the
//! eligibility of every target, and the decision.
//!
//! Nothing here re-implements routing: [`switchyard_filter::router::Router::decide`] is
//! the decision Envoy's workers make. An affinity cookie is verified with the filter's own
//! [`Keyring`] when the control service was started with the Envoys' cookie keys
//! (`SWITCHYARD_AFFINITY_KEYS`, the variable Envoy reads); without them it is reported
//! as unverified, never trusted. Envoys' local circuit breakers are not visible here.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::OnceLock;

use switchyard_filter::affinity::{Keyring, Verdict, KEYS_ENV};
use switchyard_filter::classify::{classify, Found, Request};
use switchyard_filter::policy::Policy;
use switchyard_filter::router::{AffinityEvent, Decision, Outcome, Router, StackHealth};

use super::api::{body, ApiError};
use crate::control::Control;

/// At most this many headers, and bytes per header value.
const MAX_HEADERS: usize = 200;
const MAX_VALUE: usize = 16 * 1024;

/// The cookie keys from the environment, read once: `Ok(None)` when unset, `Err` (why)
/// when set but malformed (reported in every answer; the secrets never are).
fn keys() -> &'static Result<Option<Keyring>, String> {
    static KEYS: OnceLock<Result<Option<Keyring>, String>> = OnceLock::new();
    KEYS.get_or_init(|| match std::env::var(KEYS_ENV) {
        Err(_) => Ok(None),
        Ok(spec) if spec.trim().is_empty() => Ok(None),
        Ok(spec) => Keyring::parse(&spec).map(Some).map_err(|e| {
            tracing::warn!(error = %e, "{KEYS_ENV} is malformed: explain cannot verify affinity cookies");
            format!("{KEYS_ENV} is malformed: {e}")
        }),
    })
}

/// Headers as an object (`{"user-agent": "…"}`) or as pairs (repeats kept).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Headers {
    Pairs(Vec<(String, String)>),
    Map(serde_json::Map<String, Value>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainBody {
    #[serde(default)]
    headers: Option<Headers>,
    /// The `cookie` header's value, pasted on its own.
    #[serde(default)]
    cookie: Option<String>,
    /// Client address, as Envoy's `source.address` (`ip` or `ip:port`).
    #[serde(default)]
    source: Option<String>,
    /// Request time, Unix ms (default: now).
    #[serde(default)]
    time_unix_ms: Option<u64>,
}

fn header_pairs(b: &ExplainBody) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = match &b.headers {
        None => Vec::new(),
        Some(Headers::Pairs(p)) => p.clone(),
        Some(Headers::Map(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(ApiError::bad(
                    format!("headers.{k}"),
                    "a header value must be a string",
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    for (i, (name, value)) in out.iter_mut().enumerate() {
        *name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(ApiError::bad(format!("headers[{i}]"), "empty header name"));
        }
        if value.len() > MAX_VALUE {
            return Err(ApiError::bad(
                format!("headers.{name}"),
                format!("longer than {MAX_VALUE} bytes"),
            ));
        }
    }
    if let Some(c) = &b.cookie {
        out.push(("cookie".into(), c.clone()));
    }
    if out.len() > MAX_HEADERS {
        return Err(ApiError::bad(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    // What Envoy always passes, when the paste left it out.
    for (name, default) in [(":method", "GET"), (":path", "/")] {
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.into(), default.into()));
        }
    }
    Ok(out)
}

/// `POST /api/v1/explain`.
pub async fn explain(
    State(control): State<Arc<Control>>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: ExplainBody = body(&bytes)?;
    let pairs = header_pairs(&b)?;
    let source = match &b.source {
        Some(s) => Some(
            switchyard_filter::cidr::parse_socket_address(s.trim())
                .ok_or_else(|| ApiError::bad("source", format!("{s:?} is not an IP address")))?,
        ),
        None => None,
    };
    let current = control.current().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "failed_precondition",
            "no policy yet: apply one first",
        )
    })?;
    let policy = current
        .compiled()
        .ok_or_else(|| ApiError::internal("the policy in force does not compile"))?;
    let snapshot = current.snapshot();
    let keyring = keys().as_ref().ok().and_then(Option::as_ref);
    let mut router = Router::new(policy.clone(), keyring.cloned());
    router.set_stacks(snapshot.stacks.iter().map(|s| StackHealth {
        name: &s.name,
        factor: s.factor(),
        healthy: s.healthy,
        sticky_until_ms: s.sticky_until_ms(),
    }));

    let headers: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    let req = Request {
        headers: &headers,
        source,
        now_ms: b.time_unix_ms.unwrap_or_else(crate::model::now_unix_ms),
    };
    let attrs = classify(&policy, &req);
    let decision = router.decide(&req);

    let stack_name = |id: usize| policy.stacks.get(id).map(|s| s.name.as_str());
    let classification = json!({
        "region": attrs.region.and_then(|r| policy.regions.get(r as usize)),
        "country": attrs.country.map(|c| String::from_utf8_lossy(&c).into_owned()),
        "channel": policy.channels.get(attrs.channel as usize),
        "cohort": attrs.cohort.map(|c| String::from_utf8_lossy(c).into_owned()),
        "path": String::from_utf8_lossy(attrs.path),
        "method": String::from_utf8_lossy(attrs.method),
        "user_key": attrs.user_key.is_some(),
        "bucket_basis_points": attrs.bucket,
        "affinity_cookie": match attrs.affinity_cookie {
            Found::Absent => "absent",
            Found::One(_) => "present",
            Found::Repeated => "repeated (hostile: ignored)",
        },
        "hostile": attrs.hostile,
    });
    let rule = policy.rules.get(decision.rule);
    let eligible = rule
        .map(|r| targets(&policy, r, &snapshot))
        .unwrap_or_default();
    let affinity = affinity(
        &policy,
        rule,
        attrs.affinity_cookie,
        &decision,
        &eligible,
        req.now_ms / 1000,
    );
    let outcome = match &decision.outcome {
        Outcome::Stack { id, how } => json!({
            "kind": "stack",
            "stack": stack_name(*id),
            "how": how.as_str(),
        }),
        Outcome::Queue {
            intended,
            region,
            channel,
        } => json!({
            "kind": "queue",
            "intended": intended.and_then(stack_name),
            "region": region.and_then(|r| policy.regions.get(r as usize)),
            "channel": policy.channels.get(*channel as usize),
        }),
        Outcome::Local(reply) => json!({
            "kind": "local_reply",
            "status": reply.status,
            "retry_after_s": reply.retry_after_s,
            "message": reply.message,
        }),
    };
    Ok(Json(json!({
        "version": current.record.version,
        "policy_version": current.record.policy_version,
        "classification": classification,
        "rule": {
            "index": decision.rule,
            "id": rule.map(|r| r.id.as_str()),
            "default": decision.rule + 1 == policy.rules.len(),
        },
        "targets": eligible,
        "affinity": affinity,
        "decision": outcome,
        "hostile": decision.hostile,
        "note": "a weighted route spreads requests by weight: the stack shown is the first pick of a fresh round-robin; `targets` gives every eligible stack's share",
    })))
}

/// What the affinity cookie says and what routing did with it: verified with the
/// filter's [`Keyring::verify`] (the check Envoy's workers make), then whether the
/// decision honoured it ([`Decision::affinity`]).
fn affinity(
    policy: &Policy,
    rule: Option<&switchyard_filter::policy::Rule>,
    cookie: Found<'_>,
    decision: &Decision,
    targets: &[Value],
    now_s: u64,
) -> Value {
    let name = policy.affinity.cookie.as_str();
    let route_has_affinity = rule.is_some_and(|r| r.route.affinity_ttl_s.is_some());
    let mut out = json!({
        "cookie_name": name,
        "route_has_affinity": route_has_affinity,
        "epoch": policy.affinity.epoch,
    });
    let value = match cookie {
        Found::Absent => {
            out["cookie"] = json!("absent");
            out["explanation"] = json!(if route_has_affinity {
                format!("no {name} cookie: a new visitor, balanced and given a cookie")
            } else {
                format!("no {name} cookie, and the matched route has no affinity")
            });
            return out;
        }
        Found::Repeated => {
            out["cookie"] = json!("repeated");
            out["verdict"] = json!("forged");
            out["explanation"] = json!(format!(
                "{name} sent more than once: treated as hostile and ignored (counted as forged)"
            ));
            return out;
        }
        Found::One(v) => v,
    };
    out["cookie"] = json!("present");
    let keyring = match keys() {
        Ok(Some(k)) => k,
        Ok(None) | Err(_) => {
            // Unverified: say what it claims, never act on it.
            let text = String::from_utf8_lossy(value);
            let claimed = text.split('.').nth(2).unwrap_or("");
            out["verified"] = json!(false);
            out["verdict"] = json!("not_checked");
            out["claims_stack"] = json!(claimed);
            out["explanation"] = json!(match keys() {
                Err(e) => format!("not verified: {e}"),
                _ => format!(
                    "not verified: this control service holds no cookie keys (start it with the Envoys' {KEYS_ENV} to check signatures); unverified, the cookie claims stack {claimed:?}"
                ),
            });
            return out;
        }
    };
    let verdict = keyring.verify(value, policy.affinity.epoch, now_s);
    let (verdict_name, explanation) = match verdict {
        Verdict::Valid { stack, expiry_s } => {
            out["stack"] = json!(stack);
            out["expires"] = json!(switchyard_filter::schedule::format_rfc3339(
                i64::try_from(expiry_s).unwrap_or(i64::MAX)
            ));
            let why_not = targets
                .iter()
                .find(|t| t["stack"] == stack)
                .and_then(|t| t["why_not"].as_str());
            let text = if policy.stack_id(stack).is_none() {
                format!("authentic, pins {stack}, which the policy no longer has: reassigned")
            } else if !route_has_affinity {
                format!("authentic, pins {stack}; the matched route has no affinity, so it is not used")
            } else if decision.affinity == AffinityEvent::Hit {
                format!("authentic, pins {stack}: the user stays there")
            } else {
                match why_not {
                    Some(why) => format!("authentic, pins {stack}, which is not eligible now ({why}): reassigned"),
                    None if targets.iter().all(|t| t["stack"] != stack) => format!(
                        "authentic, pins {stack}, which is not among the matched rule's stacks: reassigned"
                    ),
                    None => format!("authentic, pins {stack}, which takes no traffic on this route now: reassigned"),
                }
            };
            ("valid", text)
        }
        Verdict::Forged => (
            "forged",
            "bad signature or malformed: ignored, the user is balanced anew (switchyard_affinity_forged)".to_string(),
        ),
        Verdict::UnknownKey => (
            "unknown_key",
            "signed with a key id these keys do not hold (rotated out?): ignored like a forgery".to_string(),
        ),
        Verdict::Expired => (
            "expired",
            "authentic but expired: the user is balanced anew (switchyard_affinity_expired)".to_string(),
        ),
        Verdict::Stale => (
            "stale",
            format!(
                "authentic but from another affinity epoch (the policy's is {}): reassigned (switchyard_affinity_stale)",
                policy.affinity.epoch
            ),
        ),
    };
    out["verified"] = json!(true);
    out["verdict"] = json!(verdict_name);
    out["explanation"] = json!(explanation);
    out["event"] = json!(match decision.affinity {
        AffinityEvent::Off => "off",
        AffinityEvent::Hit => "hit",
        AffinityEvent::Miss => "miss",
        AffinityEvent::Forged => "forged",
        AffinityEvent::Expired => "expired",
        AffinityEvent::Stale => "stale",
    });
    out
}

/// Every target and fallback of the matched rule, with why it is or is not eligible.
fn targets(
    policy: &Policy,
    rule: &switchyard_filter::policy::Rule,
    snapshot: &switchyard_filter::snapshot::Snapshot,
) -> Vec<Value> {
    let route = &rule.route;
    let state = |name: &str| snapshot.stacks.iter().find(|s| s.name == name);
    let row = |t: &switchyard_filter::policy::Target, role: &str| {
        let name = policy.stacks.get(t.stack).map_or("?", |s| s.name.as_str());
        let st = state(name);
        let factor = st.map_or(100, |s| s.factor());
        let healthy = st.is_none_or(|s| s.healthy);
        let resident = route.residency & (1u64 << t.stack) != 0;
        let why = if !resident {
            Some("outside the route's residency")
        } else if !healthy {
            Some("unhealthy")
        } else if t.weight == 0 {
            Some("policy weight 0")
        } else if factor == 0 {
            Some(if st.is_some_and(|s| s.draining) {
                "draining"
            } else if st.is_some_and(|s| s.evacuating) {
                "evacuating"
            } else {
                "operator weight 0"
            })
        } else {
            None
        };
        json!({
            "stack": name,
            "role": role,
            "policy_weight": t.weight,
            "factor_percent": factor,
            "healthy": healthy,
            "eligible": why.is_none(),
            "why_not": why,
            "effective_weight": if why.is_none() { u64::from(t.weight) * u64::from(factor) } else { 0 },
        })
    };
    let mut rows: Vec<Value> = route.targets.iter().map(|t| row(t, "target")).collect();
    rows.extend(route.fallback.iter().map(|t| row(t, "fallback")));
    let total: u64 = rows
        .iter()
        .filter(|r| r["role"] == "target")
        .filter_map(|r| r["effective_weight"].as_u64())
        .sum();
    for r in rows.iter_mut().filter(|r| r["role"] == "target") {
        let w = r["effective_weight"].as_u64().unwrap_or(0);
        r["share"] = json!(if total > 0 {
            w as f64 / total as f64
        } else {
            0.0
        });
    }
    rows
}
