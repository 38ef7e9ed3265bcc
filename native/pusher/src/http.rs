//! HTTP backend: POSTs over a keep-alive reqwest client (rustls for https).

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::backend::{Attempt, AttemptOutcome, Backend, Verdict};

/// How the server's certificate is checked (MongooseIM's `tls.verify_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    #[default]
    Peer,
    /// `selfsigned_peer` and `none`: the certificate chain is not checked.
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

/// One request to make: path below the pool's prefix, headers and body as the Erlang
/// callback module produced them (any bytes; invalid headers fail the event). Held in
/// one allocation, because it is built on the routing path.
#[derive(Debug, Clone)]
pub struct HttpEvent {
    /// path, then each header's name and value, then the body
    data: Box<[u8]>,
    path_len: u32,
    /// (name length, value length) of each header, in order
    header_lens: SmallVec<[(u32, u32); 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an HTTP request part is larger than 4 GiB")]
pub struct TooLarge;

fn len32(bytes: &[u8]) -> Result<u32, TooLarge> {
    u32::try_from(bytes.len()).map_err(|_| TooLarge)
}

impl HttpEvent {
    pub fn new(path: &str, headers: &[(&[u8], &[u8])], body: &[u8]) -> Result<Self, TooLarge> {
        let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut data = Vec::with_capacity(path.len() + header_bytes + body.len());
        data.extend_from_slice(path.as_bytes());
        let mut header_lens = SmallVec::with_capacity(headers.len());
        for (name, value) in headers {
            header_lens.push((len32(name)?, len32(value)?));
            data.extend_from_slice(name);
            data.extend_from_slice(value);
        }
        data.extend_from_slice(body);
        Ok(HttpEvent {
            path_len: len32(path.as_bytes())?,
            data: data.into_boxed_slice(),
            header_lens,
        })
    }

    /// Bytes held, for the queue's byte cap.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    pub fn path(&self) -> &str {
        // Built from a &str, so always valid; never panics either way.
        std::str::from_utf8(&self.data[..self.path_len as usize]).unwrap_or_default()
    }

    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut at = self.path_len as usize;
        self.header_lens.iter().map(move |&(name, value)| {
            let (name, value) = (name as usize, value as usize);
            let header = (
                &self.data[at..at + name],
                &self.data[at + name..at + name + value],
            );
            at += name + value;
            header
        })
    }

    pub fn body(&self) -> &[u8] {
        let headers: usize = self
            .header_lens
            .iter()
            .map(|&(k, v)| k as usize + v as usize)
            .sum();
        &self.data[self.path_len as usize + headers..]
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
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.max_idle_connections)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .tls_sni(config.tls.server_name_indication);
        let tls = &config.tls;
        if tls.verify_mode == VerifyMode::None {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(path) = &tls.cacertfile {
            let pem = read_file("cacertfile", path)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| HttpConfigError(format!("bad cacertfile {path}: {e}")))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&tls.certfile, &tls.keyfile) {
            (Some(cert), Some(key)) => {
                let mut pem = read_file("certfile", cert)?;
                pem.push(b'\n');
                pem.extend(read_file("keyfile", key)?);
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| HttpConfigError(format!("bad certfile/keyfile: {e}")))?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(HttpConfigError(
                    "tls.certfile and tls.keyfile go together".into(),
                ))
            }
        }
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

fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        429 | 500..=599 => Verdict::Retry(format!("http_status_{status}")),
        _ => Verdict::Fatal(format!("http_status_{status}")),
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "request_timeout".into()
    } else if error.is_connect() {
        "connection_failed".into()
    } else {
        let mut text = error.to_string();
        text.truncate(200);
        text
    }
}

impl Backend for HttpBackend {
    type Event = HttpEvent;

    async fn deliver(&self, event: &HttpEvent) -> Attempt {
        let headers = match headers(event.headers()) {
            Ok(headers) => headers,
            Err(reason) => return Attempt::rejected(reason),
        };
        let request = self
            .client
            .post(self.url_for(event.path()))
            .headers(headers)
            .body(event.body().to_vec());
        match request.send().await {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let mut drained = 0;
                while let Ok(Some(chunk)) = response.chunk().await {
                    drained += chunk.len();
                    if drained > MAX_DRAINED_RESPONSE {
                        break;
                    }
                }
                Attempt {
                    verdict: classify(status),
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
        assert_eq!(event.body(), b"body \xff");
        assert_eq!(event.size(), 3 + 2 + 22 + 6);
        let bare = HttpEvent::new("", &[], b"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (bare.path(), bare.headers().count(), bare.body()),
            ("", 0, &b""[..])
        );
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(200), Verdict::Delivered);
        assert_eq!(classify(204), Verdict::Delivered);
        assert!(matches!(classify(500), Verdict::Retry(_)));
        assert!(matches!(classify(429), Verdict::Retry(_)));
        assert!(matches!(classify(404), Verdict::Fatal(_)));
        assert!(matches!(classify(301), Verdict::Fatal(_)));
    }
}
