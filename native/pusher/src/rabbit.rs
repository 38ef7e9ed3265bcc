//! RabbitMQ backend: publishes with lapin on one connection and channel, with
//! pipelined publisher confirms (each worker task awaits its own confirm, so the
//! instance's concurrency is the confirm window), reconnecting with backoff and
//! re-declaring the exchanges when the connection or channel is lost.
//!
//! Start makes one connect attempt and fails only when the broker answered and
//! refused the configuration (credentials, virtual host, an exchange declaration). An
//! unreachable or slow broker does not fail it: the backend starts disconnected and a
//! task of its own reconnects (the same path as after a loss, declaring the exchanges
//! on every connect), reporting each change to [`crate::connection::ConnectionStatus`]
//! for logs and `stats`.
//!
//! While the broker is unreachable, `deliver` waits for the reconnect instead of
//! failing: the workers stop taking events, and new events wait in the instance's
//! bounded queue (where overflow is counted) rather than burning their retry budget.
//! An attempt in flight when the connection drops fails (and is retried by the
//! instance): the broker may or may not have taken it, so a loss can duplicate an
//! event but, with confirms on, never drop one.
//!
//! A message the broker can never take is not sent at all: a routing key over AMQP's
//! 255 bytes (the broker answers with FRAME_ERROR and closes the connection) or a
//! body over `max_message_bytes` (the broker closes the channel). Either would fail
//! every publish in flight with it, and, retried, do it again; checked before
//! publishing, the event fails alone with a reason that says why.
//!
//! Messages to an exchange with `persistent` (by default: a `durable` one) are
//! published with delivery mode 2, so that a durable queue keeps them across a broker
//! restart; with confirms, the broker confirms them once they are on disk.
//!
//! Connection counters: `opened` per link set up (connection, channel, confirm mode,
//! exchanges), `failed` per attempt that could not, `closed` once per link lost (as
//! lapin reports it, or as a delivery finds it) or closed by `close`.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::Poll;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::backend::{Attempt, AttemptOutcome, Backend, Verdict};
use crate::connection::StatusSnapshot;
use crate::stats::ConnectionCounters;

/// AMQP 0-9-1 short strings (exchange names, routing keys) hold at most this many
/// bytes.
pub const MAX_SHORT_STRING_BYTES: usize = 255;

/// RabbitMQ 3.x's default `max_message_size` (128 MiB); 4.x lowered it to 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 134_217_728;

/// One exchange as configured (`[modules.mod_event_pusher.rabbit.*_exchange]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeConfig {
    pub name: String,
    /// "topic", "direct", "fanout" or "headers"
    pub kind: String,
    pub durable: bool,
    /// Messages published with delivery mode 2 (persistent); the module's default is
    /// the exchange's `durable`.
    pub persistent: bool,
}

/// Routing-key suffixes of a message exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub sent: String,
    pub recv: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RabbitTls {
    /// Extra trusted roots (PEM); the system's are used too.
    pub cacertfile: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub virtual_host: String,
    /// amqps when set.
    pub tls: Option<RabbitTls>,
    pub presence_exchange: ExchangeConfig,
    pub chat_exchange: ExchangeConfig,
    pub chat_topics: Topics,
    pub groupchat_exchange: ExchangeConfig,
    pub groupchat_topics: Topics,
    pub confirms: bool,
    pub confirm_timeout: Duration,
    pub connect_timeout: Duration,
    pub reconnect_base_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// The broker's `max_message_size`: a larger body is never sent (the broker would
    /// close the channel, failing every publish in flight on it).
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatKind {
    Chat,
    Groupchat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by a local user: routing key `<sender bare jid>.<sent topic>`.
    In,
    /// Delivered to a local user: routing key `<recipient bare jid>.<recv topic>`.
    Out,
}

/// What the Erlang side hands over; JIDs are already lowercased. The JSON payload and
/// the routing key are built at delivery time (serde_json), off the routing path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RabbitEvent {
    /// `{"present": present, "user_id": user_jid}` to the presence exchange, routing
    /// key `bare_jid`.
    Presence {
        user_jid: String,
        bare_jid: String,
        present: bool,
    },
    /// `{"from_user_id": from_jid, "message": message, "to_user_id": to_jid}` to the
    /// chat or groupchat exchange; routing key `<routing_bare_jid>.<topic>`.
    Chat {
        kind: ChatKind,
        direction: Direction,
        from_jid: String,
        to_jid: String,
        message: String,
        routing_bare_jid: String,
    },
}

impl RabbitEvent {
    /// Bytes held, for the queue's byte cap.
    pub fn size(&self) -> usize {
        match self {
            RabbitEvent::Presence {
                user_jid, bare_jid, ..
            } => user_jid.len() + bare_jid.len() + 1,
            RabbitEvent::Chat {
                from_jid,
                to_jid,
                message,
                routing_bare_jid,
                ..
            } => from_jid.len() + to_jid.len() + message.len() + routing_bare_jid.len() + 2,
        }
    }
}

/// Why a start failed; the text names the exchange (if any) and the broker's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RabbitError(pub String);

/// One AMQP message, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: String,
    /// JSON, UTF-8.
    pub payload: Vec<u8>,
    /// Delivery mode 2.
    pub persistent: bool,
}

impl Outgoing<'_> {
    /// Why the broker could never take this message, if so: the reason a failed event
    /// is reported with, its first word a token (`routing_key_too_long`,
    /// `message_too_large`) and the rest the sizes.
    pub fn unpublishable(&self, max_message_bytes: usize) -> Option<String> {
        let key_bytes = self.routing_key.len();
        if key_bytes > MAX_SHORT_STRING_BYTES {
            return Some(format!(
                "routing_key_too_long: the routing key is {key_bytes} bytes, AMQP allows \
                 {MAX_SHORT_STRING_BYTES} (a bare JID that long cannot be a routing key)"
            ));
        }
        let body_bytes = self.payload.len();
        if body_bytes > max_message_bytes {
            return Some(format!(
                "message_too_large: the message is {body_bytes} bytes, max_message_bytes \
                 (the broker's max_message_size) is {max_message_bytes}"
            ));
        }
        None
    }
}

/// Where an event goes and what it says, as MongooseIM's mod_event_pusher_rabbit
/// publishes it.
pub fn outgoing<'a>(config: &'a RabbitConfig, event: &RabbitEvent) -> Outgoing<'a> {
    match event {
        RabbitEvent::Presence {
            user_jid,
            bare_jid,
            present,
        } => Outgoing {
            exchange: &config.presence_exchange.name,
            routing_key: bare_jid.clone(),
            payload: presence_json(user_jid, *present),
            persistent: config.presence_exchange.persistent,
        },
        RabbitEvent::Chat {
            kind,
            direction,
            from_jid,
            to_jid,
            message,
            routing_bare_jid,
        } => {
            let (exchange, topics) = match kind {
                ChatKind::Chat => (&config.chat_exchange, &config.chat_topics),
                ChatKind::Groupchat => (&config.groupchat_exchange, &config.groupchat_topics),
            };
            let topic = match direction {
                Direction::In => &topics.sent,
                Direction::Out => &topics.recv,
            };
            Outgoing {
                exchange: &exchange.name,
                routing_key: format!("{routing_bare_jid}.{topic}"),
                payload: chat_json(from_jid, message, to_jid),
                persistent: exchange.persistent,
            }
        }
    }
}

// The payloads are the JSON objects MongooseIM 6.4 publishes (it jiffy-encodes an
// Erlang map). Their keys are written in Erlang term order (sorted): jiffy writes a
// map's keys in the VM's internal map order, which on OTP 26 and later (6.4 needs 26)
// follows the order the atoms were created in, so 6.4's own key order is not fixed.
// Strings are escaped byte for byte as jiffy escapes them.

/// `{"present":true|false,"user_id":"<user_jid>"}`
pub fn presence_json(user_jid: &str, present: bool) -> Vec<u8> {
    let mut json = Vec::with_capacity(user_jid.len() + 40);
    json.extend_from_slice(if present {
        b"{\"present\":true,\"user_id\":"
    } else {
        b"{\"present\":false,\"user_id\":"
    });
    push_json_string(&mut json, user_jid);
    json.push(b'}');
    json
}

/// `{"from_user_id":"<from>","message":"<message>","to_user_id":"<to>"}`
pub fn chat_json(from_jid: &str, message: &str, to_jid: &str) -> Vec<u8> {
    let mut json = Vec::with_capacity(to_jid.len() + message.len() + from_jid.len() + 64);
    json.extend_from_slice(b"{\"from_user_id\":");
    push_json_string(&mut json, from_jid);
    json.extend_from_slice(b",\"message\":");
    push_json_string(&mut json, message);
    json.extend_from_slice(b",\"to_user_id\":");
    push_json_string(&mut json, to_jid);
    json.push(b'}');
    json
}

/// Appends `text` as a JSON string, escaped as jiffy (MongooseIM's encoder) escapes
/// it: quote, backslash and the control characters below 0x20 (`\b \f \n \r \t` by
/// name, the others as `\u00XX` in upper case); everything else, `/` and DEL included,
/// as UTF-8.
fn push_json_string(json: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    json.reserve(text.len() + 2);
    json.push(b'"');
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let named: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        json.extend_from_slice(&bytes[plain_from..at]);
        plain_from = at + 1;
        if named.is_empty() {
            json.extend_from_slice(b"\\u00");
            json.push(HEX[usize::from(byte >> 4)]);
            json.push(HEX[usize::from(byte & 0x0f)]);
        } else {
            json.extend_from_slice(named);
        }
    }
    json.extend_from_slice(&bytes[plain_from..]);
    json.push(b'"');
}

/// The broker's address as error messages show it.
fn broker(config: &RabbitConfig) -> String {
    if config.host.contains(':') {
        format!("[{}]:{}", config.host, config.port)
    } else {
        format!("{}:{}", config.host, config.port)
    }
}

/// Everything needed to (re)open a connection, prepared once at start.
struct Target {
    uri: AMQPUri,
    /// PEM of `tls.cacertfile`, read at start so that a missing file fails the start.
    extra_roots: Option<String>,
}

impl Target {
    fn new(config: &RabbitConfig) -> Result<Self, RabbitError> {
        if config.tls.is_some() {
            ensure_crypto_provider();
        }
        let extra_roots =
            match config.tls.as_ref().and_then(|tls| tls.cacertfile.as_ref()) {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                    RabbitError(format!("cannot read tls.cacertfile {path:?}: {e}"))
                })?),
                None => None,
            };
        // Built as a structure rather than parsed from an amqp:// string: user names,
        // passwords and virtual hosts need no percent-encoding this way, whatever
        // characters they hold.
        let uri = AMQPUri {
            scheme: if config.tls.is_some() {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: config.username.clone(),
                    password: config.password.clone(),
                },
                // The TCP connect joins host and port with ':', so IPv6 needs brackets.
                host: if config.host.contains(':') && !config.host.starts_with('[') {
                    format!("[{}]", config.host)
                } else {
                    config.host.clone()
                },
                port: config.port,
            },
            vhost: config.virtual_host.clone(),
            query: AMQPQueryString {
                // Bounds lapin's blocking TCP connect too, not only our wait for it.
                connection_timeout: u64::try_from(config.connect_timeout.as_millis()).ok(),
                ..AMQPQueryString::default()
            },
        };
        Ok(Target { uri, extra_roots })
    }

    fn tls(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: None,
            cert_chain: self.extra_roots.clone(),
        }
    }
}

/// lapin's TLS (tcp-stream through rustls-connector) builds its client with
/// `rustls::ClientConfig::builder()`, which takes the process-wide crypto provider and
/// panics when none was installed and the build enables more than one (ring here, and
/// aws-lc-rs for the SNS client): the connect attempt would die and only time out.
/// ring is installed unless the application installed one already (the same choice
/// as the http backend's, see `http::crypto_provider`).
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one meanwhile: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The broker's own words when it gave a reason, lapin's otherwise.
fn reason(error: &lapin::Error) -> String {
    match error {
        lapin::Error::ProtocolError(amqp) => amqp.get_message().as_str().to_string(),
        other => other.to_string(),
    }
}

const ACCESS_REFUSED: u16 = 403;
const NOT_FOUND: u16 = 404;
const PRECONDITION_FAILED: u16 = 406;
const COMMAND_INVALID: u16 = 503;
const NOT_ALLOWED: u16 = 530;
const NOT_IMPLEMENTED: u16 = 540;

/// Why a connect attempt (connection, channel, confirm mode, exchanges) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkError {
    message: String,
    /// The broker answered and refused what the configuration asks for (credentials,
    /// virtual host, an exchange declaration): trying again cannot help. Otherwise it
    /// could not be reached (refused or timed out TCP, name resolution, TLS, a broker
    /// going down), and trying again may.
    refused: bool,
}

impl LinkError {
    fn new(message: String, error: &lapin::Error) -> Self {
        LinkError {
            message,
            refused: refuses_configuration(error),
        }
    }

    fn unreachable(message: String) -> Self {
        LinkError {
            message,
            refused: false,
        }
    }
}

/// The broker's answers that mean "not with this configuration": wrong credentials
/// or permissions, no such virtual host, an exchange that exists with other
/// properties, an exchange type the broker does not know. A broker shutting down
/// (CONNECTION_FORCED) or failing internally is not among them.
fn refuses_configuration(error: &lapin::Error) -> bool {
    match error {
        lapin::Error::ProtocolError(amqp) => matches!(
            amqp.get_id(),
            ACCESS_REFUSED
                | NOT_FOUND
                | PRECONDITION_FAILED
                | COMMAND_INVALID
                | NOT_ALLOWED
                | NOT_IMPLEMENTED
        ),
        _ => false,
    }
}

fn connect_error(config: &RabbitConfig, error: &lapin::Error) -> LinkError {
    let broker = broker(config);
    let message = match error {
        lapin::Error::ProtocolError(amqp) if amqp.get_id() == ACCESS_REFUSED => format!(
            "access refused for user {:?} by {broker}: {}",
            config.username,
            reason(error)
        ),
        lapin::Error::ProtocolError(amqp) if amqp.get_id() == NOT_ALLOWED => format!(
            "cannot open virtual host {:?} on {broker}: {}",
            config.virtual_host,
            reason(error)
        ),
        lapin::Error::IOError(io) => format!("cannot connect to {broker}: {io}"),
        other => format!("cannot connect to {broker}: {other}"),
    };
    LinkError::new(message, error)
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "topic" => ExchangeKind::Topic,
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        // Plugins add types (x-delayed-message...): let the broker judge.
        other => ExchangeKind::Custom(other.to_string()),
    }
}

async fn declare(channel: &Channel, exchange: &ExchangeConfig) -> Result<(), LinkError> {
    let options = ExchangeDeclareOptions {
        durable: exchange.durable,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            &exchange.name,
            exchange_kind(&exchange.kind),
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|error| {
            LinkError::new(
                format!(
                    "cannot declare exchange {:?} (type {}): {}",
                    exchange.name,
                    exchange.kind,
                    reason(&error)
                ),
                &error,
            )
        })
}

/// Tells, once per link, that it is down: counts it in `connections.closed`, records
/// the loss with its reason (logs, stats) and wakes the task that reconnects. Shared
/// by the link and lapin's error callbacks, which must not hold the link itself.
struct LossSignal {
    signalled: AtomicBool,
    connections: Arc<ConnectionCounters>,
    link_down: Arc<Notify>,
}

impl LossSignal {
    fn signal(&self, reason: &str) {
        if !self.signalled.swap(true, SeqCst) {
            self.connections.closed.fetch_add(1, Relaxed);
            self.connections.status.lost(reason);
            self.link_down.notify_one();
        }
    }
}

/// A connection and the one channel everything is published on.
struct Link {
    connection: Connection,
    channel: Channel,
    /// Set when a publish or a confirm on this link failed, so that it is replaced
    /// even if lapin has not noticed the loss yet.
    lost: AtomicBool,
    /// lapin takes a publish's delivery tag and queues its frames in two steps; the
    /// broker numbers messages in the order their frames arrive. Publishes from
    /// several threads must take both steps together, or a confirm would resolve
    /// another event's publish (and a nack would retry the wrong event).
    publish_order: Mutex<()>,
    /// Signalled by lapin's error callbacks as the loss happens (so an idle
    /// connection's loss shows at once), by a delivery that finds the link dead, or
    /// when the link is replaced or closed: whichever comes first.
    loss: Arc<LossSignal>,
}

impl Link {
    fn is_live(&self) -> bool {
        !self.lost.load(Relaxed)
            && self.channel.status().connected()
            && self.connection.status().connected()
    }

    /// A publish or confirm on this link failed: replace it.
    fn mark_lost(&self, reason: &str) {
        self.lost.store(true, Relaxed);
        self.loss.signal(reason);
    }

    /// For a link found dead that nobody reported: what lapin's status says.
    fn signal_loss_if_unreported(&self) {
        self.loss.signal(if self.connection.status().connected() {
            "channel closed"
        } else {
            "connection closed"
        });
    }

    /// Runs the publish's first poll (delivery tag + frames queued, which lapin does
    /// without yielding) under `publish_order`, then waits for the frames to be
    /// written without holding anything.
    async fn publish_in_order(
        &self,
        publish: impl Future<Output = lapin::Result<PublisherConfirm>>,
    ) -> lapin::Result<PublisherConfirm> {
        let mut publish = pin!(publish);
        let first = poll_fn(|cx| {
            let _order = self
                .publish_order
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Poll::Ready(publish.as_mut().poll(cx))
        })
        .await;
        match first {
            Poll::Ready(result) => result,
            Poll::Pending => publish.await,
        }
    }
}

/// One connect attempt: connection, channel, confirm mode, the three exchanges, all
/// within connect_timeout.
async fn open_link(
    target: &Target,
    config: &RabbitConfig,
    connections: &Arc<ConnectionCounters>,
    link_down: &Arc<Notify>,
) -> Result<Link, LinkError> {
    let setup = async {
        let properties =
            ConnectionProperties::default().with_connection_name("mongoose_event_pusher".into());
        let connection =
            Connection::connect_uri_with_config(target.uri.clone(), properties, target.tls())
                .await
                .map_err(|error| connect_error(config, &error))?;
        let channel = connection.create_channel().await.map_err(|error| {
            LinkError::new(
                format!(
                    "cannot open a channel on {}: {}",
                    broker(config),
                    reason(&error)
                ),
                &error,
            )
        })?;
        if config.confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|error| {
                    LinkError::new(
                        format!(
                            "cannot enable publisher confirms on {}: {}",
                            broker(config),
                            reason(&error)
                        ),
                        &error,
                    )
                })?;
        }
        for exchange in [
            &config.presence_exchange,
            &config.chat_exchange,
            &config.groupchat_exchange,
        ] {
            declare(&channel, exchange).await?;
        }
        // Registered only now: a connection that fails during setup was never
        // counted opened, so its loss must not count as closed either.
        let loss = Arc::new(LossSignal {
            signalled: AtomicBool::new(false),
            connections: connections.clone(),
            link_down: link_down.clone(),
        });
        connection.on_error({
            let loss = loss.clone();
            move |error| loss.signal(&format!("connection lost: {}", reason(&error)))
        });
        channel.on_error({
            let loss = loss.clone();
            move |error| loss.signal(&format!("channel closed: {}", reason(&error)))
        });
        Ok(Link {
            connection,
            channel,
            lost: AtomicBool::new(false),
            publish_order: Mutex::new(()),
            loss,
        })
    };
    match tokio::time::timeout(config.connect_timeout, setup).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::unreachable(format!(
            "cannot connect to {}: no answer within {:?}",
            broker(config),
            config.connect_timeout
        ))),
    }
}

/// Consecutive failed reconnect attempts; guarded by the reconnect lock, so the
/// backoff carries on where it was if the reconnecting task is cancelled.
struct Reconnect {
    failures: u32,
}

impl Reconnect {
    /// base, 2 x base, 4 x base... capped: the pause before the next attempt. A pause
    /// comes before the first attempt too, so that a broker that accepts and then
    /// drops connections is not hammered.
    fn delay(&self, config: &RabbitConfig) -> Duration {
        config
            .reconnect_base_delay
            .saturating_mul(1u32 << self.failures.min(20))
            .min(config.reconnect_max_delay.max(config.reconnect_base_delay))
    }
}

/// A confirm still owed by the broker. lapin keeps the confirms it sees dropped
/// unresolved in a list per channel until someone calls wait_for_confirms (we never
/// do), so one given up on (timeout, cancelled delivery) is awaited by a small task
/// instead; the task ends when the broker answers or the channel dies.
struct PendingConfirm(Option<PublisherConfirm>);

impl PendingConfirm {
    async fn wait(mut self) -> lapin::Result<Confirmation> {
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

/// AMQP's delivery mode of a persistent message.
const PERSISTENT: u8 = 2;

/// Names that could never go on the wire (AMQP short strings) fail the start: an
/// exchange name over 255 bytes, or a topic too long for any routing key
/// `<bare jid>.<topic>` (a bare JID has at least one byte).
fn check_names(config: &RabbitConfig) -> Result<(), RabbitError> {
    for exchange in [
        &config.presence_exchange,
        &config.chat_exchange,
        &config.groupchat_exchange,
    ] {
        if exchange.name.len() > MAX_SHORT_STRING_BYTES {
            return Err(RabbitError(format!(
                "exchange name {:?} is {} bytes; AMQP allows {MAX_SHORT_STRING_BYTES}",
                exchange.name,
                exchange.name.len()
            )));
        }
    }
    for (exchange, topics) in [
        (&config.chat_exchange, &config.chat_topics),
        (&config.groupchat_exchange, &config.groupchat_topics),
    ] {
        for topic in [&topics.sent, &topics.recv] {
            if topic.len() + 2 > MAX_SHORT_STRING_BYTES {
                return Err(RabbitError(format!(
                    "topic {topic:?} of exchange {:?} is {} bytes: no routing key \
                     <bare jid>.<topic> would fit AMQP's {MAX_SHORT_STRING_BYTES} bytes",
                    exchange.name,
                    topic.len()
                )));
            }
        }
    }
    Ok(())
}

/// How often the reconnecting task looks at a link nobody reported lost.
const LINK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What the backend and its reconnecting task share.
struct Connector {
    config: RabbitConfig,
    connections: Arc<ConnectionCounters>,
    target: Target,
    /// The link in use; replaced only under `reconnect`.
    link: RwLock<Option<Arc<Link>>>,
    /// Held by the one task that reconnects; the others wait on it.
    reconnect: tokio::sync::Mutex<Reconnect>,
    /// Woken when a link is lost.
    link_down: Arc<Notify>,
    /// Set by close(): no reconnecting after it.
    closed: AtomicBool,
}

pub struct RabbitBackend {
    connector: Arc<Connector>,
    /// content type JSON, delivery mode 1 (transient)
    transient: BasicProperties,
    /// the same with delivery mode 2
    persistent: BasicProperties,
    /// The task that keeps the connection up; ended by close() or drop.
    keeper: AbortHandle,
}

impl Drop for RabbitBackend {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Reconnects as soon as the link is lost, not only when an event needs it: the
/// exchanges exist, and `stats` and the logs say how things are, before the next
/// event comes.
async fn keep_connected(connector: Arc<Connector>) {
    while !connector.closed.load(SeqCst) {
        if connector.current_live_link().is_none() {
            if connector.relink().await.is_none() {
                return;
            }
            continue;
        }
        // A loss signalled before this wait left a permit: no wakeup is missed.
        let _ = tokio::time::timeout(LINK_CHECK_INTERVAL, connector.link_down.notified()).await;
    }
}

impl RabbitBackend {
    /// Makes one connect attempt (bounded by connect_timeout), then starts the task
    /// that keeps the connection up. Fails only for what can never work: an
    /// unreadable tls.cacertfile, or a broker that answered and refused the
    /// credentials, the virtual host or an exchange declaration (the reason names
    /// it). A broker that cannot be reached is no reason to fail: the backend starts
    /// disconnected, reconnects with backoff (declaring the exchanges once connected)
    /// and deliveries wait for it meanwhile.
    pub async fn start(config: RabbitConfig) -> Result<Self, RabbitError> {
        check_names(&config)?;
        let connections = Arc::new(ConnectionCounters::default());
        let target = Target::new(&config)?;
        let link_down = Arc::new(Notify::new());
        let (link, failures) = match open_link(&target, &config, &connections, &link_down).await {
            Ok(link) => {
                connections.opened.fetch_add(1, Relaxed);
                connections.status.connected();
                (Some(Arc::new(link)), 0)
            }
            Err(error) => {
                connections.failed.fetch_add(1, Relaxed);
                if error.refused {
                    return Err(RabbitError(error.message));
                }
                connections.status.connect_failed(error.message);
                (None, 1)
            }
        };
        let connector = Arc::new(Connector {
            config,
            connections,
            target,
            link: RwLock::new(link),
            reconnect: tokio::sync::Mutex::new(Reconnect { failures }),
            link_down,
            closed: AtomicBool::new(false),
        });
        let keeper = tokio::spawn(keep_connected(connector.clone())).abort_handle();
        let transient = BasicProperties::default().with_content_type("application/json".into());
        Ok(RabbitBackend {
            connector,
            persistent: transient.clone().with_delivery_mode(PERSISTENT),
            transient,
            keeper,
        })
    }

    pub fn config(&self) -> &RabbitConfig {
        &self.connector.config
    }

    /// The connection's state, last error and current outage, for `stats`.
    pub fn connection_status(&self) -> StatusSnapshot {
        self.connector.connections.status.snapshot()
    }

    /// True when the current connection and channel are up (as far as lapin knows).
    pub fn is_connected(&self) -> bool {
        self.connector.current_live_link().is_some()
    }

    /// Closes the connection for good (module stop), counting it in
    /// `connections.closed` as MongooseIM's rabbit worker reports its connection
    /// closing when it terminates; waits at most connect_timeout for the broker's
    /// close-ok. Deliveries after this fail without retry. Meant for after the
    /// instance has drained.
    pub async fn close(&self) {
        let connector = &*self.connector;
        connector.closed.store(true, SeqCst);
        connector.connections.status.closed();
        self.keeper.abort();
        let link = connector
            .link
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(link) = link {
            if link.is_live() {
                let closing = link.connection.close(200, "mongoose_event_pusher stopping");
                let _ = tokio::time::timeout(connector.config.connect_timeout, closing).await;
            }
            link.loss.signal("closed");
        }
    }
}

impl Connector {
    fn current_live_link(&self) -> Option<Arc<Link>> {
        self.link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|link| link.is_live())
            .cloned()
    }

    /// The current link if it is up; otherwise waits until it has been replaced.
    /// None once the backend is closed.
    async fn live_link(&self) -> Option<Arc<Link>> {
        match self.current_live_link() {
            Some(link) => Some(link),
            None => self.relink().await,
        }
    }

    /// Replaces a dead link, retrying with backoff for as long as it takes (or until
    /// the backend is closed); only the caller holding the lock does the work.
    /// Cancel-safe: dropping this future releases the lock and the next waiter
    /// carries on.
    async fn relink(&self) -> Option<Arc<Link>> {
        let mut reconnect = self.reconnect.lock().await;
        loop {
            if self.closed.load(SeqCst) {
                return None;
            }
            // Whoever held the lock before may have reconnected already.
            if let Some(link) = self.current_live_link() {
                return Some(link);
            }
            let dead = self
                .link
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(dead) = dead {
                dead.signal_loss_if_unreported();
                // Dropping our handle closes what is left of the connection (a
                // channel closed by the broker leaves it open) once the publishes
                // still holding it are done.
                drop(dead);
            }
            tokio::time::sleep(reconnect.delay(&self.config)).await;
            match open_link(
                &self.target,
                &self.config,
                &self.connections,
                &self.link_down,
            )
            .await
            {
                Ok(link) => {
                    let link = Arc::new(link);
                    {
                        let mut current = self.link.write().unwrap_or_else(PoisonError::into_inner);
                        // Checked under the lock that close() takes the link with:
                        // a link opened after a close is dropped (which closes it)
                        // instead of being left open.
                        if self.closed.load(SeqCst) {
                            return None;
                        }
                        *current = Some(link.clone());
                    }
                    self.connections.opened.fetch_add(1, Relaxed);
                    self.connections.status.connected();
                    reconnect.failures = 0;
                    return Some(link);
                }
                Err(error) => {
                    // Refused or unreachable alike: credentials may be fixed and
                    // exchanges deleted while we wait, so keep trying, and say why.
                    self.connections.failed.fetch_add(1, Relaxed);
                    self.connections.status.connect_failed(error.message);
                    reconnect.failures = reconnect.failures.saturating_add(1);
                }
            }
        }
    }
}

impl Backend for RabbitBackend {
    type Event = RabbitEvent;

    async fn deliver(&self, event: &RabbitEvent) -> Attempt {
        let config = &self.connector.config;
        let message = outgoing(config, event);
        // Never sent: the broker would close the connection or channel over it, and
        // every other publish in flight would fail too.
        if let Some(why) = message.unpublishable(config.max_message_bytes) {
            return Attempt::rejected(why);
        }
        let payload_bytes = message.payload.len();
        let Some(link) = self.connector.live_link().await else {
            return Attempt::rejected("backend closed");
        };
        let properties = if message.persistent {
            &self.persistent
        } else {
            &self.transient
        };
        let publish = link.channel.basic_publish(
            message.exchange,
            &message.routing_key,
            BasicPublishOptions::default(),
            &message.payload,
            properties.clone(),
        );
        // One budget (and one timer) for the whole attempt: writing the frames, which
        // waits while the broker blocks publishers, then the confirm.
        let mut written = false;
        let attempt = async {
            let confirm = match link.publish_in_order(publish).await {
                Ok(confirm) => confirm,
                Err(error) => {
                    let why = format!("publish failed: {}", reason(&error));
                    link.mark_lost(&why);
                    return Attempt::no_response(why);
                }
            };
            written = true;
            if !config.confirms {
                // Written to the socket: without confirms that is all the broker promises.
                return Attempt {
                    verdict: Verdict::Delivered,
                    outcome: AttemptOutcome::Published,
                    wire_bytes: Some(payload_bytes),
                };
            }
            match PendingConfirm(Some(confirm)).wait().await {
                Ok(Confirmation::Ack(_)) => Attempt {
                    verdict: Verdict::Delivered,
                    outcome: AttemptOutcome::Confirmed,
                    wire_bytes: Some(payload_bytes),
                },
                Ok(Confirmation::Nack(_)) => Attempt {
                    verdict: Verdict::Retry("nacked".into()),
                    outcome: AttemptOutcome::Nacked,
                    wire_bytes: Some(payload_bytes),
                },
                // Only a channel without confirm mode answers this; ours always has it.
                Ok(Confirmation::NotRequested) => Attempt {
                    verdict: Verdict::Delivered,
                    outcome: AttemptOutcome::Published,
                    wire_bytes: Some(payload_bytes),
                },
                Err(error) => {
                    let why = format!("connection lost: {}", reason(&error));
                    link.mark_lost(&why);
                    Attempt::no_response(why)
                }
            }
        };
        let finished = tokio::time::timeout(config.confirm_timeout, attempt).await;
        finished.unwrap_or_else(|_| Attempt {
            verdict: Verdict::Retry(
                if written {
                    "confirm_timeout"
                } else {
                    "publish_timeout"
                }
                .into(),
            ),
            outcome: AttemptOutcome::TimedOut,
            wire_bytes: Some(payload_bytes),
        })
    }

    fn connections(&self) -> Option<Arc<ConnectionCounters>> {
        Some(self.connector.connections.clone())
    }

    async fn shutdown(&self) {
        self.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(name: &str) -> ExchangeConfig {
        ExchangeConfig {
            name: name.into(),
            kind: "topic".into(),
            durable: false,
            persistent: false,
        }
    }

    fn config() -> RabbitConfig {
        RabbitConfig {
            host: "127.0.0.1".into(),
            port: 5672,
            username: "guest".into(),
            password: "guest".into(),
            virtual_host: "/".into(),
            tls: None,
            presence_exchange: exchange("presence"),
            chat_exchange: exchange("chat_msg"),
            chat_topics: Topics {
                sent: "chat_msg_sent".into(),
                recv: "chat_msg_recv".into(),
            },
            groupchat_exchange: exchange("groupchat_msg"),
            groupchat_topics: Topics {
                sent: "groupchat_msg_sent".into(),
                recv: "groupchat_msg_recv".into(),
            },
            confirms: true,
            confirm_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_base_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("not UTF-8: {e}"))
    }

    fn chat(kind: ChatKind, direction: Direction, message: &str) -> RabbitEvent {
        RabbitEvent::Chat {
            kind,
            direction,
            from_jid: "alice@localhost/res1".into(),
            to_jid: "bob@localhost/res2".into(),
            message: message.into(),
            routing_bare_jid: match direction {
                Direction::In => "alice@localhost".into(),
                Direction::Out => "bob@localhost".into(),
            },
        }
    }

    fn decoded(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON: {e}"))
    }

    /// The one place the exact bytes are asserted (elsewhere, decoded JSON is
    /// compared): MongooseIM 6.4's objects, keys in Erlang term order.
    #[test]
    fn payloads_are_mongooseims_objects_with_sorted_keys() {
        assert_eq!(
            text(presence_json("alice@localhost/res1", true)),
            r#"{"present":true,"user_id":"alice@localhost/res1"}"#
        );
        assert_eq!(
            text(presence_json("alice@localhost/res1", false)),
            r#"{"present":false,"user_id":"alice@localhost/res1"}"#
        );
        assert_eq!(
            text(chat_json(
                "alice@localhost/res1",
                "hi",
                "bob@localhost/res2"
            )),
            r#"{"from_user_id":"alice@localhost/res1","message":"hi","to_user_id":"bob@localhost/res2"}"#
        );
    }

    #[test]
    fn presence_goes_to_the_presence_exchange_keyed_by_bare_jid() {
        let config = config();
        for present in [true, false] {
            let event = RabbitEvent::Presence {
                user_jid: "alice@localhost/res1".into(),
                bare_jid: "alice@localhost".into(),
                present,
            };
            let message = outgoing(&config, &event);
            assert_eq!(message.exchange, "presence");
            assert_eq!(message.routing_key, "alice@localhost");
            assert_eq!(
                decoded(&message.payload),
                serde_json::json!({"user_id": "alice@localhost/res1", "present": present})
            );
        }
    }

    #[test]
    fn chat_and_groupchat_keys_use_the_topic_of_the_direction() {
        let config = config();
        let cases = [
            (
                ChatKind::Chat,
                Direction::In,
                "chat_msg",
                "alice@localhost.chat_msg_sent",
            ),
            (
                ChatKind::Chat,
                Direction::Out,
                "chat_msg",
                "bob@localhost.chat_msg_recv",
            ),
            (
                ChatKind::Groupchat,
                Direction::In,
                "groupchat_msg",
                "alice@localhost.groupchat_msg_sent",
            ),
            (
                ChatKind::Groupchat,
                Direction::Out,
                "groupchat_msg",
                "bob@localhost.groupchat_msg_recv",
            ),
        ];
        for (kind, direction, exchange, key) in cases {
            let message = outgoing(&config, &chat(kind, direction, "hi"));
            assert_eq!(
                (message.exchange, message.routing_key.as_str()),
                (exchange, key)
            );
            assert_eq!(
                decoded(&message.payload),
                serde_json::json!({
                    "to_user_id": "bob@localhost/res2",
                    "message": "hi",
                    "from_user_id": "alice@localhost/res1"
                })
            );
        }
    }

    #[test]
    fn custom_names_and_topics_are_used() {
        let mut config = config();
        config.chat_exchange.name = "custom_chat".into();
        config.chat_topics.sent = "out.going".into();
        let message = outgoing(&config, &chat(ChatKind::Chat, Direction::In, "x"));
        assert_eq!(message.exchange, "custom_chat");
        assert_eq!(message.routing_key, "alice@localhost.out.going");
    }

    /// The bytes jiffy 1.1.1 (OTP 25) and 1.1.2 (OTP 27) write for this string: named
    /// escapes, other control characters as upper-case `\u00XX`, and `/`, DEL and
    /// everything above ASCII as they are.
    #[test]
    fn strings_are_escaped_as_jiffy_escapes_them() {
        let body =
            "Za\"b\\ c\n\t\r\u{8}\u{c}\u{0}\u{1}\u{b}\u{e}\u{1f}\u{7f}/ </script> \u{2028}é😀";
        let jiffy: &[u8] = b"\"Za\\\"b\\\\ c\\n\\t\\r\\b\\f\\u0000\\u0001\\u000B\\u000E\\u001F\x7f/ </script> \xe2\x80\xa8\xc3\xa9\xf0\x9f\x98\x80\"";
        let mut json = Vec::new();
        push_json_string(&mut json, body);
        assert_eq!(json, jiffy, "{}", String::from_utf8_lossy(&json));
        let parsed: serde_json::Value =
            serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, body);
    }

    #[test]
    fn jids_with_quotes_are_escaped_too() {
        let json = presence_json("a\"b@h/r\\", true);
        assert_eq!(decoded(&json)["user_id"], "a\"b@h/r\\");
    }

    #[test]
    fn a_large_body_round_trips() {
        let body = "ąę€😀\"\\\n\u{1}".repeat(8 * 1024);
        let json = chat_json("from@h", &body, "to@h");
        assert_eq!(decoded(&json)["message"], body.as_str());
    }

    #[test]
    fn a_routing_key_over_255_bytes_is_unpublishable() {
        let config = config();
        // "<user>@localhost.chat_msg_sent": 10 + 14 bytes around the user.
        let event = |user: &str| RabbitEvent::Chat {
            kind: ChatKind::Chat,
            direction: Direction::In,
            from_jid: format!("{user}@localhost/r"),
            to_jid: "bob@localhost".into(),
            message: "x".into(),
            routing_bare_jid: format!("{user}@localhost"),
        };
        let fits = outgoing(&config, &event(&"a".repeat(255 - 24)));
        assert_eq!(fits.routing_key.len(), 255);
        assert_eq!(fits.unpublishable(config.max_message_bytes), None);
        let too_long = outgoing(&config, &event(&"a".repeat(256 - 24)));
        let why = too_long
            .unpublishable(config.max_message_bytes)
            .unwrap_or_else(|| panic!("a 256-byte key passed"));
        assert!(
            why.starts_with("routing_key_too_long: the routing key is 256 bytes"),
            "{why}"
        );
        let presence = RabbitEvent::Presence {
            user_jid: format!("{}@h/r", "p".repeat(300)),
            bare_jid: format!("{}@h", "p".repeat(300)),
            present: true,
        };
        assert!(outgoing(&config, &presence)
            .unpublishable(config.max_message_bytes)
            .is_some_and(|why| why.starts_with("routing_key_too_long")));
    }

    #[test]
    fn a_body_over_max_message_bytes_is_unpublishable() {
        let config = config();
        let message = outgoing(&config, &chat(ChatKind::Chat, Direction::In, "12345"));
        let bytes = message.payload.len();
        assert_eq!(message.unpublishable(bytes), None);
        let why = message
            .unpublishable(bytes - 1)
            .unwrap_or_else(|| panic!("a body over the limit passed"));
        assert_eq!(
            why,
            format!(
                "message_too_large: the message is {bytes} bytes, max_message_bytes \
                 (the broker's max_message_size) is {}",
                bytes - 1
            )
        );
    }

    #[test]
    fn persistent_follows_each_exchange() {
        let mut config = config();
        config.chat_exchange.persistent = true;
        assert!(outgoing(&config, &chat(ChatKind::Chat, Direction::In, "x")).persistent);
        assert!(!outgoing(&config, &chat(ChatKind::Groupchat, Direction::In, "x")).persistent);
    }

    #[test]
    fn names_that_cannot_go_on_the_wire_fail_the_start() {
        let mut config = config();
        config.groupchat_exchange.name = "g".repeat(256);
        let Err(RabbitError(why)) = check_names(&config) else {
            panic!("a 256-byte exchange name passed");
        };
        assert!(why.contains("256 bytes"), "{why}");
        let mut config = self::config();
        config.presence_exchange.name = "p".repeat(255);
        config.chat_topics.recv = "t".repeat(253);
        assert_eq!(check_names(&config), Ok(()));
        config.chat_topics.recv = "t".repeat(254);
        let Err(RabbitError(why)) = check_names(&config) else {
            panic!("a 254-byte topic passed");
        };
        assert!(why.contains("chat_msg"), "{why}");
    }

    #[test]
    fn reconnect_delay_doubles_from_base_to_max() {
        let config = config();
        let delays: Vec<u64> = [0, 1, 2, 5, 6, 40]
            .into_iter()
            .map(|failures| Reconnect { failures }.delay(&config).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 3200, 5000, 5000]);
    }

    #[test]
    fn exchange_kinds_map_to_lapin_kinds() {
        assert_eq!(exchange_kind("topic"), ExchangeKind::Topic);
        assert_eq!(exchange_kind("fanout"), ExchangeKind::Fanout);
        assert_eq!(
            exchange_kind("x-delayed-message"),
            ExchangeKind::Custom("x-delayed-message".into())
        );
    }

    #[test]
    fn the_uri_keeps_credentials_and_vhost_verbatim() {
        let mut config = config();
        config.username = "us@er:/%".into();
        config.password = "p@ss/word?#".into();
        config.virtual_host = "/".into();
        config.tls = Some(RabbitTls::default());
        let target = Target::new(&config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(target.uri.authority.userinfo.username, "us@er:/%");
        assert_eq!(target.uri.authority.userinfo.password, "p@ss/word?#");
        assert_eq!(target.uri.vhost, "/");
        assert_eq!(target.uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(target.uri.query.connection_timeout, Some(5000));
    }

    /// An amqps attempt ends with rustls' own error, named, not with a panic in lapin's
    /// TLS setup (two crypto providers in the build, none installed) that only shows
    /// as "no answer". The server answers the ClientHello with a plain AMQP header, as
    /// a broker's non-TLS port does.
    #[test]
    fn an_amqps_attempt_to_a_port_without_tls_fails_with_a_tls_error() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.write_all(b"AMQP\x00\x00\x09\x01");
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
            }
        });
        let mut config = config();
        config.port = port;
        config.tls = Some(RabbitTls::default());
        let target = Target::new(&config).unwrap_or_else(|e| panic!("{e}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let result = runtime.block_on(open_link(
            &target,
            &config,
            &Arc::new(ConnectionCounters::default()),
            &Arc::new(Notify::new()),
        ));
        match result {
            Err(LinkError { message, refused }) => {
                assert!(!refused, "{message}");
                assert!(
                    message.starts_with(&format!("cannot connect to 127.0.0.1:{port}: "))
                        && !message.contains("no answer"),
                    "{message}"
                );
            }
            Ok(_) => panic!("connected"),
        }
    }

    #[test]
    fn a_missing_cacertfile_fails_the_start_with_its_path() {
        let mut config = config();
        config.tls = Some(RabbitTls {
            cacertfile: Some("/nonexistent/ca.pem".into()),
        });
        match Target::new(&config) {
            Err(RabbitError(reason)) => assert!(
                reason.contains("tls.cacertfile") && reason.contains("/nonexistent/ca.pem"),
                "{reason}"
            ),
            Ok(_) => panic!("accepted"),
        }
    }
}
