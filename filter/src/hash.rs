//! Stable hashing for percentage buckets and consistent hashing. The values must be the
//! same on every worker, every Envoy and every build (native and wasm32), so no
//! process-seeded hasher is used here.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The hasher of the policy's name tables (stack, region and rule names). Those names come
/// from the validated document, never from a request, so a fixed-seed hash is enough, and
/// it keeps std's `RandomState` out of the .wasm: seeding that from the host
/// (`random_get`) brings WASI's error names and messages along for its failure path,
/// about 5 KB of the module's 400 KB budget.
#[derive(Debug, Default, Clone, Copy)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash64(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by policy names (see [`NameHasher`]).
pub type NameMap<K, V> = HashMap<K, V, BuildHasherDefault<NameHasher>>;
/// A set of policy names (see [`NameHasher`]).
pub type NameSet<K> = HashSet<K, BuildHasherDefault<NameHasher>>;

/// FNV-1a over bytes, finished with a 64-bit avalanche so close inputs spread well.
pub fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The murmur3 64-bit finaliser.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Bucket in `0..10_000` (basis points) of a hashed key under a salt.
pub fn bucket(key_hash: u64, salt: &[u8]) -> u16 {
    (mix64(key_hash ^ hash64(0, salt)) % 10_000) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // Pinned: a change here reshuffles every user's bucket in production.
        assert_eq!(hash64(0, b""), mix64(0xcbf2_9ce4_8422_2325));
        let k = hash64(1, b"user-1");
        assert_eq!(bucket(k, b"switchyard"), bucket(k, b"switchyard"));
        assert_ne!(bucket(k, b"switchyard"), bucket(k, b"other"));
    }

    #[test]
    fn buckets_are_uniform() {
        let mut counts = [0u32; 10];
        for i in 0..100_000u32 {
            counts[usize::from(bucket(hash64(1, format!("user-{i}").as_bytes()), b"s") / 1000)] +=
                1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "bucket decile count {c}");
        }
    }
}
