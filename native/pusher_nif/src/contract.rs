//! The events Erlang hands to `push/2`, record for record as
//! `erlang/include/mod_event_pusher_nif.hrl` defines them (the same names and field
//! order): rustler's derives decode them, and a field that does not decode is named
//! in `{error, {bad_event, Field}}`.

use rustler::{Binary, Decoder, NifRecord, NifResult, NifUnitEnum, Term};
use smallvec::SmallVec;

use crate::errors::BoundaryError;

/// A proper list. (rustler's `Vec` decoder panics on an improper one.)
pub(crate) struct List<T>(pub(crate) SmallVec<[T; 4]>);

impl<'a, T: Decoder<'a>> Decoder<'a> for List<T> {
    fn decode(mut term: Term<'a>) -> NifResult<Self> {
        let mut items = SmallVec::new();
        while !term.is_empty_list() {
            let (head, tail) = term.list_get_cell()?;
            items.push(head.decode()?);
            term = tail;
        }
        Ok(List(items))
    }
}

pub(crate) type Pairs<'a> = List<(Binary<'a>, Binary<'a>)>;

/// `#http_event{}`: `body` is the callback module's binary or `{form, Fields}`, which
/// the delivery worker encodes.
#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "http_event"]
pub(crate) struct HttpEvent<'a> {
    pub(crate) path: Binary<'a>,
    pub(crate) headers: Pairs<'a>,
    pub(crate) body: HttpBody<'a>,
    pub(crate) tag: Binary<'a>,
}

// Lives on the stack for the length of one push/2: the inline fields save allocations.
#[allow(clippy::large_enum_variant)]
pub(crate) enum HttpBody<'a> {
    Raw(Binary<'a>),
    Form(Pairs<'a>),
}

impl<'a> Decoder<'a> for HttpBody<'a> {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        if let Ok(raw) = term.decode() {
            return Ok(HttpBody::Raw(raw));
        }
        let (tag, fields): (rustler::Atom, Pairs<'a>) = term.decode()?;
        if tag != crate::atoms::form() {
            return Err(rustler::Error::BadArg);
        }
        Ok(HttpBody::Form(fields))
    }
}

/// `#rabbit_presence{}`: to the presence exchange, routing key `bare_jid`.
#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "rabbit_presence"]
pub(crate) struct RabbitPresence<'a> {
    pub(crate) user_jid: Binary<'a>,
    pub(crate) bare_jid: Binary<'a>,
    pub(crate) present: bool,
}

#[derive(NifUnitEnum, Clone, Copy)]
#[rustler(decode)]
pub(crate) enum ChatKind {
    Chat,
    Groupchat,
}

#[derive(NifUnitEnum, Clone, Copy)]
#[rustler(decode)]
pub(crate) enum Direction {
    In,
    Out,
}

/// `#rabbit_chat{}`: to the chat or groupchat exchange, routing key
/// `<routing_key>.<topic>`.
#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "rabbit_chat"]
pub(crate) struct RabbitChat<'a> {
    pub(crate) kind: ChatKind,
    pub(crate) direction: Direction,
    pub(crate) from_jid: Binary<'a>,
    pub(crate) to_jid: Binary<'a>,
    pub(crate) message: Binary<'a>,
    pub(crate) routing_key: Binary<'a>,
}

#[derive(NifUnitEnum, Clone, Copy)]
#[rustler(decode)]
pub(crate) enum AttributeKind {
    String,
    Number,
    Binary,
}

pub(crate) type Attributes<'a> = List<(Binary<'a>, AttributeKind, Binary<'a>)>;

#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "sns_presence"]
pub(crate) struct SnsPresence<'a> {
    pub(crate) topic_arn: Binary<'a>,
    pub(crate) user_id: Binary<'a>,
    pub(crate) present: bool,
    pub(crate) attributes: Attributes<'a>,
}

#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "sns_message"]
pub(crate) struct SnsMessage<'a> {
    pub(crate) topic_arn: Binary<'a>,
    pub(crate) from_user_id: Binary<'a>,
    pub(crate) to_user_id: Binary<'a>,
    pub(crate) message: Binary<'a>,
    pub(crate) attributes: Attributes<'a>,
}

/// `#push_publish{}`: held here as the term it is, and handed back whole when its
/// turn to be routed comes (Erlang builds its IQ then).
#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "push_publish"]
pub(crate) struct PushPublish<'a> {
    /// Held for Erlang, not read here.
    #[allow(dead_code)]
    pub(crate) user: Term<'a>,
    #[allow(dead_code)]
    pub(crate) pubsub: Term<'a>,
    pub(crate) node: Binary<'a>,
    pub(crate) payload: Term<'a>,
    pub(crate) options: Term<'a>,
    pub(crate) tag: Binary<'a>,
}

/// One of two records: the first when `term` has its tag and arity.
pub(crate) enum Either<A, B> {
    First(A),
    Second(B),
}

pub(crate) fn one_of<'a, A: Decoder<'a>, B: Decoder<'a>>(
    term: Term<'a>,
) -> Result<Either<A, B>, BoundaryError> {
    match term.decode::<A>() {
        Ok(first) => Ok(Either::First(first)),
        Err(error) => match BoundaryError::bad_event(term, error) {
            BoundaryError::BadEvent(shape) if shape == "shape" => record(term).map(Either::Second),
            named => Err(named),
        },
    }
}

/// The record `term` must be; `{bad_event, Field}` names what does not decode.
pub(crate) fn record<'a, T: Decoder<'a>>(term: Term<'a>) -> Result<T, BoundaryError> {
    term.decode()
        .map_err(|error| BoundaryError::bad_event(term, error))
}

// Start configurations: `start_<backend>(#instance_config{}, #<backend>_config{}, Pid)`.
// Durations are in milliseconds (`_ms`); an empty binary path means "not set".

#[derive(NifUnitEnum, Clone, Copy)]
#[rustler(decode)]
pub(crate) enum Overflow {
    DropNewest,
    DropOldest,
}

#[derive(NifUnitEnum, Clone, Copy)]
#[rustler(decode)]
pub(crate) enum Jitter {
    Equal,
    MinusBase,
}

/// What every instance has: its queue, its retry policy, its deliveries at once.
#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "instance_config"]
pub(crate) struct InstanceConfig {
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
    pub(crate) overflow: Overflow,
    pub(crate) max_attempts: u32,
    pub(crate) base_backoff_ms: u64,
    pub(crate) max_backoff_ms: u64,
    pub(crate) retry_deadline_ms: u64,
    pub(crate) jitter: Jitter,
    pub(crate) concurrency: usize,
}

#[derive(NifUnitEnum, Clone, Copy)]
#[rustler(decode)]
pub(crate) enum VerifyMode {
    Peer,
    SelfsignedPeer,
    None,
}

#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "http_config"]
pub(crate) struct HttpConfig {
    pub(crate) host: String,
    pub(crate) path_prefix: String,
    pub(crate) request_timeout_ms: u64,
    pub(crate) verify_mode: VerifyMode,
    pub(crate) cacertfile: String,
    pub(crate) certfile: String,
    pub(crate) keyfile: String,
    pub(crate) server_name_indication: bool,
}

/// `sent_topic` and `recv_topic` are the chat exchanges' routing-key suffixes.
#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "rabbit_exchange"]
pub(crate) struct RabbitExchange {
    pub(crate) name: String,
    pub(crate) r#type: String,
    pub(crate) durable: bool,
    pub(crate) persistent: bool,
    pub(crate) sent_topic: String,
    pub(crate) recv_topic: String,
}

#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "rabbit_config"]
pub(crate) struct RabbitConfig {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) virtual_host: String,
    pub(crate) tls: bool,
    pub(crate) cacertfile: String,
    pub(crate) presence_exchange: RabbitExchange,
    pub(crate) chat_msg_exchange: RabbitExchange,
    pub(crate) groupchat_msg_exchange: RabbitExchange,
    pub(crate) confirms_enabled: bool,
    pub(crate) confirm_timeout_ms: u64,
    pub(crate) connect_timeout_ms: u64,
    pub(crate) reconnect_base_delay_ms: u64,
    pub(crate) reconnect_max_delay_ms: u64,
    pub(crate) max_message_bytes: usize,
}

#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "sns_config"]
pub(crate) struct SnsConfig {
    pub(crate) sns_host: String,
    pub(crate) region: String,
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) request_timeout_ms: u64,
    pub(crate) connect_timeout_ms: u64,
    pub(crate) batching: bool,
}

#[derive(NifRecord)]
#[rustler(decode)]
#[tag = "push_config"]
pub(crate) struct PushConfig {
    pub(crate) publish_timeout_ms: u64,
}

/// The configuration record `term` must be; `{bad_config, Option}` names what does not
/// decode (the record's own name when `term` is not that record at all).
pub(crate) fn config<'a, T: Decoder<'a>>(
    term: Term<'a>,
    record: &'static str,
) -> Result<T, BoundaryError> {
    term.decode()
        .map_err(|error| match BoundaryError::bad_event(term, error) {
            BoundaryError::BadEvent(field) if field != "shape" => BoundaryError::BadConfig(field),
            _ => BoundaryError::BadConfig(record.into()),
        })
}
