//! Rust values -> Erlang terms: report batches, failure reasons, stats.

use pusher::backend::AttemptOutcome;
use pusher::connection::{ConnectionEvent, ConnectionState, StatusSnapshot};
use pusher::handover::HandedOver;
use pusher::report::{BackendDown, CounterDelta, ReportBatch};
use pusher::stats::ConnectionSnapshot;
use pusher::{Reason, StatsSnapshot};
use rustler::{Atom, Encoder, Env, Term};
use smallvec::SmallVec;

use crate::atoms;

mod keys {
    rustler::atoms! {
        connection_events, backend_down, connect_failed, connected, connecting,
        disconnected, reason, at_ms, down_since_ms, suppressed, failed_attempts, since_ms,
        connection, last_connection_error, last_connection_error_at_ms,
        disconnected_since_ms, connect_failures, batches, reports, held,
        http_status, host_timeout, publish_timeout, confirm_timeout, tls, service_error,
        bad_request, routing_key_too_long, message_too_large, backend_closed, router_down,
        reply_lost, no_answer_in_batch, backend_panicked, retry_deadline_passed,
        retry_after_past_deadline, drain_timeout,
    }
}

/// A map with atom keys (fixed and distinct: building it cannot fail).
fn map<'a>(env: Env<'a>, pairs: &[(Atom, Term<'a>)]) -> Term<'a> {
    let (keys, values): (SmallVec<[Term; 16]>, SmallVec<[Term; 16]>) =
        pairs.iter().map(|(k, v)| (k.encode(env), *v)).unzip();
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
}

/// The value, or `undefined`.
fn optional<'a, T: Encoder>(env: Env<'a>, value: Option<T>) -> Term<'a> {
    match value {
        Some(value) => value.encode(env),
        None => atoms::undefined().encode(env),
    }
}

/// A failure reason as `mod_event_pusher_nif:failure_reason()`: an atom, or
/// `{Atom, Detail}` with Detail a number, a text or the last attempt's reason.
pub(crate) fn reason_term<'a>(env: Env<'a>, reason: &Reason) -> Term<'a> {
    use keys as k;
    let tagged = |tag: Atom, detail: Term<'a>| (tag, detail).encode(env);
    match reason {
        Reason::HttpStatus(status) => tagged(k::http_status(), status.encode(env)),
        Reason::Timeout => atoms::timeout().encode(env),
        Reason::HostTimeout => k::host_timeout().encode(env),
        Reason::PublishTimeout => k::publish_timeout().encode(env),
        Reason::ConfirmTimeout => k::confirm_timeout().encode(env),
        Reason::Nacked => atoms::nacked().encode(env),
        Reason::Connection(why) => tagged(k::connection(), why.encode(env)),
        Reason::Tls(why) => tagged(k::tls(), why.encode(env)),
        Reason::ErrorReply(kind) => tagged(atoms::error_reply(), kind.encode(env)),
        Reason::ServiceError(why) => tagged(k::service_error(), why.encode(env)),
        Reason::BadRequest(why) => tagged(k::bad_request(), why.encode(env)),
        Reason::RoutingKeyTooLong(bytes) => tagged(k::routing_key_too_long(), bytes.encode(env)),
        Reason::MessageTooLarge(bytes) => tagged(k::message_too_large(), bytes.encode(env)),
        Reason::BackendClosed => k::backend_closed().encode(env),
        Reason::RouterDown => k::router_down().encode(env),
        Reason::ReplyLost => k::reply_lost().encode(env),
        Reason::NoAnswerInBatch => k::no_answer_in_batch().encode(env),
        Reason::BackendPanicked => k::backend_panicked().encode(env),
        Reason::RetryDeadlinePassed(last) => {
            tagged(k::retry_deadline_passed(), reason_term(env, last))
        }
        Reason::RetryAfterPastDeadline(seconds, last) => tagged(
            k::retry_after_past_deadline(),
            (seconds, reason_term(env, last)).encode(env),
        ),
        Reason::DrainTimeout(None) => k::drain_timeout().encode(env),
        Reason::DrainTimeout(Some(last)) => tagged(k::drain_timeout(), reason_term(env, last)),
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

/// `{lost, #{reason, at_ms, suppressed}}`,
/// `{connect_failed, #{reason, at_ms, attempts, down_since_ms, suppressed}}` or
/// `{connected, #{at_ms, down_since_ms, failed_attempts, suppressed}}`.
fn connection_event_term<'a>(env: Env<'a>, event: &ConnectionEvent) -> Term<'a> {
    use keys as k;
    let e = |value: &dyn Encoder| value.encode(env);
    let (kind, details) = match event {
        ConnectionEvent::Lost {
            reason,
            at_ms,
            suppressed,
        } => (
            atoms::lost(),
            map(
                env,
                &[
                    (k::reason(), e(reason)),
                    (k::at_ms(), e(at_ms)),
                    (k::suppressed(), e(suppressed)),
                ],
            ),
        ),
        ConnectionEvent::ConnectFailed {
            reason,
            at_ms,
            attempts,
            down_since_ms,
            suppressed,
        } => (
            k::connect_failed(),
            map(
                env,
                &[
                    (k::reason(), e(reason)),
                    (k::at_ms(), e(at_ms)),
                    (atoms::attempts(), e(attempts)),
                    (k::down_since_ms(), e(down_since_ms)),
                    (k::suppressed(), e(suppressed)),
                ],
            ),
        ),
        ConnectionEvent::Connected {
            at_ms,
            down_since_ms,
            failed_attempts,
            suppressed,
        } => (
            k::connected(),
            map(
                env,
                &[
                    (k::at_ms(), e(at_ms)),
                    (k::down_since_ms(), e(down_since_ms)),
                    (k::failed_attempts(), e(failed_attempts)),
                    (k::suppressed(), e(suppressed)),
                ],
            ),
        ),
    };
    (kind, details).encode(env)
}

/// `undefined | #{since_ms, reason}`.
fn backend_down_term<'a>(env: Env<'a>, down: Option<&BackendDown>) -> Term<'a> {
    match down {
        None => atoms::undefined().encode(env),
        Some(down) => map(
            env,
            &[
                (keys::since_ms(), down.since_ms.encode(env)),
                (keys::reason(), down.reason.encode(env)),
            ],
        ),
    }
}

/// `#{delivered, retried, failed, dropped}`, with `dropped_too_large` (a part of
/// dropped) when `with_too_large`.
fn counters_term<'a>(env: Env<'a>, c: &CounterDelta, with_too_large: bool) -> Term<'a> {
    let mut pairs: SmallVec<[(Atom, Term); 5]> = SmallVec::from_buf([
        (atoms::delivered(), c.delivered.encode(env)),
        (atoms::retried(), c.retried.encode(env)),
        (atoms::failed(), c.failed.encode(env)),
        (atoms::dropped(), c.dropped.encode(env)),
        (atoms::dropped_too_large(), c.too_large.encode(env)),
    ]);
    pairs.truncate(if with_too_large { 5 } else { 4 });
    map(env, &pairs)
}

fn connections_term<'a>(env: Env<'a>, n: &ConnectionSnapshot) -> Term<'a> {
    map(
        env,
        &[
            (atoms::opened(), n.opened.encode(env)),
            (atoms::closed(), n.closed.encode(env)),
            (atoms::failed(), n.failed.encode(env)),
        ],
    )
}

/// A report batch as `mod_event_pusher_instance:report()`.
pub(crate) fn encode_batch<'a>(env: Env<'a>, batch: &ReportBatch) -> Term<'a> {
    let attempts: Vec<Term> = batch
        .attempts
        .iter()
        .map(|a| {
            let elapsed = u64::try_from(a.elapsed.as_micros()).unwrap_or(u64::MAX);
            (
                binary(env, &a.tag),
                outcome_term(env, &a.outcome),
                elapsed,
                a.bytes,
            )
                .encode(env)
        })
        .collect();
    let failures: Vec<Term> = batch
        .failures
        .iter()
        .map(|f| (binary(env, &f.tag), reason_term(env, &f.reason), f.attempts).encode(env))
        .collect();
    let events: Vec<Term> = batch
        .connection_events
        .iter()
        .map(|event| connection_event_term(env, event))
        .collect();
    map(
        env,
        &[
            (atoms::attempts(), attempts.encode(env)),
            (atoms::failures(), failures.encode(env)),
            (
                atoms::counters(),
                counters_term(env, &batch.counters, batch.counters.too_large > 0),
            ),
            (
                atoms::connections(),
                connections_term(env, &batch.connections),
            ),
            (atoms::reports_lost(), batch.reports_lost.encode(env)),
            (keys::connection_events(), events.encode(env)),
            (
                keys::backend_down(),
                backend_down_term(env, batch.backend_down.as_ref()),
            ),
        ],
    )
}

/// `#{batches, reports, counters => #{delivered, retried, failed, dropped},
/// connections => #{opened, closed, failed}, held}`.
pub(crate) fn handed_over_term<'a>(env: Env<'a>, sent: &HandedOver) -> Term<'a> {
    map(
        env,
        &[
            (keys::batches(), sent.batches.encode(env)),
            (keys::reports(), sent.reports.encode(env)),
            (atoms::counters(), counters_term(env, &sent.counters, false)),
            (
                atoms::connections(),
                connections_term(env, &sent.connections),
            ),
            (keys::held(), sent.held.encode(env)),
        ],
    )
}

fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut binary = rustler::NewBinary::new(env, bytes.len());
    binary.as_mut_slice().copy_from_slice(bytes);
    binary.into()
}

/// The instance's counters, `lost` at stop, and a rabbit instance's connection.
pub(crate) fn stats_term<'a>(
    env: Env<'a>,
    s: &StatsSnapshot,
    lost: Option<u64>,
    connection: Option<StatusSnapshot>,
) -> Term<'a> {
    use keys as k;
    let mut pairs: SmallVec<[(Atom, Term); 24]> = SmallVec::from_slice(&[
        (atoms::accepted(), s.accepted.encode(env)),
        (atoms::delivered(), s.delivered.encode(env)),
        (atoms::retried(), s.retried.encode(env)),
        (atoms::failed(), s.failed.encode(env)),
        (atoms::dropped(), s.dropped.encode(env)),
        (atoms::dropped_too_large(), s.dropped_too_large.encode(env)),
        (
            atoms::last_too_large_bytes(),
            s.last_too_large_bytes.encode(env),
        ),
        (atoms::max_bytes(), s.max_bytes.encode(env)),
        (atoms::queued(), s.queued.encode(env)),
        (atoms::queued_bytes(), s.queued_bytes.encode(env)),
        (atoms::in_flight(), s.in_flight.encode(env)),
        (atoms::waiting_retry(), s.waiting_retry.encode(env)),
        (atoms::latency_p50_us(), optional(env, s.latency_p50_us)),
        (atoms::latency_p99_us(), optional(env, s.latency_p99_us)),
    ]);
    if let Some(lost) = lost {
        pairs.push((atoms::lost(), lost.encode(env)));
    }
    if let Some(status) = connection {
        let state = match status.state {
            ConnectionState::Connected => k::connected(),
            ConnectionState::Connecting => k::connecting(),
            ConnectionState::Disconnected => k::disconnected(),
            ConnectionState::Closed => atoms::closed(),
        };
        pairs.extend([
            (k::connection(), state.encode(env)),
            (
                k::last_connection_error(),
                optional(env, status.last_error.as_deref()),
            ),
            (
                k::last_connection_error_at_ms(),
                optional(env, status.last_error_at_ms),
            ),
            (
                k::disconnected_since_ms(),
                optional(env, status.down_since_ms),
            ),
            (k::connect_failures(), status.failed_attempts.encode(env)),
        ]);
    }
    map(env, &pairs)
}
