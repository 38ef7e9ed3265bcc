%% Stand-in for MongooseIM's mongoose_instrument: events are registered with
%% set_up/1 and emitted with execute/3 or span/4,5,6.
%%
%% Instead of MongooseIM's handlers (metrics, logs) this stand-in RECORDS every
%% emitted event, so tests can assert on it: get_events/2, wait_for_events/4
%% (events emitted from other processes arrive asynchronously), clear_events/0.
%% Both tables belong to the server; execute/3 only reads the registry and
%% inserts into the public event table, so it never waits for the server.
-module(mongoose_instrument).
-behaviour(gen_server).

%% Service
-export([start_link/0, start/0, stop/0]).
%% API
-export([set_up/1, tear_down/1, execute/3, span/4, span/5, span/6]).
%% Test helpers (not in MongooseIM)
-export([is_set_up/2, get_events/2, wait_for_events/4, clear_events/0]).
%% gen_server
-export([init/1, handle_call/3, handle_cast/2]).

-export_type([event_name/0, labels/0, config/0, spec/0, measurements/0]).

-type event_name() :: atom().
-type labels() :: #{host_type => binary() | global, function => atom(), pool_tag => atom(),
                    pool_id => term(), cache_name => atom(), connection_type => atom()}.
-type metric_type() :: gauge | counter | spiral | histogram.
-type config() :: #{metrics => #{atom() => metric_type()},
                    loglevel => logger:level(),
                    probe => #{module := module(), interval => pos_integer()}}.
-type spec() :: {event_name(), labels(), config()}.
-type measurements() :: #{atom() => term()}.
-type measure_fun(Result) :: fun((TimeUs :: non_neg_integer(), Result) -> measurements()).

%% {{EventName, Labels}, Config}; written by the server, read by anyone.
-define(REGISTRY, mongoose_instrument_registry).
%% {{EventName, Labels}, Seq, Measurements}; written by the emitting processes.
-define(EVENTS, mongoose_instrument_events).
-define(POLL_INTERVAL_MS, 10).

%%% Service

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Starts the server without a link (tests start it from short-lived processes).
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    gen_server:start({local, ?MODULE}, ?MODULE, [], []).

%% @doc Stops the server; registrations and recorded events are dropped with its tables.
-spec stop() -> ok.
stop() ->
    gen_server:stop(?MODULE).

%%% API

%% @doc Registers events. Raises an error map (what = event_already_registered,
%% inconsistent_labels or non_gauge_metrics_in_probe) for an invalid spec;
%% the specs before it stay registered.
-spec set_up([spec()]) -> ok.
set_up(Specs) ->
    lists:foreach(fun(Spec) ->
                          case gen_server:call(?MODULE, {set_up, Spec}) of
                              ok -> ok;
                              {error, ErrorMap} -> error(ErrorMap)
                          end
                  end, Specs).

%% @doc Unregisters events; unknown ones are ignored, configs are not compared.
-spec tear_down([spec()]) -> ok.
tear_down(Specs) ->
    lists:foreach(fun({EventName, Labels, _Config}) ->
                          gen_server:call(?MODULE, {tear_down, EventName, Labels})
                  end, Specs).

%% @doc Emits (here: records) an event; raises event_not_registered for an
%% unregistered one.
-spec execute(event_name(), labels(), measurements()) -> ok.
execute(EventName, Labels, Measurements) when is_map(Measurements) ->
    assert_registered(EventName, Labels),
    record(EventName, Labels, Measurements).

-spec span(event_name(), labels(), fun(() -> Result), measure_fun(Result)) -> Result.
span(EventName, Labels, F, MeasureF) ->
    span(EventName, Labels, F, [], MeasureF).

%% @doc Calls F with Args, emits MeasureF(TimeUs, Result) and returns Result.
%% F is not called for an unregistered event.
-spec span(event_name(), labels(), fun((...) -> Result), list(), measure_fun(Result)) -> Result.
span(EventName, Labels, F, Args, MeasureF) ->
    assert_registered(EventName, Labels),
    {Time, Result} = timer:tc(F, Args),
    record(EventName, Labels, MeasureF(Time, Result)),
    Result.

-spec span(event_name(), labels(), module(), atom(), list(), measure_fun(Result)) -> Result.
span(EventName, Labels, Module, Function, Args, MeasureF) ->
    assert_registered(EventName, Labels),
    {Time, Result} = timer:tc(Module, Function, Args),
    record(EventName, Labels, MeasureF(Time, Result)),
    Result.

%%% Test helpers

-spec is_set_up(event_name(), labels()) -> boolean().
is_set_up(EventName, Labels) ->
    ets:member(?REGISTRY, {EventName, Labels}).

%% @doc Measurements of the recorded events with exactly these labels, oldest first.
-spec get_events(event_name(), labels()) -> [measurements()].
get_events(EventName, Labels) ->
    Events = ets:lookup(?EVENTS, {EventName, Labels}),
    [Measurements || {_Key, _Seq, Measurements} <- lists:keysort(2, Events)].

%% @doc Waits until at least Count such events are recorded; returns all of
%% them, or those recorded so far on timeout.
-spec wait_for_events(event_name(), labels(), non_neg_integer(), non_neg_integer()) ->
          {ok | timeout, [measurements()]}.
wait_for_events(EventName, Labels, Count, TimeoutMs) ->
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    wait_for_events_until(EventName, Labels, Count, Deadline).

-spec clear_events() -> ok.
clear_events() ->
    true = ets:delete_all_objects(?EVENTS),
    ok.

%%% gen_server

-spec init([]) -> {ok, no_state}.
init([]) ->
    ets:new(?REGISTRY, [named_table, protected, set, {read_concurrency, true}]),
    ets:new(?EVENTS, [named_table, public, duplicate_bag, {write_concurrency, true}]),
    {ok, no_state}.

-spec handle_call({set_up, spec()} | {tear_down, event_name(), labels()},
                  gen_server:from(), no_state) -> {reply, ok | {error, map()}, no_state}.
handle_call({set_up, {EventName, Labels, Config}}, _From, State) ->
    Reply = case check_spec(EventName, Labels, Config) of
                ok ->
                    ets:insert(?REGISTRY, {{EventName, Labels}, Config}),
                    ok;
                {error, Reason} ->
                    {error, #{what => Reason, event_name => EventName, labels => Labels}}
            end,
    {reply, Reply, State};
handle_call({tear_down, EventName, Labels}, _From, State) ->
    ets:delete(?REGISTRY, {EventName, Labels}),
    {reply, ok, State}.

-spec handle_cast(term(), no_state) -> {noreply, no_state}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%%% Internals

-spec check_spec(event_name(), labels(), config()) ->
          ok | {error, event_already_registered | inconsistent_labels | non_gauge_metrics_in_probe}.
check_spec(EventName, Labels, Config) ->
    LabelKeys = lists:sort(maps:keys(Labels)),
    OtherLabels = [L || [L] <- ets:match(?REGISTRY, {{EventName, '$1'}, '_'})],
    case {lists:member(Labels, OtherLabels),
          lists:all(fun(L) -> lists:sort(maps:keys(L)) =:= LabelKeys end, OtherLabels)} of
        {true, _} -> {error, event_already_registered};
        {false, false} -> {error, inconsistent_labels};
        {false, true} -> check_probe(Config)
    end.

%% A probe is polled for current values, so it can only feed gauges.
-spec check_probe(config()) -> ok | {error, non_gauge_metrics_in_probe}.
check_probe(#{probe := _, metrics := Metrics}) ->
    case lists:all(fun(Type) -> Type =:= gauge end, maps:values(Metrics)) of
        true -> ok;
        false -> {error, non_gauge_metrics_in_probe}
    end;
check_probe(_Config) ->
    ok.

-spec assert_registered(event_name(), labels()) -> ok.
assert_registered(EventName, Labels) ->
    case is_set_up(EventName, Labels) of
        true -> ok;
        false -> error(#{what => event_not_registered, event_name => EventName, labels => Labels})
    end.

-spec record(event_name(), labels(), measurements()) -> ok.
record(EventName, Labels, Measurements) ->
    Seq = erlang:unique_integer([monotonic, positive]),
    true = ets:insert(?EVENTS, {{EventName, Labels}, Seq, Measurements}),
    ok.

-spec wait_for_events_until(event_name(), labels(), non_neg_integer(), integer()) ->
          {ok | timeout, [measurements()]}.
wait_for_events_until(EventName, Labels, Count, Deadline) ->
    Events = get_events(EventName, Labels),
    case length(Events) >= Count of
        true ->
            {ok, Events};
        false ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true ->
                    {timeout, Events};
                false ->
                    timer:sleep(?POLL_INTERVAL_MS),
                    wait_for_events_until(EventName, Labels, Count, Deadline)
            end
    end.
