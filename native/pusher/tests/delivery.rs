//! The core against a real HTTP server started by the test.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pusher::backend::{Attempt, AttemptOutcome, Backend};
use pusher::http::{HttpBackend, HttpConfig, HttpEvent, TlsConfig};
use pusher::{
    Envelope, Instance, InstanceConfig, Overflow, PushError, QueueLimits, Reason, RetryPolicy,
};

use common::{wait_until, Collect, RecordingServer};

/// Every attempt's outcome, in report order.
fn statuses(reports: &Collect) -> Vec<AttemptOutcome> {
    reports
        .batches()
        .iter()
        .flat_map(|b| b.attempts.iter().map(|a| a.outcome.clone()))
        .collect()
}

fn http_backend(host: String) -> HttpBackend {
    HttpBackend::new(&HttpConfig {
        host,
        path_prefix: "/hooks".into(),
        request_timeout: Duration::from_millis(500),
        max_idle_connections: 4,
        tls: TlsConfig::default(),
    })
    .expect("backend")
}

fn config(max_attempts: u32, max_events: usize) -> InstanceConfig {
    InstanceConfig {
        queue: QueueLimits {
            max_events,
            max_bytes: 1 << 20,
            overflow: Overflow::DropNewest,
        },
        retry: RetryPolicy {
            max_attempts,
            base_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            deadline: Duration::from_secs(10),
            ..RetryPolicy::default()
        },
        concurrency: 4,
    }
}

fn event(n: usize) -> Envelope<HttpEvent> {
    let body = format!("message={n}");
    let headers: [(&[u8], &[u8]); 1] = [(b"content-type", b"application/x-www-form-urlencoded")];
    let event = HttpEvent::new("events", &headers, body.as_bytes()).expect("event");
    let size = event.size();
    Envelope::new(event, b"alice", size)
}

async fn eventually(what: &str, check: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(5), check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_event_to_a_real_server() {
    let sink = RecordingServer::scripted(vec![], Duration::ZERO).await;
    let reports = Arc::new(Collect::default());
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        http_backend(sink.url()),
        config(3, 1000),
        reports.clone(),
    );
    for n in 0..200 {
        instance.push(event(n)).expect("push");
    }
    let summary = instance.stop(Duration::from_secs(10)).await;
    assert_eq!(summary.lost, 0);
    assert_eq!(summary.stats.delivered, 200);
    assert_eq!(summary.stats.accepted, 200);
    let received = sink.received();
    assert_eq!(received.len(), 200);
    assert!(received.iter().all(|r| r.path == "/hooks/events"));
    assert_eq!(
        received[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let mut bodies: Vec<String> = received
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    bodies.sort();
    assert!(bodies.contains(&"message=199".to_string()));
    assert_eq!(statuses(&reports).len(), 200);
    assert!(summary.stats.latency_p50_us.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_until_success_and_reports_every_response() {
    let sink = RecordingServer::scripted(vec![500, 503], Duration::ZERO).await;
    let reports = Arc::new(Collect::default());
    let mut cfg = config(5, 10);
    cfg.concurrency = 1;
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        http_backend(sink.url()),
        cfg,
        reports.clone(),
    );
    instance.push(event(1)).expect("push");
    let summary = instance.stop(Duration::from_secs(10)).await;
    assert_eq!(summary.stats.delivered, 1);
    assert_eq!(summary.stats.retried, 2);
    assert_eq!(summary.stats.failed, 0);
    assert_eq!(
        statuses(&reports),
        vec![
            AttemptOutcome::Response(500),
            AttemptOutcome::Response(503),
            AttemptOutcome::Response(200)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_final() {
    let sink = RecordingServer::scripted(vec![404], Duration::ZERO).await;
    let reports = Arc::new(Collect::default());
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        http_backend(sink.url()),
        config(5, 10),
        reports.clone(),
    );
    instance.push(event(1)).expect("push");
    let summary = instance.stop(Duration::from_secs(10)).await;
    assert_eq!(summary.stats.failed, 1);
    assert_eq!(summary.stats.retried, 0);
    assert_eq!(sink.count(), 1);
    let batches = reports.batches();
    let failures: Vec<_> = batches.iter().flat_map(|b| b.failures.clone()).collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].reason, Reason::HttpStatus(404));
    assert_eq!(&*failures[0].tag, b"alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_retried_then_failed() {
    // Bind then drop: nothing listens on this port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let reports = Arc::new(Collect::default());
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        http_backend(format!("http://127.0.0.1:{port}")),
        config(3, 10),
        reports.clone(),
    );
    instance.push(event(1)).expect("push");
    let summary = instance.stop(Duration::from_secs(10)).await;
    assert_eq!(summary.stats.failed, 1);
    assert_eq!(summary.stats.retried, 2);
    let statuses = statuses(&reports);
    assert_eq!(statuses.len(), 3);
    assert!(statuses
        .iter()
        .all(|s| matches!(s, AttemptOutcome::NoResponse(Reason::Connection(_)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_is_counted_and_the_books_balance() {
    // Each request takes 300 ms, so after the pushes the 4 workers are busy and the
    // queue is full: a state that holds still long enough to check the books exactly.
    let sink = RecordingServer::scripted(vec![], Duration::from_millis(300)).await;
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        http_backend(sink.url()),
        config(1, 8),
        Arc::new(pusher::report::NoReports),
    );
    let mut refused = 0;
    for n in 0..4 {
        instance.push(event(n)).expect("push");
    }
    eventually("4 events in flight", || instance.stats().in_flight == 4).await;
    for n in 4..1000 {
        match instance.push(event(n)) {
            Ok(()) => {}
            Err(PushError::QueueFull) => refused += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    // The cheap pre-check agrees, and counts what it refuses the same way.
    assert_eq!(instance.refusal(10), Some(PushError::QueueFull));
    refused += 1;
    let s = instance.stats();
    assert_eq!((s.accepted, s.queued, s.in_flight), (1001, 8, 4), "{s:?}");
    assert_eq!(s.dropped, refused);
    assert_eq!(refused, 1001 - 12);
    assert_eq!(
        s.accepted,
        s.delivered + s.failed + s.dropped + s.queued + s.in_flight
    );
    let summary = instance.stop(Duration::from_secs(10)).await;
    assert_eq!(instance.refusal(10), Some(PushError::Stopped));
    let s = summary.stats;
    assert_eq!(s.delivered, 12);
    // stats were taken at stop; the refusal after it is one more accepted and dropped.
    assert_eq!(s.accepted, s.delivered + s.failed + s.dropped);
    assert_eq!(instance.stats().dropped, s.dropped + 1);
    assert_eq!(sink.count(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_a_short_deadline_counts_what_it_could_not_deliver() {
    let sink = RecordingServer::scripted(vec![], Duration::from_millis(300)).await;
    let mut cfg = config(1, 100);
    cfg.concurrency = 1;
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        http_backend(sink.url()),
        cfg,
        Arc::new(pusher::report::NoReports),
    );
    for n in 0..10 {
        instance.push(event(n)).expect("push");
    }
    let summary = instance.stop(Duration::from_millis(450)).await;
    assert!(summary.lost >= 8, "lost {}", summary.lost);
    let s = summary.stats;
    assert_eq!(
        s.accepted,
        s.delivered + s.failed + s.dropped + s.queued + s.in_flight
    );
    assert_eq!(s.queued, 0);
    assert_eq!(instance.push(event(99)), Err(PushError::Stopped));
}

struct Flagged {
    dropped: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Drop for Flagged {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

impl Backend for Flagged {
    type Event = ();
    async fn deliver(&self, _: &()) -> Attempt {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Attempt::no_response(Reason::Connection("unreachable".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_instance_stops_its_tasks() {
    let dropped = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = Flagged {
        dropped: dropped.clone(),
        calls: calls.clone(),
    };
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        backend,
        config(1, 10),
        Arc::new(pusher::report::NoReports),
    );
    instance.push(Envelope::new((), b"", 1)).expect("push");
    eventually("a delivery in progress", || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(instance);
    eventually("the backend to be released", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_flow_without_a_stop() {
    let sink = RecordingServer::scripted(vec![], Duration::ZERO).await;
    let reports = Arc::new(Collect::default());
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        http_backend(sink.url()),
        config(1, 1000),
        reports.clone(),
    );
    for n in 0..50 {
        instance.push(event(n)).expect("push");
    }
    eventually("50 attempts reported", || statuses(&reports).len() == 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_deadline_with_some_workers_idle_still_answers() {
    // Three idle workers end at once when stopping, one stays stuck in a request:
    // the drain deadline must abort it without touching the finished ones again.
    let sink = RecordingServer::scripted(vec![], Duration::from_secs(5)).await;
    let instance = Instance::start(
        &tokio::runtime::Handle::current(),
        http_backend(sink.url()),
        config(1, 100),
        Arc::new(pusher::report::NoReports),
    );
    instance.push(event(1)).expect("push");
    eventually("a request in flight", || instance.stats().in_flight == 1).await;
    let summary = instance.stop(Duration::from_millis(200)).await;
    assert_eq!(summary.lost, 1);
    assert_eq!((summary.stats.failed, summary.stats.in_flight), (1, 0));
}
