//! The proxy-wasm ABI boundary as a fuzz target: one byte string becomes a sequence of
//! host events fed to the built filter (`switchyard_filter.wasm`) on the wasmtime host
//! (`tests/proxy-host`): one singleton and two workers sharing data, like Envoy.
//!
//! What is random is what the host calls hand the filter: request header maps (any
//! bytes, repeats, huge values), the `source.address` property, Watch-stream messages
//! (garbage, or snapshots with random weights, health, drains and policies), gRPC close
//! statuses, Report call results, telemetry-queue items, the shared-data values workers
//! read, plugin configurations on reconfigure, health-probe responses, and time. Host-call
//! *statuses* stay within the ABI contract Envoy keeps: the SDK's own `hostcalls` panic on
//! a status the contract rules out, so injecting those would test the SDK, not us.
//!
//! Invariants after every event: no VM trapped, no host error (bad pointer, malformed
//! buffer, double local reply), and every request either goes upstream with exactly one
//! `x-switchyard-stack` naming a policy stack, or gets a local reply — never both,
//! never paused forever.
//!
//! Included with `#[path]` by `examples/abi.rs` (the random search `make fuzz` runs) and
//! `tests/abi.rs` (the corpus replay in `make test`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_filter::snapshot::{Snapshot, StackState, WatchRequest};
use switchyard_proxy_host::fixture::control_config;
use switchyard_proxy_host::grpc::HttpReply;
use switchyard_proxy_host::peer::StreamEvent;
use switchyard_proxy_host::{Reply, Request, ScriptHandle, ScriptedPeer, Switchyard};

const WATCH: &str = "/switchyard.v1.DataPlane/Watch";
const REPORT: &str = "/switchyard.v1.DataPlane/Report";
const VM_ID: &str = "switchyard";
const STACKS: &[&str] = &["blue", "green", "canary", "eu"];

/// The demo policy with health probes on two stacks, so probe responses are in play.
fn policy() -> String {
    include_str!("../../examples/policies/demo.json")
        .replace(
            r#"{ "name": "blue",   "region": "us","#,
            r#"{ "name": "blue",   "region": "us", "health_path": "/healthz","#,
        )
        .replace(
            r#"{ "name": "eu",     "region": "eu","#,
            r#"{ "name": "eu",     "region": "eu", "health_path": "/healthz","#,
        )
}

const NAMES: &[&str] = &[
    "x-geo-country",
    "x-partner-key",
    "user-agent",
    "x-jwt-cohort",
    "x-jwt-sub",
    "cookie",
    "x-switchyard-stack",
    ":path",
    "x-forwarded-for",
    "authorization",
];

/// Reads the input as a stream of small decisions; zeros once it runs out.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn done(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u8()).min(max).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }
}

/// What the scripted control plane and the probe responder answer; changed by events.
#[derive(Default)]
struct Answers {
    report_fails: bool,
    probe: Option<u16>,
}

struct World {
    sy: Switchyard,
    watch: ScriptHandle,
    answers: Arc<Mutex<Answers>>,
    version: u64,
    policy: String,
}

impl World {
    fn new() -> Result<Self, String> {
        let policy = policy();
        let answers = Arc::new(Mutex::new(Answers::default()));
        let first = Snapshot {
            version: 1,
            policy_version: 1,
            policy_json: policy.clone(),
            stacks: STACKS
                .iter()
                .map(|s| StackState {
                    name: s.to_string(),
                    weight_percent: 100,
                    healthy: true,
                    ..Default::default()
                })
                .collect(),
            rule_stacks: Vec::new(),
        }
        .encode();
        let a = Arc::clone(&answers);
        let peer = ScriptedPeer::new()
            .stream(WATCH, move |_, ev| match ev {
                StreamEvent::Message(m)
                    if WatchRequest::decode(m).is_ok_and(|r| r.ack_version == 0) =>
                {
                    vec![
                        Reply::InitialMetadata(vec![]),
                        Reply::Message(first.clone()),
                    ]
                }
                _ => vec![],
            })
            .unary(REPORT, move |_, _, _| {
                if a.lock().map(|a| a.report_fails).unwrap_or(false) {
                    Err((14, "unavailable".into()))
                } else {
                    Ok(Vec::new())
                }
            });
        let watch = peer.handle();
        let mut sy = Switchyard::builder()
            .policy(policy.clone())
            .singleton(control_config("control", "fuzz"))
            .workers(2)
            .grpc_peer(peer)
            .log_capacity(64)
            .build()
            .map_err(|e| format!("start: {e}"))?;
        let a = Arc::clone(&answers);
        sy.process.set_http_responder(move |_, _| {
            match a.lock().map(|a| a.probe).unwrap_or(None) {
                Some(status) => Some(HttpReply::status(status, "")),
                None => Some(HttpReply::Failed),
            }
        });
        Ok(World {
            sy,
            watch,
            answers,
            version: 1,
            policy,
        })
    }

    fn check_vms(&self, after: &str) -> Result<(), String> {
        for id in self.sy.process.vm_ids() {
            let vm = self.sy.process.vm_ref(id);
            if vm.has_failed() {
                return Err(format!(
                    "{} trapped after {after}: {}",
                    vm.name(),
                    vm.logs_text()
                ));
            }
            if let Some(e) = vm.host_errors().first() {
                return Err(format!("{}: host error after {after}: {e}", vm.name()));
            }
        }
        Ok(())
    }

    fn request(&mut self, inp: &mut Input) -> Result<(), String> {
        let worker = usize::from(inp.u8() % 2);
        let mut req = Request::get("/");
        for _ in 0..inp.u8() % 8 {
            let name = inp.pick(NAMES);
            let value = match inp.u8() % 4 {
                0 => inp.bytes(64).to_vec(),
                1 => vec![b'a' + inp.u8() % 26; usize::from(inp.u16()) % 70_000],
                2 => inp
                    .pick(&[
                        &b"DE"[..],
                        b"US",
                        b"beta",
                        b"premium",
                        b"SwitchyardShop-iOS",
                    ])
                    .to_vec(),
                _ => format!("sy_aff=v1.k1.{}.1.9999999999.AAAA", inp.pick(STACKS)).into_bytes(),
            };
            req = if name == ":path" {
                req.path(&String::from_utf8_lossy(&value))
            } else {
                req.raw_header(name.as_bytes(), &value)
            };
        }
        match inp.u8() % 4 {
            0 => {}
            1 => req = req.source(&format!("10.20.{}.{}:443", inp.u8(), inp.u8())),
            2 => req = req.source(&String::from_utf8_lossy(inp.bytes(48))),
            _ => {
                req = req.property(
                    "source.address",
                    switchyard_proxy_host::PropValue::Bytes(inp.bytes(48).to_vec()),
                )
            }
        }
        let ex = self
            .sy
            .send_on(worker, req)
            .map_err(|e| format!("request: {e}"))?;
        self.check_vms("a request")?;
        if ex.paused {
            return Err("a request stayed paused".into());
        }
        match (&ex.upstream_request, &ex.local_response) {
            (Some(_), None) => {
                let stacks = ex.upstream_headers("x-switchyard-stack");
                if stacks.len() != 1 || !STACKS.contains(&stacks[0]) {
                    return Err(format!("forwarded with x-switchyard-stack {stacks:?}"));
                }
            }
            (None, Some(_)) => {}
            (up, local) => {
                return Err(format!(
                    "request both or neither forwarded and answered: {:?} {:?}",
                    up.is_some(),
                    local.is_some()
                ))
            }
        }
        Ok(())
    }

    fn snapshot(&mut self, inp: &mut Input) -> Vec<u8> {
        self.version += u64::from(inp.u8() % 3);
        let policy = match inp.u8() % 4 {
            0 => String::from_utf8_lossy(inp.bytes(200)).into_owned(),
            1 => String::new(),
            _ => self.policy.clone(),
        };
        let stacks = (0..inp.u8() % 6)
            .map(|_| StackState {
                name: if inp.u8().is_multiple_of(8) {
                    String::from_utf8_lossy(inp.bytes(12)).into_owned()
                } else {
                    inp.pick(STACKS).to_string()
                },
                weight_percent: u32::from(inp.u8()),
                healthy: !inp.u8().is_multiple_of(4),
                reason: String::new(),
                draining: inp.u8().is_multiple_of(4),
                drain_deadline_unix_ms: u64::from(inp.u16()) * 1_000_000,
                evacuating: inp.u8().is_multiple_of(8),
                rule: String::new(),
            })
            .collect();
        // Per-rule factors (rule-scoped rollouts): known stacks on a known or random rule.
        let rule_stacks = (0..inp.u8() % 3)
            .map(|_| StackState {
                name: inp.pick(STACKS).to_string(),
                rule: if inp.u8().is_multiple_of(2) {
                    "checkout".to_string()
                } else {
                    String::from_utf8_lossy(inp.bytes(8)).into_owned()
                },
                weight_percent: u32::from(inp.u8()),
                healthy: true,
                evacuating: inp.u8().is_multiple_of(4),
                ..Default::default()
            })
            .collect();
        Snapshot {
            version: self.version,
            policy_version: if inp.u8().is_multiple_of(2) {
                self.version
            } else {
                0
            },
            policy_json: policy,
            stacks,
            rule_stacks,
        }
        .encode()
    }

    fn event(&mut self, inp: &mut Input) -> Result<(), String> {
        let what = match inp.u8() % 10 {
            0..=2 => return self.request(inp),
            3 => {
                let m = inp.bytes(255).to_vec();
                self.watch.push(WATCH, Reply::Message(m));
                "a garbage Watch message"
            }
            4 => {
                let m = self.snapshot(inp);
                self.watch.push(WATCH, Reply::Message(m));
                "a snapshot"
            }
            5 => {
                let status = u32::from(inp.u8() % 17);
                self.watch.push(WATCH, Reply::Close(status, "fuzz".into()));
                "a Watch close"
            }
            6 => {
                let ms = u64::from(inp.u16()) * 4;
                self.sy
                    .advance(Duration::from_millis(ms))
                    .map_err(|e| format!("advance: {e}"))?;
                "time passing"
            }
            7 => {
                let item = inp.bytes(255).to_vec();
                let shared = self.sy.process.shared();
                let _ = shared.enqueue(
                    VM_ID,
                    switchyard_filter::shared_data::TELEMETRY_QUEUE,
                    &item,
                );
                "a telemetry queue item"
            }
            8 => {
                let key = if inp.u8().is_multiple_of(2) {
                    switchyard_filter::shared_data::SNAPSHOT_KEY
                } else {
                    switchyard_filter::shared_data::VERSION_KEY
                };
                let value = inp.bytes(255).to_vec();
                let _ = self
                    .sy
                    .process
                    .shared()
                    .set_shared_data(VM_ID, key, &value, 0);
                "a shared-data value"
            }
            _ => {
                match inp.u8() % 4 {
                    0 => {
                        let config = inp.bytes(255).to_vec();
                        let w = self.sy.workers[usize::from(inp.u8() % 2)];
                        // Envoy keeps the old configuration when on_configure says no.
                        let _ = self.sy.process.vm(w).reconfigure(&config);
                    }
                    1 => {
                        if let Ok(mut a) = self.answers.lock() {
                            a.report_fails = !a.report_fails;
                        }
                    }
                    _ => {
                        let probe = inp.pick(&[None, Some(200), Some(503), Some(0), Some(999)]);
                        if let Ok(mut a) = self.answers.lock() {
                            a.probe = probe;
                        }
                    }
                }
                "a configuration or answer change"
            }
        };
        self.sy.process.flush().map_err(|e| format!("flush: {e}"))?;
        self.check_vms(what)
    }
}

/// Runs one input; `Err` names the broken invariant.
pub fn run(data: &[u8]) -> Result<(), String> {
    let mut world = World::new()?;
    world.check_vms("start")?;
    let mut inp = Input { data };
    let mut events = 0;
    while !inp.done() && events < 200 {
        world.event(&mut inp)?;
        events += 1;
    }
    // Whatever happened, the filter still serves.
    let mut last = Input {
        data: &[0, 0, 0, 0],
    };
    world.request(&mut last)
}
