//! Request classification (pipeline stage 1): geography, channel, cohort, user key and
//! percentage bucket, read from headers Envoy passed and the client address. Only reads;
//! a malformed or hostile input makes an attribute unknown, never an error.
//!
//! Repeated routing-relevant headers (geo, cohort, user key, hash key) are treated as
//! hostile: a client that sends two cohort headers is trying to confuse whichever layer
//! reads only the first. The attribute is then unknown and the request is flagged.

use std::net::IpAddr;

use crate::affinity::cookie_pairs;
use crate::hash::{bucket, hash64};
use crate::policy::{ChannelId, KeyDoc, Policy, RegionId};

/// One request as the routing core sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// All request headers (lower-case names), repeats kept, in arrival order.
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// Client address (Envoy's `source.address`).
    pub source: Option<IpAddr>,
    /// Unix time in milliseconds.
    pub now_ms: u64,
}

/// Result of looking a header or cookie up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    Absent,
    One(&'a [u8]),
    /// Present more than once: hostile, ignored.
    Repeated,
}

impl<'a> Found<'a> {
    pub fn value(self) -> Option<&'a [u8]> {
        match self {
            Found::One(v) => Some(v),
            _ => None,
        }
    }
}

impl<'a> Request<'a> {
    /// A header by (lower-case) name. Envoy hands filters lower-case header names (HTTP/1
    /// names are normalised, HTTP/2 requires it), and policy names are validated
    /// lower-case, so an exact comparison is enough.
    pub fn header(&self, name: &str) -> Found<'a> {
        let mut found = Found::Absent;
        for (n, v) in self.headers {
            if *n == name.as_bytes() {
                found = match found {
                    Found::Absent => Found::One(v),
                    _ => return Found::Repeated,
                };
            }
        }
        found
    }

    /// A cookie by name, over every `cookie` header.
    pub fn cookie(&self, name: &str) -> Found<'a> {
        let mut found = Found::Absent;
        for (n, v) in self.headers {
            if *n != b"cookie" {
                continue;
            }
            for (cn, cv) in cookie_pairs(v) {
                if cn == name.as_bytes() {
                    found = match found {
                        Found::Absent => Found::One(cv),
                        _ => return Found::Repeated,
                    };
                }
            }
        }
        found
    }

    /// Hash of a key source's value; `None` if absent, empty or hostile (repeats also
    /// set `hostile`).
    pub fn key_hash(&self, source: &KeyDoc, hostile: &mut bool) -> Option<u64> {
        match source {
            KeyDoc::Header(h) => hash_found(self.header(h), hostile),
            KeyDoc::Cookie(c) => hash_found(self.cookie(c), hostile),
            KeyDoc::ClientIp => self.ip_hash(),
        }
    }

    /// Hash of the client address.
    pub fn ip_hash(&self) -> Option<u64> {
        self.source.map(|ip| match ip {
            IpAddr::V4(v4) => hash64(KEY_SEED, &v4.octets()),
            IpAddr::V6(v6) => hash64(KEY_SEED, &v6.octets()),
        })
    }
}

/// Hash of a found value; repeats set `hostile`.
pub fn hash_found(found: Found, hostile: &mut bool) -> Option<u64> {
    if found == Found::Repeated {
        *hostile = true;
    }
    found.value().filter(|v| !v.is_empty()).map(|v| hash64(KEY_SEED, v))
}

const KEY_SEED: u64 = 0x5379_4b65_79; // "SyKey"

/// Classified attributes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    pub region: Option<RegionId>,
    /// Upper-case ISO code from the geo header.
    pub country: Option<[u8; 2]>,
    pub channel: ChannelId,
    pub cohort: Option<&'a [u8]>,
    /// Path without the query string.
    pub path: &'a [u8],
    pub method: &'a [u8],
    /// Hash of the user key.
    pub user_key: Option<u64>,
    /// Percentage bucket in basis points, when there is a user key.
    pub bucket: Option<u16>,
    /// A routing-relevant header or cookie was repeated.
    pub hostile: bool,
}

/// Classify a request under a policy.
pub fn classify<'a>(policy: &Policy, req: &Request<'a>) -> Attributes<'a> {
    let c = &policy.classify;
    let mut hostile = false;
    let mut path: &[u8] = b"/";
    let mut method: &[u8] = b"GET";
    let mut user_agent: &[u8] = b"";
    for (n, v) in req.headers {
        match *n {
            b":path" => path = v.split(|&b| b == b'?').next().unwrap_or(v),
            b":method" => method = v,
            b"user-agent" => user_agent = v,
            _ => {}
        }
    }

    // Geography: trusted edge header first, then the client address.
    let mut region = None;
    let mut country = None;
    if let Some(h) = &c.geo_header {
        match req.header(h) {
            Found::One(v) => {
                let v = trim(v);
                if v.len() == 2 && v.iter().all(u8::is_ascii_alphabetic) {
                    let code = [v[0].to_ascii_uppercase(), v[1].to_ascii_uppercase()];
                    country = Some(code);
                    if let Ok(s) = std::str::from_utf8(&code) {
                        region = c.countries.get(s).copied();
                    }
                }
                if region.is_none() {
                    region = std::str::from_utf8(v).ok().and_then(|s| policy.region_id(s));
                }
            }
            Found::Repeated => hostile = true,
            Found::Absent => {}
        }
    }
    if region.is_none() && !c.cidrs.is_empty() {
        region = req.source.and_then(|ip| c.cidrs.lookup(ip));
    }

    // Channel: first definition that matches (user agents compared lower-case).
    let ua_lower = if c.channels.iter().any(|ch| !ch.user_agent_contains.is_empty()) {
        match std::str::from_utf8(user_agent) {
            Ok(ua) => ua.to_ascii_lowercase(),
            Err(_) => String::from_utf8_lossy(user_agent).to_ascii_lowercase(),
        }
    } else {
        String::new()
    };
    let channel = c
        .channels
        .iter()
        .find(|ch| {
            ch.path_prefixes.iter().any(|p| path.starts_with(p.as_bytes()))
                || ch.headers.iter().any(|h| req.header(h) != Found::Absent)
                || ch.user_agent_contains.iter().any(|s| ua_lower.contains(s.as_str()))
        })
        .map_or(c.default_channel, |ch| ch.id);

    // Cohort: only from the trusted claim header.
    let cohort = match c.cohort_header.as_deref().map(|h| req.header(h)) {
        Some(Found::One(v)) if !v.is_empty() => Some(v),
        Some(Found::Repeated) => {
            hostile = true;
            None
        }
        _ => None,
    };

    // User key: first source present.
    let user_key = c.user_key.iter().find_map(|source| req.key_hash(source, &mut hostile));
    let bucket = user_key.map(|k| bucket(k, c.bucket_salt.as_bytes()));

    Attributes {
        region,
        country,
        channel,
        cohort,
        path,
        method,
        user_key,
        bucket,
        hostile,
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

