//! Amazon SNS backend: MongooseIM's notifications published with aws-sdk-sns, one
//! `Publish` per event or, when several are queued for one topic, `PublishBatch`
//! (at most 10 entries, 256 KiB per call). Subscribers receive the same messages with
//! the same attributes either way.
//!
//! The SDK's own retries are off: the instance retries with MongooseIM's backoff, and
//! this module only says what is worth retrying (throttling, 5xx, no answer).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use aws_sdk_sns::config::http::HttpResponse;
use aws_sdk_sns::config::retry::RetryConfig;
use aws_sdk_sns::config::timeout::TimeoutConfig;
use aws_sdk_sns::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sns::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sns::primitives::Blob;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use aws_sdk_sns::Client;
use serde_json::json;

use crate::backend::{Attempt, AttemptOutcome, Backend, Verdict};
use crate::reason::Reason;

/// Entries one PublishBatch call may carry (an SNS limit).
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Bytes of messages and attributes one Publish or PublishBatch call may carry.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

pub struct SnsConfig {
    /// MongooseIM's `sns_host`: a host name (https is assumed) or a URL with scheme,
    /// port and path.
    pub sns_host: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Bound on one Publish or PublishBatch call, connecting included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Whether events queued for one topic share a PublishBatch call.
    pub batching: bool,
}

/// The secret never reaches a log line, not even through `{:?}`.
impl fmt::Debug for SnsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnsConfig")
            .field("sns_host", &self.sns_host)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("batching", &self.batching)
            .finish()
    }
}

/// The URL requests go to, as MongooseIM (erlcloud) reads `sns_host`: https unless
/// a scheme is given; port and path are kept.
pub fn endpoint_url(sns_host: &str) -> String {
    let url = if sns_host.contains("://") {
        sns_host.to_string()
    } else {
        format!("https://{sns_host}")
    };
    url.trim_end_matches('/').to_string()
}

/// `arn:aws:sns:{region}:{account_id}:{topic}`.
pub fn topic_arn(region: &str, account_id: &str, topic: &str) -> String {
    format!("arn:aws:sns:{region}:{account_id}:{topic}")
}

/// A message attribute's value; its variant is the SNS DataType.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    String(String),
    /// Kept as text: SNS carries numbers as decimal strings.
    Number(String),
    Binary(Vec<u8>),
}

impl AttributeValue {
    fn data_type(&self) -> &'static str {
        match self {
            AttributeValue::String(_) => "String",
            AttributeValue::Number(_) => "Number",
            AttributeValue::Binary(_) => "Binary",
        }
    }

    fn len(&self) -> usize {
        match self {
            AttributeValue::String(s) | AttributeValue::Number(s) => s.len(),
            AttributeValue::Binary(b) => b.len(),
        }
    }

    fn to_sdk(&self) -> Result<MessageAttributeValue, String> {
        let builder = MessageAttributeValue::builder().data_type(self.data_type());
        let builder = match self {
            AttributeValue::String(s) | AttributeValue::Number(s) => builder.string_value(s),
            AttributeValue::Binary(b) => builder.binary_value(Blob::new(b.clone())),
        };
        builder
            .build()
            .map_err(|e| format!("bad message attribute: {e}"))
    }
}

/// What MongooseIM publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// `{"present": bool, "user_id": guid}`.
    Presence { user_id: String, present: bool },
    /// `{"from_user_id", "message", "to_user_id"}`.
    Message {
        from_user_id: String,
        to_user_id: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnsEvent {
    pub topic_arn: String,
    pub notification: Notification,
    pub attributes: Vec<(String, AttributeValue)>,
}

impl SnsEvent {
    /// The message text. Keys come in jiffy's order (sorted), so the bytes are the
    /// ones MongooseIM sends.
    pub fn message(&self) -> String {
        match &self.notification {
            Notification::Presence { user_id, present } => {
                json!({"present": present, "user_id": user_id}).to_string()
            }
            Notification::Message {
                from_user_id,
                to_user_id,
                message,
            } => json!({
                "from_user_id": from_user_id,
                "message": message,
                "to_user_id": to_user_id,
            })
            .to_string(),
        }
    }

    /// Bytes held in memory and, closely, bytes SNS counts against its limit.
    pub fn size(&self) -> usize {
        let notification = match &self.notification {
            Notification::Presence { user_id, .. } => user_id.len() + 32,
            Notification::Message {
                from_user_id,
                to_user_id,
                message,
            } => from_user_id.len() + to_user_id.len() + message.len() + 48,
        };
        let attributes: usize = self
            .attributes
            .iter()
            .map(|(name, value)| name.len() + value.data_type().len() + value.len())
            .sum();
        self.topic_arn.len() + notification + attributes
    }

    fn sdk_attributes(&self) -> Result<Option<HashMap<String, MessageAttributeValue>>, String> {
        if self.attributes.is_empty() {
            return Ok(None);
        }
        self.attributes
            .iter()
            .map(|(name, value)| Ok((name.clone(), value.to_sdk()?)))
            .collect::<Result<HashMap<_, _>, String>>()
            .map(Some)
    }
}

pub struct SnsBackend {
    client: Client,
    batching: bool,
}

impl SnsBackend {
    /// Builds the client; nothing is sent until the first event.
    pub fn new(config: &SnsConfig) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_attempt_timeout(config.request_timeout)
            .operation_timeout(config.request_timeout)
            .build();
        let credentials = Credentials::new(
            &config.access_key_id,
            &config.secret_access_key,
            None,
            None,
            "mod_event_pusher_sns",
        );
        let sdk_config = aws_sdk_sns::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .endpoint_url(endpoint_url(&config.sns_host))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            .build();
        SnsBackend {
            client: Client::from_conf(sdk_config),
            batching: config.batching,
        }
    }

    async fn publish_one(&self, event: &SnsEvent) -> Attempt {
        let message = event.message();
        let bytes = event.size();
        let attributes = match event.sdk_attributes() {
            Ok(attributes) => attributes,
            Err(reason) => return Attempt::rejected(Reason::BadRequest(reason)),
        };
        let sent = self
            .client
            .publish()
            .topic_arn(&event.topic_arn)
            .message(message)
            .set_message_attributes(attributes)
            .send()
            .await;
        match sent {
            Ok(_) => published(bytes),
            Err(error) => failed_call(&error),
        }
    }

    /// One PublishBatch call for events of one topic, within SNS's limits.
    async fn publish_group(&self, events: &[&SnsEvent]) -> Vec<Attempt> {
        if let [single] = events {
            return vec![self.publish_one(single).await];
        }
        let mut answers: Vec<Option<Attempt>> = vec![None; events.len()];
        let mut entries = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let entry = event.sdk_attributes().and_then(|attributes| {
                PublishBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message(event.message())
                    .set_message_attributes(attributes)
                    .build()
                    .map_err(|e| format!("bad batch entry: {e}"))
            });
            match entry {
                Ok(entry) => entries.push(entry),
                Err(reason) => answers[index] = Some(Attempt::rejected(Reason::BadRequest(reason))),
            }
        }
        if !entries.is_empty() {
            let sent = self
                .client
                .publish_batch()
                .topic_arn(&events[0].topic_arn)
                .set_publish_batch_request_entries(Some(entries))
                .send()
                .await;
            match sent {
                Ok(output) => {
                    for ok in output.successful() {
                        if let Some(index) = entry_index(ok.id(), events.len()) {
                            answers[index] = Some(published(events[index].size()));
                        }
                    }
                    for failed in output.failed() {
                        if let Some(index) = entry_index(Some(failed.id()), events.len()) {
                            answers[index] = Some(failed_entry(
                                failed.code(),
                                failed.message().unwrap_or_default(),
                                failed.sender_fault(),
                            ));
                        }
                    }
                }
                Err(error) => {
                    let attempt = failed_call(&error);
                    for answer in answers.iter_mut().filter(|a| a.is_none()) {
                        *answer = Some(attempt.clone());
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Attempt::no_response(Reason::NoAnswerInBatch)))
            .collect()
    }
}

fn entry_index(id: Option<&str>, len: usize) -> Option<usize> {
    id?.parse::<usize>().ok().filter(|&i| i < len)
}

fn published(bytes: usize) -> Attempt {
    Attempt {
        verdict: Verdict::Delivered,
        outcome: AttemptOutcome::Published,
        wire_bytes: Some(bytes),
    }
}

fn is_throttling(code: &str) -> bool {
    code.contains("Throttl") || code == "TooManyRequestsException" || code == "RequestLimitExceeded"
}

fn failed_entry(code: &str, message: &str, sender_fault: bool) -> Attempt {
    let reason = Reason::ServiceError(format!("{code}: {message}"));
    let verdict = if sender_fault && !is_throttling(code) {
        Verdict::Fatal(reason.clone())
    } else {
        Verdict::Retry(reason.clone())
    };
    Attempt {
        verdict,
        outcome: AttemptOutcome::NoResponse(reason),
        wire_bytes: None,
    }
}

/// A whole call failed: SNS's error code and message when it answered, else why no
/// answer came. Throttling, 5xx and no answer are retried; other refusals are final.
fn failed_call<E>(error: &SdkError<E, HttpResponse>) -> Attempt
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let service = context.err();
            // Some SNS-compatible servers nest <Error> where the SDK does not look:
            // read the code and message from the body then.
            let body = context
                .raw()
                .body()
                .bytes()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let code = service
                .code()
                .or_else(|| xml_text(&body, "Code"))
                .unwrap_or("UnknownError")
                .to_string();
            let message = service
                .message()
                .or_else(|| xml_text(&body, "Message"))
                .unwrap_or_default();
            let reason = Reason::ServiceError(format!("{code}: {message} (HTTP {status})"));
            let verdict = if status >= 500 || status == 429 || is_throttling(&code) {
                Verdict::Retry(reason)
            } else {
                Verdict::Fatal(reason)
            };
            Attempt {
                verdict,
                outcome: AttemptOutcome::Response(status),
                wire_bytes: None,
            }
        }
        SdkError::ConstructionFailure(_) => Attempt::rejected(Reason::BadRequest(format!(
            "request not built: {}",
            DisplayErrorContext(error)
        ))),
        SdkError::TimeoutError(_) => Attempt::no_response(Reason::Timeout),
        _ => Attempt::no_response(Reason::Connection(DisplayErrorContext(error).to_string())),
    }
}

/// The text of the first `<tag>` element, found by plain search (error bodies are
/// small and flat).
fn xml_text<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&format!("</{tag}>"))?;
    Some(body[start..end].trim())
}

/// Splits events into PublishBatch calls: one topic per call, at most 10 entries and
/// 256 KiB each, in queue order within a topic.
pub fn batch_groups<'a>(events: &[&'a SnsEvent]) -> Vec<Vec<(usize, &'a SnsEvent)>> {
    let mut groups: Vec<(Vec<(usize, &'a SnsEvent)>, usize)> = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let size = event.size();
        let open = groups.iter_mut().find(|(group, bytes)| {
            group[0].1.topic_arn == event.topic_arn
                && group.len() < MAX_BATCH_ENTRIES
                && bytes + size <= MAX_PAYLOAD_BYTES
        });
        match open {
            Some((group, bytes)) => {
                group.push((index, event));
                *bytes += size;
            }
            None => groups.push((vec![(index, event)], size)),
        }
    }
    groups.into_iter().map(|(group, _)| group).collect()
}

impl Backend for SnsBackend {
    type Event = SnsEvent;

    async fn deliver(&self, event: &SnsEvent) -> Attempt {
        self.publish_one(event).await
    }

    fn batch_limit(&self) -> usize {
        if self.batching {
            MAX_BATCH_ENTRIES
        } else {
            1
        }
    }

    async fn deliver_batch(&self, events: &[&SnsEvent]) -> Vec<Attempt> {
        let groups = batch_groups(events);
        let calls = groups.iter().map(|group| async move {
            let members: Vec<&SnsEvent> = group.iter().map(|(_, e)| *e).collect();
            let answers = self.publish_group(&members).await;
            group
                .iter()
                .map(|(i, _)| *i)
                .zip(answers)
                .collect::<Vec<_>>()
        });
        let mut attempts: Vec<Option<Attempt>> = vec![None; events.len()];
        for (index, attempt) in futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
        {
            attempts[index] = Some(attempt);
        }
        attempts
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Attempt::no_response(Reason::NoAnswerInBatch)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str, message: &str) -> SnsEvent {
        SnsEvent {
            topic_arn: topic_arn("eu-west-1", "123456789012", topic),
            notification: Notification::Message {
                from_user_id: "alice@localhost".into(),
                to_user_id: "bob@localhost".into(),
                message: message.into(),
            },
            attributes: vec![],
        }
    }

    #[test]
    fn sns_host_is_read_as_mongooseim_reads_it() {
        assert_eq!(
            endpoint_url("sns.eu-west-1.amazonaws.com"),
            "https://sns.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            endpoint_url("http://127.0.0.1:4566/sns/"),
            "http://127.0.0.1:4566/sns"
        );
        assert_eq!(endpoint_url("localhost:9911"), "https://localhost:9911");
    }

    #[test]
    fn messages_are_jiffy_shaped() {
        let presence = SnsEvent {
            notification: Notification::Presence {
                user_id: "alice@localhost".into(),
                present: true,
            },
            ..event("t", "")
        };
        assert_eq!(
            presence.message(),
            r#"{"present":true,"user_id":"alice@localhost"}"#
        );
        assert_eq!(
            event("t", "héllo \"you\"").message(),
            r#"{"from_user_id":"alice@localhost","message":"héllo \"you\"","to_user_id":"bob@localhost"}"#
        );
        assert_eq!(
            topic_arn("eu-west-1", "123456789012", "pm"),
            "arn:aws:sns:eu-west-1:123456789012:pm"
        );
    }

    #[test]
    fn batches_split_by_topic_count_and_size() {
        let small: Vec<SnsEvent> = (0..12)
            .map(|i| event(if i % 3 == 0 { "a" } else { "b" }, "hi"))
            .collect();
        let refs: Vec<&SnsEvent> = small.iter().collect();
        let groups = batch_groups(&refs);
        let shapes: Vec<(usize, usize)> = groups.iter().map(|g| (g[0].0, g.len())).collect();
        // "a" at 0, 3, 6, 9; "b" at the other 8: each fits one call, order kept.
        assert_eq!(shapes, vec![(0, 4), (1, 8)]);
        assert!(groups.iter().all(|g| g.windows(2).all(|w| w[0].0 < w[1].0)));

        let big = "x".repeat(100 * 1024);
        let large: Vec<SnsEvent> = (0..3).map(|_| event("a", &big)).collect();
        let refs: Vec<&SnsEvent> = large.iter().collect();
        let sizes: Vec<usize> = batch_groups(&refs).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 1]);

        let many: Vec<SnsEvent> = (0..25).map(|_| event("a", "x")).collect();
        let refs: Vec<&SnsEvent> = many.iter().collect();
        let sizes: Vec<usize> = batch_groups(&refs).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let config = SnsConfig {
            sns_host: "localhost".into(),
            region: "eu-west-1".into(),
            access_key_id: "AKIA".into(),
            secret_access_key: "very-secret-key".into(),
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            batching: true,
        };
        assert!(!format!("{config:?}").contains("very-secret-key"));
    }

    #[test]
    fn error_code_and_message_are_found_in_nested_bodies() {
        let body = "<ErrorResponse><Errors><Error><Code>InvalidClientTokenId</Code>\
                    <Message>The security token is invalid.</Message></Error></Errors></ErrorResponse>";
        assert_eq!(xml_text(body, "Code"), Some("InvalidClientTokenId"));
        assert_eq!(
            xml_text(body, "Message"),
            Some("The security token is invalid.")
        );
        assert_eq!(xml_text(body, "Type"), None);
    }

    #[test]
    fn entry_failures_retry_unless_the_sender_is_at_fault() {
        assert!(matches!(
            failed_entry("InternalError", "oops", false).verdict,
            Verdict::Retry(_)
        ));
        assert!(matches!(
            failed_entry("InvalidParameter", "too long", true).verdict,
            Verdict::Fatal(_)
        ));
        assert!(matches!(
            failed_entry("Throttling", "slow down", true).verdict,
            Verdict::Retry(_)
        ));
    }
}
