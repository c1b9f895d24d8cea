//! What the sections compiled first (stacks, regions, classification, affinity) tell the
//! sections compiled after them (rule matches and routes). Read-only.

use crate::hash::NameMap;
use crate::policy::compiled::Stack;
use crate::policy::ids::StackId;

use super::regions::Regions;

pub(super) struct Env<'a> {
    pub stacks: &'a [Stack],
    pub stack_index: &'a NameMap<String, StackId>,
    pub regions: &'a Regions,
    /// Channel names by id.
    pub channels: &'a [String],
    /// Every cohort named by a rule, sorted.
    pub cohorts: &'a [String],
    pub has_user_key: bool,
    /// The policy-wide affinity TTL (a route's default).
    pub affinity_ttl_s: u64,
}
