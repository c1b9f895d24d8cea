//! An order as queued (the message) and as reported (its status record). Pure data and
//! the rules on what a client may send; no I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Headers never replayed: hop-by-hop, framing, and Switchyard's own (the filter sets
/// them again on the replay).
const NOT_REPLAYED: [&str; 8] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "te",
    "upgrade",
    "expect",
];

/// One queued order: what the drainer replays through Envoy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub reference: String,
    pub key: String,
    pub method: String,
    pub path: String,
    /// Request headers to replay (routing inputs: geo, cookies, authorization).
    pub headers: Vec<(String, String)>,
    /// The JSON body, as received.
    pub body: String,
    pub rule: String,
    pub intended_stack: String,
    pub segment: String,
    pub accepted_ms: u64,
}

/// What `GET /orders/{ref}` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub reference: String,
    /// `queued`, `placed` or `failed`.
    pub status: String,
    pub region: String,
    pub rule: String,
    pub intended_stack: String,
    pub segment: String,
    pub accepted_ms: u64,
    pub updated_ms: u64,
    /// The stack that placed it and its answer (placed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<serde_json::Value>,
    /// Why it was dead-lettered (failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub attempts: u32,
}

/// A well-formed idempotency key: 1-128 characters of `[A-Za-z0-9._:-]` (UUIDs, ULIDs
/// and the filter's generated `sy-…` keys all are).
pub fn valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// The order reference of an idempotency key in a region: the same key always names
/// the same order (retries are one order), and a reference reveals nothing of the key.
pub fn reference(region: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(region.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let d = h.finalize();
    let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("ord-{region}-{hex}")
}

/// Whether a request header is replayed by the drainer.
pub fn replayed(name: &str) -> bool {
    !NOT_REPLAYED.contains(&name) && !name.starts_with("x-switchyard-") && !name.starts_with(':')
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in [
            "a",
            "sy-0123abcd",
            "550e8400-e29b-41d4-a716-446655440000",
            "x.y:z_1",
        ] {
            assert!(valid_key(ok), "{ok}");
        }
        let long = "k".repeat(129);
        for bad in ["", "a b", "é", "a/b", long.as_str(), "a\n"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn references_are_stable_per_region_and_key() {
        assert_eq!(reference("us", "k1"), reference("us", "k1"));
        assert_ne!(reference("us", "k1"), reference("us", "k2"));
        assert_ne!(reference("us", "k1"), reference("eu", "k1"));
        assert!(reference("eu", "k1").starts_with("ord-eu-"));
        assert_eq!(reference("us", "k1").len(), "ord-us-".len() + 24);
    }

    #[test]
    fn replayed_headers() {
        assert!(replayed("x-geo-country") && replayed("cookie") && replayed("authorization"));
        assert!(
            !replayed("x-switchyard-queue-rule")
                && !replayed("host")
                && !replayed("content-length")
        );
    }
}

#[cfg(test)]
mod policy_tests {
    /// `examples/intake/policy.json` (what `make run`'s transcript applies) validates.
    #[test]
    fn the_example_policy_is_valid() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy.json")).unwrap();
        let v = switchyard_filter::policy::validate_json(&text).unwrap_or_else(|e| panic!("{e}"));
        let queued: Vec<&str> = v
            .policy
            .rules
            .iter()
            .filter_map(|r| r.route.queue.as_ref().map(|q| q.cluster.as_str()))
            .collect();
        assert_eq!(queued, ["intake_eu", "intake_us"]);
    }
}
