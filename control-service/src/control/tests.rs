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

const OTHER_POLICY: &str = r#"{"name":"q","stacks":[{"name":"blue","region":"us"},{"name":"green","region":"us"}],
  "default":{"targets":[{"stack":"green"}]}}"#;

/// v1 sets POLICY, v2..=20 move weights, v21 sets OTHER_POLICY, v22..=40 move weights.
async fn forty_versions(control: &Control) {
    control
        .apply_policy(POLICY, Change::manual("alice", ""), 0)
        .await
        .unwrap();
    for v in 2..=40u32 {
        if v == 21 {
            control
                .apply_policy(OTHER_POLICY, Change::manual("alice", ""), 0)
                .await
                .unwrap();
        } else {
            control
                .stack_op("green", weight(v), Change::manual("bob", ""))
                .await
                .unwrap();
        }
    }
    assert_eq!(control.current_version(), 40);
}

#[tokio::test]
async fn retention_keeps_the_newest_versions_and_the_policies_they_run() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(crate::store::RedbStore::open(dir.path()).unwrap());
    let control = Control::open(store.clone()).await.unwrap();
    forty_versions(&control).await;

    // Keep the newest 15 (26..=40), 4 versions per write.
    assert_eq!(control.prune_history(15, 4).await.unwrap(), 25);
    assert_eq!(control.prune_history(15, 4).await.unwrap(), 0);
    assert_eq!(store.oldest().unwrap(), Some(26));
    let history: Vec<u64> = control
        .history(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(history, (26..=40).rev().collect::<Vec<_>>());
    // Version 26 runs the policy version 21 set: that document stays, POLICY's goes.
    assert!(store.policy(1).unwrap().is_none());
    assert_eq!(store.policy(21).unwrap().as_deref(), Some(OTHER_POLICY));
    let (record, doc) = control.policy_at(26).await.unwrap();
    assert_eq!((record.policy_version, doc.as_str()), (21, OTHER_POLICY));

    // A pruned version is a clear "no longer kept", an unknown one "does not exist".
    for gone in [1, 21, 25] {
        let err = control.policy_at(gone).await.unwrap_err();
        assert!(
            matches!(&err, ControlError::NotFound(m) if m.contains(&format!("version {gone} is no longer kept")) && m.contains("the oldest kept is 26")),
            "{err}"
        );
    }
    let err = control.policy_at(41).await.unwrap_err();
    assert!(
        matches!(&err, ControlError::NotFound(m) if m.contains("does not exist (the newest is 40)")),
        "{err}"
    );
    let err = control
        .rollback(5, Change::manual("carol", ""), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ControlError::NotFound(m) if m.contains("no longer kept")),
        "{err}"
    );
    assert_eq!(
        control.current_version(),
        40,
        "a refused rollback changes nothing"
    );
    // A kept version rolls back as before.
    control
        .apply_policy(POLICY, Change::manual("alice", ""), 0)
        .await
        .unwrap();
    let back = control
        .rollback(30, Change::manual("carol", ""), 0)
        .await
        .unwrap();
    assert!(back.changed);
    assert_eq!(
        control.current().unwrap().policy_json.as_ref(),
        OTHER_POLICY
    );

    // The audit log is not pruned and still verifies: it never reads version records.
    let log = AuditLog::new(store.clone());
    let v = log.verify().unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.entries, 42);
    assert_eq!(log.list(None, 1).unwrap()[0].draft.version, Some(1));

    // Restart: the newest version is restored from what is kept.
    drop(control);
    let again = Control::open(store).await.unwrap();
    assert_eq!(again.current_version(), 42);
}

/// Versions the audit log has not recorded yet (a crash between a commit and its audit
/// entry) are not pruned: the next start audits them from the history first.
#[tokio::test]
async fn retention_keeps_versions_the_audit_log_has_not_recorded() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let control = Control::open(store.clone()).await.unwrap();
    forty_versions(&control).await;
    // 20 more versions committed without their audit entries.
    for v in 41..=60 {
        let mut record = store.latest().unwrap().unwrap();
        record.version = v;
        store.append(&record, None).unwrap();
    }
    // Keeping 10 would keep 51..=60, but 41..=60 are not audited yet.
    assert_eq!(control.prune_history(10, 100).await.unwrap(), 40);
    assert_eq!(store.oldest().unwrap(), Some(41));
    drop(control);
    let control = Control::open(store.clone()).await.unwrap();
    let log = AuditLog::new(store.clone());
    assert_eq!(log.last_version().unwrap(), Some(60));
    assert_eq!(control.prune_history(10, 100).await.unwrap(), 10);
    assert_eq!(store.oldest().unwrap(), Some(51));
    assert!(log.verify().unwrap().ok());
}

/// The leader's upkeep prunes on its own, in the background.
#[tokio::test]
async fn upkeep_prunes_in_the_background_until_stopped() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let control = Control::open(store.clone()).await.unwrap();
    forty_versions(&control).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = control.spawn_upkeep(
        RetentionSettings {
            keep_versions: 10,
            prune_every: std::time::Duration::from_millis(20),
            batch: 7,
            compact_every: Some(std::time::Duration::from_millis(20)),
        },
        stop.clone(),
    );
    while store.oldest().unwrap() != Some(31) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.cancel();
    task.await.unwrap();
    assert_eq!(store.latest().unwrap().unwrap().version, 40);
}
