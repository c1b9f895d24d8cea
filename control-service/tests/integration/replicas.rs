//! Several control-service replicas (`server::start`, in this process) on one real
//! 3-member etcd cluster: every replica publishes what any of them commits, conflicting
//! writes abort, one replica leads and another takes over when it dies, a deposed
//! leader's writes are fenced off, and losing etcd's quorum refuses writes while reads
//! and Watch keep serving.

use std::time::Duration;

use crate::common::*;
use switchyard_control::config::{ServeConfig, StoreKind};
use switchyard_control::proto::v1;
use switchyard_control::store::{EtcdConfig, EtcdStore, Store};
use switchyard_harness::EtcdCluster;
use tonic::Code;

/// The config of replica `id` on `etcd` (every member), under key prefix `ns`.
fn on_etcd(
    etcd: &EtcdCluster,
    ns: &str,
    id: &str,
    lease_ttl: Duration,
) -> impl FnOnce(&mut ServeConfig) {
    let endpoints = etcd.client_urls();
    let (ns, id) = (ns.to_string(), id.to_string());
    move |cfg: &mut ServeConfig| {
        cfg.store = StoreKind::Etcd;
        cfg.etcd = EtcdConfig {
            endpoints,
            namespace: ns,
            timeout: Duration::from_secs(2),
        };
        cfg.replica.id = id;
        cfg.replica.lease_ttl = lease_ttl;
    }
}

async fn replicas(etcd: &EtcdCluster, ns: &str, ids: &[&str], ttl: Duration) -> Vec<Harness> {
    let mut out = Vec::new();
    for id in ids {
        let dir = tempfile::tempdir().expect("tempdir");
        out.push(Harness::start_with(dir, on_etcd(etcd, ns, id, ttl)).await);
    }
    out
}

fn leaders(rs: &[&Harness]) -> Vec<String> {
    rs.iter()
        .filter(|h| h.server.role().is_leader())
        .map(|h| h.server.role().id().to_string())
        .collect()
}

/// Poll until `f` holds, without a deadline of its own: the test's harness bounds it.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for i in 0u64.. {
        if f() {
            return;
        }
        if i > 0 && i % 500 == 0 {
            eprintln!("still waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn apply_expecting(h: &Harness, doc: &str, expected: u64) -> Result<u64, tonic::Status> {
    h.policies()
        .apply(v1::ApplyPolicyRequest {
            policy_json: doc.into(),
            actor: "test".into(),
            expected_version: expected,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().version)
}

/// Apply `doc`, again while etcd is electing a leader (a paused or killed member may have
/// been it): such writes are refused with UNAVAILABLE and change nothing.
async fn apply_until_ok(h: &Harness, doc: &str) -> u64 {
    loop {
        match apply_expecting(h, doc, 0).await {
            Ok(v) => return v,
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

fn etcd_store(etcd: &EtcdCluster, ns: &str) -> EtcdStore {
    EtcdStore::connect(&EtcdConfig {
        endpoints: etcd.client_urls(),
        namespace: ns.into(),
        timeout: Duration::from_secs(2),
    })
    .expect("etcd store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_publishes_each_version_and_conflicting_writes_abort() {
    let etcd = EtcdCluster::start(3);
    let rs = replicas(&etcd, "/follow/", &["a", "b", "c"], Duration::from_secs(3)).await;
    let (a, b, c) = (&rs[0], &rs[1], &rs[2]);
    let mut on_b = b.watch("envoy-b", 0).await;
    let mut on_c = c.watch("envoy-c", 0).await;

    // Applied on A, published by B and C.
    assert_eq!(a.apply(&policy("one", &["blue", "green"])).await.version, 1);
    assert_eq!(on_b.next().await.version, 1);
    assert_eq!(on_c.next().await.version, 1);
    let s = b.status().await;
    assert_eq!((s.current_version, s.replica_id.as_str()), (1, "b"));

    // Two operators on two replicas, both building on version 1: exactly one wins.
    let (doc_a, doc_b) = (policy("two-a", &["blue"]), policy("two-b", &["green"]));
    let (ra, rb) = tokio::join!(apply_expecting(a, &doc_a, 1), apply_expecting(b, &doc_b, 1),);
    let (won, lost) = match (ra, rb) {
        (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
        other => panic!("exactly one of two conflicting applies must win: {other:?}"),
    };
    assert_eq!(won, 2);
    assert_eq!(lost.code(), Code::Aborted, "{lost:?}");
    assert!(lost.message().contains("current version is 2"), "{lost:?}");
    // Every replica ends on the winner, and the store holds it once.
    assert_eq!(on_b.next().await.version, 2);
    assert_eq!(on_c.next().await.version, 2);
    let history = a
        .policies()
        .history(v1::HistoryRequest::default())
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<u64> = history.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![2, 1]);

    // A stack change on C (no expected version) builds on the version C follows.
    let stack = match history.versions[0].policy_name.as_str() {
        "two-a" => "blue",
        _ => "green",
    };
    c.stacks()
        .set_weight(v1::SetWeightRequest {
            stack: stack.into(),
            weight_percent: 40,
            reason: "canary".into(),
            actor: "test".into(),
        })
        .await
        .expect("set weight on C");
    assert_eq!(on_b.next().await.version, 3);
    assert_eq!(on_c.next().await.version, 3);

    // One leader among the three, and it says so in status and /metrics.
    until("a leader", || leaders(&[a, b, c]).len() == 1).await;
    let all = [a, b, c];
    let leader = all
        .iter()
        .find(|h| h.server.role().is_leader())
        .expect("a leader");
    assert!(leader.status().await.leader);
    let (_, metrics) = http_get(&leader.http_url("/metrics")).await;
    let line = format!(
        "switchyard_control_leader{{replica=\"{}\"}} 1",
        leader.server.role().id()
    );
    assert!(metrics.contains(&line), "{metrics}");
    for h in rs {
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_behind_never_sends_an_older_snapshot() {
    let etcd = EtcdCluster::start(3);
    // A talks to members 0 and 1, C to member 2 only: pausing member 2 holds C back
    // while A goes on (0 and 1 are a quorum).
    let a = Harness::start_with(tempfile::tempdir().unwrap(), {
        let tweak = on_etcd(&etcd, "/behind/", "a", Duration::from_secs(3));
        let two = vec![etcd.client_url(0), etcd.client_url(1)];
        move |cfg: &mut ServeConfig| {
            tweak(cfg);
            cfg.etcd.endpoints = two;
        }
    })
    .await;
    let c = Harness::start_with(tempfile::tempdir().unwrap(), {
        let tweak = on_etcd(&etcd, "/behind/", "c", Duration::from_secs(3));
        let only = etcd.client_url(2);
        move |cfg: &mut ServeConfig| {
            tweak(cfg);
            cfg.etcd.endpoints = vec![only];
        }
    })
    .await;
    a.apply(&policy("one", &["blue"])).await;
    until("C on version 1", || c.server.control.current_version() == 1).await;

    let pid = etcd.pid(2).expect("member 2 runs");
    signal("-STOP", pid);
    assert_eq!(apply_until_ok(&a, &policy("two", &["blue"])).await, 2);
    assert_eq!(c.server.control.current_version(), 1, "C cannot follow now");
    // An Envoy that has version 2 (from A) reconnects to C: C holds the stream
    // instead of sending version 1.
    let mut envoy = c.watch("envoy", 2).await;
    signal("-CONT", pid);
    until("C catches up", || c.server.control.current_version() == 2).await;
    assert_eq!(apply_until_ok(&a, &policy("three", &["blue"])).await, 3);
    // The first thing the Envoy gets is newer than what it has.
    assert_eq!(envoy.next().await.version, 3);
    a.stop().await;
    c.stop().await;
}

fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_leads_when_the_leader_dies() {
    let etcd = EtcdCluster::start(3);
    let ttl = Duration::from_secs(2);
    let mut rs = replicas(&etcd, "/failover/", &["a", "b", "c"], ttl).await;
    until("a leader", || {
        leaders(&rs.iter().collect::<Vec<_>>()).len() == 1
    })
    .await;
    let at = rs.iter().position(|h| h.server.role().is_leader()).unwrap();
    let dead = rs.remove(at);
    let dead_id = dead.server.role().id().to_string();
    // Killed without resigning: the others wait for its lease to expire.
    dead.server.kill().await;
    until("another leader", || {
        leaders(&rs.iter().collect::<Vec<_>>()).len() == 1
    })
    .await;
    let now = leaders(&rs.iter().collect::<Vec<_>>());
    assert_ne!(now[0], dead_id);
    // The survivors still take writes and agree on them.
    let v = rs[0].apply(&policy("after", &["blue"])).await.version;
    until("both on the new version", || {
        rs.iter().all(|h| h.server.control.current_version() == v)
    })
    .await;
    // Still exactly one leader.
    assert_eq!(leaders(&rs.iter().collect::<Vec<_>>()).len(), 1);
    for h in rs {
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_writes_are_fenced_off() {
    let etcd = EtcdCluster::start(3);
    // A long lease: the deposed leader renews only every 10 s, so it still believes it
    // leads when it writes below — as a leader paused past its lease would on waking.
    let ttl = Duration::from_secs(30);
    let rs = replicas(&etcd, "/fence/", &["a", "b"], ttl).await;
    let (a, b) = (&rs[0], &rs[1]);
    a.apply(&policy("one", &["blue", "green"])).await;
    until("a leader", || leaders(&[a, b]).len() == 1).await;
    let (old, other) = if a.server.role().is_leader() {
        (a, b)
    } else {
        (b, a)
    };
    let store = etcd_store(&etcd, "/fence/");
    let term = store.leader().unwrap().expect("a term");
    // Its lease ends (as when it was paused past the TTL): the term is over in etcd.
    revoke(&etcd, &term).await;

    let before = store.latest().unwrap().unwrap().version;
    // Its next write — background work and API writes alike go through the fence — is
    // refused (it still believes it leads: nothing idle writes, and its next renewal is
    // 10 s away). The refusal makes it step down.
    assert!(old.server.role().is_leader());
    let refused = old
        .stacks()
        .set_weight(v1::SetWeightRequest {
            stack: "green".into(),
            weight_percent: 10,
            reason: "from a deposed leader".into(),
            actor: "test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(store.latest().unwrap().unwrap().version, before);
    // It stepped down on the refusal; a new term began (on either replica).
    until("a new term", || {
        store.leader().ok().flatten().is_some_and(|t| t != term)
    })
    .await;
    until("one leader again", || leaders(&[a, b]).len() == 1).await;
    // The same change made again now lands once.
    other
        .stacks()
        .set_weight(v1::SetWeightRequest {
            stack: "green".into(),
            weight_percent: 10,
            reason: "again".into(),
            actor: "test".into(),
        })
        .await
        .expect("a replica that does not lead writes unfenced");
    assert_eq!(store.latest().unwrap().unwrap().version, before + 1);
    for h in rs {
        h.stop().await;
    }
}

/// Revoke the lease of a term (`<id>/<lease hex>`), as its expiry would.
async fn revoke(etcd: &EtcdCluster, term: &str) {
    let lease = i64::from_str_radix(term.rsplit('/').next().unwrap(), 16).expect("lease id");
    let mut client = etcd_client::Client::connect(etcd.client_urls(), None)
        .await
        .expect("etcd client");
    client.lease_revoke(lease).await.expect("revoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_are_refused_and_reads_and_watch_keep_serving() {
    let mut etcd = EtcdCluster::start(3);
    let a = Harness::start_with(
        tempfile::tempdir().unwrap(),
        on_etcd(&etcd, "/quorum/", "a", Duration::from_secs(3)),
    )
    .await;
    let acked = a.apply(&policy("one", &["blue", "green"])).await.version;
    let mut envoy = a.watch("envoy", 0).await;
    assert_eq!(envoy.next().await.version, acked);

    etcd.kill(1);
    etcd.kill(2);
    let err = apply_expecting(&a, &policy("two", &["blue"]), 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let (status, body) = http_get(&a.http_url("/api/v1/status")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.status().await.current_version, acked);
    let current = a
        .policies()
        .get(v1::GetPolicyRequest { version: 0 })
        .await
        .expect("the state in force is served from memory")
        .into_inner();
    assert_eq!(current.policy_json, policy("one", &["blue", "green"]));

    etcd.restart(1);
    etcd.restart(2);
    // Writes work again once the client has reconnected.
    let mut next = None;
    while next.is_none() {
        match apply_expecting(&a, &policy("three", &["blue"]), 0).await {
            Ok(v) => next = Some(v),
            Err(e) if matches!(e.code(), Code::Unavailable | Code::Aborted) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let next = next.unwrap();
    // The Watch stream outlived the outage and gets the new version.
    let mut got = envoy.next().await.version;
    while got < next {
        got = envoy.next().await.version;
    }
    assert_eq!(got, next);
    // Nothing acknowledged was lost: version 1 is still the first policy.
    let store = etcd_store(&etcd, "/quorum/");
    let first = store
        .get(acked)
        .unwrap()
        .expect("acknowledged version kept");
    assert_eq!(first.policy_name.as_deref(), Some("one"));
    assert_eq!(store.latest().unwrap().unwrap().version, next);
    a.stop().await;
}
