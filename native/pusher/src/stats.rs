//! Counters every instance keeps, read without locks by `stats` calls.
//!
//! Invariant: accepted = delivered + failed + dropped + queued + in_flight, where
//! `accepted` counts every well-formed event handed to `push` (also those refused
//! because the queue was full: they are `dropped`), `queued` includes the events
//! waiting for their next attempt (`waiting_retry`), and `in_flight` counts the events
//! a worker holds. `dropped_too_large` is a part of `dropped`, not an addition to it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::connection::ConnectionStatus;

/// Log-linear latency histogram: 8 sub-buckets per power of two of microseconds,
/// good to ~10% and cheap enough to update on every delivery.
const SUB_BUCKETS: usize = 8;
const OCTAVES: usize = 40;

pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..SUB_BUCKETS * OCTAVES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl LatencyHistogram {
    fn index(us: u64) -> usize {
        if us < SUB_BUCKETS as u64 {
            return us as usize;
        }
        let octave = 63 - us.leading_zeros() as usize; // >= 3
        let sub = ((us >> (octave - 3)) as usize) & (SUB_BUCKETS - 1);
        ((octave - 2) * SUB_BUCKETS + sub).min(SUB_BUCKETS * OCTAVES - 1)
    }

    /// Lower bound (µs) of the values that land in bucket `index`.
    fn lower_bound(index: usize) -> u64 {
        if index < SUB_BUCKETS {
            return index as u64;
        }
        let octave = index / SUB_BUCKETS + 2;
        let sub = (index % SUB_BUCKETS) as u64;
        (SUB_BUCKETS as u64 + sub) << (octave - 3)
    }

    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::index(us)].fetch_add(1, Relaxed);
    }

    /// The q-quantile (0.0..=1.0) in microseconds, None when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::lower_bound(index));
            }
        }
        None
    }
}

/// Connections a backend opened, lost (closed) and failed to open, and the
/// connection's state for logs and `stats`.
#[derive(Default, Debug)]
pub struct ConnectionCounters {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub failed: AtomicU64,
    pub status: ConnectionStatus,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionSnapshot {
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
}

impl ConnectionCounters {
    pub fn snapshot(&self) -> ConnectionSnapshot {
        ConnectionSnapshot {
            opened: self.opened.load(Relaxed),
            closed: self.closed.load(Relaxed),
            failed: self.failed.load(Relaxed),
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    /// Of `dropped`, the events larger than `queue.max_bytes`.
    pub dropped_too_large: AtomicU64,
    /// Size of the latest of those, 0 before the first.
    pub last_too_large_bytes: AtomicU64,
    pub in_flight: AtomicU64,
    pub latency: LatencyHistogram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Of `dropped`: events larger than the queue's byte cap (`too_large`).
    pub dropped_too_large: u64,
    /// Size of the latest too large event, 0 before the first.
    pub last_too_large_bytes: u64,
    /// The queue's byte cap (filled in by the instance).
    pub max_bytes: u64,
    pub queued: u64,
    pub queued_bytes: u64,
    pub in_flight: u64,
    /// Of `queued`, the events waiting for their next attempt (after a failed one).
    pub waiting_retry: u64,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            accepted: self.accepted.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            retried: self.retried.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            dropped_too_large: self.dropped_too_large.load(Relaxed),
            last_too_large_bytes: self.last_too_large_bytes.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            // Known to the queue: the instance fills them in.
            max_bytes: 0,
            queued: 0,
            queued_bytes: 0,
            waiting_retry: 0,
            latency_p50_us: self.latency.quantile(0.50),
            latency_p99_us: self.latency.quantile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounds_match() {
        let mut last = 0;
        for us in [0u64, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 123_456, 10_000_000] {
            let index = LatencyHistogram::index(us);
            assert!(index >= last, "index of {us} went backwards");
            last = index;
            let lower = LatencyHistogram::lower_bound(index);
            assert!(lower <= us, "{lower} > {us}");
            assert!(us - lower <= us / 8 + 1, "bucket of {us} too wide");
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us * 10));
        }
        let p50 = h.quantile(0.5).unwrap_or_default();
        let p99 = h.quantile(0.99).unwrap_or_default();
        assert!((450..=500).contains(&p50), "p50 {p50}");
        assert!((880..=990).contains(&p99), "p99 {p99}");
    }
}
