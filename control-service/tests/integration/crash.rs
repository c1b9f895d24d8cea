//! Durability of the real server binary: kill -9 in the middle of a burst of changes
//! loses no version that was acknowledged, and SIGTERM shuts down cleanly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use switchyard_control::proto::v1;

#[derive(Debug, Clone)]
enum Acked {
    Policy(String),
    Weight(u32),
}

type Log = Arc<Mutex<Vec<(u64, Acked)>>>;

/// Three writers apply distinct policies and one moves a weight, all racing to commit,
/// until the server dies under them. Returns once every writer saw its call fail.
async fn burst_until_killed(
    server: &mut ServerProcess,
    acked: &Log,
    kill_after: usize,
    round: usize,
) {
    let channel = connect(&server.grpc).await;
    let pol = v1::policies_client::PoliciesClient::new(channel.clone());
    let start = acked.lock().unwrap().len();
    let mut tasks = Vec::new();
    for w in 0..3 {
        let mut pol = pol.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let doc = policy(&format!("burst-{round}-{w}-{i}"), &["blue", "green"]);
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
                let percent = (i + round as u32 * 7) % 100;
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
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < start + kill_after {
        assert!(std::time::Instant::now() < deadline, "burst too slow");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every acknowledged version is in the store with its exact content; history is gapless.
async fn verify(server: &ServerProcess, acked: &Log) -> u64 {
    let mut pol = v1::policies_client::PoliciesClient::new(connect(&server.grpc).await);
    let acked = acked.lock().unwrap().clone();
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
        "restored v{} < acknowledged v{max_acked}",
        hist.current_version
    );
    let mut versions: Vec<u64> = hist.versions.iter().map(|v| v.version).collect();
    versions.reverse();
    assert_eq!(
        versions,
        (1..=hist.current_version).collect::<Vec<_>>(),
        "gapless history"
    );
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
    // The audit chain verifies and names every version exactly once, including versions
    // committed just before the kill whose audit entry was recovered on restart.
    let mut audit = v1::audit_client::AuditClient::new(connect(&server.grpc).await);
    let check = audit
        .verify(v1::AuditVerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(check.ok, "audit chain: {check:?}");
    let mut audited = Vec::new();
    let mut after = 0;
    loop {
        let page = audit
            .list(v1::AuditListRequest {
                after_seq: after,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let Some(last) = page.entries.last() else {
            break;
        };
        after = last.seq;
        audited.extend(page.entries.iter().map(|e| e.version).filter(|v| *v > 0));
    }
    assert_eq!(
        audited,
        (1..=hist.current_version).collect::<Vec<_>>(),
        "every version audited once, in order"
    );
    hist.current_version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_acknowledged_version() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = ServerProcess::spawn(&data, &[]);
    let seed = policy("seed", &["blue", "green"]);
    v1::policies_client::PoliciesClient::new(connect(&server.grpc).await)
        .apply(v1::ApplyPolicyRequest {
            policy_json: seed.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let acked: Log = Arc::new(Mutex::new(vec![(1, Acked::Policy(seed))]));
    // Three crashes at different points of a burst, each followed by a restart that must
    // hold everything acknowledged so far.
    for (round, kill_after) in [(0, 60), (1, 23), (2, 41)] {
        burst_until_killed(&mut server, &acked, kill_after, round).await;
        server = ServerProcess::spawn(&data, &[]);
        let restored = verify(&server, &acked).await;
        eprintln!(
            "round {round}: {} versions acknowledged so far; restored v{restored}",
            acked.lock().unwrap().len()
        );
    }
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

/// A harness that reads the ready line and then closes both pipes must still be able to
/// stop the server: log writes to a closed stderr may not panic (release builds abort).
#[test]
fn closed_stdout_and_stderr_do_not_break_the_server() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard-control"))
        .args([
            "serve",
            "--no-auth",
            "--grpc",
            "127.0.0.1:0",
            "--no-http",
            "--data-dir",
        ])
        .arg(tmp.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("grpc listening on 127.0.0.1:"), "{line}");
    drop(child.stderr.take());
    let addr = line
        .trim()
        .trim_start_matches("grpc listening on ")
        .to_string();
    // Make it log (to the closed stderr) while serving.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut pol =
            v1::policies_client::PoliciesClient::new(connect(&format!("http://{addr}")).await);
        pol.apply(v1::ApplyPolicyRequest {
            policy_json: policy("a", &["blue"]),
            ..Default::default()
        })
        .await
        .unwrap();
    });
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("server did not exit on SIGTERM with closed pipes");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// The same burst-and-kill on the etcd backend: what a replica acknowledged is in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_the_etcd_store_loses_no_acknowledged_version() {
    let etcd = switchyard_harness::EtcdServer::start();
    let url = etcd.client_url();
    let args = ["--store", "etcd", "--etcd-endpoints", url.as_str()];
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("unused");
    let mut server = ServerProcess::spawn(&data, &args);
    let seed = policy("seed", &["blue", "green"]);
    v1::policies_client::PoliciesClient::new(connect(&server.grpc).await)
        .apply(v1::ApplyPolicyRequest {
            policy_json: seed.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let acked: Log = Arc::new(Mutex::new(vec![(1, Acked::Policy(seed))]));
    burst_until_killed(&mut server, &acked, 30, 0).await;
    server = ServerProcess::spawn(&data, &args);
    let restored = verify(&server, &acked).await;
    assert!(!data.exists(), "the etcd store writes no local data");
    eprintln!("etcd: restored v{restored}");
}
