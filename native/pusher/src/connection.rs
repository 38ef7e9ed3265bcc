//! A backend connection's health as an operator sees it: the state (`connected`,
//! `connecting`, `disconnected`, `closed`), the last error and since when it is down,
//! and the changes worth a log line (lost, a failed connect, back again), which the
//! reporter passes on to the host in its batches.
//!
//! Log lines are rate-limited here, so that a broker that stays down, or one that
//! accepts and drops every connection, gives a few lines a minute, not one per
//! attempt: a warning (lost, connect failed) passes when none passed in the last
//! [`WARNING_INTERVAL`], and the first failed reconnect after a logged loss passes too
//! (it tells whether the blip is an outage). The next warning that passes carries the
//! number suppressed before it. "Connected again" is logged only after an outage that
//! was logged, so every logged outage gets its end.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// At most one warning per this interval (but see the module documentation).
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Changes kept for the reporter at most; it takes them every 100 ms, and the rate
/// limit keeps them few, so this only bounds memory if nobody takes them.
const MAX_PENDING_EVENTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionState {
    /// Not connected yet, or lost and no reconnect attempt has failed yet.
    #[default]
    Connecting,
    Connected,
    /// The latest connect attempt failed; retrying with backoff.
    Disconnected,
    /// Closed for good (the instance stopped).
    Closed,
}

/// A state change to log, in the order they happened. Times are milliseconds since
/// the Unix epoch (Erlang's `os:system_time(millisecond)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// An established connection (or its channel) was lost.
    Lost {
        reason: String,
        at_ms: u64,
        /// Warnings not logged since the previous logged one.
        suppressed: u64,
    },
    /// A connect attempt failed (at start, or reconnecting).
    ConnectFailed {
        reason: String,
        at_ms: u64,
        /// Failed attempts in a row, this one included.
        attempts: u64,
        down_since_ms: u64,
        suppressed: u64,
    },
    /// Connected after a logged outage.
    Connected {
        at_ms: u64,
        down_since_ms: u64,
        /// Failed attempts before this one succeeded.
        failed_attempts: u64,
        suppressed: u64,
    },
}

/// An outage that has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub since_ms: u64,
    pub until_ms: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusSnapshot {
    pub state: ConnectionState,
    /// The latest loss or failed attempt, kept after the connection is back.
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<u64>,
    /// When the current outage began (None while connected).
    pub down_since_ms: Option<u64>,
    /// Failed connect attempts in a row in the current outage.
    pub failed_attempts: u64,
    pub last_outage: Option<Outage>,
}

#[derive(Default)]
struct Inner {
    snapshot: StatusSnapshot,
    events: VecDeque<ConnectionEvent>,
    last_warning_at: Option<Instant>,
    suppressed: u64,
    /// A warning about the current outage was logged: its end will be too.
    outage_logged: bool,
    /// The loss that began the current outage was logged.
    loss_logged: bool,
}

/// Shared by the backend (which reports what happens) and the reporter (which takes
/// the events and reads the state); a mutex taken a few times per connection change
/// and once per report batch.
#[derive(Default)]
pub struct ConnectionStatus {
    inner: Mutex<Inner>,
}

/// Milliseconds since the Unix epoch, as Erlang's `os:system_time(millisecond)`.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Inner {
    fn warning_allowed(&mut self, now: Instant, first_failure_after_logged_loss: bool) -> bool {
        let allowed = first_failure_after_logged_loss
            || self
                .last_warning_at
                .is_none_or(|last| now.saturating_duration_since(last) >= WARNING_INTERVAL);
        if allowed {
            self.last_warning_at = Some(now);
            self.outage_logged = true;
        } else {
            self.suppressed += 1;
        }
        allowed
    }

    fn push(&mut self, event: ConnectionEvent) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn lost(&mut self, reason: String, now: Instant, at_ms: u64) {
        let s = &mut self.snapshot;
        // Only a live connection can be lost; a second report of the same loss
        // (connection and channel both failing) changes nothing.
        if s.state != ConnectionState::Connected {
            return;
        }
        s.state = ConnectionState::Connecting;
        s.down_since_ms.get_or_insert(at_ms);
        s.failed_attempts = 0;
        s.last_error = Some(reason.clone());
        s.last_error_at_ms = Some(at_ms);
        self.loss_logged = self.warning_allowed(now, false);
        if self.loss_logged {
            let suppressed = std::mem::take(&mut self.suppressed);
            self.push(ConnectionEvent::Lost {
                reason,
                at_ms,
                suppressed,
            });
        }
    }

    fn connect_failed(&mut self, reason: String, now: Instant, at_ms: u64) {
        let s = &mut self.snapshot;
        if s.state == ConnectionState::Closed {
            return;
        }
        s.state = ConnectionState::Disconnected;
        let down_since_ms = *s.down_since_ms.get_or_insert(at_ms);
        s.failed_attempts += 1;
        let attempts = s.failed_attempts;
        s.last_error = Some(reason.clone());
        s.last_error_at_ms = Some(at_ms);
        let first_after_logged_loss = attempts == 1 && self.loss_logged;
        if self.warning_allowed(now, first_after_logged_loss) {
            let suppressed = std::mem::take(&mut self.suppressed);
            self.push(ConnectionEvent::ConnectFailed {
                reason,
                at_ms,
                attempts,
                down_since_ms,
                suppressed,
            });
        }
    }

    fn connected(&mut self, at_ms: u64) {
        let s = &mut self.snapshot;
        if s.state == ConnectionState::Closed {
            return;
        }
        s.state = ConnectionState::Connected;
        let failed_attempts = std::mem::take(&mut s.failed_attempts);
        if let Some(down_since_ms) = s.down_since_ms.take() {
            s.last_outage = Some(Outage {
                since_ms: down_since_ms,
                until_ms: at_ms,
                reason: s.last_error.clone().unwrap_or_default(),
            });
            if std::mem::take(&mut self.outage_logged) {
                let suppressed = std::mem::take(&mut self.suppressed);
                self.push(ConnectionEvent::Connected {
                    at_ms,
                    down_since_ms,
                    failed_attempts,
                    suppressed,
                });
            }
        }
        self.loss_logged = false;
    }
}

impl std::fmt::Debug for ConnectionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl ConnectionStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection (or its channel) went down; ignored unless it was up.
    pub fn lost(&self, reason: impl Into<String>) {
        self.lock().lost(reason.into(), Instant::now(), unix_ms());
    }

    pub fn connect_failed(&self, reason: impl Into<String>) {
        self.lock()
            .connect_failed(reason.into(), Instant::now(), unix_ms());
    }

    pub fn connected(&self) {
        self.lock().connected(unix_ms());
    }

    /// Closed for good: nothing is logged after this.
    pub fn closed(&self) {
        self.lock().snapshot.state = ConnectionState::Closed;
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        self.lock().snapshot.clone()
    }

    /// The changes not taken yet, oldest first.
    pub fn take_events(&self) -> Vec<ConnectionEvent> {
        self.lock().events.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(events: &[ConnectionEvent]) -> Vec<&'static str> {
        events
            .iter()
            .map(|e| match e {
                ConnectionEvent::Lost { .. } => "lost",
                ConnectionEvent::ConnectFailed { .. } => "failed",
                ConnectionEvent::Connected { .. } => "connected",
            })
            .collect()
    }

    #[test]
    fn an_outage_is_logged_once_then_once_per_interval_and_its_end_with_the_counts() {
        let mut status = Inner::default();
        let t0 = Instant::now();
        status.connected(1_000);
        assert!(status.events.is_empty(), "a first connect is not an event");
        status.lost("reset".into(), t0, 2_000);
        for i in 1..=20u64 {
            status.connect_failed(
                "refused".into(),
                t0 + Duration::from_millis(100 * i),
                2_000 + 100 * i,
            );
        }
        // Lost, the first failure, then nothing until the interval has passed.
        assert_eq!(
            kinds(&status.events.iter().cloned().collect::<Vec<_>>()),
            ["lost", "failed"]
        );
        // An interval after the last logged warning (the first failure, at 100 ms).
        let later = t0 + Duration::from_millis(100) + WARNING_INTERVAL;
        status.connect_failed("refused".into(), later, 12_000);
        status.connected(13_000);
        let events: Vec<_> = status.events.drain(..).collect();
        assert_eq!(kinds(&events), ["lost", "failed", "failed", "connected"]);
        assert_eq!(
            events[2],
            ConnectionEvent::ConnectFailed {
                reason: "refused".into(),
                at_ms: 12_000,
                attempts: 21,
                down_since_ms: 2_000,
                suppressed: 19,
            }
        );
        assert_eq!(
            events[3],
            ConnectionEvent::Connected {
                at_ms: 13_000,
                down_since_ms: 2_000,
                failed_attempts: 21,
                suppressed: 0,
            }
        );
        let snapshot = status.snapshot.clone();
        assert_eq!(snapshot.state, ConnectionState::Connected);
        assert_eq!(snapshot.down_since_ms, None);
        assert_eq!(snapshot.last_error.as_deref(), Some("refused"));
        assert_eq!(
            snapshot.last_outage,
            Some(Outage {
                since_ms: 2_000,
                until_ms: 13_000,
                reason: "refused".into()
            })
        );
    }

    #[test]
    fn a_flapping_connection_logs_one_outage_per_interval() {
        let mut status = Inner::default();
        let t0 = Instant::now();
        status.connected(0);
        for i in 0..50u64 {
            let now = t0 + Duration::from_millis(100 * i);
            status.lost("reset".into(), now, 100 * i);
            status.connected(100 * i + 50);
        }
        let events: Vec<_> = status.events.drain(..).collect();
        assert_eq!(kinds(&events), ["lost", "connected"]);
        // An interval later the next loss is logged, with the count of those that were not.
        status.lost("reset".into(), t0 + WARNING_INTERVAL, 10_000);
        assert_eq!(
            status.events.pop_front(),
            Some(ConnectionEvent::Lost {
                reason: "reset".into(),
                at_ms: 10_000,
                suppressed: 49,
            })
        );
    }

    #[test]
    fn a_failed_first_attempt_at_start_is_logged_and_so_is_the_connect() {
        let mut status = Inner::default();
        let t0 = Instant::now();
        status.connect_failed("refused".into(), t0, 5);
        assert_eq!(status.snapshot.state, ConnectionState::Disconnected);
        assert_eq!(status.snapshot.down_since_ms, Some(5));
        status.connect_failed("refused".into(), t0 + Duration::from_millis(200), 205);
        status.connected(400);
        assert_eq!(
            kinds(&status.events.drain(..).collect::<Vec<_>>()),
            ["failed", "connected"]
        );
    }

    #[test]
    fn nothing_is_recorded_once_closed() {
        let status = ConnectionStatus::default();
        status.connected();
        status.closed();
        status.lost("bye");
        status.connect_failed("bye");
        assert!(status.take_events().is_empty());
        assert_eq!(status.snapshot().state, ConnectionState::Closed);
    }
}
