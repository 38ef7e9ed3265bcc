//! Rustler glue for `mod_event_pusher_nif`: Erlang terms <-> the `pusher` core.
//!
//! Every NIF takes raw terms and decodes them itself, so a wrong term gives
//! `{error, Reason}` (`errors`) instead of an exception, and nothing here can panic
//! across the boundary on bad input.
//!
//! Here: the runtime (built at load) and the NIFs. `contract`: the event and
//! configuration records of mod_event_pusher_nif.hrl; `errors`: the one error type;
//! `resource`: the instance Erlang holds and each backend's `Boundary` impl, the one
//! place backends are told apart; `decode`: records to the core's types; `encode`:
//! reports, reasons and stats to terms; `push_router`: publishes back to the process
//! that routes them; `reporter`: report batches to the reporter process (the core's
//! `handover` holds what it cannot take).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use pusher::handover::HandedOver;
use pusher::http::HttpBackend;
use pusher::push::PushBackend;
use pusher::rabbit::RabbitBackend;
use pusher::sns::SnsBackend;
use pusher::StopSummary;
use pusher::{Instance, InstanceConfig};
use rustler::{Atom, Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};

mod contract;
mod decode;
mod encode;
mod errors;
mod push_router;
mod reporter;
mod resource;

use decode::{
    http_config, instance_config, publish_reply, push_timeout, rabbit_config, sns_config,
};
use encode::{handed_over_term, outcome_term, stats_term};
use errors::{Answer, BoundaryError, Done, Returned};
use push_router::PidRouter;
use reporter::ReportTarget;
use resource::{Boundary, InstanceResource};
use tokio::runtime::Runtime;

pub(crate) mod atoms {
    rustler::atoms! {
        ok, error, badarg, bad_config, bad_event, queue_full, stopped, too_large, undefined, no_runtime,
        dropped_too_large, last_too_large_bytes, max_bytes, form,
        mod_event_pusher_nif, report,
        worker_threads,
        accepted, delivered, retried, failed, dropped, queued, queued_bytes, in_flight,
        waiting_retry,
        latency_p50_us, latency_p99_us, lost,
        attempts, failures, counters, connections, reports_lost,
        published, confirmed, nacked, timeout, opened, closed,
        stop_failed,
        route, result, error_reply, unknown_request,
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

fn instance(term: Term) -> Answer<ResourceArc<InstanceResource>> {
    term.decode().map_err(|_| BoundaryError::Badarg)
}

fn runtime() -> Answer<&'static Runtime> {
    RUNTIME.get().ok_or(BoundaryError::NoRuntime)
}

type Started = Returned<ResourceArc<InstanceResource>>;

/// `start_http(#instance_config{}, #http_config{}, Reporter)`. Dirty: building a TLS
/// client reads certificates.
#[rustler::nif(schedule = "DirtyIo")]
fn start_http<'a>(instance: Term<'a>, config: Term<'a>, reporter: Term<'a>) -> Started {
    start(instance, reporter, |_, instance, _| {
        let http = http_config(config, instance.concurrency)?;
        HttpBackend::new(&http).map_err(|e| BoundaryError::Start("http_config", e.0))
    })
    .into()
}

/// `start_rabbit(#instance_config{}, #rabbit_config{}, Reporter)`. Makes one connect
/// attempt before answering: a broker that refuses the credentials, the virtual host
/// or an exchange declaration fails the start; one that cannot be reached does not
/// (the instance starts disconnected and reconnects). Dirty: it waits on the network
/// (connect_timeout_ms).
#[rustler::nif(schedule = "DirtyIo")]
fn start_rabbit<'a>(instance: Term<'a>, config: Term<'a>, reporter: Term<'a>) -> Started {
    start(instance, reporter, |runtime, _, _| {
        let rabbit = rabbit_config(config)?;
        // A dirty scheduler thread is not a runtime thread: blocking here is allowed.
        runtime
            .block_on(RabbitBackend::start(rabbit))
            .map_err(|e| BoundaryError::Start("rabbit_refused", e.0))
    })
    .into()
}

/// `start_sns(#instance_config{}, #sns_config{}, Reporter)`. Sends nothing: a wrong
/// credential shows on the first publish. Dirty: building the TLS client reads the
/// system's root certificates.
#[rustler::nif(schedule = "DirtyIo")]
fn start_sns<'a>(instance: Term<'a>, config: Term<'a>, reporter: Term<'a>) -> Started {
    start(instance, reporter, |runtime, _, _| {
        let sns = sns_config(config)?;
        // The SDK's client wants a runtime context to be built in.
        let _guard = runtime.enter();
        Ok(SnsBackend::new(&sns))
    })
    .into()
}

/// `start_push(#instance_config{}, #push_config{}, Reporter)`: the reporter also
/// routes the publishes.
#[rustler::nif]
fn start_push<'a>(instance: Term<'a>, config: Term<'a>, reporter: Term<'a>) -> Started {
    start(instance, reporter, |_, _, target| {
        let router = PidRouter {
            target: target.clone(),
        };
        Ok(PushBackend::new(router, push_timeout(config)?))
    })
    .into()
}

/// What every start does: the runtime, the reporter's pid (badarg: not a pid) and the
/// instance settings, then the backend `build` makes, running as an instance.
fn start<B: Boundary>(
    instance: Term,
    reporter: Term,
    build: impl FnOnce(&'static Runtime, &InstanceConfig, &Arc<ReportTarget>) -> Answer<B>,
) -> Answer<ResourceArc<InstanceResource>> {
    let runtime = runtime()?;
    let pid = reporter
        .decode::<LocalPid>()
        .map_err(|_| BoundaryError::Badarg)?;
    let config = instance_config(instance)?;
    let target = Arc::new(ReportTarget::new(pid));
    let backend = build(runtime, &config, &target)?;
    let instance = Instance::start(runtime.handle(), backend, config, target.clone());
    Ok(ResourceArc::new(InstanceResource {
        instance: Box::new(instance),
        target,
    }))
}

/// `push_reply(Instance, Id, result | {error, Type} | timeout)`: `{error,
/// unknown_request}` when the publish already timed out here or the id is unknown.
#[rustler::nif]
fn push_reply<'a>(instance: Term<'a>, id: Term<'a>, reply: Term<'a>) -> Done {
    answer_publish(instance, id, reply).into()
}

fn answer_publish(instance: Term, id: Term, reply: Term) -> Answer<()> {
    let resource = self::instance(instance)?;
    let (Some(push), Ok(id)) = (resource.instance.publisher(), id.decode::<u64>()) else {
        return Err(BoundaryError::Badarg);
    };
    match push.reply(id, publish_reply(reply)?) {
        true => Ok(()),
        false => Err(BoundaryError::UnknownRequest),
    }
}

/// `push(Instance, Event)`: queues one record of mod_event_pusher_nif.hrl. O(1); when
/// the queue is full the event is refused before anything is copied.
#[rustler::nif]
fn push<'a>(instance: Term<'a>, event: Term<'a>) -> Done {
    self::instance(instance)
        .and_then(|resource| resource.instance.push(event))
        .into()
}

/// `stats(Instance)` -> map of counters (and the connection's state, for rabbit).
#[rustler::nif]
fn stats<'a>(env: Env<'a>, instance: Term<'a>) -> Term<'a> {
    match self::instance(instance) {
        Ok(resource) => stats_term(
            env,
            &resource.instance.stats(),
            None,
            resource.instance.connection_status(),
        ),
        Err(error) => Done(Err(error)).encode(env),
    }
}

/// `stop(Instance, DrainMs, Tag)` -> `ok`; later the caller receives
/// `{mod_event_pusher_nif, stopped, Tag, Stats}` with `lost` among the stats.
#[rustler::nif]
fn stop<'a>(env: Env<'a>, instance: Term<'a>, drain_ms: Term<'a>, tag: Term<'a>) -> Done {
    let (Ok(resource), Ok(drain_ms), Ok(runtime)) = (
        self::instance(instance),
        drain_ms.decode::<u64>(),
        runtime(),
    ) else {
        return Err(BoundaryError::Badarg).into();
    };
    let caller = env.pid();
    let owned = OwnedEnv::new();
    let saved_tag = owned.save(tag);
    // Capped so that no deadline arithmetic can overflow: a day is "forever" here.
    let drain = Duration::from_millis(drain_ms.min(86_400_000));
    runtime.spawn(async move {
        let stopping = resource.instance.stop(drain);
        // The caller waits for this message: it must come even if stopping panics.
        let summary: Option<StopSummary> = AssertUnwindSafe(stopping).catch_unwind().await.ok();
        let mut owned = owned;
        let _ = owned.send_and_clear(&caller, |env| {
            let stats = match &summary {
                Some(summary) => stats_term(env, &summary.stats, Some(summary.lost), None),
                None => (atoms::error(), atoms::stop_failed()).encode(env),
            };
            let stopped = (atoms::mod_event_pusher_nif(), atoms::stopped());
            (stopped.0, stopped.1, saved_tag.load(env), stats)
        });
    });
    Ok(()).into()
}

/// `set_reporter(Instance, Pid)` -> `{ok, Sent}`: Pid gets the instance's reports (and
/// routing requests) from now on, held batches included; Sent is what its predecessors
/// were sent, read atomically with the change. Dirty: it waits for a batch being sent.
#[rustler::nif(schedule = "DirtyCpu")]
fn set_reporter<'a>(env: Env<'a>, instance: Term<'a>, pid: Term<'a>) -> Returned<Term<'a>> {
    Returned(take_over(instance, pid).map(|sent| handed_over_term(env, &sent)))
}

fn take_over(instance: Term, pid: Term) -> Answer<HandedOver> {
    let (resource, Ok(pid)) = (self::instance(instance)?, pid.decode::<LocalPid>()) else {
        return Err(BoundaryError::Badarg);
    };
    let runtime = runtime()?;
    let sent = resource.target.replace(pid);
    // Sending needs a thread the VM does not manage.
    let target = resource.target.clone();
    runtime.spawn(async move { target.send_held() });
    Ok(sent)
}

/// `reports_sent(Instance)` -> what the instance's live reporters were sent so far.
#[rustler::nif]
fn reports_sent<'a>(env: Env<'a>, instance: Term<'a>) -> Term<'a> {
    match self::instance(instance) {
        Ok(resource) => handed_over_term(env, &resource.target.sent()),
        Err(error) => Done(Err(error)).encode(env),
    }
}

/// `form_urlencode([{Name, Value}])` -> binary | `{error, badarg}`: `pusher::form`'s
/// encoding (as cow_qs:qs/1 writes it), for `prepare_body/7`. On a normal scheduler:
/// small inputs only (mod_event_pusher_http_defaults sends larger ones to the dirty one).
#[rustler::nif]
fn form_urlencode<'a>(env: Env<'a>, fields: Term<'a>) -> Term<'a> {
    urlencode_fields(env, fields)
}

/// `form_urlencode/1` on a dirty CPU scheduler, for large inputs.
#[rustler::nif(schedule = "DirtyCpu")]
fn form_urlencode_dirty<'a>(env: Env<'a>, fields: Term<'a>) -> Term<'a> {
    urlencode_fields(env, fields)
}

fn urlencode_fields<'a>(env: Env<'a>, fields: Term<'a>) -> Term<'a> {
    let Ok(contract::List(fields)) = fields.decode::<contract::Pairs>() else {
        return Done(Err(BoundaryError::Badarg)).encode(env);
    };
    let slices: Vec<(&[u8], &[u8])> = fields
        .iter()
        .map(|(name, value)| (name.as_slice(), value.as_slice()))
        .collect();
    let mut out = rustler::NewBinary::new(env, pusher::form::urlencoded_len(&slices));
    pusher::form::urlencode_into(out.as_mut_slice(), &slices);
    out.into()
}

/// One outcome of each kind a report can carry, encoded as in reports (test control:
/// the contract test holds them to the Erlang type).
#[rustler::nif]
fn attempt_outcomes(env: Env) -> Vec<Term> {
    pusher::backend::AttemptOutcome::one_of_each()
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
