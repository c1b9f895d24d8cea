//! A rule's `route` (and the default route): targets, weights, balancing, affinity,
//! residency and the fallback. Decides the compiled [`Route`]; a target outside the
//! route's residency is an error, never silently dropped (a request that must stay in a
//! region never fails over outside it).

use switchyard_policy_doc::{BalanceDoc, HashKeyDoc, RouteDoc, TargetDoc};

use crate::policy::check::{check_header, valid_cookie_name, Ctx};
use crate::policy::compiled::{Balance, LocalReply, Route, Target};
use crate::policy::ids::{mask_of, MAX_TARGETS};

use super::env::Env;
use super::settings::MAX_AFFINITY_TTL_S;

fn target_list(
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

/// Compile the route at `path` (`rules[i].route` or `default`).
pub(super) fn route(ctx: &mut Ctx, env: &Env, path: &str, r: &RouteDoc) -> Route {
    let all = mask_of(env.stacks.len());
    let (residency, residency_regions) = match &r.residency {
        None => (all, None),
        Some(list) => {
            if list.is_empty() {
                ctx.err(format!("{path}.residency"), "must name at least one region");
            }
            let mut ids = Vec::new();
            for (i, name) in list.iter().enumerate() {
                match env.regions.get(name) {
                    Some(id) => ids.push(id),
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
    let targets = target_list(ctx, env, &format!("{path}.targets"), &r.targets, residency);
    if !targets.is_empty() && targets.iter().all(|t| t.weight == 0) {
        ctx.err(format!("{path}.targets"), "total weight is zero");
    }
    let balance = match &r.balance {
        BalanceDoc::Weighted { key } => {
            if key.is_some() {
                ctx.err(
                    format!("{path}.balance.key"),
                    "key applies only to 'hash' mode (weighted mode has no key)",
                );
            }
            Balance::Weighted
        }
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
            }
        }
    };
    if let Some(ttl) = r.affinity_ttl_s {
        if !r.affinity {
            ctx.err(
                format!("{path}.affinity_ttl_s"),
                "set only when affinity is true",
            );
        } else if ttl == 0 || ttl > MAX_AFFINITY_TTL_S {
            ctx.err(
                format!("{path}.affinity_ttl_s"),
                "must be between 1 and 2592000 (30 days)",
            );
        }
    }
    let (fallback, local, queue) = match &r.fallback {
        None => (Vec::new(), LocalReply::default(), None),
        Some(f) => {
            let fb = target_list(
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
                        reason: LocalReply::default().reason,
                        status: l.status,
                        retry_after_s: l.retry_after_s,
                        message: l
                            .message
                            .clone()
                            .unwrap_or_else(|| LocalReply::default().message),
                    }
                }
            };
            let queue = f.queue.as_ref().map(|q| {
                let path = format!("{path}.fallback.queue");
                super::queue::queue(ctx, env, &path, q, residency_regions.as_deref())
            });
            (fb, local, queue)
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
        queue,
    }
}
