%% @doc The NIF loader: stubs only. Kept tiny and stable because a module holding a
%% NIF cannot be hot-upgraded; all logic lives in other modules.
-module(mod_event_pusher_nif).

-export([start_http/3, start_rabbit/3, start_sns/3, start_push/3, push_reply/3, push/2, stats/1,
         stop/3, set_reporter/2, reports_sent/1, form_urlencode/1, form_urlencode_dirty/1,
         noop/0]).
%% Test control: what the NIF can report, for the contract test
-export([attempt_outcomes/0]).

-nifs([start_http/3, start_rabbit/3, start_sns/3, start_push/3, push_reply/3, push/2, stats/1,
       stop/3, set_reporter/2, reports_sent/1, form_urlencode/1, form_urlencode_dirty/1,
       noop/0, attempt_outcomes/0]).
-on_load(load/0).

-include("mod_event_pusher_nif.hrl").

-type instance() :: reference().
%% Why a start was refused: not a pid (badarg), a field of a configuration record
%% missing or of the wrong type (named; the record's name when the term is not that
%% record), the runtime missing, or the backend's own reason with its
%% text: an http pool it cannot build (bad URL, unreadable certificate file...) or a
%% broker refusing the credentials, the virtual host or an exchange.
-type start_error() :: badarg | no_runtime | {bad_config, Option :: atom()}
                     | {http_config | rabbit_refused, Text :: binary()}.
%% too_large: the event alone is larger than queue.max_bytes (it could never be queued).
%% {bad_event, Field}: the element of the event term that is missing or not of its type
%% (shape: not one of the backend's event tuples); badarg: not an instance.
-type push_error() :: queue_full | too_large | stopped | {bad_event, Field :: atom()} | badarg.
%% The events of each backend (mod_event_pusher_nif.hrl).
-type http_event() :: #http_event{}.
-type rabbit_event() :: #rabbit_presence{} | #rabbit_chat{}.
-type sns_event() :: #sns_presence{} | #sns_message{}.
-type push_publish() :: #push_publish{}.
-type event() :: http_event() | rabbit_event() | sns_event() | push_publish().
%% Why an attempt did not deliver, or why an event failed for good (README, "Failure
%% reasons"): an atom, or {Atom, Detail} with a number, the transport's or the
%% service's text, or the last attempt's reason.
-type failure_reason() :: {http_status, 100..599} | timeout | host_timeout | publish_timeout
                        | confirm_timeout | nacked
                        | {connection | tls | error_reply | service_error | bad_request, binary()}
                        | {routing_key_too_long | message_too_large, non_neg_integer()}
                        | backend_closed | router_down | reply_lost | no_answer_in_batch
                        | backend_panicked
                        | {retry_deadline_passed, failure_reason()}
                        | {retry_after_past_deadline, {Seconds :: non_neg_integer(), failure_reason()}}
                        | drain_timeout | {drain_timeout, failure_reason()}.
-type stats() :: #{accepted | delivered | retried | failed | dropped | queued
                   | queued_bytes | in_flight | lost => non_neg_integer(),
                   %% of dropped: events larger than queue.max_bytes; the size of the
                   %% latest of them (0 before the first); the cap
                   dropped_too_large | last_too_large_bytes | max_bytes => non_neg_integer(),
                   %% of queued: events waiting for their next attempt
                   waiting_retry => non_neg_integer(),
                   latency_p50_us | latency_p99_us => non_neg_integer() | undefined,
                   %% rabbit only: the connection's state
                   connection => connected | connecting | disconnected | closed,
                   last_connection_error => binary() | undefined,
                   last_connection_error_at_ms | disconnected_since_ms
                       => non_neg_integer() | undefined,
                   connect_failures => non_neg_integer()}.
-type reports_sent() :: #{batches := non_neg_integer(), reports := non_neg_integer(),
                         counters := #{delivered | retried | failed | dropped
                                       | dropped_too_large => non_neg_integer()},
                         connections := #{opened | closed | failed => non_neg_integer()},
                         held := non_neg_integer()}.
-export_type([instance/0, start_error/0, push_error/0, failure_reason/0, event/0, http_event/0, rabbit_event/0,
              sns_event/0, push_publish/0, stats/0, reports_sent/0]).

-define(LIBRARY, "libpusher_nif").

-spec load() -> ok | {error, term()}.
load() ->
    Threads = application:get_env(mongoose_event_pusher, runtime_worker_threads, 2),
    case find_library() of
        {ok, Path} -> erlang:load_nif(Path, #{worker_threads => Threads});
        {error, _} = NotFound -> NotFound
    end.

%% The first directory that holds the library wins: our application's priv dir (a
%% standalone install), MongooseIM's (copied into a MongooseIM release, our modules
%% belong to the mongooseim application), then priv/ beside this module's ebin/.
find_library() ->
    AppPrivDirs = [filename:absname(Dir) || App <- [mongoose_event_pusher, mongooseim],
                                            Dir <- [code:priv_dir(App)], is_list(Dir)],
    BesideEbin = [filename:join(filename:dirname(filename:dirname(filename:absname(Beam))),
                                "priv") || Beam <- [code:which(?MODULE)], is_list(Beam)],
    Tried = lists:foldr(fun(Dir, Acc) -> [Dir | lists:delete(Dir, Acc)] end, [],
                        AppPrivDirs ++ BesideEbin),
    case [Dir || Dir <- Tried, filelib:is_regular(filename:join(Dir, ?LIBRARY ".so"))] of
        [Found | _] -> {ok, filename:join(Found, ?LIBRARY)};
        [] -> {error, {library_not_found, ?LIBRARY ".so", Tried}}
    end.

%% @doc Starts an HTTP backend instance; outcomes go to Reporter in batches as
%% `{mod_event_pusher_nif, report, Batch}'.
-spec start_http(#instance_config{}, #http_config{}, pid()) ->
          {ok, instance()} | {error, start_error()}.
start_http(_Instance, _Config, _Reporter) -> erlang:nif_error(nif_not_loaded).

%% @doc Starts a RabbitMQ backend instance after one connect attempt (on a dirty
%% scheduler, bounded by connect_timeout_ms). Fails, naming what, only when the broker
%% answered and refused the credentials, the virtual host or an exchange declaration;
%% an unreachable broker gives a disconnected instance that reconnects by itself.
-spec start_rabbit(#instance_config{}, #rabbit_config{}, pid()) ->
          {ok, instance()} | {error, start_error()}.
start_rabbit(_Instance, _Config, _Reporter) -> erlang:nif_error(nif_not_loaded).

%% @doc Starts an Amazon SNS backend instance. Sends nothing yet: bad credentials
%% show as failed publishes.
-spec start_sns(#instance_config{}, #sns_config{}, pid()) ->
          {ok, instance()} | {error, start_error()}.
start_sns(_Instance, _Config, _Reporter) -> erlang:nif_error(nif_not_loaded).

%% @doc Starts an XEP-0357 push instance. Reporter gets the reports and also each
%% publish when its turn comes, to route: `{mod_event_pusher_nif, route, Id, Publish}'
%% with the #push_publish{} given to push/2.
-spec start_push(#instance_config{}, #push_config{}, pid()) ->
          {ok, instance()} | {error, start_error()}.
start_push(_Instance, _Config, _Reporter) -> erlang:nif_error(nif_not_loaded).

%% @doc The reply to the routed publish Id.
-spec push_reply(instance(), non_neg_integer(), result | timeout | {error, binary()}) ->
          ok | {error, unknown_request | badarg}.
push_reply(_Instance, _Id, _Reply) -> erlang:nif_error(nif_not_loaded).

%% @doc Enqueues one event without waiting; never blocks. Its cost does not grow with
%% the event: binaries over 1 KiB are referenced, not copied, and an http body given
%% as `{form, Fields}' is encoded by the delivery worker.
-spec push(instance(), event()) -> ok | {error, push_error()}.
push(_Instance, _Event) -> erlang:nif_error(nif_not_loaded).

-spec stats(instance()) -> stats() | {error, badarg}.
stats(_Instance) -> erlang:nif_error(nif_not_loaded).

%% @doc Drains asynchronously; the caller later gets
%% `{mod_event_pusher_nif, stopped, Tag, Stats}'.
-spec stop(instance(), non_neg_integer(), term()) -> ok | {error, term()}.
stop(_Instance, _DrainMs, _Tag) -> erlang:nif_error(nif_not_loaded).

%% @doc Makes Pid the instance's reporter: it gets the reports (and routing requests)
%% from now on, including batches held while no reporter was alive. Answers what its
%% predecessors were sent, read atomically with the change (the map of reports_sent/1).
-spec set_reporter(instance(), pid()) -> {ok, reports_sent()} | {error, term()}.
set_reporter(_Instance, _Pid) -> erlang:nif_error(nif_not_loaded).

%% @doc The report batches handed to live reporters so far, with their attempt and
%% failure reports and the sums of their counters and connection counts; `held' batches
%% wait for a live reporter.
-spec reports_sent(instance()) -> reports_sent() | {error, badarg}.
reports_sent(_Instance) -> erlang:nif_error(nif_not_loaded).

%% @doc application/x-www-form-urlencoded encoding of binary pairs, byte for byte as
%% cow_qs:qs/1 (cowlib 2.14) writes it: the delivery worker's own encoder. On a normal
%% scheduler: for small inputs only (mod_event_pusher_http_defaults sends larger ones to
%% form_urlencode_dirty/1).
-spec form_urlencode([{binary(), binary()}]) -> binary() | {error, badarg}.
form_urlencode(_Fields) -> erlang:nif_error(nif_not_loaded).

%% @doc form_urlencode/1 on a dirty CPU scheduler, for large inputs.
-spec form_urlencode_dirty([{binary(), binary()}]) -> binary() | {error, badarg}.
form_urlencode_dirty(_Fields) -> erlang:nif_error(nif_not_loaded).

%% @doc The cheapest NIF call: the benchmark's yardstick.
-spec noop() -> ok.
noop() -> erlang:nif_error(nif_not_loaded).

%% @doc One outcome of each kind a report's attempts can carry, as reports encode them.
-spec attempt_outcomes() -> [mod_event_pusher_instance:attempt_outcome()].
attempt_outcomes() -> erlang:nif_error(nif_not_loaded).
