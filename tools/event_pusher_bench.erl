%% @doc `make bench': what the event pusher costs on the routing path and how fast it
%% delivers, next to what MongooseIM's synchronous httpc-based HTTP backend costs.
%%
%% One run measures, on this machine:
%%  a. the per-call cost (p50/p99, ns) of an empty NIF call, a gen_server:cast of a
%%     #chat_event{}, mod_event_pusher_nif:push/2 of a typical HTTP request and
%%     mod_event_pusher:push_event/2 of an incoming chat message (http backend, default
%%     callback module), the last one with the webhook server healthy, slow (100 ms)
%%     and dead. Each is timed in batches of ?BATCH calls with the same loop shape;
%%     per-call sample = batch time / ?BATCH;
%%  b. delivery throughput to a local keep-alive pusher-sink: N events pushed through
%%     push_event/2, wall time until all are delivered (median of 3 runs);
%%  c. the baseline: a synchronous httpc POST per event (one caller, and 16 callers),
%%     with the webhook server healthy and answering after 100 ms.
%% It prints a table with the targets and writes it as markdown to _build/bench.md.
%% Benchmarks measure; nothing here asserts.
-module(event_pusher_bench).
-behaviour(gen_server).

-export([main/0, main/1]).
-export([init/1, handle_call/3, handle_cast/2]).

-include("exml.hrl").
-include("jlib.hrl").
-include("mod_event_pusher_events.hrl").

-define(HOST, <<"localhost">>).
-define(BATCH, 100).
-define(ROUND, 100).

-type opts() :: #{samples => pos_integer(), warmup => pos_integer(),
                  events => pos_integer(), workers => pos_integer(),
                  httpc_calls => pos_integer(), httpc_slow_calls => pos_integer(),
                  sink_threads => non_neg_integer(), throughput_runs => pos_integer(),
                  phases => [per_call | slow | dead | throughput | httpc]}.
-type result() :: {atom(), term()}.

-spec main() -> ok.
main() ->
    main(#{}).

-spec main(opts()) -> ok.
main(Opts0) ->
    Opts = maps:merge(#{samples => 2000, warmup => 200, events => 100000, workers => 16,
                        httpc_calls => 5000, httpc_slow_calls => 50, sink_threads => 1,
                        throughput_runs => 3,
                        phases => [per_call, slow, dead, throughput, httpc]}, Opts0),
    {ok, _} = application:ensure_all_started(inets),
    #{level := Level} = logger:get_primary_config(),
    %% Dead and slow servers and drain-less stops log a warning per report batch.
    logger:set_primary_config(level, error),
    Sink = event_pusher_sink:start(["--threads", integer_to_list(maps:get(sink_threads, Opts))]),
    SlowSink = event_pusher_sink:start(["--delay-ms", "100"]),
    T0 = erlang:monotonic_time(millisecond),
    try
        io:format("bench: ~ts, OTP ~ts, ~b schedulers, ~b cores~n",
                  [os_name(), erlang:system_info(otp_release),
                   erlang:system_info(schedulers_online), erlang:system_info(logical_processors)]),
        Results = run(Opts, Sink, SlowSink),
        case lists:sort(maps:get(phases, Opts)) of
            [dead, httpc, per_call, slow, throughput] -> report(Results, Opts);
            _ -> [io:format("~p~n", [Result]) || Result <- Results]
        end,
        io:format("bench: done in ~.1f s~n", [(erlang:monotonic_time(millisecond) - T0) / 1000])
    after
        _ = (catch mongoose_host:stop()),
        event_pusher_sink:stop(Sink),
        event_pusher_sink:stop(SlowSink),
        logger:set_primary_config(level, Level)
    end.

run(Opts = #{phases := Phases}, Sink, SlowSink) ->
    Live = url(event_pusher_sink:port(Sink)),
    Slow = url(event_pusher_sink:port(SlowSink)),
    Dead = url(closed_port()),
    #{workers := Workers, events := N} = Opts,
    {Acc, Event} = chat_event(),
    All =
        %% a. Per-call costs, the sink healthy; the queue holds everything pushed here.
        [{per_call,
          fun() ->
                  with_config(#{host => Live, workers => 32, max_events => 1000000,
                                max_bytes => 1 bsl 30, drain_ms => 0},
                              fun() -> per_call(Opts, Acc, Event) end)
          end},
         %% push_event/2 with the server answering after 100 ms and with nothing
         %% listening: the default queue fills up, then events are dropped (and counted).
         {slow,
          fun() ->
                  with_config(#{host => Slow, workers => 32, max_events => 10000,
                                max_bytes => 16777216, drain_ms => 0},
                              fun() -> push_event_only(push_event_slow, Opts, Acc, Event) end)
          end},
         {dead,
          fun() ->
                  with_config(#{host => Dead, workers => 32, max_events => 10000,
                                max_bytes => 16777216, drain_ms => 0},
                              fun() -> push_event_only(push_event_dead, Opts, Acc, Event) end)
          end},
         %% b. Throughput.
         {throughput,
          fun() ->
                  with_config(#{host => Live, workers => Workers, max_events => max(200000, N),
                                max_bytes => 1 bsl 30, drain_ms => 5000},
                              fun() -> throughput(Opts, Acc, Event) end)
          end},
         %% c. The httpc baseline.
         {httpc, fun() -> httpc_bench(Opts, Live, Slow) end}],
    lists:append([Fun() || {Phase, Fun} <- All, lists:member(Phase, Phases)]).

%% a. Per-call costs

per_call(Opts, Acc, Event) ->
    Instance = mod_event_pusher_instance:instance(?HOST, {http, http_pool}),
    Request = typical_request(Acc, Event),
    {ok, Pid} = gen_server:start(?MODULE, [], []),
    Results = sample_interleaved(
                Opts,
                [{loop, fun() -> loop_empty(?BATCH) end},
                 {noop, fun() -> loop_noop(?BATCH) end},
                 {cast, fun() -> loop_cast(Pid, Event, ?BATCH) end},
                 {push, fun() -> loop_push(Instance, Request, ?BATCH) end},
                 {push_event, fun() -> loop_push_event(Acc, Event, ?BATCH) end}]),
    gen_server:stop(Pid),
    Stats = mod_event_pusher_nif:stats(Instance),
    io:format("  push/2 and push_event/2 accepted ~b events, dropped ~b~n",
              [maps:get(accepted, Stats), maps:get(dropped, Stats)]),
    Results ++ [{push_refused_healthy, maps:get(dropped, Stats)}].

push_event_only(Name, Opts, Acc, Event) ->
    Instance = mod_event_pusher_instance:instance(?HOST, {http, http_pool}),
    Result = sample(Opts, fun() -> loop_push_event(Acc, Event, ?BATCH) end),
    #{accepted := A, dropped := D} = mod_event_pusher_nif:stats(Instance),
    io:format("  ~s: accepted ~b events, dropped ~b (queue full)~n", [Name, A, D]),
    [{Name, Result}].

%% All loops have the same shape: a counted tail-recursive loop around one call.
loop_empty(0) -> ok;
loop_empty(N) -> loop_empty(N - 1).

loop_noop(0) -> ok;
loop_noop(N) -> mod_event_pusher_nif:noop(), loop_noop(N - 1).

loop_cast(_Pid, _Event, 0) -> ok;
loop_cast(Pid, Event, N) -> gen_server:cast(Pid, Event), loop_cast(Pid, Event, N - 1).

loop_push(_Instance, _Request, 0) -> ok;
loop_push(Instance, Request, N) ->
    _ = mod_event_pusher_nif:push(Instance, Request),
    loop_push(Instance, Request, N - 1).

loop_push_event(_Acc, _Event, 0) -> ok;
loop_push_event(Acc, Event, N) ->
    _ = mod_event_pusher:push_event(Acc, Event),
    loop_push_event(Acc, Event, N - 1).

%% Per-call samples in ns: Warmup batches first, then Samples timed batches.
sample(#{samples := Samples, warmup := Warmup}, Batch) ->
    [Batch() || _ <- lists:seq(1, Warmup)],
    Times = [time_batch(Batch) || _ <- lists:seq(1, Samples)],
    summary([T / ?BATCH || T <- Times]).

%% The same for several calls, interleaved in rounds of ?ROUND batches of each, so
%% that whatever else the machine does at some moment weighs on all of them alike.
sample_interleaved(#{samples := Samples, warmup := Warmup}, Batches) ->
    [Batch() || {_, Batch} <- Batches, _ <- lists:seq(1, Warmup)],
    Rounds = max(1, Samples div ?ROUND),
    Times = [[{Name, time_batch(Batch)} || _ <- lists:seq(1, ?ROUND)]
             || _ <- lists:seq(1, Rounds), {Name, Batch} <- Batches],
    All = lists:append(Times),
    [{Name, summary([T / ?BATCH || {N, T} <- All, N =:= Name])} || {Name, _} <- Batches].

time_batch(Batch) ->
    T0 = erlang:monotonic_time(nanosecond),
    Batch(),
    erlang:monotonic_time(nanosecond) - T0.

summary(Samples) ->
    Sorted = lists:sort(Samples),
    #{p50 => percentile(Sorted, 0.50), p99 => percentile(Sorted, 0.99), n => length(Sorted)}.

percentile(Sorted, Q) ->
    lists:nth(max(1, ceil(Q * length(Sorted))), Sorted).

%% The gen_server the cast goes to: it drops what it gets.
-spec init([]) -> {ok, no_state}.
init([]) ->
    {ok, no_state}.

-spec handle_call(term(), gen_server:from(), no_state) -> {reply, ok, no_state}.
handle_call(_Request, _From, State) ->
    {reply, ok, State}.

-spec handle_cast(term(), no_state) -> {noreply, no_state}.
handle_cast(_Event, State) ->
    {noreply, State}.

%% b. Throughput

throughput(#{events := N, throughput_runs := Runs}, Acc, Event) ->
    Instance = mod_event_pusher_instance:instance(?HOST, {http, http_pool}),
    Results = [throughput_run(Instance, N, Acc, Event) || _ <- lists:seq(1, Runs)],
    Sorted = lists:sort(fun(#{rate := R1}, #{rate := R2}) -> R1 =< R2 end, Results),
    Median = lists:nth((Runs + 1) div 2, Sorted),
    #{latency_p50_us := P50, latency_p99_us := P99} = mod_event_pusher_nif:stats(Instance),
    [{throughput, Median#{rates => [R || #{rate := R} <- Results],
                          latency_p50_us => P50, latency_p99_us => P99}}].

throughput_run(Instance, N, Acc, Event) ->
    mongoose_instrument:clear_events(),
    Before = mod_event_pusher_nif:stats(Instance),
    T0 = erlang:monotonic_time(microsecond),
    loop_push_event(Acc, Event, N),
    TPushed = erlang:monotonic_time(microsecond),
    After = wait_settled(Instance, T0 + 60000000),
    T1 = erlang:monotonic_time(microsecond),
    [A, D, F, Dr] = [maps:get(K, After) - maps:get(K, Before)
                     || K <- [accepted, delivered, failed, dropped]],
    io:format("  throughput: ~b events pushed in ~.1f ms; accepted ~b delivered ~b failed ~b "
              "dropped ~b in ~.2f s: ~b events/s~n",
              [N, (TPushed - T0) / 1000, A, D, F, Dr, (T1 - T0) / 1000000,
               round(D * 1000000 / (T1 - T0))]),
    #{events => N, delivered => D, failed => F, dropped => Dr,
      seconds => (T1 - T0) / 1000000, rate => D * 1000000 / (T1 - T0),
      push_seconds => (TPushed - T0) / 1000000}.

%% Until every accepted event is delivered, failed or dropped (or the deadline).
wait_settled(Instance, Deadline) ->
    Stats = #{accepted := A, delivered := D, failed := F, dropped := Dr} =
        mod_event_pusher_nif:stats(Instance),
    case A =:= D + F + Dr orelse erlang:monotonic_time(microsecond) > Deadline of
        true -> Stats;
        false -> timer:sleep(2), wait_settled(Instance, Deadline)
    end.

%% c. The httpc baseline: what MongooseIM's http backend does per event.

httpc_bench(#{httpc_calls := Calls, httpc_slow_calls := SlowCalls}, Live, Slow) ->
    ok = httpc:set_options([{max_sessions, 16}, {max_keep_alive_length, 1000000},
                            {keep_alive_timeout, 120000}, {pipeline_timeout, 0}]),
    {Acc, Event} = chat_event(),
    Body = form_body(Acc, Event),
    LiveUrl = binary_to_list(Live) ++ "/webhooks/notifications",
    SlowUrl = binary_to_list(Slow) ++ "/webhooks/notifications",
    _ = [httpc_post(LiveUrl, Body) || _ <- lists:seq(1, 200)],
    Healthy = httpc_calls(LiveUrl, Body, Calls),
    io:format("  httpc, 1 caller: ~b calls, ~b/s~n", [Calls, round(maps:get(rate, Healthy))]),
    Parallel = httpc_parallel(LiveUrl, Body, 16, Calls div 8),
    io:format("  httpc, 16 callers: ~b calls, ~b/s~n",
              [16 * (Calls div 8), round(maps:get(rate, Parallel))]),
    _ = httpc_post(SlowUrl, Body),
    SlowResult = httpc_calls(SlowUrl, Body, SlowCalls),
    io:format("  httpc, 1 caller, server answering after 100 ms: ~b calls, ~.1f/s~n",
              [SlowCalls, maps:get(rate, SlowResult)]),
    [{httpc, Healthy}, {httpc_parallel, Parallel}, {httpc_slow, SlowResult}].

httpc_calls(Url, Body, Calls) ->
    T0 = erlang:monotonic_time(nanosecond),
    Times = [httpc_timed(Url, Body) || _ <- lists:seq(1, Calls)],
    Total = erlang:monotonic_time(nanosecond) - T0,
    maps:merge(summary(Times), #{rate => Calls * 1.0e9 / Total}).

httpc_parallel(Url, Body, Callers, CallsEach) ->
    Self = self(),
    T0 = erlang:monotonic_time(nanosecond),
    Pids = [spawn_link(fun() -> Self ! {self(), [httpc_timed(Url, Body) || _ <- lists:seq(1, CallsEach)]} end)
            || _ <- lists:seq(1, Callers)],
    Times = lists:append([receive {Pid, Ts} -> Ts end || Pid <- Pids]),
    Total = erlang:monotonic_time(nanosecond) - T0,
    maps:merge(summary(Times), #{rate => Callers * CallsEach * 1.0e9 / Total}).

httpc_timed(Url, Body) ->
    T0 = erlang:monotonic_time(nanosecond),
    ok = httpc_post(Url, Body),
    erlang:monotonic_time(nanosecond) - T0.

httpc_post(Url, Body) ->
    case httpc:request(post, {Url, [], "application/x-www-form-urlencoded", Body}, [], []) of
        {ok, {{_, 200, _}, _, _}} -> ok;
        Other -> error(#{what => httpc_failed, url => Url, result => Other})
    end.

%% The event and what the http backend makes of it

chat_event() ->
    From = jid:from_binary(<<"alice@localhost/phone">>),
    To = jid:from_binary(<<"bob@localhost">>),
    %% A ~50-byte body.
    Text = <<"Are we still on for lunch tomorrow at 12:30? Bring">>,
    Packet = #xmlel{name = <<"message">>,
                    attrs = #{<<"type">> => <<"chat">>, <<"from">> => <<"alice@localhost/phone">>,
                              <<"to">> => <<"bob@localhost">>, <<"id">> => <<"msg-42">>},
                    children = [#xmlel{name = <<"body">>, children = [#xmlcdata{content = Text}]}]},
    Acc = mongoose_acc:new(#{location => #{mfa => {?MODULE, chat_event, 0}, line => ?LINE,
                                           file => ?FILE},
                             lserver => ?HOST, host_type => ?HOST, element => Packet,
                             from_jid => From, to_jid => To}),
    {Acc, #chat_event{type = chat, direction = in, from = From, to = To, packet = Packet}}.

%% The request tuple mod_event_pusher_http hands to push/2 for this event.
typical_request(Acc, #chat_event{} = Event) ->
    Message = message_body(Event),
    Headers = mod_event_pusher_http_defaults:prepare_headers(Acc, in, ?HOST, Message, <<"alice">>,
                                                             <<"bob">>, handler()),
    {<<"notifications">>, Headers, form_body(Acc, Event), <<"alice">>}.

form_body(Acc, #chat_event{} = Event) ->
    mod_event_pusher_http_defaults:prepare_body(Acc, in, ?HOST, message_body(Event),
                                                <<"alice">>, <<"bob">>, handler()).

%% The handler of the bench's configuration, as the callbacks receive it.
handler() ->
    #{pool_name => http_pool, path => <<"notifications">>,
      callback_module => mod_event_pusher_http_defaults}.

message_body(#chat_event{packet = Packet}) ->
    exml_query:path(Packet, [{element, <<"body">>}, cdata], <<>>).

%% Configuration: the template with this phase's values, started as at boot.

with_config(Values, Fun) ->
    Opts = event_pusher_sink:load_config("tools/event_pusher_bench.toml", Values),
    ok = mongoose_host:start(Opts),
    try
        Fun()
    after
        mongoose_host:stop()
    end.

url(Port) ->
    <<"http://127.0.0.1:", (integer_to_binary(Port))/binary>>.

%% A port nothing listens on (the kernel does not hand it out again right away).
closed_port() ->
    {ok, Socket} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(Socket),
    ok = gen_tcp:close(Socket),
    Port.


os_name() ->
    {Family, Name} = os:type(),
    atom_to_list(Family) ++ "/" ++ atom_to_list(Name).

%% Report

-spec report([result()], opts()) -> ok.
report(Results, Opts) ->
    R = maps:from_list(Results),
    Ns = fun(Key, Q) -> maps:get(Q, maps:get(Key, R)) end,
    #{rate := Rate} = Throughput = maps:get(throughput, R),
    HttpcP50 = Ns(httpc, p50),
    HttpcSlowP50 = Ns(httpc_slow, p50),
    PushEventP50 = Ns(push_event, p50),
    Rows =
        [{"loop overhead (empty loop)", ns(Ns(loop, p50)), ns(Ns(loop, p99)), "", ""},
         {"empty NIF call (mod_event_pusher_nif:noop/0)", ns(Ns(noop, p50)), ns(Ns(noop, p99)),
          "", ""},
         {"gen_server:cast of #chat_event{}", ns(Ns(cast, p50)), ns(Ns(cast, p99)), "", ""},
         {"mod_event_pusher_nif:push/2 (typical request)", ns(Ns(push, p50)), ns(Ns(push, p99)),
          "p50 <= 2 x empty NIF",
          verdict(Ns(push, p50) =< 2 * Ns(noop, p50),
                  io_lib:format("~.1fx", [Ns(push, p50) / Ns(noop, p50)]))},
         {"mod_event_pusher:push_event/2, server healthy", ns(PushEventP50),
          ns(Ns(push_event, p99)), "p50 <= 1 us", verdict(PushEventP50 =< 1000, "")},
         {"mod_event_pusher:push_event/2, server 100 ms slow", ns(Ns(push_event_slow, p50)),
          ns(Ns(push_event_slow, p99)), "same as healthy",
          same(Ns(push_event_slow, p50), PushEventP50)},
         {"mod_event_pusher:push_event/2, server dead", ns(Ns(push_event_dead, p50)),
          ns(Ns(push_event_dead, p99)), "same as healthy",
          same(Ns(push_event_dead, p50), PushEventP50)},
         {"httpc POST per event, server healthy", ns(HttpcP50), ns(Ns(httpc, p99)), "", ""},
         {"httpc POST per event, server 100 ms slow", ns(HttpcSlowP50), ns(Ns(httpc_slow, p99)),
          "", ""}],
    ThroughputRows =
        [{io_lib:format("event pusher, push_event/2 -> pusher-sink (~b workers, median of ~b)",
                        [maps:get(workers, Opts), maps:get(throughput_runs, Opts)]),
          rate(Rate), "events/s >= 25k", verdict(Rate >= 25000, "")},
         {"httpc, 1 synchronous caller", rate(maps:get(rate, maps:get(httpc, R))), "", ""},
         {"httpc, 16 synchronous callers", rate(maps:get(rate, maps:get(httpc_parallel, R))),
          "", ""},
         {"httpc, 1 caller, server 100 ms slow", rate(maps:get(rate, maps:get(httpc_slow, R))),
          "", ""}],
    Ratios =
        [{"httpc call p50 / push_event/2 p50, server healthy",
          io_lib:format("~bx", [round(HttpcP50 / PushEventP50)])},
         {"httpc call p50 / push_event/2 p50, server 100 ms slow",
          io_lib:format("~bx", [round(HttpcSlowP50 / Ns(push_event_slow, p50))])},
         {"event pusher throughput / httpc 1 caller",
          io_lib:format("~.1fx", [Rate / maps:get(rate, maps:get(httpc, R))])},
         {"event pusher throughput / httpc 16 callers",
          io_lib:format("~.1fx", [Rate / maps:get(rate, maps:get(httpc_parallel, R))])}],
    #{events := N, delivered := D, failed := F, dropped := Dr, seconds := S, rates := Rates,
      push_seconds := PS, latency_p50_us := LP50, latency_p99_us := LP99} = Throughput,
    Notes =
        [io_lib:format("Per-call costs: ~b samples per call, each the time of a batch of ~b "
                       "calls / ~b, after ~b warm-up batches; the calls of the first five rows "
                       "are interleaved in rounds of ~b batches.",
                       [maps:get(samples, Opts), ?BATCH, ?BATCH, maps:get(warmup, Opts),
                        ?ROUND]),
         io_lib:format("Throughput: median of ~b runs (events/s: ~ts). In the median run ~b "
                       "events were pushed in ~.2f s and all settled after ~.2f s (delivered ~b, "
                       "failed ~b, dropped ~b). Enqueue-to-delivery latency over all runs "
                       "(mostly time spent queued behind the burst): p50 ~ts, p99 ~ts.",
                       [length(Rates), lists:join(", ", [rate(X) || X <- Rates]), N, PS, S,
                        D, F, Dr, us(LP50), us(LP99)]),
         "Server healthy: the events pushed are delivered at the same time, so pusher-sink "
         "and the delivery threads compete with the caller for the 2 cores.",
         "Slow and dead server: queue max_events 10000, so after the first 10000 events "
         "push_event/2 takes the drop path (counted as dropped)."],
    Text = render(Rows, ThroughputRows, Ratios, Notes),
    io:format("~n~ts", [Text]),
    File = filename:join([event_pusher_sink:repo_root(), "_build", "bench.md"]),
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, unicode:characters_to_binary(Text)),
    io:format("bench: wrote ~ts~n", [File]).

render(Rows, ThroughputRows, Ratios, Notes) ->
    [<<"### Per-call cost on the routing path\n\n">>,
     <<"| call | p50 | p99 | target | |\n|---|---:|---:|---|---|\n">>,
     [io_lib:format("| ~ts | ~ts | ~ts | ~ts | ~ts |~n", [A, B, C, D, E])
      || {A, B, C, D, E} <- Rows],
     <<"\n### Delivery throughput (events/s)\n\n">>,
     <<"| path | events/s | target | |\n|---|---:|---|---|\n">>,
     [io_lib:format("| ~ts | ~ts | ~ts | ~ts |~n", [A, B, C, D]) || {A, B, C, D} <- ThroughputRows],
     <<"\n### Ratios\n\n| | |\n|---|---:|\n">>,
     [io_lib:format("| ~ts | ~ts |~n", [A, B]) || {A, B} <- Ratios],
     <<"\n">>,
     [io_lib:format("- ~ts~n", [Note]) || Note <- Notes]].

verdict(Met, Extra) ->
    string:trim([case Met of true -> "met "; false -> "NOT met " end, Extra]).

same(P50, Reference) ->
    Ratio = P50 / Reference,
    verdict(Ratio =< 1.25, io_lib:format("~.2fx healthy", [Ratio])).

ns(Ns) when Ns < 1000 -> io_lib:format("~b ns", [round(Ns)]);
ns(Ns) when Ns < 1000000 -> io_lib:format("~.1f us", [Ns / 1000]);
ns(Ns) -> io_lib:format("~.1f ms", [Ns / 1000000]).

us(undefined) -> "-";
us(Us) -> ns(Us * 1000).

rate(Rate) when Rate >= 100 -> io_lib:format("~b", [round(Rate)]);
rate(Rate) -> io_lib:format("~.1f", [float(Rate)]).
