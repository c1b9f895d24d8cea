//! The rule index: for each value of a matched dimension, which rules admit it, so a
//! request evaluates only its candidate rules. Built once at compile time from the
//! rules' conditions; it answers "which rules may match", never "which rule matches"
//! (path, percentage and time are checked on the candidates by the router).

use super::condition::Condition;
use super::ids::{ChannelId, CohortId, RegionId};

/// Rules by attribute value: for every value of a matched dimension (region, country,
/// channel, cohort, method), a bit set of the rules whose condition on that dimension
/// admits the value (an empty list admits everything; an unknown value only those).
/// A request ANDs one row per dimension and evaluates just the surviving rules, in
/// order, on what is left (path, percentage, time): the cost no longer grows with the
/// number of rules that cannot match.
#[derive(Debug, Default)]
pub struct RuleIndex {
    /// 64-bit words per row (one bit per rule).
    pub words: usize,
    /// Rows per region id, then one for "no region".
    regions: Vec<u64>,
    /// Country codes named by some rule, sorted; rows in that order, then "other".
    countries: Vec<[u8; 2]>,
    country_rows: Vec<u64>,
    /// Rows per channel id.
    channels: Vec<u64>,
    /// Rows per cohort id, then "no cohort / one no rule names".
    cohorts: Vec<u64>,
    /// Upper-case methods named by some rule; rows in that order, then "other".
    methods: Vec<Box<[u8]>>,
    method_rows: Vec<u64>,
}

impl RuleIndex {
    /// Index the conditions of the rules, in evaluation order.
    pub(in crate::policy) fn build(
        conds: &[&Condition],
        regions: usize,
        channels: usize,
        cohorts: usize,
    ) -> Self {
        let words = conds.len().div_ceil(64).max(1);
        let mut countries: Vec<[u8; 2]> = Vec::new();
        for code in conds.iter().flat_map(|c| &c.countries) {
            if let Err(i) = countries.binary_search(code) {
                countries.insert(i, *code);
            }
        }
        let mut methods: Vec<Box<[u8]>> = Vec::new();
        for c in conds {
            for m in &c.methods {
                if !methods.iter().any(|x| **x == *m.as_bytes()) {
                    methods.push(m.as_bytes().into());
                }
            }
        }
        // `admits(rule, value)`: value `None` is the "other / unknown" row.
        fn table(
            conds: &[&Condition],
            words: usize,
            values: usize,
            admits: impl Fn(&Condition, Option<usize>) -> bool,
        ) -> Vec<u64> {
            let mut t = vec![0u64; (values + 1) * words];
            for (row, value) in (0..values).map(Some).chain([None]).enumerate() {
                for (i, c) in conds.iter().enumerate() {
                    if admits(c, value) {
                        t[row * words + i / 64] |= 1u64 << (i % 64);
                    }
                }
            }
            t
        }
        let any = |list_empty: bool, hit: bool| list_empty || hit;
        Self {
            words,
            regions: table(conds, words, regions, |c, v| {
                any(
                    c.regions.is_empty(),
                    v.is_some_and(|v| c.regions.contains(&(v as RegionId))),
                )
            }),
            country_rows: table(conds, words, countries.len(), |c, v| {
                any(
                    c.countries.is_empty(),
                    v.is_some_and(|v| c.countries.contains(&countries[v])),
                )
            }),
            channels: table(conds, words, channels, |c, v| {
                any(
                    c.channels.is_empty(),
                    v.is_some_and(|v| c.channels.contains(&(v as ChannelId))),
                )
            }),
            cohorts: table(conds, words, cohorts, |c, v| {
                any(
                    c.cohorts.is_empty(),
                    v.is_some_and(|v| c.cohorts.contains(&(v as CohortId))),
                )
            }),
            method_rows: table(conds, words, methods.len(), |c, v| {
                any(
                    c.methods.is_empty(),
                    v.is_some_and(|v| c.methods.iter().any(|m| *m.as_bytes() == *methods[v])),
                )
            }),
            countries,
            methods,
        }
    }

    #[inline(always)]
    fn row(table: &[u64], words: usize, row: usize) -> &[u64] {
        table.get(row * words..(row + 1) * words).unwrap_or(&[])
    }

    /// Rules admitting a region (`None`: unknown).
    #[inline(always)]
    pub fn region(&self, region: Option<RegionId>) -> &[u64] {
        let rows = self.regions.len() / self.words.max(1);
        Self::row(
            &self.regions,
            self.words,
            region.map_or(rows - 1, usize::from).min(rows - 1),
        )
    }

    /// Rules admitting a country code (`None`: no or unreadable geo header).
    #[inline(always)]
    pub fn country(&self, code: Option<[u8; 2]>) -> &[u64] {
        let other = self.countries.len();
        let row = code
            .and_then(|c| self.countries.binary_search(&c).ok())
            .unwrap_or(other);
        Self::row(&self.country_rows, self.words, row)
    }

    /// Rules admitting a channel.
    #[inline(always)]
    pub fn channel(&self, channel: ChannelId) -> &[u64] {
        Self::row(&self.channels, self.words, usize::from(channel))
    }

    /// Rules admitting a cohort (`None`: none, or one no rule names).
    #[inline(always)]
    pub fn cohort(&self, cohort: Option<CohortId>) -> &[u64] {
        let other = self.cohorts.len() / self.words.max(1) - 1;
        Self::row(
            &self.cohorts,
            self.words,
            cohort.map_or(other, |c| (c as usize).min(other)),
        )
    }

    /// Rules admitting a request method (compared case-insensitively).
    #[inline(always)]
    pub fn method(&self, method: &[u8]) -> &[u64] {
        let row = self
            .methods
            .iter()
            .position(|m| m.eq_ignore_ascii_case(method))
            .unwrap_or(self.methods.len());
        Self::row(&self.method_rows, self.words, row)
    }
}
