use super::*;
use crate::store::MemoryStore;

const POLICY: &str = r#"{"name":"p","stacks":[{"name":"blue","region":"us"},{"name":"green","region":"us"}],
  "default":{"targets":[{"stack":"blue"},{"stack":"green"}]}}"#;

fn weight(percent: u32) -> StackOp {
    StackOp::SetWeight {
        percent,
        reason: "test".into(),
    }
}

#[tokio::test]
async fn every_committed_version_is_audited_with_before_and_after() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let control = Control::open(store.clone()).await.unwrap();
    control
        .apply_policy(POLICY, Change::manual("alice", "first"), 0)
        .await
        .unwrap();
    control
        .stack_op("green", weight(20), Change::manual("bob", "canary"))
        .await
        .unwrap();
    let auto = Change {
        actor: "health-check".into(),
        comment: "tcp down".into(),
        origin: AuditKind::AutomaticAction,
    };
    control
        .stack_op(
            "blue",
            StackOp::Evacuate {
                reason: "dead".into(),
            },
            auto,
        )
        .await
        .unwrap();
    // No change, no version, no entry.
    control
        .stack_op("green", weight(20), Change::manual("bob", "again"))
        .await
        .unwrap();
    let log = AuditLog::new(store);
    let entries = log.list(None, 10).unwrap();
    assert_eq!(entries.len(), 3);
    let e = &entries[0].draft;
    assert_eq!(
        (e.subject.as_str(), e.actor.as_str(), e.version),
        ("policy", "alice", Some(1))
    );
    assert_eq!(e.kind, AuditKind::ManualChange);
    assert!(e.before.is_null());
    assert_eq!(e.after["policy_name"], "p");
    let e = &entries[1].draft;
    assert_eq!(
        (e.subject.as_str(), e.reason.as_str()),
        ("stack/green", "canary")
    );
    assert_eq!(
        (
            e.before["weight_percent"].as_u64(),
            e.after["weight_percent"].as_u64()
        ),
        (Some(100), Some(20))
    );
    let e = &entries[2].draft;
    assert_eq!(
        (e.subject.as_str(), e.kind),
        ("stack/blue", AuditKind::AutomaticAction)
    );
    assert_eq!(e.after["evacuating"], true);
    assert!(log.verify().unwrap().ok());
}

#[tokio::test]
async fn several_stacks_change_in_one_version_or_not_at_all() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let control = Control::open(store.clone()).await.unwrap();
    control
        .apply_policy(POLICY, Change::manual("alice", ""), 0)
        .await
        .unwrap();
    let mut rx = control.subscribe();
    rx.borrow_and_update();
    let out = control
        .stack_ops(
            vec![("green".into(), weight(5)), ("blue".into(), weight(95))],
            Change::manual("rollout:r1", "step 1"),
        )
        .await
        .unwrap();
    assert!(out.changed);
    assert_eq!(out.record.version, 2);
    let w: Vec<u32> = out.record.stacks.iter().map(|s| s.weight_percent).collect();
    assert_eq!(w, vec![95, 5]);
    // One publication carrying both factors.
    assert!(rx.has_changed().unwrap());
    let snap = rx.borrow_and_update().clone().unwrap();
    assert_eq!(snap.version, 2);
    // An unknown stack anywhere in the list changes nothing.
    let err = control
        .stack_ops(
            vec![("green".into(), weight(50)), ("purple".into(), weight(50))],
            Change::manual("x", ""),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::NotFound(_)), "{err}");
    assert_eq!(control.current_version(), 2);
    let e = AuditLog::new(store).recent(1).unwrap().remove(0).draft;
    assert_eq!(e.subject, "stacks/blue,green");
    assert_eq!(e.before["green"]["weight_percent"], 100);
    assert_eq!(e.after["green"]["weight_percent"], 5);
}

#[tokio::test]
async fn a_change_built_on_a_replaced_version_aborts_and_catches_up() {
    // Two replicas on one store (as on etcd): B has not seen A's version yet.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = Control::open(store.clone()).await.unwrap();
    let b = Control::open(store.clone()).await.unwrap();
    assert!(
        b.follow(Default::default()).is_none(),
        "memory: nothing to follow"
    );
    a.apply_policy(POLICY, Change::manual("alice", ""), 0)
        .await
        .unwrap();
    a.stack_op("green", weight(50), Change::manual("alice", ""))
        .await
        .unwrap();
    let mut rx = b.subscribe();
    let err = b
        .apply_policy(POLICY, Change::manual("bob", ""), 0)
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("current version is 2"), "{err}");
    // Nothing was written; B now serves A's version and published it.
    assert_eq!(store.latest().unwrap().unwrap().version, 2);
    assert_eq!(b.current_version(), 2);
    assert_eq!(rx.borrow_and_update().as_ref().unwrap().version, 2);
    // A stale expected version is the same conflict.
    let err = a
        .apply_policy(POLICY, Change::manual("carol", ""), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Conflict(_)), "{err}");
    // Publication never goes back: an older state offered later is ignored.
    let old = Current::new(store.get(1).unwrap().unwrap(), POLICY.into());
    b.make_current(Arc::new(old));
    assert_eq!(b.current_version(), 2);
    assert_eq!(rx.borrow().as_ref().unwrap().version, 2);
    assert!(!rx.has_changed().unwrap());
}

#[tokio::test]
async fn a_version_committed_without_its_audit_entry_is_audited_on_restart() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    {
        let control = Control::open(store.clone()).await.unwrap();
        control
            .apply_policy(POLICY, Change::manual("alice", ""), 0)
            .await
            .unwrap();
    }
    // As if the process died between the version's commit and its audit append.
    let mut rec = store.latest().unwrap().unwrap();
    rec.version = 2;
    rec.kind = ChangeKind::StackWeight;
    rec.actor = "carol".into();
    rec.stacks[1].weight_percent = 50;
    store.append(&rec, None).unwrap();
    assert_eq!(
        AuditLog::new(store.clone()).last_version().unwrap(),
        Some(1)
    );

    let _control = Control::open(store.clone()).await.unwrap();
    let log = AuditLog::new(store.clone());
    let entries = log.list(None, 10).unwrap();
    assert_eq!(entries.len(), 2);
    let e = &entries[1].draft;
    assert_eq!(
        (e.subject.as_str(), e.actor.as_str(), e.version),
        ("stack/green", "carol", Some(2))
    );
    assert_eq!(e.evidence, "recovered from the version history");
    assert!(log.verify().unwrap().ok());
    // Opening again adds nothing.
    let _again = Control::open(store.clone()).await.unwrap();
    assert_eq!(log.list(None, 10).unwrap().len(), 2);
}
