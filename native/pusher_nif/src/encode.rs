//! Rust values -> Erlang terms: report batches, connection events, stats.

use pusher::backend::AttemptOutcome;
use pusher::connection::{ConnectionEvent, ConnectionState, StatusSnapshot};
use pusher::report::{BackendDown, ReportBatch};
use pusher::Reason;
use pusher::StatsSnapshot;
use rustler::{Atom, Encoder, Env, NifResult, Term};
use smallvec::SmallVec;

use crate::atoms;

pub(crate) mod connection_atoms {
    rustler::atoms! {
        connection_events, backend_down, connect_failed, connected, connecting,
        disconnected, reason, at_ms, down_since_ms, suppressed, failed_attempts, since_ms,
        connection, last_connection_error, last_connection_error_at_ms,
        disconnected_since_ms, connect_failures,
    }
}

pub(crate) fn map_term<'a>(env: Env<'a>, pairs: &[(Atom, Term<'a>)]) -> NifResult<Term<'a>> {
    let keys: SmallVec<[Term; 8]> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
    let values: SmallVec<[Term; 8]> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &values)
}

/// `{lost, #{reason, at_ms, suppressed}}`,
/// `{connect_failed, #{reason, at_ms, attempts, down_since_ms, suppressed}}` or
/// `{connected, #{at_ms, down_since_ms, failed_attempts, suppressed}}`.
pub(crate) fn encode_connection_event<'a>(
    env: Env<'a>,
    event: &ConnectionEvent,
) -> NifResult<Term<'a>> {
    use connection_atoms as a;
    let (kind, details) = match event {
        ConnectionEvent::Lost {
            reason,
            at_ms,
            suppressed,
        } => (
            atoms::lost(),
            map_term(
                env,
                &[
                    (a::reason(), reason.as_str().encode(env)),
                    (a::at_ms(), at_ms.encode(env)),
                    (a::suppressed(), suppressed.encode(env)),
                ],
            )?,
        ),
        ConnectionEvent::ConnectFailed {
            reason,
            at_ms,
            attempts,
            down_since_ms,
            suppressed,
        } => (
            a::connect_failed(),
            map_term(
                env,
                &[
                    (a::reason(), reason.as_str().encode(env)),
                    (a::at_ms(), at_ms.encode(env)),
                    (atoms::attempts(), attempts.encode(env)),
                    (a::down_since_ms(), down_since_ms.encode(env)),
                    (a::suppressed(), suppressed.encode(env)),
                ],
            )?,
        ),
        ConnectionEvent::Connected {
            at_ms,
            down_since_ms,
            failed_attempts,
            suppressed,
        } => (
            a::connected(),
            map_term(
                env,
                &[
                    (a::at_ms(), at_ms.encode(env)),
                    (a::down_since_ms(), down_since_ms.encode(env)),
                    (a::failed_attempts(), failed_attempts.encode(env)),
                    (a::suppressed(), suppressed.encode(env)),
                ],
            )?,
        ),
    };
    Ok((kind, details).encode(env))
}

/// `undefined | #{since_ms, reason}`.
pub(crate) fn encode_backend_down<'a>(
    env: Env<'a>,
    down: Option<&BackendDown>,
) -> NifResult<Term<'a>> {
    match down {
        None => Ok(atoms::undefined().encode(env)),
        Some(down) => map_term(
            env,
            &[
                (connection_atoms::since_ms(), down.since_ms.encode(env)),
                (connection_atoms::reason(), down.reason.as_str().encode(env)),
            ],
        ),
    }
}

/// An attempt's outcome as `mod_event_pusher_instance:attempt_outcome()`: the status
/// code, `published | confirmed | nacked | timeout | result`, `{error_reply, Type}` or
/// `{error, Reason}`.
pub(crate) fn outcome_term<'a>(env: Env<'a>, outcome: &AttemptOutcome) -> Term<'a> {
    match outcome {
        AttemptOutcome::Response(code) => code.encode(env),
        AttemptOutcome::Published => atoms::published().encode(env),
        AttemptOutcome::Confirmed => atoms::confirmed().encode(env),
        AttemptOutcome::Nacked => atoms::nacked().encode(env),
        AttemptOutcome::TimedOut => atoms::timeout().encode(env),
        AttemptOutcome::Replied => atoms::result().encode(env),
        AttemptOutcome::ErrorReply(kind) => (atoms::error_reply(), kind.as_str()).encode(env),
        AttemptOutcome::NoResponse(reason) => {
            (atoms::error(), reason_term(env, reason)).encode(env)
        }
    }
}

mod reason_atoms {
    rustler::atoms! {
        http_status, timeout, host_timeout, publish_timeout, confirm_timeout, nacked,
        connection, tls, error_reply, service_error, bad_request, routing_key_too_long,
        message_too_large, backend_closed, router_down, reply_lost, no_answer_in_batch,
        backend_panicked, retry_deadline_passed, retry_after_past_deadline, drain_timeout,
    }
}

/// A failure reason as `mod_event_pusher_nif:failure_reason()`: an atom, or
/// `{Atom, Detail}` with Detail a number, a text or the last attempt's reason.
pub(crate) fn reason_term<'a>(env: Env<'a>, reason: &Reason) -> Term<'a> {
    use reason_atoms as a;
    let text = |kind: Atom, text: &str| (kind, text).encode(env);
    match reason {
        Reason::HttpStatus(status) => (a::http_status(), status).encode(env),
        Reason::Timeout => a::timeout().encode(env),
        Reason::HostTimeout => a::host_timeout().encode(env),
        Reason::PublishTimeout => a::publish_timeout().encode(env),
        Reason::ConfirmTimeout => a::confirm_timeout().encode(env),
        Reason::Nacked => a::nacked().encode(env),
        Reason::Connection(why) => text(a::connection(), why),
        Reason::Tls(why) => text(a::tls(), why),
        Reason::ErrorReply(kind) => text(a::error_reply(), kind),
        Reason::ServiceError(why) => text(a::service_error(), why),
        Reason::BadRequest(why) => text(a::bad_request(), why),
        Reason::RoutingKeyTooLong(bytes) => (a::routing_key_too_long(), bytes).encode(env),
        Reason::MessageTooLarge(bytes) => (a::message_too_large(), bytes).encode(env),
        Reason::BackendClosed => a::backend_closed().encode(env),
        Reason::RouterDown => a::router_down().encode(env),
        Reason::ReplyLost => a::reply_lost().encode(env),
        Reason::NoAnswerInBatch => a::no_answer_in_batch().encode(env),
        Reason::BackendPanicked => a::backend_panicked().encode(env),
        Reason::RetryDeadlinePassed(last) => {
            (a::retry_deadline_passed(), reason_term(env, last)).encode(env)
        }
        Reason::RetryAfterPastDeadline(seconds, last) => {
            let detail = (seconds, reason_term(env, last));
            (a::retry_after_past_deadline(), detail).encode(env)
        }
        Reason::DrainTimeout(None) => a::drain_timeout().encode(env),
        Reason::DrainTimeout(Some(last)) => {
            (a::drain_timeout(), reason_term(env, last)).encode(env)
        }
    }
}

/// One reason of each kind, for the contract test. The match makes a new kind a
/// compile error here until it is listed.
fn every_reason() -> Vec<Reason> {
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

/// One outcome of each kind a report can carry, for the test that holds them to the
/// Erlang type. The match makes a new kind a compile error here until it is listed.
pub(crate) fn every_outcome_kind() -> Vec<AttemptOutcome> {
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
        .chain(every_reason().into_iter().map(AttemptOutcome::NoResponse))
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

pub(crate) fn encode_batch<'a>(env: Env<'a>, batch: &ReportBatch) -> NifResult<Term<'a>> {
    let attempts: Vec<Term> = batch
        .attempts
        .iter()
        .map(|a| {
            let outcome = outcome_term(env, &a.outcome);
            let elapsed = u64::try_from(a.elapsed.as_micros()).unwrap_or(u64::MAX);
            (bytes_term(env, &a.tag), outcome, elapsed, a.bytes).encode(env)
        })
        .collect();
    let failures: Vec<Term> = batch
        .failures
        .iter()
        .map(|f| {
            (
                bytes_term(env, &f.tag),
                reason_term(env, &f.reason),
                f.attempts,
            )
                .encode(env)
        })
        .collect();
    let c = &batch.counters;
    // dropped_too_large (a part of dropped) only when there were any.
    let names = [
        atoms::delivered(),
        atoms::retried(),
        atoms::failed(),
        atoms::dropped(),
        atoms::dropped_too_large(),
    ];
    let values = [c.delivered, c.retried, c.failed, c.dropped, c.too_large];
    let shown = if c.too_large > 0 { 5 } else { 4 };
    let counters = Term::map_from_arrays(env, &names[..shown], &values[..shown])?;
    let n = &batch.connections;
    let connections = Term::map_from_arrays(
        env,
        &[atoms::opened(), atoms::closed(), atoms::failed()],
        &[n.opened, n.closed, n.failed],
    )?;
    let connection_events = batch
        .connection_events
        .iter()
        .map(|event| encode_connection_event(env, event))
        .collect::<NifResult<Vec<Term>>>()?;
    Term::map_from_term_arrays(
        env,
        &[
            atoms::attempts().encode(env),
            atoms::failures().encode(env),
            atoms::counters().encode(env),
            atoms::connections().encode(env),
            atoms::reports_lost().encode(env),
            connection_atoms::connection_events().encode(env),
            connection_atoms::backend_down().encode(env),
        ],
        &[
            attempts.encode(env),
            failures.encode(env),
            counters,
            connections,
            batch.reports_lost.encode(env),
            connection_events.encode(env),
            encode_backend_down(env, batch.backend_down.as_ref())?,
        ],
    )
}

pub(crate) fn bytes_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut binary = rustler::NewBinary::new(env, bytes.len());
    binary.as_mut_slice().copy_from_slice(bytes);
    binary.into()
}

/// The connection keys of a rabbit instance's stats.
fn connection_stats<'a>(env: Env<'a>, status: &StatusSnapshot) -> Vec<(Atom, Term<'a>)> {
    use connection_atoms as a;
    let optional_ms = |v: Option<u64>| match v {
        Some(ms) => ms.encode(env),
        None => atoms::undefined().encode(env),
    };
    let state = match status.state {
        ConnectionState::Connected => a::connected(),
        ConnectionState::Connecting => a::connecting(),
        ConnectionState::Disconnected => a::disconnected(),
        ConnectionState::Closed => atoms::closed(),
    };
    vec![
        (a::connection(), state.encode(env)),
        (
            a::last_connection_error(),
            match &status.last_error {
                Some(reason) => reason.as_str().encode(env),
                None => atoms::undefined().encode(env),
            },
        ),
        (
            a::last_connection_error_at_ms(),
            optional_ms(status.last_error_at_ms),
        ),
        (
            a::disconnected_since_ms(),
            optional_ms(status.down_since_ms),
        ),
        (a::connect_failures(), status.failed_attempts.encode(env)),
    ]
}

pub(crate) fn stats_term<'a>(
    env: Env<'a>,
    s: &StatsSnapshot,
    lost: Option<u64>,
    connection: Option<StatusSnapshot>,
) -> Term<'a> {
    let latency = |v: Option<u64>| match v {
        Some(us) => us.encode(env),
        None => atoms::undefined().encode(env),
    };
    let mut keys = vec![
        atoms::accepted(),
        atoms::delivered(),
        atoms::retried(),
        atoms::failed(),
        atoms::dropped(),
        atoms::dropped_too_large(),
        atoms::last_too_large_bytes(),
        atoms::max_bytes(),
        atoms::queued(),
        atoms::queued_bytes(),
        atoms::in_flight(),
        atoms::waiting_retry(),
        atoms::latency_p50_us(),
        atoms::latency_p99_us(),
    ];
    let mut values = vec![
        s.accepted.encode(env),
        s.delivered.encode(env),
        s.retried.encode(env),
        s.failed.encode(env),
        s.dropped.encode(env),
        s.dropped_too_large.encode(env),
        s.last_too_large_bytes.encode(env),
        s.max_bytes.encode(env),
        s.queued.encode(env),
        s.queued_bytes.encode(env),
        s.in_flight.encode(env),
        s.waiting_retry.encode(env),
        latency(s.latency_p50_us),
        latency(s.latency_p99_us),
    ];
    if let Some(lost) = lost {
        keys.push(atoms::lost());
        values.push(lost.encode(env));
    }
    let extra = connection.map_or_else(Vec::new, |status| connection_stats(env, &status));
    for (key, value) in extra {
        keys.push(key);
        values.push(value);
    }
    let keys: Vec<Term> = keys.iter().map(|k| k.encode(env)).collect();
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
}
