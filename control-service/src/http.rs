//! HTTP front end: health, JSON status, policy, stacks, history, telemetry, incidents,
//! events; the only writes are events and the Alertmanager webhook (`/api/v1/alerts`),
//! which external systems post to. And Prometheus metrics. A web dashboard mounts beside
//! these routes later.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::{Control, ControlError};
use crate::model::{StackRuntime, VersionRecord};

/// The HTTP API. Every error is JSON: `{"error": {"code": …, "message": …}}`, including
/// unknown paths, wrong methods and bad query parameters.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/policy", get(policy))
        .route("/api/v1/stacks", get(stacks))
        .route("/api/v1/history", get(history))
        .route("/api/v1/telemetry", get(telemetry))
        .route("/api/v1/rollouts", get(rollouts))
        .route("/api/v1/rollouts/{id}", get(rollout))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/incidents/{id}", get(incident))
        .route("/api/v1/events", get(events).post(add_event))
        .route("/api/v1/events/{id}", axum::routing::delete(remove_event))
        .route("/api/v1/alerts", post(alerts))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit/verify", get(audit_verify))
        .route("/metrics", get(crate::metrics::serve))
        .merge(crate::console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(control)
}

/// An API error: an HTTP status, a stable `code` and a message for people.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let (status, code) = match &e {
            ControlError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ControlError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            ControlError::InvalidPolicy(_) => (StatusCode::BAD_REQUEST, "invalid_policy"),
            ControlError::FailedPrecondition(_) => (StatusCode::CONFLICT, "failed_precondition"),
            ControlError::Conflict(_) => (StatusCode::CONFLICT, "aborted"),
            ControlError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ControlError::Store(_) | ControlError::Task(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Self::new(status, code, e.to_string())
    }
}

/// `Query` whose rejection is an [`ApiError`] (`bad_query`) instead of axum's
/// text/plain body.
struct Query<T>(T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(q)) => Ok(Self(q)),
            Err(rejection) => {
                let detail = rejection.body_text();
                let detail = detail
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&detail);
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("bad query parameter: {detail}"),
                ))
            }
        }
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {}; GET / lists them", uri.path()),
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed: see GET / for each endpoint and its methods (changes: the \
         console's POST endpoints, events, alerts, the gRPC API or the switchyard CLI)",
    )
}

/// The endpoints, so `/` answers something useful (the console lives at `/console/`).
async fn index() -> Json<Value> {
    Json(json!({
        "service": "switchyard-control",
        "console": "/console/ (sign in with a token; docs/console.md)",
        "endpoints": {
            "/healthz": "liveness: 200 ok",
            "/api/v1/status": "the fleet: current version, nodes, watch streams",
            "/api/v1/policy[?version=N]": "the policy in force, or at version N",
            "/api/v1/stacks": "every stack with its state and traffic",
            "/api/v1/history[?limit=N&before=V]": "every routing version, newest first",
            "/api/v1/audit[?limit=N&after=SEQ]": "the hash-chained audit log (newest first, or oldest first after SEQ)",
            "/api/v1/audit/verify": "recompute the audit chain; names the first broken entry",
            "/api/v1/rollouts[/ID]": "rollouts, newest first (or one), with every step's gates",
            "/api/v1/telemetry": "the latest traffic per stack and node; the brain's signals per stack (newest window: p50/p95/p99, error rate, KPIs per 1,000 requests) and measured exposure per rule",
            "/api/v1/incidents[/ID]": "incidents, newest first (or one, with its evidence bundle)",
            "/api/v1/events": "GET: registered events; POST: register one (JSON); DELETE /api/v1/events/ID",
            "/api/v1/alerts": "POST: an Alertmanager webhook (firing alerts open incidents)",
            "/api/v1/health": "health checks per stack and layer, fast-path actions (when configured)",
            "/api/v1/whoami": "who the token names, its role, and which console actions it allows",
            "/metrics": "Prometheus text",
        },
        "errors": "every error is {\"error\": {\"code\": …, \"message\": …}}",
    }))
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
        // RFC 3339; null = no deadline (cookie holders stay until their cookies expire).
        "drain_deadline": (s.draining && s.drain_deadline_unix_ms != 0).then(|| {
            switchyard_filter::schedule::format_rfc3339((s.drain_deadline_unix_ms / 1000) as i64)
        }),
        "drain_deadline_unix_ms": s.drain_deadline_unix_ms,
        "evacuating": s.evacuating,
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

/// The one status schema ([`crate::fleet::FleetStatus`]), shared with the CLI.
async fn status(State(control): State<Arc<Control>>) -> Json<crate::fleet::FleetStatus> {
    let status = control.fleet_status();
    let names: Vec<String> = control
        .current()
        .map(|c| c.record.stacks.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    let fleet = control.fleet().clone();
    // The series reads the store: off the async workers.
    let fallback = status.clone();
    Json(
        tokio::task::spawn_blocking(move || fleet.with_series(status, &names))
            .await
            .unwrap_or(fallback),
    )
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

async fn stacks(
    State(control): State<Arc<Control>>,
    monitor: Option<axum::Extension<Arc<crate::health::Monitor>>>,
) -> Json<Value> {
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
                    if let Some(m) = &monitor {
                        v["health"] = m.stack_summary(&s.name);
                    }
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

type Pilot = Option<axum::Extension<Arc<crate::autopilot::Autopilot>>>;

fn no_autopilot() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "the brain is not running in this server",
    )
}

async fn rollouts(pilot: Pilot) -> Result<Json<Value>, ApiError> {
    let axum::Extension(pilot) = pilot.ok_or_else(no_autopilot)?;
    let mut all = pilot
        .list()
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    all.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
    Ok(Json(json!({ "rollouts": all })))
}

async fn rollout(
    pilot: Pilot,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let axum::Extension(pilot) = pilot.ok_or_else(no_autopilot)?;
    match pilot
        .get(&id)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    {
        Some(r) => Ok(Json(
            json!({ "rollout": r, "blast_radius": r.blast.fraction() }),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("rollout {id} not found"),
        )),
    }
}

#[derive(Debug, serde::Deserialize)]
struct AuditQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<u64>,
}

fn audit_error(e: crate::brain::audit::AuditError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

async fn audit(
    State(control): State<Arc<Control>>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let log = control.audit().clone();
    let entries = tokio::task::spawn_blocking(move || match q.after {
        Some(after) => log.list(Some(after), limit),
        None => log.recent(limit),
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(audit_error)?;
    Ok(Json(json!({ "entries": entries })))
}

async fn audit_verify(State(control): State<Arc<Control>>) -> Result<Json<Value>, ApiError> {
    let log = control.audit().clone();
    let v = tokio::task::spawn_blocking(move || log.verify())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(audit_error)?;
    Ok(Json(json!({
        "ok": v.ok(),
        "entries": v.entries,
        "head_hash": v.head,
        "first_broken": v.first_broken,
    })))
}

async fn telemetry(State(control): State<Arc<Control>>) -> Json<Value> {
    let nodes: serde_json::Map<String, Value> = control
        .fleet()
        .nodes()
        .into_iter()
        .filter_map(|n| n.telemetry.map(|t| (n.node_id, json!(t))))
        .collect();
    // The brain's signals from each stack's newest series window (reads the store).
    let c = control.clone();
    let (signals, exposure) = tokio::task::spawn_blocking(move || brain_signals(&c))
        .await
        .unwrap_or_default();
    Json(json!({
        "fresh_window_ms": crate::fleet::TELEMETRY_FRESH_MS,
        "stacks": control.fleet().stack_totals(),
        "nodes": nodes,
        "signals": signals,
        "exposure": exposure,
    }))
}

/// Per stack of the current policy, its newest window's signals (requests, errors,
/// error rate, p50/p95/p99, KPI counts and per 1,000 requests); per rule, each stack's
/// measured exposure in those windows.
fn brain_signals(control: &Control) -> (Value, Value) {
    let (Some(series), Some(current)) = (control.fleet().series(), control.current()) else {
        return (json!({}), json!({}));
    };
    let windows: Vec<_> = current
        .record
        .stacks
        .iter()
        .filter_map(|s| series.latest(&s.name, 1).ok()?.pop())
        .collect();
    let signals: serde_json::Map<String, Value> = windows
        .iter()
        .map(|w| {
            let mut v = json!(crate::fleet::StackLatest::of(w));
            v["error_rate"] = json!(w.error_rate());
            v["kpis_per_1000"] = json!(w
                .kpis
                .keys()
                .map(|k| (k.clone(), w.kpi_per_1000(k)))
                .collect::<std::collections::BTreeMap<_, _>>());
            (w.stack.clone(), v)
        })
        .collect();
    (
        Value::Object(signals),
        json!(crate::brain::signals::exposure(&windows)),
    )
}

fn pilot_error(e: crate::autopilot::AutopilotError) -> ApiError {
    if e.is_unavailable() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        );
    }
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// A rejected event or webhook: every problem with its field path; nothing changed.
fn invalid_input(what: &str, e: &crate::brain::events::EventError) -> Response {
    use crate::brain::events::EventError;
    let (status, code) = match e {
        EventError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
        EventError::Duplicate(_) => (StatusCode::CONFLICT, "already_exists"),
        EventError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let problems: Vec<Value> = e
        .problems()
        .iter()
        .map(|p| json!({ "field": p.field, "message": p.message }))
        .collect();
    let body = json!({ "error": {
        "code": code,
        "message": format!("{what}: {e}"),
        "problems": problems,
    }});
    (status, Json(body)).into_response()
}

/// One line per incident for lists.
pub fn incident_summary(i: &crate::brain::incident::Incident) -> Value {
    json!({
        "id": i.id,
        "scope": i.scope,
        "stack": i.stack,
        "signal": i.signal,
        "phase": i.phase,
        "opened_ms": i.opened_ms,
        "updated_ms": i.updated_ms,
        "proposal": i.proposal().map(|a| a.describe()),
        "confidence": i.confidence(),
        "triggers": i.trigger_count,
    })
}

#[derive(Deserialize)]
struct IncidentsQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn incidents(pilot: Pilot, Query(q): Query<IncidentsQuery>) -> Result<Json<Value>, ApiError> {
    let axum::Extension(pilot) = pilot.ok_or_else(no_autopilot)?;
    let all = pilot
        .incidents(q.limit.unwrap_or(50).clamp(1, 1000))
        .await
        .map_err(pilot_error)?;
    Ok(Json(json!({
        "incidents": all.iter().map(incident_summary).collect::<Vec<_>>()
    })))
}

async fn incident(
    pilot: Pilot,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let axum::Extension(pilot) = pilot.ok_or_else(no_autopilot)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("incident {id} not found"),
        )
    };
    let n: u64 = id.parse().map_err(|_| not_found())?;
    match pilot.incident(n).await.map_err(pilot_error)? {
        Some(i) => Ok(Json(json!({ "incident": i }))),
        None => Err(not_found()),
    }
}

async fn events(pilot: Pilot) -> Result<Json<Value>, ApiError> {
    let axum::Extension(pilot) = pilot.ok_or_else(no_autopilot)?;
    let all = pilot.events().await.map_err(pilot_error)?;
    Ok(Json(json!({ "events": all })))
}

fn body_text(body: &axum::body::Bytes) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "the body is not UTF-8 JSON",
        )
    })
}

/// The authenticated caller (put there by the auth middleware); `None` with
/// authentication off.
type Caller = Option<axum::Extension<crate::auth::Identity>>;

async fn add_event(pilot: Pilot, who: Caller, body: axum::body::Bytes) -> Response {
    let Some(axum::Extension(pilot)) = pilot else {
        return no_autopilot().into_response();
    };
    let text = match body_text(&body) {
        Ok(t) => crate::auth::event_with_actor(who.map(|w| w.0).as_ref(), t.to_string()),
        Err(e) => return e.into_response(),
    };
    match pilot.add_event(text).await {
        Ok(e) => (StatusCode::CREATED, Json(json!({ "event": e }))).into_response(),
        Err(crate::autopilot::EventCommandError::Event(e)) => invalid_input("event rejected", &e),
        Err(crate::autopilot::EventCommandError::Autopilot(e)) => pilot_error(e).into_response(),
    }
}

async fn remove_event(
    pilot: Pilot,
    who: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let axum::Extension(pilot) = pilot.ok_or_else(no_autopilot)?;
    let actor = crate::auth::actor(who.map(|w| w.0).as_ref(), "http".into());
    match pilot.remove_event(&id, &actor).await {
        Ok(true) => Ok(Json(json!({ "removed": id }))),
        Ok(false) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("event {id} not found"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}

/// Alertmanager's webhook (`webhook_config`): firing alerts open or join incidents,
/// resolved ones are noted on theirs. A malformed body changes nothing.
async fn alerts(pilot: Pilot, body: axum::body::Bytes) -> Response {
    let Some(axum::Extension(pilot)) = pilot else {
        return no_autopilot().into_response();
    };
    let text = match body_text(&body) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let parsed = match crate::brain::events::parse_alertmanager(text) {
        Ok(a) => a,
        Err(e) => return invalid_input("webhook rejected", &e),
    };
    let n = parsed.len();
    match pilot.ingest_alerts(parsed).await {
        Ok(ids) => Json(json!({ "alerts": n, "incidents": ids })).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}
