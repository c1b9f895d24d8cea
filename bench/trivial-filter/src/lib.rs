//! Benchmark baseline: the least a routing wasm filter can do. It reads one request
//! header and sets the routing header from it, so Envoy pays for a V8 VM, one context
//! per stream and two host calls, and nothing else. Switchyard's per-request cost is
//! compared against this (bench/run.sh, variant b).
//!
//! With a plugin configuration `kind=N` it also makes N extra host calls of one kind per
//! request, to price single host calls in Envoy (bench/run.sh variants `hc-<kind>N`):
//! `shared` (read a shared-data key), `pairs` (the whole request header map), `time`,
//! `header` (one request header), `status` (`:status` of the response), `prop`
//! (`source.address`), `set` (replace a request header), `mix` (Switchyard's host calls
//! without its decision: clock + header map, `:status` on the response).
#![forbid(unsafe_code)]

#[cfg(target_arch = "wasm32")]
mod filter {
    use std::cell::Cell;
    use std::rc::Rc;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

    /// Header the load generator may send to pick a stack.
    const INPUT: &str = "x-bench-stack";
    /// Header the route table matches on (same as Switchyard's).
    const ROUTING: &str = "x-switchyard-stack";
    /// Stack used when the input header is absent or not one of ours.
    const DEFAULT_STACK: &str = "blue";
    const STACKS: [&str; 5] = ["blue", "green", "canary", "eu", "apac"];

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}

    /// Extra host calls per request: (kind, count).
    #[derive(Clone, Copy, Default, PartialEq)]
    enum Extra {
        #[default]
        None,
        Shared,
        Pairs,
        Time,
        Header,
        Status,
        Prop,
        Set,
        /// Switchyard's routing decision (realistic policy, affinity keys) on this request's
        /// headers, in the VM, without host calls: prices the decision's code under V8.
        Decide,
        /// Switchyard's host calls for a returning visitor, without its decision: the
        /// clock, the whole header map (instead of one header), `:status` on the response.
        Mix,
    }

    #[derive(Default)]
    struct Root {
        extra: Rc<Cell<(Extra, u32)>>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _: usize) -> bool {
            let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
                .ok()
                .flatten()
                .unwrap_or_default();
            let config = String::from_utf8_lossy(&config);
            if let Some((kind, n)) = config.trim().split_once('=') {
                let kind = match kind {
                    "shared" => Extra::Shared,
                    "pairs" => Extra::Pairs,
                    "time" => Extra::Time,
                    "header" => Extra::Header,
                    "status" => Extra::Status,
                    "prop" => Extra::Prop,
                    "set" => Extra::Set,
                    "mix" => Extra::Mix,
                    "decide" => Extra::Decide,
                    _ => return false,
                };
                let Ok(n) = n.parse() else { return false };
                self.extra.set((kind, n));
                if kind == Extra::Shared {
                    let _ = hostcalls::set_shared_data(
                        "bench.key",
                        Some(&[1, 2, 3, 4, 5, 6, 7, 8]),
                        None,
                    );
                }
            }
            true
        }

        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Flow {
                extra: self.extra.get(),
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    #[cfg(feature = "price-decision")]
    thread_local! {
        static ROUTER: std::cell::RefCell<Option<switchyard_filter::router::Router>> = const { std::cell::RefCell::new(None) };
    }

    /// Run Switchyard's decision `n` times on this request (one header-map read).
    #[cfg(feature = "price-decision")]
    fn decide_n(n: u32) {
        use switchyard_filter::{
            affinity::Keyring, classify::Request, policy::validate_json, router::Router,
        };
        let pairs = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let headers: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_slice()))
            .collect();
        ROUTER.with(|r| {
            let mut r = r.borrow_mut();
            if r.is_none() {
                if let Ok(v) = validate_json(include_str!("../../policies/realistic.json")) {
                    *r = Some(Router::new(
                        std::sync::Arc::new(v.policy),
                        Keyring::parse("k1=0123456789abcdef0123").ok(),
                    ));
                }
            }
            let Some(router) = r.as_mut() else { return };
            for _ in 0..n {
                let d = router.decide(&Request {
                    headers: &headers,
                    source: None,
                    now_ms: 1_795_000_000_000,
                });
                std::hint::black_box(d);
            }
        });
    }

    struct Flow {
        extra: (Extra, u32),
    }

    impl Context for Flow {}

    impl HttpContext for Flow {
        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            if matches!(self.extra.0, Extra::Status | Extra::Mix) {
                for _ in 0..self.extra.1 {
                    let _ = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status");
                }
            }
            Action::Continue
        }

        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            let (kind, n) = self.extra;
            #[cfg(feature = "price-decision")]
            if kind == Extra::Decide {
                decide_n(n);
            }
            if kind == Extra::Mix {
                // The whole map (and the clock) instead of the one input header below.
                let mut stack = DEFAULT_STACK;
                for _ in 0..n {
                    let _ = hostcalls::get_current_time();
                    let pairs =
                        hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
                    if let Some((_, v)) = pairs.iter().find(|(k, _)| k == INPUT) {
                        stack = STACKS
                            .iter()
                            .find(|s| s.as_bytes() == v.as_slice())
                            .copied()
                            .unwrap_or(DEFAULT_STACK);
                    }
                }
                self.set_http_request_header(ROUTING, Some(stack));
                return Action::Continue;
            }
            for i in 0..n {
                match kind {
                    Extra::Shared => drop(hostcalls::get_shared_data("bench.key")),
                    Extra::Pairs => drop(hostcalls::get_map(MapType::HttpRequestHeaders)),
                    Extra::Time => {
                        let _ = hostcalls::get_current_time();
                    }
                    Extra::Header => drop(hostcalls::get_map_value(
                        MapType::HttpRequestHeaders,
                        "user-agent",
                    )),
                    Extra::Prop => drop(hostcalls::get_property(vec!["source", "address"])),
                    Extra::Set => drop(hostcalls::set_map_value(
                        MapType::HttpRequestHeaders,
                        "x-bench-scratch",
                        Some(if i % 2 == 0 { "a" } else { "b" }),
                    )),
                    Extra::None | Extra::Status | Extra::Mix | Extra::Decide => {}
                }
            }
            let wanted = self.get_http_request_header(INPUT);
            let stack = wanted
                .as_deref()
                .and_then(|w| STACKS.iter().find(|s| **s == w))
                .copied()
                .unwrap_or(DEFAULT_STACK);
            self.set_http_request_header(ROUTING, Some(stack));
            Action::Continue
        }
    }
}
