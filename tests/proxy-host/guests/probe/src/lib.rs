//! Probe guest: does what the request's `x-probe` header says, through the SDK's host
//! calls, and logs the results as `probe: ...` lines for the host's tests to read.
//! Root behaviour comes from the plugin configuration, `key=value` per line.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

thread_local! {
    /// gRPC calls made by paused HTTP contexts: (token, context id).
    static WAITING: std::cell::RefCell<Vec<(u32, u32)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn say(msg: String) {
    let _ = hostcalls::log(LogLevel::Info, &format!("probe: {msg}"));
}

#[derive(Default)]
struct Root {
    config: Vec<(String, String)>,
    ticks: u64,
    tick_metric: u32,
    queue: Option<u32>,
    stream: Option<u32>,
}

fn grpc_service(cluster: &str) -> Vec<u8> {
    let mut inner = vec![0x0a, cluster.len() as u8];
    inner.extend_from_slice(cluster.as_bytes());
    let mut out = vec![0x0a, inner.len() as u8];
    out.extend_from_slice(&inner);
    out
}

impl Root {
    fn get(&self, key: &str) -> Option<&str> {
        self.config.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn open_stream(&mut self) {
        if let Some(cluster) = self.get("stream").map(str::to_string) {
            let svc = String::from_utf8_lossy(&grpc_service(&cluster)).into_owned();
            let raw = if self.get("raw_cluster").is_some() { cluster.clone() } else { svc };
            match self.dispatch_grpc_stream_raw(&raw) {
                Ok(t) => {
                    self.stream = Some(t);
                    say(format!("stream opened {t}"));
                }
                Err(s) => say(format!("stream open failed {s:?}")),
            }
        }
    }

    fn dispatch_grpc_stream_raw(&self, raw: &str) -> Result<u32, Status> {
        let service = self.get("service").unwrap_or("switchyard.v1.Probe");
        let method = self.get("method").unwrap_or("Watch");
        let t = hostcalls::open_grpc_stream(raw, service, method, vec![("x-probe", b"1")])?;
        if let Some(hello) = self.get("hello") {
            let bytes: Vec<u8> = (0..hello.len() / 2)
                .filter_map(|i| u8::from_str_radix(&hello[2 * i..2 * i + 2], 16).ok())
                .collect();
            let _ = hostcalls::send_grpc_stream_message(t, Some(&bytes), false);
        }
        Ok(t)
    }
}

impl Context for Root {
    fn on_grpc_stream_initial_metadata(&mut self, token: u32, n: u32) {
        let md = self.get_grpc_stream_initial_metadata();
        say(format!("grpc initial {token} {n} {:?}", md.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()));
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let body = self.get_grpc_stream_message(0, size).unwrap_or_default();
        say(format!("grpc message {token} {}", String::from_utf8_lossy(&body)));
        if self.get("half_close_after_first").is_some() {
            let _ = hostcalls::close_grpc_stream(token);
        }
        if body == b"echo" {
            let _ = hostcalls::send_grpc_stream_message(token, Some(b"echoed"), false);
        }
        if body == b"shared" {
            let _ = hostcalls::set_shared_data("snapshot", Some(b"from-stream"), None);
        }
    }

    fn on_grpc_stream_trailing_metadata(&mut self, token: u32, n: u32) {
        say(format!("grpc trailing {token} {n}"));
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        let (code, msg) = hostcalls::get_grpc_status().unwrap_or((99, None));
        say(format!("grpc close {token} {status} {code} {}", msg.unwrap_or_default()));
        if self.stream == Some(token) {
            self.stream = None;
        }
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let body = self.get_grpc_call_response_body(0, size).unwrap_or_default();
        say(format!("grpc call {token} {status} {}", String::from_utf8_lossy(&body)));
        let waiting = WAITING.with(|w| {
            let mut w = w.borrow_mut();
            let at = w.iter().position(|(t, _)| *t == token)?;
            Some(w.remove(at).1)
        });
        if let Some(ctx) = waiting {
            let _ = hostcalls::set_effective_context(ctx);
            let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, "x-resumed", &String::from_utf8_lossy(&body));
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, size: usize) -> bool {
        let cfg = self.get_vm_configuration().unwrap_or_default();
        say(format!("vm start {size} {}", String::from_utf8_lossy(&cfg)));
        !cfg.starts_with(b"reject")
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let cfg = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&cfg).into_owned();
        self.config = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        if self.get("reject").is_some() {
            let _ = hostcalls::log(LogLevel::Error, "probe: configuration rejected on purpose");
            return false;
        }
        if let Some(ms) = self.get("tick").and_then(|v| v.parse::<u64>().ok()) {
            self.set_tick_period(Duration::from_millis(ms));
        }
        self.tick_metric = hostcalls::define_metric(MetricType::Counter, "probe_ticks").unwrap_or(0);
        if let Some(q) = self.get("queue") {
            let t = hostcalls::register_shared_queue(q).unwrap_or(0);
            self.queue = Some(t);
            say(format!("queue registered {t}"));
        }
        self.open_stream();
        if let Some(cluster) = self.get("call").map(str::to_string) {
            let svc = String::from_utf8_lossy(&grpc_service(&cluster)).into_owned();
            match hostcalls::dispatch_grpc_call(&svc, "switchyard.v1.Probe", "Get", vec![], Some(b"ping"), Duration::from_millis(500)) {
                Ok(t) => say(format!("call started {t}")),
                Err(s) => say(format!("call failed {s:?}")),
            }
        }
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let now = self.get_current_time().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let _ = hostcalls::increment_metric(self.tick_metric, 1);
        say(format!("tick {} at {now}", self.ticks));
        if self.get("reopen").is_some() && self.stream.is_none() {
            self.open_stream();
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
            say(format!("queue {queue_id} item {}", String::from_utf8_lossy(&item)));
        }
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { id, results: Vec::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    results: Vec<String>,
}

impl Context for Stream {
    // The SDK routes a call's answer to the context that made it: this one.
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let body = self.get_grpc_call_response_body(0, size).unwrap_or_default();
        say(format!("grpc call {token} {status} {}", String::from_utf8_lossy(&body)));
        let waiting = WAITING.with(|w| {
            let mut w = w.borrow_mut();
            let at = w.iter().position(|(t, _)| *t == token)?;
            Some(w.remove(at).1)
        });
        if let Some(ctx) = waiting {
            // Exercise proxy_set_effective_context even though this is the same context.
            let _ = hostcalls::set_effective_context(ctx);
            let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, "x-resumed", &String::from_utf8_lossy(&body));
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl Stream {
    fn run(&mut self, op: &str) -> Action {
        let (verb, arg) = op.split_once(':').unwrap_or((op, ""));
        let kv = || arg.split_once('=').unwrap_or((arg, ""));
        let out = match verb {
            "add" => format!("{:?}", hostcalls::add_map_value(MapType::HttpRequestHeaders, kv().0, kv().1)),
            "replace" => format!("{:?}", hostcalls::set_map_value(MapType::HttpRequestHeaders, kv().0, Some(kv().1))),
            "remove" => format!("{:?}", hostcalls::set_map_value(MapType::HttpRequestHeaders, arg, None)),
            "get" => format!("{:?}", hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, arg)
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))),
            "pairs" => {
                let m = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
                m.iter().map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v))).collect::<Vec<_>>().join("|")
            }
            "setpairs" => format!("{:?}", hostcalls::set_map(MapType::HttpRequestHeaders, vec![(":path", "/rewritten"), ("only", "this")])),
            "prop" => {
                let path: Vec<&str> = arg.split('.').collect();
                match hostcalls::get_property(path) {
                    Ok(Some(v)) if v.len() == 8 && arg.ends_with("port") || arg == "response.code" => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&v[..8.min(v.len())]);
                        format!("{}", i64::from_le_bytes(b))
                    }
                    Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                    other => format!("{other:?}"),
                }
            }
            "setprop" => format!("{:?}", hostcalls::set_property(vec![kv().0], Some(kv().1.as_bytes()))),
            "local" => {
                let code = arg.parse().unwrap_or(503);
                let _ = hostcalls::send_http_response(code, vec![("retry-after", "5"), ("x-probe", "local")], Some(b"{\"error\":\"probe\"}"));
                return Action::Pause;
            }
            "pause" => return Action::Pause,
            "pause_call" => {
                let svc = String::from_utf8_lossy(&grpc_service(arg)).into_owned();
                match hostcalls::dispatch_grpc_call(&svc, "switchyard.v1.Probe", "Get", vec![], Some(b"auth?"), Duration::from_secs(1)) {
                    Ok(t) => {
                        WAITING.with(|w| w.borrow_mut().push((t, self.id)));
                        return Action::Pause;
                    }
                    Err(e) => format!("{e:?}"),
                }
            }
            "shared_get" => format!("{:?}", hostcalls::get_shared_data(arg)
                .map(|(v, c)| (v.map(|b| String::from_utf8_lossy(&b).into_owned()), c))),
            "shared_set" => format!("{:?}", hostcalls::set_shared_data(kv().0, Some(kv().1.as_bytes()), None)),
            "shared_cas" => {
                let (_, cas) = hostcalls::get_shared_data(kv().0).unwrap_or((None, None));
                let first = hostcalls::set_shared_data(kv().0, Some(kv().1.as_bytes()), cas);
                let stale = hostcalls::set_shared_data(kv().0, Some(b"stale"), cas);
                format!("{first:?} {stale:?}")
            }
            "enqueue" => {
                let (target, msg) = kv();
                let (vm, name) = target.split_once('/').unwrap_or(("", target));
                match hostcalls::resolve_shared_queue(vm, name) {
                    Ok(Some(q)) => format!("{:?}", hostcalls::enqueue_shared_queue(q, Some(msg.as_bytes()))),
                    other => format!("resolve {other:?}"),
                }
            }
            "metric" => {
                let id = hostcalls::define_metric(MetricType::Counter, arg).unwrap_or(0);
                let _ = hostcalls::increment_metric(id, 1);
                format!("{:?}", hostcalls::get_metric(id))
            }
            "histogram" => {
                let id = hostcalls::define_metric(MetricType::Histogram, "probe_latency").unwrap_or(0);
                format!("{:?}", hostcalls::record_metric(id, arg.parse().unwrap_or(0)))
            }
            "clear_route_cache" => format!("{:?}", hostcalls::call_foreign_function("clear_route_cache", None)),
            "foreign" => format!("{:?}", hostcalls::call_foreign_function(arg, Some(b"args"))
                .map(|r| r.map(|b| String::from_utf8_lossy(&b).into_owned()))),
            "time" => format!("{}", self.get_current_time().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()),
            "instant" => format!("{:?}", std::time::Instant::now()).len().to_string(),
            "env" => std::env::var(arg).unwrap_or_else(|_| "<unset>".into()),
            "random" => {
                let mut h = std::collections::hash_map::RandomState::new();
                let _ = &mut h;
                use std::hash::BuildHasher;
                format!("{}", h.hash_one(1u8) != 0)
            }
            "print" => {
                println!("stdout says {arg}");
                eprintln!("stderr says {arg}");
                "printed".into()
            }
            "body" => {
                let b = self.get_http_request_body(0, 1 << 20).unwrap_or_default();
                String::from_utf8_lossy(&b).into_owned()
            }
            "panic" => panic!("probe asked to panic"),
            "badptr" => {
                // A pointer far outside linear memory: the host must refuse it.
                extern "C" {
                    fn proxy_log(level: u32, ptr: *const u8, len: usize) -> u32;
                }
                let s = unsafe { proxy_log(2, 0x7fff_fff0 as *const u8, 64) };
                format!("{s}")
            }
            "grpc_call" => {
                let svc = String::from_utf8_lossy(&grpc_service(arg)).into_owned();
                format!("{:?}", hostcalls::dispatch_grpc_call(&svc, "switchyard.v1.Probe", "Get", vec![], Some(b"from-http"), Duration::from_secs(1)))
            }
            _ => format!("unknown op {verb}"),
        };
        self.results.push(format!("{verb}={out}"));
        Action::Continue
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, n: usize, eos: bool) -> Action {
        say(format!("request headers {} n={n} eos={eos}", self.id));
        let ops = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-probe")
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        for op in ops.split(';').filter(|s| !s.is_empty()) {
            if self.run(op) == Action::Pause {
                say(format!("result {}", self.results.join(" ")));
                return Action::Pause;
            }
        }
        say(format!("result {}", self.results.join(" ")));
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        let b = self.get_http_request_body(0, size).unwrap_or_default();
        say(format!("request body {size} eos={eos} {}", String::from_utf8_lossy(&b)));
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, n: usize) -> Action {
        say(format!("request trailers {n}"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, n: usize, eos: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        say(format!("response headers n={n} eos={eos} status={status}"));
        self.add_http_response_header("x-probe-response", "seen");
        self.add_http_response_header("set-cookie", "probe=1; Max-Age=60; Path=/; HttpOnly");
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        say(format!("response body {size} eos={eos}"));
        Action::Continue
    }

    fn on_log(&mut self) {
        let code = hostcalls::get_property(vec!["response", "code"]).ok().flatten();
        let code = code.map(|v| {
            let mut b = [0u8; 8];
            b[..v.len().min(8)].copy_from_slice(&v[..v.len().min(8)]);
            i64::from_le_bytes(b)
        });
        say(format!("log {} code={code:?}", self.id));
    }
}
