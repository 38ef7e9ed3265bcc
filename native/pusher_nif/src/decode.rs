//! Erlang terms -> the core's configurations and events. A malformed term is an
//! error naming what is wrong; nothing panics.

use std::time::Duration;

use crate::contract::{self, config};
use crate::errors::Answer;
use pusher::http::{Chunk, HttpConfig, SharedBytes, TlsConfig, VerifyMode};
use pusher::push::Reply;
use pusher::rabbit::{ExchangeConfig, RabbitConfig, RabbitTls, Topics};
use pusher::retry::Jitter;
use pusher::sns::SnsConfig;
use pusher::{InstanceConfig, Overflow, QueueLimits, RetryPolicy};
use rustler::{Binary, OwnedEnv, Term};

/// `#instance_config{}` -> the core's queue limits, retry policy and concurrency.
pub(crate) fn instance_config(term: Term) -> Answer<InstanceConfig> {
    let c: contract::InstanceConfig = config(term, "instance_config")?;
    Ok(InstanceConfig {
        queue: QueueLimits {
            max_events: c.max_events,
            max_bytes: c.max_bytes,
            overflow: match c.overflow {
                contract::Overflow::DropNewest => Overflow::DropNewest,
                contract::Overflow::DropOldest => Overflow::DropOldest,
            },
        },
        retry: RetryPolicy {
            max_attempts: c.max_attempts.max(1),
            base_backoff: Duration::from_millis(c.base_backoff_ms),
            max_backoff: Duration::from_millis(c.max_backoff_ms),
            deadline: Duration::from_millis(c.retry_deadline_ms),
            jitter: match c.jitter {
                contract::Jitter::Equal => Jitter::Equal,
                contract::Jitter::MinusBase => Jitter::MinusBase,
            },
        },
        concurrency: c.concurrency.clamp(1, 4096),
    })
}

/// An empty binary means "not set".
fn path(path: String) -> Option<String> {
    (!path.is_empty()).then_some(path)
}

pub(crate) fn http_config(term: Term, concurrency: usize) -> Answer<HttpConfig> {
    let c: contract::HttpConfig = config(term, "http_config")?;
    Ok(HttpConfig {
        host: c.host,
        path_prefix: c.path_prefix,
        request_timeout: Duration::from_millis(c.request_timeout_ms),
        max_idle_connections: concurrency,
        tls: TlsConfig {
            verify_mode: match c.verify_mode {
                contract::VerifyMode::Peer => VerifyMode::Peer,
                contract::VerifyMode::SelfsignedPeer => VerifyMode::SelfSignedPeer,
                contract::VerifyMode::None => VerifyMode::None,
            },
            cacertfile: path(c.cacertfile),
            certfile: path(c.certfile),
            keyfile: path(c.keyfile),
            server_name_indication: c.server_name_indication,
        },
    })
}

fn exchange(exchange: contract::RabbitExchange) -> (ExchangeConfig, Topics) {
    let topics = Topics {
        sent: exchange.sent_topic,
        recv: exchange.recv_topic,
    };
    let exchange = ExchangeConfig {
        name: exchange.name,
        kind: exchange.r#type,
        durable: exchange.durable,
        persistent: exchange.persistent,
    };
    (exchange, topics)
}

pub(crate) fn rabbit_config(term: Term) -> Answer<RabbitConfig> {
    let c: contract::RabbitConfig = config(term, "rabbit_config")?;
    let (presence_exchange, _) = exchange(c.presence_exchange);
    let (chat_exchange, chat_topics) = exchange(c.chat_msg_exchange);
    let (groupchat_exchange, groupchat_topics) = exchange(c.groupchat_msg_exchange);
    let millis = Duration::from_millis;
    Ok(RabbitConfig {
        host: c.host,
        port: c.port,
        username: c.username,
        password: c.password,
        virtual_host: c.virtual_host,
        tls: c.tls.then(|| RabbitTls {
            cacertfile: path(c.cacertfile),
        }),
        presence_exchange,
        chat_exchange,
        chat_topics,
        groupchat_exchange,
        groupchat_topics,
        confirms: c.confirms_enabled,
        confirm_timeout: millis(c.confirm_timeout_ms),
        connect_timeout: millis(c.connect_timeout_ms),
        reconnect_base_delay: millis(c.reconnect_base_delay_ms),
        reconnect_max_delay: millis(c.reconnect_max_delay_ms),
        max_message_bytes: c.max_message_bytes,
    })
}

pub(crate) fn sns_config(term: Term) -> Answer<SnsConfig> {
    let c: contract::SnsConfig = config(term, "sns_config")?;
    Ok(SnsConfig {
        sns_host: c.sns_host,
        region: c.region,
        access_key_id: c.access_key_id,
        secret_access_key: c.secret_access_key,
        request_timeout: Duration::from_millis(c.request_timeout_ms),
        connect_timeout: Duration::from_millis(c.connect_timeout_ms),
        batching: c.batching,
    })
}

/// `result | timeout | {error, Type}`: the routed publish's reply.
pub(crate) fn publish_reply(term: Term) -> Answer<Reply> {
    use crate::atoms;
    match (
        term.decode::<rustler::Atom>(),
        term.decode::<(rustler::Atom, Binary)>(),
    ) {
        (Ok(atom), _) if atom == atoms::result() => Ok(Reply::Result),
        (Ok(atom), _) if atom == atoms::timeout() => Ok(Reply::Timeout),
        (_, Ok((tag, kind))) if tag == atoms::error() => Ok(Reply::Error(utf8(kind))),
        _ => Err(crate::errors::BoundaryError::Badarg),
    }
}

pub(crate) fn push_timeout(term: Term) -> Answer<Duration> {
    let c: contract::PushConfig = config(term, "push_config")?;
    Ok(Duration::from_millis(c.publish_timeout_ms))
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

pub(crate) fn utf8(binary: Binary) -> String {
    // JSON needs text: bytes that are not UTF-8 become U+FFFD rather than an error.
    String::from_utf8_lossy(binary.as_slice()).into_owned()
}

/// A body part: copied when small, held when large.
pub(crate) fn chunk(binary: Binary) -> Option<Chunk> {
    if binary.len() <= INLINE_BYTES {
        Some(Chunk::from(binary.as_slice()))
    } else {
        hold(binary).map(Chunk::Shared)
    }
}

/// The contract's records -> the core's events. Sizes are read off the record before
/// anything is copied, so a refused event costs no copy.
pub(crate) mod events {
    use pusher::http::{Body, HttpEvent};
    use pusher::rabbit::{self, RabbitEvent};
    use pusher::sns::{AttributeValue, Notification, SnsEvent};
    use pusher::Envelope;
    use rustler::Binary;
    use smallvec::SmallVec;

    use super::{chunk, utf8};
    use crate::contract::{self, AttributeKind, Attributes, Pairs};
    use crate::errors::{Answer, BoundaryError};

    fn bad(field: &'static str) -> BoundaryError {
        BoundaryError::BadEvent(field.into())
    }

    fn pairs_bytes(pairs: &Pairs) -> usize {
        pairs.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    pub(crate) fn http_size(event: &contract::HttpEvent) -> usize {
        let body = match &event.body {
            contract::HttpBody::Raw(raw) => raw.len(),
            contract::HttpBody::Form(fields) => {
                pairs_bytes(fields) + (2 * fields.0.len()).saturating_sub(1)
            }
        };
        event.path.len() + pairs_bytes(&event.headers) + body
    }

    pub(crate) fn http(event: contract::HttpEvent, size: usize) -> Answer<Envelope<HttpEvent>> {
        let path = std::str::from_utf8(event.path.as_slice()).map_err(|_| bad("path"))?;
        let body = match event.body {
            contract::HttpBody::Raw(raw) => Body::Raw(chunk(raw).ok_or_else(|| bad("body"))?),
            contract::HttpBody::Form(fields) => {
                let mut encoded = Vec::with_capacity(fields.0.len());
                for (name, value) in fields.0 {
                    encoded.push((
                        chunk(name).ok_or_else(|| bad("body"))?,
                        chunk(value).ok_or_else(|| bad("body"))?,
                    ));
                }
                Body::Form(encoded)
            }
        };
        let headers: SmallVec<[(&[u8], &[u8]); 4]> = event
            .headers
            .0
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        let http = HttpEvent::with_body(path, &headers, body).map_err(|_| bad("headers"))?;
        Ok(Envelope::new(http, event.tag.as_slice(), size))
    }

    pub(crate) fn rabbit_presence_size(event: &contract::RabbitPresence) -> usize {
        event.user_jid.len() + event.bare_jid.len()
    }

    pub(crate) fn rabbit_presence(
        event: contract::RabbitPresence,
        size: usize,
    ) -> Envelope<RabbitEvent> {
        let presence = RabbitEvent::Presence {
            user_jid: utf8(event.user_jid),
            bare_jid: utf8(event.bare_jid),
            present: event.present,
        };
        Envelope::new(presence, event.bare_jid.as_slice(), size)
    }

    pub(crate) fn rabbit_chat_size(event: &contract::RabbitChat) -> usize {
        event.from_jid.len() + event.to_jid.len() + event.message.len() + event.routing_key.len()
    }

    pub(crate) fn rabbit_chat(event: contract::RabbitChat, size: usize) -> Envelope<RabbitEvent> {
        let chat = RabbitEvent::Chat {
            kind: match event.kind {
                contract::ChatKind::Chat => rabbit::ChatKind::Chat,
                contract::ChatKind::Groupchat => rabbit::ChatKind::Groupchat,
            },
            direction: match event.direction {
                contract::Direction::In => rabbit::Direction::In,
                contract::Direction::Out => rabbit::Direction::Out,
            },
            from_jid: utf8(event.from_jid),
            to_jid: utf8(event.to_jid),
            message: utf8(event.message),
            routing_bare_jid: utf8(event.routing_key),
        };
        Envelope::new(chat, event.from_jid.as_slice(), size)
    }

    fn attributes(attributes: Attributes) -> Vec<(String, AttributeValue)> {
        let value = |kind, value: Binary| match kind {
            AttributeKind::String => AttributeValue::String(utf8(value)),
            AttributeKind::Number => AttributeValue::Number(utf8(value)),
            AttributeKind::Binary => AttributeValue::Binary(value.as_slice().to_vec()),
        };
        attributes
            .0
            .into_iter()
            .map(|(name, kind, v)| (utf8(name), value(kind, v)))
            .collect()
    }

    pub(crate) fn sns_presence_size(event: &contract::SnsPresence) -> usize {
        event.topic_arn.len() + event.user_id.len()
    }

    pub(crate) fn sns_presence(event: contract::SnsPresence, size: usize) -> Envelope<SnsEvent> {
        let sns = SnsEvent {
            topic_arn: utf8(event.topic_arn),
            notification: Notification::Presence {
                user_id: utf8(event.user_id),
                present: event.present,
            },
            attributes: attributes(event.attributes),
        };
        Envelope::new(sns, event.user_id.as_slice(), size)
    }

    pub(crate) fn sns_message_size(event: &contract::SnsMessage) -> usize {
        event.topic_arn.len()
            + event.from_user_id.len()
            + event.to_user_id.len()
            + event.message.len()
    }

    pub(crate) fn sns_message(event: contract::SnsMessage, size: usize) -> Envelope<SnsEvent> {
        let sns = SnsEvent {
            topic_arn: utf8(event.topic_arn),
            notification: Notification::Message {
                from_user_id: utf8(event.from_user_id),
                to_user_id: utf8(event.to_user_id),
                message: utf8(event.message),
            },
            attributes: attributes(event.attributes),
        };
        Envelope::new(sns, event.from_user_id.as_slice(), size)
    }
}
