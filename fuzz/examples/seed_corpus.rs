//! Writes the seed corpus (`fuzz/corpus/<target>/seed-*`): valid and near-valid inputs
//! for each target, so libFuzzer starts from the interesting shapes instead of from
//! nothing. Run once after a format change: `cargo run -p switchyard-fuzz --example seed_corpus`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use switchyard_filter::affinity::Keyring;
use switchyard_filter::histogram::Histogram;
use switchyard_filter::snapshot::{
    Snapshot, StackState, StackTelemetry, TelemetryBatch, WatchRequest,
};

const DEMO: &str = include_str!("../../examples/policies/demo.json");

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn main() {
    // policy: the demo, a minimal one, and broken ones of each kind.
    write("policy", "demo", DEMO.as_bytes());
    write(
        "policy",
        "minimal",
        br#"{"stacks":[{"name":"a"}],"default":{"targets":[{"stack":"a"}]}}"#,
    );
    write(
        "policy",
        "unknown-field",
        br#"{"stacks":[{"name":"a","wieght":1}],"default":{"targets":[{"stack":"a"}]}}"#,
    );
    write("policy", "bad-ref", br#"{"stacks":[{"name":"a"}],"rules":[{"id":"r","match":{"regions":["eu"]},"route":{"targets":[{"stack":"b"}]}}],"default":{"targets":[{"stack":"a"}]}}"#);
    write(
        "policy",
        "nested",
        format!("{}{}", "[".repeat(200), "]".repeat(200)).as_bytes(),
    );
    write(
        "policy",
        "not-utf8",
        b"{\"stacks\":[{\"name\":\"\xff\xfe\"}]}",
    );

    // cookie: 13 bytes of epoch/clock/lengths, then the value.
    let keys =
        Keyring::parse("k2=current-secret-0123456789,k1=previous-secret-0123456789").unwrap();
    let prefix = |epoch: u8, now: u64| {
        let mut v = vec![epoch];
        v.extend_from_slice(&now.to_be_bytes());
        v.extend_from_slice(&[4, 10, 0, 0]);
        v
    };
    let genuine = keys.sign("blue", 1, 1_795_740_000);
    let mut d = prefix(1, 1_795_737_600);
    d.extend_from_slice(genuine.as_bytes());
    write("cookie", "genuine", &d);
    let mut d = prefix(1, 1_795_800_000);
    d.extend_from_slice(genuine.as_bytes());
    write("cookie", "expired", &d);
    let old = Keyring::parse("k1=previous-secret-0123456789")
        .unwrap()
        .sign("green", 1, 1_795_740_000);
    let mut d = prefix(1, 1_795_737_600);
    d.extend_from_slice(old.as_bytes());
    write("cookie", "previous-key", &d);
    let mut d = prefix(1, 1_795_737_600);
    d.extend_from_slice(&genuine.as_bytes()[..genuine.len() - 3]);
    write("cookie", "truncated", &d);

    // classify: address kind, clock, health, then header lines.
    let req = |addr: &[u8], lines: &str| {
        let mut v = addr.to_vec();
        v.extend_from_slice(&1_795_737_600_000u64.to_be_bytes());
        v.extend_from_slice(&[100, 100, 100, 100]);
        v.extend_from_slice(lines.as_bytes());
        v
    };
    write(
        "classify",
        "eu",
        &req(&[0], ":path:/cart\nx-geo-country:DE"),
    );
    write(
        "classify",
        "eu-repeated",
        &req(&[0], "x-geo-country:DE\nx-geo-country:US"),
    );
    write("classify", "eu-cidr", &req(&[1, 3, 4], ":path:/"));
    write(
        "classify",
        "mobile",
        &req(&[0], "user-agent:SwitchyardShop-iOS/5\nx-jwt-sub:u-17"),
    );
    write(
        "classify",
        "partner",
        &req(&[2, 1, 2, 3, 4], ":path:/partner/orders\nx-partner-key:k"),
    );
    write(
        "classify",
        "cohort",
        &req(&[0], "x-jwt-cohort:beta\ncookie:session=abc"),
    );
    let mut c = req(&[0], "cookie:sy_aff=");
    c.extend_from_slice(genuine.as_bytes());
    write("classify", "cookie", &c);

    // snapshot: a demo snapshot, and a Watch request.
    let snap = Snapshot {
        version: 7,
        policy_json: DEMO.to_string(),
        stacks: vec![
            StackState {
                name: "blue".into(),
                weight_percent: 100,
                healthy: true,
                ..Default::default()
            },
            StackState {
                name: "green".into(),
                weight_percent: 0,
                healthy: false,
                reason: "down".into(),
                draining: true,
                drain_deadline_unix_ms: 1_795_737_600_000,
                ..Default::default()
            },
            StackState {
                name: "canary".into(),
                evacuating: true,
                ..Default::default()
            },
        ],
        policy_version: 7,
        rule_stacks: Vec::new(),
    };
    write("snapshot", "demo", &snap.encode());
    write(
        "snapshot",
        "watch",
        &WatchRequest {
            node_id: "envoy-1".into(),
            last_applied_version: 6,
            ack_version: 6,
        }
        .encode(),
    );

    // telemetry: a batch with every field set.
    let mut latency = Histogram::new();
    for us in [100, 2_000, 40_000, 900_000] {
        latency.record(us);
    }
    let batch = TelemetryBatch {
        node_id: "envoy-1".into(),
        window_end_unix_ms: 1_795_737_600_000,
        window_ms: 1000,
        stacks: vec![StackTelemetry {
            stack: "blue".into(),
            requests: 10,
            status_2xx: 8,
            status_4xx: 1,
            status_5xx: 1,
            latency_ms_sum: 120,
            affinity_hit: 3,
            affinity_miss: 2,
            affinity_forged: 1,
            local_replies: 0,
            latency,
            kpis: vec![("checkout".into(), 2)],
            by_rule: vec![("default".into(), 10)],
            new_users: 2,
            sticky_requests: 3,
            breaker_opens: 1,
        }],
        dropped: 4,
    };
    write("telemetry", "batch", &batch.encode());

    // abi: one sequence per event kind (the first byte of each event picks it), then
    // mixed pseudo-random sequences.
    for kind in 0u8..10 {
        let mut v = Vec::new();
        for i in 0..12u8 {
            v.extend_from_slice(&[kind, i, i.wrapping_mul(37), 3, 200, 1, 2, 0, 9, 4]);
        }
        write("abi", &format!("event-{kind}"), &v);
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..6 {
        let v: Vec<u8> = (0..400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        write("abi", &format!("mixed-{n}"), &v);
    }
}
