//! Routing policy: the JSON document operators write, its validation, and the compiled
//! form the request path evaluates.
//!
//! Parse, then compile: serde DTOs with `deny_unknown_fields` are turned into a validated
//! [`Policy`]. Every problem is reported with the field path that is wrong
//! (`rules[2].route.targets[0].stack`); nothing is dropped silently. The control service
//! validates with this same code, so a policy it accepts is exactly one the filter accepts.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::OnceLock;

use crate::balance::HashTable;
use crate::cidr::{Cidr, CidrTable};
use crate::schedule::{Schedule, TimeWindow};

/// At most this many stacks: eligibility is a 64-bit mask on the request path.
pub const MAX_STACKS: usize = 64;
/// At most this many targets per route (hash tables store target indexes in a byte).
pub const MAX_TARGETS: usize = 64;
/// Identifier of the default rule, evaluated after every other rule.
pub const DEFAULT_RULE_ID: &str = "default";

/// Index of a stack in [`Policy::stacks`].
pub type StackId = usize;
/// Index of a region in [`Policy::regions`].
pub type RegionId = u16;
/// Index of a channel in [`Policy::channels`].
pub type ChannelId = u16;
/// Index of a cohort in [`Policy::cohorts`].
pub type CohortId = u32;
/// At most this many distinct `user_agent_contains` substrings over all channels: the
/// request path finds all of them in one pass over the user agent, one bit each.
pub const MAX_UA_SUBSTRINGS: usize = 64;

pub use switchyard_policy_doc::*;

// ---------------------------------------------------------------------------------------
// Validation results
// ---------------------------------------------------------------------------------------

/// One problem with a field of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    /// Path of the field, e.g. `rules[2].route.targets[0].stack`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A policy that passed validation, with warnings (e.g. unreachable rules).
#[derive(Debug)]
pub struct Validated {
    pub policy: Policy,
    pub warnings: Vec<FieldIssue>,
}

/// Every reason a policy was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    pub errors: Vec<FieldIssue>,
}

/// Parse and validate a policy document.
pub fn validate_json(json: &str) -> Result<Validated, Invalid> {
    validate_bytes(json.as_bytes())
}

/// Parse and validate a policy document given as bytes (plugin configuration).
pub fn validate_bytes(json: &[u8]) -> Result<Validated, Invalid> {
    compile(&parse(json)?)
}

/// Parse the document. Natively a type error names its field path
/// (`rules[3].route.targets[0].weight`); in the wasm build, where code size matters and
/// the control service has already validated natively, it names line and column.
fn parse(json: &[u8]) -> Result<PolicyDoc, Invalid> {
    let one = |path: String, message: String| Invalid {
        errors: vec![FieldIssue { path, message }],
    };
    #[cfg(not(target_arch = "wasm32"))]
    {
        let mut de = serde_json::Deserializer::from_slice(json);
        let doc: PolicyDoc = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { "$".to_string() } else { path };
            one(path, err.into_inner().to_string())
        })?;
        de.end().map_err(|e| one("$".into(), e.to_string()))?;
        Ok(doc)
    }
    #[cfg(target_arch = "wasm32")]
    {
        switchyard_policy_doc::from_slice(json).map_err(|e| one("$".into(), e.to_string()))
    }
}

// ---------------------------------------------------------------------------------------
// The compiled policy
// ---------------------------------------------------------------------------------------

/// A validated, compiled policy. Cheap to evaluate; shared read-only by the request path.
#[derive(Debug)]
pub struct Policy {
    pub name: Option<String>,
    pub stacks: Vec<Stack>,
    pub regions: Vec<String>,
    pub channels: Vec<String>,
    /// Every cohort named by a rule, sorted (a [`CohortId`] indexes it).
    pub cohorts: Vec<Box<[u8]>>,
    pub classify: Classification,
    pub affinity: AffinityCfg,
    pub breaker: BreakerDoc,
    /// Rules in evaluation order; the default rule is last.
    pub rules: Vec<Rule>,
    /// Which rules admit each attribute value, so a request only evaluates candidates.
    pub index: RuleIndex,
    pub debug_header: bool,
    /// Whether any rule has a time condition (skip calendar maths otherwise).
    pub uses_time: bool,
    /// Whether a user key or hash key is the client address (then `source.address` is
    /// always needed, not only for CIDR tables).
    pub uses_client_ip: bool,
    stack_index: HashMap<String, StackId>,
}

/// A compiled stack.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    pub cluster: String,
    pub region: RegionId,
    pub labels: Vec<String>,
    pub weight: u32,
    pub health_path: Option<String>,
}

/// Compiled classification settings.
#[derive(Debug)]
pub struct Classification {
    pub geo_header: Option<String>,
    /// Upper-case country code → region, sorted by code.
    pub countries: Vec<([u8; 2], RegionId)>,
    pub cidrs: CidrTable<RegionId>,
    pub channels: Vec<ChannelDef>,
    pub default_channel: ChannelId,
    pub cohort_header: Option<String>,
    pub user_key: Vec<KeyDoc>,
    pub bucket_salt: String,
    /// What the request scan looks for.
    pub inputs: Inputs,
}

/// Where the request path finds a key: a slot of the one-pass request scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    Header(usize),
    Cookie(usize),
    ClientIp,
}

/// Every header and cookie the policy reads, each given a slot, so one pass over the
/// request finds them all (and sees repeats) instead of one search per lookup.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Header names (lower-case) by slot.
    pub headers: Vec<Box<[u8]>>,
    /// Bit `min(n, 63)` set when some slot name is `n` bytes long: most request headers
    /// are skipped on their length alone.
    pub header_lengths: u64,
    /// Cookie names by slot.
    pub cookies: Vec<Box<[u8]>>,
    pub geo: Option<usize>,
    pub cohort: Option<usize>,
    pub user_key: Vec<KeySlot>,
    /// Cookie slot of the affinity cookie.
    pub affinity_cookie: usize,
    /// Lower-cased `user_agent_contains` substrings of every channel, deduplicated.
    pub ua_substrings: Vec<Box<[u8]>>,
    /// Bit per byte value: some substring starts with that byte (either case).
    pub ua_first: [u64; 4],
}

impl Inputs {
    fn header_slot(&mut self, name: &str) -> usize {
        let name = name.as_bytes();
        if let Some(i) = self.headers.iter().position(|h| **h == *name) {
            return i;
        }
        self.header_lengths |= 1u64 << name.len().min(63);
        self.headers.push(name.into());
        self.headers.len() - 1
    }

    fn cookie_slot(&mut self, name: &str) -> usize {
        let name = name.as_bytes();
        if let Some(i) = self.cookies.iter().position(|c| **c == *name) {
            return i;
        }
        self.cookies.push(name.into());
        self.cookies.len() - 1
    }

    fn key_slot(&mut self, key: &KeyDoc) -> KeySlot {
        match key {
            KeyDoc::Header(h) => KeySlot::Header(self.header_slot(h)),
            KeyDoc::Cookie(c) => KeySlot::Cookie(self.cookie_slot(c)),
            KeyDoc::ClientIp => KeySlot::ClientIp,
        }
    }

    /// Bit index of a user-agent substring, `None` past [`MAX_UA_SUBSTRINGS`].
    fn ua_substring(&mut self, lower: &str) -> Option<usize> {
        let s = lower.as_bytes();
        if let Some(i) = self.ua_substrings.iter().position(|x| **x == *s) {
            return Some(i);
        }
        if self.ua_substrings.len() >= MAX_UA_SUBSTRINGS {
            return None;
        }
        if let Some(&b) = s.first() {
            for b in [b, b.to_ascii_uppercase()] {
                self.ua_first[usize::from(b >> 6)] |= 1u64 << (b & 63);
            }
        }
        self.ua_substrings.push(s.into());
        Some(self.ua_substrings.len() - 1)
    }
}

/// A compiled channel definition.
#[derive(Debug)]
pub struct ChannelDef {
    pub id: ChannelId,
    /// Lower-cased substrings.
    pub user_agent_contains: Vec<String>,
    /// Bits of [`Inputs::ua_substrings`] for `user_agent_contains`.
    pub ua_mask: u64,
    pub headers: Vec<String>,
    /// Header slots of `headers`.
    pub header_slots: Vec<usize>,
    pub path_prefixes: Vec<String>,
}

/// Compiled affinity settings.
#[derive(Debug, Clone)]
pub struct AffinityCfg {
    pub cookie: String,
    pub ttl_s: u64,
    pub secure: bool,
    pub epoch: u32,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub cond: Condition,
    pub route: Route,
}

/// A compiled match.
#[derive(Debug, Default)]
pub struct Condition {
    pub regions: Vec<RegionId>,
    /// Upper-case ISO codes.
    pub countries: Vec<[u8; 2]>,
    pub channels: Vec<ChannelId>,
    pub cohorts: Vec<CohortId>,
    pub path_prefixes: Vec<String>,
    /// Upper-case.
    pub methods: Vec<String>,
    pub time: Option<Schedule>,
    /// Basis points: from ≤ bucket < to, bucket in 0..10_000.
    pub percent: Option<(u16, u16)>,
}

/// Rules by attribute value: for every value of a matched dimension (region, country,
/// channel, cohort, method), a bit set of the rules whose condition on that dimension
/// admits the value (an empty list admits everything; an unknown value only those).
/// A request ANDs one row per dimension and evaluates just the surviving rules, in
/// order, on what is left (path, percentage, time): the cost no longer grows with the
/// number of rules that cannot match.
#[derive(Debug, Default)]
pub struct RuleIndex {
    /// 64-bit words per row (one bit per rule).
    pub words: usize,
    /// Rows per region id, then one for "no region".
    regions: Vec<u64>,
    /// Country codes named by some rule, sorted; rows in that order, then "other".
    countries: Vec<[u8; 2]>,
    country_rows: Vec<u64>,
    /// Rows per channel id.
    channels: Vec<u64>,
    /// Rows per cohort id, then "no cohort / one no rule names".
    cohorts: Vec<u64>,
    /// Upper-case methods named by some rule; rows in that order, then "other".
    methods: Vec<Box<[u8]>>,
    method_rows: Vec<u64>,
}

impl RuleIndex {
    fn build(rules: &[(usize, Rule)], regions: usize, channels: usize, cohorts: usize) -> Self {
        let words = rules.len().div_ceil(64).max(1);
        let mut countries: Vec<[u8; 2]> = Vec::new();
        for code in rules.iter().flat_map(|(_, r)| &r.cond.countries) {
            if let Err(i) = countries.binary_search(code) {
                countries.insert(i, *code);
            }
        }
        let mut methods: Vec<Box<[u8]>> = Vec::new();
        for (_, r) in rules {
            for m in &r.cond.methods {
                if !methods.iter().any(|x| **x == *m.as_bytes()) {
                    methods.push(m.as_bytes().into());
                }
            }
        }
        // `admits(rule, value)`: value `None` is the "other / unknown" row.
        fn table(
            rules: &[(usize, Rule)],
            words: usize,
            values: usize,
            admits: impl Fn(&Condition, Option<usize>) -> bool,
        ) -> Vec<u64> {
            let mut t = vec![0u64; (values + 1) * words];
            for (row, value) in (0..values).map(Some).chain([None]).enumerate() {
                for (i, (_, r)) in rules.iter().enumerate() {
                    if admits(&r.cond, value) {
                        t[row * words + i / 64] |= 1u64 << (i % 64);
                    }
                }
            }
            t
        }
        let any = |list_empty: bool, hit: bool| list_empty || hit;
        Self {
            words,
            regions: table(rules, words, regions, |c, v| {
                any(
                    c.regions.is_empty(),
                    v.is_some_and(|v| c.regions.contains(&(v as RegionId))),
                )
            }),
            country_rows: table(rules, words, countries.len(), |c, v| {
                any(
                    c.countries.is_empty(),
                    v.is_some_and(|v| c.countries.contains(&countries[v])),
                )
            }),
            channels: table(rules, words, channels, |c, v| {
                any(
                    c.channels.is_empty(),
                    v.is_some_and(|v| c.channels.contains(&(v as ChannelId))),
                )
            }),
            cohorts: table(rules, words, cohorts, |c, v| {
                any(
                    c.cohorts.is_empty(),
                    v.is_some_and(|v| c.cohorts.contains(&(v as CohortId))),
                )
            }),
            method_rows: table(rules, words, methods.len(), |c, v| {
                any(
                    c.methods.is_empty(),
                    v.is_some_and(|v| c.methods.iter().any(|m| *m.as_bytes() == *methods[v])),
                )
            }),
            countries,
            methods,
        }
    }

    #[inline(always)]
    fn row(table: &[u64], words: usize, row: usize) -> &[u64] {
        table.get(row * words..(row + 1) * words).unwrap_or(&[])
    }

    /// Rules admitting a region (`None`: unknown).
    #[inline(always)]
    pub fn region(&self, region: Option<RegionId>) -> &[u64] {
        let rows = self.regions.len() / self.words.max(1);
        Self::row(
            &self.regions,
            self.words,
            region.map_or(rows - 1, usize::from).min(rows - 1),
        )
    }

    /// Rules admitting a country code (`None`: no or unreadable geo header).
    #[inline(always)]
    pub fn country(&self, code: Option<[u8; 2]>) -> &[u64] {
        let other = self.countries.len();
        let row = code
            .and_then(|c| self.countries.binary_search(&c).ok())
            .unwrap_or(other);
        Self::row(&self.country_rows, self.words, row)
    }

    /// Rules admitting a channel.
    #[inline(always)]
    pub fn channel(&self, channel: ChannelId) -> &[u64] {
        Self::row(&self.channels, self.words, usize::from(channel))
    }

    /// Rules admitting a cohort (`None`: none, or one no rule names).
    #[inline(always)]
    pub fn cohort(&self, cohort: Option<CohortId>) -> &[u64] {
        let other = self.cohorts.len() / self.words.max(1) - 1;
        Self::row(
            &self.cohorts,
            self.words,
            cohort.map_or(other, |c| (c as usize).min(other)),
        )
    }

    /// Rules admitting a request method (compared case-insensitively).
    #[inline(always)]
    pub fn method(&self, method: &[u8]) -> &[u64] {
        let row = self
            .methods
            .iter()
            .position(|m| m.eq_ignore_ascii_case(method))
            .unwrap_or(self.methods.len());
        Self::row(&self.method_rows, self.words, row)
    }
}

/// A weighted target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub stack: StackId,
    pub weight: u32,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub targets: Vec<Target>,
    pub balance: Balance,
    /// Affinity TTL in seconds when affinity is on.
    pub affinity_ttl_s: Option<u64>,
    /// Stacks this route may use, as a bit mask (all ones without residency).
    pub residency: u64,
    /// Whether residency was given (for reporting).
    pub residency_regions: Option<Vec<RegionId>>,
    pub fallback: Vec<Target>,
    pub local: LocalReply,
}

/// Balancing mode of a compiled route.
#[derive(Debug)]
pub enum Balance {
    Weighted,
    Hash {
        key: HashKeyDoc,
        /// Where the key is read (`None`: the classified user key).
        slot: Option<KeySlot>,
        /// Built on first use: most policies never hash, and a VM should not pay for it.
        table: OnceLock<HashTable>,
    },
}

/// The local reply sent when nothing eligible is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub retry_after_s: u32,
    pub message: String,
}

impl Default for LocalReply {
    fn default() -> Self {
        Self {
            status: DEFAULT_LOCAL_STATUS,
            retry_after_s: DEFAULT_RETRY_AFTER_S,
            message: "no healthy stack is available for this request".into(),
        }
    }
}

impl Policy {
    /// Names of all stacks, in document order.
    pub fn stack_names(&self) -> Vec<String> {
        self.stacks.iter().map(|s| s.name.clone()).collect()
    }

    /// Stack id by name.
    pub fn stack_id(&self, name: &str) -> Option<StackId> {
        self.stack_index.get(name).copied()
    }

    /// Cohort id of a claim value, if any rule names that cohort.
    pub fn cohort_id(&self, value: &[u8]) -> Option<CohortId> {
        self.cohorts
            .binary_search_by(|c| (**c).cmp(value))
            .ok()
            .map(|i| i as CohortId)
    }

    /// Region of an upper-case country code in the geo table.
    #[inline(always)]
    pub fn country_region(&self, code: [u8; 2]) -> Option<RegionId> {
        let t = &self.classify.countries;
        t.binary_search_by(|(c, _)| c.cmp(&code))
            .ok()
            .map(|i| t[i].1)
    }

    /// Region id by name.
    pub fn region_id(&self, name: &str) -> Option<RegionId> {
        self.regions
            .iter()
            .position(|r| r == name)
            .map(|i| i as RegionId)
    }

    /// Mask with one bit per stack of this policy.
    pub fn all_stacks_mask(&self) -> u64 {
        mask_of(self.stacks.len())
    }
}

/// Bit mask with the low `n` bits set.
pub fn mask_of(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

impl Route {
    /// The consistent-hash table of this route (built once, on first use).
    pub fn hash_table(&self) -> Option<&HashTable> {
        match &self.balance {
            Balance::Weighted => None,
            Balance::Hash { table, .. } => {
                Some(table.get_or_init(|| HashTable::build(&self.targets)))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Compilation
// ---------------------------------------------------------------------------------------

struct Ctx {
    errors: Vec<FieldIssue>,
    warnings: Vec<FieldIssue>,
}

impl Ctx {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldIssue {
            path: path.into(),
            message: message.into(),
        });
    }
    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(FieldIssue {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
}

const INTERNAL_HEADERS: [&str; 2] = ["x-switchyard-stack", "x-switchyard-decision"];

fn check_header(ctx: &mut Ctx, path: &str, name: &str) {
    if !valid_header_name(name) {
        ctx.err(
            path,
            format!("'{name}' is not a lower-case HTTP header name"),
        );
    } else if INTERNAL_HEADERS.contains(&name) || name.starts_with(':') {
        ctx.err(
            path,
            format!("'{name}' is set by Switchyard itself and cannot be an input"),
        );
    }
}

fn check_key(ctx: &mut Ctx, path: &str, key: &KeyDoc) {
    match key {
        KeyDoc::Header(h) => check_header(ctx, &format!("{path}.header"), h),
        KeyDoc::Cookie(c) if !valid_cookie_name(c) => ctx.err(
            format!("{path}.cookie"),
            format!("'{c}' is not a valid cookie name"),
        ),
        _ => {}
    }
}

fn valid_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
}

/// Compile a parsed document, collecting every error.
pub fn compile(doc: &PolicyDoc) -> Result<Validated, Invalid> {
    let mut ctx = Ctx {
        errors: Vec::new(),
        warnings: Vec::new(),
    };

    // Regions are interned from stacks, geo tables and residency lists.
    let mut regions: Vec<String> = Vec::new();
    let intern = |name: &str, regions: &mut Vec<String>| -> RegionId {
        if let Some(i) = regions.iter().position(|r| r == name) {
            i as RegionId
        } else {
            regions.push(name.to_string());
            (regions.len() - 1) as RegionId
        }
    };

    // Stacks.
    if doc.stacks.is_empty() {
        ctx.err("stacks", "at least one stack is required");
    }
    if doc.stacks.len() > MAX_STACKS {
        ctx.err(
            "stacks",
            format!(
                "at most {MAX_STACKS} stacks are supported, got {}",
                doc.stacks.len()
            ),
        );
    }
    let mut stacks = Vec::with_capacity(doc.stacks.len());
    let mut stack_index = HashMap::new();
    for (i, s) in doc.stacks.iter().enumerate() {
        let path = format!("stacks[{i}]");
        if !valid_name(&s.name) {
            ctx.err(
                format!("{path}.name"),
                format!("'{}' must be 1-48 characters of [A-Za-z0-9_-]", s.name),
            );
        }
        if stack_index.insert(s.name.clone(), i).is_some() {
            ctx.err(
                format!("{path}.name"),
                format!("duplicate stack '{}'", s.name),
            );
        }
        let cluster = s.cluster.clone().unwrap_or_else(|| s.name.clone());
        if cluster.is_empty() {
            ctx.err(format!("{path}.cluster"), "must not be empty");
        }
        if s.region.is_empty() {
            ctx.err(format!("{path}.region"), "must not be empty");
        }
        let region = intern(&s.region, &mut regions);
        if let Some(hp) = &s.health_path {
            if !hp.starts_with('/') || hp.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                ctx.err(
                    format!("{path}.health_path"),
                    format!("'{hp}' must be a path starting with '/'"),
                );
            }
        }
        stacks.push(Stack {
            name: s.name.clone(),
            cluster,
            region,
            labels: s.labels.clone(),
            weight: s.weight,
            health_path: s.health_path.clone(),
        });
    }

    // Classification.
    let c = &doc.classify;
    if let Some(h) = &c.geo.header {
        check_header(&mut ctx, "classify.geo.header", h);
    }
    let mut countries: Vec<([u8; 2], RegionId)> = Vec::new();
    for (code, region) in &c.geo.countries {
        let path = format!("classify.geo.countries.{code}");
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
            ctx.err(&path, format!("'{code}' is not a two-letter country code"));
        }
        if region.is_empty() {
            ctx.err(&path, "region must not be empty");
        }
        let region = intern(region, &mut regions);
        if let [a, b] = *code.as_bytes() {
            let key = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
            match countries.binary_search_by(|(c, _)| c.cmp(&key)) {
                Ok(i) => countries[i].1 = region,
                Err(i) => countries.insert(i, (key, region)),
            }
        }
    }
    let mut cidrs = Vec::new();
    for (i, entry) in c.geo.cidrs.iter().enumerate() {
        match entry.cidr.parse::<Cidr>() {
            Ok(net) => cidrs.push((net, intern(&entry.region, &mut regions))),
            Err(e) => ctx.err(
                format!("classify.geo.cidrs[{i}].cidr"),
                format!("'{}': {e}", entry.cidr),
            ),
        }
        if entry.region.is_empty() {
            ctx.err(
                format!("classify.geo.cidrs[{i}].region"),
                "must not be empty",
            );
        }
    }
    let mut channels: Vec<String> = Vec::new();
    let mut channel_defs = Vec::new();
    for (i, ch) in c.channels.iter().enumerate() {
        let path = format!("classify.channels[{i}]");
        if !valid_name(&ch.name) {
            ctx.err(
                format!("{path}.name"),
                format!("'{}' must be 1-48 characters of [A-Za-z0-9_-]", ch.name),
            );
        }
        if channels.contains(&ch.name) {
            ctx.err(
                format!("{path}.name"),
                format!("duplicate channel '{}'", ch.name),
            );
        }
        if ch.user_agent_contains.is_empty() && ch.headers.is_empty() && ch.path_prefixes.is_empty()
        {
            ctx.err(
                &path,
                "a channel needs at least one of user_agent_contains, headers, path_prefixes",
            );
        }
        for (j, h) in ch.headers.iter().enumerate() {
            check_header(&mut ctx, &format!("{path}.headers[{j}]"), h);
        }
        for (j, p) in ch.path_prefixes.iter().enumerate() {
            if !p.starts_with('/') {
                ctx.err(
                    format!("{path}.path_prefixes[{j}]"),
                    format!("'{p}' must start with '/'"),
                );
            }
        }
        for (j, u) in ch.user_agent_contains.iter().enumerate() {
            if u.is_empty() {
                ctx.err(
                    format!("{path}.user_agent_contains[{j}]"),
                    "must not be empty",
                );
            }
        }
        channels.push(ch.name.clone());
        channel_defs.push(ChannelDef {
            id: (channels.len() - 1) as ChannelId,
            user_agent_contains: ch
                .user_agent_contains
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            ua_mask: 0,
            headers: ch.headers.clone(),
            header_slots: Vec::new(),
            path_prefixes: ch.path_prefixes.clone(),
        });
    }
    let default_channel_name = c
        .default_channel
        .clone()
        .unwrap_or_else(|| "web".to_string());
    if !valid_name(&default_channel_name) {
        ctx.err(
            "classify.default_channel",
            format!("'{default_channel_name}' must be 1-48 characters of [A-Za-z0-9_-]"),
        );
    }
    let default_channel = match channels.iter().position(|n| *n == default_channel_name) {
        Some(i) => i as ChannelId,
        None => {
            channels.push(default_channel_name);
            (channels.len() - 1) as ChannelId
        }
    };
    if let Some(h) = &c.cohort_header {
        check_header(&mut ctx, "classify.cohort_header", h);
    }
    for (i, k) in c.user_key.iter().enumerate() {
        check_key(&mut ctx, &format!("classify.user_key[{i}]"), k);
    }

    // Affinity.
    let a = &doc.affinity;
    if !valid_cookie_name(&a.cookie) {
        ctx.err(
            "affinity.cookie",
            format!("'{}' is not a valid cookie name", a.cookie),
        );
    }
    if a.ttl_s == 0 || a.ttl_s > 30 * 86_400 {
        ctx.err("affinity.ttl_s", "must be between 1 and 2592000 (30 days)");
    }

    // Breaker.
    let b = &doc.breaker;
    if b.enabled {
        if b.consecutive_failures == 0 {
            ctx.err("breaker.consecutive_failures", "must be at least 1");
        }
        if !(b.error_rate > 0.0 && b.error_rate <= 1.0) {
            ctx.err("breaker.error_rate", "must be in (0, 1]");
        }
        if b.window_ms < 100 {
            ctx.err("breaker.window_ms", "must be at least 100");
        }
        if b.open_ms == 0 {
            ctx.err("breaker.open_ms", "must be at least 1");
        }
        if b.max_open_ms < b.open_ms {
            ctx.err("breaker.max_open_ms", "must be at least open_ms");
        }
        if b.half_open_requests == 0 {
            ctx.err("breaker.half_open_requests", "must be at least 1");
        }
    }

    // Rules: ids, then compile in priority order.
    let mut seen_ids = HashSet::new();
    for (i, r) in doc.rules.iter().enumerate() {
        if !valid_name(&r.id) {
            ctx.err(
                format!("rules[{i}].id"),
                format!("'{}' must be 1-48 characters of [A-Za-z0-9_-]", r.id),
            );
        } else if r.id == DEFAULT_RULE_ID {
            ctx.err(
                format!("rules[{i}].id"),
                "'default' is reserved for the default route",
            );
        }
        if !seen_ids.insert(r.id.as_str()) {
            ctx.err(
                format!("rules[{i}].id"),
                format!("duplicate rule id '{}'", r.id),
            );
        }
    }
    let mut order: Vec<usize> = (0..doc.rules.len()).collect();
    order.sort_by_key(|&i| doc.rules[i].priority); // stable: ties keep document order

    let env = Env {
        stacks: &stacks,
        stack_index: &stack_index,
        channels: &channels,
        has_user_key: !c.user_key.is_empty(),
        affinity_ttl_s: doc.affinity.ttl_s,
    };
    let mut rules = Vec::with_capacity(doc.rules.len() + 1);
    let mut uses_time = false;
    // Cohorts sorted (no sort call: every `sort` instance costs the module kilobytes), so
    // a claim value is found by binary search.
    let mut cohorts: Vec<String> = Vec::new();
    for co in doc.rules.iter().flat_map(|r| &r.matches.cohorts) {
        insert_sorted(&mut cohorts, co);
    }
    for &i in &order {
        let r = &doc.rules[i];
        let path = format!("rules[{i}]");
        let cond = compile_match(
            &mut ctx,
            &env,
            &mut regions,
            &cohorts,
            &format!("{path}.match"),
            &r.matches,
        );
        uses_time |= cond.time.is_some();
        let route = compile_route(
            &mut ctx,
            &env,
            &mut regions,
            &format!("{path}.route"),
            &r.route,
        );
        rules.push((
            i,
            Rule {
                id: r.id.clone(),
                cond,
                route,
            },
        ));
    }
    let route = compile_route(&mut ctx, &env, &mut regions, "default", &doc.default);
    rules.push((
        usize::MAX,
        Rule {
            id: DEFAULT_RULE_ID.into(),
            cond: Condition::default(),
            route,
        },
    ));

    // Unreachable rules: an earlier rule whose every condition is at least as broad.
    for (later_pos, (doc_i, later)) in rules.iter().enumerate() {
        if *doc_i == usize::MAX {
            continue;
        }
        if let Some((_, earlier)) = rules[..later_pos]
            .iter()
            .find(|(_, e)| subsumes(&e.cond, &later.cond))
        {
            ctx.warn(
                format!("rules[{doc_i}]"),
                format!("rule '{}' is unreachable: rule '{}' is evaluated first and matches everything it matches", later.id, earlier.id),
            );
        }
    }

    if regions.len() > usize::from(u16::MAX) {
        ctx.err("$", "too many regions");
    }

    if !ctx.errors.is_empty() {
        return Err(Invalid { errors: ctx.errors });
    }
    let uses_client_ip = c.user_key.contains(&KeyDoc::ClientIp)
        || rules.iter().any(|(_, r)| {
            matches!(
                &r.route.balance,
                Balance::Hash {
                    key: HashKeyDoc::ClientIp,
                    ..
                }
            )
        });

    let cohorts: Vec<Box<[u8]>> = cohorts
        .into_iter()
        .map(|c| c.into_bytes().into_boxed_slice())
        .collect();

    let inputs = plan_inputs(&mut ctx, c, &a.cookie, &mut channel_defs, &mut rules);
    let index = RuleIndex::build(&rules, regions.len(), channels.len(), cohorts.len());
    if !ctx.errors.is_empty() {
        return Err(Invalid { errors: ctx.errors });
    }
    Ok(Validated {
        policy: Policy {
            name: doc.name.clone(),
            stacks,
            regions,
            channels,
            cohorts,
            classify: Classification {
                geo_header: c.geo.header.clone(),
                countries,
                cidrs: CidrTable::new(cidrs),
                channels: channel_defs,
                default_channel,
                cohort_header: c.cohort_header.clone(),
                user_key: c.user_key.clone(),
                bucket_salt: c.bucket_salt.clone().unwrap_or_else(|| "switchyard".into()),
                inputs,
            },
            affinity: AffinityCfg {
                cookie: a.cookie.clone(),
                ttl_s: a.ttl_s,
                secure: a.secure,
                epoch: a.epoch,
            },
            breaker: b.clone(),
            rules: rules.into_iter().map(|(_, r)| r).collect(),
            index,
            debug_header: doc.debug_header,
            uses_time,
            uses_client_ip,
            stack_index,
        },
        warnings: ctx.warnings,
    })
}

/// Insert into a sorted list of names unless present.
fn insert_sorted(list: &mut Vec<String>, name: &str) {
    if let Err(i) = list.binary_search_by(|x| x.as_str().cmp(name)) {
        list.insert(i, name.to_string());
    }
}

/// Give every header and cookie the policy reads a slot of the request scan, and every
/// user-agent substring a bit.
fn plan_inputs(
    ctx: &mut Ctx,
    c: &ClassifyDoc,
    affinity_cookie: &str,
    channels: &mut [ChannelDef],
    rules: &mut [(usize, Rule)],
) -> Inputs {
    let mut inputs = Inputs::default();
    inputs.affinity_cookie = inputs.cookie_slot(affinity_cookie);
    inputs.geo = c.geo.header.as_deref().map(|h| inputs.header_slot(h));
    inputs.cohort = c.cohort_header.as_deref().map(|h| inputs.header_slot(h));
    inputs.user_key = c.user_key.iter().map(|k| inputs.key_slot(k)).collect();
    for (i, ch) in channels.iter_mut().enumerate() {
        ch.header_slots = ch.headers.iter().map(|h| inputs.header_slot(h)).collect();
        for (j, s) in ch.user_agent_contains.iter().enumerate() {
            match inputs.ua_substring(s) {
                Some(bit) => ch.ua_mask |= 1u64 << bit,
                None => ctx.err(
                    format!("classify.channels[{i}].user_agent_contains[{j}]"),
                    format!("at most {MAX_UA_SUBSTRINGS} distinct user-agent substrings over all channels"),
                ),
            }
        }
    }
    for (_, r) in rules.iter_mut() {
        if let Balance::Hash { key, slot, .. } = &mut r.route.balance {
            *slot = match key {
                HashKeyDoc::User => None,
                HashKeyDoc::ClientIp => Some(KeySlot::ClientIp),
                HashKeyDoc::Header(h) => Some(KeySlot::Header(inputs.header_slot(h))),
                HashKeyDoc::Cookie(c) => Some(KeySlot::Cookie(inputs.cookie_slot(c))),
            };
        }
    }
    inputs
}

struct Env<'a> {
    stacks: &'a [Stack],
    stack_index: &'a HashMap<String, StackId>,
    channels: &'a [String],
    has_user_key: bool,
    affinity_ttl_s: u64,
}

fn compile_match(
    ctx: &mut Ctx,
    env: &Env,
    regions: &mut [String],
    cohorts: &[String],
    path: &str,
    m: &MatchDoc,
) -> Condition {
    let mut cond = Condition::default();
    for (i, r) in m.regions.iter().enumerate() {
        match regions.iter().position(|x| x == r) {
            Some(id) => cond.regions.push(id as RegionId),
            None => ctx.err(
                format!("{path}.regions[{i}]"),
                format!("unknown region '{r}' (not used by any stack or geo table)"),
            ),
        }
    }
    for (i, code) in m.countries.iter().enumerate() {
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
            ctx.err(
                format!("{path}.countries[{i}]"),
                format!("'{code}' is not a two-letter country code"),
            );
        }
        if let [a, b] = *code.as_bytes() {
            cond.countries
                .push([a.to_ascii_uppercase(), b.to_ascii_uppercase()]);
        }
    }
    for (i, ch) in m.channels.iter().enumerate() {
        match env.channels.iter().position(|x| x == ch) {
            Some(id) => cond.channels.push(id as ChannelId),
            None => ctx.err(
                format!("{path}.channels[{i}]"),
                format!("unknown channel '{ch}'"),
            ),
        }
    }
    for (i, co) in m.cohorts.iter().enumerate() {
        if co.is_empty() {
            ctx.err(format!("{path}.cohorts[{i}]"), "must not be empty");
        }
    }
    for co in &m.cohorts {
        if let Ok(id) = cohorts.binary_search(co) {
            if !cond.cohorts.contains(&(id as CohortId)) {
                cond.cohorts.push(id as CohortId);
            }
        }
    }
    for (i, p) in m.path_prefixes.iter().enumerate() {
        if !p.starts_with('/') {
            ctx.err(
                format!("{path}.path_prefixes[{i}]"),
                format!("'{p}' must start with '/'"),
            );
        }
    }
    cond.path_prefixes = m.path_prefixes.clone();
    cond.methods = m.methods.iter().map(|s| s.to_ascii_uppercase()).collect();
    if let Some(t) = &m.time {
        let tpath = format!("{path}.time");
        let mut schedule = Schedule::default();
        for (i, w) in t.windows.iter().enumerate() {
            match TimeWindow::parse(&w.start, &w.end) {
                Ok(win) => schedule.windows.push(win),
                Err(e) => ctx.err(format!("{tpath}.windows[{i}]"), e),
            }
        }
        for (i, d) in t.days.iter().enumerate() {
            match crate::schedule::parse_day(d) {
                Some(day) => schedule.days |= 1 << day,
                None => ctx.err(
                    format!("{tpath}.days[{i}]"),
                    format!("'{d}' is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                ),
            }
        }
        for (i, cpn) in t.campaigns.iter().enumerate() {
            let start = crate::schedule::parse_rfc3339(&cpn.start);
            let end = crate::schedule::parse_rfc3339(&cpn.end);
            match (start, end) {
                (Ok(s), Ok(e)) if s < e => schedule.campaigns.push((s, e)),
                (Ok(_), Ok(_)) => {
                    ctx.err(format!("{tpath}.campaigns[{i}]"), "end must be after start")
                }
                (Err(e), _) => ctx.err(format!("{tpath}.campaigns[{i}].start"), e),
                (_, Err(e)) => ctx.err(format!("{tpath}.campaigns[{i}].end"), e),
            }
        }
        if t.windows.is_empty() && t.days.is_empty() && t.campaigns.is_empty() {
            ctx.err(&tpath, "give at least one of windows, days, campaigns");
        }
        cond.time = Some(schedule);
    }
    if let Some(p) = &m.percent {
        let ppath = format!("{path}.percent");
        let ok = p.from.is_finite()
            && p.to.is_finite()
            && p.from >= 0.0
            && p.to <= 100.0
            && p.from < p.to;
        if !ok {
            ctx.err(&ppath, "need 0 <= from < to <= 100");
        } else if !env.has_user_key {
            ctx.err(&ppath, "percentage buckets need classify.user_key");
        } else {
            let from = (p.from * 100.0).round() as u16;
            let to = (p.to * 100.0).round() as u16;
            cond.percent = Some((from, to));
        }
    }
    cond
}

fn compile_targets(
    ctx: &mut Ctx,
    env: &Env,
    path: &str,
    targets: &[TargetDoc],
    residency: u64,
) -> Vec<Target> {
    let mut out = Vec::with_capacity(targets.len());
    if targets.len() > MAX_TARGETS {
        ctx.err(path, format!("at most {MAX_TARGETS} targets"));
    }
    for (i, t) in targets.iter().enumerate() {
        let tpath = format!("{path}[{i}]");
        let Some(&stack) = env.stack_index.get(&t.stack) else {
            ctx.err(
                format!("{tpath}.stack"),
                format!("unknown stack '{}'", t.stack),
            );
            continue;
        };
        if out.iter().any(|x: &Target| x.stack == stack) {
            ctx.err(
                format!("{tpath}.stack"),
                format!("stack '{}' is listed twice", t.stack),
            );
            continue;
        }
        if residency & (1u64 << stack) == 0 {
            ctx.err(
                format!("{tpath}.stack"),
                format!("stack '{}' is outside this route's residency", t.stack),
            );
        }
        let weight = t.weight.unwrap_or(env.stacks[stack].weight);
        if weight > 1_000_000 {
            ctx.err(format!("{tpath}.weight"), "must be at most 1000000");
        }
        out.push(Target { stack, weight });
    }
    out
}

fn compile_route(
    ctx: &mut Ctx,
    env: &Env,
    regions: &mut [String],
    path: &str,
    r: &RouteDoc,
) -> Route {
    let all = mask_of(env.stacks.len());
    let (residency, residency_regions) = match &r.residency {
        None => (all, None),
        Some(list) => {
            if list.is_empty() {
                ctx.err(format!("{path}.residency"), "must name at least one region");
            }
            let mut ids = Vec::new();
            for (i, name) in list.iter().enumerate() {
                match regions.iter().position(|x| x == name) {
                    Some(id) => ids.push(id as RegionId),
                    None => ctx.err(
                        format!("{path}.residency[{i}]"),
                        format!("unknown region '{name}'"),
                    ),
                }
            }
            let mut mask = 0u64;
            for (sid, s) in env.stacks.iter().enumerate() {
                if ids.contains(&s.region) {
                    mask |= 1u64 << sid;
                }
            }
            (mask, Some(ids))
        }
    };
    if r.targets.is_empty() {
        ctx.err(format!("{path}.targets"), "at least one target is required");
    }
    let targets = compile_targets(ctx, env, &format!("{path}.targets"), &r.targets, residency);
    if !targets.is_empty() && targets.iter().all(|t| t.weight == 0) {
        ctx.err(format!("{path}.targets"), "total weight is zero");
    }
    let balance = match &r.balance {
        BalanceDoc::Weighted => Balance::Weighted,
        BalanceDoc::Hash { key } => {
            match key {
                HashKeyDoc::User if !env.has_user_key => ctx.err(
                    format!("{path}.balance.key"),
                    "hashing on 'user' needs classify.user_key",
                ),
                HashKeyDoc::Header(h) => {
                    check_header(ctx, &format!("{path}.balance.key.header"), h)
                }
                HashKeyDoc::Cookie(c) if !valid_cookie_name(c) => ctx.err(
                    format!("{path}.balance.key.cookie"),
                    format!("'{c}' is not a valid cookie name"),
                ),
                _ => {}
            }
            Balance::Hash {
                key: key.clone(),
                slot: None, // resolved with the other inputs at the end of `compile`
                table: OnceLock::new(),
            }
        }
    };
    if let Some(ttl) = r.affinity_ttl_s {
        if !r.affinity {
            ctx.err(
                format!("{path}.affinity_ttl_s"),
                "set only when affinity is true",
            );
        } else if ttl == 0 || ttl > 30 * 86_400 {
            ctx.err(
                format!("{path}.affinity_ttl_s"),
                "must be between 1 and 2592000 (30 days)",
            );
        }
    }
    let (fallback, local) = match &r.fallback {
        None => (Vec::new(), LocalReply::default()),
        Some(f) => {
            let fb = compile_targets(
                ctx,
                env,
                &format!("{path}.fallback.targets"),
                &f.targets,
                residency,
            );
            if !fb.is_empty() && fb.iter().all(|t| t.weight == 0) {
                ctx.err(format!("{path}.fallback.targets"), "total weight is zero");
            }
            let local = match &f.local {
                None => LocalReply::default(),
                Some(l) => {
                    if !(500..=599).contains(&l.status) && l.status != 429 {
                        ctx.err(
                            format!("{path}.fallback.local.status"),
                            "must be 429 or 5xx",
                        );
                    }
                    if l.retry_after_s > 86_400 {
                        ctx.err(
                            format!("{path}.fallback.local.retry_after_s"),
                            "must be at most 86400",
                        );
                    }
                    LocalReply {
                        status: l.status,
                        retry_after_s: l.retry_after_s,
                        message: l
                            .message
                            .clone()
                            .unwrap_or_else(|| LocalReply::default().message),
                    }
                }
            };
            (fb, local)
        }
    };
    Route {
        targets,
        balance,
        affinity_ttl_s: r
            .affinity
            .then(|| r.affinity_ttl_s.unwrap_or(env.affinity_ttl_s)),
        residency,
        residency_regions,
        fallback,
        local,
    }
}

/// Whether every request `b` matches is also matched by `a`.
fn subsumes(a: &Condition, b: &Condition) -> bool {
    fn list<T: PartialEq>(a: &[T], b: &[T]) -> bool {
        a.is_empty() || (!b.is_empty() && b.iter().all(|x| a.contains(x)))
    }
    fn prefixes(a: &[String], b: &[String]) -> bool {
        a.is_empty()
            || (!b.is_empty()
                && b.iter()
                    .all(|x| a.iter().any(|p| x.starts_with(p.as_str()))))
    }
    let time = a.time.is_none();
    let percent = match (a.percent, b.percent) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some((af, at)), Some((bf, bt))) => af <= bf && bt <= at,
    };
    list(&a.regions, &b.regions)
        && list(&a.countries, &b.countries)
        && list(&a.channels, &b.channels)
        && list(&a.cohorts, &b.cohorts)
        && list(&a.methods, &b.methods)
        && prefixes(&a.path_prefixes, &b.path_prefixes)
        && time
        && percent
}
