//! One VM: a wasmtime instance of the module with its own store, root context and HTTP
//! contexts, driven through the callbacks Envoy makes, in Envoy's order.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::{Instance, Memory, Store, TypedFunc, WasmParams, WasmResults};

use crate::abi::{Action, LogLevel, MapType, Pair};
use crate::error::HostError;
use crate::grpc::{GrpcInbound, GrpcOutbound, GrpcState, HttpCall, HttpReply};
use crate::http::{Exchange, Request};
use crate::module::{engine, WasmModule};
use crate::props::PropValue;
use crate::shared::Shared;
use crate::state::{HostState, LocalResponse, LogEntry, StreamState};
use crate::wasi::{ProcExit, WasiState};

/// How to start a VM: module, ids, configuration buffers, environment.
#[derive(Clone)]
pub struct VmSpec {
    pub(crate) module: Arc<WasmModule>,
    pub(crate) vm_id: String,
    pub(crate) root_id: String,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) log_level: LogLevel,
    pub(crate) strict: bool,
    pub(crate) properties: Vec<(String, Vec<u8>)>,
    pub(crate) seed: u64,
    pub(crate) name: Option<String>,
    pub(crate) local_reply_through_filter: bool,
    pub(crate) log_capacity: usize,
    pub(crate) deadline_ms: u64,
    pub(crate) envoy_headers: bool,
}

impl VmSpec {
    pub fn new(module: Arc<WasmModule>) -> Self {
        VmSpec {
            module,
            vm_id: "switchyard".into(),
            root_id: "switchyard".into(),
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            env: Vec::new(),
            log_level: LogLevel::Trace,
            strict: false,
            properties: Vec::new(),
            seed: 0x5eed,
            name: None,
            local_reply_through_filter: true,
            log_capacity: 20_000,
            deadline_ms: crate::module::CALLBACK_DEADLINE_MS,
            envoy_headers: true,
        }
    }

    /// Whether requests get the headers Envoy's connection manager appends before any
    /// filter runs — `x-forwarded-proto` (from `:scheme`) and `x-request-id` (a UUID,
    /// deterministic here) — when the client did not send them (default true).
    pub fn envoy_request_headers(mut self, yes: bool) -> Self {
        self.envoy_headers = yes;
        self
    }

    /// Longest real time one guest callback may run before it traps (default 20 s;
    /// checked at 100 ms granularity).
    pub fn callback_deadline(mut self, d: std::time::Duration) -> Self {
        self.deadline_ms = (d.as_millis() as u64).max(crate::module::EPOCH_TICK_MS);
        self
    }

    /// The `vm_id` VMs share data and queues under.
    pub fn vm_id(mut self, id: &str) -> Self {
        self.vm_id = id.into();
        self
    }

    /// The plugin's `root_id` (Envoy's `plugin_root_id` / `plugin_name`).
    pub fn root_id(mut self, id: &str) -> Self {
        self.root_id = id.into();
        self
    }

    pub fn plugin_config(mut self, config: impl AsRef<[u8]>) -> Self {
        self.plugin_config = config.as_ref().to_vec();
        self
    }

    pub fn vm_config(mut self, config: impl AsRef<[u8]>) -> Self {
        self.vm_config = config.as_ref().to_vec();
        self
    }

    /// An entry of `vm_config.environment_variables` (how secrets reach the VM).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// What `proxy_get_log_level` answers.
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// Trap on a bad guest pointer instead of answering InvalidMemoryAccess like Envoy.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// A VM-level property (node.id, cluster_name, …).
    pub fn property(mut self, path: &str, value: impl Into<PropValue>) -> Self {
        self.properties.push((path.into(), value.into().encode()));
        self
    }

    /// Seed of the VM's deterministic `random_get`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// A name for messages (defaults to `vm_id#index`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether a local reply passes back through this filter's response callbacks, as
    /// Envoy's encoder chain does (default true).
    pub fn local_reply_through_filter(mut self, yes: bool) -> Self {
        self.local_reply_through_filter = yes;
        self
    }

    /// How many log lines the VM keeps (oldest dropped first).
    pub fn log_capacity(mut self, n: usize) -> Self {
        self.log_capacity = n.max(1);
        self
    }
}

type F1 = TypedFunc<i32, ()>;
type F1R = TypedFunc<i32, i32>;
type F2 = TypedFunc<(i32, i32), ()>;
type F2R = TypedFunc<(i32, i32), i32>;
type F3 = TypedFunc<(i32, i32, i32), ()>;
type F3R = TypedFunc<(i32, i32, i32), i32>;
type F5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

struct Exports {
    on_context_create: Option<F2>,
    on_vm_start: Option<F2R>,
    on_configure: Option<F2R>,
    on_tick: Option<F1>,
    on_queue_ready: Option<F2>,
    on_request_headers: Option<F3R>,
    on_request_body: Option<F3R>,
    on_request_trailers: Option<F2R>,
    on_response_headers: Option<F3R>,
    on_response_body: Option<F3R>,
    on_response_trailers: Option<F2R>,
    on_log: Option<F1>,
    on_done: Option<F1R>,
    on_delete: Option<F1>,
    on_grpc_initial: Option<F3>,
    on_grpc_receive: Option<F3>,
    on_grpc_trailing: Option<F3>,
    on_grpc_close: Option<F3>,
    on_http_call_response: Option<F5>,
}

fn export<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    instance: &Instance,
    name: &str,
    vm: &str,
) -> Result<Option<TypedFunc<P, R>>, HostError> {
    if instance.get_func(&mut *store, name).is_none() {
        return Ok(None);
    }
    instance
        .get_typed_func::<P, R>(&mut *store, name)
        .map(Some)
        .map_err(|e| {
            HostError::Instantiate(format!(
                "{vm}: export {name} has the wrong signature: {e:#}"
            ))
        })
}

/// A running VM.
pub struct Vm {
    store: Store<HostState>,
    ex: Exports,
    next_context_id: u32,
    name: String,
    failed: bool,
    local_reply_through_filter: bool,
    log_capacity: usize,
    /// Streams paused in request headers: context → (request, action, log start).
    paused: HashMap<u32, (Request, Action, usize)>,
    /// Exchanges of paused streams that finished later (see `take_completed`).
    completed: Vec<Exchange>,
    deadline_ticks: u64,
    envoy_headers: bool,
}

impl Vm {
    /// Instantiates and starts a VM the way Envoy does: WASI start (`_initialize` or
    /// `_start`), then `proxy_on_context_create(root)`, `proxy_on_vm_start` with the VM
    /// configuration and `proxy_on_configure` with the plugin configuration.
    pub(crate) fn start(spec: VmSpec, shared: Shared, index: usize) -> Result<Vm, HostError> {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("{}#{index}", spec.vm_id));
        let state = HostState {
            shared: shared.clone(),
            vm_index: index,
            vm_id: spec.vm_id.clone(),
            root_id: spec.root_id.clone(),
            root_context_id: 1,
            memory: None,
            alloc: None,
            wasi: WasiState::virtual_clock(
                shared,
                spec.env.clone(),
                spec.seed ^ (index as u64).wrapping_mul(0x9E37),
            ),
            plugin_config: spec.plugin_config.clone(),
            vm_config: spec.vm_config.clone(),
            current_context: 0,
            effective_context: 0,
            streams: Default::default(),
            logs: Vec::new(),
            log_level: spec.log_level,
            tick_period_ms: 0,
            next_tick_mono_ns: None,
            metric_ids: HashMap::new(),
            next_metric_id: 0,
            grpc: GrpcState::default(),
            callback_buffer: None,
            callback_maps: HashMap::new(),
            grpc_status: (0, Vec::new()),
            vm_properties: spec.properties.iter().cloned().collect(),
            host_errors: Vec::new(),
            strict: spec.strict,
            done_called: false,
        };
        let mut store = Store::new(engine(), state);
        // Start functions run under the same deadline as callbacks.
        let deadline_ticks = spec.deadline_ms / crate::module::EPOCH_TICK_MS;
        store.set_epoch_deadline(deadline_ticks);
        let instance = spec
            .module
            .pre
            .instantiate(&mut store)
            .map_err(|e| HostError::Instantiate(format!("{name}: {e:#}")))?;
        let memory: Option<Memory> = instance.get_memory(&mut store, "memory");
        if memory.is_none() {
            return Err(HostError::Instantiate(format!(
                "{name}: the module exports no memory"
            )));
        }
        let alloc =
            match export::<i32, i32>(&mut store, &instance, "proxy_on_memory_allocate", &name)? {
                Some(f) => Some(f),
                None => export::<i32, i32>(&mut store, &instance, "malloc", &name)?,
            };
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        let exports = spec.module.exports();
        if !exports.iter().any(|e| e.starts_with("proxy_abi_version_")) {
            return Err(HostError::Instantiate(format!(
                "{name}: no proxy_abi_version_* export; Envoy refuses such a module"
            )));
        }
        let ex = Exports {
            on_context_create: export(&mut store, &instance, "proxy_on_context_create", &name)?,
            on_vm_start: export(&mut store, &instance, "proxy_on_vm_start", &name)?,
            on_configure: export(&mut store, &instance, "proxy_on_configure", &name)?,
            on_tick: export(&mut store, &instance, "proxy_on_tick", &name)?,
            on_queue_ready: export(&mut store, &instance, "proxy_on_queue_ready", &name)?,
            on_request_headers: export(&mut store, &instance, "proxy_on_request_headers", &name)?,
            on_request_body: export(&mut store, &instance, "proxy_on_request_body", &name)?,
            on_request_trailers: export(&mut store, &instance, "proxy_on_request_trailers", &name)?,
            on_response_headers: export(&mut store, &instance, "proxy_on_response_headers", &name)?,
            on_response_body: export(&mut store, &instance, "proxy_on_response_body", &name)?,
            on_response_trailers: export(
                &mut store,
                &instance,
                "proxy_on_response_trailers",
                &name,
            )?,
            on_log: export(&mut store, &instance, "proxy_on_log", &name)?,
            on_done: export(&mut store, &instance, "proxy_on_done", &name)?,
            on_delete: export(&mut store, &instance, "proxy_on_delete", &name)?,
            on_grpc_initial: export(
                &mut store,
                &instance,
                "proxy_on_grpc_receive_initial_metadata",
                &name,
            )?,
            on_grpc_receive: export(&mut store, &instance, "proxy_on_grpc_receive", &name)?,
            on_grpc_trailing: export(
                &mut store,
                &instance,
                "proxy_on_grpc_receive_trailing_metadata",
                &name,
            )?,
            on_grpc_close: export(&mut store, &instance, "proxy_on_grpc_close", &name)?,
            on_http_call_response: export(
                &mut store,
                &instance,
                "proxy_on_http_call_response",
                &name,
            )?,
        };
        let mut vm = Vm {
            store,
            ex,
            next_context_id: 2,
            name: name.clone(),
            failed: false,
            local_reply_through_filter: spec.local_reply_through_filter,
            log_capacity: spec.log_capacity,
            paused: HashMap::new(),
            completed: Vec::new(),
            deadline_ticks,
            envoy_headers: spec.envoy_headers,
        };
        let start = match export::<(), ()>(&mut vm.store, &instance, "_initialize", &name)? {
            Some(f) => Some(("_initialize", f)),
            None => {
                export::<(), ()>(&mut vm.store, &instance, "_start", &name)?.map(|f| ("_start", f))
            }
        };
        if let Some((what, f)) = start {
            vm.call(what, 0, &f, ())?;
        }
        let root = 1;
        if let Some(f) = vm.ex.on_context_create.clone() {
            vm.call("proxy_on_context_create", root, &f, (root as i32, 0))?;
        }
        if let Some(f) = vm.ex.on_vm_start.clone() {
            let n = spec.vm_config.len() as i32;
            if vm.call("proxy_on_vm_start", root, &f, (root as i32, n))? == 0 {
                return Err(HostError::VmStartRejected {
                    vm: name,
                    logs: vm.logs_text(),
                });
            }
        }
        if let Some(f) = vm.ex.on_configure.clone() {
            let n = spec.plugin_config.len() as i32;
            if vm.call("proxy_on_configure", root, &f, (root as i32, n))? == 0 {
                return Err(HostError::ConfigureRejected {
                    vm: name,
                    logs: vm.logs_text(),
                });
            }
        }
        Ok(vm)
    }

    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        callback: &'static str,
        context: u32,
        f: &TypedFunc<P, R>,
        args: P,
    ) -> Result<R, HostError> {
        if self.failed {
            return Err(HostError::VmFailed(self.name.clone()));
        }
        {
            let st = self.store.data_mut();
            st.current_context = context;
            st.effective_context = 0;
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        let r = f.call(&mut self.store, args);
        {
            let st = self.store.data_mut();
            st.current_context = 0;
            st.effective_context = 0;
            if st.logs.len() > self.log_capacity {
                let drop = st.logs.len() - self.log_capacity / 2;
                st.logs.drain(..drop);
            }
        }
        r.map_err(|e| {
            self.failed = true;
            let message = match e.downcast_ref::<ProcExit>() {
                Some(p) => format!("proc_exit({})", p.0),
                None => format!("{e:?}"),
            };
            HostError::Trap {
                vm: self.name.clone(),
                callback,
                message,
            }
        })
    }

    /// Delivers a new plugin configuration to the existing root context and calls
    /// `proxy_on_configure` again (what a host does when it reconfigures a plugin in
    /// place). Returns whether the plugin accepted it.
    pub fn reconfigure(&mut self, config: impl AsRef<[u8]>) -> Result<bool, HostError> {
        let config = config.as_ref().to_vec();
        let n = config.len() as i32;
        self.store.data_mut().plugin_config = config;
        let root = self.root_context_id();
        let Some(f) = self.ex.on_configure.clone() else {
            return Ok(false);
        };
        Ok(self.call("proxy_on_configure", root, &f, (root as i32, n))? != 0)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn vm_id(&self) -> &str {
        &self.store.data().vm_id
    }

    pub fn root_context_id(&self) -> u32 {
        self.store.data().root_context_id
    }

    /// True once a trap has made this VM unusable.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Every log line the VM kept, oldest first.
    pub fn logs(&self) -> &[LogEntry] {
        &self.store.data().logs
    }

    /// Removes and returns the kept log lines.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    pub fn logs_text(&self) -> String {
        self.logs()
            .iter()
            .map(|l| format!("[{:?}] {}", l.level, l.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Log lines at or above `level` containing `needle`.
    pub fn logs_matching(&self, level: LogLevel, needle: &str) -> Vec<&LogEntry> {
        self.logs()
            .iter()
            .filter(|l| l.level >= level && l.message.contains(needle))
            .collect()
    }

    /// Bad pointers, malformed pairs and other guest mistakes the host saw.
    pub fn host_errors(&self) -> &[String] {
        &self.store.data().host_errors
    }

    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    pub(crate) fn next_tick(&self) -> Option<u64> {
        self.store.data().next_tick_mono_ns
    }

    pub(crate) fn next_grpc_deadline(&self) -> Option<(u64, u32)> {
        self.store
            .data()
            .grpc
            .calls
            .iter()
            .filter_map(|(t, c)| c.deadline_mono_ns.map(|d| (d, *t)))
            .min()
    }

    /// Fires `proxy_on_tick` on the root context and schedules the next one.
    pub(crate) fn tick(&mut self, at_mono_ns: u64) -> Result<(), HostError> {
        let period = u64::from(self.store.data().tick_period_ms) * 1_000_000;
        self.store.data_mut().next_tick_mono_ns = (period > 0).then_some(at_mono_ns + period);
        if let Some(f) = self.ex.on_tick.clone() {
            let root = self.root_context_id();
            self.call("proxy_on_tick", root, &f, root as i32)?;
        }
        Ok(())
    }

    /// Calls `proxy_on_queue_ready` on the given context.
    pub(crate) fn queue_ready(&mut self, context: u32, token: u32) -> Result<(), HostError> {
        if let Some(f) = self.ex.on_queue_ready.clone() {
            self.call(
                "proxy_on_queue_ready",
                context,
                &f,
                (context as i32, token as i32),
            )?;
        }
        Ok(())
    }

    /// Everything the guest did on gRPC since the last call, removed from the outbox.
    pub fn take_grpc_outbox(&mut self) -> Vec<GrpcOutbound> {
        std::mem::take(&mut self.store.data_mut().grpc.outbox)
    }

    /// Every gRPC call and stream event the guest ever made, in order.
    pub fn grpc_history(&self) -> &[GrpcOutbound] {
        &self.store.data().grpc.history
    }

    /// HTTP calls the guest dispatched since the last call, removed from the outbox.
    pub fn take_http_calls(&mut self) -> Vec<HttpCall> {
        std::mem::take(&mut self.store.data_mut().grpc.http_outbox)
    }

    pub(crate) fn next_http_deadline(&self) -> Option<(u64, u32)> {
        self.store
            .data()
            .grpc
            .http_calls
            .iter()
            .filter_map(|(t, d)| d.map(|d| (d, *t)))
            .min()
    }

    /// Answers an HTTP call: `proxy_on_http_call_response` on the root context with the
    /// response visible through the HttpCallResponse maps and body. Unknown or already
    /// answered tokens are ignored, as Envoy drops late replies.
    pub fn deliver_http(&mut self, token: u32, reply: HttpReply) -> Result<(), HostError> {
        if self
            .store
            .data_mut()
            .grpc
            .http_calls
            .remove(&token)
            .is_none()
        {
            return Ok(());
        }
        let root = self.root_context_id();
        let (h, b, t) = match reply {
            HttpReply::Response {
                headers,
                body,
                trailers,
            } => (headers, body, trailers),
            HttpReply::Failed => (Vec::new(), Vec::new(), Vec::new()),
        };
        let (nh, nb, nt) = (h.len() as i32, b.len() as i32, t.len() as i32);
        {
            let st = self.store.data_mut();
            st.callback_maps.insert(MapType::HttpCallResponseHeaders, h);
            st.callback_maps
                .insert(MapType::HttpCallResponseTrailers, t);
            st.callback_buffer = Some(b);
        }
        let r = match self.ex.on_http_call_response.clone() {
            Some(f) => self.call(
                "proxy_on_http_call_response",
                root,
                &f,
                (root as i32, token as i32, nh, nb, nt),
            ),
            None => Ok(()),
        };
        let st = self.store.data_mut();
        st.callback_maps.remove(&MapType::HttpCallResponseHeaders);
        st.callback_maps.remove(&MapType::HttpCallResponseTrailers);
        st.callback_buffer = None;
        r
    }

    /// Tokens of the streams the host still considers open.
    pub fn open_grpc_streams(&self) -> Vec<u32> {
        self.store.data().grpc.streams.keys().copied().collect()
    }

    /// Delivers one gRPC event from the peer to the guest, as Envoy would.
    pub fn deliver_grpc(&mut self, ev: GrpcInbound) -> Result<(), HostError> {
        let root = self.root_context_id();
        let r = root as i32;
        let token = ev.token();
        let known_call = self.store.data().grpc.calls.contains_key(&token);
        let known_stream = self.store.data().grpc.streams.contains_key(&token);
        match ev {
            GrpcInbound::CallReply { message, .. } => {
                if !known_call {
                    return Ok(());
                }
                self.store.data_mut().grpc.calls.remove(&token);
                let n = message.len() as i32;
                self.store.data_mut().callback_buffer = Some(message);
                if let Some(f) = self.ex.on_grpc_receive.clone() {
                    self.call("proxy_on_grpc_receive", root, &f, (r, token as i32, n))?;
                }
                self.store.data_mut().callback_buffer = None;
            }
            GrpcInbound::CallFailed {
                status, message, ..
            } => {
                if !known_call {
                    return Ok(());
                }
                self.store.data_mut().grpc.calls.remove(&token);
                self.close_callback(root, token, status, message)?;
            }
            GrpcInbound::InitialMetadata { metadata, .. } => {
                if known_stream {
                    let f = self.ex.on_grpc_initial.clone();
                    self.metadata_callback(
                        "proxy_on_grpc_receive_initial_metadata",
                        MapType::GrpcReceiveInitialMetadata,
                        f,
                        token,
                        metadata,
                    )?;
                }
            }
            GrpcInbound::TrailingMetadata { metadata, .. } => {
                if known_stream {
                    let f = self.ex.on_grpc_trailing.clone();
                    self.metadata_callback(
                        "proxy_on_grpc_receive_trailing_metadata",
                        MapType::GrpcReceiveTrailingMetadata,
                        f,
                        token,
                        metadata,
                    )?;
                }
            }
            GrpcInbound::Message { message, .. } => {
                if !known_stream {
                    return Ok(());
                }
                let n = message.len() as i32;
                self.store.data_mut().callback_buffer = Some(message);
                if let Some(f) = self.ex.on_grpc_receive.clone() {
                    self.call("proxy_on_grpc_receive", root, &f, (r, token as i32, n))?;
                }
                self.store.data_mut().callback_buffer = None;
            }
            GrpcInbound::Close {
                status, message, ..
            } => {
                if !known_stream {
                    return Ok(());
                }
                self.store.data_mut().grpc.streams.remove(&token);
                self.close_callback(root, token, status, message)?;
            }
        }
        Ok(())
    }

    fn metadata_callback(
        &mut self,
        callback: &'static str,
        map: MapType,
        f: Option<F3>,
        token: u32,
        metadata: Vec<Pair>,
    ) -> Result<(), HostError> {
        let root = self.root_context_id();
        let n = metadata.len() as i32;
        self.store.data_mut().callback_maps.insert(map, metadata);
        let r = match f {
            Some(f) => self.call(callback, root, &f, (root as i32, token as i32, n)),
            None => Ok(()),
        };
        self.store.data_mut().callback_maps.remove(&map);
        r
    }

    fn close_callback(
        &mut self,
        root: u32,
        token: u32,
        status: u32,
        message: String,
    ) -> Result<(), HostError> {
        self.store.data_mut().grpc_status = (status, message.into_bytes());
        let r = match self.ex.on_grpc_close.clone() {
            Some(f) => self.call(
                "proxy_on_grpc_close",
                root,
                &f,
                (root as i32, token as i32, status as i32),
            ),
            None => Ok(()),
        };
        self.store.data_mut().grpc_status = (0, Vec::new());
        r
    }

    /// Calls a stream callback on `ctx`; absent callbacks continue, as the SDK's would.
    fn stream_cb3(
        &mut self,
        name: &'static str,
        f: Option<F3R>,
        ctx: u32,
        a: i32,
        b: bool,
    ) -> Result<Action, HostError> {
        match f {
            Some(f) => Ok(Action::from_i32(self.call(
                name,
                ctx,
                &f,
                (ctx as i32, a, i32::from(b)),
            )?)),
            None => Ok(Action::Continue),
        }
    }

    fn stream_cb2(
        &mut self,
        name: &'static str,
        f: Option<F2R>,
        ctx: u32,
        a: i32,
    ) -> Result<Action, HostError> {
        match f {
            Some(f) => Ok(Action::from_i32(self.call(
                name,
                ctx,
                &f,
                (ctx as i32, a),
            )?)),
            None => Ok(Action::Continue),
        }
    }

    fn stream(&mut self, ctx: u32) -> &mut StreamState {
        self.store.data_mut().streams.entry(ctx).or_default()
    }

    fn local_reply(&self, ctx: u32) -> Option<LocalResponse> {
        self.store
            .data()
            .streams
            .get(&ctx)
            .and_then(|s| s.local_response.clone())
    }

    /// Sends one request through a new HTTP context: request headers, body chunks and
    /// trailers; then, if the filter let it through, the upstream's response; or, if it
    /// sent a local reply, that reply (through this filter's response callbacks, as
    /// Envoy's encoder chain does); then `proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`.
    pub fn send(&mut self, req: Request) -> Result<Exchange, HostError> {
        let root = self.root_context_id();
        let ctx = self.next_context_id;
        self.next_context_id += 1;
        let log_start = self.store.data().logs.len();
        let mut req = req;
        if self.envoy_headers {
            if !req.headers.iter().any(|(k, _)| k == "x-forwarded-proto") {
                let scheme = req
                    .headers
                    .iter()
                    .find(|(k, _)| k == ":scheme")
                    .map_or(b"http".to_vec(), |(_, v)| v.clone());
                req.headers.push(("x-forwarded-proto".into(), scheme));
            }
            if !req.headers.iter().any(|(k, _)| k == "x-request-id") {
                let n = u64::from(ctx) ^ (self.store.data().vm_index as u64) << 32;
                let id = format!(
                    "{:08x}-0000-4000-8000-{:012x}",
                    (n >> 32) as u32,
                    n & 0xffff_ffff_ffff
                );
                req.headers.push(("x-request-id".into(), id.into_bytes()));
            }
        }
        {
            let s = self.stream(ctx);
            s.request_headers = req.headers.clone();
            s.properties = req.properties.iter().cloned().collect();
        }
        if let Some(f) = self.ex.on_context_create.clone() {
            self.call(
                "proxy_on_context_create",
                ctx,
                &f,
                (ctx as i32, root as i32),
            )?;
        }
        let has_body = !req.body.is_empty();
        let has_trailers = !req.trailers.is_empty();
        let n = req.headers.len() as i32;
        let f = self.ex.on_request_headers.clone();
        let action = self.stream_cb3(
            "proxy_on_request_headers",
            f,
            ctx,
            n,
            !has_body && !has_trailers,
        )?;
        let paused = action == Action::Pause
            && self.local_reply(ctx).is_none()
            && self.stream(ctx).continued_request == 0;
        if paused {
            // Envoy holds the stream until the guest calls proxy_continue_stream (from a
            // later callback) or the test gives up with `reset_paused`.
            let partial = self.partial_exchange(ctx, action, log_start);
            self.paused.insert(ctx, (req, action, log_start));
            return Ok(partial);
        }
        self.after_request_headers(ctx, req, action, log_start)
    }

    fn partial_exchange(&self, ctx: u32, action: Action, log_start: usize) -> Exchange {
        let logs = self.store.data().logs.get(log_start..).unwrap_or(&[]);
        Exchange {
            context_id: ctx,
            request_headers_action: action,
            upstream_request: None,
            local_response: None,
            response_headers: Vec::new(),
            response_body: Vec::new(),
            paused: true,
            route_cache_cleared: 0,
            logs: logs
                .iter()
                .filter(|l| l.context_id == ctx)
                .cloned()
                .collect(),
            guest_properties: Vec::new(),
        }
    }

    /// Streams paused in request headers that nothing has resumed yet.
    pub fn paused_streams(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.paused.keys().copied().collect();
        v.sort();
        v
    }

    /// Resumes paused streams whose guest called `proxy_continue_stream(HttpRequest)` or
    /// sent a local reply since; returns their finished exchanges.
    pub fn resume_continued(&mut self) -> Result<Vec<Exchange>, HostError> {
        let ready: Vec<u32> = self
            .paused_streams()
            .into_iter()
            .filter(|c| {
                self.store
                    .data()
                    .streams
                    .get(c)
                    .is_some_and(|s| s.continued_request > 0 || s.local_response.is_some())
            })
            .collect();
        let mut out = Vec::new();
        for ctx in ready {
            if let Some((req, action, log_start)) = self.paused.remove(&ctx) {
                out.push(self.after_request_headers(ctx, req, action, log_start)?);
            }
        }
        Ok(out)
    }

    /// Exchanges of once-paused streams that `Process::flush` resumed and finished.
    pub fn take_completed(&mut self) -> Vec<Exchange> {
        std::mem::take(&mut self.completed)
    }

    pub(crate) fn resume_into_completed(&mut self) -> Result<usize, HostError> {
        if self.paused.is_empty() {
            return Ok(0);
        }
        let done = self.resume_continued()?;
        let n = done.len();
        self.completed.extend(done);
        Ok(n)
    }

    /// Gives up on a paused stream as a client reset would: no upstream, then
    /// `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn reset_paused(&mut self, ctx: u32) -> Result<Option<Exchange>, HostError> {
        let Some((_, action, log_start)) = self.paused.remove(&ctx) else {
            return Ok(None);
        };
        self.finish(ctx, action, None, true, log_start).map(Some)
    }

    fn after_request_headers(
        &mut self,
        ctx: u32,
        req: Request,
        action: Action,
        log_start: usize,
    ) -> Result<Exchange, HostError> {
        let has_trailers = !req.trailers.is_empty();
        let mut paused = false;
        if self.local_reply(ctx).is_none() && !paused {
            for (i, chunk) in req.body.iter().enumerate() {
                let last = i + 1 == req.body.len() && !has_trailers;
                self.stream(ctx).request_body = chunk.clone();
                let f = self.ex.on_request_body.clone();
                self.stream_cb3("proxy_on_request_body", f, ctx, chunk.len() as i32, last)?;
                if self.local_reply(ctx).is_some() {
                    break;
                }
            }
            if has_trailers && self.local_reply(ctx).is_none() {
                self.stream(ctx).request_trailers = req.trailers.clone();
                let f = self.ex.on_request_trailers.clone();
                self.stream_cb2(
                    "proxy_on_request_trailers",
                    f,
                    ctx,
                    req.trailers.len() as i32,
                )?;
            }
        }
        let mut upstream_request = None;
        if self.local_reply(ctx).is_none() && !paused {
            let forwarded = self.stream(ctx).request_headers.clone();
            let computed = req.upstream.as_ref().map(|f| f(&forwarded));
            upstream_request = Some(forwarded);
            let resp = computed.as_ref().unwrap_or(&req.response);
            let reset = resp.status == 0;
            let mut headers = vec![(":status".to_string(), resp.status.to_string().into_bytes())];
            headers.extend(resp.headers.iter().cloned());
            let resp_has_body = !resp.body.is_empty();
            let resp_has_trailers = !resp.trailers.is_empty();
            self.stream(ctx).response_headers = headers;
            let n = self.stream(ctx).response_headers.len() as i32;
            let f = self.ex.on_response_headers.clone();
            let a = if reset {
                // Envoy answers the client itself (503 UF/UR) without running this
                // filter's encoder callbacks for an upstream that never responded.
                self.stream(ctx).response_headers = vec![(":status".into(), b"503".to_vec())];
                Action::Pause
            } else {
                self.stream_cb3(
                    "proxy_on_response_headers",
                    f,
                    ctx,
                    n,
                    !resp_has_body && !resp_has_trailers,
                )?
            };
            paused = !reset
                && a == Action::Pause
                && self.stream(ctx).continued_response == 0
                && self.local_reply(ctx).is_none();
            if resp_has_body && !paused && !reset && self.local_reply(ctx).is_none() {
                self.stream(ctx).response_body = resp.body.clone();
                let f = self.ex.on_response_body.clone();
                self.stream_cb3(
                    "proxy_on_response_body",
                    f,
                    ctx,
                    resp.body.len() as i32,
                    !resp_has_trailers,
                )?;
            }
            if resp_has_trailers && !paused && !reset && self.local_reply(ctx).is_none() {
                self.stream(ctx).response_trailers = resp.trailers.clone();
                let f = self.ex.on_response_trailers.clone();
                self.stream_cb2(
                    "proxy_on_response_trailers",
                    f,
                    ctx,
                    resp.trailers.len() as i32,
                )?;
            }
        }
        if let Some(local) = self.local_reply(ctx) {
            // Envoy builds the reply's headers and runs them through the encoder chain.
            let mut headers = vec![(":status".to_string(), local.status.to_string().into_bytes())];
            headers.extend(local.headers.iter().cloned());
            if !local.body.is_empty() {
                // Envoy 1.39 order: content-length, then content-type if the guest set none.
                headers.push((
                    "content-length".into(),
                    local.body.len().to_string().into_bytes(),
                ));
                if !headers.iter().any(|(k, _)| k == "content-type") {
                    headers.push(("content-type".into(), b"text/plain".to_vec()));
                }
            }
            let body = local.body.clone();
            {
                let s = self.stream(ctx);
                s.response_headers = headers;
                s.response_body = body.clone();
            }
            if self.local_reply_through_filter {
                let n = self.stream(ctx).response_headers.len() as i32;
                let f = self.ex.on_response_headers.clone();
                self.stream_cb3("proxy_on_response_headers", f, ctx, n, body.is_empty())?;
                if !body.is_empty() {
                    let f = self.ex.on_response_body.clone();
                    self.stream_cb3("proxy_on_response_body", f, ctx, body.len() as i32, true)?;
                }
            }
            paused = false;
        }
        self.finish(ctx, action, upstream_request, paused, log_start)
    }

    fn finish(
        &mut self,
        ctx: u32,
        action: Action,
        upstream_request: Option<Vec<Pair>>,
        paused: bool,
        log_start: usize,
    ) -> Result<Exchange, HostError> {
        // Stream end: Envoy calls done, then the access-log hook, then delete.
        if let Some(f) = self.ex.on_done.clone() {
            self.call("proxy_on_done", ctx, &f, ctx as i32)?;
        }
        if let Some(f) = self.ex.on_log.clone() {
            self.call("proxy_on_log", ctx, &f, ctx as i32)?;
        }
        if let Some(f) = self.ex.on_delete.clone() {
            self.call("proxy_on_delete", ctx, &f, ctx as i32)?;
        }
        let s = self
            .store
            .data_mut()
            .streams
            .remove(&ctx)
            .unwrap_or_default();
        let logs = self.store.data().logs.get(log_start..).unwrap_or(&[]);
        let logs = logs
            .iter()
            .filter(|l| l.context_id == ctx)
            .cloned()
            .collect();
        Ok(Exchange {
            context_id: ctx,
            request_headers_action: action,
            upstream_request,
            local_response: s.local_response,
            response_headers: s.response_headers,
            response_body: s.response_body,
            paused,
            route_cache_cleared: s.route_cache_cleared,
            logs,
            guest_properties: s.guest_properties.into_iter().collect(),
        })
    }

    /// Ends the root context as Envoy does on shutdown: `proxy_on_done`, and
    /// `proxy_on_delete` once the guest is done (at once, or after `proxy_done`).
    pub fn shutdown(&mut self) -> Result<bool, HostError> {
        let root = self.root_context_id();
        let done = match self.ex.on_done.clone() {
            Some(f) => self.call("proxy_on_done", root, &f, root as i32)? != 0,
            None => true,
        };
        if done || self.store.data().done_called {
            if let Some(f) = self.ex.on_delete.clone() {
                self.call("proxy_on_delete", root, &f, root as i32)?;
            }
            return Ok(true);
        }
        Ok(false)
    }
}
