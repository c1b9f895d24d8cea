//! The intake's HTTP surface: accept an order (persist, then 202), report an order's
//! status, expose metrics. Decides what a client may send (a JSON object body within the
//! size limit, a well-formed idempotency key): anything else is a 4xx and nothing is
//! queued. Every answer carries `x-switchyard-intake`, by which the filter tells the
//! intake's own answers from Envoy's when the intake cannot be reached.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State as Extract};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::metrics::{Metrics, Rejected};
use crate::order::{self, Order, Status};

/// Header on every intake answer.
pub const INTAKE_HEADER: &str = "x-switchyard-intake";
/// Marks the drainer's own replays (they may come back here while still degraded).
pub const DRAIN_HEADER: &str = "x-switchyard-drain";

/// What the handlers share.
pub struct State {
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
    pub region: String,
    pub public_url: String,
    pub max_body: usize,
}

type Shared = Arc<State>;

pub fn router(state: Shared) -> Router {
    let limit = state.max_body;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/orders/{reference}", get(order_status))
        .fallback(accept)
        // Bodies over the limit are refused while being read (413), never buffered whole.
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn reply(region: &str, status: StatusCode, body: Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(region) {
        r.headers_mut().insert(INTAKE_HEADER, v);
    }
    r
}

async fn metrics(Extract(s): Extract<Shared>) -> Response {
    let text = s.metrics.render(&s.broker).await;
    let mut r = text.into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn order_status(Extract(s): Extract<Shared>, Path(reference): Path<String>) -> Response {
    match s.broker.status(&reference).await {
        Ok(Some(st)) => reply(&s.region, StatusCode::OK, json!(st)),
        Ok(None) => reply(
            &s.region,
            StatusCode::NOT_FOUND,
            json!({ "error": "unknown order reference" }),
        ),
        Err(e) => reply(
            &s.region,
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "broker unavailable", "detail": e }),
        ),
    }
}

/// Any other path: an order routed here by the filter (e.g. `POST /checkout`).
async fn accept(
    Extract(s): Extract<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let region = s.region.as_str();
    let bad = |why: Rejected, status: StatusCode, message: &str| {
        s.metrics.rejected(why);
        reply(region, status, json!({ "error": message }))
    };
    if method != Method::POST {
        return bad(
            Rejected::Method,
            StatusCode::METHOD_NOT_ALLOWED,
            "only POST orders are queued",
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return bad(
                Rejected::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "order body too large",
            );
        }
        Err(_) => {
            return bad(
                Rejected::NotJson,
                StatusCode::BAD_REQUEST,
                "could not read the order body",
            )
        }
    };
    let header = |n: &str| {
        let mut all = headers.get_all(n).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => v.to_str().ok().map(str::to_string),
            _ => None,
        }
    };
    let Some(key) = header("idempotency-key").filter(|k| order::valid_key(k)) else {
        return bad(
            Rejected::BadKey,
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be one header of 1-128 characters of [A-Za-z0-9._:-]",
        );
    };
    if !serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.is_object()) {
        return bad(
            Rejected::NotJson,
            StatusCode::BAD_REQUEST,
            "the order must be a JSON object",
        );
    }
    let reference = order::reference(region, &key);
    let status_url = format!("{}/orders/{reference}", s.public_url);
    let accepted = |st: &str, duplicate: bool| {
        let mut r = reply(
            region,
            StatusCode::ACCEPTED,
            json!({ "reference": reference, "status": st, "status_url": status_url, "duplicate": duplicate }),
        );
        if let Ok(v) = HeaderValue::from_str(&status_url) {
            r.headers_mut().insert("location", v);
        }
        r
    };
    let replay = headers.contains_key(DRAIN_HEADER);
    let text = |n: &str| header(n).unwrap_or_default();
    let order = Order {
        reference: reference.clone(),
        key,
        method: method.to_string(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        headers: headers
            .iter()
            .filter(|(n, _)| order::replayed(n.as_str()))
            .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        rule: text("x-switchyard-queue-rule"),
        intended_stack: text("x-switchyard-queue-stack"),
        segment: text("x-switchyard-queue-segment"),
        accepted_ms: order::now_ms(),
    };
    // Bounded: the client hears the intake's own 503 well within Envoy's route timeout.
    match tokio::time::timeout(BROKER_BUDGET, persist(&s, order)).await {
        Ok(Ok((word, duplicate))) => {
            if !duplicate {
                s.metrics.accepted();
            } else if !replay {
                s.metrics.duplicate();
            }
            accepted(&word, duplicate)
        }
        Ok(Err(e)) => unavailable(&s, &e),
        Err(_) => unavailable(&s, "the broker did not confirm in time"),
    }
}

/// How long persisting an order may take before the client is told 503.
const BROKER_BUDGET: std::time::Duration = std::time::Duration::from_millis(3_500);

/// Persist an order unless its reference is known: (its status, whether it was known).
/// Durable first: the publish is acknowledged by the broker's file store, then the
/// status is recorded, then the client may hear 202.
async fn persist(s: &State, order: Order) -> Result<(String, bool), String> {
    // A retry of a known order (or the drainer's replay while still degraded): one order.
    if let Some(st) = s.broker.status(&order.reference).await? {
        return Ok((st.status, true));
    }
    let payload = serde_json::to_vec(&order).map_err(|e| e.to_string())?;
    let duplicate = s
        .broker
        .publish(&s.broker.subject, &order.reference, payload.into())
        .await?;
    let status = Status {
        reference: order.reference,
        status: "queued".into(),
        region: s.region.clone(),
        rule: order.rule,
        intended_stack: order.intended_stack,
        segment: order.segment,
        accepted_ms: order.accepted_ms,
        updated_ms: order.accepted_ms,
        ..Default::default()
    };
    s.broker.create_status(&status).await?;
    Ok(("queued".into(), duplicate))
}

/// The broker could not confirm: the order is not acknowledged (503, retry later).
fn unavailable(s: &State, detail: &str) -> Response {
    s.metrics.unavailable();
    let mut r = reply(
        &s.region,
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "the order queue is unavailable; nothing was accepted, retry later", "detail": detail }),
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("2"));
    r
}
