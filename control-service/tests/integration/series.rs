//! The brain's telemetry series through the real server: Report calls fold into the
//! per-stack window, the status (gRPC and HTTP) shows its percentiles and KPIs, and the
//! window survives a restart (stored at shutdown, read back from redb).

use crate::common::*;
use switchyard_control::proto::v1;
use switchyard_filter::histogram::bucket_of;

const WINDOW_MS: u64 = 60_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One stack's counts: `n` requests that took `ms` each (all timed), `orders` KPIs.
fn stack(name: &str, n: u32, ms: u64, orders: u64) -> v1::StackTelemetry {
    v1::StackTelemetry {
        stack: name.into(),
        requests: u64::from(n),
        status_2xx: u64::from(n),
        latency_buckets: vec![bucket_of(ms * 1_000) as u32, n],
        kpis: vec![v1::NamedCount {
            name: "orders".into(),
            count: orders,
        }],
        by_rule: vec![v1::NamedCount {
            name: "default".into(),
            count: u64::from(n),
        }],
        ..Default::default()
    }
}

fn latest(status: &v1::StatusResponse, name: &str) -> v1::StackWindowStatus {
    status
        .stacks
        .iter()
        .find(|s| s.stack == name)
        .unwrap_or_else(|| panic!("no window for {name}: {status:?}"))
        .clone()
}

#[tokio::test]
async fn reports_become_percentiles_in_status_and_survive_a_restart() {
    let h = Harness::start_with(tempfile::tempdir().unwrap(), |c| {
        c.series.window_ms = WINDOW_MS;
    })
    .await;
    h.apply(&policy("p", &["blue", "green"])).await;
    // Both nodes' batches end inside the current window.
    let end = now_ms() / WINDOW_MS * WINDOW_MS + 1;
    let mut dp = h.data_plane();
    for (node, blue, green) in [
        ("n1", (40, 5, 3), (20, 300, 1)),
        ("n2", (40, 6, 2), (20, 280, 0)),
    ] {
        dp.report(v1::TelemetryBatch {
            node_id: node.into(),
            window_end_unix_ms: end,
            window_ms: 1_000,
            stacks: vec![
                stack("blue", blue.0, blue.1, blue.2),
                stack("green", green.0, green.1, green.2),
            ],
            dropped: 0,
        })
        .await
        .unwrap();
    }

    let check = |status: &v1::StatusResponse| {
        let (blue, green) = (latest(status, "blue"), latest(status, "green"));
        assert_eq!((blue.requests, green.requests), (80, 40));
        assert_eq!(blue.window_start_unix_ms, end - 1);
        assert_eq!(blue.window_ms, WINDOW_MS);
        let p99 = |s: &v1::StackWindowStatus| s.p99_ms.unwrap();
        assert!(p99(&blue) < 10.0, "{blue:?}");
        assert!((250.0..350.0).contains(&p99(&green)), "{green:?}");
        assert!(green.p50_ms.unwrap() > 250.0);
        assert_eq!(blue.kpis[0].name, "orders");
        assert_eq!((blue.kpis[0].count, green.kpis[0].count), (5, 1));
    };
    check(&h.status().await);

    // The HTTP status is the same object.
    let (code, body) = http_get(&h.http_url("/api/v1/status")).await;
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["stacks"]["green"]["requests"], 40);
    assert_eq!(json["stacks"]["blue"]["kpis"]["orders"], 5);
    assert!(json["stacks"]["green"]["p99_ms"].as_f64().unwrap() > 250.0);

    // The telemetry shows the brain's signals and the measured exposure per rule.
    let (code, body) = http_get(&h.http_url("/api/v1/telemetry")).await;
    assert_eq!(code, 200, "{body}");
    let t: serde_json::Value = serde_json::from_str(&body).unwrap();
    let green = &t["signals"]["green"];
    assert!(green["p99_ms"].as_f64().unwrap() > 250.0, "{t:#}");
    assert!(green["p50_ms"].as_f64().unwrap() > 250.0, "{t:#}");
    assert_eq!(green["error_rate"], 0.0);
    assert_eq!(t["signals"]["blue"]["kpis_per_1000"]["orders"], 62.5);
    let share = |s: &str| t["exposure"]["default"][s].as_f64().unwrap();
    assert!((share("blue") - 2.0 / 3.0).abs() < 1e-9, "{t:#}");
    assert!((share("green") - 1.0 / 3.0).abs() < 1e-9, "{t:#}");

    // Restart on the same store: the window was stored at shutdown.
    let dir = h.stop().await;
    let h = Harness::start_with(dir, |c| c.series.window_ms = WINDOW_MS).await;
    check(&h.status().await);
    h.stop().await;
}
