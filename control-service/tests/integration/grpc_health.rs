//! grpc.health.v1 follows the store on etcd: a replica that cannot reach etcd answers
//! NOT_SERVING (so Envoy's health checks, `envoy/control-replicas.yaml`, move its Envoys
//! to another replica) while it keeps serving its last snapshot, and SERVING again once
//! etcd answers. A real etcd member, killed and restarted; the real server in this process.

use std::time::Duration;

use crate::common::*;
use switchyard_control::config::StoreKind;
use switchyard_control::store::EtcdConfig;
use switchyard_harness::EtcdCluster;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The status a Check of `service` answers.
async fn check(h: &Harness, service: &str) -> ServingStatus {
    let r = HealthClient::new(h.channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("the health service answers whatever the store does")
        .into_inner();
    ServingStatus::try_from(r.status).unwrap()
}

/// Poll until every service answers `want` (bounded by the test harness's timeout).
async fn until_all(h: &Harness, want: ServingStatus) {
    for i in 0u64.. {
        let mut all = true;
        for s in ["", "switchyard.v1.DataPlane", "switchyard.v1.Policies"] {
            all &= check(h, s).await == want;
        }
        if all {
            return;
        }
        if i > 0 && i % 100 == 0 {
            eprintln!("still waiting for {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_etcd_is_unreachable_and_serving_once_it_answers() {
    let mut etcd = EtcdCluster::start(1);
    let endpoints = etcd.client_urls();
    let h = Harness::start_with(tempfile::tempdir().unwrap(), move |cfg| {
        cfg.store = StoreKind::Etcd;
        cfg.etcd = EtcdConfig {
            endpoints,
            namespace: "/health/".into(),
            timeout: Duration::from_secs(2),
        };
        cfg.replica.id = "a".into();
        cfg.replica.lease_ttl = Duration::from_secs(3);
    })
    .await;
    let acked = h.apply(&policy("one", &["blue", "green"])).await.version;
    assert_eq!(check(&h, "").await, ServingStatus::Serving);
    assert_eq!(
        check(&h, "switchyard.v1.DataPlane").await,
        ServingStatus::Serving
    );

    etcd.kill(0);
    until_all(&h, ServingStatus::NotServing).await;
    // Not serving by its health, yet still serving its last snapshot to whoever asks.
    let mut envoy = h.watch("envoy", 0).await;
    assert_eq!(envoy.next().await.version, acked);
    assert_eq!(h.status().await.current_version, acked);

    etcd.restart(0);
    until_all(&h, ServingStatus::Serving).await;
    // And it writes again.
    let mut written = false;
    while !written {
        written = h
            .policies()
            .apply(switchyard_control::proto::v1::ApplyPolicyRequest {
                policy_json: policy("two", &["blue"]),
                actor: "test".into(),
                ..Default::default()
            })
            .await
            .is_ok();
        if !written {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    h.stop().await;
}
