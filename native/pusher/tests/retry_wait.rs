//! Retries against a real HTTP server that fails each event's first attempts: events
//! waiting for their next attempt hold no worker, and `Retry-After` is honoured.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{wait_until, RecordingServer, Reply};
use hyper::header::RETRY_AFTER;
use pusher::http::{HttpBackend, HttpConfig, HttpEvent, TlsConfig};
use pusher::report::{FailureReport, ReportBatch, ReportSink};
use pusher::{Envelope, Instance, InstanceConfig, Reason};

/// One scripted answer to an attempt that must fail.
#[derive(Debug, Clone)]
enum Failure {
    Status(u16),
    /// The status with `Retry-After: <seconds>`.
    RetryAfterSeconds(u16, u64),
    /// The status with `Retry-After: <HTTP-date this many seconds from now>`.
    RetryAfterDate(u16, u64),
}

/// A server that answers each distinct body with its own failures in order, then 200.
async fn start_flaky_server(
    plan: impl Fn(&str) -> Vec<Failure> + Send + Sync + 'static,
) -> RecordingServer {
    let seen: Mutex<HashMap<String, usize>> = Mutex::default();
    RecordingServer::start(move |_, request| {
        let body = request.text();
        let attempt = {
            let mut seen = seen.lock().expect("seen");
            let count = seen.entry(body.clone()).or_default();
            *count += 1;
            *count
        };
        answer(plan(&body).get(attempt - 1).cloned())
    })
    .await
}

fn answer(failure: Option<Failure>) -> Reply {
    match failure {
        None => Reply::ok(),
        Some(Failure::Status(status)) => Reply::status(status),
        Some(Failure::RetryAfterSeconds(status, seconds)) => {
            Reply::status(status).header(RETRY_AFTER, seconds.to_string())
        }
        Some(Failure::RetryAfterDate(status, seconds)) => Reply::status(status).header(
            RETRY_AFTER,
            httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(seconds)),
        ),
    }
}

/// Each body's arrival times, in order.
fn by_body(server: &RecordingServer) -> HashMap<String, Vec<Instant>> {
    let mut by_body: HashMap<String, Vec<Instant>> = HashMap::new();
    for request in server.received() {
        by_body.entry(request.text()).or_default().push(request.at);
    }
    by_body
}

#[derive(Default)]
struct Failures(Mutex<Vec<FailureReport>>);

impl ReportSink for Failures {
    fn send(&self, batch: ReportBatch) {
        self.0.lock().expect("failures").extend(batch.failures);
    }
}

impl Failures {
    fn reasons(&self) -> Vec<Reason> {
        let failures = self.0.lock().expect("failures");
        failures.iter().map(|f| f.reason.clone()).collect()
    }
}

/// The http backend as the module configures it by default (10 workers, 2 s timeout).
fn start_instance(
    server: &RecordingServer,
    config: InstanceConfig,
) -> (Instance<HttpBackend>, Arc<Failures>) {
    let backend = HttpBackend::new(&HttpConfig {
        host: server.url(),
        path_prefix: "/".into(),
        request_timeout: Duration::from_secs(2),
        max_idle_connections: config.concurrency,
        tls: TlsConfig::default(),
    })
    .expect("backend");
    let failures = Arc::new(Failures::default());
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        backend,
        config,
        failures.clone(),
    );
    (instance, failures)
}

fn event(n: usize) -> Envelope<HttpEvent> {
    let body = format!("message={n}");
    let event = HttpEvent::new("events", &[], body.as_bytes()).expect("event");
    let size = event.size();
    Envelope::new(event, b"alice", size)
}

async fn eventually(what: &str, check: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(30), check).await;
}

/// Pushes `n` events through default settings and checks that each arrived exactly
/// `1 + failures` times and was delivered, with nothing failed.
async fn every_event_delivered_after(failures: Vec<Failure>, n: usize) -> RecordingServer {
    let server = start_flaky_server(move |_: &str| failures.clone()).await;
    let (instance, reported) = start_instance(&server, InstanceConfig::default());
    for i in 0..n {
        instance.push(event(i)).expect("push");
    }
    let summary = instance.stop(Duration::from_secs(60)).await;
    let s = summary.stats;
    assert_eq!(
        (s.delivered, s.failed, s.dropped, summary.lost),
        (n as u64, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.accepted, s.delivered);
    assert_eq!(reported.reasons(), Vec::<Reason>::new());
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_each_first_two_attempts_gets_every_event_with_default_settings() {
    let n = 2000;
    let server =
        every_event_delivered_after(vec![Failure::Status(500), Failure::Status(500)], n).await;
    let by_body = by_body(&server);
    assert_eq!(by_body.len(), n);
    assert!(by_body.values().all(|times| times.len() == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_on_503_and_429_is_honoured() {
    let failures = vec![
        Failure::RetryAfterSeconds(503, 1),
        Failure::RetryAfterSeconds(429, 1),
    ];
    let server = every_event_delivered_after(failures, 200).await;
    for (body, times) in by_body(&server) {
        assert_eq!(times.len(), 3, "{body}");
        for pair in times.windows(2) {
            // A lower bound: no attempt came before the server said it might.
            let gap = pair[1] - pair[0];
            assert!(gap >= Duration::from_secs(1), "{body}: {gap:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_an_http_date_is_honoured() {
    // The date has whole seconds: 2 s from now is at least 1 s away.
    let server = every_event_delivered_after(vec![Failure::RetryAfterDate(503, 2)], 50).await;
    for (body, times) in by_body(&server) {
        assert_eq!(times.len(), 2, "{body}");
        let gap = times[1] - times[0];
        assert!(gap >= Duration::from_millis(900), "{body}: {gap:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_event_leaves_its_worker_to_the_next_one() {
    // One worker. Event 0 is told to come back in 3 s; event 1, pushed after its
    // first attempt, is delivered while event 0 waits.
    let plan = |body: &str| match body {
        "message=0" => vec![Failure::RetryAfterSeconds(503, 3)],
        _ => vec![],
    };
    let server = start_flaky_server(plan).await;
    let config = InstanceConfig {
        concurrency: 1,
        ..InstanceConfig::default()
    };
    let (instance, _) = start_instance(&server, config);
    instance.push(event(0)).expect("push 0");
    eventually("event 0 waiting", || instance.stats().waiting_retry == 1).await;
    instance.push(event(1)).expect("push 1");
    eventually("event 1 delivered", || instance.stats().delivered == 1).await;
    assert_eq!(server.texts(), vec!["message=0", "message=1"]);
    assert_eq!(instance.stats().waiting_retry, 1);
    let summary = instance.stop(Duration::from_secs(30)).await;
    assert_eq!((summary.stats.delivered, summary.lost), (2, 0));
    assert_eq!(server.texts(), vec!["message=0", "message=1", "message=0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_past_the_deadline_fails_at_once_with_that_reason() {
    let plan = |_: &str| vec![Failure::RetryAfterSeconds(503, 120)];
    let server = start_flaky_server(plan).await;
    let (instance, reported) = start_instance(&server, InstanceConfig::default());
    instance.push(event(0)).expect("push");
    eventually("the event failed", || instance.stats().failed == 1).await;
    let s = instance.stats();
    assert_eq!((s.retried, s.queued, s.in_flight), (0, 0, 0), "{s:?}");
    instance.stop(Duration::ZERO).await;
    assert_eq!(server.texts(), vec!["message=0"]);
    assert_eq!(
        reported.reasons(),
        vec![Reason::RetryAfterPastDeadline(
            120,
            Box::new(Reason::HttpStatus(503))
        )]
    );
}
