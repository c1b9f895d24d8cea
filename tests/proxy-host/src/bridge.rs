//! The gRPC bridge: the guest's calls and streams go, bytes untouched, to a real gRPC
//! server through tonic, and the server's answers come back as guest callbacks at the
//! next `Process::flush`. Clusters are mapped to server URLs by the test, like Envoy's
//! cluster table; a stream to an unmapped cluster fails with UNAVAILABLE.

use std::collections::HashMap;
use std::sync::mpsc;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tokio::runtime::Handle;
use tokio::sync::mpsc as tmpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::abi::{grpc_status, Pair};
use crate::grpc::{GrpcInbound, GrpcOutbound, GrpcTarget};
use crate::process::{GrpcPeer, VmId};

/// Passes message bytes through unchanged: the guest already serialized them.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

fn to_metadata(pairs: &[Pair], map: &mut tonic::metadata::MetadataMap) {
    for (k, v) in pairs {
        if k.ends_with("-bin") {
            if let Ok(key) = tonic::metadata::BinaryMetadataKey::from_bytes(k.as_bytes()) {
                map.append_bin(key, tonic::metadata::BinaryMetadataValue::from_bytes(v));
            }
        } else if let (Ok(key), Ok(value)) = (
            MetadataKey::<tonic::metadata::Ascii>::from_bytes(k.as_bytes()),
            MetadataValue::try_from(v.as_slice()),
        ) {
            map.append(key, value);
        }
    }
}

fn from_headers(h: &http::HeaderMap) -> Vec<Pair> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn code(s: &Status) -> u32 {
    s.code() as i32 as u32
}

/// A peer that talks to real gRPC servers.
pub struct TonicBridge {
    rt: Handle,
    clusters: HashMap<String, Channel>,
    senders: HashMap<(VmId, u32), tmpsc::UnboundedSender<Bytes>>,
    tasks: HashMap<(VmId, u32), tokio::task::JoinHandle<()>>,
    tx: mpsc::Sender<(VmId, GrpcInbound)>,
    rx: mpsc::Receiver<(VmId, GrpcInbound)>,
    pending: HashMap<VmId, Vec<GrpcInbound>>,
}

impl TonicBridge {
    /// A bridge whose tasks run on `rt` (the test's tokio runtime).
    pub fn new(rt: Handle) -> Self {
        let (tx, rx) = mpsc::channel();
        TonicBridge {
            rt,
            clusters: HashMap::new(),
            senders: HashMap::new(),
            tasks: HashMap::new(),
            tx,
            rx,
            pending: HashMap::new(),
        }
    }

    /// Sends the cluster's traffic to `url` (e.g. `http://127.0.0.1:50051`).
    pub fn cluster(mut self, name: &str, url: &str) -> Self {
        let _guard = self.rt.enter();
        let channel = Endpoint::from_shared(url.to_string())
            .unwrap_or_else(|e| panic!("bad url {url}: {e}"))
            .connect_lazy();
        self.clusters.insert(name.to_string(), channel);
        self
    }

    fn fail(&self, vm: VmId, ev: GrpcInbound) {
        let _ = self.tx.send((vm, ev));
    }

    fn open(&mut self, vm: VmId, token: u32, target: &GrpcTarget) {
        let Some(channel) = self.clusters.get(&target.cluster).cloned() else {
            self.fail(
                vm,
                GrpcInbound::Close {
                    token,
                    status: grpc_status::UNAVAILABLE,
                    message: format!("no cluster {}", target.cluster),
                },
            );
            return;
        };
        let (send, recv) = tmpsc::unbounded_channel::<Bytes>();
        self.senders.insert((vm, token), send);
        let tx = self.tx.clone();
        let path = target.path();
        let metadata = target.initial_metadata.clone();
        let task = self.rt.spawn(async move {
            let emit = |ev| {
                let _ = tx.send((vm, ev));
            };
            let mut grpc = tonic::client::Grpc::new(channel);
            if let Err(e) = grpc.ready().await {
                emit(GrpcInbound::Close {
                    token,
                    status: grpc_status::UNAVAILABLE,
                    message: e.to_string(),
                });
                return;
            }
            let Ok(path) = PathAndQuery::try_from(path.as_str()) else {
                emit(GrpcInbound::Close {
                    token,
                    status: grpc_status::INTERNAL,
                    message: format!("bad path {path}"),
                });
                return;
            };
            let mut req = tonic::Request::new(UnboundedReceiverStream::new(recv));
            to_metadata(&metadata, req.metadata_mut());
            match grpc.streaming(req, path, RawCodec).await {
                Err(status) => emit(GrpcInbound::Close {
                    token,
                    status: code(&status),
                    message: status.message().into(),
                }),
                Ok(resp) => {
                    let md = from_headers(&resp.metadata().clone().into_headers());
                    emit(GrpcInbound::InitialMetadata {
                        token,
                        metadata: md,
                    });
                    let mut stream = resp.into_inner();
                    loop {
                        match stream.next().await {
                            Some(Ok(m)) => emit(GrpcInbound::Message {
                                token,
                                message: m.to_vec(),
                            }),
                            Some(Err(status)) => {
                                emit(GrpcInbound::Close {
                                    token,
                                    status: code(&status),
                                    message: status.message().into(),
                                });
                                break;
                            }
                            None => {
                                let trailers = match stream.trailers().await {
                                    Ok(Some(t)) => from_headers(&t.into_headers()),
                                    _ => Vec::new(),
                                };
                                emit(GrpcInbound::TrailingMetadata {
                                    token,
                                    metadata: trailers,
                                });
                                emit(GrpcInbound::Close {
                                    token,
                                    status: grpc_status::OK,
                                    message: String::new(),
                                });
                                break;
                            }
                        }
                    }
                }
            }
        });
        self.tasks.insert((vm, token), task);
    }

    fn call(&mut self, vm: VmId, token: u32, target: &GrpcTarget, message: &[u8]) {
        let Some(channel) = self.clusters.get(&target.cluster).cloned() else {
            self.fail(
                vm,
                GrpcInbound::CallFailed {
                    token,
                    status: grpc_status::UNAVAILABLE,
                    message: format!("no cluster {}", target.cluster),
                },
            );
            return;
        };
        let tx = self.tx.clone();
        let path = target.path();
        let metadata = target.initial_metadata.clone();
        let message = Bytes::copy_from_slice(message);
        let task = self.rt.spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            let result = async {
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let path = PathAndQuery::try_from(path.as_str())
                    .map_err(|e| Status::internal(e.to_string()))?;
                let mut req = tonic::Request::new(message);
                to_metadata(&metadata, req.metadata_mut());
                grpc.unary(req, path, RawCodec).await
            }
            .await;
            let ev = match result {
                Ok(resp) => GrpcInbound::CallReply {
                    token,
                    message: resp.into_inner().to_vec(),
                },
                Err(s) => GrpcInbound::CallFailed {
                    token,
                    status: code(&s),
                    message: s.message().into(),
                },
            };
            let _ = tx.send((vm, ev));
        });
        self.tasks.insert((vm, token), task);
    }
}

impl GrpcPeer for TonicBridge {
    fn outbound(&mut self, vm: VmId, event: &GrpcOutbound) {
        match event {
            GrpcOutbound::StreamOpened { token, target } => self.open(vm, *token, target),
            GrpcOutbound::CallStarted {
                token,
                target,
                message,
                ..
            } => self.call(vm, *token, target, message),
            GrpcOutbound::StreamMessage {
                token,
                message,
                end_stream,
            } => {
                if let Some(s) = self.senders.get(&(vm, *token)) {
                    let _ = s.send(Bytes::copy_from_slice(message));
                }
                if *end_stream {
                    self.senders.remove(&(vm, *token));
                }
            }
            GrpcOutbound::StreamClosed { token } => {
                // Dropping the sender half-closes the request stream.
                self.senders.remove(&(vm, *token));
            }
            GrpcOutbound::StreamCancelled { token } | GrpcOutbound::CallCancelled { token } => {
                self.senders.remove(&(vm, *token));
                if let Some(t) = self.tasks.remove(&(vm, *token)) {
                    t.abort();
                }
            }
        }
    }

    fn poll(&mut self, vm: VmId) -> Vec<GrpcInbound> {
        while let Ok((v, ev)) = self.rx.try_recv() {
            self.pending.entry(v).or_default().push(ev);
        }
        self.pending.remove(&vm).unwrap_or_default()
    }
}

impl Drop for TonicBridge {
    fn drop(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.abort();
        }
    }
}
