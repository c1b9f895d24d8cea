//! Two test-side gRPC peers. `ScriptedPeer` answers from closures and lets the test
//! push messages to open streams at any time through a `ScriptHandle`. `TonicBridge`
//! forwards each guest call and stream, bytes untouched, to a real gRPC server (a tonic
//! server in the same test process) and brings its answers back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::abi::Pair;
use crate::grpc::{GrpcInbound, GrpcOutbound, GrpcTarget};
use crate::process::{GrpcPeer, VmId};

/// What a scripted stream handler answers with; the token is filled in by the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    InitialMetadata(Vec<Pair>),
    Message(Vec<u8>),
    TrailingMetadata(Vec<Pair>),
    Close(u32, String),
}

impl Reply {
    fn with_token(self, token: u32) -> GrpcInbound {
        match self {
            Reply::InitialMetadata(metadata) => GrpcInbound::InitialMetadata { token, metadata },
            Reply::Message(message) => GrpcInbound::Message { token, message },
            Reply::TrailingMetadata(metadata) => GrpcInbound::TrailingMetadata { token, metadata },
            Reply::Close(status, message) => GrpcInbound::Close {
                token,
                status,
                message,
            },
        }
    }
}

/// What a scripted stream handler sees.
#[derive(Debug)]
pub enum StreamEvent<'a> {
    Opened(&'a GrpcTarget),
    Message(&'a [u8]),
    HalfClosed,
    Cancelled,
}

type UnaryFn = Box<dyn FnMut(VmId, &GrpcTarget, &[u8]) -> Result<Vec<u8>, (u32, String)> + Send>;
type StreamFn = Box<dyn FnMut(VmId, StreamEvent<'_>) -> Vec<Reply> + Send>;

#[derive(Default)]
struct ScriptState {
    /// Open streams: (vm, token) → path.
    streams: HashMap<(VmId, u32), String>,
    /// Pending unary calls nobody answered yet: (vm, token) → path.
    calls: HashMap<(VmId, u32), String>,
    pending: HashMap<VmId, Vec<GrpcInbound>>,
    /// Everything guests sent, in order.
    received: Vec<(VmId, GrpcOutbound)>,
}

/// A peer answering from closures, keyed by `/package.Service/Method`.
pub struct ScriptedPeer {
    unary: HashMap<String, UnaryFn>,
    stream: HashMap<String, StreamFn>,
    state: Arc<Mutex<ScriptState>>,
}

/// The test's hold on a scripted peer after the process took it.
#[derive(Clone)]
pub struct ScriptHandle(Arc<Mutex<ScriptState>>);

impl Default for ScriptedPeer {
    fn default() -> Self {
        ScriptedPeer::new()
    }
}

impl ScriptedPeer {
    pub fn new() -> Self {
        ScriptedPeer {
            unary: HashMap::new(),
            stream: HashMap::new(),
            state: Default::default(),
        }
    }

    /// Answers unary calls to `path`; `Err((status, message))` fails the call.
    pub fn unary(
        mut self,
        path: &str,
        f: impl FnMut(VmId, &GrpcTarget, &[u8]) -> Result<Vec<u8>, (u32, String)> + Send + 'static,
    ) -> Self {
        self.unary.insert(path.into(), Box::new(f));
        self
    }

    /// Handles streams to `path`. Streams to paths without a handler stay open and
    /// silent until the test pushes something through the handle.
    pub fn stream(
        mut self,
        path: &str,
        f: impl FnMut(VmId, StreamEvent<'_>) -> Vec<Reply> + Send + 'static,
    ) -> Self {
        self.stream.insert(path.into(), Box::new(f));
        self
    }

    pub fn handle(&self) -> ScriptHandle {
        ScriptHandle(self.state.clone())
    }
}

impl ScriptHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, ScriptState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a reply on every open stream to `path` (delivered at the next flush).
    /// Returns how many streams it went to.
    pub fn push(&self, path: &str, reply: Reply) -> usize {
        let mut g = self.lock();
        let targets: Vec<(VmId, u32)> = g
            .streams
            .iter()
            .filter(|(_, p)| p.as_str() == path)
            .map(|(k, _)| *k)
            .collect();
        for (vm, token) in &targets {
            g.pending
                .entry(*vm)
                .or_default()
                .push(reply.clone().with_token(*token));
        }
        if matches!(reply, Reply::Close(..)) {
            for k in &targets {
                g.streams.remove(k);
            }
        }
        targets.len()
    }

    /// Answers a pending unary call the closures left unanswered.
    pub fn answer_calls(&self, path: &str, reply: Result<Vec<u8>, (u32, String)>) -> usize {
        let mut g = self.lock();
        let calls: Vec<(VmId, u32)> = g
            .calls
            .iter()
            .filter(|(_, p)| p.as_str() == path)
            .map(|(k, _)| *k)
            .collect();
        for (vm, token) in &calls {
            g.calls.remove(&(*vm, *token));
            let ev = match &reply {
                Ok(m) => GrpcInbound::CallReply {
                    token: *token,
                    message: m.clone(),
                },
                Err((status, message)) => GrpcInbound::CallFailed {
                    token: *token,
                    status: *status,
                    message: message.clone(),
                },
            };
            g.pending.entry(*vm).or_default().push(ev);
        }
        calls.len()
    }

    /// Open streams to `path`, as (vm, token).
    pub fn open_streams(&self, path: &str) -> Vec<(VmId, u32)> {
        let mut v: Vec<_> = self
            .lock()
            .streams
            .iter()
            .filter(|(_, p)| p.as_str() == path)
            .map(|(k, _)| *k)
            .collect();
        v.sort();
        v
    }

    /// Everything guests sent so far.
    pub fn received(&self) -> Vec<(VmId, GrpcOutbound)> {
        self.lock().received.clone()
    }

    /// Messages guests sent on streams to `path`, in order.
    pub fn messages(&self, path: &str) -> Vec<(VmId, Vec<u8>)> {
        let g = self.lock();
        let mut paths: HashMap<(VmId, u32), String> = HashMap::new();
        let mut out = Vec::new();
        for (vm, ev) in &g.received {
            match ev {
                GrpcOutbound::StreamOpened { token, target }
                | GrpcOutbound::CallStarted { token, target, .. } => {
                    paths.insert((*vm, *token), target.path());
                    if let GrpcOutbound::CallStarted { message, .. } = ev {
                        if target.path() == path {
                            out.push((*vm, message.clone()));
                        }
                    }
                }
                GrpcOutbound::StreamMessage { token, message, .. }
                    if paths.get(&(*vm, *token)).is_some_and(|p| p == path) =>
                {
                    out.push((*vm, message.clone()));
                }
                _ => {}
            }
        }
        out
    }
}

impl GrpcPeer for ScriptedPeer {
    fn outbound(&mut self, vm: VmId, event: &GrpcOutbound) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.received.push((vm, event.clone()));
        let (token, path, ev) = match event {
            GrpcOutbound::CallStarted {
                token,
                target,
                message,
                ..
            } => {
                let path = target.path();
                match self.unary.get_mut(&path) {
                    Some(f) => {
                        let ev = match f(vm, target, message) {
                            Ok(m) => GrpcInbound::CallReply {
                                token: *token,
                                message: m,
                            },
                            Err((status, message)) => GrpcInbound::CallFailed {
                                token: *token,
                                status,
                                message,
                            },
                        };
                        g.pending.entry(vm).or_default().push(ev);
                    }
                    None => {
                        g.calls.insert((vm, *token), path);
                    }
                }
                return;
            }
            GrpcOutbound::CallCancelled { token } => {
                g.calls.remove(&(vm, *token));
                return;
            }
            GrpcOutbound::StreamOpened { token, target } => {
                g.streams.insert((vm, *token), target.path());
                (*token, target.path(), StreamEvent::Opened(target))
            }
            GrpcOutbound::StreamMessage {
                token,
                message,
                end_stream,
            } => {
                let Some(path) = g.streams.get(&(vm, *token)).cloned() else {
                    return;
                };
                let mut replies = Vec::new();
                if let Some(f) = self.stream.get_mut(&path) {
                    replies.extend(f(vm, StreamEvent::Message(message)));
                    if *end_stream {
                        replies.extend(f(vm, StreamEvent::HalfClosed));
                    }
                }
                Self::queue(&mut g, vm, *token, replies);
                return;
            }
            GrpcOutbound::StreamClosed { token } => {
                let Some(path) = g.streams.get(&(vm, *token)).cloned() else {
                    return;
                };
                (*token, path, StreamEvent::HalfClosed)
            }
            GrpcOutbound::StreamCancelled { token } => {
                let Some(path) = g.streams.remove(&(vm, *token)) else {
                    return;
                };
                if let Some(f) = self.stream.get_mut(&path) {
                    f(vm, StreamEvent::Cancelled);
                }
                return;
            }
        };
        let replies = match self.stream.get_mut(&path) {
            Some(f) => f(vm, ev),
            None => Vec::new(),
        };
        Self::queue(&mut g, vm, token, replies);
    }

    fn poll(&mut self, vm: VmId) -> Vec<GrpcInbound> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.pending.remove(&vm).unwrap_or_default()
    }
}

impl ScriptedPeer {
    fn queue(g: &mut ScriptState, vm: VmId, token: u32, replies: Vec<Reply>) {
        for r in replies {
            if matches!(r, Reply::Close(..)) {
                g.streams.remove(&(vm, token));
            }
            g.pending.entry(vm).or_default().push(r.with_token(token));
        }
    }
}
