//! The deterministic random streams of the generators (`datagen`, `nexmark`):
//! SplitMix64 keyed by `(seed, stream, index)`, so every value depends only on those
//! three numbers and is stable across platforms and versions, unlike `rand`'s small
//! RNGs. Changing anything here changes every generated row. Also the stride both
//! generators split their rows by (subtask `s` of `p` takes indexes `s, s + p, …`).

/// The SplitMix64 finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A small random stream for one `(seed, stream, index)`: a datagen cell (stream = the
/// field, index = the row) or a Nexmark event (index = the event number).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64, index: u64) -> Self {
        Rng(mix(
            seed.wrapping_add(GOLDEN) ^ mix(stream ^ mix(index.wrapping_add(GOLDEN)))
        ))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)`; 0 for `n = 0`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `below` for indexes.
    pub(crate) fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `[min, max]`.
    pub(crate) fn int_in(&mut self, min: i128, max: i128) -> i128 {
        let span = (max - min) as u128 + 1;
        if span > u128::from(u64::MAX) {
            min + i128::from(self.next_u64())
        } else {
            min + i128::from(self.below(span as u64))
        }
    }
}

/// The first index at or after `n` of the stride of subtask `subtask` of
/// `parallelism` (indexes `subtask, subtask + parallelism, …`).
pub(crate) fn stride_at_or_after(n: u64, subtask: u64, parallelism: u64) -> u64 {
    let rem = n % parallelism;
    if rem <= subtask {
        n - rem + subtask
    } else {
        n - rem + parallelism + subtask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_alignment() {
        assert_eq!(stride_at_or_after(0, 0, 3), 0);
        assert_eq!(stride_at_or_after(4, 1, 3), 4);
        assert_eq!(stride_at_or_after(5, 1, 3), 7);
        assert_eq!(stride_at_or_after(3, 2, 3), 5);
        for n in 0..50 {
            for s in 0..4 {
                let a = stride_at_or_after(n, s, 4);
                assert!(a >= n && a < n + 4 && a % 4 == s, "{n} {s} {a}");
            }
        }
    }
}
