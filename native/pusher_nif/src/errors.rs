//! The one error type of the boundary: every NIF refusal is `{error, Kind}` or
//! `{error, {Kind, Detail}}`, Detail naming the option, the field or the reason.

use std::borrow::Cow;

use rustler::{Atom, Encoder, Env, Term};

use crate::atoms;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BoundaryError {
    /// Not an instance, not a map, not a pid: the caller's bug.
    #[error("badarg")]
    Badarg,
    /// The library was loaded without its runtime.
    #[error("no runtime")]
    NoRuntime,
    /// A start option missing or not of its type.
    #[error("bad config option {0}")]
    BadConfig(Cow<'static, str>),
    /// An event field that does not decode (`shape`: not one of the backend's records).
    #[error("bad event field {0}")]
    BadEvent(Cow<'static, str>),
    /// The backend refused to start: `{Kind, Text}` (unreadable certificate, a broker
    /// refusing the credentials...).
    #[error("{0}: {1}")]
    Start(&'static str, String),
    /// The event alone is larger than the queue's byte cap, the queue is full, or the
    /// instance is stopping.
    #[error("refused: {0:?}")]
    Refused(pusher::PushError),
    #[error("unknown request")]
    UnknownRequest,
}

impl BoundaryError {
    /// rustler's record decoder says which field failed in its error text
    /// ("Could not decode field F on Record R"); any other failure is the shape.
    pub(crate) fn bad_event(term: Term, error: rustler::Error) -> Self {
        let field = match error {
            rustler::Error::RaiseTerm(text) => text
                .encode(term.get_env())
                .decode::<String>()
                .ok()
                .and_then(|text| {
                    let rest = text.strip_prefix("Could not decode field ")?;
                    Some(rest.split(' ').next()?.trim_start_matches("r#").to_string())
                }),
            _ => None,
        };
        BoundaryError::BadEvent(field.map_or(Cow::Borrowed("shape"), Cow::Owned))
    }
}

/// The reason alone: NIFs answer `{error, Reason}` (rustler writes a `Result` so).
impl Encoder for BoundaryError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let named = |kind: Atom, name: &str| match Atom::from_str(env, name) {
            Ok(name) => (kind, name).encode(env),
            Err(_) => kind.encode(env),
        };
        match self {
            BoundaryError::Badarg => atoms::badarg().encode(env),
            BoundaryError::NoRuntime => atoms::no_runtime().encode(env),
            BoundaryError::BadConfig(option) => named(atoms::bad_config(), option),
            BoundaryError::BadEvent(field) => named(atoms::bad_event(), field),
            BoundaryError::Start(kind, text) => match Atom::from_str(env, kind) {
                Ok(kind) => (kind, text.as_str()).encode(env),
                Err(_) => text.as_str().encode(env),
            },
            BoundaryError::Refused(pusher::PushError::QueueFull) => atoms::queue_full().encode(env),
            BoundaryError::Refused(pusher::PushError::Stopped) => atoms::stopped().encode(env),
            BoundaryError::Refused(pusher::PushError::TooLarge) => atoms::too_large().encode(env),
            BoundaryError::UnknownRequest => atoms::unknown_request().encode(env),
        }
    }
}

pub(crate) type Answer<T> = Result<T, BoundaryError>;

/// `{ok, Value}` or `{error, Reason}`. (rustler wants what a NIF returns to be
/// `RefUnwindSafe`, which an instance handle is not; encoding it only makes a term.)
pub(crate) struct Returned<T>(pub(crate) Answer<T>);

impl<T> std::panic::RefUnwindSafe for Returned<T> {}

impl<T> From<Answer<T>> for Returned<T> {
    fn from(answer: Answer<T>) -> Self {
        Returned(answer)
    }
}

impl<T: Encoder> Encoder for Returned<T> {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match &self.0 {
            Ok(value) => (atoms::ok(), value).encode(env),
            Err(error) => (atoms::error(), error).encode(env),
        }
    }
}

/// The answer of a NIF that returns nothing: `ok` or `{error, Reason}`.
pub(crate) struct Done(pub(crate) Answer<()>);

impl From<Answer<()>> for Done {
    fn from(answer: Answer<()>) -> Self {
        Done(answer)
    }
}

impl Encoder for Done {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match &self.0 {
            Ok(()) => atoms::ok().encode(env),
            Err(error) => (atoms::error(), error).encode(env),
        }
    }
}
