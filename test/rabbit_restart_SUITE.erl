%% Issue 11.2: confirmed rabbit events survive a broker restart. Each case starts a
%% RabbitMQ node of its own (rabbit_node: own name, ports and data; never the shared
%% broker on 5672), binds a durable classic queue to the module's durable chat
%% exchange, and pushes 50,000 chat events through the hooks with publisher confirms.
%% Mid-stream the broker is restarted (stop_app/start_app) or its VM killed (kill -9)
%% and booted again. Every event must then be in the queue, read back after the run:
%% duplicates are allowed (an unconfirmed publish is sent again) and counted.
%%
%% Transient messages (what the backend published before `persistent') do not survive
%% a restart even in a durable queue: both cases fail without it.
%%
%% Heavier than rabbit_SUITE (a node boots per case, 50,000 persistent messages):
%% about two minutes in all on a busy 2-core machine, most of it RabbitMQ booting.
-module(rabbit_restart_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(HT, <<"localhost">>).
-define(POOL_LABELS, #{host_type => global, pool_tag => event_pusher}).
-define(DELIVERY_LABELS, #{host_type => ?HT}).
-define(EVENTS, 50000).
-define(QUEUE, <<"restart_events">>).

all() ->
    [confirmed_events_survive_stop_app_and_start_app,
     confirmed_events_survive_kill_9_and_reboot].

suite() ->
    [{timetrap, {minutes, 5}}].

init_per_suite(Config) ->
    %% Builds the probe once (cargo) before any timed case.
    {ok, _} = amqp_probe:executable(),
    Config.

end_per_suite(_Config) ->
    ok.

%% The node boots in the case itself: a node that cannot boot fails the case (from
%% init_per_testcase it would only be skipped).
init_per_testcase(Case, Config) ->
    Name = "ept_" ++ atom_to_list(Case) ++ "_" ++ os:getpid(),
    [{rabbit_node, rabbit_node:new(Name, filename:join(?config(priv_dir, Config), "rabbit"))}
     | Config].

end_per_testcase(_Case, Config) ->
    Stopped = test_wait:cleanup(fun mongoose_host:stop/0, 30000),
    ok = rabbit_node:stop(?config(rabbit_node, Config)),
    Stopped.

%%% Cases

confirmed_events_survive_stop_app_and_start_app(Config) ->
    restart_mid_stream(Config, fun(Node) ->
                                       rabbit_node:stop_app(Node),
                                       rabbit_node:start_app(Node)
                               end).

confirmed_events_survive_kill_9_and_reboot(Config) ->
    restart_mid_stream(Config, fun(Node) ->
                                       rabbit_node:kill(Node),
                                       rabbit_node:boot(Node)
                               end).

restart_mid_stream(Config, Restart) ->
    Node = ?config(rabbit_node, Config),
    Booting = erlang:monotonic_time(millisecond),
    ok = rabbit_node:boot(Node),
    ct:pal("node ~s on port ~p booted in ~p ms",
           [rabbit_node:name(Node), rabbit_node:port(Node),
            erlang:monotonic_time(millisecond) - Booting]),
    Uri = rabbit_node:uri(Node),
    ok = mongoose_host:start_toml(?config(priv_dir, Config), toml(rabbit_node:port(Node))),
    %% The module declared its (durable) exchanges; the queue is the test's.
    ok = amqp_probe:declare_queue(?QUEUE, [{<<"chat_msg">>, <<"#">>}], #{uri => Uri}),
    Self = self(),
    Pusher = spawn_link(fun() ->
                                [hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/r">>,
                                                  <<"bob@localhost">>, integer_to_binary(I))
                                 || I <- lists:seq(1, ?EVENTS)],
                                Self ! {self(), pushed}
                        end),
    ok = test_wait:until(fun() -> maps:get(delivered, stats()) >= ?EVENTS div 4 end, 60000,
                         fun stats/0),
    AtFault = stats(),
    T0 = erlang:monotonic_time(millisecond),
    Restart(Node),
    RestartMs = erlang:monotonic_time(millisecond) - T0,
    ct:pal("restarted in ~p ms; at the fault: ~p", [RestartMs, AtFault]),
    %% The fault came while events were still on their way.
    ?assert(maps:get(delivered, AtFault) < ?EVENTS),
    receive {Pusher, pushed} -> ok after 120000 -> ct:fail(pusher_stuck) end,
    Stats = wait_stats(#{accepted => ?EVENTS, delivered => ?EVENTS, queued => 0,
                         in_flight => 0}, 180000),
    ?assertMatch(#{failed := 0, dropped := 0}, Stats),
    %% The connection was lost and opened again.
    Connections = mongoose_instrument:get_events(wpool_rabbit_connections, ?POOL_LABELS),
    ?assert(length([E || E = #{closed := 1} <- Connections]) >= 1),
    ?assert(length([E || E = #{opened := 1} <- Connections]) >= 2),
    %% Everything confirmed is in the durable queue: the broker's count, then every
    %% message read back.
    InQueue = maps:get(?QUEUE, rabbit_node:queue_messages(Node)),
    ct:pal("in the queue after the run: ~p messages", [InQueue]),
    ?assert(InQueue >= ?EVENTS),
    Probe = amqp_probe:start([], #{uri => Uri, queue => ?QUEUE}),
    {ok, Msgs} = amqp_probe:wait_for_messages(Probe, InQueue, 120000),
    Bodies = bodies(Msgs),
    Unique = lists:usort(Bodies),
    ct:pal("~p events: ~p messages in the queue, ~p unique, ~p duplicates; ~p retried",
           [?EVENTS, length(Bodies), length(Unique), length(Bodies) - length(Unique),
            maps:get(retried, Stats)]),
    ?assertEqual(lists:seq(1, ?EVENTS), Unique),
    amqp_probe:stop(Probe).

%%% Helpers

%% MongooseIM's configuration with publisher confirms and a durable chat exchange
%% (whose messages are then persistent by default); the queue holds every event
%% while the broker is down, and reconnecting is quicker than by default so that the
%% case is short. Retry settings are the defaults.
toml(Port) ->
    [<<"[general]\n  hosts = [\"localhost\"]\n  default_server_domain = \"localhost\"\n\n">>,
     <<"[outgoing_pools.rabbit.event_pusher]\n  scope = \"global\"\n  workers = 4\n">>,
     <<"  connection.host = \"127.0.0.1\"\n">>,
     <<"  connection.port = ">>, integer_to_binary(Port), <<"\n">>,
     <<"  connection.confirms_enabled = true\n\n">>,
     <<"[modules.mod_event_pusher.rabbit]\n">>,
     <<"  chat_msg_exchange.durable = true\n">>,
     <<"  queue.max_events = ">>, integer_to_binary(?EVENTS), <<"\n">>,
     <<"  reconnect = {base_delay_ms = 100, max_delay_ms = 1000}\n">>,
     <<"  drain_timeout_ms = 10000\n">>].

stats() ->
    mod_event_pusher_rabbit:stats(?HT).

wait_stats(Expected, TimeoutMs) ->
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    wait_stats_until(Expected, Deadline).

wait_stats_until(Expected, Deadline) ->
    Stats = stats(),
    case is_map(Stats) andalso maps:with(maps:keys(Expected), Stats) =:= Expected of
        true -> Stats;
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> ct:fail({stats_mismatch, Expected, Stats});
                false -> timer:sleep(50), wait_stats_until(Expected, Deadline)
            end
    end.

bodies(Msgs) ->
    [binary_to_integer(maps:get(<<"message">>, jiffy:decode(P, [return_maps])))
     || #{payload := P} <- Msgs].
