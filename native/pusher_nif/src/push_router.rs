//! The push backend's publishes: each `#push_publish{}` is held here as the term it
//! is and handed back whole to the process that builds its IQ and routes it, with the
//! id its reply must carry.

use std::sync::{Arc, Mutex};

use pusher::push::Router;
use pusher::Envelope;
use rustler::env::SavedTerm;
use rustler::{Encoder, OwnedEnv, Term, TermType};

use crate::contract::PushPublish;
use crate::reporter::ReportTarget;

use crate::atoms;

/// Sends `{mod_event_pusher_nif, route, Id, #push_publish{}}` to the reporter.
pub(crate) struct PidRouter {
    pub(crate) target: Arc<ReportTarget>,
}

/// A `#push_publish{}` term kept off the caller's heap (its refc binaries are shared,
/// not copied).
pub(crate) struct HeldPublish(Mutex<(OwnedEnv, SavedTerm)>);

impl Router for PidRouter {
    type Publish = HeldPublish;

    fn route(&self, id: u64, publish: &HeldPublish) -> bool {
        let Ok(held) = publish.0.lock() else {
            return false;
        };
        let (env, saved) = &*held;
        env.run(|held_env| {
            let publish = saved.load(held_env);
            OwnedEnv::new()
                .send_and_clear(&self.target.pid(), |env| {
                    let route = (atoms::mod_event_pusher_nif(), atoms::route());
                    (route.0, route.1, id, publish.in_env(env)).encode(env)
                })
                .is_ok()
        })
    }
}

/// Bytes of the binaries in a term, for the queue's byte cap; bounded in depth (the
/// summary fields and the options are two levels deep).
fn term_bytes(term: Term, depth: u8) -> usize {
    if depth == 0 {
        return 0;
    }
    match term.get_type() {
        TermType::Binary => term.decode::<rustler::Binary>().map_or(0, |b| b.len()),
        TermType::Tuple => rustler::types::tuple::get_tuple(term).map_or(0, |items| {
            items.iter().map(|t| term_bytes(*t, depth - 1)).sum()
        }),
        TermType::List => term
            .decode::<crate::contract::List<Term>>()
            .map_or(0, |items| {
                items.0.iter().map(|t| term_bytes(*t, depth - 1)).sum()
            }),
        TermType::Map => term.decode::<rustler::MapIterator>().map_or(0, |entries| {
            entries
                .map(|(k, v)| term_bytes(k, depth - 1) + term_bytes(v, depth - 1))
                .sum()
        }),
        _ => 0,
    }
}

pub(crate) fn publish_size(publish: &PushPublish) -> usize {
    let fields = term_bytes(publish.payload, 4) + term_bytes(publish.options, 4);
    publish.node.len() + publish.tag.len() + fields
}

pub(crate) fn held_publish(term: Term, publish: PushPublish, size: usize) -> Envelope<HeldPublish> {
    let env = OwnedEnv::new();
    let saved = env.save(term);
    Envelope::new(
        HeldPublish(Mutex::new((env, saved))),
        publish.tag.as_slice(),
        size,
    )
}
