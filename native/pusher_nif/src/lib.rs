//! Rustler glue for `mod_event_pusher_nif`: Erlang terms <-> the `pusher` core.
//!
//! Every function takes raw terms and decodes them itself, so a wrong term gives
//! `{error, badarg}` instead of an exception, and nothing here can panic across the
//! boundary on bad input.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use std::time::Duration;

use pusher::backend::AttemptOutcome;
use pusher::connection::{ConnectionEvent, ConnectionState, StatusSnapshot};
use pusher::http::{
    Body, Chunk, HttpBackend, HttpConfig, HttpEvent, SharedBytes, TlsConfig, VerifyMode,
};
use pusher::push::{Element, Node, PushBackend, PushEvent, Reply, Router};
use pusher::rabbit::{
    ChatKind, Direction, ExchangeConfig, RabbitBackend, RabbitConfig, RabbitEvent, RabbitTls,
    Topics,
};
use pusher::report::{BackendDown, ReportBatch};
use pusher::retry::Jitter;
use pusher::sns::{AttributeValue, Notification, SnsBackend, SnsConfig, SnsEvent};
use pusher::{Envelope, Instance, InstanceConfig, Overflow, PushError, QueueLimits, RetryPolicy};
use pusher::{StatsSnapshot, StopSummary};
use rustler::{Atom, Binary, Encoder, Env, LocalPid, NifResult, OwnedEnv, ResourceArc, Term};
use smallvec::SmallVec;

mod reporter;
use reporter::ReportTarget;

mod atoms {
    rustler::atoms! {
        ok, error, badarg, queue_full, stopped, too_large, undefined, no_runtime,
        dropped_too_large, last_too_large_bytes, max_bytes, form,
        peer, none, drop_newest, drop_oldest,
        mod_event_pusher_nif, report,
        worker_threads,
        accepted, delivered, retried, failed, dropped, queued, queued_bytes, in_flight,
        waiting_retry,
        latency_p50_us, latency_p99_us, lost,
        attempts, failures, counters, connections, reports_lost,
        published, confirmed, nacked, timeout, opened, closed,
        presence, chat, groupchat, out, stop_failed, minus_base,
        message, string, number, binary,
        publish, route, result, error_reply, xmlel, xmlcdata, escaped, unknown_request,
        r#in = "in",
    }
}

/// Events are allocated on BEAM scheduler threads and freed on tokio threads; mimalloc
/// handles that cross-thread pattern far better than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The runtime is built here, at load, never lazily inside a NIF call.
fn load(_env: Env, info: Term) -> bool {
    let threads = info
        .map_get(atoms::worker_threads())
        .and_then(|t| t.decode::<usize>())
        .unwrap_or(2)
        .clamp(1, 64);
    if RUNTIME.get().is_some() {
        return true;
    }
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("event_pusher")
        .enable_all()
        .build()
    {
        Ok(runtime) => RUNTIME.set(runtime).is_ok() || RUNTIME.get().is_some(),
        Err(_) => false,
    }
}

enum Pusher {
    Http(Instance<HttpBackend>),
    Rabbit(Instance<RabbitBackend>),
    Sns(Instance<SnsBackend>),
    Push(Instance<PushBackend<PidRouter>>),
}

/// One backend instance as Erlang holds it; dropping the last reference drops the
/// instance, which aborts its tasks.
struct InstanceResource {
    pusher: Pusher,
    /// Where its reports go; replaced when a restarted reporter takes over.
    target: Arc<ReportTarget>,
}

#[rustler::resource_impl]
impl rustler::Resource for InstanceResource {}

fn error<'a>(env: Env<'a>, reason: impl Encoder) -> Term<'a> {
    (atoms::error(), reason).encode(env)
}

fn badarg(env: Env) -> Term {
    error(env, atoms::badarg())
}

mod connection_atoms {
    rustler::atoms! {
        connection_events, backend_down, connect_failed, connected, connecting,
        disconnected, reason, at_ms, down_since_ms, suppressed, failed_attempts, since_ms,
        connection, last_connection_error, last_connection_error_at_ms,
        disconnected_since_ms, connect_failures,
    }
}

fn map_term<'a>(env: Env<'a>, pairs: &[(Atom, Term<'a>)]) -> NifResult<Term<'a>> {
    let keys: SmallVec<[Term; 8]> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
    let values: SmallVec<[Term; 8]> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &values)
}

/// `{lost, #{reason, at_ms, suppressed}}`,
/// `{connect_failed, #{reason, at_ms, attempts, down_since_ms, suppressed}}` or
/// `{connected, #{at_ms, down_since_ms, failed_attempts, suppressed}}`.
fn encode_connection_event<'a>(env: Env<'a>, event: &ConnectionEvent) -> NifResult<Term<'a>> {
    use connection_atoms as a;
    let (kind, details) = match event {
        ConnectionEvent::Lost {
            reason,
            at_ms,
            suppressed,
        } => (
            atoms::lost(),
            map_term(
                env,
                &[
                    (a::reason(), reason.as_str().encode(env)),
                    (a::at_ms(), at_ms.encode(env)),
                    (a::suppressed(), suppressed.encode(env)),
                ],
            )?,
        ),
        ConnectionEvent::ConnectFailed {
            reason,
            at_ms,
            attempts,
            down_since_ms,
            suppressed,
        } => (
            a::connect_failed(),
            map_term(
                env,
                &[
                    (a::reason(), reason.as_str().encode(env)),
                    (a::at_ms(), at_ms.encode(env)),
                    (atoms::attempts(), attempts.encode(env)),
                    (a::down_since_ms(), down_since_ms.encode(env)),
                    (a::suppressed(), suppressed.encode(env)),
                ],
            )?,
        ),
        ConnectionEvent::Connected {
            at_ms,
            down_since_ms,
            failed_attempts,
            suppressed,
        } => (
            a::connected(),
            map_term(
                env,
                &[
                    (a::at_ms(), at_ms.encode(env)),
                    (a::down_since_ms(), down_since_ms.encode(env)),
                    (a::failed_attempts(), failed_attempts.encode(env)),
                    (a::suppressed(), suppressed.encode(env)),
                ],
            )?,
        ),
    };
    Ok((kind, details).encode(env))
}

/// `undefined | #{since_ms, reason}`.
fn encode_backend_down<'a>(env: Env<'a>, down: Option<&BackendDown>) -> NifResult<Term<'a>> {
    match down {
        None => Ok(atoms::undefined().encode(env)),
        Some(down) => map_term(
            env,
            &[
                (connection_atoms::since_ms(), down.since_ms.encode(env)),
                (connection_atoms::reason(), down.reason.as_str().encode(env)),
            ],
        ),
    }
}

fn encode_batch<'a>(env: Env<'a>, batch: &ReportBatch) -> NifResult<Term<'a>> {
    let attempts: Vec<Term> = batch
        .attempts
        .iter()
        .map(|a| {
            let outcome = match &a.outcome {
                AttemptOutcome::Response(code) => code.encode(env),
                AttemptOutcome::Published => atoms::published().encode(env),
                AttemptOutcome::Confirmed => atoms::confirmed().encode(env),
                AttemptOutcome::Nacked => atoms::nacked().encode(env),
                AttemptOutcome::TimedOut => atoms::timeout().encode(env),
                AttemptOutcome::Replied => atoms::result().encode(env),
                AttemptOutcome::ErrorReply(kind) => {
                    (atoms::error_reply(), kind.as_str()).encode(env)
                }
                AttemptOutcome::NoResponse(reason) => (atoms::error(), reason.as_str()).encode(env),
            };
            let elapsed = u64::try_from(a.elapsed.as_micros()).unwrap_or(u64::MAX);
            (bytes_term(env, &a.tag), outcome, elapsed, a.bytes).encode(env)
        })
        .collect();
    let failures: Vec<Term> = batch
        .failures
        .iter()
        .map(|f| (bytes_term(env, &f.tag), f.reason.as_str(), f.attempts).encode(env))
        .collect();
    let c = &batch.counters;
    // dropped_too_large (a part of dropped) only when there were any.
    let names = [
        atoms::delivered(),
        atoms::retried(),
        atoms::failed(),
        atoms::dropped(),
        atoms::dropped_too_large(),
    ];
    let values = [c.delivered, c.retried, c.failed, c.dropped, c.too_large];
    let shown = if c.too_large > 0 { 5 } else { 4 };
    let counters = Term::map_from_arrays(env, &names[..shown], &values[..shown])?;
    let n = &batch.connections;
    let connections = Term::map_from_arrays(
        env,
        &[atoms::opened(), atoms::closed(), atoms::failed()],
        &[n.opened, n.closed, n.failed],
    )?;
    let connection_events = batch
        .connection_events
        .iter()
        .map(|event| encode_connection_event(env, event))
        .collect::<NifResult<Vec<Term>>>()?;
    Term::map_from_term_arrays(
        env,
        &[
            atoms::attempts().encode(env),
            atoms::failures().encode(env),
            atoms::counters().encode(env),
            atoms::connections().encode(env),
            atoms::reports_lost().encode(env),
            connection_atoms::connection_events().encode(env),
            connection_atoms::backend_down().encode(env),
        ],
        &[
            attempts.encode(env),
            failures.encode(env),
            counters,
            connections,
            batch.reports_lost.encode(env),
            connection_events.encode(env),
            encode_backend_down(env, batch.backend_down.as_ref())?,
        ],
    )
}

fn bytes_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut binary = rustler::NewBinary::new(env, bytes.len());
    binary.as_mut_slice().copy_from_slice(bytes);
    binary.into()
}

/// The elements of a proper list; None for anything else. (rustler's ListIterator
/// panics on an improper list.)
fn proper_list(mut term: Term) -> Option<SmallVec<[Term; 4]>> {
    let mut items = SmallVec::new();
    loop {
        if term.is_empty_list() {
            return Some(items);
        }
        let (head, tail) = term.list_get_cell().ok()?;
        items.push(head);
        term = tail;
    }
}

fn get<'a, T: rustler::Decoder<'a>>(map: Term<'a>, key: &str) -> Option<T> {
    let key = Atom::from_str(map.get_env(), key).ok()?;
    map.map_get(key).ok()?.decode().ok()
}

fn get_string(map: Term, key: &str) -> Option<String> {
    let binary: Binary = get(map, key)?;
    String::from_utf8(binary.as_slice().to_vec()).ok()
}

/// An empty binary means "not set".
fn get_optional_path(map: Term, key: &str) -> Option<Option<String>> {
    let path = get_string(map, key)?;
    Some((!path.is_empty()).then_some(path))
}

fn millis(map: Term, key: &str) -> Option<Duration> {
    get::<u64>(map, key).map(Duration::from_millis)
}

fn instance_config(map: Term) -> Option<InstanceConfig> {
    let overflow: Atom = get(map, "overflow")?;
    let overflow = if overflow == atoms::drop_newest() {
        Overflow::DropNewest
    } else if overflow == atoms::drop_oldest() {
        Overflow::DropOldest
    } else {
        return None;
    };
    Some(InstanceConfig {
        queue: QueueLimits {
            max_events: get(map, "max_events")?,
            max_bytes: get(map, "max_bytes")?,
            overflow,
        },
        retry: RetryPolicy {
            max_attempts: get::<u32>(map, "max_attempts")?.max(1),
            base_backoff: millis(map, "base_backoff_ms")?,
            max_backoff: millis(map, "max_backoff_ms")?,
            deadline: millis(map, "retry_deadline_ms")?,
            jitter: match get::<Atom>(map, "jitter") {
                None => Jitter::Equal,
                Some(j) if j == atoms::minus_base() => Jitter::MinusBase,
                Some(_) => return None,
            },
        },
        concurrency: get::<usize>(map, "concurrency")?.clamp(1, 4096),
    })
}

mod http_atoms {
    rustler::atoms! { selfsigned_peer }
}

fn http_config(map: Term) -> Option<HttpConfig> {
    let verify: Atom = get(map, "verify_mode")?;
    let verify_mode = if verify == atoms::peer() {
        VerifyMode::Peer
    } else if verify == http_atoms::selfsigned_peer() {
        VerifyMode::SelfSignedPeer
    } else if verify == atoms::none() {
        VerifyMode::None
    } else {
        return None;
    };
    Some(HttpConfig {
        host: get_string(map, "host")?,
        path_prefix: get_string(map, "path_prefix")?,
        request_timeout: millis(map, "request_timeout")?,
        max_idle_connections: get(map, "concurrency")?,
        tls: TlsConfig {
            verify_mode,
            cacertfile: get_optional_path(map, "cacertfile")?,
            certfile: get_optional_path(map, "certfile")?,
            keyfile: get_optional_path(map, "keyfile")?,
            server_name_indication: get(map, "server_name_indication")?,
        },
    })
}

/// `start_http(Config :: map(), Reporter :: pid())` -> `{ok, Instance} | {error, Reason}`.
/// Dirty: building a TLS client reads certificates.
#[rustler::nif(schedule = "DirtyIo")]
fn start_http<'a>(env: Env<'a>, config: Term<'a>, reporter: Term<'a>) -> Term<'a> {
    let Some(runtime) = RUNTIME.get() else {
        return error(env, atoms::no_runtime());
    };
    let (Ok(pid), Some(http), Some(instance)) = (
        reporter.decode::<LocalPid>(),
        http_config(config),
        instance_config(config),
    ) else {
        return badarg(env);
    };
    let backend = match HttpBackend::new(&http) {
        Ok(backend) => backend,
        Err(e) => return error(env, e.0.as_str()),
    };
    let target = Arc::new(ReportTarget::new(pid));
    let instance = Instance::start(runtime.handle(), backend, instance, target.clone());
    let resource = ResourceArc::new(InstanceResource {
        pusher: Pusher::Http(instance),
        target,
    });
    (atoms::ok(), resource).encode(env)
}

fn exchange(map: Term, key: &str) -> Option<(ExchangeConfig, Option<Topics>)> {
    let key = Atom::from_str(map.get_env(), key).ok()?;
    let section = map.map_get(key).ok()?;
    let exchange = ExchangeConfig {
        name: get_string(section, "name")?,
        kind: get_string(section, "type")?,
        durable: get(section, "durable")?,
        persistent: get(section, "persistent")?,
    };
    let topics = match (
        get_string(section, "sent_topic"),
        get_string(section, "recv_topic"),
    ) {
        (Some(sent), Some(recv)) => Some(Topics { sent, recv }),
        _ => None,
    };
    Some((exchange, topics))
}

fn rabbit_config(map: Term) -> Option<RabbitConfig> {
    let (presence_exchange, _) = exchange(map, "presence_exchange")?;
    let (chat_exchange, chat_topics) = exchange(map, "chat_msg_exchange")?;
    let (groupchat_exchange, groupchat_topics) = exchange(map, "groupchat_msg_exchange")?;
    let tls = match get::<bool>(map, "tls") {
        Some(false) => None,
        _ => Some(RabbitTls {
            cacertfile: get_optional_path(map, "cacertfile")?,
        }),
    };
    Some(RabbitConfig {
        host: get_string(map, "host")?,
        port: get(map, "port")?,
        username: get_string(map, "username")?,
        password: get_string(map, "password")?,
        virtual_host: get_string(map, "virtual_host")?,
        tls,
        presence_exchange,
        chat_exchange,
        chat_topics: chat_topics?,
        groupchat_exchange,
        groupchat_topics: groupchat_topics?,
        confirms: get(map, "confirms_enabled")?,
        confirm_timeout: millis(map, "confirm_timeout_ms")?,
        connect_timeout: millis(map, "connect_timeout_ms")?,
        reconnect_base_delay: millis(map, "reconnect_base_delay_ms")?,
        reconnect_max_delay: millis(map, "reconnect_max_delay_ms")?,
        max_message_bytes: get(map, "max_message_bytes")?,
    })
}

/// `start_rabbit(Config :: map(), Reporter :: pid())` -> `{ok, Instance} | {error, Reason}`.
/// Makes one connect attempt before answering: a broker that refuses the credentials,
/// the virtual host or an exchange declaration fails the start with its reason; one
/// that cannot be reached does not (the instance starts disconnected and reconnects).
/// Dirty: it waits on the network (bounded by connect_timeout_ms).
#[rustler::nif(schedule = "DirtyIo")]
fn start_rabbit<'a>(env: Env<'a>, config: Term<'a>, reporter: Term<'a>) -> Term<'a> {
    let Some(runtime) = RUNTIME.get() else {
        return error(env, atoms::no_runtime());
    };
    let (Ok(pid), Some(rabbit), Some(instance)) = (
        reporter.decode::<LocalPid>(),
        rabbit_config(config),
        instance_config(config),
    ) else {
        return badarg(env);
    };
    // A dirty scheduler thread is not a runtime thread: blocking here is allowed.
    let backend = match runtime.block_on(RabbitBackend::start(rabbit)) {
        Ok(backend) => backend,
        Err(e) => return error(env, e.0.as_str()),
    };
    let target = Arc::new(ReportTarget::new(pid));
    let instance = Instance::start(runtime.handle(), backend, instance, target.clone());
    let resource = ResourceArc::new(InstanceResource {
        pusher: Pusher::Rabbit(instance),
        target,
    });
    (atoms::ok(), resource).encode(env)
}

fn sns_config(map: Term) -> Option<SnsConfig> {
    Some(SnsConfig {
        sns_host: get_string(map, "sns_host")?,
        region: get_string(map, "region")?,
        access_key_id: get_string(map, "access_key_id")?,
        secret_access_key: get_string(map, "secret_access_key")?,
        request_timeout: millis(map, "request_timeout_ms")?,
        connect_timeout: millis(map, "connect_timeout_ms")?,
        batching: get(map, "batching")?,
    })
}

/// `start_sns(Config :: map(), Reporter :: pid())` -> `{ok, Instance} | {error, badarg}`.
/// Sends nothing: SNS has no connection to check, and a wrong credential shows on the
/// first publish. Dirty: building the TLS client reads the system's root certificates.
#[rustler::nif(schedule = "DirtyIo")]
fn start_sns<'a>(env: Env<'a>, config: Term<'a>, reporter: Term<'a>) -> Term<'a> {
    let Some(runtime) = RUNTIME.get() else {
        return error(env, atoms::no_runtime());
    };
    let (Ok(pid), Some(sns), Some(instance)) = (
        reporter.decode::<LocalPid>(),
        sns_config(config),
        instance_config(config),
    ) else {
        return badarg(env);
    };
    // The SDK's client wants a runtime context to be built in.
    let backend = {
        let _guard = runtime.enter();
        SnsBackend::new(&sns)
    };
    let target = Arc::new(ReportTarget::new(pid));
    let instance = Instance::start(runtime.handle(), backend, instance, target.clone());
    let resource = ResourceArc::new(InstanceResource {
        pusher: Pusher::Sns(instance),
        target,
    });
    (atoms::ok(), resource).encode(env)
}

/// Hands publish IQs to the Erlang process that routes them (the reporter):
/// `{mod_event_pusher_nif, route, Id, From, PubSub, PubsubElement}`.
struct PidRouter {
    target: Arc<ReportTarget>,
}

fn element_term<'a>(env: Env<'a>, element: &Element) -> Term<'a> {
    let keys: Vec<Term> = element
        .attrs
        .iter()
        .map(|(k, _)| k.as_str().encode(env))
        .collect();
    let values: Vec<Term> = element
        .attrs
        .iter()
        .map(|(_, v)| v.as_str().encode(env))
        .collect();
    let attrs =
        Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env));
    let children: Vec<Term> = element
        .children
        .iter()
        .map(|child| match child {
            Node::Element(child) => element_term(env, child),
            Node::Text(text) => (atoms::xmlcdata(), text.as_str(), atoms::escaped()).encode(env),
        })
        .collect();
    (atoms::xmlel(), element.name.as_str(), attrs, children).encode(env)
}

impl Router for PidRouter {
    fn route(&self, id: u64, event: &PushEvent, pubsub: &Element) -> bool {
        let mut owned = OwnedEnv::new();
        owned
            .send_and_clear(&self.target.pid(), |env| {
                (
                    atoms::mod_event_pusher_nif(),
                    atoms::route(),
                    id,
                    event.from.as_str(),
                    event.pubsub.as_str(),
                    element_term(env, pubsub),
                )
                    .encode(env)
            })
            .is_ok()
    }
}

/// `start_push(Config :: map(), Reporter :: pid())` -> `{ok, Instance} | {error, badarg}`.
/// The reporter also gets the routing requests.
#[rustler::nif]
fn start_push<'a>(env: Env<'a>, config: Term<'a>, reporter: Term<'a>) -> Term<'a> {
    let Some(runtime) = RUNTIME.get() else {
        return error(env, atoms::no_runtime());
    };
    let (Ok(pid), Some(timeout), Some(instance)) = (
        reporter.decode::<LocalPid>(),
        millis(config, "publish_timeout_ms"),
        instance_config(config),
    ) else {
        return badarg(env);
    };
    let target = Arc::new(ReportTarget::new(pid));
    let router = PidRouter {
        target: target.clone(),
    };
    let backend = PushBackend::new(router, timeout);
    let instance = Instance::start(runtime.handle(), backend, instance, target.clone());
    let resource = ResourceArc::new(InstanceResource {
        pusher: Pusher::Push(instance),
        target,
    });
    (atoms::ok(), resource).encode(env)
}

/// `push_reply(Instance, Id, result | {error, Type} | timeout)` -> `ok | {error, unknown_request}`
/// (the publish already timed out here, or the id is unknown).
#[rustler::nif]
fn push_reply<'a>(env: Env<'a>, instance: Term<'a>, id: Term<'a>, reply: Term<'a>) -> Term<'a> {
    let (Ok(resource), Ok(id)) = (
        instance.decode::<ResourceArc<InstanceResource>>(),
        id.decode::<u64>(),
    ) else {
        return badarg(env);
    };
    let Pusher::Push(instance) = &resource.pusher else {
        return badarg(env);
    };
    let reply = if reply.decode::<Atom>().ok() == Some(atoms::result()) {
        Reply::Result
    } else if reply.decode::<Atom>().ok() == Some(atoms::timeout()) {
        Reply::Timeout
    } else if let Ok((tag, kind)) = reply.decode::<(Atom, Binary)>() {
        if tag != atoms::error() {
            return badarg(env);
        }
        Reply::Error(utf8(kind))
    } else {
        return badarg(env);
    };
    if instance.backend().reply(id, reply) {
        atoms::ok().encode(env)
    } else {
        error(env, atoms::unknown_request())
    }
}

fn push_error(env: Env, e: PushError) -> Term {
    match e {
        PushError::QueueFull => error(env, atoms::queue_full()),
        PushError::Stopped => error(env, atoms::stopped()),
        PushError::TooLarge => error(env, atoms::too_large()),
    }
}

/// Binaries up to this size are copied into the event; larger ones are referenced.
const INLINE_BYTES: usize = 1024;

/// A binary of the calling process, kept alive by a process-independent environment
/// that holds a copy of its term: for a refc binary that copy is a reference, so
/// holding costs the same whatever the size, and the bytes never move while held.
struct HeldBinary {
    _env: OwnedEnv,
    data: *const u8,
    len: usize,
}

// The bytes are immutable and live as long as `_env`, which is only ever freed by
// dropping this value (enif_free_env may run on any thread).
unsafe impl Send for HeldBinary {}
unsafe impl Sync for HeldBinary {}

impl AsRef<[u8]> for HeldBinary {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: data/len describe the binary `_env` keeps alive (see `hold`).
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

fn hold(binary: Binary) -> Option<SharedBytes> {
    let env = OwnedEnv::new();
    let saved = env.save(binary);
    let (data, len) = env.run(|env| {
        let copy: Binary = saved.load(env).decode().ok()?;
        Some((copy.as_slice().as_ptr(), copy.len()))
    })?;
    Some(std::sync::Arc::new(HeldBinary {
        _env: env,
        data,
        len,
    }))
}

/// A body part: copied when small, held when large.
fn chunk(binary: Binary) -> Option<Chunk> {
    if binary.len() <= INLINE_BYTES {
        Some(Chunk::from(binary.as_slice()))
    } else {
        hold(binary).map(Chunk::Shared)
    }
}

/// A raw binary body, or `{form, [{Name, Value}]}` for the worker to form-encode.
fn decode_http_body(term: Term) -> Option<Body> {
    if let Ok(binary) = term.decode::<Binary>() {
        return Some(Body::Raw(chunk(binary)?));
    }
    let (tag, fields): (Atom, Term) = term.decode().ok()?;
    if tag != atoms::form() {
        return None;
    }
    let mut pairs = SmallVec::new();
    for field in proper_list(fields)? {
        let (name, value): (Binary, Binary) = field.decode().ok()?;
        pairs.push((chunk(name)?, chunk(value)?));
    }
    Some(Body::Form(pairs))
}

/// `{Path, [{Name, Value}], Body, Tag}`: binaries, the path UTF-8, Body a binary or
/// `{form, [{Name, Value}]}`. None for a malformed term.
fn decode_http_event(term: Term) -> Option<Envelope<HttpEvent>> {
    let (path, headers, body, tag): (Binary, Term, Term, Binary) = term.decode().ok()?;
    let path = std::str::from_utf8(path.as_slice()).ok()?;
    let mut pairs: SmallVec<[(Binary, Binary); 4]> = SmallVec::new();
    for header in proper_list(headers)? {
        pairs.push(header.decode().ok()?);
    }
    let slices: SmallVec<[(&[u8], &[u8]); 4]> = pairs
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let event = HttpEvent::with_body(path, &slices, decode_http_body(body)?).ok()?;
    let size = event.size();
    Some(Envelope::new(event, tag.as_slice(), size))
}

fn utf8(binary: Binary) -> String {
    // JSON needs text: bytes that are not UTF-8 become U+FFFD rather than an error.
    String::from_utf8_lossy(binary.as_slice()).into_owned()
}

/// `{presence, UserJid, BareJid, Present}` or
/// `{chat | groupchat, in | out, FromJid, ToJid, Message, RoutingBareJid}`.
fn decode_rabbit_event(term: Term) -> Option<Envelope<RabbitEvent>> {
    let (event, tag) =
        if let Ok((kind, user, bare, present)) = term.decode::<(Atom, Binary, Binary, bool)>() {
            if kind != atoms::presence() {
                return None;
            }
            let event = RabbitEvent::Presence {
                user_jid: utf8(user),
                bare_jid: utf8(bare),
                present,
            };
            (event, bare)
        } else {
            let (kind, direction, from, to, message, routing): (
                Atom,
                Atom,
                Binary,
                Binary,
                Binary,
                Binary,
            ) = term.decode().ok()?;
            let kind = if kind == atoms::chat() {
                ChatKind::Chat
            } else if kind == atoms::groupchat() {
                ChatKind::Groupchat
            } else {
                return None;
            };
            let direction = if direction == atoms::r#in() {
                Direction::In
            } else if direction == atoms::out() {
                Direction::Out
            } else {
                return None;
            };
            let event = RabbitEvent::Chat {
                kind,
                direction,
                from_jid: utf8(from),
                to_jid: utf8(to),
                message: utf8(message),
                routing_bare_jid: utf8(routing),
            };
            (event, from)
        };
    let size = event.size();
    Some(Envelope::new(event, tag.as_slice(), size))
}

/// `[{Name, string | number | binary, Value}]`, name and value binaries.
fn decode_sns_attributes(term: Term) -> Option<Vec<(String, AttributeValue)>> {
    let items = proper_list(term)?;
    let mut attributes = Vec::with_capacity(items.len());
    for item in items {
        let (name, kind, value): (Binary, Atom, Binary) = item.decode().ok()?;
        let value = if kind == atoms::string() {
            AttributeValue::String(utf8(value))
        } else if kind == atoms::number() {
            AttributeValue::Number(utf8(value))
        } else if kind == atoms::binary() {
            AttributeValue::Binary(value.as_slice().to_vec())
        } else {
            return None;
        };
        attributes.push((utf8(name), value));
    }
    Some(attributes)
}

/// `{presence, TopicArn, UserId, Present, Attributes}` or
/// `{message, TopicArn, FromUserId, ToUserId, Message, Attributes}`.
fn decode_sns_event(term: Term) -> Option<Envelope<SnsEvent>> {
    let (topic_arn, notification, attributes, tag) = if let Ok((kind, arn, user, present, attrs)) =
        term.decode::<(Atom, Binary, Binary, bool, Term)>()
    {
        if kind != atoms::presence() {
            return None;
        }
        let notification = Notification::Presence {
            user_id: utf8(user),
            present,
        };
        (arn, notification, attrs, user)
    } else {
        let (kind, arn, from, to, message, attrs): (Atom, Binary, Binary, Binary, Binary, Term) =
            term.decode().ok()?;
        if kind != atoms::message() {
            return None;
        }
        let notification = Notification::Message {
            from_user_id: utf8(from),
            to_user_id: utf8(to),
            message: utf8(message),
        };
        (arn, notification, attrs, from)
    };
    let event = SnsEvent {
        topic_arn: utf8(topic_arn),
        notification,
        attributes: decode_sns_attributes(attributes)?,
    };
    let size = event.size();
    Some(Envelope::new(event, tag.as_slice(), size))
}

fn string_pairs(term: Term) -> Option<Vec<(String, String)>> {
    proper_list(term)?
        .into_iter()
        .map(|pair| {
            let (k, v): (Binary, Binary) = pair.decode().ok()?;
            Some((utf8(k), utf8(v)))
        })
        .collect()
}

/// `{publish, From, PubSub, Node, Payload, PublishOptions, Tag}`; Payload and
/// PublishOptions are `[{Name, Value}]` binaries; Tag comes back in reports.
fn decode_push_event(term: Term) -> Option<Envelope<PushEvent>> {
    let (kind, from, pubsub, node, payload, options, tag): (
        Atom,
        Binary,
        Binary,
        Binary,
        Term,
        Term,
        Binary,
    ) = term.decode().ok()?;
    if kind != atoms::publish() {
        return None;
    }
    let event = PushEvent {
        from: utf8(from),
        pubsub: utf8(pubsub),
        node: utf8(node),
        payload: string_pairs(payload)?,
        publish_options: string_pairs(options)?,
    };
    let size = event.size();
    Some(Envelope::new(event, tag.as_slice(), size))
}

fn push_event_size(event: Term) -> Option<usize> {
    let (_, from, pubsub, node, _, _, tag): (Atom, Binary, Binary, Binary, Term, Term, Binary) =
        event.decode().ok()?;
    Some(from.len() + pubsub.len() + node.len() + tag.len())
}

/// The size of the text-carrying part of an SNS event term, cheaply.
fn sns_event_size(event: Term) -> Option<usize> {
    if let Ok((_, arn, user, _, _)) = event.decode::<(Atom, Binary, Binary, Term, Term)>() {
        return Some(arn.len() + user.len());
    }
    let (_, arn, from, to, message, _): (Atom, Binary, Binary, Binary, Binary, Term) =
        event.decode().ok()?;
    Some(arn.len() + from.len() + to.len() + message.len())
}

/// The size of the payload-carrying part of a rabbit event term, cheaply.
fn rabbit_event_size(event: Term) -> Option<usize> {
    if let Ok((_, user, bare, _)) = event.decode::<(Atom, Binary, Binary, Term)>() {
        return Some(user.len() + bare.len());
    }
    let (_, _, from, to, message, _): (Atom, Atom, Binary, Binary, Binary, Term) =
        event.decode().ok()?;
    Some(from.len() + to.len() + message.len())
}

/// The body's size (as `Body::size` counts it) when `event` has the shape of an HTTP
/// event, cheaply: what decides a refusal before anything is copied.
fn http_body_size(event: Term) -> Option<usize> {
    let (_path, _headers, body, _tag): (Term, Term, Term, Term) = event.decode().ok()?;
    if let Ok(binary) = body.decode::<Binary>() {
        return Some(binary.len());
    }
    let (_form, fields): (Atom, Term) = body.decode().ok()?;
    let fields = proper_list(fields)?;
    let mut size = (2 * fields.len()).saturating_sub(1);
    for field in fields {
        let (name, value): (Binary, Binary) = field.decode().ok()?;
        size += name.len() + value.len();
    }
    Some(size)
}

/// Refuses cheaply when the event cannot be queued, else decodes and pushes it.
/// None when the term is malformed.
fn enqueue<B: pusher::Backend>(
    instance: &Instance<B>,
    size: Option<usize>,
    decode: impl FnOnce() -> Option<Envelope<B::Event>>,
) -> Option<Result<(), PushError>> {
    let size = size?;
    if let Some(refused) = instance.refusal(size) {
        return Some(Err(refused));
    }
    Some(instance.push(decode()?))
}

/// `push(Instance, Event)` -> `ok | {error, queue_full | stopped | badarg}`. O(1);
/// when the queue is full the event is refused before it is decoded or copied.
#[rustler::nif]
fn push<'a>(env: Env<'a>, instance: Term<'a>, event: Term<'a>) -> Term<'a> {
    let Ok(resource) = instance.decode::<ResourceArc<InstanceResource>>() else {
        return badarg(env);
    };
    let result = match &resource.pusher {
        Pusher::Http(instance) => {
            match enqueue(instance, http_body_size(event), || decode_http_event(event)) {
                Some(result) => result,
                None => return badarg(env),
            }
        }
        Pusher::Rabbit(instance) => {
            match enqueue(instance, rabbit_event_size(event), || {
                decode_rabbit_event(event)
            }) {
                Some(result) => result,
                None => return badarg(env),
            }
        }
        Pusher::Sns(instance) => {
            match enqueue(instance, sns_event_size(event), || decode_sns_event(event)) {
                Some(result) => result,
                None => return badarg(env),
            }
        }
        Pusher::Push(instance) => {
            match enqueue(instance, push_event_size(event), || {
                decode_push_event(event)
            }) {
                Some(result) => result,
                None => return badarg(env),
            }
        }
    };
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => push_error(env, e),
    }
}

/// The connection keys of a rabbit instance's stats.
fn connection_stats<'a>(env: Env<'a>, status: &StatusSnapshot) -> Vec<(Atom, Term<'a>)> {
    use connection_atoms as a;
    let optional_ms = |v: Option<u64>| match v {
        Some(ms) => ms.encode(env),
        None => atoms::undefined().encode(env),
    };
    let state = match status.state {
        ConnectionState::Connected => a::connected(),
        ConnectionState::Connecting => a::connecting(),
        ConnectionState::Disconnected => a::disconnected(),
        ConnectionState::Closed => atoms::closed(),
    };
    vec![
        (a::connection(), state.encode(env)),
        (
            a::last_connection_error(),
            match &status.last_error {
                Some(reason) => reason.as_str().encode(env),
                None => atoms::undefined().encode(env),
            },
        ),
        (
            a::last_connection_error_at_ms(),
            optional_ms(status.last_error_at_ms),
        ),
        (
            a::disconnected_since_ms(),
            optional_ms(status.down_since_ms),
        ),
        (a::connect_failures(), status.failed_attempts.encode(env)),
    ]
}

fn stats_term<'a>(
    env: Env<'a>,
    s: &StatsSnapshot,
    lost: Option<u64>,
    extra: Vec<(Atom, Term<'a>)>,
) -> Term<'a> {
    let latency = |v: Option<u64>| match v {
        Some(us) => us.encode(env),
        None => atoms::undefined().encode(env),
    };
    let mut keys = vec![
        atoms::accepted(),
        atoms::delivered(),
        atoms::retried(),
        atoms::failed(),
        atoms::dropped(),
        atoms::dropped_too_large(),
        atoms::last_too_large_bytes(),
        atoms::max_bytes(),
        atoms::queued(),
        atoms::queued_bytes(),
        atoms::in_flight(),
        atoms::waiting_retry(),
        atoms::latency_p50_us(),
        atoms::latency_p99_us(),
    ];
    let mut values = vec![
        s.accepted.encode(env),
        s.delivered.encode(env),
        s.retried.encode(env),
        s.failed.encode(env),
        s.dropped.encode(env),
        s.dropped_too_large.encode(env),
        s.last_too_large_bytes.encode(env),
        s.max_bytes.encode(env),
        s.queued.encode(env),
        s.queued_bytes.encode(env),
        s.in_flight.encode(env),
        s.waiting_retry.encode(env),
        latency(s.latency_p50_us),
        latency(s.latency_p99_us),
    ];
    if let Some(lost) = lost {
        keys.push(atoms::lost());
        values.push(lost.encode(env));
    }
    for (key, value) in extra {
        keys.push(key);
        values.push(value);
    }
    let keys: Vec<Term> = keys.iter().map(|k| k.encode(env)).collect();
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| badarg(env))
}

fn pusher_stats(pusher: &Pusher) -> StatsSnapshot {
    match pusher {
        Pusher::Http(instance) => instance.stats(),
        Pusher::Rabbit(instance) => instance.stats(),
        Pusher::Sns(instance) => instance.stats(),
        Pusher::Push(instance) => instance.stats(),
    }
}

/// `stats(Instance)` -> map of counters.
#[rustler::nif]
fn stats<'a>(env: Env<'a>, instance: Term<'a>) -> Term<'a> {
    match instance.decode::<ResourceArc<InstanceResource>>() {
        Ok(resource) => {
            let extra = match &resource.pusher {
                Pusher::Rabbit(instance) => {
                    connection_stats(env, &instance.backend().connection_status())
                }
                _ => Vec::new(),
            };
            stats_term(env, &pusher_stats(&resource.pusher), None, extra)
        }
        Err(_) => badarg(env),
    }
}

/// `stop(Instance, DrainMs, Ref)` -> `ok`; later the caller receives
/// `{mod_event_pusher_nif, stopped, Ref, Stats}` with `lost` among the stats.
#[rustler::nif]
fn stop<'a>(env: Env<'a>, instance: Term<'a>, drain_ms: Term<'a>, tag: Term<'a>) -> Term<'a> {
    let (Ok(resource), Ok(drain_ms)) = (
        instance.decode::<ResourceArc<InstanceResource>>(),
        drain_ms.decode::<u64>(),
    ) else {
        return badarg(env);
    };
    let Some(runtime) = RUNTIME.get() else {
        return error(env, atoms::no_runtime());
    };
    let caller = env.pid();
    let owned = OwnedEnv::new();
    let saved_tag = owned.save(tag);
    // Capped so that no deadline arithmetic can overflow: a day is "forever" here.
    let drain = Duration::from_millis(drain_ms.min(86_400_000));
    runtime.spawn(async move {
        let stopping = async {
            match &resource.pusher {
                Pusher::Http(instance) => instance.stop(drain).await,
                Pusher::Rabbit(instance) => instance.stop(drain).await,
                Pusher::Sns(instance) => instance.stop(drain).await,
                Pusher::Push(instance) => instance.stop(drain).await,
            }
        };
        // The caller waits for this message: it must come even if stopping panics.
        let summary: Option<StopSummary> = AssertUnwindSafe(stopping).catch_unwind().await.ok();
        let mut owned = owned;
        let _ = owned.send_and_clear(&caller, |env| {
            let stats = match &summary {
                Some(summary) => stats_term(env, &summary.stats, Some(summary.lost), Vec::new()),
                None => (atoms::error(), atoms::stop_failed()).encode(env),
            };
            (
                atoms::mod_event_pusher_nif(),
                atoms::stopped(),
                saved_tag.load(env),
                stats,
            )
        });
    });
    atoms::ok().encode(env)
}

/// `set_reporter(Instance, Pid)` -> `{ok, Sent}`: Pid gets the instance's reports (and
/// routing requests) from now on, batches held while no reporter lived included. Sent
/// is what its predecessors were sent (the map of `reports_sent/1`), read atomically
/// with the change. Dirty: it waits for a batch being sent to finish.
#[rustler::nif(schedule = "DirtyCpu")]
fn set_reporter<'a>(env: Env<'a>, instance: Term<'a>, pid: Term<'a>) -> Term<'a> {
    let (Ok(resource), Ok(pid)) = (
        instance.decode::<ResourceArc<InstanceResource>>(),
        pid.decode::<LocalPid>(),
    ) else {
        return badarg(env);
    };
    let Some(runtime) = RUNTIME.get() else {
        return error(env, atoms::no_runtime());
    };
    let sent = resource.target.replace(pid);
    // Sending needs a thread the VM does not manage.
    let target = resource.target.clone();
    runtime.spawn(async move { target.send_held() });
    (atoms::ok(), sent.encode(env)).encode(env)
}

/// `reports_sent(Instance)` -> `#{batches, reports, counters, connections, held}`: the
/// report batches handed to live reporters so far, their attempt and failure reports,
/// the sums of their counters and connection counts, and the batches held for the
/// next reporter.
#[rustler::nif]
fn reports_sent<'a>(env: Env<'a>, instance: Term<'a>) -> Term<'a> {
    match instance.decode::<ResourceArc<InstanceResource>>() {
        Ok(resource) => resource.target.sent().encode(env),
        Err(_) => badarg(env),
    }
}

/// `form_urlencode([{Key, Value}])` -> binary | `{error, badarg}`, encoded as
/// cow_qs:qs/1 does. For small inputs only (a normal scheduler): the caller sends
/// anything over `mod_event_pusher_nif`'s threshold to `form_urlencode_dirty/1`.
#[rustler::nif]
fn form_urlencode<'a>(env: Env<'a>, pairs: Term<'a>) -> Term<'a> {
    urlencode_pairs(env, pairs)
}

/// `form_urlencode/1` on a dirty CPU scheduler, for large inputs.
#[rustler::nif(schedule = "DirtyCpu")]
fn form_urlencode_dirty<'a>(env: Env<'a>, pairs: Term<'a>) -> Term<'a> {
    urlencode_pairs(env, pairs)
}

fn urlencode_pairs<'a>(env: Env<'a>, pairs: Term<'a>) -> Term<'a> {
    let Some(terms) = proper_list(pairs) else {
        return badarg(env);
    };
    let mut binaries: SmallVec<[(Binary, Binary); 4]> = SmallVec::with_capacity(terms.len());
    for pair in terms {
        let Ok(pair) = pair.decode::<(Binary, Binary)>() else {
            return badarg(env);
        };
        binaries.push(pair);
    }
    let slices: SmallVec<[(&[u8], &[u8]); 4]> = binaries
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let mut out = rustler::NewBinary::new(env, pusher::form::urlencoded_len(&slices));
    pusher::form::urlencode_into(out.as_mut_slice(), &slices);
    out.into()
}

/// The cheapest possible NIF call, the benchmark's yardstick.
#[rustler::nif]
fn noop() -> Atom {
    atoms::ok()
}

rustler::init!("mod_event_pusher_nif", load = load);
