//! The decision pipeline (paper §5.2): classify → policy → health filter → balance →
//! affinity. One `Router` per worker VM holds the compiled policy, the health view pushed
//! by the control plane, the local circuit breakers and the round-robin state. Never
//! panics and always decides: a stack, or the route's documented local reply.

use std::sync::Arc;

use crate::affinity::{set_cookie_header, Keyring, Verdict};
use crate::balance::{HashTable, Swrr};
use crate::breaker::{Breaker, State};
use crate::classify::{classify_with, has_prefix, Attributes, Found, Request, Scan};
use crate::policy::{
    AmbiguousGeo, Balance, ChannelId, LocalReply, Policy, RegionId, Rule, StackId, Target,
};
use crate::snapshot::StackState;

/// Health of every stack as the control plane sees it.
///
/// Three ways a stack stops taking traffic, which differ only for users holding a valid
/// affinity cookie for it:
/// - **draining**: factor 0 (no new visitors), cookies honoured until `sticky_until`
///   (the drain deadline, or `u64::MAX` for "until the cookies expire"), never refreshed;
/// - **evacuating** and **operator weight 0**: factor 0 and `sticky_until` 0, so cookie
///   holders are re-pointed at once and get a new cookie;
/// - **unhealthy** (or a local breaker open): not in `healthy`, so not eligible at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Weight factor in percent per stack id (100 = the policy's weights) for new
    /// traffic.
    pub factor: Vec<u32>,
    /// Bit per stack id: healthy.
    pub healthy: u64,
    /// Per stack id: a valid affinity cookie for the stack is honoured while the
    /// request's time (Unix ms) is below this; `u64::MAX` = always, 0 = never.
    pub sticky_until: Vec<u64>,
    /// Empty, or (a rule-scoped rollout, [`Router::set_rule_stacks`]) the percent of its
    /// own factor every (rule index, stack id) keeps, at `rule * stacks + stack`.
    pub rule_percent: Vec<u32>,
    /// Per rule index: stacks evacuated from the rule (empty: none anywhere).
    pub rule_evacuated: Vec<u64>,
}

impl Health {
    /// Everything healthy at full weight.
    pub fn all(stacks: usize) -> Self {
        Self {
            factor: vec![100; stacks],
            healthy: crate::policy::mask_of(stacks),
            sticky_until: vec![u64::MAX; stacks],
            rule_percent: Vec::new(),
            rule_evacuated: Vec::new(),
        }
    }

    /// The factor of stack `s` for new traffic of rule `rule`, scaled by 100 (factors are
    /// only ever compared within a rule). Not inlined: its four call sites would cost the
    /// .wasm ~150 bytes of its 400 KB budget, for a call of a few instructions.
    #[inline(never)]
    fn factor_in(&self, rule: usize, s: StackId) -> u32 {
        let own = self.factor.get(s).copied().unwrap_or(0);
        own * self
            .rule_percent
            .get(rule * self.factor.len() + s)
            .copied()
            .unwrap_or(100)
    }
}

/// The control plane's view of one stack, as [`Router::set_stacks`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackHealth<'n> {
    pub name: &'n str,
    /// Weight factor for new traffic, percent (0 = no new visitors).
    pub factor: u32,
    pub healthy: bool,
    /// Affinity cookies for the stack are honoured before this time (Unix ms):
    /// `u64::MAX` = always, 0 = never (see [`Health::sticky_until`]).
    pub sticky_until_ms: u64,
}

/// How the stack of a decision was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// A valid affinity cookie named an eligible stack.
    Sticky,
    /// Weighted round-robin among the route's targets.
    Weighted,
    /// Consistent hash among the route's targets.
    Hashed,
    /// No target was eligible; chosen among the fallback targets.
    Fallback,
}

impl How {
    pub fn as_str(self) -> &'static str {
        match self {
            How::Sticky => "affinity",
            How::Weighted => "weighted",
            How::Hashed => "hash",
            How::Fallback => "fallback",
        }
    }
}

/// What happened to the affinity cookie of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityEvent {
    /// Affinity is off for the route.
    Off,
    /// A valid cookie kept the user on its stack.
    Hit,
    /// No cookie, or a valid cookie for a stack not eligible now: reassigned.
    Miss,
    /// Bad signature, malformed, repeated or signed with an unknown key.
    Forged,
    Expired,
    /// Authentic but from an older affinity epoch.
    Stale,
}

/// The routing decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stack {
        id: StackId,
        how: How,
    },
    Local(LocalReply),
    /// Degraded mode: no stack is eligible and the route has a queue fallback: send the
    /// request to its intake (`Route::queue`). `intended` is the route's first target.
    Queue {
        intended: Option<StackId>,
        /// The request's segment: classified region and channel.
        region: Option<RegionId>,
        channel: ChannelId,
    },
}

/// A full decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the matched rule in [`Policy::rules`].
    pub rule: usize,
    pub outcome: Outcome,
    /// `Set-Cookie` value to send with the response.
    pub set_cookie: Option<String>,
    pub affinity: AffinityEvent,
    /// A routing-relevant header or cookie was repeated.
    pub hostile: bool,
}

/// Per-worker routing state.
#[derive(Debug)]
pub struct Router {
    policy: Arc<Policy>,
    health: Health,
    breakers: Vec<Breaker>,
    /// Round-robin state per rule: (targets, fallback).
    swrr: Vec<(Swrr, Swrr)>,
    /// Consistent-hash table per rule, built on the rule's first hashed pick (most
    /// policies never hash, and a VM should not pay for it); rebuilt with the router
    /// when the policy is swapped, so the compiled policy stays read-only.
    hash_tables: Vec<Option<HashTable>>,
    keys: Option<Keyring>,
    /// Cookies this worker already verified, so a returning user's next requests skip
    /// the HMAC. Only authentic cookies of the current epoch enter, matched on the whole
    /// value (a forgery can never hit); bounded; dropped with the router on a policy
    /// change (stack ids are per policy).
    verified: VerifiedCookies,
    /// Header and cookie slots of the request being decided (reused: no allocation).
    scan: Scan,
}

/// Cookies a worker already verified: a direct-mapped table indexed by a hash of the
/// cookie's last 16 bytes. Only authentic cookies are ever inserted, and their last bytes
/// are an HMAC nobody can choose, so that hash spreads them evenly; a hit still compares
/// the whole value, so a forgery can never hit. A colliding cookie replaces the older
/// one (which is verified again on its next request): the table never grows, never
/// needs clearing, and a lookup is one hash, one index and one comparison.
#[derive(Debug, Default)]
struct VerifiedCookies {
    slots: Vec<Option<Verified>>,
}

#[derive(Debug)]
struct Verified {
    tag: u64,
    value: Box<[u8]>,
    stack: StackId,
    expiry_s: u64,
}

/// Slots of the verified-cookie table (a power of two).
const VERIFIED_SLOTS: usize = 4096;

impl VerifiedCookies {
    fn tag(value: &[u8]) -> u64 {
        crate::hash::hash64(0, &value[value.len().saturating_sub(16)..])
    }

    /// The slot of `value` if it holds `value`.
    fn get(&mut self, value: &[u8]) -> Option<&mut Option<Verified>> {
        let tag = Self::tag(value);
        let slot = self.slots.get_mut(tag as usize & (VERIFIED_SLOTS - 1))?;
        slot.as_ref()
            .is_some_and(|v| v.tag == tag && *v.value == *value)
            .then_some(slot)
    }

    fn insert(&mut self, value: &[u8], stack: StackId, expiry_s: u64) {
        if self.slots.is_empty() {
            self.slots.resize_with(VERIFIED_SLOTS, || None);
        }
        let tag = Self::tag(value);
        if let Some(slot) = self.slots.get_mut(tag as usize & (VERIFIED_SLOTS - 1)) {
            *slot = Some(Verified {
                tag,
                value: value.into(),
                stack,
                expiry_s,
            });
        }
    }
}

/// Outcome of checking an affinity cookie against this router's policy.
enum CookieCheck {
    Valid(StackId, u64),
    Forged,
    Expired,
    Stale,
    /// Authentic but naming a stack this policy does not have.
    Unknown,
}

impl Router {
    pub fn new(policy: Arc<Policy>, keys: Option<Keyring>) -> Self {
        let n = policy.stacks.len();
        let swrr = policy
            .rules
            .iter()
            .map(|r| {
                (
                    Swrr::new(r.route.targets.len()),
                    Swrr::new(r.route.fallback.len()),
                )
            })
            .collect();
        let breakers = policy
            .stacks
            .iter()
            .map(|s| {
                if s.health_path.is_some() {
                    Breaker::probing()
                } else {
                    Breaker::default()
                }
            })
            .collect();
        Self {
            health: Health::all(n),
            breakers,
            hash_tables: policy.rules.iter().map(|_| None).collect(),
            swrr,
            keys,
            policy,
            verified: VerifiedCookies::default(),
            scan: Scan::default(),
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    pub fn has_keys(&self) -> bool {
        self.keys.is_some()
    }

    /// Swap in a new policy. Breaker state follows stacks by name; health resets to
    /// all-healthy until the next health update.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        let mut next = Router::new(policy, self.keys.take());
        for (id, stack) in next.policy.stacks.iter().enumerate() {
            if let Some(old) = self.policy.stack_id(&stack.name) {
                if let (Some(slot), Some(b)) = (next.breakers.get_mut(id), self.breakers.get(old)) {
                    if stack.health_path.is_some() == self.policy.stacks[old].health_path.is_some()
                    {
                        *slot = b.clone();
                    }
                }
            }
        }
        *self = next;
    }

    /// Apply health by stack name: `(name, weight factor percent, healthy)`, where a
    /// factor of 0 means no traffic at all (cookies for the stack are not honoured).
    /// Stacks not listed keep full weight and health.
    pub fn set_health<'n>(&mut self, entries: impl IntoIterator<Item = (&'n str, u32, bool)>) {
        self.set_stacks(
            entries
                .into_iter()
                .map(|(name, factor, healthy)| StackHealth {
                    name,
                    factor,
                    healthy,
                    sticky_until_ms: if factor > 0 { u64::MAX } else { 0 },
                }),
        );
    }

    /// Apply the control plane's view of the stacks, by name. Stacks not listed keep
    /// full weight and health. A stack with factor > 0 always honours its cookies.
    pub fn set_stacks<'n>(&mut self, entries: impl IntoIterator<Item = StackHealth<'n>>) {
        let mut h = Health::all(self.policy.stacks.len());
        for e in entries {
            if let Some(id) = self.policy.stack_id(e.name) {
                let factor = e.factor.min(100);
                h.factor[id] = factor;
                h.sticky_until[id] = if factor > 0 {
                    u64::MAX
                } else {
                    e.sticky_until_ms
                };
                if !e.healthy {
                    h.healthy &= !(1u64 << id);
                }
            }
        }
        self.health = h;
    }

    /// Apply stacks' states within rules ([`StackState::rule`]; call after
    /// [`Router::set_stacks`], which clears them). Within its rule a stack's factor is its
    /// own times the state's `weight_percent`; an evacuating one is out of the rule, its
    /// cookie holders included. Unknown rules and stacks are ignored.
    pub fn set_rule_stacks(&mut self, states: &[StackState]) {
        let h = &mut self.health;
        let rules = &self.policy.rules;
        let n = h.factor.len();
        for st in states {
            let (Some(r), Some(id)) = (
                rules.iter().position(|x| x.id == st.rule),
                self.policy.stack_id(&st.name),
            ) else {
                continue;
            };
            if h.rule_evacuated.is_empty() {
                h.rule_percent = vec![100; rules.len() * n];
                h.rule_evacuated = vec![0; rules.len()];
            }
            if let Some(f) = h.rule_percent.get_mut(r * n + id) {
                *f = st.weight_percent.min(100);
            }
            if let (true, Some(e)) = (st.evacuating, h.rule_evacuated.get_mut(r)) {
                *e |= 1u64 << id;
            }
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Breaker state of a stack.
    pub fn breaker_state(&mut self, id: StackId, now_ms: u64) -> State {
        let cfg = &self.policy.breaker;
        self.breakers
            .get_mut(id)
            .map_or(State::Closed, |b| b.state(cfg, now_ms))
    }

    /// Record the outcome of a request sent to `id`: `status` is the response code, or
    /// `None` when the stream ended without a response. Returns a breaker state change.
    pub fn record(&mut self, id: StackId, status: Option<u32>, now_ms: u64) -> Option<State> {
        let ok = matches!(status, Some(s) if (100..500).contains(&s));
        let cfg = &self.policy.breaker;
        self.breakers.get_mut(id)?.record(cfg, now_ms, ok)
    }

    /// Stacks whose open breaker is due for a health probe (each marked in flight).
    pub fn probes_due(&mut self, now_ms: u64) -> Vec<StackId> {
        let cfg = &self.policy.breaker;
        self.breakers
            .iter_mut()
            .enumerate()
            .filter_map(|(id, b)| b.start_probe(cfg, now_ms).then_some(id))
            .collect()
    }

    /// Outcome of a health probe of `id`.
    pub fn probe_result(&mut self, id: StackId, ok: bool, now_ms: u64) -> Option<State> {
        let cfg = &self.policy.breaker;
        self.breakers.get_mut(id)?.probe_result(cfg, now_ms, ok)
    }

    /// Decide where a request goes.
    pub fn decide(&mut self, req: &Request) -> Decision {
        self.decide_with(req, false)
    }

    /// Decide by the default rule only: used when the request could not be read (the
    /// host refused its headers). Traffic is never blocked by the filter's own trouble.
    pub fn decide_default(&mut self, now_ms: u64) -> Decision {
        self.decide_with(
            &Request {
                headers: &[],
                source: None,
                now_ms,
            },
            true,
        )
    }

    fn decide_with(&mut self, req: &Request, default_only: bool) -> Decision {
        let policy = Arc::clone(&self.policy);
        let mut attrs = classify_with(&policy, req, &mut self.scan);
        let default_rule = policy.rules.len().saturating_sub(1);
        let mut rule_index = default_rule;
        if !default_only {
            rule_index = first_match(&policy, &attrs, req.now_ms).unwrap_or(default_rule);
            if attrs.geo_ambiguous {
                let resolved = match policy.classify.ambiguous_geo {
                    AmbiguousGeo::Reject => None,
                    AmbiguousGeo::MostRestrictive => {
                        most_restrictive(&policy, &mut attrs, req, rule_index)
                    }
                    AmbiguousGeo::Unknown | AmbiguousGeo::Assume(_) => Some(rule_index),
                };
                let Some(r) = resolved else {
                    return Decision {
                        rule: default_rule,
                        outcome: Outcome::Local(LocalReply::ambiguous_geo()),
                        set_cookie: None,
                        affinity: AffinityEvent::Off,
                        hostile: true,
                    };
                };
                rule_index = r;
            }
        }
        let mut hostile = attrs.hostile;
        let Some(rule) = policy.rules.get(rule_index) else {
            // Unreachable with a compiled policy (the default rule always exists).
            return Decision {
                rule: 0,
                outcome: Outcome::Local(LocalReply::default()),
                set_cookie: None,
                affinity: AffinityEvent::Off,
                hostile,
            };
        };
        let route = &rule.route;

        // Health filtering: control-plane health, local breakers, residency.
        let evacuated = self.health.rule_evacuated.get(rule_index).copied();
        let eligible = self.eligible_mask(req.now_ms) & route.residency & !evacuated.unwrap_or(0);
        let factor = |s: StackId| self.health.factor_in(rule_index, s);
        let usable = |ts: &[Target]| -> u64 {
            ts.iter()
                .filter(|t| {
                    eligible & (1u64 << t.stack) != 0 && t.weight > 0 && factor(t.stack) > 0
                })
                .fold(0u64, |m, t| m | (1u64 << t.stack))
        };
        let primary = usable(&route.targets);
        let (active, in_fallback) = if primary != 0 {
            (primary, false)
        } else {
            (usable(&route.fallback), true)
        };

        // Affinity.
        let now_s = req.now_ms / 1000;
        let mut affinity = AffinityEvent::Off;
        let mut sticky: Option<(StackId, u64)> = None;
        if route.affinity_ttl_s.is_some() && self.keys.is_some() {
            affinity = AffinityEvent::Miss;
            match attrs.affinity_cookie {
                Found::One(value) => match self.check_cookie(&policy, value, now_s) {
                    CookieCheck::Valid(id, expiry_s) => {
                        // Honoured for a stack taking traffic, or a draining one before
                        // its deadline: eligible, and a target of the set in use with a
                        // policy weight (a drain keeps users, it does not add routes).
                        let bit = 1u64 << id;
                        let honoured = active & bit != 0
                            || (eligible & bit != 0
                                && self
                                    .health
                                    .sticky_until
                                    .get(id)
                                    .is_some_and(|&until| req.now_ms < until)
                                && targets_with_weight(route, id, in_fallback));
                        if honoured {
                            sticky = Some((id, expiry_s));
                            affinity = AffinityEvent::Hit;
                        }
                    }
                    CookieCheck::Unknown => {}
                    CookieCheck::Forged => affinity = AffinityEvent::Forged,
                    CookieCheck::Expired => affinity = AffinityEvent::Expired,
                    CookieCheck::Stale => affinity = AffinityEvent::Stale,
                },
                Found::Repeated => {
                    hostile = true;
                    affinity = AffinityEvent::Forged;
                }
                Found::Absent => {}
            }
        }

        let choice: Option<(StackId, How)> = if let Some((id, _)) = sticky {
            Some((id, How::Sticky))
        } else if active == 0 {
            None
        } else if in_fallback {
            let (_, fb) = &mut self.swrr[rule_index];
            let health = &self.health;
            fb.pick(&route.fallback, active, |s| health.factor_in(rule_index, s))
                .map(|i| (route.fallback[i].stack, How::Fallback))
        } else {
            self.balance(rule_index, rule, &attrs, req, active, &mut hostile)
        };

        let Some((id, how)) = choice else {
            return Decision {
                rule: rule_index,
                // Degraded mode: queue instead of the local reply.
                outcome: match route.queue {
                    Some(_) => Outcome::Queue {
                        intended: route.targets.first().map(|t| t.stack),
                        region: attrs.region,
                        channel: attrs.channel,
                    },
                    None => Outcome::Local(route.local.clone()),
                },
                set_cookie: None,
                affinity: if affinity == AffinityEvent::Off {
                    AffinityEvent::Off
                } else {
                    AffinityEvent::Miss
                },
                hostile,
            };
        };
        let cfg = &policy.breaker;
        if let Some(b) = self.breakers.get_mut(id) {
            b.on_pick(cfg, req.now_ms);
        }

        // Issue a cookie on a new assignment, or refresh one past half its life.
        let set_cookie = match (route.affinity_ttl_s, &self.keys) {
            (Some(ttl), Some(keys)) => {
                // Never extend a cookie for a stack that takes no new traffic (a
                // draining one): the drain must end when the cookies do.
                let refresh = match sticky {
                    Some((id, expiry_s)) => {
                        expiry_s.saturating_sub(now_s) < ttl / 2 && active & (1u64 << id) != 0
                    }
                    None => true,
                };
                refresh.then(|| {
                    let value =
                        keys.sign(&policy.stacks[id].name, policy.affinity.epoch, now_s + ttl);
                    set_cookie_header(&policy.affinity.cookie, &value, ttl, policy.affinity.secure)
                })
            }
            _ => None,
        };

        Decision {
            rule: rule_index,
            outcome: Outcome::Stack { id, how },
            set_cookie,
            affinity,
            hostile,
        }
    }

    fn check_cookie(&mut self, policy: &Policy, value: &[u8], now_s: u64) -> CookieCheck {
        if let Some(slot) = self.verified.get(value) {
            if let Some(&Verified {
                stack, expiry_s, ..
            }) = slot.as_ref()
            {
                if expiry_s <= now_s {
                    *slot = None;
                    return CookieCheck::Expired;
                }
                return CookieCheck::Valid(stack, expiry_s);
            }
        }
        let Some(keys) = &self.keys else {
            return CookieCheck::Forged;
        };
        match keys.verify(value, policy.affinity.epoch, now_s) {
            Verdict::Valid { stack, expiry_s } => match policy.stack_id(stack) {
                Some(id) => {
                    self.verified.insert(value, id, expiry_s);
                    CookieCheck::Valid(id, expiry_s)
                }
                None => CookieCheck::Unknown,
            },
            Verdict::Forged | Verdict::UnknownKey => CookieCheck::Forged,
            Verdict::Expired => CookieCheck::Expired,
            Verdict::Stale => CookieCheck::Stale,
        }
    }

    fn eligible_mask(&mut self, now_ms: u64) -> u64 {
        let cfg = &self.policy.breaker;
        let mut mask = self.health.healthy;
        for (id, b) in self.breakers.iter_mut().enumerate() {
            if !b.available(cfg, now_ms) {
                mask &= !(1u64 << id);
            }
        }
        mask
    }

    fn balance(
        &mut self,
        rule_index: usize,
        rule: &Rule,
        attrs: &Attributes,
        req: &Request,
        active: u64,
        hostile: &mut bool,
    ) -> Option<(StackId, How)> {
        let route = &rule.route;
        if let Balance::Hash { slot, .. } = &route.balance {
            let key_hash = match slot {
                None => attrs.user_key,
                Some(slot) => self.scan.key_hash(*slot, req, hostile),
            };
            if let (Some(k), Some(table)) = (key_hash, self.hash_tables.get_mut(rule_index)) {
                return table
                    .get_or_insert_with(|| HashTable::build(&route.targets))
                    .pick(&route.targets, k, active)
                    .map(|i| (route.targets[i].stack, How::Hashed));
            }
            // No key: fall through to weighted round-robin.
        }
        let factor = |s: StackId| self.health.factor_in(rule_index, s);
        let (rr, _) = &mut self.swrr[rule_index];
        rr.pick(&route.targets, active, factor)
            .map(|i| (route.targets[i].stack, How::Weighted))
    }
}

/// Whether `id` is a target with a policy weight > 0 of the route's primary set, or of
/// its fallback set while that is in use.
fn targets_with_weight(route: &crate::policy::Route, id: StackId, in_fallback: bool) -> bool {
    let has = |ts: &[Target]| ts.iter().any(|t| t.stack == id && t.weight > 0);
    has(&route.targets) || (in_fallback && has(&route.fallback))
}

/// The first rule, in order, that matches: candidates from the index (region, country,
/// channel, cohort, method), then each checked on what the index does not cover.
fn first_match(policy: &Policy, a: &Attributes, now_ms: u64) -> Option<usize> {
    let ix = &policy.index;
    let rows = [
        ix.region(a.region),
        ix.country(a.country),
        ix.channel(a.channel),
        ix.cohort(a.cohort_id),
        ix.method(a.method),
    ];
    for w in 0..ix.words {
        let mut candidates = u64::MAX;
        for row in &rows {
            candidates &= row.get(w).copied().unwrap_or(0);
        }
        while candidates != 0 {
            let i = w * 64 + candidates.trailing_zeros() as usize;
            if policy
                .rules
                .get(i)
                .is_some_and(|r| matches_rest(r, a, now_ms, policy))
            {
                return Some(i);
            }
            candidates &= candidates - 1;
        }
    }
    None
}

/// At most this many geo header values are weighed by `most_restrictive`; more get the
/// reject reply.
pub const MAX_GEO_VALUES: usize = 16;

/// `most_restrictive` for a request whose geo header has several values: each value is
/// classified and matched on its own (the address ranges still apply to a value that
/// names no region), and the request takes the rule of the first value whose route's
/// residency is the intersection of every value's (an EU value keeps it in the EU, with
/// that value's region and country). `unknown_rule` (the match without a region from the
/// header) when no value's route has residency; `None` (reject) when no value's
/// residency is that intersection (two regions that exclude each other).
fn most_restrictive(
    policy: &Policy,
    attrs: &mut Attributes,
    req: &Request,
    unknown_rule: usize,
) -> Option<usize> {
    let name = policy
        .classify
        .geo_header
        .as_deref()
        .unwrap_or("")
        .as_bytes();
    let from_address = attrs.region;
    let default_rule = policy.rules.len().saturating_sub(1);
    let all = policy.all_stacks_mask();
    // The rule of one value, leaving its region and country in `attrs`, and its residency.
    let rule_of = |attrs: &mut Attributes, v: &[u8]| {
        let (region, country) = crate::classify::geo_value(policy, v);
        attrs.region = region.or(from_address);
        attrs.country = country;
        let r = first_match(policy, attrs, req.now_ms).unwrap_or(default_rule);
        (r, policy.rules.get(r).map_or(all, |x| x.route.residency))
    };
    let values = || {
        req.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, v)| v.split(|&b| b == b','))
    };
    let mut common = all;
    for (i, v) in values().enumerate() {
        if i == MAX_GEO_VALUES {
            return None; // every value is a rule lookup: a header of thousands is refused
        }
        common &= rule_of(attrs, v).1;
    }
    if common != all {
        for v in values() {
            let (r, residency) = rule_of(attrs, v);
            if residency == common {
                return Some(r);
            }
        }
        return None;
    }
    attrs.region = from_address;
    attrs.country = None;
    Some(unknown_rule)
}

/// The conditions the rule index does not cover.
fn matches_rest(rule: &Rule, a: &Attributes, now_ms: u64, policy: &Policy) -> bool {
    let c = &rule.cond;
    (c.path_prefixes.is_empty()
        || c.path_prefixes
            .iter()
            .any(|p| has_prefix(a.path, p.as_bytes())))
        && (c.percent.is_none()
            || matches!((c.percent, a.bucket), (Some((from, to)), Some(b)) if from <= b && b < to))
        && (c.time.is_none()
            || (policy.uses_time && c.time.as_ref().is_some_and(|t| t.contains(now_ms))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tables_are_per_rule_built_on_first_use_and_dropped_on_swap() {
        let policy = |targets: &str| {
            let json = format!(
                r#"{{ "stacks": [ {{ "name": "a", "region": "x" }}, {{ "name": "b", "region": "x" }}, {{ "name": "c", "region": "x" }} ],
                     "rules": [ {{ "id": "api", "match": {{ "path_prefixes": ["/api"] }}, "route": {{ "targets": [ {{ "stack": "a" }} ] }} }} ],
                     "default": {{ "targets": [{targets}], "balance": {{ "mode": "hash", "key": {{ "header": "x-user" }} }} }} }}"#
            );
            Arc::new(crate::policy::validate_json(&json).unwrap().policy)
        };
        let headers: [(&[u8], &[u8]); 2] = [(b":path", b"/"), (b"x-user", b"u1")];
        let req = Request {
            headers: &headers,
            source: None,
            now_ms: 0,
        };
        let mut r = Router::new(policy(r#"{ "stack": "a" }, { "stack": "b" }"#), None);
        assert!(r.hash_tables.iter().all(Option::is_none), "built lazily");
        let d = r.decide(&req);
        assert!(matches!(
            d.outcome,
            Outcome::Stack {
                how: How::Hashed,
                ..
            }
        ));
        assert!(r.hash_tables[0].is_none(), "the weighted rule has none");
        assert!(r.hash_tables[1].is_some(), "the hashing rule built its own");

        // A new policy brings new targets: the old table must not answer for them.
        r.set_policy(policy(r#"{ "stack": "c" }"#));
        assert!(r.hash_tables.iter().all(Option::is_none));
        let d = r.decide(&req);
        assert_eq!(
            d.outcome,
            Outcome::Stack {
                id: 2,
                how: How::Hashed
            }
        );
    }

    #[test]
    fn verified_cookie_table_matches_whole_values_only() {
        let mut t = VerifiedCookies::default();
        assert!(t.get(b"v1.k1.blue.1.100.TAILTAILTAILTAIL").is_none());
        t.insert(b"v1.k1.blue.1.100.TAILTAILTAILTAIL", 0, 100);
        let hit = t
            .get(b"v1.k1.blue.1.100.TAILTAILTAILTAIL")
            .and_then(|s| s.as_ref())
            .map(|v| (v.stack, v.expiry_s));
        assert_eq!(hit, Some((0, 100)));
        // Same last 16 bytes (same slot, same tag), different cookie: never a hit.
        assert!(t.get(b"v1.k1.green.1.100.TAILTAILTAILTAIL").is_none());
        // Values shorter than 16 bytes hash whole.
        t.insert(b"short", 1, 7);
        assert!(t.get(b"short").is_some() && t.get(b"shorT").is_none());
    }

    #[test]
    fn verified_cookie_table_is_bounded_and_replaces_on_collision() {
        let mut t = VerifiedCookies::default();
        let cookie = |i: u32| format!("v1.k1.blue.1.100.{i:016}").into_bytes();
        for i in 0..20_000 {
            t.insert(&cookie(i), 0, 100);
        }
        assert_eq!(t.slots.len(), VERIFIED_SLOTS);
        let held = (0..20_000).filter(|&i| t.get(&cookie(i)).is_some()).count();
        assert!(held <= VERIFIED_SLOTS, "{held}");
        // The most recent insert always survives.
        assert!(t.get(&cookie(19_999)).is_some());
        // A slot taken over by another cookie no longer answers for the old one.
        let slot = |v: &[u8]| VerifiedCookies::tag(v) as usize & (VERIFIED_SLOTS - 1);
        let a = cookie(19_999);
        let b = (0..100_000u32)
            .map(|i| cookie(100_000 + i))
            .find(|c| slot(c) == slot(&a))
            .expect("some cookie shares the slot");
        t.insert(&b, 1, 100);
        assert!(t.get(&a).is_none());
        assert!(t.get(&b).is_some());
    }
}
