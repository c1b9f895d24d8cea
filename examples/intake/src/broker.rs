//! NATS JetStream: the order stream (work queue, file storage, publish deduplication by
//! order reference), the status bucket (key-value, file storage) and the dead-letter
//! stream. Decides nothing about orders; every write is acknowledged by the broker
//! before it is reported done.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::order::Status;

/// How long a publish deduplicates by reference (JetStream's duplicate window); the
/// status bucket catches later retries of the same key.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Handles to the region's stream, bucket and dead-letter stream.
#[derive(Clone)]
pub struct Broker {
    js: jetstream::Context,
    pub region: String,
    pub subject: String,
    pub dead_subject: String,
    pub stream: String,
    pub dead_stream: String,
    statuses: kv::Store,
}

/// A broker error, as text (the intake reports it, never retries it blindly).
pub type Error = String;

fn err(e: impl std::fmt::Display) -> Error {
    e.to_string()
}

impl Broker {
    /// Connect (retrying until the server is up) and create or open the region's
    /// streams and bucket.
    pub async fn connect(addr: &str, region: &str) -> Result<Self, Error> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(addr)
            .await
            .map_err(err)?;
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(2));
        let up = region.to_ascii_uppercase();
        let b = Broker {
            region: region.to_string(),
            subject: format!("orders.{region}"),
            dead_subject: format!("orders_dead.{region}"),
            stream: format!("ORDERS_{up}"),
            dead_stream: format!("ORDERS_DEAD_{up}"),
            // The bucket's stream made by hand: `create_key_value` first asks for the
            // account's limits, whose reply from nats-server 2.9 this client cannot parse.
            statuses: {
                js.get_or_create_stream(stream::Config {
                    name: format!("KV_orders_{region}"),
                    subjects: vec![format!("$KV.orders_{region}.>")],
                    max_messages_per_subject: 1,
                    storage: stream::StorageType::File,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("status bucket: {e}"))?;
                js.get_key_value(format!("orders_{region}"))
                    .await
                    .map_err(|e| format!("status bucket: {e}"))?
            },
            js,
        };
        for (name, subject, retention) in [
            (&b.stream, &b.subject, stream::RetentionPolicy::WorkQueue),
            (
                &b.dead_stream,
                &b.dead_subject,
                stream::RetentionPolicy::Limits,
            ),
        ] {
            b.js.get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                retention,
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("stream {name}: {e}"))?;
        }
        Ok(b)
    }

    /// Publish an order; `Ok(true)` when the broker had it already (a retry).
    pub async fn publish(
        &self,
        subject: &str,
        reference: &str,
        payload: Bytes,
    ) -> Result<bool, Error> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", reference);
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), headers, payload)
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
        Ok(ack.duplicate)
    }

    /// The status of an order, if known.
    pub async fn status(&self, reference: &str) -> Result<Option<Status>, Error> {
        let v = self.statuses.get(reference).await.map_err(err)?;
        Ok(v.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Record a status (overwrites).
    pub async fn set_status(&self, s: &Status) -> Result<(), Error> {
        let v = serde_json::to_vec(s).map_err(err)?;
        self.statuses
            .put(s.reference.as_str(), v.into())
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Record a first status unless one exists (a drainer may have been faster).
    pub async fn create_status(&self, s: &Status) -> Result<(), Error> {
        let v = serde_json::to_vec(s).map_err(err)?;
        match self.statuses.create(s.reference.as_str(), v.into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    /// The drainer's durable pull consumer (explicit acks; redelivered after 30 s
    /// without an ack or progress, e.g. when the intake died mid-order).
    pub async fn consumer(&self) -> Result<consumer::PullConsumer, Error> {
        let s = self.js.get_stream(&self.stream).await.map_err(err)?;
        s.get_or_create_consumer(
            "drainer",
            consumer::pull::Config {
                durable_name: Some("drainer".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .map_err(err)
    }

    /// (messages, age in ms of the oldest) of a stream.
    pub async fn depth(&self, name: &str) -> Result<(u64, u64), Error> {
        let mut s = self.js.get_stream(name).await.map_err(err)?;
        let info = s.info().await.map_err(err)?;
        let state = &info.state;
        let age = if state.messages == 0 {
            0
        } else {
            let first = state.first_timestamp.unix_timestamp_nanos() / 1_000_000;
            (crate::order::now_ms() as i128 - first).max(0) as u64
        };
        Ok((state.messages, age))
    }
}
