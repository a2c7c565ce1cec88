//! Pacing a source at a rate (records per second per subtask): record `r` is due
//! `r / rate` seconds after the first poll, so bursts and pauses even out. Used by the
//! sources that replay recorded data at a pace (file, kafka) for demos and tests.

use std::time::{Duration, Instant};

/// A subtask's pace.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    rate: f64,
    /// When the first poll came, and the records taken since.
    started: Option<(Instant, u64)>,
}

impl Pacer {
    /// At `rate` records per second (positive, checked by the options).
    pub(crate) fn new(rate: f64) -> Self {
        Pacer {
            rate,
            started: None,
        }
    }

    /// How many of `want` records may be taken now (at least 1), or how long to wait.
    pub(crate) fn allowance(&mut self, want: usize) -> Result<usize, Duration> {
        let (start, taken) = *self.started.get_or_insert((Instant::now(), 0));
        let allowed = (start.elapsed().as_secs_f64() * self.rate) as u64 + 1;
        if taken >= allowed {
            let due = Duration::from_secs_f64((taken + 1) as f64 / self.rate);
            return Err(due.saturating_sub(start.elapsed()));
        }
        Ok(want
            .min(usize::try_from(allowed - taken).unwrap_or(usize::MAX))
            .max(1))
    }

    /// `n` records were taken.
    pub(crate) fn took(&mut self, n: u64) {
        if let Some((_, taken)) = self.started.as_mut() {
            *taken += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_rate_and_says_how_long_to_wait() {
        let mut p = Pacer::new(1000.0);
        let first = p.allowance(10_000).expect("one at once");
        assert!((1..=10).contains(&first), "{first}");
        p.took(first as u64);
        p.took(100);
        let wait = p.allowance(1).expect_err("ahead of the pace");
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(102),
            "{wait:?}"
        );
        std::thread::sleep(wait + Duration::from_millis(2));
        assert!(p.allowance(1).is_ok());
    }
}
