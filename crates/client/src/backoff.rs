//! Exponential backoff with full jitter.
//!
//! The ceiling doubles per failed attempt from `base` up to `cap`, and each
//! delay is drawn uniformly between zero and the ceiling ("full jitter"):
//! clients dropped together by one node spread their reconnections over the
//! whole window instead of arriving at the next node in waves.

use std::time::Duration;

/// The delays between attempts of one retried operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Failed attempts since the last success.
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self::with_rng(base, cap, fastrand::Rng::new())
    }

    /// With a seeded generator, so that a schedule can be replayed.
    pub fn with_rng(base: Duration, cap: Duration, rng: fastrand::Rng) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
            rng,
        }
    }

    /// The upper bound of the delay after `attempt` failures:
    /// `min(cap, base * 2^attempt)`.
    pub fn ceiling(base: Duration, cap: Duration, attempt: u32) -> Duration {
        // 2^31 times any base worth having already passes any cap worth
        // having; the shift is clamped so it cannot overflow.
        base.checked_mul(1u32 << attempt.min(31))
            .map_or(cap, |d| d.min(cap))
    }

    /// The delay before the next attempt; counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = Self::ceiling(self.base, self.cap, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(0..=nanos))
    }

    /// Failures counted since the last [`reset`](Self::reset).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_from_base_up_to_cap() {
        let ceilings: Vec<Duration> = (0..8)
            .map(|a| Backoff::ceiling(100 * MS, 5000 * MS, a))
            .collect();
        let want: Vec<Duration> = [100, 200, 400, 800, 1600, 3200, 5000, 5000]
            .iter()
            .map(|&ms| ms * MS)
            .collect();
        assert_eq!(ceilings, want);
        // Far past the cap, no overflow.
        assert_eq!(Backoff::ceiling(100 * MS, 5000 * MS, 200), 5000 * MS);
        assert_eq!(
            Backoff::ceiling(Duration::MAX, 5000 * MS, 3),
            5000 * MS,
            "a base too large to double is capped"
        );
    }

    #[test]
    fn every_delay_is_within_its_ceiling_and_they_spread() {
        let mut b = Backoff::with_rng(100 * MS, 2000 * MS, fastrand::Rng::with_seed(7));
        for attempt in 0..20 {
            let ceiling = Backoff::ceiling(100 * MS, 2000 * MS, attempt);
            assert!(b.next_delay() <= ceiling, "attempt {attempt}");
        }
        // Full jitter: many draws at the cap cover the window, not one point.
        let draws: Vec<Duration> = (0..1000).map(|_| b.next_delay()).collect();
        let low = draws.iter().filter(|d| **d < 500 * MS).count();
        let high = draws.iter().filter(|d| **d > 1500 * MS).count();
        assert!(low > 150 && high > 150, "low {low}, high {high}");
    }

    #[test]
    fn reset_starts_again_from_base() {
        let mut b = Backoff::with_rng(100 * MS, 10_000 * MS, fastrand::Rng::with_seed(1));
        for _ in 0..6 {
            b.next_delay();
        }
        assert_eq!(b.attempt(), 6);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay() <= 100 * MS);
        assert_eq!(b.attempt(), 1);
    }

    #[test]
    fn a_seeded_schedule_replays() {
        let schedule = |seed| {
            let mut b = Backoff::with_rng(50 * MS, 1000 * MS, fastrand::Rng::with_seed(seed));
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(schedule(3), schedule(3));
        assert_ne!(schedule(3), schedule(4));
    }
}
