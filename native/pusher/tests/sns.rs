//! The SNS backend against a scripted SNS-compatible server started by the test:
//! what is retried (throttling, entries SNS failed on its side) and what is final.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{wait_until, Collect, RecordingServer, Reply};
use pusher::retry::Jitter;
use pusher::sns::{topic_arn, Notification, SnsBackend, SnsConfig, SnsEvent};
use pusher::{Envelope, Instance, InstanceConfig, QueueLimits, RetryPolicy, StatsSnapshot};

const NS: &str = "http://sns.amazonaws.com/doc/2010-03-31/";

/// One scripted answer: status and body, after a delay.
type Answer = (u16, String, Duration);

/// A server answering each request (its index from 0, its body) as `answer` says.
async fn start_server(
    answer: impl Fn(usize, &str) -> Answer + Send + Sync + 'static,
) -> RecordingServer {
    RecordingServer::start(move |index, request| {
        let (status, text, delay) = answer(index, &request.text());
        Reply::status(status).body(text).after(delay)
    })
    .await
}

fn published() -> String {
    format!(
        "<PublishResponse xmlns=\"{NS}\"><PublishResult><MessageId>m</MessageId></PublishResult>\
         <ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></PublishResponse>"
    )
}

fn error(code: &str, message: &str) -> String {
    format!(
        "<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>{code}</Code>\
         <Message>{message}</Message></Error><RequestId>r</RequestId></ErrorResponse>"
    )
}

/// Every entry id of a PublishBatch body succeeds but `failed_id`, which fails on
/// SNS's side (SenderFault false).
fn batch_answer(body: &str, failed_id: &str) -> String {
    let ids: Vec<&str> = body
        .split('&')
        .filter(|kv| kv.starts_with("PublishBatchRequestEntries.member.") && kv.contains(".Id="))
        .filter_map(|kv| kv.split('=').nth(1))
        .collect();
    let ok: String = ids
        .iter()
        .filter(|id| **id != failed_id)
        .map(|id| format!("<member><Id>{id}</Id><MessageId>m{id}</MessageId></member>"))
        .collect();
    format!(
        "<PublishBatchResponse xmlns=\"{NS}\"><PublishBatchResult><Successful>{ok}</Successful>\
         <Failed><member><Id>{failed_id}</Id><Code>InternalError</Code><Message>try again</Message>\
         <SenderFault>false</SenderFault></member></Failed></PublishBatchResult>\
         <ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></PublishBatchResponse>"
    )
}

fn start(url: &str, batching: bool, concurrency: usize) -> Instance<SnsBackend> {
    let backend = SnsBackend::new(&SnsConfig {
        sns_host: url.to_string(),
        region: "eu-west-1".into(),
        access_key_id: "AKIAEXAMPLE".into(),
        secret_access_key: "secret".into(),
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        batching,
    });
    let config = InstanceConfig {
        queue: QueueLimits::default(),
        retry: RetryPolicy {
            max_attempts: 3,
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            deadline: Duration::from_secs(30),
            jitter: Jitter::MinusBase,
        },
        concurrency,
    };
    Instance::start(
        &tokio::runtime::Handle::current(),
        backend,
        config,
        Arc::new(Collect::default()),
    )
}

fn event(message: &str) -> Envelope<SnsEvent> {
    let event = SnsEvent {
        topic_arn: topic_arn("eu-west-1", "123456789012", "pm"),
        notification: Notification::Message {
            from_user_id: "alice@localhost".into(),
            to_user_id: "bob@localhost".into(),
            message: message.into(),
        },
        attributes: vec![],
    };
    let size = event.size();
    Envelope::new(event, b"alice", size)
}

async fn settled(instance: &Instance<SnsBackend>, events: u64) -> StatsSnapshot {
    for _ in 0..500 {
        let stats = instance.stats();
        if stats.delivered + stats.failed >= events && stats.in_flight == 0 {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not settled: {:?}", instance.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_and_invalid_parameters_are_not() {
    let server = start_server(|index, body| {
        let none = Duration::ZERO;
        if body.contains(
            "Message=%7B%22from_user_id%22%3A%22alice%40localhost%22%2C%22message%22%3A%22bad",
        ) {
            (
                400,
                error("InvalidParameter", "Invalid parameter: Message too long"),
                none,
            )
        } else if index < 2 {
            (400, error("Throttling", "Rate exceeded"), none)
        } else {
            (200, published(), none)
        }
    })
    .await;
    let instance = start(&server.url(), false, 1);
    instance.push(event("throttled")).expect("push");
    let stats = settled(&instance, 1).await;
    assert_eq!((stats.delivered, stats.retried, stats.failed), (1, 2, 0));
    instance.push(event("bad")).expect("push");
    let stats = settled(&instance, 2).await;
    assert_eq!((stats.delivered, stats.retried, stats.failed), (1, 2, 1));
    assert_eq!(server.count(), 4);
}

/// MongooseIM's sns_host may carry a path (an SNS-compatible proxy, say): it is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_in_sns_host_is_kept() {
    let server = start_server(|_, _| (200, published(), Duration::ZERO)).await;
    let instance = start(&format!("{}/sns/eu", server.url()), false, 1);
    instance.push(event("via a path")).expect("push");
    let stats = settled(&instance, 1).await;
    assert_eq!(stats.delivered, 1);
    let paths: Vec<String> = server.received().into_iter().map(|r| r.path).collect();
    assert!(paths == ["/sns/eu"] || paths == ["/sns/eu/"], "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_entries_failed_by_sns_are_retried_alone() {
    let server = start_server(|index, body| {
        if body.contains("Action=PublishBatch") {
            (200, batch_answer(body, "1"), Duration::ZERO)
        } else if index == 0 {
            // Slow, so that the next events queue up behind it and form a batch.
            (200, published(), Duration::from_millis(300))
        } else {
            (200, published(), Duration::ZERO)
        }
    })
    .await;
    let instance = start(&server.url(), true, 1);
    instance.push(event("first")).expect("push");
    wait_until(
        "the first publish at the server",
        Duration::from_secs(5),
        || server.count() == 1,
    )
    .await;
    for message in ["b0", "b1", "b2"] {
        instance.push(event(message)).expect("push");
    }
    let stats = settled(&instance, 4).await;
    assert_eq!((stats.delivered, stats.retried, stats.failed), (4, 1, 0));
    let received = server.texts();
    let actions: Vec<&str> = received
        .iter()
        .map(|b| {
            if b.contains("Action=PublishBatch") {
                "batch"
            } else {
                "publish"
            }
        })
        .collect();
    assert_eq!(actions, vec!["publish", "batch", "publish"]);
    assert_eq!(received[1].matches(".Id=").count(), 3);
    // The retry carries the entry SNS failed: b1.
    assert!(received[2].contains("b1"), "{}", received[2]);
}
