//! `tls.verify_mode` of the http backend against a real HTTPS server, one kind of
//! server certificate per case (made here with rcgen). What the server saw decides:
//! a request that arrived, or a handshake the client aborted with a certificate alert.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use pusher::backend::{AttemptOutcome, Backend, Verdict};
use pusher::http::{HttpBackend, HttpConfig, HttpEvent, TlsConfig, VerifyMode};
use pusher::Reason;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// What the server saw of one connection.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The handshake failed; the error text (the client's alert, when it sent one).
    HandshakeFailed(String),
    /// A request arrived with this body.
    Request(Vec<u8>),
}

struct Server {
    port: u16,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Server {
    async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
            .await
            .expect("the server saw nothing in 10 s")
            .expect("server gone")
    }
}

/// An HTTPS server on 127.0.0.1 presenting `chain` (end entity first).
async fn start_server(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Server {
    start_server_with_clients(chain, key, None).await
}

/// As `start_server`; with `client_ca`, only clients with a certificate it issued.
async fn start_server_with_clients(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<CertificateDer<'static>>,
) -> Server {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).expect("client CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .expect("server certificate");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(Seen::HandshakeFailed(e.to_string()));
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let _ =
                            tx.send(Seen::Request(body.map(|b| b.to_vec()).unwrap_or_default()));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Server { port, seen }
}

struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Issued {
    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }
}

fn params(names: &[&str], common_name: &str) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("names");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
}

/// Valid from yesterday to next year: rcgen's defaults are 1975..4096, and the
/// expired case sets its own.
fn valid_now(mut params: CertificateParams) -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    params
}

fn self_signed(params: CertificateParams) -> Issued {
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    Issued { cert, key }
}

fn ca(name: &str) -> Issued {
    let mut params = valid_now(params(&[], name));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    self_signed(params)
}

fn issued_by(params: CertificateParams, issuer: &Issued) -> Issued {
    let key = KeyPair::generate().expect("key");
    let cert = params
        .signed_by(&key, &issuer.cert, &issuer.key)
        .expect("signed");
    Issued { cert, key }
}

/// The usual self-signed server certificate: for localhost and 127.0.0.1, valid now.
fn self_signed_for_localhost() -> Issued {
    self_signed(valid_now(params(&["localhost", "127.0.0.1"], "localhost")))
}

static FILES: AtomicUsize = AtomicUsize::new(0);

/// A PEM file under the temporary directory, removed when dropped.
struct PemFile(std::path::PathBuf);

impl PemFile {
    fn new(certs: &[&Issued]) -> Self {
        Self::with_text(&certs.iter().map(|c| c.cert.pem()).collect::<String>())
    }

    fn with_text(pem: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "pusher_http_tls_{}_{}.pem",
            std::process::id(),
            FILES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, pem).expect("write PEM");
        PemFile(path)
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for PemFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn backend(
    host: &str,
    port: u16,
    verify_mode: VerifyMode,
    cacertfile: Option<&PemFile>,
) -> HttpBackend {
    HttpBackend::new(&HttpConfig {
        host: format!("https://{host}:{port}"),
        path_prefix: "/".into(),
        request_timeout: Duration::from_secs(5),
        max_idle_connections: 1,
        tls: TlsConfig {
            verify_mode,
            cacertfile: cacertfile.map(PemFile::path),
            certfile: None,
            keyfile: None,
            server_name_indication: true,
        },
    })
    .expect("backend")
}

fn event(body: &str) -> HttpEvent {
    HttpEvent::new("events", &[], body.as_bytes()).expect("event")
}

/// One attempt goes through: the server got exactly this body and answered 200.
async fn assert_delivered(backend: &HttpBackend, server: &mut Server, body: &str) {
    let attempt = backend.deliver(&event(body)).await;
    assert_eq!(
        attempt.outcome,
        AttemptOutcome::Response(200),
        "{attempt:?}"
    );
    assert_eq!(attempt.verdict, Verdict::Delivered);
    assert_eq!(server.next().await, Seen::Request(body.as_bytes().to_vec()));
}

/// One attempt is refused by the client: its reason names the certificate error, and
/// the server saw the handshake end with the matching alert and no request.
async fn assert_refused(backend: &HttpBackend, server: &mut Server, reason: &str, alert: &str) {
    let attempt = backend.deliver(&event("must not arrive")).await;
    match &attempt.outcome {
        AttemptOutcome::NoResponse(Reason::Tls(text)) => {
            assert!(text.contains(reason), "{text} lacks {reason}");
        }
        other => panic!("expected a refused certificate, got {other:?}"),
    }
    assert!(matches!(attempt.verdict, Verdict::Retry(_)));
    match server.next().await {
        Seen::HandshakeFailed(text) => assert!(text.contains(alert), "{text} lacks {alert}"),
        other => panic!("the server saw {other:?}"),
    }
}

#[tokio::test]
async fn peer_refuses_a_self_signed_certificate() {
    let cert = self_signed_for_localhost();
    let mut server = start_server(vec![cert.der()], cert.key_der()).await;
    let client = backend("localhost", server.port, VerifyMode::Peer, None);
    assert_refused(&client, &mut server, "UnknownIssuer", "UnknownCA").await;
}

#[tokio::test]
async fn selfsigned_peer_accepts_a_self_signed_certificate_for_the_host() {
    let cert = self_signed_for_localhost();
    let mut server = start_server(vec![cert.der()], cert.key_der()).await;
    for host in ["localhost", "127.0.0.1"] {
        let client = backend(host, server.port, VerifyMode::SelfSignedPeer, None);
        assert_delivered(&client, &mut server, host).await;
    }
}

#[tokio::test]
async fn selfsigned_peer_refuses_an_expired_self_signed_certificate() {
    let mut params = params(&["localhost"], "localhost");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = self_signed(params);
    let mut server = start_server(vec![cert.der()], cert.key_der()).await;
    let client = backend("localhost", server.port, VerifyMode::SelfSignedPeer, None);
    assert_refused(&client, &mut server, "expired", "CertificateExpired").await;
}

#[tokio::test]
async fn selfsigned_peer_refuses_a_self_signed_certificate_not_yet_valid() {
    let mut params = params(&["localhost"], "localhost");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(30);
    params.not_after = now + time::Duration::days(365);
    let cert = self_signed(params);
    let mut server = start_server(vec![cert.der()], cert.key_der()).await;
    let client = backend("localhost", server.port, VerifyMode::SelfSignedPeer, None);
    assert_refused(&client, &mut server, "not valid yet", "CertificateExpired").await;
}

#[tokio::test]
async fn selfsigned_peer_refuses_a_self_signed_certificate_for_another_name() {
    let cert = self_signed(valid_now(params(&["other.example"], "other.example")));
    let mut server = start_server(vec![cert.der()], cert.key_der()).await;
    for host in ["localhost", "127.0.0.1"] {
        let client = backend(host, server.port, VerifyMode::SelfSignedPeer, None);
        assert_refused(&client, &mut server, "not valid for name", "BadCertificate").await;
    }
}

#[tokio::test]
async fn selfsigned_peer_refuses_a_certificate_from_an_untrusted_ca() {
    let untrusted = ca("Untrusted CA");
    let cert = issued_by(valid_now(params(&["localhost"], "localhost")), &untrusted);
    let mut server = start_server(vec![cert.der(), untrusted.der()], cert.key_der()).await;
    let client = backend("localhost", server.port, VerifyMode::SelfSignedPeer, None);
    assert_refused(&client, &mut server, "UnknownIssuer", "UnknownCA").await;
}

/// Its issuer is its own name, but another key signed it: not self-signed.
#[tokio::test]
async fn selfsigned_peer_refuses_a_certificate_naming_itself_as_issuer_but_signed_by_another_key() {
    let impostor = self_signed(valid_now(params(&["localhost"], "localhost")));
    let cert = issued_by(valid_now(params(&["localhost"], "localhost")), &impostor);
    let mut server = start_server(vec![cert.der()], cert.key_der()).await;
    let client = backend("localhost", server.port, VerifyMode::SelfSignedPeer, None);
    assert_refused(&client, &mut server, "UnknownIssuer", "UnknownCA").await;
}

#[tokio::test]
async fn a_ca_in_cacertfile_is_trusted_in_both_verifying_modes() {
    let trusted = ca("Trusted CA");
    let cacertfile = PemFile::new(&[&trusted]);
    let cert = issued_by(valid_now(params(&["localhost"], "localhost")), &trusted);
    let mut server = start_server(vec![cert.der()], cert.key_der()).await;
    for mode in [VerifyMode::Peer, VerifyMode::SelfSignedPeer] {
        let client = backend("localhost", server.port, mode, Some(&cacertfile));
        assert_delivered(&client, &mut server, &format!("{mode:?}")).await;
    }
}

#[tokio::test]
async fn selfsigned_peer_still_refuses_an_expired_certificate_from_a_trusted_ca() {
    let trusted = ca("Trusted CA");
    let cacertfile = PemFile::new(&[&trusted]);
    let mut params = params(&["localhost"], "localhost");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = issued_by(params, &trusted);
    let mut server = start_server(vec![cert.der()], cert.key_der()).await;
    let client = backend(
        "localhost",
        server.port,
        VerifyMode::SelfSignedPeer,
        Some(&cacertfile),
    );
    assert_refused(&client, &mut server, "expired", "CertificateExpired").await;
}

#[tokio::test]
async fn none_accepts_any_certificate() {
    let mut expired = params(&["other.example"], "other.example");
    expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let untrusted = ca("Untrusted CA");
    let certs = [
        self_signed(expired),
        issued_by(valid_now(params(&["localhost"], "localhost")), &untrusted),
    ];
    for cert in &certs {
        let mut server = start_server(vec![cert.der()], cert.key_der()).await;
        let client = backend("localhost", server.port, VerifyMode::None, None);
        assert_delivered(&client, &mut server, "anything goes").await;
    }
}

/// rustls (WebPKI) never takes a CA certificate as a server's own, whatever the mode
/// but `none`: `openssl req -x509` makes such certificates unless told
/// `-addext basicConstraints=critical,CA:FALSE` (README).
#[tokio::test]
async fn a_self_signed_ca_certificate_as_the_server_certificate_is_refused() {
    let mut params = valid_now(params(&["localhost"], "localhost"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = self_signed(params);
    let mut server = start_server(vec![cert.der()], cert.key_der()).await;
    let client = backend("localhost", server.port, VerifyMode::SelfSignedPeer, None);
    assert_refused(&client, &mut server, "CaUsedAsEndEntity", "").await;
}

#[tokio::test]
async fn the_client_certificate_of_certfile_and_keyfile_is_presented() {
    let server_cert = self_signed_for_localhost();
    let client_ca = ca("Client CA");
    let client = issued_by(valid_now(params(&["client.example"], "client")), &client_ca);
    let certfile = PemFile::new(&[&client]);
    let keyfile = PemFile::with_text(&client.key.serialize_pem());
    let mut server = start_server_with_clients(
        vec![server_cert.der()],
        server_cert.key_der(),
        Some(client_ca.der()),
    )
    .await;
    let with_certificate = HttpBackend::new(&HttpConfig {
        host: format!("https://localhost:{}", server.port),
        path_prefix: "/".into(),
        request_timeout: Duration::from_secs(5),
        max_idle_connections: 1,
        tls: TlsConfig {
            verify_mode: VerifyMode::SelfSignedPeer,
            cacertfile: None,
            certfile: Some(certfile.path()),
            keyfile: Some(keyfile.path()),
            server_name_indication: true,
        },
    })
    .expect("backend");
    assert_delivered(&with_certificate, &mut server, "with a client certificate").await;
    // The same server refuses a client without one: the certificate above was needed.
    let without = backend("localhost", server.port, VerifyMode::SelfSignedPeer, None);
    let attempt = without.deliver(&event("no client certificate")).await;
    assert!(
        matches!(attempt.outcome, AttemptOutcome::NoResponse(_)),
        "{attempt:?}"
    );
    match server.next().await {
        Seen::HandshakeFailed(text) => {
            assert!(text.contains("peer sent no certificates"), "{text}")
        }
        other => panic!("the server saw {other:?}"),
    }
}

#[test]
fn an_empty_or_unreadable_cacertfile_is_a_configuration_error() {
    let empty = PemFile::new(&[]);
    let missing = PemFile(std::env::temp_dir().join("pusher_http_tls_no_such_file.pem"));
    for (file, expected) in [(&empty, "no PEM certificate"), (&missing, "cannot read")] {
        let config = HttpConfig {
            host: "https://localhost:1".into(),
            path_prefix: "/".into(),
            request_timeout: Duration::from_secs(1),
            max_idle_connections: 1,
            tls: TlsConfig {
                cacertfile: Some(file.path()),
                ..TlsConfig::default()
            },
        };
        match HttpBackend::new(&config) {
            Err(e) => assert!(e.0.contains(expected), "{e}"),
            Ok(_) => panic!("{expected}: accepted"),
        }
    }
}
