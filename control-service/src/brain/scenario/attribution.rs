//! Labelled attribution cases: generated traces, each with the event that truly caused
//! its fault (or none), to measure how often an incident names the right deployment
//! (issue 10, "Measure": precision ≥ 90 %, recall ≥ 99 %). The generator and the
//! labelling rules are documented in `docs/detection.md` ("Attribution cases").
//!
//! A case is a 4-hour trace of 1-minute windows on a weekday, 08:00-12:00, so every
//! stack has two hours of normal traffic before anything happens. The case's kind
//! decides the events and the fault; the seed decides everything else (stacks, times,
//! magnitudes, noise). The same `(seed, n)` always yields the same cases.

use std::collections::{BTreeMap, BTreeSet};

use super::super::clock::UnixMs;
use super::super::detection::{DetectorConfig, StackInfo};
use super::super::events::{Event, EventKind as K, Scope};
use super::super::incident::{IncidentConfig, IncidentEngine, IncidentError, Phase};
use super::{
    healthy, Expect, Profile, Rng, Sample, Trace, TraceWindow, DAY, FORMAT, HOUR, MIN,
    SCENARIO_EPOCH,
};
use crate::brain::detection::Slo;

/// Seed of the development half of the set (the rules were written looking at it).
pub const DEV_SEED: u64 = 0x00A7_71B0_0001;
/// Seed of the held-out half (measured, never tuned on).
pub const HELD_OUT_SEED: u64 = 0x00A7_71B0_0002;

/// What a case is made of. The label follows from the kind (see each variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CaseKind {
    /// A deployment on a stack, its fault on that stack 0-25 min later (a quarter of
    /// them: a new canary stack that is bad from its first window). Cause: the deployment.
    DeployFault,
    /// As `DeployFault`, plus 1-3 deployments on other stacks within 15 min of the
    /// onset. Cause: the deployment on the faulty stack.
    NeighbourDeploys,
    /// Two deployments on the faulty stack: a benign one 15-29 min before the onset and
    /// the faulty one 0-8 min before. Cause: the later one.
    TwoDeploys,
    /// A deployment on the stack 3-15 min *after* the onset (a hotfix attempt); half of
    /// them with a faulty deployment before the onset. Cause: that one, or none.
    HotfixAfterOnset,
    /// A fault with no deployment on its stack (half of them: a deployment on another
    /// stack of the group within 10 min). Cause: none.
    FaultNoDeploy,
    /// A benign deployment on the stack 20-90 min before an unrelated fault. Cause: none
    /// (a coincidence inside the lookback is indistinguishable from a slow effect).
    UnrelatedFault,
    /// Every stack of the group degrades together (a shared dependency); one of them
    /// had a deployment 0-10 min before. Cause: none.
    SharedDependency,
    /// 1-3 deployments (some a healthy canary), no fault. Cause: none.
    DecoyOnly,
    /// An announced campaign (2-6× traffic, latency and conversion up) on a segment or
    /// everything, a deployment in scope shortly before it, no fault. Cause: none.
    Campaign,
    /// A campaign on the web segment and, during it, a deployment fault on a web stack.
    /// Cause: the deployment.
    CampaignFault,
    /// Maintenance on a stack degrades it (errors) inside the window; a deployment on
    /// it 0-15 min before the maintenance. Cause: none (the maintenance explains it).
    Maintenance,
    /// A deployment scoped to a segment (`eu`, or the web stacks' `default`) and a
    /// fault on one stack of that segment. Cause: the deployment.
    SegmentDeploy,
}

impl CaseKind {
    /// Cases per 100, in order.
    pub const MIX: [(CaseKind, u32); 12] = [
        (CaseKind::DeployFault, 20),
        (CaseKind::NeighbourDeploys, 8),
        (CaseKind::TwoDeploys, 8),
        (CaseKind::HotfixAfterOnset, 8),
        (CaseKind::FaultNoDeploy, 10),
        (CaseKind::UnrelatedFault, 10),
        (CaseKind::SharedDependency, 8),
        (CaseKind::DecoyOnly, 8),
        (CaseKind::Campaign, 6),
        (CaseKind::CampaignFault, 4),
        (CaseKind::Maintenance, 6),
        (CaseKind::SegmentDeploy, 4),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CaseKind::DeployFault => "deploy_fault",
            CaseKind::NeighbourDeploys => "neighbour_deploys",
            CaseKind::TwoDeploys => "two_deploys",
            CaseKind::HotfixAfterOnset => "hotfix_after_onset",
            CaseKind::FaultNoDeploy => "fault_no_deploy",
            CaseKind::UnrelatedFault => "unrelated_fault",
            CaseKind::SharedDependency => "shared_dependency",
            CaseKind::DecoyOnly => "decoy_only",
            CaseKind::Campaign => "campaign",
            CaseKind::CampaignFault => "campaign_fault",
            CaseKind::Maintenance => "maintenance",
            CaseKind::SegmentDeploy => "segment_deploy",
        }
    }
}

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Error rate up 10-60× (0.4-2.4 %).
    Errors,
    /// p99 up 1.6-2.5× at once (p50 up 10-40 %), or a slow burn (p99 +3-6 ms a minute).
    Latency,
    /// Orders per request down to 45-70 % with healthy infrastructure.
    KpiDrop,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Errors => "errors",
            FaultKind::Latency => "latency",
            FaultKind::KpiDrop => "kpi_drop",
        }
    }
}

/// The fault injected into a case.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    pub stacks: Vec<String>,
    pub from_ms: UnixMs,
    pub to_ms: UnixMs,
    /// Multiplier (errors, p99 step, KPI), or ms per minute for a slow burn.
    pub magnitude: f64,
    pub slow_burn: bool,
}

/// One labelled case.
#[derive(Debug, Clone)]
pub struct Case {
    /// `<kind>-<index>`, unique within a seed.
    pub id: String,
    pub kind: CaseKind,
    /// The event that caused the fault (a deployment id), or `None`.
    pub cause: Option<String>,
    pub fault: Option<Fault>,
    pub trace: Trace,
}

/// How noisy a case's stacks are.
#[derive(Debug, Clone, Copy)]
struct Noise {
    /// Relative sd of the request volume per window.
    volume: f64,
    /// Relative sd of the latency percentiles per window.
    latency: f64,
}

fn sample(rng: &mut Rng, p: &Profile, window_ms: u64, n: Noise) -> Sample {
    let secs = window_ms as f64 / 1_000.0;
    let wobble = (1.0 + n.volume * rng.normal()).max(0.0);
    let req = rng.poisson(p.rps * secs * wobble);
    let err = rng.poisson(req as f64 * p.err_rate).min(req);
    let orders = rng.poisson(req as f64 * p.orders_per_req);
    let j = (1.0 + n.latency * rng.normal()).max(0.5);
    let round = |v: f64| ((v * 10.0).round() / 10.0).max(0.1);
    let mut kpi = BTreeMap::new();
    kpi.insert("orders".to_string(), orders);
    Sample {
        req,
        err,
        p50: round(p.p50 * j),
        p99: round(p.p99 * j).max(round(p.p50 * j)),
        hist: None,
        kpi,
        sat: Some(((p.sat + 0.02 * rng.normal()).clamp(0.0, 1.0) * 1_000.0).round() / 1_000.0),
        brk: p.brk,
    }
}

fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.unit()
}

fn minutes(rng: &mut Rng, lo: f64, hi: f64) -> u64 {
    (uniform(rng, lo, hi) * MIN as f64).round() as u64
}

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> &'a T {
    &v[(rng.next_u64() % v.len() as u64) as usize]
}

fn deployment(id: &str, scope: Scope, from: UnixMs, rng: &mut Rng) -> Event {
    Event {
        id: id.into(),
        kind: K::Deployment,
        scope,
        from_ms: from,
        to_ms: from + minutes(rng, 1.0, 5.0),
        description: format!("{id} (generated)"),
        actor: "ci".into(),
    }
}

fn on(stack: &str) -> Scope {
    Scope::Stacks(vec![stack.to_string()])
}

/// Builds one case.
struct Builder {
    rng: Rng,
    start: UnixMs,
    web: Vec<String>,
    peak_web: f64,
    peak_eu: f64,
    noise: Noise,
    events: Vec<Event>,
    fault: Option<Fault>,
    /// A canary stack: (starts at, share of the web traffic, bad).
    canary: Option<(UnixMs, f64)>,
    /// Campaign effect on these stacks: (from, to, traffic multiplier).
    campaign: Option<(UnixMs, UnixMs, Vec<String>, f64)>,
    versions: BTreeSet<u32>,
}

impl Builder {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        // A Tuesday, Wednesday or Thursday, 08:00.
        let day = 1 + rng.next_u64() % 3;
        let start = SCENARIO_EPOCH + day * DAY + 8 * HOUR;
        let mut web = vec!["blue".to_string(), "green".to_string()];
        if rng.unit() < 0.3 {
            web.push("red".into());
        }
        let peak_web = uniform(&mut rng, 40.0, 150.0);
        let peak_eu = uniform(&mut rng, 25.0, 60.0);
        let noise = Noise {
            volume: uniform(&mut rng, 0.02, 0.08),
            latency: uniform(&mut rng, 0.03, 0.08),
        };
        Self {
            rng,
            start,
            web,
            peak_web,
            peak_eu,
            noise,
            events: Vec::new(),
            fault: None,
            canary: None,
            campaign: None,
            versions: BTreeSet::new(),
        }
    }

    fn all_stacks(&self) -> Vec<String> {
        let mut v = self.web.clone();
        v.push("eu".into());
        v
    }

    /// A fresh deployment id on `stack` (`deploy-<stack>-<version>`).
    fn deploy_id(&mut self, stack: &str) -> String {
        loop {
            let v = 10 + (self.rng.next_u64() % 90) as u32;
            if self.versions.insert(v) {
                return format!("deploy-{stack}-{v}");
            }
        }
    }

    fn deploy(&mut self, stack: &str, at: UnixMs) -> String {
        let id = self.deploy_id(stack);
        let e = deployment(&id, on(stack), at, &mut self.rng);
        self.events.push(e);
        id
    }

    fn fault_kind(&mut self) -> FaultKind {
        *pick(
            &mut self.rng,
            &[FaultKind::Errors, FaultKind::Latency, FaultKind::KpiDrop],
        )
    }

    /// A fault on `stacks` from `at` to the end of the trace (or `until`).
    fn fault(&mut self, kind: FaultKind, stacks: Vec<String>, at: UnixMs, until: Option<UnixMs>) {
        let (magnitude, slow_burn) = match kind {
            FaultKind::Errors => (uniform(&mut self.rng, 10.0, 60.0), false),
            FaultKind::Latency if self.rng.unit() < 0.25 => {
                (uniform(&mut self.rng, 3.0, 6.0), true)
            }
            FaultKind::Latency => (uniform(&mut self.rng, 1.6, 2.5), false),
            FaultKind::KpiDrop => (uniform(&mut self.rng, 0.45, 0.7), false),
        };
        self.fault = Some(Fault {
            kind,
            stacks,
            from_ms: at,
            to_ms: until.unwrap_or(self.start + 4 * HOUR),
            magnitude,
            slow_burn,
        });
    }

    /// The onset of the case's main fault: 10:00-11:30.
    fn onset(&mut self) -> UnixMs {
        self.start + 2 * HOUR + minutes(&mut self.rng, 0.0, 90.0)
    }

    fn any_stack(&mut self) -> String {
        let all = self.all_stacks();
        pick(&mut self.rng, &all).clone()
    }

    fn web_stack(&mut self) -> String {
        let web = self.web.clone();
        pick(&mut self.rng, &web).clone()
    }

    fn other_web_stack(&mut self, not: &str) -> String {
        let web: Vec<String> = self.web.iter().filter(|s| *s != not).cloned().collect();
        pick(&mut self.rng, &web).clone()
    }

    /// Delay from a faulty deployment to its fault's onset: 0-10 min, one in five 10-25.
    fn effect_delay(&mut self) -> u64 {
        if self.rng.unit() < 0.8 {
            minutes(&mut self.rng, 0.0, 10.0)
        } else {
            minutes(&mut self.rng, 10.0, 25.0)
        }
    }

    /// Build the case's events and fault; returns the label.
    fn compose(&mut self, kind: CaseKind) -> Option<String> {
        let t = self.onset();
        match kind {
            CaseKind::DeployFault => {
                if self.rng.unit() < 0.25 {
                    // A new canary, bad from its first minutes.
                    let at = t;
                    let id = self.deploy_id("canary");
                    let e = deployment(
                        &id,
                        on("canary"),
                        at - minutes(&mut self.rng, 0.0, 2.0),
                        &mut self.rng,
                    );
                    self.events.push(e);
                    let share = uniform(&mut self.rng, 0.05, 0.2);
                    self.canary = Some((at, share));
                    let k = self.fault_kind();
                    self.fault(k, vec!["canary".into()], at, None);
                    return Some(id);
                }
                let s = self.any_stack();
                let delay = self.effect_delay();
                let id = self.deploy(&s, t - delay);
                let k = self.fault_kind();
                self.fault(k, vec![s], t, None);
                Some(id)
            }
            CaseKind::NeighbourDeploys => {
                let s = self.any_stack();
                let delay = self.effect_delay();
                let id = self.deploy(&s, t - delay);
                let n = 1 + self.rng.next_u64() % 3;
                for _ in 0..n {
                    let others: Vec<String> =
                        self.all_stacks().into_iter().filter(|x| *x != s).collect();
                    let o = pick(&mut self.rng, &others).clone();
                    let at = t + minutes(&mut self.rng, 0.0, 25.0) - 15 * MIN;
                    self.deploy(&o, at);
                }
                let k = self.fault_kind();
                self.fault(k, vec![s], t, None);
                Some(id)
            }
            CaseKind::TwoDeploys => {
                let s = self.any_stack();
                let early = minutes(&mut self.rng, 15.0, 29.0);
                self.deploy(&s, t - early);
                let late = minutes(&mut self.rng, 0.0, 8.0);
                let id = self.deploy(&s, t - late);
                let k = self.fault_kind();
                self.fault(k, vec![s], t, None);
                Some(id)
            }
            CaseKind::HotfixAfterOnset => {
                let s = self.any_stack();
                let cause = if self.rng.unit() < 0.5 {
                    let delay = minutes(&mut self.rng, 0.0, 10.0);
                    Some(self.deploy(&s, t - delay))
                } else {
                    None
                };
                let after = minutes(&mut self.rng, 3.0, 15.0);
                self.deploy(&s, t + after);
                let k = self.fault_kind();
                self.fault(k, vec![s], t, None);
                cause
            }
            CaseKind::FaultNoDeploy => {
                let s = self.web_stack();
                if self.rng.unit() < 0.5 {
                    let o = self.other_web_stack(&s);
                    let at = t + minutes(&mut self.rng, 0.0, 20.0) - 10 * MIN;
                    self.deploy(&o, at);
                }
                let k = self.fault_kind();
                self.fault(k, vec![s], t, None);
                None
            }
            CaseKind::UnrelatedFault => {
                let s = self.any_stack();
                let gap = minutes(&mut self.rng, 20.0, 90.0);
                self.deploy(&s, t - gap);
                let k = self.fault_kind();
                self.fault(k, vec![s], t, None);
                None
            }
            CaseKind::SharedDependency => {
                let s = self.web_stack();
                let before = minutes(&mut self.rng, 0.0, 10.0);
                self.deploy(&s, t - before);
                let k = *pick(&mut self.rng, &[FaultKind::Errors, FaultKind::Latency]);
                let web = self.web.clone();
                self.fault(k, web, t, None);
                None
            }
            CaseKind::DecoyOnly => {
                let n = 1 + self.rng.next_u64() % 3;
                for _ in 0..n {
                    let at = self.onset();
                    if self.canary.is_none() && self.rng.unit() < 0.25 {
                        let id = self.deploy_id("canary");
                        let e = deployment(&id, on("canary"), at, &mut self.rng);
                        self.events.push(e);
                        let share = uniform(&mut self.rng, 0.05, 0.2);
                        self.canary = Some((at, share));
                    } else {
                        let s = self.any_stack();
                        self.deploy(&s, at);
                    }
                }
                None
            }
            CaseKind::Campaign => {
                let (scope, stacks) = match self.rng.next_u64() % 3 {
                    0 => (Scope::Segment("eu".into()), vec!["eu".to_string()]),
                    1 => (Scope::Segment("default".into()), self.web.clone()),
                    _ => (Scope::All, self.all_stacks()),
                };
                let to = t + minutes(&mut self.rng, 60.0, 120.0);
                let mult = uniform(&mut self.rng, 2.0, 6.0);
                let id = format!("campaign-{}", 1 + self.rng.next_u64() % 99);
                self.events.push(Event {
                    id,
                    kind: K::Campaign,
                    scope,
                    from_ms: t,
                    to_ms: to,
                    description: "announced campaign (generated)".into(),
                    actor: "marketing".into(),
                });
                let s = pick(&mut self.rng, &stacks).clone();
                let before = minutes(&mut self.rng, 0.0, 10.0);
                self.deploy(&s, t - before);
                self.campaign = Some((t, to, stacks, mult));
                None
            }
            CaseKind::CampaignFault => {
                let from = self.start + 2 * HOUR;
                let to = from + 2 * HOUR;
                let mult = uniform(&mut self.rng, 2.0, 4.0);
                self.events.push(Event {
                    id: format!("campaign-{}", 1 + self.rng.next_u64() % 99),
                    kind: K::Campaign,
                    scope: Scope::Segment("default".into()),
                    from_ms: from,
                    to_ms: to,
                    description: "announced campaign on the web segment (generated)".into(),
                    actor: "marketing".into(),
                });
                self.campaign = Some((from, to, self.web.clone(), mult));
                let s = self.web_stack();
                let t = from + minutes(&mut self.rng, 20.0, 80.0);
                let delay = self.effect_delay();
                let id = self.deploy(&s, t - delay);
                let k = self.fault_kind();
                self.fault(k, vec![s], t, None);
                Some(id)
            }
            CaseKind::Maintenance => {
                let s = self.any_stack();
                let len = minutes(&mut self.rng, 20.0, 40.0);
                self.events.push(Event {
                    id: format!("maint-{s}-{}", 1 + self.rng.next_u64() % 99),
                    kind: K::Maintenance,
                    scope: on(&s),
                    from_ms: t,
                    to_ms: t + len,
                    description: "maintenance (generated)".into(),
                    actor: "ops".into(),
                });
                let before = minutes(&mut self.rng, 0.0, 15.0);
                self.deploy(&s, t - before);
                self.fault(
                    FaultKind::Errors,
                    vec![s],
                    t + 2 * MIN,
                    Some(t + len - 2 * MIN),
                );
                None
            }
            CaseKind::SegmentDeploy => {
                let (segment, s) = if self.rng.unit() < 0.5 {
                    ("eu", "eu".to_string())
                } else {
                    ("default", self.web_stack())
                };
                let delay = self.effect_delay();
                let id = format!("deploy-{segment}-{}", 10 + self.rng.next_u64() % 90);
                let e = deployment(
                    &id,
                    Scope::Segment(segment.into()),
                    t - delay,
                    &mut self.rng,
                );
                self.events.push(e);
                let k = self.fault_kind();
                self.fault(k, vec![s], t, None);
                Some(id)
            }
        }
    }

    fn profile(&self, stack: &str, t: UnixMs) -> Option<Profile> {
        let eu = stack == "eu";
        let mut p = healthy(if eu { self.peak_eu } else { self.peak_web }, t);
        if let Some((from, share)) = self.canary {
            if stack == "canary" {
                if t < from {
                    return None;
                }
                p.rps *= self.web.len() as f64 * share;
            } else if !eu && t >= from {
                p.rps *= 1.0 - share;
            }
        } else if stack == "canary" {
            return None;
        }
        if let Some((from, to, stacks, mult)) = &self.campaign {
            if t >= *from && t < *to && stacks.iter().any(|s| s == stack) {
                p.rps *= mult;
                p.p50 *= 1.15;
                p.p99 *= 1.25;
                p.orders_per_req *= 1.3;
                p.sat = (p.sat * 1.3).min(0.8);
            }
        }
        if let Some(f) = &self.fault {
            if t >= f.from_ms && t < f.to_ms && f.stacks.iter().any(|s| s == stack) {
                match f.kind {
                    FaultKind::Errors => p.err_rate *= f.magnitude,
                    FaultKind::Latency if f.slow_burn => {
                        let mins = (t - f.from_ms) as f64 / MIN as f64;
                        p.p99 += f.magnitude * mins;
                        p.p50 += f.magnitude * mins / 8.0;
                    }
                    FaultKind::Latency => {
                        p.p99 *= f.magnitude;
                        p.p50 *= 1.0 + (f.magnitude - 1.0) / 4.0;
                    }
                    FaultKind::KpiDrop => p.orders_per_req *= f.magnitude,
                }
            }
        }
        Some(p)
    }

    fn finish(mut self, id: String, kind: CaseKind, cause: Option<String>) -> Case {
        let mut stacks: Vec<StackInfo> = self
            .web
            .iter()
            .map(|n| self.info(n, "web", "default", self.peak_web))
            .collect();
        if self.canary.is_some() {
            stacks.push(self.info("canary", "web", "default", self.peak_web));
        }
        stacks.push(self.info("eu", "eu", "eu", self.peak_eu));
        let mut windows = Vec::new();
        let mut t = self.start;
        while t < self.start + 4 * HOUR {
            let mut w = TraceWindow {
                t,
                stacks: BTreeMap::new(),
            };
            for st in &stacks {
                if let Some(p) = self.profile(&st.name, t) {
                    let s = sample(&mut self.rng, &p, MIN, self.noise);
                    w.stacks.insert(st.name.clone(), s);
                }
            }
            windows.push(w);
            t += MIN;
        }
        self.events
            .sort_by(|a, b| a.from_ms.cmp(&b.from_ms).then(a.id.cmp(&b.id)));
        let expect = Expect {
            fault_at_ms: self.fault.as_ref().map(|f| f.from_ms),
            suspect_event: cause.clone(),
            ..Expect::default()
        };
        let trace = Trace {
            format: FORMAT.into(),
            name: id.clone(),
            description: format!(
                "Attribution case {id} ({}); cause: {}",
                kind.as_str(),
                cause.as_deref().unwrap_or("none")
            ),
            window_ms: MIN,
            start_ms: self.start,
            stacks,
            slo: Slo::default(),
            events: self.events,
            breach_at_ms: None,
            expect,
            windows,
        };
        Case {
            id,
            kind,
            cause,
            fault: self.fault,
            trace,
        }
    }

    fn info(&self, name: &str, group: &str, segment: &str, peak: f64) -> StackInfo {
        StackInfo {
            name: name.into(),
            group: group.into(),
            segments: vec![segment.into()],
            rules: Vec::new(),
            capacity_rps: Some(2.5 * peak),
        }
    }
}

/// `n` cases from `seed`, the kinds in the proportions of [`CaseKind::MIX`] (every 100
/// consecutive indexes hold the full mix). Deterministic.
pub fn cases(seed: u64, n: usize) -> Vec<Case> {
    let slots: Vec<CaseKind> = CaseKind::MIX
        .iter()
        .flat_map(|(k, w)| std::iter::repeat_n(*k, *w as usize))
        .collect();
    (0..n)
        .map(|i| {
            // Spread the kinds along the index (37 is prime to 100), so a short
            // prefix is a mix too.
            let kind = slots[(i * 37) % slots.len()];
            let case_seed = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(i as u64);
            let mut b = Builder::new(case_seed);
            let cause = b.compose(kind);
            b.finish(format!("{}-{i}", kind.as_str()), kind, cause)
        })
        .collect()
}

/// One incident of a replayed case: its scope and the deployment it blames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributed {
    pub incident: u64,
    pub scope: String,
    pub suspect: Option<String>,
}

/// What the workflow made of a case.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Incidents that got past the persistence re-check (correlated).
    pub incidents: Vec<Attributed>,
    /// An incident on a faulty stack was correlated.
    pub detected: bool,
}

impl Outcome {
    /// Distinct deployments blamed.
    pub fn blamed(&self) -> BTreeSet<&str> {
        self.incidents
            .iter()
            .filter_map(|a| a.suspect.as_deref())
            .collect()
    }
}

/// Replay a case through the detector and the incident workflow (default
/// configurations, in memory) and collect each incident's suspect deployment: the one
/// its evidence marks as suspect (what the correlating decision names).
pub fn attribute(case: &Case) -> Result<Outcome, IncidentError> {
    let store = std::sync::Arc::new(crate::store::MemoryStore::new());
    let r = super::run_workflow(
        &case.trace,
        DetectorConfig::default(),
        IncidentConfig::default(),
        store.clone(),
    )?;
    let engine = IncidentEngine::new(store, IncidentConfig::default());
    let ids: BTreeSet<u64> = r
        .decisions
        .iter()
        .filter(|d| d.phase == Phase::Correlating)
        .map(|d| d.incident)
        .collect();
    let mut incidents = Vec::new();
    for id in ids {
        let Some(inc) = engine.get(id)? else {
            continue;
        };
        let suspect = inc
            .evidence
            .as_ref()
            .and_then(|e| e.events.iter().find(|e| e.suspect))
            .map(|e| e.id.clone());
        incidents.push(Attributed {
            incident: id,
            scope: inc.scope.clone(),
            suspect,
        });
    }
    let faulty: BTreeSet<&str> = case
        .fault
        .iter()
        .flat_map(|f| f.stacks.iter().map(String::as_str))
        .collect();
    let detected = incidents.iter().any(|a| faulty.contains(a.scope.as_str()));
    Ok(Outcome {
        incidents,
        detected,
    })
}

/// Precision and recall over a set of cases.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Score {
    pub cases: usize,
    /// Cases whose label is a deployment.
    pub caused: usize,
    /// ... of which an incident on a faulty stack was opened and correlated.
    pub caused_detected: usize,
    pub incidents: usize,
    /// Blamed the labelled deployment.
    pub true_positives: usize,
    /// Blamed another event, or blamed one where the label is none.
    pub false_positives: usize,
    /// Cases with a cause where the cause was not blamed.
    pub false_negatives: usize,
    /// Per case kind: (cases, cases right).
    pub by_kind: BTreeMap<&'static str, (usize, usize)>,
    /// Ids of the cases not right, with what was blamed.
    pub wrong: Vec<String>,
}

impl Score {
    pub fn add(&mut self, case: &Case, o: &Outcome) {
        self.cases += 1;
        self.incidents += o.incidents.len();
        let blamed = o.blamed();
        let mut right = true;
        for b in &blamed {
            if case.cause.as_deref() == Some(*b) {
                self.true_positives += 1;
            } else {
                self.false_positives += 1;
                right = false;
            }
        }
        if let Some(c) = &case.cause {
            self.caused += 1;
            if o.detected {
                self.caused_detected += 1;
            }
            if !blamed.contains(c.as_str()) {
                self.false_negatives += 1;
                right = false;
            }
        }
        let e = self.by_kind.entry(case.kind.as_str()).or_default();
        e.0 += 1;
        if right {
            e.1 += 1;
        } else {
            self.wrong.push(format!(
                "{}: cause {}, blamed {:?}, fault {}{}",
                case.id,
                case.cause.as_deref().unwrap_or("none"),
                blamed,
                case.fault.as_ref().map_or("none".into(), |f| format!(
                    "{}{} ×{:.2} on {:?} at +{} min",
                    f.kind.as_str(),
                    if f.slow_burn {
                        " (slow burn, ms/min)"
                    } else {
                        ""
                    },
                    f.magnitude,
                    f.stacks,
                    (f.from_ms - case.trace.start_ms) / MIN
                )),
                if case.cause.is_some() && !o.detected {
                    " (no incident on the faulty stack)"
                } else {
                    ""
                }
            ));
        }
    }

    /// Right blames over all blames (1 when nothing was blamed).
    pub fn precision(&self) -> f64 {
        let n = self.true_positives + self.false_positives;
        if n == 0 {
            1.0
        } else {
            self.true_positives as f64 / n as f64
        }
    }

    /// Causes blamed over all cases with a cause.
    pub fn recall(&self) -> f64 {
        if self.caused == 0 {
            1.0
        } else {
            self.true_positives as f64 / self.caused as f64
        }
    }

    /// Causes blamed over the cases with a cause whose fault opened an incident (the
    /// attribution's own recall, detection misses aside).
    pub fn recall_detected(&self) -> f64 {
        if self.caused_detected == 0 {
            1.0
        } else {
            self.true_positives as f64 / self.caused_detected as f64
        }
    }
}

/// Score `n` cases of `seed`.
pub fn measure(seed: u64, n: usize) -> Result<Score, IncidentError> {
    let mut s = Score::default();
    for c in cases(seed, n) {
        let o = attribute(&c)?;
        s.add(&c, &o);
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
