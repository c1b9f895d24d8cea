//! The storefront's HTTP surface: maps one request to one response. It decides which
//! paths are shop pages (subject to injected faults) and which are admin or health
//! paths (never delayed or failed); it must never answer without `x-served-by`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::faults::{FaultUpdate, Faults};
use crate::stats::Stats;

/// Header naming the stack on every response.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// Largest `POST /admin/faults` body read; anything bigger is refused with 413.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Response type of every handler.
pub type Reply = Response<Full<Bytes>>;

/// Everything a request handler needs; shared by all connections.
#[derive(Debug)]
pub struct Shop {
    name: String,
    served_by: HeaderValue,
    region: Option<String>,
    faults: Faults,
    stats: Stats,
    /// Distinguishes order ids across restarts of the same stack.
    boot_id: u32,
    orders: AtomicU64,
    /// Orders by idempotency key: a repeated key answers the first order again (the
    /// degraded-mode drainer and client retries place each order once). Per process;
    /// real stacks keep this in their shared order database.
    idempotent: Mutex<Idempotent>,
}

/// Keys remembered, oldest forgotten first.
const MAX_IDEMPOTENCY_KEYS: usize = 100_000;

#[derive(Debug, Default)]
struct Idempotent {
    orders: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Shop {
    /// A stack called `name`; fails when the name cannot be sent as a header value.
    pub fn new(
        name: String,
        region: Option<String>,
        faults: Faults,
    ) -> Result<Self, hyper::header::InvalidHeaderValue> {
        let served_by = HeaderValue::from_str(&name)?;
        Ok(Self {
            name,
            served_by,
            region,
            faults,
            stats: Stats::default(),
            boot_id: boot_id(),
            orders: AtomicU64::new(0),
            idempotent: Mutex::default(),
        })
    }

    /// `{"stack": name}` plus `region` when one was given: the start of every shop body.
    fn body(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("stack".into(), self.name.clone().into());
        if let Some(region) = &self.region {
            m.insert("region".into(), region.clone().into());
        }
        m
    }

    fn error(&self, status: StatusCode, message: impl Into<String>) -> Reply {
        let mut m = self.body();
        m.insert("error".into(), message.into().into());
        json_reply(status, &Value::Object(m))
    }

    fn next_order_id(&self) -> String {
        let n = self.orders.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{:08x}-{n:06}", self.name, self.boot_id)
    }
}

/// Answers one request; never fails, so hyper never sees an error from us.
pub async fn handle(shop: Arc<Shop>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    shop.stats.record_request(req.uri().path());
    let mut reply = route(&shop, req).await;
    if reply.status() == StatusCode::NOT_FOUND {
        shop.stats.record_not_found();
    }
    reply
        .headers_mut()
        .insert(SERVED_BY, shop.served_by.clone());
    Ok(reply)
}

async fn route(shop: &Shop, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/healthz" => only(shop, &req, &[Method::GET], healthz),
        "/integrity" => only(shop, &req, &[Method::GET], integrity),
        "/admin/faults" => match *req.method() {
            Method::GET => json_reply(StatusCode::OK, &json!(shop.faults.settings())),
            Method::POST => update_faults(shop, req).await,
            _ => not_allowed(shop, "GET, POST"),
        },
        "/admin/stats" => only(shop, &req, &[Method::GET], |s| {
            let mut m = s.body();
            m.extend(as_map(json!(s.stats.snapshot())));
            json_reply(StatusCode::OK, &Value::Object(m))
        }),
        p if p.starts_with("/admin/") => shop.error(StatusCode::NOT_FOUND, "not found"),
        _ => shop_page(shop, req, &path).await,
    }
}

/// Shop pages, 404s included: these are what injected faults apply to.
async fn shop_page(shop: &Shop, req: Request<Incoming>, path: &str) -> Reply {
    let verdict = shop.faults.next_verdict();
    if !verdict.delay.is_zero() {
        tokio::time::sleep(verdict.delay).await;
    }
    if verdict.fail {
        shop.stats.record_injected_error();
        return shop.error(StatusCode::INTERNAL_SERVER_ERROR, "injected fault");
    }
    match path {
        "/" => only(shop, &req, &[Method::GET], |s| {
            let mut m = s.body();
            m.insert("page".into(), "home".into());
            json_reply(StatusCode::OK, &Value::Object(m))
        }),
        "/products" => only(shop, &req, &[Method::GET], products),
        "/checkout" if req.method() == Method::POST => checkout(shop, req).await,
        "/checkout" => not_allowed(shop, "POST"),
        p if p == "/echo" || p.starts_with("/echo/") => echo(shop, req).await,
        _ => shop.error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn healthz(shop: &Shop) -> Reply {
    let (status, word) = if shop.faults.settings().healthy {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    };
    let mut m = shop.body();
    m.insert("status".into(), word.into());
    json_reply(status, &Value::Object(m))
}

/// The catalog: (sku, name, price in cents).
const CATALOG: [(&str, &str, u64); 3] = [
    ("tee-navy", "Navy T-shirt", 1900),
    ("mug-envoy", "Envoy mug", 1250),
    ("sock-wasm", "Wasm socks", 900),
];

fn products(shop: &Shop) -> Reply {
    let mut m = shop.body();
    m.insert(
        "products".into(),
        CATALOG
            .iter()
            .map(|(sku, name, price)| json!({"sku": sku, "name": name, "price_cents": price}))
            .collect(),
    );
    json_reply(StatusCode::OK, &Value::Object(m))
}

/// A data-integrity answer for health checks: the catalog's product count and the
/// search index's, which lags by the `index_lag` fault.
fn integrity(shop: &Shop) -> Reply {
    let catalog = CATALOG.len() as u64;
    let mut m = shop.body();
    m.insert("catalog_count".into(), catalog.into());
    m.insert(
        "search_index_count".into(),
        catalog
            .saturating_sub(shop.faults.settings().index_lag)
            .into(),
    );
    json_reply(StatusCode::OK, &Value::Object(m))
}

/// Places an order. With an `Idempotency-Key` (one header, 1-128 visible ASCII
/// characters) a repeated key answers the first order's id with `"replayed": true`
/// instead of placing another.
async fn checkout(shop: &Shop, req: Request<Incoming>) -> Reply {
    let mut keys = req.headers().get_all("idempotency-key").iter();
    let key = match (keys.next(), keys.next()) {
        (None, _) => None,
        (Some(k), None) if (1..=128).contains(&k.len()) && k.to_str().is_ok() => {
            k.to_str().ok().map(str::to_string)
        }
        _ => return shop.error(StatusCode::BAD_REQUEST, "malformed Idempotency-Key"),
    };
    if drain(req.into_body()).await.is_err() {
        return shop.error(StatusCode::BAD_REQUEST, "could not read request body");
    }
    let mut m = shop.body();
    let (id, replayed) = match key {
        None => (shop.next_order_id(), false),
        Some(key) => {
            let mut known = shop
                .idempotent
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match known.orders.get(&key) {
                Some(id) => (id.clone(), true),
                None => {
                    let id = shop.next_order_id();
                    if known.order.len() >= MAX_IDEMPOTENCY_KEYS {
                        if let Some(old) = known.order.pop_front() {
                            known.orders.remove(&old);
                        }
                    }
                    known.orders.insert(key.clone(), id.clone());
                    known.order.push_back(key);
                    (id, false)
                }
            }
        }
    };
    if replayed {
        shop.stats.record_replayed_order();
        m.insert("replayed".into(), true.into());
    } else {
        shop.stats.record_order();
    }
    m.insert("order_id".into(), id.into());
    json_reply(StatusCode::OK, &Value::Object(m))
}

async fn echo(shop: &Shop, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let Ok(body_bytes) = drain(body).await else {
        return shop.error(StatusCode::BAD_REQUEST, "could not read request body");
    };
    // HeaderMap keeps every value of a repeated header in arrival order; names
    // arrive lowercased because HTTP/1 names are case-insensitive.
    let headers: Vec<[String; 2]> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            [
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ]
        })
        .collect();
    let mut m = shop.body();
    m.insert("method".into(), parts.method.as_str().into());
    m.insert("path".into(), parts.uri.path().into());
    m.insert("query".into(), parts.uri.query().into());
    m.insert("headers".into(), json!(headers));
    m.insert("body_bytes".into(), body_bytes.into());
    json_reply(StatusCode::OK, &Value::Object(m))
}

async fn update_faults(shop: &Shop, req: Request<Incoming>) -> Reply {
    let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return shop.error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        Err(_) => return shop.error(StatusCode::BAD_REQUEST, "could not read request body"),
    };
    let update: FaultUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return shop.error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    match shop.faults.update(&update) {
        Ok(settings) => json_reply(StatusCode::OK, &json!(settings)),
        Err(e) => shop.error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// Runs `page` when the method is allowed, else answers 405 with `Allow`.
fn only(
    shop: &Shop,
    req: &Request<Incoming>,
    methods: &[Method],
    page: impl FnOnce(&Shop) -> Reply,
) -> Reply {
    if methods.contains(req.method()) {
        page(shop)
    } else {
        let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
        not_allowed(shop, &allow.join(", "))
    }
}

fn not_allowed(shop: &Shop, allow: &str) -> Reply {
    let mut reply = shop.error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    if let Ok(v) = HeaderValue::from_str(allow) {
        reply.headers_mut().insert(ALLOW, v);
    }
    reply
}

/// Reads a body to its end without keeping it, so the connection stays reusable.
async fn drain(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut total = 0u64;
    while !body.is_end_stream() {
        match body.frame().await {
            Some(frame) => {
                if let Some(data) = frame?.data_ref() {
                    total += data.len() as u64;
                }
            }
            None => break,
        }
    }
    Ok(total)
}

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(value.to_string())));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

fn as_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn boot_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}
