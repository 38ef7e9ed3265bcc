//! What the integration tests share: an HTTP/1.1 server on 127.0.0.1 that records
//! every request and answers as the test scripts it, a report sink that keeps every
//! batch, and a bounded wait.
// Each test crate compiles this module and uses a part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Response;
use pusher::report::{ReportBatch, ReportSink};
use tokio::net::TcpListener;

/// A request as the server read it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The answer to one request, sent after `delay`.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::from_static(b"ok"),
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }

    pub fn header(mut self, name: HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// `answer(index, request)`: index counts the requests from 0, in arrival order.
type Answer = dyn Fn(usize, &Received) -> Reply + Send + Sync;

/// The server. Every request is recorded when it arrives, before it is answered.
pub struct RecordingServer {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl RecordingServer {
    pub async fn start(answer: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (log, answer) = (log.clone(), answer.clone());
                        async move { Ok::<_, Infallible>(respond(req, &log, &*answer).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self { addr, received }
    }

    /// A server answering `statuses` in turn, then 200, each after `delay`.
    pub async fn scripted(statuses: Vec<u16>, delay: Duration) -> Self {
        Self::start(move |index, _| {
            Reply::status(statuses.get(index).copied().unwrap_or(200)).after(delay)
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("received").clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("received").len()
    }

    pub fn texts(&self) -> Vec<String> {
        self.received().iter().map(Received::text).collect()
    }
}

async fn respond(
    req: hyper::Request<Incoming>,
    log: &Mutex<Vec<Received>>,
    answer: &Answer,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let request = Received {
        path,
        content_type,
        body: body.map(|b| b.to_vec()).unwrap_or_default(),
        at: Instant::now(),
    };
    let reply = {
        let mut log = log.lock().expect("received");
        log.push(request.clone());
        answer(log.len() - 1, &request)
    };
    tokio::time::sleep(reply.delay).await;
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status).expect("status");
    for (name, value) in reply.headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).expect("header value"));
    }
    response
}

/// Keeps every report batch.
#[derive(Default)]
pub struct Collect(Mutex<Vec<ReportBatch>>);

impl ReportSink for Collect {
    fn send(&self, batch: ReportBatch) {
        self.0.lock().expect("reports").push(batch);
    }
}

impl Collect {
    pub fn batches(&self) -> std::sync::MutexGuard<'_, Vec<ReportBatch>> {
        self.0.lock().expect("reports")
    }
}

/// Until `done` holds, checked every 10 ms; panics naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
