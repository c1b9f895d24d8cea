//! Golden wire bytes of the data-plane messages. The wasm singleton encodes and decodes
//! these by hand; its codec tests can use the same vectors (see README, "Data plane
//! wire format"). If one of these changes, the data-plane contract changed.

use prost::Message;
use switchyard_control::proto::v1;

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unhex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn golden<M: Message + Default + PartialEq + std::fmt::Debug>(msg: M, expected: &str) {
    assert_eq!(hex(&msg.encode_to_vec()), expected, "{msg:?}");
    assert_eq!(M::decode(unhex(expected).as_slice()).unwrap(), msg);
}

#[test]
fn watch_request_first_message() {
    golden(
        v1::WatchRequest {
            node_id: "envoy-1".into(),
            last_applied_version: 7,
            ack_version: 0,
        },
        "0a 07 65 6e 76 6f 79 2d 31 10 07",
    );
}

#[test]
fn watch_request_ack() {
    golden(
        v1::WatchRequest {
            node_id: String::new(),
            last_applied_version: 0,
            ack_version: 300,
        },
        "18 ac 02",
    );
}

#[test]
fn snapshot() {
    // Proto3 leaves zero values out: green's weight 0, healthy false and draining false
    // are absent on the wire and must decode as 0 / false, not as defaults of 100 / true.
    golden(
        v1::Snapshot {
            version: 5,
            policy_version: 0,
            policy_json: "{}".into(),
            stacks: vec![
                v1::StackState {
                    name: "blue".into(),
                    weight_percent: 100,
                    healthy: true,
                    reason: String::new(),
                    ..Default::default()
                },
                v1::StackState {
                    name: "green".into(),
                    weight_percent: 0,
                    healthy: false,
                    reason: "5xx".into(),
                    ..Default::default()
                },
                v1::StackState {
                    name: "red".into(),
                    weight_percent: 0,
                    healthy: true,
                    reason: "deploy".into(),
                    draining: true,
                    ..Default::default()
                },
            ],
            rule_stacks: vec![],
        },
        "08 05 12 02 7b 7d \
         1a 0a 0a 04 62 6c 75 65 10 64 18 01 \
         1a 0c 0a 05 67 72 65 65 6e 22 03 35 78 78 \
         1a 11 0a 03 72 65 64 18 01 22 06 64 65 70 6c 6f 79 28 01",
    );
}

#[test]
fn snapshot_rule_stacks() {
    // Field 5: stacks' states within one rule (field 8 of StackState names it), after
    // field 4; absent when empty, so older snapshots are byte-identical.
    golden(
        v1::Snapshot {
            version: 2,
            policy_version: 1,
            rule_stacks: vec![v1::StackState {
                name: "g".into(),
                weight_percent: 5,
                rule: "r".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        "08 02 20 01 2a 08 0a 01 67 10 05 42 01 72",
    );
}

#[test]
fn snapshot_drain_deadline_and_evacuating() {
    // Fields 6 (drain deadline, Unix ms) and 7 (evacuating) are absent when zero, so a
    // snapshot without them is byte-identical to one from before they existed.
    let msg = v1::Snapshot {
        stacks: vec![
            v1::StackState {
                name: "red".into(),
                draining: true,
                drain_deadline_unix_ms: 1000,
                ..Default::default()
            },
            v1::StackState {
                name: "tan".into(),
                evacuating: true,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let bytes = "1a 0a 0a 03 72 65 64 28 01 30 e8 07 \
                 1a 07 0a 03 74 61 6e 38 01";
    golden(msg, bytes);
    // The filter's hand-written codec reads the same bytes the same way.
    let f = switchyard_filter::snapshot::Snapshot::decode(&unhex(bytes)).unwrap();
    assert!(f.stacks[0].draining && !f.stacks[0].evacuating);
    assert_eq!(f.stacks[0].drain_deadline_unix_ms, 1000);
    assert!(f.stacks[1].evacuating && !f.stacks[1].draining);
    assert_eq!(
        hex(&f.encode()),
        bytes.split_whitespace().collect::<Vec<_>>().join(" ")
    );
}

#[test]
fn snapshot_policy_version() {
    // Field 4 comes after the stacks; the filter's codec test pins the same bytes.
    golden(
        v1::Snapshot {
            version: 6,
            policy_version: 5,
            ..Default::default()
        },
        "08 06 20 05",
    );
}

#[test]
fn telemetry_batch() {
    golden(
        v1::TelemetryBatch {
            node_id: "e1".into(),
            window_end_unix_ms: 1_700_000_000_000,
            window_ms: 1000,
            stacks: vec![v1::StackTelemetry {
                stack: "blue".into(),
                requests: 3,
                status_2xx: 2,
                status_5xx: 1,
                latency_ms_sum: 42,
                ..Default::default()
            }],
            dropped: 0,
        },
        "0a 02 65 31 10 80 d0 95 ff bc 31 18 e8 07 \
         22 0e 0a 04 62 6c 75 65 10 03 18 02 28 01 30 2a",
    );
}

#[test]
fn report_ack_is_empty() {
    golden(v1::ReportAck {}, "");
}
