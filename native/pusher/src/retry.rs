//! Retry policy: exponential backoff with jitter, bounded by attempts and by age.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first one included (1 = never retry).
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// No new attempt starts once an event is older than this.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(5000),
            deadline: Duration::from_millis(30_000),
        }
    }
}

impl RetryPolicy {
    /// Upper bound of the pause after the `failed_attempts`-th failure (1-based):
    /// base * 2^(n-1), capped at max_backoff.
    pub fn backoff_ceiling(&self, failed_attempts: u32) -> Duration {
        let shift = failed_attempts.saturating_sub(1).min(30);
        self.base_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }

    /// The pause actually taken: "equal jitter", uniformly in [ceiling/2, ceiling], so
    /// retries of many events spread out but never collapse to zero.
    pub fn backoff(&self, failed_attempts: u32, unit_random: f64) -> Duration {
        let ceiling = self.backoff_ceiling(failed_attempts);
        let half = ceiling / 2;
        half + half.mul_f64(unit_random.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            deadline: Duration::from_secs(10),
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=6)
            .map(|n| p.backoff_ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_between_half_and_full_ceiling() {
        let p = policy();
        assert_eq!(p.backoff(3, 0.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(300));
        assert_eq!(p.backoff(3, 7.0), Duration::from_millis(400));
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = policy();
        assert_eq!(p.backoff_ceiling(u32::MAX), Duration::from_millis(1000));
    }
}
