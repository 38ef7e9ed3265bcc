//! The rabbit backend against the real RabbitMQ on 127.0.0.1:5672 (guest/guest).
//!
//! Every test declares its own uniquely named exchanges and reads what arrives through
//! an exclusive queue of its own, so tests run in parallel without seeing each other.
//! Faults are made with a TCP proxy between the backend and the broker that a test can
//! cut (every proxied connection closed at once) or set to refuse new connections.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use pusher::backend::{AttemptOutcome, Backend, Verdict};
use pusher::connection::{ConnectionEvent, ConnectionState};
use pusher::rabbit::{
    ChatKind, Direction, ExchangeConfig, RabbitBackend, RabbitConfig, RabbitEvent, Topics,
    DEFAULT_MAX_MESSAGE_BYTES,
};
use pusher::{Envelope, Instance, InstanceConfig, Overflow, QueueLimits, Reason, RetryPolicy};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use common::{wait_until, Collect};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const BROKER_PORT: u16 = 5672;

/// Exchange names no other test (or run) uses.
struct Names {
    presence: String,
    chat: String,
    groupchat: String,
}

fn unique_names() -> Names {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let suffix = format!(
        "{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Names {
        presence: format!("test_presence_{suffix}"),
        chat: format!("test_chat_msg_{suffix}"),
        groupchat: format!("test_groupchat_msg_{suffix}"),
    }
}

fn topic_exchange(name: &str) -> ExchangeConfig {
    ExchangeConfig {
        name: name.into(),
        kind: "topic".into(),
        durable: false,
        persistent: false,
    }
}

fn config(names: &Names, port: u16) -> RabbitConfig {
    RabbitConfig {
        host: "127.0.0.1".into(),
        port,
        username: "guest".into(),
        password: "guest".into(),
        virtual_host: "/".into(),
        tls: None,
        presence_exchange: topic_exchange(&names.presence),
        chat_exchange: topic_exchange(&names.chat),
        chat_topics: Topics {
            sent: "chat_msg_sent".into(),
            recv: "chat_msg_recv".into(),
        },
        groupchat_exchange: topic_exchange(&names.groupchat),
        groupchat_topics: Topics {
            sent: "groupchat_msg_sent".into(),
            recv: "groupchat_msg_recv".into(),
        },
        confirms: true,
        confirm_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        reconnect_base_delay: Duration::from_millis(50),
        reconnect_max_delay: Duration::from_millis(200),
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
    }
}

/// A backend whose first connect attempt succeeded.
async fn connect_backend(config: RabbitConfig) -> RabbitBackend {
    let backend = RabbitBackend::start(config)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    assert!(backend.is_connected(), "{:?}", backend.connection_status());
    backend
}

/// The test's own connection to the broker, for declaring, binding and consuming.
struct Broker {
    _connection: Connection,
    channel: Channel,
}

impl Broker {
    async fn open() -> Broker {
        let connection = Connection::connect(BROKER, ConnectionProperties::default())
            .await
            .expect("test connection to RabbitMQ on 127.0.0.1:5672");
        let channel = connection.create_channel().await.expect("channel");
        Broker {
            _connection: connection,
            channel,
        }
    }

    /// An exclusive queue bound to `exchange` with each key, with `arguments`.
    async fn queue(&self, exchange: &str, keys: &[&str], arguments: FieldTable) -> String {
        let queue = self
            .channel
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .expect("queue_declare");
        let name = queue.name().as_str().to_string();
        for key in keys {
            self.channel
                .queue_bind(
                    &name,
                    exchange,
                    key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("queue_bind");
        }
        name
    }

    async fn consume(&self, queue: &str) -> lapin::Consumer {
        self.channel
            .basic_consume(
                queue,
                "",
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("basic_consume")
    }

    async fn delete_exchanges(&self, names: &Names) {
        for name in [&names.presence, &names.chat, &names.groupchat] {
            let _ = self
                .channel
                .exchange_delete(name, ExchangeDeleteOptions::default())
                .await;
        }
    }
}

async fn next_delivery(consumer: &mut lapin::Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("a message within 5 s")
        .expect("consumer open")
        .expect("delivery")
}

/// Routing key, content type and body (decoded JSON: the key order is not the point
/// here) of the next message.
async fn next_message(
    consumer: &mut lapin::Consumer,
) -> (String, Option<String>, serde_json::Value) {
    let delivery = next_delivery(consumer).await;
    (
        delivery.routing_key.as_str().to_string(),
        delivery
            .properties
            .content_type()
            .as_ref()
            .map(|t| t.as_str().to_string()),
        serde_json::from_slice(&delivery.data).expect("a JSON body"),
    )
}

fn presence(user: &str, present: bool) -> RabbitEvent {
    RabbitEvent::Presence {
        user_jid: format!("{user}@localhost/res1"),
        bare_jid: format!("{user}@localhost"),
        present,
    }
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

fn confirmed() -> (Verdict, AttemptOutcome) {
    (Verdict::Delivered, AttemptOutcome::Confirmed)
}

async fn deliver(backend: &RabbitBackend, event: &RabbitEvent) -> (Verdict, AttemptOutcome) {
    let attempt = backend.deliver(event).await;
    (attempt.verdict, attempt.outcome)
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_online_and_offline_arrive_keyed_by_bare_jid() {
    let names = unique_names();
    let broker = Broker::open().await;
    let backend = connect_backend(config(&names, BROKER_PORT)).await;
    let queue = broker
        .queue(&names.presence, &["alice@localhost"], FieldTable::default())
        .await;
    let mut consumer = broker.consume(&queue).await;

    assert_eq!(
        deliver(&backend, &presence("alice", true)).await,
        confirmed()
    );
    assert_eq!(
        deliver(&backend, &presence("alice", false)).await,
        confirmed()
    );
    // Bound to alice only: bob's presence must not show up in this queue.
    assert_eq!(deliver(&backend, &presence("bob", true)).await, confirmed());

    let online = next_message(&mut consumer).await;
    let offline = next_message(&mut consumer).await;
    let expected = |present: bool| {
        (
            "alice@localhost".to_string(),
            JSON.map(str::to_string),
            serde_json::json!({"user_id": "alice@localhost/res1", "present": present}),
        )
    };
    assert_eq!(online, expected(true));
    assert_eq!(offline, expected(false));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "unexpected message"
    );
    let counters = backend.connections().expect("counters").snapshot();
    assert_eq!(
        (counters.opened, counters.closed, counters.failed),
        (1, 0, 0)
    );
    broker.delete_exchanges(&names).await;
}

/// Sends a message in both directions on `kind`'s exchange and checks both arrive with
/// the sender's / recipient's routing key and the exact JSON.
async fn check_both_directions(kind: ChatKind, confirms: bool) {
    let names = unique_names();
    let broker = Broker::open().await;
    let mut config = config(&names, BROKER_PORT);
    config.confirms = confirms;
    let (exchange, sent, recv) = match kind {
        ChatKind::Chat => (&names.chat, "chat_msg_sent", "chat_msg_recv"),
        ChatKind::Groupchat => (&names.groupchat, "groupchat_msg_sent", "groupchat_msg_recv"),
    };
    let backend = connect_backend(config).await;
    let queue = broker.queue(exchange, &["#"], FieldTable::default()).await;
    let mut consumer = broker.consume(&queue).await;

    let expected_outcome = if confirms {
        confirmed()
    } else {
        (Verdict::Delivered, AttemptOutcome::Published)
    };
    assert_eq!(
        deliver(&backend, &chat(kind, Direction::In, "hello")).await,
        expected_outcome
    );
    assert_eq!(
        deliver(&backend, &chat(kind, Direction::Out, "hi there")).await,
        expected_outcome
    );

    let json = |message: &str| {
        serde_json::json!({
            "to_user_id": "bob@localhost/res2",
            "message": message,
            "from_user_id": "alice@localhost/res1"
        })
    };
    assert_eq!(
        next_message(&mut consumer).await,
        (
            format!("alice@localhost.{sent}"),
            JSON.map(str::to_string),
            json("hello")
        )
    );
    assert_eq!(
        next_message(&mut consumer).await,
        (
            format!("bob@localhost.{recv}"),
            JSON.map(str::to_string),
            json("hi there")
        )
    );
    broker.delete_exchanges(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_sent_and_received_arrive_with_their_topics() {
    check_both_directions(ChatKind::Chat, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groupchat_sent_and_received_arrive_with_their_topics() {
    check_both_directions(ChatKind::Groupchat, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_confirms_a_written_message_counts_as_published() {
    check_both_directions(ChatKind::Chat, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_kib_unicode_body_arrives_intact() {
    let names = unique_names();
    let broker = Broker::open().await;
    let backend = connect_backend(config(&names, BROKER_PORT)).await;
    let queue = broker
        .queue(&names.chat, &["#"], FieldTable::default())
        .await;
    let mut consumer = broker.consume(&queue).await;

    // 16 bytes a round (1, 2, 3 and 4-byte characters, a quote, a backslash, a
    // newline) x 4096 = 64 KiB, past RabbitMQ's frame size for the whole message.
    let body = "aż€😀\"\\\nxyz".repeat(4096);
    assert_eq!(body.len(), 64 * 1024);
    assert_eq!(
        deliver(&backend, &chat(ChatKind::Chat, Direction::In, &body)).await,
        confirmed()
    );
    let (key, _, parsed) = next_message(&mut consumer).await;
    assert_eq!(key, "alice@localhost.chat_msg_sent");
    assert_eq!(parsed["message"].as_str(), Some(body.as_str()));
    assert_eq!(parsed["to_user_id"], "bob@localhost/res2");
    assert_eq!(parsed["from_user_id"], "alice@localhost/res1");
    broker.delete_exchanges(&names).await;
}

/// Declares `exchange` as `kind` on a fresh channel: true if the broker agreed (an
/// existing exchange of another type makes it refuse, and close the channel).
async fn declares_as(connection: &Connection, exchange: &str, kind: ExchangeKind) -> bool {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            exchange,
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchanges_are_declared_on_start_with_the_configured_types() {
    let names = unique_names();
    let mut config = config(&names, BROKER_PORT);
    config.presence_exchange.kind = "fanout".into();
    config.groupchat_exchange.kind = "direct".into();
    let _backend = connect_backend(config).await;
    let connection = Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .expect("connection");
    assert!(declares_as(&connection, &names.presence, ExchangeKind::Fanout).await);
    assert!(!declares_as(&connection, &names.presence, ExchangeKind::Topic).await);
    assert!(declares_as(&connection, &names.chat, ExchangeKind::Topic).await);
    assert!(!declares_as(&connection, &names.chat, ExchangeKind::Direct).await);
    assert!(declares_as(&connection, &names.groupchat, ExchangeKind::Direct).await);
    Broker::open().await.delete_exchanges(&names).await;
}

async fn start_error(config: RabbitConfig) -> String {
    match RabbitBackend::start(config).await {
        Ok(_) => panic!("the start succeeded"),
        Err(error) => {
            eprintln!("start failed: {error}");
            error.to_string()
        }
    }
}

/// Declares `exchange` as `kind` (and `durable`) from the test's own connection.
async fn predeclare(broker: &Broker, exchange: &str, kind: ExchangeKind, durable: bool) {
    broker
        .channel
        .exchange_declare(
            exchange,
            kind,
            ExchangeDeclareOptions {
                durable,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_exchange_type_fails_the_start_naming_the_exchange() {
    let names = unique_names();
    let broker = Broker::open().await;
    predeclare(&broker, &names.chat, ExchangeKind::Direct, false).await;
    let reason = start_error(config(&names, BROKER_PORT)).await;
    let expected = format!(
        "cannot declare exchange \"{}\" (type topic): PRECONDITION_FAILED - inequivalent arg 'type'",
        names.chat
    );
    assert!(reason.starts_with(&expected), "{reason}");
    broker.delete_exchanges(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_that_exists_durable_fails_a_non_durable_start_naming_it() {
    let names = unique_names();
    let broker = Broker::open().await;
    predeclare(&broker, &names.groupchat, ExchangeKind::Topic, true).await;
    let reason = start_error(config(&names, BROKER_PORT)).await;
    let expected = format!(
        "cannot declare exchange \"{}\" (type topic): PRECONDITION_FAILED - inequivalent arg 'durable'",
        names.groupchat
    );
    assert!(reason.starts_with(&expected), "{reason}");
    broker.delete_exchanges(&names).await;
}

/// Closes the backend, so that its reconnecting stops with the test.
async fn closed(backend: RabbitBackend) {
    backend.close().await;
    assert_eq!(backend.connection_status().state, ConnectionState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_does_not_fail_the_start() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut config = config(&unique_names(), closed_port);
    config.connect_timeout = Duration::from_millis(500);
    let backend = RabbitBackend::start(config)
        .await
        .unwrap_or_else(|e| panic!("the start failed: {e}"));
    assert!(!backend.is_connected());
    let status = backend.connection_status();
    eprintln!("started disconnected: {status:?}");
    assert_eq!(status.state, ConnectionState::Disconnected);
    let reason = status.last_error.unwrap_or_default();
    assert!(
        reason.starts_with(&format!("cannot connect to 127.0.0.1:{closed_port}: ")),
        "{reason}"
    );
    assert!(reason.contains("refused"), "{reason}");
    assert!(status.down_since_ms.is_some() && status.last_error_at_ms.is_some());
    assert!(status.failed_attempts >= 1);
    // It keeps trying on its own, with no event asking for it.
    let connections = backend.connections().expect("counters");
    wait_until("reconnect attempts", Duration::from_secs(10), || {
        connections.snapshot().failed >= 3
    })
    .await;
    assert_eq!(connections.snapshot().opened, 0);
    closed(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_answers_does_not_fail_the_start_either() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accepts and then says nothing.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut config = config(&unique_names(), port);
    config.connect_timeout = Duration::from_millis(500);
    let backend = RabbitBackend::start(config)
        .await
        .unwrap_or_else(|e| panic!("the start failed: {e}"));
    let status = backend.connection_status();
    assert_eq!(status.state, ConnectionState::Disconnected);
    assert_eq!(
        status.last_error.as_deref(),
        Some(format!("cannot connect to 127.0.0.1:{port}: no answer within 500ms").as_str())
    );
    closed(backend).await;
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_the_start_with_access_refused() {
    let mut config = config(&unique_names(), BROKER_PORT);
    config.username = "no_such_user".into();
    let reason = start_error(config).await;
    assert!(
        reason.starts_with("access refused for user \"no_such_user\""),
        "{reason}"
    );
    let mut config = self::config(&unique_names(), BROKER_PORT);
    config.password = "not the password".into();
    let reason = start_error(config).await;
    assert!(
        reason.starts_with("access refused for user \"guest\" by 127.0.0.1:5672: "),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_virtual_host_fails_the_start_naming_it() {
    let mut config = config(&unique_names(), BROKER_PORT);
    config.virtual_host = "no_such_vhost".into();
    let reason = start_error(config).await;
    assert!(
        reason.starts_with("cannot open virtual host \"no_such_vhost\" on 127.0.0.1:5672: "),
        "{reason}"
    );
}

fn envelope(event: RabbitEvent) -> Envelope<RabbitEvent> {
    let bytes = event.size();
    Envelope::new(event, b"tag", bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_are_retried_until_the_policy_gives_up_or_the_broker_takes_the_event() {
    let names = unique_names();
    let broker = Broker::open().await;
    let backend = connect_backend(config(&names, BROKER_PORT)).await;
    // A queue that holds one message and makes the broker nack the rest.
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let queue = broker.queue(&names.chat, &["#"], arguments).await;
    let event = chat(ChatKind::Chat, Direction::In, "x");
    assert_eq!(deliver(&backend, &event).await, confirmed());
    assert_eq!(
        deliver(&backend, &event).await,
        (Verdict::Retry(Reason::Nacked), AttemptOutcome::Nacked)
    );

    let sink = Arc::new(Collect::default());
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        backend,
        InstanceConfig {
            queue: QueueLimits::default(),
            retry: RetryPolicy {
                max_attempts: 4,
                // Pauses of 200-400 ms: time enough to purge between two attempts.
                base_backoff: Duration::from_millis(400),
                max_backoff: Duration::from_millis(400),
                deadline: Duration::from_secs(30),
                ..RetryPolicy::default()
            },
            concurrency: 2,
        },
        sink.clone(),
    );
    // The queue stays full: every attempt is nacked, and the fourth is the last.
    instance.push(envelope(event.clone())).expect("push");
    wait_until("the first event to fail", Duration::from_secs(10), || {
        instance.stats().failed == 1
    })
    .await;
    assert_eq!(instance.stats().retried, 3);
    // The next event is nacked once; then the queue is emptied and a retry gets in.
    instance.push(envelope(event)).expect("push");
    wait_until(
        "a nack of the second event",
        Duration::from_secs(10),
        || instance.stats().retried == 4,
    )
    .await;
    broker
        .channel
        .queue_purge(&queue, QueuePurgeOptions::default())
        .await
        .expect("purge");
    wait_until("the second event", Duration::from_secs(10), || {
        instance.stats().delivered == 1
    })
    .await;

    let summary = instance.stop(Duration::from_secs(5)).await;
    let stats = summary.stats;
    assert_eq!(
        (stats.accepted, stats.delivered, stats.failed, stats.dropped),
        (2, 1, 1, 0)
    );
    assert_eq!(stats.retried, 4);
    let batches = std::mem::take(&mut *sink.batches());
    let failures: Vec<_> = batches.iter().flat_map(|b| b.failures.iter()).collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(
        (&failures[0].reason, failures[0].attempts),
        (&Reason::Nacked, 4)
    );
    let count = |outcome: AttemptOutcome| {
        batches
            .iter()
            .flat_map(|b| b.attempts.iter())
            .filter(|a| a.outcome == outcome)
            .count()
    };
    // First event: 4 nacks; second: a nack, then the confirm.
    assert_eq!(count(AttemptOutcome::Nacked), 5);
    assert_eq!(count(AttemptOutcome::Confirmed), 1);
    broker.delete_exchanges(&names).await;
}

/// A TCP proxy to the broker that can cut every connection it carries and refuse new
/// ones (accepting and closing them at once, as a broker that is going down does).
struct Proxy {
    port: u16,
    refusing: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<AbortHandle>>>,
    /// Local ports of the connections to the broker: the broker's `peer_port`.
    upstream_ports: Arc<Mutex<Vec<u16>>>,
    accept_loop: AbortHandle,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let refusing = Arc::new(AtomicBool::new(false));
        let carried = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let upstream_ports = Arc::new(Mutex::new(Vec::new()));
        let accept_loop = tokio::spawn({
            let refusing = refusing.clone();
            let carried = carried.clone();
            let upstream_ports = upstream_ports.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let upstream_ports = upstream_ports.clone();
                    let pipe = tokio::spawn(async move {
                        let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", BROKER_PORT)).await
                        else {
                            return;
                        };
                        if let Ok(local) = upstream.local_addr() {
                            upstream_ports.lock().expect("ports").push(local.port());
                        }
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    });
                    carried.lock().expect("carried").push(pipe.abort_handle());
                }
            }
        })
        .abort_handle();
        Proxy {
            port,
            refusing,
            carried,
            upstream_ports,
            accept_loop,
        }
    }

    /// Closes every connection carried so far (both ends).
    fn cut(&self) {
        for pipe in self.carried.lock().expect("carried").drain(..) {
            pipe.abort();
        }
    }

    /// Has the broker close (connection.close, CONNECTION_FORCED) the connections
    /// this proxy carries, as `rabbitmqctl close_all_connections` would, without
    /// touching other tests' connections.
    fn close_at_broker(&self) -> usize {
        let ports: Vec<u16> = self.upstream_ports.lock().expect("ports").clone();
        let listing = rabbitmqctl(&["-q", "list_connections", "pid", "peer_port"]);
        let mut closed = 0;
        for line in listing.lines() {
            let mut fields = line.split_whitespace();
            let (Some(pid), Some(port)) = (fields.next(), fields.next()) else {
                continue;
            };
            if port.parse().is_ok_and(|port: u16| ports.contains(&port)) {
                rabbitmqctl(&["-q", "close_connection", pid, "test: forced close"]);
                closed += 1;
            }
        }
        closed
    }

    fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
        self.cut();
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Counts what arrives at a queue: unique message ids and everything.
struct Arrivals {
    unique: Arc<Mutex<HashSet<String>>>,
    total: Arc<AtomicUsize>,
    task: AbortHandle,
}

impl Arrivals {
    fn start(mut consumer: lapin::Consumer) -> Arrivals {
        let unique = Arc::new(Mutex::new(HashSet::new()));
        let total = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let unique = unique.clone();
            let total = total.clone();
            async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    let json: serde_json::Value =
                        serde_json::from_slice(&delivery.data).expect("JSON");
                    let id = json["message"].as_str().expect("message").to_string();
                    unique.lock().expect("unique").insert(id);
                    total.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .abort_handle();
        Arrivals {
            unique,
            total,
            task,
        }
    }

    fn unique(&self) -> usize {
        self.unique.lock().expect("unique").len()
    }

    fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn patient_config(concurrency: usize) -> InstanceConfig {
    InstanceConfig {
        queue: QueueLimits {
            max_events: 50_000,
            max_bytes: 64 * 1024 * 1024,
            overflow: Overflow::DropNewest,
        },
        retry: RetryPolicy {
            max_attempts: 100,
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(300),
            deadline: Duration::from_secs(60),
            ..RetryPolicy::default()
        },
        concurrency,
    }
}

/// A generous retry budget: what the fault tests check is that nothing is lost.
fn patient_instance(backend: RabbitBackend, concurrency: usize) -> Instance<RabbitBackend> {
    reporting_instance(backend, concurrency, Arc::new(pusher::report::NoReports))
}

fn reporting_instance(
    backend: RabbitBackend,
    concurrency: usize,
    sink: Arc<dyn pusher::report::ReportSink>,
) -> Instance<RabbitBackend> {
    Instance::start(
        &tokio::runtime::Handle::current(),
        backend,
        patient_config(concurrency),
        sink,
    )
}

impl Collect {
    fn connection_events(&self) -> Vec<ConnectionEvent> {
        self.batches()
            .iter()
            .flat_map(|b| b.connection_events.iter().cloned())
            .collect()
    }

    fn any_backend_down(&self) -> bool {
        self.batches().iter().any(|b| b.backend_down.is_some())
    }
}

/// True if `exchange` exists (a passive declare succeeds).
async fn exchange_exists(exchange: &str) -> bool {
    let connection = Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .expect("connection");
    let channel = connection.create_channel().await.expect("channel");
    let exists = channel
        .exchange_declare(
            exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = connection.close(200, "done").await;
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pushed_before_the_broker_is_reachable_arrive_once_it_is() {
    const EVENTS: usize = 300;
    let names = unique_names();
    let broker = Broker::open().await;
    // The test's consumer needs the chat exchange now; the backend declares the same.
    predeclare(&broker, &names.chat, ExchangeKind::Topic, false).await;
    let queue = broker
        .queue(&names.chat, &["#"], FieldTable::default())
        .await;
    let arrivals = Arrivals::start(broker.consume(&queue).await);
    let proxy = Proxy::start().await;
    proxy.refuse(true);
    let backend = RabbitBackend::start(config(&names, proxy.port))
        .await
        .unwrap_or_else(|e| panic!("the start failed: {e}"));
    let connections = backend.connections().expect("counters");
    let sink = Arc::new(Collect::default());
    let mut instance_config = patient_config(20);
    // Shorter than the outage below: waiting for the broker does not use it up.
    instance_config.retry.deadline = Duration::from_millis(500);
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        backend,
        instance_config,
        sink.clone(),
    );
    let status = instance.backend().connection_status();
    assert_eq!(status.state, ConnectionState::Disconnected, "{status:?}");
    let pushed_at = Instant::now();
    for i in 0..EVENTS {
        instance.push(numbered(i)).expect("push");
    }
    wait_until(
        "an outage longer than the retry deadline",
        Duration::from_secs(10),
        || connections.snapshot().failed >= 3 && pushed_at.elapsed() > Duration::from_secs(1),
    )
    .await;
    let waiting = instance.stats();
    assert_eq!((waiting.delivered, waiting.failed), (0, 0));
    assert_eq!(waiting.queued + waiting.in_flight, EVENTS as u64);
    assert_eq!(arrivals.total(), 0);
    assert!(!exchange_exists(&names.presence).await);
    wait_until(
        "the start's failure reported",
        Duration::from_secs(5),
        || !sink.connection_events().is_empty(),
    )
    .await;

    proxy.refuse(false);
    wait_until(
        "every event at the consumer",
        Duration::from_secs(20),
        || arrivals.unique() == EVENTS,
    )
    .await;
    assert_eq!(
        instance.backend().connection_status().state,
        ConnectionState::Connected
    );
    assert!(exchange_exists(&names.presence).await);
    assert!(exchange_exists(&names.groupchat).await);
    let stats = instance.stop(Duration::from_secs(5)).await.stats;
    assert_eq!(
        (stats.accepted, stats.delivered, stats.failed, stats.dropped),
        (EVENTS as u64, EVENTS as u64, 0, 0)
    );
    let events = sink.connection_events();
    eprintln!("connection events: {events:?}");
    match events.as_slice() {
        [ConnectionEvent::ConnectFailed {
            attempts: 1,
            reason,
            ..
        }, .., ConnectionEvent::Connected {
            failed_attempts, ..
        }] => {
            assert!(
                reason.starts_with("cannot connect to 127.0.0.1:"),
                "{reason}"
            );
            assert!(*failed_attempts >= 3);
        }
        other => panic!("unexpected connection events {other:?}"),
    }
    broker.delete_exchanges(&names).await;
}

fn numbered(i: usize) -> Envelope<RabbitEvent> {
    envelope(chat(ChatKind::Chat, Direction::In, &format!("m{i}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cuts_mid_stream_lose_no_event() {
    const EVENTS: usize = 20_000;
    let names = unique_names();
    let broker = Broker::open().await;
    let proxy = Proxy::start().await;
    let backend = connect_backend(config(&names, proxy.port)).await;
    let connections = backend.connections().expect("counters");
    let queue = broker
        .queue(&names.chat, &["#"], FieldTable::default())
        .await;
    let arrivals = Arrivals::start(broker.consume(&queue).await);
    // The confirm window is the concurrency: 500 events in flight at most.
    let instance = patient_instance(backend, 500);

    let mut cuts = 0;
    for i in 0..EVENTS {
        instance.push(numbered(i)).expect("push");
        if i % 1000 == 999 {
            // Pace the pushes so that the cuts land while events are flowing.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if i == 5_999 || i == 13_999 {
                wait_until(
                    "some deliveries before the cut",
                    Duration::from_secs(10),
                    || arrivals.unique() > i / 2,
                )
                .await;
                proxy.cut();
                cuts += 1;
            }
        }
    }
    wait_until(
        "every event at the consumer",
        Duration::from_secs(40),
        || arrivals.unique() == EVENTS,
    )
    .await;
    let summary = instance.stop(Duration::from_secs(10)).await;
    let stats = summary.stats;
    let counters = connections.snapshot();
    eprintln!(
        "{EVENTS} events, {cuts} cuts: {} messages arrived ({} duplicates), {} retries, connections {counters:?}",
        arrivals.total(),
        arrivals.total() - EVENTS,
        stats.retried
    );
    assert_eq!(summary.lost, 0);
    assert_eq!(stats.accepted, EVENTS as u64);
    assert_eq!(
        (stats.delivered, stats.failed, stats.dropped),
        (EVENTS as u64, 0, 0)
    );
    assert!(counters.closed >= 1, "{counters:?}");
    assert!(counters.opened >= 2, "{counters:?}");
    broker.delete_exchanges(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_while_the_broker_is_unreachable_and_arrive_once_it_is_back() {
    const EVENTS: usize = 1_000;
    let names = unique_names();
    let broker = Broker::open().await;
    let proxy = Proxy::start().await;
    // Reachable at start; unreachable right after.
    let backend = connect_backend(config(&names, proxy.port)).await;
    let connections = backend.connections().expect("counters");
    let queue = broker
        .queue(&names.chat, &["#"], FieldTable::default())
        .await;
    let arrivals = Arrivals::start(broker.consume(&queue).await);
    let sink = Arc::new(Collect::default());
    let instance = reporting_instance(backend, 50, sink.clone());

    proxy.refuse(true);
    proxy.cut();
    for i in 0..EVENTS {
        instance.push(numbered(i)).expect("push");
    }
    wait_until("failed reconnect attempts", Duration::from_secs(10), || {
        connections.snapshot().failed >= 3
    })
    .await;
    let waiting = instance.stats();
    assert_eq!(arrivals.total(), 0);
    assert_eq!((waiting.delivered, waiting.failed), (0, 0));
    assert_eq!(waiting.queued + waiting.in_flight, EVENTS as u64);
    let status = instance.backend().connection_status();
    assert_eq!(status.state, ConnectionState::Disconnected, "{status:?}");
    assert!(status.down_since_ms.is_some() && status.failed_attempts >= 3);
    wait_until("the outage in a report", Duration::from_secs(5), || {
        sink.any_backend_down()
    })
    .await;

    proxy.refuse(false);
    wait_until(
        "every event at the consumer",
        Duration::from_secs(20),
        || arrivals.unique() == EVENTS,
    )
    .await;
    let stats = instance.stop(Duration::from_secs(5)).await.stats;
    assert_eq!(
        (stats.accepted, stats.delivered, stats.failed, stats.dropped),
        (EVENTS as u64, EVENTS as u64, 0, 0)
    );
    let counters = connections.snapshot();
    assert!(counters.closed >= 1 && counters.opened >= 2, "{counters:?}");
    // The loss with its reason, the first failed reconnect, then the way back (the
    // rate limit keeps the other failures out of the log).
    let events = sink.connection_events();
    eprintln!("connection events: {events:?}");
    match events.as_slice() {
        [ConnectionEvent::Lost { reason: lost, .. }, ConnectionEvent::ConnectFailed {
            attempts: 1,
            reason: failed,
            ..
        }, ConnectionEvent::Connected {
            failed_attempts, ..
        }] => {
            assert!(
                lost.starts_with("connection lost: ") || lost.starts_with("publish failed: "),
                "{lost}"
            );
            assert!(
                failed.starts_with("cannot connect to 127.0.0.1:"),
                "{failed}"
            );
            assert!(*failed_attempts >= 3);
        }
        other => panic!("unexpected connection events {other:?}"),
    }
    broker.delete_exchanges(&names).await;
}

/// rabbitmqctl off the runtime's threads (each call starts a VM: a second or two).
async fn rabbitmqctl_async(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rabbitmqctl(&args)
    })
    .await
    .expect("rabbitmqctl")
}

/// A broker user deleted when the test ends, however it ends.
struct TemporaryUser(String);

impl Drop for TemporaryUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_refused_on_a_reconnect_are_retried_and_said() {
    let names = unique_names();
    let user = format!("test_rotated_{}", names.chat);
    rabbitmqctl_async(&["-q", "add_user", &user, "first"]).await;
    let _user = TemporaryUser(user.clone());
    rabbitmqctl_async(&["-q", "set_permissions", "-p", "/", &user, ".*", ".*", ".*"]).await;
    let proxy = Proxy::start().await;
    let mut config = config(&names, proxy.port);
    config.username = user.clone();
    config.password = "first".into();
    let backend = connect_backend(config).await;
    let sink = Arc::new(Collect::default());
    let instance = reporting_instance(backend, 5, sink.clone());

    // The password is rotated on the broker, and then the connection drops.
    rabbitmqctl_async(&["-q", "change_password", &user, "second"]).await;
    proxy.cut();
    let refused = format!("access refused for user {user:?}");
    wait_until("a refused reconnect", Duration::from_secs(10), || {
        let status = instance.backend().connection_status();
        status.state == ConnectionState::Disconnected
            && status
                .last_error
                .is_some_and(|error| error.starts_with(&refused))
    })
    .await;
    // Back once the password the backend has is valid again.
    rabbitmqctl_async(&["-q", "change_password", &user, "first"]).await;
    wait_until("the reconnect", Duration::from_secs(10), || {
        instance.backend().is_connected()
    })
    .await;
    instance.stop(Duration::from_secs(1)).await;
    let events = sink.connection_events();
    eprintln!("connection events: {events:?}");
    match events.as_slice() {
        [ConnectionEvent::Lost { .. }, ConnectionEvent::ConnectFailed {
            attempts: 1,
            reason,
            ..
        }, .., ConnectionEvent::Connected { .. }] => {
            assert!(reason.starts_with(&refused), "{reason}")
        }
        other => panic!("unexpected connection events {other:?}"),
    }
    Broker::open().await.delete_exchanges(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_broker_is_counted_reopened_and_loses_no_event() {
    let names = unique_names();
    let broker = Broker::open().await;
    let proxy = Proxy::start().await;
    let backend = connect_backend(config(&names, proxy.port)).await;
    let connections = backend.connections().expect("counters");
    let queue = broker
        .queue(&names.chat, &["#"], FieldTable::default())
        .await;
    let arrivals = Arrivals::start(broker.consume(&queue).await);
    let instance = patient_instance(backend, 100);

    // An idle connection closed by the broker shows in the counters at once.
    let proxy = Arc::new(proxy);
    let close_at_broker = || {
        let proxy = proxy.clone();
        tokio::task::spawn_blocking(move || proxy.close_at_broker())
    };
    assert_eq!(close_at_broker().await.expect("rabbitmqctl"), 1);
    wait_until("the loss to be counted", Duration::from_secs(5), || {
        connections.snapshot().closed == 1
    })
    .await;

    // Then again while events flow: pushed before, during and after the close. The
    // first events find the link dead and reconnect (lazily: nothing else would).
    let mut pushed = 0;
    while pushed < 500 {
        instance.push(numbered(pushed)).expect("push");
        pushed += 1;
    }
    wait_until("the reconnect", Duration::from_secs(5), || {
        connections.snapshot().opened == 2 && arrivals.unique() > 0
    })
    .await;
    let closing = close_at_broker();
    let mut pushed_after_close = 0;
    while pushed_after_close < 500 {
        if closing.is_finished() {
            pushed_after_close += 25;
        }
        for _ in 0..25 {
            instance.push(numbered(pushed)).expect("push");
            pushed += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(closing.await.expect("rabbitmqctl"), 1);
    wait_until(
        "every event at the consumer",
        Duration::from_secs(20),
        || arrivals.unique() == pushed,
    )
    .await;
    let stats = instance.stop(Duration::from_secs(5)).await.stats;
    assert_eq!(
        (stats.accepted, stats.delivered, stats.failed, stats.dropped),
        (pushed as u64, pushed as u64, 0, 0)
    );
    let counters = connections.snapshot();
    eprintln!(
        "forced close: {pushed} events, {} duplicates, {} retries, connections {counters:?}",
        arrivals.total() - pushed,
        stats.retried
    );
    // Two losses, and the close at stop.
    assert_eq!((counters.closed, counters.opened), (3, 3), "{counters:?}");
    broker.delete_exchanges(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_the_broker_is_unreachable_ends_at_the_drain_deadline() {
    const EVENTS: usize = 200;
    let names = unique_names();
    let proxy = Proxy::start().await;
    let backend = connect_backend(config(&names, proxy.port)).await;
    let connections = backend.connections().expect("counters");
    let instance = patient_instance(backend, 20);
    proxy.refuse(true);
    proxy.cut();
    for i in 0..EVENTS {
        instance.push(numbered(i)).expect("push");
    }
    wait_until("a failed reconnect", Duration::from_secs(5), || {
        connections.snapshot().failed >= 1
    })
    .await;
    // The workers wait for the broker; the stop aborts them at the deadline.
    let started = Instant::now();
    let summary = instance.stop(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let stats = summary.stats;
    assert_eq!(summary.lost, EVENTS as u64);
    assert_eq!(
        (stats.accepted, stats.delivered, stats.failed, stats.dropped),
        (EVENTS as u64, 0, EVENTS as u64, 0)
    );
    drop(instance);
    Broker::open().await.delete_exchanges(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_exchange_is_declared_again_on_reconnect() {
    let names = unique_names();
    let broker = Broker::open().await;
    let backend = connect_backend(config(&names, BROKER_PORT)).await;
    let event = chat(ChatKind::Chat, Direction::In, "again");
    assert_eq!(deliver(&backend, &event).await, confirmed());
    broker
        .channel
        .exchange_delete(&names.chat, ExchangeDeleteOptions::default())
        .await
        .expect("delete");
    // Publishing to a missing exchange makes the broker close the channel (404).
    let (verdict, outcome) = deliver(&backend, &event).await;
    assert!(
        matches!(verdict, Verdict::Retry(Reason::Connection(ref r)) if r.contains("NOT_FOUND")),
        "{verdict:?}"
    );
    assert!(
        matches!(outcome, AttemptOutcome::NoResponse(_)),
        "{outcome:?}"
    );
    // The next attempt reconnects, which declares the exchange again.
    assert_eq!(deliver(&backend, &event).await, confirmed());
    let queue = broker
        .queue(&names.chat, &["#"], FieldTable::default())
        .await;
    let mut consumer = broker.consume(&queue).await;
    assert_eq!(deliver(&backend, &event).await, confirmed());
    let (key, _, _) = next_message(&mut consumer).await;
    assert_eq!(key, "alice@localhost.chat_msg_sent");
    let counters = backend.connections().expect("counters").snapshot();
    assert_eq!((counters.opened, counters.closed), (2, 1));
    broker.delete_exchanges(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_the_connection_counts_it_and_refuses_later_events() {
    let names = unique_names();
    let backend = connect_backend(config(&names, BROKER_PORT)).await;
    let event = chat(ChatKind::Chat, Direction::In, "last");
    assert_eq!(deliver(&backend, &event).await, confirmed());
    backend.close().await;
    assert!(!backend.is_connected());
    let counters = backend.connections().expect("counters").snapshot();
    assert_eq!(
        (counters.opened, counters.closed, counters.failed),
        (1, 1, 0)
    );
    assert_eq!(
        deliver(&backend, &event).await,
        (
            Verdict::Fatal(Reason::BackendClosed),
            AttemptOutcome::NoResponse(Reason::BackendClosed)
        )
    );
    backend.close().await;
    let counters = backend.connections().expect("counters").snapshot();
    assert_eq!((counters.opened, counters.closed), (1, 1), "counted once");
    Broker::open().await.delete_exchanges(&names).await;
}

/// A bare JID of `bytes` bytes (local part padded), legal in XMPP, too long for a
/// routing key.
fn long_bare_jid(i: usize, bytes: usize) -> String {
    let tail = format!("{i}@localhost");
    format!("{}{tail}", "x".repeat(bytes - tail.len()))
}

/// Issue 11.1: one such event used to close the connection (FRAME_ERROR), failing
/// every publish in flight; retried, it did it again. Now it fails alone, unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_routing_keys_over_255_bytes_fail_alone_and_the_rest_arrive() {
    const NORMAL: usize = 5_000;
    const LONG: usize = 20;
    let names = unique_names();
    let broker = Broker::open().await;
    let backend = connect_backend(config(&names, BROKER_PORT)).await;
    let connections = backend.connections().expect("counters");
    let queue = broker
        .queue(&names.chat, &["#"], FieldTable::default())
        .await;
    let arrivals = Arrivals::start(broker.consume(&queue).await);
    let sink = Arc::new(Collect::default());
    // Default queue and retry settings, the confirm window of the module's default.
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        backend,
        InstanceConfig {
            concurrency: 1000,
            ..InstanceConfig::default()
        },
        sink.clone(),
    );
    let mut long = 0;
    for i in 0..NORMAL {
        instance.push(numbered(i)).expect("push");
        if i % (NORMAL / LONG) == 0 {
            // Half chat (from a long JID), half presence (of a long JID).
            let jid = long_bare_jid(long, 300);
            let event = if long % 2 == 0 {
                RabbitEvent::Chat {
                    kind: ChatKind::Chat,
                    direction: Direction::In,
                    from_jid: format!("{jid}/r"),
                    to_jid: "bob@localhost".into(),
                    message: format!("long{long}"),
                    routing_bare_jid: jid,
                }
            } else {
                RabbitEvent::Presence {
                    user_jid: format!("{jid}/r"),
                    bare_jid: jid,
                    present: true,
                }
            };
            instance.push(envelope(event)).expect("push");
            long += 1;
        }
    }
    assert_eq!(long, LONG);
    wait_until("every normal event", Duration::from_secs(30), || {
        arrivals.unique() == NORMAL
    })
    .await;
    let stats = instance.stop(Duration::from_secs(5)).await.stats;
    eprintln!(
        "{NORMAL} normal + {LONG} long: {} arrived ({} unique), stats {stats:?}",
        arrivals.total(),
        arrivals.unique()
    );
    assert_eq!(
        (stats.accepted, stats.delivered, stats.failed, stats.dropped),
        ((NORMAL + LONG) as u64, NORMAL as u64, LONG as u64, 0)
    );
    assert_eq!(stats.retried, 0);
    // Only normal events arrived, each once (nothing was retried).
    assert_eq!(arrivals.total(), NORMAL);
    assert!(arrivals
        .unique
        .lock()
        .expect("unique")
        .iter()
        .all(|id| id.starts_with('m')));
    // No reconnect: the one connection, closed at stop.
    let counters = connections.snapshot();
    assert_eq!(
        (counters.opened, counters.closed, counters.failed),
        (1, 1, 0)
    );
    assert!(sink.connection_events().is_empty());
    let batches = std::mem::take(&mut *sink.batches());
    let failures: Vec<_> = batches.iter().flat_map(|b| b.failures.iter()).collect();
    assert_eq!(failures.len(), LONG);
    for failure in failures {
        assert_eq!(failure.attempts, 1);
        assert!(
            matches!(failure.reason, Reason::RoutingKeyTooLong(bytes) if bytes > 255),
            "{}",
            failure.reason
        );
    }
    broker.delete_exchanges(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_bytes_fails_alone_unsent() {
    let names = unique_names();
    let broker = Broker::open().await;
    let mut config = config(&names, BROKER_PORT);
    config.max_message_bytes = 1_000;
    let backend = connect_backend(config).await;
    let queue = broker
        .queue(&names.chat, &["#"], FieldTable::default())
        .await;
    let mut consumer = broker.consume(&queue).await;
    let body = "b".repeat(1_000);
    let bytes =
        pusher::rabbit::chat_json("alice@localhost/res1", &body, "bob@localhost/res2").len();
    let attempt = backend
        .deliver(&chat(ChatKind::Chat, Direction::In, &body))
        .await;
    match &attempt.verdict {
        Verdict::Fatal(why) => assert_eq!(why, &Reason::MessageTooLarge(bytes)),
        other => panic!("{other:?}"),
    }
    let small = chat(ChatKind::Chat, Direction::In, "small");
    assert_eq!(deliver(&backend, &small).await, confirmed());
    let (_, _, json) = next_message(&mut consumer).await;
    assert_eq!(json["message"], "small");
    let counters = backend.connections().expect("counters").snapshot();
    assert_eq!((counters.opened, counters.closed), (1, 0));
    broker.delete_exchanges(&names).await;
}

/// With the default retry budget (3 attempts), a connection cut turns no in-flight
/// publish into a failure: each is retried (counted) and arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_retries_in_flight_events_within_the_default_budget() {
    const EVENTS: usize = 5_000;
    let names = unique_names();
    let broker = Broker::open().await;
    let proxy = Proxy::start().await;
    let backend = connect_backend(config(&names, proxy.port)).await;
    let connections = backend.connections().expect("counters");
    let queue = broker
        .queue(&names.chat, &["#"], FieldTable::default())
        .await;
    let arrivals = Arrivals::start(broker.consume(&queue).await);
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        backend,
        InstanceConfig {
            concurrency: 1000,
            ..InstanceConfig::default()
        },
        Arc::new(pusher::report::NoReports),
    );
    for i in 0..EVENTS {
        instance.push(numbered(i)).expect("push");
    }
    wait_until("some deliveries", Duration::from_secs(10), || {
        arrivals.unique() >= EVENTS / 5
    })
    .await;
    let before_cut = instance.stats();
    proxy.cut();
    wait_until("every event", Duration::from_secs(30), || {
        arrivals.unique() == EVENTS
    })
    .await;
    let stats = instance.stop(Duration::from_secs(5)).await.stats;
    let counters = connections.snapshot();
    eprintln!(
        "cut with {} in flight: {} arrived, stats {stats:?}, connections {counters:?}",
        before_cut.in_flight,
        arrivals.total()
    );
    assert_eq!(
        (stats.accepted, stats.delivered, stats.failed, stats.dropped),
        (EVENTS as u64, EVENTS as u64, 0, 0)
    );
    assert!(counters.opened >= 2 && counters.closed >= 2, "{counters:?}");
    broker.delete_exchanges(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_exchanges_publish_with_delivery_mode_2() {
    let names = unique_names();
    let broker = Broker::open().await;
    let mut config = config(&names, BROKER_PORT);
    config.chat_exchange.durable = true;
    config.chat_exchange.persistent = true;
    let backend = connect_backend(config).await;
    let chat_queue = broker
        .queue(&names.chat, &["#"], FieldTable::default())
        .await;
    let groupchat_queue = broker
        .queue(&names.groupchat, &["#"], FieldTable::default())
        .await;
    let mut chat_consumer = broker.consume(&chat_queue).await;
    let mut groupchat_consumer = broker.consume(&groupchat_queue).await;
    for kind in [ChatKind::Chat, ChatKind::Groupchat] {
        assert_eq!(
            deliver(&backend, &chat(kind, Direction::In, "m")).await,
            confirmed()
        );
    }
    let persistent = next_delivery(&mut chat_consumer).await;
    assert_eq!(*persistent.properties.delivery_mode(), Some(2));
    let transient = next_delivery(&mut groupchat_consumer).await;
    assert_ne!(*transient.properties.delivery_mode(), Some(2));
    broker.delete_exchanges(&names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_name_over_255_bytes_fails_the_start_unsent() {
    let names = unique_names();
    let mut config = config(&names, BROKER_PORT);
    config.chat_exchange.name = "c".repeat(256);
    let error = start_error(config).await;
    assert!(error.contains("is 256 bytes; AMQP allows 255"), "{error}");
}
