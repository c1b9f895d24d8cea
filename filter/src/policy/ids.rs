//! Identifiers of the compiled policy (stacks, regions, channels, cohorts are indexes)
//! and the limits that keep them small: a stack id is a bit of a 64-bit eligibility
//! mask, a target index fits a byte of a hash table. Plain data; depends on nothing.

/// Index of a stack in [`Policy::stacks`](super::Policy::stacks).
pub type StackId = usize;
/// Index of a region in [`Policy::regions`](super::Policy::regions).
pub type RegionId = u16;
/// Index of a channel in [`Policy::channels`](super::Policy::channels).
pub type ChannelId = u16;
/// Index of a cohort in [`Policy::cohorts`](super::Policy::cohorts).
pub type CohortId = u32;

/// At most this many stacks: eligibility is a 64-bit mask on the request path.
pub const MAX_STACKS: usize = 64;
/// At most this many targets per route (hash tables store target indexes in a byte).
pub const MAX_TARGETS: usize = 64;

/// Bit mask with the low `n` bits set.
pub fn mask_of(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}
