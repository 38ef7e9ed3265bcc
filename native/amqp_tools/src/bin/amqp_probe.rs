//! amqp-probe: a test consumer that reports, line by line on stdout, what arrives at
//! RabbitMQ exchanges.
//!
//! ```text
//! amqp-probe [--uri URI] [--declare EXCHANGE=TYPE[:durable]]... [--delete EXCHANGE]...
//!            [--delete-queue QUEUE]... [--queue QUEUE] [--bind EXCHANGE=ROUTING_KEY]...
//!            [--exit]
//! ```
//!
//! In this order it declares the `--declare` exchanges (non-durable unless `:durable`),
//! deletes the `--delete` exchanges and `--delete-queue` queues, declares its queue
//! and binds it to every `--bind` pair (the exchanges must exist), then prints
//! `ready`. The queue is an exclusive, auto-delete, server-named one, or with
//! `--queue` the durable classic queue of that name (kept when the probe exits, and
//! by the broker across restarts). With `--exit` it stops there (declaring no queue
//! of its own without `--queue`); otherwise it prints one line per delivery,
//!
//! ```text
//! msg <exchange> <routing key> <payload as lowercase hex>
//! ```
//!
//! (hex, so any payload bytes survive line framing), acks it, and exits when stdin
//! closes. Any failure before `ready` prints `error <reason>` and exits with status 1;
//! one after it (consuming) exits with status 2, the reason on stderr.
//! Every line is flushed as it is written. The URI defaults to
//! `amqp://guest:guest@127.0.0.1:5672/%2f`.

use std::io::Write;
use std::process::exit;
use std::sync::mpsc;

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::io::AsyncReadExt;

const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PREFETCH: u16 = 1000;

#[derive(Debug, Default)]
struct Args {
    uri: Option<String>,
    declares: Vec<(String, String, bool)>,
    deletes: Vec<String>,
    queue_deletes: Vec<String>,
    queue: Option<String>,
    binds: Vec<(String, String)>,
    exit_when_ready: bool,
}

fn usage() -> String {
    "usage: amqp-probe [--uri URI] [--declare EXCHANGE=TYPE[:durable]]... \
     [--delete EXCHANGE]... [--delete-queue QUEUE]... [--queue QUEUE] \
     [--bind EXCHANGE=ROUTING_KEY]... [--exit]"
        .to_string()
}

fn split_pair(value: &str, what: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((left, right)) if !left.is_empty() => Ok((left.to_string(), right.to_string())),
        _ => Err(format!("bad {what} {value:?}; {}", usage())),
    }
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args::default();
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--uri" => args.uri = Some(value()?),
            "--declare" => {
                let (name, kind) = split_pair(&value()?, "--declare")?;
                let (kind, durable) = match kind.strip_suffix(":durable") {
                    Some(kind) => (kind.to_string(), true),
                    None => (kind, false),
                };
                args.declares.push((name, kind, durable));
            }
            "--delete" => args.deletes.push(value()?),
            "--delete-queue" => args.queue_deletes.push(value()?),
            "--queue" => args.queue = Some(value()?),
            "--bind" => args.binds.push(split_pair(&value()?, "--bind")?),
            "--exit" => args.exit_when_ready = true,
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}; {}", usage())),
        }
    }
    Ok(args)
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        "topic" => ExchangeKind::Topic,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

/// Writes a line and flushes; a closed stdout means the reader is gone: exit quietly.
fn say(line: &[u8]) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if out
        .write_all(line)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .is_err()
    {
        exit(0);
    }
}

fn fail(reason: impl std::fmt::Display) -> ! {
    // One line: the reader frames by lines.
    let reason = reason.to_string().replace('\n', " ");
    say(format!("error {reason}").as_bytes());
    exit(1);
}

fn hex_line(exchange: &str, routing_key: &str, payload: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut line = Vec::with_capacity(exchange.len() + routing_key.len() + 2 * payload.len() + 8);
    line.extend_from_slice(b"msg ");
    line.extend_from_slice(exchange.as_bytes());
    line.push(b' ');
    line.extend_from_slice(routing_key.as_bytes());
    line.push(b' ');
    for byte in payload {
        line.push(HEX[usize::from(byte >> 4)]);
        line.push(HEX[usize::from(byte & 0x0f)]);
    }
    line
}

async fn set_up(channel: &Channel, args: &Args) -> Result<String, String> {
    for (name, kind, durable) in &args.declares {
        let options = ExchangeDeclareOptions {
            durable: *durable,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(name, exchange_kind(kind), options, FieldTable::default())
            .await
            .map_err(|e| format!("declaring exchange {name}: {e}"))?;
    }
    for name in &args.deletes {
        channel
            .exchange_delete(name, ExchangeDeleteOptions::default())
            .await
            .map_err(|e| format!("deleting exchange {name}: {e}"))?;
    }
    for name in &args.queue_deletes {
        channel
            .queue_delete(name, QueueDeleteOptions::default())
            .await
            .map_err(|e| format!("deleting queue {name}: {e}"))?;
    }
    if args.exit_when_ready && args.queue.is_none() {
        return Ok(String::new());
    }
    let (name, options) = match &args.queue {
        Some(name) => (
            name.as_str(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
        ),
        None => (
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
        ),
    };
    let queue = channel
        .queue_declare(name, options, FieldTable::default())
        .await
        .map_err(|e| format!("declaring the queue: {e}"))?;
    let queue = queue.name().as_str().to_string();
    for (exchange, routing_key) in &args.binds {
        channel
            .queue_bind(
                &queue,
                exchange,
                routing_key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("binding to exchange {exchange} with key {routing_key}: {e}"))?;
    }
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| format!("setting the prefetch: {e}"))?;
    Ok(queue)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args(std::env::args().skip(1)).unwrap_or_else(|e| fail(e));
    let uri = args.uri.clone().unwrap_or_else(|| DEFAULT_URI.to_string());
    let connection = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| fail(format!("connecting to {uri}: {e}")));
    let channel = connection
        .create_channel()
        .await
        .unwrap_or_else(|e| fail(format!("opening a channel: {e}")));
    let queue = set_up(&channel, &args).await.unwrap_or_else(|e| fail(e));
    if args.exit_when_ready {
        say(b"ready");
        let _ = connection.close(200, "done").await;
        return;
    }

    // Deliveries are handed, in arrival order, to a plain thread that writes the lines;
    // the delegate's synchronous part runs in order, its future (the ack) later.
    let (lines, line_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for line in line_rx {
            say(&line);
        }
    });
    // Ready once the bindings exist: whatever is published from now on is kept in the
    // queue. Said before consuming, so that the messages a durable queue holds
    // already come after it.
    say(b"ready");
    let consumer = channel
        .basic_consume(
            &queue,
            "amqp-probe",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| {
            eprintln!("amqp-probe: consuming from {queue}: {e}");
            exit(2);
        });
    consumer.set_delegate(move |delivery: DeliveryResult| {
        let delivery = match delivery {
            Ok(Some(delivery)) => Some(delivery),
            Ok(None) => None,
            Err(e) => {
                eprintln!("amqp-probe: consumer error: {e}");
                exit(2);
            }
        };
        if let Some(delivery) = &delivery {
            let _ = lines.send(hex_line(
                delivery.exchange.as_str(),
                delivery.routing_key.as_str(),
                &delivery.data,
            ));
        }
        async move {
            if let Some(delivery) = delivery {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        }
    });

    // Runs until stdin closes (the owner of the port is gone or closed it).
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    exit(0);
}
