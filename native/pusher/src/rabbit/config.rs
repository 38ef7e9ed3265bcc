//! The backend's configuration as the module gives it, and the checks a start makes
//! on it before connecting.

use std::time::Duration;

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

/// Why a start failed; the text names the exchange (if any) and the broker's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RabbitError(pub String);

/// Names that could never go on the wire (AMQP short strings) fail the start: an
/// exchange name over 255 bytes, or a topic too long for any routing key
/// `<bare jid>.<topic>` (a bare JID has at least one byte).
pub(super) fn check_names(config: &RabbitConfig) -> Result<(), RabbitError> {
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

#[cfg(test)]
pub(super) mod fixtures {
    //! A configuration for the backend's unit tests: the module's defaults, local broker.
    use super::*;

    pub(in crate::rabbit) fn exchange(name: &str) -> ExchangeConfig {
        ExchangeConfig {
            name: name.into(),
            kind: "topic".into(),
            durable: false,
            persistent: false,
        }
    }

    pub(in crate::rabbit) fn config() -> RabbitConfig {
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
}

#[cfg(test)]
mod tests {
    use super::fixtures::config;
    use super::*;

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
}
