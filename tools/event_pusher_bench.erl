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
%%  b2. retries: with every http setting at its default (10 workers, queue of 10000,
%%     3 attempts, 30 s deadline), 10000 distinct chat events through push_event/2 to
%%     a healthy pusher-sink and to one that answers 500 to each event's first two
%%     attempts (`pusher-sink --fail-first 2'), in alternating runs: events/s, failed,
%%     and the failing webhook's rate as a share of the healthy one (median of 3);
%%  c. the baseline: a synchronous httpc POST per event (one caller, and 16 callers),
%%     with the webhook server healthy and answering after 100 ms;
%%  d. RabbitMQ (on 127.0.0.1:5672): chat events pushed through push_event/2 with only
%%     the rabbit backend configured, wall time until every one is delivered
%%     (confirmed by the broker with confirms on), with publisher confirms on (a
%%     1000-message window) and off; next to them, in interleaved rounds, a raw lapin
%%     publish loop (`rabbit_ceiling', native/amqp_tools) to the same exchange with a
%%     payload of the same size: no confirms, a 1000-message window, and confirming
%%     each message. Median of 5 rounds;
%%  e. MongooseIM's way to RabbitMQ, if the Erlang amqp_client bundled with Debian's
%%     rabbitmq-server can be loaded: one process publishing with amqp_client,
%%     waiting for the confirm of each message (as mongoose_rabbit_worker does).
%%     Median of 5 runs;
%%  f. Amazon SNS: chat events pushed through push_event/2 with only the sns backend
%%     configured (tools/event_pusher_bench_sns.toml.in; aws-sdk-sns in the NIF), wall
%%     time until every one is delivered, with batching on (PublishBatch, up to 10
%%     entries a call) and off (a Publish per event), against `pusher-sink --sns'
%%     (median of rounds of both, with the calls the sink answered and the CPU the
%%     VM and the sink used), and for reference a small run of each against moto's
%%     SNS emulator when _build/venv/bin/moto_server exists (`make venv').
%% The SNS part alone: event_pusher_bench:main(#{phases => [sns]}).
%% It prints a table with the targets and writes it as markdown to _build/bench.md.
%% Benchmarks measure; nothing here asserts.
-module(event_pusher_bench).
-behaviour(gen_server).

-export([main/0, main/1]).
-export([init/1, handle_call/3, handle_cast/2]).

-include("exml.hrl").
-include("jlib.hrl").
-include("mod_event_pusher_events.hrl").
-include("mod_event_pusher_nif.hrl").

-define(HOST, <<"localhost">>).
-define(BATCH, 100).
-define(ROUND, 100).
-define(AMQP_URI, "amqp://guest:guest@127.0.0.1:5672/%2f").
%% The bench's own exchanges (see tools/event_pusher_bench_rabbit.toml.in).
-define(EXCHANGE_PREFIX, <<"bench_">>).
-define(RABBIT_PLUGINS, "/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins").
%% amqp_client and what it needs that OTP does not ship.
-define(AMQP_CLIENT_APPS, [amqp_client, rabbit_common, credentials_obfuscation, recon, jsx]).
%% The SNS phases' topic (see tools/event_pusher_bench_sns.toml.in).
-define(SNS_TOPIC_ARN, <<"arn:aws:sns:us-east-1:123456789012:bench">>).
%% moto checks no signature, but finds the service in the credential scope.
-define(MOTO_AUTHORIZATION, "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEEXAMPLE00/20250101/"
        "us-east-1/sns/aws4_request, SignedHeaders=host, Signature=0").

-type opts() :: #{samples => pos_integer(), warmup => pos_integer(),
                  events => pos_integer(), workers => pos_integer(),
                  httpc_calls => pos_integer(), httpc_slow_calls => pos_integer(),
                  sink_threads => non_neg_integer(), throughput_runs => pos_integer(),
                  rabbit_events => pos_integer(), rabbit_runs => pos_integer(),
                  rabbit_window => pos_integer(), rabbit_workers => pos_integer(),
                  confirm_each_messages => pos_integer(),
                  amqp_client_messages => pos_integer(),
                  retry_events => pos_integer(), retry_runs => pos_integer(),
                  sns_events => pos_integer(), sns_runs => pos_integer(),
                  sns_pool_size => pos_integer(), sns_warmup => non_neg_integer(),
                  moto_batching_events => pos_integer(), moto_single_events => pos_integer(),
                  moto_server => file:filename(),
                  phases => [phase()]}.
-type phase() :: per_call | body_sizes | slow | dead | throughput | retry | httpc | rabbit
               | amqp_client | sns.
-define(HTTP_PHASES, [dead, httpc, per_call, slow, throughput]).
-type result() :: {atom(), term()}.

-spec main() -> ok.
main() ->
    main(#{}).

-spec main(opts()) -> ok.
main(Opts0) ->
    Opts = maps:merge(#{samples => 2000, warmup => 200, events => 100000, workers => 16,
                        httpc_calls => 5000, httpc_slow_calls => 50, sink_threads => 1,
                        throughput_runs => 3, retry_events => 10000, retry_runs => 3,
                        rabbit_events => 50000, rabbit_runs => 5, rabbit_window => 1000,
                        rabbit_workers => 20, confirm_each_messages => 5000,
                        amqp_client_messages => 3000,
                        sns_events => 50000, sns_runs => 5, sns_pool_size => 100,
                        sns_warmup => 2000, moto_batching_events => 1000,
                        moto_single_events => 300,
                        moto_server => filename:join([event_pusher_sink:repo_root(), "_build",
                                                      "venv", "bin", "moto_server"]),
                        phases => [per_call, body_sizes, slow, dead, throughput, retry, httpc,
                                   rabbit, sns, amqp_client]}, Opts0),
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
        %% The report needs every http phase, or none (e.g. only rabbit and amqp_client,
        %% or only sns).
        case ?HTTP_PHASES -- maps:get(phases, Opts) of
            [] -> report(Results, Opts);
            ?HTTP_PHASES -> report(Results, Opts);
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
         %% a2. push_event/2 with a 100 B, a 64 KiB and a 10 MiB body, each call timed.
         {body_sizes,
          fun() ->
                  with_config(#{host => Live, workers => 4, max_events => 1000000,
                                max_bytes => 1 bsl 34, drain_ms => 0},
                              fun() -> body_sizes() end)
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
         %% b2. Retries: a webhook failing each event's first two attempts.
         {retry, fun() -> retry_bench(Opts, Sink) end},
         %% c. The httpc baseline.
         {httpc, fun() -> httpc_bench(Opts, Live, Slow) end},
         %% d. RabbitMQ: the rabbit backend and the raw lapin loop.
         {rabbit, fun() -> rabbit_bench(Opts, Acc, Event) end},
         %% f. Amazon SNS: pusher-sink --sns, and moto for reference.
         {sns, fun() -> sns_bench(Opts, Acc, Event) end},
         %% e. MongooseIM's way, last: it loads RabbitMQ's own Erlang code into the VM.
         {amqp_client, fun() -> amqp_client_bench(Opts, Event) end}],
    lists:append([Fun() || {Phase, Fun} <- All, lists:member(Phase, Phases)]).

%% a. Per-call costs

per_call(Opts, Acc, Event) ->
    Instance = mod_event_pusher_instance:instance(?HOST, {http, http_pool}),
    Request = typical_request(Acc, Event),
    Full = full_instance(),
    {ok, Pid} = gen_server:start(?MODULE, [], []),
    Results = sample_interleaved(
                Opts,
                [{loop, fun() -> loop_empty(?BATCH) end},
                 {noop, fun() -> loop_noop(?BATCH) end},
                 {cast, fun() -> loop_cast(Pid, Event, ?BATCH) end},
                 {push, fun() -> loop_push(Instance, Request, ?BATCH) end},
                 {push_refused, fun() -> loop_push(Full, Request, ?BATCH) end},
                 {push_event, fun() -> loop_push_event(Acc, Event, ?BATCH) end}]),
    gen_server:stop(Pid),
    Stats = mod_event_pusher_nif:stats(Instance),
    io:format("  push/2 and push_event/2 accepted ~b events, dropped ~b~n",
              [maps:get(accepted, Stats), maps:get(dropped, Stats)]),
    ok = mod_event_pusher_nif:stop(Full, 0, full),
    receive {mod_event_pusher_nif, stopped, full, _} -> ok after 5000 -> ok end,
    Results ++ [{push_refused_healthy, maps:get(dropped, Stats)}].

%% An instance whose queue is full for good: its one event waits a minute to be retried
%% (nothing listens on the port), so every push/2 takes the refusal path.
full_instance() ->
    Instance = #instance_config{max_events = 1, max_bytes = 1 bsl 20, overflow = drop_newest,
                                max_attempts = 2, base_backoff_ms = 60000,
                                max_backoff_ms = 60000, retry_deadline_ms = 600000,
                                concurrency = 1},
    Config = #http_config{host = url(closed_port()), path_prefix = <<"/">>,
                          request_timeout_ms = 1000, verify_mode = peer},
    {ok, Full} = mod_event_pusher_nif:start_http(Instance, Config, self()),
    {error, queue_full} = wait_full(Full, 100),
    Full.

wait_full(Instance, 0) ->
    mod_event_pusher_nif:push(Instance, #http_event{path = <<>>, headers = [], body = <<>>,
                                                    tag = <<>>});
wait_full(Instance, Tries) ->
    case mod_event_pusher_nif:push(Instance, #http_event{path = <<>>, headers = [],
                                                         body = <<>>, tag = <<>>}) of
        ok -> timer:sleep(10), wait_full(Instance, Tries - 1);
        Full -> Full
    end.

push_event_only(Name, Opts, Acc, Event) ->
    Instance = mod_event_pusher_instance:instance(?HOST, {http, http_pool}),
    Result = sample(Opts, fun() -> loop_push_event(Acc, Event, ?BATCH) end),
    #{accepted := A, dropped := D} = mod_event_pusher_nif:stats(Instance),
    io:format("  ~s: accepted ~b events, dropped ~b (queue full)~n", [Name, A, D]),
    [{Name, Result}].

%% a2. The hook path's cost by body size: {Bytes, Calls} each, every call timed alone
%% (a 10 MiB call is far longer than the clock's resolution). The default callback
%% module, so the body goes to the NIF as form fields.
-define(BODY_SIZES, [{100, 2000}, {64 bsl 10, 2000}, {10 bsl 20, 40}]).

body_sizes() ->
    [{push_event_bodies,
      [{Bytes, body_size_sample(Bytes, Calls)} || {Bytes, Calls} <- ?BODY_SIZES]}].

body_size_sample(Bytes, Calls) ->
    %% Spaces and a non-ASCII letter, so that form encoding has work to do.
    Text = binary:part(binary:copy(<<"lunch at 12:30? ", 16#d0, 16#9f, " ok ">>,
                                   Bytes div 20 + 1), 0, Bytes),
    {Acc, Event} = chat_event(Text),
    [mod_event_pusher:push_event(Acc, Event) || _ <- lists:seq(1, min(Calls, 20))],
    Times = [begin
                 T0 = erlang:monotonic_time(nanosecond),
                 _ = mod_event_pusher:push_event(Acc, Event),
                 erlang:monotonic_time(nanosecond) - T0
             end || _ <- lists:seq(1, Calls)],
    Summary = summary(Times),
    io:format("  push_event/2 with a ~b-byte body: p50 ~.1f us, p99 ~.1f us (~b calls)~n",
              [Bytes, maps:get(p50, Summary) / 1000, maps:get(p99, Summary) / 1000, Calls]),
    Summary.

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
    timed_push("throughput", Instance, N, Acc, Event, 60).

%% N events through push_event/2; wall time from the first push until every one is
%% delivered, failed or dropped. Rate = delivered / that time.
timed_push(Name, Instance, N, Acc, Event, TimeoutS) ->
    mongoose_instrument:clear_events(),
    Before = mod_event_pusher_nif:stats(Instance),
    T0 = erlang:monotonic_time(microsecond),
    loop_push_event(Acc, Event, N),
    TPushed = erlang:monotonic_time(microsecond),
    After = wait_settled(Instance, T0 + TimeoutS * 1000000),
    T1 = erlang:monotonic_time(microsecond),
    [A, D, F, Dr] = [maps:get(K, After) - maps:get(K, Before)
                     || K <- [accepted, delivered, failed, dropped]],
    io:format("  ~ts: ~b events pushed in ~.1f ms; accepted ~b delivered ~b failed ~b "
              "dropped ~b in ~.2f s: ~b events/s~n",
              [Name, N, (TPushed - T0) / 1000, A, D, F, Dr, (T1 - T0) / 1000000,
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

%% b2. Retries, default settings: the same distinct events to a healthy webhook and to
%% one failing each event's first two attempts, in alternating runs.

retry_bench(#{retry_events := N, retry_runs := Runs}, Sink) ->
    Flaky = event_pusher_sink:start(["--fail-first", "2"]),
    try
        Live = url(event_pusher_sink:port(Sink)),
        FlakyUrl = url(event_pusher_sink:port(Flaky)),
        Rounds = [#{healthy => retry_run("retry phase, webhook healthy", Live, Sink,
                                         distinct_chat_events(<<"h", (integer_to_binary(R))/binary>>, N)),
                    failing => retry_run("retry phase, webhook failing 2 attempts per event",
                                         FlakyUrl, Flaky,
                                         distinct_chat_events(<<"f", (integer_to_binary(R))/binary>>, N))}
                  || R <- lists:seq(1, Runs)],
        [{retry, #{events => N, rounds => Rounds,
                   healthy => median_run([H || #{healthy := H} <- Rounds]),
                   failing => median_run([F || #{failing := F} <- Rounds]),
                   ratio => paired_ratio([{F, H} || #{healthy := H, failing := F} <- Rounds])}}]
    after
        event_pusher_sink:stop(Flaky)
    end.

%% One run with the default settings; Sink is asked how many requests it answered
%% (the attempts).
retry_run(Name, Url, Sink, Events) ->
    with_config("tools/event_pusher_bench_retry.toml.in", #{host => Url},
                fun() ->
                        Instance = mod_event_pusher_instance:instance(?HOST, {http, http_pool}),
                        Before = event_pusher_sink:requests(Sink),
                        Run = #{seconds := S} = timed_push_events(Name, Instance, Events, 120),
                        Requests = event_pusher_sink:requests(Sink) - Before,
                        Run#{requests => Requests, requests_rate => Requests / S}
                end).

%% N chat events with distinct bodies (a webhook failing each event's first attempts
%% tells them apart by body).
distinct_chat_events(Prefix, N) ->
    [chat_event(<<"Are we still on for lunch tomorrow at 12:30? ", Prefix/binary, "-",
                  (integer_to_binary(I))/binary>>)
     || I <- lists:seq(1, N)].

%% As timed_push/6, for a list of {Acc, Event}.
timed_push_events(Name, Instance, Events, TimeoutS) ->
    mongoose_instrument:clear_events(),
    Before = mod_event_pusher_nif:stats(Instance),
    T0 = erlang:monotonic_time(microsecond),
    _ = [mod_event_pusher:push_event(Acc, Event) || {Acc, Event} <- Events],
    TPushed = erlang:monotonic_time(microsecond),
    After = wait_settled(Instance, T0 + TimeoutS * 1000000),
    T1 = erlang:monotonic_time(microsecond),
    [A, D, F, Dr, Re] = [maps:get(K, After) - maps:get(K, Before)
                         || K <- [accepted, delivered, failed, dropped, retried]],
    io:format("  ~ts: ~b events pushed in ~.1f ms; accepted ~b delivered ~b failed ~b "
              "dropped ~b retried ~b in ~.2f s: ~b events/s~n",
              [Name, length(Events), (TPushed - T0) / 1000, A, D, F, Dr, Re,
               (T1 - T0) / 1000000, round(D * 1000000 / (T1 - T0))]),
    #{events => length(Events), delivered => D, failed => F, dropped => Dr, retried => Re,
      seconds => (T1 - T0) / 1000000, rate => D * 1000000 / (T1 - T0),
      push_seconds => (TPushed - T0) / 1000000}.

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

%% d. RabbitMQ: the rabbit backend against the raw lapin loop

%% Rounds interleave the four measurements, so that whatever else the machine does
%% weighs on all of them alike; each row is the median over the rounds.
rabbit_bench(#{rabbit_events := N, rabbit_runs := Runs, rabbit_window := Window} = Opts,
             Acc, Event) ->
    Payload = rabbit_payload(Event),
    Exchange = <<?EXCHANGE_PREFIX/binary, "chat_msg">>,
    io:format("  rabbit: ~b chat events per run, JSON payload ~b bytes, exchange ~ts~n",
              [N, byte_size(Payload), Exchange]),
    try
        Rounds = [rabbit_round(Opts, Acc, Event, Exchange, byte_size(Payload))
                  || _ <- lists:seq(1, Runs)],
        [{rabbit, #{payload_bytes => byte_size(Payload), events => N, window => Window,
                    rounds => Rounds}}]
    catch
        Class:Reason:Stack ->
            io:format("  rabbit: failed: ~p:~p~n    ~p~n", [Class, Reason, hd(Stack ++ [none])]),
            [{rabbit, {error, io_lib:format("~p", [Reason])}}]
    end.

rabbit_round(#{rabbit_events := N, rabbit_window := Window,
               confirm_each_messages := EachN} = Opts, Acc, Event, Exchange, Size) ->
    On = rabbit_run(Opts, true, Acc, Event),
    RawWindow = ceiling(Exchange, N, Window, Size),
    Off = rabbit_run(Opts, false, Acc, Event),
    RawNone = ceiling(Exchange, N, 0, Size),
    RawEach = ceiling(Exchange, EachN, 1, Size),
    #{on => On, raw_window => RawWindow, off => Off, raw_none => RawNone, raw_each => RawEach}.

%% The module started with only the rabbit backend; a warm-up (connection, first
%% publishes), then N events timed until all are confirmed (or published).
rabbit_run(#{rabbit_events := N, rabbit_window := Window, rabbit_workers := Workers},
           Confirms, Acc, Event) ->
    Values = #{workers => Workers, confirms => atom_to_binary(Confirms), window => Window,
               exchange_prefix => ?EXCHANGE_PREFIX, max_events => max(200000, 2 * N),
               max_bytes => 1 bsl 30},
    with_config("tools/event_pusher_bench_rabbit.toml.in", Values,
                fun() ->
                        Instance = mod_event_pusher_instance:instance(?HOST, rabbit),
                        ok = loop_push_event(Acc, Event, 1000),
                        _ = wait_settled(Instance, erlang:monotonic_time(microsecond) + 10000000),
                        Name = case Confirms of
                                   true -> "rabbit, confirms on";
                                   false -> "rabbit, confirms off"
                               end,
                        timed_push(Name, Instance, N, Acc, Event, 30)
                end).

%% The JSON the rabbit backend publishes for this event (MongooseIM's keys).
rabbit_payload(#chat_event{from = From, to = To} = Event) ->
    jiffy:encode(#{<<"to_user_id">> => jid:to_binary(To), <<"message">> => message_body(Event),
                   <<"from_user_id">> => jid:to_binary(From)}).

%% The raw lapin publish loop: `rabbit_ceiling' (native/amqp_tools), one JSON line.
ceiling(Exchange, Messages, Window, Size) ->
    case ceiling_executable() of
        {ok, Exe} ->
            Args = ["--uri", ?AMQP_URI, "--exchange", binary_to_list(Exchange),
                    "--messages", integer_to_list(Messages), "--window", integer_to_list(Window),
                    "--size", integer_to_list(Size)],
            Port = open_port({spawn_executable, Exe},
                             [{args, Args}, {line, 4096}, binary, exit_status, stderr_to_stdout]),
            Result = case collect_lines(Port, [], erlang:monotonic_time(millisecond) + 60000) of
                         {0, Lines} -> ceiling_result(Lines);
                         {Status, Lines} -> {error, io_lib:format("exit status ~p: ~ts",
                                                                 [Status, lists:join(" | ", Lines)])}
                     end,
            case Result of
                #{rate := Rate} ->
                    io:format("  raw lapin, window ~b: ~b messages, ~b/s~n",
                              [Window, Messages, round(Rate)]);
                {error, Why} ->
                    io:format("  raw lapin, window ~b: ~ts~n", [Window, Why])
            end,
            Result;
        {error, _} = Error ->
            Error
    end.

ceiling_executable() ->
    Root = event_pusher_sink:repo_root(),
    case [Exe || Name <- ["rabbit_ceiling", "rabbit-ceiling"],
                 Exe <- [filename:join([Root, "target", "release", Name])],
                 filelib:is_regular(Exe)] of
        [Exe | _] -> {ok, Exe};
        [] -> {error, "target/release/rabbit_ceiling is not built "
                      "(cargo build --release -p amqp_tools)"}
    end.

collect_lines(Port, Lines, Deadline) ->
    receive
        {Port, {data, {eol, Line}}} -> collect_lines(Port, [Line | Lines], Deadline);
        {Port, {data, {noeol, Line}}} -> collect_lines(Port, [Line | Lines], Deadline);
        {Port, {exit_status, Status}} -> {Status, lists:reverse(Lines)}
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
            catch port_close(Port),
            {timeout, lists:reverse(Lines)}
    end.

ceiling_result(Lines) ->
    Parsed = [J || <<"{", _/binary>> = Line <- Lines,
                   J <- [try jiffy:decode(Line, [return_maps]) catch _:_ -> undefined end],
                   is_map(J)],
    case lists:reverse(Parsed) of
        [#{<<"per_second">> := Rate, <<"seconds">> := S, <<"messages">> := M} | _]
          when is_number(Rate) ->
            #{rate => Rate, seconds => S, messages => M};
        _ ->
            {error, io_lib:format("no result line in: ~ts", [lists:join(" | ", Lines)])}
    end.

%% e. MongooseIM's way: amqp_client, one publisher, waiting for each confirm

amqp_client_bench(#{amqp_client_messages := N, rabbit_runs := Runs}, Event) ->
    Result = case load_amqp_client() of
                 {ok, Vsn} ->
                     try [amqp_client_run(N, rabbit_payload(Event)) || _ <- lists:seq(1, Runs)] of
                         Rs ->
                             #{rate := Median} = median(Rs),
                             #{rate => Median, rates => [R || #{rate := R} <- Rs],
                               messages => N, vsn => Vsn}
                     catch
                         Class:Reason ->
                             {error, io_lib:format("amqp_client ~ts loaded, but publishing failed: "
                                                   "~p:~p", [Vsn, Class, Reason])}
                     end;
                 {error, _} = Error ->
                     Error
             end,
    case Result of
        #{rates := Rates, vsn := V} ->
            io:format("  amqp_client ~ts, 1 publisher, confirm each: ~b messages per run, "
                      "~ts/s~n", [V, N, rates([#{rate => R} || R <- Rates])]);
        {error, Why} ->
            io:format("  amqp_client not measured: ~ts~n", [Why])
    end,
    [{amqp_client, Result}].

%% RabbitMQ's own Erlang client, as Debian's rabbitmq-server ships it (directories or
%% .ez archives under its plugins directory), appended to the code path.
load_amqp_client() ->
    case lists:reverse(lists:sort(filelib:wildcard(?RABBIT_PLUGINS))) of
        [] ->
            {error, "no " ?RABBIT_PLUGINS " (Debian's rabbitmq-server is not installed)"};
        [Plugins | _] ->
            case lists:foldl(fun(App, {ok, Dirs}) -> app_ebin(Plugins, App, Dirs);
                                (_App, Error) -> Error
                             end, {ok, []}, ?AMQP_CLIENT_APPS) of
                {ok, Ebins} ->
                    ok = code:add_pathsz(Ebins),
                    case application:ensure_all_started(amqp_client) of
                        {ok, _} ->
                            {ok, case application:get_key(amqp_client, vsn) of
                                     {ok, Vsn} -> Vsn;
                                     undefined -> "?"
                                 end};
                        {error, Reason} ->
                            {error, io_lib:format("amqp_client from ~ts does not start: ~p",
                                                  [Plugins, Reason])}
                    end;
                {error, _} = Error ->
                    Error
            end
    end.

app_ebin(Plugins, App, Dirs) ->
    Name = atom_to_list(App),
    case {filelib:wildcard(filename:join(Plugins, Name ++ "-*/ebin")),
          filelib:wildcard(filename:join(Plugins, Name ++ "-*.ez"))} of
        {[Ebin | _], _} ->
            {ok, [Ebin | Dirs]};
        {[], [Ez | _]} ->
            Out = filename:join([event_pusher_sink:repo_root(), "_build", "amqp_client"]),
            ok = filelib:ensure_dir(filename:join(Out, "x")),
            case zip:extract(Ez, [{cwd, Out}]) of
                {ok, _} ->
                    [Ebin | _] = filelib:wildcard(filename:join(Out, Name ++ "-*/ebin")),
                    {ok, [Ebin | Dirs]};
                {error, Reason} ->
                    {error, io_lib:format("cannot extract ~ts: ~p", [Ez, Reason])}
            end;
        {[], []} ->
            {error, io_lib:format("~ts not found in ~ts", [Name, Plugins])}
    end.

%% What mongoose_rabbit_worker does per event with confirms enabled: publish
%% (amqp_channel:call), then amqp_channel:wait_for_confirms/2. The records of
%% amqp_client.hrl are written as tuples (its include files are not on this build's
%% path): #'basic.publish'{}, #amqp_msg{props = #'P_basic'{}}, #'confirm.select'{},
%% #'exchange.declare'{}.
amqp_client_run(N, Payload) ->
    Exchange = <<?EXCHANGE_PREFIX/binary, "chat_msg">>,
    {ok, Params} = amqp(amqp_uri, parse, [?AMQP_URI]),
    {ok, Conn} = amqp(amqp_connection, start, [Params]),
    try
        {ok, Ch} = amqp(amqp_connection, open_channel, [Conn]),
        {'exchange.declare_ok'} =
            amqp(amqp_channel, call, [Ch, {'exchange.declare', 0, Exchange, <<"topic">>, false,
                                           false, false, false, false, []}]),
        {'confirm.select_ok'} = amqp(amqp_channel, call, [Ch, {'confirm.select', false}]),
        Publish = {'basic.publish', 0, Exchange, <<"alice@localhost.chat_msg_sent">>, false,
                   false},
        Msg = {amqp_msg, list_to_tuple(['P_basic' | lists:duplicate(14, undefined)]), Payload},
        ok = publish_confirm_each(Ch, Publish, Msg, 500),
        T0 = erlang:monotonic_time(microsecond),
        ok = publish_confirm_each(Ch, Publish, Msg, N),
        T1 = erlang:monotonic_time(microsecond),
        #{messages => N, seconds => (T1 - T0) / 1000000, rate => N * 1000000 / (T1 - T0)}
    after
        catch amqp(amqp_connection, close, [Conn])
    end.

%% amqp_client is not on the build's code path (it is loaded at run time): its
%% functions are called through apply/3.
amqp(Module, Function, Args) ->
    apply(Module, Function, Args).

publish_confirm_each(_Ch, _Publish, _Msg, 0) ->
    ok;
publish_confirm_each(Ch, Publish, Msg, N) ->
    ok = amqp(amqp_channel, call, [Ch, Publish, Msg]),
    true = amqp(amqp_channel, wait_for_confirms, [Ch, 5000]),
    publish_confirm_each(Ch, Publish, Msg, N - 1).

%% f. Amazon SNS: the sns backend against pusher-sink --sns, and against moto

%% Rounds of batching on, then off, against one sink; then moto, once each.
sns_bench(#{sns_runs := Runs, sns_events := N, sink_threads := Threads} = Opts, Acc, Event) ->
    io:format("  sns: ~b chat events per run, topic ~ts~n", [N, ?SNS_TOPIC_ARN]),
    Sink = event_pusher_sink:start(["--sns", "--threads", integer_to_list(Threads)]),
    SinkResult =
        try
            #{port := SinkPort} = Sink,
            Server = #{name => "pusher-sink", url => url(event_pusher_sink:port(Sink)),
                       os_pid => port_os_pid(SinkPort),
                       counts => fun() -> sink_counts(event_pusher_sink:port(Sink)) end},
            Rounds = [#{on => sns_run(Opts, Server, true, N, Acc, Event),
                        off => sns_run(Opts, Server, false, N, Acc, Event)}
                      || _ <- lists:seq(1, Runs)],
            #{rounds => Rounds, events => N}
        catch
            Class:Reason:Stack ->
                io:format("  sns: failed: ~p:~p~n    ~p~n", [Class, Reason, hd(Stack ++ [none])]),
                {error, io_lib:format("~p", [Reason])}
        after
            event_pusher_sink:stop(Sink)
        end,
    [{sns, #{sink => SinkResult, moto => moto_bench(Opts, Acc, Event)}}].

%% The module started with only the sns backend; a warm-up (connections), then N
%% events timed until every one is delivered; the calls the server answered and the
%% CPU the VM (caller, NIF and SDK) and the server used meanwhile.
sns_run(#{sns_pool_size := Pool} = Opts, Server, Batching, N, Acc, Event) ->
    #{name := ServerName, url := Url, os_pid := ServerPid, counts := Counts} = Server,
    Values = #{sns_host => Url, batching => atom_to_binary(Batching), pool_size => Pool,
               max_events => max(200000, 2 * N), max_bytes => 1 bsl 30},
    with_config("tools/event_pusher_bench_sns.toml.in", Values,
                fun() ->
                        Instance = mod_event_pusher_instance:instance(?HOST, sns),
                        Warmup = min(maps:get(sns_warmup, Opts), N),
                        ok = loop_push_event(Acc, Event, Warmup),
                        _ = wait_settled(Instance, erlang:monotonic_time(microsecond) + 30000000),
                        Name = io_lib:format("sns -> ~ts, batching ~ts",
                                             [ServerName, on_off(Batching)]),
                        Pids = [os:getpid(), ServerPid],
                        Counts0 = Counts(),
                        Cpu0 = [cpu_seconds(P) || P <- Pids],
                        Run = timed_push(Name, Instance, N, Acc, Event, 120),
                        Cpu1 = [cpu_seconds(P) || P <- Pids],
                        Counts1 = Counts(),
                        #{seconds := S} = Run,
                        [VmCpu, ServerCpu] = [cpu_share(C0, C1, S)
                                              || {C0, C1} <- lists:zip(Cpu0, Cpu1)],
                        Calls = case {Counts0, Counts1} of
                                    {{R0, M0}, {R1, M1}} ->
                                        io:format("    ~ts answered ~b calls (~b messages): "
                                                  "~b calls/s~n",
                                                  [ServerName, R1 - R0, M1 - M0,
                                                   round((R1 - R0) / S)]),
                                        #{calls => R1 - R0, server_messages => M1 - M0,
                                          calls_rate => (R1 - R0) / S};
                                    _ ->
                                        #{}
                                end,
                        maps:merge(Run#{vm_cpu => VmCpu, server_cpu => ServerCpu}, Calls)
                end).

on_off(true) -> "on";
on_off(false) -> "off".

%% Requests and messages pusher-sink --sns has answered so far (its GET /stats).
sink_counts(TcpPort) ->
    Url = "http://127.0.0.1:" ++ integer_to_list(TcpPort) ++ "/stats",
    {ok, {{_, 200, _}, _, Body}} = httpc:request(get, {Url, []}, [{timeout, 5000}],
                                                 [{body_format, binary}]),
    #{<<"requests">> := Requests, <<"messages">> := Messages} = jiffy:decode(Body, [return_maps]),
    {Requests, Messages}.

port_os_pid(Port) ->
    case erlang:port_info(Port, os_pid) of
        {os_pid, Pid} -> integer_to_list(Pid);
        undefined -> undefined
    end.

%% User + system CPU seconds of an OS process so far (Linux /proc), or undefined.
cpu_seconds(undefined) ->
    undefined;
cpu_seconds(Pid) ->
    case file:read_file("/proc/" ++ Pid ++ "/stat") of
        {ok, Stat} ->
            %% The fields after the command name (in parentheses): state is the 3rd
            %% field, utime the 14th and stime the 15th.
            [_, After] = string:split(Stat, <<")">>, trailing),
            Fields = string:lexemes(After, " "),
            (binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields)))
                / clock_ticks();
        {error, _} ->
            undefined
    end.

clock_ticks() ->
    case string:to_integer(os:cmd("getconf CLK_TCK")) of
        {Ticks, _} when is_integer(Ticks), Ticks > 0 -> Ticks;
        _ -> 100
    end.

%% CPU used per second of wall time (1.0 = one core busy), or undefined.
cpu_share(C0, C1, Seconds) when is_number(C0), is_number(C1), Seconds > 0 ->
    (C1 - C0) / Seconds;
cpu_share(_, _, _) ->
    undefined.

%% moto_server on a free port, the topic created, then a run with batching on and
%% one with batching off.
moto_bench(#{moto_server := Exe} = Opts, Acc, Event) ->
    case filelib:is_regular(Exe) of
        false ->
            io:format("  sns: no ~ts (make venv): moto not measured~n", [Exe]),
            {error, io_lib:format("no ~ts (make venv)", [Exe])};
        true ->
            try moto_runs(Opts, Exe, Acc, Event)
            catch
                Class:Reason:Stack ->
                    io:format("  sns -> moto: failed: ~p:~p~n    ~p~n",
                              [Class, Reason, hd(Stack ++ [none])]),
                    {error, io_lib:format("~p", [Reason])}
            end
    end.

moto_runs(#{moto_batching_events := OnN, moto_single_events := OffN} = Opts, Exe, Acc, Event) ->
    TcpPort = closed_port(),
    %% The shell runs moto in the background and kills it when its stdin closes, so
    %% moto goes when the port is closed or the VM dies.
    Script = "\"$0\" -H 127.0.0.1 -p \"$1\" >/dev/null 2>&1 & pid=$!; echo \"pid $pid\"; "
             "cat >/dev/null; kill $pid 2>/dev/null; wait $pid",
    Port = open_port({spawn_executable, "/bin/sh"},
                     [{args, ["-c", Script, Exe, integer_to_list(TcpPort)]}, {line, 256}, binary,
                      exit_status]),
    try
        MotoPid = receive
                      {Port, {data, {eol, <<"pid ", P/binary>>}}} -> binary_to_list(P)
                  after 5000 -> error(moto_did_not_start)
                  end,
        Url = url(TcpPort),
        ok = moto_create_topic(binary_to_list(Url) ++ "/",
                               erlang:monotonic_time(millisecond) + 30000),
        Server = #{name => "moto", url => Url, os_pid => MotoPid,
                   counts => fun() -> undefined end},
        Small = Opts#{sns_warmup => 50},
        On = sns_run(Small, Server, true, OnN, Acc, Event),
        Off = sns_run(Small, Server, false, OffN, Acc, Event),
        #{on => On, off => Off, vsn => moto_version(Exe)}
    after
        catch port_close(Port),
        receive {Port, {exit_status, _}} -> ok after 5000 -> ok end
    end.

%% CreateTopic (idempotent), retried until moto answers.
moto_create_topic(Url, Deadline) ->
    Request = {Url, [{"authorization", ?MOTO_AUTHORIZATION}], "application/x-www-form-urlencoded",
               "Action=CreateTopic&Name=bench&Version=2010-03-31"},
    Arn = binary_to_list(?SNS_TOPIC_ARN),
    case httpc:request(post, Request, [{timeout, 5000}], []) of
        {ok, {{_, 200, _}, _, Body}} ->
            case string:find(Body, "<TopicArn>" ++ Arn ++ "</TopicArn>") of
                nomatch -> error({unexpected_create_topic_answer, Body});
                _ -> ok
            end;
        Other ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({moto_not_answering, Other});
                false -> timer:sleep(200), moto_create_topic(Url, Deadline)
            end
    end.

moto_version(Exe) ->
    Python = filename:join(filename:dirname(Exe), "python"),
    case filelib:is_regular(Python) of
        true ->
            case repo_binary:run(Python, ["-c", "import moto; print(moto.__version__)"],
                                 [stderr_to_stdout]) of
                {0, Out} -> string:trim(binary_to_list(Out));
                _ -> "?"
            end;
        false ->
            "?"
    end.

%% The event and what the http backend makes of it

chat_event() ->
    %% A ~50-byte body.
    chat_event(<<"Are we still on for lunch tomorrow at 12:30? Bring">>).

chat_event(Text) ->
    From = jid:from_binary(<<"alice@localhost/phone">>),
    To = jid:from_binary(<<"bob@localhost">>),
    Packet = #xmlel{name = <<"message">>,
                    attrs = #{<<"type">> => <<"chat">>, <<"from">> => <<"alice@localhost/phone">>,
                              <<"to">> => <<"bob@localhost">>, <<"id">> => <<"msg-42">>},
                    children = [#xmlel{name = <<"body">>, children = [#xmlcdata{content = Text}]}]},
    Acc = mongoose_acc:new(#{location => #{mfa => {?MODULE, chat_event, 1}, line => ?LINE,
                                           file => ?FILE},
                             lserver => ?HOST, host_type => ?HOST, element => Packet,
                             from_jid => From, to_jid => To}),
    {Acc, #chat_event{type = chat, direction = in, from = From, to = To, packet = Packet}}.

%% The request tuple mod_event_pusher_http hands to push/2 for this event.
typical_request(Acc, #chat_event{} = Event) ->
    Message = message_body(Event),
    Headers = mod_event_pusher_http_defaults:prepare_headers(Acc, in, ?HOST, Message, <<"alice">>,
                                                             <<"bob">>, handler()),
    {http_event, <<"notifications">>, Headers, form_body(Acc, Event), <<"alice">>}.

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
    with_config("tools/event_pusher_bench.toml.in", Values, Fun).

with_config(Template, Values, Fun) ->
    Opts = event_pusher_sink:load_config(Template, Values),
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
    Http = lists:all(fun(K) -> maps:is_key(K, R) end,
                     [noop, push_event_slow, push_event_dead, throughput, httpc]),
    Text = [case {Http, maps:find(retry, R)} of
                {true, _} -> http_text(R, Opts);
                {false, {ok, Retry}} -> retry_text(Retry);
                {false, error} -> []
            end,
            case maps:find(rabbit, R) of
                {ok, Rabbit} -> rabbit_text(Rabbit, maps:get(amqp_client, R, undefined), Opts);
                error -> []
            end,
            case maps:find(sns, R) of
                {ok, Sns} -> sns_text(Sns, Opts);
                error -> []
            end],
    io:format("~n~ts", [Text]),
    File = filename:join([event_pusher_sink:repo_root(), "_build", "bench.md"]),
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, unicode:characters_to_binary(Text)),
    io:format("bench: wrote ~ts~n", [File]).

http_text(R, Opts) ->
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
          "p50 <= 3 x empty NIF",
          verdict(Ns(push, p50) =< 3 * Ns(noop, p50),
                  io_lib:format("~.1fx", [Ns(push, p50) / Ns(noop, p50)]))},
         {"mod_event_pusher_nif:push/2, queue full (refused, counted)", ns(Ns(push_refused, p50)),
          ns(Ns(push_refused, p99)), "", ""},
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
          "", ""}]
        ++ body_size_rows(maps:get(push_event_bodies, R, [])),
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
                       "calls / ~b, after ~b warm-up batches; the calls of the first seven rows "
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
    {RetryRows, RetryNotes} = case maps:find(retry, R) of
                                  {ok, Retry} -> retry_rows(Retry);
                                  error -> {[], []}
                              end,
    [{Path, Rate1, Target, Verdict} | Rest] = ThroughputRows,
    render(Rows, [{Path, Rate1, Target, Verdict} | RetryRows] ++ Rest, Ratios,
           Notes ++ RetryNotes).

%% The retry phase's rows (events/s, target, verdict) and notes.
retry_rows(#{events := N, healthy := Healthy, failing := Failing, ratio := Ratio,
             rounds := Rounds}) ->
    #{rate := HealthyRate} = Healthy,
    #{rate := FailingRate, failed := Failed} = Failing,
    Total = fun(Kind, Key) -> lists:sum([maps:get(Key, maps:get(Kind, X)) || X <- Rounds]) end,
    Rows =
        [{io_lib:format("event pusher, default settings (10 workers), ~b distinct events, webhook "
                        "healthy (median of ~b)", [N, length(Rounds)]),
          rate(HealthyRate), "", ""},
         {io_lib:format("same, webhook failing each event's first two attempts (median of ~b; "
                        "~b failed)", [length(Rounds), Failed]),
          rate(FailingRate), ">= 50% of healthy, 0 failed",
          verdict_all([at_least(Ratio, 0.5), Total(failing, failed) =:= 0])
              ++ " " ++ percent(Ratio)}],
    RequestRates = fun(Kind) ->
                           rates([#{rate => maps:get(requests_rate, maps:get(Kind, X))}
                                  || X <- Rounds])
                   end,
    Notes =
        [io_lib:format("Retries (default settings: pool workers 10, queue 10000 events, 3 "
                       "attempts, backoff 100 ms doubling, 30 s deadline): ~b distinct chat "
                       "events per run through push_event/2, timed until all settled; runs "
                       "alternate healthy / failing. Per run, events/s healthy ~ts; failing "
                       "~ts; failing / healthy ~ts. Over all failing runs: delivered ~b, failed "
                       "~b, dropped ~b, retried ~b, requests the webhook answered ~b.",
                       [N, rates([maps:get(healthy, X) || X <- Rounds]),
                        rates([maps:get(failing, X) || X <- Rounds]),
                        round_ratios(Ratio, percent), Total(failing, delivered),
                        Total(failing, failed), Total(failing, dropped),
                        Total(failing, retried), Total(failing, requests)]),
         io_lib:format("Requests/s the webhook answered, per run: healthy ~ts; failing ~ts. "
                       "A failing webhook needs 3 requests per event, and the 10 workers "
                       "(the pool's connections) are the same: the event rate can reach "
                       "about a third of the healthy one, with the workers as busy as when "
                       "healthy (no worker waits out a backoff).",
                       [RequestRates(healthy), RequestRates(failing)])],
    {Rows, Notes}.

%% The retry phase alone (run without the other http phases).
retry_text(Retry) ->
    {Rows, Notes} = retry_rows(Retry),
    [<<"\n### Retries (events/s)\n\n">>,
     <<"| path | events/s | target | |\n|---|---:|---|---|\n">>,
     [io_lib:format("| ~ts | ~ts | ~ts | ~ts |~n", [A, B, C, D]) || {A, B, C, D} <- Rows],
     <<"\n">>,
     [io_lib:format("- ~ts~n", [Note]) || Note <- Notes]].

rabbit_text({error, Why}, _AmqpClient, _Opts) ->
    [<<"\n### RabbitMQ\n\nNot measured: ">>, Why, <<"\n">>];
rabbit_text(#{payload_bytes := Size, events := N, window := Window, rounds := Rounds},
            AmqpClient, #{rabbit_workers := Workers, confirm_each_messages := EachN}) ->
    Median = fun(Key) -> median([maps:get(Key, Round) || Round <- Rounds]) end,
    On = Median(on),
    Off = Median(off),
    RawWindow = Median(raw_window),
    RawNone = Median(raw_none),
    RawEach = Median(raw_each),
    Amqp = case AmqpClient of
               #{rate := _} -> median([AmqpClient]);
               {error, _} = E -> E;
               undefined -> {error, "not run"}
           end,
    %% Each ratio is the median of the ratios of the same round (measured a few
    %% seconds apart, so under the same load).
    Paired = fun(A, B) -> paired_ratio([{maps:get(A, X), maps:get(B, X)} || X <- Rounds]) end,
    OnEach = Paired(on, raw_each),
    OnWindow = Paired(on, raw_window),
    OffNone = Paired(off, raw_none),
    Rows =
        [{io_lib:format("event pusher, push_event/2 -> RabbitMQ, confirms on (window ~b)",
                        [Window]),
          rate_or(On), io_lib:format(">= 4 x confirm-each, >= 90% of raw window ~b", [Window]),
          verdict_all([at_least(OnEach, 4), at_least(OnWindow, 0.9)])},
         {io_lib:format("event pusher, push_event/2 -> RabbitMQ, confirms off (~b workers)",
                        [Workers]),
          rate_or(Off), ">= 80% of raw, no confirms", verdict_all([at_least(OffNone, 0.8)])},
         {io_lib:format("raw lapin loop, confirm window ~b", [Window]), rate_or(RawWindow), "", ""},
         {"raw lapin loop, no confirms", rate_or(RawNone), "", ""},
         {"raw lapin loop, confirm each message", rate_or(RawEach), "", ""},
         {"MongooseIM's way: amqp_client, 1 publisher, confirm each message", rate_or(Amqp),
          "", ""}],
    Ratios =
        [{"confirms on / raw confirm-each", times(OnEach), ">= 4x",
          verdict_all([at_least(OnEach, 4)])},
         {io_lib:format("confirms on / raw window ~b", [Window]), percent(OnWindow),
          ">= 90%", verdict_all([at_least(OnWindow, 0.9)])},
         {"confirms off / raw no confirms", percent(OffNone), ">= 80%",
          verdict_all([at_least(OffNone, 0.8)])},
         {"confirms on / amqp_client confirm-each (medians)", times(ratio_of(On, Amqp)), "", ""}],
    Settled = [maps:with([delivered, failed, dropped], Run)
               || Round <- Rounds, Run <- [maps:get(on, Round), maps:get(off, Round)]],
    Totals = [{K, lists:sum([maps:get(K, S) || S <- Settled])} || K <- [delivered, failed, dropped]],
    Notes =
        [io_lib:format("RabbitMQ 127.0.0.1:5672, exchange ~ts (topic, nothing bound: the broker "
                       "routes the messages nowhere, for every row alike); payload ~b bytes (the "
                       "JSON the rabbit backend publishes for the benchmark's chat event).",
                       [<<?EXCHANGE_PREFIX/binary, "chat_msg">>, Size]),
         io_lib:format("Event pusher rows: ~b chat events per run through push_event/2 with "
                       "only the rabbit backend configured, after 1000 warm-up events; wall "
                       "time from the first push until every event is delivered (confirmed "
                       "by the broker with confirms on). Over all runs: ~ts. The caller "
                       "pushes while the backend delivers, on the same 2 cores: pushing took "
                       "~ts s (confirms on) and ~ts s (off) of these times.",
                       [N, lists:join(", ", [io_lib:format("~s ~b", [K, V])
                                             || {K, V} <- Totals]),
                        push_times([maps:get(on, X) || X <- Rounds]),
                        push_times([maps:get(off, X) || X <- Rounds])]),
         io_lib:format("Median of ~b rounds, each running confirms on, raw window ~b, confirms "
                       "off, raw no confirms, raw confirm each, in this order. Per round: "
                       "confirms on ~ts; raw window ~b ~ts; confirms off ~ts; raw no confirms "
                       "~ts; raw confirm each ~ts.",
                       [length(Rounds), Window, rates([maps:get(on, X) || X <- Rounds]), Window,
                        rates([maps:get(raw_window, X) || X <- Rounds]),
                        rates([maps:get(off, X) || X <- Rounds]),
                        rates([maps:get(raw_none, X) || X <- Rounds]),
                        rates([maps:get(raw_each, X) || X <- Rounds])]),
         io_lib:format("Ratios: the median over the rounds of each round's ratio (the two "
                       "rates of a round are measured seconds apart, under the same load). "
                       "Per round: confirms on / raw confirm-each ~ts; confirms on / raw "
                       "window ~b ~ts; confirms off / raw no confirms ~ts.",
                       [round_ratios(OnEach, times), Window, round_ratios(OnWindow, percent),
                        round_ratios(OffNone, percent)]),
         io_lib:format("Raw lapin loop: target/release/rabbit_ceiling (native/amqp_tools): "
                       "lapin alone on one channel, publishes pipelined, at most W "
                       "unconfirmed; without confirms timed until the broker has handled the "
                       "last message. ~b messages per run (confirm each: ~b).", [N, EachN]),
         "Confirms off, event pusher: delivered = written to the connection by lapin (the "
         "broker acknowledges nothing), timed until the last is written.",
         case Amqp of
             #{} ->
                 io_lib:format("amqp_client ~ts (from Debian's rabbitmq-server), as "
                               "mongoose_rabbit_worker publishes with confirms enabled: "
                               "amqp_channel:call/3 of basic.publish, then "
                               "amqp_channel:wait_for_confirms/2, one message at a time; "
                               "~b messages per run, median of ~b (~ts).",
                               [maps:get(vsn, AmqpClient), maps:get(messages, AmqpClient),
                                length(maps:get(rates, AmqpClient)),
                                rates([#{rate => R} || R <- maps:get(rates, AmqpClient)])]);
             {error, Why} ->
                 io_lib:format("amqp_client (MongooseIM's way) not measured: ~ts", [Why])
         end],
    [<<"\n### RabbitMQ (messages/s)\n\n">>,
     <<"| path | messages/s | target | |\n|---|---:|---|---|\n">>,
     [io_lib:format("| ~ts | ~ts | ~ts | ~ts |~n", [A, B, C, D]) || {A, B, C, D} <- Rows],
     <<"\n| ratio | | target | |\n|---|---:|---|---|\n">>,
     [io_lib:format("| ~ts | ~ts | ~ts | ~ts |~n", [A, B, C, D]) || {A, B, C, D} <- Ratios],
     <<"\n">>,
     [io_lib:format("- ~ts~n", [Note]) || Note <- Notes]].

sns_text(#{sink := Sink, moto := Moto}, Opts) ->
    {SinkRows, SinkRatio, SinkNotes} = sns_sink_text(Sink, Opts),
    {MotoRows, MotoRatio, MotoNotes} = sns_moto_text(Moto),
    Rows = SinkRows ++ MotoRows,
    [<<"\n### Amazon SNS (messages/s)\n\n">>,
     <<"Chat messages pushed through push_event/2 with only the sns backend configured "
       "(aws-sdk-sns in the NIF, SigV4-signed AWS query calls), timed from the first push "
       "until every message is published; batching on sends PublishBatch calls of up to 10 "
       "entries, batching off a Publish per message.\n\n">>,
     <<"| path | messages/s | calls/s | messages/call | CPU: VM / server | target | |\n"
       "|---|---:|---:|---:|---|---|---|\n">>,
     [io_lib:format("| ~ts | ~ts | ~ts | ~ts | ~ts | ~ts | ~ts |~n", tuple_to_list(Row))
      || Row <- Rows],
     <<"\n| ratio | | target | |\n|---|---:|---|---|\n">>,
     [io_lib:format("| ~ts | ~ts | ~ts | ~ts |~n", [A, B, C, D])
      || {A, B, C, D} <- SinkRatio ++ MotoRatio],
     <<"\n">>,
     [io_lib:format("- ~ts~n", [Note]) || Note <- SinkNotes ++ MotoNotes]].

sns_sink_text({error, Why}, _Opts) ->
    {[{"event pusher -> pusher-sink --sns", io_lib:format("not measured: ~ts", [Why]), "", "",
       "", ">= 10k, batching on", "not measured"}],
     [{"batching on / off, pusher-sink", "-", ">= 5x", "not measured"}], []};
sns_sink_text(#{rounds := Rounds, events := N},
              #{sns_pool_size := Pool, sink_threads := Threads, sns_warmup := Warmup}) ->
    On = median_run([maps:get(on, X) || X <- Rounds]),
    Off = median_run([maps:get(off, X) || X <- Rounds]),
    Ratio = paired_ratio([{maps:get(on, X), maps:get(off, X)} || X <- Rounds]),
    #{rate := OnRate} = On,
    Rows = [{io_lib:format("event pusher -> pusher-sink --sns, batching on (pool_size ~b, median "
                           "of ~b)", [Pool, length(Rounds)]),
             rate(OnRate), calls_rate(On), messages_per_call(On), cpu(On), "messages/s >= 10k",
             verdict(OnRate >= 10000, "")},
            {io_lib:format("event pusher -> pusher-sink --sns, batching off (pool_size ~b, "
                           "median of ~b)", [Pool, length(Rounds)]),
             rate(maps:get(rate, Off)), calls_rate(Off), messages_per_call(Off), cpu(Off), "", ""}],
    Ratios = [{"batching on / off, pusher-sink (median of the rounds' ratios)", times(Ratio),
               ">= 5x", verdict_all([at_least(Ratio, 5)])}],
    All = [Run || X <- Rounds, Run <- [maps:get(on, X), maps:get(off, X)]],
    Total = fun(K) -> lists:sum([maps:get(K, Run, 0) || Run <- All]) end,
    Notes =
        [io_lib:format("pusher-sink --sns (native/sink, ~ts): answers every Publish and "
                       "PublishBatch as SNS does, all entries successful, without checking "
                       "signatures; it counts the calls (calls/s) and the messages in them. "
                       "~b messages per run after ~b warm-up messages, ~b rounds of batching "
                       "on, then off; the rows are the median runs.",
                       [threads(Threads), N, min(Warmup, N), length(Rounds)]),
         io_lib:format("Per round: batching on ~ts; batching off ~ts; on / off ~ts.",
                       [rates([maps:get(on, X) || X <- Rounds]),
                        rates([maps:get(off, X) || X <- Rounds]), round_ratios(Ratio, times)]),
         io_lib:format("Over all runs: delivered ~b, failed ~b, dropped ~b; pusher-sink counted "
                       "~b messages in ~b calls.",
                       [Total(delivered), Total(failed), Total(dropped), Total(server_messages),
                        Total(calls)]),
         "CPU: CPU seconds per second of the run (1.00 = one core busy) of the VM (the "
         "pushing process, the NIF's delivery threads and the SDK: JSON, SigV4 signing, "
         "HTTP) and of the server, from /proc; the machine has " ++
             integer_to_list(erlang:system_info(logical_processors)) ++ " cores."],
    {Rows, Ratios, Notes}.

sns_moto_text({error, Why}) ->
    {[{"event pusher -> moto_server", io_lib:format("not measured: ~ts", [Why]), "", "", "", "",
       ""}], [], []};
sns_moto_text(#{on := On, off := Off, vsn := Vsn}) ->
    Rows = [{io_lib:format("event pusher -> moto ~ts, batching on (~b messages)",
                           [Vsn, maps:get(events, On)]),
             rate(maps:get(rate, On)), "-", "-", cpu(On), "", ""},
            {io_lib:format("event pusher -> moto ~ts, batching off (~b messages)",
                           [Vsn, maps:get(events, Off)]),
             rate(maps:get(rate, Off)), "-", "-", cpu(Off), "", ""}],
    Ratio = ratio_of(On, Off),
    Ratios = [{"batching on / off, moto (one run each)", times(Ratio), "", ""}],
    Notes = [io_lib:format("moto ~ts (_build/venv/bin/moto_server, moto's SNS emulator in "
                           "Python, one run each, for reference): delivered ~b / ~b, failed "
                           "~b / ~b (batching on / off). Its rates are moto's own speed, not "
                           "the event pusher's.",
                           [Vsn, maps:get(delivered, On), maps:get(delivered, Off),
                            maps:get(failed, On), maps:get(failed, Off)])],
    {Rows, Ratios, Notes}.

%% The run of median rate.
median_run(Runs) ->
    Sorted = lists:sort(fun(#{rate := R1}, #{rate := R2}) -> R1 =< R2 end, Runs),
    lists:nth((length(Sorted) + 1) div 2, Sorted).

calls_rate(#{calls_rate := Rate}) -> rate(Rate);
calls_rate(_) -> "-".

messages_per_call(#{calls := Calls, server_messages := Messages}) when Calls > 0 ->
    io_lib:format("~.1f", [Messages / Calls]);
messages_per_call(_) -> "-".

cpu(Run) ->
    Share = fun(undefined) -> "?";
               (X) -> io_lib:format("~.2f", [X])
            end,
    io_lib:format("~ts / ~ts", [Share(maps:get(vm_cpu, Run, undefined)),
                                Share(maps:get(server_cpu, Run, undefined))]).

threads(1) -> "one thread";
threads(0) -> "a thread per core";
threads(N) -> io_lib:format("~b threads", [N]).

%% The median rate of measurements (maps with `rate'), or the first error.
median(Results) ->
    case [E || {error, _} = E <- Results] of
        [Error | _] ->
            Error;
        [] ->
            Sorted = lists:sort([Rate || #{rate := Rate} <- Results]),
            #{rate => lists:nth((length(Sorted) + 1) div 2, Sorted)}
    end.

rates(Results) ->
    lists:join(", ", [case R of
                          #{rate := Rate} -> rate(Rate);
                          {error, _} -> "error"
                      end || R <- Results]).

%% The median of per-round ratios A/B, with the list of them; or the first error.
paired_ratio(Pairs) ->
    case [E || {A, B} <- Pairs, E <- [A, B], element(1, E) =:= error] of
        [Error | _] ->
            Error;
        [] ->
            Ratios = [A / B || {#{rate := A}, #{rate := B}} <- Pairs, B > 0],
            case Ratios of
                [] -> {error, "no rate"};
                _ -> #{ratio => lists:nth((length(Ratios) + 1) div 2, lists:sort(Ratios)),
                       ratios => Ratios}
            end
    end.

ratio_of(#{rate := A}, #{rate := B}) when B > 0 -> #{ratio => A / B, ratios => [A / B]};
ratio_of(_, _) -> {error, "no rate"}.

at_least(#{ratio := R}, Factor) -> R >= Factor;
at_least(_, _) -> unknown.

round_ratios(#{ratios := Ratios}, Format) ->
    lists:join(", ", [case Format of
                          times -> times(#{ratio => R});
                          percent -> percent(#{ratio => R})
                      end || R <- Ratios]);
round_ratios(_, _) ->
    "-".

push_times(Runs) ->
    lists:join(", ", [io_lib:format("~.2f/~.2f", [P, S])
                      || #{push_seconds := P, seconds := S} <- Runs]).

rate_or(#{rate := Rate}) -> rate(Rate);
rate_or({error, Why}) -> io_lib:format("not measured: ~ts", [Why]).

verdict_all(Verdicts) ->
    case {lists:member(unknown, Verdicts), lists:all(fun(V) -> V =:= true end, Verdicts)} of
        {true, _} -> "not measured";
        {false, Met} -> verdict(Met, "")
    end.

times(#{ratio := R}) -> io_lib:format("~.1fx", [R]);
times(_) -> "-".

percent(#{ratio := R}) -> io_lib:format("~b%", [round(100 * R)]);
percent(_) -> "-".

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

%% a2: push_event/2 by body size, each call timed alone; the smallest body is the
%% reference (the hook path must not grow with the body).
body_size_rows([]) ->
    [];
body_size_rows([{_, #{p50 := Reference}} | _] = Sizes) ->
    [{io_lib:format("mod_event_pusher:push_event/2, ~ts body (each call timed)",
                    [size_name(Bytes)]),
      ns(P50), ns(P99), "p50 <= 1.5 x 100 B body, <= 100 us",
      verdict(P50 =< 1.5 * Reference andalso P50 =< 100000,
              io_lib:format("~.2fx", [P50 / Reference]))}
     || {Bytes, #{p50 := P50, p99 := P99}} <- Sizes].

size_name(Bytes) when Bytes >= 1 bsl 20 -> io_lib:format("~b MiB", [Bytes bsr 20]);
size_name(Bytes) when Bytes >= 1 bsl 10 -> io_lib:format("~b KiB", [Bytes bsr 10]);
size_name(Bytes) -> io_lib:format("~b B", [Bytes]).

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
