//! The Erlang process that receives an instance's reports (and, for push, its routing
//! requests).
//!
//! It can change: the reporter lives under a supervisor, and a restarted reporter takes
//! the instance over with `set_reporter`. A batch that cannot be sent because the
//! reporter is dead is held and goes to the next one, so the dead window loses nothing
//! here. What was handed to live reporters is totalled: the host compares those totals
//! with what its reporters handled to count what a killed reporter's mailbox took with
//! it (see mod_event_pusher_instance).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use pusher::report::{ReportBatch, ReportSink};
use rustler::{Encoder, Env, LocalPid, OwnedEnv, Term};

use crate::atoms;

mod reporter_atoms {
    rustler::atoms! { batches, reports, held }
}

/// Held batches beyond this many attempt and failure reports give up the details of
/// the oldest ones (counted as reports lost); their counts are kept.
const MAX_HELD_REPORTS: usize = 20_000;
/// Connection state changes kept across folded batches (they are rate-limited at the
/// source; this only bounds a reporter that never comes back).
const MAX_HELD_CONNECTION_EVENTS: usize = 100;

/// Totals over every batch a live reporter was sent.
#[derive(Default)]
struct SentTotals {
    batches: AtomicU64,
    /// Attempt and failure reports.
    reports: AtomicU64,
    delivered: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
    connect_failed: AtomicU64,
}

impl SentTotals {
    fn add(&self, batch: &ReportBatch) {
        let reports = batch.attempts.len() + batch.failures.len();
        self.batches.fetch_add(1, Relaxed);
        self.reports.fetch_add(reports as u64, Relaxed);
        self.delivered.fetch_add(batch.counters.delivered, Relaxed);
        self.retried.fetch_add(batch.counters.retried, Relaxed);
        self.failed.fetch_add(batch.counters.failed, Relaxed);
        self.dropped.fetch_add(batch.counters.dropped, Relaxed);
        self.opened.fetch_add(batch.connections.opened, Relaxed);
        self.closed.fetch_add(batch.connections.closed, Relaxed);
        self.connect_failed
            .fetch_add(batch.connections.failed, Relaxed);
    }
}

/// What `reports_sent/1` and `set_reporter/2` answer.
pub struct SentSnapshot {
    batches: u64,
    reports: u64,
    counters: [u64; 4],
    connections: [u64; 3],
    held: u64,
}

/// `#{batches, reports, counters => #{delivered, retried, failed, dropped},
/// connections => #{opened, closed, failed}, held}`.
impl Encoder for SentSnapshot {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let counters = Term::map_from_arrays(
            env,
            &[
                atoms::delivered(),
                atoms::retried(),
                atoms::failed(),
                atoms::dropped(),
            ],
            &self.counters,
        );
        let connections = Term::map_from_arrays(
            env,
            &[atoms::opened(), atoms::closed(), atoms::failed()],
            &self.connections,
        );
        let (Ok(counters), Ok(connections)) = (counters, connections) else {
            return crate::errors::BoundaryError::Badarg.encode(env);
        };
        let keys = [
            reporter_atoms::batches().encode(env),
            reporter_atoms::reports().encode(env),
            atoms::counters().encode(env),
            atoms::connections().encode(env),
            reporter_atoms::held().encode(env),
        ];
        let values = [
            self.batches.encode(env),
            self.reports.encode(env),
            counters,
            connections,
            self.held.encode(env),
        ];
        Term::map_from_term_arrays(env, &keys, &values)
            .unwrap_or_else(|_| crate::errors::BoundaryError::Badarg.encode(env))
    }
}

/// The current reporter of one instance, shared by its report sink and its router.
pub struct ReportTarget {
    pid: Mutex<LocalPid>,
    /// Taken for every send, so that batches leave in order and `set_reporter` sees
    /// totals that match the pid it replaces. Holds what no live process took yet.
    held: Mutex<VecDeque<ReportBatch>>,
    held_count: AtomicU64,
    sent: SentTotals,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReportTarget {
    pub fn new(pid: LocalPid) -> Self {
        ReportTarget {
            pid: Mutex::new(pid),
            held: Mutex::new(VecDeque::new()),
            held_count: AtomicU64::new(0),
            sent: SentTotals::default(),
        }
    }

    pub fn pid(&self) -> LocalPid {
        *lock(&self.pid)
    }

    /// Makes `pid` the reporter; answers the totals sent to its predecessors. The
    /// caller must then call `send_held` from a thread that is not a scheduler's.
    pub fn replace(&self, pid: LocalPid) -> SentSnapshot {
        let held = lock(&self.held);
        let snapshot = self.snapshot(held.len());
        *lock(&self.pid) = pid;
        snapshot
    }

    /// What was sent so far, and how many batches wait for a live reporter.
    pub fn sent(&self) -> SentSnapshot {
        self.snapshot(self.held_count.load(Relaxed) as usize)
    }

    fn snapshot(&self, held: usize) -> SentSnapshot {
        let s = &self.sent;
        SentSnapshot {
            batches: s.batches.load(Relaxed),
            reports: s.reports.load(Relaxed),
            counters: [
                s.delivered.load(Relaxed),
                s.retried.load(Relaxed),
                s.failed.load(Relaxed),
                s.dropped.load(Relaxed),
            ],
            connections: [
                s.opened.load(Relaxed),
                s.closed.load(Relaxed),
                s.connect_failed.load(Relaxed),
            ],
            held: held as u64,
        }
    }

    /// Sends the held batches, oldest first, until the reporter refuses one (it is
    /// dead). Runs on a tokio thread: sending from a scheduler thread panics.
    pub fn send_held(&self) {
        let mut held = lock(&self.held);
        self.send_held_locked(&mut held);
    }

    fn send_held_locked(&self, held: &mut VecDeque<ReportBatch>) {
        let pid = self.pid();
        let mut owned = OwnedEnv::new();
        while let Some(batch) = held.front() {
            let sent = owned.send_and_clear(&pid, |env| {
                let body = crate::encode::encode_batch(env, batch)
                    .unwrap_or_else(|_| crate::errors::BoundaryError::Badarg.encode(env));
                (atoms::mod_event_pusher_nif(), atoms::report(), body).encode(env)
            });
            if sent.is_err() {
                break;
            }
            self.sent.add(batch);
            held.pop_front();
        }
        bound_held(held);
        self.held_count.store(held.len() as u64, Relaxed);
    }
}

impl ReportSink for ReportTarget {
    fn send(&self, batch: ReportBatch) {
        let mut held = lock(&self.held);
        held.push_back(batch);
        self.send_held_locked(&mut held);
    }
}

/// Folds the oldest held batches into the next ones while the details exceed
/// MAX_HELD_REPORTS.
fn bound_held(held: &mut VecDeque<ReportBatch>) {
    let mut reports: usize = held
        .iter()
        .map(|b| b.attempts.len() + b.failures.len())
        .sum();
    while reports > MAX_HELD_REPORTS && held.len() > 1 {
        if let Some(oldest) = held.pop_front() {
            reports -= oldest.attempts.len() + oldest.failures.len();
            if let Some(next) = held.front_mut() {
                fold_into(oldest, next);
            }
        }
    }
}

/// Counts add up; the older batch's attempt and failure details are dropped and
/// counted as reports lost. Destructured in full so that a new field of ReportBatch
/// does not compile until it is folded too.
fn fold_into(older: ReportBatch, newer: &mut ReportBatch) {
    let ReportBatch {
        attempts,
        failures,
        counters,
        connections,
        reports_lost,
        mut connection_events,
        backend_down,
    } = older;
    newer.counters.delivered += counters.delivered;
    newer.counters.retried += counters.retried;
    newer.counters.failed += counters.failed;
    newer.counters.dropped += counters.dropped;
    newer.counters.too_large += counters.too_large;
    newer.connections.opened += connections.opened;
    newer.connections.closed += connections.closed;
    newer.connections.failed += connections.failed;
    newer.reports_lost += reports_lost + (attempts.len() + failures.len()) as u64;
    connection_events.append(&mut newer.connection_events);
    let excess = connection_events
        .len()
        .saturating_sub(MAX_HELD_CONNECTION_EVENTS);
    connection_events.drain(..excess);
    newer.connection_events = connection_events;
    if newer.backend_down.is_none() {
        newer.backend_down = backend_down;
    }
}
