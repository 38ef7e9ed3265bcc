//! Why an attempt did not deliver, or why an event was given up: one closed set. The
//! NIF writes each as an atom or `{Atom, Detail}` (README, "Failure reasons"), so the
//! host matches on them instead of parsing prose.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The HTTP server answered with this status (429 and 5xx are retried).
    HttpStatus(u16),
    /// No answer in time: the HTTP request, the SNS call or the pubsub service's reply.
    Timeout,
    /// MongooseIM's own IQ timeout passed before the pubsub service replied.
    HostTimeout,
    /// The AMQP frames could not be written in time (the broker blocks publishers).
    PublishTimeout,
    /// Written, but the broker's confirm did not come in time.
    ConfirmTimeout,
    /// The broker refused the message (AMQP nack).
    Nacked,
    /// No answer: the connection could not be made or broke (the transport's words).
    Connection(String),
    /// The TLS handshake failed: a refused certificate, a protocol error.
    Tls(String),
    /// The pubsub service answered with an IQ error of this type.
    ErrorReply(String),
    /// The service refused the call: its error code and message (SNS).
    ServiceError(String),
    /// The event cannot make a request: a header, an attribute or an entry the client
    /// refuses (the detail says which).
    BadRequest(String),
    /// The routing key has this many bytes; AMQP allows 255.
    RoutingKeyTooLong(usize),
    /// The AMQP message has this many bytes, over `max_message_bytes`.
    MessageTooLarge(usize),
    /// The backend's connection was closed for good (stopping).
    BackendClosed,
    /// The process that routes publishes is gone.
    RouterDown,
    /// The reply's waiter vanished (the instance stopped under it).
    ReplyLost,
    /// A batch call answered fewer entries than it was given.
    NoAnswerInBatch,
    /// The backend panicked during the attempt.
    BackendPanicked,
    /// Given up: the next attempt would come after the retry deadline. The last
    /// attempt's reason is inside.
    RetryDeadlinePassed(Box<Reason>),
    /// Given up: the server's Retry-After (seconds) ends after the retry deadline.
    RetryAfterPastDeadline(u64, Box<Reason>),
    /// Lost at stop: the drain time ran out while it was queued, or waiting to be
    /// retried after the failure inside.
    DrainTimeout(Option<Box<Reason>>),
}

impl Reason {
    /// One reason of each kind, for the contract test that holds each to the host's
    /// type. The match makes a new kind a compile error here until it is listed.
    pub fn one_of_each() -> Vec<Reason> {
        let last = || Box::new(Reason::HttpStatus(503));
        let every = vec![
            Reason::HttpStatus(503),
            Reason::Timeout,
            Reason::HostTimeout,
            Reason::PublishTimeout,
            Reason::ConfirmTimeout,
            Reason::Nacked,
            Reason::Connection("connect failed".into()),
            Reason::Tls("invalid peer certificate: UnknownIssuer".into()),
            Reason::ErrorReply("cancel".into()),
            Reason::ServiceError("InvalidParameter: bad (HTTP 400)".into()),
            Reason::BadRequest("invalid header name".into()),
            Reason::RoutingKeyTooLong(300),
            Reason::MessageTooLarge(200_000_000),
            Reason::BackendClosed,
            Reason::RouterDown,
            Reason::ReplyLost,
            Reason::NoAnswerInBatch,
            Reason::BackendPanicked,
            Reason::RetryDeadlinePassed(last()),
            Reason::RetryAfterPastDeadline(120, last()),
            Reason::DrainTimeout(None),
            Reason::DrainTimeout(Some(last())),
        ];
        for reason in &every {
            match reason {
                Reason::HttpStatus(_)
                | Reason::Timeout
                | Reason::HostTimeout
                | Reason::PublishTimeout
                | Reason::ConfirmTimeout
                | Reason::Nacked
                | Reason::Connection(_)
                | Reason::Tls(_)
                | Reason::ErrorReply(_)
                | Reason::ServiceError(_)
                | Reason::BadRequest(_)
                | Reason::RoutingKeyTooLong(_)
                | Reason::MessageTooLarge(_)
                | Reason::BackendClosed
                | Reason::RouterDown
                | Reason::ReplyLost
                | Reason::NoAnswerInBatch
                | Reason::BackendPanicked
                | Reason::RetryDeadlinePassed(_)
                | Reason::RetryAfterPastDeadline(..)
                | Reason::DrainTimeout(_) => {}
            }
        }
        every
    }

    pub fn retry_after_past_deadline(after: Duration, last: Reason) -> Self {
        let seconds = after
            .as_secs()
            .saturating_add(u64::from(after.subsec_nanos() > 0));
        Reason::RetryAfterPastDeadline(seconds, Box::new(last))
    }
}

/// For Rust-side logs and test messages; the host gets the structured form.
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
