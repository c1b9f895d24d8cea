//! The policy document as written (JSON): the data-transfer types and their serde
//! derives, and nothing else. It is its own crate so that the JSON deserialisation code
//! (the largest part of the filter's .wasm) is instantiated here, in a crate the release
//! profile builds for size, while the routing core that uses these types is built for
//! speed (see the workspace `Cargo.toml`). `switchyard_filter::policy` re-exports all of it.
//!
//! Feature `serialize` derives `Serialize` too, for tests only (the filter's shape table
//! is checked against a serialised document with every field set).

use std::collections::BTreeMap;

use serde::Deserialize;

/// Parse a policy document (no field paths in errors: the native build of the filter
/// uses `serde_path_to_error` on these types instead). Not generic, so the
/// deserialisation code is instantiated in this crate.
#[inline(never)]
pub fn from_slice(json: &[u8]) -> Result<PolicyDoc, serde_json::Error> {
    serde_json::from_slice(json)
}

// ---------------------------------------------------------------------------------------
// The document (DTOs)
// ---------------------------------------------------------------------------------------

/// The policy document as written (JSON). See `docs/policy.md`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// Free-form name shown in logs and status.
    #[serde(default)]
    pub name: Option<String>,
    /// The active-active stacks this policy routes across.
    pub stacks: Vec<StackDoc>,
    /// How requests are classified.
    #[serde(default)]
    pub classify: ClassifyDoc,
    /// Sticky-session cookie settings.
    #[serde(default)]
    pub affinity: AffinityDoc,
    /// Local per-stack circuit breaker.
    #[serde(default)]
    pub breaker: BreakerDoc,
    /// Rules, evaluated by ascending priority (ties keep document order).
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
    /// The route used when no rule matches.
    pub default: RouteDoc,
    /// Add the `x-switchyard-decision` response header (rule id and reason).
    #[serde(default)]
    pub debug_header: bool,
    /// Business outcomes the filter counts per stack (e.g. orders), reported to the
    /// control service with the telemetry.
    #[serde(default)]
    pub kpis: Vec<KpiDoc>,
}

/// A business outcome, as a string map: `name` (`[a-z0-9_]{1,32}`, unique), and
/// optionally `method` (e.g. `POST`), `path_prefix` (of `:path`, query included, e.g.
/// `/checkout`) and `status` (a class `2xx` or a code `201`); an absent part matches
/// anything. The compiler checks the keys (an unknown one is an error at its path).
///
/// A map rather than a derived struct: the map deserialiser is already in the module
/// (`classify.geo.countries`), and a struct visitor of its own would cost the .wasm
/// about 3 KB of its 400 KB budget.
pub type KpiDoc = BTreeMap<String, String>;

/// One stack: a complete deployment reachable through one Envoy cluster.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct StackDoc {
    pub name: String,
    /// Envoy cluster; defaults to the stack name.
    #[serde(default)]
    pub cluster: Option<String>,
    pub region: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Default weight when a route names the stack without a weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Health endpoint. When set, an open circuit breaker is closed again by a probe of
    /// this path instead of by trial user requests.
    #[serde(default)]
    pub health_path: Option<String>,
}

fn default_weight() -> u32 {
    100
}

/// Classification settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct ClassifyDoc {
    #[serde(default)]
    pub geo: GeoDoc,
    /// Channel definitions, first match wins.
    #[serde(default)]
    pub channels: Vec<ChannelDoc>,
    /// Channel of requests no definition matches (default `web`).
    #[serde(default)]
    pub default_channel: Option<String>,
    /// Trusted header carrying the customer cohort (written by Envoy's jwt_authn).
    #[serde(default)]
    pub cohort_header: Option<String>,
    /// Where the user key for percentage buckets and `hash` on `user` comes from; first
    /// source present wins.
    #[serde(default)]
    pub user_key: Vec<KeyDoc>,
    /// Salt of the percentage bucket hash: change it to reshuffle buckets.
    #[serde(default)]
    pub bucket_salt: Option<String>,
}

/// Geography: a trusted edge header, then CIDR tables on `source.address`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct GeoDoc {
    /// Trusted header with an ISO country code (or a region name), set by the CDN/edge.
    #[serde(default)]
    pub header: Option<String>,
    /// Country code → region.
    #[serde(default)]
    pub countries: BTreeMap<String, String>,
    /// Client address ranges → region.
    #[serde(default)]
    pub cidrs: Vec<CidrDoc>,
    /// What a geo header with more than one value (repeated, or a comma-separated list)
    /// means: see [`AmbiguousDoc`].
    #[serde(default)]
    pub ambiguous: Option<AmbiguousDoc>,
}

/// What an ambiguous geo header means, as a string map: `mode` — `unknown` (no region
/// from the header; the address ranges still apply), `reject` (a local 400 reply),
/// `most_restrictive` (the values' rules whose residency every value accepts, else
/// `reject`) or `assume` — and `region` (the region `assume` takes). The compiler checks
/// the keys. A map for the same reason as [`KpiDoc`]: a struct visitor of its own would
/// cost the .wasm about 3 KB.
pub type AmbiguousDoc = BTreeMap<String, String>;

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct CidrDoc {
    pub cidr: String,
    pub region: String,
}

/// A channel: web, mobile app, retail/POS, partner API, ...
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct ChannelDoc {
    pub name: String,
    /// Case-insensitive substrings of `user-agent`.
    #[serde(default)]
    pub user_agent_contains: Vec<String>,
    /// Headers whose presence marks the channel (API key, partner id).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Path prefixes.
    #[serde(default)]
    pub path_prefixes: Vec<String>,
}

/// A source of a key: a header, a cookie or the client address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyDoc {
    Header(String),
    Cookie(String),
    ClientIp,
}

/// Sticky-session cookie settings.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct AffinityDoc {
    #[serde(default = "default_cookie")]
    pub cookie: String,
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    #[serde(default)]
    pub secure: bool,
    /// Bump to invalidate every sticky assignment at once.
    #[serde(default = "default_epoch")]
    pub epoch: u32,
}

impl Default for AffinityDoc {
    fn default() -> Self {
        Self {
            cookie: default_cookie(),
            ttl_s: default_ttl(),
            secure: false,
            epoch: default_epoch(),
        }
    }
}

fn default_cookie() -> String {
    "sy_aff".to_string()
}
fn default_ttl() -> u64 {
    3600
}
fn default_epoch() -> u32 {
    1
}

/// Local circuit breaker settings (per stack, per worker).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct BreakerDoc {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "d_consecutive")]
    pub consecutive_failures: u32,
    #[serde(default = "d_rate")]
    pub error_rate: f64,
    #[serde(default = "d_window")]
    pub window_ms: u64,
    #[serde(default = "d_min_requests")]
    pub min_requests: u32,
    #[serde(default = "d_open")]
    pub open_ms: u64,
    #[serde(default = "d_max_open")]
    pub max_open_ms: u64,
    #[serde(default = "d_half_open")]
    pub half_open_requests: u32,
}

impl Default for BreakerDoc {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: d_consecutive(),
            error_rate: d_rate(),
            window_ms: d_window(),
            min_requests: d_min_requests(),
            open_ms: d_open(),
            max_open_ms: d_max_open(),
            half_open_requests: d_half_open(),
        }
    }
}

fn yes() -> bool {
    true
}
fn d_consecutive() -> u32 {
    5
}
fn d_rate() -> f64 {
    0.5
}
fn d_window() -> u64 {
    10_000
}
fn d_min_requests() -> u32 {
    20
}
fn d_open() -> u64 {
    1_000
}
fn d_max_open() -> u64 {
    30_000
}
fn d_half_open() -> u32 {
    3
}

/// A rule: a match on classified attributes and the route it selects.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    pub id: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, rename = "match")]
    pub matches: MatchDoc,
    pub route: RouteDoc,
}

/// Conditions; every condition given must hold, each list matches any of its entries.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct MatchDoc {
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub countries: Vec<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub cohorts: Vec<String>,
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub time: Option<TimeDoc>,
    #[serde(default)]
    pub percent: Option<PercentDoc>,
}

/// Time conditions, all in UTC.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct TimeDoc {
    /// Daily windows `HH:MM`–`HH:MM` (end exclusive; may wrap past midnight).
    #[serde(default)]
    pub windows: Vec<WindowDoc>,
    /// Days of week: `mon` … `sun`.
    #[serde(default)]
    pub days: Vec<String>,
    /// Dated campaign windows (RFC 3339, UTC), e.g. a flash sale.
    #[serde(default)]
    pub campaigns: Vec<CampaignDoc>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct WindowDoc {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct CampaignDoc {
    #[serde(default)]
    pub name: Option<String>,
    pub start: String,
    pub end: String,
}

/// A stable slice of users by hashed user key: `from` ≤ bucket < `to`, in percent.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct PercentDoc {
    #[serde(default)]
    pub from: f64,
    pub to: f64,
}

/// What a rule selects.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RouteDoc {
    pub targets: Vec<TargetDoc>,
    #[serde(default)]
    pub balance: BalanceDoc,
    /// Keep users on the stack they were assigned (signed cookie).
    #[serde(default)]
    pub affinity: bool,
    /// Override of `affinity.ttl_s` for this route.
    #[serde(default)]
    pub affinity_ttl_s: Option<u64>,
    /// Regions this traffic may never leave, not even on failover.
    #[serde(default)]
    pub residency: Option<Vec<String>>,
    #[serde(default)]
    pub fallback: Option<FallbackDoc>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct TargetDoc {
    pub stack: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

/// Balancing among the eligible targets.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum BalanceDoc {
    /// Smooth weighted round-robin. `key` is read only so that validation can reject it
    /// with a useful message (it applies to `hash` mode): a unit variant of an internally
    /// tagged enum would ignore it silently.
    Weighted {
        #[serde(default)]
        key: Option<HashKeyDoc>,
    },
    /// Consistent hashing on a key.
    Hash { key: HashKeyDoc },
}

impl Default for BalanceDoc {
    fn default() -> Self {
        BalanceDoc::Weighted { key: None }
    }
}

/// Key of consistent hashing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HashKeyDoc {
    /// The classified user key (`classify.user_key`).
    User,
    ClientIp,
    Header(String),
    Cookie(String),
}

/// What to do when no target is eligible.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct FallbackDoc {
    /// Another stack set (still bound by residency).
    #[serde(default)]
    pub targets: Vec<TargetDoc>,
    /// The local reply when nothing is eligible (and when a queue's intake cannot be
    /// reached).
    #[serde(default)]
    pub local: Option<LocalDoc>,
    /// Degraded mode: queue the request in an intake service instead of the local reply
    /// (`docs/degraded-mode.md`).
    #[serde(default)]
    pub queue: Option<QueueDoc>,
}

/// A queue fallback, as a string map: `cluster` (the intake's Envoy cluster, required),
/// `region` (the intake's region; required when the route has residency) and `when`
/// (`no_eligible`, the default and only value so far). The compiler checks the keys. A map for the same reason as [`KpiDoc`]: a
/// struct visitor of its own would cost the .wasm about 3 KB.
pub type QueueDoc = BTreeMap<String, String>;

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "serialize", derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct LocalDoc {
    #[serde(default = "d_status")]
    pub status: u16,
    #[serde(default = "d_retry_after")]
    pub retry_after_s: u32,
    #[serde(default)]
    pub message: Option<String>,
}

/// Status of a local reply when the document does not set one.
pub const DEFAULT_LOCAL_STATUS: u16 = 503;
/// `retry-after` of a local reply when the document does not set one.
pub const DEFAULT_RETRY_AFTER_S: u32 = 5;

fn d_status() -> u16 {
    DEFAULT_LOCAL_STATUS
}
fn d_retry_after() -> u32 {
    DEFAULT_RETRY_AFTER_S
}
