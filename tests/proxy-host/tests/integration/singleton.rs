//! The control singleton and the workers in one simulated Envoy: snapshots through
//! shared data to every worker, acks, fail-static, reconnect backoff on virtual time,
//! telemetry through the shared queue into Report calls; and the same against the real
//! control service through the tonic bridge.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_filter::snapshot::{Snapshot, StackState, TelemetryBatch, WatchRequest};
use switchyard_proxy_host::fixture::control_config;
use switchyard_proxy_host::grpc::GrpcOutbound;
use switchyard_proxy_host::peer::StreamEvent;
use switchyard_proxy_host::{Reply, Request, ScriptedPeer, Switchyard, TonicBridge};

const WATCH: &str = "/switchyard.v1.DataPlane/Watch";
const REPORT: &str = "/switchyard.v1.DataPlane/Report";

const POLICY: &str = r#"{"name": "from-control", "stacks": [
    {"name": "blue", "region": "us"}, {"name": "green", "region": "us"}],
  "default": {"targets": [{"stack": "blue"}, {"stack": "green"}]}, "debug_header": true}"#;

const STICKY_POLICY: &str = r#"{"name": "sticky", "stacks": [
    {"name": "blue", "region": "us"}, {"name": "green", "region": "us"}],
  "affinity": {"cookie": "sy_aff", "ttl_s": 3600, "secure": false, "epoch": 1},
  "default": {"targets": [{"stack": "blue"}, {"stack": "green"}], "affinity": true},
  "debug_header": true}"#;

fn snapshot(version: u64, blue: u32, green: u32) -> Vec<u8> {
    let stack = |name: &str, w: u32| StackState {
        name: name.into(),
        weight_percent: w,
        healthy: true,
        reason: String::new(),
        ..Default::default()
    };
    Snapshot {
        rule_stacks: Vec::new(),
        version,
        policy_version: 1,
        policy_json: POLICY.into(),
        stacks: vec![stack("blue", blue), stack("green", green)],
    }
    .encode()
}

/// A control plane that answers every new Watch with snapshot `version` (blue 0, green 100).
fn control_plane(version: u64) -> ScriptedPeer {
    ScriptedPeer::new().stream(WATCH, move |_, ev| match ev {
        StreamEvent::Message(m) => {
            let req = WatchRequest::decode(m).expect("WatchRequest");
            if req.ack_version == 0 {
                vec![
                    Reply::InitialMetadata(vec![]),
                    Reply::Message(snapshot(version, 0, 100)),
                ]
            } else {
                vec![]
            }
        }
        _ => vec![],
    })
}

fn stacks_of(sy: &mut Switchyard, worker: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            sy.send_on(worker, Request::get("/"))
                .unwrap()
                .stack()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn a_snapshot_reaches_every_worker_and_is_acked() {
    let peer = control_plane(7);
    let handle = peer.handle();
    let mut sy = Switchyard::builder()
        .singleton(control_config("control", "n1"))
        .workers(3)
        .grpc_peer(peer)
        .build()
        .unwrap();
    assert!(
        sy.singleton_logs().contains("applied snapshot version 7"),
        "{}",
        sy.singleton_logs()
    );
    for w in 0..3 {
        assert!(
            stacks_of(&mut sy, w, 6).iter().all(|s| s == "green"),
            "worker {w} ignores snapshot 7"
        );
    }
    let acks: Vec<u64> = handle
        .messages(WATCH)
        .iter()
        .map(|(_, m)| WatchRequest::decode(m).unwrap().ack_version)
        .collect();
    assert_eq!(acks, vec![0, 7]);
    // A newer snapshot pushed on the open stream: every worker follows.
    assert_eq!(handle.push(WATCH, Reply::Message(snapshot(8, 100, 0))), 1);
    sy.process.flush().unwrap();
    for w in 0..3 {
        assert!(
            stacks_of(&mut sy, w, 6).iter().all(|s| s == "blue"),
            "worker {w} ignores snapshot 8"
        );
    }
    let (v, _) = sy
        .process
        .shared()
        .shared_data("switchyard", "switchyard.snapshot.version")
        .unwrap();
    assert_eq!(v, 8u64.to_le_bytes());
    // Workers learn of it through their wake queues (no per-request polling, no tick
    // happened): all three registered one.
    let (workers, _) = sy
        .process
        .shared()
        .shared_data("switchyard", "switchyard.workers")
        .unwrap();
    assert_eq!(workers, 3u32.to_le_bytes());
    assert_eq!(sy.metric("switchyard.control.applied_version"), 8);
    assert!(sy.host_errors().is_empty());
}

#[test]
fn an_invalid_snapshot_is_rejected_and_the_last_good_one_kept() {
    let peer = control_plane(3);
    let handle = peer.handle();
    let mut sy = Switchyard::builder()
        .singleton(control_config("control", "n1"))
        .grpc_peer(peer)
        .build()
        .unwrap();
    let bad = Snapshot {
        rule_stacks: Vec::new(),
        version: 4,
        policy_version: 4,
        policy_json: "{\"stacks\": []}".into(),
        stacks: vec![],
    }
    .encode();
    handle.push(WATCH, Reply::Message(bad));
    handle.push(WATCH, Reply::Message(b"\xff\xff\xff garbage".to_vec()));
    sy.process.flush().unwrap();
    assert_eq!(sy.metric("switchyard.control.snapshots_rejected"), 2);
    assert!(stacks_of(&mut sy, 0, 4).iter().all(|s| s == "green"));
}

#[test]
fn fail_static_when_the_control_service_goes_away() {
    let peer = control_plane(5);
    let handle = peer.handle();
    let mut sy = Switchyard::builder()
        .singleton(control_config("control", "n1"))
        .workers(2)
        .grpc_peer(peer)
        .build()
        .unwrap();
    handle.push(WATCH, Reply::Close(14, "control service restarting".into()));
    sy.process.flush().unwrap();
    assert!(
        sy.singleton_logs()
            .contains("Watch stream closed (grpc status 14); serving version 5"),
        "{}",
        sy.singleton_logs()
    );
    assert_eq!(sy.metric("switchyard.control.connected"), 0);
    for w in 0..2 {
        assert!(
            stacks_of(&mut sy, w, 4).iter().all(|s| s == "green"),
            "worker {w} lost the last good snapshot"
        );
    }
    // It comes back: the reconnect asks for more than version 5.
    sy.advance(Duration::from_secs(1)).unwrap();
    let hellos: Vec<WatchRequest> = handle
        .messages(WATCH)
        .iter()
        .map(|(_, m)| WatchRequest::decode(m).unwrap())
        .collect();
    let last = hellos.iter().rev().find(|h| h.ack_version == 0).unwrap();
    assert_eq!(last.last_applied_version, 5);
}

#[test]
fn reconnect_backoff_is_jittered_exponential_on_virtual_time() {
    // No snapshot ever arrives, so the backoff is never reset: 250 ms doubling to 5 s,
    // each delay drawn in [backoff/2, backoff], seen through 100 ms ticks.
    let peer = ScriptedPeer::new();
    let handle = peer.handle();
    let mut sy = Switchyard::builder()
        .singleton(control_config("control", "n1"))
        .grpc_peer(peer)
        .build()
        .unwrap();
    let singleton = sy.singleton.unwrap();
    let mut delays = Vec::new();
    for _ in 0..7 {
        assert_eq!(handle.push(WATCH, Reply::Close(14, "down".into())), 1);
        sy.process.flush().unwrap();
        let closed_at = sy.process.now_unix_nanos();
        let mut waited = 0;
        while handle.open_streams(WATCH).is_empty() {
            sy.advance(Duration::from_millis(10)).unwrap();
            waited += 10;
            assert!(waited < 10_000, "no reconnect within 10 s");
        }
        delays.push((sy.process.now_unix_nanos() - closed_at) / 1_000_000);
    }
    let bounds = [250u64, 500, 1000, 2000, 4000, 5000, 5000];
    for (d, b) in delays.iter().zip(bounds) {
        assert!(
            *d >= b / 2 && *d <= b + 100,
            "delays {delays:?}: {d} outside [{}, {}]",
            b / 2,
            b + 100
        );
    }
    assert_eq!(sy.metric("switchyard.control.reconnects"), 7);
    let opens = sy
        .process
        .vm(singleton)
        .grpc_history()
        .iter()
        .filter(|e| matches!(e, GrpcOutbound::StreamOpened { .. }))
        .count();
    assert_eq!(opens, 8);
}

#[test]
fn telemetry_goes_through_the_shared_queue_into_report_calls() {
    let batches: Arc<Mutex<Vec<TelemetryBatch>>> = Arc::default();
    let seen = batches.clone();
    let peer = control_plane(1).unary(REPORT, move |_, _, msg| {
        seen.lock()
            .unwrap()
            .push(TelemetryBatch::decode(msg).map_err(|e| (3, e.to_string()))?);
        Ok(Vec::new())
    });
    let mut sy = Switchyard::builder()
        .singleton(control_config("control", "n1"))
        .workers(3)
        .grpc_peer(peer)
        .build()
        .unwrap();
    for i in 0..30 {
        sy.send_on(i % 3, Request::get("/")).unwrap();
    }
    sy.advance(Duration::from_secs(3)).unwrap();
    let batches = batches.lock().unwrap();
    assert!(
        !batches.is_empty(),
        "no Report call; singleton logs:\n{}",
        sy.singleton_logs()
    );
    assert!(batches.iter().all(|b| b.node_id == "n1"));
    let requests: u64 = batches
        .iter()
        .flat_map(|b| &b.stacks)
        .map(|s| s.requests)
        .sum();
    assert_eq!(requests, 30);
    let green: u64 = batches
        .iter()
        .flat_map(|b| &b.stacks)
        .filter(|s| s.stack == "green")
        .map(|s| s.requests)
        .sum();
    assert_eq!(green, 30);
    assert!(sy.metric("switchyard.control.reports_sent") >= 1);
}

#[test]
fn singleton_against_the_real_control_service() {
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
    let bridge = TonicBridge::new(rt.handle().clone()).cluster("control", &server.grpc_url());
    let mut sy = Switchyard::builder()
        .policy(POLICY)
        .singleton(control_config("control", "host-test"))
        .workers(2)
        .grpc_peer(bridge)
        .build()
        .unwrap();
    let applied = sy
        .process
        .flush_until(Duration::from_secs(20), |p| {
            p.shared()
                .metric("switchyard.control.applied_version")
                .is_some_and(|m| m.value > 0)
        })
        .unwrap();
    assert!(
        applied,
        "no snapshot from the control service:\n{}",
        sy.singleton_logs()
    );
    // The workers now route with the control service's policy (demo), not their own.
    let ex = sy
        .send_on(1, Request::get("/").header("x-geo-country", "DE"))
        .unwrap();
    assert_eq!(ex.stack(), Some("eu"), "{:?}", ex.decision());
    // Telemetry reaches the service's Report.
    sy.advance(Duration::from_secs(2)).unwrap();
    let reported = sy
        .process
        .flush_until(Duration::from_secs(20), |p| {
            p.shared()
                .metric("switchyard.control.reports_sent")
                .is_some_and(|m| m.value > 0)
        })
        .unwrap();
    assert!(reported, "{}", sy.singleton_logs());
    rt.block_on(server.shutdown());
}

#[test]
fn control_plane_weights_and_draining_shape_the_split() {
    let peer = control_plane(1);
    let handle = peer.handle();
    let mut sy = Switchyard::builder()
        .singleton(control_config("control", "n1"))
        .grpc_peer(peer)
        .build()
        .unwrap();
    handle.push(WATCH, Reply::Message(snapshot(2, 25, 75)));
    sy.process.flush().unwrap();
    let blue = stacks_of(&mut sy, 0, 100)
        .iter()
        .filter(|s| *s == "blue")
        .count();
    assert!((20..=30).contains(&blue), "blue got {blue} of 100 at 25%");
    let drain = Snapshot {
        rule_stacks: Vec::new(),
        version: 3,
        policy_version: 1,
        policy_json: POLICY.into(),
        stacks: vec![
            StackState {
                name: "blue".into(),
                weight_percent: 100,
                healthy: true,
                reason: String::new(),
                draining: true,
                ..Default::default()
            },
            StackState {
                name: "green".into(),
                weight_percent: 100,
                healthy: true,
                reason: String::new(),
                ..Default::default()
            },
        ],
    };
    handle.push(WATCH, Reply::Message(drain.encode()));
    sy.process.flush().unwrap();
    assert!(
        stacks_of(&mut sy, 0, 20).iter().all(|s| s == "green"),
        "a draining stack took new traffic"
    );

    // With affinity: one user holds a blue cookie, one a green cookie.
    let full = |name: &str| StackState {
        name: name.into(),
        weight_percent: 100,
        healthy: true,
        ..Default::default()
    };
    let sticky = |version, stacks: Vec<StackState>| {
        Reply::Message(
            Snapshot {
                rule_stacks: Vec::new(),
                version,
                // Version 4 set this document.
                policy_version: 4,
                policy_json: STICKY_POLICY.into(),
                stacks,
            }
            .encode(),
        )
    };
    handle.push(WATCH, sticky(4, vec![full("blue"), full("green")]));
    sy.process.flush().unwrap();
    let mut cookies = std::collections::HashMap::new();
    for _ in 0..10 {
        let ex = sy.send(Request::get("/")).unwrap();
        let c = ex.set_cookie("sy_aff").expect("a new user gets a cookie");
        cookies.insert(ex.stack().unwrap().to_string(), c.value);
    }
    let (blue, green) = (cookies["blue"].clone(), cookies["green"].clone());
    let with = |c: &str| Request::get("/").cookie("sy_aff", c);

    // Drain blue for 60 s: its cookie holder stays (no cookie refresh), new users don't
    // come.
    let deadline = sy.process.now_unix_secs() * 1000 + 60_000;
    let drained = StackState {
        draining: true,
        drain_deadline_unix_ms: deadline,
        ..full("blue")
    };
    handle.push(WATCH, sticky(5, vec![drained, full("green")]));
    sy.process.flush().unwrap();
    for _ in 0..10 {
        let ex = sy.send(with(&blue)).unwrap();
        assert_eq!(ex.stack(), Some("blue"), "{:?}", ex.decision());
        assert!(
            ex.set_cookie("sy_aff").is_none(),
            "a draining cookie was refreshed"
        );
        let ex = sy.send(Request::get("/")).unwrap();
        assert_eq!(
            ex.stack(),
            Some("green"),
            "a new user went to a draining stack"
        );
    }
    // Past the deadline the blue user moves, with a new cookie in the same response.
    sy.advance(Duration::from_secs(61)).unwrap();
    let ex = sy.send(with(&blue)).unwrap();
    assert_eq!(ex.stack(), Some("green"), "{:?}", ex.decision());
    let moved = ex.set_cookie("sy_aff").expect("a new cookie");
    assert_eq!(sy.send(with(&moved.value)).unwrap().stack(), Some("green"));

    // Evacuate green (blue back in service): the green user moves at once.
    let evacuated = StackState {
        evacuating: true,
        ..full("green")
    };
    handle.push(WATCH, sticky(6, vec![full("blue"), evacuated]));
    sy.process.flush().unwrap();
    let ex = sy.send(with(&green)).unwrap();
    assert_eq!(ex.stack(), Some("blue"), "{:?}", ex.decision());
    let moved = ex.set_cookie("sy_aff").expect("a new cookie");
    assert_eq!(sy.send(with(&moved.value)).unwrap().stack(), Some("blue"));
    assert!(sy.host_errors().is_empty());
}

#[test]
fn workers_recompile_the_policy_only_when_its_version_changes() {
    let peer = control_plane(1);
    let handle = peer.handle();
    let mut sy = Switchyard::builder()
        .singleton(control_config("control", "n1"))
        .grpc_peer(peer)
        .build()
        .unwrap();
    let compiled = |sy: &Switchyard| sy.logs_text(0).matches(") of snapshot ").count();
    assert_eq!(compiled(&sy), 1, "{}", sy.logs_text(0));
    let mut push = |s: Snapshot| {
        handle.push(WATCH, Reply::Message(s.encode()));
        sy.process.flush().unwrap();
        assert!(sy.host_errors().is_empty());
        compiled(&sy)
    };
    let at = |version, policy_version| Snapshot {
        version,
        policy_version,
        ..Snapshot::decode(&snapshot(version, 100, 0)).unwrap()
    };
    // Only the stack weights change: the policy stays compiled (and the split follows).
    assert_eq!(
        push(at(2, 1)),
        1,
        "a weights-only snapshot recompiled the policy"
    );
    // A new policy version is a new policy, even with the same text.
    assert_eq!(push(at(3, 3)), 2);
    // A reused policy version with another document (the control service's store was
    // replaced and its versions restarted) is another policy too.
    let replaced = Snapshot {
        policy_json: POLICY.replace("from-control", "replaced"),
        ..at(4, 3)
    };
    assert_eq!(push(replaced), 3);
    // From a control service that sends no policy version, the document decides.
    assert_eq!(push(at(5, 0)), 4);
    assert_eq!(push(at(6, 0)), 4);
    assert!(stacks_of(&mut sy, 0, 10).iter().all(|s| s == "blue"));
}

#[test]
fn reconfiguring_the_plugin_keeps_the_control_planes_policy_and_health() {
    let peer = control_plane(1);
    let handle = peer.handle();
    let mut sy = Switchyard::builder()
        .singleton(control_config("control", "n1"))
        .grpc_peer(peer)
        .build()
        .unwrap();
    // The control plane drains blue (weight 0): everything goes to green.
    handle.push(WATCH, Reply::Message(snapshot(2, 0, 100)));
    sy.process.flush().unwrap();
    assert!(stacks_of(&mut sy, 0, 20).iter().all(|s| s == "green"));
    // The plugin's own configuration is reloaded in place (its policy knows nothing of
    // the control plane's weights): the control plane's snapshot still decides.
    assert!(sy.reconfigure(0, POLICY).unwrap());
    let after = stacks_of(&mut sy, 0, 20);
    assert!(
        after.iter().all(|s| s == "green"),
        "plugin reload overrode the control plane: {after:?}"
    );
    // A bad reload is refused and changes nothing.
    assert!(!sy.reconfigure(0, "{\"stacks\": []}").unwrap());
    assert!(stacks_of(&mut sy, 0, 20).iter().all(|s| s == "green"));
}

/// Envoy allocates a new metric for every `define_metric` call, even for a name it has:
/// policy pushes (each one compiled again) must not define the same names again, or
/// Envoy's heap grows per push (the 30-minute soak found ~3.5 KB per push).
#[test]
fn policy_pushes_define_each_metric_name_once_per_vm() {
    let peer = control_plane(1);
    let handle = peer.handle();
    let mut sy = Switchyard::builder()
        .singleton(control_config("control", "n1"))
        .grpc_peer(peer)
        .build()
        .unwrap();
    assert_eq!(stacks_of(&mut sy, 0, 5), vec!["green"; 5]);
    let after_first = sy.metric_definitions();
    sy.advance(Duration::from_secs(2)).unwrap(); // counters reach the host on ticks
    let routed = sy.metric("switchyard.stack.green.rq_total");
    assert!(routed >= 5, "green requests counted: {routed}");
    for v in 2..22u64 {
        let mut s = Snapshot::decode(&snapshot(v, 0, 100)).unwrap();
        // A distinct policy each time (its name), so every push is compiled again.
        s.policy_version = v;
        s.policy_json = POLICY.replace("from-control", &format!("push-{v}"));
        handle.push(WATCH, Reply::Message(s.encode()));
        sy.process.flush().unwrap();
    }
    assert!(
        sy.singleton_logs().contains("push-21") || sy.logs_text(0).contains("push-21"),
        "the last policy was compiled"
    );
    assert_eq!(
        sy.metric_definitions(),
        after_first,
        "metric names defined again by 20 policy pushes"
    );
    // The ids kept still count.
    assert_eq!(stacks_of(&mut sy, 0, 5), vec!["green"; 5]);
    sy.advance(Duration::from_secs(2)).unwrap();
    assert_eq!(sy.metric("switchyard.stack.green.rq_total"), routed + 5);
}
