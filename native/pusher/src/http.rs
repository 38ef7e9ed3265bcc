//! HTTP backend: POSTs over a keep-alive reqwest client (rustls for https).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use smallvec::SmallVec;

use crate::backend::{Attempt, AttemptOutcome, Backend, Verdict};
use crate::reason::Reason;

/// How the server's certificate is checked (MongooseIM's `tls.verify_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// The chain leads to a trusted root (the built-in roots plus `cacertfile`), and the
    /// certificate is valid now and for the host name.
    #[default]
    Peer,
    /// As `Peer`, and a self-signed certificate is accepted too: only its unknown issuer
    /// is forgiven; its dates, key usage and host name are checked all the same.
    SelfSignedPeer,
    /// Nothing is checked.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    pub verify_mode: VerifyMode,
    pub cacertfile: Option<String>,
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    pub server_name_indication: bool,
}

/// One `[outgoing_pools.http.<tag>]` pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// "http[s]://host[:port]"
    pub host: String,
    pub path_prefix: String,
    pub request_timeout: Duration,
    /// Idle keep-alive connections kept per host (the pool's `workers`).
    pub max_idle_connections: usize,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HttpConfigError(pub String);

/// Bytes of an event that another owner keeps alive (the NIF: a binary of the calling
/// process, referenced instead of copied), read by the worker.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// One part of a body: copied when small, shared when large.
#[derive(Clone)]
pub enum Chunk {
    Inline(Box<[u8]>),
    Shared(SharedBytes),
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        match self {
            Chunk::Inline(bytes) => bytes,
            Chunk::Shared(shared) => (**shared).as_ref(),
        }
    }
}

impl From<&[u8]> for Chunk {
    fn from(bytes: &[u8]) -> Self {
        Chunk::Inline(bytes.into())
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({} bytes)", self.as_ref().len())
    }
}

/// A request body: bytes as the callback module built them, or form fields that the
/// worker encodes (`application/x-www-form-urlencoded`, as cow_qs:qs/1 does), so that
/// the routing process never does work that grows with the message.
#[derive(Debug, Clone)]
pub enum Body {
    Raw(Chunk),
    Form(Vec<(Chunk, Chunk)>),
}

impl Body {
    /// Bytes held: a raw body's length; for a form, its names and values plus one
    /// `=` per field and one `&` between fields (the encoding not counted: finding
    /// its length means reading every byte).
    pub fn size(&self) -> usize {
        match self {
            Body::Raw(bytes) => bytes.as_ref().len(),
            Body::Form(fields) => {
                let text: usize = fields
                    .iter()
                    .map(|(k, v)| k.as_ref().len() + v.as_ref().len())
                    .sum();
                text + (2 * fields.len()).saturating_sub(1)
            }
        }
    }

    /// The bytes to send.
    pub fn encode(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Body::Raw(bytes) => std::borrow::Cow::Borrowed(bytes.as_ref()),
            Body::Form(fields) => std::borrow::Cow::Owned(crate::form::urlencode(fields)),
        }
    }
}

/// One request to make: path below the pool's prefix, headers as the Erlang callback
/// module produced them (any bytes; invalid headers fail the event) and the body.
/// Path and headers are held in one allocation, because they are built on the
/// routing path.
#[derive(Debug, Clone)]
pub struct HttpEvent {
    /// path, then each header's name and value
    head: Box<[u8]>,
    path_len: u32,
    /// (name length, value length) of each header, in order
    header_lens: SmallVec<[(u32, u32); 2]>,
    body: Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an HTTP request part is larger than 4 GiB")]
pub struct TooLarge;

fn len32(bytes: &[u8]) -> Result<u32, TooLarge> {
    u32::try_from(bytes.len()).map_err(|_| TooLarge)
}

impl HttpEvent {
    /// An event with a raw body, every part copied.
    pub fn new(path: &str, headers: &[(&[u8], &[u8])], body: &[u8]) -> Result<Self, TooLarge> {
        Self::with_body(path, headers, Body::Raw(body.into()))
    }

    pub fn with_body(path: &str, headers: &[(&[u8], &[u8])], body: Body) -> Result<Self, TooLarge> {
        let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut head = Vec::with_capacity(path.len() + header_bytes);
        head.extend_from_slice(path.as_bytes());
        let mut header_lens = SmallVec::with_capacity(headers.len());
        for (name, value) in headers {
            header_lens.push((len32(name)?, len32(value)?));
            head.extend_from_slice(name);
            head.extend_from_slice(value);
        }
        Ok(HttpEvent {
            path_len: len32(path.as_bytes())?,
            head: head.into_boxed_slice(),
            header_lens,
            body,
        })
    }

    /// Bytes held, for the queue's byte cap.
    pub fn size(&self) -> usize {
        self.head.len() + self.body.size()
    }

    pub fn path(&self) -> &str {
        // Built from a &str, so always valid; never panics either way.
        std::str::from_utf8(&self.head[..self.path_len as usize]).unwrap_or_default()
    }

    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut at = self.path_len as usize;
        self.header_lens.iter().map(move |&(name, value)| {
            let (name, value) = (name as usize, value as usize);
            let header = (
                &self.head[at..at + name],
                &self.head[at + name..at + name + value],
            );
            at += name + value;
            header
        })
    }

    /// The body's bytes, form-encoded here when the event carries fields.
    pub fn body(&self) -> std::borrow::Cow<'_, [u8]> {
        self.body.encode()
    }
}

pub struct HttpBackend {
    client: reqwest::Client,
    /// host + prefix without its trailing "/": a non-empty path is joined with one "/".
    prefix_dir: String,
    /// host + prefix as configured: the URL of an empty path.
    prefix_url: String,
}

/// Response bodies are read (so the connection can be reused) up to this size.
const MAX_DRAINED_RESPONSE: usize = 64 * 1024;

fn read_file(what: &str, path: &str) -> Result<Vec<u8>, HttpConfigError> {
    std::fs::read(path).map_err(|e| HttpConfigError(format!("cannot read {what} {path}: {e}")))
}

impl HttpBackend {
    pub fn new(config: &HttpConfig) -> Result<Self, HttpConfigError> {
        let host = config.host.trim_end_matches('/');
        let url = reqwest::Url::parse(host)
            .map_err(|e| HttpConfigError(format!("invalid host {:?}: {e}", config.host)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(HttpConfigError(format!(
                "invalid host {:?}: expected http[s]://host[:port]",
                config.host
            )));
        }
        let prefix = match config.path_prefix.strip_prefix('/') {
            Some(rest) => format!("/{rest}"),
            None => format!("/{}", config.path_prefix),
        };
        let builder = reqwest::Client::builder()
            .use_preconfigured_tls(client_tls(&config.tls)?)
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.max_idle_connections)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true);
        let client = builder
            .build()
            .map_err(|e| HttpConfigError(format!("cannot build HTTP client: {e}")))?;
        Ok(HttpBackend {
            client,
            prefix_dir: format!("{host}{}", prefix.trim_end_matches('/')),
            prefix_url: format!("{host}{prefix}"),
        })
    }

    /// host + path_prefix + path with exactly one "/" between prefix and path (the URL
    /// MongooseIM documents; 6.4.0 itself concatenates without the "/").
    pub fn url_for(&self, path: &str) -> String {
        if path.is_empty() {
            self.prefix_url.clone()
        } else {
            format!("{}/{}", self.prefix_dir, path.trim_start_matches('/'))
        }
    }
}

/// The rustls client configuration of a pool: roots, verification mode, client
/// certificate and SNI. Built here rather than through reqwest's TLS options because
/// reqwest has no mode that forgives only a self-signed certificate.
fn client_tls(tls: &TlsConfig) -> Result<rustls::ClientConfig, HttpConfigError> {
    let provider = crypto_provider();
    let verifier: Arc<dyn ServerCertVerifier> = match tls.verify_mode {
        VerifyMode::Peer => chain_verifier(trusted_roots(tls)?, &provider)?,
        VerifyMode::SelfSignedPeer => Arc::new(AlsoSelfSigned {
            chain: chain_verifier(trusted_roots(tls)?, &provider)?,
            provider: provider.clone(),
        }),
        VerifyMode::None => Arc::new(NoVerification {
            schemes: provider
                .signature_verification_algorithms
                .supported_schemes(),
        }),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpConfigError(format!("cannot set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&tls.certfile, &tls.keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let certs = pem_certificates("certfile", certfile)?;
            let key = PrivateKeyDer::from_pem_slice(&read_file("keyfile", keyfile)?)
                .map_err(|e| HttpConfigError(format!("bad keyfile {keyfile}: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| HttpConfigError(format!("bad certfile/keyfile: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(HttpConfigError(
                "tls.certfile and tls.keyfile go together".into(),
            ))
        }
    };
    config.enable_sni = tls.server_name_indication;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// As reqwest chooses: an application-wide default if one was installed, else ring
/// (the provider reqwest's "rustls-tls" feature builds).
fn crypto_provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The built-in (Mozilla) roots plus those of `cacertfile`.
fn trusted_roots(tls: &TlsConfig) -> Result<RootCertStore, HttpConfigError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &tls.cacertfile {
        for cert in pem_certificates("cacertfile", path)? {
            roots
                .add(cert)
                .map_err(|e| HttpConfigError(format!("bad cacertfile {path}: {e}")))?;
        }
    }
    Ok(roots)
}

fn pem_certificates(
    what: &str,
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, HttpConfigError> {
    let certs = CertificateDer::pem_slice_iter(&read_file(what, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpConfigError(format!("bad {what} {path}: {e}")))?;
    if certs.is_empty() {
        return Err(HttpConfigError(format!(
            "no PEM certificate in {what} {path}"
        )));
    }
    Ok(certs)
}

fn chain_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, HttpConfigError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| HttpConfigError(format!("cannot set up certificate verification: {e}")))
}

/// `selfsigned_peer`: the WebPKI verification of `peer`, except that a certificate
/// whose issuer is unknown is accepted when it is self-signed and passes every other
/// check.
#[derive(Debug)]
struct AlsoSelfSigned {
    chain: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl AlsoSelfSigned {
    /// Verifies the certificate again with itself as the only trusted root. That passes
    /// the chain step only if it is its own issuer and signed by its own key; WebPKI
    /// then checks its dates, key usage and name as for any certificate.
    fn verify_as_self_signed(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let unknown_issuer = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let mut itself = RootCertStore::empty();
        if itself.add(end_entity.clone().into_owned()).is_err() {
            return Err(unknown_issuer);
        }
        let Ok(verifier) =
            WebPkiServerVerifier::builder_with_provider(Arc::new(itself), self.provider.clone())
                .build()
        else {
            return Err(unknown_issuer);
        };
        match verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now) {
            // Not its own issuer, or not signed by its own key: not self-signed.
            #[allow(deprecated)]
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::UnsupportedSignatureAlgorithm
                | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
                | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. },
            )) => Err(unknown_issuer),
            result => result,
        }
    }
}

impl ServerCertVerifier for AlsoSelfSigned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                self.verify_as_self_signed(end_entity, server_name, ocsp_response, now)
            }
            result => result,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// `none`: any certificate, as reqwest's `danger_accept_invalid_certs`.
#[derive(Debug)]
struct NoVerification {
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

fn headers<'a>(raw: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in raw {
        let name = HeaderName::from_bytes(name)
            .map_err(|_| format!("invalid header name {:?}", String::from_utf8_lossy(name)))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| format!("invalid value for header {name}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The verdict on a response; `retry_after` is the wait the server asked for, if any.
fn classify(status: u16, retry_after: Option<Duration>) -> Verdict {
    match (status, retry_after) {
        (200..=299, _) => Verdict::Delivered,
        (429 | 500..=599, None) => Verdict::Retry(Reason::HttpStatus(status)),
        (429 | 500..=599, Some(after)) => Verdict::RetryAfter {
            reason: Reason::HttpStatus(status),
            after,
        },
        _ => Verdict::Fatal(Reason::HttpStatus(status)),
    }
}

/// The wait a 429 or 503 response asks for in its `Retry-After` header (RFC 9110
/// 10.2.3; RFC 6585 for 429). None when there is none or it cannot be read.
fn retry_after(status: u16, headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    if !matches!(status, 429 | 503) {
        return None;
    }
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value.trim(), now)
}

/// delay-seconds, or an HTTP-date (a date already past asks for no wait).
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than u64 holds is "later than any deadline" all the same.
        return Some(value.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

fn describe(error: &reqwest::Error) -> Reason {
    let short = |mut text: String| {
        text.truncate(200);
        text
    };
    if error.is_timeout() {
        Reason::Timeout
    } else if let Some(tls) = tls_failure(error) {
        Reason::Tls(short(tls.to_string()))
    } else if error.is_connect() {
        Reason::Connection("connect failed".into())
    } else {
        Reason::Connection(short(error.to_string()))
    }
}

/// The TLS error (a refused certificate, a failed handshake) behind a failed request.
fn tls_failure(error: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    // A few levels (reqwest, hyper, nested io errors); bounded in case of a cycle.
    for _ in 0..16 {
        let current = next?;
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error::source() skips the error it wraps; get_ref() gives it.
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    None
}

impl Backend for HttpBackend {
    type Event = HttpEvent;

    async fn deliver(&self, event: &HttpEvent) -> Attempt {
        let headers = match headers(event.headers()) {
            Ok(headers) => headers,
            Err(reason) => return Attempt::rejected(Reason::BadRequest(reason)),
        };
        let request = self
            .client
            .post(self.url_for(event.path()))
            .headers(headers)
            .body(event.body().into_owned());
        match request.send().await {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let wait = retry_after(status, response.headers(), std::time::SystemTime::now());
                let mut drained = 0;
                while let Ok(Some(chunk)) = response.chunk().await {
                    drained += chunk.len();
                    if drained > MAX_DRAINED_RESPONSE {
                        break;
                    }
                }
                Attempt {
                    verdict: classify(status, wait),
                    outcome: AttemptOutcome::Response(status),
                    wire_bytes: None,
                }
            }
            Err(error) => Attempt::no_response(describe(&error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(host: &str, prefix: &str) -> HttpBackend {
        HttpBackend::new(&HttpConfig {
            host: host.into(),
            path_prefix: prefix.into(),
            request_timeout: Duration::from_secs(1),
            max_idle_connections: 1,
            tls: TlsConfig::default(),
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn prefix_and_path_join_with_exactly_one_slash() {
        let cases = [
            ("http://h:1", "/", "", "http://h:1/"),
            (
                "http://h:1",
                "/",
                "notifications",
                "http://h:1/notifications",
            ),
            (
                "http://h:1/",
                "/webservice",
                "notifications",
                "http://h:1/webservice/notifications",
            ),
            (
                "http://h:1",
                "/webservice/",
                "notifications",
                "http://h:1/webservice/notifications",
            ),
            (
                "http://h:1",
                "webservice",
                "a/b",
                "http://h:1/webservice/a/b",
            ),
            ("http://h:1", "/webservice", "", "http://h:1/webservice"),
        ];
        for (host, prefix, path, url) in cases {
            assert_eq!(
                backend(host, prefix).url_for(path),
                url,
                "{host} {prefix} {path}"
            );
        }
    }

    #[test]
    fn bad_hosts_are_refused_with_a_reason() {
        for host in ["localhost:8000", "ftp://h", "http://", ""] {
            let config = HttpConfig {
                host: host.into(),
                path_prefix: "/".into(),
                request_timeout: Duration::from_secs(1),
                max_idle_connections: 1,
                tls: TlsConfig::default(),
            };
            match HttpBackend::new(&config) {
                Err(HttpConfigError(reason)) => assert!(reason.contains("host"), "{reason}"),
                Ok(_) => panic!("{host} accepted"),
            }
        }
    }

    #[test]
    fn an_event_keeps_its_parts_apart() {
        let headers: [(&[u8], &[u8]); 2] = [(b"a", b"1"), (b"content-type", b"text/plain")];
        let event = HttpEvent::new("p/q", &headers, b"body \xff").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(event.path(), "p/q");
        assert_eq!(event.headers().collect::<Vec<_>>(), headers.to_vec());
        assert_eq!(&*event.body(), b"body \xff");
        assert_eq!(event.size(), 3 + 2 + 22 + 6);
        let bare = HttpEvent::new("", &[], b"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (bare.path(), bare.headers().count(), &*bare.body()),
            ("", 0, &b""[..])
        );
    }

    #[test]
    fn a_form_body_is_encoded_when_read_and_sized_without_encoding() {
        let shared: SharedBytes = Arc::new(b"a b~".to_vec());
        let fields = vec![
            (Chunk::from(&b"author"[..]), Chunk::from(&b"al ice"[..])),
            (Chunk::from(&b"message"[..]), Chunk::Shared(shared)),
        ];
        let event =
            HttpEvent::with_body("p", &[], Body::Form(fields)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*event.body(), b"author=al+ice&message=a+b%7E");
        // 6 + 6 + 7 + 4 name and value bytes, two "=" and one "&", and the path.
        assert_eq!(event.size(), 1 + 23 + 3);
        let empty =
            HttpEvent::with_body("", &[], Body::Form(Vec::new())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((empty.size(), &*empty.body()), (0, &b""[..]));
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(200, None), Verdict::Delivered);
        assert_eq!(classify(204, None), Verdict::Delivered);
        assert!(matches!(classify(500, None), Verdict::Retry(_)));
        assert!(matches!(classify(429, None), Verdict::Retry(_)));
        assert!(matches!(classify(404, None), Verdict::Fatal(_)));
        assert!(matches!(classify(301, None), Verdict::Fatal(_)));
        let second = Duration::from_secs(1);
        assert_eq!(
            classify(503, Some(second)),
            Verdict::RetryAfter {
                reason: Reason::HttpStatus(503),
                after: second
            }
        );
        assert_eq!(classify(200, Some(second)), Verdict::Delivered);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_http_date_on_429_and_503() {
        use std::time::UNIX_EPOCH;
        // Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example date.
        let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let now = date - Duration::from_secs(90);
        let header = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(
                reqwest::header::RETRY_AFTER,
                HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
            );
            map
        };
        let secs = Duration::from_secs;
        assert_eq!(retry_after(503, &header("120"), now), Some(secs(120)));
        assert_eq!(retry_after(429, &header(" 0 "), now), Some(secs(0)));
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                retry_after(503, &header(form), now),
                Some(secs(90)),
                "{form}"
            );
        }
        // A date already past: no wait asked for.
        assert_eq!(
            retry_after(
                503,
                &header("Sun, 06 Nov 1994 08:49:37 GMT"),
                date + secs(5)
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(429, &header("99999999999999999999999"), now),
            Some(Duration::MAX)
        );
        for bad in ["-1", "1.5", "soon", "", "Sun, 06 Nov 1994"] {
            assert_eq!(retry_after(503, &header(bad), now), None, "{bad:?}");
        }
        // Only 429 and 503 carry it; elsewhere it is ignored.
        assert_eq!(retry_after(500, &header("120"), now), None);
        assert_eq!(retry_after(301, &header("120"), now), None);
        assert_eq!(retry_after(503, &HeaderMap::new(), now), None);
    }
}
