//! Process-wide state a simulated Envoy shares between its VMs: the virtual clock,
//! shared data (keyed by vm_id, with CAS), shared queues, stats and foreign functions.
//! One `Process` owns one `Shared`; nothing here is global, so tests run in parallel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::{MetricKind, Status};

/// A foreign function a guest can reach with `proxy_call_foreign_function`.
pub type ForeignFn = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync>;

/// Shared data of one vm_id: key → (value, cas).
pub(crate) type SharedMap = HashMap<Vec<u8>, (Vec<u8>, u32)>;

/// One stat, as Envoy keeps it: process-wide, addressed by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    /// Counter or gauge value.
    pub value: i64,
    /// Every value recorded into a histogram, in order.
    pub samples: Vec<u64>,
}

#[derive(Debug)]
#[allow(dead_code)] // vm_id and name are kept for debugging output.
pub(crate) struct Queue {
    pub vm_id: String,
    pub name: String,
    /// Index of the VM whose root context registered the queue; it alone is woken.
    pub owner_vm: usize,
    pub owner_context: u32,
    pub items: VecDeque<Vec<u8>>,
}

pub(crate) struct Inner {
    /// Virtual wall clock, nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// Virtual monotonic clock, nanoseconds since the process started.
    pub mono_ns: u64,
    /// vm_id → key → (value, cas).
    pub shared_data: HashMap<String, SharedMap>,
    pub next_cas: u32,
    pub queues: BTreeMap<u32, Queue>,
    pub queue_tokens: HashMap<(String, String), u32>,
    pub next_queue_token: u32,
    /// Wake-ups owed to queue registrants: (vm index, root context id, queue token).
    pub pending_queue_ready: Vec<(usize, u32, u32)>,
    pub metrics: Vec<Metric>,
    pub metric_by_name: HashMap<String, usize>,
    /// `proxy_define_metric` calls, counted: Envoy (unlike this host) allocates a new
    /// metric per call, even for a name it has, so a guest must define each name once.
    pub metric_definitions: u64,
    pub foreign: HashMap<String, ForeignFn>,
    /// Total wasm-level CAS mismatches, so tests can see contention.
    pub cas_mismatches: u64,
    /// Clusters HTTP calls may target; `None` accepts any name.
    pub known_clusters: Option<Vec<String>>,
}

/// Handle to the process-wide state; cloned into every VM's store.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    pub(crate) fn new(start_unix_ns: u64) -> Self {
        Shared(Arc::new(Mutex::new(Inner {
            unix_ns: start_unix_ns,
            mono_ns: 0,
            shared_data: HashMap::new(),
            next_cas: 1,
            queues: BTreeMap::new(),
            queue_tokens: HashMap::new(),
            next_queue_token: 1,
            pending_queue_ready: Vec::new(),
            metrics: Vec::new(),
            metric_by_name: HashMap::new(),
            metric_definitions: 0,
            foreign: HashMap::new(),
            cas_mismatches: 0,
            known_clusters: None,
        })))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock has already failed; keep going.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now_unix_nanos(&self) -> u64 {
        self.lock().unix_ns
    }

    pub fn monotonic_nanos(&self) -> u64 {
        self.lock().mono_ns
    }

    /// Reads a shared-data value and its CAS as a guest on `vm_id` would.
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock().get_shared(vm_id, key.as_bytes())
    }

    /// Writes shared data from the test side (cas 0 = unconditional).
    pub fn set_shared_data(&self, vm_id: &str, key: &str, value: &[u8], cas: u32) -> Status {
        self.lock().set_shared(vm_id, key.as_bytes(), value, cas)
    }

    pub fn metric(&self, name: &str) -> Option<Metric> {
        let g = self.lock();
        g.metric_by_name.get(name).map(|i| g.metrics[*i].clone())
    }

    pub fn metrics(&self) -> Vec<Metric> {
        self.lock().metrics.clone()
    }

    /// `proxy_define_metric` calls so far, by every VM.
    pub fn metric_definitions(&self) -> u64 {
        self.lock().metric_definitions
    }

    pub fn register_foreign_function(&self, name: &str, f: ForeignFn) {
        self.lock().foreign.insert(name.to_string(), f);
    }

    /// Items waiting in a queue (by vm_id and name), oldest first, without removing them.
    pub fn queue_items(&self, vm_id: &str, name: &str) -> Option<Vec<Vec<u8>>> {
        let g = self.lock();
        let token = g.queue_tokens.get(&(vm_id.to_string(), name.to_string()))?;
        Some(g.queues.get(token)?.items.iter().cloned().collect())
    }

    /// Test side enqueue, exactly as a guest's `proxy_enqueue_shared_queue` would.
    pub fn enqueue(&self, vm_id: &str, name: &str, value: &[u8]) -> Status {
        let mut g = self.lock();
        match g
            .queue_tokens
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
        {
            Some(token) => g.enqueue(token, value),
            None => Status::NotFound,
        }
    }

    /// Restricts HTTP calls to these clusters (Envoy answers others with BadArgument).
    pub fn set_known_clusters(&self, clusters: &[&str]) {
        self.lock().known_clusters = Some(clusters.iter().map(|s| s.to_string()).collect());
    }

    pub fn cas_mismatches(&self) -> u64 {
        self.lock().cas_mismatches
    }
}

impl Inner {
    pub(crate) fn get_shared(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.shared_data.get(vm_id)?.get(key).cloned()
    }

    fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// Envoy's rule: a non-zero CAS must equal the stored one when the key exists; a new
    /// key is created whatever the CAS. Every write gets a fresh CAS.
    pub(crate) fn set_shared(&mut self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Status {
        let new_cas = self.next_cas();
        let map = self.shared_data.entry(vm_id.to_string()).or_default();
        match map.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    self.cas_mismatches += 1;
                    return Status::CasMismatch;
                }
                *entry = (value.to_vec(), new_cas);
            }
            None => {
                map.insert(key.to_vec(), (value.to_vec(), new_cas));
            }
        }
        Status::Ok
    }

    pub(crate) fn register_queue(&mut self, vm_id: &str, name: &str, vm: usize, ctx: u32) -> u32 {
        let key = (vm_id.to_string(), name.to_string());
        if let Some(token) = self.queue_tokens.get(&key).copied() {
            if let Some(q) = self.queues.get_mut(&token) {
                q.owner_vm = vm;
                q.owner_context = ctx;
            }
            return token;
        }
        let token = self.next_queue_token;
        self.next_queue_token += 1;
        self.queue_tokens.insert(key, token);
        self.queues.insert(
            token,
            Queue {
                vm_id: vm_id.to_string(),
                name: name.to_string(),
                owner_vm: vm,
                owner_context: ctx,
                items: VecDeque::new(),
            },
        );
        token
    }

    pub(crate) fn enqueue(&mut self, token: u32, value: &[u8]) -> Status {
        let Some(q) = self.queues.get_mut(&token) else {
            return Status::NotFound;
        };
        q.items.push_back(value.to_vec());
        let wake = (q.owner_vm, q.owner_context, token);
        self.pending_queue_ready.push(wake);
        Status::Ok
    }

    pub(crate) fn define_metric(&mut self, kind: MetricKind, name: &str) -> usize {
        self.metric_definitions += 1;
        if let Some(i) = self.metric_by_name.get(name) {
            return *i;
        }
        self.metrics.push(Metric {
            name: name.to_string(),
            kind,
            value: 0,
            samples: Vec::new(),
        });
        let i = self.metrics.len() - 1;
        self.metric_by_name.insert(name.to_string(), i);
        i
    }
}
