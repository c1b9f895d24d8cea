//! HTTP front end (read-only JSON): health, status, policy, stacks, history, telemetry.
//! A web dashboard mounts beside these routes later.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::{Control, ControlError};
use crate::model::{StackRuntime, VersionRecord};

/// The HTTP API.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/policy", get(policy))
        .route("/api/v1/stacks", get(stacks))
        .route("/api/v1/history", get(history))
        .route("/api/v1/telemetry", get(telemetry))
        .with_state(control)
}

struct ApiError(ControlError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self.0 {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::InvalidArgument(_) | ControlError::InvalidPolicy(_) => {
                StatusCode::BAD_REQUEST
            }
            ControlError::FailedPrecondition(_) => StatusCode::CONFLICT,
            ControlError::Store(_) | ControlError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, Json(json!({ "error": self.0.to_string() }))).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        Self(e)
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

fn stack_json(s: &StackRuntime) -> Value {
    json!({
        "name": s.name,
        "region": s.region,
        "weight_percent": s.weight_percent,
        "effective_weight_percent": s.effective_weight_percent(),
        "healthy": s.healthy,
        "draining": s.draining,
        "registered": s.registered,
        "reason": s.reason(),
        "endpoint": s.endpoint,
        "changed_version": s.changed_version,
        "changed_unix_ms": s.changed_unix_ms,
        "changed_by": s.changed_by,
    })
}

fn version_json(r: &VersionRecord) -> Value {
    json!({
        "version": r.version,
        "created_unix_ms": r.created_unix_ms,
        "kind": r.kind.as_str(),
        "summary": r.summary,
        "actor": r.actor,
        "comment": r.comment,
        "policy_version": r.policy_version,
        "policy_name": r.policy_name,
        "policy_digest": r.policy_digest,
    })
}

async fn status(State(control): State<Arc<Control>>) -> Json<Value> {
    let current = control.current_version();
    let nodes = control.fleet().nodes();
    let nodes_current = nodes
        .iter()
        .filter(|n| n.connected && current != 0 && n.applied_version == current)
        .count();
    Json(json!({
        "current_version": current,
        "started_unix_ms": control.started_unix_ms(),
        "store": control.store_description(),
        "watch_streams": control.subscribers(),
        "nodes_current": nodes_current,
        "nodes": nodes,
    }))
}

#[derive(Deserialize)]
struct VersionQuery {
    #[serde(default)]
    version: u64,
}

async fn policy(
    State(control): State<Arc<Control>>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, ApiError> {
    let (record, policy_json) = control.policy_at(q.version).await?;
    let policy: Value = serde_json::from_str(&policy_json).unwrap_or(Value::String(policy_json));
    Ok(Json(json!({
        "info": version_json(&record),
        "policy": policy,
        "stacks": record.stacks.iter().map(stack_json).collect::<Vec<_>>(),
    })))
}

async fn stacks(State(control): State<Arc<Control>>) -> Json<Value> {
    let totals = control.fleet().stack_totals();
    let (version, stacks) = match control.current() {
        Some(c) => (
            c.record.version,
            c.record
                .stacks
                .iter()
                .map(|s| {
                    let mut v = stack_json(s);
                    v["telemetry"] = json!(totals.get(&s.name));
                    v
                })
                .collect::<Vec<_>>(),
        ),
        None => (0, vec![]),
    };
    Json(json!({ "version": version, "stacks": stacks }))
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    before: u64,
}

async fn history(
    State(control): State<Arc<Control>>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let records = control.history(q.before, limit).await?;
    Ok(Json(json!({
        "current_version": control.current_version(),
        "versions": records.iter().map(version_json).collect::<Vec<_>>(),
    })))
}

async fn telemetry(State(control): State<Arc<Control>>) -> Json<Value> {
    let nodes: serde_json::Map<String, Value> = control
        .fleet()
        .nodes()
        .into_iter()
        .filter_map(|n| n.telemetry.map(|t| (n.node_id, json!(t))))
        .collect();
    Json(json!({
        "fresh_window_ms": crate::fleet::TELEMETRY_FRESH_MS,
        "stacks": control.fleet().stack_totals(),
        "nodes": nodes,
    }))
}
