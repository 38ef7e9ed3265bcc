//! The instance resource Erlang holds. What differs between backends is matched here
//! once: the NIFs call `Pusher`'s methods and never look at the backend.

use std::sync::Arc;
use std::time::Duration;

use pusher::connection::StatusSnapshot;
use pusher::http::HttpBackend;
use pusher::push::PushBackend;
use pusher::rabbit::RabbitBackend;
use pusher::sns::SnsBackend;
use pusher::{Backend, Instance, PushError, StatsSnapshot, StopSummary};
use rustler::Term;

use crate::decode::{
    decode_http_event, decode_push_event, decode_rabbit_event, decode_sns_event, http_body_size,
    push_event_size, rabbit_event_size, sns_event_size, BadEvent, Decoded,
};
use crate::push_router::PidRouter;
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

impl Pusher {
    /// Queues the event term; Err names what is malformed in it. A full queue refuses
    /// it from its size alone, before it is decoded or copied.
    pub(crate) fn push(&self, event: Term) -> Result<Result<(), PushError>, BadEvent> {
        match self {
            Pusher::Http(i) => enqueue(i, http_body_size(event), || decode_http_event(event)),
            Pusher::Rabbit(i) => {
                enqueue(i, rabbit_event_size(event), || decode_rabbit_event(event))
            }
            Pusher::Sns(i) => enqueue(i, sns_event_size(event), || decode_sns_event(event)),
            Pusher::Push(i) => enqueue(i, push_event_size(event), || decode_push_event(event)),
        }
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        match self {
            Pusher::Http(instance) => instance.stats(),
            Pusher::Rabbit(instance) => instance.stats(),
            Pusher::Sns(instance) => instance.stats(),
            Pusher::Push(instance) => instance.stats(),
        }
    }

    /// The connection of a backend that keeps one (rabbit).
    pub(crate) fn connection_status(&self) -> Option<StatusSnapshot> {
        match self {
            Pusher::Rabbit(instance) => Some(instance.backend().connection_status()),
            _ => None,
        }
    }

    pub(crate) async fn stop(&self, drain: Duration) -> StopSummary {
        match self {
            Pusher::Http(instance) => instance.stop(drain).await,
            Pusher::Rabbit(instance) => instance.stop(drain).await,
            Pusher::Sns(instance) => instance.stop(drain).await,
            Pusher::Push(instance) => instance.stop(drain).await,
        }
    }
}

fn enqueue<B: Backend>(
    instance: &Instance<B>,
    size: Option<usize>,
    decode: impl FnOnce() -> Decoded<B::Event>,
) -> Result<Result<(), PushError>, BadEvent> {
    let Some(size) = size else {
        // Not the shape the size needs: decoding says which element is wrong.
        return decode().and(Err(BadEvent("shape")));
    };
    if let Some(refused) = instance.refusal(size) {
        return Ok(Err(refused));
    }
    Ok(instance.push(decode()?))
}
