//! Several control-service replicas on one etcd: which one leads, and the fence that keeps
//! a former leader from writing.
//!
//! Every replica serves the APIs and Watch; one **leader** runs the background work (the
//! health monitor, the autopilot's ticks and the fast path). Leadership is the etcd key
//! [`LEADER_KEY`], created only when absent (`create_revision == 0`) on a lease of
//! `lease_ttl` that the leader keeps alive; its value names the term
//! (`<replica id>/<lease>`), so two terms of one replica differ too.
//!
//! While a replica leads, **every** write it makes (background and API alike) goes through
//! [`FencedStore`] with the condition "the leadership key still holds my term". A leader
//! paused past its lease (SIGSTOP, a long GC-like stall, a partition) that wakes up cannot
//! write: its writes fail with [`StoreError::Fenced`] (etcd reports a failed compare on
//! [`LEADER_KEY`]), which also tells it to step down. Fenced, not `Conflict`: the brain
//! treats a conflict as "another writer came first" and may carry on as if written. On stepping down the background work is stopped and awaited *before*
//! the fence is lifted, so background work never writes unfenced.
//!
//! With a single-process store (redb, memory) the process is the leader from start to end
//! and nothing is fenced.
//!
//! Decides leadership and fencing; never decides what the background work does.
//! Imports: `replica → store`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::model::VersionRecord;
use crate::store::{Batch, Condition, EtcdStore, Store, StoreError, Term, LEADER_KEY};

/// `[replica]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// This replica's name in the leadership key, status and logs (default `hostname-pid`).
    pub id: String,
    /// Lease of the leadership: a leader that stops renewing it (crash, pause, partition)
    /// is replaced this long after its last renewal (default 10 s).
    pub lease_ttl: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            id: default_id(),
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// `hostname-pid`: unique per process on a host, readable in status output.
pub fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    format!("{host}-{}", std::process::id())
}

/// This replica's identity and whether it leads now (read by status and metrics).
#[derive(Debug)]
pub struct Role {
    id: String,
    leader: watch::Sender<bool>,
}

impl Role {
    /// A process that is alone on its store: always the leader.
    pub fn standalone(id: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            id: id.into(),
            leader: watch::channel(true).0,
        })
    }

    /// One of several replicas: a follower until it wins an election.
    pub fn replica(id: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            id: id.into(),
            leader: watch::channel(false).0,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Follow leadership changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    fn set_leader(&self, leading: bool) {
        self.leader.send_replace(leading);
    }
}

/// The condition this replica's writes carry while it leads.
#[derive(Debug)]
struct Fence {
    /// `Equals(LEADER_KEY, term value)` while leading.
    condition: RwLock<Option<Condition>>,
    /// The term whose fence a write found broken (the leader must step down).
    refused: watch::Sender<Option<Vec<u8>>>,
}

impl Default for Fence {
    fn default() -> Self {
        Self {
            condition: RwLock::new(None),
            refused: watch::channel(None).0,
        }
    }
}

impl Fence {
    fn current(&self) -> Option<Condition> {
        self.condition
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, c: Option<Condition>) {
        *self.condition.write().unwrap_or_else(|p| p.into_inner()) = c;
    }

    /// After a write failed: if it was our fence that broke, say so (the leader steps
    /// down) and turn the conflict into [`StoreError::Fenced`].
    fn check(&self, used: &Option<Condition>, err: StoreError) -> StoreError {
        match (used, err) {
            (Some(Condition::Equals(_, term)), StoreError::Conflict { key, .. })
                if key == LEADER_KEY =>
            {
                tracing::warn!(
                    term = %String::from_utf8_lossy(term),
                    "a write fenced on this replica's leadership was refused: another replica leads"
                );
                self.refused.send_replace(Some(term.clone()));
                StoreError::Fenced { key }
            }
            (_, e) => e,
        }
    }
}

/// A [`Store`] whose writes carry the leadership fence while this replica leads (see
/// the module docs). Reads and version following pass straight through.
pub struct FencedStore {
    inner: Arc<dyn Store>,
    fence: Arc<Fence>,
}

impl Store for FencedStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn append_when(
        &self,
        record: &VersionRecord,
        policy_json: Option<&str>,
        conditions: &[Condition],
    ) -> Result<(), StoreError> {
        let fence = self.fence.current();
        let all: Vec<Condition> = fence.iter().chain(conditions).cloned().collect();
        self.inner
            .append_when(record, policy_json, &all)
            .map_err(|e| self.fence.check(&fence, e))
    }

    fn subscribe_versions(&self, after: u64) -> Option<watch::Receiver<u64>> {
        self.inner.subscribe_versions(after)
    }

    fn latest(&self) -> Result<Option<VersionRecord>, StoreError> {
        self.inner.latest()
    }

    fn get(&self, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.inner.get(version)
    }

    fn policy(&self, policy_version: u64) -> Result<Option<String>, StoreError> {
        self.inner.policy(policy_version)
    }

    fn history(&self, before: Option<u64>, limit: usize) -> Result<Vec<VersionRecord>, StoreError> {
        self.inner.history(before, limit)
    }

    fn oldest(&self) -> Result<Option<u64>, StoreError> {
        self.inner.oldest()
    }

    fn prune_when(
        &self,
        keep_from: u64,
        keep_policies_from: u64,
        conditions: &[Condition],
    ) -> Result<(), StoreError> {
        let fence = self.fence.current();
        let all: Vec<Condition> = fence.iter().chain(conditions).cloned().collect();
        self.inner
            .prune_when(keep_from, keep_policies_from, &all)
            .map_err(|e| self.fence.check(&fence, e))
    }

    fn revision(&self) -> Result<Option<u64>, StoreError> {
        self.inner.revision()
    }

    /// etcd's compaction is no transaction, so it cannot carry the fence: the term is
    /// checked just before instead. A deposed leader that slips through compacts to a
    /// revision it saw one interval ago, which the new leader compacts past anyway.
    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let fence = self.fence.current();
        if let Some(Condition::Equals(key, term)) = &fence {
            if self.inner.read(key)?.as_deref() != Some(&term[..]) {
                let lost = StoreError::Conflict {
                    key: key.clone(),
                    message: "changed since it was read".into(),
                };
                return Err(self.fence.check(&fence, lost));
            }
        }
        self.inner.compact(revision)
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read(key)
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan(prefix, after, limit)
    }

    fn last(&self, prefix: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.inner.last(prefix)
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let fence = self.fence.current();
        let Some(f) = &fence else {
            return self.inner.commit(batch);
        };
        // The fence first: when it is what failed, the error names it.
        let mut fenced = Batch {
            conditions: Vec::with_capacity(batch.conditions.len() + 1),
            ops: batch.ops.clone(),
        };
        fenced.conditions.push(f.clone());
        fenced.conditions.extend(batch.conditions.iter().cloned());
        self.inner
            .commit(&fenced)
            .map_err(|e| self.fence.check(&fence, e))
    }
}

/// Starts the leader's background work with a token that stops it; returns its tasks.
pub type StartWork = Box<dyn Fn(CancellationToken) -> Vec<JoinHandle<()>> + Send + Sync>;

/// A replica's place among others on etcd: its role, its fenced store, and the election.
pub struct Replica {
    role: Arc<Role>,
    settings: ReplicaSettings,
    etcd: Option<Arc<EtcdStore>>,
    fence: Arc<Fence>,
    store: Arc<dyn Store>,
}

impl Replica {
    /// Alone on a single-process store: always the leader, nothing fenced.
    pub fn standalone(store: Arc<dyn Store>, settings: ReplicaSettings) -> Self {
        Self {
            role: Role::standalone(settings.id.clone()),
            settings,
            etcd: None,
            fence: Arc::default(),
            store,
        }
    }

    /// One of several replicas on `etcd`.
    pub fn on_etcd(etcd: Arc<EtcdStore>, settings: ReplicaSettings) -> Self {
        let fence = Arc::new(Fence::default());
        let store: Arc<dyn Store> = Arc::new(FencedStore {
            inner: etcd.clone(),
            fence: fence.clone(),
        });
        Self {
            role: Role::replica(settings.id.clone()),
            settings,
            etcd: Some(etcd),
            fence,
            store,
        }
    }

    pub fn role(&self) -> Arc<Role> {
        self.role.clone()
    }

    /// The store everything in this process writes through (fenced while leading).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Run until `shutdown`: win leadership, run `work` while leading, stop it when
    /// leadership is lost, campaign again. Standalone: run `work` until `shutdown`. On
    /// shutdown the leader resigns (another replica takes over at once) unless `resign`
    /// was cancelled first (a simulated crash: the lease must expire).
    pub fn spawn(
        self,
        work: StartWork,
        shutdown: CancellationToken,
        resign: CancellationToken,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            match self.etcd.clone() {
                None => {
                    let tasks = work(shutdown.clone());
                    shutdown.cancelled().await;
                    join(tasks).await;
                }
                Some(etcd) => self.campaign(etcd, work, shutdown, resign).await,
            }
        })
    }

    async fn campaign(
        self,
        etcd: Arc<EtcdStore>,
        work: StartWork,
        shutdown: CancellationToken,
        resign: CancellationToken,
    ) {
        let ttl = self.settings.lease_ttl.max(Duration::from_secs(1));
        // How often a follower looks for a free leadership key: a small part of the TTL,
        // so takeover comes within TTL + this after the leader's last renewal.
        let poll = (ttl / 20).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let id = self.settings.id.clone();
        let mut refused = self.fence.refused.subscribe();
        while !shutdown.is_cancelled() {
            let asked = Instant::now();
            let e = etcd.clone();
            let i = id.clone();
            let won = tokio::task::spawn_blocking(move || e.try_lead(&i, ttl))
                .await
                .unwrap_or_else(|e| Err(StoreError::Backend(e.to_string())));
            let term = match won {
                Ok(Some(term)) => term,
                Ok(None) => {
                    pause(poll, &shutdown).await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "leader election: etcd not answering");
                    pause(poll.max(Duration::from_millis(500)), &shutdown).await;
                    continue;
                }
            };
            let term_name = String::from_utf8_lossy(&term.value).into_owned();
            tracing::info!(replica = %id, term = %term_name, "leading: starting the background work");
            self.fence.set(Some(Condition::Equals(
                LEADER_KEY.into(),
                term.value.clone(),
            )));
            let _ = refused.borrow_and_update();
            self.role.set_leader(true);
            let stop = shutdown.child_token();
            let tasks = work(stop.clone());
            let why = lead(&etcd, &term, ttl, asked, &mut refused, &shutdown).await;
            // Stop the work first, lift the fence after: the background never writes
            // unfenced, and its writes meanwhile fail (we may no longer lead).
            self.role.set_leader(false);
            stop.cancel();
            join(tasks).await;
            self.fence.set(None);
            tracing::warn!(replica = %id, term = %term_name, reason = why, "no longer leading: background work stopped");
            if shutdown.is_cancelled() && !resign.is_cancelled() {
                let e = etcd.clone();
                let t = term.clone();
                match tokio::task::spawn_blocking(move || e.resign(&t)).await {
                    Ok(Ok(())) => tracing::info!(replica = %id, "resigned the leadership"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not resign; the lease expires"),
                    Err(_) => {}
                }
            }
        }
    }
}

/// Keep the term alive until it ends; returns why it ended.
async fn lead(
    etcd: &Arc<EtcdStore>,
    term: &Term,
    ttl: Duration,
    mut renewed: Instant,
    refused: &mut watch::Receiver<Option<Vec<u8>>>,
    shutdown: &CancellationToken,
) -> &'static str {
    let every = ttl / 3;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return "shutdown",
            changed = refused.changed() => {
                if changed.is_err() {
                    return "shutdown";
                }
                if refused.borrow_and_update().as_deref() == Some(&term.value[..]) {
                    return "a fenced write was refused: another replica leads";
                }
            }
            _ = tokio::time::sleep(every) => {
                let sent = Instant::now();
                let e = etcd.clone();
                let t = term.clone();
                match tokio::task::spawn_blocking(move || e.keep_alive(&t)).await {
                    Ok(Ok(true)) => renewed = sent,
                    Ok(Ok(false)) => return "the lease expired or was revoked",
                    Ok(Err(e)) => {
                        // Give up while the lease may still hold in etcd, so a new leader
                        // does not start its work while this one still runs.
                        if renewed.elapsed() >= every * 2 {
                            tracing::warn!(error = %e, "cannot renew the leadership lease");
                            return "cannot renew the lease (etcd unreachable)";
                        }
                    }
                    Err(_) => return "shutdown",
                }
            }
        }
    }
}

async fn pause(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}

async fn join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EtcdConfig, MemoryStore};
    use switchyard_harness::EtcdServer;

    fn record(v: u64) -> VersionRecord {
        crate::store::contract::record(v, 1)
    }

    #[test]
    fn default_id_names_the_host_and_process() {
        let id = default_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
    }

    #[test]
    fn a_fenced_store_refuses_writes_once_the_term_is_over() {
        let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let fence = Arc::new(Fence::default());
        let s = FencedStore {
            inner: inner.clone(),
            fence: fence.clone(),
        };
        s.append(&record(1), Some("{}")).unwrap();
        s.commit(&Batch::new().put("a", b"1".to_vec())).unwrap();
        // Fenced on a term the key does not hold: refused, nothing written, and the
        // refusal is reported for that term.
        fence.set(Some(Condition::Equals(LEADER_KEY.into(), b"me/1".to_vec())));
        let mut refused = fence.refused.subscribe();
        let err = s.append(&record(2), None).unwrap_err();
        assert!(
            matches!(err, StoreError::Fenced { ref key } if key == LEADER_KEY),
            "{err}"
        );
        assert!(refused.has_changed().unwrap());
        assert_eq!(refused.borrow_and_update().as_deref(), Some(&b"me/1"[..]));
        let err = s.commit(&Batch::new().put("a", b"2".to_vec())).unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
        assert!(refused.has_changed().unwrap());
        let _ = refused.borrow_and_update();
        // Retention's writes too: pruning (in the transaction) and compaction (checked
        // just before, etcd's compaction being no transaction).
        let err = s.prune_when(1, 1, &[]).unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
        assert!(refused.has_changed().unwrap());
        let _ = refused.borrow_and_update();
        let err = s.compact(1).unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
        assert!(refused.has_changed().unwrap());
        let _ = refused.borrow_and_update();
        assert_eq!(inner.latest().unwrap().unwrap().version, 1);
        assert_eq!(inner.read("a").unwrap().as_deref(), Some(&b"1"[..]));
        // Holding the term, writes pass; a conflict of the caller's own is not a refusal.
        inner
            .commit(&Batch::new().put(LEADER_KEY, b"me/1".to_vec()))
            .unwrap();
        s.append(&record(2), None).unwrap();
        s.prune_when(2, 1, &[]).unwrap();
        s.compact(1).unwrap();
        assert_eq!(inner.oldest().unwrap(), Some(2));
        let err = s
            .commit(&Batch::new().absent("a").put("a", b"3".to_vec()))
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { ref key, .. } if key == "a"));
        assert!(!refused.has_changed().unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_of_two_replicas_leads_and_the_other_takes_over_when_it_resigns() {
        let etcd = EtcdServer::start();
        let connect = |_: ()| {
            Arc::new(
                EtcdStore::connect(&EtcdConfig {
                    endpoints: vec![etcd.client_url()],
                    namespace: "/elect/".into(),
                    timeout: Duration::from_secs(5),
                })
                .unwrap(),
            )
        };
        let settings = |id: &str| ReplicaSettings {
            id: id.into(),
            lease_ttl: Duration::from_secs(2),
        };
        let a = Replica::on_etcd(connect(()), settings("a"));
        let b = Replica::on_etcd(connect(()), settings("b"));
        let (role_a, role_b) = (a.role(), b.role());
        let stop_a = CancellationToken::new();
        let stop_b = CancellationToken::new();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let work = |ran: Arc<std::sync::atomic::AtomicUsize>| -> StartWork {
            Box::new(move |stop: CancellationToken| {
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                vec![tokio::spawn(async move { stop.cancelled().await })]
            })
        };
        let ha = a.spawn(work(ran.clone()), stop_a.clone(), CancellationToken::new());
        wait_until(|| role_a.is_leader()).await;
        let hb = b.spawn(work(ran.clone()), stop_b.clone(), CancellationToken::new());
        // b stays a follower while a renews its lease.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(role_a.is_leader() && !role_b.is_leader());
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
        stop_a.cancel();
        ha.await.unwrap();
        wait_until(|| role_b.is_leader()).await;
        assert!(!role_a.is_leader());
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 2);
        stop_b.cancel();
        hb.await.unwrap();
    }

    async fn wait_until(f: impl Fn() -> bool) {
        while !f() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
