//! The drainer: takes the oldest queued order, replays it through Envoy with its
//! idempotency key, and acknowledges it only once the outcome is recorded. Decides what
//! an answer means:
//! - the intake's own 202 (`x-switchyard-intake`: the filter queued the replay again)
//!   or the route's local reply: still degraded, wait and retry, not an attempt;
//! - 2xx from a stack: placed (a duplicate key is the stack's idempotent replay, so
//!   the order is never placed twice);
//! - 4xx other than 408/429: the order itself is refused: dead letter at once;
//! - 5xx, 408, 429, no answer: an attempt; `max_attempts` of them: dead letter.
//!
//! One order at a time, at most `1 / interval` per second: the sustainable rate.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::api::{DRAIN_HEADER, INTAKE_HEADER};
use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::order::{now_ms, Order, Status};

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub struct Drainer {
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
    pub upstream: String,
    pub interval: Duration,
    pub retry: Duration,
    pub max_attempts: u32,
    /// Where final statuses are POSTed (`--webhook`).
    pub webhook: Option<String>,
}

/// What one replay told.
enum Outcome {
    Placed {
        stack: Option<String>,
        order: Option<Value>,
    },
    /// No stack eligible yet.
    Degraded,
    Retry(String),
    Refused(String),
}

impl Drainer {
    /// Run forever; broker trouble is waited out.
    pub async fn run(self) {
        let http: Http = Client::builder(TokioExecutor::new()).build_http();
        loop {
            if let Err(e) = self.drain(&http).await {
                eprintln!("switchyard-intake: drainer: {e}; retrying");
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    async fn drain(&self, http: &Http) -> Result<(), String> {
        let consumer = self.broker.consumer().await?;
        let mut next = tokio::time::Instant::now();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            let Some(msg) = batch.next().await else {
                continue;
            };
            let msg = msg.map_err(|e| e.to_string())?;
            let Ok(order) = serde_json::from_slice::<Order>(&msg.payload) else {
                // Not ours to place: keep it for operators, never drop it silently.
                let _ = self
                    .broker
                    .publish(
                        &self.broker.dead_subject,
                        &format!("garbage-{}", now_ms()),
                        msg.payload.clone(),
                    )
                    .await;
                self.metrics.dead_letter();
                msg.ack().await.map_err(|e| e.to_string())?;
                continue;
            };
            let mut attempts = 0u32;
            let status = loop {
                tokio::time::sleep_until(next).await;
                next = tokio::time::Instant::now() + self.interval;
                match self.replay(http, &order).await {
                    Outcome::Placed { stack, order: body } => {
                        self.metrics.set_degraded(false);
                        self.metrics.placed();
                        break self.status(&order, "placed", attempts + 1, |s| {
                            s.placed_by = stack;
                            s.order = body;
                        });
                    }
                    Outcome::Degraded => {
                        self.metrics.set_degraded(true);
                        // Keep the order ours while we wait (not redelivered elsewhere).
                        let _ = msg.ack_with(AckKind::Progress).await;
                        tokio::time::sleep(self.retry).await;
                    }
                    Outcome::Retry(why) => {
                        self.metrics.set_degraded(false);
                        attempts += 1;
                        if attempts >= self.max_attempts {
                            break self
                                .dead(
                                    &order,
                                    attempts,
                                    format!("failed {attempts} times; last: {why}"),
                                )
                                .await;
                        }
                        let _ = msg.ack_with(AckKind::Progress).await;
                        tokio::time::sleep(self.retry).await;
                    }
                    Outcome::Refused(why) => {
                        self.metrics.set_degraded(false);
                        break self
                            .dead(&order, attempts + 1, format!("refused by checkout: {why}"))
                            .await;
                    }
                }
            };
            // Record, then acknowledge: a crash in between replays the order, and the
            // stack's idempotency makes that replay harmless.
            self.broker.set_status(&status).await?;
            msg.ack().await.map_err(|e| e.to_string())?;
            if let Some(url) = &self.webhook {
                tokio::spawn(notify(http.clone(), url.clone(), status));
            }
        }
    }

    fn status(&self, o: &Order, word: &str, attempts: u32, f: impl FnOnce(&mut Status)) -> Status {
        let mut s = Status {
            reference: o.reference.clone(),
            status: word.into(),
            region: self.broker.region.clone(),
            rule: o.rule.clone(),
            intended_stack: o.intended_stack.clone(),
            segment: o.segment.clone(),
            accepted_ms: o.accepted_ms,
            updated_ms: now_ms(),
            attempts,
            ..Default::default()
        };
        f(&mut s);
        s
    }

    async fn dead(&self, o: &Order, attempts: u32, reason: String) -> Status {
        let mut dead = serde_json::to_value(o).unwrap_or(Value::Null);
        if let Some(m) = dead.as_object_mut() {
            m.insert("reason".into(), reason.clone().into());
        }
        let payload = serde_json::to_vec(&dead).unwrap_or_default();
        if let Err(e) = self
            .broker
            .publish(&self.broker.dead_subject, &o.reference, payload.into())
            .await
        {
            eprintln!("switchyard-intake: dead letter {}: {e}", o.reference);
        }
        self.metrics.dead_letter();
        eprintln!(
            "switchyard-intake: order {} dead-lettered: {reason}",
            o.reference
        );
        self.status(o, "failed", attempts, |s| s.reason = Some(reason))
    }

    async fn replay(&self, http: &Http, o: &Order) -> Outcome {
        let mut req = hyper::Request::builder()
            .method(o.method.as_str())
            .uri(format!("{}{}", self.upstream, o.path));
        for (n, v) in &o.headers {
            req = req.header(n, v);
        }
        let req = match req
            .header(DRAIN_HEADER, "1")
            .body(Full::new(Bytes::from(o.body.clone())))
        {
            Ok(r) => r,
            Err(e) => return Outcome::Refused(format!("unreplayable request: {e}")),
        };
        let resp = match tokio::time::timeout(Duration::from_secs(10), http.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Outcome::Retry(format!("no answer: {e}")),
            Err(_) => return Outcome::Retry("no answer within 10 s".into()),
        };
        let status = resp.status().as_u16();
        let from_intake = resp.headers().contains_key(INTAKE_HEADER);
        let stack = resp
            .headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let local = json
            .as_ref()
            .and_then(|v| v.get("error"))
            .is_some_and(|e| e == "no_eligible_stack");
        match status {
            _ if from_intake || local => Outcome::Degraded,
            200..=299 => Outcome::Placed { stack, order: json },
            408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {status}")),
            _ => Outcome::Refused(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    }
}

/// POST a final status to the completion webhook: 3 tries, 1 s apart; a webhook that is
/// down loses only the notification (the status stays at `GET /orders/{ref}`).
async fn notify(http: Http, url: String, status: Status) {
    let Ok(body) = serde_json::to_vec(&status) else {
        return;
    };
    for attempt in 1..=3 {
        let req = hyper::Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())));
        let Ok(req) = req else {
            eprintln!("switchyard-intake: webhook {url}: not a valid URL");
            return;
        };
        match http.request(req).await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => eprintln!(
                "switchyard-intake: webhook {url}: {} for {} (try {attempt})",
                r.status(),
                status.reference
            ),
            Err(e) => eprintln!(
                "switchyard-intake: webhook {url}: {e} for {} (try {attempt})",
                status.reference
            ),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
