//! gRPC calls and streams as the guest sees them (`proxy_grpc_call`, `proxy_grpc_stream`,
//! send, cancel, close) and what a test-side peer sees: an outbox of what the guest did
//! and an inbox of what the peer answers. A `GrpcPeer` turns the one into the other; the
//! scripted peer and the tonic bridge are two such peers.

use std::collections::BTreeMap;

use crate::abi::Pair;

/// Where a call or stream goes, decoded the way Envoy decodes the guest's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcTarget {
    /// Cluster from the serialized `GrpcService{envoy_grpc{cluster_name}}`, or the raw
    /// argument when it is not a parseable `GrpcService` (Envoy's fallback).
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub initial_metadata: Vec<Pair>,
}

impl GrpcTarget {
    /// `/package.Service/Method`
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// Something the guest did on a call or stream, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcOutbound {
    CallStarted {
        token: u32,
        target: GrpcTarget,
        message: Vec<u8>,
        timeout_ms: u32,
    },
    CallCancelled {
        token: u32,
    },
    StreamOpened {
        token: u32,
        target: GrpcTarget,
    },
    StreamMessage {
        token: u32,
        message: Vec<u8>,
        end_stream: bool,
    },
    /// `proxy_grpc_close`: the guest half-closes its side.
    StreamClosed {
        token: u32,
    },
    /// `proxy_grpc_cancel` on a stream: reset, no more callbacks.
    StreamCancelled {
        token: u32,
    },
}

impl GrpcOutbound {
    pub fn token(&self) -> u32 {
        match self {
            GrpcOutbound::CallStarted { token, .. }
            | GrpcOutbound::CallCancelled { token }
            | GrpcOutbound::StreamOpened { token, .. }
            | GrpcOutbound::StreamMessage { token, .. }
            | GrpcOutbound::StreamClosed { token }
            | GrpcOutbound::StreamCancelled { token } => *token,
        }
    }
}

/// Something the peer sends back; the host turns each into a guest callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcInbound {
    /// Unary reply: `proxy_on_grpc_receive` with the message.
    CallReply {
        token: u32,
        message: Vec<u8>,
    },
    /// Unary failure: `proxy_on_grpc_close` with the status.
    CallFailed {
        token: u32,
        status: u32,
        message: String,
    },
    InitialMetadata {
        token: u32,
        metadata: Vec<Pair>,
    },
    Message {
        token: u32,
        message: Vec<u8>,
    },
    TrailingMetadata {
        token: u32,
        metadata: Vec<Pair>,
    },
    /// Remote close of a stream: `proxy_on_grpc_close`.
    Close {
        token: u32,
        status: u32,
        message: String,
    },
}

impl GrpcInbound {
    pub fn token(&self) -> u32 {
        match self {
            GrpcInbound::CallReply { token, .. }
            | GrpcInbound::CallFailed { token, .. }
            | GrpcInbound::InitialMetadata { token, .. }
            | GrpcInbound::Message { token, .. }
            | GrpcInbound::TrailingMetadata { token, .. }
            | GrpcInbound::Close { token, .. } => *token,
        }
    }
}

/// An HTTP call the guest dispatched (`proxy_http_call`), e.g. a health probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    /// The cluster argument.
    pub upstream: String,
    pub headers: Vec<Pair>,
    pub body: Vec<u8>,
    pub trailers: Vec<Pair>,
    pub timeout_ms: u32,
}

impl HttpCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// The answer to an HTTP call; `None` in `HttpReply::Failed` terms is a reset/timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpReply {
    Response {
        headers: Vec<Pair>,
        body: Vec<u8>,
        trailers: Vec<Pair>,
    },
    /// Connection failure, reset or timeout: Envoy calls back with no headers at all.
    Failed,
}

impl HttpReply {
    /// A response with this status and body.
    pub fn status(code: u16, body: impl AsRef<[u8]>) -> Self {
        HttpReply::Response {
            headers: vec![(":status".into(), code.to_string().into_bytes())],
            body: body.as_ref().to_vec(),
            trailers: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct CallState {
    pub deadline_mono_ns: Option<u64>,
}

#[derive(Clone, Debug)]
pub(crate) struct StreamInfo {
    pub local_closed: bool,
}

/// Per-VM gRPC bookkeeping.
#[derive(Debug, Default)]
pub struct GrpcState {
    pub(crate) next_token: u32,
    pub(crate) calls: BTreeMap<u32, CallState>,
    pub(crate) streams: BTreeMap<u32, StreamInfo>,
    /// Everything the guest did, not yet handed to a peer.
    pub(crate) outbox: Vec<GrpcOutbound>,
    /// Every call and stream ever opened, for assertions.
    pub(crate) history: Vec<GrpcOutbound>,
    /// HTTP calls in flight: token → deadline (monotonic ns).
    pub(crate) http_calls: BTreeMap<u32, Option<u64>>,
    pub(crate) http_outbox: Vec<HttpCall>,
    pub(crate) next_http_token: u32,
}

impl GrpcState {
    /// Envoy hands out odd tokens for calls and even ones for streams; keep that so a
    /// guest that mixes them up is caught here too.
    pub(crate) fn next(&mut self, stream: bool) -> u32 {
        loop {
            self.next_token = self.next_token.wrapping_add(1);
            let t = self.next_token;
            if t != 0 && t.is_multiple_of(2) == stream {
                return t;
            }
        }
    }

    pub(crate) fn push(&mut self, ev: GrpcOutbound) {
        self.history.push(ev.clone());
        self.outbox.push(ev);
    }
}

/// Reads the cluster name out of the `cluster` argument the way Envoy does: parse it as
/// a serialized `envoy.config.core.v3.GrpcService`; if that fails, the bytes are a
/// cluster name. A parse that succeeds with neither `envoy_grpc` nor `google_grpc` set is
/// what makes Envoy abort the process ("unset oneof"); that is an `Err` here.
pub fn parse_grpc_service(bytes: &[u8]) -> Result<String, String> {
    match parse_message(bytes) {
        Some(fields) => {
            for (num, val) in &fields {
                if *num == 1 {
                    if let Field::Len(inner) = val {
                        if let Some(envoy) = parse_message(inner) {
                            for (n, v) in envoy {
                                if let (1, Field::Len(name)) = (n, v) {
                                    return Ok(String::from_utf8_lossy(name).into_owned());
                                }
                            }
                        }
                        return Ok(String::new());
                    }
                }
                if *num == 2 {
                    return Ok("<google_grpc>".to_string());
                }
            }
            Err(format!(
                "Envoy would abort: the grpc service argument {:?} parses as a GrpcService with no target (unset oneof); pass a serialized GrpcService{{envoy_grpc{{cluster_name}}}}",
                String::from_utf8_lossy(bytes)
            ))
        }
        None => Ok(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// Encodes `GrpcService{envoy_grpc{cluster_name}}`, for tests that play the guest's part.
pub fn encode_grpc_service(cluster: &str) -> Vec<u8> {
    let mut inner = vec![0x0a];
    put_varint(&mut inner, cluster.len() as u64);
    inner.extend_from_slice(cluster.as_bytes());
    let mut out = vec![0x0a];
    put_varint(&mut out, inner.len() as u64);
    out.extend_from_slice(&inner);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

enum Field<'a> {
    Varint,
    Fixed,
    Len(&'a [u8]),
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn parse_message(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        let num = key >> 3;
        if num == 0 {
            return None;
        }
        let field = match key & 7 {
            0 => {
                varint(buf, &mut at)?;
                Field::Varint
            }
            1 => {
                at = at.checked_add(8).filter(|e| *e <= buf.len())?;
                Field::Fixed
            }
            2 => {
                let len = varint(buf, &mut at)? as usize;
                let end = at.checked_add(len).filter(|e| *e <= buf.len())?;
                let f = Field::Len(&buf[at..end]);
                at = end;
                f
            }
            5 => {
                at = at.checked_add(4).filter(|e| *e <= buf.len())?;
                Field::Fixed
            }
            _ => return None,
        };
        out.push((num, field));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_service_argument_is_decoded_like_envoy() {
        assert_eq!(
            parse_grpc_service(&encode_grpc_service("control")).unwrap(),
            "control"
        );
        // "hx": field 13 varint — parses, but no target: Envoy aborts.
        assert!(parse_grpc_service(b"hx").is_err());
        // Not a protobuf at all: taken as a cluster name.
        assert_eq!(
            parse_grpc_service(b"control_plane").unwrap(),
            "control_plane"
        );
    }
}
