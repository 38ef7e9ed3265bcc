//! Publisher confirms the broker still owes.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use lapin::publisher_confirm::{Confirmation, PublisherConfirm};

/// A confirm still owed by the broker. lapin keeps the confirms it sees dropped
/// unresolved in a list per channel until someone calls wait_for_confirms (we never
/// do), so one given up on (timeout, cancelled delivery) is awaited by a small task
/// instead; the task ends when the broker answers or the channel dies.
pub(super) struct PendingConfirm(pub(super) Option<PublisherConfirm>);

impl PendingConfirm {
    pub(super) async fn wait(mut self) -> lapin::Result<Confirmation> {
        poll_fn(|cx| match self.0.as_mut() {
            Some(confirm) => {
                let result = Pin::new(confirm).poll(cx);
                if result.is_ready() {
                    self.0 = None;
                }
                result
            }
            None => Poll::Ready(Ok(Confirmation::NotRequested)),
        })
        .await
    }
}

impl Drop for PendingConfirm {
    fn drop(&mut self) {
        if let (Some(confirm), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = confirm.await;
            });
        }
    }
}
