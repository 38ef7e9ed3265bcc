//! A backend instance: bounded queue + worker tasks + retries + drain.
//!
//! `push` is what the hook path pays for: a mutex-protected deque push and a few
//! atomic operations, never I/O and never a wait. Waking a parked worker thread costs
//! a system call, so a push wakes a worker only when one is idle and no wakeup is
//! already on its way; a woken worker that leaves work behind wakes the next one.
//!
//! A worker makes one attempt and lets go: an event to be retried goes back into the
//! queue as a waiting event (counted as queued, holding its place in the caps) and a
//! timer task moves it to the front of the queue when its pause is over, waking a
//! worker as a push does. So a slow or failing server costs attempts, never workers
//! parked in a backoff.

use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use smallvec::SmallVec;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backend::{Attempt, Backend, Verdict};
use crate::queue::{BoundedQueue, Envelope, Offer, QueueLimits, Tag, Waiting};
use crate::reason::Reason;
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
    /// The event alone is larger than `queue.max_bytes`: it could never be queued.
    #[error("too_large")]
    TooLarge,
}

/// What a stop achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSummary {
    /// Events still queued or in flight when the drain deadline passed, and events whose
    /// next attempt was due after it (counted failed).
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
    /// Wakes the retry timer: an event now waits for an earlier time than it sleeps to.
    retry_timer: Notify,
    /// Set by `stop`: no attempt starts after it.
    drain_deadline: Mutex<Option<Instant>>,
    /// Events given up during a stop because their next attempt was due after the
    /// drain deadline.
    lost_at_stop: AtomicU64,
    reporter: Reporter,
}

pub struct Instance<B: Backend> {
    shared: Arc<Shared<B>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    retry_timer_task: JoinHandle<()>,
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
            retry_timer: Notify::new(),
            drain_deadline: Mutex::new(None),
            lost_at_stop: AtomicU64::new(0),
            reporter,
        });
        let workers = (0..config.concurrency.max(1))
            .map(|_| runtime.spawn(work(shared.clone())))
            .collect();
        let retry_timer_task = runtime.spawn(release_retries(shared.clone()));
        Instance {
            shared,
            workers: Mutex::new(workers),
            retry_timer_task,
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
            Offer::TooLarge(envelope) => {
                shared.count_too_large(envelope.bytes);
                Err(PushError::TooLarge)
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
        } else if event_bytes > shared.queue.limits().max_bytes {
            shared.stats.accepted.fetch_add(1, Relaxed);
            shared.count_too_large(event_bytes);
            return Some(PushError::TooLarge);
        } else if shared.queue.refuses_new_events() {
            PushError::QueueFull
        } else {
            return None;
        };
        shared.stats.accepted.fetch_add(1, Relaxed);
        shared.stats.dropped.fetch_add(1, Relaxed);
        Some(reason)
    }

    /// The counters; `queued` includes the events waiting for their next attempt
    /// (`waiting_retry`), which hold their place and bytes in the queue.
    pub fn stats(&self) -> StatsSnapshot {
        let mut snapshot = self.shared.stats.snapshot();
        snapshot.queued = self.shared.queue.len() as u64;
        snapshot.queued_bytes = self.shared.queue.bytes() as u64;
        snapshot.waiting_retry = self.shared.queue.waiting() as u64;
        snapshot.max_bytes = self.shared.queue.limits().max_bytes as u64;
        snapshot
    }

    /// The backend, for callers that feed it from outside (replies to push IQs).
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }

    /// Refuses new events, delivers what is pending (retries included, as long as they
    /// are due before the deadline) until `drain` has passed, then counts whatever is
    /// left as failed (`lost`). An event whose next attempt would come after the
    /// deadline is counted lost at once. Idempotent.
    pub async fn stop(&self, drain: Duration) -> StopSummary {
        let shared = &*self.shared;
        let deadline = *lock(&shared.drain_deadline)
            .get_or_insert_with(|| Instant::now().checked_add(drain).unwrap_or_else(far_future));
        shared.stopping.store(true, SeqCst);
        for waiting in shared.queue.take_waiting_due_after(deadline) {
            shared.lose_waiting(waiting);
        }
        shared.wakeup.notify_waiters();
        let mut workers = std::mem::take(&mut *lock(&self.workers));
        let all_done = futures_util::future::join_all(workers.iter_mut());
        if tokio::time::timeout(drain, all_done).await.is_err() {
            for worker in &workers {
                worker.abort();
            }
            // Handles join_all saw finish must not be polled again; the others end at
            // their next await point now that they are aborted.
            for worker in workers.into_iter().filter(|w| !w.is_finished()) {
                let _ = worker.await;
            }
            self.retry_timer_task.abort();
            // Aborted workers never decrement in_flight: what they held is lost too.
            let in_flight = shared.stats.in_flight.swap(0, Relaxed);
            shared.stats.failed.fetch_add(in_flight, Relaxed);
            shared.lost_at_stop.fetch_add(in_flight, Relaxed);
            let left = shared.queue.take_all();
            for envelope in left.ready {
                shared.lost_at_stop.fetch_add(1, Relaxed);
                shared.fail(envelope.tag, Reason::DrainTimeout(None), envelope.attempts);
            }
            for waiting in left.waiting {
                shared.lose_waiting(waiting);
            }
        }
        self.retry_timer_task.abort();
        let lost = shared.lost_at_stop.swap(0, Relaxed);
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
        self.retry_timer_task.abort();
        self.reporter_task.abort();
        let abandoned = self.shared.queue.take_all();
        let count = abandoned.ready.len() + abandoned.waiting.len();
        self.shared.stats.dropped.fetch_add(count as u64, Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A deadline that never comes in practice (a drain "forever").
fn far_future() -> Instant {
    let now = Instant::now();
    [86_400 * 365 * 100, 86_400, 1]
        .into_iter()
        .find_map(|secs| now.checked_add(Duration::from_secs(secs)))
        .unwrap_or(now)
}

impl<B: Backend> Shared<B> {
    /// An event larger than the byte cap: dropped (once), with its own reason.
    fn count_too_large(&self, bytes: usize) {
        let stats = &self.stats;
        stats
            .last_too_large_bytes
            .store(u64::try_from(bytes).unwrap_or(u64::MAX), Relaxed);
        stats.dropped_too_large.fetch_add(1, Relaxed);
        stats.dropped.fetch_add(1, Relaxed);
    }

    fn fail(&self, tag: Tag, reason: Reason, attempts: u32) {
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

    fn fail_in_flight(&self, tag: Tag, reason: Reason, attempts: u32) {
        self.done();
        self.fail(tag, reason, attempts);
    }

    /// A waiting event that will get no further attempt because the instance stops.
    fn lose_waiting(&self, waiting: Waiting<B::Event>) {
        self.lost_at_stop.fetch_add(1, Relaxed);
        let reason = Reason::DrainTimeout(Some(Box::new(waiting.reason)));
        self.fail(waiting.envelope.tag, reason, waiting.envelope.attempts);
    }

    /// Nothing more will come: stopping, nothing queued and nothing waiting. (What
    /// workers hold is theirs to finish; a retry puts it back before they look again.)
    fn finished(&self) -> bool {
        self.stopping.load(SeqCst) && self.queue.is_empty()
    }

    fn drain_deadline(&self) -> Option<Instant> {
        *lock(&self.drain_deadline)
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

    /// The next event, or None once the instance has stopped and nothing is left.
    /// While stopping, workers stay for the events waiting to be retried.
    async fn next(&self) -> Option<Envelope<B::Event>> {
        loop {
            if let Some(envelope) = self.take() {
                return Some(envelope);
            }
            // Registered, and counted idle, before looking again: a push (or a retry
            // coming due) that lands after this look sees an idle worker and wakes it.
            let mut notified = pin!(self.wakeup.notified());
            notified.as_mut().enable();
            self.idle_workers.fetch_add(1, SeqCst);
            let envelope = self.take();
            if envelope.is_some() {
                self.idle_workers.fetch_sub(1, SeqCst);
                return envelope;
            }
            if self.finished() {
                self.idle_workers.fetch_sub(1, SeqCst);
                // The others may be parked for a retry that no longer exists.
                self.wakeup.notify_waiters();
                return None;
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
            SmallVec::from_elem(Attempt::rejected(Reason::BackendPanicked), batch.len())
        });
        attempts.resize(batch.len(), Attempt::no_response(Reason::NoAnswerInBatch));
        attempts
    }

    /// One attempt for a batch (usually of one): what is delivered or fails for good is
    /// done; what is to be retried waits in the queue, not here.
    async fn deliver(&self, batch: Batch<B::Event>) {
        let started = Instant::now();
        let answers = self.attempt(&batch).await;
        let elapsed = started.elapsed();
        for (mut envelope, attempt) in batch.into_iter().zip(answers) {
            envelope.attempts = envelope.attempts.saturating_add(1);
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
                Verdict::Fatal(reason) => {
                    self.fail_in_flight(envelope.tag, reason, envelope.attempts)
                }
                Verdict::Retry(reason) => self.retry_later(envelope, reason, None),
                Verdict::RetryAfter { reason, after } => {
                    self.retry_later(envelope, reason, Some(after))
                }
            }
        }
    }

    /// Puts a failed event in the queue to wait for its next attempt, or fails it when
    /// it gets none (out of attempts, past its deadline, or, while stopping, due after
    /// the drain deadline).
    fn retry_later(
        &self,
        envelope: Envelope<B::Event>,
        reason: Reason,
        retry_after: Option<Duration>,
    ) {
        let attempts = envelope.attempts;
        let age = envelope.enqueued_at.elapsed();
        let pause = match self
            .retry
            .next_pause(attempts, age, retry_after, rand::random::<f64>())
        {
            Ok(pause) => pause,
            Err(give_up) => {
                return self.fail_in_flight(envelope.tag, give_up.reason(reason), attempts)
            }
        };
        // The pause ends within the retry deadline, so this cannot overflow in practice.
        let due = Instant::now().checked_add(pause).unwrap_or_else(far_future);
        if self.stopping.load(SeqCst) && self.drain_deadline().is_some_and(|limit| due > limit) {
            self.lost_at_stop.fetch_add(1, Relaxed);
            let reason = Reason::DrainTimeout(Some(Box::new(reason)));
            return self.fail_in_flight(envelope.tag, reason, attempts);
        }
        self.stats.retried.fetch_add(1, Relaxed);
        // Queued (with its bytes) before it stops being in flight: it is never in
        // neither count.
        let first_due = self.queue.defer(envelope, due, reason);
        self.done();
        if first_due {
            self.retry_timer.notify_one();
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

/// Moves waiting events to the front of the queue when they come due, and wakes a
/// worker for them. Sleeps until the first one is due, or until an earlier one comes.
async fn release_retries<B: Backend>(shared: Arc<Shared<B>>) {
    loop {
        // Created before looking: a `notify_one` from here on leaves a permit.
        let earlier_retry = shared.retry_timer.notified();
        let (released, next_due) = shared.queue.release_due(Instant::now());
        if released > 0 {
            shared.wake_one_if_idle();
        }
        match next_due {
            Some(due) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {}
                    _ = earlier_retry => {}
                }
            }
            None => earlier_retry.await,
        }
    }
}

async fn work<B: Backend>(shared: Arc<Shared<B>>) {
    let limit = shared.backend.batch_limit().clamp(1, 64);
    // Events enter in_flight as they leave the queue (`take`, `next_batch`) and leave
    // it when done (`done`), one by one: a drain cut short then counts exactly the
    // unfinished ones as lost.
    while let Some(batch) = shared.next_batch(limit).await {
        shared.deliver(batch).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use super::*;
    use crate::backend::AttemptOutcome;
    use crate::queue::Overflow;
    use crate::report::{ReportBatch, ReportSink};

    /// Answers each event (a number) from its script, then Delivered; records calls.
    /// An event of `panics` makes deliver panic; one of `slow` answers after a pause.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<HashMap<u32, VecDeque<Verdict>>>,
        calls: Mutex<Vec<u32>>,
        panics: Vec<u32>,
        slow: HashMap<u32, Duration>,
    }

    impl Scripted {
        fn with(scripts: &[(u32, &[Verdict])]) -> Self {
            let answers = scripts
                .iter()
                .map(|(event, verdicts)| (*event, verdicts.iter().cloned().collect()))
                .collect();
            Scripted {
                answers: Mutex::new(answers),
                ..Scripted::default()
            }
        }

        fn panicking_on(mut self, event: u32) -> Self {
            self.panics.push(event);
            self
        }

        fn slow_on(mut self, event: u32, pause: Duration) -> Self {
            self.slow.insert(event, pause);
            self
        }

        fn calls(&self) -> Vec<u32> {
            lock(&self.calls).clone()
        }
    }

    impl Backend for Scripted {
        type Event = u32;

        async fn deliver(&self, event: &u32) -> Attempt {
            lock(&self.calls).push(*event);
            assert!(
                !self.panics.contains(event),
                "scripted panic on event {event}"
            );
            if let Some(pause) = self.slow.get(event) {
                tokio::time::sleep(*pause).await;
            }
            let verdict = lock(&self.answers)
                .get_mut(event)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Verdict::Delivered);
            Attempt {
                verdict,
                outcome: AttemptOutcome::Replied,
                wire_bytes: None,
            }
        }
    }

    #[derive(Default)]
    struct Failures(Mutex<Vec<FailureReport>>);

    impl ReportSink for Failures {
        fn send(&self, batch: ReportBatch) {
            lock(&self.0).extend(batch.failures);
        }
    }

    fn retry_after(seconds: u64) -> Verdict {
        Verdict::RetryAfter {
            reason: Reason::HttpStatus(503),
            after: Duration::from_secs(seconds),
        }
    }

    fn retry() -> Verdict {
        Verdict::Retry(Reason::HttpStatus(500))
    }

    fn start(backend: Scripted, config: InstanceConfig) -> (Instance<Scripted>, Arc<Failures>) {
        let failures = Arc::new(Failures::default());
        let instance = Instance::start(&Handle::current(), backend, config, failures.clone());
        (instance, failures)
    }

    fn one_worker(queue: QueueLimits) -> InstanceConfig {
        InstanceConfig {
            queue,
            concurrency: 1,
            ..InstanceConfig::default()
        }
    }

    fn push(instance: &Instance<Scripted>, event: u32, bytes: usize) -> Result<(), PushError> {
        instance.push(Envelope::new(event, b"alice", bytes))
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..1000 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn balanced(s: &StatsSnapshot) -> bool {
        s.accepted == s.delivered + s.failed + s.dropped + s.queued + s.in_flight
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_over_the_byte_cap_is_dropped_as_too_large_once() {
        let limits = QueueLimits {
            max_events: 10,
            max_bytes: 100,
            overflow: Overflow::DropOldest,
        };
        let (instance, _) = start(Scripted::with(&[]), one_worker(limits));
        // Refused by push (the queue is empty: not "full") and by the cheap check.
        assert_eq!(push(&instance, 1, 101), Err(PushError::TooLarge));
        assert_eq!(instance.refusal(250), Some(PushError::TooLarge));
        push(&instance, 2, 100).expect("exactly the cap fits");
        eventually("event 2 delivered", || instance.stats().delivered == 1).await;
        let s = instance.stats();
        assert_eq!(
            (s.accepted, s.dropped, s.dropped_too_large, s.queued),
            (3, 2, 2, 0)
        );
        assert_eq!((s.last_too_large_bytes, s.max_bytes), (250, 100));
        assert!(balanced(&s), "{s:?}");
        // A full queue is still queue_full, and too_large stays as it was.
        let summary = instance.stop(Duration::ZERO).await;
        assert_eq!(summary.stats.dropped_too_large, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_event_holds_no_worker() {
        // One worker; event 1 is told to come back in 20 s. Event 2, pushed after
        // it, is delivered by that same worker while event 1 waits.
        let (instance, failures) = start(
            Scripted::with(&[(1, &[retry_after(20)])]),
            one_worker(QueueLimits::default()),
        );
        push(&instance, 1, 10).expect("push 1");
        eventually("event 1 waiting", || instance.stats().waiting_retry == 1).await;
        push(&instance, 2, 10).expect("push 2");
        eventually("event 2 delivered", || instance.stats().delivered == 1).await;
        let s = instance.stats();
        assert_eq!(instance.backend().calls(), vec![1, 2]);
        assert_eq!(
            (
                s.queued,
                s.waiting_retry,
                s.queued_bytes,
                s.in_flight,
                s.retried
            ),
            (1, 1, 10, 0, 1),
            "{s:?}"
        );
        assert!(balanced(&s), "{s:?}");
        // Its next attempt would come after the drain deadline: lost at once.
        let summary = instance.stop(Duration::from_secs(5)).await;
        assert_eq!((summary.lost, summary.stats.failed), (1, 1));
        assert_eq!(instance.backend().calls(), vec![1, 2]);
        let failed = lock(&failures.0).clone();
        assert_eq!(failed.len(), 1);
        assert_eq!(
            failed[0].reason,
            Reason::DrainTimeout(Some(Box::new(Reason::HttpStatus(503))))
        );
        assert_eq!(failed[0].attempts, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_event_failing_twice_is_delivered_on_its_third_attempt() {
        let script: Vec<(u32, &[Verdict])> = Vec::new();
        let backend = Scripted::with(&script);
        for event in 0..200 {
            lock(&backend.answers).insert(event, VecDeque::from([retry(), retry()]));
        }
        let (instance, failures) = start(backend, InstanceConfig::default());
        for event in 0..200 {
            push(&instance, event, 10).expect("push");
        }
        eventually("all delivered", || instance.stats().delivered == 200).await;
        let summary = instance.stop(Duration::from_secs(5)).await;
        let s = summary.stats;
        assert_eq!(
            (s.failed, s.retried, s.queued, summary.lost),
            (0, 400, 0, 0)
        );
        assert!(balanced(&s), "{s:?}");
        let mut calls = instance.backend().calls();
        calls.sort_unstable();
        let expected: Vec<u32> = (0..200).flat_map(|e| [e, e, e]).collect();
        assert_eq!(calls, expected);
        assert!(lock(&failures.0).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retry_after_past_the_deadline_fails_at_once_saying_so() {
        // The default deadline is 30 s; the server asks for two minutes.
        let (instance, failures) = start(
            Scripted::with(&[(1, &[retry_after(120)])]),
            InstanceConfig::default(),
        );
        push(&instance, 1, 10).expect("push");
        eventually("event failed", || instance.stats().failed == 1).await;
        let s = instance.stats();
        assert_eq!((s.retried, s.queued, s.in_flight), (0, 0, 0));
        instance.stop(Duration::ZERO).await;
        let failed = lock(&failures.0).clone();
        assert_eq!(
            failed[0].reason,
            Reason::RetryAfterPastDeadline(120, Box::new(Reason::HttpStatus(503)))
        );
        assert_eq!(instance.backend().calls(), vec![1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_retries_what_comes_due_before_the_drain_deadline() {
        let backend = Scripted::with(&[(1, &[retry()]), (2, &[retry_after(20)])]);
        let mut config = one_worker(QueueLimits::default());
        config.retry.base_backoff = Duration::from_millis(200);
        let (instance, _failures) = start(backend, config);
        push(&instance, 1, 10).expect("push 1");
        push(&instance, 2, 10).expect("push 2");
        eventually("both waiting", || instance.stats().waiting_retry == 2).await;
        let summary = instance.stop(Duration::from_secs(10)).await;
        let s = summary.stats;
        assert_eq!(
            (s.delivered, s.failed, summary.lost, s.queued),
            (1, 1, 1, 0)
        );
        assert_eq!(instance.backend().calls(), vec![1, 2, 1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_event_holds_its_bytes_and_drop_oldest_evicts_it_first() {
        let limits = |overflow| QueueLimits {
            max_events: 10,
            max_bytes: 10,
            overflow,
        };
        // drop_newest: the waiting event's 6 bytes leave no room for another 6.
        let (instance, _) = start(
            Scripted::with(&[(1, &[retry_after(20)])]),
            one_worker(limits(Overflow::DropNewest)),
        );
        push(&instance, 1, 6).expect("push 1");
        eventually("event 1 waiting", || instance.stats().waiting_retry == 1).await;
        assert_eq!(push(&instance, 2, 6), Err(PushError::QueueFull));
        let s = instance.stats();
        assert_eq!((s.queued, s.queued_bytes, s.dropped), (1, 6, 1));
        assert!(balanced(&s), "{s:?}");
        instance.stop(Duration::ZERO).await;

        // drop_oldest: the waiting event is the oldest, so it makes room.
        let (instance, _) = start(
            Scripted::with(&[(1, &[retry_after(20)])]),
            one_worker(limits(Overflow::DropOldest)),
        );
        push(&instance, 1, 6).expect("push 1");
        eventually("event 1 waiting", || instance.stats().waiting_retry == 1).await;
        push(&instance, 2, 6).expect("push 2");
        eventually("event 2 delivered", || instance.stats().delivered == 1).await;
        let s = instance.stats();
        assert_eq!(
            (s.queued, s.waiting_retry, s.dropped, s.failed),
            (0, 0, 1, 0)
        );
        assert!(balanced(&s), "{s:?}");
        let summary = instance.stop(Duration::from_secs(5)).await;
        assert_eq!(summary.lost, 0);
        assert_eq!(instance.backend().calls(), vec![1, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_earlier_retry_wakes_the_timer() {
        // Event 1 waits 20 s; event 2, failing after it, must not wait as long.
        let backend = Scripted::with(&[(1, &[retry_after(20)]), (2, &[retry()])]);
        let (instance, _) = start(backend, one_worker(QueueLimits::default()));
        push(&instance, 1, 10).expect("push 1");
        eventually("event 1 waiting", || instance.stats().waiting_retry == 1).await;
        push(&instance, 2, 10).expect("push 2");
        eventually("event 2 delivered", || instance.stats().delivered == 1).await;
        assert_eq!(instance.backend().calls(), vec![1, 2, 2]);
        drop(instance);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_instance_counts_waiting_events_as_dropped() {
        let (instance, _) = start(
            Scripted::with(&[(1, &[retry_after(20)])]),
            one_worker(QueueLimits::default()),
        );
        push(&instance, 1, 10).expect("push");
        eventually("event 1 waiting", || instance.stats().waiting_retry == 1).await;
        let stats = instance.shared.stats.clone();
        drop(instance);
        assert_eq!(stats.dropped.load(Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_backend_fails_that_event_and_its_worker_goes_on() {
        let (instance, failures) = start(
            Scripted::with(&[]).panicking_on(1),
            one_worker(QueueLimits::default()),
        );
        for event in 1..=3 {
            push(&instance, event, 10).expect("push");
        }
        eventually("every event settled", || {
            let s = instance.stats();
            s.delivered + s.failed == 3
        })
        .await;
        let s = instance.stats();
        assert_eq!((s.delivered, s.failed, s.retried), (2, 1, 0), "{s:?}");
        assert!(balanced(&s), "{s:?}");
        instance.stop(Duration::from_secs(1)).await;
        let reasons: Vec<Reason> = lock(&failures.0).iter().map(|f| f.reason.clone()).collect();
        assert_eq!(reasons, vec![Reason::BackendPanicked]);
        assert_eq!(instance.backend().calls(), vec![1, 2, 3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_workers_wake_for_every_event_pushed_one_at_a_time_or_in_a_burst() {
        let config = InstanceConfig {
            concurrency: 4,
            ..InstanceConfig::default()
        };
        let (instance, _) = start(Scripted::with(&[]), config);
        // One at a time, each after the workers went idle again: no wake-up is missed.
        for event in 0..50 {
            push(&instance, event, 1).expect("push");
            let expected = u64::from(event) + 1;
            eventually("the event delivered", || {
                instance.stats().delivered == expected
            })
            .await;
        }
        // A burst larger than the workers.
        for event in 50..1050 {
            push(&instance, event, 1).expect("push");
        }
        eventually("the burst delivered", || instance.stats().delivered == 1050).await;
        let mut calls = instance.backend().calls();
        calls.sort_unstable();
        assert_eq!(calls, (0..1050).collect::<Vec<u32>>());
        let s = instance.stats();
        assert_eq!((s.queued, s.in_flight, s.failed, s.dropped), (0, 0, 0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_delivers_what_it_can_before_the_deadline_and_counts_the_rest_lost() {
        // One worker stuck 10 s on event 1; events 2-4 wait behind it.
        let (instance, _) = start(
            Scripted::with(&[]).slow_on(1, Duration::from_secs(10)),
            one_worker(QueueLimits::default()),
        );
        for event in 1..=4 {
            push(&instance, event, 10).expect("push");
        }
        eventually("event 1 in flight", || instance.stats().in_flight == 1).await;
        let summary = instance.stop(Duration::from_millis(100)).await;
        let s = summary.stats;
        assert_eq!(summary.lost, 4);
        assert_eq!(
            (s.delivered, s.failed, s.queued, s.in_flight),
            (0, 4, 0, 0),
            "{s:?}"
        );
        assert_eq!(s.accepted, s.delivered + s.failed + s.dropped);
        assert_eq!(push(&instance, 5, 10), Err(PushError::Stopped));
        // Stopping again changes nothing.
        assert_eq!(instance.stop(Duration::ZERO).await.lost, 0);
    }
}
