%% @doc `make reliability': the faults an operator meets, each run once against real
%% servers on loopback through the modules' hooks (MongooseIM stand-in, TOML
%% configuration), one markdown table row per fault: what was done, the counts and the
%% verdict. It prints the table and writes it to _build/reliability.md.
%%
%% Counts. accepted, delivered, failed, dropped and lost are the instance's final
%% stats, as module stop reports them (`event_pusher_stopped'). The stats' `failed'
%% includes the events lost at stop; here `failed' excludes them, so that accepted =
%% delivered + failed + dropped + lost. `unique received' and `duplicates' are counted
%% at the server: test_http_listener (request bodies) for webhooks, amqp_probe (a queue
%% bound to the exchanges) for RabbitMQ. A copy counts as received when the server took
%% it: an attempt it answered 500 or 429 is not received; one it read completely is,
%% even if the client then timed out or lost the answer (the webhook saw it).
%%
%% Verdict. PASS when nothing was pending at stop, accepted = delivered + failed +
%% dropped + lost, every delivered event arrived at the server, every accepted event
%% that did not arrive is counted as failed, dropped or lost (nothing lost silently),
%% and the scenario's own expectation holds (e.g. 0 failed). Otherwise FAIL, naming
%% what did not hold. It measures and reports; the exit status says only whether the
%% table was made.
%%
%% Never stops or restarts the shared RabbitMQ on 5672: a broker connection cut goes
%% through test_tcp_proxy. One scenario alone:
%% event_pusher_reliability:main(#{scenarios => [webhook_500]}).
-module(event_pusher_reliability).

-export([main/0, main/1]).
%% logger handler: keeps the structured reports the scenarios look at
-export([log/2]).

-include("mod_event_pusher_nif.hrl").

-define(HT, <<"localhost">>).
-define(HTTP_KEY, {http, http_pool}).
-define(RABBIT_KEY, rabbit).
-define(BROKER_PORT, 5672).
%% The rabbit pool of the configurations below is global.
-define(POOL_LABELS, #{host_type => global, pool_tag => event_pusher}).
-define(LOGS, event_pusher_reliability_logs).
-define(FROM, <<"alice@localhost/r">>).
-define(TO, <<"bob@localhost">>).
-define(ALL, [webhook_500, webhook_429, webhook_timeout, webhook_refused, webhook_cut,
              dead_webhook_flood, too_large, rabbit_cut, rabbit_long_jid, reporter_killed,
              nif_fuzz, churn, bad_config]).

-type scenario() :: webhook_500 | webhook_429 | webhook_timeout | webhook_refused
                  | webhook_cut | dead_webhook_flood | too_large | rabbit_cut
                  | rabbit_long_jid | reporter_killed | nif_fuzz | churn | bad_config.
-type opts() :: #{scenarios => [scenario()], output => file:filename()}.

%%% Entry points

-spec main() -> ok | error.
main() ->
    main(#{}).

-spec main(opts()) -> ok | error.
main(Opts) ->
    Scenarios = maps:get(scenarios, Opts, ?ALL),
    Output = maps:get(output, Opts, filename:join([event_pusher_sink:repo_root(), "_build",
                                                   "reliability.md"])),
    Saved = capture_logs(),
    T0 = erlang:monotonic_time(millisecond),
    try
        io:format("reliability: ~ts, OTP ~ts, ~b schedulers, ~b cores~n",
                  [os_name(), erlang:system_info(otp_release),
                   erlang:system_info(schedulers_online),
                   erlang:system_info(logical_processors)]),
        Rows = [run(Scenario) || Scenario <- Scenarios],
        Seconds = (erlang:monotonic_time(millisecond) - T0) / 1000,
        Text = render(Rows, Seconds),
        io:format("~n~ts", [Text]),
        ok = filelib:ensure_dir(Output),
        ok = file:write_file(Output, Text),
        Failed = [Name || #{name := Name} = Row <- Rows, failed_checks(Row) =/= []],
        io:format("reliability: ~b scenarios, ~b PASS, ~b FAIL, in ~.1f s; table in ~ts~n",
                  [length(Rows), length(Rows) - length(Failed), length(Failed), Seconds,
                   Output]),
        ok
    catch
        Class:Reason:Stack ->
            io:format("reliability: crashed: ~p:~p~n~p~n", [Class, Reason, Stack]),
            error
    after
        restore_logs(Saved)
    end.

%% One scenario; a crash becomes a FAIL row, and whatever it started is stopped.
run(Scenario) ->
    io:format("~s ...~n", [Scenario]),
    ets:delete_all_objects(?LOGS),
    T0 = erlang:monotonic_time(millisecond),
    Row = try
              scenario(Scenario)
          catch
              Class:Reason:Stack ->
                  io:format("  crashed: ~p:~P~n  ~P~n", [Class, Reason, 30, Stack, 30]),
                  #{name => atom_to_list(Scenario), done => "-", counts => none,
                    checks => [{fmt("ran to the end (crashed: ~p:~P)", [Class, Reason, 12]),
                                false}],
                    notes => []}
          after
              _ = bounded(fun stop_host/0, 60000)
          end,
    Seconds = (erlang:monotonic_time(millisecond) - T0) / 1000,
    io:format("  ~ts in ~.1f s: ~ts~n", [maps:get(name, Row), Seconds, verdict(Row)]),
    Row#{seconds => Seconds}.

%%% Scenarios

%% Issue 11.4: a retry waits in the queue, not in a worker.
scenario(webhook_500) ->
    N = 2000,
    with_listener({per_body, [500, 500]}, fun(Listener) ->
        start_http(test_http_listener:port(Listener), #{workers => 10}),
        T0 = erlang:monotonic_time(millisecond),
        push_chats(ids(<<"e">>, N)),
        {_, Settled} = settle(?HTTP_KEY, 120000),
        Seconds = (erlang:monotonic_time(millisecond) - T0) / 1000,
        Final = final_stats([?HTTP_KEY]),
        C = counts(Final, http_received(Listener, fun(Copies) -> max(0, Copies - 2) end)),
        #{name => "webhook answers 500 to each event's first two attempts",
          done => fmt("~ts chat events through the hooks; http backend with default retry "
                      "settings (3 attempts, 30 s deadline), 10 workers", [thousands(N)]),
          counts => C,
          checks => checks(C, [{"0 failed", failed(C) =:= 0},
                               {"every event arrived", unique(C) =:= N}]),
          notes => [fmt("retried ~ts (two per event); the server answered 500 to ~ts attempts; "
                        "all settled in ~.1f s (~ts events/s)",
                        [thousands(maps:get(retried, Settled, 0)), thousands(2 * N), Seconds,
                         thousands(round(delivered(C) / max(Seconds, 0.001)))])]}
    end);

scenario(webhook_429) ->
    N = 200,
    RetryAfter = [{<<"retry-after">>, <<"1">>}],
    with_listener({per_body, [{headers, 429, RetryAfter}]}, fun(Listener) ->
        start_http(test_http_listener:port(Listener), #{workers => 10}),
        push_chats(ids(<<"t">>, N)),
        settle(?HTTP_KEY, 60000),
        Final = final_stats([?HTTP_KEY]),
        C = counts(Final, http_received(Listener, fun(Copies) -> max(0, Copies - 1) end)),
        Gaps = [Second - First || [First, Second | _] <- maps:values(arrivals(Listener))],
        MinGap = case Gaps of [] -> none; _ -> lists:min(Gaps) end,
        #{name => "webhook answers 429 with Retry-After: 1",
          done => fmt("~ts chat events; each event's first attempt gets 429 with "
                      "`Retry-After: 1`; default retry settings", [thousands(N)]),
          counts => C,
          checks => checks(C, [{"0 failed", failed(C) =:= 0},
                               {"every event arrived", unique(C) =:= N},
                               {"no retry before Retry-After",
                                is_integer(MinGap) andalso MinGap >= 1000}]),
          notes => [fmt("shortest time between an event's 429 and its next attempt: ~p ms",
                        [MinGap])]}
    end);

scenario(webhook_timeout) ->
    N = 100,
    with_listener({per_body, [{delay, 1500, 200}]}, fun(Listener) ->
        start_http(test_http_listener:port(Listener),
                   #{workers => 20, request_timeout => 500}),
        push_chats(ids(<<"o">>, N)),
        settle(?HTTP_KEY, 60000),
        Final = final_stats([?HTTP_KEY]),
        %% The server read every copy: a timed-out attempt reached it too.
        C = counts(Final, http_received(Listener, fun(Copies) -> Copies end)),
        #{name => "webhook answers after the request timeout",
          done => fmt("~ts chat events; `request_timeout` 500 ms, the server answers each "
                      "event's first attempt after 1.5 s; default retry settings, 20 workers",
                      [thousands(N)]),
          counts => C,
          checks => checks(C, [{"0 failed", failed(C) =:= 0},
                               {"every event arrived", unique(C) =:= N}]),
          notes => ["duplicates: the server had read each timed-out first attempt before "
                    "the client gave up; delivery is at-least-once"]}
    end);

scenario(webhook_refused) ->
    N = 1000,
    Port = closed_port(),
    with_listener(200, fun(Listener) ->
        start_http(Port, #{workers => 10,
                           retry => #{max_attempts => 10, base_backoff_ms => 200,
                                      max_backoff_ms => 2000, deadline_ms => 30000}}),
        T0 = erlang:monotonic_time(millisecond),
        push_chats(ids(<<"d">>, 1, N div 2)),
        %% Down until the events pushed so far had three refused attempts each.
        Down = wait_until(fun() -> maps:get(retried, stats(?HTTP_KEY)) >= 3 * (N div 2) end,
                          30000),
        #{retried := RefusedAttempts} = stats(?HTTP_KEY),
        Gate = gate_start(Port, test_http_listener:port(Listener), forward),
        Outage = erlang:monotonic_time(millisecond) - T0,
        try
            push_chats(ids(<<"d">>, N div 2 + 1, N)),
            settle(?HTTP_KEY, 60000),
            Final = final_stats([?HTTP_KEY]),
            C = counts(Final, http_received(Listener, fun(Copies) -> Copies end)),
            #{name => "webhook down (connection refused), then up",
              done => fmt("~ts chat events, half while nothing listens on the webhook's "
                          "port (~.1f s), half after a server is back on it; retry: 10 "
                          "attempts, backoff 200 ms to 2 s, 30 s deadline",
                          [thousands(N), Outage / 1000]),
              counts => C,
              checks => checks(C, [{"the events pushed while down were refused 3 times each",
                                    Down =:= ok},
                                   {"0 failed", failed(C) =:= 0},
                                   {"every event arrived", unique(C) =:= N}]),
              notes => [fmt("~ts refused attempts before the server came back",
                            [thousands(RefusedAttempts)])]}
        after
            gate_stop(Gate)
        end
    end);

scenario(webhook_cut) ->
    N = 1000,
    Every = 4,
    with_listener(200, fun(Listener) ->
        Gate = #{port := GatePort} = gate_start(0, test_http_listener:port(Listener),
                                                {cut_every, Every}),
        try
            start_http(GatePort, #{workers => 10}),
            push_chats(ids(<<"m">>, N)),
            settle(?HTTP_KEY, 60000),
            Final = final_stats([?HTTP_KEY]),
            #{responses := Responses, cuts := Cuts} = gate_counts(Gate),
            %% The server answered 200 to each copy: the cut came after.
            C = counts(Final, http_received(Listener, fun(Copies) -> Copies end)),
            #{name => "webhook connection closed mid-response",
              done => fmt("~ts chat events; a proxy in front of the server cuts every ~bth "
                          "response after its first 12 bytes and closes the connection; "
                          "default retry settings", [thousands(N), Every]),
              counts => C,
              checks => checks(C, [{"every event arrived", unique(C) =:= N}]),
              notes => [fmt("~ts responses, ~ts cut; duplicates: the server had taken each "
                            "event whose answer was cut; an event cut on all 3 attempts "
                            "counts as failed though it arrived",
                            [thousands(Responses), thousands(Cuts)])]}
        after
            gate_stop(Gate)
        end
    end);

%% Memory stays bounded: the queue's byte cap holds, the rest is dropped and counted.
scenario(dead_webhook_flood) ->
    N = 200000,
    Workers = 10,
    Cap = 16777216,
    Port = closed_port(),
    start_http(Port, #{workers => Workers, queue => #{max_events => 1000000},
                       retry => #{max_attempts => 1000, base_backoff_ms => 1000,
                                  max_backoff_ms => 1000, deadline_ms => 60000},
                       drain_timeout_ms => 0}),
    Pad = binary:copy(<<"p">>, 1000),
    Reset = reset_peak_rss(),
    #{rss := RssBefore} = vm_status(),
    Sampler = start_sampler(?HTTP_KEY),
    T0 = erlang:monotonic_time(millisecond),
    lists:foreach(fun(I) -> push_chat(<<"f", (integer_to_binary(I))/binary, " ", Pad/binary>>) end,
                  lists:seq(1, N)),
    PushSeconds = (erlang:monotonic_time(millisecond) - T0) / 1000,
    #{queued_bytes := MaxQueuedBytes, queued := MaxQueued, samples := Samples} =
        stop_sampler(Sampler),
    #{rss := RssAfter, hwm := Peak} = vm_status(),
    Memory = erlang:memory(total),
    Final = final_stats([?HTTP_KEY]),
    C = counts(Final, #{unique => 0, copies => 0}),
    %% An event going back to wait for its retry is never refused: the queue may exceed
    %% its byte cap by what the workers hold (README, retry).
    EventBytes = 1200,
    Slack = Workers * EventBytes,
    #{name => "dead webhook, event flood",
      done => fmt("~ts chat events with 1 KiB bodies through the hooks in ~.1f s, nothing "
                  "listening on the webhook's port; `queue.max_bytes` 16 MiB (default), "
                  "`max_events` 1,000,000, retries every 1 s; stop with `drain_timeout_ms` 0",
                  [thousands(N), PushSeconds]),
      counts => C,
      checks => checks(C, [{"queued bytes within the cap (plus the events the workers "
                            "hold)", MaxQueuedBytes =< Cap + Slack},
                           {"peak RSS growth under 64 MiB", Peak - RssBefore < 64 bsl 20}]),
      notes => [fmt("queued bytes at most ~ts of the cap ~ts (~ts events), over ~ts samples; "
                    "VM RSS ~ts before, ~ts after, peak ~ts (VmHWM~ts); erlang:memory(total) "
                    "~ts at the end",
                    [thousands(MaxQueuedBytes), thousands(Cap), thousands(MaxQueued),
                     thousands(Samples),
                     mib(RssBefore), mib(RssAfter), mib(Peak),
                     case Reset of ok -> ", reset before the flood";
                                   _ -> " since the VM started" end,
                     mib(Memory)])]};

%% Issue 11.6: an event over `queue.max_bytes' is dropped with its own reason.
scenario(too_large) ->
    N = 1000,
    Big = 10,
    MaxBytes = 1 bsl 20,
    BigBody = binary:copy(<<"y">>, 2 * MaxBytes),
    with_listener(200, fun(Listener) ->
        start_http(test_http_listener:port(Listener),
                   #{workers => 10, queue => #{max_bytes => MaxBytes}}),
        lists:foreach(fun(I) ->
                              push_chat(<<"n", (integer_to_binary(I))/binary>>),
                              case I rem (N div Big) of
                                  0 -> push_chat(<<"big", (integer_to_binary(I))/binary, " ",
                                                   BigBody/binary>>);
                                  _ -> ok
                              end
                      end, lists:seq(1, N)),
        {_, Settled} = settle(?HTTP_KEY, 60000),
        Final = final_stats([?HTTP_KEY]),
        C = counts(Final, http_received(Listener, fun(Copies) -> Copies end)),
        TooLarge = maps:get(dropped_too_large, Settled, undefined),
        Logged = lists:sum([maps:get(dropped, R, 0)
                            || R <- captured(event_pusher_event_too_large)]),
        #{name => "events larger than `queue.max_bytes`",
          done => fmt("~ts chat events, and among them ~b with a 2 MiB body; "
                      "`queue.max_bytes` 1 MiB", [thousands(N), Big]),
          counts => C,
          checks => checks(C, [{"the large events dropped as too_large",
                                dropped(C) =:= Big andalso TooLarge =:= Big},
                               {"logged as too large", Logged =:= Big},
                               {"0 failed", failed(C) =:= 0},
                               {"every other event arrived", unique(C) =:= N}]),
          notes => [fmt("stats dropped_too_large ~p; `event_pusher_event_too_large` warnings "
                        "counted ~b", [TooLarge, Logged])]}
    end);

%% A connection cut twice mid-stream (test_tcp_proxy in front of the shared broker).
scenario(rabbit_cut) ->
    N = 10000,
    with_exchanges(fun(Exchanges = #{chat := Chat}) ->
        {Proxy, ProxyPort} = test_tcp_proxy:start(?BROKER_PORT),
        try
            start_rabbit(ProxyPort, Exchanges,
                         #{queue => #{max_events => N},
                           retry => #{max_attempts => 10, base_backoff_ms => 50,
                                      max_backoff_ms => 500, deadline_ms => 60000}}),
            Probe = amqp_probe:start([{Chat, <<"#">>}]),
            try
                Pusher = spawn_pusher(ids(<<"r">>, N)),
                Cut1 = cut_when_delivered(Proxy, 2000),
                Cut2 = cut_when_delivered(Proxy, 6000),
                Pushed = wait_pusher(Pusher, 120000),
                settle(?RABBIT_KEY, 60000),
                wait_probe_unique(Probe, N, 30000),
                Final = final_stats([?RABBIT_KEY]),
                C = counts(Final, probe_received(Probe)),
                Lost = length(captured(event_pusher_rabbit_connection_lost)),
                Back = length(captured(event_pusher_rabbit_connected)),
                #{name => "RabbitMQ connection cut mid-stream",
                  done => fmt("~ts chat events, publisher confirms on; a TCP proxy in front "
                              "of the broker cuts the connection twice (at ~ts and ~ts "
                              "delivered); retry: 10 attempts, 60 s deadline",
                              [thousands(N), thousands(Cut1), thousands(Cut2)]),
                  counts => C,
                  checks => checks(C, [{"pushed", Pushed =:= ok},
                                       {"0 failed", failed(C) =:= 0},
                                       {"every event arrived", unique(C) =:= N},
                                       {"the loss and the recovery logged",
                                        Lost >= 1 andalso Back >= 1}]),
                  notes => [fmt("logged: `event_pusher_rabbit_connection_lost` (warning) ~b "
                                "times, `event_pusher_rabbit_connected` (notice) ~b times "
                                "(rate-limited); duplicates: publishes in flight at a cut "
                                "were sent again", [Lost, Back])]}
            after
                amqp_probe:stop(Probe)
            end
        after
            test_tcp_proxy:stop(Proxy)
        end
    end);

%% Issue 11.1: a bare JID over 255 bytes makes a routing key AMQP cannot carry.
scenario(rabbit_long_jid) ->
    N = 5000,
    Long = 20,
    LongJid = fun(I) -> <<(binary:copy(<<"x">>, 300))/binary, (integer_to_binary(I))/binary,
                          "@localhost/r">> end,
    with_exchanges(fun(Exchanges = #{presence := Presence, chat := Chat}) ->
        start_rabbit(?BROKER_PORT, Exchanges, #{}),
        Probe = amqp_probe:start([{Presence, <<"#">>}, {Chat, <<"#">>}]),
        try
            Every = N div Long,
            lists:foreach(
              fun(I) ->
                      push_chat(<<"n", (integer_to_binary(I))/binary>>),
                      case {I rem Every, I div Every rem 2} of
                          {0, 0} -> hook_driver:send(?HT, <<"chat">>, LongJid(I), ?TO,
                                                     <<"long", (integer_to_binary(I))/binary>>);
                          {0, 1} -> hook_driver:presence(?HT, LongJid(I), online);
                          _ -> ok
                      end
              end, lists:seq(1, N)),
            settle(?RABBIT_KEY, 90000),
            wait_probe_unique(Probe, N, 20000),
            Connections = mongoose_instrument:get_events(wpool_rabbit_connections, ?POOL_LABELS),
            Opened = length([E || E = #{opened := 1} <- Connections]),
            Closed = length([E || E = #{closed := 1} <- Connections]),
            Final = final_stats([?RABBIT_KEY]),
            Server = probe_received(Probe),
            Normal = length([Id || Id <- probe_ids(Probe), is_normal_id(Id)]),
            NormalUnique = length(lists:usort([Id || Id <- probe_ids(Probe), is_normal_id(Id)])),
            C = counts(Final, Server),
            #{name => "long-JID poison events among normal ones (RabbitMQ)",
              done => fmt("~ts chat events and ~b events of users whose bare JID is over "
                          "300 bytes (half chat, half presence: routing keys AMQP cannot "
                          "carry), publisher confirms on, default retry settings",
                          [thousands(N), Long]),
              counts => C,
              checks => checks(C, [{"every normal event arrived", NormalUnique =:= N},
                                   {"exactly the long-JID events failed",
                                    failed(C) =:= Long},
                                   {"the connection never dropped (no reconnect)",
                                    Opened =:= 1 andalso Closed =:= 0}]),
              notes => [fmt("normal events received ~ts (~ts unique); connections opened ~b, "
                            "lost ~b", [thousands(Normal), thousands(NormalUnique), Opened,
                                        Closed])]}
        after
            amqp_probe:stop(Probe)
        end
    end);

%% Issue 11.5: the reporter process dies while events flow.
scenario(reporter_killed) ->
    N = 10000,
    with_listener(200, fun(Listener) ->
        start_http(test_http_listener:port(Listener), #{workers => 10,
                                                        drain_timeout_ms => 10000}),
        Pusher = spawn_pusher(ids(<<"k">>, N)),
        _ = wait_until(fun() -> maps:get(delivered, stats(?HTTP_KEY)) >= 2000 end, 30000),
        Killed = kill_reporter(),
        Pushed = wait_pusher(Pusher, 120000),
        settle(?HTTP_KEY, 60000),
        Final = final_stats([?HTTP_KEY]),
        C = counts(Final, http_received(Listener, fun(Copies) -> Copies end)),
        Restarts = captured(event_pusher_reporter_restarted),
        #{name => "reporter killed mid-stream",
          done => fmt("~ts chat events; with ~ts delivered, the reporter (the process "
                      "turning outcome batches into metrics and logs) is suspended until "
                      "batches wait in its mailbox, then killed",
                      [thousands(N), case Killed of
                                         {ok, #{delivered := D}} -> thousands(D);
                                         _ -> "some"
                                     end]),
          counts => C,
          checks => checks(C, [{"the reporter was found and killed", element(1, Killed) =:= ok},
                               {"pushed", Pushed =:= ok},
                               {"every event arrived", unique(C) =:= N},
                               {"a new reporter took over, logged", Restarts =/= []}]),
          notes => [case {Killed, Restarts} of
                        {{ok, #{mailbox := Mailbox}},
                         [#{unhandled_batches := Unhandled, reports_lost := ReportsLost} | _]} ->
                            fmt("~b batches in the killed reporter's mailbox; "
                                "`event_pusher_reporter_restarted`: unhandled_batches ~p, "
                                "reports_lost ~p (attempt reports missing from the "
                                "per-attempt metrics; counters carried)",
                                [Mailbox, Unhandled, ReportsLost]);
                        {{error, Why}, _} ->
                            fmt("reporter not killed: ~p", [Why]);
                        {_, []} ->
                            "no `event_pusher_reporter_restarted` logged"
                    end]}
    end);

scenario(nif_fuzz) ->
    N = 1000,
    with_listener(200, fun(Listener) ->
        Port = test_http_listener:port(Listener),
        start_http(Port, #{workers => 4}),
        Instance = mod_event_pusher_instance:instance(?HT, ?HTTP_KEY),
        _ = rand:seed(exsss, {2025, 11, 8}),
        Fuzz = nif_fuzz(Instance, Port),
        #{accepted := AcceptedByFuzz} = stats(?HTTP_KEY),
        push_chats(ids(<<"z">>, N)),
        settle(?HTTP_KEY, 30000),
        Final = final_stats([?HTTP_KEY]),
        C = counts(Final, http_received(Listener, fun(Copies) -> Copies end)),
        Total = lists:sum([Calls || #{calls := Calls} <- maps:values(Fuzz)]),
        Raised = lists:sum([R || #{raised := R} <- maps:values(Fuzz)]),
        #{push := #{ok := BadEventsAccepted}, stop_live := #{ok := LiveStopped},
          start := #{ok := Started, valid := Valid}} = Fuzz,
        #{name => "NIF fuzz",
          done => fmt("~ts calls with malformed arguments: push/2 of malformed events to "
                      "the running instance, every NIF with things that are not "
                      "instances, start_http/sns/rabbit/push with mutated configurations, "
                      "stop/3 of the running instance with bad drain times, form encoding "
                      "of garbage; then ~ts chat events through the hooks",
                      [thousands(Total), thousands(N)]),
          counts => C,
          checks => checks(C, [{"no call raised", Raised =:= 0},
                               {"no malformed event accepted",
                                BadEventsAccepted =:= 0 andalso AcceptedByFuzz =:= 0},
                               {"no bad stop/3 stopped the instance", LiveStopped =:= 0},
                               {"the instance still delivers", unique(C) =:= N}]),
          notes => [fmt("by call: ~ts; the VM stayed up",
                        [lists:join(", ", [fmt("~s ~ts (~ts refused, ~b raised)",
                                               [K, thousands(Calls), thousands(Refused), R])
                                           || {K, #{calls := Calls, refused := Refused,
                                                    raised := R}} <- lists:sort(maps:to_list(Fuzz))])]),
                    fmt("~b mutated configurations were still valid (started, then stopped): "
                        "~ts", [Started, valid_mutations(maps:keys(Valid))])]}
    end);

scenario(churn) ->
    Cycles = 100,
    Warmup = 3,
    PerCycle = 10,
    with_listener(200, fun(Listener) ->
        with_exchanges(fun(Exchanges = #{chat := Chat}) ->
            ok = amqp_probe:declare(Chat, <<"topic">>),
            Probe = amqp_probe:start([{Chat, <<"#">>}]),
            try
                Toml = [http_toml(test_http_listener:port(Listener), #{workers => 4}),
                        rabbit_module_toml(?BROKER_PORT, Exchanges, #{})],
                Cycle = fun(I) ->
                                ok = mongoose_host:start_toml(tmp_dir(), Toml),
                                push_chats(ids(<<"c", (integer_to_binary(I))/binary, "-">>,
                                               PerCycle)),
                                final_stats([?HTTP_KEY, ?RABBIT_KEY])
                        end,
                WarmFinals = [Cycle(I) || I <- lists:seq(1, Warmup)],
                Base = resources(),
                Finals = [Cycle(I) || I <- lists:seq(Warmup + 1, Warmup + Cycles)],
                %% Connections close asynchronously after a stop.
                _ = wait_until(fun() -> not_above(resources(), Base) end, 10000),
                After = resources(),
                Events = (Warmup + Cycles) * PerCycle,
                _ = wait_until(fun() -> length(test_http_listener:requests(Listener)) >= Events
                               end, 10000),
                wait_probe_unique(Probe, Events, 10000),
                Http = http_received(Listener, fun(Copies) -> Copies end),
                Rabbit = probe_received(Probe),
                Server = #{unique => maps:get(unique, Http) + maps:get(unique, Rabbit),
                           copies => maps:get(copies, Http) + maps:get(copies, Rabbit)},
                C = counts(sum_stats(WarmFinals ++ Finals), Server),
                Leaks = [K || K <- [processes, ports, fds, ets, persistent_terms],
                              maps:get(K, After) > maps:get(K, Base)],
                #{name => "module start/stop churn",
                  done => fmt("~b start/stop cycles (after ~b warm-up cycles) of the http and "
                              "rabbit backends from TOML, ~b chat events each (to both)",
                              [Cycles, Warmup, PerCycle]),
                  counts => C,
                  checks => checks(C, [{"no leaked processes, ports, file descriptors, ETS "
                                        "tables or persistent terms", Leaks =:= []},
                                       {"every event arrived", unique(C) =:= 2 * Events}]),
                  notes => [fmt("after the warm-up vs after the last cycle: ~ts",
                                [lists:join(", ", [fmt("~s ~p -> ~p",
                                                       [K, maps:get(K, Base), maps:get(K, After)])
                                                   || K <- [processes, ports, fds, ets,
                                                            persistent_terms, threads]])]),
                            fmt("RSS ~ts -> ~ts", [mib(maps:get(rss, Base)),
                                                   mib(maps:get(rss, After))])]}
            after
                amqp_probe:stop(Probe)
            end
        end)
    end);

%% Issue 11.7: options that could only fail later are refused at load.
scenario(bad_config) ->
    Cases = bad_configs(),
    Results = [{Option, refused_with(Toml, Option)} || {Option, Toml} <- Cases],
    Refused = [O || {O, refused} <- Results],
    Accepted = [O || {O, accepted} <- Results],
    Unnamed = [O || {O, unnamed} <- Results],
    #{name => "configuration that could only fail later",
      done => fmt("~b configurations with one option out of range or malformed (~ts), each "
                  "loaded and started as MongooseIM boots", [length(Cases),
                                                              lists:join(", ", [O || {O, _} <- Cases])]),
      counts => none,
      checks => [{"every one refused, naming the option", length(Refused) =:= length(Cases)}],
      notes => [fmt("refused naming the option: ~b; refused without naming it: ~ts; "
                    "accepted: ~ts", [length(Refused), names(Unnamed), names(Accepted)])]}.

%%% Scenario helpers: http

with_listener(Reply, Fun) ->
    Listener = test_http_listener:start(Reply),
    try Fun(Listener)
    after
        _ = bounded(fun stop_host/0, 60000),
        test_http_listener:stop(Listener)
    end.

start_http(Port, Spec) ->
    ok = mongoose_host:start_toml(tmp_dir(), http_toml(Port, Spec)).

%% Spec: workers, request_timeout, queue, retry, drain_timeout_ms (others default).
http_toml(Port, Spec) ->
    [general_toml(),
     <<"[outgoing_pools.http.http_pool]\n">>,
     <<"  workers = ">>, integer_to_binary(maps:get(workers, Spec, 10)), <<"\n">>,
     <<"  connection.host = \"http://127.0.0.1:">>, integer_to_binary(Port), <<"\"\n">>,
     <<"  connection.request_timeout = ">>,
     integer_to_binary(maps:get(request_timeout, Spec, 2000)), <<"\n\n">>,
     <<"[modules.mod_event_pusher.http]\n">>,
     <<"  handlers = [{path = \"/notifications\"}]\n">>,
     <<"  drain_timeout_ms = ">>, integer_to_binary(maps:get(drain_timeout_ms, Spec, 5000)),
     <<"\n">>,
     table(<<"queue">>, maps:get(queue, Spec, #{})),
     table(<<"retry">>, maps:get(retry, Spec, #{})), <<"\n">>].

general_toml() ->
    <<"[general]\n  hosts = [\"localhost\"]\n  default_server_domain = \"localhost\"\n\n">>.

table(_Name, Map) when map_size(Map) =:= 0 ->
    [];
table(Name, Map) ->
    [<<"  ">>, Name, <<" = {">>,
     lists:join(<<", ">>, [[atom_to_binary(K), <<" = ">>, integer_to_binary(V)]
                           || {K, V} <- lists:sort(maps:to_list(Map))]),
     <<"}\n">>].

%% Each event's message text and how many copies of it the server took, as Taken
%% says from the number of copies it read.
http_received(Listener, Taken) ->
    Copies = maps:values(arrivals(Listener)),
    Took = [Taken(length(Times)) || Times <- Copies],
    #{unique => length([T || T <- Took, T > 0]), copies => lists:sum(Took)}.

%% Arrival times (ms) of each message text, in order.
arrivals(Listener) ->
    lists:foldl(fun(#{body := Body, at := At}, Acc) ->
                        maps:update_with(message(Body), fun(Times) -> Times ++ [At] end, [At],
                                         Acc)
                end, #{}, test_http_listener:requests(Listener)).

%% The `message' field of the default callback's form body.
message(Body) ->
    case uri_string:dissect_query(Body) of
        Fields when is_list(Fields) ->
            case lists:keyfind(<<"message">>, 1, Fields) of
                {_, Message} when is_binary(Message) -> first_word(Message);
                _ -> Body
            end;
        _ ->
            Body
    end.

%% Large bodies carry their id as the first word.
first_word(Message) ->
    hd(binary:split(Message, [<<" ">>, <<"+">>])).

%%% Scenario helpers: RabbitMQ

%% Exchanges of this run's own (deleted afterwards); the shared broker keeps running.
with_exchanges(Fun) ->
    Suffix = iolist_to_binary([integer_to_list(os:system_time(millisecond) rem 100000000), "_",
                               integer_to_list(erlang:unique_integer([positive]))]),
    Exchanges = #{presence => <<"reliability_presence_", Suffix/binary>>,
                  chat => <<"reliability_chat_", Suffix/binary>>,
                  groupchat => <<"reliability_groupchat_", Suffix/binary>>},
    try Fun(Exchanges)
    after
        _ = bounded(fun stop_host/0, 60000),
        [amqp_probe:delete(Name) || Name <- maps:values(Exchanges)]
    end.

start_rabbit(Port, Exchanges, Spec) ->
    ok = mongoose_host:start_toml(tmp_dir(), [general_toml(),
                                              rabbit_module_toml(Port, Exchanges, Spec)]).

rabbit_module_toml(Port, #{presence := P, chat := C, groupchat := G}, Spec) ->
    [<<"[outgoing_pools.rabbit.event_pusher]\n">>,
     <<"  workers = 4\n">>,
     <<"  connection.host = \"127.0.0.1\"\n">>,
     <<"  connection.port = ">>, integer_to_binary(Port), <<"\n">>,
     <<"  connection.username = \"guest\"\n">>,
     <<"  connection.password = \"guest\"\n">>,
     <<"  connection.confirms_enabled = true\n\n">>,
     <<"[modules.mod_event_pusher.rabbit]\n">>,
     <<"  presence_exchange = {name = \"">>, P, <<"\"}\n">>,
     <<"  chat_msg_exchange = {name = \"">>, C, <<"\"}\n">>,
     <<"  groupchat_msg_exchange = {name = \"">>, G, <<"\"}\n">>,
     <<"  connection.connect_timeout_ms = 3000\n">>,
     <<"  reconnect = {base_delay_ms = 50, max_delay_ms = 300}\n">>,
     <<"  drain_timeout_ms = 5000\n">>,
     table(<<"queue">>, maps:get(queue, Spec, #{})),
     table(<<"retry">>, maps:get(retry, Spec, #{})), <<"\n">>].

%% The id of a message: the chat text, or the user of a presence.
probe_ids(Probe) ->
    [case jiffy:decode(Payload, [return_maps]) of
         #{<<"message">> := Message} -> Message;
         #{<<"user_id">> := User} -> User;
         _ -> Payload
     end || #{payload := Payload} <- amqp_probe:messages(Probe)].

probe_received(Probe) ->
    Ids = probe_ids(Probe),
    #{unique => length(lists:usort(Ids)), copies => length(Ids)}.

is_normal_id(<<"n", _/binary>>) -> true;
is_normal_id(_) -> false.

%% Until N distinct messages arrived (duplicates may come too), or the timeout.
wait_probe_unique(Probe, N, TimeoutMs) ->
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    _ = wait_until(fun() -> amqp_probe:count(Probe) >= N end, TimeoutMs),
    wait_probe_unique_until(Probe, N, Deadline).

%% Decoding every message is costly: checked every 200 ms.
wait_probe_unique_until(Probe, N, Deadline) ->
    case maps:get(unique, probe_received(Probe)) >= N
        orelse erlang:monotonic_time(millisecond) >= Deadline of
        true -> ok;
        false -> timer:sleep(200), wait_probe_unique_until(Probe, N, Deadline)
    end.

cut_when_delivered(Proxy, Delivered) ->
    case wait_until(fun() -> maps:get(delivered, stats(?RABBIT_KEY)) >= Delivered end, 30000) of
        ok ->
            #{delivered := Now} = stats(?RABBIT_KEY),
            ok = test_tcp_proxy:cut(Proxy),
            Now;
        timeout ->
            not_reached
    end.

%%% Scenario helpers: the reporter

%% Suspends the instance's reporter until report batches wait in its mailbox, then
%% kills it; waits until its supervisor has started another.
kill_reporter() ->
    case reporter() of
        {ok, Supervisor, Reporter} ->
            #{delivered := Delivered} = stats(?HTTP_KEY),
            ok = sys:suspend(Reporter),
            _ = wait_until(fun() -> mailbox(Reporter) >= 2 end, 10000),
            Mailbox = mailbox(Reporter),
            exit(Reporter, kill),
            Replaced = wait_until(fun() ->
                                          case reporter() of
                                              {ok, Supervisor, New} -> New =/= Reporter;
                                              _ -> false
                                          end
                                  end, 10000),
            case Replaced of
                ok -> {ok, #{delivered => Delivered, mailbox => Mailbox}};
                timeout -> {error, not_replaced}
            end;
        {error, _} = Error ->
            Error
    end.

reporter() ->
    Id = {mod_event_pusher_instance, ?HT, ?HTTP_KEY},
    try lists:keyfind(Id, 1, supervisor:which_children(ejabberd_sup)) of
        {Id, Supervisor, supervisor, _} when is_pid(Supervisor) ->
            case [P || {reporter, P, worker, _} <- supervisor:which_children(Supervisor),
                       is_pid(P)] of
                [Reporter] -> {ok, Supervisor, Reporter};
                [] -> {error, no_reporter_running}
            end;
        _ ->
            {error, no_supervised_reporter}
    catch
        exit:Reason -> {error, Reason}
    end.

mailbox(Pid) ->
    case process_info(Pid, message_queue_len) of
        {message_queue_len, Length} -> Length;
        undefined -> 0
    end.

%%% Scenario helpers: NIF fuzz

%% Malformed calls by kind: calls, refused (an error tuple), ok (anything else
%% returned) and raised (an exception: never expected).
nif_fuzz(Instance, Port) ->
    Stale = stale_instance(Port),
    LiveBadStop = fun() -> mod_event_pusher_nif:stop(Instance, pick(bad_drains()), fuzz) end,
    Results =
        #{push => fuzz(500000, fun() -> mod_event_pusher_nif:push(Instance, bad_http_event()) end),
          not_an_instance => fuzz(30000, fun() -> not_an_instance_call(Stale) end),
          stop_live => fuzz(2000, LiveBadStop),
          start => fuzz(20000, fun bad_start/0),
          form => fuzz(20000, fun() -> mod_event_pusher_nif:form_urlencode(garbage(3)) end)},
    flush_nif_messages(),
    Results.

%% `valid': what made a configuration still valid.
fuzz(Count, Call) ->
    lists:foldl(fun(_, Acc = #{refused := R, ok := O, raised := X, valid := V}) ->
                        try Call() of
                            {error, _} -> Acc#{refused := R + 1};
                            {valid, What} -> Acc#{ok := O + 1, valid := V#{What => true}};
                            _ -> Acc#{ok := O + 1}
                        catch
                            _:_ -> Acc#{raised := X + 1}
                        end
                end, #{calls => Count, refused => 0, ok => 0, raised => 0, valid => #{}},
                lists:seq(1, Count)).

valid_mutations([]) ->
    "none";
valid_mutations(Mutations) ->
    lists:join(", ", [case Mutation of
                          {without, Key} -> fmt("~s without `~s`", [Start, Key]);
                          {wrong, Key} -> fmt("~s with a wrong `~s`", [Start, Key]);
                          garbage -> fmt("~s with garbage", [Start])
                      end || {Start, Mutation} <- lists:sort(Mutations)]).

%% A real instance, stopped: its reference outlives it.
stale_instance(Port) ->
    {Instance, Config} = http_nif_config(Port),
    {ok, Stale} = mod_event_pusher_nif:start_http(Instance, Config, self()),
    ok = mod_event_pusher_nif:stop(Stale, 0, stale),
    receive {mod_event_pusher_nif, stopped, stale, _} -> ok after 5000 -> ok end,
    Stale.

http_nif_config(Port) ->
    {instance_nif_config(),
     #http_config{host = <<"http://127.0.0.1:", (integer_to_binary(Port))/binary>>,
                  path_prefix = <<"/">>, request_timeout_ms = 500, verify_mode = peer}}.

instance_nif_config() ->
    #instance_config{max_events = 100, max_bytes = 1048576, overflow = drop_newest,
                     max_attempts = 1, base_backoff_ms = 10, max_backoff_ms = 10,
                     retry_deadline_ms = 1000, concurrency = 1}.

sns_nif_config() ->
    {(instance_nif_config())#instance_config{jitter = minus_base},
     #sns_config{sns_host = <<"http://127.0.0.1:1">>, region = <<"eu-west-1">>,
                 access_key_id = <<"AK">>, secret_access_key = <<"secret">>,
                 request_timeout_ms = 100, connect_timeout_ms = 100, batching = true}}.

push_nif_config() ->
    {instance_nif_config(), #push_config{publish_timeout_ms = 100}}.

rabbit_nif_config() ->
    Exchange = fun(Name) -> #rabbit_exchange{name = Name, type = <<"topic">>, durable = false,
                                             persistent = false, sent_topic = <<"s">>,
                                             recv_topic = <<"r">>} end,
    {instance_nif_config(),
     #rabbit_config{presence_exchange = Exchange(<<"fuzz_p">>),
                    chat_msg_exchange = Exchange(<<"fuzz_c">>),
                    groupchat_msg_exchange = Exchange(<<"fuzz_g">>),
                    tls = false, host = <<"127.0.0.1">>, port = closed_port(),
                    username = <<"guest">>, password = <<"guest">>, virtual_host = <<"/">>,
                    confirms_enabled = true, confirm_timeout_ms = 1000,
                    connect_timeout_ms = 100, reconnect_base_delay_ms = 100,
                    reconnect_max_delay_ms = 1000, max_message_bytes = 1000000}}.

%% A start with a mutated configuration; one still valid is stopped at once.
bad_start() ->
    {Start, Config} = pick([{start_http, http_nif_config(closed_port())},
                            {start_sns, sns_nif_config()},
                            {start_push, push_nif_config()},
                            {start_rabbit, rabbit_nif_config()}]),
    Reporter = case rand:uniform(20) of 1 -> garbage(1); _ -> self() end,
    {Mutation, {Instance, BackendConfig}} = mutate_config(Config),
    case mod_event_pusher_nif:Start(Instance, BackendConfig, Reporter) of
        {ok, Instance} ->
            ok = mod_event_pusher_nif:stop(Instance, 0, fuzz_start),
            receive {mod_event_pusher_nif, stopped, fuzz_start, _} -> ok after 5000 -> ok end,
            {valid, {Start, Mutation}};
        Other ->
            Other
    end.

%% One of the two records ({#instance_config{}, BackendConfig}) replaced by garbage,
%% short of a field, or with a field of a wrong value.
mutate_config(Pair) ->
    Which = rand:uniform(2),
    Record = element(Which, Pair),
    Index = rand:uniform(tuple_size(Record) - 1) + 1,
    Key = lists:nth(Index - 1, record_fields(element(1, Record))),
    case rand:uniform(10) of
        1 -> {garbage, setelement(Which, Pair, garbage(3))};
        2 -> {{without, Key}, setelement(Which, Pair, erlang:delete_element(Index, Record))};
        _ -> {{wrong, Key}, setelement(Which, Pair, setelement(Index, Record, pick(wrong_values())))}
    end.

record_fields(instance_config) -> record_info(fields, instance_config);
record_fields(http_config) -> record_info(fields, http_config);
record_fields(sns_config) -> record_info(fields, sns_config);
record_fields(push_config) -> record_info(fields, push_config);
record_fields(rabbit_config) -> record_info(fields, rabbit_config).

%% Of no option's type (a binary that is not UTF-8, a negative or huge integer, ...).
wrong_values() ->
    [maybe_not, -1, 1.5, 1 bsl 70, -(1 bsl 70), "a string", <<255, 254>>, {a, tuple}, [],
     make_ref(), #{}, <<1:7>>, [<<"io">>, <<"list">>]].

bad_drains() ->
    [-1, 1.5, infinity, 1 bsl 64, <<"5">>, "5", -(1 bsl 64)].

%% An #http_event{} with one field wrong, the wrong size, or garbage.
bad_http_event() ->
    Good = #http_event{path = <<"p">>, headers = [{<<"h">>, <<"v">>}], body = <<"b">>,
                       tag = <<"alice">>},
    case rand:uniform(100) of
        1 -> setelement(3, Good, big_bad_headers());
        N when N =< 10 -> list_to_tuple(lists:sublist(tuple_to_list(Good), rand:uniform(4)));
        N when N =< 20 -> list_to_tuple(tuple_to_list(Good) ++ [garbage(1)]);
        N when N =< 30 -> not_an_http_event(garbage(3));
        _ -> Field = rand:uniform(4), setelement(Field + 1, Good, wrong_part(Field))
    end.

wrong_part(1) -> pick([p, "p", <<255, 0>>, 42, <<1:7>>, {<<"p">>}, not_binary(garbage(2))]);
wrong_part(2) -> pick([not_a_list, [{<<"h">>}], [{<<"h">>, 1}], improper({<<"h">>, <<"v">>}, improper),
                       [x], [{<<"h">>, <<"v">>, <<"x">>}], [{h, <<"v">>}],
                       [{<<"h">>, [<<"iolist">>]}], not_list(garbage(2))]);
wrong_part(3) -> pick([b, 42, [<<"iolist">>], <<1:7>>, {form, x}, {form, [x]},
                       {form, [{<<"a">>}]}, {form, [{a, <<"b">>}]},
                       {form, improper({<<"a">>, <<"b">>}, c)}, {form, [{<<"a">>, <<1:7>>}]},
                       {form, [], extra}, {other, []}, not_body(garbage(2))]);
wrong_part(4) -> pick([alice, 42, "alice", <<1:7>>, not_binary(garbage(2))]).

%% A long list of good headers with a bad end: the NIF walks it all before refusing.
big_bad_headers() ->
    Good = lists:duplicate(rand:uniform(5000), {<<"h">>, <<"v">>}),
    pick([Good ++ improper_tail, Good ++ [{<<"h">>, 1}], Good ++ [bad]]).

not_an_http_event(T) when is_tuple(T), tuple_size(T) =:= 5 -> [T];
not_an_http_event(T) -> T.

not_binary(B) when is_binary(B) -> {B};
not_binary(T) -> T.

%% [Head | Tail], Tail no list: malformed on purpose, built at run time (Dialyzer
%% rightly flags a literal one).
improper(Head, Tail) ->
    [Head | binary_to_term(term_to_binary(Tail))].

%% Neither a binary nor a form ({form, [{Name, Value}]}, possibly empty).
not_body(B) when is_binary(B) -> {B};
not_body({form, Fields} = Form) when is_list(Fields) -> {Form};
not_body(T) -> T.

not_list(L) when is_list(L) -> {L};
not_list(T) -> T.

not_an_instance_call(Stale) ->
    I = pick([make_ref(), self(), <<"bin">>, 42, [], {x}, an_atom, Stale, garbage(2)]),
    case rand:uniform(6) of
        1 -> mod_event_pusher_nif:push(I, #http_event{path = <<"p">>, headers = [],
                                                      body = <<"b">>, tag = <<"t">>});
        2 -> mod_event_pusher_nif:stats(I);
        3 -> mod_event_pusher_nif:stop(I, pick([0, -1, infinity, 1.5]), fuzz);
        4 -> mod_event_pusher_nif:set_reporter(I, pick([self(), not_a_pid]));
        5 -> mod_event_pusher_nif:reports_sent(I);
        6 -> mod_event_pusher_nif:push_reply(I, pick([1, -1, x]),
                                             pick([result, timeout, {error, <<"x">>}, maybe_not]))
    end.

%% A random term, at most Depth deep.
garbage(0) ->
    pick([an_atom, 0, -7, 1 bsl 80, 3.25, <<>>, <<255, 0, 1>>, <<1:5>>, "str", [], {}]);
garbage(Depth) ->
    case rand:uniform(9) of
        1 -> rand:uniform(1 bsl 40) - (1 bsl 39);
        2 -> rand:bytes(rand:uniform(32) - 1);
        3 -> [garbage(Depth - 1) || _ <- lists:seq(1, rand:uniform(5))];
        4 -> [garbage(Depth - 1) | garbage(0)];
        5 -> list_to_tuple([garbage(Depth - 1) || _ <- lists:seq(1, rand:uniform(6) - 1)]);
        6 -> maps:from_list([{garbage(0), garbage(Depth - 1)} || _ <- lists:seq(1, 3)]);
        7 -> pick([make_ref(), self(), fun() -> ok end]);
        8 -> {form, garbage(Depth - 1)};
        9 -> garbage(0)
    end.

pick(List) ->
    lists:nth(rand:uniform(length(List)), List).

%% Reports and stop notices of the instances the fuzz started with this process as
%% their reporter.
flush_nif_messages() ->
    receive {mod_event_pusher_nif, _, _} -> flush_nif_messages();
            {mod_event_pusher_nif, _, _, _} -> flush_nif_messages()
    after 0 -> ok
    end.

%%% Scenario helpers: churn

resources() ->
    #{rss := Rss, threads := Threads} = vm_status(),
    #{processes => erlang:system_info(process_count),
      ports => erlang:system_info(port_count),
      ets => length(ets:all()),
      persistent_terms => length(persistent_term:get()),
      fds => case file:list_dir("/proc/self/fd") of
                 {ok, Fds} -> length(Fds);
                 {error, _} -> 0
             end,
      threads => Threads, rss => Rss}.

not_above(Now, Base) ->
    lists:all(fun(K) -> maps:get(K, Now) =< maps:get(K, Base) end,
              [processes, ports, fds, ets, persistent_terms]).

sum_stats(Finals) ->
    lists:foldl(fun(Stats, Acc) ->
                        maps:map(fun(K, V) -> V + maps:get(K, Stats, 0) end, Acc)
                end, #{accepted => 0, delivered => 0, failed => 0, dropped => 0, lost => 0,
                       queued => 0, in_flight => 0},
                [S || Final <- Finals, S <- maps:values(Final), is_map(S)]).

%%% Scenario helpers: bad configuration

%% {Option, TOML}: one option over its bound or malformed, the rest valid.
bad_configs() ->
    Http = fun(Spec) -> http_toml(closed_port(), Spec) end,
    Sns = [general_toml(),
           <<"[modules.mod_event_pusher.sns]\n  sns_host = \"http://[::1\"\n"
             "  region = \"eu-west-1\"\n  access_key_id = \"AK\"\n"
             "  secret_access_key = \"secret\"\n  account_id = \"123456789012\"\n"
             "  pm_messages_topic = \"pm\"\n">>],
    Rabbit = fun(Line) ->
                     [general_toml(), <<"[modules.mod_event_pusher.rabbit]\n">>,
                      <<"  connection.host = \"127.0.0.1\"\n  ">>, Line, <<"\n">>]
             end,
    PoolHost = [general_toml(),
                <<"[outgoing_pools.http.http_pool]\n  connection.host = \"http://[::1\"\n\n"
                  "[modules.mod_event_pusher.http]\n  handlers = [{path = \"/n\"}]\n">>],
    [{"drain_timeout_ms", Http(#{drain_timeout_ms => 4294967296})},
     {"max_events", Http(#{queue => #{max_events => 9223372036854775807}})},
     {"max_bytes", Http(#{queue => #{max_bytes => 17179869185}})},
     {"deadline_ms", Http(#{retry => #{deadline_ms => 9223372036854775807}})},
     {"max_backoff_ms", Http(#{retry => #{max_backoff_ms => 86400001}})},
     {"sns_host", Sns},
     {"confirm_window", Rabbit(<<"confirm_window = 100000">>)},
     {"max_delay_ms", Rabbit(<<"reconnect.max_delay_ms = 4294967296">>)},
     {"connection.host", PoolHost}].

%% refused (an error naming the option), unnamed (an error not naming it), or
%% accepted (the node would boot with it).
refused_with(Toml, Option) ->
    try mongoose_host:start_toml(tmp_dir(), Toml) of
        ok ->
            _ = bounded(fun stop_host/0, 30000),
            accepted
    catch
        _:Reason ->
            Text = lists:flatten(io_lib:format("~0p", [Reason])),
            case string:find(Text, Option) of
                nomatch -> unnamed;
                _ -> refused
            end
    end.

names([]) -> "none";
names(Options) -> lists:join(", ", Options).

%%% Counting

%% Final stats of these instances from their stop reports (the host is stopped here).
final_stats(Keys) ->
    Stopped = bounded(fun stop_host/0, 60000),
    Reports = [R || What <- [event_pusher_stopped, event_pusher_stopped_with_losses],
                    R <- captured(What)],
    maps:from_list([{Key, case [S || #{key := K, stats := S} <- Reports, K =:= Key] of
                              [] -> {no_final_stats, Stopped};
                              Found -> lists:last(Found)
                          end} || Key <- Keys]).

counts(Final, Server) ->
    Stats = case maps:is_key(accepted, Final) of
                true -> Final;
                false -> sum_stats([Final])
            end,
    #{accepted := A, delivered := D, failed := F, dropped := Dr} = Stats,
    Lost = maps:get(lost, Stats, 0),
    C = #{accepted => A, delivered => D, failed => F - Lost, dropped => Dr, lost => Lost,
          pending => maps:get(queued, Stats, 0) + maps:get(in_flight, Stats, 0)},
    #{unique := U, copies := Copies} = Server,
    C#{unique => U, duplicates => Copies - U}.

%% The checks every scenario with counts gets, then its own.
checks(#{accepted := A, delivered := D, failed := F, dropped := Dr, lost := L, pending := P,
         unique := U}, Own) ->
    [{"final stats reported at stop", A + D + F + Dr + L > 0},
     {"nothing pending at stop", P =:= 0},
     {"accepted = delivered + failed + dropped + lost", A =:= D + F + Dr + L},
     {"every delivered event arrived", D =< U},
     {"nothing lost silently (every event that did not arrive is counted)",
      A - U =< F + Dr + L}
     | Own].

failed(#{failed := F}) -> F.
dropped(#{dropped := D}) -> D.
delivered(#{delivered := D}) -> D.
unique(#{unique := U}) -> U.

failed_checks(#{checks := Checks}) ->
    [Name || {Name, false} <- Checks].

verdict(Row) ->
    case failed_checks(Row) of
        [] -> "PASS";
        Failed -> ["**FAIL**: ", lists:join("; ", Failed)]
    end.

%%% Host and waiting

stop_host() ->
    try mongoose_host:stop()
    catch _:_ -> ok
    end.

stats(Key) ->
    case mod_event_pusher_instance:stats(?HT, Key) of
        Stats when is_map(Stats) -> Stats;
        {error, _} -> #{accepted => 0, delivered => 0, failed => 0, dropped => 0, queued => 0,
                        queued_bytes => 0, in_flight => 0, retried => 0}
    end.

%% Until every accepted event has its outcome (or the timeout); the stats then.
settle(Key, TimeoutMs) ->
    Done = fun() ->
                   case stats(Key) of
                       #{accepted := A, delivered := D, failed := F, dropped := Dr, queued := 0,
                         in_flight := 0} -> A =:= D + F + Dr;
                       _ -> false
                   end
           end,
    Result = wait_until(Done, TimeoutMs),
    {Result, stats(Key)}.

wait_until(Check, TimeoutMs) ->
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    wait_loop(Check, Deadline).

wait_loop(Check, Deadline) ->
    case Check() of
        true -> ok;
        false ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true -> timeout;
                false -> timer:sleep(20), wait_loop(Check, Deadline)
            end
    end.

%% F's result, or `timeout' (F runs in its own process, killed then).
bounded(F, TimeoutMs) ->
    {Pid, MRef} = spawn_monitor(fun() -> exit({returned, F()}) end),
    receive
        {'DOWN', MRef, process, Pid, {returned, Result}} -> Result;
        {'DOWN', MRef, process, Pid, Reason} -> {crashed, Reason}
    after TimeoutMs ->
            exit(Pid, kill),
            timeout
    end.

ids(Prefix, N) ->
    ids(Prefix, 1, N).

ids(Prefix, First, Last) ->
    [<<Prefix/binary, (integer_to_binary(I))/binary>> || I <- lists:seq(First, Last)].

push_chats(Ids) ->
    lists:foreach(fun push_chat/1, Ids).

%% A chat message sent by a local user, through `user_send_message'.
push_chat(Body) ->
    hook_driver:send(?HT, <<"chat">>, ?FROM, ?TO, Body).

spawn_pusher(Ids) ->
    spawn_monitor(fun() -> push_chats(Ids) end).

wait_pusher({Pid, MRef}, TimeoutMs) ->
    receive
        {'DOWN', MRef, process, Pid, normal} -> ok;
        {'DOWN', MRef, process, Pid, Reason} -> {crashed, Reason}
    after TimeoutMs ->
            exit(Pid, kill),
            timeout
    end.

%% A port nothing listens on.
closed_port() ->
    {ok, Listen} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(Listen),
    ok = gen_tcp:close(Listen),
    Port.

tmp_dir() ->
    Dir = filename:join([event_pusher_sink:repo_root(), "_build", "reliability"]),
    ok = filelib:ensure_path(Dir),
    Dir.

%%% Memory

%% Writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS.
reset_peak_rss() ->
    file:write_file("/proc/self/clear_refs", <<"5">>).

vm_status() ->
    Text = case file:read_file("/proc/self/status") of
               {ok, T} -> T;
               {error, _} -> <<>>
           end,
    Field = fun(Name) ->
                    case re:run(Text, [Name, ":\\s+(\\d+)"], [{capture, all_but_first, binary}]) of
                        {match, [V]} -> binary_to_integer(V);
                        nomatch -> 0
                    end
            end,
    #{rss => Field("VmRSS") * 1024, hwm => Field("VmHWM") * 1024, threads => Field("Threads")}.

%% Polls the instance's stats every 5 ms for the largest queue it had.
start_sampler(Key) ->
    Parent = self(),
    spawn_link(fun() -> sample(Parent, Key, #{queued_bytes => 0, queued => 0, samples => 0}) end).

sample(Parent, Key, Max = #{queued_bytes := B, queued := Q, samples := S}) ->
    receive
        {stop, Parent} -> Parent ! {self(), Max}
    after 5 ->
            #{queued_bytes := B1, queued := Q1} = stats(Key),
            sample(Parent, Key, #{queued_bytes => max(B, B1), queued => max(Q, Q1),
                                  samples => S + 1})
    end.

stop_sampler(Pid) ->
    Pid ! {stop, self()},
    receive {Pid, Max} -> Max after 10000 -> error(sampler_stuck) end.

%%% A TCP gate for webhook faults: listens on 127.0.0.1:Port (0: any free port) and
%%% relays each connection to TargetPort; `{cut_every, K}' cuts every K-th response
%%% after its first 12 bytes and closes both sides. Killing the gate kills its relays.

gate_start(Port, TargetPort, Mode) ->
    Parent = self(),
    Counters = atomics:new(2, []),
    Pid = spawn(fun() ->
                        case gen_tcp:listen(Port, [binary, {active, false}, {reuseaddr, true},
                                                   {ip, {127, 0, 0, 1}}, {backlog, 1024}]) of
                            {ok, Listen} ->
                                {ok, Actual} = inet:port(Listen),
                                Parent ! {self(), {ok, Actual}},
                                gate_accept(Listen, TargetPort, Mode, Counters);
                            {error, Reason} ->
                                Parent ! {self(), {error, Reason}}
                        end
                end),
    receive
        {Pid, {ok, Actual}} -> #{pid => Pid, port => Actual, counters => Counters};
        {Pid, {error, Reason}} -> error({gate_listen_failed, Port, Reason})
    after 5000 ->
            exit(Pid, kill),
            error(gate_start_timeout)
    end.

gate_stop(#{pid := Pid}) ->
    MRef = monitor(process, Pid),
    exit(Pid, kill),
    receive {'DOWN', MRef, _, _, _} -> ok end.

gate_counts(#{counters := Counters}) ->
    #{responses => atomics:get(Counters, 1), cuts => atomics:get(Counters, 2)}.

gate_accept(Listen, TargetPort, Mode, Counters) ->
    case gen_tcp:accept(Listen) of
        {ok, Client} ->
            Relay = spawn_link(fun() ->
                                       receive {go, Socket} ->
                                               relay_start(Socket, TargetPort, Mode, Counters)
                                       end
                               end),
            case gen_tcp:controlling_process(Client, Relay) of
                ok -> Relay ! {go, Client};
                {error, _} -> gen_tcp:close(Client)
            end,
            gate_accept(Listen, TargetPort, Mode, Counters);
        {error, _} ->
            ok
    end.

relay_start(Client, TargetPort, Mode, Counters) ->
    case gen_tcp:connect({127, 0, 0, 1}, TargetPort, [binary, {active, once}, {nodelay, true}],
                         5000) of
        {ok, Target} ->
            ok = inet:setopts(Client, [{active, once}, {nodelay, true}]),
            relay(Client, Target, Mode, Counters, false);
        {error, _} ->
            gen_tcp:close(Client)
    end.

%% Awaiting: a request went to the server and its response has not started yet.
relay(Client, Target, Mode, Counters, Awaiting) ->
    Sockets = {Client, Target, Mode, Counters},
    receive
        {tcp, Client, Data} ->
            pass(Client, Target, Data, Sockets, true);
        {tcp, Target, Data} when Awaiting ->
            Nth = atomics:add_get(Counters, 1, 1),
            case Mode of
                {cut_every, K} when Nth rem K =:= 0 ->
                    atomics:add(Counters, 2, 1),
                    _ = gen_tcp:send(Client, binary:part(Data, 0, min(12, byte_size(Data)))),
                    close(Client, Target);
                _ ->
                    pass(Target, Client, Data, Sockets, false)
            end;
        {tcp, Target, Data} ->
            pass(Target, Client, Data, Sockets, Awaiting);
        {tcp_closed, _} ->
            close(Client, Target);
        {tcp_error, _, _} ->
            close(Client, Target)
    end.

pass(From, To, Data, {Client, Target, Mode, Counters}, Awaiting) ->
    case gen_tcp:send(To, Data) of
        ok ->
            _ = inet:setopts(From, [{active, once}]),
            relay(Client, Target, Mode, Counters, Awaiting);
        {error, _} ->
            close(Client, Target)
    end.

close(A, B) ->
    gen_tcp:close(A),
    gen_tcp:close(B).

%%% Logs

capture_logs() ->
    #{level := Primary} = logger:get_primary_config(),
    Default = case logger:get_handler_config(default) of
                  {ok, #{level := Level}} -> Level;
                  {error, _} -> undefined
              end,
    _ = ets:new(?LOGS, [named_table, public, ordered_set]),
    ok = logger:add_handler(?MODULE, ?MODULE, #{level => all}),
    %% The stop reports (final stats) are info; nothing goes to the console.
    ok = logger:set_primary_config(level, info),
    _ = logger:set_handler_config(default, level, none),
    {Primary, Default}.

restore_logs({Primary, Default}) ->
    _ = logger:remove_handler(?MODULE),
    ok = logger:set_primary_config(level, Primary),
    _ = case Default of
            undefined -> ok;
            _ -> logger:set_handler_config(default, level, Default)
        end,
    ets:delete(?LOGS),
    ok.

-spec log(logger:log_event(), logger:handler_config()) -> ok.
log(#{level := Level, msg := {report, Report = #{what := What}}}, _Config) ->
    _ = catch ets:insert(?LOGS, {erlang:unique_integer([monotonic]), What, Level, Report}),
    ok;
log(_Event, _Config) ->
    ok.

captured(What) ->
    [Report || {_, W, _, Report} <- ets:tab2list(?LOGS), W =:= What].

%%% The table

render(Rows, Seconds) ->
    [<<"| scenario | what was done | accepted | delivered | unique received | duplicates "
       "| failed | dropped | lost | verdict |\n"
       "|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n">>,
     [render_row(Row) || Row <- Rows],
     <<"\n">>,
     [["- ", Name, ": ", [[Note, "; "] || Note <- Notes],
       fmt("~.1f s~n", [maps:get(seconds, Row, 0.0)])]
      || Row = #{name := Name, notes := Notes} <- Rows],
     fmt("~nAll scenarios in ~.1f s on ~ts, OTP ~ts, ~b cores.~n",
         [Seconds, os_name(), erlang:system_info(otp_release),
          erlang:system_info(logical_processors)])].

render_row(Row = #{name := Name, done := Done, counts := Counts}) ->
    Cells = case Counts of
                none -> lists:duplicate(7, "-");
                #{} -> [cell(maps:get(K, Counts))
                        || K <- [accepted, delivered, unique, duplicates, failed, dropped, lost]]
            end,
    ["| ", Name, " | ", Done, " | ", lists:join(" | ", Cells), " | ", verdict(Row), " |\n"].

cell(N) when is_integer(N) -> thousands(N).

thousands(N) when is_integer(N), N < 0 -> [$- | thousands(-N)];
thousands(N) when is_integer(N) ->
    Digits = integer_to_list(N),
    Groups = group3(lists:reverse(Digits)),
    lists:reverse(lists:flatten(lists:join($,, Groups)));
thousands(Other) ->
    fmt("~p", [Other]).

group3([A, B, C | Rest]) -> [[A, B, C] | group3(Rest)];
group3([]) -> [];
group3(Rest) -> [Rest].

mib(Bytes) ->
    fmt("~.1f MiB", [Bytes / 1048576]).

fmt(Format, Args) ->
    lists:flatten(io_lib:format(Format, Args)).

os_name() ->
    case file:read_file("/etc/os-release") of
        {ok, Text} ->
            case re:run(Text, "PRETTY_NAME=\"([^\"]*)\"", [{capture, all_but_first, binary}]) of
                {match, [Name]} -> Name;
                nomatch -> <<"Linux">>
            end;
        {error, _} ->
            <<"unknown OS">>
    end.
