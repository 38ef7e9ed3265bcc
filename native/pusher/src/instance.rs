//! A backend instance: bounded queue + worker tasks + retries + drain.
//!
//! `push` is what the hook path pays for: a mutex-protected deque push and a few
//! atomic operations, never I/O and never a wait. Waking a parked worker thread costs
//! a system call, so a push wakes a worker only when one is idle and no wakeup is
//! already on its way; a woken worker that leaves work behind wakes the next one.

use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use smallvec::SmallVec;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backend::{Attempt, Backend, Verdict};
use crate::queue::{BoundedQueue, Envelope, Offer, QueueLimits, Tag};
use crate::report::{AttemptReport, FailureReport, ReportItem, ReportSink, Reporter};
use crate::retry::RetryPolicy;
use crate::stats::{Stats, StatsSnapshot};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    pub queue: QueueLimits,
    pub retry: RetryPolicy,
    /// Events delivered at the same time (worker tasks).
    pub concurrency: usize,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            queue: QueueLimits::default(),
            retry: RetryPolicy::default(),
            concurrency: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("queue_full")]
    QueueFull,
    #[error("stopped")]
    Stopped,
}

/// What a stop achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSummary {
    /// Events still queued or in flight when the drain deadline passed (counted failed).
    pub lost: u64,
    pub stats: StatsSnapshot,
}

struct Shared<B: Backend> {
    backend: B,
    queue: BoundedQueue<B::Event>,
    stats: Arc<Stats>,
    retry: RetryPolicy,
    wakeup: Notify,
    /// A wakeup was sent and no worker has taken an event since: pushes need not
    /// send another one.
    wake_pending: AtomicBool,
    /// Workers waiting for events.
    idle_workers: AtomicUsize,
    stopping: AtomicBool,
    reporter: Reporter,
}

pub struct Instance<B: Backend> {
    shared: Arc<Shared<B>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    reporter_task: JoinHandle<()>,
}

impl<B: Backend> Instance<B> {
    /// Starts the workers and the reporter on `runtime`. Callable from any thread.
    pub fn start(
        runtime: &Handle,
        backend: B,
        config: InstanceConfig,
        sink: Arc<dyn ReportSink>,
    ) -> Self {
        let stats = Arc::new(Stats::default());
        let (reporter, reporter_task) =
            Reporter::spawn(runtime, sink, stats.clone(), backend.connections());
        let shared = Arc::new(Shared {
            backend,
            queue: BoundedQueue::new(config.queue),
            stats,
            retry: config.retry,
            wakeup: Notify::new(),
            wake_pending: AtomicBool::new(false),
            idle_workers: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            reporter,
        });
        let workers = (0..config.concurrency.max(1))
            .map(|_| runtime.spawn(work(shared.clone())))
            .collect();
        Instance {
            shared,
            workers: Mutex::new(workers),
            reporter_task,
        }
    }

    /// Enqueues without waiting. Every well-formed event counts as accepted; a refused
    /// or evicted one also counts as dropped.
    pub fn push(&self, envelope: Envelope<B::Event>) -> Result<(), PushError> {
        let shared = &*self.shared;
        let stats = &shared.stats;
        stats.accepted.fetch_add(1, Relaxed);
        if shared.stopping.load(Relaxed) {
            stats.dropped.fetch_add(1, Relaxed);
            return Err(PushError::Stopped);
        }
        match shared.queue.offer(envelope) {
            Offer::Queued { evicted } => {
                // An evicted event is dropped, not failed: counted once, as dropped
                // (the report's drop count says so; it never reached a worker).
                stats.dropped.fetch_add(evicted.len() as u64, Relaxed);
                shared.wake_one_if_idle();
                Ok(())
            }
            Offer::Refused(_) => {
                stats.dropped.fetch_add(1, Relaxed);
                Err(PushError::QueueFull)
            }
        }
    }

    /// For the caller to ask before building an event: Some(reason) when the event
    /// would surely be refused, already counted as accepted and dropped, so that a
    /// full queue costs the hook path almost nothing.
    pub fn refusal(&self, event_bytes: usize) -> Option<PushError> {
        let shared = &*self.shared;
        let reason = if shared.stopping.load(Relaxed) {
            PushError::Stopped
        } else if shared.queue.refuses_new_events() || event_bytes > shared.queue.limits().max_bytes
        {
            PushError::QueueFull
        } else {
            return None;
        };
        shared.stats.accepted.fetch_add(1, Relaxed);
        shared.stats.dropped.fetch_add(1, Relaxed);
        Some(reason)
    }

    pub fn stats(&self) -> StatsSnapshot {
        let mut snapshot = self.shared.stats.snapshot();
        snapshot.queued = self.shared.queue.len() as u64;
        snapshot.queued_bytes = self.shared.queue.bytes() as u64;
        snapshot
    }

    /// The backend, for callers that feed it from outside (replies to push IQs).
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }

    pub fn limits(&self) -> QueueLimits {
        self.shared.queue.limits()
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Relaxed)
    }

    /// Refuses new events, delivers what is pending until `drain` has passed, then
    /// counts whatever is left as failed (`lost`). Idempotent.
    pub async fn stop(&self, drain: Duration) -> StopSummary {
        let shared = &*self.shared;
        shared.stopping.store(true, SeqCst);
        shared.wakeup.notify_waiters();
        let mut workers = std::mem::take(&mut *lock(&self.workers));
        let all_done = futures_util::future::join_all(workers.iter_mut());
        let mut lost = 0;
        if tokio::time::timeout(drain, all_done).await.is_err() {
            for worker in &workers {
                worker.abort();
            }
            // Handles join_all saw finish must not be polled again; the others end at
            // their next await point now that they are aborted.
            for worker in workers.into_iter().filter(|w| !w.is_finished()) {
                let _ = worker.await;
            }
            // Aborted workers never decrement in_flight: what they held is lost too.
            let in_flight = shared.stats.in_flight.swap(0, Relaxed);
            shared.stats.failed.fetch_add(in_flight, Relaxed);
            lost += in_flight;
            for envelope in shared.queue.take_all() {
                shared.fail(envelope.tag, "drain_timeout".into(), 0);
                lost += 1;
            }
        }
        shared.backend.shutdown().await;
        shared.reporter.flush().await;
        StopSummary {
            lost,
            stats: self.stats(),
        }
    }
}

impl<B: Backend> Drop for Instance<B> {
    fn drop(&mut self) {
        // The last handle is gone (module stopped, code purged): stop the tasks, or
        // they would keep the queue and connections alive forever.
        self.shared.stopping.store(true, Relaxed);
        for worker in lock(&self.workers).iter() {
            worker.abort();
        }
        self.reporter_task.abort();
        let abandoned = self.shared.queue.take_all().len() as u64;
        self.shared.stats.dropped.fetch_add(abandoned, Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B: Backend> Shared<B> {
    fn fail(&self, tag: Tag, reason: String, attempts: u32) {
        self.stats.failed.fetch_add(1, Relaxed);
        self.reporter.report(ReportItem::Failure(FailureReport {
            tag,
            reason,
            attempts,
        }));
    }

    /// An event a worker held is finished with.
    fn done(&self) {
        self.stats.in_flight.fetch_sub(1, Relaxed);
    }

    fn fail_in_flight(&self, tag: Tag, reason: String, attempts: u32) {
        self.done();
        self.fail(tag, reason, attempts);
    }

    fn wake_one_if_idle(&self) {
        if self.idle_workers.load(SeqCst) > 0 && !self.wake_pending.swap(true, SeqCst) {
            self.wakeup.notify_one();
        }
    }

    /// Takes the next event, and lets an idle worker know if more are waiting.
    fn take(&self) -> Option<Envelope<B::Event>> {
        // Cleared before looking: a push that lands after the look wakes someone.
        self.wake_pending.store(false, SeqCst);
        let (envelope, more) = self.queue.pop_and_peek();
        let envelope = envelope?;
        // Counted at once, so that the event is never in neither queued nor in_flight
        // for longer than these two steps.
        self.stats.in_flight.fetch_add(1, Relaxed);
        if more {
            self.wake_one_if_idle();
        }
        Some(envelope)
    }

    async fn next(&self) -> Option<Envelope<B::Event>> {
        loop {
            if let Some(envelope) = self.take() {
                return Some(envelope);
            }
            // Registered, and counted idle, before looking again: a push that lands
            // after this look sees an idle worker and wakes it.
            let mut notified = pin!(self.wakeup.notified());
            notified.as_mut().enable();
            self.idle_workers.fetch_add(1, SeqCst);
            let envelope = self.take();
            if envelope.is_some() || self.stopping.load(SeqCst) {
                self.idle_workers.fetch_sub(1, SeqCst);
                return envelope;
            }
            notified.await;
            self.idle_workers.fetch_sub(1, SeqCst);
        }
    }

    /// One attempt per envelope, in order, whatever the backend does (panics, short
    /// answers).
    async fn attempt(&self, batch: &[Envelope<B::Event>]) -> SmallVec<[Attempt; 1]> {
        let answered = if let [single] = batch {
            AssertUnwindSafe(self.backend.deliver(&single.event))
                .catch_unwind()
                .await
                .map(|attempt| SmallVec::from_elem(attempt, 1))
        } else {
            let events: SmallVec<[&B::Event; 16]> = batch.iter().map(|e| &e.event).collect();
            AssertUnwindSafe(self.backend.deliver_batch(&events))
                .catch_unwind()
                .await
                .map(SmallVec::from_vec)
        };
        let mut attempts = answered.unwrap_or_else(|_| {
            SmallVec::from_elem(Attempt::rejected("backend_panicked"), batch.len())
        });
        attempts.resize(batch.len(), Attempt::no_response("no_answer_in_batch"));
        attempts
    }

    /// Delivers a batch (usually of one), retrying what the backend says to retry,
    /// together, until each event is delivered or has failed.
    async fn deliver(&self, mut batch: Batch<B::Event>) {
        let mut attempts = 0;
        while !batch.is_empty() {
            attempts += 1;
            let started = Instant::now();
            let answers = self.attempt(&batch).await;
            let elapsed = started.elapsed();
            let mut again = Batch::new();
            let mut last_reason = String::new();
            for (envelope, attempt) in batch.into_iter().zip(answers) {
                self.reporter.report(ReportItem::Attempt(AttemptReport {
                    tag: envelope.tag.clone(),
                    outcome: attempt.outcome,
                    elapsed,
                    bytes: attempt.wire_bytes.unwrap_or(envelope.bytes),
                }));
                match attempt.verdict {
                    Verdict::Delivered => {
                        self.stats.delivered.fetch_add(1, Relaxed);
                        self.stats.latency.record(envelope.enqueued_at.elapsed());
                        self.done();
                    }
                    Verdict::Fatal(reason) => self.fail_in_flight(envelope.tag, reason, attempts),
                    Verdict::Retry(reason) if attempts >= self.retry.max_attempts => {
                        self.fail_in_flight(envelope.tag, reason, attempts)
                    }
                    Verdict::Retry(reason) => {
                        last_reason = reason;
                        again.push(envelope);
                    }
                }
            }
            if again.is_empty() {
                return;
            }
            let pause = self.retry.backoff(attempts, rand::random::<f64>());
            batch = Batch::new();
            for envelope in again {
                if envelope.enqueued_at.elapsed() + pause > self.retry.deadline {
                    let reason = format!("{last_reason} (retry deadline passed)");
                    self.fail_in_flight(envelope.tag, reason, attempts);
                } else {
                    batch.push(envelope);
                }
            }
            if batch.is_empty() {
                return;
            }
            self.stats.retried.fetch_add(batch.len() as u64, Relaxed);
            tokio::time::sleep(pause).await;
        }
    }

    /// The next event and, for a batching backend, whatever else is queued, up to the
    /// backend's limit: batches fill up under load and cost no waiting when idle.
    async fn next_batch(&self, limit: usize) -> Option<Batch<B::Event>> {
        let mut batch = Batch::new();
        batch.push(self.next().await?);
        while batch.len() < limit {
            match self.queue.pop() {
                Some(envelope) => {
                    self.stats.in_flight.fetch_add(1, Relaxed);
                    batch.push(envelope);
                }
                None => break,
            }
        }
        Some(batch)
    }
}

/// Envelopes delivered together; one, inline, for non-batching backends.
type Batch<E> = SmallVec<[Envelope<E>; 1]>;

async fn work<B: Backend>(shared: Arc<Shared<B>>) {
    let limit = shared.backend.batch_limit().clamp(1, 64);
    // Events enter in_flight as they leave the queue (`take`, `next_batch`) and leave
    // it when done (`done`), one by one: a drain cut short then counts exactly the
    // unfinished ones as lost.
    while let Some(batch) = shared.next_batch(limit).await {
        shared.deliver(batch).await;
    }
}
