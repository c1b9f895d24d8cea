//! The replicated backend: the version history and the brain's key space in etcd.
//!
//! Layout under a namespace prefix (default `/switchyard/`):
//! - `v/<version>` → JSON [`VersionRecord`] (20-digit zero-padded version);
//! - `p/<version>` → the policy document set by that version;
//! - `k/<key>` → the brain's values ([`Store::commit`]).
//!
//! Every write is one etcd transaction. [`Store::append`] commits only if `v/<version>`
//! is absent and `v/<version - 1>` exists, so two replicas appending the same version
//! cannot both succeed and history stays gapless; [`Store::commit`] turns each
//! [`Condition`] into a compare (absent: `create_revision == 0`; equals: `value ==`).
//! etcd acknowledges a transaction once a quorum has it on disk, so an acknowledged
//! write survives the loss of a minority of members and `kill -9` of this process.
//!
//! Supported etcd: the v3 API, 3.4 and later (tests run Debian's 3.4; 3.5 and 3.6 speak
//! the same KV and transaction API). The trait is blocking: calls run on a small runtime
//! owned by the store, and callers on an async runtime use `spawn_blocking` as for redb.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};

use super::{key_u64, Batch, Condition, Op, Store, StoreError};
use crate::model::VersionRecord;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the members, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix everything lives under; ends with `/`.
    pub namespace: String,
    /// Connect and per-request timeout.
    pub timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            namespace: "/switchyard/".into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// etcd-backed [`Store`].
pub struct EtcdStore {
    client: Client,
    ns: String,
    endpoints: Vec<String>,
    rt: Option<tokio::runtime::Runtime>,
}

/// An etcd error as a store error: the cluster out of reach (connection refused, no
/// leader, no quorum, timeout) is [`StoreError::Unavailable`], anything else a backend
/// error.
fn backend(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    let unreachable = match &e {
        E::TransportError(_) | E::IoError(_) | E::LeaseKeepAliveError(_) | E::WatchError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
        _ => false,
    };
    if unreachable {
        StoreError::Unavailable(format!("etcd: {e}"))
    } else {
        StoreError::Backend(format!("etcd: {e}"))
    }
}

/// etcd says the lease does not exist (any more).
fn lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::NotFound || s.message().contains("lease not found")
        }
        _ => false,
    }
}

/// The version a `v/<20 digits>` key names.
fn version_of_key(key: &[u8]) -> u64 {
    String::from_utf8_lossy(key)
        .rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The key of the replicas' leadership in the brain's key space (`k/replica/leader`):
/// held by the leader's lease, its value names the leader's term. Fenced writes compare
/// its value ([`crate::replica`]).
pub const LEADER_KEY: &str = "replica/leader";

/// A leadership term won by [`EtcdStore::try_lead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The leadership key's value while this term lasts (replica id and lease).
    pub value: Vec<u8>,
    lease: i64,
}

/// A call that could not even connect (a member restarting, its port still refusing) was
/// never sent; tonic reconnects lazily, so the first call after a member's restart can
/// fail that way although other members answer. Reads and transactions (never sent, so
/// never applied) are tried again, twice, 100 ms apart.
fn retry_connect<T>(f: impl Fn() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(StoreError::Unavailable(m)) if attempt < 2 && m.contains("tcp connect error") => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // the whole key space
}

impl EtcdStore {
    /// Connect to the cluster and check it answers.
    pub fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Backend("etcd: no endpoints given".into()));
        }
        let mut ns = config.namespace.clone();
        if !ns.ends_with('/') {
            ns.push('/');
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()?;
        let endpoints = config.endpoints.clone();
        // HTTP/2 keep-alives find a member that died without closing its connections;
        // require-leader makes a member cut off from its quorum refuse (and end watches)
        // instead of answering from a stale view, so the client moves to another member.
        let options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            .with_timeout(config.timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let eps = endpoints.clone();
        rt.spawn(async move {
            let r = async {
                let mut client = Client::connect(eps, Some(options)).await?;
                client.status().await?;
                Ok::<_, etcd_client::Error>(client)
            }
            .await;
            let _ = tx.send(r);
        });
        let client = rx
            .recv()
            .map_err(|_| StoreError::Backend("etcd: connect task vanished".into()))?
            .map_err(backend)?;
        Ok(Self {
            client,
            ns,
            endpoints,
            rt: Some(rt),
        })
    }

    /// Run `f` on the store's runtime and wait for it (from any thread that may block).
    fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| StoreError::Backend("etcd: store closed".into()))?;
        let fut = f(self.client.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Backend("etcd: request task vanished".into()))?
    }

    fn vkey(&self, version: u64) -> String {
        format!("{}v/{}", self.ns, key_u64(version))
    }
    fn pkey(&self, version: u64) -> String {
        format!("{}p/{}", self.ns, key_u64(version))
    }
    fn kkey(&self, key: &str) -> String {
        format!("{}k/{}", self.ns, key)
    }

    fn compare(&self, c: &Condition) -> Compare {
        match c {
            Condition::Absent(k) => Compare::create_revision(self.kkey(k), CompareOp::Equal, 0),
            Condition::Equals(k, v) => Compare::value(self.kkey(k), CompareOp::Equal, v.clone()),
        }
    }

    /// After a transaction did not commit: the first condition that does not hold now,
    /// as the error to return (best effort: it may have changed again since).
    fn failed_condition(&self, conditions: &[Condition]) -> Result<(), StoreError> {
        for c in conditions {
            let key = match c {
                Condition::Absent(k) | Condition::Equals(k, _) => k,
            };
            let current = self.read(key)?;
            super::check_condition(c, |_| current)?;
        }
        Ok(())
    }

    /// Become the leader if no replica is: grant a lease of `ttl` and create the
    /// leadership key on it only if it does not exist (`create_revision == 0`). `None`
    /// when another replica leads (the lease is revoked again).
    pub fn try_lead(&self, replica_id: &str, ttl: Duration) -> Result<Option<Term>, StoreError> {
        let key = self.kkey(LEADER_KEY);
        if self.read(LEADER_KEY)?.is_some() {
            return Ok(None);
        }
        let ttl = ttl.as_secs().max(1) as i64;
        let id = replica_id.to_string();
        self.run(move |mut c| async move {
            let lease = c.lease_grant(ttl, None).await.map_err(backend)?.id();
            let value = format!("{id}/{lease:x}").into_bytes();
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key,
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let won = match c.txn(txn).await {
                Ok(r) => r.succeeded(),
                Err(e) => {
                    let _ = c.lease_revoke(lease).await;
                    return Err(backend(e));
                }
            };
            if won {
                Ok(Some(Term { value, lease }))
            } else {
                let _ = c.lease_revoke(lease).await;
                Ok(None)
            }
        })
    }

    /// Renew the term's lease once. `Ok(false)` when the term is over: the lease
    /// expired or was revoked, or the key no longer holds the term's value.
    pub fn keep_alive(&self, term: &Term) -> Result<bool, StoreError> {
        let lease = term.lease;
        let alive = self.run(move |mut c| async move {
            let r = async {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                stream.message().await
            }
            .await;
            match r {
                Ok(Some(r)) => Ok(r.ttl() > 0),
                Ok(None) => Err(StoreError::Unavailable(
                    "etcd: keep-alive stream closed".into(),
                )),
                // Revoked or expired: etcd no longer knows the lease.
                Err(e) if lease_gone(&e) => Ok(false),
                Err(e) => Err(backend(e)),
            }
        })?;
        Ok(alive && self.read(LEADER_KEY)?.as_deref() == Some(&term.value[..]))
    }

    /// End the term at once (its lease revoked, so the key goes with it): another
    /// replica can lead without waiting for the lease to expire.
    pub fn resign(&self, term: &Term) -> Result<(), StoreError> {
        let lease = term.lease;
        self.run(move |mut c| async move {
            c.lease_revoke(lease).await.map_err(backend)?;
            Ok(())
        })
    }

    /// The current leadership key's value (`<replica id>/<lease>`), if any replica leads.
    pub fn leader(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .read(LEADER_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// [`Store::subscribe_versions`] whose first watch starts at `revision`.
    #[cfg(test)]
    fn subscribe_versions_from(
        &self,
        after: u64,
        revision: u64,
    ) -> tokio::sync::watch::Receiver<u64> {
        let (tx, rx) = tokio::sync::watch::channel(after);
        let prefix = format!("{}v/", self.ns);
        if let Some(rt) = &self.rt {
            rt.spawn(follow_versions(
                self.client.clone(),
                prefix,
                tx,
                Some(revision as i64),
            ));
        }
        rx
    }

    fn decode(version: u64, bytes: &[u8]) -> Result<VersionRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            version,
            message: e.to_string(),
        })
    }
}

/// Follow the `v/` prefix into `tx`: read the newest version and the revision of that
/// read, then watch for puts from the next revision on. Re-established after any error
/// (etcd down, member lost, compaction), backing off up to 2 s; ends when every receiver
/// is gone or the store's runtime shuts down. `stale_start` (tests) makes the first watch
/// start at that revision instead, as a follower whose watch broke before a compaction
/// passed its revision would.
async fn follow_versions(
    client: Client,
    prefix: String,
    tx: tokio::sync::watch::Sender<u64>,
    mut stale_start: Option<i64>,
) {
    let publish = |v: u64| {
        tx.send_if_modified(|known| {
            if v > *known {
                *known = v;
                true
            } else {
                false
            }
        });
    };
    let mut backoff = Duration::from_millis(100);
    while !tx.is_closed() {
        let r: Result<(), etcd_client::Error> = async {
            let mut c = client.clone();
            let opts = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(1)
                .with_keys_only();
            let got = c.get(prefix.clone(), Some(opts)).await?;
            let revision = got.header().map(|h| h.revision()).unwrap_or(0);
            if let Some(kv) = got.kvs().first() {
                publish(version_of_key(kv.key()));
            }
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(stale_start.take().unwrap_or(revision + 1));
            let mut stream = c.watch(prefix.clone(), Some(opts)).await?;
            backoff = Duration::from_millis(100);
            // A safety net under the watch: a watch on a member that lost its peers can
            // stay silent without failing; the newest version is also read every 2 s.
            let mut check = tokio::time::interval(Duration::from_secs(2));
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m?,
                    _ = tx.closed() => return Ok(()),
                    _ = check.tick() => {
                        let mut c = client.clone();
                        let opts = GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Key, SortOrder::Descend)
                            .with_limit(1)
                            .with_keys_only();
                        if let Ok(Ok(got)) =
                            tokio::time::timeout(Duration::from_secs(2), c.get(prefix.clone(), Some(opts))).await
                        {
                            if let Some(kv) = got.kvs().first() {
                                publish(version_of_key(kv.key()));
                            }
                        }
                        continue;
                    }
                };
                let Some(msg) = msg else {
                    return Err(etcd_client::Error::WatchError("watch stream ended".into()));
                };
                if msg.canceled() {
                    return Err(etcd_client::Error::WatchError(format!(
                        "watch cancelled: {}",
                        msg.cancel_reason()
                    )));
                }
                for ev in msg.events() {
                    if ev.event_type() == EventType::Put {
                        if let Some(kv) = ev.kv() {
                            publish(version_of_key(kv.key()));
                        }
                    }
                }
            }
        }
        .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "following versions in etcd; re-subscribing");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks; this may run on an async thread, so do not wait.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl EtcdStore {
    /// Run one transaction: `true` when its compares held and its ops were applied. Never
    /// sent when the connection could not be made: tried again like a read.
    fn commit_txn(&self, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Result<bool, StoreError> {
        retry_connect(|| {
            let (compares, ops) = (compares.clone(), ops.clone());
            self.run(move |mut c| async move {
                let r = c
                    .txn(Txn::new().when(compares).and_then(ops))
                    .await
                    .map_err(backend)?;
                Ok(r.succeeded())
            })
        })
    }
}

impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd:{} (prefix {})", self.endpoints.join(","), self.ns)
    }

    fn append_when(
        &self,
        record: &VersionRecord,
        policy_json: Option<&str>,
        conditions: &[Condition],
    ) -> Result<(), StoreError> {
        let encoded = serde_json::to_vec(record).map_err(|e| StoreError::Backend(e.to_string()))?;
        let v = record.version;
        let this = self.vkey(v);
        let prev = self.vkey(v.saturating_sub(1));
        let pkey = self.pkey(v);
        let mut compares: Vec<Compare> = conditions.iter().map(|c| self.compare(c)).collect();
        compares.push(Compare::create_revision(this.clone(), CompareOp::Equal, 0));
        if v > 1 {
            compares.push(Compare::create_revision(prev, CompareOp::Greater, 0));
        }
        let mut ops = vec![TxnOp::put(this, encoded, None)];
        if let Some(p) = policy_json {
            ops.push(TxnOp::put(pkey, p, None));
        }
        let committed = self.commit_txn(compares, ops)?;
        if committed {
            return Ok(());
        }
        self.failed_condition(conditions)?;
        let latest = self.latest()?.map(|r| r.version).unwrap_or(0);
        Err(StoreError::OutOfOrder { latest, got: v })
    }

    fn subscribe_versions(&self, after: u64) -> Option<tokio::sync::watch::Receiver<u64>> {
        let rt = self.rt.as_ref()?;
        let (tx, rx) = tokio::sync::watch::channel(after);
        let prefix = format!("{}v/", self.ns);
        rt.spawn(follow_versions(self.client.clone(), prefix, tx, None));
        Some(rx)
    }

    fn latest(&self) -> Result<Option<VersionRecord>, StoreError> {
        retry_connect(|| {
            let prefix = format!("{}v/", self.ns);
            let kv = self.run(move |mut c| async move {
                let opts = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(1);
                let r = c.get(prefix, Some(opts)).await.map_err(backend)?;
                Ok(r.kvs()
                    .first()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec())))
            })?;
            match kv {
                Some((k, v)) => Ok(Some(Self::decode(version_of_key(&k), &v)?)),
                None => Ok(None),
            }
        })
    }

    fn get(&self, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        retry_connect(|| {
            let key = self.vkey(version);
            let v = self.run(move |mut c| async move {
                let r = c.get(key, None).await.map_err(backend)?;
                Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
            })?;
            v.map(|b| Self::decode(version, &b)).transpose()
        })
    }

    fn policy(&self, policy_version: u64) -> Result<Option<String>, StoreError> {
        retry_connect(|| {
            let key = self.pkey(policy_version);
            let v = self.run(move |mut c| async move {
                let r = c.get(key, None).await.map_err(backend)?;
                Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
            })?;
            v.map(|b| {
                String::from_utf8(b).map_err(|e| StoreError::Corrupt {
                    version: policy_version,
                    message: e.to_string(),
                })
            })
            .transpose()
        })
    }

    fn history(&self, before: Option<u64>, limit: usize) -> Result<Vec<VersionRecord>, StoreError> {
        retry_connect(|| {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let start = format!("{}v/", self.ns);
            let end = match before {
                Some(b) => self.vkey(b).into_bytes(),
                None => prefix_end(&start),
            };
            let kvs = self.run(move |mut c| async move {
                let opts = GetOptions::new()
                    .with_range(end)
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(limit as i64);
                let r = c.get(start, Some(opts)).await.map_err(backend)?;
                Ok(r.kvs()
                    .iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                    .collect::<Vec<_>>())
            })?;
            kvs.into_iter()
                .map(|(k, v)| Self::decode(version_of_key(&k), &v))
                .collect()
        })
    }

    fn oldest(&self) -> Result<Option<u64>, StoreError> {
        retry_connect(|| {
            let prefix = format!("{}v/", self.ns);
            let key = self.run(move |mut c| async move {
                let opts = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Ascend)
                    .with_limit(1)
                    .with_keys_only();
                let r = c.get(prefix, Some(opts)).await.map_err(backend)?;
                Ok(r.kvs().first().map(|kv| kv.key().to_vec()))
            })?;
            Ok(key.map(|k| version_of_key(&k)))
        })
    }

    fn prune_when(
        &self,
        keep_from: u64,
        keep_policies_from: u64,
        conditions: &[Condition],
    ) -> Result<(), StoreError> {
        let mut compares: Vec<Compare> = conditions.iter().map(|c| self.compare(c)).collect();
        compares.push(Compare::create_revision(
            self.vkey(keep_from),
            CompareOp::Greater,
            0,
        ));
        // Two range deletes in one transaction: one revision, however many keys.
        let ops = vec![
            TxnOp::delete(
                format!("{}v/", self.ns),
                Some(DeleteOptions::new().with_range(self.vkey(keep_from))),
            ),
            TxnOp::delete(
                format!("{}p/", self.ns),
                Some(DeleteOptions::new().with_range(self.pkey(keep_policies_from))),
            ),
        ];
        let committed = self.commit_txn(compares, ops)?;
        if committed {
            return Ok(());
        }
        self.failed_condition(conditions)?;
        Err(super::keep_from_missing(keep_from))
    }

    fn revision(&self) -> Result<Option<u64>, StoreError> {
        retry_connect(|| {
            let key = self.ns.clone();
            self.run(move |mut c| async move {
                let opts = GetOptions::new().with_count_only();
                let r = c.get(key, Some(opts)).await.map_err(backend)?;
                Ok(r.header().map(|h| h.revision().max(0) as u64))
            })
        })
    }

    fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let revision = i64::try_from(revision)
            .map_err(|_| StoreError::Backend(format!("etcd: revision {revision} out of range")))?;
        retry_connect(|| {
            self.run(move |mut c| async move {
                match c.compact(revision, None).await {
                    Ok(_) => Ok(()),
                    // Another leader (or the operator's auto-compaction) got there first.
                    Err(etcd_client::Error::GRpcStatus(s))
                        if s.message().contains("required revision has been compacted") =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(backend(e)),
                }
            })
        })
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        retry_connect(|| {
            let key = self.kkey(key);
            self.run(move |mut c| async move {
                let r = c.get(key, None).await.map_err(backend)?;
                Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
            })
        })
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        retry_connect(|| {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let full_prefix = self.kkey(prefix);
            let end = prefix_end(&full_prefix);
            let start = match after {
                // The first key after `after`: `after` followed by a zero byte.
                Some(a) if a >= prefix => {
                    let mut s = self.kkey(a).into_bytes();
                    s.push(0);
                    s
                }
                _ => full_prefix.into_bytes(),
            };
            let strip = self.kkey("").len();
            let kvs = self.run(move |mut c| async move {
                let opts = GetOptions::new()
                    .with_range(end)
                    .with_sort(SortTarget::Key, SortOrder::Ascend)
                    .with_limit(limit as i64);
                let r = c.get(start, Some(opts)).await.map_err(backend)?;
                Ok(r.kvs()
                    .iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                    .collect::<Vec<_>>())
            })?;
            Ok(kvs
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k[strip..]).into_owned(), v))
                .collect())
        })
    }

    fn last(&self, prefix: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        retry_connect(|| {
            let full_prefix = self.kkey(prefix);
            let strip = self.kkey("").len();
            let kv = self.run(move |mut c| async move {
                let opts = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(1);
                let r = c.get(full_prefix, Some(opts)).await.map_err(backend)?;
                Ok(r.kvs()
                    .first()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec())))
            })?;
            Ok(kv.map(|(k, v)| (String::from_utf8_lossy(&k[strip..]).into_owned(), v)))
        })
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let compares: Vec<Compare> = batch.conditions.iter().map(|c| self.compare(c)).collect();
        let ops: Vec<TxnOp> = batch
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Put(k, v) => Some(TxnOp::put(self.kkey(k), v.clone(), None)),
                Op::Delete(k) => Some(TxnOp::delete(self.kkey(k), None)),
                Op::DeleteRange { prefix, before } => {
                    let start = self.kkey(prefix);
                    let mut end = self.kkey(before).into_bytes();
                    let cap = prefix_end(&start);
                    if end > cap {
                        end = cap;
                    }
                    (end.as_slice() > start.as_bytes())
                        .then(|| TxnOp::delete(start, Some(DeleteOptions::new().with_range(end))))
                }
            })
            .collect();
        let committed = self.commit_txn(compares, ops)?;
        if committed {
            return Ok(());
        }
        self.failed_condition(&batch.conditions)?;
        Err(StoreError::Conflict {
            key: batch
                .conditions
                .first()
                .map(|c| match c {
                    Condition::Absent(k) | Condition::Equals(k, _) => k.clone(),
                })
                .unwrap_or_default(),
            message: "changed while the transaction ran".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract;
    use crate::store::testing::EtcdServer;

    fn store(etcd: &EtcdServer, ns: &str) -> EtcdStore {
        EtcdStore::connect(&EtcdConfig {
            endpoints: vec![etcd.client_url()],
            namespace: ns.into(),
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[test]
    fn passes_the_store_contract_on_a_real_etcd() {
        let etcd = EtcdServer::start();
        // One etcd, one namespace per contract case: they must not see each other.
        contract::appends_in_order_and_reads_back(&store(&etcd, "/t1/"));
        contract::rejects_gaps_and_repeats(&store(&etcd, "/t2/"));
        contract::batches_are_conditional_and_atomic(&store(&etcd, "/t3/"));
        contract::scans_in_key_order(&store(&etcd, "/t4/"));
        contract::appends_only_when_conditions_hold(&store(&etcd, "/t5/"));
        contract::prunes_old_versions_and_unreferenced_policies(&store(&etcd, "/t7/"));
        contract::reports_versions_appended_elsewhere(
            &store(&etcd, "/t6/"),
            &store(&etcd, "/t6/"),
            true,
        );
    }

    #[test]
    fn one_leader_at_a_time_and_a_resigned_term_frees_the_key() {
        let etcd = EtcdServer::start();
        let a = store(&etcd, "/lead/");
        let b = store(&etcd, "/lead/");
        let ttl = Duration::from_secs(5);
        let term = a.try_lead("a", ttl).unwrap().expect("no one leads yet");
        assert!(b.try_lead("b", ttl).unwrap().is_none());
        assert!(a.keep_alive(&term).unwrap());
        assert_eq!(
            b.leader().unwrap().unwrap(),
            String::from_utf8(term.value.clone()).unwrap()
        );
        // A write fenced on the term passes while it lasts, and not after.
        let fence = Condition::Equals(LEADER_KEY.into(), term.value.clone());
        a.append_when(
            &contract::record(1, 1),
            Some("{}"),
            std::slice::from_ref(&fence),
        )
        .unwrap();
        a.resign(&term).unwrap();
        assert!(!a.keep_alive(&term).unwrap());
        let err = a
            .append_when(&contract::record(2, 1), None, &[fence])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { ref key, .. } if key == LEADER_KEY),
            "{err}"
        );
        let next = b.try_lead("b", ttl).unwrap().expect("the key is free");
        assert_ne!(next.value, term.value);
        assert_eq!(b.latest().unwrap().unwrap().version, 1);
    }

    /// Compaction discards old revisions; a follower whose watch starts at a compacted
    /// revision (it was away while the leader compacted) gets "compacted", reads the
    /// newest version again and follows on.
    #[test]
    fn following_versions_recovers_from_a_compacted_revision() {
        let etcd = EtcdServer::start();
        let s = store(&etcd, "/compact/");
        assert!(s.revision().unwrap().is_some());
        s.append(&contract::record(1, 1), Some("{}")).unwrap();
        let first = s.revision().unwrap().unwrap();
        for v in 2..=5 {
            s.append(&contract::record(v, 1), None).unwrap();
        }
        let now = s.revision().unwrap().unwrap();
        assert!(now > first);
        s.compact(now).unwrap();
        // Compacting to a revision already compacted is no error (two leaders, or etcd's
        // own auto-compaction, may both do it).
        s.compact(first).unwrap();
        let key = s.vkey(1);
        let err = s
            .run(move |mut c| async move {
                c.get(key, Some(GetOptions::new().with_revision(first as i64)))
                    .await
                    .map_err(backend)
                    .map(|_| ())
            })
            .unwrap_err();
        assert!(err.to_string().contains("compacted"), "{err}");

        let mut rx = s.subscribe_versions_from(0, first);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut until = |v: u64| {
            rt.block_on(async {
                while *rx.borrow_and_update() < v {
                    rx.changed().await.unwrap();
                }
            })
        };
        until(5);
        s.append(&contract::record(6, 1), None).unwrap();
        until(6);
    }

    #[test]
    fn two_writers_cannot_both_append_a_version() {
        let etcd = EtcdServer::start();
        let a = store(&etcd, "/race/");
        let b = store(&etcd, "/race/");
        a.append(&contract::record(1, 1), Some("{}")).unwrap();
        // Both read latest = 1 and try version 2: exactly one wins.
        let results: Vec<_> = std::thread::scope(|s| {
            let ha = s.spawn(|| a.append(&contract::record(2, 1), None));
            let hb = s.spawn(|| b.append(&contract::record(2, 1), None));
            vec![ha.join().unwrap(), hb.join().unwrap()]
        });
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(StoreError::OutOfOrder { latest: 2, got: 2 }))));
        assert_eq!(b.latest().unwrap().unwrap().version, 2);
    }

    #[test]
    fn survives_a_reconnect_and_reports_an_unreachable_cluster() {
        let mut etcd = EtcdServer::start();
        {
            let s = store(&etcd, "/re/");
            s.append(&contract::record(1, 1), Some("{\"v\":1}"))
                .unwrap();
            s.commit(&Batch::new().put("audit/1", b"x".to_vec()))
                .unwrap();
        }
        let s = store(&etcd, "/re/");
        assert_eq!(s.latest().unwrap().unwrap().version, 1);
        assert_eq!(s.read("audit/1").unwrap().as_deref(), Some(&b"x"[..]));
        etcd.stop();
        let err = s.read("audit/1").unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(
            err.to_string().starts_with("store unavailable: etcd:"),
            "{err}"
        );
        assert!(EtcdStore::connect(&EtcdConfig {
            endpoints: vec![etcd.client_url()],
            namespace: "/re/".into(),
            timeout: Duration::from_millis(500),
        })
        .is_err());
    }
}
