%% @doc One Rust backend instance and the process that receives its reports.
%%
%% The reporter (a gen_server of this module) creates the NIF instance, so outcome
%% batches come to it, and hands each batch to the backend module's handle_report/3
%% (metrics, logs). It lives under its own supervisor (mod_event_pusher_instance_sup),
%% started with ejabberd_sup:start_child/1 as MongooseIM starts its per-host-type
%% workers. A reporter that dies is restarted and takes the running instance over
%% (mod_event_pusher_nif:set_reporter/2): delivery never depends on the reporter, and
%% the instance's stats (Rust atomics) stay exact whatever happens to it. What the dead
%% reporter had not handled yet is counted and logged, and its counts are added to the
%% next report so that counter metrics stay whole (see take_over/2).
%%
%% The hook path never talks to the reporter: backends find the instance with
%% instance/2 and call mod_event_pusher_nif:push/2. Stop is driven by the stopping
%% process itself, so that it completes, with final stats, even without a reporter.
-module(mod_event_pusher_instance).
-behaviour(gen_server).

-export([start/4, stop/3, stop_all/3, stats/2, instance/2]).
-export([start_or_raise/5, stop_with_drain_option/3, is_attempt_outcome/1]).
-export([start_link/1, init/1, handle_call/3, handle_cast/2, handle_info/2]).

-include_lib("kernel/include/logger.hrl").

-type key() :: term().
-type starter() :: fun((Reporter :: pid()) -> {ok, mod_event_pusher_nif:instance()} | {error, term()}).
%% One attempt: {Tag, Outcome, ElapsedUs, Bytes}; Outcome is an HTTP status, an
%% AMQP publish outcome, or {error, Reason} when no answer came.
%% An HTTP status; a publish written (confirms off), confirmed or nacked; no confirm or
%% reply in time; an IQ result or error (push); no answer, with the reason.
-type attempt_outcome() :: non_neg_integer() | published | confirmed | nacked | timeout
                         | result | {error_reply, binary()}
                         | {error, mod_event_pusher_nif:failure_reason()}.
-type report() :: #{attempts := [{binary(), attempt_outcome(), non_neg_integer(),
                                  non_neg_integer()}],
                    failures := [{binary(), mod_event_pusher_nif:failure_reason(),
                                  non_neg_integer()}],
                    %% dropped_too_large (a part of dropped) only when there were any
                    counters := #{delivered | retried | failed | dropped | dropped_too_large
                                  => non_neg_integer()},
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
-export_type([key/0, report/0, attempt_outcome/0, connection_event/0, backend_down/0]).

-callback handle_report(HostType :: binary(), key(), report()) -> any().
%% Backends whose instance asks Erlang to route stanzas (push) handle those requests.
-callback handle_route(HostType :: binary(), key(), mod_event_pusher_nif:instance(),
                       {Id :: non_neg_integer(), mod_event_pusher_nif:push_publish()}) -> any().
-optional_callbacks([handle_route/4]).

%% How long past its drain deadline a stop may take before the caller gives up.
-define(STOP_MARGIN_MS, 30000).
%% How long a stop waits, once the instance stopped, for the last reports to be handled.
-define(FINISH_REPORTS_MS, 5000).

%% The `handled' counters, shared by an instance's successive reporters (and a
%% stopping process that takes over): what they took from their mailbox, and the batch
%% being handled now (zero between batches), each in the order of batch_counts/1; and
%% the counts of batches a dead reporter never handled, to add to the next report, in
%% the order of value_counts/2.
-define(COUNTS, 9).
-define(VALUES, 7).
-define(HANDLED, 1).
-define(IN_PROGRESS, (?HANDLED + ?COUNTS)).
-define(CARRIED, (?IN_PROGRESS + ?COUNTS)).
-define(SLOTS, (?CARRIED + ?VALUES - 1)).

%% What persistent_term holds for (HostType, Key): the hook path reads the instance,
%% a restarted reporter finds it and its counters here.
-record(entry, {instance :: mod_event_pusher_nif:instance(), supervisor :: pid(),
                handled :: counters:counters_ref(), module :: module(),
                stopping = false :: boolean()}).

-record(state, {host_type :: binary(), key :: key(), module :: module(),
                supervisor :: pid(), handled :: counters:counters_ref(),
                instance :: mod_event_pusher_nif:instance() | undefined}).

%% @doc Starts the instance for (HostType, Key) and its supervised reporter;
%% Module:handle_report/3 gets its reports.
-spec start(binary(), key(), module(), starter()) ->
          {ok, mod_event_pusher_nif:instance()} | {error, term()}.
start(HostType, Key, Module, Starter) ->
    Handled = counters:new(?SLOTS, []),
    %% No configuration in the spec: MongooseIM logs a spec that fails to start.
    Spec = #{id => child_id(HostType, Key),
             start => {mod_event_pusher_instance_sup, start_link,
                       [{HostType, Key, Module, Handled}]},
             restart => transient,
             shutdown => infinity,
             type => supervisor,
             modules => [mod_event_pusher_instance_sup]},
    case start_supervisor(Spec) of
        {ok, Supervisor} -> start_instance(HostType, Key, Supervisor, Starter);
        {error, _} = Error -> Error
    end.

%% ejabberd_sup:start_child/1 raises (after logging) when the child does not start.
start_supervisor(Spec) ->
    try ejabberd_sup:start_child(Spec)
    catch error:{start_child_failed, Reason, _Spec} -> {error, Reason}
    end.

start_instance(HostType, Key, Supervisor, Starter) ->
    Result = case reporter(Supervisor) of
                 {ok, Reporter} ->
                     try gen_server:call(Reporter, {start_instance, Starter}, infinity)
                     catch exit:{Reason, _Call} -> {error, {reporter_died, Reason}}
                     end;
                 none ->
                     {error, no_reporter}
             end,
    case Result of
        {ok, Instance} ->
            {ok, Instance};
        {error, _} ->
            %% Stops the instance if the reporter made one, and the supervisor.
            _ = stop(HostType, Key, 0),
            Result
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

%% Stopping is driven from the calling process: the NIF's `stopped' message comes
%% here, so that a reporter dying meanwhile changes nothing.
request_stop(HostType, Key, DrainMs) ->
    case persistent_term:get(name(HostType, Key), undefined) of
        undefined ->
            not_running;
        #entry{instance = Instance} = Entry ->
            %% The hook path leaves a stopping instance alone; reporters still find it.
            persistent_term:put(name(HostType, Key), Entry#entry{stopping = true}),
            Tag = make_ref(),
            ok = mod_event_pusher_nif:stop(Instance, DrainMs, Tag),
            {Entry, Tag}
    end.

wait_stopped(HostType, Key, not_running, _Deadline) ->
    %% A supervisor may be left by a start that failed before the instance existed.
    ok = ejabberd_sup:stop_child(child_id(HostType, Key)),
    {error, not_running};
wait_stopped(HostType, Key, {Entry, Tag}, Deadline) ->
    Timeout = max(0, Deadline - erlang:monotonic_time(millisecond)),
    Result = receive
                 {mod_event_pusher_nif, stopped, Tag, Stats} ->
                     finish_reports(HostType, Key, Entry),
                     {ok, Stats}
             after Timeout ->
                     %% The drain deadline is enforced in Rust; this only guards module
                     %% stop against a stuck instance.
                     ?LOG_ERROR(#{what => event_pusher_stop_timeout, host_type => HostType,
                                  key => Key}),
                     {error, stop_timeout}
             end,
    ok = ejabberd_sup:stop_child(child_id(HostType, Key)),
    persistent_term:erase(name(HostType, Key)),
    log_stop(HostType, Key, Result),
    Result.

%% The instance has stopped and sent its last batch: the reporter handles every batch
%% sent to it before it is stopped. Without a reporter (it died, or its supervisor
%% gave up after repeated deaths) this process takes the instance over and does it.
finish_reports(HostType, Key, #entry{instance = Instance, supervisor = Supervisor,
                                     handled = Handled, module = Module}) ->
    Deadline = erlang:monotonic_time(millisecond) + ?FINISH_REPORTS_MS,
    Finished = case reporter(Supervisor) of
                   {ok, Reporter} ->
                       try gen_server:call(Reporter, {handle_remaining_reports, Deadline},
                                           ?FINISH_REPORTS_MS + 1000)
                       catch exit:_ -> false
                       end;
                   none ->
                       false
               end,
    case Finished of
        ok ->
            ok;
        false ->
            State = #state{host_type = HostType, key = Key, module = Module,
                           supervisor = Supervisor, handled = Handled, instance = Instance},
            handle_remaining_reports(take_over(State, stopping), Deadline),
            flush_report_messages()
    end.

%% Leftovers sent to this (non-reporter) process once it gave up waiting.
flush_report_messages() ->
    receive {mod_event_pusher_nif, report, _} -> flush_report_messages()
    after 0 -> ok
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
        #entry{instance = Instance, stopping = false} -> Instance;
        _ -> undefined
    end.

name(HostType, Key) ->
    {?MODULE, HostType, Key}.

child_id(HostType, Key) ->
    {?MODULE, HostType, Key}.

%% The current reporter under Supervisor; none while it restarts or after its
%% supervisor gave up.
reporter(Supervisor) ->
    try supervisor:which_children(Supervisor) of
        [{reporter, Pid, worker, _}] when is_pid(Pid) -> {ok, Pid};
        _ -> none
    catch exit:_ -> none
    end.

%% The reporter

%% @doc Started by mod_event_pusher_instance_sup.
-spec start_link({binary(), key(), module(), counters:counters_ref(), pid()}) ->
          {ok, pid()} | {error, term()}.
start_link(Args) ->
    gen_server:start_link(?MODULE, Args, []).

-spec init({binary(), key(), module(), counters:counters_ref(), pid()}) -> {ok, #state{}}.
init({HostType, Key, Module, Handled, Supervisor}) ->
    State = #state{host_type = HostType, key = Key, module = Module,
                   supervisor = Supervisor, handled = Handled},
    case persistent_term:get(name(HostType, Key), undefined) of
        #entry{instance = Instance, supervisor = Supervisor, handled = Handled} ->
            %% A restart: the instance runs on and sends to the dead predecessor.
            {ok, take_over(State#state{instance = Instance}, restarted)};
        _ ->
            %% The first reporter: start_instance follows.
            {ok, State}
    end.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({start_instance, Starter}, _From, State = #state{instance = undefined}) ->
    #state{host_type = HostType, key = Key, module = Module, supervisor = Supervisor,
           handled = Handled} = State,
    %% The reason of a crash, never its stacktrace: arguments may hold secrets.
    case try Starter(self()) catch Class:Crash -> {error, {Class, Crash}} end of
        {ok, Instance} ->
            persistent_term:put(name(HostType, Key),
                                #entry{instance = Instance, supervisor = Supervisor,
                                       handled = Handled, module = Module}),
            {reply, {ok, Instance}, State#state{instance = Instance}};
        {error, Reason} ->
            {reply, {error, Reason}, State}
    end;
handle_call({handle_remaining_reports, Deadline}, _From, State) ->
    {reply, ok, handle_remaining_reports(State, Deadline)}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({mod_event_pusher_nif, report, Report}, State) ->
    {noreply, handle_report(Report, State)};
handle_info({mod_event_pusher_nif, route, _Id, _Publish} = Request, State) ->
    handle_route(Request, State),
    {noreply, State};
handle_info(Other, State) ->
    ?LOG_WARNING(#{what => event_pusher_unexpected_message, msg => Other}),
    {noreply, State}.

handle_route({mod_event_pusher_nif, route, Id, Publish},
             #state{host_type = HostType, key = Key, module = Module, instance = Instance}) ->
    try Module:handle_route(HostType, Key, Instance, {Id, Publish})
    catch Class:Reason:Stacktrace ->
            ?LOG_ERROR(#{what => event_pusher_route_failed, host_type => HostType, key => Key,
                         class => Class, reason => Reason, stacktrace => Stacktrace}),
            mod_event_pusher_nif:push_reply(Instance, Id, {error, <<"route_failed">>})
    end.

%% A batch counts as handled as soon as it is taken: a reporter killed while handling
%% it leaves its metrics partial, never doubled (take_over/2 logs that batch).
handle_report(Report, State = #state{handled = Handled}) ->
    [Batches, Reports | Values] = batch_counts(Report),
    Carried = take_slots(Handled, ?CARRIED, ?VALUES),
    add_slots(Handled, ?HANDLED, [Batches, Reports | Values]),
    put_slots(Handled, ?IN_PROGRESS, [Batches, Reports | add_lists(Values, Carried)]),
    log_too_large(Report, State),
    pass_on(with_carried(Report, Carried), State),
    put_slots(Handled, ?IN_PROGRESS, zeros(?COUNTS)),
    State.

%% Events larger than queue.max_bytes: their own warning, at most one per report batch
%% (a batch comes every 100 ms at most), instead of the backend's "queue full" one
%% (mod_event_pusher_delivery leaves them out of it); the counter metrics still count
%% them as dropped.
log_too_large(#{counters := #{dropped_too_large := Count}},
              #state{host_type = HostType, key = Key, instance = Instance}) when Count > 0 ->
    Sizes = case Instance =/= undefined andalso mod_event_pusher_nif:stats(Instance) of
                #{last_too_large_bytes := Bytes, max_bytes := Max} ->
                    #{bytes => Bytes, max_bytes => Max};
                _ ->
                    #{}
            end,
    ?LOG_WARNING(Sizes#{what => event_pusher_event_too_large, host_type => HostType,
                        instance => Key, dropped => Count, reason => too_large,
                        text => <<"Events larger than queue.max_bytes were dropped: they "
                                  "could never be queued (bytes: the latest one's size)">>});
log_too_large(_Report, _State) ->
    ok.

pass_on(Report, #state{host_type = HostType, key = Key, module = Module}) ->
    try Module:handle_report(HostType, Key, Report)
    catch Class:Reason:Stacktrace ->
            ?LOG_ERROR(#{what => event_pusher_report_failed, host_type => HostType, key => Key,
                         class => Class, reason => Reason, stacktrace => Stacktrace})
    end.

%% Handles reports until every batch sent to a reporter was handled and none is held
%% for one, or until Deadline.
handle_remaining_reports(State = #state{instance = Instance, handled = Handled}, Deadline) ->
    #{batches := Sent, held := Held} = mod_event_pusher_nif:reports_sent(Instance),
    Left = Deadline - erlang:monotonic_time(millisecond),
    case counters:get(Handled, 1) >= Sent andalso Held =:= 0 of
        true ->
            log_carried_left(State);
        false when Left =< 0 ->
            ?LOG_WARNING(#{what => event_pusher_reports_unhandled_at_stop,
                           host_type => State#state.host_type, key => State#state.key,
                           batches => max(0, Sent - counters:get(Handled, 1)),
                           held_batches => Held,
                           text => <<"Some outcome reports were not handled before the stop: "
                                     "their metrics are missing (the stats are complete)">>}),
            State;
        false ->
            %% Held batches arrive without a further notice: look again shortly.
            receive
                {mod_event_pusher_nif, report, Report} ->
                    handle_remaining_reports(handle_report(Report, State), Deadline)
            after min(Left, 20) ->
                    handle_remaining_reports(State, Deadline)
            end
    end.

log_carried_left(State = #state{handled = Handled}) ->
    case take_slots(Handled, ?CARRIED, ?VALUES) of
        [] ->
            State;
        Counts ->
            ?LOG_WARNING(#{what => event_pusher_reports_unhandled_at_stop,
                           host_type => State#state.host_type, key => State#state.key,
                           counts => counts_map(Counts),
                           text => <<"Counts of reports a dead reporter never handled could "
                                     "not be added to a later report: their metrics are "
                                     "missing (the stats are complete)">>}),
            State
    end.

%% Makes this process the instance's reporter. What the instance sent to its dead
%% predecessors and they did not handle is gone with their mailbox: counted, logged,
%% and its counts carried into the next report.
take_over(State = #state{instance = Instance, handled = Handled}, Why) ->
    {ok, Sent} = mod_event_pusher_nif:set_reporter(Instance, self()),
    SentCounts = sent_counts(Sent),
    Unhandled = [max(0, S - H)
                 || {S, H} <- lists:zip(SentCounts, get_slots(Handled, ?HANDLED, ?COUNTS))],
    Interrupted = get_slots(Handled, ?IN_PROGRESS, ?COUNTS),
    put_slots(Handled, ?HANDLED, SentCounts),
    put_slots(Handled, ?IN_PROGRESS, zeros(?COUNTS)),
    [_UnhandledBatches, _UnhandledReports | UnhandledValues] = Unhandled,
    add_slots(Handled, ?CARRIED, UnhandledValues),
    log_take_over(State, Why, Unhandled, Interrupted, maps:get(held, Sent)),
    State.

log_take_over(#state{host_type = HostType, key = Key}, Why, [Batches, Reports | Counts],
              [Interrupted, InterruptedReports | InterruptedCounts], Held) ->
    What = case Why of
               restarted -> event_pusher_reporter_restarted;
               stopping -> event_pusher_reporter_missing_at_stop
           end,
    Text = case Why of
               restarted -> <<"The reporter process died (the supervisor report says why) and "
                              "was restarted; the new one took over the running instance. "
                              "Delivery and stats are unaffected.">>;
               stopping -> <<"No reporter process was alive at stop (it died, or its "
                             "supervisor gave up after repeated deaths); the stopping process "
                             "handled the remaining reports. Delivery and stats are "
                             "unaffected.">>
           end,
    ?LOG_WARNING(#{what => What, host_type => HostType, key => Key, text => Text,
                   unhandled_batches => Batches,
                   %% Attempt and failure details of those batches: missing from the
                   %% per-attempt metrics and failure logs.
                   reports_lost => Reports,
                   %% Their counts, added to the next report.
                   counts_carried => counts_map(Counts),
                   interrupted_batch => case Interrupted of
                                            0 -> none;
                                            _ -> #{reports => InterruptedReports,
                                                   counts => counts_map(InterruptedCounts)}
                                        end,
                   held_batches => Held}).

counts_map([Delivered, Retried, Failed, Dropped, Opened, Closed, ConnectFailed]) ->
    #{delivered => Delivered, retried => Retried, failed => Failed, dropped => Dropped,
      connections => #{opened => Opened, closed => Closed, failed => ConnectFailed}}.

%% [Batches, Reports, Delivered, Retried, Failed, Dropped, Opened, Closed, ConnectFailed]
batch_counts(#{attempts := Attempts, failures := Failures, counters := Counters,
               connections := Connections}) ->
    [1, length(Attempts) + length(Failures) | value_counts(Counters, Connections)].

sent_counts(#{batches := Batches, reports := Reports, counters := Counters,
              connections := Connections}) ->
    [Batches, Reports | value_counts(Counters, Connections)].

value_counts(Counters, Connections) ->
    [maps:get(K, Counters, 0) || K <- [delivered, retried, failed, dropped]]
        ++ [maps:get(K, Connections, 0) || K <- [opened, closed, failed]].

with_carried(Report, []) ->
    Report;
%% Only counts: the attempt details are gone (take_over/2 logged how many), and the
%% report's reports_lost means a full report channel, another cause.
with_carried(Report = #{counters := Counters, connections := Connections},
           [Delivered, Retried, Failed, Dropped, Opened, Closed, ConnectFailed]) ->
    Add = fun(Map, Pairs) -> lists:foldl(fun({K, V}, M) -> M#{K => maps:get(K, M, 0) + V} end,
                                         Map, Pairs)
          end,
    Report#{counters := Add(Counters, [{delivered, Delivered}, {retried, Retried},
                                       {failed, Failed}, {dropped, Dropped}]),
            connections := Add(Connections, [{opened, Opened}, {closed, Closed},
                                             {failed, ConnectFailed}])}.

get_slots(Ref, First, N) ->
    [counters:get(Ref, I) || I <- lists:seq(First, First + N - 1)].

put_slots(Ref, First, Values) ->
    lists:foldl(fun(V, I) -> counters:put(Ref, I, V), I + 1 end, First, Values),
    ok.

add_slots(Ref, First, Values) ->
    lists:foldl(fun(V, I) -> counters:add(Ref, I, V), I + 1 end, First, Values),
    ok.

%% The N slots from First, zeroed; [] when all were zero.
take_slots(Ref, First, N) ->
    Values = get_slots(Ref, First, N),
    case lists:all(fun(V) -> V =:= 0 end, Values) of
        true -> [];
        false -> put_slots(Ref, First, zeros(N)), Values
    end.

add_lists(Values, []) -> Values;
add_lists(Values, More) -> [A + B || {A, B} <- lists:zip(Values, More)].

zeros(N) ->
    lists:duplicate(N, 0).

log_stop(_HostType, _Key, {error, stop_timeout}) ->
    ok;
log_stop(HostType, Key, {ok, {error, Reason}}) ->
    ?LOG_ERROR(#{what => event_pusher_stop_failed, host_type => HostType, key => Key,
                 reason => Reason});
log_stop(HostType, Key, {ok, Stats = #{lost := 0}}) ->
    ?LOG_INFO(#{what => event_pusher_stopped, host_type => HostType, key => Key, stats => Stats});
log_stop(HostType, Key, {ok, Stats = #{lost := Lost}}) ->
    ?LOG_WARNING(#{what => event_pusher_stopped_with_losses, host_type => HostType, key => Key,
                   lost => Lost, stats => Stats,
                   text => <<"Drain deadline passed before every pending event was delivered">>}).

%% @doc The attempt_outcome() type as a check (kept beside it): the contract test holds
%% every outcome the NIF can report to it (nif_SUITE).
-spec is_attempt_outcome(term()) -> boolean().
is_attempt_outcome(Status) when is_integer(Status), Status >= 0 -> true;
is_attempt_outcome(Atom) when Atom =:= published; Atom =:= confirmed; Atom =:= nacked;
                              Atom =:= timeout; Atom =:= result -> true;
is_attempt_outcome({error_reply, Type}) when is_binary(Type) -> true;
is_attempt_outcome({error, Reason}) -> is_failure_reason(Reason);
is_attempt_outcome(_) -> false.

%% mod_event_pusher_nif:failure_reason(), checked at run time (the contract test).
-spec is_failure_reason(term()) -> boolean().
is_failure_reason({http_status, Status}) -> is_integer(Status) andalso Status >= 100 andalso Status =< 599;
is_failure_reason(Atom) when Atom =:= timeout; Atom =:= host_timeout; Atom =:= publish_timeout;
                             Atom =:= confirm_timeout; Atom =:= nacked; Atom =:= backend_closed;
                             Atom =:= router_down; Atom =:= reply_lost;
                             Atom =:= no_answer_in_batch; Atom =:= backend_panicked;
                             Atom =:= drain_timeout -> true;
is_failure_reason({Kind, Text}) when Kind =:= connection; Kind =:= tls; Kind =:= error_reply;
                                     Kind =:= service_error; Kind =:= bad_request ->
    is_binary(Text);
is_failure_reason({Kind, Bytes}) when Kind =:= routing_key_too_long;
                                      Kind =:= message_too_large ->
    is_integer(Bytes) andalso Bytes >= 0;
is_failure_reason({Kind, Last}) when Kind =:= retry_deadline_passed; Kind =:= drain_timeout ->
    is_failure_reason(Last);
is_failure_reason({retry_after_past_deadline, {Seconds, Last}}) ->
    is_integer(Seconds) andalso Seconds >= 0 andalso is_failure_reason(Last);
is_failure_reason(_) -> false.
