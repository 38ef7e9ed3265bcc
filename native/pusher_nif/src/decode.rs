//! Erlang terms -> the core's configurations and events. Every decoder answers None
//! for a malformed term (the NIF then returns `{error, badarg}`); nothing panics.

use std::time::Duration;

use pusher::http::{Body, Chunk, HttpConfig, HttpEvent, SharedBytes, TlsConfig, VerifyMode};
use pusher::push::PushEvent;
use pusher::rabbit::{
    ChatKind, Direction, ExchangeConfig, RabbitConfig, RabbitEvent, RabbitTls, Topics,
};
use pusher::retry::Jitter;
use pusher::sns::{AttributeValue, Notification, SnsConfig, SnsEvent};
use pusher::{Envelope, InstanceConfig, Overflow, QueueLimits, RetryPolicy};
use rustler::{Atom, Binary, OwnedEnv, Term};
use smallvec::SmallVec;

use crate::atoms;

/// The elements of a proper list; None for anything else. (rustler's ListIterator
/// panics on an improper list.)
pub(crate) fn proper_list(mut term: Term) -> Option<SmallVec<[Term; 4]>> {
    let mut items = SmallVec::new();
    loop {
        if term.is_empty_list() {
            return Some(items);
        }
        let (head, tail) = term.list_get_cell().ok()?;
        items.push(head);
        term = tail;
    }
}

pub(crate) fn get<'a, T: rustler::Decoder<'a>>(map: Term<'a>, key: &str) -> Option<T> {
    let key = Atom::from_str(map.get_env(), key).ok()?;
    map.map_get(key).ok()?.decode().ok()
}

pub(crate) fn get_string(map: Term, key: &str) -> Option<String> {
    let binary: Binary = get(map, key)?;
    String::from_utf8(binary.as_slice().to_vec()).ok()
}

/// The start configuration option that is missing or not of its type:
/// `{error, {bad_config, Option}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadConfig(pub(crate) &'static str);

pub(crate) type Config<T> = Result<T, BadConfig>;

fn option<'a, T: rustler::Decoder<'a>>(map: Term<'a>, key: &'static str) -> Config<T> {
    get(map, key).ok_or(BadConfig(key))
}

fn option_string(map: Term, key: &'static str) -> Config<String> {
    get_string(map, key).ok_or(BadConfig(key))
}

/// An empty binary means "not set".
fn option_path(map: Term, key: &'static str) -> Config<Option<String>> {
    let path = option_string(map, key)?;
    Ok((!path.is_empty()).then_some(path))
}

pub(crate) fn option_millis(map: Term, key: &'static str) -> Config<Duration> {
    option::<u64>(map, key).map(Duration::from_millis)
}

/// One of `choices` (atom, value), named by the option.
fn option_choice<T: Copy>(map: Term, key: &'static str, choices: &[(Atom, T)]) -> Config<T> {
    let chosen: Atom = option(map, key)?;
    choices
        .iter()
        .find(|(atom, _)| *atom == chosen)
        .map(|(_, value)| *value)
        .ok_or(BadConfig(key))
}

pub(crate) fn instance_config(map: Term) -> Config<InstanceConfig> {
    let overflow = option_choice(
        map,
        "overflow",
        &[
            (atoms::drop_newest(), Overflow::DropNewest),
            (atoms::drop_oldest(), Overflow::DropOldest),
        ],
    )?;
    let jitter = match get::<Term>(map, "jitter") {
        None => Jitter::Equal,
        Some(_) => option_choice(map, "jitter", &[(atoms::minus_base(), Jitter::MinusBase)])?,
    };
    Ok(InstanceConfig {
        queue: QueueLimits {
            max_events: option(map, "max_events")?,
            max_bytes: option(map, "max_bytes")?,
            overflow,
        },
        retry: RetryPolicy {
            max_attempts: option::<u32>(map, "max_attempts")?.max(1),
            base_backoff: option_millis(map, "base_backoff_ms")?,
            max_backoff: option_millis(map, "max_backoff_ms")?,
            deadline: option_millis(map, "retry_deadline_ms")?,
            jitter,
        },
        concurrency: option::<usize>(map, "concurrency")?.clamp(1, 4096),
    })
}

pub(crate) mod http_atoms {
    rustler::atoms! { selfsigned_peer }
}

pub(crate) fn http_config(map: Term) -> Config<HttpConfig> {
    let verify_mode = option_choice(
        map,
        "verify_mode",
        &[
            (atoms::peer(), VerifyMode::Peer),
            (http_atoms::selfsigned_peer(), VerifyMode::SelfSignedPeer),
            (atoms::none(), VerifyMode::None),
        ],
    )?;
    Ok(HttpConfig {
        host: option_string(map, "host")?,
        path_prefix: option_string(map, "path_prefix")?,
        request_timeout: option_millis(map, "request_timeout_ms")?,
        max_idle_connections: option(map, "concurrency")?,
        tls: TlsConfig {
            verify_mode,
            cacertfile: option_path(map, "cacertfile")?,
            certfile: option_path(map, "certfile")?,
            keyfile: option_path(map, "keyfile")?,
            server_name_indication: option(map, "server_name_indication")?,
        },
    })
}

/// An exchange section; any problem in it names the section.
fn exchange(map: Term, key: &'static str) -> Config<(ExchangeConfig, Option<Topics>)> {
    let section: Term = option(map, key)?;
    let exchange = || -> Option<(ExchangeConfig, Option<Topics>)> {
        let exchange = ExchangeConfig {
            name: get_string(section, "name")?,
            kind: get_string(section, "type")?,
            durable: get(section, "durable")?,
            persistent: get(section, "persistent")?,
        };
        let topics = match (
            get_string(section, "sent_topic"),
            get_string(section, "recv_topic"),
        ) {
            (Some(sent), Some(recv)) => Some(Topics { sent, recv }),
            _ => None,
        };
        Some((exchange, topics))
    };
    exchange().ok_or(BadConfig(key))
}

pub(crate) fn rabbit_config(map: Term) -> Config<RabbitConfig> {
    let (presence_exchange, _) = exchange(map, "presence_exchange")?;
    let (chat_exchange, chat_topics) = exchange(map, "chat_msg_exchange")?;
    let (groupchat_exchange, groupchat_topics) = exchange(map, "groupchat_msg_exchange")?;
    let tls = match get::<bool>(map, "tls") {
        Some(false) => None,
        _ => Some(RabbitTls {
            cacertfile: option_path(map, "cacertfile")?,
        }),
    };
    Ok(RabbitConfig {
        host: option_string(map, "host")?,
        port: option(map, "port")?,
        username: option_string(map, "username")?,
        password: option_string(map, "password")?,
        virtual_host: option_string(map, "virtual_host")?,
        tls,
        presence_exchange,
        chat_exchange,
        chat_topics: chat_topics.ok_or(BadConfig("chat_msg_exchange"))?,
        groupchat_exchange,
        groupchat_topics: groupchat_topics.ok_or(BadConfig("groupchat_msg_exchange"))?,
        confirms: option(map, "confirms_enabled")?,
        confirm_timeout: option_millis(map, "confirm_timeout_ms")?,
        connect_timeout: option_millis(map, "connect_timeout_ms")?,
        reconnect_base_delay: option_millis(map, "reconnect_base_delay_ms")?,
        reconnect_max_delay: option_millis(map, "reconnect_max_delay_ms")?,
        max_message_bytes: option(map, "max_message_bytes")?,
    })
}

pub(crate) fn sns_config(map: Term) -> Config<SnsConfig> {
    Ok(SnsConfig {
        sns_host: option_string(map, "sns_host")?,
        region: option_string(map, "region")?,
        access_key_id: option_string(map, "access_key_id")?,
        secret_access_key: option_string(map, "secret_access_key")?,
        request_timeout: option_millis(map, "request_timeout_ms")?,
        connect_timeout: option_millis(map, "connect_timeout_ms")?,
        batching: option(map, "batching")?,
    })
}

/// Binaries up to this size are copied into the event; larger ones are referenced.
const INLINE_BYTES: usize = 1024;

/// A binary of the calling process, kept alive by a process-independent environment
/// that holds a copy of its term: for a refc binary that copy is a reference, so
/// holding costs the same whatever the size, and the bytes never move while held.
pub(crate) struct HeldBinary {
    pub(crate) _env: OwnedEnv,
    pub(crate) data: *const u8,
    pub(crate) len: usize,
}

// The bytes are immutable and live as long as `_env`, which is only ever freed by
// dropping this value (enif_free_env may run on any thread).
unsafe impl Send for HeldBinary {}
unsafe impl Sync for HeldBinary {}

impl AsRef<[u8]> for HeldBinary {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: data/len describe the binary `_env` keeps alive (see `hold`).
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

pub(crate) fn hold(binary: Binary) -> Option<SharedBytes> {
    let env = OwnedEnv::new();
    let saved = env.save(binary);
    let (data, len) = env.run(|env| {
        let copy: Binary = saved.load(env).decode().ok()?;
        Some((copy.as_slice().as_ptr(), copy.len()))
    })?;
    Some(std::sync::Arc::new(HeldBinary {
        _env: env,
        data,
        len,
    }))
}

/// A body part: copied when small, held when large.
pub(crate) fn chunk(binary: Binary) -> Option<Chunk> {
    if binary.len() <= INLINE_BYTES {
        Some(Chunk::from(binary.as_slice()))
    } else {
        hold(binary).map(Chunk::Shared)
    }
}

/// The event element that is missing or not of its type: `{error, {bad_event, Field}}`
/// (`shape` when the term is not one of the backend's event tuples at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadEvent(pub(crate) &'static str);

pub(crate) type Decoded<T> = Result<Envelope<T>, BadEvent>;

/// The elements of a tuple of one of these arities.
fn elements<'a>(term: Term<'a>, arities: &[usize]) -> Result<Vec<Term<'a>>, BadEvent> {
    rustler::types::tuple::get_tuple(term)
        .ok()
        .filter(|items| arities.contains(&items.len()))
        .ok_or(BadEvent("shape"))
}

fn element<'a, T: rustler::Decoder<'a>>(
    term: Term<'a>,
    field: &'static str,
) -> Result<T, BadEvent> {
    term.decode().map_err(|_| BadEvent(field))
}

fn text(term: Term, field: &'static str) -> Result<String, BadEvent> {
    element::<Binary>(term, field).map(utf8)
}

/// The first element, an atom among `kinds`.
fn kind<T: Copy>(term: Term, kinds: &[(Atom, T)]) -> Result<T, BadEvent> {
    let kind: Atom = element(term, "kind")?;
    kinds
        .iter()
        .find(|(atom, _)| *atom == kind)
        .map(|(_, value)| *value)
        .ok_or(BadEvent("kind"))
}

/// A raw binary body, or `{form, [{Name, Value}]}` for the worker to form-encode.
pub(crate) fn decode_http_body(term: Term) -> Option<Body> {
    if let Ok(binary) = term.decode::<Binary>() {
        return Some(Body::Raw(chunk(binary)?));
    }
    let (tag, fields): (Atom, Term) = term.decode().ok()?;
    if tag != atoms::form() {
        return None;
    }
    let mut pairs = SmallVec::new();
    for field in proper_list(fields)? {
        let (name, value): (Binary, Binary) = field.decode().ok()?;
        pairs.push((chunk(name)?, chunk(value)?));
    }
    Some(Body::Form(pairs))
}

/// `{Path, [{Name, Value}], Body, Tag}`: binaries, the path UTF-8, Body a binary or
/// `{form, [{Name, Value}]}`.
pub(crate) fn decode_http_event(term: Term) -> Decoded<HttpEvent> {
    let items = elements(term, &[4])?;
    let path: Binary = element(items[0], "path")?;
    let path = std::str::from_utf8(path.as_slice()).map_err(|_| BadEvent("path"))?;
    let mut pairs: SmallVec<[(Binary, Binary); 4]> = SmallVec::new();
    for header in proper_list(items[1]).ok_or(BadEvent("headers"))? {
        pairs.push(element(header, "headers")?);
    }
    let body = decode_http_body(items[2]).ok_or(BadEvent("body"))?;
    let tag: Binary = element(items[3], "tag")?;
    let slices: SmallVec<[(&[u8], &[u8]); 4]> = pairs
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let event = HttpEvent::with_body(path, &slices, body).map_err(|_| BadEvent("headers"))?;
    let size = event.size();
    Ok(Envelope::new(event, tag.as_slice(), size))
}

pub(crate) fn utf8(binary: Binary) -> String {
    // JSON needs text: bytes that are not UTF-8 become U+FFFD rather than an error.
    String::from_utf8_lossy(binary.as_slice()).into_owned()
}

/// `{presence, UserJid, BareJid, Present}` or
/// `{chat | groupchat, in | out, FromJid, ToJid, Message, RoutingBareJid}`.
pub(crate) fn decode_rabbit_event(term: Term) -> Decoded<RabbitEvent> {
    let items = elements(term, &[4, 6])?;
    let (event, tag) = if items.len() == 4 {
        kind(items[0], &[(atoms::presence(), ())])?;
        let bare: Binary = element(items[2], "bare_jid")?;
        let event = RabbitEvent::Presence {
            user_jid: text(items[1], "user_jid")?,
            bare_jid: utf8(bare),
            present: element(items[3], "present")?,
        };
        (event, bare)
    } else {
        let kind = kind(
            items[0],
            &[
                (atoms::chat(), ChatKind::Chat),
                (atoms::groupchat(), ChatKind::Groupchat),
            ],
        )?;
        let direction: Atom = element(items[1], "direction")?;
        let direction = if direction == atoms::r#in() {
            Direction::In
        } else if direction == atoms::out() {
            Direction::Out
        } else {
            return Err(BadEvent("direction"));
        };
        let from: Binary = element(items[2], "from_jid")?;
        let event = RabbitEvent::Chat {
            kind,
            direction,
            from_jid: utf8(from),
            to_jid: text(items[3], "to_jid")?,
            message: text(items[4], "message")?,
            routing_bare_jid: text(items[5], "routing_key")?,
        };
        (event, from)
    };
    let size = event.size();
    Ok(Envelope::new(event, tag.as_slice(), size))
}

/// `[{Name, string | number | binary, Value}]`, name and value binaries.
pub(crate) fn decode_sns_attributes(term: Term) -> Option<Vec<(String, AttributeValue)>> {
    let items = proper_list(term)?;
    let mut attributes = Vec::with_capacity(items.len());
    for item in items {
        let (name, kind, value): (Binary, Atom, Binary) = item.decode().ok()?;
        let value = if kind == atoms::string() {
            AttributeValue::String(utf8(value))
        } else if kind == atoms::number() {
            AttributeValue::Number(utf8(value))
        } else if kind == atoms::binary() {
            AttributeValue::Binary(value.as_slice().to_vec())
        } else {
            return None;
        };
        attributes.push((utf8(name), value));
    }
    Some(attributes)
}

/// `{presence, TopicArn, UserId, Present, Attributes}` or
/// `{message, TopicArn, FromUserId, ToUserId, Message, Attributes}`.
pub(crate) fn decode_sns_event(term: Term) -> Decoded<SnsEvent> {
    let items = elements(term, &[5, 6])?;
    let (notification, tag) = if items.len() == 5 {
        kind(items[0], &[(atoms::presence(), ())])?;
        let user: Binary = element(items[2], "user_id")?;
        let notification = Notification::Presence {
            user_id: utf8(user),
            present: element(items[3], "present")?,
        };
        (notification, user)
    } else {
        kind(items[0], &[(atoms::message(), ())])?;
        let from: Binary = element(items[2], "from_user_id")?;
        let notification = Notification::Message {
            from_user_id: utf8(from),
            to_user_id: text(items[3], "to_user_id")?,
            message: text(items[4], "message")?,
        };
        (notification, from)
    };
    let attributes = decode_sns_attributes(items[items.len() - 1]).ok_or(BadEvent("attributes"))?;
    let event = SnsEvent {
        topic_arn: text(items[1], "topic_arn")?,
        notification,
        attributes,
    };
    let size = event.size();
    Ok(Envelope::new(event, tag.as_slice(), size))
}

fn string_pairs(term: Term, field: &'static str) -> Result<Vec<(String, String)>, BadEvent> {
    proper_list(term)
        .ok_or(BadEvent(field))?
        .into_iter()
        .map(|pair| {
            let (k, v): (Binary, Binary) = element(pair, field)?;
            Ok((utf8(k), utf8(v)))
        })
        .collect()
}

/// `{publish, From, PubSub, Node, Payload, PublishOptions, Tag}`; Payload and
/// PublishOptions are `[{Name, Value}]` binaries; Tag comes back in reports.
pub(crate) fn decode_push_event(term: Term) -> Decoded<PushEvent> {
    let items = elements(term, &[7])?;
    kind(items[0], &[(atoms::publish(), ())])?;
    let tag: Binary = element(items[6], "tag")?;
    let event = PushEvent {
        from: text(items[1], "from")?,
        pubsub: text(items[2], "pubsub")?,
        node: text(items[3], "node")?,
        payload: string_pairs(items[4], "payload")?,
        publish_options: string_pairs(items[5], "publish_options")?,
    };
    let size = event.size();
    Ok(Envelope::new(event, tag.as_slice(), size))
}

pub(crate) fn push_event_size(event: Term) -> Option<usize> {
    let (_, from, pubsub, node, _, _, tag): (Atom, Binary, Binary, Binary, Term, Term, Binary) =
        event.decode().ok()?;
    Some(from.len() + pubsub.len() + node.len() + tag.len())
}

/// The size of the text-carrying part of an SNS event term, cheaply.
pub(crate) fn sns_event_size(event: Term) -> Option<usize> {
    if let Ok((_, arn, user, _, _)) = event.decode::<(Atom, Binary, Binary, Term, Term)>() {
        return Some(arn.len() + user.len());
    }
    let (_, arn, from, to, message, _): (Atom, Binary, Binary, Binary, Binary, Term) =
        event.decode().ok()?;
    Some(arn.len() + from.len() + to.len() + message.len())
}

/// The size of the payload-carrying part of a rabbit event term, cheaply.
pub(crate) fn rabbit_event_size(event: Term) -> Option<usize> {
    if let Ok((_, user, bare, _)) = event.decode::<(Atom, Binary, Binary, Term)>() {
        return Some(user.len() + bare.len());
    }
    let (_, _, from, to, message, _): (Atom, Atom, Binary, Binary, Binary, Term) =
        event.decode().ok()?;
    Some(from.len() + to.len() + message.len())
}

/// The body's size (as `Body::size` counts it) when `event` has the shape of an HTTP
/// event, cheaply: what decides a refusal before anything is copied.
pub(crate) fn http_body_size(event: Term) -> Option<usize> {
    let (_path, _headers, body, _tag): (Term, Term, Term, Term) = event.decode().ok()?;
    if let Ok(binary) = body.decode::<Binary>() {
        return Some(binary.len());
    }
    let (_form, fields): (Atom, Term) = body.decode().ok()?;
    let fields = proper_list(fields)?;
    let mut size = (2 * fields.len()).saturating_sub(1);
    for field in fields {
        let (name, value): (Binary, Binary) = field.decode().ok()?;
        size += name.len() + value.len();
    }
    Some(size)
}
