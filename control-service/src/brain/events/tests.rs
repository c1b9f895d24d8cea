use super::*;
use crate::store::MemoryStore;

const DEPLOY: &str = r#"{"kind":"deployment","scope":{"stacks":["green"]},"from":1000,"to":2000,"description":"v2.3","actor":"ci"}"#;

#[test]
fn rfc3339_parses_offsets_and_fractions() {
    assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_rfc3339_ms("2026-12-01T02:00:00.5Z"),
        Some(1_796_090_400_500)
    );
    assert_eq!(
        parse_rfc3339_ms("2026-12-01T04:00:00.123456+02:00"),
        Some(1_796_090_400_123)
    );
    assert_eq!(
        parse_rfc3339_ms("2024-02-29T00:00:00Z"),
        Some(1_709_164_800_000)
    );
    for bad in [
        "2023-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "2026-12-01 02:00",
        "2026-12-01T02:00:00",
        "2026-12-01T02:00:00+2:00",
    ] {
        assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
    }
}

#[test]
fn events_are_stored_with_sequence_ids_and_queried_by_time_and_scope() {
    let store = MemoryStore::new();
    let reg = EventRegistry::new(&store);
    let e = reg.add_json(DEPLOY).unwrap();
    assert_eq!(e.id, "evt-1");
    let sale = reg
        .add_json(r#"{"id":"bf-sale","kind":"campaign","scope":{"segment":"eu"},"from":"1970-01-01T00:00:05Z","to":9000,"actor":"marketing"}"#)
        .unwrap();
    assert_eq!(sale.from_ms, 5_000);
    let all = reg
        .add_json(r#"{"kind":"maintenance","scope":"all","from":100,"to":200,"actor":"ops"}"#)
        .unwrap();
    assert_eq!(all.id, "evt-3");
    let eu = vec!["eu".to_string()];
    let ids = |v: Vec<Event>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(reg.overlapping(0, 10_000, "green", &[], &[]).unwrap()),
        ["evt-3", "evt-1"]
    );
    assert_eq!(
        ids(reg.overlapping(1_500, 6_000, "blue", &eu, &[]).unwrap()),
        ["bf-sale"]
    );
    assert_eq!(
        ids(reg.overlapping(2_001, 4_000, "green", &[], &[]).unwrap()),
        Vec::<String>::new()
    );
    assert!(matches!(
        reg.add_json(
            r#"{"id":"bf-sale","kind":"campaign","scope":"all","from":1,"to":2,"actor":"x"}"#
        ),
        Err(EventError::Duplicate(_))
    ));
    assert_eq!(reg.all().unwrap().len(), 3);
    assert!(reg.remove("evt-1").unwrap());
    assert!(!reg.remove("evt-1").unwrap());
    assert_eq!(reg.get("bf-sale").unwrap().unwrap(), sale);
}

#[test]
fn malformed_events_name_every_field_and_change_nothing() {
    let store = MemoryStore::new();
    let reg = EventRegistry::new(&store);
    let cases: &[(&str, &[&str])] = &[
        ("nope", &["$"]),
        ("[1]", &["$"]),
        (
            r#"{"kind":"party","scope":"all","from":1,"to":2,"actor":"a"}"#,
            &["kind"],
        ),
        (
            r#"{"kind":"campaign","scope":"eu","from":1,"to":2,"actor":"a"}"#,
            &["scope"],
        ),
        (
            r#"{"kind":"campaign","scope":{"stacks":[]},"from":1,"to":2,"actor":"a"}"#,
            &["scope.stacks"],
        ),
        (
            r#"{"kind":"campaign","scope":{"stacks":["ok","b/d"]},"from":1,"to":2,"actor":"a"}"#,
            &["scope.stacks[1]"],
        ),
        (
            r#"{"kind":"campaign","scope":"all","from":5,"to":2,"actor":"a"}"#,
            &["to"],
        ),
        (
            r#"{"kind":"campaign","scope":"all","from":-5,"to":"yesterday","actor":"a"}"#,
            &["from", "to"],
        ),
        (
            r#"{"kind":"campaign","scope":"all","from":1,"to":2,"actor":" "}"#,
            &["actor"],
        ),
        (
            r#"{"kind":"campaign","scope":"all","from":1,"to":2}"#,
            &["actor"],
        ),
        (
            r#"{"kind":"campaign","scope":"all","from":1,"to":2,"actor":"a","colour":"red"}"#,
            &["colour"],
        ),
        (
            r#"{"id":"a b","kind":"campaign","scope":"all","from":1,"to":2,"actor":"a"}"#,
            &["id"],
        ),
        (
            r#"{"kind":"campaign","scope":"all","from":0,"to":8000000000,"actor":"a"}"#,
            &["to"],
        ),
    ];
    for (json, fields) in cases {
        let err = reg.add_json(json).unwrap_err();
        let got: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(&got, fields, "{json}: {err}");
    }
    assert!(store.scan("events/", None, 10).unwrap().is_empty());
}

const AM: &str = r#"{
  "version": "4", "groupKey": "{}:{alertname=\"HighLatency\"}", "truncatedAlerts": 0,
  "status": "firing", "receiver": "switchyard", "groupLabels": {}, "commonLabels": {},
  "commonAnnotations": {}, "externalURL": "http://am:9093",
  "alerts": [
    {"status": "firing", "labels": {"alertname": "HighLatency", "switchyard_stack": "green", "severity": "page"},
     "annotations": {"summary": "p99 above 400ms"}, "startsAt": "2026-12-01T02:00:00.000Z",
     "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom/graph", "fingerprint": "a1b2"},
    {"status": "resolved", "labels": {"alertname": "Errors", "stack": "blue", "scope": "checkout"},
     "annotations": {"description": "5xx"}, "startsAt": "2026-12-01T01:00:00Z",
     "endsAt": "2026-12-01T01:30:00Z", "fingerprint": "c3d4"},
    {"status": "firing", "labels": {"alertname": "Generic"}, "annotations": {},
     "startsAt": "2026-12-01T01:00:00Z", "fingerprint": "e5"}
  ]}"#;

#[test]
fn alertmanager_payload_maps_labels_to_stack_and_scope() {
    let t = parse_alertmanager(AM).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t[0].stack.as_deref(), Some("green"));
    assert_eq!(t[0].scope, "green");
    assert_eq!(t[0].status, AlertStatus::Firing);
    assert_eq!(t[0].name, "HighLatency");
    assert_eq!(t[0].summary, "p99 above 400ms");
    assert_eq!(t[0].severity.as_deref(), Some("page"));
    assert_eq!(t[0].starts_at_ms, 1_796_090_400_000);
    assert_eq!(t[0].ends_at_ms, None);
    assert_eq!(t[1].stack.as_deref(), Some("blue"));
    assert_eq!(t[1].scope, "checkout");
    assert_eq!(t[1].status, AlertStatus::Resolved);
    assert_eq!(t[1].ends_at_ms, Some(1_796_088_600_000));
    assert_eq!(t[1].summary, "5xx");
    assert_eq!((t[2].stack.clone(), t[2].scope.as_str()), (None, "all"));
}

#[test]
fn malformed_webhooks_are_rejected_with_paths() {
    let cases: &[(&str, &[&str])] = &[
        ("{", &["$"]),
        (
            r#"{"version":"3","status":"firing","alerts":[]}"#,
            &["version"],
        ),
        (r#"{"version":"4","status":"odd"}"#, &["status", "alerts"]),
        (
            r#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{"stack":"a b","n":1},"startsAt":"soon","fingerprint":""}]}"#,
            &[
                "alerts[0].labels.n",
                "alerts[0].startsAt",
                "alerts[0].fingerprint",
                "alerts[0].labels.stack",
            ],
        ),
        (
            r#"{"version":"4","status":"firing","alerts":[7]}"#,
            &["alerts[0]"],
        ),
    ];
    for (json, fields) in cases {
        let err = parse_alertmanager(json).unwrap_err();
        let got: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(&got, fields, "{json}: {err}");
    }
}
