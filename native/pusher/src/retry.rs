//! Retry policy: exponential backoff with jitter, bounded by attempts and by age, and
//! stretched by a server's `Retry-After`.

use std::time::Duration;

use crate::reason::Reason;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first one included (1 = never retry).
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// No new attempt starts once an event is older than this.
    pub deadline: Duration,
    pub jitter: Jitter,
}

/// How the pause before a retry is drawn from its ceiling (base * 2^(n-1)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniformly in [ceiling/2, ceiling]: retries spread out but never collapse to zero.
    #[default]
    Equal,
    /// MongooseIM's SNS formula, ceiling minus a random part of the base, i.e.
    /// uniformly in [ceiling - base, ceiling): kept so that `publish_retry_time_ms`
    /// means what it meant.
    MinusBase,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(5000),
            deadline: Duration::from_millis(30_000),
            jitter: Jitter::Equal,
        }
    }
}

/// Why a failed event gets no further attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// `max_attempts` have been made.
    OutOfAttempts,
    /// The pause would end after the event's deadline.
    DeadlinePassed,
    /// The server asked to wait this long (`Retry-After`), which ends after the deadline.
    RetryAfterPastDeadline(Duration),
}

impl GiveUp {
    /// The failure reason to report: the last attempt's, plus why no other follows.
    pub fn reason(self, last_attempt: Reason) -> Reason {
        match self {
            GiveUp::OutOfAttempts => last_attempt,
            GiveUp::DeadlinePassed => Reason::RetryDeadlinePassed(Box::new(last_attempt)),
            GiveUp::RetryAfterPastDeadline(after) => {
                Reason::retry_after_past_deadline(after, last_attempt)
            }
        }
    }
}

impl RetryPolicy {
    /// The pause before the next attempt of an event that has failed `failed_attempts`
    /// times and was pushed `age` ago, or why it gets none. `retry_after` is the
    /// server's own minimum wait: the pause is the longer of it and the backoff.
    pub fn next_pause(
        &self,
        failed_attempts: u32,
        age: Duration,
        retry_after: Option<Duration>,
        unit_random: f64,
    ) -> Result<Duration, GiveUp> {
        if failed_attempts >= self.max_attempts {
            return Err(GiveUp::OutOfAttempts);
        }
        let backoff = self.backoff(failed_attempts, unit_random);
        let pause = retry_after.map_or(backoff, |after| after.max(backoff));
        if age.saturating_add(pause) <= self.deadline {
            Ok(pause)
        } else if retry_after.is_some_and(|after| after > backoff) {
            Err(GiveUp::RetryAfterPastDeadline(pause))
        } else {
            Err(GiveUp::DeadlinePassed)
        }
    }

    /// Upper bound of the pause after the `failed_attempts`-th failure (1-based):
    /// base * 2^(n-1), capped at max_backoff.
    pub fn backoff_ceiling(&self, failed_attempts: u32) -> Duration {
        let shift = failed_attempts.saturating_sub(1).min(30);
        self.base_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }

    /// The pause actually taken, drawn below the ceiling as [`Jitter`] says.
    pub fn backoff(&self, failed_attempts: u32, unit_random: f64) -> Duration {
        let ceiling = self.backoff_ceiling(failed_attempts);
        let unit_random = unit_random.clamp(0.0, 1.0);
        match self.jitter {
            Jitter::Equal => {
                let half = ceiling / 2;
                half + half.mul_f64(unit_random)
            }
            Jitter::MinusBase => {
                ceiling.saturating_sub(self.base_backoff.min(ceiling).mul_f64(1.0 - unit_random))
            }
        }
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
            jitter: Jitter::Equal,
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
    fn minus_base_jitter_follows_mongooseim_sns() {
        let p = RetryPolicy {
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(3600),
            jitter: Jitter::MinusBase,
            ..policy()
        };
        // 2^(n-1) * 50 ms minus up to 50 ms.
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(0));
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(50));
        assert_eq!(p.backoff(3, 0.0), Duration::from_millis(150));
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(175));
    }

    #[test]
    fn next_pause_takes_the_longer_of_backoff_and_retry_after() {
        let p = policy();
        let young = Duration::from_millis(10);
        assert_eq!(
            p.next_pause(1, young, None, 1.0),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            p.next_pause(1, young, Some(Duration::from_secs(2)), 1.0),
            Ok(Duration::from_secs(2))
        );
        // A Retry-After shorter than the backoff (or zero) does not hurry the retry.
        assert_eq!(
            p.next_pause(3, young, Some(Duration::ZERO), 1.0),
            Ok(Duration::from_millis(400))
        );
    }

    #[test]
    fn next_pause_gives_up_on_attempts_and_deadline_saying_why() {
        let p = policy();
        let young = Duration::from_millis(10);
        assert_eq!(
            p.next_pause(6, young, None, 0.5),
            Err(GiveUp::OutOfAttempts)
        );
        assert_eq!(
            p.next_pause(1, Duration::from_millis(9_990), None, 1.0),
            Err(GiveUp::DeadlinePassed)
        );
        let far = Duration::from_secs(120);
        assert_eq!(
            p.next_pause(1, young, Some(far), 0.5),
            Err(GiveUp::RetryAfterPastDeadline(far))
        );
        // Huge hints do not overflow.
        assert_eq!(
            p.next_pause(1, young, Some(Duration::MAX), 0.5),
            Err(GiveUp::RetryAfterPastDeadline(Duration::MAX))
        );
        assert_eq!(
            GiveUp::RetryAfterPastDeadline(Duration::from_millis(119_500))
                .reason(Reason::HttpStatus(503)),
            Reason::RetryAfterPastDeadline(120, Box::new(Reason::HttpStatus(503)))
        );
        assert_eq!(
            GiveUp::DeadlinePassed.reason(Reason::HttpStatus(500)),
            Reason::RetryDeadlinePassed(Box::new(Reason::HttpStatus(500)))
        );
        assert_eq!(GiveUp::OutOfAttempts.reason(Reason::Nacked), Reason::Nacked);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = policy();
        assert_eq!(p.backoff_ceiling(u32::MAX), Duration::from_millis(1000));
    }
}
