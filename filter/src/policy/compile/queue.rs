//! A route's queue fallback (degraded mode, `docs/degraded-mode.md`): decides whether the
//! intake cluster, its region and the `when` condition are acceptable and compiles them
//! into a [`Queue`]. An intake outside the route's residency is an error: an order that
//! must stay in a region is queued in that region only. Never drops a bad key.

use switchyard_policy_doc::QueueDoc;

use crate::policy::check::Ctx;
use crate::policy::compiled::Queue;
use crate::policy::ids::RegionId;

use super::env::Env;

/// Compile `queue` at `path` (`….fallback.queue`) of a route whose residency is
/// `residency` (region ids; `None`: no residency).
pub(super) fn queue(
    ctx: &mut Ctx,
    env: &Env,
    path: &str,
    doc: &QueueDoc,
    residency: Option<&[RegionId]>,
) -> Queue {
    // Messages name the field, not its value (each formatted argument costs the .wasm).
    let mut q = Queue {
        cluster: String::new(),
    };
    // The intake's region: `Some(None)` until a `region` key is seen.
    let mut region: Option<Option<RegionId>> = residency.map(|_| None);
    for (key, v) in doc {
        let b = v.as_bytes();
        let problem = match key.as_str() {
            "cluster" => {
                q.cluster.clone_from(v);
                if (1..=64).contains(&b.len())
                    && b.iter()
                        .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
                    && !env.stacks.iter().any(|s| s.name == *v || s.cluster == *v)
                {
                    continue;
                }
                "must be 1-64 characters of [A-Za-z0-9_.-], not a stack's name or cluster"
            }
            "region" => match env.regions.get(v) {
                Some(id) => {
                    region = Some(Some(id));
                    continue;
                }
                None => "unknown region",
            },
            // Only `no_eligible`: queueing when a breaker is half-open would queue its
            // trial requests too, and a half-open breaker closes only by those.
            "when" if v == "no_eligible" => continue,
            "when" => "must be `no_eligible` (the only condition so far)",
            _ => "unknown field, expected one of `cluster`, `region`, `when`",
        };
        ctx.err(format!("{path}.{key}"), problem);
    }
    if q.cluster.is_empty() {
        ctx.err(format!("{path}.cluster"), "missing field `cluster`");
    }
    match (region, residency) {
        (Some(Some(r)), Some(allowed)) if !allowed.contains(&r) => ctx.err(
            format!("{path}.region"),
            "the intake is outside this route's residency",
        ),
        (Some(None), _) if !doc.contains_key("region") => ctx.err(
            format!("{path}.region"),
            "required: this route has residency (name the intake's region)",
        ),
        _ => {}
    }
    q
}
