//! The wire types (generated from `proto/switchyard/v1/*.proto`) and every conversion
//! between them and the domain types. No other module builds protobuf messages by hand.
//!
//! A leaf of the domain: it reads the plain domain types ([`crate::model`],
//! [`crate::fleet`], [`crate::validate`], the filter's [`Snapshot`]) and only the edges
//! (`grpc`, `server`, `cli`) import it. The domain never does.

use std::collections::BTreeMap;

use switchyard_filter::histogram::{Histogram, BUCKETS};
use switchyard_filter::snapshot::Snapshot;

use crate::brain::series::{NodeBatch, StackSample};
use crate::brain::signals::Latency;

use crate::fleet::{
    FleetStatus, NodeView, StackCounters, StackLatest, Telemetry, MAX_NAME_LEN,
    MAX_STACKS_PER_BATCH,
};
use crate::model::{StackRuntime, VersionRecord};
use crate::validate::Issue;

/// Generated messages, clients and servers of package `switchyard.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("switchyard.v1");
}

/// Encoded `FileDescriptorSet` of our protos, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));

/// The wire form of a published snapshot.
pub fn snapshot(s: &Snapshot) -> v1::Snapshot {
    let state = |s: &switchyard_filter::snapshot::StackState| v1::StackState {
        name: s.name.clone(),
        weight_percent: s.weight_percent,
        healthy: s.healthy,
        reason: s.reason.clone(),
        draining: s.draining,
        drain_deadline_unix_ms: s.drain_deadline_unix_ms,
        evacuating: s.evacuating,
        rule: s.rule.clone(),
    };
    v1::Snapshot {
        version: s.version,
        policy_version: s.policy_version,
        policy_json: s.policy_json.clone(),
        stacks: s.stacks.iter().map(state).collect(),
        rule_stacks: s.rule_stacks.iter().map(state).collect(),
    }
}

pub fn version_info(r: &VersionRecord) -> v1::VersionInfo {
    v1::VersionInfo {
        version: r.version,
        created_unix_ms: r.created_unix_ms,
        kind: r.kind.as_str().to_string(),
        summary: r.summary.clone(),
        actor: r.actor.clone(),
        comment: r.comment.clone(),
        policy_version: r.policy_version,
        policy_name: r.policy_name.clone().unwrap_or_default(),
        policy_digest: r.policy_digest.clone(),
    }
}

pub fn stack_status(s: &StackRuntime, telemetry: Option<&StackCounters>) -> v1::StackStatus {
    v1::StackStatus {
        name: s.name.clone(),
        region: s.region.clone(),
        weight_percent: s.weight_percent,
        effective_weight_percent: s.effective_weight_percent(),
        healthy: s.healthy,
        draining: s.draining,
        registered: s.registered,
        reason: s.reason().to_string(),
        endpoint: s.endpoint.clone(),
        changed_version: s.changed_version,
        changed_unix_ms: s.changed_unix_ms,
        changed_by: s.changed_by.clone(),
        telemetry: telemetry.map(|c| stack_telemetry(&s.name, c)),
        drain_deadline_unix_ms: s.drain_deadline_unix_ms,
        evacuating: s.evacuating,
        health: None,
    }
}

/// A stack's health-check state, in the gRPC form.
pub fn stack_health(stack: &str, h: &crate::fleet::StackHealthView) -> v1::StackHealthStatus {
    v1::StackHealthStatus {
        stack: stack.to_string(),
        verdict: h.verdict.clone(),
        failing_layers: h.failing_layers.clone(),
        evidence: h.evidence.clone(),
    }
}

fn stack_health_view(h: &v1::StackHealthStatus) -> crate::fleet::StackHealthView {
    crate::fleet::StackHealthView {
        verdict: h.verdict.clone(),
        failing_layers: h.failing_layers.clone(),
        evidence: h.evidence.clone(),
    }
}

fn intake_status(i: &crate::degraded::IntakeStatus) -> v1::IntakeStatus {
    v1::IntakeStatus {
        cluster: i.cluster.clone(),
        url: i.url.clone(),
        queue_depth: i.queue_depth,
        oldest_age_s: i.oldest_age_s,
        drain_rate_per_s: i.drain_rate_per_s,
        dead_letters: i.dead_letters,
        waiting: i.waiting,
        scraped_unix_ms: i.scraped_unix_ms.unwrap_or(0),
        error: i.error.clone().unwrap_or_default(),
        error_unix_ms: i.error_unix_ms.unwrap_or(0),
    }
}

/// An intake's status back from the gRPC form.
pub fn intake_view(i: &v1::IntakeStatus) -> crate::degraded::IntakeStatus {
    crate::degraded::IntakeStatus {
        cluster: i.cluster.clone(),
        url: i.url.clone(),
        queue_depth: i.queue_depth,
        oldest_age_s: i.oldest_age_s,
        drain_rate_per_s: i.drain_rate_per_s,
        dead_letters: i.dead_letters,
        waiting: i.waiting,
        scraped_unix_ms: (i.scraped_unix_ms != 0).then_some(i.scraped_unix_ms),
        error: (!i.error.is_empty()).then(|| i.error.clone()),
        error_unix_ms: (i.error_unix_ms != 0).then_some(i.error_unix_ms),
    }
}

pub fn field_issue(i: &Issue) -> v1::FieldIssue {
    v1::FieldIssue {
        path: i.path.clone(),
        message: i.message.clone(),
    }
}

pub fn field_issues(issues: &[Issue]) -> Vec<v1::FieldIssue> {
    issues.iter().map(field_issue).collect()
}

pub fn stack_telemetry(stack: &str, c: &StackCounters) -> v1::StackTelemetry {
    v1::StackTelemetry {
        stack: stack.to_string(),
        requests: c.requests,
        status_2xx: c.status_2xx,
        status_4xx: c.status_4xx,
        status_5xx: c.status_5xx,
        latency_ms_sum: c.latency_ms_sum,
        affinity_hit: c.affinity_hit,
        affinity_miss: c.affinity_miss,
        affinity_forged: c.affinity_forged,
        local_replies: c.local_replies,
        ..Default::default()
    }
}

fn counters(t: &v1::StackTelemetry) -> StackCounters {
    StackCounters {
        requests: t.requests,
        status_2xx: t.status_2xx,
        status_4xx: t.status_4xx,
        status_5xx: t.status_5xx,
        latency_ms_sum: t.latency_ms_sum,
        affinity_hit: t.affinity_hit,
        affinity_miss: t.affinity_miss,
        affinity_forged: t.affinity_forged,
        local_replies: t.local_replies,
    }
}

/// A telemetry batch from the wire, checked against the bounds. Counters of a stack
/// named twice are added up.
pub fn telemetry(batch: &v1::TelemetryBatch) -> Result<Telemetry, String> {
    if batch.node_id.is_empty() || batch.node_id.len() > MAX_NAME_LEN {
        return Err(format!("node_id must be 1..={MAX_NAME_LEN} bytes"));
    }
    if batch.stacks.len() > MAX_STACKS_PER_BATCH {
        return Err(format!(
            "at most {MAX_STACKS_PER_BATCH} stacks per batch, got {}",
            batch.stacks.len()
        ));
    }
    let mut t = Telemetry {
        received_unix_ms: 0,
        window_end_unix_ms: batch.window_end_unix_ms,
        window_ms: batch.window_ms,
        dropped: batch.dropped,
        stacks: Default::default(),
    };
    for (i, s) in batch.stacks.iter().enumerate() {
        if s.stack.is_empty() || s.stack.len() > MAX_NAME_LEN {
            return Err(format!(
                "stacks[{i}].stack must be 1..={MAX_NAME_LEN} bytes"
            ));
        }
        t.stacks
            .entry(s.stack.clone())
            .or_default()
            .add(&counters(s));
    }
    Ok(t)
}

/// Most names (KPIs, rule ids) one stack of a batch may carry.
pub const MAX_NAMED_COUNTS: usize = 256;

fn named_counts(
    what: &str,
    i: usize,
    list: &[v1::NamedCount],
) -> Result<BTreeMap<String, u64>, String> {
    if list.len() > MAX_NAMED_COUNTS {
        return Err(format!(
            "stacks[{i}].{what}: at most {MAX_NAMED_COUNTS} entries"
        ));
    }
    let mut out = BTreeMap::new();
    for (j, n) in list.iter().enumerate() {
        if n.name.is_empty() || n.name.len() > MAX_NAME_LEN {
            return Err(format!(
                "stacks[{i}].{what}[{j}].name must be 1..={MAX_NAME_LEN} bytes"
            ));
        }
        let c: &mut u64 = out.entry(n.name.clone()).or_default();
        *c = c.saturating_add(n.count);
    }
    Ok(out)
}

/// A telemetry batch from the wire as the brain's series reads it. Bounds of the node
/// and stack names are [`telemetry`]'s; this checks the histogram pairs and the named
/// counts. A stack named twice gives two samples (the series adds them).
pub fn node_batch(batch: &v1::TelemetryBatch) -> Result<NodeBatch, String> {
    let mut stacks = Vec::with_capacity(batch.stacks.len());
    for (i, s) in batch.stacks.iter().enumerate() {
        let pairs = &s.latency_buckets;
        if pairs.len() % 2 != 0 || pairs.len() > 2 * BUCKETS {
            return Err(format!(
                "stacks[{i}].latency_buckets must be at most {BUCKETS} (bucket, count) pairs"
            ));
        }
        let mut h = Histogram::new();
        for p in pairs.chunks_exact(2) {
            if !h.add_bucket(p[0] as usize, p[1]) {
                return Err(format!(
                    "stacks[{i}].latency_buckets: bucket {} is not below {BUCKETS}",
                    p[0]
                ));
            }
        }
        stacks.push(StackSample {
            stack: s.stack.clone(),
            requests: s.requests,
            errors: s.status_5xx,
            local_replies: s.local_replies,
            breaker_opens: s.breaker_opens,
            latency: Latency::from_histogram(&h),
            kpis: named_counts("kpis", i, &s.kpis)?,
            by_rule: named_counts("by_rule", i, &s.by_rule)?,
            new_users: s.new_users,
            sticky_requests: s.sticky_requests,
        });
    }
    Ok(NodeBatch {
        node_id: batch.node_id.clone(),
        window_end_ms: batch.window_end_unix_ms,
        stacks,
    })
}

/// The gRPC status response of a [`FleetStatus`].
pub fn status_response(s: &FleetStatus) -> v1::StatusResponse {
    v1::StatusResponse {
        current_version: s.current_version,
        started_unix_ms: s.started_unix_ms,
        store: s.store.clone(),
        nodes: s.nodes.iter().map(node_status).collect(),
        nodes_current: u32::try_from(s.nodes_current).unwrap_or(u32::MAX),
        stacks: s
            .stacks
            .iter()
            .map(|(name, l)| v1::StackWindowStatus {
                stack: name.clone(),
                window_start_unix_ms: l.window_start_unix_ms,
                window_ms: l.window_ms,
                requests: l.requests,
                errors: l.errors,
                p50_ms: l.p50_ms,
                p95_ms: l.p95_ms,
                p99_ms: l.p99_ms,
                kpis: l
                    .kpis
                    .iter()
                    .map(|(k, c)| v1::NamedCount {
                        name: k.clone(),
                        count: *c,
                    })
                    .collect(),
            })
            .collect(),
        degraded: s
            .degraded
            .iter()
            .map(|d| v1::DegradedRoute {
                rule: d.rule.clone(),
                queue: d.queue.clone(),
                reason: d.reason.clone(),
            })
            .collect(),
        replica_id: s.replica_id.clone(),
        leader: s.leader,
        intakes: s.intakes.iter().map(intake_status).collect(),
        health: s
            .health
            .iter()
            .map(|(stack, h)| stack_health(stack, h))
            .collect(),
    }
}

/// Back from the gRPC form, for clients (the CLI) that print the one JSON schema.
pub fn fleet_status(r: &v1::StatusResponse) -> FleetStatus {
    let mut s = FleetStatus::new(
        r.current_version,
        r.started_unix_ms,
        r.store.clone(),
        r.nodes.iter().map(node_view).collect(),
    );
    s.stacks = r
        .stacks
        .iter()
        .map(|w| {
            let latest = StackLatest {
                window_start_unix_ms: w.window_start_unix_ms,
                window_ms: w.window_ms,
                requests: w.requests,
                errors: w.errors,
                p50_ms: w.p50_ms,
                p95_ms: w.p95_ms,
                p99_ms: w.p99_ms,
                kpis: w.kpis.iter().map(|k| (k.name.clone(), k.count)).collect(),
            };
            (w.stack.clone(), latest)
        })
        .collect();
    s.degraded = r
        .degraded
        .iter()
        .map(|d| crate::degraded::DegradedRoute {
            rule: d.rule.clone(),
            queue: d.queue.clone(),
            reason: d.reason.clone(),
        })
        .collect();
    s.replica_id = r.replica_id.clone();
    s.leader = r.leader;
    s.intakes = r.intakes.iter().map(intake_view).collect();
    s.health = r
        .health
        .iter()
        .map(|h| (h.stack.clone(), stack_health_view(h)))
        .collect();
    s
}

/// A node from the gRPC form. It has telemetry exactly when it has reported
/// (`last_report_unix_ms`, which is also when that batch was received).
pub fn node_view(n: &v1::NodeStatus) -> NodeView {
    NodeView {
        node_id: n.node_id.clone(),
        connected: n.connected,
        streams: n.streams,
        connected_since_unix_ms: n.connected_since_unix_ms,
        disconnected_unix_ms: n.disconnected_unix_ms,
        applied_version: n.applied_version,
        last_ack_unix_ms: n.last_ack_unix_ms,
        sent_version: n.sent_version,
        last_report_unix_ms: n.last_report_unix_ms,
        peer: n.peer.clone(),
        telemetry: (n.last_report_unix_ms != 0).then(|| Telemetry {
            received_unix_ms: n.last_report_unix_ms,
            window_end_unix_ms: n.window_end_unix_ms,
            window_ms: n.window_ms,
            dropped: n.dropped,
            stacks: n.stacks.iter().fold(BTreeMap::new(), |mut m, s| {
                m.entry(s.stack.clone())
                    .or_insert_with(StackCounters::default)
                    .add(&counters(s));
                m
            }),
        }),
    }
}

pub fn node_status(n: &NodeView) -> v1::NodeStatus {
    let t = n.telemetry.as_ref();
    v1::NodeStatus {
        node_id: n.node_id.clone(),
        connected: n.connected,
        streams: n.streams,
        connected_since_unix_ms: n.connected_since_unix_ms,
        disconnected_unix_ms: n.disconnected_unix_ms,
        applied_version: n.applied_version,
        last_ack_unix_ms: n.last_ack_unix_ms,
        sent_version: n.sent_version,
        last_report_unix_ms: n.last_report_unix_ms,
        peer: n.peer.clone(),
        window_end_unix_ms: t.map(|t| t.window_end_unix_ms).unwrap_or(0),
        window_ms: t.map(|t| t.window_ms).unwrap_or(0),
        dropped: t.map(|t| t.dropped).unwrap_or(0),
        stacks: t
            .map(|t| {
                t.stacks
                    .iter()
                    .map(|(k, c)| stack_telemetry(k, c))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The wire form of an audit entry.
pub fn audit_entry(e: &crate::brain::audit::AuditEntry) -> v1::AuditEntry {
    let d = &e.draft;
    v1::AuditEntry {
        seq: e.seq,
        at_unix_ms: d.at_ms,
        actor: d.actor.clone(),
        kind: d.kind.as_str().to_string(),
        subject: d.subject.clone(),
        summary: d.summary.clone(),
        reason: d.reason.clone(),
        evidence: d.evidence.clone(),
        before_json: d.before.to_string(),
        after_json: d.after.to_string(),
        version: d.version.unwrap_or(0),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    }
}

pub fn audit_verification(v: &crate::brain::audit::Verification) -> v1::AuditVerifyResponse {
    v1::AuditVerifyResponse {
        ok: v.ok(),
        entries: v.entries,
        head_hash: v.head.clone(),
        broken_seq: v.first_broken.as_ref().map(|b| b.seq).unwrap_or(0),
        broken_reason: v
            .first_broken
            .as_ref()
            .map(|b| b.reason.clone())
            .unwrap_or_default(),
    }
}

/// The wire form of a rollout.
pub fn rollout_status(r: &crate::brain::rollout::Rollout) -> v1::RolloutStatus {
    use crate::brain::rollout::{PauseReason, Phase};
    fn name<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_value(v)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
    let mut reason = match &r.phase {
        Phase::Paused { reason, .. } => match reason {
            PauseReason::Human { actor } => format!("paused by {actor}"),
            PauseReason::Inconclusive { detail } => format!("inconclusive: {detail}"),
            PauseReason::NeedsApproval { reason } => {
                format!("needs approval (resume to approve): {reason}")
            }
        },
        Phase::Halted { reason, .. } => reason.clone(),
        _ => String::new(),
    };
    if let Some(b) = &r.blocked {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str(&format!("held by guardrail {}: {}", b.guardrail, b.reason));
        if let Some(at) = b.allowed_at {
            reason.push_str(&format!(" (allowed at {at} ms)"));
        }
    }
    v1::RolloutStatus {
        id: r.spec.id.clone(),
        release: r.spec.release.clone(),
        stable: r.spec.stable.clone(),
        scope: r.spec.scope.clone(),
        phase: r.phase.name().to_string(),
        step: r.phase.step().map(|s| s as u32 + 1).unwrap_or(0),
        plan: r.spec.plan.iter().map(|p| p.share_percent).collect(),
        share_percent: r.share_percent,
        reason,
        auto_rollback: r.spec.auto_rollback,
        steps: r
            .steps
            .iter()
            .map(|s| v1::RolloutStep {
                share_percent: s.share_percent,
                outcome: s.outcome.as_ref().map(name).unwrap_or_default(),
                gates: s
                    .gates
                    .iter()
                    .map(|g| v1::GateStatus {
                        gate: g.gate.clone(),
                        verdict: name(&g.verdict),
                        blocking: g.blocking,
                        n: g.n,
                        confidence: g.confidence,
                        estimate: g.estimate.unwrap_or(f64::NAN),
                    })
                    .collect(),
                exposure: s.exposure.unwrap_or(f64::NAN),
                warm_started_unix_ms: s.warm_started_ms,
                ended_unix_ms: s.ended_ms.unwrap_or(0),
            })
            .collect(),
        blast_radius: r.blast.fraction().unwrap_or(-1.0),
        created_unix_ms: r.created_ms,
        updated_unix_ms: r.updated_ms,
        created_by: r.spec.created_by.clone(),
    }
}

pub fn incident_summary(i: &crate::brain::incident::Incident) -> v1::IncidentSummary {
    v1::IncidentSummary {
        id: i.id,
        scope: i.scope.clone(),
        stack: i.stack.clone().unwrap_or_default(),
        signal: i.signal.clone(),
        phase: i.phase.as_str().into(),
        opened_unix_ms: i.opened_ms,
        updated_unix_ms: i.updated_ms,
        proposal: i.proposal().map(|a| a.describe()).unwrap_or_default(),
        confidence: i.confidence().unwrap_or(-1.0),
        triggers: i.trigger_count,
    }
}

pub fn incident_detail(i: &crate::brain::incident::Incident) -> v1::IncidentDetail {
    v1::IncidentDetail {
        summary: Some(incident_summary(i)),
        incident_json: serde_json::to_string(i).unwrap_or_default(),
    }
}

pub fn event_info(e: &crate::brain::events::Event) -> v1::EventInfo {
    v1::EventInfo {
        id: e.id.clone(),
        kind: e.kind.as_str().into(),
        scope: e.scope.label(),
        from_unix_ms: e.from_ms,
        to_unix_ms: e.to_ms,
        description: e.description.clone(),
        actor: e.actor.clone(),
    }
}

/// A token as the API shows it (never its secret or hash).
pub fn token_info(r: &crate::auth::TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        role: r.role.to_string(),
        created_unix_ms: r.created_ms,
        created_by: r.created_by.clone(),
        revoked_unix_ms: r.revoked_ms.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use switchyard_filter::snapshot::StackState;

    use super::*;

    /// The conversion carries every field: its protobuf encoding is byte for byte what
    /// the filter's own codec makes of the domain snapshot.
    #[test]
    fn snapshot_wire_form_matches_the_filter_codec() {
        let s = Snapshot {
            version: 9,
            policy_version: 7,
            policy_json: r#"{"name":"p"}"#.into(),
            stacks: vec![
                StackState {
                    name: "blue".into(),
                    weight_percent: 40,
                    healthy: true,
                    reason: "canary".into(),
                    ..Default::default()
                },
                StackState {
                    name: "green".into(),
                    weight_percent: 0,
                    healthy: false,
                    reason: "5xx".into(),
                    draining: true,
                    drain_deadline_unix_ms: 1_795_737_630_000,
                    evacuating: false,
                    rule: String::new(),
                },
                StackState {
                    name: "red".into(),
                    healthy: true,
                    evacuating: true,
                    ..Default::default()
                },
            ],
            rule_stacks: vec![
                StackState {
                    name: "green".into(),
                    weight_percent: 25,
                    rule: "beta".into(),
                    ..Default::default()
                },
                StackState {
                    name: "blue".into(),
                    evacuating: true,
                    rule: "beta".into(),
                    ..Default::default()
                },
            ],
        };
        let wire = snapshot(&s);
        assert_eq!(wire.encode_to_vec(), s.encode());
        assert_eq!(Snapshot::decode(&wire.encode_to_vec()).unwrap(), s);
    }

    /// The filter's hand-written telemetry codec and prost agree on the new signals, and
    /// the conversion carries them into the series' batch.
    #[test]
    fn telemetry_signals_decode_with_prost_and_convert() {
        use switchyard_filter::snapshot::{StackTelemetry, TelemetryBatch};
        let mut latency = Histogram::new();
        for us in [800, 800, 120_000, 450_000] {
            latency.record(us);
        }
        let t = TelemetryBatch {
            node_id: "envoy-1".into(),
            window_end_unix_ms: 1_795_737_600_000,
            window_ms: 1000,
            stacks: vec![StackTelemetry {
                stack: "green".into(),
                requests: 4,
                status_2xx: 3,
                status_5xx: 1,
                latency: latency.clone(),
                kpis: vec![("orders".into(), 2)],
                by_rule: vec![("default".into(), 3), ("beta".into(), 1)],
                new_users: 2,
                sticky_requests: 2,
                breaker_opens: 1,
                ..Default::default()
            }],
            dropped: 0,
        };
        let wire = v1::TelemetryBatch::decode(t.encode().as_slice()).unwrap();
        assert_eq!(wire.encode_to_vec(), t.encode());
        let b = node_batch(&wire).unwrap();
        let s = &b.stacks[0];
        assert_eq!((s.requests, s.errors, s.breaker_opens), (4, 1, 1));
        assert_eq!(s.latency, Latency::from_histogram(&latency));
        assert_eq!(s.kpis["orders"], 2);
        assert_eq!(s.by_rule["beta"], 1);
        assert_eq!((s.new_users, s.sticky_requests), (2, 2));
        assert_eq!(b.window_end_ms, 1_795_737_600_000);

        let mut bad = wire.clone();
        bad.stacks[0].latency_buckets.push(7);
        assert!(node_batch(&bad).unwrap_err().contains("pairs"));
        let mut bad = wire.clone();
        bad.stacks[0].latency_buckets.extend([100, 1]);
        assert!(node_batch(&bad).unwrap_err().contains("bucket 100"));
        let mut bad = wire;
        bad.stacks[0].kpis[0].name.clear();
        assert!(node_batch(&bad).unwrap_err().contains("kpis[0].name"));
    }
}
