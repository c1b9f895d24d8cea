//! Benchmark baseline: the least a routing wasm filter can do. It reads one request
//! header and sets the routing header from it, so Envoy pays for a V8 VM, one context
//! per stream and two host calls, and nothing else. Switchyard's per-request cost is
//! compared against this (bench/run.sh, variant b).
#![forbid(unsafe_code)]

#[cfg(target_arch = "wasm32")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel};

    /// Header the load generator may send to pick a stack.
    const INPUT: &str = "x-bench-stack";
    /// Header the route table matches on (same as Switchyard's).
    const ROUTING: &str = "x-switchyard-stack";
    /// Stack used when the input header is absent or not one of ours.
    const DEFAULT_STACK: &str = "blue";
    const STACKS: [&str; 5] = ["blue", "green", "canary", "eu", "apac"];

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}

    struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Flow))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Flow;

    impl Context for Flow {}

    impl HttpContext for Flow {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
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
