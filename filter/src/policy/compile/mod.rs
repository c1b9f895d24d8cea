//! Compilation: turns a parsed [`PolicyDoc`] into the compiled [`Policy`], one section at
//! a time, collecting every error and warning with its field path in one [`Ctx`]. This
//! module only orders the sections; each child decides one of them. It never returns a
//! partly valid policy: any error rejects the whole document.

mod classify;
mod env;
mod inputs;
mod kpis;
mod matches;
mod queue;
mod regions;
mod routes;
mod rules;
mod settings;
mod stacks;

use switchyard_policy_doc::{BalanceDoc, HashKeyDoc, KeyDoc, PolicyDoc, RouteDoc};

use crate::policy::check::{Ctx, FieldIssue, Invalid};
use crate::policy::compiled::{Balance, Policy, Rule, DEFAULT_RULE_ID};
use crate::policy::condition::Condition;
use crate::policy::index::RuleIndex;

use env::Env;
use regions::Regions;

/// A policy that passed validation, with warnings (e.g. unreachable rules).
#[derive(Debug)]
pub struct Validated {
    pub policy: Policy,
    pub warnings: Vec<FieldIssue>,
}

/// Compile a parsed document, collecting every error.
pub fn compile(mut doc: PolicyDoc) -> Result<Validated, Invalid> {
    lower_case_headers(&mut doc);
    let doc = &doc;
    let mut ctx = Ctx::default();

    // Regions are interned from stacks and geo tables (in that order); matches and
    // residency lists only name them.
    let mut regions = Regions::default();
    let (stacks, stack_index) = stacks::stacks(&mut ctx, doc, &mut regions);
    let c = &doc.classify;
    let (mut classification, channels) = classify::classification(&mut ctx, c, &mut regions);
    let affinity = settings::affinity(&mut ctx, &doc.affinity);
    let breaker = settings::breaker(&mut ctx, &doc.breaker);
    let kpis = kpis::kpis(&mut ctx, &doc.kpis);

    // Rules: ids, then compile in priority order; the default rule last.
    rules::check_ids(&mut ctx, doc);
    let cohorts = rules::cohorts(doc);
    let env = Env {
        stacks: &stacks,
        stack_index: &stack_index,
        regions: &regions,
        channels: &channels,
        cohorts: &cohorts,
        has_user_key: !c.user_key.is_empty(),
        affinity_ttl_s: doc.affinity.ttl_s,
    };
    let mut rules = Vec::with_capacity(doc.rules.len() + 1);
    let mut uses_time = false;
    for i in rules::order(doc) {
        let r = &doc.rules[i];
        let path = format!("rules[{i}]");
        let cond = matches::condition(&mut ctx, &env, &format!("{path}.match"), &r.matches);
        uses_time |= cond.time.is_some();
        let route = routes::route(&mut ctx, &env, &format!("{path}.route"), &r.route);
        rules.push((
            i,
            Rule {
                id: r.id.clone(),
                cond,
                route,
            },
        ));
    }
    let route = routes::route(&mut ctx, &env, "default", &doc.default);
    rules.push((
        usize::MAX,
        Rule {
            id: DEFAULT_RULE_ID.into(),
            cond: Condition::default(),
            route,
        },
    ));
    rules::warn_unreachable(&mut ctx, &rules);
    if c.geo.header.is_some()
        && c.geo.ambiguous.is_none()
        && rules
            .iter()
            .any(|(_, r)| r.route.residency_regions.is_some())
    {
        // A repeated geo header (an edge that appends instead of overwriting) would
        // otherwise make the region unknown and let the request leave its residency.
        ctx.warn(
            "classify.geo.ambiguous",
            "routes have residency, but a geo header with more than one value is not decided: its region is unknown, and the request can take the default rule out of its region; set `ambiguous` (`most_restrictive`, `reject`, `assume` or `unknown`)",
        );
    }

    if regions.len() > usize::from(u16::MAX) {
        ctx.err("$", "too many regions");
    }

    // The request scan is planned only for a policy that is otherwise valid.
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

    classification.inputs = inputs::plan_inputs(
        &mut ctx,
        c,
        &affinity.cookie,
        &mut classification.channels,
        &mut rules,
    );
    let conds: Vec<&Condition> = rules.iter().map(|(_, r)| &r.cond).collect();
    let index = RuleIndex::build(&conds, regions.len(), channels.len(), cohorts.len());
    if !ctx.errors.is_empty() {
        return Err(Invalid { errors: ctx.errors });
    }
    Ok(Validated {
        policy: Policy {
            name: doc.name.clone(),
            stacks,
            regions: regions.into_names(),
            channels,
            cohorts,
            classify: classification,
            affinity,
            breaker,
            rules: rules.into_iter().map(|(_, r)| r).collect(),
            index,
            debug_header: doc.debug_header,
            kpis,
            uses_time,
            uses_client_ip,
            stack_index,
        },
        warnings: ctx.warnings,
    })
}

/// Lower-case every header name the document reads, in place: header names are
/// case-insensitive and Envoy hands the filter lower-case names, so a policy may name
/// `CloudFront-Viewer-Country`. Errors still quote the name as written but lower-cased;
/// a pseudo-header or an invalid name stays invalid.
fn lower_case_headers(doc: &mut PolicyDoc) {
    fn lower(h: &mut str) {
        h.make_ascii_lowercase();
    }
    fn key(k: &mut KeyDoc) {
        if let KeyDoc::Header(h) = k {
            lower(h);
        }
    }
    fn route(r: &mut RouteDoc) {
        if let BalanceDoc::Hash {
            key: HashKeyDoc::Header(h),
        } = &mut r.balance
        {
            lower(h);
        }
    }
    let c = &mut doc.classify;
    c.geo.header.iter_mut().for_each(|h| lower(h));
    c.cohort_header.iter_mut().for_each(|h| lower(h));
    c.channels
        .iter_mut()
        .for_each(|ch| ch.headers.iter_mut().for_each(|h| lower(h)));
    c.user_key.iter_mut().for_each(key);
    doc.rules.iter_mut().for_each(|r| route(&mut r.route));
    route(&mut doc.default);
}
