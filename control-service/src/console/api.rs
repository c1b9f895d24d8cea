//! The console's JSON write endpoints and the reads the existing API lacked. Each action
//! translates a JSON body into the call the gRPC service makes for the same operation
//! (same control/autopilot function, same guardrails) and maps its error onto the HTTP
//! API's error shape `{"error": {"code", "message", "field"?, "problems"?}}`.
//!
//! The actor of an action is the request's: the `actor` field of the body (as the gRPC
//! requests carry it), `console` when absent. When the auth layer lands, the signed-in
//! identity it attaches replaces this.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::autopilot::{Autopilot, AutopilotError, IncidentCommandError};
use crate::brain::incident::IncidentError;
use crate::brain::rollout::{Command, RolloutError};
use crate::control::{Change, Control, ControlError, StackOp};

/// The console's API routes (state: the control core; the autopilot comes as an
/// extension, as for the rest of the HTTP API).
pub fn routes() -> Router<Arc<Control>> {
    // One brain poller per router (per server), shared by its streams.
    let hub = Arc::new(super::stream::Hub::default());
    Router::new()
        .route("/api/v1/rollouts/{id}/{action}", post(rollout_command))
        .route("/api/v1/incidents/{id}/{decision}", post(incident_decision))
        .route("/api/v1/stacks/{name}/{op}", post(stack_op))
        .route("/api/v1/policy/validate", post(validate_policy))
        .route("/api/v1/policy/apply", post(apply_policy))
        .route("/api/v1/policy/diff", get(policy_diff))
        .route("/api/v1/split", get(split))
        .route("/api/v1/explain", post(super::explain::explain))
        .route("/api/v1/whoami", get(super::whoami::whoami))
        .route(
            "/api/v1/stream",
            get(move |state, pilot| super::stream::stream(hub.clone(), state, pilot)),
        )
}

/// An API error in the HTTP API's shape; `field` names the input that is wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    problems: Vec<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            problems: Vec::new(),
        }
    }

    /// A 400 about one input field.
    pub fn bad(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let field = field.into();
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("{field}: {message}"),
        );
        e.field = Some(field);
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "failed_precondition", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(f) = self.field {
            error["field"] = json!(f);
        }
        if !self.problems.is_empty() {
            error["problems"] = json!(self.problems);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

fn issues_json(issues: &[crate::validate::Issue]) -> Vec<Value> {
    issues
        .iter()
        .map(|i| json!({ "field": i.path, "message": i.message }))
        .collect()
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::InvalidPolicy(issues) => {
                let mut err = Self::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_policy",
                    format!("invalid policy ({} problems)", issues.len()),
                );
                err.field = issues.first().map(|i| format!("policy.{}", i.path));
                err.problems = issues_json(&issues);
                err
            }
            ControlError::InvalidArgument(m) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_argument", m)
            }
            ControlError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m),
            ControlError::FailedPrecondition(m) => Self::conflict(m),
            ControlError::Conflict(m) => Self::new(StatusCode::CONFLICT, "aborted", m),
            ControlError::Unavailable(m) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            e @ (ControlError::Store(_) | ControlError::Task(_)) => {
                Self::internal(format!("nothing was changed: {e}"))
            }
        }
    }
}

/// The same mapping as the gRPC service's (`grpc.rs`), in HTTP statuses.
impl From<AutopilotError> for ApiError {
    fn from(e: AutopilotError) -> Self {
        if e.is_unavailable() && !matches!(e, AutopilotError::Control(_)) {
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("nothing was changed: {e}"),
            );
        }
        match e {
            AutopilotError::Control(c) => c.into(),
            AutopilotError::Invalid(m) => Self::new(StatusCode::BAD_REQUEST, "invalid_argument", m),
            AutopilotError::Internal(m) => Self::internal(m),
            AutopilotError::Rollout(r) => match r {
                RolloutError::Invalid(_) => {
                    Self::new(StatusCode::BAD_REQUEST, "invalid_argument", r.to_string())
                }
                RolloutError::NotFound(_) => {
                    Self::new(StatusCode::NOT_FOUND, "not_found", r.to_string())
                }
                RolloutError::Exists(_)
                | RolloutError::ScopeBusy { .. }
                | RolloutError::NotNow { .. }
                | RolloutError::Factors(_) => Self::conflict(r.to_string()),
                RolloutError::Refused(_) => Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "resource_exhausted",
                    r.to_string(),
                ),
                RolloutError::Conflict(_) => {
                    Self::new(StatusCode::CONFLICT, "aborted", r.to_string())
                }
                other => Self::internal(other.to_string()),
            },
        }
    }
}

impl From<IncidentCommandError> for ApiError {
    fn from(e: IncidentCommandError) -> Self {
        match e {
            IncidentCommandError::Autopilot(a) => a.into(),
            IncidentCommandError::NotExecuted(m) => {
                Self::conflict(format!("approved, but not carried out: {m}"))
            }
            IncidentCommandError::Incident(i) => match i {
                IncidentError::NotFound(_) => {
                    Self::new(StatusCode::NOT_FOUND, "not_found", i.to_string())
                }
                IncidentError::WrongPhase { .. } | IncidentError::Frozen { .. } => {
                    Self::conflict(i.to_string())
                }
                IncidentError::Invalid(_) => {
                    Self::new(StatusCode::BAD_REQUEST, "invalid_argument", i.to_string())
                }
                IncidentError::Store(crate::store::StoreError::Conflict { .. }) => {
                    Self::new(StatusCode::CONFLICT, "aborted", i.to_string())
                }
                other => Self::internal(other.to_string()),
            },
        }
    }
}

pub(super) type Pilot = Option<axum::Extension<Arc<Autopilot>>>;

pub(super) fn pilot(p: Pilot) -> Result<Arc<Autopilot>, ApiError> {
    p.map(|axum::Extension(p)| p).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the brain is not running in this server",
        )
    })
}

/// A JSON body decoded into `T`; a wrong shape is a 400 naming the field serde
/// stopped at (`$` for the document itself). An empty body is `{}`.
pub(super) fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // serde names a missing or unknown field in its message, not in the path.
        let named = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| inner.strip_prefix(p))
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), named) {
            ("." | "?", Some(f)) => f.to_string(),
            // The document itself (or a syntax error before any field).
            ("." | "?", None) => "$".to_string(),
            (p, Some(f)) if !inner.starts_with("unknown") => format!("{p}.{f}"),
            (p, _) => p.to_string(),
        };
        ApiError::bad(field, inner)
    })
}

/// Who asks and why: the common part of every action's body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    comment: String,
}

/// The authenticated caller (put there by the auth middleware); `None` with
/// authentication off.
type Caller = Option<axum::Extension<crate::auth::Identity>>;

/// The audit actor: the authenticated identity; with authentication off, what the body
/// claims, else `console`.
fn actor(who: Caller, claimed: Option<String>) -> String {
    let claimed = claimed
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "console".into());
    crate::auth::actor(who.map(|w| w.0).as_ref(), claimed)
}

/// `POST /api/v1/rollouts/{id}/{pause|resume|promote|abort|rollback}`.
async fn rollout_command(
    p: Pilot,
    who: Caller,
    Path((id, action)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let pilot = pilot(p)?;
    let d: Decision = body(&bytes)?;
    let actor = actor(who, d.actor);
    let cmd = match action.as_str() {
        "pause" => Command::Pause { actor },
        "resume" => Command::Resume { actor },
        "promote" => Command::Promote { actor },
        "abort" => Command::Abort { actor },
        "rollback" => Command::Rollback { actor },
        other => {
            return Err(ApiError::bad(
                "action",
                format!("{other:?} is not one of pause, resume, promote, abort, rollback"),
            ))
        }
    };
    let rollout = pilot.command(&id, cmd).await?;
    Ok(Json(json!({ "rollout": rollout })))
}

/// `POST /api/v1/incidents/{id}/{approve|reject}` with `{"comment": …}`. A rejection
/// must say why.
async fn incident_decision(
    p: Pilot,
    who: Caller,
    Path((id, decision)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let pilot = pilot(p)?;
    let n: u64 = id
        .parse()
        .map_err(|_| ApiError::bad("id", format!("{id:?} is not an incident number")))?;
    let d: Decision = body(&bytes)?;
    let actor = actor(who, d.actor);
    let incident = match decision.as_str() {
        "approve" => pilot.approve_incident(n, &actor, &d.comment).await?,
        "reject" => {
            if d.comment.trim().is_empty() {
                return Err(ApiError::bad("comment", "a rejection needs a comment"));
            }
            pilot.reject_incident(n, &actor, &d.comment).await?
        }
        other => {
            return Err(ApiError::bad(
                "decision",
                format!("{other:?} is not one of approve, reject"),
            ))
        }
    };
    Ok(Json(json!({ "incident": incident })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StackBody {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    reason: String,
    /// `weight` only.
    #[serde(default)]
    percent: Option<u32>,
    /// `drain` only: seconds until cookie holders move too (0 or absent: none).
    #[serde(default)]
    deadline_seconds: u64,
}

/// `POST /api/v1/stacks/{name}/{weight|drain|evacuate|undrain|unhealthy|healthy}`:
/// through the autopilot's guardrails, as the gRPC Stacks service does.
async fn stack_op(
    State(control): State<Arc<Control>>,
    p: Pilot,
    who: Caller,
    Path((name, op)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: StackBody = body(&bytes)?;
    let reason = b.reason;
    let op = match op.as_str() {
        "weight" => StackOp::SetWeight {
            percent: b
                .percent
                .ok_or_else(|| ApiError::bad("percent", "required for weight"))?,
            reason,
        },
        "drain" => StackOp::Drain {
            reason,
            deadline: (b.deadline_seconds != 0)
                .then(|| std::time::Duration::from_secs(b.deadline_seconds)),
        },
        "evacuate" => StackOp::Evacuate { reason },
        "undrain" => StackOp::Undrain { reason },
        "unhealthy" => StackOp::MarkUnhealthy { reason },
        "healthy" => StackOp::MarkHealthy { reason },
        other => {
            return Err(ApiError::bad(
                "op",
                format!(
                    "{other:?} is not one of weight, drain, evacuate, undrain, unhealthy, healthy"
                ),
            ))
        }
    };
    let change = Change::manual(actor(who, b.actor), String::new());
    let outcome = match p {
        Some(axum::Extension(pilot)) => pilot.manual_stack_op(&name, op, change).await?,
        None => control.stack_op(&name, op, change).await?,
    };
    Ok(Json(json!({
        "version": outcome.record.version,
        "changed": outcome.changed,
        "stack": outcome.record.stack(&name),
    })))
}

/// The policy document of a validate or apply body: a JSON object, or a string holding
/// one (as pasted into a text box).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PolicyText {
    Text(String),
    Doc(Value),
}

impl PolicyText {
    fn into_json(self) -> String {
        match self {
            PolicyText::Text(s) => s,
            PolicyText::Doc(v) => v.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateBody {
    policy: PolicyText,
}

/// `POST /api/v1/policy/validate {"policy": …}`: the filter's verdict, every problem
/// with its field path. Never changes anything; an invalid policy is a 200 with
/// `valid: false` (the request itself was fine).
async fn validate_policy(
    State(control): State<Arc<Control>>,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: ValidateBody = body(&bytes)?;
    match control.validate(&b.policy.into_json()) {
        Ok(a) => Ok(Json(json!({
            "valid": true,
            "errors": [],
            "warnings": issues_json(&a.warnings),
            "stacks": a.stacks.iter().map(|s| &s.name).collect::<Vec<_>>(),
        }))),
        Err(ControlError::InvalidPolicy(issues)) => Ok(Json(json!({
            "valid": false,
            "errors": issues_json(&issues),
            "warnings": [],
            "stacks": [],
        }))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyBody {
    policy: PolicyText,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    comment: String,
    /// Apply only if this is still the current version (0: no check).
    #[serde(default)]
    expected_version: u64,
}

/// `POST /api/v1/policy/apply`: as `Policies.Apply`, through the autopilot's one-change
/// lease when it runs.
async fn apply_policy(
    State(control): State<Arc<Control>>,
    p: Pilot,
    who: Caller,
    bytes: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: ApplyBody = body(&bytes)?;
    let change = Change::manual(actor(who, b.actor), b.comment);
    let json = b.policy.into_json();
    let o = match p {
        Some(axum::Extension(pilot)) => {
            pilot
                .manual_policy_apply(&json, change, b.expected_version)
                .await?
        }
        None => {
            control
                .apply_policy(&json, change, b.expected_version)
                .await?
        }
    };
    Ok(Json(json!({
        "version": o.record.version,
        "changed": o.changed,
        "policy_version": o.record.policy_version,
        "warnings": issues_json(&o.warnings),
    })))
}

#[derive(Debug, Deserialize)]
struct DiffQuery {
    from: u64,
    #[serde(default)]
    to: u64,
}

/// `GET /api/v1/policy/diff?from=A[&to=B]`: a line diff of the two policy documents
/// (pretty-printed), `to` defaulting to the current one.
async fn policy_diff(
    State(control): State<Arc<Control>>,
    query: Result<axum::extract::Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| {
        let text = e.body_text();
        let field = if text.contains("from") { "from" } else { "to" };
        ApiError::bad(field, text)
    })?;
    let (a_rec, a) = control.policy_at(q.from).await?;
    let (b_rec, b) = control.policy_at(q.to).await?;
    let lines = super::diff::lines(&pretty(&a), &pretty(&b));
    Ok(Json(json!({
        "from": { "version": a_rec.version, "policy_version": a_rec.policy_version },
        "to": { "version": b_rec.version, "policy_version": b_rec.policy_version },
        "changed": lines.iter().any(|l| l.op != super::diff::Op::Same),
        "lines": lines,
    })))
}

fn pretty(policy_json: &str) -> String {
    serde_json::from_str::<Value>(policy_json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| policy_json.to_string())
}

#[derive(Debug, Deserialize)]
struct SplitQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/v1/split[?limit=N]`: the default route's traffic split at each of the last
/// N versions (oldest first): per stack, policy weight × operator factor as a share of
/// the sum (what a fresh request's odds were from that version on). The console plots
/// it over time.
async fn split(
    State(control): State<Arc<Control>>,
    query: Result<axum::extract::Query<SplitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::bad("limit", e.body_text()))?;
    let limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let mut records = control.history(0, limit).await?;
    records.reverse();
    let mut targets_of: std::collections::HashMap<u64, Vec<(String, u32)>> = Default::default();
    let mut names: Vec<String> = Vec::new();
    let mut points = Vec::with_capacity(records.len());
    for r in &records {
        if let std::collections::hash_map::Entry::Vacant(slot) = targets_of.entry(r.policy_version)
        {
            slot.insert(match control.policy_at(r.version).await {
                Ok((_, doc)) => crate::autopilot::default_targets(&doc),
                Err(_) => Vec::new(),
            });
        }
        let targets = &targets_of[&r.policy_version];
        let weights: Vec<(String, u64)> = targets
            .iter()
            .map(|(name, w)| {
                let factor = r.stack(name).map_or(0, |s| s.effective_weight_percent());
                (name.clone(), u64::from(*w) * u64::from(factor))
            })
            .collect();
        let total: u64 = weights.iter().map(|(_, w)| w).sum();
        let mut shares = serde_json::Map::new();
        for (name, w) in weights {
            if !names.contains(&name) {
                names.push(name.clone());
            }
            let share = if total > 0 {
                w as f64 / total as f64
            } else {
                0.0
            };
            shares.insert(name, json!(share));
        }
        points.push(json!({
            "version": r.version,
            "unix_ms": r.created_unix_ms,
            "kind": r.kind.as_str(),
            "summary": r.summary,
            "actor": r.actor,
            "shares": shares,
        }));
    }
    Ok(Json(json!({ "stacks": names, "points": points })))
}
