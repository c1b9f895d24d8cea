//! A simulated Envoy process: several VMs (a singleton and N workers) that share one
//! virtual clock, shared data, shared queues and stats. Time moves only when the test
//! calls `advance`; queue wake-ups and gRPC replies are delivered by `flush`, the way
//! Envoy posts them to a dispatcher rather than running them inside the guest's call.

use std::time::Duration;

use crate::error::HostError;
use crate::grpc::{GrpcInbound, GrpcOutbound, HttpCall, HttpReply};
use crate::shared::Shared;
use crate::vm::{Vm, VmSpec};

/// Index of a VM in its process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmId(pub usize);

/// A test-side gRPC peer: sees what guests send and answers.
pub trait GrpcPeer: Send {
    /// Called for each outbound event, in order.
    fn outbound(&mut self, vm: VmId, event: &GrpcOutbound);
    /// Replies ready for a VM now.
    fn poll(&mut self, vm: VmId) -> Vec<GrpcInbound>;
}

/// 2026-01-05T00:00:00Z, a Monday: every process starts here unless told otherwise.
pub const DEFAULT_START_UNIX_SECS: u64 = 1_767_571_200;

/// The simulated process.
pub struct Process {
    shared: Shared,
    vms: Vec<Vm>,
    peer: Option<Box<dyn GrpcPeer>>,
    http: Option<Box<HttpResponder>>,
}

/// Answers HTTP calls (health probes) for the whole process; `None` leaves a call
/// pending until its timeout.
pub type HttpResponder = dyn FnMut(VmId, &HttpCall) -> Option<HttpReply> + Send;

impl Default for Process {
    fn default() -> Self {
        Process::new()
    }
}

impl Process {
    pub fn new() -> Self {
        Process::starting_at(DEFAULT_START_UNIX_SECS * 1_000_000_000)
    }

    /// A process whose virtual wall clock starts at `unix_nanos`.
    pub fn starting_at(unix_nanos: u64) -> Self {
        Process {
            shared: Shared::new(unix_nanos),
            vms: Vec::new(),
            peer: None,
            http: None,
        }
    }

    /// Process-wide state: shared data, queues, stats, foreign functions, clock.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Starts a VM; on success it has run `proxy_on_vm_start` and `proxy_on_configure`.
    pub fn spawn(&mut self, spec: VmSpec) -> Result<VmId, HostError> {
        let id = VmId(self.vms.len());
        let vm = Vm::start(spec, self.shared.clone(), id.0)?;
        self.vms.push(vm);
        // Whatever the new VM queued or opened is delivered like any other event.
        self.flush()?;
        Ok(id)
    }

    pub fn vm(&mut self, id: VmId) -> &mut Vm {
        &mut self.vms[id.0]
    }

    pub fn vm_ref(&self, id: VmId) -> &Vm {
        &self.vms[id.0]
    }

    pub fn vm_ids(&self) -> Vec<VmId> {
        (0..self.vms.len()).map(VmId).collect()
    }

    /// Installs the gRPC peer that answers every VM's calls and streams.
    pub fn set_grpc_peer(&mut self, peer: impl GrpcPeer + 'static) {
        self.peer = Some(Box::new(peer));
    }

    /// Installs what answers HTTP calls (e.g. `|_, call| Some(HttpReply::status(200, ""))`).
    pub fn set_http_responder(
        &mut self,
        f: impl FnMut(VmId, &HttpCall) -> Option<HttpReply> + Send + 'static,
    ) {
        self.http = Some(Box::new(f));
    }

    pub fn set_grpc_peer_boxed(&mut self, peer: Box<dyn GrpcPeer>) {
        self.peer = Some(peer);
    }

    pub fn take_grpc_peer(&mut self) -> Option<Box<dyn GrpcPeer>> {
        self.peer.take()
    }

    /// Virtual wall-clock time, nanoseconds since the Unix epoch.
    pub fn now_unix_nanos(&self) -> u64 {
        self.shared.now_unix_nanos()
    }

    pub fn now_unix_secs(&self) -> u64 {
        self.now_unix_nanos() / 1_000_000_000
    }

    /// Sends a request through one VM, then delivers whatever it queued.
    pub fn send(
        &mut self,
        vm: VmId,
        req: crate::http::Request,
    ) -> Result<crate::http::Exchange, HostError> {
        let ex = self.vms[vm.0].send(req)?;
        self.flush()?;
        Ok(ex)
    }

    fn set_clock(&mut self, mono_ns: u64) {
        let mut g = self.shared.lock();
        if mono_ns > g.mono_ns {
            let d = mono_ns - g.mono_ns;
            g.mono_ns = mono_ns;
            g.unix_ns += d;
        }
    }

    /// Moves virtual time forward. Every VM with a tick period gets `proxy_on_tick` once
    /// per elapsed period, in time order (VMs due at the same instant in VM order); gRPC
    /// calls past their timeout fail with DEADLINE_EXCEEDED; queued events are flushed
    /// after each step.
    pub fn advance(&mut self, d: Duration) -> Result<(), HostError> {
        let target = self.shared.monotonic_nanos() + d.as_nanos() as u64;
        loop {
            // (time, vm, what): what = 0 tick, 1 gRPC deadline, 2 HTTP deadline.
            let mut next: Option<(u64, usize, u8, u32)> = None;
            for (i, vm) in self.vms.iter().enumerate() {
                if vm.has_failed() {
                    continue;
                }
                let mut consider = |t: u64, what: u8, token: u32| {
                    if t <= target && next.is_none_or(|(n, _, _, _)| t < n) {
                        next = Some((t, i, what, token));
                    }
                };
                if let Some(t) = vm.next_tick() {
                    consider(t, 0, 0);
                }
                if let Some((t, token)) = vm.next_grpc_deadline() {
                    consider(t, 1, token);
                }
                if let Some((t, token)) = vm.next_http_deadline() {
                    consider(t, 2, token);
                }
            }
            let Some((t, i, what, token)) = next else {
                break;
            };
            self.set_clock(t);
            match what {
                0 => self.vms[i].tick(t)?,
                1 => self.vms[i].deliver_grpc(GrpcInbound::CallFailed {
                    token,
                    status: crate::abi::grpc_status::DEADLINE_EXCEEDED,
                    message: "deadline exceeded".into(),
                })?,
                _ => self.vms[i].deliver_http(token, HttpReply::Failed)?,
            }
            self.flush()?;
        }
        self.set_clock(target);
        self.flush()?;
        Ok(())
    }

    /// Sets the wall clock to an absolute time (monotonic time moves by the same amount;
    /// going backwards moves only the wall clock, as an NTP step would).
    pub fn advance_to_unix_secs(&mut self, secs: u64) -> Result<(), HostError> {
        let now = self.now_unix_nanos();
        let want = secs * 1_000_000_000;
        if want >= now {
            self.advance(Duration::from_nanos(want - now))
        } else {
            self.shared.lock().unix_ns = want;
            Ok(())
        }
    }

    /// Delivers queue wake-ups and the gRPC peer's replies until nothing is left.
    /// Returns how many callbacks ran.
    pub fn flush(&mut self) -> Result<usize, HostError> {
        let mut delivered = 0;
        for _round in 0..10_000 {
            let mut progress = false;
            let wakes = std::mem::take(&mut self.shared.lock().pending_queue_ready);
            for (vm, ctx, token) in wakes {
                if let Some(v) = self.vms.get_mut(vm) {
                    v.queue_ready(ctx, token)?;
                    delivered += 1;
                    progress = true;
                }
            }
            if let Some(http) = self.http.as_mut() {
                for (i, vm) in self.vms.iter_mut().enumerate() {
                    for call in vm.take_http_calls() {
                        if let Some(reply) = http(VmId(i), &call) {
                            vm.deliver_http(call.token, reply)?;
                            delivered += 1;
                            progress = true;
                        }
                    }
                }
            }
            if let Some(peer) = self.peer.as_mut() {
                for (i, vm) in self.vms.iter_mut().enumerate() {
                    for ev in vm.take_grpc_outbox() {
                        peer.outbound(VmId(i), &ev);
                    }
                    for ev in peer.poll(VmId(i)) {
                        vm.deliver_grpc(ev)?;
                        delivered += 1;
                        progress = true;
                    }
                }
            }
            for vm in self.vms.iter_mut() {
                let n = vm.resume_into_completed()?;
                if n > 0 {
                    delivered += n;
                    progress = true;
                }
            }
            if !progress {
                return Ok(delivered);
            }
        }
        Err(HostError::Usage(
            "flush: events kept coming after 10000 rounds (a feedback loop?)".into(),
        ))
    }

    /// Flushes repeatedly until `done` holds or `real_timeout` passes, for peers that
    /// answer from other threads (the tonic bridge).
    pub fn flush_until(
        &mut self,
        real_timeout: Duration,
        mut done: impl FnMut(&mut Process) -> bool,
    ) -> Result<bool, HostError> {
        let deadline = std::time::Instant::now() + real_timeout;
        loop {
            self.flush()?;
            if done(self) {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
