//! `pusher-sink`: a small keep-alive HTTP/1.1 server for the demo and the benchmark.
//!
//! Every request is read in full and answered with a fixed status (200 unless
//! `--status` says otherwise) after an optional delay; answered requests are counted.
//! `GET /stats` answers `{"requests": N}` and is not counted itself. With
//! `--fail-first N` each distinct body is answered 500 the first N times it arrives
//! (a webhook failing every event's first attempts), then as usual.
//!
//! With `--sns` it stands in for Amazon SNS instead: every other request is read as
//! an AWS query-protocol call (an `application/x-www-form-urlencoded` body) and
//! `Action=Publish` and `Action=PublishBatch` are answered with the XML documents
//! SNS sends back (every batch entry successful), which aws-sdk-sns parses; other
//! actions and malformed calls get SNS's `ErrorResponse`. With `--status` other than
//! 2xx every call gets an `ErrorResponse` with that status. Signatures are not
//! checked. Messages are counted as well as requests (a Publish is one, a
//! PublishBatch one per entry): `GET /stats` answers `{"requests": N, "messages": M}`.
//!
//! The first stdout line is `listening <port>`. The process exits when its stdin
//! closes (so the Erlang port that owns it takes it down when it dies), on SIGTERM
//! and on SIGINT.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const USAGE: &str = "usage: pusher-sink [--port N (0 = any)] [--delay-ms N] [--status N] \
                     [--threads N (0 = one per core; default 1)] [--sns] [--fail-first N]";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Any request, an empty answer.
    Http,
    /// Amazon SNS's Publish and PublishBatch (AWS query protocol).
    Sns,
}

#[derive(Debug, Clone, PartialEq)]
struct Args {
    port: u16,
    delay: Duration,
    status: StatusCode,
    threads: usize,
    mode: Mode,
    /// Times each distinct body is answered 500 before it is taken.
    fail_first: u32,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        port: 0,
        delay: Duration::ZERO,
        status: StatusCode::OK,
        threads: 1,
        mode: Mode::Http,
        fail_first: 0,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--port" => {
                let v = value("--port")?;
                parsed.port = v.parse().map_err(|_| format!("bad --port: {v}"))?;
            }
            "--delay-ms" => {
                let v = value("--delay-ms")?;
                let ms: u64 = v.parse().map_err(|_| format!("bad --delay-ms: {v}"))?;
                parsed.delay = Duration::from_millis(ms);
            }
            "--status" => {
                let v = value("--status")?;
                let code: u16 = v.parse().map_err(|_| format!("bad --status: {v}"))?;
                parsed.status =
                    StatusCode::from_u16(code).map_err(|_| format!("bad --status: {v}"))?;
            }
            "--threads" => {
                let v = value("--threads")?;
                parsed.threads = v.parse().map_err(|_| format!("bad --threads: {v}"))?;
            }
            "--sns" => parsed.mode = Mode::Sns,
            "--fail-first" => {
                let v = value("--fail-first")?;
                parsed.fail_first = v.parse().map_err(|_| format!("bad --fail-first: {v}"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(parsed)
}

struct Sink {
    requests: AtomicU64,
    /// SNS mode: messages published (a Publish is one, a PublishBatch its entries).
    messages: AtomicU64,
    /// SNS mode: the next request or message id.
    next_id: AtomicU64,
    delay: Duration,
    status: StatusCode,
    mode: Mode,
    fail_first: u32,
    /// With `fail_first`: how often each body (by hash) has been failed so far; a body
    /// is forgotten once it is let through, so memory follows the bodies in retry.
    failed_so_far: Mutex<HashMap<u64, u32>>,
}

impl Sink {
    fn new(args: &Args) -> Self {
        Sink {
            requests: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            delay: args.delay,
            status: args.status,
            mode: args.mode,
            fail_first: args.fail_first,
            failed_so_far: Mutex::default(),
        }
    }

    /// True when this body is to be failed once more (`--fail-first`).
    fn fails(&self, body: &[u8]) -> bool {
        if self.fail_first == 0 {
            return false;
        }
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        let key = hasher.finish();
        let mut failed = self
            .failed_so_far
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = failed.entry(key).or_default();
        if *count < self.fail_first {
            *count += 1;
            true
        } else {
            failed.remove(&key);
            false
        }
    }

    fn stats(&self) -> String {
        let requests = self.requests.load(Ordering::Relaxed);
        match self.mode {
            Mode::Http => format!("{{\"requests\": {requests}}}"),
            Mode::Sns => format!(
                "{{\"requests\": {requests}, \"messages\": {}}}",
                self.messages.load(Ordering::Relaxed)
            ),
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() == Method::GET && req.uri().path() == "/stats" {
            return response(StatusCode::OK, "application/json", self.stats());
        }
        // Read the whole body so the connection stays usable for the next request.
        let body = match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return response(StatusCode::BAD_REQUEST, "text/plain", String::new()),
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        match self.mode {
            Mode::Http => {
                // Counted when answered: a request whose client gave up during the
                // delay is not.
                self.requests.fetch_add(1, Ordering::Relaxed);
                let status = if self.fails(&body) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    self.status
                };
                response(status, "text/plain", String::new())
            }
            Mode::Sns => {
                let answer = sns_answer(&body, self.status, &self.next_id);
                self.requests.fetch_add(1, Ordering::Relaxed);
                self.messages.fetch_add(answer.messages, Ordering::Relaxed);
                response(answer.status, "text/xml", answer.body)
            }
        }
    }
}

// SNS mode: the AWS query protocol, as far as Publish and PublishBatch need it.

const SNS_XMLNS: &str = "http://sns.amazonaws.com/doc/2010-03-31/";
/// Entries one PublishBatch call may carry.
const SNS_MAX_BATCH_ENTRIES: usize = 10;
const BATCH_ENTRY_PREFIX: &str = "PublishBatchRequestEntries.member.";

/// The name=value pairs of an `application/x-www-form-urlencoded` body, decoded.
fn form_pairs(body: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (form_decode(&pair[..eq]), form_decode(&pair[eq + 1..])),
            None => (form_decode(pair), Cow::Borrowed("")),
        })
}

/// `+` is a space and `%XX` a byte; a `%` not followed by two hex digits is kept
/// as it is, and bytes that are not UTF-8 become U+FFFD.
fn form_decode(raw: &[u8]) -> Cow<'_, str> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return String::from_utf8_lossy(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => out.push(b' '),
            b'%' => match tail {
                [hi, lo, after @ ..] => match (hex_digit(*hi), hex_digit(*lo)) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        rest = after;
                    }
                    _ => out.push(b'%'),
                },
                _ => out.push(b'%'),
            },
            _ => out.push(b),
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A call the sink accepts.
#[derive(Debug, PartialEq)]
enum SnsRequest {
    Publish,
    /// The entries' ids, in member order.
    PublishBatch {
        ids: Vec<String>,
    },
}

/// A refused call: SNS's error code and why.
#[derive(Debug, PartialEq)]
struct SnsError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl SnsError {
    fn sender(code: &'static str, message: impl Into<String>) -> Self {
        SnsError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Default)]
struct BatchEntry {
    id: Option<String>,
    has_message: bool,
}

/// Reads a Publish or PublishBatch call and checks what SNS would check first.
fn parse_sns_request(body: &[u8]) -> Result<SnsRequest, SnsError> {
    let mut action = None;
    let mut topic = false;
    let mut message = false;
    let mut entries: BTreeMap<u64, BatchEntry> = BTreeMap::new();
    for (key, value) in form_pairs(body) {
        match key.as_ref() {
            "Action" => action = Some(value.into_owned()),
            "TopicArn" | "TargetArn" | "PhoneNumber" => topic |= !value.is_empty(),
            "Message" => message = true,
            other => {
                let Some(rest) = other.strip_prefix(BATCH_ENTRY_PREFIX) else {
                    continue;
                };
                let Some((index, field)) = rest.split_once('.') else {
                    continue;
                };
                let Ok(index) = index.parse::<u64>() else {
                    return Err(SnsError::sender(
                        "ValidationError",
                        format!("bad member index in {other}"),
                    ));
                };
                let entry = entries.entry(index).or_default();
                match field {
                    "Id" => entry.id = Some(value.into_owned()),
                    "Message" => entry.has_message = true,
                    _ => {}
                }
            }
        }
    }
    match action.as_deref() {
        None => Err(SnsError::sender("MissingAction", "no Action parameter")),
        Some("Publish") => {
            if !topic {
                Err(SnsError::sender(
                    "InvalidParameter",
                    "TopicArn, TargetArn or PhoneNumber is required",
                ))
            } else if !message {
                Err(SnsError::sender("ValidationError", "Message is required"))
            } else {
                Ok(SnsRequest::Publish)
            }
        }
        Some("PublishBatch") => {
            if !topic {
                return Err(SnsError::sender("InvalidParameter", "TopicArn is required"));
            }
            if entries.is_empty() {
                return Err(SnsError::sender(
                    "EmptyBatchRequest",
                    "the batch request does not contain any entries",
                ));
            }
            if entries.len() > SNS_MAX_BATCH_ENTRIES {
                return Err(SnsError::sender(
                    "TooManyEntriesInBatchRequest",
                    format!("{} entries, at most {SNS_MAX_BATCH_ENTRIES}", entries.len()),
                ));
            }
            let mut ids = Vec::with_capacity(entries.len());
            for (index, entry) in entries {
                match entry {
                    BatchEntry {
                        id: Some(id),
                        has_message: true,
                    } => {
                        if ids.contains(&id) {
                            return Err(SnsError::sender(
                                "BatchEntryIdsNotDistinct",
                                format!("two entries have the id {id}"),
                            ));
                        }
                        ids.push(id);
                    }
                    _ => {
                        return Err(SnsError::sender(
                            "ValidationError",
                            format!("entry {index} needs an Id and a Message"),
                        ))
                    }
                }
            }
            Ok(SnsRequest::PublishBatch { ids })
        }
        Some(other) => Err(SnsError::sender(
            "InvalidAction",
            format!("the sink answers Publish and PublishBatch, not {other}"),
        )),
    }
}

/// What the sink sends back to one SNS call.
#[derive(Debug)]
struct SnsAnswer {
    status: StatusCode,
    body: String,
    /// Messages published by the call.
    messages: u64,
}

/// The answer to an SNS call; `status` other than 2xx fails every call with it.
fn sns_answer(body: &[u8], status: StatusCode, next_id: &AtomicU64) -> SnsAnswer {
    let parsed = if status.is_success() {
        parse_sns_request(body)
    } else {
        Err(status_error(status))
    };
    match parsed {
        Ok(SnsRequest::Publish) => {
            let first = next_id.fetch_add(2, Ordering::Relaxed);
            SnsAnswer {
                status: StatusCode::OK,
                body: publish_response(&message_id(first + 1), &request_id(first)),
                messages: 1,
            }
        }
        Ok(SnsRequest::PublishBatch { ids }) => {
            let count = ids.len() as u64;
            let first = next_id.fetch_add(count + 1, Ordering::Relaxed);
            let published: Vec<(String, String)> = ids
                .into_iter()
                .zip(first + 1..)
                .map(|(id, n)| (id, message_id(n)))
                .collect();
            SnsAnswer {
                status: StatusCode::OK,
                body: publish_batch_response(&published, &request_id(first)),
                messages: count,
            }
        }
        Err(error) => {
            let first = next_id.fetch_add(1, Ordering::Relaxed);
            SnsAnswer {
                status: error.status,
                body: error_response(&error, &request_id(first)),
                messages: 0,
            }
        }
    }
}

/// The error SNS would give with this status.
fn status_error(status: StatusCode) -> SnsError {
    let code = match status.as_u16() {
        429 => "Throttling",
        403 => "AuthorizationError",
        404 => "NotFound",
        500..=599 => "InternalError",
        _ => "InvalidParameter",
    };
    SnsError {
        status,
        code,
        message: format!(
            "pusher-sink answers every call with HTTP {}",
            status.as_u16()
        ),
    }
}

/// UUID-shaped ids, distinct within one run of the sink.
fn message_id(n: u64) -> String {
    format!("5e4d0000-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

fn request_id(n: u64) -> String {
    format!("5e4d0001-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

fn publish_response(message_id: &str, request_id: &str) -> String {
    format!(
        "<PublishResponse xmlns=\"{SNS_XMLNS}\">\
         <PublishResult><MessageId>{}</MessageId></PublishResult>\
         <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
         </PublishResponse>",
        xml_escape(message_id),
        xml_escape(request_id)
    )
}

/// Every entry successful, as (entry id, message id).
fn publish_batch_response(published: &[(String, String)], request_id: &str) -> String {
    let mut body =
        format!("<PublishBatchResponse xmlns=\"{SNS_XMLNS}\"><PublishBatchResult><Successful>");
    for (id, message_id) in published {
        body.push_str("<member><Id>");
        body.push_str(&xml_escape(id));
        body.push_str("</Id><MessageId>");
        body.push_str(&xml_escape(message_id));
        body.push_str("</MessageId></member>");
    }
    body.push_str("</Successful><Failed/></PublishBatchResult><ResponseMetadata><RequestId>");
    body.push_str(&xml_escape(request_id));
    body.push_str("</RequestId></ResponseMetadata></PublishBatchResponse>");
    body
}

fn error_response(error: &SnsError, request_id: &str) -> String {
    let kind = if error.status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    format!(
        "<ErrorResponse xmlns=\"{SNS_XMLNS}\"><Error><Type>{kind}</Type>\
         <Code>{}</Code><Message>{}</Message></Error>\
         <RequestId>{}</RequestId></ErrorResponse>",
        xml_escape(error.code),
        xml_escape(&error.message),
        xml_escape(request_id)
    )
}

fn xml_escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

async fn serve(listener: TcpListener, sink: Arc<Sink>) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("pusher-sink: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let sink = Arc::clone(&sink);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let sink = Arc::clone(&sink);
                async move { Ok::<_, Infallible>(sink.handle(req).await) }
            });
            // Client resets and closes are normal here; nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Resolves when stdin reaches end of file (or fails): the owner is gone.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        let _ = tx.send(());
    });
    let _ = rx.await;
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

async fn run(args: Args) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?
        .port();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {port}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    let sink = Arc::new(Sink::new(&args));
    tokio::select! {
        _ = serve(listener, sink) => {}
        _ = stdin_closed() => {}
        _ = terminated() => {}
    }
    Ok(())
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("pusher-sink: {msg}");
            std::process::exit(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if args.threads > 1 {
            builder.worker_threads(args.threads);
        }
        builder.enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pusher-sink: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(run(args));
    // Connection tasks may still be parked on a delay: do not wait for them.
    runtime.shutdown_background();
    if let Err(msg) = result {
        eprintln!("pusher-sink: {msg}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        let a = args(&[]).unwrap();
        assert_eq!(a.port, 0);
        assert_eq!(a.delay, Duration::ZERO);
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.threads, 1);
        assert_eq!(a.mode, Mode::Http);
        assert_eq!(a.fail_first, 0);
        assert_eq!(args(&["--sns"]).unwrap().mode, Mode::Sns);
        assert_eq!(args(&["--fail-first", "2"]).unwrap().fail_first, 2);
        assert!(args(&["--fail-first", "x"]).is_err());
    }

    #[test]
    fn fail_first_fails_each_body_that_many_times_then_forgets_it() {
        let sink = Sink::new(&args(&["--fail-first", "2"]).unwrap());
        let answers: Vec<bool> = [b"a", b"b", b"a", b"b", b"a", b"b", b"a"]
            .iter()
            .map(|body| sink.fails(&body[..]))
            .collect();
        assert_eq!(answers, [true, true, true, true, false, false, true]);
        assert!(!Sink::new(&args(&[]).unwrap()).fails(b"a"));
    }

    #[test]
    fn all_flags() {
        let a = args(&[
            "--port",
            "8080",
            "--delay-ms",
            "100",
            "--status",
            "503",
            "--threads",
            "2",
        ])
        .unwrap();
        assert_eq!(a.port, 8080);
        assert_eq!(a.delay, Duration::from_millis(100));
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.threads, 2);
    }

    #[test]
    fn bad_input() {
        assert!(args(&["--port"]).is_err());
        assert!(args(&["--port", "x"]).is_err());
        assert!(args(&["--status", "42"]).is_err());
        assert!(args(&["--delay-ms", "-1"]).is_err());
        assert!(args(&["--what"]).is_err());
    }

    const TOPIC: &str = "arn%3Aaws%3Asns%3Aeu-west-1%3A123456789012%3Abench";

    fn batch_body(ids: &[&str]) -> String {
        let mut body = format!("Action=PublishBatch&Version=2010-03-31&TopicArn={TOPIC}");
        for (n, id) in ids.iter().enumerate() {
            let n = n + 1;
            body.push_str(&format!(
                "&PublishBatchRequestEntries.member.{n}.Id={id}\
                 &PublishBatchRequestEntries.member.{n}.Message=%7B%22m%22%3A{n}%7D\
                 &PublishBatchRequestEntries.member.{n}.MessageAttributes.entry.1.Name=a"
            ));
        }
        body
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode(b"plain.Text-1"), "plain.Text-1");
        assert!(matches!(form_decode(b"plain"), Cow::Borrowed(_)));
        assert_eq!(form_decode(b"a+b%20c%3a%3A"), "a b c::");
        assert_eq!(form_decode(b"%7B%22k%22%7D"), "{\"k\"}");
        assert_eq!(form_decode(b"h%C3%A9llo"), "h\u{e9}llo");
        // Broken escapes are kept; bytes that are not UTF-8 are replaced.
        assert_eq!(form_decode(b"100%"), "100%");
        assert_eq!(form_decode(b"%zz%4"), "%zz%4");
        assert_eq!(form_decode(b"%FF"), "\u{fffd}");
        let pairs: Vec<(String, String)> = form_pairs(b"a=1&&b=&c&d=x%3Dy=z")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let expected = [("a", "1"), ("b", ""), ("c", ""), ("d", "x=y=z")];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn publish_and_batch_requests() {
        let publish = format!("Action=Publish&Version=2010-03-31&TopicArn={TOPIC}&Message=hi");
        assert_eq!(
            parse_sns_request(publish.as_bytes()),
            Ok(SnsRequest::Publish)
        );
        // Entries in member order, whatever the order of the parameters.
        let body = format!(
            "Action=PublishBatch&TopicArn={TOPIC}\
             &PublishBatchRequestEntries.member.2.Id=b&PublishBatchRequestEntries.member.2.Message=y\
             &PublishBatchRequestEntries.member.10.Id=c&PublishBatchRequestEntries.member.10.Message=z\
             &PublishBatchRequestEntries.member.1.Message=x&PublishBatchRequestEntries.member.1.Id=a%2B1"
        );
        assert_eq!(
            parse_sns_request(body.as_bytes()),
            Ok(SnsRequest::PublishBatch {
                ids: vec!["a+1".into(), "b".into(), "c".into()]
            })
        );
        let ten: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = ten.iter().map(String::as_str).collect();
        assert_eq!(
            parse_sns_request(batch_body(&refs).as_bytes()),
            Ok(SnsRequest::PublishBatch { ids: ten.clone() })
        );
    }

    #[test]
    fn refused_requests() {
        let code = |body: &str| parse_sns_request(body.as_bytes()).map_err(|e| e.code);
        assert_eq!(code(""), Err("MissingAction"));
        assert_eq!(code("Action=CreateTopic&Name=x"), Err("InvalidAction"));
        assert_eq!(code("Action=Publish&Message=hi"), Err("InvalidParameter"));
        assert_eq!(
            code(&format!("Action=Publish&TopicArn={TOPIC}")),
            Err("ValidationError")
        );
        assert_eq!(
            code(&format!("Action=PublishBatch&TopicArn={TOPIC}")),
            Err("EmptyBatchRequest")
        );
        let eleven: Vec<String> = (0..11).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = eleven.iter().map(String::as_str).collect();
        assert_eq!(
            code(&batch_body(&refs)),
            Err("TooManyEntriesInBatchRequest")
        );
        assert_eq!(
            code(&batch_body(&["a", "b", "a"])),
            Err("BatchEntryIdsNotDistinct")
        );
        assert_eq!(
            code(&format!(
                "Action=PublishBatch&TopicArn={TOPIC}&PublishBatchRequestEntries.member.1.Id=a"
            )),
            Err("ValidationError")
        );
        assert_eq!(
            code(&format!(
                "Action=PublishBatch&TopicArn={TOPIC}&PublishBatchRequestEntries.member.x.Id=a"
            )),
            Err("ValidationError")
        );
    }

    #[test]
    fn answers_and_counts() {
        let ids = AtomicU64::new(1);
        let publish = format!("Action=Publish&TopicArn={TOPIC}&Message=hi");
        let one = sns_answer(publish.as_bytes(), StatusCode::OK, &ids);
        assert_eq!((one.status, one.messages), (StatusCode::OK, 1));
        assert_eq!(
            one.body,
            format!(
                "<PublishResponse xmlns=\"{SNS_XMLNS}\"><PublishResult>\
                 <MessageId>5e4d0000-0000-4000-8000-000000000002</MessageId></PublishResult>\
                 <ResponseMetadata><RequestId>5e4d0001-0000-4000-8000-000000000001</RequestId>\
                 </ResponseMetadata></PublishResponse>"
            )
        );
        let batch = sns_answer(batch_body(&["a", "b<"]).as_bytes(), StatusCode::OK, &ids);
        assert_eq!((batch.status, batch.messages), (StatusCode::OK, 2));
        assert_eq!(
            batch.body,
            format!(
                "<PublishBatchResponse xmlns=\"{SNS_XMLNS}\"><PublishBatchResult><Successful>\
                 <member><Id>a</Id><MessageId>5e4d0000-0000-4000-8000-000000000004</MessageId>\
                 </member><member><Id>b&lt;</Id>\
                 <MessageId>5e4d0000-0000-4000-8000-000000000005</MessageId></member>\
                 </Successful><Failed/></PublishBatchResult><ResponseMetadata>\
                 <RequestId>5e4d0001-0000-4000-8000-000000000003</RequestId>\
                 </ResponseMetadata></PublishBatchResponse>"
            )
        );
        let refused = sns_answer(b"Action=Nope", StatusCode::OK, &ids);
        assert_eq!(
            (refused.status, refused.messages),
            (StatusCode::BAD_REQUEST, 0)
        );
        assert!(refused.body.starts_with("<ErrorResponse"));
        assert!(refused
            .body
            .contains("<Type>Sender</Type><Code>InvalidAction</Code>"));
        let failing = sns_answer(publish.as_bytes(), StatusCode::SERVICE_UNAVAILABLE, &ids);
        assert_eq!(
            (failing.status, failing.messages),
            (StatusCode::SERVICE_UNAVAILABLE, 0)
        );
        assert!(failing
            .body
            .contains("<Type>Receiver</Type><Code>InternalError</Code>"));
        assert_eq!(
            status_error(StatusCode::TOO_MANY_REQUESTS).code,
            "Throttling"
        );
        assert_eq!(xml_escape("a&b<'\">"), "a&amp;b&lt;&apos;&quot;&gt;");
    }

    /// The sink on a free port, in this runtime.
    async fn start_sink(args: &[&str]) -> (Arc<Sink>, u16) {
        let sink = Arc::new(Sink::new(&self::args(args).unwrap()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(listener, Arc::clone(&sink)));
        (sink, port)
    }

    fn sns_client(port: u16) -> aws_sdk_sns::Client {
        use aws_sdk_sns::config::{BehaviorVersion, Credentials, Region};
        let config = aws_sdk_sns::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKIA", "secret", None, None, "test"))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .retry_config(aws_sdk_sns::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_sns::Client::from_conf(config)
    }

    /// aws-sdk-sns, as the sns backend uses it, parses what the sink answers.
    #[tokio::test]
    async fn aws_sdk_parses_the_answers() {
        use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
        let (sink, port) = start_sink(&["--sns"]).await;
        let client = sns_client(port);
        let topic = "arn:aws:sns:eu-west-1:123456789012:bench";
        let published = client
            .publish()
            .topic_arn(topic)
            .message("{\"message\":\"h\u{e9} & <you>\"}")
            .message_attributes(
                "kind",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("pm")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert!(published.message_id().is_some_and(|id| !id.is_empty()));

        let entries: Vec<PublishBatchRequestEntry> = (0..10)
            .map(|i| {
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(format!("message {i}"))
                    .build()
                    .unwrap()
            })
            .collect();
        let batch = client
            .publish_batch()
            .topic_arn(topic)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .unwrap();
        let ids: Vec<&str> = batch.successful().iter().filter_map(|e| e.id()).collect();
        assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
        assert!(batch.successful().iter().all(|e| e.message_id().is_some()));
        assert!(batch.failed().is_empty());
        assert_eq!(sink.requests.load(Ordering::Relaxed), 2);
        assert_eq!(sink.messages.load(Ordering::Relaxed), 11);
        assert_eq!(sink.stats(), "{\"requests\": 2, \"messages\": 11}");

        // Errors come back as SNS's error codes.
        let duplicate = PublishBatchRequestEntry::builder()
            .id("x")
            .message("m")
            .build()
            .unwrap();
        let refused = client
            .publish_batch()
            .topic_arn(topic)
            .set_publish_batch_request_entries(Some(vec![duplicate.clone(), duplicate]))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            aws_sdk_sns::error::ProvideErrorMetadata::code(&refused),
            Some("BatchEntryIdsNotDistinct")
        );
        assert_eq!(sink.messages.load(Ordering::Relaxed), 11);

        let (_failing, port) = start_sink(&["--sns", "--status", "503"]).await;
        let failed = sns_client(port)
            .publish()
            .topic_arn(topic)
            .message("m")
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            aws_sdk_sns::error::ProvideErrorMetadata::code(&failed),
            Some("InternalError")
        );
        assert_eq!(
            failed.raw_response().map(|r| r.status().as_u16()),
            Some(503)
        );
    }
}
