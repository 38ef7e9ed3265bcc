//! The bounded per-instance queue: capped in events and in bytes, with an overflow
//! policy. Every event it refuses or evicts is returned to the caller to be counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

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
}

impl<E> Envelope<E> {
    pub fn new(event: E, tag: &[u8], bytes: usize) -> Self {
        Envelope {
            event,
            tag: Tag::from_slice(tag),
            bytes,
            enqueued_at: Instant::now(),
        }
    }
}

/// What happens to a new event when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse the new event (the caller learns at once: `{error, queue_full}`).
    DropNewest,
    /// Evict the oldest queued events to make room for the new one.
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
    /// Not queued (DropNewest, or the event alone exceeds the byte cap).
    Refused(Envelope<E>),
}

struct Inner<E> {
    events: VecDeque<Envelope<E>>,
    bytes: usize,
}

pub struct BoundedQueue<E> {
    limits: QueueLimits,
    inner: Mutex<Inner<E>>,
    /// events.len(), readable without the lock (updated under it).
    len: AtomicUsize,
}

impl<E> BoundedQueue<E> {
    pub fn new(limits: QueueLimits) -> Self {
        BoundedQueue {
            limits,
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                bytes: 0,
            }),
            len: AtomicUsize::new(0),
        }
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<E>> {
        // A panic while holding this lock cannot leave the deque inconsistent (every
        // critical section is a single push/pop), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn offer(&self, envelope: Envelope<E>) -> Offer<E> {
        let limits = self.limits;
        if envelope.bytes > limits.max_bytes || limits.max_events == 0 {
            return Offer::Refused(envelope);
        }
        let mut inner = self.lock();
        let fits = |inner: &Inner<E>| {
            inner.events.len() < limits.max_events
                && inner.bytes + envelope.bytes <= limits.max_bytes
        };
        let mut evicted = Vec::new();
        if !fits(&inner) {
            match limits.overflow {
                Overflow::DropNewest => return Offer::Refused(envelope),
                Overflow::DropOldest => {
                    while !fits(&inner) {
                        match inner.events.pop_front() {
                            Some(old) => {
                                inner.bytes -= old.bytes;
                                evicted.push(old);
                            }
                            None => break,
                        }
                    }
                }
            }
        }
        inner.bytes += envelope.bytes;
        inner.events.push_back(envelope);
        self.len.store(inner.events.len(), Relaxed);
        Offer::Queued { evicted }
    }

    pub fn pop(&self) -> Option<Envelope<E>> {
        self.pop_and_peek().0
    }

    /// The oldest event, and whether others remain after it.
    pub fn pop_and_peek(&self) -> (Option<Envelope<E>>, bool) {
        let mut inner = self.lock();
        let envelope = inner.events.pop_front();
        if let Some(e) = &envelope {
            inner.bytes -= e.bytes;
        }
        self.len.store(inner.events.len(), Relaxed);
        (envelope, !inner.events.is_empty())
    }

    /// Empties the queue (used when an instance is dropped or a drain times out).
    pub fn take_all(&self) -> Vec<Envelope<E>> {
        let mut inner = self.lock();
        inner.bytes = 0;
        self.len.store(0, Relaxed);
        inner.events.drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// True when a new event would surely be refused for lack of room (DropNewest and
    /// no slot left): the caller can skip building it. A hint, read without the lock.
    pub fn refuses_new_events(&self) -> bool {
        self.limits.overflow == Overflow::DropNewest && self.len() >= self.limits.max_events
    }

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
            Offer::Refused(_) => panic!("expected eviction"),
        }
        assert_eq!(q.bytes(), 9);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn an_event_larger_than_the_byte_cap_is_refused_whatever_the_policy() {
        let q = BoundedQueue::new(limits(100, 10, Overflow::DropOldest));
        assert!(matches!(q.offer(env(1, 2)), Offer::Queued { .. }));
        assert!(matches!(q.offer(env(2, 11)), Offer::Refused(_)));
        assert_eq!(q.len(), 1);
    }
}
