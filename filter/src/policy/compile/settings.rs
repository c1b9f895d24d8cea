//! The `affinity` and `breaker` sections: the sticky-session cookie and the local circuit
//! breaker's thresholds. Decides whether those settings are usable; both are copied into
//! the compiled policy as written, never adjusted.

use switchyard_policy_doc::{AffinityDoc, BreakerDoc};

use crate::policy::check::{valid_cookie_name, Ctx};
use crate::policy::compiled::AffinityCfg;

/// Longest affinity TTL, policy-wide or per route (30 days).
pub(super) const MAX_AFFINITY_TTL_S: u64 = 30 * 86_400;

pub(super) fn affinity(ctx: &mut Ctx, a: &AffinityDoc) -> AffinityCfg {
    if !valid_cookie_name(&a.cookie) {
        ctx.err(
            "affinity.cookie",
            format!("'{}' is not a valid cookie name", a.cookie),
        );
    }
    if a.ttl_s == 0 || a.ttl_s > MAX_AFFINITY_TTL_S {
        ctx.err("affinity.ttl_s", "must be between 1 and 2592000 (30 days)");
    }
    AffinityCfg {
        cookie: a.cookie.clone(),
        ttl_s: a.ttl_s,
        secure: a.secure,
        epoch: a.epoch,
    }
}

pub(super) fn breaker(ctx: &mut Ctx, b: &BreakerDoc) -> BreakerDoc {
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
    b.clone()
}
