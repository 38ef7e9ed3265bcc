//! rabbit-ceiling: the benchmark's ceiling, a raw lapin publish loop with nothing
//! around it (no queue, no workers, no retries), so that the rabbit backend's rate can
//! be read as a fraction of what lapin itself achieves against the same broker.
//!
//! ```text
//! rabbit_ceiling --uri URI --exchange NAME --messages N --window W [--size BYTES]
//! ```
//!
//! Declares the topic exchange NAME (non-durable; an existing exchange of the same
//! name is used as it is), publishes N JSON messages of about BYTES bytes (default
//! 100) to it, and prints one line:
//!
//! ```text
//! {"messages": N, "window": W, "seconds": S, "per_second": R}
//! ```
//!
//! W = 0: no publisher confirms; up to 1000 messages queued for writing at a time,
//!        and the time ends when the broker has handled the last one (a round trip
//!        on the same channel after it), not merely when it was written.
//! W = 1: confirms, each message confirmed before the next is published.
//! W > 1: confirms, at most W messages unconfirmed at a time (a pipelined window).
//! Nothing needs to be bound to the exchange: the broker confirms what it routes
//! nowhere just as well, and drops it, so the broker's queues do not grow.
//! Errors go to stderr with exit status 1.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::process::exit;
use std::task::Poll;
use std::time::Instant;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

const USAGE: &str =
    "usage: rabbit_ceiling --uri URI --exchange NAME --messages N --window W [--size BYTES]";

#[derive(Debug)]
struct Args {
    uri: String,
    exchange: String,
    messages: u64,
    window: usize,
    size: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut uri, mut exchange, mut messages, mut window) = (None, None, None, None);
    let mut size = 100;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what} must be a non-negative integer, not {value:?}"))
        };
        match flag.as_str() {
            "--uri" => uri = Some(value.clone()),
            "--exchange" => exchange = Some(value.clone()),
            "--messages" => messages = Some(number("--messages")?),
            "--window" => window = Some(number("--window")? as usize),
            "--size" => size = number("--size")? as usize,
            other => return Err(format!("unknown option {other}")),
        }
    }
    let missing = |what: &str| format!("{what} is required");
    Ok(Args {
        uri: uri.ok_or_else(|| missing("--uri"))?,
        exchange: exchange.ok_or_else(|| missing("--exchange"))?,
        messages: messages.ok_or_else(|| missing("--messages"))?,
        window: window.ok_or_else(|| missing("--window"))?,
        size,
    })
}

/// A chat event as the rabbit backend publishes it, its message padded so that the
/// whole JSON is `size` bytes (or the smallest such event, if `size` is below that).
fn payload(size: usize) -> Vec<u8> {
    let frame = |message: &str| {
        format!(
            r#"{{"to_user_id":"bob@localhost/res1","message":"{message}","from_user_id":"alice@localhost/res1"}}"#
        )
    };
    let overhead = frame("").len();
    frame(&"x".repeat(size.saturating_sub(overhead))).into_bytes()
}

async fn declare(connection: &Connection, exchange: &str) -> Result<(), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let declared = channel
        .exchange_declare(
            exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    if declared.is_ok() {
        return Ok(());
    }
    // It exists with other properties (the backend declared it durable, say): a
    // refused declaration closes the channel, so check on a new one that it exists.
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
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
        .map_err(|e| format!("cannot declare exchange {exchange:?}: {e}"))
}

async fn publish(
    channel: &Channel,
    args: &Args,
    payload: &[u8],
    properties: &BasicProperties,
) -> Result<PublisherConfirm, String> {
    channel
        .basic_publish(
            &args.exchange,
            "ceiling.chat_msg_sent",
            BasicPublishOptions::default(),
            payload,
            properties.clone(),
        )
        .await
        .map_err(|e| format!("publish failed: {e}"))
}

async fn confirmed(confirm: PublisherConfirm) -> Result<(), String> {
    match confirm.await {
        Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => Ok(()),
        Ok(Confirmation::Nack(_)) => Err("the broker nacked a message".into()),
        Err(e) => Err(format!("confirm failed: {e}")),
    }
}

/// Messages whose frames may be waiting to be written when confirms are off: enough to
/// keep the socket busy, few enough to bound memory.
const WRITE_WINDOW: usize = 1000;

type InFlight<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// Polls once: lapin takes the delivery tag and queues the frames in the first poll
/// of a publish, so messages go out in the order they are started.
async fn start(message: &mut InFlight<'_>) -> Poll<Result<(), String>> {
    poll_fn(|cx| Poll::Ready(message.as_mut().poll(cx))).await
}

/// Publishes every message; returns the seconds it took.
async fn run(args: &Args) -> Result<f64, String> {
    let connection = Connection::connect(&args.uri, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.uri))?;
    declare(&connection, &args.exchange).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let confirms = args.window > 0;
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("cannot enable confirms: {e}"))?;
    }
    let payload = payload(args.size);
    let properties = BasicProperties::default().with_content_type("application/json".into());
    let limit = if confirms { args.window } else { WRITE_WINDOW };

    let started = Instant::now();
    // Each message in flight is written, then (with confirms) confirmed; they are
    // started in order and awaited oldest first, which bounds the number unconfirmed
    // (confirms come back in publish order). The others make progress meanwhile:
    // lapin's own threads write frames and resolve confirms.
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(limit);
    for _ in 0..args.messages {
        let mut message: InFlight = Box::pin(async {
            let confirm = publish(&channel, args, &payload, &properties).await?;
            if confirms {
                confirmed(confirm).await
            } else {
                Ok(())
            }
        });
        match start(&mut message).await {
            Poll::Ready(result) => result?,
            Poll::Pending => in_flight.push_back(message),
        }
        while in_flight.len() >= limit {
            if let Some(oldest) = in_flight.pop_front() {
                oldest.await?;
            }
        }
    }
    for message in in_flight {
        message.await?;
    }
    if !confirms {
        // Written is not received: one round trip on the same channel, which the
        // broker answers only after it has handled every publish before it.
        channel
            .exchange_declare(
                &args.exchange,
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("final round trip failed: {e}"))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = connection.close(200, "done").await;
    Ok(seconds)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(reason) => {
            eprintln!("{reason}\n{USAGE}");
            exit(2);
        }
    };
    match run(&args).await {
        Ok(seconds) => {
            let per_second = if seconds > 0.0 {
                args.messages as f64 / seconds
            } else {
                0.0
            };
            println!(
                "{{\"messages\": {}, \"window\": {}, \"seconds\": {:.3}, \"per_second\": {:.0}}}",
                args.messages, args.window, seconds, per_second
            );
        }
        Err(reason) => {
            eprintln!("rabbit_ceiling: {reason}");
            exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn payload_is_json_of_the_requested_size() {
        for size in [100, 1000, 64 * 1024] {
            let json = payload(size);
            assert_eq!(json.len(), size);
            let parsed: serde_json::Value =
                serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed["to_user_id"], "bob@localhost/res1");
        }
        assert!(serde_json::from_slice::<serde_json::Value>(&payload(1)).is_ok());
    }

    #[test]
    fn arguments_are_parsed_and_checked() {
        let parsed = args(&[
            "--uri",
            "amqp://h",
            "--exchange",
            "x",
            "--messages",
            "10",
            "--window",
            "0",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((parsed.messages, parsed.window, parsed.size), (10, 0, 100));
        assert!(args(&["--uri", "amqp://h"]).is_err());
        assert!(args(&["--messages", "-1"]).is_err());
        assert!(args(&["--bogus", "1"]).is_err());
    }
}
