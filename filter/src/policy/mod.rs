//! Routing policy: the JSON document operators write, its validation, and the compiled
//! form the request path evaluates.
//!
//! Parse, then compile: serde DTOs with `deny_unknown_fields` (the `switchyard-policy-doc`
//! crate, re-exported here) are turned into a validated [`Policy`]. Every problem is
//! reported with the field path that is wrong (`rules[2].route.targets[0].stack`);
//! nothing is dropped silently. The control service validates with this same code, so a
//! policy it accepts is exactly one the filter accepts.
//!
//! This module only declares the parts and re-exports their public surface:
//! - `parse`: the JSON shape (unknown fields, wrong types), checked natively against
//!   the table in `shape` so that every structural problem is reported;
//! - `compile`: the sections, checked and compiled in one error-collecting pass
//!   (`check` holds the context and the shared name checks);
//! - `compiled`, `condition`, `ids`: the compiled policy, plain read-only data;
//! - `index`: the rule index; `inputs`: the request-scan plan;
//! - `kpi`: compiled business outcomes and their matchers.
//!
//! The policy depends on no request-path module (classify, balance, affinity, router):
//! they depend on it.

mod check;
mod compile;
mod compiled;
mod condition;
mod ids;
mod index;
mod inputs;
mod kpi;
mod parse;
#[cfg(not(target_arch = "wasm32"))]
mod shape;

pub use switchyard_policy_doc::*;

pub use check::{FieldIssue, Invalid};
pub use compile::{compile, Validated};
pub use compiled::{
    AffinityCfg, AmbiguousGeo, Balance, ChannelDef, Classification, LocalReply, Policy, Queue,
    Route, Rule, Stack, Target, DEFAULT_RULE_ID,
};
pub use condition::Condition;
pub use ids::{mask_of, ChannelId, CohortId, RegionId, StackId, MAX_STACKS, MAX_TARGETS};
pub use index::RuleIndex;
pub use inputs::{Inputs, KeySlot, MAX_UA_SUBSTRINGS};
pub use kpi::{request_mask, response_mask, Kpi, StatusMatch, MAX_KPIS};

/// Parse and validate a policy document.
pub fn validate_json(json: &str) -> Result<Validated, Invalid> {
    validate_bytes(json.as_bytes())
}

/// Parse and validate a policy document given as bytes (plugin configuration).
pub fn validate_bytes(json: &[u8]) -> Result<Validated, Invalid> {
    parse::validate(json, compile)
}
