//! The compiled policy: what the request path evaluates. Read-only once built and shared
//! by every request of a worker (an `Arc`, swapped whole on update). It holds no mutable
//! or lazily built state (balancing state lives with the router) and never depends on
//! the modules that use it (classify, balance, router).

use switchyard_policy_doc::{
    BreakerDoc, HashKeyDoc, KeyDoc, DEFAULT_LOCAL_STATUS, DEFAULT_RETRY_AFTER_S,
};

use crate::cidr::CidrTable;
use crate::hash::NameMap;

use super::condition::Condition;
use super::ids::{mask_of, ChannelId, CohortId, RegionId, StackId};
use super::index::RuleIndex;
use super::inputs::{Inputs, KeySlot};
use super::kpi::Kpi;

/// Identifier of the default rule, evaluated after every other rule.
pub const DEFAULT_RULE_ID: &str = "default";

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
    /// Business outcomes counted per stack (at most [`super::kpi::MAX_KPIS`]).
    pub kpis: Vec<Kpi>,
    /// Whether any rule has a time condition (skip calendar maths otherwise).
    pub uses_time: bool,
    /// Whether a user key or hash key is the client address (then `source.address` is
    /// always needed, not only for CIDR tables).
    pub uses_client_ip: bool,
    pub(in crate::policy) stack_index: NameMap<String, StackId>,
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
    /// What a geo header with more than one value means (`classify.geo.ambiguous`).
    pub ambiguous_geo: AmbiguousGeo,
    pub channels: Vec<ChannelDef>,
    pub default_channel: ChannelId,
    pub cohort_header: Option<String>,
    pub user_key: Vec<KeyDoc>,
    pub bucket_salt: String,
    /// What the request scan looks for.
    pub inputs: Inputs,
}

/// What a geo header with more than one value (repeated, or a comma-separated list)
/// means. Such a request is always counted as hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AmbiguousGeo {
    /// No region from the header (the address ranges still apply): the request can match
    /// rules without a region, the default rule included. The default, for compatibility;
    /// validation warns when routes have residency.
    #[default]
    Unknown,
    /// The local reply [`LocalReply::ambiguous_geo`].
    Reject,
    /// Each value is classified and matched on its own; the request takes the rule of a
    /// value whose residency is the intersection of every value's residency (so an EU
    /// value keeps the request in the EU). No such value (conflicting residencies): as
    /// `Reject`. No value with residency: as `Unknown`.
    MostRestrictive,
    /// This region.
    Assume(RegionId),
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
    /// Degraded mode: where the request is queued instead of the local reply.
    pub queue: Option<Queue>,
}

/// A compiled queue fallback (`fallback.queue`): the intake's Envoy cluster, the value
/// of the routing header that selects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub cluster: String,
}

/// Balancing mode of a compiled route.
#[derive(Debug)]
pub enum Balance {
    Weighted,
    Hash {
        key: HashKeyDoc,
        /// Where the key is read (`None`: the classified user key).
        slot: Option<KeySlot>,
    },
}

/// The local reply sent when nothing eligible is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// The `error` of the reply body (`no_eligible_stack`, `ambiguous_geo`).
    pub reason: &'static str,
    pub status: u16,
    pub retry_after_s: u32,
    pub message: String,
}

impl Default for LocalReply {
    fn default() -> Self {
        Self {
            reason: "no_eligible_stack",
            status: DEFAULT_LOCAL_STATUS,
            retry_after_s: DEFAULT_RETRY_AFTER_S,
            message: "no healthy stack is available for this request".into(),
        }
    }
}

impl LocalReply {
    /// The reply to a request whose geography is ambiguous and not allowed to be
    /// (`classify.geo.ambiguous` `reject`, or `most_restrictive` without an answer).
    pub fn ambiguous_geo() -> Self {
        Self {
            reason: "ambiguous_geo",
            status: 400,
            retry_after_s: 0,
            message: "the geo header has more than one value".into(),
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
