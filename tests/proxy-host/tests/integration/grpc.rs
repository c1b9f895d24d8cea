//! gRPC peers: a scripted one, and the bridge to the real control service over tonic.

use std::time::Duration;

use switchyard_proxy_host::build::probe_wasm;
use switchyard_proxy_host::grpc::GrpcOutbound;
use switchyard_proxy_host::peer::StreamEvent;
use switchyard_proxy_host::{Process, Reply, ScriptedPeer, TonicBridge, VmSpec, WasmModule};

fn spec(config: &str) -> VmSpec {
    let module = WasmModule::from_file(probe_wasm().unwrap()).unwrap();
    VmSpec::new(module).vm_id("probe").plugin_config(config)
}

#[test]
fn scripted_stream_answers_and_pushes_later() {
    let mut p = Process::new();
    let peer = ScriptedPeer::new().stream("/switchyard.v1.Probe/Watch", |_, ev| match ev {
        StreamEvent::Opened(t) => {
            assert_eq!(t.cluster, "control");
            vec![
                Reply::InitialMetadata(vec![("x-server".into(), b"scripted".to_vec())]),
                Reply::Message(b"first".to_vec()),
            ]
        }
        StreamEvent::Message(m) if m == b"echoed" => {
            vec![Reply::Message(b"got your echo".to_vec())]
        }
        _ => vec![],
    });
    let handle = peer.handle();
    p.set_grpc_peer(peer);
    let vm = p.spawn(spec("stream=control")).unwrap();
    let logs = p.vm(vm).logs_text();
    assert!(logs.contains("grpc initial 2 1 [\"x-server\"]"), "{logs}");
    assert!(logs.contains("grpc message 2 first"), "{logs}");
    assert_eq!(
        handle.push(
            "/switchyard.v1.Probe/Watch",
            Reply::Message(b"echo".to_vec())
        ),
        1
    );
    p.flush().unwrap();
    let logs = p.vm(vm).logs_text();
    assert!(logs.contains("grpc message 2 got your echo"), "{logs}");
    assert_eq!(
        handle.messages("/switchyard.v1.Probe/Watch"),
        vec![(vm, b"echoed".to_vec())]
    );
    handle.push("/switchyard.v1.Probe/Watch", Reply::Close(14, "bye".into()));
    p.flush().unwrap();
    assert!(p.vm(vm).logs_text().contains("grpc close 2 14 14 bye"));
    assert!(handle.open_streams("/switchyard.v1.Probe/Watch").is_empty());
}

#[test]
fn scripted_unary_and_timeouts() {
    let mut p = Process::new();
    let peer = ScriptedPeer::new();
    let handle = peer.handle();
    p.set_grpc_peer(peer);
    let vm = p.spawn(spec("call=control")).unwrap();
    // No closure for the path: the call waits for the test, then times out at 500 ms.
    p.advance(Duration::from_millis(100)).unwrap();
    assert_eq!(
        handle.answer_calls("/switchyard.v1.Probe/Get", Ok(b"late but in time".to_vec())),
        1
    );
    p.flush().unwrap();
    assert!(
        p.vm(vm)
            .logs_text()
            .contains("grpc call 1 0 late but in time"),
        "{}",
        p.vm(vm).logs_text()
    );
    assert!(
        matches!(&handle.received()[..], [(_, GrpcOutbound::CallStarted { message, .. })] if message == b"ping")
    );
}

#[test]
fn reconnect_backoff_runs_on_virtual_time() {
    // The probe reopens a closed stream on its next tick (1 s): close it three times
    // and check each reopen happens exactly one tick later.
    let mut p = Process::new();
    let peer = ScriptedPeer::new();
    let handle = peer.handle();
    p.set_grpc_peer(peer);
    let vm = p
        .spawn(spec("stream=control\ntick=1000\nreopen=1"))
        .unwrap();
    for round in 0..3 {
        assert_eq!(
            handle.open_streams("/switchyard.v1.Probe/Watch").len(),
            1,
            "round {round}"
        );
        handle.push(
            "/switchyard.v1.Probe/Watch",
            Reply::Close(14, "down".into()),
        );
        p.flush().unwrap();
        assert!(handle.open_streams("/switchyard.v1.Probe/Watch").is_empty());
        p.advance(Duration::from_millis(999)).unwrap();
        assert!(handle.open_streams("/switchyard.v1.Probe/Watch").is_empty());
        p.advance(Duration::from_millis(1)).unwrap();
    }
    let opened = p
        .vm(vm)
        .grpc_history()
        .iter()
        .filter(|e| matches!(e, GrpcOutbound::StreamOpened { .. }))
        .count();
    assert_eq!(opened, 4);
}

#[test]
fn bridge_to_the_real_control_service() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = switchyard_control::config::ServeConfig::ephemeral(dir.path());
    cfg.bootstrap_policy =
        Some(switchyard_proxy_host::build::workspace_root().join("examples/policies/demo.json"));
    cfg.http = None;
    let server = rt
        .block_on(switchyard_control::server::start(cfg))
        .expect("control service starts");
    let url = server.grpc_url();

    let mut p = Process::new();
    p.set_grpc_peer(TonicBridge::new(rt.handle().clone()).cluster("control", &url));
    // WatchRequest { node_id: "probe" }
    let vm = p
        .spawn(spec(
            "stream=control\nservice=switchyard.v1.DataPlane\nmethod=Watch\nhello=0a0570726f6265",
        ))
        .unwrap();
    let got = p
        .flush_until(Duration::from_secs(20), |p| {
            p.vm(vm_id(p)).logs_text().contains("demo-storefront")
        })
        .unwrap();
    assert!(got, "no snapshot arrived:\n{}", p.vm(vm).logs_text());
    assert!(
        p.vm(vm).logs_text().contains("grpc initial"),
        "{}",
        p.vm(vm).logs_text()
    );
    // Stopping the server closes the stream; the guest sees the close.
    rt.block_on(server.shutdown());
    let closed = p
        .flush_until(Duration::from_secs(20), |p| {
            p.vm(vm_id(p)).logs_text().contains("grpc close")
        })
        .unwrap();
    assert!(closed, "{}", p.vm(vm).logs_text());
}

fn vm_id(p: &Process) -> switchyard_proxy_host::VmId {
    p.vm_ids()[0]
}

#[test]
fn a_stream_paused_on_a_call_resumes_when_the_guest_continues_it() {
    let mut p = Process::new();
    p.set_grpc_peer(
        ScriptedPeer::new().unary("/switchyard.v1.Probe/Get", |_, _, m| {
            assert_eq!(m, b"auth?");
            Ok(b"allowed".to_vec())
        }),
    );
    let vm = p.spawn(spec("")).unwrap();
    let ex = p
        .vm(vm)
        .send(switchyard_proxy_host::Request::get("/").header("x-probe", "pause_call:auth"))
        .unwrap();
    assert!(ex.paused);
    assert_eq!(p.vm(vm).paused_streams(), vec![ex.context_id]);
    p.flush().unwrap();
    let done = p.vm(vm).take_completed();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].upstream_header("x-resumed"), Some("allowed"));
    assert_eq!(done[0].status(), 200);
    assert!(p.vm(vm).paused_streams().is_empty());
}

#[test]
fn a_paused_stream_nobody_resumes_can_be_reset() {
    let mut p = Process::new();
    p.set_grpc_peer(ScriptedPeer::new());
    let vm = p.spawn(spec("")).unwrap();
    let ex = p
        .vm(vm)
        .send(switchyard_proxy_host::Request::get("/").header("x-probe", "pause_call:auth"))
        .unwrap();
    let done = p.vm(vm).reset_paused(ex.context_id).unwrap().unwrap();
    assert!(done.upstream_request.is_none());
    assert!(done
        .logs
        .iter()
        .any(|l| l.message.starts_with("probe: log")));
}
