//! RabbitMQ backend: publishes with lapin on one connection and channel, with
//! pipelined publisher confirms (each worker task awaits its own confirm, so the
//! instance's concurrency is the confirm window), reconnecting with backoff and
//! re-declaring the exchanges when the connection or channel is lost.
//!
//! While the broker is unreachable, `deliver` waits for the reconnect instead of
//! failing: the workers stop taking events, and new events wait in the instance's
//! bounded queue (where overflow is counted) rather than burning their retry budget.
//! An attempt in flight when the connection drops fails (and is retried by the
//! instance): the broker may or may not have taken it, so a loss can duplicate an
//! event but, with confirms on, never drop one.
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

use crate::backend::{Attempt, AttemptOutcome, Backend, Verdict};
use crate::stats::ConnectionCounters;

/// One exchange as configured (`[modules.mod_event_pusher.rabbit.*_exchange]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeConfig {
    pub name: String,
    /// "topic", "direct", "fanout" or "headers"
    pub kind: String,
    pub durable: bool,
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
    /// `{"user_id": user_jid, "present": present}` to the presence exchange, routing
    /// key `bare_jid`.
    Presence {
        user_jid: String,
        bare_jid: String,
        present: bool,
    },
    /// `{"to_user_id": to_jid, "message": message, "from_user_id": from_jid}` to the
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
                payload: chat_json(to_jid, message, from_jid),
            }
        }
    }
}

/// `{"user_id":"<user_jid>","present":true|false}`
pub fn presence_json(user_jid: &str, present: bool) -> Vec<u8> {
    let mut json = Vec::with_capacity(user_jid.len() + 40);
    json.extend_from_slice(b"{\"user_id\":");
    push_json_string(&mut json, user_jid);
    json.extend_from_slice(if present {
        b",\"present\":true}"
    } else {
        b",\"present\":false}"
    });
    json
}

/// `{"to_user_id":"<to>","message":"<message>","from_user_id":"<from>"}`, keys in the
/// order MongooseIM's documentation shows them.
pub fn chat_json(to_jid: &str, message: &str, from_jid: &str) -> Vec<u8> {
    let mut json = Vec::with_capacity(to_jid.len() + message.len() + from_jid.len() + 64);
    json.extend_from_slice(b"{\"to_user_id\":");
    push_json_string(&mut json, to_jid);
    json.extend_from_slice(b",\"message\":");
    push_json_string(&mut json, message);
    json.extend_from_slice(b",\"from_user_id\":");
    push_json_string(&mut json, from_jid);
    json.push(b'}');
    json
}

/// Appends `text` as a JSON string. serde_json escapes what JSON requires (quotes,
/// backslashes, control characters) and keeps everything else as UTF-8; the object
/// around it is written by hand only to keep the key order fixed.
fn push_json_string(json: &mut Vec<u8>, text: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *json, text);
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

/// The broker's own words when it gave a reason, lapin's otherwise.
fn reason(error: &lapin::Error) -> String {
    match error {
        lapin::Error::ProtocolError(amqp) => amqp.get_message().as_str().to_string(),
        other => other.to_string(),
    }
}

const ACCESS_REFUSED: u16 = 403;
const NOT_ALLOWED: u16 = 530;

fn connect_error(config: &RabbitConfig, error: &lapin::Error) -> RabbitError {
    let broker = broker(config);
    RabbitError(match error {
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
    })
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

async fn declare(channel: &Channel, exchange: &ExchangeConfig) -> Result<(), RabbitError> {
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
            RabbitError(format!(
                "cannot declare exchange {:?} (type {}): {}",
                exchange.name,
                exchange.kind,
                reason(&error)
            ))
        })
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
    /// Whether this link's loss is in `connections.closed` already: counted once,
    /// either by lapin's error callback as it happens (so an idle connection's loss
    /// shows in the metrics) or when a delivery finds the link dead.
    loss_counted: Arc<AtomicBool>,
}

impl Link {
    fn count_loss(&self, connections: &ConnectionCounters) {
        count_loss_once(&self.loss_counted, connections);
    }

    fn is_live(&self) -> bool {
        !self.lost.load(Relaxed)
            && self.channel.status().connected()
            && self.connection.status().connected()
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

fn count_loss_once(counted: &AtomicBool, connections: &ConnectionCounters) {
    if !counted.swap(true, Relaxed) {
        connections.closed.fetch_add(1, Relaxed);
    }
}

async fn open_link(
    target: &Target,
    config: &RabbitConfig,
    connections: &Arc<ConnectionCounters>,
) -> Result<Link, RabbitError> {
    let setup = async {
        let properties =
            ConnectionProperties::default().with_connection_name("mongoose_event_pusher".into());
        let connection =
            Connection::connect_uri_with_config(target.uri.clone(), properties, target.tls())
                .await
                .map_err(|error| connect_error(config, &error))?;
        let channel = connection.create_channel().await.map_err(|error| {
            RabbitError(format!(
                "cannot open a channel on {}: {}",
                broker(config),
                reason(&error)
            ))
        })?;
        if config.confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|error| {
                    RabbitError(format!(
                        "cannot enable publisher confirms on {}: {}",
                        broker(config),
                        reason(&error)
                    ))
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
        let loss_counted = Arc::new(AtomicBool::new(false));
        connection.on_error({
            let loss_counted = loss_counted.clone();
            let connections = connections.clone();
            move |_| count_loss_once(&loss_counted, &connections)
        });
        Ok(Link {
            connection,
            channel,
            lost: AtomicBool::new(false),
            publish_order: Mutex::new(()),
            loss_counted,
        })
    };
    match tokio::time::timeout(config.connect_timeout, setup).await {
        Ok(result) => result,
        Err(_) => Err(RabbitError(format!(
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

pub struct RabbitBackend {
    config: RabbitConfig,
    connections: Arc<ConnectionCounters>,
    target: Target,
    /// The link in use; replaced only under `reconnect`.
    link: RwLock<Option<Arc<Link>>>,
    /// Held by the one task that reconnects; the others wait on it.
    reconnect: tokio::sync::Mutex<Reconnect>,
    properties: BasicProperties,
    last_connect_error: Mutex<Option<String>>,
    /// Set by close(): no reconnecting after it.
    closed: AtomicBool,
}

impl RabbitBackend {
    /// Connects and declares the three exchanges. Fails with a reason naming the
    /// exchange when a declaration is refused (access refused, type mismatch...), or
    /// the broker when it cannot be reached within connect_timeout.
    pub async fn connect(config: RabbitConfig) -> Result<Self, RabbitError> {
        let connections = Arc::new(ConnectionCounters::default());
        let target = Target::new(&config)?;
        let link = match open_link(&target, &config, &connections).await {
            Ok(link) => link,
            Err(error) => {
                connections.failed.fetch_add(1, Relaxed);
                return Err(error);
            }
        };
        connections.opened.fetch_add(1, Relaxed);
        Ok(RabbitBackend {
            properties: BasicProperties::default().with_content_type("application/json".into()),
            config,
            connections,
            target,
            link: RwLock::new(Some(Arc::new(link))),
            reconnect: tokio::sync::Mutex::new(Reconnect { failures: 0 }),
            last_connect_error: Mutex::new(None),
            closed: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &RabbitConfig {
        &self.config
    }

    /// Why the latest reconnect attempt failed, if the latest one did (for logs and
    /// status pages: a waiting delivery does not say it).
    pub fn last_connect_error(&self) -> Option<String> {
        self.last_connect_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// True when the current connection and channel are up (as far as lapin knows).
    pub fn is_connected(&self) -> bool {
        self.current_live_link().is_some()
    }

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
                dead.count_loss(&self.connections);
                // Dropping our handle closes what is left of the connection (a
                // channel closed by the broker leaves it open) once the publishes
                // still holding it are done.
                drop(dead);
            }
            tokio::time::sleep(reconnect.delay(&self.config)).await;
            match open_link(&self.target, &self.config, &self.connections).await {
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
                    reconnect.failures = 0;
                    *self
                        .last_connect_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = None;
                    return Some(link);
                }
                Err(RabbitError(error)) => {
                    self.connections.failed.fetch_add(1, Relaxed);
                    reconnect.failures = reconnect.failures.saturating_add(1);
                    *self
                        .last_connect_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(error);
                }
            }
        }
    }

    /// Closes the connection for good (module stop), counting it in
    /// `connections.closed` as MongooseIM's rabbit worker reports its connection
    /// closing when it terminates; waits at most connect_timeout for the broker's
    /// close-ok. Deliveries after this fail without retry. Meant for after the
    /// instance has drained.
    pub async fn close(&self) {
        self.closed.store(true, SeqCst);
        let link = self
            .link
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(link) = link {
            if link.is_live() {
                let closing = link.connection.close(200, "mongoose_event_pusher stopping");
                let _ = tokio::time::timeout(self.config.connect_timeout, closing).await;
            }
            link.count_loss(&self.connections);
        }
    }
}

impl Backend for RabbitBackend {
    type Event = RabbitEvent;

    async fn deliver(&self, event: &RabbitEvent) -> Attempt {
        let message = outgoing(&self.config, event);
        let payload_bytes = message.payload.len();
        let Some(link) = self.live_link().await else {
            return Attempt::rejected("backend closed");
        };
        let publish = link.channel.basic_publish(
            message.exchange,
            &message.routing_key,
            BasicPublishOptions::default(),
            &message.payload,
            self.properties.clone(),
        );
        // One budget (and one timer) for the whole attempt: writing the frames, which
        // waits while the broker blocks publishers, then the confirm.
        let mut written = false;
        let attempt = async {
            let confirm = match link.publish_in_order(publish).await {
                Ok(confirm) => confirm,
                Err(error) => {
                    link.lost.store(true, Relaxed);
                    return Attempt::no_response(format!("publish failed: {}", reason(&error)));
                }
            };
            written = true;
            if !self.config.confirms {
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
                    link.lost.store(true, Relaxed);
                    Attempt::no_response(format!("connection lost: {}", reason(&error)))
                }
            }
        };
        let finished = tokio::time::timeout(self.config.confirm_timeout, attempt).await;
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
        Some(self.connections.clone())
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

    #[test]
    fn presence_goes_to_the_presence_exchange_keyed_by_bare_jid() {
        let config = config();
        for (present, json) in [
            (true, r#"{"user_id":"alice@localhost/res1","present":true}"#),
            (
                false,
                r#"{"user_id":"alice@localhost/res1","present":false}"#,
            ),
        ] {
            let event = RabbitEvent::Presence {
                user_jid: "alice@localhost/res1".into(),
                bare_jid: "alice@localhost".into(),
                present,
            };
            let message = outgoing(&config, &event);
            assert_eq!(message.exchange, "presence");
            assert_eq!(message.routing_key, "alice@localhost");
            assert_eq!(text(message.payload), json);
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
                text(message.payload),
                r#"{"to_user_id":"bob@localhost/res2","message":"hi","from_user_id":"alice@localhost/res1"}"#
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

    #[test]
    fn message_text_is_escaped_as_json_requires_and_unicode_kept() {
        let body = "Zażółć \"gęślą\" \\ jaźń\n\t\u{1}\u{7f} 😀 </script>";
        let json = chat_json("to@h", body, "from@h");
        assert_eq!(
            text(json.clone()),
            "{\"to_user_id\":\"to@h\",\"message\":\"Zażółć \\\"gęślą\\\" \\\\ jaźń\\n\\t\\u0001\u{7f} 😀 </script>\",\"from_user_id\":\"from@h\"}"
        );
        let parsed: serde_json::Value =
            serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed["message"], body);
    }

    #[test]
    fn jids_with_quotes_are_escaped_too() {
        assert_eq!(
            text(presence_json("a\"b@h/r\\", true)),
            r#"{"user_id":"a\"b@h/r\\","present":true}"#
        );
    }

    #[test]
    fn a_large_body_round_trips() {
        let body = "ąę€😀\"\\\n".repeat(8 * 1024);
        let json = chat_json("to@h", &body, "from@h");
        let parsed: serde_json::Value =
            serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed["message"], body.as_str());
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
