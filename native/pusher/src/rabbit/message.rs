//! What an event becomes on the wire: exchange, routing key and JSON payload, as
//! MongooseIM's mod_event_pusher_rabbit publishes it.

use super::config::{RabbitConfig, MAX_SHORT_STRING_BYTES};
use crate::reason::Reason;

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
    /// `{"present": present, "user_id": user_jid}` to the presence exchange, routing
    /// key `bare_jid`.
    Presence {
        user_jid: String,
        bare_jid: String,
        present: bool,
    },
    /// `{"from_user_id": from_jid, "message": message, "to_user_id": to_jid}` to the
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

/// One AMQP message, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: String,
    /// JSON, UTF-8.
    pub payload: Vec<u8>,
    /// Delivery mode 2.
    pub persistent: bool,
}

impl Outgoing<'_> {
    /// Why the broker could never take this message, if so: the reason a failed event
    /// is reported with, its first word a token (`routing_key_too_long`,
    /// `message_too_large`) and the rest the sizes.
    /// A routing key over AMQP's 255 bytes (a bare JID that long cannot be one), or a
    /// body over `max_message_bytes` (the broker's max_message_size).
    pub fn unpublishable(&self, max_message_bytes: usize) -> Option<Reason> {
        let key_bytes = self.routing_key.len();
        if key_bytes > MAX_SHORT_STRING_BYTES {
            return Some(Reason::RoutingKeyTooLong(key_bytes));
        }
        let body_bytes = self.payload.len();
        if body_bytes > max_message_bytes {
            return Some(Reason::MessageTooLarge(body_bytes));
        }
        None
    }
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
            persistent: config.presence_exchange.persistent,
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
                payload: chat_json(from_jid, message, to_jid),
                persistent: exchange.persistent,
            }
        }
    }
}

// The payloads are the JSON objects MongooseIM 6.4 publishes (it jiffy-encodes an
// Erlang map). Their keys are written in Erlang term order (sorted): jiffy writes a
// map's keys in the VM's internal map order, which on OTP 26 and later (6.4 needs 26)
// follows the order the atoms were created in, so 6.4's own key order is not fixed.
// Strings are escaped byte for byte as jiffy escapes them.

/// `{"present":true|false,"user_id":"<user_jid>"}`
pub fn presence_json(user_jid: &str, present: bool) -> Vec<u8> {
    let mut json = Vec::with_capacity(user_jid.len() + 40);
    json.extend_from_slice(if present {
        b"{\"present\":true,\"user_id\":"
    } else {
        b"{\"present\":false,\"user_id\":"
    });
    push_json_string(&mut json, user_jid);
    json.push(b'}');
    json
}

/// `{"from_user_id":"<from>","message":"<message>","to_user_id":"<to>"}`
pub fn chat_json(from_jid: &str, message: &str, to_jid: &str) -> Vec<u8> {
    let mut json = Vec::with_capacity(to_jid.len() + message.len() + from_jid.len() + 64);
    json.extend_from_slice(b"{\"from_user_id\":");
    push_json_string(&mut json, from_jid);
    json.extend_from_slice(b",\"message\":");
    push_json_string(&mut json, message);
    json.extend_from_slice(b",\"to_user_id\":");
    push_json_string(&mut json, to_jid);
    json.push(b'}');
    json
}

/// Appends `text` as a JSON string, escaped as jiffy (MongooseIM's encoder) escapes
/// it: quote, backslash and the control characters below 0x20 (`\b \f \n \r \t` by
/// name, the others as `\u00XX` in upper case); everything else, `/` and DEL included,
/// as UTF-8.
pub(super) fn push_json_string(json: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    json.reserve(text.len() + 2);
    json.push(b'"');
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let named: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        json.extend_from_slice(&bytes[plain_from..at]);
        plain_from = at + 1;
        if named.is_empty() {
            json.extend_from_slice(b"\\u00");
            json.push(HEX[usize::from(byte >> 4)]);
            json.push(HEX[usize::from(byte & 0x0f)]);
        } else {
            json.extend_from_slice(named);
        }
    }
    json.extend_from_slice(&bytes[plain_from..]);
    json.push(b'"');
}

/// AMQP's delivery mode of a persistent message.
pub(super) const PERSISTENT: u8 = 2;

#[cfg(test)]
mod tests {
    use super::super::config::fixtures::config;
    use super::*;

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

    fn decoded(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON: {e}"))
    }

    /// The one place the exact bytes are asserted (elsewhere, decoded JSON is

    #[test]
    fn payloads_are_mongooseims_objects_with_sorted_keys() {
        assert_eq!(
            text(presence_json("alice@localhost/res1", true)),
            r#"{"present":true,"user_id":"alice@localhost/res1"}"#
        );
        assert_eq!(
            text(presence_json("alice@localhost/res1", false)),
            r#"{"present":false,"user_id":"alice@localhost/res1"}"#
        );
        assert_eq!(
            text(chat_json(
                "alice@localhost/res1",
                "hi",
                "bob@localhost/res2"
            )),
            r#"{"from_user_id":"alice@localhost/res1","message":"hi","to_user_id":"bob@localhost/res2"}"#
        );
    }

    #[test]
    fn presence_goes_to_the_presence_exchange_keyed_by_bare_jid() {
        let config = config();
        for present in [true, false] {
            let event = RabbitEvent::Presence {
                user_jid: "alice@localhost/res1".into(),
                bare_jid: "alice@localhost".into(),
                present,
            };
            let message = outgoing(&config, &event);
            assert_eq!(message.exchange, "presence");
            assert_eq!(message.routing_key, "alice@localhost");
            assert_eq!(
                decoded(&message.payload),
                serde_json::json!({"user_id": "alice@localhost/res1", "present": present})
            );
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
                decoded(&message.payload),
                serde_json::json!({
                    "to_user_id": "bob@localhost/res2",
                    "message": "hi",
                    "from_user_id": "alice@localhost/res1"
                })
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

    /// The bytes jiffy 1.1.1 (OTP 25) and 1.1.2 (OTP 27) write for this string: named
    /// escapes, other control characters as upper-case `\u00XX`, and `/`, DEL and
    /// everything above ASCII as they are.
    #[test]
    fn strings_are_escaped_as_jiffy_escapes_them() {
        let body =
            "Za\"b\\ c\n\t\r\u{8}\u{c}\u{0}\u{1}\u{b}\u{e}\u{1f}\u{7f}/ </script> \u{2028}é😀";
        let jiffy: &[u8] = b"\"Za\\\"b\\\\ c\\n\\t\\r\\b\\f\\u0000\\u0001\\u000B\\u000E\\u001F\x7f/ </script> \xe2\x80\xa8\xc3\xa9\xf0\x9f\x98\x80\"";
        let mut json = Vec::new();
        push_json_string(&mut json, body);
        assert_eq!(json, jiffy, "{}", String::from_utf8_lossy(&json));
        let parsed: serde_json::Value =
            serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, body);
    }

    #[test]
    fn jids_with_quotes_are_escaped_too() {
        let json = presence_json("a\"b@h/r\\", true);
        assert_eq!(decoded(&json)["user_id"], "a\"b@h/r\\");
    }

    #[test]
    fn a_large_body_round_trips() {
        let body = "ąę€😀\"\\\n\u{1}".repeat(8 * 1024);
        let json = chat_json("from@h", &body, "to@h");
        assert_eq!(decoded(&json)["message"], body.as_str());
    }

    #[test]
    fn a_routing_key_over_255_bytes_is_unpublishable() {
        let config = config();
        // "<user>@localhost.chat_msg_sent": 10 + 14 bytes around the user.
        let event = |user: &str| RabbitEvent::Chat {
            kind: ChatKind::Chat,
            direction: Direction::In,
            from_jid: format!("{user}@localhost/r"),
            to_jid: "bob@localhost".into(),
            message: "x".into(),
            routing_bare_jid: format!("{user}@localhost"),
        };
        let fits = outgoing(&config, &event(&"a".repeat(255 - 24)));
        assert_eq!(fits.routing_key.len(), 255);
        assert_eq!(fits.unpublishable(config.max_message_bytes), None);
        let too_long = outgoing(&config, &event(&"a".repeat(256 - 24)));
        assert_eq!(
            too_long.unpublishable(config.max_message_bytes),
            Some(Reason::RoutingKeyTooLong(256))
        );
        let presence = RabbitEvent::Presence {
            user_jid: format!("{}@h/r", "p".repeat(300)),
            bare_jid: format!("{}@h", "p".repeat(300)),
            present: true,
        };
        assert!(outgoing(&config, &presence)
            .unpublishable(config.max_message_bytes)
            .is_some_and(|why| matches!(why, Reason::RoutingKeyTooLong(_))));
    }

    #[test]
    fn a_body_over_max_message_bytes_is_unpublishable() {
        let config = config();
        let message = outgoing(&config, &chat(ChatKind::Chat, Direction::In, "12345"));
        let bytes = message.payload.len();
        assert_eq!(message.unpublishable(bytes), None);
        assert_eq!(
            message.unpublishable(bytes - 1),
            Some(Reason::MessageTooLarge(bytes))
        );
    }

    #[test]
    fn persistent_follows_each_exchange() {
        let mut config = config();
        config.chat_exchange.persistent = true;
        assert!(outgoing(&config, &chat(ChatKind::Chat, Direction::In, "x")).persistent);
        assert!(!outgoing(&config, &chat(ChatKind::Groupchat, Direction::In, "x")).persistent);
    }
}
