//! Request classification (pipeline stage 1): geography, channel, cohort, user key and
//! percentage bucket, read from headers Envoy passed and the client address. Only reads;
//! a malformed or hostile input makes an attribute unknown, never an error.
//!
//! Repeated routing-relevant headers (geo, cohort, user key, hash key) are treated as
//! hostile: a client that sends two cohort headers is trying to confuse whichever layer
//! reads only the first. The attribute is then unknown and the request is flagged. A geo
//! header with more than one value (repeated, or a comma-separated list) is also flagged
//! as ambiguous, for the policy's `classify.geo.ambiguous` to decide.

use std::net::IpAddr;

use crate::hash::{bucket, hash64};
use crate::headers::cookie_pairs;
use crate::policy::{AmbiguousGeo, ChannelId, CohortId, Inputs, KeyDoc, KeySlot, Policy, RegionId};

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
#[inline(always)]
pub fn hash_found(found: Found, hostile: &mut bool) -> Option<u64> {
    if found == Found::Repeated {
        *hostile = true;
    }
    found
        .value()
        .filter(|v| !v.is_empty())
        .map(|v| hash64(KEY_SEED, v))
}

const KEY_SEED: u64 = 0x0053_794b_6579; // "SyKey"

/// Classified attributes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    pub region: Option<RegionId>,
    /// Upper-case ISO code from the geo header.
    pub country: Option<[u8; 2]>,
    pub channel: ChannelId,
    pub cohort: Option<&'a [u8]>,
    /// The cohort's id when some rule names it.
    pub cohort_id: Option<CohortId>,
    /// Path without the query string.
    pub path: &'a [u8],
    pub method: &'a [u8],
    /// Hash of the user key.
    pub user_key: Option<u64>,
    /// Percentage bucket in basis points, when there is a user key.
    pub bucket: Option<u16>,
    /// The affinity cookie.
    pub affinity_cookie: Found<'a>,
    /// A routing-relevant header or cookie was repeated.
    pub hostile: bool,
    /// The geo header had more than one value (repeated, or a comma-separated list);
    /// `classify.geo.ambiguous` says what that means.
    pub geo_ambiguous: bool,
}

/// Where one header or cookie the policy reads was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    Absent,
    /// Header index, and the value's byte range within that header's value.
    One(usize, usize, usize),
    Repeated,
}

impl Hit {
    fn add(&mut self, header: usize, start: usize, end: usize) {
        *self = match *self {
            Hit::Absent => Hit::One(header, start, end),
            _ => Hit::Repeated,
        };
    }

    #[inline(always)]
    fn resolve<'a>(self, req: &Request<'a>) -> Found<'a> {
        match self {
            Hit::Absent => Found::Absent,
            Hit::Repeated => Found::Repeated,
            Hit::One(h, start, end) => req
                .headers
                .get(h)
                .and_then(|(_, v)| v.get(start..end))
                .map_or(Found::Absent, Found::One),
        }
    }
}

/// Result of the one pass over a request's headers: a [`Hit`] per header and cookie
/// slot of the policy's [`Inputs`]. Kept by the router and reused, so a request costs
/// no allocation here.
#[derive(Debug, Default)]
pub struct Scan {
    headers: Vec<Hit>,
    cookies: Vec<Hit>,
}

impl Scan {
    /// A key from its slot; `None` if absent, empty or hostile (repeats set `hostile`).
    pub fn key_hash(&self, slot: KeySlot, req: &Request, hostile: &mut bool) -> Option<u64> {
        match slot {
            KeySlot::Header(i) => hash_found(self.header(i, req), hostile),
            KeySlot::Cookie(i) => hash_found(self.cookie(i, req), hostile),
            KeySlot::ClientIp => req.ip_hash(),
        }
    }

    /// The header in slot `i`.
    #[inline(always)]
    pub fn header<'a>(&self, i: usize, req: &Request<'a>) -> Found<'a> {
        self.headers
            .get(i)
            .map_or(Found::Absent, |h| h.resolve(req))
    }

    /// The cookie in slot `i`.
    #[inline(always)]
    pub fn cookie<'a>(&self, i: usize, req: &Request<'a>) -> Found<'a> {
        self.cookies
            .get(i)
            .map_or(Found::Absent, |h| h.resolve(req))
    }

    /// One pass over the headers: pseudo-headers and the user agent by name, the policy's
    /// headers by slot (most names are ruled out by their length), and its cookies from
    /// every `cookie` header. Returns (path, method, user agent).
    fn run<'a>(&mut self, inputs: &Inputs, req: &Request<'a>) -> (&'a [u8], &'a [u8], &'a [u8]) {
        self.headers.clear();
        self.headers.resize(inputs.headers.len(), Hit::Absent);
        self.cookies.clear();
        self.cookies.resize(inputs.cookies.len(), Hit::Absent);
        let mut path: &[u8] = b"/";
        let mut method: &[u8] = b"GET";
        let mut user_agent: &[u8] = b"";
        for (i, (n, v)) in req.headers.iter().enumerate() {
            let (n, v): (&[u8], &'a [u8]) = (n, v);
            if n.first() == Some(&b':') {
                if same(n, b":path") {
                    path = v.split(|&b| b == b'?').next().unwrap_or(v);
                } else if same(n, b":method") {
                    method = v;
                }
                continue; // policies cannot read pseudo-headers
            }
            if same(n, b"user-agent") {
                user_agent = v;
            } else if same(n, b"cookie") && !inputs.cookies.is_empty() {
                self.scan_cookies(inputs, i, v);
            }
            if inputs.header_lengths & (1u64 << n.len().min(63)) == 0 {
                continue;
            }
            for (slot, name) in inputs.headers.iter().enumerate() {
                if same(name, n) {
                    if let Some(h) = self.headers.get_mut(slot) {
                        h.add(i, 0, v.len());
                    }
                }
            }
        }
        (path, method, user_agent)
    }

    /// The policy's cookies in one `cookie` header (`a=1; b="2"`), whitespace trimmed and
    /// quotes removed like [`cookie_pairs`].
    fn scan_cookies(&mut self, inputs: &Inputs, header: usize, v: &[u8]) {
        let mut pos = 0;
        while pos <= v.len() {
            let end = find_byte(&v[pos..], b';').map_or(v.len(), |e| pos + e);
            let (s, e) = trim_range(v, pos, end);
            if let Some(eq) = v[s..e].iter().position(|&b| b == b'=') {
                let (ns, ne) = trim_range(v, s, s + eq);
                let (mut vs, mut ve) = trim_range(v, s + eq + 1, e);
                if ve - vs >= 2 && v[vs] == b'"' && v[ve - 1] == b'"' {
                    vs += 1;
                    ve -= 1;
                }
                let name = &v[ns..ne];
                for (slot, c) in inputs.cookies.iter().enumerate() {
                    if same(c, name) {
                        if let Some(h) = self.cookies.get_mut(slot) {
                            h.add(header, vs, ve);
                        }
                    }
                }
            }
            pos = end + 1;
        }
    }
}

/// Position of the first `needle` in `hay`, eight bytes at a time (cookie headers are
/// long, and the wasm build is size-optimised, so a plain byte loop is what it would get).
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        // Byte by byte: `copy_from_slice` stays an out-of-line call in the size-optimised
        // build; these eight loads become one.
        let word = [
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ];
        let x = u64::from_le_bytes(word) ^ pattern;
        // A zero byte in x is a match; the lowest flagged byte is the first one.
        let zero = x.wrapping_sub(LO) & !x & HI;
        if zero != 0 {
            return Some(base + (zero.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| base + i)
}

/// Byte equality without a `memcmp` call: the names compared here are short, and most
/// differ in length or in their first bytes.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && has_prefix(a, b)
}

/// Whether `s` starts with `prefix` (see [`same`]). An index loop, because the
/// size-optimised build does not inline iterator adaptors.
#[inline(always)]
pub fn has_prefix(s: &[u8], prefix: &[u8]) -> bool {
    if s.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if s[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `v[start..end]` without surrounding ASCII whitespace, as a range.
#[inline(always)]
fn trim_range(v: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    while start < end && v[start].is_ascii_whitespace() {
        start += 1;
    }
    while end > start && v[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    (start, end)
}

/// Bit `i` set when the user agent contains substring `i` of [`Inputs::ua_substrings`],
/// ASCII case-insensitively: one pass, checking substrings only where one can start.
fn ua_found(inputs: &Inputs, ua: &[u8]) -> u64 {
    let all = crate::policy::mask_of(inputs.ua_substrings.len());
    let mut found = 0u64;
    for i in 0..ua.len() {
        let b = ua[i];
        if inputs.ua_first[usize::from(b >> 6)] & (1u64 << (b & 63)) == 0 {
            continue;
        }
        let b = b.to_ascii_lowercase();
        for (bit, s) in inputs.ua_substrings.iter().enumerate() {
            if found & (1u64 << bit) == 0 && s.first() == Some(&b) && ua.len() - i >= s.len() {
                let mut k = 1;
                while k < s.len() && ua[i + k].to_ascii_lowercase() == s[k] {
                    k += 1;
                }
                if k == s.len() {
                    found |= 1u64 << bit;
                }
            }
        }
        if found == all {
            break;
        }
    }
    found
}

/// Classify a request under a policy (allocates a fresh [`Scan`]; the router reuses one).
pub fn classify<'a>(policy: &Policy, req: &Request<'a>) -> Attributes<'a> {
    classify_with(policy, req, &mut Scan::default())
}

/// Classify a request under a policy, leaving the header and cookie slots in `scan`.
pub fn classify_with<'a>(policy: &Policy, req: &Request<'a>, scan: &mut Scan) -> Attributes<'a> {
    let c = &policy.classify;
    let inputs = &c.inputs;
    let mut hostile = false;
    let (path, method, user_agent) = scan.run(inputs, req);

    // Geography: trusted edge header first, then the client address. A header with more
    // than one value (repeated, or a comma-separated list) is ambiguous: no region from
    // it unless the policy assumes one (the router decides the other modes).
    let mut region = None;
    let mut country = None;
    let mut geo_ambiguous = false;
    if let Some(slot) = inputs.geo {
        match scan.header(slot, req) {
            Found::One(v) if find_byte(v, b',').is_none() => {
                (region, country) = geo_value(policy, v)
            }
            Found::Absent => {}
            _ => {
                hostile = true;
                geo_ambiguous = true;
                if let AmbiguousGeo::Assume(r) = c.ambiguous_geo {
                    region = Some(r);
                }
            }
        }
    }
    if region.is_none() && !c.cidrs.is_empty() {
        region = req.source.and_then(|ip| c.cidrs.lookup(ip));
    }

    // Channel: first definition that matches (user agents compared case-insensitively;
    // the substrings are searched once, when the first channel needs them).
    let mut ua_bits: Option<u64> = None;
    let channel = c
        .channels
        .iter()
        .find(|ch| {
            ch.path_prefixes
                .iter()
                .any(|p| has_prefix(path, p.as_bytes()))
                || ch
                    .header_slots
                    .iter()
                    .any(|&s| scan.header(s, req) != Found::Absent)
                || (ch.ua_mask != 0
                    && *ua_bits.get_or_insert_with(|| ua_found(inputs, user_agent)) & ch.ua_mask
                        != 0)
        })
        .map_or(c.default_channel, |ch| ch.id);

    // Cohort: only from the trusted claim header.
    let cohort = match inputs.cohort.map(|s| scan.header(s, req)) {
        Some(Found::One(v)) if !v.is_empty() => Some(v),
        Some(Found::Repeated) => {
            hostile = true;
            None
        }
        _ => None,
    };
    let cohort_id = cohort.and_then(|v| policy.cohort_id(v));

    // User key: first source present.
    let user_key = inputs
        .user_key
        .iter()
        .find_map(|&slot| scan.key_hash(slot, req, &mut hostile));
    let bucket = user_key.map(|k| bucket(k, c.bucket_salt.as_bytes()));

    Attributes {
        region,
        country,
        channel,
        cohort,
        cohort_id,
        path,
        method,
        user_key,
        bucket,
        affinity_cookie: scan.cookie(inputs.affinity_cookie, req),
        hostile,
        geo_ambiguous,
    }
}

/// Region and country of one geo header value (surrounding whitespace ignored): a
/// two-letter country code (any case) looked up in the geo table, else a region name.
pub fn geo_value(policy: &Policy, v: &[u8]) -> (Option<RegionId>, Option<[u8; 2]>) {
    let v = trim(v);
    let mut region = None;
    let mut country = None;
    if let [a, b] = *v {
        if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() {
            let code = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
            country = Some(code);
            region = policy.country_region(code);
        }
    }
    if region.is_none() {
        region = std::str::from_utf8(v)
            .ok()
            .and_then(|s| policy.region_id(s));
    }
    (region, country)
}

fn trim(b: &[u8]) -> &[u8] {
    let (s, e) = trim_range(b, 0, b.len());
    &b[s..e]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn find_byte_is_position(hay in proptest::collection::vec(prop::sample::select(vec![b';', b'a', 0x3a, 0xbb, 0, 0x80]), 0..40)) {
            prop_assert_eq!(find_byte(&hay, b';'), hay.iter().position(|&b| b == b';'));
        }
    }
}
