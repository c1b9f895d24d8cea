//! The control-plane wire messages the wasm singleton and workers speak
//! (`control-service/proto/switchyard/v1/data_plane.proto`), hand-encoded so the filter
//! needs no protobuf runtime. Decoding is total: any byte string gives a message or an
//! error, never a panic; unknown fields are skipped as protobuf requires.
//!
//! The singleton stores the `Snapshot` bytes exactly as received in Envoy shared data;
//! how it and the workers use shared data is [`crate::shared_data`]'s business.

use crate::histogram::Histogram;

/// Largest message accepted from the wire or a queue.
pub const MAX_MESSAGE: usize = 4 << 20;

/// Why bytes were not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated message")]
    Truncated,
    #[error("malformed varint")]
    Varint,
    #[error("unsupported wire type {0}")]
    WireType(u8),
    #[error("field {0} is not valid UTF-8")]
    Utf8(u32),
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
}

/// Desired routing state: `switchyard.v1.Snapshot`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u64,
    pub policy_json: String,
    pub stacks: Vec<StackState>,
    /// The version that set `policy_json` (0: not sent, from an older control service).
    /// Workers compare it to skip recompiling an unchanged policy.
    pub policy_version: u64,
    /// Stacks' states within one rule each (field 5, [`StackState::rule`] set): a
    /// rule-scoped rollout.
    pub rule_stacks: Vec<StackState>,
}

/// `switchyard.v1.StackState`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackState {
    pub name: String,
    pub weight_percent: u32,
    pub healthy: bool,
    pub reason: String,
    /// No new visitors; valid affinity cookies keep their users on the stack until the
    /// cookie expires or `drain_deadline_unix_ms` passes.
    pub draining: bool,
    /// End of the drain (Unix ms): from then on the stack behaves as evacuated. 0 = until
    /// the cookies expire.
    pub drain_deadline_unix_ms: u64,
    /// Everyone moves now, cookie holders included. Wins over `draining`.
    pub evacuating: bool,
    /// Only in [`Snapshot::rule_stacks`]: the rule id this state applies within. There
    /// `weight_percent` multiplies the stack's own factor for the rule's new traffic and
    /// `evacuating` takes the stack out of the rule (cookie holders included); the other
    /// fields are ignored.
    pub rule: String,
}

impl StackState {
    /// Effective weight factor for new traffic (a draining or evacuating stack takes no
    /// new visitors).
    pub fn factor(&self) -> u32 {
        if self.draining || self.evacuating {
            0
        } else {
            self.weight_percent.min(100)
        }
    }

    /// Until when (Unix ms, exclusive) a valid affinity cookie for this stack is honoured:
    /// `u64::MAX` while the stack takes traffic or drains without a deadline, the
    /// deadline while it drains with one, 0 when evacuating or weighted to 0.
    pub fn sticky_until_ms(&self) -> u64 {
        if self.evacuating {
            0
        } else if self.draining {
            match self.drain_deadline_unix_ms {
                0 => u64::MAX,
                d => d,
            }
        } else if self.factor() > 0 {
            u64::MAX
        } else {
            0
        }
    }
}

/// `switchyard.v1.WatchRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchRequest {
    pub node_id: String,
    pub last_applied_version: u64,
    pub ack_version: u64,
}

/// `switchyard.v1.TelemetryBatch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryBatch {
    pub node_id: String,
    pub window_end_unix_ms: u64,
    pub window_ms: u32,
    pub stacks: Vec<StackTelemetry>,
    pub dropped: u64,
}

/// `switchyard.v1.StackTelemetry`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackTelemetry {
    pub stack: String,
    pub requests: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub latency_ms_sum: u64,
    pub affinity_hit: u64,
    pub affinity_miss: u64,
    pub affinity_forged: u64,
    pub local_replies: u64,
    /// Sampled response latencies (µs), on the fixed bucket layout (field 11).
    pub latency: Histogram,
    /// Count per KPI name declared in the policy (field 12).
    pub kpis: Vec<(String, u64)>,
    /// Requests routed to the stack per rule id (field 13).
    pub by_rule: Vec<(String, u64)>,
    /// Affinity cookies issued for a new assignment to the stack (field 14).
    pub new_users: u64,
    /// Requests kept on the stack by a valid affinity cookie (field 15).
    pub sticky_requests: u64,
    /// Circuit-breaker transitions to open (field 16).
    pub breaker_opens: u64,
}

/// Add `(name, count)` pairs into `into`, by name.
fn merge_counts(into: &mut Vec<(String, u64)>, from: &[(String, u64)]) {
    for (name, n) in from {
        match into.iter_mut().find(|(k, _)| k == name) {
            Some((_, c)) => *c = c.saturating_add(*n),
            None => into.push((name.clone(), *n)),
        }
    }
}

impl StackTelemetry {
    /// Add another window's counts, saturating like the histogram and the named counts
    /// (a batch is input: a decoded counter can be anything up to `u64::MAX`).
    pub fn merge(&mut self, o: &StackTelemetry) {
        self.requests = self.requests.saturating_add(o.requests);
        self.status_2xx = self.status_2xx.saturating_add(o.status_2xx);
        self.status_4xx = self.status_4xx.saturating_add(o.status_4xx);
        self.status_5xx = self.status_5xx.saturating_add(o.status_5xx);
        self.latency_ms_sum = self.latency_ms_sum.saturating_add(o.latency_ms_sum);
        self.affinity_hit = self.affinity_hit.saturating_add(o.affinity_hit);
        self.affinity_miss = self.affinity_miss.saturating_add(o.affinity_miss);
        self.affinity_forged = self.affinity_forged.saturating_add(o.affinity_forged);
        self.local_replies = self.local_replies.saturating_add(o.local_replies);
        self.latency.merge(&o.latency);
        merge_counts(&mut self.kpis, &o.kpis);
        merge_counts(&mut self.by_rule, &o.by_rule);
        self.new_users = self.new_users.saturating_add(o.new_users);
        self.sticky_requests = self.sticky_requests.saturating_add(o.sticky_requests);
        self.breaker_opens = self.breaker_opens.saturating_add(o.breaker_opens);
    }

    /// Nothing was counted (the name aside).
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.requests,
            self.status_2xx,
            self.status_4xx,
            self.status_5xx,
            self.latency_ms_sum,
            self.affinity_hit,
            self.affinity_miss,
            self.affinity_forged,
            self.local_replies,
            self.new_users,
            self.sticky_requests,
            self.breaker_opens,
        ];
        counts.iter().all(|c| *c == 0)
            && self.latency.is_empty()
            && self.kpis.is_empty()
            && self.by_rule.is_empty()
    }
}

// ----- encoding ---------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_u64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_varint(out, u64::from(field) << 3);
        put_varint(out, v);
    }
}

fn put_bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        put_varint(out, (u64::from(field) << 3) | 2);
        put_varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

fn put_message(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

impl WatchRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, 1, self.node_id.as_bytes());
        put_u64(&mut out, 2, self.last_applied_version);
        put_u64(&mut out, 3, self.ack_version);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut m = WatchRequest::default();
        for_each_field(buf, &mut |f, v| {
            match (f, v) {
                (1, Value::Bytes(b)) => m.node_id = utf8(1, b)?,
                (2, Value::Varint(x)) => m.last_applied_version = x,
                (3, Value::Varint(x)) => m.ack_version = x,
                _ => {}
            }
            Ok(())
        })?;
        Ok(m)
    }
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, 1, self.version);
        put_bytes(&mut out, 2, self.policy_json.as_bytes());
        let stack = |out: &mut Vec<u8>, field, s: &StackState| {
            let mut b = Vec::new();
            put_bytes(&mut b, 1, s.name.as_bytes());
            put_u64(&mut b, 2, u64::from(s.weight_percent));
            put_u64(&mut b, 3, u64::from(s.healthy));
            put_bytes(&mut b, 4, s.reason.as_bytes());
            put_u64(&mut b, 5, u64::from(s.draining));
            put_u64(&mut b, 6, s.drain_deadline_unix_ms);
            put_u64(&mut b, 7, u64::from(s.evacuating));
            put_bytes(&mut b, 8, s.rule.as_bytes());
            put_message(out, field, &b);
        };
        for s in &self.stacks {
            stack(&mut out, 3, s);
        }
        put_u64(&mut out, 4, self.policy_version);
        for s in &self.rule_stacks {
            stack(&mut out, 5, s);
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut m = Snapshot::default();
        for_each_field(buf, &mut |f, v| {
            match (f, v) {
                (1, Value::Varint(x)) => m.version = x,
                (2, Value::Bytes(b)) => m.policy_json = utf8(2, b)?,
                (f @ (3 | 5), Value::Bytes(b)) => {
                    let mut s = StackState::default();
                    for_each_field(b, &mut |f, v| {
                        match (f, v) {
                            (1, Value::Bytes(b)) => s.name = utf8(1, b)?,
                            (2, Value::Varint(x)) => {
                                s.weight_percent = x.min(u64::from(u32::MAX)) as u32
                            }
                            (3, Value::Varint(x)) => s.healthy = x != 0,
                            (4, Value::Bytes(b)) => s.reason = utf8(4, b)?,
                            (5, Value::Varint(x)) => s.draining = x != 0,
                            (6, Value::Varint(x)) => s.drain_deadline_unix_ms = x,
                            (7, Value::Varint(x)) => s.evacuating = x != 0,
                            (8, Value::Bytes(b)) => s.rule = utf8(8, b)?,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    match f {
                        3 => &mut m.stacks,
                        _ => &mut m.rule_stacks,
                    }
                    .push(s);
                }
                (4, Value::Varint(x)) => m.policy_version = x,
                _ => {}
            }
            Ok(())
        })?;
        Ok(m)
    }
}

impl TelemetryBatch {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, 1, self.node_id.as_bytes());
        put_u64(&mut out, 2, self.window_end_unix_ms);
        put_u64(&mut out, 3, u64::from(self.window_ms));
        for s in &self.stacks {
            let mut b = Vec::new();
            put_bytes(&mut b, 1, s.stack.as_bytes());
            for (f, v) in [
                (2, s.requests),
                (3, s.status_2xx),
                (4, s.status_4xx),
                (5, s.status_5xx),
                (6, s.latency_ms_sum),
                (7, s.affinity_hit),
                (8, s.affinity_miss),
                (9, s.affinity_forged),
                (10, s.local_replies),
            ] {
                put_u64(&mut b, f, v);
            }
            // Packed `repeated uint32`: bucket, count, bucket, count, ...
            let mut packed = Vec::new();
            for (i, c) in s.latency.nonzero() {
                put_varint(&mut packed, i as u64);
                put_varint(&mut packed, u64::from(c));
            }
            put_bytes(&mut b, 11, &packed);
            for (f, list) in [(12, &s.kpis), (13, &s.by_rule)] {
                for (name, count) in list {
                    let mut nc = Vec::new();
                    put_bytes(&mut nc, 1, name.as_bytes());
                    put_u64(&mut nc, 2, *count);
                    put_message(&mut b, f, &nc);
                }
            }
            for (f, v) in [
                (14, s.new_users),
                (15, s.sticky_requests),
                (16, s.breaker_opens),
            ] {
                put_u64(&mut b, f, v);
            }
            put_message(&mut out, 4, &b);
        }
        put_u64(&mut out, 5, self.dropped);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut m = TelemetryBatch::default();
        for_each_field(buf, &mut |f, v| {
            match (f, v) {
                (1, Value::Bytes(b)) => m.node_id = utf8(1, b)?,
                (2, Value::Varint(x)) => m.window_end_unix_ms = x,
                (3, Value::Varint(x)) => m.window_ms = x.min(u64::from(u32::MAX)) as u32,
                (4, Value::Bytes(b)) => {
                    let mut s = StackTelemetry::default();
                    for_each_field(b, &mut |f, v| {
                        match (f, v) {
                            (1, Value::Bytes(b)) => s.stack = utf8(1, b)?,
                            (2, Value::Varint(x)) => s.requests = x,
                            (3, Value::Varint(x)) => s.status_2xx = x,
                            (4, Value::Varint(x)) => s.status_4xx = x,
                            (5, Value::Varint(x)) => s.status_5xx = x,
                            (6, Value::Varint(x)) => s.latency_ms_sum = x,
                            (7, Value::Varint(x)) => s.affinity_hit = x,
                            (8, Value::Varint(x)) => s.affinity_miss = x,
                            (9, Value::Varint(x)) => s.affinity_forged = x,
                            (10, Value::Varint(x)) => s.local_replies = x,
                            (11, Value::Bytes(b)) => {
                                let mut pos = 0;
                                while pos < b.len() {
                                    let i = get_varint(b, &mut pos)?;
                                    let c = get_varint(b, &mut pos)?;
                                    // Buckets outside the fixed layout are skipped.
                                    s.latency.add_bucket(
                                        usize::try_from(i).unwrap_or(usize::MAX),
                                        c.min(u64::from(u32::MAX)) as u32,
                                    );
                                }
                            }
                            (12, Value::Bytes(b)) => s.kpis.push(named_count(b)?),
                            (13, Value::Bytes(b)) => s.by_rule.push(named_count(b)?),
                            (14, Value::Varint(x)) => s.new_users = x,
                            (15, Value::Varint(x)) => s.sticky_requests = x,
                            (16, Value::Varint(x)) => s.breaker_opens = x,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    m.stacks.push(s);
                }
                (5, Value::Varint(x)) => m.dropped = x,
                _ => {}
            }
            Ok(())
        })?;
        Ok(m)
    }
}

/// `switchyard.v1.NamedCount`.
fn named_count(buf: &[u8]) -> Result<(String, u64), DecodeError> {
    let (mut name, mut count) = (String::new(), 0);
    for_each_field(buf, &mut |f, v| {
        match (f, v) {
            (1, Value::Bytes(b)) => name = utf8(1, b)?,
            (2, Value::Varint(x)) => count = x,
            _ => {}
        }
        Ok(())
    })?;
    Ok((name, count))
}

/// Serialized `envoy.config.core.v3.GrpcService{envoy_grpc{cluster_name}}`: what Envoy's
/// `open_grpc_stream`/`dispatch_grpc_call` must be given (a bare cluster name can parse as
/// an empty GrpcService and abort Envoy).
pub fn grpc_service(cluster: &str) -> Vec<u8> {
    let mut envoy_grpc = Vec::new();
    put_bytes(&mut envoy_grpc, 1, cluster.as_bytes());
    let mut out = Vec::new();
    put_message(&mut out, 1, &envoy_grpc);
    out
}

// ----- decoding ---------------------------------------------------------------------

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn utf8(field: u32, b: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8(field))
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(DecodeError::Truncated)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(DecodeError::Varint)
}

/// Call `f` with every field of a message. Takes `dyn`: one copy of the parser serves
/// every message (decoding is not on the request path; the module's size is a budget).
fn for_each_field<'a>(
    buf: &'a [u8],
    f: &mut dyn FnMut(u32, Value<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    if buf.len() > MAX_MESSAGE {
        return Err(DecodeError::TooLarge);
    }
    let mut pos = 0;
    while pos < buf.len() {
        let key = get_varint(buf, &mut pos)?;
        let field = (key >> 3) as u32;
        let value = match (key & 7) as u8 {
            0 => Value::Varint(get_varint(buf, &mut pos)?),
            1 => {
                pos = pos
                    .checked_add(8)
                    .filter(|&p| p <= buf.len())
                    .ok_or(DecodeError::Truncated)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(get_varint(buf, &mut pos)?)
                    .map_err(|_| DecodeError::Truncated)?;
                let end = pos
                    .checked_add(len)
                    .filter(|&e| e <= buf.len())
                    .ok_or(DecodeError::Truncated)?;
                let b = &buf[pos..end];
                pos = end;
                Value::Bytes(b)
            }
            5 => {
                pos = pos
                    .checked_add(4)
                    .filter(|&p| p <= buf.len())
                    .ok_or(DecodeError::Truncated)?;
                Value::Fixed
            }
            w => return Err(DecodeError::WireType(w)),
        };
        f(field, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_bytes() {
        // protoc --encode=switchyard.v1.WatchRequest: node_id: "n1" last_applied_version: 300
        let w = WatchRequest {
            node_id: "n1".into(),
            last_applied_version: 300,
            ack_version: 0,
        };
        assert_eq!(w.encode(), vec![0x0a, 2, b'n', b'1', 0x10, 0xac, 0x02]);
        assert_eq!(grpc_service("hx"), vec![0x0a, 4, 0x0a, 2, b'h', b'x']);
        // control-service/tests/integration/wire.rs: Snapshot{version: 6, policy_version: 5}
        let s = Snapshot {
            version: 6,
            policy_version: 5,
            ..Default::default()
        };
        assert_eq!(s.encode(), vec![0x08, 6, 0x20, 5]);
        assert_eq!(Snapshot::decode(&[0x08, 6, 0x20, 5]).unwrap(), s);
    }

    #[test]
    fn round_trips() {
        let s = Snapshot {
            version: 42,
            policy_version: 40,
            policy_json: "{\"x\":1}".into(),
            stacks: vec![
                StackState {
                    name: "blue".into(),
                    weight_percent: 100,
                    healthy: true,
                    reason: String::new(),
                    draining: false,
                    ..Default::default()
                },
                StackState {
                    name: "green".into(),
                    weight_percent: 0,
                    healthy: false,
                    reason: "db down".into(),
                    draining: true,
                    drain_deadline_unix_ms: 1_795_737_630_000,
                    evacuating: false,
                    rule: String::new(),
                },
                StackState {
                    name: "canary".into(),
                    weight_percent: 100,
                    healthy: true,
                    evacuating: true,
                    ..Default::default()
                },
            ],
            rule_stacks: vec![StackState {
                name: "green".into(),
                weight_percent: 25,
                evacuating: true,
                rule: "beta".into(),
                ..Default::default()
            }],
        };
        assert_eq!(Snapshot::decode(&s.encode()).unwrap(), s);
        let t = TelemetryBatch {
            node_id: "envoy-1".into(),
            window_end_unix_ms: 1_795_737_600_000,
            window_ms: 1000,
            stacks: vec![StackTelemetry {
                stack: "blue".into(),
                requests: 10,
                status_2xx: 9,
                status_5xx: 1,
                latency_ms_sum: 55,
                ..Default::default()
            }],
            dropped: 3,
        };
        assert_eq!(TelemetryBatch::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn telemetry_signals_round_trip_and_merge() {
        let mut latency = Histogram::new();
        for us in [900, 1_200, 1_200, 250_000, 70_000_000] {
            latency.record(us);
        }
        let blue = StackTelemetry {
            stack: "blue".into(),
            requests: 5,
            status_2xx: 5,
            latency: latency.clone(),
            kpis: vec![("orders".into(), 2), ("signups".into(), 1)],
            by_rule: vec![("default".into(), 3), ("beta".into(), 2)],
            new_users: 4,
            sticky_requests: 1,
            breaker_opens: 1,
            ..Default::default()
        };
        let t = TelemetryBatch {
            node_id: "n".into(),
            stacks: vec![blue.clone()],
            ..Default::default()
        };
        let back = TelemetryBatch::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.stacks[0].latency.total(), 5);

        let mut sum = blue.clone();
        sum.merge(&StackTelemetry {
            stack: "blue".into(),
            latency,
            kpis: vec![("orders".into(), 5)],
            by_rule: vec![("other".into(), 7)],
            new_users: 1,
            ..Default::default()
        });
        assert_eq!(sum.latency.total(), 10);
        assert_eq!(sum.kpis, vec![("orders".into(), 7), ("signups".into(), 1)]);
        assert_eq!(sum.by_rule.len(), 3);
        assert_eq!(sum.new_users, 5);
    }

    #[test]
    fn latency_buckets_are_packed_pairs_on_the_wire() {
        // StackTelemetry{stack: "b", latency: bucket 3 x1, bucket 40 x300,
        // kpis: [{name: "o", count: 2}], new_users: 1, breaker_opens: 2}
        let mut latency = Histogram::new();
        latency.add_bucket(3, 1);
        latency.add_bucket(40, 300);
        let t = TelemetryBatch {
            stacks: vec![StackTelemetry {
                stack: "b".into(),
                latency,
                kpis: vec![("o".into(), 2)],
                new_users: 1,
                breaker_opens: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        let stack = [
            0x0a, 1, b'b', // stack
            0x5a, 5, 3, 1, 40, 0xac, 0x02, // 11: packed [3, 1, 40, 300]
            0x62, 5, 0x0a, 1, b'o', 0x10, 2, // 12: {name: "o", count: 2}
            0x70, 1, // 14: new_users
            0x80, 0x01, 2, // 16: breaker_opens
        ];
        let mut want = vec![0x22, stack.len() as u8];
        want.extend_from_slice(&stack);
        assert_eq!(t.encode(), want);
        assert_eq!(TelemetryBatch::decode(&want).unwrap(), t);
        // A bucket outside the layout is skipped; a dangling bucket is an error.
        let mut odd = want.clone();
        odd[7..12].copy_from_slice(&[100, 1, 40, 0xac, 0x02]); // [100, 1, 40, 300]
        let s = &TelemetryBatch::decode(&odd).unwrap().stacks[0];
        assert_eq!(s.latency.total(), 300);
        let mut dangling = want.clone();
        dangling.drain(10..12); // [3, 1, 40]: a bucket without its count
        dangling[6] = 3;
        dangling[1] -= 2;
        assert!(TelemetryBatch::decode(&dangling).is_err());
    }

    #[test]
    fn rule_stacks_follow_the_policy_version_and_name_their_rule() {
        // Snapshot{version: 2, policy_version: 1, rule_stacks: [{name: "g", weight: 5,
        // rule: "r"}]}: field 5 after field 4, as prost writes it; an older decoder
        // skips it.
        let s = Snapshot {
            version: 2,
            policy_version: 1,
            rule_stacks: vec![StackState {
                name: "g".into(),
                weight_percent: 5,
                rule: "r".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let want = [
            0x08, 2, 0x20, 1, 0x2a, 8, 0x0a, 1, b'g', 0x10, 5, 0x42, 1, b'r',
        ];
        assert_eq!(s.encode(), want);
        assert_eq!(Snapshot::decode(&want).unwrap(), s);
        assert!(Snapshot::decode(&want).unwrap().stacks.is_empty());
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut b = Snapshot {
            version: 7,
            ..Default::default()
        }
        .encode();
        b.extend_from_slice(&[0x49, 1, 2, 3, 4, 5, 6, 7, 8]); // field 9, fixed64
        b.extend_from_slice(&[0x55, 1, 2, 3, 4]); // field 10, fixed32
        assert_eq!(Snapshot::decode(&b).unwrap().version, 7);
    }

    #[test]
    fn drain_fields_are_optional_on_the_wire() {
        // A StackState from before fields 6 and 7: name "blue", weight 100, healthy,
        // draining. It decodes as draining until cookies expire, not evacuating.
        let old = [
            0x1a, 12, 0x0a, 4, b'b', b'l', b'u', b'e', 0x10, 100, 0x18, 1, 0x28, 1,
        ];
        let s = &Snapshot::decode(&old).unwrap().stacks[0];
        assert!(s.draining && !s.evacuating);
        assert_eq!(s.drain_deadline_unix_ms, 0);
        assert_eq!((s.factor(), s.sticky_until_ms()), (0, u64::MAX));
        // New fields: deadline 1000 (field 6), evacuating (field 7).
        let mut b = old.to_vec();
        b[1] += 5;
        b.extend_from_slice(&[0x30, 0xe8, 0x07, 0x38, 1]);
        let s = &Snapshot::decode(&b).unwrap().stacks[0];
        assert_eq!(s.drain_deadline_unix_ms, 1000);
        assert!(s.evacuating);
        assert_eq!(Snapshot::decode(&b).unwrap().encode(), b);
    }

    #[test]
    fn factor_and_sticky_window_per_state() {
        let st = |weight_percent, healthy, draining, drain_deadline_unix_ms, evacuating| {
            let s = StackState {
                weight_percent,
                healthy,
                draining,
                drain_deadline_unix_ms,
                evacuating,
                ..Default::default()
            };
            (s.factor(), s.sticky_until_ms())
        };
        assert_eq!(st(100, true, false, 0, false), (100, u64::MAX));
        assert_eq!(st(40, true, false, 0, false), (40, u64::MAX));
        assert_eq!(st(0, true, false, 0, false), (0, 0), "weight 0: no traffic");
        assert_eq!(st(100, true, true, 0, false), (0, u64::MAX));
        assert_eq!(st(100, true, true, 5000, false), (0, 5000));
        assert_eq!(st(100, true, true, 5000, true), (0, 0), "evacuate wins");
        assert_eq!(st(100, true, false, 0, true), (0, 0));
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Snapshot::decode(&b);
            let _ = TelemetryBatch::decode(&b);
            let _ = WatchRequest::decode(&b);
        }
    }
}
