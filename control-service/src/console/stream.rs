//! `GET /api/v1/stream`: server-sent events telling an open console what changed, so it
//! re-reads just that: `version` (a new routing version, from [`Control::subscribe`]),
//! `audit` (the audit chain's head moved), `rollouts` and `incidents` (their state
//! changed). Brain state is polled every [`POLL`]: the head sequence number and a hash
//! of the rollout and incident lists, read off the async workers. Events carry small
//! JSON bodies; pages fetch the details through the ordinary endpoints.
//!
//! The stream carries no secret, and authentication is the router's layer: the console
//! reads it with `fetch()` (which can send `Authorization`), not `EventSource`.

use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::api::Pilot;
use crate::autopilot::Autopilot;
use crate::control::Control;

/// How often brain state is compared (the page shows a CLI change within a second).
pub const POLL: Duration = Duration::from_millis(400);

/// What a console has last been told.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Seen {
    version: u64,
    audit: u64,
    rollouts: u64,
    incidents: u64,
}

pub async fn stream(
    State(control): State<Arc<Control>>,
    p: Pilot,
) -> impl axum::response::IntoResponse {
    let pilot = p.map(|axum::Extension(p)| p);
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(run(control, pilot, tx));
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn hash_of(v: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Brain state now (the version comes from the watch channel instead).
async fn brain(control: &Arc<Control>, pilot: Option<&Arc<Autopilot>>) -> Seen {
    let log = control.audit().clone();
    let audit = tokio::task::spawn_blocking(move || log.head())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .map_or(0, |h| h.seq);
    let (mut rollouts, mut incidents) = (0, 0);
    if let Some(p) = pilot {
        if let Ok(all) = p.list().await {
            rollouts = hash_of(&serde_json::to_string(&all).unwrap_or_default());
        }
        if let Ok(all) = p.incidents(100).await {
            incidents = hash_of(&serde_json::to_string(&all).unwrap_or_default());
        }
    }
    Seen {
        version: 0,
        audit,
        rollouts,
        incidents,
    }
}

fn event(name: &str, data: serde_json::Value) -> Result<Event, Infallible> {
    Ok(Event::default().event(name).data(data.to_string()))
}

async fn run(
    control: Arc<Control>,
    pilot: Option<Arc<Autopilot>>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut versions = control.subscribe();
    versions.borrow_and_update();
    let mut seen = brain(&control, pilot.as_ref()).await;
    seen.version = control.current_version();
    let hello = json!({ "version": seen.version, "audit_seq": seen.audit });
    if tx.send(event("hello", hello)).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut out = Vec::new();
        tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    return;
                }
                let v = versions.borrow_and_update().as_ref().map_or(0, |s| s.version);
                if v != seen.version {
                    seen.version = v;
                    out.push(event("version", json!({ "version": v })));
                }
            }
            _ = tick.tick() => {
                let now = brain(&control, pilot.as_ref()).await;
                if now.audit != seen.audit {
                    out.push(event("audit", json!({ "seq": now.audit })));
                }
                if now.rollouts != seen.rollouts {
                    out.push(event("rollouts", json!({})));
                }
                if now.incidents != seen.incidents {
                    out.push(event("incidents", json!({})));
                }
                seen = Seen { version: seen.version, ..now };
            }
            _ = tx.closed() => return,
        }
        for e in out {
            if tx.send(e).await.is_err() {
                return;
            }
        }
    }
}
