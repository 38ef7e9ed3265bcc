//! XEP-0357 push backend. The host builds each publish IQ once, where it routes it
//! (MongooseIM's mod_event_pusher_push); here it is held as an opaque `Publish`. This
//! module owns the queue's concurrency, hands each publish to the host's router with
//! an id, and waits for the reply with that id or the timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::backend::{Attempt, AttemptOutcome, Backend, Verdict};
use crate::reason::Reason;

/// What came back for a routed publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An IQ result.
    Result,
    /// An IQ error with this `type` (cancel, wait, modify, auth...).
    Error(String),
    /// The host's IQ timeout passed with no reply.
    Timeout,
}

/// Routes publish IQs on the host's side.
pub trait Router: Send + Sync + 'static {
    /// One publish as the host built it.
    type Publish: Send + Sync + 'static;

    /// Asks the host to route `publish`, tagging its reply with `id`. False when the
    /// host is gone.
    fn route(&self, id: u64, publish: &Self::Publish) -> bool;
}

pub struct PushBackend<R: Router> {
    router: R,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    reply_timeout: Duration,
}

impl<R: Router> PushBackend<R> {
    pub fn new(router: R, reply_timeout: Duration) -> Self {
        PushBackend {
            router,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            reply_timeout,
        }
    }

    /// Delivers the reply to the publish tagged `id`. False when nobody waits for it
    /// any more (timed out here first, or an unknown id).
    pub fn reply(&self, id: u64, reply: Reply) -> bool {
        match self.pending().remove(&id) {
            Some(waiter) => waiter.send(reply).is_ok(),
            None => false,
        }
    }

    /// Publishes waiting for a reply.
    pub fn waiting(&self) -> usize {
        self.pending().len()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn attempt(verdict: Verdict, outcome: AttemptOutcome) -> Attempt {
    Attempt {
        verdict,
        outcome,
        wire_bytes: None,
    }
}

impl<R: Router> Backend for PushBackend<R> {
    type Event = R::Publish;

    async fn deliver(&self, publish: &R::Publish) -> Attempt {
        let id = self.next_id.fetch_add(1, Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.pending().insert(id, sender);
        if !self.router.route(id, publish) {
            self.pending().remove(&id);
            return Attempt::no_response(Reason::RouterDown);
        }
        let reply = tokio::time::timeout(self.reply_timeout, receiver).await;
        match reply {
            Ok(Ok(Reply::Result)) => attempt(Verdict::Delivered, AttemptOutcome::Replied),
            Ok(Ok(Reply::Error(kind))) => {
                // As in MongooseIM: an error reply is final; a `cancel` one also
                // disables the registration (the host does that on this report).
                let reason = Reason::ErrorReply(kind.clone());
                attempt(Verdict::Fatal(reason), AttemptOutcome::ErrorReply(kind))
            }
            Ok(Ok(Reply::Timeout)) => attempt(
                Verdict::Retry(Reason::HostTimeout),
                AttemptOutcome::TimedOut,
            ),
            Ok(Err(_)) => Attempt::no_response(Reason::ReplyLost),
            Err(_) => {
                self.pending().remove(&id);
                attempt(Verdict::Retry(Reason::Timeout), AttemptOutcome::TimedOut)
            }
        }
    }

    async fn shutdown(&self) {
        // Whoever still waits gets a timeout now rather than at its deadline.
        self.pending().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Answers every route with a fixed reply, from another task.
    struct Answering {
        backend: Mutex<Option<std::sync::Weak<PushBackend<Answering>>>>,
        reply: Option<Reply>,
    }

    impl Router for Answering {
        type Publish = ();

        fn route(&self, id: u64, _publish: &()) -> bool {
            let backend = self.backend.lock().ok().and_then(|b| b.clone());
            if let (Some(reply), Some(backend)) = (self.reply.clone(), backend) {
                tokio::spawn(async move {
                    if let Some(backend) = backend.upgrade() {
                        backend.reply(id, reply);
                    }
                });
            }
            true
        }
    }

    async fn deliver_with(reply: Option<Reply>) -> (Attempt, usize) {
        let backend = Arc::new(PushBackend::new(
            Answering {
                backend: Mutex::new(None),
                reply,
            },
            Duration::from_millis(50),
        ));
        if let Ok(mut slot) = backend.router.backend.lock() {
            *slot = Some(Arc::downgrade(&backend));
        }
        let attempt = backend.deliver(&()).await;
        (attempt, backend.waiting())
    }

    #[tokio::test]
    async fn replies_decide_the_verdict() {
        let (ok, _) = deliver_with(Some(Reply::Result)).await;
        assert_eq!(ok.verdict, Verdict::Delivered);
        assert_eq!(ok.outcome, AttemptOutcome::Replied);
        let (cancel, _) = deliver_with(Some(Reply::Error("cancel".into()))).await;
        assert!(matches!(cancel.verdict, Verdict::Fatal(_)));
        assert_eq!(cancel.outcome, AttemptOutcome::ErrorReply("cancel".into()));
        let (silent, waiting) = deliver_with(None).await;
        assert_eq!(silent.outcome, AttemptOutcome::TimedOut);
        assert_eq!(waiting, 0, "a timed-out publish no longer waits");
    }
}
