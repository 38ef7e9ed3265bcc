//! Outcomes travel back to the host in batches: one message per flush, not per event.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::backend::AttemptOutcome;
use crate::connection::{unix_ms, ConnectionEvent, StatusSnapshot};
use crate::queue::Tag;
use crate::stats::{ConnectionCounters, ConnectionSnapshot, Stats, StatsSnapshot};

/// One delivery attempt, as MongooseIM's metrics want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    pub tag: Tag,
    pub outcome: AttemptOutcome,
    pub elapsed: Duration,
    /// The event's size in bytes.
    pub bytes: usize,
}

/// An event given up on (final failure, or lost at stop), for the host's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureReport {
    pub tag: Tag,
    pub reason: crate::Reason,
    pub attempts: u32,
}

/// Counter increments since the previous batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterDelta {
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Of `dropped`: events larger than the queue's byte cap.
    pub too_large: u64,
}

impl CounterDelta {
    fn between(before: &StatsSnapshot, now: &StatsSnapshot) -> Self {
        CounterDelta {
            delivered: now.delivered - before.delivered,
            retried: now.retried - before.retried,
            failed: now.failed - before.failed,
            dropped: now.dropped - before.dropped,
            too_large: now.dropped_too_large - before.dropped_too_large,
        }
    }

    fn is_zero(&self) -> bool {
        *self == CounterDelta::default()
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReportBatch {
    pub attempts: Vec<AttemptReport>,
    pub failures: Vec<FailureReport>,
    pub counters: CounterDelta,
    /// Connection counter increments since the previous batch (zero for backends
    /// that do not report connections).
    pub connections: ConnectionSnapshot,
    /// Reports that could not be queued because the report channel was full.
    pub reports_lost: u64,
    /// Connection state changes to log, oldest first (rate-limited by the backend).
    pub connection_events: Vec<ConnectionEvent>,
    /// Set when the backend was unreachable during this batch's interval (down now,
    /// or back since the previous batch): drops in this batch are its doing.
    pub backend_down: Option<BackendDown>,
}

/// The outage behind a batch's drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDown {
    /// Milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// The latest error (the loss, or a failed connect).
    pub reason: String,
}

/// The outage that overlaps the interval since `previous_batch_ms`, if any.
fn backend_down(status: &StatusSnapshot, previous_batch_ms: u64) -> Option<BackendDown> {
    let reason = |r: &Option<String>| r.clone().unwrap_or_default();
    match (&status.down_since_ms, &status.last_outage) {
        (Some(since_ms), _) => Some(BackendDown {
            since_ms: *since_ms,
            reason: reason(&status.last_error),
        }),
        (None, Some(outage)) if outage.until_ms >= previous_batch_ms => Some(BackendDown {
            since_ms: outage.since_ms,
            reason: outage.reason.clone(),
        }),
        _ => None,
    }
}

/// Where batches go (the NIF sends them to an Erlang process).
pub trait ReportSink: Send + Sync + 'static {
    fn send(&self, batch: ReportBatch);
}

/// A sink that discards everything (pure-Rust users and tests that only read stats).
pub struct NoReports;

impl ReportSink for NoReports {
    fn send(&self, _batch: ReportBatch) {}
}

pub(crate) enum ReportItem {
    Attempt(AttemptReport),
    Failure(FailureReport),
    Flush(oneshot::Sender<()>),
}

const REPORT_CHANNEL: usize = 65_536;
const MAX_BATCH: usize = 2_000;
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The workers' side of the report channel; never blocks.
pub(crate) struct Reporter {
    tx: mpsc::Sender<ReportItem>,
    lost: Arc<AtomicU64>,
}

impl Reporter {
    pub(crate) fn spawn(
        runtime: &tokio::runtime::Handle,
        sink: Arc<dyn ReportSink>,
        stats: Arc<Stats>,
        connections: Option<Arc<ConnectionCounters>>,
    ) -> (Reporter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(REPORT_CHANNEL);
        let lost = Arc::new(AtomicU64::new(0));
        let connections = connections.unwrap_or_default();
        let task = runtime.spawn(run(rx, sink, stats, connections, lost.clone()));
        (Reporter { tx, lost }, task)
    }

    pub(crate) fn report(&self, item: ReportItem) {
        if self.tx.try_send(item).is_err() {
            self.lost.fetch_add(1, Relaxed);
        }
    }

    /// Resolves once everything reported so far has been handed to the sink.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(ReportItem::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<ReportItem>,
    sink: Arc<dyn ReportSink>,
    stats: Arc<Stats>,
    connections: Arc<ConnectionCounters>,
    lost: Arc<AtomicU64>,
) {
    let mut batch = ReportBatch::default();
    // The stats are new (all zero) when the instance spawns this task: counting from
    // zero, not from a snapshot taken when the task first runs, reports what happened
    // before that (an event dropped at once, say).
    let mut last = StatsSnapshot::default();
    let mut last_connections = ConnectionSnapshot::default();
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous_batch_ms = unix_ms();
    let mut send = |batch: &mut ReportBatch| {
        let now = stats.snapshot();
        batch.counters = CounterDelta::between(&last, &now);
        batch.reports_lost = lost.swap(0, Relaxed);
        last = now;
        let connections_now = connections.snapshot();
        batch.connections = ConnectionSnapshot {
            opened: connections_now.opened - last_connections.opened,
            closed: connections_now.closed - last_connections.closed,
            failed: connections_now.failed - last_connections.failed,
        };
        last_connections = connections_now;
        batch.connection_events = connections.status.take_events();
        let batch_ms = unix_ms();
        batch.backend_down = backend_down(&connections.status.snapshot(), previous_batch_ms);
        previous_batch_ms = batch_ms;
        let nothing_new = batch.attempts.is_empty()
            && batch.failures.is_empty()
            && batch.counters.is_zero()
            && batch.connections == ConnectionSnapshot::default()
            && batch.reports_lost == 0
            && batch.connection_events.is_empty();
        if !nothing_new {
            sink.send(std::mem::take(batch));
        }
    };
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(ReportItem::Attempt(a)) => batch.attempts.push(a),
                Some(ReportItem::Failure(f)) => batch.failures.push(f),
                Some(ReportItem::Flush(done)) => {
                    send(&mut batch);
                    let _ = done.send(());
                }
                None => {
                    send(&mut batch);
                    return;
                }
            },
            _ = tick.tick() => send(&mut batch),
        }
        if batch.attempts.len() + batch.failures.len() >= MAX_BATCH {
            send(&mut batch);
        }
    }
}
