//! RabbitMQ backend: publishes with lapin on one connection and channel, with
//! pipelined publisher confirms (each worker task awaits its own confirm, so the
//! instance's concurrency is the confirm window), reconnecting with backoff and
//! re-declaring the exchanges when the connection or channel is lost.
//!
//! SKELETON: types and signatures are final; bodies are being written.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Attempt, Backend};
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

pub struct RabbitBackend {
    config: RabbitConfig,
    connections: Arc<ConnectionCounters>,
}

impl RabbitBackend {
    /// Connects and declares the three exchanges. Fails with a reason naming the
    /// exchange when a declaration is refused (access refused, type mismatch...), or
    /// the broker when it cannot be reached within connect_timeout.
    pub async fn connect(config: RabbitConfig) -> Result<Self, RabbitError> {
        Ok(RabbitBackend {
            config,
            connections: Arc::new(ConnectionCounters::default()),
        })
    }

    pub fn config(&self) -> &RabbitConfig {
        &self.config
    }
}

impl Backend for RabbitBackend {
    type Event = RabbitEvent;

    async fn deliver(&self, _event: &RabbitEvent) -> Attempt {
        Attempt::rejected("not implemented yet")
    }

    fn connections(&self) -> Option<Arc<ConnectionCounters>> {
        Some(self.connections.clone())
    }
}
