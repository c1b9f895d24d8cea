//! The wire types (generated from `proto/switchyard/v1/*.proto`) and every conversion
//! between them and the domain types. No other module builds protobuf messages by hand.
//!
//! A leaf of the domain: it reads the plain domain types ([`crate::model`],
//! [`crate::fleet`], [`crate::validate`], the filter's [`Snapshot`]) and only the edges
//! (`grpc`, `server`, `cli`) import it. The domain never does.

use std::collections::BTreeMap;

use switchyard_filter::snapshot::Snapshot;

use crate::fleet::{
    FleetStatus, NodeView, StackCounters, Telemetry, MAX_NAME_LEN, MAX_STACKS_PER_BATCH,
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
    v1::Snapshot {
        version: s.version,
        policy_version: s.policy_version,
        policy_json: s.policy_json.clone(),
        stacks: s
            .stacks
            .iter()
            .map(|s| v1::StackState {
                name: s.name.clone(),
                weight_percent: s.weight_percent,
                healthy: s.healthy,
                reason: s.reason.clone(),
                draining: s.draining,
                drain_deadline_unix_ms: s.drain_deadline_unix_ms,
                evacuating: s.evacuating,
            })
            .collect(),
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

/// The gRPC status response of a [`FleetStatus`].
pub fn status_response(s: &FleetStatus) -> v1::StatusResponse {
    v1::StatusResponse {
        current_version: s.current_version,
        started_unix_ms: s.started_unix_ms,
        store: s.store.clone(),
        nodes: s.nodes.iter().map(node_status).collect(),
        nodes_current: u32::try_from(s.nodes_current).unwrap_or(u32::MAX),
    }
}

/// Back from the gRPC form, for clients (the CLI) that print the one JSON schema.
pub fn fleet_status(r: &v1::StatusResponse) -> FleetStatus {
    FleetStatus::new(
        r.current_version,
        r.started_unix_ms,
        r.store.clone(),
        r.nodes.iter().map(node_view).collect(),
    )
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
                },
                StackState {
                    name: "red".into(),
                    healthy: true,
                    evacuating: true,
                    ..Default::default()
                },
            ],
        };
        let wire = snapshot(&s);
        assert_eq!(wire.encode_to_vec(), s.encode());
        assert_eq!(Snapshot::decode(&wire.encode_to_vec()).unwrap(), s);
    }
}
