//! Balancing among eligible targets: smooth weighted round-robin, and consistent hashing
//! with minimal disruption. Decides which target gets a request; knows nothing of health,
//! the caller passes the eligible set as a bit mask over stack ids.
//!
//! Consistent hashing is weighted rendezvous hashing, precomputed into a table of
//! [`SLOTS`] slots: a key hashes to a slot and the slot names the target with the highest
//! score. When that target is not eligible the slot's owner among the eligible targets is
//! computed on the spot, which is exactly what a table built without the missing target
//! would say. So when one of N targets leaves only its own ≈1/N of keys move, and they
//! return when it comes back.

use crate::hash::{hash64, mix64};
use crate::policy::Target;

/// Slots of a consistent-hash table.
pub const SLOTS: usize = 4096;

/// Smooth weighted round-robin state for one target list (nginx's algorithm): over any
/// window of `sum(weights)` picks each target is chosen exactly `weight` times, interleaved.
#[derive(Debug, Clone, Default)]
pub struct Swrr {
    current: Vec<i64>,
}

impl Swrr {
    pub fn new(len: usize) -> Self {
        Self {
            current: vec![0; len],
        }
    }

    /// Pick among `targets` whose stack is in `eligible`, each weight scaled by
    /// `factor(stack)` percent. `None` when nothing eligible has weight.
    pub fn pick(
        &mut self,
        targets: &[Target],
        eligible: u64,
        factor: impl Fn(usize) -> u32,
    ) -> Option<usize> {
        if self.current.len() != targets.len() {
            self.current = vec![0; targets.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, t) in targets.iter().enumerate() {
            if eligible & (1u64 << t.stack) == 0 {
                continue;
            }
            let w = i64::from(t.weight) * i64::from(factor(t.stack));
            if w <= 0 {
                continue;
            }
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

/// A precomputed weighted-rendezvous table over a target list.
#[derive(Debug, Clone)]
pub struct HashTable {
    /// Index into the target list of each slot's owner (u8::MAX: no target has weight).
    slots: Vec<u8>,
    seeds: Vec<u64>,
    weights: Vec<f64>,
}

fn slot_score(slot: u64, seed: u64, weight: f64) -> f64 {
    if weight <= 0.0 {
        return f64::NEG_INFINITY;
    }
    // Uniform in (0, 1); score = -w / ln(u) is the weighted rendezvous score.
    let h = mix64(slot.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

impl HashTable {
    /// Build the table for a target list. Cost: `SLOTS × targets` score evaluations.
    pub fn build(targets: &[Target]) -> Self {
        let seeds: Vec<u64> = targets
            .iter()
            .map(|t| hash64(0x5eed, &(t.stack as u64).to_le_bytes()))
            .collect();
        let weights: Vec<f64> = targets.iter().map(|t| f64::from(t.weight)).collect();
        let mut slots = Vec::with_capacity(SLOTS);
        for s in 0..SLOTS as u64 {
            let mut best = u8::MAX;
            let mut best_score = f64::NEG_INFINITY;
            for (i, (&seed, &w)) in seeds.iter().zip(&weights).enumerate() {
                let sc = slot_score(s, seed, w);
                if sc > best_score {
                    best_score = sc;
                    best = i as u8;
                }
            }
            slots.push(best);
        }
        Self {
            slots,
            seeds,
            weights,
        }
    }

    /// The target index a key maps to, among targets whose stack is in `eligible`.
    pub fn pick(&self, targets: &[Target], key_hash: u64, eligible: u64) -> Option<usize> {
        let slot = (key_hash as usize) % SLOTS;
        let owner = *self.slots.get(slot)?;
        if let Some(t) = targets.get(usize::from(owner)) {
            if eligible & (1u64 << t.stack) != 0 {
                return Some(usize::from(owner));
            }
        }
        // The owner is out: rendezvous among the eligible rest, for this slot only.
        let mut best = None;
        let mut best_score = f64::NEG_INFINITY;
        for (i, t) in targets.iter().enumerate() {
            if eligible & (1u64 << t.stack) == 0 {
                continue;
            }
            let sc = slot_score(slot as u64, self.seeds[i], self.weights[i]);
            if sc > best_score {
                best_score = sc;
                best = Some(i);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(weights: &[u32]) -> Vec<Target> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Target {
                stack: i,
                weight: w,
            })
            .collect()
    }

    #[test]
    fn swrr_is_exact_and_smooth() {
        let t = targets(&[5, 1, 1]);
        let mut s = Swrr::new(t.len());
        let picks: Vec<usize> = (0..7)
            .map(|_| s.pick(&t, u64::MAX, |_| 100).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 5);
        assert_eq!(
            picks,
            vec![0, 0, 1, 0, 2, 0, 0],
            "nginx smooth interleaving"
        );
    }

    #[test]
    fn swrr_skips_ineligible_and_zero_factor() {
        let t = targets(&[1, 1, 1]);
        let mut s = Swrr::new(t.len());
        for _ in 0..30 {
            let p = s
                .pick(&t, 0b101, |st| if st == 2 { 0 } else { 100 })
                .unwrap();
            assert_eq!(p, 0);
        }
        assert_eq!(s.pick(&t, 0, |_| 100), None);
    }

    #[test]
    fn hash_table_follows_weights() {
        let t = targets(&[1, 3]);
        let table = HashTable::build(&t);
        let n = 40_000u64;
        let heavy = (0..n)
            .filter(|k| table.pick(&t, mix64(*k), u64::MAX) == Some(1))
            .count() as f64;
        let share = heavy / n as f64;
        assert!(
            (0.72..0.78).contains(&share),
            "share of the weight-3 target: {share}"
        );
    }

    #[test]
    fn only_keys_of_a_leaving_target_move_and_they_come_back() {
        let t = targets(&[1, 1, 1, 1, 1]);
        let table = HashTable::build(&t);
        let all = u64::MAX;
        let without_2 = !(1u64 << 2);
        let keys: Vec<u64> = (0..20_000u64).map(mix64).collect();
        let before: Vec<_> = keys.iter().map(|&k| table.pick(&t, k, all)).collect();
        let during: Vec<_> = keys.iter().map(|&k| table.pick(&t, k, without_2)).collect();
        let mut moved = 0;
        for (b, d) in before.iter().zip(&during) {
            if b != d {
                assert_eq!(*b, Some(2), "only keys of the leaving target move");
                moved += 1;
            }
        }
        let frac = moved as f64 / keys.len() as f64;
        assert!(frac < 1.5 / 5.0, "moved {frac}");
        let after: Vec<_> = keys.iter().map(|&k| table.pick(&t, k, all)).collect();
        assert_eq!(before, after, "keys come back when the target returns");
    }
}
