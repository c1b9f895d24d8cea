//! Per-VM host state, held in the wasmtime `Store`: the contexts the host knows about,
//! their header maps and buffers, logs, timers, gRPC bookkeeping and WASI settings.

use std::collections::{BTreeMap, HashMap};

use wasmtime::{Memory, TypedFunc};

use crate::abi::{LogLevel, MapType, Pair};
use crate::grpc::GrpcState;
use crate::shared::Shared;
use crate::wasi::WasiState;

/// One log line a guest wrote (`proxy_log`, or stdout/stderr through WASI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub level: LogLevel,
    pub message: String,
    /// The context that was active when the line was written.
    pub context_id: u32,
}

/// What a guest sent with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Vec<Pair>,
    /// -1 when the guest sent a plain HTTP reply.
    pub grpc_status: i32,
}

impl LocalResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<non-utf8>")
    }
}

/// The host's view of one HTTP stream context.
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    pub request_headers: Vec<Pair>,
    pub request_trailers: Vec<Pair>,
    pub response_headers: Vec<Pair>,
    pub response_trailers: Vec<Pair>,
    /// The body chunk the current body callback is about.
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    /// Properties set by the test for this request, dotted path → serialized value.
    pub properties: HashMap<String, Vec<u8>>,
    /// Properties the guest set with `proxy_set_property`.
    pub guest_properties: HashMap<String, Vec<u8>>,
    pub local_response: Option<LocalResponse>,
    pub continued_request: u32,
    pub continued_response: u32,
    pub closed: Vec<u32>,
    /// How many times the guest called the `clear_route_cache` foreign function.
    pub route_cache_cleared: u32,
}

/// Host state of one VM; lives in that VM's wasmtime `Store`.
pub struct HostState {
    pub(crate) shared: Shared,
    pub(crate) vm_index: usize,
    pub(crate) vm_id: String,
    pub(crate) root_id: String,
    pub(crate) root_context_id: u32,
    pub(crate) memory: Option<Memory>,
    pub(crate) alloc: Option<TypedFunc<i32, i32>>,
    pub(crate) wasi: WasiState,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) vm_config: Vec<u8>,
    /// Context of the callback in progress (0 outside any callback).
    pub(crate) current_context: u32,
    /// Set by `proxy_set_effective_context`; reset at each callback.
    pub(crate) effective_context: u32,
    pub(crate) streams: BTreeMap<u32, StreamState>,
    pub(crate) logs: Vec<LogEntry>,
    pub(crate) log_level: LogLevel,
    pub(crate) tick_period_ms: u32,
    pub(crate) next_tick_mono_ns: Option<u64>,
    /// VM-local metric id → index in the process-wide stats.
    pub(crate) metric_ids: HashMap<u32, usize>,
    pub(crate) next_metric_id: u32,
    pub(crate) grpc: GrpcState,
    /// Data visible through buffer/map reads during a gRPC or HTTP-call callback.
    pub(crate) callback_buffer: Option<Vec<u8>>,
    pub(crate) callback_maps: HashMap<MapType, Vec<Pair>>,
    pub(crate) grpc_status: (u32, Vec<u8>),
    /// VM-level properties (plugin_name, node.id, …), dotted path → serialized value.
    pub(crate) vm_properties: HashMap<String, Vec<u8>>,
    /// Errors the host saw that a real Envoy would report or abort on (bad pointers,
    /// malformed pairs, unknown enum values). Tests assert this stays empty.
    pub(crate) host_errors: Vec<String>,
    /// Trap on a bad guest pointer instead of returning InvalidMemoryAccess as Envoy does.
    pub(crate) strict: bool,
    pub(crate) done_called: bool,
}

impl HostState {
    /// The context host calls act on: the effective one if the guest chose one that exists.
    pub(crate) fn active_context(&self) -> u32 {
        if self.effective_context != 0
            && (self.effective_context == self.root_context_id
                || self.streams.contains_key(&self.effective_context))
        {
            self.effective_context
        } else {
            self.current_context
        }
    }

    pub(crate) fn active_stream(&mut self) -> Option<&mut StreamState> {
        let id = self.active_context();
        self.streams.get_mut(&id)
    }

    pub(crate) fn host_error(&mut self, message: String) {
        self.host_errors.push(message);
    }

    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        let context_id = self.active_context();
        self.logs.push(LogEntry {
            level,
            message,
            context_id,
        });
    }
}
