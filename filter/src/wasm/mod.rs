//! The proxy-wasm adapter: binds the pure routing core to Envoy. It must never trap: every
//! host call result is handled, and when the host misbehaves the request still gets a
//! decision.
//!
//! A root context has one of two roles, chosen once by its first good plugin
//! configuration: a **worker** (`worker.rs`; the configuration is a policy document; its
//! HTTP contexts are `http.rs`) or the **singleton** (`singleton.rs`; the configuration
//! has `"role": "control"`). [`Root`] only chooses the role and forwards each callback to
//! it; the roles exchange snapshots and telemetry through shared data (`shared.rs`, rules
//! in `crate::shared_data`).
#![allow(unsafe_code)]

mod abi;
mod http;
mod metrics;
mod shared;
mod singleton;
mod worker;

use std::time::UNIX_EPOCH;

use log::error;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};

use http::Flow;
use singleton::SingletonRoot;
use worker::WorkerRoot;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::Unconfigured) });
}}

fn now_ms() -> u64 {
    now_us() / 1_000
}

/// The host's clock in Unix microseconds (latencies are measured in µs).
fn now_us() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as u64)
}

/// A root context, by role. Every callback except `on_configure` (which picks the role)
/// goes to the role's own `Context`/`RootContext` implementation; the SDK's defaults
/// make a callback a role does not use a no-op.
enum Root {
    /// No good plugin configuration yet: routes nothing, lets Envoy route.
    Unconfigured,
    Worker(WorkerRoot),
    /// Boxed: it is much larger than a worker and there is one per Envoy.
    Singleton(Box<SingletonRoot>),
}

impl Root {
    fn role(&mut self) -> Option<&mut dyn RootContext> {
        match self {
            Root::Unconfigured => None,
            Root::Worker(w) => Some(w),
            Root::Singleton(s) => Some(s.as_mut()),
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        if let Some(r) = self.role() {
            r.on_http_call_response(token, headers, body, trailers);
        }
    }

    fn on_grpc_stream_initial_metadata(&mut self, token: u32, headers: u32) {
        if let Some(r) = self.role() {
            r.on_grpc_stream_initial_metadata(token, headers);
        }
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        if let Some(r) = self.role() {
            r.on_grpc_stream_message(token, size);
        }
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        if let Some(r) = self.role() {
            r.on_grpc_stream_close(token, status);
        }
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        if let Some(r) = self.role() {
            r.on_grpc_call_response(token, status, size);
        }
    }
}

impl RootContext for Root {
    /// Choose the role from the configuration, or reconfigure the role chosen before. A
    /// configuration that is invalid, or of the other role, is refused (Envoy rejects
    /// it) and changes nothing.
    fn on_configure(&mut self, _: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let singleton = singleton::is_singleton_config(&config);
        match self {
            Root::Worker(w) if !singleton => w.reconfigure(&config),
            Root::Unconfigured | Root::Singleton(_) if singleton => {
                // A new configuration restarts the singleton (as Envoy does for a new
                // plugin), keeping the old one if it is invalid.
                match SingletonRoot::start(&config, now_ms()) {
                    Some(s) => {
                        *self = Root::Singleton(Box::new(s));
                        true
                    }
                    None => false,
                }
            }
            Root::Unconfigured => match WorkerRoot::start(&config) {
                Some(w) => {
                    *self = Root::Worker(w);
                    true
                }
                None => false,
            },
            Root::Worker(_) | Root::Singleton(_) => {
                error!(
                    "this VM is a {}; a configuration for the {} needs a new plugin",
                    if singleton { "worker" } else { "singleton" },
                    if singleton { "singleton" } else { "worker" },
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(r) = self.role() {
            r.on_tick();
        }
    }

    fn on_queue_ready(&mut self, queue: u32) {
        if let Some(r) = self.role() {
            r.on_queue_ready(queue);
        }
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        match self {
            Root::Worker(w) => w.create_http_context(id),
            // The SDK traps on `None`: a VM that routes nothing passes requests through.
            Root::Unconfigured | Root::Singleton(_) => Some(Box::new(Flow::new(None))),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
