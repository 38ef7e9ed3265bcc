//! The instance resource Erlang holds. Each backend says once, in its `Boundary`
//! impl here, which records are its events and how they are queued; the NIFs only see
//! `dyn AnyInstance`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pusher::connection::StatusSnapshot;
use pusher::http::HttpBackend;
use pusher::push::PushBackend;
use pusher::rabbit::RabbitBackend;
use pusher::sns::SnsBackend;
use pusher::{Backend, Envelope, Instance, StatsSnapshot, StopSummary};
use rustler::{Atom, Decoder, Term};

use crate::contract::{one_of, record, Either};
use crate::decode::events;
use crate::errors::{Answer, BoundaryError};
use crate::push_router::{held_publish, publish_size, PidRouter};
use crate::reporter::ReportTarget;

/// One backend instance as Erlang holds it; dropping the last reference drops the
/// instance, which aborts its tasks.
pub(crate) struct InstanceResource {
    pub(crate) instance: Box<dyn AnyInstance>,
    /// Where its reports go; replaced when a restarted reporter takes over.
    pub(crate) target: Arc<ReportTarget>,
}

#[rustler::resource_impl]
impl rustler::Resource for InstanceResource {}

/// What the NIFs ask of an instance, whatever its backend.
pub(crate) trait AnyInstance: Send + Sync + 'static {
    /// Queues the event record. A record of this backend (by its tag) that meets a full
    /// queue or a stopping instance is refused and counted before it is decoded; the
    /// size of the others is read off the decoded record, before anything is copied.
    fn push(&self, event: Term) -> Answer<()>;
    fn stats(&self) -> StatsSnapshot;
    /// The connection of a backend that keeps one (rabbit).
    fn connection_status(&self) -> Option<StatusSnapshot>;
    fn stop(&self, drain: Duration) -> Pin<Box<dyn Future<Output = StopSummary> + Send + '_>>;
    /// The push backend, which takes the replies to its publishes.
    fn publisher(&self) -> Option<&PushBackend<PidRouter>>;
}

/// A backend as the boundary sees it.
pub(crate) trait Boundary: Backend + Sized {
    /// The tags of its event records (mod_event_pusher_nif.hrl).
    fn is_own(tag: Atom) -> bool;
    /// Decodes `event`, one of its records, and queues it on `instance`.
    fn enqueue(instance: &Instance<Self>, event: Term) -> Answer<()>;
    fn connection_status(&self) -> Option<StatusSnapshot> {
        None
    }
    fn publisher(&self) -> Option<&PushBackend<PidRouter>> {
        None
    }
}

impl<B: Boundary> AnyInstance for Instance<B> {
    fn push(&self, event: Term) -> Answer<()> {
        let own = record_tag(event).is_some_and(B::is_own);
        if let Some(refused) = own.then(|| self.refusal(0)).flatten() {
            return Err(BoundaryError::Refused(refused));
        }
        B::enqueue(self, event)
    }

    fn stats(&self) -> StatsSnapshot {
        Instance::stats(self)
    }

    fn connection_status(&self) -> Option<StatusSnapshot> {
        self.backend().connection_status()
    }

    fn stop(&self, drain: Duration) -> Pin<Box<dyn Future<Output = StopSummary> + Send + '_>> {
        Box::pin(Instance::stop(self, drain))
    }

    fn publisher(&self) -> Option<&PushBackend<PidRouter>> {
        self.backend().publisher()
    }
}

mod tags {
    rustler::atoms! { http_event, rabbit_presence, rabbit_chat, sns_presence, sns_message, push_publish }
}

impl Boundary for HttpBackend {
    fn is_own(tag: Atom) -> bool {
        tag == tags::http_event()
    }

    fn enqueue(instance: &Instance<Self>, event: Term) -> Answer<()> {
        let http = record(event)?;
        let size = events::http_size(&http);
        enqueue(instance, size, || events::http(http, size))
    }
}

impl Boundary for RabbitBackend {
    fn is_own(tag: Atom) -> bool {
        tag == tags::rabbit_presence() || tag == tags::rabbit_chat()
    }

    fn enqueue(instance: &Instance<Self>, event: Term) -> Answer<()> {
        let presence = (events::rabbit_presence_size, events::rabbit_presence);
        let chat = (events::rabbit_chat_size, events::rabbit_chat);
        enqueue_one_of(instance, event, presence, chat)
    }

    fn connection_status(&self) -> Option<StatusSnapshot> {
        Some(RabbitBackend::connection_status(self))
    }
}

impl Boundary for SnsBackend {
    fn is_own(tag: Atom) -> bool {
        tag == tags::sns_presence() || tag == tags::sns_message()
    }

    fn enqueue(instance: &Instance<Self>, event: Term) -> Answer<()> {
        let presence = (events::sns_presence_size, events::sns_presence);
        let message = (events::sns_message_size, events::sns_message);
        enqueue_one_of(instance, event, presence, message)
    }
}

impl Boundary for PushBackend<PidRouter> {
    fn is_own(tag: Atom) -> bool {
        tag == tags::push_publish()
    }

    fn enqueue(instance: &Instance<Self>, event: Term) -> Answer<()> {
        let publish = record(event)?;
        let size = publish_size(&publish);
        enqueue(instance, size, || Ok(held_publish(event, publish, size)))
    }

    fn publisher(&self) -> Option<&PushBackend<PidRouter>> {
        Some(self)
    }
}

/// The first element of a tuple, when it is an atom.
fn record_tag(term: Term) -> Option<Atom> {
    rustler::types::tuple::get_tuple(term)
        .ok()?
        .first()?
        .decode()
        .ok()
}

/// Queues a backend's event that is one of two records, each with its size (read off
/// the record) and its conversion to the event.
fn enqueue_one_of<'a, B: Backend, P: Decoder<'a>, Q: Decoder<'a>>(
    instance: &Instance<B>,
    event: Term<'a>,
    (first_size, first): (
        impl Fn(&P) -> usize,
        impl Fn(P, usize) -> Envelope<B::Event>,
    ),
    (second_size, second): (
        impl Fn(&Q) -> usize,
        impl Fn(Q, usize) -> Envelope<B::Event>,
    ),
) -> Answer<()> {
    match one_of(event)? {
        Either::First(record) => {
            let size = first_size(&record);
            enqueue(instance, size, || Ok(first(record, size)))
        }
        Either::Second(record) => {
            let size = second_size(&record);
            enqueue(instance, size, || Ok(second(record, size)))
        }
    }
}

/// Queues the event `build` makes, unless its size alone refuses it.
fn enqueue<B: Backend>(
    instance: &Instance<B>,
    size: usize,
    build: impl FnOnce() -> Answer<Envelope<B::Event>>,
) -> Answer<()> {
    if let Some(refused) = instance.refusal(size) {
        return Err(BoundaryError::Refused(refused));
    }
    instance.push(build()?).map_err(BoundaryError::Refused)
}
