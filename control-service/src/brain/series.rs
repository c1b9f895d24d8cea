//! The per-stack time series the brain judges on. Every node's telemetry batch (about
//! one a second) is folded into the [`StackWindow`] of its aligned window
//! (`window_ms`, default 10 s); closed windows are persisted as a ring in the store,
//! `series/<stack>/<key_u64(start_ms)>` → JSON, and windows older than the retention
//! (default 7 days) are deleted on each flush. Baselines therefore survive a restart.
//!
//! Decides which window a batch belongs to, when a window is closed (its end plus a
//! grace period for late nodes) and what is kept. It never sleeps and never reads the
//! clock: callers pass `now` ([`Series::ingest`], [`Series::flush`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::clock::UnixMs;
use super::signals::{Latency, StackWindow};
use crate::store::{key_u64, Batch, Store, StoreError};

/// Key prefix of the series in the store.
pub const PREFIX: &str = "series/";
/// Bounds on what the open (unpersisted) windows may hold.
const MAX_OPEN_WINDOWS: usize = 64;
const MAX_STACKS: usize = 256;
/// Distinct KPI names and rule ids kept per stack and window.
const MAX_NAMES: usize = 256;
const MAX_STACK_NAME: usize = 64;

/// How the series is cut and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesSettings {
    /// Length of a window (ms); windows start at multiples of it.
    pub window_ms: u64,
    /// Windows whose start is older than this (ms before now) are deleted.
    pub retention_ms: u64,
    /// A window is persisted once this long (ms) past its end, so that late nodes'
    /// batches still count.
    pub grace_ms: u64,
}

impl Default for SeriesSettings {
    fn default() -> Self {
        Self {
            window_ms: 10_000,
            retention_ms: 7 * 86_400_000,
            grace_ms: 3_000,
        }
    }
}

/// One node's telemetry batch, as the series reads it (the gRPC layer converts the wire
/// form into this).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeBatch {
    pub node_id: String,
    /// End of the node's window (Unix ms, node clock; 0 = unknown).
    pub window_end_ms: UnixMs,
    pub stacks: Vec<StackSample>,
}

/// One stack's counts in a [`NodeBatch`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StackSample {
    pub stack: String,
    pub requests: u64,
    /// Responses 5xx (or reset).
    pub errors: u64,
    pub local_replies: u64,
    pub breaker_opens: u64,
    pub latency: Latency,
    pub kpis: BTreeMap<String, u64>,
    pub by_rule: BTreeMap<String, u64>,
    pub new_users: u64,
    pub sticky_requests: u64,
}

/// Why a batch was not (fully) folded in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("window starting at {start_ms} is already persisted; batch of node '{node}' is late")]
    Late { node: String, start_ms: UnixMs },
    #[error("stack name '{0}' is not 1-64 characters of [A-Za-z0-9_-]")]
    StackName(String),
    #[error("too many open windows or stacks; batch dropped")]
    Full,
}

#[derive(Default)]
struct Inner {
    /// Open windows: start → stack → window.
    open: BTreeMap<UnixMs, BTreeMap<String, StackWindow>>,
    /// Every window starting before this was persisted (or handed to a flush).
    closed_before: UnixMs,
}

/// The series of every stack. Shared (`Arc`); methods take `&self`.
pub struct Series {
    store: Arc<dyn Store>,
    settings: SeriesSettings,
    inner: Mutex<Inner>,
}

fn stack_prefix(stack: &str) -> String {
    format!("{PREFIX}{stack}/")
}

fn window_key(stack: &str, start_ms: UnixMs) -> String {
    format!("{PREFIX}{stack}/{}", key_u64(start_ms))
}

fn valid_stack(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_STACK_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode(key: &str, bytes: &[u8]) -> Result<StackWindow, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("{key}: {e}")))
}

fn add_named(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        if let Some(c) = into.get_mut(k) {
            *c = c.saturating_add(*v);
        } else if into.len() < MAX_NAMES {
            into.insert(k.clone(), *v);
        }
    }
}

impl Series {
    pub fn new(store: Arc<dyn Store>, settings: SeriesSettings) -> Self {
        Self {
            store,
            settings: SeriesSettings {
                window_ms: settings.window_ms.max(1),
                ..settings
            },
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn settings(&self) -> SeriesSettings {
        self.settings
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a few map operations; a poisoned lock still holds sane data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start of the window holding `t`.
    pub fn align(&self, t: UnixMs) -> UnixMs {
        t - t % self.settings.window_ms
    }

    /// Fold one node's batch into its window. The window is the one holding the batch's
    /// last millisecond by the node's clock, unless that clock is unknown or ahead of
    /// ours by more than a window (then our `now`). A batch for a window already
    /// persisted is refused as late; a stack with an unusable name refuses the batch.
    pub fn ingest(&self, batch: &NodeBatch, now: UnixMs) -> Result<(), IngestError> {
        if let Some(bad) = batch.stacks.iter().find(|s| !valid_stack(&s.stack)) {
            return Err(IngestError::StackName(bad.stack.clone()));
        }
        let w = self.settings.window_ms;
        let t = match batch.window_end_ms {
            end if end > 0 && end <= now.saturating_add(w) => end - 1,
            _ => now,
        };
        let start = self.align(t);
        let mut inner = self.lock();
        if start < inner.closed_before {
            return Err(IngestError::Late {
                node: batch.node_id.clone(),
                start_ms: start,
            });
        }
        if !inner.open.contains_key(&start) && inner.open.len() >= MAX_OPEN_WINDOWS {
            return Err(IngestError::Full);
        }
        let windows = inner.open.entry(start).or_default();
        let new_stacks = batch
            .stacks
            .iter()
            .filter(|s| !windows.contains_key(&s.stack))
            .count();
        if windows.len() + new_stacks > MAX_STACKS {
            return Err(IngestError::Full);
        }
        for s in &batch.stacks {
            let win = windows
                .entry(s.stack.clone())
                .or_insert_with(|| StackWindow::new(&s.stack, start, w));
            win.requests += s.requests;
            win.errors += s.errors;
            win.local_replies += s.local_replies;
            win.breaker_opens += s.breaker_opens;
            win.latency.merge(&s.latency);
            add_named(&mut win.kpis, &s.kpis);
            add_named(&mut win.by_rule, &s.by_rule);
            win.new_users += s.new_users;
            win.sticky_requests += s.sticky_requests;
            let node = win.by_node.entry(batch.node_id.clone()).or_default();
            node.requests += s.requests;
            node.errors += s.errors;
            node.local_replies += s.local_replies;
            node.breaker_opens += s.breaker_opens;
        }
        Ok(())
    }

    /// Persist every window that closed (its end plus the grace period is past), merged
    /// with what the store already holds for it (a restart in the middle of a window, or
    /// another replica's nodes in the same window), and delete those stacks' windows
    /// older than the retention: one atomic commit, conditional on the stored windows it
    /// merged with (replicas flushing one window at once merge in turn, none is lost).
    /// Returns how many stack windows were written. On a store error the windows stay
    /// in memory and the next flush tries again.
    pub fn flush(&self, now: UnixMs) -> Result<usize, StoreError> {
        let s = self.settings;
        self.flush_if(now, |start| start + s.window_ms + s.grace_ms <= now)
    }

    /// Persist every window, open ones included (at shutdown): a window still filling
    /// is stored partial, and after a restart its later batches are merged into it.
    pub fn flush_all(&self, now: UnixMs) -> Result<usize, StoreError> {
        self.flush_if(now, |_| true)
    }

    fn flush_if(&self, now: UnixMs, due: impl Fn(UnixMs) -> bool) -> Result<usize, StoreError> {
        let s = self.settings;
        let closed: Vec<(UnixMs, BTreeMap<String, StackWindow>)> = {
            let mut inner = self.lock();
            let due: Vec<UnixMs> = inner.open.keys().copied().filter(|t| due(*t)).collect();
            if let Some(last) = due.last() {
                inner.closed_before = inner.closed_before.max(last + s.window_ms);
            }
            due.iter()
                .filter_map(|start| inner.open.remove(start).map(|w| (*start, w)))
                .collect()
        };
        if closed.is_empty() {
            return Ok(0);
        }
        match self.persist(&closed, now) {
            Ok(n) => Ok(n),
            Err(e) => {
                // Put them back (merged with anything that arrived meanwhile).
                let mut inner = self.lock();
                for (start, stacks) in closed {
                    let open = inner.open.entry(start).or_default();
                    for (name, w) in stacks {
                        match open.get_mut(&name) {
                            Some(mine) => mine.merge(&w),
                            None => {
                                open.insert(name, w);
                            }
                        }
                    }
                    inner.closed_before = inner.closed_before.min(start);
                }
                Err(e)
            }
        }
    }

    fn persist(
        &self,
        closed: &[(UnixMs, BTreeMap<String, StackWindow>)],
        now: UnixMs,
    ) -> Result<usize, StoreError> {
        /// Merges lost to another writer in a row before the flush gives up (its windows
        /// stay in memory for the next flush).
        const ATTEMPTS: u32 = 8;
        let mut attempt = 1;
        loop {
            match self.persist_once(closed, now) {
                Err(StoreError::Conflict { key, .. })
                    if attempt < ATTEMPTS && key.starts_with(PREFIX) =>
                {
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn persist_once(
        &self,
        closed: &[(UnixMs, BTreeMap<String, StackWindow>)],
        now: UnixMs,
    ) -> Result<usize, StoreError> {
        let mut batch = Batch::new();
        let mut written = 0;
        let mut stacks: Vec<&str> = Vec::new();
        for (start, windows) in closed {
            for (name, w) in windows {
                let key = window_key(name, *start);
                let mut w = w.clone();
                match self.store.read(&key)? {
                    Some(bytes) => {
                        let mut stored = decode(&key, &bytes)?;
                        stored.merge(&w);
                        w = stored;
                        batch = batch.equals(key.clone(), bytes);
                    }
                    None => batch = batch.absent(key.clone()),
                }
                let json =
                    serde_json::to_vec(&w).map_err(|e| StoreError::Backend(e.to_string()))?;
                batch = batch.put(key, json);
                written += 1;
                if !stacks.contains(&name.as_str()) {
                    stacks.push(name);
                }
            }
        }
        let cutoff = now.saturating_sub(self.settings.retention_ms);
        for stack in stacks {
            batch = batch.delete_range(stack_prefix(stack), window_key(stack, cutoff));
        }
        self.store.commit(&batch)?;
        Ok(written)
    }

    /// The stack's windows starting in `from_ms..to_ms`, oldest first: persisted ones
    /// and the open ones (still filling: partial counts) together.
    pub fn range(
        &self,
        stack: &str,
        from_ms: UnixMs,
        to_ms: UnixMs,
    ) -> Result<Vec<StackWindow>, StoreError> {
        let mut out: BTreeMap<UnixMs, StackWindow> = BTreeMap::new();
        if from_ms < to_ms && valid_stack(stack) {
            let prefix = stack_prefix(stack);
            let mut after = from_ms.checked_sub(1).map(|t| window_key(stack, t));
            'pages: loop {
                let page = self.store.scan(&prefix, after.as_deref(), 512)?;
                let full = page.len() == 512;
                for (key, bytes) in page {
                    let w = decode(&key, &bytes)?;
                    if w.start_ms >= to_ms {
                        break 'pages;
                    }
                    out.insert(w.start_ms, w);
                    after = Some(key);
                }
                if !full {
                    break;
                }
            }
            let inner = self.lock();
            for (start, windows) in inner.open.range(from_ms..to_ms) {
                if let Some(w) = windows.get(stack) {
                    match out.get_mut(start) {
                        Some(stored) => stored.merge(w),
                        None => {
                            out.insert(*start, w.clone());
                        }
                    }
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// The stack's newest `n` window slots that hold data, oldest first (fewer when
    /// windows without traffic fall in between). Includes the open window.
    pub fn latest(&self, stack: &str, n: usize) -> Result<Vec<StackWindow>, StoreError> {
        if n == 0 || !valid_stack(stack) {
            return Ok(vec![]);
        }
        let open_newest = self
            .lock()
            .open
            .iter()
            .rev()
            .find(|(_, w)| w.contains_key(stack))
            .map(|(start, _)| *start);
        let stored_newest = match self.store.last(&stack_prefix(stack))? {
            Some((key, bytes)) => Some(decode(&key, &bytes)?.start_ms),
            None => None,
        };
        let Some(newest) = open_newest.max(stored_newest) else {
            return Ok(vec![]);
        };
        let span = self.settings.window_ms.saturating_mul(n as u64 - 1);
        let mut v = self.range(stack, newest.saturating_sub(span), newest + 1)?;
        let extra = v.len().saturating_sub(n);
        v.drain(..extra);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brain::clock::{Clock, ManualClock};
    use crate::store::{MemoryStore, RedbStore};
    use switchyard_filter::histogram::Histogram;

    const T0: UnixMs = 1_800_000_000_000; // a multiple of 10 s

    fn latency(ms: &[u64]) -> Latency {
        let mut h = Histogram::new();
        for m in ms {
            h.record(m * 1_000);
        }
        Latency::from_histogram(&h)
    }

    fn batch(node: &str, end: UnixMs, stack: &str, requests: u64, ms: &[u64]) -> NodeBatch {
        NodeBatch {
            node_id: node.into(),
            window_end_ms: end,
            stacks: vec![StackSample {
                stack: stack.into(),
                requests,
                errors: requests / 10,
                latency: latency(ms),
                kpis: [("orders".to_string(), requests / 2)].into(),
                by_rule: [("default".to_string(), requests)].into(),
                new_users: 1,
                sticky_requests: requests - 1,
                breaker_opens: u64::from(node == "n2"),
                ..Default::default()
            }],
        }
    }

    fn series(store: Arc<dyn Store>) -> Series {
        Series::new(store, SeriesSettings::default())
    }

    #[test]
    fn batches_of_several_nodes_fold_into_aligned_windows() {
        let clock = ManualClock::new(T0);
        let s = series(Arc::new(MemoryStore::new()));
        // Ten one-second batches from n1 and n2 fall into [T0, T0+10s); the 11th into the
        // next window.
        for i in 1..=11u64 {
            clock.set(T0 + i * 1_000);
            let now = clock.now_ms();
            s.ingest(&batch("n1", now, "green", 10, &[5]), now).unwrap();
            s.ingest(&batch("n2", now, "green", 20, &[300]), now)
                .unwrap();
        }
        let all = s.range("green", T0, T0 + 20_000).unwrap();
        assert_eq!(all.len(), 2);
        let w = &all[0];
        assert_eq!((w.start_ms, w.window_ms), (T0, 10_000));
        assert_eq!(w.requests, 300);
        assert_eq!(w.errors, 30);
        assert_eq!(w.kpis["orders"], 150);
        assert_eq!(w.by_rule["default"], 300);
        assert_eq!(w.new_users, 20);
        assert_eq!(w.breaker_opens, 10);
        assert_eq!(w.by_node["n1"].requests, 100);
        assert_eq!(w.by_node["n2"].requests, 200);
        assert_eq!(w.by_node["n2"].breaker_opens, 10);
        assert_eq!(w.latency.to_histogram().total(), 20);
        let p99 = w.latency.quantile_ms(0.99).unwrap();
        assert!((250.0..350.0).contains(&p99), "{p99}");
        assert_eq!(all[1].start_ms, T0 + 10_000);
        assert_eq!(all[1].requests, 30);
    }

    #[test]
    fn flush_persists_closed_windows_after_the_grace_period_and_refuses_late_batches() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let s = series(store.clone());
        s.ingest(&batch("n1", T0 + 5_000, "blue", 10, &[5]), T0 + 5_000)
            .unwrap();
        // The window ends at T0+10s; the grace period runs to T0+13s.
        assert_eq!(s.flush(T0 + 12_999).unwrap(), 0);
        assert!(store.read(&window_key("blue", T0)).unwrap().is_none());
        // A late node still counts within the grace period.
        s.ingest(&batch("n2", T0 + 9_500, "blue", 5, &[5]), T0 + 12_000)
            .unwrap();
        assert_eq!(s.flush(T0 + 13_000).unwrap(), 1);
        let stored: StackWindow =
            serde_json::from_slice(&store.read(&window_key("blue", T0)).unwrap().unwrap()).unwrap();
        assert_eq!(stored.requests, 15);
        // After that, a batch for the persisted window is refused, not miscounted.
        let late = s.ingest(&batch("n3", T0 + 9_000, "blue", 5, &[5]), T0 + 14_000);
        assert!(matches!(late, Err(IngestError::Late { start_ms, .. }) if start_ms == T0));
        assert_eq!(s.range("blue", T0, T0 + 1).unwrap()[0].requests, 15);
        // A node clock far ahead of ours is placed by our clock.
        s.ingest(&batch("n4", T0 + 99_000_000, "blue", 1, &[5]), T0 + 21_000)
            .unwrap();
        assert_eq!(s.latest("blue", 1).unwrap()[0].start_ms, T0 + 20_000);
    }

    #[test]
    fn replicas_flushing_one_window_merge_without_losing_counts() {
        // Two replicas, each with its own nodes, on one shared store.
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let a = series(store.clone());
        let b = series(store.clone());
        a.ingest(&batch("n1", T0 + 5_000, "blue", 10, &[5]), T0 + 5_000)
            .unwrap();
        b.ingest(&batch("n2", T0 + 5_000, "blue", 20, &[5]), T0 + 5_000)
            .unwrap();
        // Each merges into what the other stored (the write is conditional on the window
        // it read, so a flush racing another one re-reads and merges again).
        assert_eq!(b.flush(T0 + 13_000).unwrap(), 1);
        assert_eq!(a.flush(T0 + 13_000).unwrap(), 1);
        let w = &a.range("blue", T0, T0 + 1).unwrap()[0];
        assert_eq!(w.requests, 30);
        assert_eq!(w.by_node["n1"].requests, 10);
        assert_eq!(w.by_node["n2"].requests, 20);
    }

    #[test]
    fn retention_prunes_old_windows_and_latest_reads_the_newest() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let s = Series::new(
            store.clone(),
            SeriesSettings {
                window_ms: 10_000,
                retention_ms: 60_000,
                grace_ms: 0,
            },
        );
        for i in 0..10u64 {
            let now = T0 + i * 10_000 + 5_000;
            s.ingest(&batch("n1", now, "blue", i + 1, &[5]), now)
                .unwrap();
            s.flush(now).unwrap();
        }
        // Last flush at T0+95s: the cutoff is T0+35s; windows from T0+40s on remain
        // (T0+90s is still open).
        let kept: Vec<UnixMs> = store
            .scan("series/blue/", None, 100)
            .unwrap()
            .iter()
            .map(|(k, _)| k.rsplit('/').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            kept,
            (4..9).map(|i| T0 + i * 10_000).collect::<Vec<_>>(),
            "{kept:?}"
        );
        let last3: Vec<u64> = s
            .latest("blue", 3)
            .unwrap()
            .iter()
            .map(|w| w.requests)
            .collect();
        assert_eq!(last3, vec![8, 9, 10]);
        assert!(s.latest("green", 3).unwrap().is_empty());
        assert!(s.latest("blue", 0).unwrap().is_empty());
    }

    #[test]
    fn bad_stack_names_are_refused_whole() {
        let s = series(Arc::new(MemoryStore::new()));
        let mut b = batch("n1", T0 + 1_000, "blue", 1, &[]);
        b.stacks.push(StackSample {
            stack: "../x".into(),
            ..Default::default()
        });
        assert!(matches!(
            s.ingest(&b, T0 + 1_000),
            Err(IngestError::StackName(_))
        ));
        assert!(s.range("blue", T0, T0 + 10_000).unwrap().is_empty());
    }

    #[test]
    fn baselines_survive_a_restart_on_redb() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
            let s = series(store);
            for i in 0..3u64 {
                let now = T0 + i * 10_000 + 1_000;
                s.ingest(&batch("n1", now, "green", 10 * (i + 1), &[40]), now)
                    .unwrap();
            }
            // Windows 0 and 1 are closed and persisted; window 2 is half full.
            assert_eq!(s.flush(T0 + 25_000).unwrap(), 2);
            s.ingest(&batch("n1", T0 + 26_000, "green", 3, &[40]), T0 + 26_000)
                .unwrap();
            // Shutdown: the open window is stored partial.
            assert_eq!(s.flush_all(T0 + 26_500).unwrap(), 1);
        }
        // Reopened: every window is there. A late batch for a stored window (no longer
        // known to be closed after the restart) merges with what the store holds.
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
        let s = series(store.clone());
        let back = s.range("green", T0, T0 + 30_000).unwrap();
        assert_eq!(
            back.iter().map(|w| w.requests).collect::<Vec<_>>(),
            vec![10, 20, 33]
        );
        assert!(back[1].latency.quantile_ms(0.5).unwrap() > 30.0);
        s.ingest(&batch("n1", T0 + 15_000, "green", 5, &[40]), T0 + 15_500)
            .unwrap();
        s.flush(T0 + 30_000).unwrap();
        let w = &s.range("green", T0 + 10_000, T0 + 10_001).unwrap()[0];
        assert_eq!(w.requests, 25);
        assert_eq!(w.by_node["n1"].requests, 25);
    }
}
