//! One link to the broker (a connection and the channel everything is published
//! on): opening it with the exchanges declared, telling once that it is lost, and the
//! backoff between reconnect attempts.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::publisher_confirm::PublisherConfirm;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Notify;

use super::config::{ExchangeConfig, RabbitConfig, RabbitError};
use crate::stats::ConnectionCounters;

/// The broker's address as error messages show it.
pub(super) fn broker(config: &RabbitConfig) -> String {
    if config.host.contains(':') {
        format!("[{}]:{}", config.host, config.port)
    } else {
        format!("{}:{}", config.host, config.port)
    }
}

/// Everything needed to (re)open a connection, prepared once at start.
pub(super) struct Target {
    pub(super) uri: AMQPUri,
    /// PEM of `tls.cacertfile`, read at start so that a missing file fails the start.
    pub(super) extra_roots: Option<String>,
}

impl Target {
    pub(super) fn new(config: &RabbitConfig) -> Result<Self, RabbitError> {
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

    pub(super) fn tls(&self) -> OwnedTLSConfig {
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
pub(super) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one meanwhile: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The broker's own words when it gave a reason, lapin's otherwise.
pub(super) fn reason(error: &lapin::Error) -> String {
    match error {
        lapin::Error::ProtocolError(amqp) => amqp.get_message().as_str().to_string(),
        other => other.to_string(),
    }
}

pub(super) const ACCESS_REFUSED: u16 = 403;
pub(super) const NOT_FOUND: u16 = 404;
pub(super) const PRECONDITION_FAILED: u16 = 406;
pub(super) const COMMAND_INVALID: u16 = 503;
pub(super) const NOT_ALLOWED: u16 = 530;
pub(super) const NOT_IMPLEMENTED: u16 = 540;

/// Why a connect attempt (connection, channel, confirm mode, exchanges) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LinkError {
    pub(super) message: String,
    /// The broker answered and refused what the configuration asks for (credentials,
    /// virtual host, an exchange declaration): trying again cannot help. Otherwise it
    /// could not be reached (refused or timed out TCP, name resolution, TLS, a broker
    /// going down), and trying again may.
    pub(super) refused: bool,
}

impl LinkError {
    pub(super) fn new(message: String, error: &lapin::Error) -> Self {
        LinkError {
            message,
            refused: refuses_configuration(error),
        }
    }

    pub(super) fn unreachable(message: String) -> Self {
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
pub(super) fn refuses_configuration(error: &lapin::Error) -> bool {
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

pub(super) fn connect_error(config: &RabbitConfig, error: &lapin::Error) -> LinkError {
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

pub(super) fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "topic" => ExchangeKind::Topic,
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        // Plugins add types (x-delayed-message...): let the broker judge.
        other => ExchangeKind::Custom(other.to_string()),
    }
}

pub(super) async fn declare(channel: &Channel, exchange: &ExchangeConfig) -> Result<(), LinkError> {
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
pub(super) struct LossSignal {
    pub(super) signalled: AtomicBool,
    pub(super) connections: Arc<ConnectionCounters>,
    pub(super) link_down: Arc<Notify>,
}

impl LossSignal {
    pub(super) fn signal(&self, reason: &str) {
        if !self.signalled.swap(true, SeqCst) {
            self.connections.closed.fetch_add(1, Relaxed);
            self.connections.status.lost(reason);
            self.link_down.notify_one();
        }
    }
}

/// A connection and the one channel everything is published on.
pub(super) struct Link {
    pub(super) connection: Connection,
    pub(super) channel: Channel,
    /// Set when a publish or a confirm on this link failed, so that it is replaced
    /// even if lapin has not noticed the loss yet.
    pub(super) lost: AtomicBool,
    /// lapin takes a publish's delivery tag and queues its frames in two steps; the
    /// broker numbers messages in the order their frames arrive. Publishes from
    /// several threads must take both steps together, or a confirm would resolve
    /// another event's publish (and a nack would retry the wrong event).
    pub(super) publish_order: Mutex<()>,
    /// Signalled by lapin's error callbacks as the loss happens (so an idle
    /// connection's loss shows at once), by a delivery that finds the link dead, or
    /// when the link is replaced or closed: whichever comes first.
    pub(super) loss: Arc<LossSignal>,
}

impl Link {
    pub(super) fn is_live(&self) -> bool {
        !self.lost.load(Relaxed)
            && self.channel.status().connected()
            && self.connection.status().connected()
    }

    /// A publish or confirm on this link failed: replace it.
    pub(super) fn mark_lost(&self, reason: &str) {
        self.lost.store(true, Relaxed);
        self.loss.signal(reason);
    }

    /// For a link found dead that nobody reported: what lapin's status says.
    pub(super) fn signal_loss_if_unreported(&self) {
        self.loss.signal(if self.connection.status().connected() {
            "channel closed"
        } else {
            "connection closed"
        });
    }

    /// Runs the publish's first poll (delivery tag + frames queued, which lapin does
    /// without yielding) under `publish_order`, then waits for the frames to be
    /// written without holding anything.
    pub(super) async fn publish_in_order(
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
pub(super) async fn open_link(
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
pub(super) struct Reconnect {
    pub(super) failures: u32,
}

impl Reconnect {
    /// base, 2 x base, 4 x base... capped: the pause before the next attempt. A pause
    /// comes before the first attempt too, so that a broker that accepts and then
    /// drops connections is not hammered.
    pub(super) fn delay(&self, config: &RabbitConfig) -> Duration {
        config
            .reconnect_base_delay
            .saturating_mul(1u32 << self.failures.min(20))
            .min(config.reconnect_max_delay.max(config.reconnect_base_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::fixtures::config;
    use super::super::config::RabbitTls;
    use super::*;

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
