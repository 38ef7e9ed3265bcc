//! `pusher-sink`: a small keep-alive HTTP/1.1 server for the demo and the benchmark.
//!
//! Every request is read in full and answered with a fixed status (200 unless
//! `--status` says otherwise) after an optional delay; answered requests are counted.
//! `GET /stats` answers `{"requests": N}` and is not counted itself.
//!
//! The first stdout line is `listening <port>`. The process exits when its stdin
//! closes (so the Erlang port that owns it takes it down when it dies), on SIGTERM
//! and on SIGINT.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const USAGE: &str = "usage: pusher-sink [--port N (0 = any)] [--delay-ms N] [--status N] \
                     [--threads N (0 = one per core; default 1)]";

#[derive(Debug, Clone, PartialEq)]
struct Args {
    port: u16,
    delay: Duration,
    status: StatusCode,
    threads: usize,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        port: 0,
        delay: Duration::ZERO,
        status: StatusCode::OK,
        threads: 1,
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
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(parsed)
}

struct Sink {
    requests: AtomicU64,
    delay: Duration,
    status: StatusCode,
}

impl Sink {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() == Method::GET && req.uri().path() == "/stats" {
            let body = format!(
                "{{\"requests\": {}}}",
                self.requests.load(Ordering::Relaxed)
            );
            return response(StatusCode::OK, "application/json", body);
        }
        // Read the whole body so the connection stays usable for the next request.
        if req.into_body().collect().await.is_err() {
            return response(StatusCode::BAD_REQUEST, "text/plain", String::new());
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        // Counted when answered: a request whose client gave up during the delay is not.
        self.requests.fetch_add(1, Ordering::Relaxed);
        response(self.status, "text/plain", String::new())
    }
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
    let sink = Arc::new(Sink {
        requests: AtomicU64::new(0),
        delay: args.delay,
        status: args.status,
    });
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
}
