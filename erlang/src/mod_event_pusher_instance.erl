%% @doc One Rust backend instance and the process that receives its reports.
%%
%% The process creates the NIF instance (so outcome batches come to it), hands each
%% batch to the backend module's handle_report/3 (metrics, logs), and on stop drains
%% the instance. The hook path never talks to this process: backends keep the
%% instance reference returned by start/4 and call mod_event_pusher_nif:push/2.
-module(mod_event_pusher_instance).
-behaviour(gen_server).

-export([start/4, stop/3, stop_all/3, stats/2, instance/2]).
-export([start_or_raise/5, stop_with_drain_option/3]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-include_lib("kernel/include/logger.hrl").

-type key() :: term().
-type starter() :: fun((Reporter :: pid()) -> {ok, mod_event_pusher_nif:instance()} | {error, term()}).
%% One attempt: {Tag, Outcome, ElapsedUs, Bytes}; Outcome is an HTTP status, an
%% AMQP publish outcome, or {error, Reason} when no answer came.
-type attempt_outcome() :: non_neg_integer() | published | confirmed | nacked | timeout
                         | {error, binary()}.
-type report() :: #{attempts := [{binary(), attempt_outcome(), non_neg_integer(),
                                  non_neg_integer()}],
                    failures := [{binary(), binary(), non_neg_integer()}],
                    counters := #{delivered | retried | failed | dropped => non_neg_integer()},
                    connections := #{opened | closed | failed => non_neg_integer()},
                    reports_lost := non_neg_integer(),
                    connection_events := [connection_event()],
                    backend_down := backend_down()}.
%% A backend connection's state changes, rate-limited in Rust (times: ms since the
%% Unix epoch; suppressed: warnings not sent since the previous one).
-type connection_event() ::
        {lost, #{reason := binary(), at_ms := integer(), suppressed := non_neg_integer()}}
      | {connect_failed, #{reason := binary(), at_ms := integer(),
                           attempts := pos_integer(), down_since_ms := integer(),
                           suppressed := non_neg_integer()}}
      | {connected, #{at_ms := integer(), down_since_ms := integer(),
                      failed_attempts := non_neg_integer(),
                      suppressed := non_neg_integer()}}.
%% Set when the backend was unreachable during the batch.
-type backend_down() :: undefined | #{since_ms := integer(), reason := binary()}.
-export_type([key/0, report/0, connection_event/0, backend_down/0]).

-callback handle_report(HostType :: binary(), key(), report()) -> any().
%% Backends whose instance asks Erlang to route stanzas (push) handle those requests.
-callback handle_route(HostType :: binary(), key(), mod_event_pusher_nif:instance(),
                       {Id :: non_neg_integer(), From :: binary(), To :: binary(),
                        exml:element()}) -> any().
-optional_callbacks([handle_route/4]).

%% How long past its drain deadline a stop may take before the caller gives up.
-define(STOP_MARGIN_MS, 30000).

-record(state, {host_type :: binary(), key :: key(), module :: module(),
                instance :: mod_event_pusher_nif:instance()}).

%% @doc Starts the instance for (HostType, Key); Module:handle_report/3 gets its reports.
-spec start(binary(), key(), module(), starter()) ->
          {ok, mod_event_pusher_nif:instance()} | {error, term()}.
start(HostType, Key, Module, Starter) ->
    case gen_server:start(?MODULE, {HostType, Key, Module, Starter}, []) of
        {ok, Pid} ->
            Instance = gen_server:call(Pid, instance),
            persistent_term:put(name(HostType, Key), {Pid, Instance}),
            {ok, Instance};
        {error, Reason} ->
            {error, Reason}
    end.

%% @doc start/4 for a backend's gen_mod start/2: the instance, or an error raised as
%% `#{what => What, host_type, reason}' (never the config: it may hold secrets).
%% The instance is then found with instance/2.
-spec start_or_raise(binary(), key(), module(), starter(), atom()) ->
          mod_event_pusher_nif:instance().
start_or_raise(HostType, Key, Module, Starter, What) ->
    case start(HostType, Key, Module, Starter) of
        {ok, Instance} -> Instance;
        {error, Reason} -> error(#{what => What, host_type => HostType, reason => Reason})
    end.

%% @doc stop/3 for a backend's gen_mod stop/1, draining for the module's
%% `drain_timeout_ms' option.
-spec stop_with_drain_option(binary(), key(), module()) -> ok.
stop_with_drain_option(HostType, Key, Module) ->
    #{drain_timeout_ms := Drain} = mod_event_pusher_config:module_opts(HostType, Module),
    _ = stop(HostType, Key, Drain),
    ok.

%% @doc Refuses new events, delivers pending ones for up to DrainMs, then stops.
-spec stop(binary(), key(), term()) ->
          {ok, mod_event_pusher_nif:stats() | {error, stop_failed}}
          | {error, not_running | stop_timeout}.
stop(HostType, Key, DrainMs) ->
    [{Key, Result}] = stop_all(HostType, [Key], DrainMs),
    Result.

%% @doc stop/3 for several instances at once: they drain in parallel, so stopping
%% takes at most DrainMs, not DrainMs per instance. DrainMs is capped at the
%% `drain_timeout_ms' bound (1 day); a value that is no integer means the default.
-spec stop_all(binary(), [key()], term()) ->
          [{key(), {ok, mod_event_pusher_nif:stats() | {error, stop_failed}}
                   | {error, not_running | stop_timeout}}].
stop_all(HostType, Keys, DrainMs0) ->
    DrainMs = drain_ms(HostType, DrainMs0),
    Requests = [{Key, request_stop(HostType, Key, DrainMs)} || Key <- Keys],
    Deadline = erlang:monotonic_time(millisecond) + DrainMs + ?STOP_MARGIN_MS,
    [{Key, wait_stopped(HostType, Key, Request, Deadline)} || {Key, Request} <- Requests].

%% The load-time bound, applied again because option maps given to
%% mongoose_modules:ensure_started/3 skip the parser: the wait below must stay a valid
%% timeout (2^32-1 ms at most), and the NIF takes no negative or huge integer.
drain_ms(_HostType, DrainMs) when is_integer(DrainMs) ->
    min(max(DrainMs, 0), mod_event_pusher_config:upper_bound(duration_ms));
drain_ms(HostType, DrainMs) ->
    #{<<"drain_timeout_ms">> := Default} = mod_event_pusher_delivery:config_defaults(),
    ?LOG_WARNING(#{what => event_pusher_bad_drain_timeout, host_type => HostType,
                   drain_timeout_ms => DrainMs, used => Default,
                   text => <<"drain_timeout_ms is not an integer: the default is used">>}),
    Default.

request_stop(HostType, Key, DrainMs) ->
    Name = name(HostType, Key),
    case persistent_term:get(Name, undefined) of
        undefined ->
            not_running;
        {Pid, _Instance} ->
            persistent_term:erase(Name),
            gen_server:send_request(Pid, {stop, DrainMs})
    end.

wait_stopped(_HostType, _Key, not_running, _Deadline) ->
    {error, not_running};
wait_stopped(HostType, Key, RequestId, Deadline) ->
    Timeout = max(0, Deadline - erlang:monotonic_time(millisecond)),
    case gen_server:wait_response(RequestId, Timeout) of
        {reply, Reply} ->
            Reply;
        {error, _} ->
            {error, not_running};
        timeout ->
            %% The drain deadline is enforced in Rust; this only guards module stop
            %% against a stuck instance.
            ?LOG_ERROR(#{what => event_pusher_stop_timeout, host_type => HostType, key => Key}),
            {error, stop_timeout}
    end.

-spec stats(binary(), key()) -> mod_event_pusher_nif:stats() | {error, not_running}.
stats(HostType, Key) ->
    case instance(HostType, Key) of
        undefined -> {error, not_running};
        Instance -> mod_event_pusher_nif:stats(Instance)
    end.

-spec instance(binary(), key()) -> mod_event_pusher_nif:instance() | undefined.
instance(HostType, Key) ->
    case persistent_term:get(name(HostType, Key), undefined) of
        {_Pid, Instance} -> Instance;
        undefined -> undefined
    end.

name(HostType, Key) ->
    {?MODULE, HostType, Key}.

%% gen_server callbacks

-spec init({binary(), key(), module(), starter()}) -> {ok, #state{}} | {stop, term()}.
init({HostType, Key, Module, Starter}) ->
    case Starter(self()) of
        {ok, Instance} ->
            {ok, #state{host_type = HostType, key = Key, module = Module, instance = Instance}};
        {error, Reason} ->
            {stop, Reason}
    end.

-spec handle_call(term(), gen_server:from(), #state{}) ->
          {reply, term(), #state{}} | {stop, normal, term(), #state{}}.
handle_call(instance, _From, State) ->
    {reply, State#state.instance, State};
handle_call({stop, DrainMs}, _From, State = #state{instance = Instance}) ->
    Tag = make_ref(),
    ok = mod_event_pusher_nif:stop(Instance, DrainMs, Tag),
    Stats = wait_stopped(Tag, State),
    flush_reports(State),
    log_stop(State, Stats),
    {stop, normal, {ok, Stats}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({mod_event_pusher_nif, report, Report}, State) ->
    handle_report(Report, State),
    {noreply, State};
handle_info({mod_event_pusher_nif, route, _Id, _From, _To, _El} = Request, State) ->
    handle_route(Request, State),
    {noreply, State};
handle_info(Other, State) ->
    ?LOG_WARNING(#{what => event_pusher_unexpected_message, msg => Other}),
    {noreply, State}.

%% Draining may need stanzas routed (push): keep routing until the instance stops.
wait_stopped(Tag, State) ->
    receive
        {mod_event_pusher_nif, stopped, Tag, Stats} ->
            Stats;
        {mod_event_pusher_nif, route, _Id, _From, _To, _El} = Request ->
            handle_route(Request, State),
            wait_stopped(Tag, State)
    end.

handle_route({mod_event_pusher_nif, route, Id, From, To, El},
             #state{host_type = HostType, key = Key, module = Module, instance = Instance}) ->
    try Module:handle_route(HostType, Key, Instance, {Id, From, To, El})
    catch Class:Reason:Stacktrace ->
            ?LOG_ERROR(#{what => event_pusher_route_failed, host_type => HostType, key => Key,
                         class => Class, reason => Reason, stacktrace => Stacktrace}),
            mod_event_pusher_nif:push_reply(Instance, Id, {error, <<"route_failed">>})
    end.

%% The final batch is sent before the stopped message; handle what is in the mailbox.
flush_reports(State) ->
    receive {mod_event_pusher_nif, report, Report} ->
            handle_report(Report, State),
            flush_reports(State)
    after 0 -> ok
    end.

handle_report(Report, #state{host_type = HostType, key = Key, module = Module}) ->
    try Module:handle_report(HostType, Key, Report)
    catch Class:Reason:Stacktrace ->
            ?LOG_ERROR(#{what => event_pusher_report_failed, host_type => HostType, key => Key,
                         class => Class, reason => Reason, stacktrace => Stacktrace})
    end.

log_stop(#state{host_type = HostType, key = Key}, {error, Reason}) ->
    ?LOG_ERROR(#{what => event_pusher_stop_failed, host_type => HostType, key => Key,
                 reason => Reason});
log_stop(#state{host_type = HostType, key = Key}, Stats = #{lost := 0}) ->
    ?LOG_INFO(#{what => event_pusher_stopped, host_type => HostType, key => Key, stats => Stats});
log_stop(#state{host_type = HostType, key = Key}, Stats = #{lost := Lost}) ->
    ?LOG_WARNING(#{what => event_pusher_stopped_with_losses, host_type => HostType, key => Key,
                   lost => Lost, stats => Stats,
                   text => <<"Drain deadline passed before every pending event was delivered">>}).
