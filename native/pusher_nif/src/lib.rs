//! Rustler glue for `mod_event_pusher_nif`: Erlang terms <-> the `pusher` core.
//!
//! Every function takes raw terms and decodes them itself, so a wrong term gives
//! `{error, badarg}` instead of an exception, and nothing here can panic across the
//! boundary on bad input.
//!
//! Here: the runtime (built at load) and the NIFs. `resource`: the instance Erlang
//! holds, the one place backends are told apart; `decode`: terms to configurations
//! and events; `encode`: reports and stats to terms; `push_router`: publish IQs to
//! the routing process; `reporter`: report batches to the reporter process.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use std::time::Duration;

use pusher::http::HttpBackend;
use pusher::push::{PushBackend, Reply};
use pusher::rabbit::RabbitBackend;
use pusher::sns::SnsBackend;
use pusher::StopSummary;
use pusher::{Instance, InstanceConfig};
use rustler::{Atom, Binary, Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};
use smallvec::SmallVec;

mod decode;
mod encode;
mod push_router;
mod reporter;
mod resource;

use decode::{
    http_config, instance_config, option_millis, proper_list, rabbit_config, sns_config, utf8,
    BadConfig, BadEvent,
};
use encode::{
    connection_stats, encode_batch, every_outcome_kind, outcome_term, push_error, stats_term,
};
use push_router::PidRouter;
use reporter::ReportTarget;
use resource::{InstanceResource, Pusher};

pub(crate) mod atoms {
    rustler::atoms! {
        ok, error, badarg, bad_config, bad_event, queue_full, stopped, too_large, undefined, no_runtime,
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

pub(crate) fn error<'a>(env: Env<'a>, reason: impl Encoder) -> Term<'a> {
    (atoms::error(), reason).encode(env)
}

pub(crate) fn badarg(env: Env) -> Term {
    error(env, atoms::badarg())
}

/// `start_http(Config :: map(), Reporter :: pid())` -> `{ok, Instance} | {error, Reason}`.
/// Dirty: building a TLS client reads certificates.
#[rustler::nif(schedule = "DirtyIo")]
fn start_http<'a>(env: Env<'a>, config: Term<'a>, reporter: Term<'a>) -> Term<'a> {
    let (runtime, pid, instance) = match start_args(env, config, reporter) {
        Ok(args) => args,
        Err(refusal) => return refusal,
    };
    let backend = match http_config(config) {
        Err(bad) => return bad_config(env, bad),
        Ok(http) => match HttpBackend::new(&http) {
            Ok(backend) => backend,
            Err(e) => return error(env, e.0.as_str()),
        },
    };
    started(env, runtime, backend, instance, pid, Pusher::Http)
}

/// `start_rabbit(Config :: map(), Reporter :: pid())` -> `{ok, Instance} | {error, Reason}`.
/// Makes one connect attempt before answering: a broker that refuses the credentials,
/// the virtual host or an exchange declaration fails the start with its reason; one
/// that cannot be reached does not (the instance starts disconnected and reconnects).
/// Dirty: it waits on the network (bounded by connect_timeout_ms).
#[rustler::nif(schedule = "DirtyIo")]
fn start_rabbit<'a>(env: Env<'a>, config: Term<'a>, reporter: Term<'a>) -> Term<'a> {
    let (runtime, pid, instance) = match start_args(env, config, reporter) {
        Ok(args) => args,
        Err(refusal) => return refusal,
    };
    let rabbit = match rabbit_config(config) {
        Ok(rabbit) => rabbit,
        Err(bad) => return bad_config(env, bad),
    };
    // A dirty scheduler thread is not a runtime thread: blocking here is allowed.
    let backend = match runtime.block_on(RabbitBackend::start(rabbit)) {
        Ok(backend) => backend,
        Err(e) => return error(env, e.0.as_str()),
    };
    started(env, runtime, backend, instance, pid, Pusher::Rabbit)
}

/// `start_sns(Config :: map(), Reporter :: pid())` -> `{ok, Instance} | {error, badarg}`.
/// Sends nothing: SNS has no connection to check, and a wrong credential shows on the
/// first publish. Dirty: building the TLS client reads the system's root certificates.
#[rustler::nif(schedule = "DirtyIo")]
fn start_sns<'a>(env: Env<'a>, config: Term<'a>, reporter: Term<'a>) -> Term<'a> {
    let (runtime, pid, instance) = match start_args(env, config, reporter) {
        Ok(args) => args,
        Err(refusal) => return refusal,
    };
    let sns = match sns_config(config) {
        Ok(sns) => sns,
        Err(bad) => return bad_config(env, bad),
    };
    // The SDK's client wants a runtime context to be built in.
    let backend = {
        let _guard = runtime.enter();
        SnsBackend::new(&sns)
    };
    started(env, runtime, backend, instance, pid, Pusher::Sns)
}

/// `start_push(Config :: map(), Reporter :: pid())` -> `{ok, Instance} | {error, badarg}`.
/// The reporter also gets the routing requests.
#[rustler::nif]
fn start_push<'a>(env: Env<'a>, config: Term<'a>, reporter: Term<'a>) -> Term<'a> {
    let (runtime, pid, instance) = match start_args(env, config, reporter) {
        Ok(args) => args,
        Err(refusal) => return refusal,
    };
    let timeout = match option_millis(config, "publish_timeout_ms") {
        Ok(timeout) => timeout,
        Err(bad) => return bad_config(env, bad),
    };
    // The reporter routes the publish IQs: the router shares its report target.
    let target = Arc::new(ReportTarget::new(pid));
    let router = PidRouter {
        target: target.clone(),
    };
    let backend = PushBackend::new(router, timeout);
    resource(env, runtime, backend, instance, target, Pusher::Push)
}

/// What every start NIF decodes first: the runtime, the reporter's pid and the
/// instance settings. The refusal is `{error, no_runtime}`, `{error, badarg}` (not a
/// map, not a pid) or `{error, {bad_config, Option}}`.
fn start_args<'a>(
    env: Env<'a>,
    config: Term<'a>,
    reporter: Term<'a>,
) -> Result<(&'static tokio::runtime::Runtime, LocalPid, InstanceConfig), Term<'a>> {
    let Some(runtime) = RUNTIME.get() else {
        return Err(error(env, atoms::no_runtime()));
    };
    let (Ok(pid), true) = (reporter.decode::<LocalPid>(), config.is_map()) else {
        return Err(badarg(env));
    };
    let instance = instance_config(config).map_err(|bad| bad_config(env, bad))?;
    Ok((runtime, pid, instance))
}

/// `{ok, Instance}` for a backend just made: its instance, reporting to `pid`.
fn started<'a, B: pusher::Backend>(
    env: Env<'a>,
    runtime: &tokio::runtime::Runtime,
    backend: B,
    instance: InstanceConfig,
    pid: LocalPid,
    wrap: fn(Instance<B>) -> Pusher,
) -> Term<'a> {
    let target = Arc::new(ReportTarget::new(pid));
    resource(env, runtime, backend, instance, target, wrap)
}

fn resource<'a, B: pusher::Backend>(
    env: Env<'a>,
    runtime: &tokio::runtime::Runtime,
    backend: B,
    instance: InstanceConfig,
    target: Arc<ReportTarget>,
    wrap: fn(Instance<B>) -> Pusher,
) -> Term<'a> {
    let instance = Instance::start(runtime.handle(), backend, instance, target.clone());
    let resource = ResourceArc::new(InstanceResource {
        pusher: wrap(instance),
        target,
    });
    (atoms::ok(), resource).encode(env)
}

fn bad_config(env: Env, BadConfig(option): BadConfig) -> Term {
    named_error(env, atoms::bad_config(), option)
}

/// `{error, {Kind, Name}}`, naming the option or element that was wrong.
fn named_error<'a>(env: Env<'a>, kind: Atom, name: &str) -> Term<'a> {
    match Atom::from_str(env, name) {
        Ok(name) => error(env, (kind, name)),
        Err(_) => badarg(env),
    }
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

/// `push(Instance, Event)` -> `ok | {error, queue_full | too_large | stopped}`, or
/// `{error, {bad_event, Field}}` naming what is malformed in Event (`badarg` when
/// Instance is not one). O(1); when the queue is full the event is refused before it
/// is decoded or copied.
#[rustler::nif]
fn push<'a>(env: Env<'a>, instance: Term<'a>, event: Term<'a>) -> Term<'a> {
    let Ok(resource) = instance.decode::<ResourceArc<InstanceResource>>() else {
        return badarg(env);
    };
    let result = match resource.pusher.push(event) {
        Ok(result) => result,
        Err(BadEvent(field)) => return named_error(env, atoms::bad_event(), field),
    };
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => push_error(env, e),
    }
}

/// `stats(Instance)` -> map of counters.
#[rustler::nif]
fn stats<'a>(env: Env<'a>, instance: Term<'a>) -> Term<'a> {
    match instance.decode::<ResourceArc<InstanceResource>>() {
        Ok(resource) => {
            let extra = match resource.pusher.connection_status() {
                Some(status) => connection_stats(env, &status),
                None => Vec::new(),
            };
            stats_term(env, &resource.pusher.stats(), None, extra)
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
        let stopping = resource.pusher.stop(drain);
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

/// `attempt_outcomes()` -> one outcome of each kind a report can carry, encoded as in
/// reports (test control: the contract test holds them to the Erlang type).
#[rustler::nif]
fn attempt_outcomes(env: Env) -> Vec<Term> {
    every_outcome_kind()
        .iter()
        .map(|outcome| outcome_term(env, outcome))
        .collect()
}

/// The cheapest possible NIF call, the benchmark's yardstick.
#[rustler::nif]
fn noop() -> Atom {
    atoms::ok()
}

rustler::init!("mod_event_pusher_nif", load = load);
