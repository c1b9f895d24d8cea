//! The host's ABI, exercised through the real Rust SDK by the probe guest.

use std::time::Duration;

use switchyard_proxy_host::build::probe_wasm;
use switchyard_proxy_host::grpc::{GrpcInbound, GrpcOutbound};
use switchyard_proxy_host::{
    Action, HostError, LogLevel, Process, Request, Response, VmId, VmSpec, WasmModule,
};

fn spec(config: &str) -> VmSpec {
    let module =
        WasmModule::from_file(probe_wasm().expect("probe guest builds")).expect("probe compiles");
    VmSpec::new(module)
        .vm_id("probe")
        .plugin_config(config)
        .vm_config("vmcfg")
        .env("SWITCHYARD_AFFINITY_KEYS", "k1=secret")
}

fn one(config: &str) -> (Process, VmId) {
    let mut p = Process::new();
    let vm = p.spawn(spec(config)).expect("vm starts");
    (p, vm)
}

fn results(ex: &switchyard_proxy_host::Exchange) -> String {
    ex.logs
        .iter()
        .find_map(|l| l.message.strip_prefix("probe: result "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn lifecycle_runs_in_envoy_order() {
    let (mut p, vm) = one("");
    let logs = p.vm(vm).logs_text();
    assert!(logs.contains("probe: vm start 5 vmcfg"), "{logs}");
    let ex = p
        .send(vm, Request::get("/cart").header("x-probe", "get::path"))
        .unwrap();
    assert_eq!(ex.request_headers_action, Action::Continue);
    assert_eq!(ex.status(), 200);
    assert_eq!(ex.response_header("x-probe-response"), Some("seen"));
    let order: Vec<_> = ex.logs.iter().map(|l| l.message.clone()).collect();
    // Envoy appends x-forwarded-proto and x-request-id before filters run.
    assert!(
        order[0].starts_with("probe: request headers 2 n=7 eos=true"),
        "{order:?}"
    );
    assert!(
        order
            .iter()
            .any(|m| m.starts_with("probe: response headers n=2 eos=true status=200")),
        "{order:?}"
    );
    assert_eq!(order.last().unwrap(), "probe: log 2 code=Some(200)");
    assert_eq!(results(&ex), "get=Ok(Some(\"/cart\"))");
    assert!(p.vm(vm).host_errors().is_empty());
}

#[test]
fn vm_start_and_configure_rejections_are_errors() {
    let mut p = Process::new();
    match p.spawn(spec("reject=1")) {
        Err(HostError::ConfigureRejected { logs, .. }) => {
            assert!(logs.contains("rejected on purpose"), "{logs}")
        }
        other => panic!("expected ConfigureRejected, got {:?}", other.err()),
    }
    assert!(matches!(
        p.spawn(spec("").vm_config("reject")),
        Err(HostError::VmStartRejected { .. })
    ));
}

#[test]
fn header_maps_add_replace_remove_and_pairs() {
    let (mut p, vm) = one("");
    let req = Request::get("/")
        .header("x-dup", "1")
        .header("x-dup", "2")
        .header("X-Client", "c")
        .header(
            "x-probe",
            "add:x-new=v;replace:x-dup=3;remove:x-client;get:x-missing;pairs",
        );
    let ex = p.send(vm, req).unwrap();
    assert_eq!(ex.upstream_headers("x-dup"), vec!["3"]);
    // As on Envoy 1.39: replace removes every entry and appends one at the end.
    assert_eq!(
        ex.upstream_request.as_ref().unwrap().last().unwrap().0,
        "x-dup"
    );
    assert_eq!(ex.upstream_header("x-new"), Some("v"));
    assert_eq!(ex.upstream_header("x-client"), None);
    let r = results(&ex);
    assert!(r.contains("get=Ok(None)"), "{r}");
    assert!(
        r.contains("pairs=:authority=shop.example.com|:path=/|:method=GET|:scheme=https|x-probe="),
        "{r}"
    );
    assert!(r.contains("|x-forwarded-proto=https|x-request-id="), "{r}");
    assert!(r.ends_with("|x-new=v|x-dup=3"), "{r}");
}

#[test]
fn set_header_map_pairs_replaces_the_map() {
    let (mut p, vm) = one("");
    let ex = p
        .send(vm, Request::get("/a").header("x-probe", "setpairs"))
        .unwrap();
    assert_eq!(
        ex.upstream_request.unwrap(),
        vec![
            (":path".to_string(), b"/rewritten".to_vec()),
            ("only".to_string(), b"this".to_vec()),
        ]
    );
}

#[test]
fn invalid_utf8_header_values_reach_the_guest_as_bytes() {
    let (mut p, vm) = one("");
    let ex = p
        .send(
            vm,
            Request::get("/")
                .header("x-bin", [0xff, 0xfe, b'a'])
                .header("x-probe", "get:x-bin"),
        )
        .unwrap();
    assert!(
        results(&ex).contains("get=Ok(Some(\"\u{fffd}\u{fffd}a\"))"),
        "{}",
        results(&ex)
    );
}

#[test]
fn properties_per_request_and_derived_ones() {
    let (mut p, vm) = one("");
    let ex = p
        .send(vm, Request::get("/p?q=1").source("198.51.100.4:4444").header("x-probe", "prop:source.address;prop:source.port;prop:request.url_path;prop:request.method;prop:plugin_vm_id;prop:no.such;setprop:mine=1"))
        .unwrap();
    let r = results(&ex);
    assert!(
        r.contains("prop=198.51.100.4:4444 prop=4444 prop=/p prop=GET prop=probe prop=Ok(None)"),
        "{r}"
    );
    assert_eq!(
        ex.guest_properties,
        vec![("mine".to_string(), b"1".to_vec())]
    );
}

#[test]
fn local_response_goes_back_through_the_response_callbacks() {
    let (mut p, vm) = one("");
    let ex = p
        .send(vm, Request::get("/").header("x-probe", "local:503"))
        .unwrap();
    let local = ex.local_response.clone().expect("local reply");
    assert_eq!(local.status, 503);
    assert_eq!(local.header("retry-after"), Some("5"));
    assert_eq!(local.body_str(), "{\"error\":\"probe\"}");
    assert!(ex.upstream_request.is_none());
    assert_eq!(ex.status(), 503);
    assert_eq!(ex.response_header("x-probe-response"), Some("seen"));
    assert_eq!(ex.set_cookie("probe").unwrap().max_age(), Some(60));
    assert!(ex
        .logs
        .iter()
        .any(|l| l.message == "probe: log 2 code=Some(503)"));
}

#[test]
fn pause_without_resume_never_reaches_upstream() {
    let (mut p, vm) = one("");
    let ex = p
        .send(vm, Request::get("/").header("x-probe", "pause"))
        .unwrap();
    assert_eq!(ex.request_headers_action, Action::Pause);
    assert!(ex.paused);
    assert!(ex.upstream_request.is_none());
}

#[test]
fn bodies_and_trailers_are_delivered() {
    let (mut p, vm) = one("");
    let ex = p
        .send(
            vm,
            Request::post("/")
                .body("hello ")
                .body("world")
                .trailer("x-t", "1")
                .respond(Response::status(201).body("created")),
        )
        .unwrap();
    let m: Vec<_> = ex.logs.iter().map(|l| l.message.as_str()).collect();
    assert!(
        m.contains(&"probe: request body 6 eos=false hello "),
        "{m:?}"
    );
    assert!(
        m.contains(&"probe: request body 5 eos=false world"),
        "{m:?}"
    );
    assert!(m.contains(&"probe: request trailers 1"), "{m:?}");
    assert!(m.contains(&"probe: response body 7 eos=true"), "{m:?}");
    assert_eq!(ex.status(), 201);
    assert_eq!(ex.body_str(), "created");
}

#[test]
fn virtual_clock_drives_time_and_ticks() {
    let (mut p, vm) = one("tick=1000");
    let start = p.now_unix_secs();
    p.advance(Duration::from_millis(3500)).unwrap();
    let ticks: Vec<_> = p
        .vm(vm)
        .logs()
        .iter()
        .filter(|l| l.message.starts_with("probe: tick"))
        .map(|l| l.message.clone())
        .collect();
    assert_eq!(
        ticks,
        vec![
            format!("probe: tick 1 at {}", start + 1),
            format!("probe: tick 2 at {}", start + 2),
            format!("probe: tick 3 at {}", start + 3),
        ]
    );
    assert_eq!(p.shared().metric("probe_ticks").unwrap().value, 3);
    let ex = p
        .send(vm, Request::get("/").header("x-probe", "time"))
        .unwrap();
    assert_eq!(results(&ex), format!("time={}", start + 3));
    p.advance(Duration::from_millis(500)).unwrap();
    assert_eq!(p.shared().metric("probe_ticks").unwrap().value, 4);
}

#[test]
fn wasi_environment_output_and_random() {
    let (mut p, vm) = one("");
    let ex = p
        .send(
            vm,
            Request::get("/").header(
                "x-probe",
                "env:SWITCHYARD_AFFINITY_KEYS;env:HOME;random;print:hi;instant",
            ),
        )
        .unwrap();
    let r = results(&ex);
    assert!(
        r.starts_with("env=k1=secret env=<unset> random=true print=printed"),
        "{r}"
    );
    let logs = p.vm(vm).logs();
    assert!(logs
        .iter()
        .any(|l| l.level == LogLevel::Info && l.message == "stdout says hi"));
    assert!(logs
        .iter()
        .any(|l| l.level == LogLevel::Error && l.message == "stderr says hi"));
}

#[test]
fn metrics_define_increment_record_get() {
    let (mut p, vm) = one("");
    p.send(
        vm,
        Request::get("/").header("x-probe", "metric:hits;histogram:42"),
    )
    .unwrap();
    let ex = p
        .send(
            vm,
            Request::get("/").header("x-probe", "metric:hits;histogram:7"),
        )
        .unwrap();
    assert_eq!(results(&ex), "metric=Ok(2) histogram=Ok(())");
    assert_eq!(p.shared().metric("hits").unwrap().value, 2);
    assert_eq!(
        p.shared().metric("probe_latency").unwrap().samples,
        vec![42, 7]
    );
}

#[test]
fn foreign_functions_and_clear_route_cache() {
    let (mut p, vm) = one("");
    p.shared().register_foreign_function(
        "upper",
        std::sync::Arc::new(|a: &[u8]| Ok(a.to_ascii_uppercase())),
    );
    let ex = p
        .send(
            vm,
            Request::get("/").header("x-probe", "clear_route_cache;foreign:upper;foreign:nope"),
        )
        .unwrap();
    assert_eq!(ex.route_cache_cleared, 1);
    assert_eq!(
        results(&ex),
        "clear_route_cache=Ok(None) foreign=Ok(Some(\"ARGS\")) foreign=Err(NotFound)"
    );
}

#[test]
fn a_guest_panic_is_a_trap_and_the_vm_is_dead_afterwards() {
    let (mut p, vm) = one("");
    let err = p
        .send(vm, Request::get("/").header("x-probe", "panic"))
        .unwrap_err();
    assert!(err.is_trap(), "{err}");
    assert!(
        p.vm(vm).logs_text().contains("probe asked to panic"),
        "{}",
        p.vm(vm).logs_text()
    );
    assert!(matches!(
        p.send(vm, Request::get("/")),
        Err(HostError::VmFailed(_))
    ));
}

#[test]
fn a_bad_guest_pointer_is_refused_not_followed() {
    let (mut p, vm) = one("");
    let ex = p
        .send(vm, Request::get("/").header("x-probe", "badptr"))
        .unwrap();
    assert_eq!(results(&ex), "badptr=6");
    assert_eq!(
        p.vm(vm).host_errors(),
        ["proxy_log: guest pointer outside linear memory"]
    );
    // Strict mode turns it into a trap naming the call.
    let mut p = Process::new();
    let vm = p.spawn(spec("").strict(true)).unwrap();
    let err = p
        .send(vm, Request::get("/").header("x-probe", "badptr"))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("proxy_log: guest pointer outside linear memory"),
        "{err}"
    );
}

#[test]
fn shared_data_is_seen_by_every_vm_with_the_same_vm_id_and_cas_is_enforced() {
    let mut p = Process::new();
    let a = p.spawn(spec("")).unwrap();
    let b = p.spawn(spec("")).unwrap();
    let other = p.spawn(spec("").vm_id("other")).unwrap();
    p.send(a, Request::get("/").header("x-probe", "shared_set:k=v1"))
        .unwrap();
    let ex = p
        .send(b, Request::get("/").header("x-probe", "shared_get:k"))
        .unwrap();
    assert!(
        results(&ex).starts_with("shared_get=Ok((Some(\"v1\"), Some("),
        "{}",
        results(&ex)
    );
    let ex = p
        .send(other, Request::get("/").header("x-probe", "shared_get:k"))
        .unwrap();
    assert_eq!(results(&ex), "shared_get=Ok((None, None))");
    let ex = p
        .send(b, Request::get("/").header("x-probe", "shared_cas:k=v2"))
        .unwrap();
    assert_eq!(results(&ex), "shared_cas=Ok(()) Err(CasMismatch)");
    assert_eq!(p.shared().shared_data("probe", "k").unwrap().0, b"v2");
    assert_eq!(p.shared().cas_mismatches(), 1);
}

#[test]
fn shared_queue_wakes_only_the_registrant() {
    let mut p = Process::new();
    let singleton = p
        .spawn(spec("queue=telemetry").root_id("singleton"))
        .unwrap();
    let w1 = p.spawn(spec("")).unwrap();
    let w2 = p.spawn(spec("")).unwrap();
    p.send(
        w1,
        Request::get("/").header("x-probe", "enqueue:probe/telemetry=one"),
    )
    .unwrap();
    let ex = p
        .send(
            w2,
            Request::get("/").header(
                "x-probe",
                "enqueue:probe/telemetry=two;enqueue:probe/nope=x",
            ),
        )
        .unwrap();
    assert_eq!(results(&ex), "enqueue=Ok(()) enqueue=resolve Ok(None)");
    let items: Vec<_> = p
        .vm(singleton)
        .logs()
        .iter()
        .filter(|l| l.message.contains("item"))
        .map(|l| l.message.clone())
        .collect();
    assert_eq!(
        items,
        vec!["probe: queue 1 item one", "probe: queue 1 item two"]
    );
    assert!(!p.vm(w1).logs_text().contains("item"));
}

#[test]
fn grpc_stream_scripted_by_the_test() {
    let (mut p, vm) = one("stream=control");
    let out = p.vm(vm).take_grpc_outbox();
    let token = match &out[..] {
        [GrpcOutbound::StreamOpened { token, target }] => {
            assert_eq!(target.cluster, "control");
            assert_eq!(target.path(), "/switchyard.v1.Probe/Watch");
            assert_eq!(
                target.initial_metadata,
                vec![("x-probe".to_string(), b"1".to_vec())]
            );
            *token
        }
        other => panic!("{other:?}"),
    };
    let v = p.vm(vm);
    v.deliver_grpc(GrpcInbound::InitialMetadata {
        token,
        metadata: vec![("server".into(), b"t".to_vec())],
    })
    .unwrap();
    v.deliver_grpc(GrpcInbound::Message {
        token,
        message: b"echo".to_vec(),
    })
    .unwrap();
    assert_eq!(
        v.take_grpc_outbox(),
        vec![GrpcOutbound::StreamMessage {
            token,
            message: b"echoed".to_vec(),
            end_stream: false
        }]
    );
    v.deliver_grpc(GrpcInbound::Message {
        token,
        message: b"shared".to_vec(),
    })
    .unwrap();
    v.deliver_grpc(GrpcInbound::TrailingMetadata {
        token,
        metadata: vec![],
    })
    .unwrap();
    v.deliver_grpc(GrpcInbound::Close {
        token,
        status: 14,
        message: "gone".into(),
    })
    .unwrap();
    let logs = v.logs_text();
    assert!(logs.contains("grpc initial 2 1 [\"server\"]"), "{logs}");
    assert!(logs.contains("grpc message 2 echo"), "{logs}");
    assert!(logs.contains("grpc trailing 2 0"), "{logs}");
    assert!(logs.contains("grpc close 2 14 14 gone"), "{logs}");
    assert!(v.open_grpc_streams().is_empty());
    assert_eq!(
        p.shared().shared_data("probe", "snapshot").unwrap().0,
        b"from-stream"
    );
}

#[test]
fn grpc_reconnect_on_tick_after_close() {
    let (mut p, vm) = one("stream=control\ntick=1000\nreopen=1");
    let first = p.vm(vm).take_grpc_outbox()[0].token();
    p.vm(vm)
        .deliver_grpc(GrpcInbound::Close {
            token: first,
            status: 14,
            message: String::new(),
        })
        .unwrap();
    p.advance(Duration::from_secs(1)).unwrap();
    let out = p.vm(vm).take_grpc_outbox();
    assert!(
        matches!(&out[..], [GrpcOutbound::StreamOpened { token, .. }] if *token != first),
        "{out:?}"
    );
}

#[test]
fn grpc_call_reply_and_deadline() {
    let (mut p, vm) = one("call=control");
    let t = p.vm(vm).take_grpc_outbox()[0].token();
    p.vm(vm)
        .deliver_grpc(GrpcInbound::CallReply {
            token: t,
            message: b"pong".to_vec(),
        })
        .unwrap();
    assert!(p
        .vm(vm)
        .logs_text()
        .contains(&format!("grpc call {t} 0 pong")));
    // A call nobody answers fails with DEADLINE_EXCEEDED once virtual time passes its timeout.
    let (mut p, vm) = one("call=control");
    let t = p.vm(vm).take_grpc_outbox()[0].token();
    p.advance(Duration::from_millis(499)).unwrap();
    assert!(!p.vm(vm).logs_text().contains("grpc call"));
    p.advance(Duration::from_millis(1)).unwrap();
    assert!(
        p.vm(vm).logs_text().contains(&format!("grpc call {t} 4")),
        "{}",
        p.vm(vm).logs_text()
    );
}

#[test]
fn an_unparseable_grpc_service_name_is_what_aborts_envoy() {
    let mut p = Process::new();
    let err = p.spawn(spec("stream=hx\nraw_cluster=1")).unwrap_err();
    assert!(err.to_string().contains("unset oneof"), "{err}");
}

#[test]
fn a_module_is_compiled_once_and_instantiated_per_vm() {
    let path = probe_wasm().unwrap();
    let a = WasmModule::from_file(&path).unwrap();
    let b = WasmModule::from_file(&path).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let mut p = Process::new();
    let x = p.spawn(VmSpec::new(a.clone())).unwrap();
    let y = p.spawn(VmSpec::new(b)).unwrap();
    // Separate instances: separate memories and contexts.
    p.send(x, Request::get("/")).unwrap();
    p.send(x, Request::get("/")).unwrap();
    let ex = p.send(y, Request::get("/")).unwrap();
    assert_eq!(ex.context_id, 2, "the second VM numbers its own contexts");
}

#[test]
fn shutdown_runs_on_done_then_on_delete_for_the_root_context() {
    let (mut p, vm) = one("tick=1000");
    assert!(
        p.vm(vm).shutdown().unwrap(),
        "the SDK's root context is done at once"
    );
    assert!(p.vm(vm).host_errors().is_empty());
}
