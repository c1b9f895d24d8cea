//! Durability of the real server binary: kill -9 in the middle of a burst of changes
//! loses no version that was acknowledged, and SIGTERM shuts down cleanly.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use switchyard_control::proto::v1;

#[derive(Debug, Clone)]
enum Acked {
    Policy(String),
    Weight(u32),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_acknowledged_version() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = ServerProcess::spawn(&data, &[]);
    let channel = connect(&server.grpc).await;
    let mut pol = v1::policies_client::PoliciesClient::new(channel.clone());
    pol.apply(v1::ApplyPolicyRequest {
        policy_json: policy("seed", &["blue", "green"]),
        ..Default::default()
    })
    .await
    .unwrap();

    let acked: Arc<Mutex<Vec<(u64, Acked)>>> = Arc::new(Mutex::new(vec![(
        1,
        Acked::Policy(policy("seed", &["blue", "green"])),
    )]));
    let mut tasks = Vec::new();
    // Three writers apply distinct policies, one moves a weight: all race to commit.
    for w in 0..3 {
        let mut pol = pol.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let doc = policy(&format!("burst-{w}-{i}"), &["blue", "green"]);
                match pol
                    .apply(v1::ApplyPolicyRequest {
                        policy_json: doc.clone(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) => acked
                        .lock()
                        .unwrap()
                        .push((r.into_inner().version, Acked::Policy(doc))),
                    Err(_) => break,
                }
            }
        }));
    }
    {
        let mut st = v1::stacks_client::StacksClient::new(channel.clone());
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u32.. {
                let percent = i % 100;
                let req = v1::SetWeightRequest {
                    stack: "green".into(),
                    weight_percent: percent,
                    ..Default::default()
                };
                match st.set_weight(req).await {
                    Ok(r) if r.get_ref().changed => acked
                        .lock()
                        .unwrap()
                        .push((r.into_inner().version, Acked::Weight(percent))),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }));
    }
    // Let the burst run, then pull the plug mid-flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 60 {
        assert!(std::time::Instant::now() < deadline, "burst too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 60);

    let server = ServerProcess::spawn(&data, &[]);
    let channel = connect(&server.grpc).await;
    let mut pol = v1::policies_client::PoliciesClient::new(channel);
    let hist = pol
        .history(v1::HistoryRequest {
            limit: 1000,
            before_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let max_acked = acked.iter().map(|(v, _)| *v).max().unwrap();
    assert!(
        hist.current_version >= max_acked,
        "restored {} < acknowledged {max_acked}",
        hist.current_version
    );
    // Gapless: every version from 1 to the latest is there.
    let mut versions: Vec<u64> = hist.versions.iter().map(|v| v.version).collect();
    versions.reverse();
    assert_eq!(versions, (1..=hist.current_version).collect::<Vec<_>>());
    for (version, what) in &acked {
        let got = pol
            .get(v1::GetPolicyRequest { version: *version })
            .await
            .unwrap()
            .into_inner();
        let info = got.info.unwrap();
        match what {
            Acked::Policy(doc) => {
                assert_eq!(
                    &got.policy_json, doc,
                    "policy of acknowledged version {version}"
                );
                assert_eq!(info.kind, "policy_apply");
            }
            Acked::Weight(p) => {
                assert_eq!(info.kind, "stack_weight", "version {version}");
                assert!(
                    info.summary.ends_with(&format!("-> {p}%")),
                    "version {version}: {}",
                    info.summary
                );
            }
        }
    }
    eprintln!(
        "acknowledged {} versions (max v{max_acked}); restored v{}",
        acked.len(),
        hist.current_version
    );
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_restart_keeps_state() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = ServerProcess::spawn(&data, &[]);
    let channel = connect(&server.grpc).await;
    let mut pol = v1::policies_client::PoliciesClient::new(channel.clone());
    pol.apply(v1::ApplyPolicyRequest {
        policy_json: policy("a", &["blue"]),
        ..Default::default()
    })
    .await
    .unwrap();
    // An Envoy is connected while we stop: the stream must not hold shutdown up.
    let mut w = Watch::open(
        v1::data_plane_client::DataPlaneClient::new(channel),
        "envoy",
        0,
    )
    .await;
    assert_eq!(w.next().await.version, 1);
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    let server = ServerProcess::spawn(&data, &[]);
    let mut pol = v1::policies_client::PoliciesClient::new(connect(&server.grpc).await);
    let cur = pol
        .get(v1::GetPolicyRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cur.policy_json, policy("a", &["blue"]));
}
