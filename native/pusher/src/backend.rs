//! What a delivery backend must provide to the generic [`crate::Instance`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::reason::Reason;
use crate::stats::ConnectionCounters;

/// The result of one delivery attempt, as the backend classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The server took the event.
    Delivered,
    /// Worth another attempt (5xx, 429, connection error, nack, timeout...), after the
    /// retry policy's backoff.
    Retry(Reason),
    /// Worth another attempt, but not before `after` has passed: the server said when
    /// (HTTP `Retry-After`). The next attempt waits for the longer of this and the
    /// backoff; if that lands past the event's retry deadline, the event fails now.
    RetryAfter { reason: Reason, after: Duration },
    /// Trying again cannot help (4xx, malformed event...).
    Fatal(Reason),
}

/// What one attempt looked like from the wire, for metrics (MongooseIM reports every
/// HTTP response, whatever its status, every attempt that got no response, and every
/// AMQP publish as published, failed or timed out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The server answered with this status code (HTTP).
    Response(u16),
    /// Written to the broker, publisher confirms off (AMQP).
    Published,
    /// Acknowledged by the broker (AMQP, confirms on).
    Confirmed,
    /// Refused by the broker (AMQP nack).
    Nacked,
    /// No confirm (AMQP) or reply (XMPP) came in time.
    TimedOut,
    /// The service answered with an IQ result (XMPP push).
    Replied,
    /// The service answered with an IQ error of this type (XMPP push).
    ErrorReply(String),
    /// No answer came; the reason says why.
    NoResponse(Reason),
}

impl AttemptOutcome {
    /// One outcome of each kind a report can carry, for the test that holds them to the
    /// Erlang type. The match makes a new kind a compile error here until it is listed.
    pub fn one_of_each() -> Vec<AttemptOutcome> {
        let every = vec![
            AttemptOutcome::Response(503),
            AttemptOutcome::Published,
            AttemptOutcome::Confirmed,
            AttemptOutcome::Nacked,
            AttemptOutcome::TimedOut,
            AttemptOutcome::Replied,
            AttemptOutcome::ErrorReply("cancel".into()),
        ];
        let every: Vec<AttemptOutcome> = every
            .into_iter()
            .chain(
                Reason::one_of_each()
                    .into_iter()
                    .map(AttemptOutcome::NoResponse),
            )
            .collect();
        for outcome in &every {
            match outcome {
                AttemptOutcome::Response(_)
                | AttemptOutcome::Published
                | AttemptOutcome::Confirmed
                | AttemptOutcome::Nacked
                | AttemptOutcome::TimedOut
                | AttemptOutcome::Replied
                | AttemptOutcome::ErrorReply(_)
                | AttemptOutcome::NoResponse(_) => {}
            }
        }
        every
    }
}

/// One attempt's verdict plus what the wire saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub verdict: Verdict,
    pub outcome: AttemptOutcome,
    /// Bytes this attempt put on the wire, when the backend knows them better than the
    /// queued event's size (the AMQP payload, say); reported with the attempt.
    pub wire_bytes: Option<usize>,
}

impl Attempt {
    pub fn no_response(reason: Reason) -> Self {
        Attempt {
            verdict: Verdict::Retry(reason.clone()),
            outcome: AttemptOutcome::NoResponse(reason),
            wire_bytes: None,
        }
    }

    pub fn rejected(reason: Reason) -> Self {
        Attempt {
            verdict: Verdict::Fatal(reason.clone()),
            outcome: AttemptOutcome::NoResponse(reason),
            wire_bytes: None,
        }
    }
}

/// A delivery backend: owns its connections, knows how to send one event.
pub trait Backend: Send + Sync + 'static {
    type Event: Send + Sync + 'static;

    /// Sends one event once. Retrying is the instance's business, not the backend's.
    fn deliver(&self, event: &Self::Event) -> impl Future<Output = Attempt> + Send;

    /// Most events one [`Backend::deliver_batch`] call may carry; 1 (the default)
    /// means the backend has no batch call.
    fn batch_limit(&self) -> usize {
        1
    }

    /// Sends up to `batch_limit` events at once, answering one attempt per event, in
    /// order (a missing answer counts as a retryable failure). Only called with two
    /// or more events.
    fn deliver_batch<'a>(
        &'a self,
        events: &'a [&'a Self::Event],
    ) -> impl Future<Output = Vec<Attempt>> + Send + 'a {
        async move {
            let mut attempts = Vec::with_capacity(events.len());
            for event in events {
                attempts.push(self.deliver(event).await);
            }
            attempts
        }
    }

    /// Counters of the backend's own connections, for backends that manage them
    /// (reported as MongooseIM's wpool_rabbit_connections, say).
    fn connections(&self) -> Option<Arc<ConnectionCounters>> {
        None
    }

    /// Called once the instance has drained on stop: close connections cleanly.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
