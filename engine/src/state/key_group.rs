//! Key groups: the fixed number (`max_parallelism`) of buckets that keys hash into, and
//! the contiguous ranges of them that subtasks own. The formulas are Flink's, so that
//! the key group of a key never depends on the parallelism and a snapshot can be split
//! by key group when a job restarts with another parallelism.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// The default number of key groups (max parallelism) of a job.
pub const DEFAULT_MAX_PARALLELISM: u16 = 128;

/// A contiguous range `[start, end)` of key groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupRange {
    /// First key group in the range.
    pub start: u16,
    /// One past the last key group (exclusive).
    pub end: u16,
}

impl KeyGroupRange {
    /// The range `[start, end)`; empty if `end <= start`.
    pub fn new(start: u16, end: u16) -> Self {
        KeyGroupRange {
            start,
            end: end.max(start),
        }
    }

    /// All key groups `[0, max_parallelism)`.
    pub fn all(max_parallelism: u16) -> Self {
        KeyGroupRange::new(0, max_parallelism)
    }

    /// The key groups that subtask `subtask` of `parallelism` owns:
    /// `[ceil(subtask * max / parallelism), ceil((subtask + 1) * max / parallelism))`.
    ///
    /// Ranges of the subtasks `0..parallelism` are disjoint and cover `0..max` exactly
    /// once. A `parallelism` of 0 or a `subtask >= parallelism` gets an empty range; a
    /// parallelism above `max_parallelism` leaves some subtasks empty.
    pub fn for_subtask(max_parallelism: u16, parallelism: usize, subtask: usize) -> Self {
        if parallelism == 0 || subtask >= parallelism {
            return KeyGroupRange::new(max_parallelism, max_parallelism);
        }
        let max = u128::from(max_parallelism);
        let p = parallelism as u128;
        let i = subtask as u128;
        let start = (i * max).div_ceil(p);
        let end = ((i + 1) * max).div_ceil(p);
        // Both are <= max, which fits in u16.
        let start = u16::try_from(start).unwrap_or(max_parallelism);
        let end = u16::try_from(end).unwrap_or(max_parallelism);
        KeyGroupRange::new(start, end)
    }

    /// Whether `key_group` is in the range.
    pub fn contains(&self, key_group: u16) -> bool {
        self.start <= key_group && key_group < self.end
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start)
    }

    /// Whether the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The key groups of the range in order.
    pub fn iter(&self) -> Range<u16> {
        self.start..self.end
    }

    /// The key groups in both ranges.
    pub fn intersect(&self, other: &KeyGroupRange) -> KeyGroupRange {
        KeyGroupRange::new(self.start.max(other.start), self.end.min(other.end))
    }
}

impl IntoIterator for KeyGroupRange {
    type Item = u16;
    type IntoIter = Range<u16>;

    fn into_iter(self) -> Range<u16> {
        self.start..self.end
    }
}

impl std::fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// The murmur3 64-bit finalizer: spreads every input bit over every output bit.
pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The key group of a key with hash `hash`: the hash is mixed once more (so that weak
/// hashes such as raw integers still spread) and reduced modulo `max_parallelism`.
/// A `max_parallelism` of 0 is treated as 1.
pub fn key_group_for_hash(hash: u64, max_parallelism: u16) -> u16 {
    let max = u64::from(max_parallelism.max(1));
    // The remainder is < max <= u16::MAX.
    (fmix64(hash) % max) as u16
}

/// The subtask of `parallelism` that owns `key_group`: `key_group * parallelism / max`,
/// consistent with [`KeyGroupRange::for_subtask`]. A `parallelism` of 0 is treated as 1.
pub fn subtask_for_key_group(key_group: u16, max_parallelism: u16, parallelism: usize) -> usize {
    let max = u128::from(max_parallelism.max(1));
    let p = parallelism.max(1) as u128;
    let kg = u128::from(key_group).min(max - 1);
    // kg < max, so the quotient is < p, which fits in usize.
    (kg * p / max) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_cover(max: u16, p: usize) {
        let mut owner = vec![None; usize::from(max)];
        let mut next_start = 0u16;
        for i in 0..p {
            let r = KeyGroupRange::for_subtask(max, p, i);
            assert_eq!(
                r.start, next_start,
                "max {max} p {p} subtask {i}: gap or overlap"
            );
            next_start = r.end;
            for kg in r.iter() {
                assert!(owner[usize::from(kg)].is_none(), "kg {kg} owned twice");
                owner[usize::from(kg)] = Some(i);
                assert_eq!(
                    subtask_for_key_group(kg, max, p),
                    i,
                    "max {max} p {p} kg {kg}"
                );
                assert!(r.contains(kg));
            }
            if p <= usize::from(max) {
                // Flink's formula gives every subtask floor or ceil of max/p groups.
                let lo = usize::from(max) / p;
                assert!(
                    r.len() == lo || r.len() == lo + 1,
                    "unbalanced {r} for p {p}"
                );
            }
        }
        assert_eq!(next_start, max);
        assert!(
            owner.iter().all(Option::is_some),
            "max {max} p {p}: not covered"
        );
    }

    #[test]
    fn ranges_cover_every_key_group_exactly_once() {
        for max in [1u16, 2, 3, 7, 64, 100, 128, 129, 1000, 4096, 32768] {
            for p in [1usize, 2, 3, 4, 5, 7, 8, 13, 16, 31, 64, 127, 128] {
                check_cover(max, p);
            }
        }
        check_cover(u16::MAX, 7);
    }

    #[test]
    fn known_ranges() {
        assert_eq!(
            KeyGroupRange::for_subtask(128, 1, 0),
            KeyGroupRange::new(0, 128)
        );
        assert_eq!(
            KeyGroupRange::for_subtask(128, 3, 0),
            KeyGroupRange::new(0, 43)
        );
        assert_eq!(
            KeyGroupRange::for_subtask(128, 3, 1),
            KeyGroupRange::new(43, 86)
        );
        assert_eq!(
            KeyGroupRange::for_subtask(128, 3, 2),
            KeyGroupRange::new(86, 128)
        );
        assert!(KeyGroupRange::for_subtask(128, 3, 3).is_empty());
        assert!(KeyGroupRange::for_subtask(128, 0, 0).is_empty());
        assert_eq!(KeyGroupRange::new(5, 3).len(), 0);
        assert_eq!(
            KeyGroupRange::new(0, 10).intersect(&KeyGroupRange::new(5, 20)),
            KeyGroupRange::new(5, 10)
        );
        assert_eq!(
            KeyGroupRange::new(2, 5).into_iter().collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
    }

    #[test]
    fn key_group_for_hash_is_in_range_and_spreads() {
        assert_eq!(key_group_for_hash(12345, 0), 0);
        let mut counts = [0usize; 128];
        for h in 0..128_000u64 {
            let kg = key_group_for_hash(h, 128);
            counts[usize::from(kg)] += 1;
        }
        // Sequential (weak) hashes still spread: every group within 20% of the mean.
        for c in counts {
            assert!((800..=1200).contains(&c), "count {c}");
        }
    }

    proptest! {
        #[test]
        fn subtask_for_key_group_matches_ranges(max in 1u16..=2048, p in 1usize..=300, kg in 0u16..2048) {
            let kg = kg % max;
            let i = subtask_for_key_group(kg, max, p);
            prop_assert!(i < p);
            prop_assert!(KeyGroupRange::for_subtask(max, p, i).contains(kg));
        }
    }
}
