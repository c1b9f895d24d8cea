//! Plans the request scan once every section is compiled: gives every header and cookie
//! the policy reads a slot and every user-agent substring a bit, and points channels and
//! hash keys at them. Decides slots only; the checks on the names were done where the
//! names were declared.

use switchyard_policy_doc::{ClassifyDoc, HashKeyDoc};

use crate::policy::check::Ctx;
use crate::policy::compiled::{Balance, ChannelDef, Rule};
use crate::policy::inputs::{Inputs, KeySlot, MAX_UA_SUBSTRINGS};

/// Give every header and cookie the policy reads a slot of the request scan, and every
/// user-agent substring a bit.
pub(super) fn plan_inputs(
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
        if let Balance::Hash { key, slot } = &mut r.route.balance {
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
