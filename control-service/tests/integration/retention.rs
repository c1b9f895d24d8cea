//! Bounded store growth (`[retention]`): old versions are pruned while the service runs,
//! everything that reads an old version answers clearly once it is gone, an Envoy that
//! last applied a pruned version gets the newest snapshot, and on etcd the leader compacts
//! etcd's revision history while a follower keeps serving and following.

use std::time::Duration;

use crate::common::*;
use switchyard_control::config::StoreKind;
use switchyard_control::control::RetentionSettings;
use switchyard_control::proto::v1;
use switchyard_control::store::EtcdConfig;
use switchyard_harness::EtcdCluster;
use tonic::Code;

fn keep(n: u64) -> RetentionSettings {
    RetentionSettings {
        keep_versions: n,
        prune_every: Duration::from_millis(50),
        ..RetentionSettings::default()
    }
}

/// Apply 30 distinct policies; returns the newest version's policy document.
async fn thirty_pushes(h: &Harness) -> String {
    let mut doc = String::new();
    for i in 1..=30 {
        doc = policy(&format!("p{i}"), &["blue", "green"]);
        assert_eq!(h.apply(&doc).await.version, i);
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_versions_answer_clearly_and_a_watch_behind_them_gets_the_newest_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start_with(dir, |cfg| cfg.retention = keep(10)).await;
    let newest = thirty_pushes(&h).await;

    // The leader's upkeep prunes down to the newest 10 (21..=30) on its own.
    let mut policies = h.policies();
    eventually("versions 1..=20 pruned", || {
        let mut p = policies.clone();
        async move {
            let r = p
                .history(v1::HistoryRequest {
                    limit: 100,
                    ..Default::default()
                })
                .await
                .expect("history")
                .into_inner();
            r.versions.len() == 10
        }
    })
    .await;
    let r = policies
        .history(v1::HistoryRequest {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<u64> = r.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, (21..=30).rev().collect::<Vec<_>>());

    // gRPC get, rollback; HTTP policy and diff: a pruned version is a clear NOT_FOUND.
    let err = policies
        .get(v1::GetPolicyRequest { version: 5 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("version 5 is no longer kept")
            && err.message().contains("the oldest kept is 21"),
        "{err:?}"
    );
    let err = policies
        .rollback(v1::RollbackRequest {
            to_version: 5,
            actor: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let (status, body) = http_get(&h.http_url("/api/v1/policy?version=5")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no longer kept"), "{body}");
    let (status, body) = http_get(&h.http_url("/api/v1/policy/diff?from=5&to=30")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no longer kept"), "{body}");
    let (status, body) = http_get(&h.http_url("/api/v1/policy/diff?from=21&to=30")).await;
    assert_eq!(status, 200, "{body}");

    // An Envoy that last applied version 5 (pruned since) gets the newest snapshot, once.
    let mut w = h.watch("envoy-behind", 5).await;
    let s = w.next().await;
    assert_eq!(s.version, 30);
    assert_eq!(s.policy_json, newest);
    w.expect_quiet(Duration::from_millis(300)).await;

    // The audit log keeps every change and still verifies.
    let v = http_json(&h.http_url("/api/v1/audit/verify")).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["entries"], 30, "{v}");
}

fn on_etcd(
    etcd: &EtcdCluster,
    id: &str,
) -> impl FnOnce(&mut switchyard_control::config::ServeConfig) {
    let endpoints = etcd.client_urls();
    let id = id.to_string();
    move |cfg| {
        cfg.store = StoreKind::Etcd;
        cfg.etcd = EtcdConfig {
            endpoints,
            namespace: "/retention/".into(),
            timeout: Duration::from_secs(2),
        };
        cfg.replica.id = id;
        cfg.replica.lease_ttl = Duration::from_secs(3);
        cfg.retention = RetentionSettings {
            compact_every: Some(Duration::from_millis(300)),
            ..keep(10)
        };
    }
}

/// etcd's compaction revision, as a watch from revision 1 reports it (0: never compacted).
async fn compact_revision(etcd: &EtcdCluster) -> i64 {
    let mut c = etcd_client::Client::connect(etcd.client_urls(), None)
        .await
        .expect("etcd client");
    let mut stream = c
        .watch(
            "/retention/",
            Some(
                etcd_client::WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(1),
            ),
        )
        .await
        .expect("watch");
    loop {
        let m = stream.message().await.expect("watch").expect("open");
        if m.canceled() || m.compact_revision() > 0 {
            return m.compact_revision();
        }
        if !m.events().is_empty() {
            return 0; // revision 1 is still there: nothing compacted
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_etcd_and_a_follower_keeps_serving_and_following() {
    let etcd = EtcdCluster::start(1);
    let a = Harness::start_with(tempfile::tempdir().unwrap(), on_etcd(&etcd, "a")).await;
    while !a.server.role().is_leader() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = Harness::start_with(tempfile::tempdir().unwrap(), on_etcd(&etcd, "b")).await;
    assert!(!b.server.role().is_leader());
    let mut on_b = b.watch("envoy-b", 0).await;

    // 30 versions, written through the follower and the leader alike.
    for i in 1..=30u64 {
        let h = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            h.apply(&policy(&format!("p{i}"), &["blue", "green"]))
                .await
                .version,
            i
        );
    }
    let revision_after_pushes = {
        let mut c = etcd_client::Client::connect(etcd.client_urls(), None)
            .await
            .unwrap();
        c.get(
            "/retention/",
            Some(etcd_client::GetOptions::new().with_count_only()),
        )
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
    };
    // The leader compacts up to the revision it saw one interval earlier: soon past
    // every revision the pushes made.
    for i in 0u64.. {
        if compact_revision(&etcd).await >= revision_after_pushes {
            break;
        }
        if i > 0 && i % 100 == 0 {
            eprintln!(
                "still waiting for etcd's compaction to pass revision {revision_after_pushes}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The follower kept following (its Watch reached 30) and keeps serving and following.
    let mut seen = 0;
    while seen < 30 {
        seen = on_b.next().await.version;
    }
    for i in 31..=35u64 {
        let h = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            h.apply(&policy(&format!("p{i}"), &["blue", "green"]))
                .await
                .version,
            i
        );
    }
    while seen < 35 {
        seen = on_b.next().await.version;
    }
    assert_eq!(b.status().await.current_version, 35);
    // A new Envoy on the follower behind the kept history gets the newest snapshot.
    assert_eq!(b.watch("envoy-new", 3).await.next().await.version, 35);
    // And the leader pruned the history in etcd to the newest 10.
    let mut p = b.policies();
    eventually("etcd history pruned to 10 versions", || {
        let mut p = p.clone();
        async move {
            p.history(v1::HistoryRequest {
                limit: 100,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().versions.len() == 10)
            .unwrap_or(false)
        }
    })
    .await;
    let err = p
        .get(v1::GetPolicyRequest { version: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    b.stop().await;
    a.stop().await;
}
