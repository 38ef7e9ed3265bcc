%% @doc Delivery options every Rust-backed backend shares (our additions to
%% MongooseIM's options, all with defaults): the bounded queue, the retry policy and
%% the drain deadline, and their translation into the NIF's instance settings.
-module(mod_event_pusher_delivery).

-export([config_items/0, config_defaults/0, instance_config/2]).
-export([find_pool/3, pool_workers/1, report/4, timestamp/1]).

-include("mongoose_config_spec.hrl").
-include("mod_event_pusher_nif.hrl").
-include_lib("kernel/include/logger.hrl").

%% @doc Items to merge into a backend's config section.
-spec config_items() -> #{binary() => #section{} | #option{}}.
config_items() ->
    #{<<"queue">> => queue_spec(),
      <<"retry">> => retry_spec(),
      <<"drain_timeout_ms">> => mod_event_pusher_config:bounded(non_negative, duration_ms)}.

-spec config_defaults() -> #{binary() => term()}.
config_defaults() ->
    #{<<"drain_timeout_ms">> => 5000}.

queue_spec() ->
    #section{items = #{<<"max_events">> => mod_event_pusher_config:bounded(positive, queue_events),
                       <<"max_bytes">> => mod_event_pusher_config:bounded(positive, queue_bytes),
                       <<"overflow">> => #option{type = atom,
                                                 validate = {enum, [drop_newest, drop_oldest]}}},
             defaults = #{<<"max_events">> => 10000,
                          <<"max_bytes">> => 16777216,
                          <<"overflow">> => drop_newest},
             include = always}.

retry_spec() ->
    #section{items = #{<<"max_attempts">> => mod_event_pusher_config:bounded(positive, attempts),
                       <<"base_backoff_ms">> => duration_ms(),
                       <<"max_backoff_ms">> => duration_ms(),
                       <<"deadline_ms">> => duration_ms()},
             defaults = #{<<"max_attempts">> => 3,
                          <<"base_backoff_ms">> => 100,
                          <<"max_backoff_ms">> => 5000,
                          <<"deadline_ms">> => 30000},
             include = always}.

duration_ms() ->
    mod_event_pusher_config:bounded(positive, duration_ms).

%% @doc The instance part of a NIF start config, from the module options and the
%% number of concurrent deliveries.
-spec instance_config(gen_mod:module_opts(), pos_integer()) -> #instance_config{}.
instance_config(#{queue := Queue, retry := Retry}, Concurrency) ->
    #instance_config{max_events = maps:get(max_events, Queue),
                     max_bytes = maps:get(max_bytes, Queue),
                     overflow = maps:get(overflow, Queue),
                     max_attempts = maps:get(max_attempts, Retry),
                     base_backoff_ms = maps:get(base_backoff_ms, Retry),
                     max_backoff_ms = maps:get(max_backoff_ms, Retry),
                     retry_deadline_ms = maps:get(deadline_ms, Retry),
                     concurrency = Concurrency}.

%% @doc The `[outgoing_pools.Type.Tag]' pool as MongooseIM's config has it: a
%% host-type pool first, then a global one.
-spec find_pool(binary(), atom(), atom()) -> {ok, map()} | {error, map()}.
find_pool(HostType, Type, Tag) ->
    Pools = mongoose_config:get_opt({outgoing_pools, HostType}, [])
        ++ mongoose_config:get_opt(outgoing_pools, []),
    case [P || P = #{type := T, tag := G} <- Pools, T =:= Type, G =:= Tag] of
        [Pool | _] -> {ok, Pool};
        [] -> {error, #{what => pool_not_configured,
                        text => iolist_to_binary(["No [outgoing_pools.", atom_to_binary(Type), ".",
                                                  atom_to_binary(Tag), "] section"])}}
    end.

-spec pool_workers(map()) -> pos_integer().
pool_workers(#{opts := #{workers := Workers}}) -> Workers;
pool_workers(_) -> 10.

%% One warning per batch with final failures or drops, not one per event. BackendDown
%% (the report's `backend_down', for a backend with a connection) says whether it was
%% unreachable during the batch, so that drops name that cause instead of the queue
%% settings.
-spec log_report(binary(), mod_event_pusher_instance:key(),
                 [{binary(), binary(), non_neg_integer()}], map(), non_neg_integer(),
                 mod_event_pusher_instance:backend_down()) -> ok.
log_report(HostType, Key, Failures, Counters, ReportsLost, BackendDown) ->
    log_failures(HostType, Key, Failures),
    %% Events too large for the queue are logged by the reporter, with their reason.
    Full = maps:get(dropped, Counters, 0) - maps:get(dropped_too_large, Counters, 0),
    log_drops(HostType, Key, Full, ReportsLost, BackendDown).

%% @doc What every backend does with an outcome batch (its handle_report/3 adds only
%% what differs): each attempt to `attempt' (the backend's per-attempt metrics), the
%% batch's counters to `delivery_event' (labels: the host type), then the logs of
%% failures and drops, which name the outage the batch reports (`backend_down', only
%% ever set for a backend that keeps a connection) as their cause.
-spec report(binary(), mod_event_pusher_instance:key(), mod_event_pusher_instance:report(),
             #{delivery_event := atom(), attempt := fun((tuple()) -> any())}) -> ok.
report(HostType, Key, Report = #{attempts := Attempts, failures := Failures,
                                 counters := Counters, reports_lost := Lost},
       #{delivery_event := DeliveryEvent, attempt := Attempt}) ->
    lists:foreach(Attempt, Attempts),
    mongoose_instrument:execute(DeliveryEvent, #{host_type => HostType}, Counters),
    log_report(HostType, Key, Failures, Counters, Lost,
               maps:get(backend_down, Report, undefined)).

%% @doc Milliseconds since the Unix epoch as RFC 3339 text (UTC), for log lines.
-spec timestamp(integer()) -> binary().
timestamp(Ms) ->
    list_to_binary(calendar:system_time_to_rfc3339(Ms, [{unit, millisecond},
                                                        {offset, "Z"}])).

log_failures(_HostType, _Key, []) ->
    ok;
log_failures(HostType, Key, [{Tag, Reason, Attempts} | _] = Failures) ->
    ?LOG_WARNING(#{what => event_pusher_delivery_failed, host_type => HostType, instance => Key,
                   count => length(Failures),
                   example => #{tag => Tag, reason => Reason, attempts => Attempts}}).

log_drops(_HostType, _Key, 0, 0, _BackendDown) ->
    ok;
log_drops(HostType, Key, 0, ReportsLost, _BackendDown) ->
    %% Deliveries went on; only per-attempt metrics and failure details were skipped.
    ?LOG_WARNING(#{what => event_pusher_reports_lost, host_type => HostType, instance => Key,
                   reports_lost => ReportsLost,
                   text => <<"Outcome reports came faster than they could be passed on: "
                             "some attempt metrics and failure details are missing">>});
log_drops(HostType, Key, Dropped, ReportsLost, undefined) ->
    ?LOG_WARNING(#{what => event_pusher_events_dropped, host_type => HostType, instance => Key,
                   dropped => Dropped, reports_lost => ReportsLost,
                   text => <<"Queue full: raise queue.max_events/max_bytes or the concurrency">>});
log_drops(HostType, Key, Dropped, ReportsLost, #{since_ms := Since, reason := Reason}) ->
    ?LOG_WARNING(#{what => event_pusher_events_dropped, host_type => HostType, instance => Key,
                   dropped => Dropped, reports_lost => ReportsLost,
                   cause => backend_unreachable, unreachable_since => timestamp(Since),
                   backend_error => Reason,
                   text => <<"Queue full because the backend is unreachable: events wait for "
                             "the reconnect, and those beyond queue.max_events/max_bytes "
                             "are dropped">>}).
