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
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, SortOrder, SortTarget,
    Txn, TxnOp,
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

fn backend(e: etcd_client::Error) -> StoreError {
    StoreError::Backend(format!("etcd: {e}"))
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
        let options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            .with_timeout(config.timeout);
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

    fn decode(version: u64, bytes: &[u8]) -> Result<VersionRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            version,
            message: e.to_string(),
        })
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

impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd:{} (prefix {})", self.endpoints.join(","), self.ns)
    }

    fn append(&self, record: &VersionRecord, policy_json: Option<&str>) -> Result<(), StoreError> {
        let encoded = serde_json::to_vec(record).map_err(|e| StoreError::Backend(e.to_string()))?;
        let v = record.version;
        let this = self.vkey(v);
        let prev = self.vkey(v.saturating_sub(1));
        let pkey = self.pkey(v);
        let policy = policy_json.map(str::to_string);
        let committed = self.run(move |mut c| async move {
            let mut compares = vec![Compare::create_revision(this.clone(), CompareOp::Equal, 0)];
            if v > 1 {
                compares.push(Compare::create_revision(prev, CompareOp::Greater, 0));
            }
            let mut ops = vec![TxnOp::put(this, encoded, None)];
            if let Some(p) = policy {
                ops.push(TxnOp::put(pkey, p, None));
            }
            let r = c
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .map_err(backend)?;
            Ok(r.succeeded())
        })?;
        if committed {
            return Ok(());
        }
        let latest = self.latest()?.map(|r| r.version).unwrap_or(0);
        Err(StoreError::OutOfOrder { latest, got: v })
    }

    fn latest(&self) -> Result<Option<VersionRecord>, StoreError> {
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
            Some((k, v)) => {
                let version = String::from_utf8_lossy(&k)
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                Ok(Some(Self::decode(version, &v)?))
            }
            None => Ok(None),
        }
    }

    fn get(&self, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        let key = self.vkey(version);
        let v = self.run(move |mut c| async move {
            let r = c.get(key, None).await.map_err(backend)?;
            Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
        })?;
        v.map(|b| Self::decode(version, &b)).transpose()
    }

    fn policy(&self, policy_version: u64) -> Result<Option<String>, StoreError> {
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
    }

    fn history(&self, before: Option<u64>, limit: usize) -> Result<Vec<VersionRecord>, StoreError> {
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
            .map(|(k, v)| {
                let version = String::from_utf8_lossy(&k)
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                Self::decode(version, &v)
            })
            .collect()
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.kkey(key);
        self.run(move |mut c| async move {
            let r = c.get(key, None).await.map_err(backend)?;
            Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
        })
    }

    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
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
    }

    fn last(&self, prefix: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
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
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let compares: Vec<Compare> = batch
            .conditions
            .iter()
            .map(|c| match c {
                Condition::Absent(k) => Compare::create_revision(self.kkey(k), CompareOp::Equal, 0),
                Condition::Equals(k, v) => {
                    Compare::value(self.kkey(k), CompareOp::Equal, v.clone())
                }
            })
            .collect();
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
        let committed = self.run(move |mut c| async move {
            let r = c
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .map_err(backend)?;
            Ok(r.succeeded())
        })?;
        if committed {
            return Ok(());
        }
        // Name the first condition that does not hold now (best effort: it may have
        // changed again since the transaction ran).
        for c in &batch.conditions {
            let key = match c {
                Condition::Absent(k) | Condition::Equals(k, _) => k,
            };
            let current = self.read(key)?;
            super::check_condition(c, |_| current)?;
        }
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
        assert!(err.to_string().starts_with("store backend: etcd:"), "{err}");
        assert!(EtcdStore::connect(&EtcdConfig {
            endpoints: vec![etcd.client_url()],
            namespace: "/re/".into(),
            timeout: Duration::from_millis(500),
        })
        .is_err());
    }
}
