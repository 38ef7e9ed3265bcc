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
//!
//! Here: the backend (start, deliver, close) and the reconnecting. `config`: the
//! options and the checks of a start; `message`: exchange, routing key and JSON of an
//! event; `link`: connecting, declaring, telling a loss once, the reconnect backoff;
//! `confirms`: confirms the broker still owes.

mod config;
mod confirms;
mod link;
mod message;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::BasicProperties;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::backend::{Attempt, AttemptOutcome, Backend, Verdict};
use crate::connection::StatusSnapshot;
use crate::reason::Reason;
use crate::stats::ConnectionCounters;

pub use config::{
    ExchangeConfig, RabbitConfig, RabbitError, RabbitTls, Topics, DEFAULT_MAX_MESSAGE_BYTES,
    MAX_SHORT_STRING_BYTES,
};
pub use message::{chat_json, outgoing, presence_json, ChatKind, Direction, Outgoing, RabbitEvent};

use config::check_names;
use confirms::PendingConfirm;
use link::{open_link, reason, Link, Reconnect, Target};
use message::PERSISTENT;

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
            return Attempt::rejected(Reason::BackendClosed);
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
                    return Attempt::no_response(Reason::Connection(why));
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
                    verdict: Verdict::Retry(Reason::Nacked),
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
                    Attempt::no_response(Reason::Connection(why))
                }
            }
        };
        let Ok(finished) = tokio::time::timeout(config.confirm_timeout, attempt).await else {
            let reason = match written {
                true => Reason::ConfirmTimeout,
                false => Reason::PublishTimeout,
            };
            return Attempt {
                verdict: Verdict::Retry(reason),
                outcome: AttemptOutcome::TimedOut,
                wire_bytes: Some(payload_bytes),
            };
        };
        finished
    }

    fn connections(&self) -> Option<Arc<ConnectionCounters>> {
        Some(self.connector.connections.clone())
    }

    async fn shutdown(&self) {
        self.close().await;
    }
}
