//! The push backend's publish IQs, handed to the Erlang process that routes them.

use std::sync::Arc;

use pusher::push::{Element, Node, PushEvent, Router};
use rustler::{Encoder, Env, OwnedEnv, Term};

use crate::reporter::ReportTarget;

use crate::atoms;

/// Hands publish IQs to the Erlang process that routes them (the reporter):
/// `{mod_event_pusher_nif, route, Id, From, PubSub, PubsubElement}`.
pub(crate) struct PidRouter {
    pub(crate) target: Arc<ReportTarget>,
}

pub(crate) fn element_term<'a>(env: Env<'a>, element: &Element) -> Term<'a> {
    let keys: Vec<Term> = element
        .attrs
        .iter()
        .map(|(k, _)| k.as_str().encode(env))
        .collect();
    let values: Vec<Term> = element
        .attrs
        .iter()
        .map(|(_, v)| v.as_str().encode(env))
        .collect();
    let attrs =
        Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env));
    let children: Vec<Term> = element
        .children
        .iter()
        .map(|child| match child {
            Node::Element(child) => element_term(env, child),
            Node::Text(text) => (atoms::xmlcdata(), text.as_str(), atoms::escaped()).encode(env),
        })
        .collect();
    (atoms::xmlel(), element.name.as_str(), attrs, children).encode(env)
}

impl Router for PidRouter {
    fn route(&self, id: u64, event: &PushEvent, pubsub: &Element) -> bool {
        let mut owned = OwnedEnv::new();
        owned
            .send_and_clear(&self.target.pid(), |env| {
                (
                    atoms::mod_event_pusher_nif(),
                    atoms::route(),
                    id,
                    event.from.as_str(),
                    event.pubsub.as_str(),
                    element_term(env, pubsub),
                )
                    .encode(env)
            })
            .is_ok()
    }
}
