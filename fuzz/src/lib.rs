//! Fuzz targets: every input the filter takes from outside, as a function of one byte
//! string. Each function panics only when an invariant breaks (a decoder panicking, a
//! round trip that changes a message, a decision naming no stack, a forged cookie
//! accepted), so libFuzzer (`fuzz/libfuzzer`, `make fuzz`) reports those as crashes and
//! the corpus replay (`tests/corpus.rs`, part of `make test`) fails on them.
//!
//! The targets never print, never allocate without bound and never touch the file
//! system, so libFuzzer can run them millions of times in one process.

#![allow(clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use switchyard_filter::affinity::{Keyring, Verdict};
use switchyard_filter::classify::Request;
use switchyard_filter::policy::{validate_bytes, validate_json, Policy};
use switchyard_filter::router::{Outcome, Router, StackHealth};
use switchyard_filter::snapshot::{Snapshot, TelemetryBatch, WatchRequest};

/// A target: one byte string in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by name (the corpus directory and the libFuzzer binary share it).
pub const TARGETS: &[(&str, Target)] = &[
    ("policy", policy),
    ("cookie", cookie),
    ("classify", classify),
    ("snapshot", snapshot),
    ("telemetry", telemetry),
];

/// The demo policy (examples/policies/demo.json), compiled once: the policy the
/// classification target decides with.
const DEMO: &str = include_str!("../../examples/policies/demo.json");
const KEYS: &str = "k2=current-secret-0123456789,k1=previous-secret-0123456789";

fn demo() -> &'static Arc<Policy> {
    static P: OnceLock<Arc<Policy>> = OnceLock::new();
    P.get_or_init(|| match validate_json(DEMO) {
        Ok(v) => Arc::new(v.policy),
        Err(e) => panic!("demo policy must validate: {e}"),
    })
}

fn keys() -> &'static Keyring {
    static K: OnceLock<Keyring> = OnceLock::new();
    K.get_or_init(|| match Keyring::parse(KEYS) {
        Ok(k) => k,
        Err(e) => panic!("fixture keys: {e}"),
    })
}

/// Each fixture key alone (current, previous), to re-sign what the keyring accepts.
fn single_keys() -> &'static [Keyring; 2] {
    static K: OnceLock<[Keyring; 2]> = OnceLock::new();
    K.get_or_init(|| {
        let one = |spec: &str| match Keyring::parse(spec) {
            Ok(k) => k,
            Err(e) => panic!("fixture key: {e}"),
        };
        [
            one("k2=current-secret-0123456789"),
            one("k1=previous-secret-0123456789"),
        ]
    })
}

/// Reads fixed-size values off the front of the input, zero when it runs out.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| (acc << 8) | u64::from(self.u8()))
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Policy parse + validate (the plugin configuration, `switchyard policy validate`, the
/// control service's push): any bytes give a policy or field issues, never a panic. A
/// rejection names at least one problem; an accepted policy can be routed with (a
/// router built on it decides its default route) and validating again gives the same.
pub fn policy(data: &[u8]) {
    match validate_bytes(data) {
        Err(invalid) => {
            assert!(!invalid.errors.is_empty(), "a rejection names no problem");
            // Text and bytes entry points agree.
            if let Ok(text) = std::str::from_utf8(data) {
                assert!(validate_json(text).is_err(), "str and bytes disagree");
            }
        }
        Ok(valid) => {
            let p = Arc::new(valid.policy);
            assert!(!p.stacks.is_empty(), "an accepted policy has no stack");
            let mut r = Router::new(Arc::clone(&p), Some(keys().clone()));
            check_outcome(&p, &r.decide_default(1_795_737_600_000).outcome);
            let again = validate_bytes(data).map(|v| v.policy.stack_names());
            assert_eq!(
                again.ok(),
                Some(p.stack_names()),
                "validation is not deterministic"
            );
        }
    }
}

/// Cookie decode/verify: the first 13 input bytes pick the epoch and clock, the rest is
/// the cookie value. Only a cookie this keyring signed verifies as valid: the value must
/// be exactly what `sign` produces for the stack, epoch and expiry it claims (the
/// signature has a single encoding, so no other spelling of a genuine cookie passes).
/// A cookie signed here for any stack and time verifies back to the same.
pub fn cookie(data: &[u8]) {
    let mut c = Cursor(data);
    let epoch = u32::from(c.u8()) % 4;
    let now_s = c.u64() % 4_000_000_000;
    let stack_len = usize::from(c.u8() % 24);
    let ttl = u64::from(c.u8()) * 60 + 1;
    let _ = c.u8();
    let _ = c.u8();
    let value = c.rest();
    let k = keys();
    if let Verdict::Valid { stack, expiry_s } = k.verify(value, epoch, now_s) {
        // Valid under the current or the previous key: exactly what that key signs.
        let genuine = single_keys()
            .iter()
            .any(|one| one.sign(stack, epoch, expiry_s).as_bytes() == value);
        assert!(genuine, "a cookie no key produced verified as valid");
        assert!(expiry_s > now_s, "an expired cookie verified as valid");
    }
    // Round trip with a stack name taken from the input (any UTF-8 without dots).
    let name: String = String::from_utf8_lossy(&value[..stack_len.min(value.len())])
        .chars()
        .filter(|ch| *ch != '.')
        .collect();
    let signed = k.sign(&name, epoch, now_s + ttl);
    match k.verify(signed.as_bytes(), epoch, now_s) {
        Verdict::Valid { stack, expiry_s } if stack == name && expiry_s == now_s + ttl => {}
        // Anything longer than the cookie limit is refused whole, by design.
        Verdict::Forged if signed.len() > 200 => {}
        other => panic!("own cookie for {name:?} did not verify: {other:?}"),
    }
    assert_eq!(
        k.verify(signed.as_bytes(), epoch.wrapping_add(1), now_s),
        if signed.len() > 200 {
            Verdict::Forged
        } else {
            Verdict::Stale
        },
        "a cookie of another epoch must be stale"
    );
}

/// Classification and the whole decision over an arbitrary header set, with the demo
/// policy and the fixture keys: the first byte picks the client address, the next 8
/// the clock, the next 4 the stacks' health; the rest is `name:value` lines. Every
/// request gets a stack of the policy or the policy's local reply, and EU traffic
/// (exactly one trusted geo header of an EU country) never leaves the EU stack.
pub fn classify(data: &[u8]) {
    let mut c = Cursor(data);
    let source = match c.u8() % 4 {
        0 => None,
        1 => Some(IpAddr::V4(Ipv4Addr::new(10, 20, c.u8(), c.u8()))),
        2 => Some(IpAddr::V4(Ipv4Addr::from(c.u64() as u32))),
        _ => Some(IpAddr::V6(Ipv6Addr::from(
            (u128::from(c.u64()) << 64) | u128::from(c.u64()),
        ))),
    };
    let now_ms = c.u64() % (1 << 45);
    let health = [c.u8(), c.u8(), c.u8(), c.u8()];
    let headers: Vec<(&[u8], &[u8])> = c
        .rest()
        .split(|b| *b == b'\n')
        .map(|line| match line.iter().position(|b| *b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        })
        .collect();
    let p = demo();
    let mut r = Router::new(Arc::clone(p), Some(keys().clone()));
    let names = p.stack_names();
    r.set_stacks(names.iter().zip(health).map(|(name, h)| StackHealth {
        name,
        factor: u32::from(h % 128),
        healthy: h & 0x80 == 0,
        sticky_until_ms: u64::from(h) * 1000,
    }));
    let req = Request {
        headers: &headers,
        source,
        now_ms,
    };
    // Twice: the second decision may use the router's verified-cookie cache.
    for _ in 0..2 {
        let d = r.decide(&req);
        check_outcome(p, &d.outcome);
        let geo: Vec<&[u8]> = headers
            .iter()
            .filter(|(n, _)| *n == b"x-geo-country")
            .map(|(_, v)| *v)
            .collect();
        let eu = matches!(geo.as_slice(), [v] if [&b"DE"[..], b"FR", b"NL", b"IE"].contains(v));
        if eu {
            if let Outcome::Stack { id, .. } = d.outcome {
                assert_eq!(
                    p.stacks[id].name, "eu",
                    "EU traffic left the EU: {headers:?}"
                );
            }
        }
        if let Some(cookie) = &d.set_cookie {
            assert!(
                cookie.starts_with("sy_aff=v1.k2."),
                "a new cookie is signed with the current key: {cookie}"
            );
        }
    }
}

fn check_outcome(p: &Policy, outcome: &Outcome) {
    match outcome {
        Outcome::Stack { id, .. } => {
            assert!(
                *id < p.stacks.len(),
                "decision names stack {id} of {}",
                p.stacks.len()
            )
        }
        Outcome::Local(reply) => assert!(
            (200..600).contains(&reply.status),
            "local reply with status {}",
            reply.status
        ),
        Outcome::Queue { intended, .. } => {
            if let Some(id) = intended {
                assert!(
                    *id < p.stacks.len(),
                    "queued request names stack {id} of {}",
                    p.stacks.len()
                )
            }
        }
    }
}

/// Snapshot decode (the Watch stream's messages, the bytes the singleton keeps in shared
/// data) and the Watch request: any bytes give a message or an error; a decoded message
/// encodes to bytes that decode to the same message; a decoded snapshot's policy and
/// stacks go where the workers put them (validation, the router's health) without panic.
pub fn snapshot(data: &[u8]) {
    if let Ok(s) = Snapshot::decode(data) {
        let again = Snapshot::decode(&s.encode());
        assert_eq!(again.as_ref(), Ok(&s), "snapshot round trip changed it");
        if let Ok(v) = validate_json(&s.policy_json) {
            let mut r = Router::new(Arc::new(v.policy), None);
            r.set_stacks(s.stacks.iter().map(|st| StackHealth {
                name: &st.name,
                factor: st.factor(),
                healthy: st.healthy,
                sticky_until_ms: st.sticky_until_ms(),
            }));
            let _ = r.decide_default(1_795_737_600_000);
        }
    }
    if let Ok(w) = WatchRequest::decode(data) {
        assert_eq!(
            WatchRequest::decode(&w.encode()).as_ref(),
            Ok(&w),
            "watch request round trip changed it"
        );
    }
}

/// Telemetry decode (the batches workers queue to the singleton and the singleton
/// reports): any bytes give a batch or an error; a decoded batch round-trips, and
/// merging it into itself never overflows into a panic.
pub fn telemetry(data: &[u8]) {
    if let Ok(b) = TelemetryBatch::decode(data) {
        let again = TelemetryBatch::decode(&b.encode());
        assert_eq!(again.as_ref(), Ok(&b), "telemetry round trip changed it");
        let mut merged = b.stacks.first().cloned().unwrap_or_default();
        for s in &b.stacks {
            merged.merge(s);
        }
    }
}
