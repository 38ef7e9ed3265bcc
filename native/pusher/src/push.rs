//! XEP-0357 push backend: the publish IQ for the user's pubsub service is built here,
//! handed to the host (MongooseIM) to route, and the worker waits for the service's
//! reply. The host owns XMPP routing; this module owns the queue, the concurrency,
//! the stanza and the bookkeeping of outcomes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::backend::{Attempt, AttemptOutcome, Backend, Verdict};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUSH: &str = "urn:xmpp:push:0";
pub const NS_XDATA: &str = "jabber:x:data";
pub const NS_PUBSUB_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
pub const PUSH_SUMMARY: &str = "urn:xmpp:push:summary";

/// An XML element, as the host's XML library will hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    fn new(name: &str, attrs: &[(&str, &str)], children: Vec<Node>) -> Self {
        Element {
            name: name.to_string(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            children,
        }
    }

    /// The element as XML text (for sizes, logs and tests; the host gets the tree).
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write_xml(&mut out);
        out
    }

    fn write_xml(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        for (key, value) in &self.attrs {
            out.push(' ');
            out.push_str(key);
            out.push_str("=\"");
            escape_into(out, value);
            out.push('"');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for child in &self.children {
            match child {
                Node::Element(element) => element.write_xml(out),
                Node::Text(text) => escape_into(out, text),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// A submitted data form: FORM_TYPE (hidden) first, then one single-valued field per
/// pair, in order.
fn submit_form(form_type: &str, fields: &[(String, String)]) -> Element {
    let field = |var: &str, kind: Option<&str>, value: &str| {
        let mut attrs = vec![("var", var)];
        attrs.extend(kind.map(|k| ("type", k)));
        Node::Element(Element::new(
            "field",
            &attrs,
            vec![Node::Element(Element::new(
                "value",
                &[],
                vec![Node::Text(value.to_string())],
            ))],
        ))
    };
    let mut children = vec![field("FORM_TYPE", Some("hidden"), form_type)];
    children.extend(fields.iter().map(|(var, value)| field(var, None, value)));
    Element::new("x", &[("xmlns", NS_XDATA), ("type", "submit")], children)
}

/// One notification for one registration of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// The recipient's domain: the publish IQ comes from it.
    pub from: String,
    /// The pubsub service (a bare JID): the publish IQ goes to it.
    pub pubsub: String,
    pub node: String,
    /// The summary fields (message-count, last-message-sender, last-message-body...).
    pub payload: Vec<(String, String)>,
    /// The publish-options given at enable time; empty means none are sent.
    pub publish_options: Vec<(String, String)>,
}

impl PushEvent {
    /// `<pubsub><publish node><item><notification><x type=submit>` with the summary
    /// form, and `<publish-options>` when the registration had a form: the IQ's child.
    pub fn pubsub_element(&self) -> Element {
        let notification = Element::new(
            "notification",
            &[("xmlns", NS_PUSH)],
            vec![Node::Element(submit_form(PUSH_SUMMARY, &self.payload))],
        );
        let item = Element::new("item", &[], vec![Node::Element(notification)]);
        let publish = Element::new(
            "publish",
            &[("node", &self.node)],
            vec![Node::Element(item)],
        );
        let mut children = vec![Node::Element(publish)];
        if !self.publish_options.is_empty() {
            children.push(Node::Element(Element::new(
                "publish-options",
                &[],
                vec![Node::Element(submit_form(
                    NS_PUBSUB_PUBLISH_OPTIONS,
                    &self.publish_options,
                ))],
            )));
        }
        Element::new("pubsub", &[("xmlns", NS_PUBSUB)], children)
    }

    pub fn size(&self) -> usize {
        let pairs =
            |p: &[(String, String)]| p.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        self.from.len()
            + self.pubsub.len()
            + self.node.len()
            + pairs(&self.payload)
            + pairs(&self.publish_options)
    }
}

/// What came back for a routed publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An IQ result.
    Result,
    /// An IQ error with this `type` (cancel, wait, modify, auth...).
    Error(String),
    /// The host's IQ timeout passed with no reply.
    Timeout,
}

/// Routes publish IQs on the host's side.
pub trait Router: Send + Sync + 'static {
    /// Asks the host to route `pubsub` (the IQ's child) from `event.from` to
    /// `event.pubsub`, tagging the reply with `id`. False when the host is gone.
    fn route(&self, id: u64, event: &PushEvent, pubsub: &Element) -> bool;
}

pub struct PushBackend<R: Router> {
    router: R,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    next_id: AtomicU64,
    reply_timeout: Duration,
}

impl<R: Router> PushBackend<R> {
    pub fn new(router: R, reply_timeout: Duration) -> Self {
        PushBackend {
            router,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            reply_timeout,
        }
    }

    /// Delivers the reply to the publish tagged `id`. False when nobody waits for it
    /// any more (timed out here first, or an unknown id).
    pub fn reply(&self, id: u64, reply: Reply) -> bool {
        match self.pending().remove(&id) {
            Some(waiter) => waiter.send(reply).is_ok(),
            None => false,
        }
    }

    /// Publishes waiting for a reply.
    pub fn waiting(&self) -> usize {
        self.pending().len()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn attempt(verdict: Verdict, outcome: AttemptOutcome) -> Attempt {
    Attempt {
        verdict,
        outcome,
        wire_bytes: None,
    }
}

impl<R: Router> Backend for PushBackend<R> {
    type Event = PushEvent;

    async fn deliver(&self, event: &PushEvent) -> Attempt {
        let id = self.next_id.fetch_add(1, Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.pending().insert(id, sender);
        if !self.router.route(id, event, &event.pubsub_element()) {
            self.pending().remove(&id);
            return Attempt::no_response("router_down");
        }
        let reply = tokio::time::timeout(self.reply_timeout, receiver).await;
        match reply {
            Ok(Ok(Reply::Result)) => attempt(Verdict::Delivered, AttemptOutcome::Replied),
            Ok(Ok(Reply::Error(kind))) => {
                // As in MongooseIM: an error reply is final; a `cancel` one also
                // disables the registration (the host does that on this report).
                let reason = format!("error reply of type {kind}");
                attempt(Verdict::Fatal(reason), AttemptOutcome::ErrorReply(kind))
            }
            Ok(Ok(Reply::Timeout)) => attempt(
                Verdict::Retry("timeout (host)".into()),
                AttemptOutcome::TimedOut,
            ),
            Ok(Err(_)) => Attempt::no_response("reply_lost"),
            Err(_) => {
                self.pending().remove(&id);
                attempt(Verdict::Retry("timeout".into()), AttemptOutcome::TimedOut)
            }
        }
    }

    async fn shutdown(&self) {
        // Whoever still waits gets a timeout now rather than at its deadline.
        self.pending().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn event(options: &[(&str, &str)]) -> PushEvent {
        let pairs = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        PushEvent {
            from: "localhost".into(),
            pubsub: "pubsub.push.example".into(),
            node: "node-1".into(),
            payload: pairs(&[
                ("message-count", "1"),
                ("last-message-sender", "alice@localhost"),
                ("last-message-body", "<hi> & \"bye\""),
            ]),
            publish_options: pairs(options),
        }
    }

    #[test]
    fn publish_without_options_is_the_summary_form_only() {
        assert_eq!(
            event(&[]).pubsub_element().to_xml(),
            "<pubsub xmlns=\"http://jabber.org/protocol/pubsub\"><publish node=\"node-1\"><item>\
             <notification xmlns=\"urn:xmpp:push:0\"><x xmlns=\"jabber:x:data\" type=\"submit\">\
             <field var=\"FORM_TYPE\" type=\"hidden\"><value>urn:xmpp:push:summary</value></field>\
             <field var=\"message-count\"><value>1</value></field>\
             <field var=\"last-message-sender\"><value>alice@localhost</value></field>\
             <field var=\"last-message-body\"><value>&lt;hi&gt; &amp; &quot;bye&quot;</value></field>\
             </x></notification></item></publish></pubsub>"
        );
    }

    #[test]
    fn publish_options_follow_publish_when_the_registration_had_a_form() {
        let xml = event(&[("secret", "s3")]).pubsub_element().to_xml();
        assert!(xml.ends_with(
            "</publish><publish-options><x xmlns=\"jabber:x:data\" type=\"submit\">\
             <field var=\"FORM_TYPE\" type=\"hidden\">\
             <value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var=\"secret\"><value>s3</value></field></x></publish-options></pubsub>"
        ));
    }

    /// Answers every route with a fixed reply, from another task.
    struct Answering {
        backend: Mutex<Option<std::sync::Weak<PushBackend<Answering>>>>,
        reply: Option<Reply>,
    }

    impl Router for Answering {
        fn route(&self, id: u64, _event: &PushEvent, _pubsub: &Element) -> bool {
            let backend = self.backend.lock().ok().and_then(|b| b.clone());
            if let (Some(reply), Some(backend)) = (self.reply.clone(), backend) {
                tokio::spawn(async move {
                    if let Some(backend) = backend.upgrade() {
                        backend.reply(id, reply);
                    }
                });
            }
            true
        }
    }

    async fn deliver_with(reply: Option<Reply>) -> (Attempt, usize) {
        let backend = Arc::new(PushBackend::new(
            Answering {
                backend: Mutex::new(None),
                reply,
            },
            Duration::from_millis(50),
        ));
        if let Ok(mut slot) = backend.router.backend.lock() {
            *slot = Some(Arc::downgrade(&backend));
        }
        let attempt = backend.deliver(&event(&[])).await;
        (attempt, backend.waiting())
    }

    #[tokio::test]
    async fn replies_decide_the_verdict() {
        let (ok, _) = deliver_with(Some(Reply::Result)).await;
        assert_eq!(ok.verdict, Verdict::Delivered);
        assert_eq!(ok.outcome, AttemptOutcome::Replied);
        let (cancel, _) = deliver_with(Some(Reply::Error("cancel".into()))).await;
        assert!(matches!(cancel.verdict, Verdict::Fatal(_)));
        assert_eq!(cancel.outcome, AttemptOutcome::ErrorReply("cancel".into()));
        let (silent, waiting) = deliver_with(None).await;
        assert_eq!(silent.outcome, AttemptOutcome::TimedOut);
        assert_eq!(waiting, 0, "a timed-out publish no longer waits");
    }
}
