//! The host calls of the shared-data protocol: every read and write of the singleton's
//! and the workers' shared keys and queues goes through here, in the order
//! [`crate::shared_data`] states (snapshot before version, register before read, CAS on
//! the worker count, bounded drains). No other adapter module names a key or a queue.

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use crate::shared_data::{
    decode_version, decode_workers, encode_version, encode_workers, wake_queue_name,
    MAX_CAS_ATTEMPTS, MAX_DRAIN, MAX_WORKERS, SNAPSHOT_KEY, TELEMETRY_QUEUE, VERSION_KEY,
    WORKERS_KEY,
};

/// This VM's id (the namespace it shares with the singleton).
pub fn vm_id() -> String {
    hostcalls::get_property(vec!["plugin_vm_id"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "switchyard".into())
}

/// The version currently announced in shared data (0: none).
pub fn read_version() -> u64 {
    match hostcalls::get_shared_data(VERSION_KEY) {
        Ok((Some(b), _)) => decode_version(&b),
        _ => 0,
    }
}

/// The snapshot bytes currently in shared data.
pub fn read_snapshot() -> Option<Vec<u8>> {
    match hostcalls::get_shared_data(SNAPSHOT_KEY) {
        Ok((Some(b), _)) => Some(b),
        _ => None,
    }
}

/// Singleton: publish a validated snapshot — its bytes, then its version — and wake the
/// workers. Nothing is announced if the snapshot could not be written.
pub fn publish(snapshot: &[u8], version: u64) -> Result<(), Status> {
    hostcalls::set_shared_data(SNAPSHOT_KEY, Some(snapshot), None)?;
    hostcalls::set_shared_data(VERSION_KEY, Some(&encode_version(version)), None)?;
    wake_workers();
    Ok(())
}

/// Poke every registered worker's wake queue. The count is read after the version was
/// written, so a worker missing from it registers later and reads the snapshot itself.
fn wake_workers() {
    let workers = match hostcalls::get_shared_data(WORKERS_KEY) {
        Ok((Some(b), _)) => decode_workers(&b).min(MAX_WORKERS),
        _ => 0,
    };
    let vm = vm_id();
    for i in 0..workers {
        if let Ok(Some(q)) = hostcalls::resolve_shared_queue(&vm, &wake_queue_name(i)) {
            let _ = hostcalls::enqueue_shared_queue(q, Some(&[]));
        }
    }
}

/// Worker: take the next worker number (compare-and-swap on the shared count) and
/// register its wake queue. Call before the first snapshot read. `None` if the host
/// refuses or too many workers registered; the worker then relies on its tick.
pub fn register_wake_queue() -> Option<u32> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (n, cas) = match hostcalls::get_shared_data(WORKERS_KEY) {
            Ok((Some(b), cas)) => (decode_workers(&b), cas),
            Ok((None, cas)) => (0, cas),
            Err(_) => return None,
        };
        if n >= MAX_WORKERS {
            warn!("{MAX_WORKERS} worker VMs registered already; this one re-checks the snapshot on its tick");
            return None;
        }
        match hostcalls::set_shared_data(WORKERS_KEY, Some(&encode_workers(n + 1)), cas) {
            Ok(()) => return hostcalls::register_shared_queue(&wake_queue_name(n)).ok(),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    warn!("could not take a worker number in {MAX_CAS_ATTEMPTS} attempts; this VM re-checks the snapshot on its tick");
    None
}

/// Worker: empty the wake queue (the messages carry nothing; one version read follows).
pub fn drain_wake_queue(queue: u32) {
    for _ in 0..MAX_DRAIN {
        if !matches!(hostcalls::dequeue_shared_queue(queue), Ok(Some(_))) {
            break;
        }
    }
}

/// Singleton: own the telemetry queue.
pub fn register_telemetry_queue() -> Option<u32> {
    hostcalls::register_shared_queue(TELEMETRY_QUEUE).ok()
}

/// Singleton: the next telemetry message, if any.
pub fn next_telemetry(queue: u32) -> Option<Vec<u8>> {
    match hostcalls::dequeue_shared_queue(queue) {
        Ok(Some(m)) => Some(m),
        _ => None,
    }
}

/// Worker: the singleton's telemetry queue, resolved once it exists.
#[derive(Default)]
pub struct TelemetrySender {
    queue: Option<u32>,
}

impl TelemetrySender {
    /// Queue one encoded `TelemetryBatch`; `false` if there is no singleton queue (yet)
    /// or the host refused.
    pub fn send(&mut self, batch: &[u8]) -> bool {
        if self.queue.is_none() {
            self.queue = hostcalls::resolve_shared_queue(&vm_id(), TELEMETRY_QUEUE)
                .ok()
                .flatten();
        }
        self.queue
            .is_some_and(|q| hostcalls::enqueue_shared_queue(q, Some(batch)).is_ok())
    }
}
