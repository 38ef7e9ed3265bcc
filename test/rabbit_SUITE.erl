%% The rabbit backend end to end: TOML config -> stand-in host -> hooks -> Rust ->
%% the real RabbitMQ on 127.0.0.1:5672. Asserts what arrived at the broker, read by
%% amqp_probe (a consumer with its own queue bound to the exchanges under test).
%% Every case declares exchanges with its own names, deleted at the end.
%% Fault cases reach the broker through test_tcp_proxy.
-module(rabbit_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("exml.hrl").
-include("jid.hrl").

-define(HT, <<"localhost">>).
-define(BROKER_PORT, 5672).
%% The suite's pool is global: MongooseIM registered its metrics for `global'.
-define(POOL_LABELS, #{host_type => global, pool_tag => event_pusher}).
-define(DELIVERY_LABELS, #{host_type => ?HT}).
-define(DEFAULT_EXCHANGES, [<<"presence">>, <<"chat_msg">>, <<"groupchat_msg">>]).
-define(PROXY_CASES, [connection_cut_mid_stream_loses_nothing,
                      stop_delivers_pending_events,
                      unreachable_broker_at_start_events_wait_and_arrive,
                      broker_unreachable_after_start_events_wait,
                      queue_overflow_is_counted_exactly,
                      stop_while_unreachable_gives_up_and_can_restart]).

all() ->
    [exchanges_are_declared_with_the_configured_types,
     mongooseim_default_config_works_unchanged,
     presence_online_and_offline,
     chat_sent_and_received,
     groupchat_sent_and_received,
     custom_exchange_names_and_topics,
     payload_bytes_are_mongooseims_objects,
     departure_bodiless_and_empty_body_messages_are_skipped,
     large_unicode_body_arrives_intact,
     routing_keys_over_255_bytes_fail_alone_unsent,
     messages_over_max_message_bytes_fail_alone_unsent,
     durable_exchanges_publish_persistent_messages_by_default,
     conflicting_exchange_type_fails_the_start,
     conflicting_exchange_durability_fails_the_start,
     unreachable_broker_does_not_fail_the_start,
     unreachable_broker_at_start_events_wait_and_arrive,
     wrong_credentials_fail_the_start,
     virtual_host_is_used,
     instrumentation_events_are_emitted,
     connection_close_on_stop_is_reported,
     confirms_on_and_off,
     stop_delivers_pending_events,
     connection_cut_mid_stream_loses_nothing,
     broker_unreachable_after_start_events_wait,
     queue_overflow_is_counted_exactly,
     stop_while_unreachable_gives_up_and_can_restart].

suite() ->
    [{timetrap, {seconds, 60}}].

init_per_suite(Config) ->
    %% Builds the probe once (cargo) before any timed case. No broker is a failure, not
    %% a skip: the suite would pass without checking anything (make test starts it).
    {ok, _} = amqp_probe:executable(),
    case gen_tcp:connect({127, 0, 0, 1}, ?BROKER_PORT, [], 2000) of
        {ok, Sock} -> gen_tcp:close(Sock);
        {error, Reason} -> ct:fail({no_rabbitmq_on_5672, Reason})
    end,
    [{broker_found, broker_contents()} | Config].

%% The shared broker is left as the suite found it: no exchange, queue or vhost more.
end_per_suite(Config) ->
    ?assertEqual(?config(broker_found, Config), broker_contents()).

broker_contents() ->
    Names = fun(What) ->
                    lists:sort([L || L <- binary:split(rabbitmqctl([What, "--no-table-headers",
                                                                    "name"]),
                                                       <<"\n">>, [global]),
                                     L =/= <<>>])
            end,
    #{exchanges => Names("list_exchanges"), queues => Names("list_queues"),
      vhosts => Names("list_vhosts")}.

init_per_testcase(Case, Config) ->
    Suffix = iolist_to_binary([atom_to_list(Case), "_",
                               integer_to_list(os:system_time(millisecond) rem 100000000), "_",
                               integer_to_list(erlang:unique_integer([positive]))]),
    Exchanges = #{presence => <<"presence_", Suffix/binary>>,
                  chat => <<"chat_msg_", Suffix/binary>>,
                  groupchat => <<"groupchat_msg_", Suffix/binary>>},
    Proxy = case lists:member(Case, ?PROXY_CASES) of
                true -> [{proxy, test_tcp_proxy:start(?BROKER_PORT)}];
                false -> []
            end,
    %% MongooseIM's default exchange names are shared: a case that uses them deletes,
    %% at its end, only those it found missing (and so created).
    Defaults = case Case of
                   mongooseim_default_config_works_unchanged ->
                       Listed = list_exchanges(),
                       [{created_default_exchanges,
                         [E || E <- ?DEFAULT_EXCHANGES, not maps:is_key(E, Listed)]}];
                   _ ->
                       []
               end,
    Defaults ++ Proxy ++ [{exchanges, Exchanges} | Config].

end_per_testcase(_Case, Config) ->
    %% Cleans up even when the stop fails or hangs, then fails the case if it did.
    Stopped = test_wait:cleanup(fun mongoose_host:stop/0, 10000),
    test_logs:stop(),
    case ?config(proxy, Config) of
        {Proxy, _Port} -> test_tcp_proxy:stop(Proxy);
        undefined -> ok
    end,
    [amqp_probe:delete(Name) || Name <- maps:values(?config(exchanges, Config))],
    [ok = amqp_probe:delete(Name) || Name <- proplists:get_value(created_default_exchanges,
                                                                 Config, [])],
    Stopped.

%%% Cases

%% Types per exchange (and durable on one), checked with rabbitmqctl and by using them:
%% a fanout takes any key, a direct exchange only the exact one.
exchanges_are_declared_with_the_configured_types(Config) ->
    #{presence := P, chat := C, groupchat := G} = ?config(exchanges, Config),
    start(Config, #{types => #{presence => <<"fanout">>, chat => <<"direct">>,
                               groupchat => <<"topic">>},
                    durable => #{groupchat => true}}),
    Listed = list_exchanges(),
    ?assertEqual({<<"fanout">>, <<"false">>}, maps:get(P, Listed)),
    ?assertEqual({<<"direct">>, <<"false">>}, maps:get(C, Listed)),
    ?assertEqual({<<"topic">>, <<"true">>}, maps:get(G, Listed)),
    Probe = amqp_probe:start([{P, <<"anything">>}, {C, <<"alice@localhost.chat_msg_sent">>},
                              {G, <<"#">>}]),
    presence(<<"alice@localhost/a">>, online),
    send(<<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>, <<"direct">>),
    send(<<"chat">>, <<"carol@localhost/a">>, <<"bob@localhost">>, <<"other key">>),
    send(<<"groupchat">>, <<"alice@localhost/a">>, <<"room@muc.localhost">>, <<"topic">>),
    Msgs = wait_messages(Probe, 3),
    ?assertEqual(lists:sort([{P, <<"alice@localhost">>},
                             {C, <<"alice@localhost.chat_msg_sent">>},
                             {G, <<"alice@localhost.groupchat_msg_sent">>}]),
                 lists:sort([{E, K} || #{exchange := E, routing_key := K} <- Msgs])),
    wait_stats(#{delivered => 4, failed => 0}).

%% An existing MongooseIM rabbit configuration: empty module section, pool with only
%% MongooseIM's keys. The exchanges are MongooseIM's defaults (shared names, so the
%% probe binds only to this case's user).
mongooseim_default_config_works_unchanged(Config) ->
    User = <<"dflt", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
    Bare = <<User/binary, "@localhost">>,
    Toml = [<<"[general]\n  hosts = [\"localhost\"]\n  default_server_domain = \"localhost\"\n\n">>,
            <<"[outgoing_pools.rabbit.event_pusher]\n  scope = \"global\"\n  workers = 5\n">>,
            <<"  connection.host = \"127.0.0.1\"\n  connection.port = 5672\n">>,
            <<"  connection.username = \"guest\"\n  connection.password = \"guest\"\n">>,
            <<"  connection.confirms_enabled = false\n  connection.max_worker_queue_len = 100\n\n">>,
            <<"[modules.mod_event_pusher.rabbit]\n">>],
    ok = mongoose_host:start_toml(?config(priv_dir, Config), Toml),
    Listed = list_exchanges(),
    [?assertMatch({<<"topic">>, _}, maps:get(Name, Listed))
     || Name <- [<<"presence">>, <<"chat_msg">>, <<"groupchat_msg">>]],
    Probe = amqp_probe:start([{<<"presence">>, Bare},
                              {<<"chat_msg">>, <<Bare/binary, ".*">>},
                              {<<"groupchat_msg">>, <<Bare/binary, ".*">>}]),
    presence(<<Bare/binary, "/r">>, online),
    send(<<"chat">>, <<Bare/binary, "/r">>, <<"x@localhost">>, <<"pm">>),
    deliver(<<"groupchat">>, <<"room@muc.localhost/nick">>, <<Bare/binary, "/r">>, <<"muc">>),
    Msgs = wait_messages(Probe, 3),
    ?assertEqual(lists:sort([{<<"presence">>, Bare},
                             {<<"chat_msg">>, <<Bare/binary, ".chat_msg_sent">>},
                             {<<"groupchat_msg">>, <<Bare/binary, ".groupchat_msg_recv">>}]),
                 lists:sort([{E, K} || #{exchange := E, routing_key := K} <- Msgs])).

%% Routing key = lowercased bare JID; user_id = the full JID with user and server
%% lowercased, the resource as is (MongooseIM's jid:to_lower keeps the resource's case).
presence_online_and_offline(Config) ->
    #{presence := P} = ?config(exchanges, Config),
    start(Config, #{}),
    Probe = amqp_probe:start([{P, <<"#">>}]),
    presence(<<"Alice@LocalHost/Phone">>, online),
    presence(<<"bob@localhost/pc">>, online),
    presence(<<"Alice@LocalHost/Phone">>, offline),
    Msgs = wait_messages(Probe, 3),
    ?assertEqual([{P, <<"alice@localhost">>,
                   #{<<"user_id">> => <<"alice@localhost/Phone">>, <<"present">> => true}},
                  {P, <<"bob@localhost">>,
                   #{<<"user_id">> => <<"bob@localhost/pc">>, <<"present">> => true}},
                  {P, <<"alice@localhost">>,
                   #{<<"user_id">> => <<"alice@localhost/Phone">>, <<"present">> => false}}],
                 %% One connection and channel per instance, but several publishers: sort.
                 sort_by_json(decoded(Msgs), [<<"present">>])),
    wait_stats(#{accepted => 3, delivered => 3, failed => 0, dropped => 0}).

%% Direction in (user_send_message): the sender's bare JID + sent_topic; direction out
%% (filter_local_packet): the recipient's bare JID + recv_topic.
chat_sent_and_received(Config) ->
    #{chat := C, groupchat := G} = ?config(exchanges, Config),
    start(Config, #{}),
    Probe = amqp_probe:start([{C, <<"#">>}, {G, <<"#">>}]),
    send(<<"chat">>, <<"Alice@localhost/Phone">>, <<"Bob@Localhost/Laptop">>, <<"hi Bob">>),
    deliver(<<"chat">>, <<"Carol@localhost/x">>, <<"Bob@localhost/Laptop">>, <<"hi from Carol">>),
    Msgs = wait_messages(Probe, 2),
    ?assertEqual(
       lists:sort([{C, <<"alice@localhost.chat_msg_sent">>,
                    #{<<"from_user_id">> => <<"alice@localhost/Phone">>,
                      <<"to_user_id">> => <<"bob@localhost/Laptop">>,
                      <<"message">> => <<"hi Bob">>}},
                   {C, <<"bob@localhost.chat_msg_recv">>,
                    #{<<"from_user_id">> => <<"carol@localhost/x">>,
                      <<"to_user_id">> => <<"bob@localhost/Laptop">>,
                      <<"message">> => <<"hi from Carol">>}}]),
       lists:sort(decoded(Msgs))).

groupchat_sent_and_received(Config) ->
    #{chat := C, groupchat := G} = ?config(exchanges, Config),
    start(Config, #{}),
    Probe = amqp_probe:start([{C, <<"#">>}, {G, <<"#">>}]),
    send(<<"groupchat">>, <<"alice@localhost/phone">>, <<"Room@muc.localhost">>, <<"to the room">>),
    deliver(<<"groupchat">>, <<"room@muc.localhost/Alice">>, <<"bob@localhost/pc">>,
            <<"from the room">>),
    Msgs = wait_messages(Probe, 2),
    ?assertEqual(
       lists:sort([{G, <<"alice@localhost.groupchat_msg_sent">>,
                    #{<<"from_user_id">> => <<"alice@localhost/phone">>,
                      <<"to_user_id">> => <<"room@muc.localhost">>,
                      <<"message">> => <<"to the room">>}},
                   {G, <<"bob@localhost.groupchat_msg_recv">>,
                    #{<<"from_user_id">> => <<"room@muc.localhost/Alice">>,
                      <<"to_user_id">> => <<"bob@localhost/pc">>,
                      <<"message">> => <<"from the room">>}}]),
       lists:sort(decoded(Msgs))),
    %% Only chat and groupchat messages are published: of the three, only the marker
    %% is accepted (the counter moves in the hook call), so nothing else can arrive.
    #{accepted := Before} = stats(),
    send(<<"headline">>, <<"alice@localhost/phone">>, <<"bob@localhost">>, <<"news">>),
    send(<<"normal">>, <<"alice@localhost/phone">>, <<"bob@localhost">>, <<"plain">>),
    send(<<"chat">>, <<"alice@localhost/phone">>, <<"bob@localhost">>, <<"marker">>),
    ?assertMatch(#{accepted := After} when After =:= Before + 1, stats()),
    {ok, All} = amqp_probe:wait_for_messages(Probe, 3, 5000),
    wait_stats(#{delivered => Before + 1, queued => 0, in_flight => 0}),
    ?assertEqual([<<"marker">>], [maps:get(<<"message">>, J)
                                  || {_, _, J} <- decoded(amqp_probe:messages(Probe) -- Msgs)]),
    ?assertEqual(3, length(All)).

custom_exchange_names_and_topics(Config) ->
    #{presence := P, chat := C, groupchat := G} = ?config(exchanges, Config),
    start(Config, #{topics => #{chat => {<<"pm.out">>, <<"pm.in">>},
                                groupchat => {<<"muc_up">>, <<"muc_down">>}}}),
    Probe = amqp_probe:start([{P, <<"#">>}, {C, <<"#">>}, {G, <<"#">>}]),
    presence(<<"alice@localhost/r">>, offline),
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"1">>),
    deliver(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"2">>),
    send(<<"groupchat">>, <<"alice@localhost/r">>, <<"room@muc.localhost">>, <<"3">>),
    deliver(<<"groupchat">>, <<"room@muc.localhost/a">>, <<"bob@localhost/r">>, <<"4">>),
    Msgs = wait_messages(Probe, 5),
    ?assertEqual(lists:sort([{P, <<"alice@localhost">>},
                             {C, <<"alice@localhost.pm.out">>},
                             {C, <<"bob@localhost.pm.in">>},
                             {G, <<"alice@localhost.muc_up">>},
                             {G, <<"bob@localhost.muc_down">>}]),
                 lists:sort([{E, K} || #{exchange := E, routing_key := K} <- Msgs])).

%% The one case that asserts the payload bytes (the others compare decoded JSON):
%% MongooseIM 6.4's objects, keys sorted (6.4's own order is its VM's: see the README),
%% and the message escaped byte for byte as jiffy, 6.4's encoder, escapes it.
payload_bytes_are_mongooseims_objects(Config) ->
    #{presence := P, chat := C} = ?config(exchanges, Config),
    start(Config, #{}),
    Probe = amqp_probe:start([{P, <<"#">>}, {C, <<"#">>}]),
    presence(<<"alice@localhost/r">>, online),
    Text = <<"q\"b\\ n\n t\t r\r del", 127, " / </a> \x{2028} é 😀"/utf8>>,
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, Text),
    Msgs = wait_messages(Probe, 2),
    [Presence] = [Pl || #{exchange := E, payload := Pl} <- Msgs, E =:= P],
    [Chat] = [Pl || #{exchange := E, payload := Pl} <- Msgs, E =:= C],
    ?assertEqual(<<"{\"present\":true,\"user_id\":\"alice@localhost/r\"}">>, Presence),
    ?assertEqual(<<"{\"from_user_id\":\"alice@localhost/r\",\"message\":",
                   (iolist_to_binary(jiffy:encode(Text)))/binary,
                   ",\"to_user_id\":\"bob@localhost\"}">>, Chat),
    ?assertEqual(#{<<"message">> => Text, <<"from_user_id">> => <<"alice@localhost/r">>,
                   <<"to_user_id">> => <<"bob@localhost">>},
                 jiffy:decode(Chat, [return_maps])).

%% A deliberate departure from MongooseIM 6.4 (README, compatibility notes): 6.4
%% crashes on a message without <body> and publishes "message":"" for an empty
%% <body/>; we skip both (counted as skipped). Only the marker is published.
departure_bodiless_and_empty_body_messages_are_skipped(Config) ->
    #{chat := C, groupchat := G} = ?config(exchanges, Config),
    start(Config, #{}),
    Probe = amqp_probe:start([{C, <<"#">>}, {G, <<"#">>}]),
    hook_driver:send_element(?HT, hook_driver:message(<<"alice@localhost/r">>, <<"bob@localhost">>,
                                                      <<"chat">>, [#xmlel{name = <<"composing">>}])),
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<>>),
    deliver(<<"groupchat">>, <<"room@muc.localhost/a">>, <<"bob@localhost/r">>, <<>>),
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"marker">>),
    [{C, _, #{<<"message">> := <<"marker">>}}] = decoded(wait_messages(Probe, 1)),
    %% Only the marker was accepted and it is delivered: nothing else can arrive.
    wait_stats(#{accepted => 1, delivered => 1, queued => 0, in_flight => 0}),
    ?assertEqual(1, amqp_probe:count(Probe)),
    Skipped = mongoose_instrument:get_events(mod_event_pusher_rabbit_delivery, ?DELIVERY_LABELS),
    ?assertEqual(3, lists:sum([maps:get(skipped, E, 0) || E <- Skipped])).

%% Issue 11.1: a bare JID over 255 bytes (legal in XMPP) makes a routing key AMQP
%% cannot carry; sent, the broker closed the whole connection (FRAME_ERROR) and every
%% publish in flight failed with it, again at each retry. 20 such events (chat and
%% presence) among 5,000: they fail alone, unsent, with the reason; every other event
%% arrives once; the connection is never lost.
routing_keys_over_255_bytes_fail_alone_unsent(Config) ->
    #{presence := P, chat := C} = ?config(exchanges, Config),
    test_logs:capture(),
    start(Config, #{confirms => true}),
    Probe = amqp_probe:start([{P, <<"#">>}, {C, <<"#">>}]),
    wait_events(wpool_rabbit_connections, 1),
    N = 5000,
    Long = 20,
    LongJid = fun(I) -> <<(binary:copy(<<"x">>, 300))/binary, (integer_to_binary(I))/binary,
                          "@localhost/r">> end,
    lists:foreach(
      fun(I) ->
              send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, integer_to_binary(I)),
              case {I rem (N div Long), I div (N div Long) rem 2} of
                  {0, 0} -> send(<<"chat">>, LongJid(I), <<"bob@localhost">>, <<"x">>);
                  {0, 1} -> presence(LongJid(I), online);
                  _ -> ok
              end
      end, lists:seq(1, N)),
    Stats = wait_stats(#{accepted => N + Long, delivered => N, failed => Long, dropped => 0,
                         queued => 0, in_flight => 0}, 1500),
    ct:pal("stats: ~p", [Stats]),
    ?assertMatch(#{retried := 0}, Stats),
    Msgs = wait_unique(Probe, N, 10000),
    ?assertEqual([C], lists:usort([E || #{exchange := E} <- Msgs])),
    ?assertEqual(lists:seq(1, N), lists:sort(bodies(Msgs))),
    %% One connection, never lost.
    ?assertEqual([#{active => 1, opened => 1}],
                 mongoose_instrument:get_events(wpool_rabbit_connections, ?POOL_LABELS)),
    Warning = test_logs:wait(event_pusher_delivery_failed, 10000),
    ct:pal("failure warning: ~p", [Warning]),
    ?assertMatch(#{level := warning,
                   example := #{reason := {routing_key_too_long, KeyBytes},
                                attempts := 1}}
                     when KeyBytes > 255, Warning),
    wait_until(fun() -> delivery_sum(failed) =:= Long end).

%% A message over max_message_bytes (the broker's max_message_size) would make the
%% broker close the channel, failing every publish in flight: it fails alone, unsent.
messages_over_max_message_bytes_fail_alone_unsent(Config) ->
    #{chat := C} = ?config(exchanges, Config),
    test_logs:capture(),
    start(Config, #{confirms => true, max_message_bytes => 2000}),
    Probe = amqp_probe:start([{C, <<"#">>}]),
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"1">>),
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, binary:copy(<<"b">>, 2000)),
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"2">>),
    wait_stats(#{accepted => 3, delivered => 2, failed => 1, queued => 0, in_flight => 0}),
    ?assertEqual([1, 2], lists:sort(bodies(wait_messages(Probe, 2)))),
    ?assertMatch(#{example := #{reason := {message_too_large, Bytes}}} when Bytes > 2000,
                 test_logs:wait(event_pusher_delivery_failed, 10000)),
    ?assertEqual([#{active => 1, opened => 1}],
                 mongoose_instrument:get_events(wpool_rabbit_connections, ?POOL_LABELS)).

%% Issue 11.2: messages to a durable exchange are persistent unless `persistent =
%% false' says otherwise (transient ones do not survive a broker restart, even in a
%% durable queue). Judged by the broker: each durable queue's count of persistent
%% messages. (rabbit_restart_SUITE restarts a broker to show what this is for.)
durable_exchanges_publish_persistent_messages_by_default(Config) ->
    #{presence := P, chat := C, groupchat := G} = ?config(exchanges, Config),
    start(Config, #{confirms => true, durable => #{chat => true, groupchat => true},
                    persistent => #{groupchat => false}}),
    Queues = #{P => <<"q_", P/binary>>, C => <<"q_", C/binary>>, G => <<"q_", G/binary>>},
    try
        [ok = amqp_probe:declare_queue(Q, [{E, <<"#">>}], #{}) || {E, Q} <- maps:to_list(Queues)],
        presence(<<"alice@localhost/r">>, online),
        send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"1">>),
        send(<<"groupchat">>, <<"alice@localhost/r">>, <<"room@muc.localhost">>, <<"2">>),
        %% Confirmed: in the queues.
        wait_stats(#{delivered => 3, failed => 0}),
        Listed = list_queues(),
        ?assertEqual(#{P => {1, 0}, C => {1, 1}, G => {1, 0}},
                     maps:map(fun(_E, Q) -> maps:get(Q, Listed) end, Queues))
    after
        [amqp_probe:delete_queue(Q, #{}) || Q <- maps:values(Queues)]
    end.

large_unicode_body_arrives_intact(Config) ->
    #{chat := C} = ?config(exchanges, Config),
    start(Config, #{}),
    Probe = amqp_probe:start([{C, <<"#">>}]),
    Unit = <<"zażółć gęślą jaźń ☃ 😀 \"quoted\" \\ \n\t\x{1}"/utf8>>,
    Body = binary:part(binary:copy(Unit, 65536 div byte_size(Unit) + 1), 0,
                       %% 64 KiB, cut on a character boundary
                       byte_size(Unit) * (65536 div byte_size(Unit))),
    ?assert(byte_size(Body) > 60000),
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, Body),
    [#{payload := Payload}] = wait_messages(Probe, 1),
    ?assertEqual(Body, maps:get(<<"message">>, jiffy:decode(Payload, [return_maps]))).

%% The chat exchange exists with another type: start fails, naming the exchange; once
%% the conflict is gone, the module starts (nothing left behind by the failed start).
conflicting_exchange_type_fails_the_start(Config) ->
    #{chat := C} = ?config(exchanges, Config),
    ok = amqp_probe:declare(C, <<"direct">>),
    Opts = options(Config, toml(Config, #{})),
    log_guard:expect(#{what => module_start_failed, module => mod_event_pusher_rabbit}),
    try mongoose_host:start(Opts) of
        _ -> ct:fail(started_despite_conflict)
    catch error:Reason ->
            Text = iolist_to_binary(io_lib:format("~p", [Reason])),
            ct:pal("start failed as expected: ~ts", [Text]),
            ?assertNotEqual(nomatch, binary:match(Text, C)),
            ?assertNotEqual(nomatch, binary:match(string:lowercase(Text), <<"type">>))
    end,
    ok = mongoose_host:stop(),
    ok = amqp_probe:delete(C),
    start(Config, #{}),
    Probe = amqp_probe:start([{C, <<"#">>}]),
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"after the fix">>),
    [_] = wait_messages(Probe, 1).

%% Durability is part of an exchange's identity too: declaring an existing durable
%% exchange as non-durable is refused, and the start names the exchange.
conflicting_exchange_durability_fails_the_start(Config) ->
    #{groupchat := G} = ?config(exchanges, Config),
    ok = amqp_probe:declare(G, <<"topic">>, #{durable => true}),
    Text = start_error(Config, #{}),
    ?assertNotEqual(nomatch, binary:match(Text, G)),
    ?assertNotEqual(nomatch, binary:match(Text, <<"durable">>)).

%% Boot must not depend on the broker: nothing listens on the port, yet the module
%% starts, says it is disconnected and why (stats, a warning), and keeps trying.
unreachable_broker_does_not_fail_the_start(Config) ->
    test_logs:capture(),
    Port = closed_port(),
    start(Config, #{port => Port, connect_timeout_ms => 1000}),
    Stats = stats(),
    ct:pal("started without a broker: ~p", [Stats]),
    #{connection := disconnected, last_connection_error := Error,
      disconnected_since_ms := Since, connect_failures := Failures} = Stats,
    ?assertNotEqual(nomatch, binary:match(Error, <<"127.0.0.1:", (integer_to_binary(Port))/binary>>)),
    ?assertMatch({match, _}, re:run(Error, "refused", [caseless])),
    ?assert(is_integer(Since) andalso Failures >= 1),
    Warning = test_logs:wait(event_pusher_rabbit_connect_failed, 10000),
    ?assertMatch(#{level := warning, reason := Error, attempts := 1}, Warning),
    %% The reconnect loop runs with no event asking for it.
    wait_until(fun() -> maps:get(connect_failures, stats()) >= 3 end),
    ?assertMatch(#{connection := disconnected}, stats()).

%% Started while the broker is unreachable (the proxy refuses): events pushed
%% meanwhile wait in the queue and are published once it is reachable, which a
%% notice says; stats follow the connection.
unreachable_broker_at_start_events_wait_and_arrive(Config) ->
    #{presence := P, chat := C} = ?config(exchanges, Config),
    {Proxy, Port} = ?config(proxy, Config),
    test_logs:capture(),
    ok = test_tcp_proxy:set_mode(Proxy, refuse),
    start(Config, #{port => Port, confirms => true,
                     %% shorter than the outage: waiting for the broker does not use it
                     retry => #{deadline_ms => 300}}),
    Broker = <<"127.0.0.1:", (integer_to_binary(Port))/binary>>,
    #{connection := disconnected, last_connection_error := Error} = stats(),
    ?assertNotEqual(nomatch, binary:match(Error, Broker)),
    %% The first attempt's reason (the proxy closes the connection in various ways, so
    %% a later attempt may read differently).
    Warning = test_logs:wait(event_pusher_rabbit_connect_failed, 10000),
    ct:pal("start with the broker unreachable: ~p", [Warning]),
    ?assertMatch(#{attempts := 1, reason := <<"cannot connect to ", _/binary>>}, Warning),
    ?assertNotEqual(nomatch, binary:match(maps:get(reason, Warning), Broker)),
    %% The probe binds to the chat exchange: declared here as the module will.
    ok = amqp_probe:declare(C, <<"topic">>),
    Probe = amqp_probe:start([{C, <<"#">>}]),
    ?assertNot(maps:is_key(P, list_exchanges())),
    N = 100,
    [send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, integer_to_binary(I))
     || I <- lists:seq(1, N)],
    T0 = erlang:monotonic_time(millisecond),
    wait_until(fun() -> maps:get(connect_failures, stats()) >= 3 andalso
                            erlang:monotonic_time(millisecond) - T0 > 600 end),
    Waiting = stats(),
    ?assertMatch(#{accepted := N, delivered := 0, failed := 0, dropped := 0,
                   connection := disconnected}, Waiting),
    ?assertEqual(N, maps:get(queued, Waiting) + maps:get(in_flight, Waiting)),
    ?assertEqual(0, amqp_probe:count(Probe)),
    ok = test_tcp_proxy:set_mode(Proxy, forward),
    Msgs = wait_unique(Probe, N, 10000),
    ?assertEqual(lists:seq(1, N), lists:usort(bodies(Msgs))),
    Notice = test_logs:wait(event_pusher_rabbit_connected, 10000),
    ct:pal("back: ~p", [Notice]),
    ?assertMatch(#{level := notice, failed_attempts := F} when F >= 3, Notice),
    Back = wait_stats(#{delivered => N, failed => 0, queued => 0, in_flight => 0,
                        connection => connected, disconnected_since_ms => undefined,
                        connect_failures => 0}),
    %% The last error stays for the record.
    #{last_connection_error := LastError} = Back,
    ?assertNotEqual(nomatch, binary:match(LastError, Broker)),
    ?assertMatch({<<"topic">>, _}, maps:get(P, list_exchanges())).

wrong_credentials_fail_the_start(Config) ->
    Text = start_error(Config, #{password => <<"not the password">>}),
    ?assertNotEqual(nomatch, re:run(Text, "access.refused|authenticat|login",
                                    [caseless, {capture, none}])).

%% connection.virtual_host: an unknown one fails the start (naming it); once it
%% exists, the exchanges are declared and messages published there, not in "/".
virtual_host_is_used(Config) ->
    #{chat := C} = ?config(exchanges, Config),
    VHost = <<"ep_", C/binary>>,
    Spec = #{virtual_host => VHost},
    Text = start_error(Config, Spec),
    ?assertNotEqual(nomatch, binary:match(Text, VHost)),
    rabbitmqctl(["add_vhost", VHost]),
    try
        rabbitmqctl(["set_permissions", "-p", VHost, "guest", ".*", ".*", ".*"]),
        start(Config, Spec),
        ?assertNot(maps:is_key(C, list_exchanges())),
        Uri = "amqp://guest:guest@127.0.0.1:5672/" ++ uri_string:quote(binary_to_list(VHost)),
        Probe = amqp_probe:start([{C, <<"#">>}], #{uri => Uri}),
        send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"7">>),
        ?assertEqual([7], bodies(wait_messages(Probe, 1)))
    after
        rabbitmqctl(["delete_vhost", VHost])
    end.

instrumentation_events_are_emitted(Config) ->
    #{presence := P, chat := C} = ?config(exchanges, Config),
    start(Config, #{confirms => true}),
    Probe = amqp_probe:start([{P, <<"#">>}, {C, <<"#">>}]),
    ?assertMatch([#{active := 1, opened := 1}], wait_events(wpool_rabbit_connections, 1)),
    presence(<<"alice@localhost/r">>, online),
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"measured ü"/utf8>>),
    Msgs = wait_messages(Probe, 2),
    Published = wait_events(wpool_rabbit_messages_published, 2),
    ?assertEqual([1, 1], [maps:get(count, E) || E <- Published]),
    [?assert(is_integer(T) andalso T >= 0) || #{time := T} <- Published],
    wait_until(fun() -> delivery_sum(delivered) =:= 2 end),
    %% size = the bytes of the published payload. (MongooseIM measures the Erlang
    %% term holding the payload, byte_size(term_to_binary(#amqp_msg{})); the payload
    %% is what that approximates.)
    ?assertEqual(lists:sort([byte_size(Pl) || #{payload := Pl} <- Msgs]),
                 lists:sort([S || #{size := S} <- Published])).

%% Stopping the module (the host's services stay) closes the connection and says so,
%% as MongooseIM's rabbit worker does when it terminates: `active' returns to 0.
connection_close_on_stop_is_reported(Config) ->
    start(Config, #{}),
    ?assertMatch([#{active := 1, opened := 1}], wait_events(wpool_rabbit_connections, 1)),
    ok = test_wait:bounded(fun mongoose_modules:stop/0, 5000),
    Connections = mongoose_instrument:get_events(wpool_rabbit_connections, ?POOL_LABELS),
    ?assertEqual([#{active => 1, opened => 1}, #{active => -1, closed => 1}], Connections).

%% The same traffic with confirms off (published = written to the socket) and on
%% (published = confirmed by the broker): all of it arrives either way, and the broker
%% says whether the module's channel is in confirm mode. The case has a virtual host
%% of its own, so that the module's channel is the only one there at start.
confirms_on_and_off(Config) ->
    #{chat := C} = ?config(exchanges, Config),
    VHost = <<"ep_", C/binary>>,
    rabbitmqctl(["add_vhost", VHost]),
    try
        rabbitmqctl(["set_permissions", "-p", VHost, "guest", ".*", ".*", ".*"]),
        Uri = "amqp://guest:guest@127.0.0.1:5672/" ++ uri_string:quote(binary_to_list(VHost)),
        N = 500,
        lists:foreach(
          fun(Confirms) ->
                  start(Config, #{confirms => Confirms, virtual_host => VHost}),
                  ?assertEqual([atom_to_binary(Confirms)], channel_confirm_modes(VHost)),
                  Probe = amqp_probe:start([{C, <<"#">>}], #{uri => Uri}),
                  [send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>,
                        integer_to_binary(I)) || I <- lists:seq(1, N)],
                  Msgs = wait_messages(Probe, N, 20000),
                  ?assertEqual(lists:seq(1, N), lists:sort(bodies(Msgs))),
                  wait_stats(#{accepted => N, delivered => N, failed => 0, dropped => 0}),
                  Published = wait_events(wpool_rabbit_messages_published, N),
                  ?assertEqual(N, length([E || E = #{count := 1} <- Published])),
                  ok = mongoose_host:stop(),
                  amqp_probe:stop(Probe)
          end, [false, true])
    after
        rabbitmqctl(["delete_vhost", VHost])
    end.

%% Stop drains: started while the broker is unreachable, so that every event is still
%% waiting when stop is called (the broker is reachable again just before); stop
%% returns once all are delivered. Judged by the broker: a durable queue of the
%% test's holds them all when stop returns.
stop_delivers_pending_events(Config) ->
    #{chat := C} = ?config(exchanges, Config),
    {Proxy, Port} = ?config(proxy, Config),
    Queue = <<"q_", C/binary>>,
    ok = amqp_probe:declare(C, <<"topic">>),
    ok = amqp_probe:declare_queue(Queue, [{C, <<"#">>}], #{}),
    try
        ok = test_tcp_proxy:set_mode(Proxy, refuse),
        start(Config, #{port => Port, confirms => true, drain_timeout_ms => 20000,
                        queue => #{max_events => 5000}}),
        N = 3000,
        [send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, integer_to_binary(I))
         || I <- lists:seq(1, N)],
        Pending = stats(),
        ct:pal("before stop: ~p", [Pending]),
        ?assertMatch(#{accepted := N, delivered := 0, failed := 0, dropped := 0}, Pending),
        ?assert(maps:get(queued, Pending) > 0),
        ?assertEqual(N, maps:get(queued, Pending) + maps:get(in_flight, Pending)),
        ok = test_tcp_proxy:set_mode(Proxy, forward),
        ok = test_wait:bounded(fun mongoose_modules:stop/0, 25000),
        %% When stop returns: every event delivered (the final report is in), and in
        %% the broker's queue.
        ?assertEqual(N, delivery_sum(delivered)),
        ?assertEqual(0, delivery_sum(failed) + delivery_sum(dropped)),
        {InQueue, _Persistent} = maps:get(Queue, list_queues()),
        ct:pal("in the queue when stop returned: ~p", [InQueue]),
        ?assert(InQueue >= N),
        Probe = amqp_probe:start([], #{queue => Queue}),
        ?assertEqual(lists:seq(1, N), lists:usort(bodies(wait_messages(Probe, InQueue))))
    after
        amqp_probe:delete_queue(Queue, #{})
    end.

%% Fault (a): the connection is cut twice while 20k events flow, confirms on. Every
%% event arrives; republished unconfirmed ones may arrive twice (counted); the books
%% balance.
connection_cut_mid_stream_loses_nothing(Config) ->
    #{chat := C} = ?config(exchanges, Config),
    {Proxy, Port} = ?config(proxy, Config),
    N = 20000,
    start(Config, #{port => Port, confirms => true, queue => #{max_events => N},
                    retry => #{max_attempts => 10, base_backoff_ms => 50,
                               max_backoff_ms => 500, deadline_ms => 60000}}),
    Probe = amqp_probe:start([{C, <<"#">>}]),
    Self = self(),
    Pusher = spawn_link(fun() ->
                                [send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>,
                                      integer_to_binary(I)) || I <- lists:seq(1, N)],
                                Self ! {self(), pushed}
                        end),
    Cut1 = cut_when_delivered(Proxy, 2000),
    Cut2 = cut_when_delivered(Proxy, 10000),
    receive {Pusher, pushed} -> ok after 30000 -> ct:fail(pusher_stuck) end,
    ct:pal("cut at delivered=~p and ~p", [Cut1, Cut2]),
    ?assert(Cut2 < N),
    Stats = wait_stats(#{accepted => N, delivered => N, queued => 0, in_flight => 0},
                       1500),
    ?assertMatch(#{failed := 0, dropped := 0}, Stats),
    %% Duplicates count towards the probe's total: wait for every number instead.
    Msgs = wait_unique(Probe, N, 20000),
    Bodies = bodies(Msgs),
    Unique = lists:usort(Bodies),
    ct:pal("arrived: ~p messages, ~p unique, ~p duplicates; stats ~p",
           [length(Bodies), length(Unique), length(Bodies) - length(Unique), Stats]),
    ?assertEqual(lists:seq(1, N), Unique),
    wait_until(fun() -> delivery_sum(delivered) =:= N end),
    Connections = mongoose_instrument:get_events(wpool_rabbit_connections, ?POOL_LABELS),
    ?assert(length([E || E = #{opened := 1} <- Connections]) >= 3),
    ?assert(length([E || E = #{closed := 1} <- Connections]) >= 2).

%% Fault (b): the broker goes away after the start; events wait in the queue (not
%% failed, not lost) and are delivered once it is back.
broker_unreachable_after_start_events_wait(Config) ->
    #{chat := C} = ?config(exchanges, Config),
    {Proxy, Port} = ?config(proxy, Config),
    %% A confirm window smaller than the backlog: some events wait in the queue, the
    %% rest with the publishers.
    test_logs:capture(),
    start(Config, #{port => Port, confirms => true, confirm_window => 50}),
    Probe = amqp_probe:start([{C, <<"#">>}]),
    wait_events(wpool_rabbit_connections, 1),
    ?assertMatch(#{connection := connected, last_connection_error := undefined}, stats()),
    ok = test_tcp_proxy:set_mode(Proxy, refuse),
    wait_until(fun() -> connection_events(closed) >= 1 end),
    %% Said loudly: the loss with its reason, then the failing reconnect.
    Lost = test_logs:wait(event_pusher_rabbit_connection_lost, 10000),
    ct:pal("lost: ~p", [Lost]),
    ?assertMatch(#{level := warning, reason := <<_/binary>>}, Lost),
    ?assertMatch(#{level := warning, attempts := 1},
                 test_logs:wait(event_pusher_rabbit_connect_failed, 10000)),
    N = 200,
    AttemptsBefore = test_tcp_proxy:accepted(Proxy),
    [send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, integer_to_binary(I))
     || I <- lists:seq(1, N)],
    %% Three more failed reconnects (backoff doubling from 100 ms) outlast the default
    %% retry budget (3 attempts, 100 ms backoff) that attempts spent on a missing
    %% connection would use up.
    wait_until(fun() -> test_tcp_proxy:accepted(Proxy) >= AttemptsBefore + 3 end),
    Waiting = stats(),
    ct:pal("while unreachable: ~p; reconnect attempts: ~p",
           [Waiting, test_tcp_proxy:accepted(Proxy)]),
    ?assertMatch(#{accepted := N, delivered := 0, failed := 0, dropped := 0}, Waiting),
    ?assert(maps:get(queued, Waiting) > 0),
    ?assertEqual(N, maps:get(queued, Waiting) + maps:get(in_flight, Waiting)),
    ?assertEqual(0, amqp_probe:count(Probe)),
    ?assert(test_tcp_proxy:accepted(Proxy) >= 2),
    ?assertMatch(#{connection := disconnected, last_connection_error := <<_/binary>>,
                   disconnected_since_ms := Since} when is_integer(Since), Waiting),
    ok = test_tcp_proxy:set_mode(Proxy, forward),
    Msgs = wait_unique(Probe, N, 10000),
    ?assertEqual(lists:seq(1, N), lists:usort(bodies(Msgs))),
    ?assertMatch(#{level := notice}, test_logs:wait(event_pusher_rabbit_connected, 10000)),
    wait_stats(#{delivered => N, failed => 0, queued => 0, in_flight => 0,
                 connection => connected}).

%% Fault (c): with the broker unreachable, a small queue overflows; every drop is
%% counted (stats and metrics) and the events that fit are delivered later.
queue_overflow_is_counted_exactly(Config) ->
    #{chat := C} = ?config(exchanges, Config),
    {Proxy, Port} = ?config(proxy, Config),
    test_logs:capture(),
    %% A confirm window smaller than the queue: the publishers hold 5 events while
    %% they wait for the broker, the queue 20, and the rest overflows.
    start(Config, #{port => Port, confirms => true, confirm_window => 5,
                    queue => #{max_events => 20}}),
    Probe = amqp_probe:start([{C, <<"#">>}]),
    wait_events(wpool_rabbit_connections, 1),
    ok = test_tcp_proxy:set_mode(Proxy, refuse),
    wait_until(fun() -> connection_events(closed) >= 1 end),
    Pushed = 100,
    [send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, integer_to_binary(I))
     || I <- lists:seq(1, Pushed)],
    wait_until(fun() -> maps:get(in_flight, stats()) =:= 5 end),
    Stats = stats(),
    ct:pal("overflowing: ~p", [Stats]),
    #{accepted := Pushed, queued := Queued, in_flight := InFlight, dropped := Dropped,
      delivered := 0, failed := 0} = Stats,
    ?assertEqual(Pushed - Queued - InFlight, Dropped),
    ?assert(Queued =< 20),
    ?assert(Dropped >= Pushed - 20 - InFlight),
    ?assert(Dropped > 0),
    wait_until(fun() -> delivery_sum(dropped) =:= Dropped end),
    %% The drop warning names the real cause, not the queue settings.
    DropWarning = test_logs:wait(event_pusher_events_dropped, 10000),
    ct:pal("drop warning: ~p", [DropWarning]),
    ?assertMatch(#{cause := backend_unreachable, unreachable_since := <<_/binary>>,
                   backend_error := <<_/binary>>}, DropWarning),
    ok = test_tcp_proxy:set_mode(Proxy, forward),
    Kept = Pushed - Dropped,
    Msgs = wait_unique(Probe, Kept, 10000),
    wait_stats(#{delivered => Kept, dropped => Dropped, failed => 0, queued => 0,
                 in_flight => 0}),
    %% A marker published after every kept event was confirmed arrives after them in
    %% the queue: then the probe has seen all that will ever arrive. Exactly the kept
    %% ones did. Which ones were kept depends on when the publishers took events off
    %% the queue, so only their number is known.
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"marker">>),
    wait_until(fun() -> lists:member(<<"marker">>, raw_bodies(amqp_probe:messages(Probe))) end),
    Arrived = lists:usort(bodies([M || M <- amqp_probe:messages(Probe),
                                       raw_bodies([M]) =/= [<<"marker">>]])),
    ?assertEqual(Kept, length(Arrived)),
    ?assertEqual([], Arrived -- lists:seq(1, Pushed)),
    ?assert(length(Msgs) >= Kept).

%% Stopping while the broker is unreachable: the drain deadline passes, stop returns,
%% the pending events are counted as lost, and the module starts again.
stop_while_unreachable_gives_up_and_can_restart(Config) ->
    #{chat := C} = ?config(exchanges, Config),
    {Proxy, Port} = ?config(proxy, Config),
    Spec = #{port => Port, confirms => true, drain_timeout_ms => 500},
    start(Config, Spec),
    wait_events(wpool_rabbit_connections, 1),
    ok = test_tcp_proxy:set_mode(Proxy, refuse),
    wait_until(fun() -> connection_events(closed) >= 1 end),
    N = 200,
    [send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, integer_to_binary(I))
     || I <- lists:seq(1, N)],
    T0 = erlang:monotonic_time(millisecond),
    ok = test_wait:bounded(fun mongoose_modules:stop/0, 5000),
    Elapsed = erlang:monotonic_time(millisecond) - T0,
    Batches = mongoose_instrument:get_events(mod_event_pusher_rabbit_delivery, ?DELIVERY_LABELS),
    ct:pal("stop took ~p ms; delivery batches ~p", [Elapsed, Batches]),
    ?assert(Elapsed < 3000),
    ?assertEqual(0, delivery_sum(delivered)),
    ?assertEqual(N, delivery_sum(failed) + delivery_sum(dropped)),
    mongoose_host:stop(),
    ok = test_tcp_proxy:set_mode(Proxy, forward),
    start(Config, Spec),
    Probe = amqp_probe:start([{C, <<"#">>}]),
    send(<<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>, <<"0">>),
    ?assertEqual([0], bodies(wait_messages(Probe, 1))).

%%% Helpers: configuration

%% The start must fail; returns the error printed as text.
start_error(Config, Spec) ->
    Opts = options(Config, toml(Config, Spec)),
    log_guard:expect(#{what => module_start_failed, module => mod_event_pusher_rabbit}),
    try mongoose_host:start(Opts) of
        _ -> ct:fail({started, Spec})
    catch error:Reason ->
            Text = iolist_to_binary(io_lib:format("~p", [Reason])),
            ct:pal("start failed as expected: ~ts", [Text]),
            Text
    end.

%% The options of this TOML text, as MongooseIM's parser gives them.
options(Config, Toml) ->
    mongoose_config_parser:parse_file(mongoose_host:write_toml(?config(priv_dir, Config), Toml)).

start(Config, Spec) ->
    ok = mongoose_host:start_toml(?config(priv_dir, Config), toml(Config, Spec)).

%% Spec: port, confirms, workers, types/durable/persistent/topics per exchange, queue,
%% retry, drain_timeout_ms, connect_timeout_ms, max_message_bytes.
toml(Config, Spec) ->
    #{presence := P, chat := C, groupchat := G} = ?config(exchanges, Config),
    Types = maps:get(types, Spec, #{}),
    Durable = maps:get(durable, Spec, #{}),
    Persistent = maps:get(persistent, Spec, #{}),
    Topics = maps:get(topics, Spec, #{}),
    Exchange = fun(Key, Name) ->
                       [<<"  ">>, atom_to_binary(Key), <<"_exchange = {name = \"">>, Name, <<"\"">>,
                        [[<<", type = \"">>, T, <<"\"">>] || T <- [maps:get(key(Key), Types, <<"topic">>)]],
                        [<<", durable = true">> || maps:get(key(Key), Durable, false)],
                        case maps:find(key(Key), Persistent) of
                            {ok, Mode} -> [<<", persistent = ">>, atom_to_binary(Mode)];
                            error -> []
                        end,
                        case maps:find(key(Key), Topics) of
                            {ok, {Sent, Recv}} -> [<<", sent_topic = \"">>, Sent,
                                                   <<"\", recv_topic = \"">>, Recv, <<"\"">>];
                            error -> []
                        end,
                        <<"}\n">>]
               end,
    Retry = maps:get(retry, Spec, #{}),
    Queue = maps:get(queue, Spec, #{}),
    [<<"[general]\n  hosts = [\"localhost\"]\n  default_server_domain = \"localhost\"\n\n">>,
     <<"[outgoing_pools.rabbit.event_pusher]\n">>,
     <<"  workers = ">>, integer_to_binary(maps:get(workers, Spec, 4)), <<"\n">>,
     <<"  connection.host = \"127.0.0.1\"\n">>,
     <<"  connection.password = \"">>, maps:get(password, Spec, <<"guest">>), <<"\"\n">>,
     <<"  connection.port = ">>, integer_to_binary(maps:get(port, Spec, ?BROKER_PORT)), <<"\n">>,
     <<"  connection.confirms_enabled = ">>, atom_to_binary(maps:get(confirms, Spec, false)),
     <<"\n\n">>,
     <<"[modules.mod_event_pusher.rabbit]\n">>,
     Exchange(presence, P), Exchange(chat_msg, C), Exchange(groupchat_msg, G),
     [[<<"  connection.virtual_host = \"">>, V, <<"\"\n">>]
      || V <- [maps:get(virtual_host, Spec, <<"/">>)]],
     <<"  connection.connect_timeout_ms = ">>,
     integer_to_binary(maps:get(connect_timeout_ms, Spec, 3000)), <<"\n">>,
     <<"  reconnect = {base_delay_ms = 50, max_delay_ms = 300}\n">>,
     <<"  confirm_window = ">>, integer_to_binary(maps:get(confirm_window, Spec, 1000)), <<"\n">>,
     [[<<"  max_message_bytes = ">>, integer_to_binary(M), <<"\n">>]
      || M <- [maps:get(max_message_bytes, Spec, undefined)], M =/= undefined],
     <<"  drain_timeout_ms = ">>, integer_to_binary(maps:get(drain_timeout_ms, Spec, 2000)),
     <<"\n">>,
     table(<<"queue">>, Queue), table(<<"retry">>, Retry)].

key(presence) -> presence;
key(chat_msg) -> chat;
key(groupchat_msg) -> groupchat.

table(_Name, Map) when map_size(Map) =:= 0 -> [];
table(Name, Map) ->
    [<<"  ">>, Name, <<" = {">>,
     lists:join(<<", ">>, [[atom_to_binary(K), <<" = ">>, integer_to_binary(V)]
                           || {K, V} <- maps:to_list(Map)]),
     <<"}\n">>].

%% Runs F in another process; fails the case if it does not return in time (a
%% hanging stop would otherwise hold the suite until the timetrap).
%% A port nothing listens on.
closed_port() ->
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(L),
    gen_tcp:close(L),
    Port.

%%% Helpers: hooks

presence(Jid, Status) ->
    hook_driver:presence(?HT, Jid, Status).

%% A message sent by a local user (direction in).
send(Type, From, To, Body) ->
    hook_driver:send(?HT, Type, From, To, Body).

%% A message delivered to a local user (direction out).
deliver(Type, From, To, Body) ->
    hook_driver:deliver(?HT, Type, From, To, Body).

%%% Helpers: outcomes

wait_messages(Probe, N) ->
    wait_messages(Probe, N, 5000).

wait_messages(Probe, N, TimeoutMs) ->
    case amqp_probe:wait_for_messages(Probe, N, TimeoutMs) of
        {ok, Msgs} -> Msgs;
        {timeout, Got} -> ct:fail({expected_messages, N, got, length(Got), lists:sublist(Got, 5),
                                   stats, catch stats()})
    end.

%% Waits until the numbered messages 1..N all arrived (duplicates may come too).
wait_unique(Probe, N, TimeoutMs) ->
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    wait_unique_until(Probe, N, Deadline).

wait_unique_until(Probe, N, Deadline) ->
    {_, Msgs} = amqp_probe:wait_for_messages(
                  Probe, N, max(0, Deadline - erlang:monotonic_time(millisecond))),
    Unique = length(lists:usort(bodies(Msgs))),
    case Unique >= N of
        true -> Msgs;
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> ct:fail({expected_unique_messages, N, got, Unique, total, length(Msgs),
                                 stats, catch stats()});
                false -> timer:sleep(100), wait_unique_until(Probe, N, Deadline)
            end
    end.

decoded(Msgs) ->
    [{E, K, jiffy:decode(P, [return_maps])}
     || #{exchange := E, routing_key := K, payload := P} <- Msgs].

%% Message bodies as integers (the load cases number their messages).
bodies(Msgs) ->
    [binary_to_integer(B) || B <- raw_bodies(Msgs)].

raw_bodies(Msgs) ->
    [maps:get(<<"message">>, jiffy:decode(P, [return_maps])) || #{payload := P} <- Msgs].

%% Publishes run concurrently, so arrival order is not asserted; the order of the
%% events we sent is restored by a key when it matters (here: presence, which comes
%% out true, true, false).
sort_by_json(Decoded, [Key]) ->
    lists:sort(fun({_, K1, J1}, {_, K2, J2}) ->
                       {not maps:get(Key, J1), K1} =< {not maps:get(Key, J2), K2}
               end, Decoded).

stats() ->
    mod_event_pusher_rabbit:stats(?HT).

wait_stats(Expected) ->
    wait_stats(Expected, 250).

wait_stats(Expected, Tries) ->
    wait_stats(Expected, Tries, undefined).

wait_stats(Expected, 0, Last) ->
    ct:fail({stats_mismatch, Expected, Last});
wait_stats(Expected, Tries, _Last) ->
    Stats = stats(),
    case is_map(Stats) andalso maps:with(maps:keys(Expected), Stats) =:= Expected of
        true -> Stats;
        false -> timer:sleep(20), wait_stats(Expected, Tries - 1, Stats)
    end.

wait_events(Event, N) ->
    case mongoose_instrument:wait_for_events(Event, ?POOL_LABELS, N, 5000) of
        {ok, Events} -> Events;
        {timeout, Got} -> ct:fail({expected_events, Event, N, got, Got})
    end.

connection_events(Key) ->
    length([E || E <- mongoose_instrument:get_events(wpool_rabbit_connections, ?POOL_LABELS),
                 maps:is_key(Key, E)]).

delivery_sum(Key) ->
    lists:sum([maps:get(Key, E, 0)
               || E <- mongoose_instrument:get_events(mod_event_pusher_rabbit_delivery,
                                                      ?DELIVERY_LABELS)]).

cut_when_delivered(Proxy, Delivered) ->
    test_wait:until(fun() -> maps:get(delivered, stats()) >= Delivered end, 15000,
                    fun() -> stats() end),
    #{delivered := Now} = stats(),
    ok = test_tcp_proxy:cut(Proxy),
    Now.

wait_until(Check) ->
    test_wait:until(Check, fun() -> stats() end).

rabbitmqctl(Args) ->
    Exe = os:find_executable("rabbitmqctl"),
    case repo_binary:run(Exe, ["-q" | [unicode:characters_to_list(A) || A <- Args]],
                         [stderr_to_stdout]) of
        {0, Out} -> Out;
        {Status, Out} -> ct:fail({rabbitmqctl, Args, Status, Out})
    end.

%% name => {type, durable} from rabbitmqctl (one call: it starts a VM each time).
list_exchanges() ->
    Out = rabbitmqctl(["list_exchanges", "name", "type", "durable"]),
    Lines = [binary:split(L, <<"\t">>, [global])
             || L <- binary:split(Out, <<"\n">>, [global]),
                L =/= <<>>],
    maps:from_list([{Name, {Type, Durable}} || [Name, Type, Durable] <- Lines]).

%% queue name => {messages, persistent messages}, as the broker counts them.
list_queues() ->
    Out = rabbitmqctl(["list_queues", "--no-table-headers", "name", "messages",
                       "messages_persistent"]),
    maps:from_list([{Name, {binary_to_integer(M), binary_to_integer(Persistent)}}
                    || L <- binary:split(Out, <<"\n">>, [global]), L =/= <<>>,
                       [Name, M, Persistent] <- [binary:split(L, <<"\t">>, [global])]]).

%% The confirm mode (<<"true">> | <<"false">>) of each channel in VHost, as the
%% broker reports it.
channel_confirm_modes(VHost) ->
    Out = rabbitmqctl(["list_channels", "--no-table-headers", "vhost", "confirm"]),
    [Confirm || L <- binary:split(Out, <<"\n">>, [global]), L =/= <<>>,
                [V, Confirm] <- [binary:split(L, <<"\t">>, [global])], V =:= VHost].
