//! Report batches on their way to a host process that can die and be replaced (the
//! reporter). Batches leave in order; while no live process takes them they are held,
//! bounded in detail but never in counts; and what was handed over is totalled, so the
//! host can tell what a dead process's mailbox took with it.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use crate::report::{CounterDelta, ReportBatch};
use crate::stats::ConnectionSnapshot;

/// Held batches beyond this many attempt and failure reports give up the details of
/// the oldest ones (counted as reports lost); their counts are kept.
pub const MAX_HELD_REPORTS: usize = 20_000;
/// Connection state changes kept across folded batches (they are rate-limited at the
/// source; this only bounds a host process that never comes back).
pub const MAX_HELD_CONNECTION_EVENTS: usize = 100;

/// What was handed over so far, and how many batches wait for a live process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandedOver {
    pub batches: u64,
    /// Attempt and failure reports.
    pub reports: u64,
    pub counters: CounterDelta,
    pub connections: ConnectionSnapshot,
    pub held: u64,
}

#[derive(Default)]
struct State {
    held: VecDeque<ReportBatch>,
    totals: HandedOver,
}

#[derive(Default)]
pub struct Handover {
    /// Taken for every hand-over, so that batches leave in order and a switch of
    /// process sees totals that match the process it replaces.
    state: Mutex<State>,
}

impl Handover {
    /// Queues `batch`, then hands over what is held, oldest first, while `deliver`
    /// takes them (false: the process is gone; the rest waits for the next one).
    pub fn push(&self, batch: ReportBatch, deliver: impl FnMut(&ReportBatch) -> bool) {
        let mut state = self.lock();
        state.held.push_back(batch);
        hand_over(&mut state, deliver);
    }

    /// Hands over what is held (to a process that just took over).
    pub fn hand_over(&self, deliver: impl FnMut(&ReportBatch) -> bool) {
        hand_over(&mut self.lock(), deliver);
    }

    /// Runs `switch` (the change of process) between two hand-overs, and answers what
    /// the processes before it were handed.
    pub fn switch(&self, switch: impl FnOnce()) -> HandedOver {
        let state = self.lock();
        switch();
        state.totals
    }

    pub fn handed_over(&self) -> HandedOver {
        self.lock().totals
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn hand_over(state: &mut State, mut deliver: impl FnMut(&ReportBatch) -> bool) {
    while let Some(batch) = state.held.front() {
        if !deliver(batch) {
            break;
        }
        add(&mut state.totals, batch);
        state.held.pop_front();
    }
    bound_held(&mut state.held);
    state.totals.held = state.held.len() as u64;
}

fn add(totals: &mut HandedOver, batch: &ReportBatch) {
    totals.batches += 1;
    totals.reports += (batch.attempts.len() + batch.failures.len()) as u64;
    add_counters(&mut totals.counters, &batch.counters);
    add_connections(&mut totals.connections, &batch.connections);
}

fn add_counters(sum: &mut CounterDelta, more: &CounterDelta) {
    sum.delivered += more.delivered;
    sum.retried += more.retried;
    sum.failed += more.failed;
    sum.dropped += more.dropped;
    sum.too_large += more.too_large;
}

fn add_connections(sum: &mut ConnectionSnapshot, more: &ConnectionSnapshot) {
    sum.opened += more.opened;
    sum.closed += more.closed;
    sum.failed += more.failed;
}

/// Folds the oldest held batches into the next ones while the details exceed
/// MAX_HELD_REPORTS.
fn bound_held(held: &mut VecDeque<ReportBatch>) {
    let details = |b: &ReportBatch| b.attempts.len() + b.failures.len();
    let mut reports: usize = held.iter().map(details).sum();
    while reports > MAX_HELD_REPORTS && held.len() > 1 {
        if let Some(oldest) = held.pop_front() {
            reports -= details(&oldest);
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
    add_counters(&mut newer.counters, &counters);
    add_connections(&mut newer.connections, &connections);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::FailureReport;
    use crate::{queue::Tag, Reason};

    fn batch(delivered: u64, failures: usize) -> ReportBatch {
        let failure = FailureReport {
            tag: Tag::from_slice(b"t"),
            reason: Reason::Timeout,
            attempts: 1,
        };
        ReportBatch {
            failures: vec![failure; failures],
            counters: CounterDelta {
                delivered,
                ..CounterDelta::default()
            },
            ..ReportBatch::default()
        }
    }

    #[test]
    fn batches_wait_for_a_live_process_and_leave_in_order() {
        let handover = Handover::default();
        handover.push(batch(1, 0), |_| false);
        handover.push(batch(2, 0), |_| false);
        assert_eq!(handover.handed_over().held, 2);
        let mut seen = Vec::new();
        let before = handover.switch(|| {});
        assert_eq!((before.batches, before.held), (0, 2));
        handover.hand_over(|b| {
            seen.push(b.counters.delivered);
            true
        });
        assert_eq!(seen, vec![1, 2]);
        let after = handover.handed_over();
        assert_eq!(
            (after.batches, after.counters.delivered, after.held),
            (2, 3, 0)
        );
    }

    #[test]
    fn held_details_are_bounded_and_their_counts_kept() {
        let handover = Handover::default();
        for _ in 0..3 {
            handover.push(batch(1, MAX_HELD_REPORTS / 2 + 1), |_| false);
        }
        let mut delivered = Vec::new();
        handover.hand_over(|b| {
            delivered.push((b.counters.delivered, b.failures.len(), b.reports_lost));
            true
        });
        // Each time the details passed the bound, the oldest batch was folded into the
        // next: all counts kept, the folded details counted as lost.
        let each = MAX_HELD_REPORTS / 2 + 1;
        assert_eq!(delivered, vec![(3, each, 2 * each as u64)]);
    }
}
