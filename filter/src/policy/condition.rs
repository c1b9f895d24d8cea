//! The compiled match of a rule: what a request must look like for the rule to apply.
//! Plain data read by the rule index and the request path; it decides nothing by itself.

use crate::schedule::Schedule;

use super::ids::{ChannelId, CohortId, RegionId};

/// A compiled match. An empty list admits every value of its dimension.
#[derive(Debug, Default)]
pub struct Condition {
    pub regions: Vec<RegionId>,
    /// Upper-case ISO codes.
    pub countries: Vec<[u8; 2]>,
    pub channels: Vec<ChannelId>,
    pub cohorts: Vec<CohortId>,
    pub path_prefixes: Vec<String>,
    /// Upper-case.
    pub methods: Vec<String>,
    pub time: Option<Schedule>,
    /// Basis points: from ≤ bucket < to, bucket in 0..10_000.
    pub percent: Option<(u16, u16)>,
}
