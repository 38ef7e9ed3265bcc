//! The instance resource Erlang holds. What differs between backends is matched here
//! once: the NIFs call `Pusher`'s methods and never look at the backend.

use std::sync::Arc;
use std::time::Duration;

use pusher::connection::StatusSnapshot;
use pusher::http::HttpBackend;
use pusher::push::PushBackend;
use pusher::rabbit::RabbitBackend;
use pusher::sns::SnsBackend;
use pusher::{Backend, Envelope, Instance, StatsSnapshot, StopSummary};
use rustler::{Atom, Term};

use crate::contract::{one_of, record, Either};
use crate::decode::events;
use crate::errors::{Answer, BoundaryError};
use crate::push_router::{held_publish, publish_size, PidRouter};
use crate::reporter::ReportTarget;

pub(crate) enum Pusher {
    Http(Instance<HttpBackend>),
    Rabbit(Instance<RabbitBackend>),
    Sns(Instance<SnsBackend>),
    Push(Instance<PushBackend<PidRouter>>),
}

/// One backend instance as Erlang holds it; dropping the last reference drops the
/// instance, which aborts its tasks.
pub(crate) struct InstanceResource {
    pub(crate) pusher: Pusher,
    /// Where its reports go; replaced when a restarted reporter takes over.
    pub(crate) target: Arc<ReportTarget>,
}

#[rustler::resource_impl]
impl rustler::Resource for InstanceResource {}

/// Calls `$body` with the instance, whatever its backend.
macro_rules! with_instance {
    ($pusher:expr, $instance:ident => $body:expr) => {
        match $pusher {
            Pusher::Http($instance) => $body,
            Pusher::Rabbit($instance) => $body,
            Pusher::Sns($instance) => $body,
            Pusher::Push($instance) => $body,
        }
    };
}

impl Pusher {
    /// Queues the event record. A record of this backend (by its tag) that meets a full
    /// queue or a stopping instance is refused and counted before it is decoded; the
    /// size of the others is read off the decoded record, before anything is copied.
    pub(crate) fn push(&self, event: Term) -> Answer<()> {
        let tag = record_tag(event);
        let refused = with_instance!(self, instance => {
            self.is_own(tag).then(|| instance.refusal(0)).flatten()
        });
        if let Some(refused) = refused {
            return Err(BoundaryError::Refused(refused));
        }
        match self {
            Pusher::Http(i) => {
                let http = record(event)?;
                let size = events::http_size(&http);
                enqueue(i, size, || events::http(http, size))
            }
            Pusher::Rabbit(i) => match one_of(event)? {
                Either::First(presence) => {
                    let size = events::rabbit_presence_size(&presence);
                    enqueue(i, size, || Ok(events::rabbit_presence(presence, size)))
                }
                Either::Second(chat) => {
                    let size = events::rabbit_chat_size(&chat);
                    enqueue(i, size, || Ok(events::rabbit_chat(chat, size)))
                }
            },
            Pusher::Sns(i) => match one_of(event)? {
                Either::First(presence) => {
                    let size = events::sns_presence_size(&presence);
                    enqueue(i, size, || Ok(events::sns_presence(presence, size)))
                }
                Either::Second(message) => {
                    let size = events::sns_message_size(&message);
                    enqueue(i, size, || Ok(events::sns_message(message, size)))
                }
            },
            Pusher::Push(i) => {
                let publish = record(event)?;
                let size = publish_size(&publish);
                enqueue(i, size, || Ok(held_publish(event, publish, size)))
            }
        }
    }

    /// Whether `tag` is the tag of one of this backend's event records.
    fn is_own(&self, tag: Option<Atom>) -> bool {
        let Some(tag) = tag else {
            return false;
        };
        let own: &[Atom] = match self {
            Pusher::Http(_) => &[event_tags::http_event()],
            Pusher::Rabbit(_) => &[event_tags::rabbit_presence(), event_tags::rabbit_chat()],
            Pusher::Sns(_) => &[event_tags::sns_presence(), event_tags::sns_message()],
            Pusher::Push(_) => &[event_tags::push_publish()],
        };
        own.contains(&tag)
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        with_instance!(self, instance => instance.stats())
    }

    /// The connection of a backend that keeps one (rabbit).
    pub(crate) fn connection_status(&self) -> Option<StatusSnapshot> {
        match self {
            Pusher::Rabbit(instance) => Some(instance.backend().connection_status()),
            _ => None,
        }
    }

    pub(crate) async fn stop(&self, drain: Duration) -> StopSummary {
        with_instance!(self, instance => instance.stop(drain).await)
    }
}

mod event_tags {
    rustler::atoms! { http_event, rabbit_presence, rabbit_chat, sns_presence, sns_message, push_publish }
}

/// The first element of a tuple, when it is an atom.
fn record_tag(term: Term) -> Option<Atom> {
    rustler::types::tuple::get_tuple(term)
        .ok()?
        .first()?
        .decode()
        .ok()
}

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
