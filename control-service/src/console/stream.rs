//! `GET /api/v1/stream`: server-sent events telling an open console what changed, so it
//! re-reads just that: `version` (a new routing version, from [`Control::subscribe`]),
//! `audit` (the audit chain's head moved), `rollouts` and `incidents` (their state
//! changed). Events carry small JSON bodies; pages fetch the details through the
//! ordinary endpoints.
//!
//! Brain state is polled every [`POLL`] — the audit head's sequence number and a hash of
//! the rollout and incident lists, read off the async workers — by ONE poller per
//! server, shared by every open stream ([`Hub`]): the store sees the same reads with one
//! console open or fifty. The poller starts with the first stream and stops with the
//! last.
//!
//! The stream carries no secret, and authentication is the router's layer: the console
//! reads it with `fetch()` (which can send `Authorization`), not `EventSource`.

use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::api::Pilot;
use crate::autopilot::Autopilot;
use crate::control::Control;

/// How often brain state is compared (the page shows a CLI change within a second).
pub const POLL: Duration = Duration::from_millis(400);

/// Brain state as the streams compare it.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Brain {
    audit: u64,
    rollouts: u64,
    incidents: u64,
}

/// The shared poller of one server: a watch channel of the latest [`Brain`], alive
/// while some stream holds a receiver.
#[derive(Default)]
pub struct Hub {
    poller: Mutex<Option<watch::Sender<Brain>>>,
}

impl Hub {
    /// A receiver of brain state, starting the poller if none runs.
    async fn subscribe(
        self: &Arc<Self>,
        control: &Arc<Control>,
        pilot: Option<&Arc<Autopilot>>,
    ) -> watch::Receiver<Brain> {
        if let Some(tx) = &*self.lock() {
            return tx.subscribe();
        }
        let now = brain(control, pilot).await;
        let mut slot = self.lock();
        if let Some(tx) = &*slot {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(now);
        *slot = Some(tx.clone());
        tokio::spawn(poll(self.clone(), control.clone(), pilot.cloned(), tx));
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<watch::Sender<Brain>>> {
        self.poller.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The poller: every [`POLL`], publish brain state if it changed; stop (under the hub's
/// lock, so no stream subscribes to a poller about to stop) once no stream listens.
async fn poll(
    hub: Arc<Hub>,
    control: Arc<Control>,
    pilot: Option<Arc<Autopilot>>,
    tx: watch::Sender<Brain>,
) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        {
            let mut slot = hub.lock();
            if tx.receiver_count() == 0 {
                *slot = None;
                return;
            }
        }
        let now = brain(&control, pilot.as_ref()).await;
        tx.send_if_modified(|b| std::mem::replace(b, now) != now);
    }
}

pub async fn stream(
    hub: Arc<Hub>,
    State(control): State<Arc<Control>>,
    p: Pilot,
) -> impl axum::response::IntoResponse {
    let pilot = p.map(|axum::Extension(p)| p);
    let brain = hub.subscribe(&control, pilot.as_ref()).await;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(run(control, brain, tx));
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn hash_of(v: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Brain state now.
async fn brain(control: &Arc<Control>, pilot: Option<&Arc<Autopilot>>) -> Brain {
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
    Brain {
        audit,
        rollouts,
        incidents,
    }
}

fn event(name: &str, data: serde_json::Value) -> Result<Event, Infallible> {
    Ok(Event::default().event(name).data(data.to_string()))
}

/// One stream: what this console was last told, and the events that tell it more.
async fn run(
    control: Arc<Control>,
    mut brain: watch::Receiver<Brain>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut versions = control.subscribe();
    versions.borrow_and_update();
    let mut version = control.current_version();
    let mut seen = *brain.borrow_and_update();
    let hello = json!({ "version": version, "audit_seq": seen.audit });
    if tx.send(event("hello", hello)).await.is_err() {
        return;
    }
    loop {
        let mut out = Vec::new();
        tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    return;
                }
                let v = versions.borrow_and_update().as_ref().map_or(0, |s| s.version);
                if v != version {
                    version = v;
                    out.push(event("version", json!({ "version": v })));
                }
            }
            changed = brain.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *brain.borrow_and_update();
                if now.audit != seen.audit {
                    out.push(event("audit", json!({ "seq": now.audit })));
                }
                if now.rollouts != seen.rollouts {
                    out.push(event("rollouts", json!({})));
                }
                if now.incidents != seen.incidents {
                    out.push(event("incidents", json!({})));
                }
                seen = now;
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
