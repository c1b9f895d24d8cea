//! The classification inputs plan: every header and cookie the policy reads gets a slot
//! of the one-pass request scan, every user-agent substring a bit. Decides where the
//! request path looks; it never reads a request itself (that is `classify`).

use switchyard_policy_doc::KeyDoc;

/// At most this many distinct `user_agent_contains` substrings over all channels: the
/// request path finds all of them in one pass over the user agent, one bit each.
pub const MAX_UA_SUBSTRINGS: usize = 64;

/// Where the request path finds a key: a slot of the one-pass request scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    Header(usize),
    Cookie(usize),
    ClientIp,
}

/// Every header and cookie the policy reads, each given a slot, so one pass over the
/// request finds them all (and sees repeats) instead of one search per lookup.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Header names (lower-case) by slot.
    pub headers: Vec<Box<[u8]>>,
    /// Bit `min(n, 63)` set when some slot name is `n` bytes long: most request headers
    /// are skipped on their length alone.
    pub header_lengths: u64,
    /// Cookie names by slot.
    pub cookies: Vec<Box<[u8]>>,
    pub geo: Option<usize>,
    pub cohort: Option<usize>,
    pub user_key: Vec<KeySlot>,
    /// Cookie slot of the affinity cookie.
    pub affinity_cookie: usize,
    /// Lower-cased `user_agent_contains` substrings of every channel, deduplicated.
    pub ua_substrings: Vec<Box<[u8]>>,
    /// Bit per byte value: some substring starts with that byte (either case).
    pub ua_first: [u64; 4],
}

impl Inputs {
    pub(in crate::policy) fn header_slot(&mut self, name: &str) -> usize {
        let name = name.as_bytes();
        if let Some(i) = self.headers.iter().position(|h| **h == *name) {
            return i;
        }
        self.header_lengths |= 1u64 << name.len().min(63);
        self.headers.push(name.into());
        self.headers.len() - 1
    }

    pub(in crate::policy) fn cookie_slot(&mut self, name: &str) -> usize {
        let name = name.as_bytes();
        if let Some(i) = self.cookies.iter().position(|c| **c == *name) {
            return i;
        }
        self.cookies.push(name.into());
        self.cookies.len() - 1
    }

    pub(in crate::policy) fn key_slot(&mut self, key: &KeyDoc) -> KeySlot {
        match key {
            KeyDoc::Header(h) => KeySlot::Header(self.header_slot(h)),
            KeyDoc::Cookie(c) => KeySlot::Cookie(self.cookie_slot(c)),
            KeyDoc::ClientIp => KeySlot::ClientIp,
        }
    }

    /// Bit index of a user-agent substring, `None` past [`MAX_UA_SUBSTRINGS`].
    pub(in crate::policy) fn ua_substring(&mut self, lower: &str) -> Option<usize> {
        let s = lower.as_bytes();
        if let Some(i) = self.ua_substrings.iter().position(|x| **x == *s) {
            return Some(i);
        }
        if self.ua_substrings.len() >= MAX_UA_SUBSTRINGS {
            return None;
        }
        if let Some(&b) = s.first() {
            for b in [b, b.to_ascii_uppercase()] {
                self.ua_first[usize::from(b >> 6)] |= 1u64 << (b & 63);
            }
        }
        self.ua_substrings.push(s.into());
        Some(self.ua_substrings.len() - 1)
    }
}
