//! The bounded per-instance queue: capped in events and in bytes, with an overflow
//! policy. Every event it refuses or evicts is returned to the caller to be counted.
//!
//! It also holds the events waiting for their next attempt after a failure: they keep
//! their place in both caps (a waiting event still holds its bytes) without holding a
//! worker, and go back to the front of the queue when their time comes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use crate::reason::Reason;

/// Report tag bytes: kept inline up to 24 bytes (user names), so that building an
/// envelope on the routing path does not allocate for it.
pub type Tag = smallvec::SmallVec<[u8; 24]>;

/// An event on its way: the backend's payload plus what the core needs to account for it.
#[derive(Debug)]
pub struct Envelope<E> {
    pub event: E,
    /// Opaque bytes handed back in reports (the HTTP backend uses the sender's user name).
    pub tag: Tag,
    /// Bytes this event holds, for the byte cap.
    pub bytes: usize,
    pub enqueued_at: Instant,
    /// Attempts made so far (0 until the first one has ended).
    pub attempts: u32,
}

impl<E> Envelope<E> {
    pub fn new(event: E, tag: &[u8], bytes: usize) -> Self {
        Envelope {
            event,
            tag: Tag::from_slice(tag),
            bytes,
            enqueued_at: Instant::now(),
            attempts: 0,
        }
    }
}

/// An event waiting for its next attempt.
#[derive(Debug)]
pub struct Waiting<E> {
    pub envelope: Envelope<E>,
    /// When the next attempt may start.
    pub due: Instant,
    /// Why the last attempt failed.
    pub reason: Reason,
}

/// What happens to a new event when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse the new event (the caller learns at once: `{error, queue_full}`).
    DropNewest,
    /// Evict the oldest events (queued or waiting to be retried) to make room for the
    /// new one.
    DropOldest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub overflow: Overflow,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_events: 10_000,
            max_bytes: 16 * 1024 * 1024,
            overflow: Overflow::DropNewest,
        }
    }
}

/// What a push did to the queue.
#[derive(Debug)]
pub enum Offer<E> {
    /// Queued; these older events were evicted to make room (DropOldest).
    Queued { evicted: Vec<Envelope<E>> },
    /// Not queued: the queue is full (DropNewest) or takes no events.
    Refused(Envelope<E>),
    /// Not queued: the event alone is larger than the byte cap, so it could never
    /// fit, whatever the queue holds (nothing is evicted for it).
    TooLarge(Envelope<E>),
}

/// Everything a queue held, taken out at once.
#[derive(Debug)]
pub struct Emptied<E> {
    pub ready: Vec<Envelope<E>>,
    pub waiting: Vec<Waiting<E>>,
}

struct Inner<E> {
    /// Events ready for a worker, oldest first.
    ready: VecDeque<Envelope<E>>,
    /// Events waiting for their next attempt, by (due, sequence number).
    by_due: BTreeMap<(Instant, u64), Waiting<E>>,
    /// The same events by (enqueued_at, sequence number), each with its due time: the
    /// oldest waiting event, for drop_oldest, without a scan.
    by_age: BTreeMap<(Instant, u64), Instant>,
    next_seq: u64,
    /// Bytes of ready and waiting events.
    bytes: usize,
}

impl<E> Inner<E> {
    fn len(&self) -> usize {
        self.ready.len() + self.by_due.len()
    }

    /// Removes the event pushed longest ago, ready or waiting.
    fn evict_oldest(&mut self) -> Option<Envelope<E>> {
        let oldest_ready = self.ready.front().map(|e| e.enqueued_at);
        let oldest_waiting = self.by_age.first_key_value().map(|(&key, &due)| (key, due));
        let envelope = match (oldest_ready, oldest_waiting) {
            (Some(ready), Some(((waiting, _), _))) if ready <= waiting => self.ready.pop_front(),
            (_, Some(((enqueued_at, seq), due))) => {
                self.by_age.remove(&(enqueued_at, seq));
                self.by_due.remove(&(due, seq)).map(|w| w.envelope)
            }
            (_, None) => self.ready.pop_front(),
        }?;
        self.bytes -= envelope.bytes;
        Some(envelope)
    }

    fn remove_waiting(&mut self, key: (Instant, u64)) -> Option<Waiting<E>> {
        let waiting = self.by_due.remove(&key)?;
        self.by_age.remove(&(waiting.envelope.enqueued_at, key.1));
        Some(waiting)
    }
}

pub struct BoundedQueue<E> {
    limits: QueueLimits,
    inner: Mutex<Inner<E>>,
    /// Ready plus waiting events, readable without the lock (updated under it).
    len: AtomicUsize,
    /// Waiting events, readable without the lock (updated under it).
    waiting: AtomicUsize,
}

impl<E> BoundedQueue<E> {
    pub fn new(limits: QueueLimits) -> Self {
        BoundedQueue {
            limits,
            inner: Mutex::new(Inner {
                ready: VecDeque::new(),
                by_due: BTreeMap::new(),
                by_age: BTreeMap::new(),
                next_seq: 0,
                bytes: 0,
            }),
            len: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<E>> {
        // A panic while holding this lock cannot leave the queue inconsistent (no
        // critical section calls out of this module), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish_lens(&self, inner: &Inner<E>) {
        self.len.store(inner.len(), Relaxed);
        self.waiting.store(inner.by_due.len(), Relaxed);
    }

    pub fn offer(&self, envelope: Envelope<E>) -> Offer<E> {
        let limits = self.limits;
        if envelope.bytes > limits.max_bytes {
            return Offer::TooLarge(envelope);
        }
        if limits.max_events == 0 {
            return Offer::Refused(envelope);
        }
        let mut inner = self.lock();
        let fits = |inner: &Inner<E>| {
            inner.len() < limits.max_events && inner.bytes + envelope.bytes <= limits.max_bytes
        };
        let mut evicted = Vec::new();
        if !fits(&inner) {
            match limits.overflow {
                Overflow::DropNewest => return Offer::Refused(envelope),
                Overflow::DropOldest => {
                    while !fits(&inner) {
                        match inner.evict_oldest() {
                            Some(old) => evicted.push(old),
                            None => break,
                        }
                    }
                }
            }
        }
        inner.bytes += envelope.bytes;
        inner.ready.push_back(envelope);
        self.publish_lens(&inner);
        Offer::Queued { evicted }
    }

    pub fn pop(&self) -> Option<Envelope<E>> {
        self.pop_and_peek().0
    }

    /// The first ready event, and whether others are ready after it.
    pub fn pop_and_peek(&self) -> (Option<Envelope<E>>, bool) {
        let mut inner = self.lock();
        let envelope = inner.ready.pop_front();
        if let Some(e) = &envelope {
            inner.bytes -= e.bytes;
        }
        self.publish_lens(&inner);
        (envelope, !inner.ready.is_empty())
    }

    /// Keeps an event that failed until `due`, in the caps. Never refuses: the event
    /// was accepted and held by a worker (outside the caps) until now, so the queue can
    /// exceed its caps by at most what the workers hold; new events make room as the
    /// overflow policy says. True when it is now the first one due (a timer waiting
    /// for a later one must wake up earlier).
    pub fn defer(&self, envelope: Envelope<E>, due: Instant, reason: Reason) -> bool {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let first = inner
            .by_due
            .first_key_value()
            .is_none_or(|(&(first_due, _), _)| due < first_due);
        inner.bytes += envelope.bytes;
        inner.by_age.insert((envelope.enqueued_at, seq), due);
        inner.by_due.insert(
            (due, seq),
            Waiting {
                envelope,
                due,
                reason,
            },
        );
        self.publish_lens(&inner);
        first
    }

    /// Moves the waiting events due by `now` to the front of the queue, the oldest
    /// first: they were pushed before anything still queued, and have waited already.
    /// Returns how many moved and when the next one is due.
    pub fn release_due(&self, now: Instant) -> (usize, Option<Instant>) {
        let mut inner = self.lock();
        let mut due = Vec::new();
        while let Some((&key, _)) = inner.by_due.first_key_value() {
            if key.0 > now {
                break;
            }
            if let Some(waiting) = inner.remove_waiting(key) {
                due.push(waiting.envelope);
            }
        }
        let released = due.len();
        // Pushed to the front newest first, so that the oldest ends up first.
        due.sort_by_key(|e| Reverse(e.enqueued_at));
        for envelope in due {
            inner.ready.push_front(envelope);
        }
        self.publish_lens(&inner);
        (released, inner.by_due.first_key_value().map(|(k, _)| k.0))
    }

    /// Takes out the waiting events due after `limit` (their next attempt would come
    /// too late, say after a drain deadline).
    pub fn take_waiting_due_after(&self, limit: Instant) -> Vec<Waiting<E>> {
        let mut inner = self.lock();
        let late = inner.by_due.split_off(&(limit, u64::MAX));
        for (&(_, seq), waiting) in &late {
            inner.by_age.remove(&(waiting.envelope.enqueued_at, seq));
            inner.bytes -= waiting.envelope.bytes;
        }
        self.publish_lens(&inner);
        late.into_values().collect()
    }

    /// Empties the queue, waiting events included (used when an instance is dropped
    /// or a drain times out).
    pub fn take_all(&self) -> Emptied<E> {
        let mut inner = self.lock();
        inner.bytes = 0;
        inner.by_age.clear();
        let emptied = Emptied {
            ready: inner.ready.drain(..).collect(),
            waiting: std::mem::take(&mut inner.by_due).into_values().collect(),
        };
        self.publish_lens(&inner);
        emptied
    }

    /// Events held: ready and waiting.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Of [`BoundedQueue::len`], the events waiting for their next attempt.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }

    /// True when a new event would surely be refused for lack of room (DropNewest and
    /// no slot left): the caller can skip building it. A hint, read without the lock.
    pub fn refuses_new_events(&self) -> bool {
        self.limits.overflow == Overflow::DropNewest && self.len() >= self.limits.max_events
    }

    /// Nothing ready and nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: u32, bytes: usize) -> Envelope<u32> {
        Envelope::new(n, b"", bytes)
    }

    fn limits(max_events: usize, max_bytes: usize, overflow: Overflow) -> QueueLimits {
        QueueLimits {
            max_events,
            max_bytes,
            overflow,
        }
    }

    #[test]
    fn drop_newest_refuses_when_full_by_count() {
        let q = BoundedQueue::new(limits(2, 1000, Overflow::DropNewest));
        assert!(matches!(q.offer(env(1, 1)), Offer::Queued { .. }));
        assert!(matches!(q.offer(env(2, 1)), Offer::Queued { .. }));
        assert!(matches!(q.offer(env(3, 1)), Offer::Refused(e) if e.event == 3));
        assert_eq!(q.pop().map(|e| e.event), Some(1));
    }

    #[test]
    fn drop_newest_refuses_when_full_by_bytes() {
        let q = BoundedQueue::new(limits(100, 10, Overflow::DropNewest));
        assert!(matches!(q.offer(env(1, 6)), Offer::Queued { .. }));
        assert!(matches!(q.offer(env(2, 6)), Offer::Refused(_)));
        assert_eq!(q.bytes(), 6);
    }

    #[test]
    fn drop_oldest_evicts_until_the_new_event_fits() {
        let q = BoundedQueue::new(limits(100, 10, Overflow::DropOldest));
        for n in 0..5 {
            assert!(matches!(q.offer(env(n, 2)), Offer::Queued { .. }));
        }
        match q.offer(env(9, 5)) {
            Offer::Queued { evicted } => {
                let gone: Vec<u32> = evicted.iter().map(|e| e.event).collect();
                assert_eq!(gone, vec![0, 1, 2]);
            }
            _ => panic!("expected eviction"),
        }
        assert_eq!(q.bytes(), 9);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn an_event_larger_than_the_byte_cap_is_too_large_whatever_the_policy() {
        for overflow in [Overflow::DropOldest, Overflow::DropNewest] {
            let q = BoundedQueue::new(limits(100, 10, overflow));
            assert!(matches!(q.offer(env(1, 2)), Offer::Queued { .. }));
            assert!(matches!(q.offer(env(2, 11)), Offer::TooLarge(e) if e.event == 2));
            // Exactly the cap fits (after evicting, with drop_oldest).
            assert!(!matches!(q.offer(env(3, 10)), Offer::TooLarge(_)));
            assert_eq!(q.len(), 1);
        }
        // An empty queue: still too large, not full.
        let q = BoundedQueue::new(limits(100, 10, Overflow::DropNewest));
        assert!(matches!(q.offer(env(1, 11)), Offer::TooLarge(_)));
        assert!(q.is_empty());
    }

    fn later(ms: u64) -> Instant {
        Instant::now() + std::time::Duration::from_millis(ms)
    }

    #[test]
    fn a_waiting_event_keeps_its_place_in_both_caps() {
        let q = BoundedQueue::new(limits(2, 10, Overflow::DropNewest));
        assert!(matches!(q.offer(env(1, 6)), Offer::Queued { .. }));
        let first = q.pop();
        assert_eq!(q.bytes(), 0);
        assert!(q.defer(
            first.expect("queued"),
            later(60_000),
            Reason::HttpStatus(500)
        ));
        assert_eq!((q.len(), q.waiting(), q.bytes()), (1, 1, 6));
        assert!(matches!(q.offer(env(2, 6)), Offer::Refused(_)), "bytes");
        assert!(matches!(q.offer(env(3, 4)), Offer::Queued { .. }));
        assert!(q.refuses_new_events());
        assert!(matches!(q.offer(env(4, 1)), Offer::Refused(_)), "events");
        // Only the ready event is handed out.
        assert_eq!(q.pop().map(|e| e.event), Some(3));
        assert!(q.pop().is_none());
        assert!(!q.is_empty());
    }

    #[test]
    fn due_events_go_back_to_the_front_oldest_first() {
        let q = BoundedQueue::new(limits(10, 100, Overflow::DropNewest));
        for n in 1..=3 {
            assert!(matches!(q.offer(env(n, 1)), Offer::Queued { .. }));
        }
        let one = q.pop().expect("1");
        let two = q.pop().expect("2");
        let now = Instant::now();
        // Two comes due before one, both by the release below; three waits longer.
        assert!(q.defer(two, now, Reason::Timeout));
        assert!(!q.defer(
            one,
            now + std::time::Duration::from_millis(1),
            Reason::Timeout
        ));
        assert!(matches!(q.offer(env(4, 1)), Offer::Queued { .. }));
        let (three, more) = q.pop_and_peek();
        assert_eq!(three.as_ref().map(|e| e.event), Some(3));
        assert!(more);
        let far = later(60_000);
        assert!(!q.defer(three.expect("3"), far, Reason::Timeout));
        let (released, next) = q.release_due(now + std::time::Duration::from_millis(5));
        assert_eq!((released, next), (2, Some(far)));
        let order: Vec<u32> = std::iter::from_fn(|| q.pop().map(|e| e.event)).collect();
        assert_eq!(order, vec![1, 2, 4]);
        assert_eq!((q.len(), q.waiting()), (1, 1));
    }

    #[test]
    fn drop_oldest_evicts_the_oldest_whether_waiting_or_queued() {
        let q = BoundedQueue::new(limits(3, 100, Overflow::DropOldest));
        for n in 1..=3 {
            assert!(matches!(q.offer(env(n, 1)), Offer::Queued { .. }));
        }
        let one = q.pop().expect("1");
        assert!(q.defer(one, later(60_000), Reason::Timeout));
        let evicted = |offer| match offer {
            Offer::Queued { evicted } => evicted.iter().map(|e: &Envelope<u32>| e.event).collect(),
            _ => panic!("not queued"),
        };
        let gone: Vec<u32> = evicted(q.offer(env(4, 1)));
        assert_eq!(gone, vec![1]);
        assert_eq!((q.len(), q.waiting(), q.bytes()), (3, 0, 3));
        let two = q.pop().expect("2");
        assert!(q.defer(two, later(60_000), Reason::Timeout));
        let gone: Vec<u32> = evicted(q.offer(env(5, 1)));
        assert_eq!(gone, vec![2]);
    }

    #[test]
    fn late_waiting_events_and_everything_can_be_taken_out() {
        let q = BoundedQueue::new(limits(10, 100, Overflow::DropNewest));
        for n in 1..=3 {
            assert!(matches!(q.offer(env(n, 2)), Offer::Queued { .. }));
        }
        let limit = later(1_000);
        let one = q.pop().expect("1");
        let two = q.pop().expect("2");
        q.defer(one, later(10), Reason::Timeout);
        q.defer(two, later(60_000), Reason::Nacked);
        let late = q.take_waiting_due_after(limit);
        assert_eq!(late.len(), 1);
        assert_eq!(
            (late[0].envelope.event, &late[0].reason),
            (2, &Reason::Nacked)
        );
        assert_eq!((q.len(), q.waiting(), q.bytes()), (2, 1, 4));
        let all = q.take_all();
        assert_eq!(
            all.ready.iter().map(|e| e.event).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(all.waiting.len(), 1);
        assert_eq!((q.len(), q.waiting(), q.bytes()), (0, 0, 0));
        assert!(q.is_empty());
    }
}
