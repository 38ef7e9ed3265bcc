%% Issue 10.8: the rabbit backend over TLS (amqps) against a real broker. Each case
%% starts a RabbitMQ node of its own (rabbit_node: own name, ports and data; never the
%% shared broker on 5672) with a TLS listener on a port of its own beside the plain one.
%% The module is configured as in MongooseIM (TOML: the `[outgoing_pools.rabbit.
%% event_pusher]' pool pointing at the TLS port, our `connection.tls' section in the
%% module) and driven through the hooks; what arrived is read at the broker by
%% amqp_probe over the node's plain port, and the broker's own `list_connections'
%% shows whether the module's connection is TLS.
%%
%% Certificates are made at run time (public_key:pkix_test_data/1, RSA keys: rustls
%% takes none of the EC curves OTP's test data uses by default): a CA and the broker's
%% certificate for 127.0.0.1 and localhost, a client chain, and an unrelated CA.
%%
%% Verification is always on (rustls, the chain, dates and host name; the module's
%% `connection.tls' has no verify_mode). Client certificates: the module's `tls'
%% section has no certfile/keyfile, and MongooseIM 6.4's rabbit pool has no TLS at all,
%% so a broker demanding one refuses the module: that case shows the refusal is named
%% and no event is lost silently.
-module(rabbit_tls_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("public_key/include/public_key.hrl").

-define(HT, <<"localhost">>).
-define(DELIVERY_LABELS, #{host_type => ?HT}).
%% MongooseIM's default exchanges: the node is the case's own, nothing else uses them.
-define(PRESENCE, <<"presence">>).
-define(CHAT, <<"chat_msg">>).
-define(GROUPCHAT, <<"groupchat_msg">>).

all() ->
    [events_arrive_over_amqps_verified_with_the_tests_ca,
     wrong_ca_fails_the_connection_and_no_event_is_lost_silently,
     broker_demanding_a_client_certificate_refuses_the_module].

suite() ->
    [{timetrap, {minutes, 3}}].

init_per_suite(Config) ->
    %% Builds the probe once (cargo) before any timed case.
    {ok, _} = amqp_probe:executable(),
    Dir = filename:join(?config(priv_dir, Config), "certs"),
    ok = filelib:ensure_path(Dir),
    [{certs, certificates(Dir)} | Config].

end_per_suite(_Config) ->
    ok.

%% The node is made here and boots in the case itself: a node that cannot boot fails
%% the case (from init_per_testcase it would only be skipped).
init_per_testcase(Case, Config) ->
    #{server_cert := Cert, server_key := Key, client_ca := ClientCA} = ?config(certs, Config),
    Demand = Case =:= broker_demanding_a_client_certificate_refuses_the_module,
    Name = "ept_tls" ++ integer_to_list(erlang:unique_integer([positive])) ++ "_" ++ os:getpid(),
    Tls = #{certfile => Cert, keyfile => Key, cacertfile => ClientCA,
            fail_if_no_peer_cert => Demand},
    Dir = filename:join(?config(priv_dir, Config), "rabbit_" ++ atom_to_list(Case)),
    [{rabbit_node, rabbit_node:new(Name, Dir, #{tls => Tls})} | Config].

end_per_testcase(_Case, Config) ->
    Stopped = test_wait:cleanup(fun mongoose_host:stop/0, 30000),
    test_logs:stop(),
    ok = rabbit_node:stop(?config(rabbit_node, Config)),
    Stopped.

%%% Cases

%% (a) Chat, groupchat and presence events published over amqps, the broker's
%% certificate verified against the test's CA, arrive as MongooseIM 6.4 publishes
%% them (exchange, routing key, JSON), and the broker counts the module's connection
%% as TLS on its TLS port.
events_arrive_over_amqps_verified_with_the_tests_ca(Config) ->
    Node = boot(Config),
    #{ca := CA} = ?config(certs, Config),
    start(Config, Node, CA),
    ?assertMatch(#{connection := connected}, stats()),
    Probe = amqp_probe:start([{?PRESENCE, <<"#">>}, {?CHAT, <<"#">>}, {?GROUPCHAT, <<"#">>}],
                             #{uri => rabbit_node:uri(Node)}),
    hook_driver:presence(?HT, <<"Alice@localhost/Phone">>, online),
    hook_driver:send(?HT, <<"chat">>, <<"Alice@localhost/Phone">>, <<"Bob@Localhost/Laptop">>,
                     <<"hi Bob">>),
    hook_driver:deliver(?HT, <<"chat">>, <<"Carol@localhost/x">>, <<"Bob@localhost/Laptop">>,
                        <<"hi from Carol">>),
    hook_driver:send(?HT, <<"groupchat">>, <<"alice@localhost/phone">>,
                     <<"Room@muc.localhost">>, <<"to the room">>),
    hook_driver:deliver(?HT, <<"groupchat">>, <<"room@muc.localhost/Alice">>,
                        <<"bob@localhost/pc">>, <<"from the room">>),
    hook_driver:presence(?HT, <<"Alice@localhost/Phone">>, offline),
    Msgs = wait_messages(Probe, 6),
    %% MongooseIM 6.4's objects (its mod_event_pusher_rabbit), compared decoded: the
    %% key order is not the point here (rabbit_SUITE checks the bytes).
    ?assertEqual(
       lists:sort(
         [{?PRESENCE, <<"alice@localhost">>,
           #{<<"user_id">> => <<"alice@localhost/Phone">>, <<"present">> => true}},
          {?PRESENCE, <<"alice@localhost">>,
           #{<<"user_id">> => <<"alice@localhost/Phone">>, <<"present">> => false}},
          {?CHAT, <<"alice@localhost.chat_msg_sent">>,
           #{<<"from_user_id">> => <<"alice@localhost/Phone">>,
             <<"to_user_id">> => <<"bob@localhost/Laptop">>, <<"message">> => <<"hi Bob">>}},
          {?CHAT, <<"bob@localhost.chat_msg_recv">>,
           #{<<"from_user_id">> => <<"carol@localhost/x">>,
             <<"to_user_id">> => <<"bob@localhost/Laptop">>,
             <<"message">> => <<"hi from Carol">>}},
          {?GROUPCHAT, <<"alice@localhost.groupchat_msg_sent">>,
           #{<<"from_user_id">> => <<"alice@localhost/phone">>,
             <<"to_user_id">> => <<"room@muc.localhost">>, <<"message">> => <<"to the room">>}},
          {?GROUPCHAT, <<"bob@localhost.groupchat_msg_recv">>,
           #{<<"from_user_id">> => <<"room@muc.localhost/Alice">>,
             <<"to_user_id">> => <<"bob@localhost/pc">>,
             <<"message">> => <<"from the room">>}}]),
       lists:sort(decoded(Msgs))),
    %% Confirmed by the broker, nothing else pending.
    wait_stats(#{accepted => 6, delivered => 6, failed => 0, dropped => 0, queued => 0,
                 in_flight => 0}),
    %% The broker's view: the module's connection came in on the TLS listener, as TLS.
    TlsPort = integer_to_binary(rabbit_node:tls_port(Node)),
    Conns = rabbit_node:connections(Node, ["port", "ssl", "ssl_protocol", "peer_host"]),
    ct:pal("broker connections: ~p", [Conns]),
    OnTls = [C || C = #{"port" := P} <- Conns, P =:= TlsPort],
    ?assertMatch([_ | _], OnTls),
    ?assertEqual([], [C || C = #{"ssl" := Ssl} <- OnTls, Ssl =/= <<"true">>]),
    [?assertMatch(<<"tlsv1.", _/binary>>, P) || #{"ssl_protocol" := P} <- OnTls],
    amqp_probe:stop(Probe).

%% (c) A CA that did not sign the broker's certificate, one of another name and one
%% of the same name with another key: the start does not fail (a refused handshake is
%% "unreachable", as any broker outage at boot), the connection fails with the
%% certificate named (stats, the warning), no connection reaches the broker, events
%% wait (counted: accepted = queued + in_flight, none delivered), and at stop they are
%% counted as lost with a warning, not dropped silently. Then the same node with the
%% right CA: a marker arrives and is the only message, so nothing of the earlier runs
%% ever reached the broker.
wrong_ca_fails_the_connection_and_no_event_is_lost_silently(Config) ->
    Node = boot(Config),
    #{ca := CA, wrong_ca := WrongCA, impostor_ca := ImpostorCA} = ?config(certs, Config),
    %% The probe binds to the chat exchange before the module could declare it.
    Uri = rabbit_node:uri(Node),
    ok = amqp_probe:declare(?CHAT, <<"topic">>, #{uri => Uri}),
    Probe = amqp_probe:start([{?CHAT, <<"#">>}], #{uri => Uri}),
    test_logs:capture(),
    lists:foreach(
      fun({File, Why}) ->
              start(Config, Node, File),
              N = 20,
              Expected = <<"cannot connect to 127.0.0.1:",
                           (integer_to_binary(rabbit_node:tls_port(Node)))/binary,
                           ": invalid peer certificate: ", Why/binary>>,
              Reason = refused_and_waiting(Node, N, fun(R) -> R =:= Expected end),
              ct:pal("~ts: ~ts", [File, Reason]),
              lost_at_stop(N),
              test_logs:flush()
      end, [{WrongCA, <<"UnknownIssuer">>}, {ImpostorCA, <<"BadSignature">>}]),
    ?assertEqual(0, amqp_probe:count(Probe)),
    %% The right CA on the same broker: only the marker arrives.
    start(Config, Node, CA),
    hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>,
                     <<"marker">>),
    Msgs = wait_messages(Probe, 1),
    wait_stats(#{accepted => 1, delivered => 1, failed => 0, queued => 0, in_flight => 0}),
    ?assertEqual([<<"marker">>], [maps:get(<<"message">>, J) || {_, _, J} <- decoded(Msgs)]),
    ?assertEqual(Msgs, amqp_probe:messages(Probe)),
    amqp_probe:stop(Probe).

%% (b) The broker demands a client certificate (verify_peer, fail_if_no_peer_cert) and
%% the module has none to give (no certfile/keyfile for rabbit; MongooseIM 6.4's rabbit
%% pool has no TLS at all): the broker refuses the handshake (its log says
%% certificate_required), no connection is opened, and the events wait and are
%% counted as lost at stop. Under TLS 1.3 the client has finished its side of the
%% handshake when the broker's alert comes: the module's reason is the alert when it
%% read it first (`received fatal alert: CertificateRequired'), else the write that
%% failed (`Broken pipe'); which one varies from attempt to attempt.
broker_demanding_a_client_certificate_refuses_the_module(Config) ->
    Node = boot(Config),
    #{ca := CA} = ?config(certs, Config),
    test_logs:capture(),
    start(Config, Node, CA),
    N = 5,
    Prefix = <<"cannot connect to 127.0.0.1:",
               (integer_to_binary(rabbit_node:tls_port(Node)))/binary, ": ">>,
    Reason = refused_and_waiting(
               Node, N,
               fun(R) ->
                       lists:member(R, [<<Prefix/binary,
                                          "received fatal alert: CertificateRequired">>,
                                        <<Prefix/binary, "Broken pipe (os error 32)">>,
                                        <<Prefix/binary,
                                          "Connection reset by peer (os error 104)">>])
               end),
    ct:pal("no client certificate: ~ts", [Reason]),
    test_wait:until(fun() ->
                            binary:match(rabbit_node:log(Node), <<"certificate_required">>)
                                =/= nomatch
                    end, 10000, fun() -> no_certificate_required_alert_in_the_broker_log end),
    lost_at_stop(N).

%%% Helpers

boot(Config) ->
    Node = ?config(rabbit_node, Config),
    T0 = erlang:monotonic_time(millisecond),
    ok = rabbit_node:boot(Node),
    ct:pal("node ~s booted in ~p ms: amqp on ~p, amqps on ~p",
           [rabbit_node:name(Node), erlang:monotonic_time(millisecond) - T0,
            rabbit_node:port(Node), rabbit_node:tls_port(Node)]),
    Node.

%% The module started, every connect attempt refused in the TLS handshake: the
%% reason (of the first warning, and the latest in stats) is one IsReason accepts, N
%% events pushed and waiting, none delivered, failed or dropped, and no connection on
%% the broker's TLS port. Returns the first reason.
refused_and_waiting(Node, N, IsReason) ->
    Warning = test_logs:wait(event_pusher_rabbit_connect_failed, 15000),
    #{reason := Reason} = Warning,
    ?assertMatch(#{level := warning, attempts := 1}, Warning),
    ?assertEqual({true, Reason}, {IsReason(Reason), Reason}),
    [hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/r">>, <<"bob@localhost">>,
                      integer_to_binary(I))
     || I <- lists:seq(1, N)],
    %% Several attempts failed since the events came.
    #{connect_failures := F0} = stats(),
    wait_until(fun() -> maps:get(connect_failures, stats()) >= F0 + 2 end),
    Stats = stats(),
    ct:pal("waiting: ~p", [Stats]),
    ?assertMatch(#{connection := disconnected, accepted := N, delivered := 0, failed := 0,
                   dropped := 0}, Stats),
    #{last_connection_error := Last} = Stats,
    ?assertEqual({true, Last}, {IsReason(Last), Last}),
    ?assertEqual(N, maps:get(queued, Stats) + maps:get(in_flight, Stats)),
    TlsPort = integer_to_binary(rabbit_node:tls_port(Node)),
    ?assertEqual([], [C || C = #{"port" := P} <- rabbit_node:connections(Node, ["port"]),
                           P =:= TlsPort]),
    Reason.

%% Stops the module (drain 500 ms, the broker still refusing): the N waiting events
%% are counted as failed or dropped in the delivery metrics, none delivered, and a
%% warning names the loss.
lost_at_stop(N) ->
    ok = test_wait:bounded(fun mongoose_modules:stop/0, 10000),
    %% The reporter turns the last batch into metrics after the stop returned.
    test_wait:until(fun() -> delivery_sum(failed) + delivery_sum(dropped) >= N end, 10000,
                    fun() -> mongoose_instrument:get_events(mod_event_pusher_rabbit_delivery,
                                                            ?DELIVERY_LABELS) end),
    ?assertEqual(N, delivery_sum(failed) + delivery_sum(dropped)),
    ?assertEqual(0, delivery_sum(delivered)),
    Lost = test_logs:wait(event_pusher_stopped_with_losses, 15000),
    ct:pal("at stop: ~p", [Lost]),
    ?assertMatch(#{level := warning, lost := N}, Lost),
    ok = mongoose_host:stop().

start(Config, Node, CAFile) ->
    ok = mongoose_host:start_toml(?config(priv_dir, Config), toml(Node, CAFile)).

%% MongooseIM's configuration: the pool (its keys only) at the broker's TLS port, with
%% publisher confirms; the module's own `connection.tls' section switches to amqps.
toml(Node, CAFile) ->
    [<<"[general]\n  hosts = [\"localhost\"]\n  default_server_domain = \"localhost\"\n\n">>,
     <<"[outgoing_pools.rabbit.event_pusher]\n  scope = \"global\"\n  workers = 4\n">>,
     <<"  connection.host = \"127.0.0.1\"\n">>,
     <<"  connection.port = ">>, integer_to_binary(rabbit_node:tls_port(Node)), <<"\n">>,
     <<"  connection.confirms_enabled = true\n\n">>,
     <<"[modules.mod_event_pusher.rabbit]\n">>,
     <<"  connection.tls.cacertfile = \"">>, CAFile, <<"\"\n">>,
     <<"  connection.connect_timeout_ms = 5000\n">>,
     <<"  reconnect = {base_delay_ms = 50, max_delay_ms = 300}\n">>,
     <<"  drain_timeout_ms = 500\n">>].

%% PEM files in Dir: the broker's certificate (for 127.0.0.1 and localhost) and key;
%% `ca', the CA that signed it; `client_ca', what the broker trusts for client
%% certificates (the roots of both chains); `wrong_ca', a CA of another name
%% (rustls: UnknownIssuer); `impostor_ca', a CA of the same name as the broker's
%% issuer with another key (rustls: BadSignature).
certificates(Dir) ->
    San = #'Extension'{extnID = ?'id-ce-subjectAltName', critical = false,
                       extnValue = [{iPAddress, <<127, 0, 0, 1>>}, {dNSName, "localhost"}]},
    Key = {key, {rsa, 2048, 65537}},
    Chain = fun(PeerExtensions) ->
                    #{root => [Key, {digest, sha256}], intermediates => [],
                      peer => [Key, {digest, sha256} | PeerExtensions]}
            end,
    Generate = fun() ->
                       public_key:pkix_test_data(#{server_chain => Chain([{extensions, [San]}]),
                                                   client_chain => Chain([])})
               end,
    #{server_config := Server} = Generate(),
    #{server_config := Other} = Generate(),
    Cert = proplists:get_value(cert, Server),
    Roots = proplists:get_value(cacerts, Server),
    Issuer = [Ca || Ca <- Roots, public_key:pkix_is_issuer(Cert, Ca)],
    NotIssuer = Roots -- Issuer,
    Impostor = [Ca || Ca <- proplists:get_value(cacerts, Other),
                      public_key:pkix_is_issuer(Cert, Ca)],
    ?assertMatch({[_], [_], [_]}, {Issuer, NotIssuer, Impostor}),
    {KeyType, KeyDer} = proplists:get_value(key, Server),
    Files = #{server_cert => certs([Cert]),
              server_key => [{KeyType, KeyDer, not_encrypted}],
              ca => certs(Issuer),
              client_ca => certs(Roots),
              wrong_ca => certs(NotIssuer),
              impostor_ca => certs(Impostor -- Issuer)},
    maps:map(fun(Name, Entries) ->
                     File = filename:join(Dir, atom_to_list(Name) ++ ".pem"),
                     ok = file:write_file(File, public_key:pem_encode(Entries)),
                     list_to_binary(File)
             end, Files).

certs(Ders) ->
    [{'Certificate', Der, not_encrypted} || Der <- Ders].

stats() ->
    mod_event_pusher_rabbit:stats(?HT).

wait_stats(Expected) ->
    test_wait:until(fun() ->
                            Stats = stats(),
                            is_map(Stats) andalso
                                maps:with(maps:keys(Expected), Stats) =:= Expected
                    end, 10000, fun() -> {expected, Expected, stats()} end),
    stats().

wait_until(Check) ->
    test_wait:until(Check, 10000, fun() -> stats() end).

wait_messages(Probe, N) ->
    case amqp_probe:wait_for_messages(Probe, N, 10000) of
        {ok, Msgs} -> Msgs;
        {timeout, Got} -> ct:fail({expected_messages, N, got, Got, stats, catch stats()})
    end.

decoded(Msgs) ->
    [{E, K, jiffy:decode(P, [return_maps])}
     || #{exchange := E, routing_key := K, payload := P} <- Msgs].

delivery_sum(Key) ->
    lists:sum([maps:get(Key, E, 0)
               || E <- mongoose_instrument:get_events(mod_event_pusher_rabbit_delivery,
                                                      ?DELIVERY_LABELS)]).
