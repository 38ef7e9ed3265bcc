%% The http backend end to end: TOML config -> stand-in host -> hooks -> Rust ->
%% a real HTTP listener started by the test. Asserts what arrived at the server.
-module(http_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("exml.hrl").
-include("mod_event_pusher_events.hrl").
-include("mod_event_pusher_nif.hrl").
-include_lib("public_key/include/public_key.hrl").

-define(HT, <<"localhost">>).

all() ->
    [simple_message_arrives_as_form_fields,
     special_characters_round_trip,
     default_body_is_byte_for_byte_mongooseims_form_encoding,
     an_event_larger_than_max_bytes_is_dropped_as_too_large,
     large_and_non_utf8_bodies_are_delivered,
     message_without_body_is_skipped,
     outgoing_messages_are_not_sent_by_default,
     stanza_types_are_handled_as_the_callback_says,
     prefix_and_path_are_joined_with_one_slash,
     two_handlers_with_different_callback_modules,
     listener_absent_counts_failures_and_retries,
     listener_answering_500_is_retried_and_counted,
     client_error_is_not_retried,
     full_queue_drops_and_counts,
     stop_drains_pending_events,
     webhook_failing_each_first_two_attempts_gets_every_event_with_default_settings,
     retry_after_on_503_and_429_is_waited_out,
     an_event_waiting_to_be_retried_holds_no_worker,
     retry_after_past_the_deadline_fails_at_once_saying_so,
     dynamic_host_type_gets_its_own_instance,
     https_with_a_trusted_ca_delivers,
     https_certificate_is_verified_unless_told_not_to,
     https_client_certificate_is_presented_when_the_server_demands_one,
     https_selfsigned_peer_accepts_a_self_signed_certificate,
     https_selfsigned_peer_refuses_an_expired_self_signed_certificate,
     https_selfsigned_peer_refuses_a_self_signed_certificate_for_another_name,
     https_selfsigned_peer_refuses_a_certificate_from_an_untrusted_ca,
     https_verify_mode_none_warns_at_start,
     missing_pool_fails_the_start_with_a_reason].

init_per_suite(Config) ->
    application:ensure_all_started(inets),
    Config.

end_per_suite(_Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    Listener = test_http_listener:start(),
    [{listener, Listener} | Config].

end_per_testcase(_Case, Config) ->
    Stopped = test_wait:cleanup(fun mongoose_host:stop/0, 15000),
    test_logs:stop(),
    test_http_listener:stop(?config(listener, Config)),
    Stopped.

%% Cases

simple_message_arrives_as_form_fields(Config) ->
    start(Config, #{}),
    send_chat(<<"Alice@localhost/phone">>, <<"bob@localhost">>, <<"Hello, Bob">>),
    [Request] = wait_requests(Config, 1),
    ?assertMatch(#{method := <<"POST">>, path := <<"/notifications">>}, Request),
    ?assertEqual(<<"application/x-www-form-urlencoded">>,
                 maps:get(<<"content-type">>, maps:get(headers, Request))),
    ?assertEqual([{<<"author">>, <<"alice">>}, {<<"server">>, <<"localhost">>},
                  {<<"receiver">>, <<"bob">>}, {<<"message">>, <<"Hello, Bob">>}],
                 form(Request)),
    [Sent] = wait_metrics(mod_event_pusher_http_sent, 1),
    ?assertMatch(#{count := 1, response_code := <<"200">>, sender := <<"alice">>,
                   response_time := T} when is_integer(T), Sent).

special_characters_round_trip(Config) ->
    start(Config, #{}),
    Body = <<"a&b=c%d+e f?g#h/ü€😀 \"quoted\"\n<xml/>"/utf8>>,
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, Body),
    [Request] = wait_requests(Config, 1),
    ?assertEqual(Body, proplists:get_value(<<"message">>, form(Request))).

%% The default callback's body exactly as MongooseIM 6.4.0 sends it: prepare_body/7
%% calls cow_qs:qs/1 (cowlib 2.14.0) on author, server, receiver and message. The
%% expected bodies were worked out by hand from that version's src/cow_qs.erl: only
%% A-Z a-z 0-9 - . _ stay as they are (`*' and `~' are escaped), a space is "+", except
%% in a run of four bytes to escape, which cow_qs writes as four %XX (a space as %20).
%% The long message (over 1 KiB, so held by reference on its way) is checked whole.
default_body_is_byte_for_byte_mongooseims_form_encoding(Config) ->
    start(Config, #{}),
    Long = binary:copy(<<"a*b ~">>, 2000),
    Cases = [{<<"Hello, Bob">>, <<"Hello%2C+Bob">>},
             {<<"a&b=c d*e~f">>, <<"a%26b%3Dc+d%2Ae%7Ef">>},
             {<<"x  &y">>, <<"x++%26y">>},
             {<<"x &&&y">>, <<"x%20%26%26%26y">>},
             {<<"ü€ ok"/utf8>>, <<"%C3%BC%E2%82%AC+ok">>},
             {<<"end    ">>, <<"end%20%20%20%20">>},
             {Long, binary:copy(<<"a%2Ab+%7E">>, 2000)}],
    [send_chat(<<"alice@localhost">>, <<"bob@localhost">>, Message) || {Message, _} <- Cases],
    Bodies = [Body || #{body := Body} <- wait_requests(Config, length(Cases))],
    ?assertEqual(lists:sort([<<"author=alice&server=localhost&receiver=bob&message=",
                               Encoded/binary>> || {_, Encoded} <- Cases]),
                 lists:sort(Bodies)),
    %% prepare_body/7 itself, for callback modules that build on it: the same bytes,
    %% small (normal scheduler) or over 16 KiB (dirty scheduler).
    [?assertEqual(<<"author=alice&server=localhost&receiver=bob&message=",
                    (binary:copy(<<"a%2Ab+%7E">>, N))/binary>>,
                  mod_event_pusher_http_defaults:prepare_body(
                    undefined, in, <<"localhost">>, binary:copy(<<"a*b ~">>, N), <<"alice">>,
                    <<"bob">>, #{}))
     || N <- [1, 2000, 5000]].

%% queue.max_bytes 1 MiB: a chat message with a 2 MiB body could never be queued. It is
%% dropped as too_large (not "queue full": the queue is empty), counted once, and logged
%% as such; the events around it are delivered. push/2 says too_large too.
an_event_larger_than_max_bytes_is_dropped_as_too_large(Config) ->
    start(Config, #{queue => #{max_bytes => 1048576}}),
    Big = binary:copy(<<"y">>, 2 * 1048576),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"before">>),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, Big),
    Instance = mod_event_pusher_instance:instance(?HT, {http, http_pool}),
    ?assertEqual({error, too_large},
                 mod_event_pusher_nif:push(Instance, #http_event{path = <<"raw">>, headers = [],
                                                               body = Big, tag = <<"alice">>})),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"after">>),
    %% An event's size is its path, headers and body: the last refused was "raw" + Big.
    ?assertMatch(#{accepted := 4, dropped := 2, dropped_too_large := 2, failed := 0,
                   last_too_large_bytes := 2097155, max_bytes := 1048576},
                 pool_stats(http_pool)),
    assert_only_requests(Config, [<<"before">>, <<"after">>]),
    %% The counter metrics count them as dropped, once.
    ReportedDrops = fun() ->
                            Batches = mongoose_instrument:get_events(
                                        mod_event_pusher_http_delivery, #{host_type => ?HT}),
                            lists:sum([maps:get(dropped, B, 0) || B <- Batches])
                    end,
    wait_until(fun() -> ReportedDrops() >= 2 end),
    ?assertEqual(2, ReportedDrops()),
    %% Stopping hands every report batch to the reporter: the logs are complete then.
    ok = mongoose_host:stop(),
    TooLarge = log_guard:logged(#{what => event_pusher_event_too_large}),
    ?assertEqual(2, lists:sum([maps:get(dropped, Report) || #{msg := {report, Report}}
                                                                <- TooLarge])),
    ?assertMatch([#{msg := {report, #{max_bytes := 1048576, reason := too_large,
                                      bytes := 2097155}}} | _], TooLarge),
    ?assertEqual([], log_guard:logged(#{what => event_pusher_events_dropped})).

large_and_non_utf8_bodies_are_delivered(Config) ->
    start(Config, #{}),
    Large = binary:copy(<<"0123456789абвгд"/utf8>>, 10000),
    Raw = <<255, 0, 254, "raw">>,
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, Large),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, Raw),
    Requests = wait_requests(Config, 2),
    Messages = lists:sort([proplists:get_value(<<"message">>, form(R)) || R <- Requests]),
    ?assertEqual(lists:sort([Large, Raw]), Messages).

message_without_body_is_skipped(Config) ->
    start(Config, #{}),
    send_message(<<"alice@localhost">>, <<"bob@localhost">>, <<"chat">>, []),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<>>),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"marker">>),
    %% The hook path is synchronous and `accepted' is counted in it: one event (the
    %% marker) is all that will ever be sent.
    ?assertMatch(#{accepted := 1}, pool_stats(http_pool)),
    assert_only_requests(Config, [<<"marker">>]).

outgoing_messages_are_not_sent_by_default(Config) ->
    start(Config, #{}),
    deliver_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"chat">>, <<"out">>),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"in">>),
    ?assertMatch(#{accepted := 1}, pool_stats(http_pool)),
    assert_only_requests(Config, [<<"in">>]).

%% The translator makes events of chat/groupchat/headline/normal (no type = normal),
%% never of error; then the callback module decides. The custom module takes every
%% message with a body, the default one only chat.
stanza_types_are_handled_as_the_callback_says(Config) ->
    start(Config, #{handlers => [#{path => <<"/all">>,
                                   callback_module => mod_event_pusher_http_custom},
                                 #{path => <<"/default">>}]}),
    Types = [<<"chat">>, <<"groupchat">>, <<"headline">>, <<"normal">>, <<"error">>,
             <<"bogus">>, undefined],
    [send_message(<<"alice@localhost">>, <<"bob@localhost">>, Type,
                  hook_driver:body(type_name(Type))) || Type <- Types],
    %% Counted in the (synchronous) hook path: these 6 are all that will be sent.
    ?assertMatch(#{accepted := 6}, pool_stats(http_pool)),
    wait_stats(http_pool, #{delivered => 6, queued => 0, in_flight => 0}),
    Requests = requests(Config),
    All = [jiffy:decode(Body, [return_maps])
           || #{path := <<"/all">>, body := Body} <- Requests],
    Default = [form(R) || R = #{path := <<"/default">>} <- Requests],
    ?assertEqual(lists:sort([<<"chat">>, <<"groupchat">>, <<"headline">>, <<"normal">>,
                             <<"none">>]),
                 lists:sort([maps:get(<<"message">>, J) || J <- All])),
    ?assertEqual([<<"chat">>], [proplists:get_value(<<"message">>, F) || F <- Default]),
    ?assertEqual(6, length(Requests)).

prefix_and_path_are_joined_with_one_slash(Config) ->
    Cases = [{<<"/webservice">>, <<"/notifications">>, <<"/webservice/notifications">>},
             {<<"/webservice/">>, <<"notifications">>, <<"/webservice/notifications">>},
             {<<"/">>, <<"">>, <<"/">>},
             {<<"/api/v1">>, <<"/a/b">>, <<"/api/v1/a/b">>}],
    lists:foreach(
      fun({Prefix, Path, Expected}) ->
              start(Config, #{prefix => Prefix, handlers => [#{path => Path}]}),
              send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"x">>),
              [#{path := Got}] = wait_requests(Config, 1),
              ?assertEqual({Prefix, Path, Expected}, {Prefix, Path, Got}),
              mongoose_host:stop(),
              test_http_listener:clear(?config(listener, Config))
      end, Cases).

two_handlers_with_different_callback_modules(Config) ->
    Second = test_http_listener:start(),
    try
        start(Config, #{handlers => [#{path => <<"/notifications">>},
                                     #{path => <<"/alerts">>, pool => alerts_pool,
                                       callback_module => mod_event_pusher_http_custom}],
                        extra_pools => [{alerts_pool, test_http_listener:port(Second)}]}),
        send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"both">>),
        [#{path := <<"/notifications">>} = Form] = wait_requests(Config, 1),
        {ok, [#{path := <<"/alerts">>, body := Json}]} =
            test_http_listener:wait_for_requests(Second, 1, 5000),
        ?assertEqual(<<"both">>, proplists:get_value(<<"message">>, form(Form))),
        ?assertMatch(#{<<"message">> := <<"both">>, <<"from">> := <<"alice">>,
                       <<"to">> := <<"bob">>, <<"direction">> := <<"in">>},
                     jiffy:decode(Json, [return_maps])),
        %% The listener records a request before it answers: wait for the answer.
        wait_stats(http_pool, #{accepted => 1, delivered => 1}),
        wait_stats(alerts_pool, #{accepted => 1, delivered => 1})
    after
        test_http_listener:stop(Second)
    end.

listener_absent_counts_failures_and_retries(Config) ->
    %% The port the listener had, with nothing listening on it any more.
    Port = test_http_listener:port(?config(listener, Config)),
    test_http_listener:stop(?config(listener, Config)),
    start(Config, #{port => Port, retry => #{max_attempts => 3}}),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"lost">>),
    Failures = wait_metrics(mod_event_pusher_http_sent, 3),
    ?assertEqual(lists:duplicate(3, #{failure_count => 1, sender => <<"alice">>}), Failures),
    wait_stats(http_pool, #{failed => 1, retried => 2, delivered => 0, queued => 0}).

listener_answering_500_is_retried_and_counted(Config) ->
    test_http_listener:set_reply(?config(listener, Config), [500, 500]),
    start(Config, #{retry => #{max_attempts => 3}}),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"third time lucky">>),
    wait_stats(http_pool, #{accepted => 1, delivered => 1, retried => 2, failed => 0,
                            queued => 0, in_flight => 0}),
    ?assertEqual(3, length(requests(Config))),
    Codes = [maps:get(response_code, M) || M <- wait_metrics(mod_event_pusher_http_sent, 3)],
    ?assertEqual([<<"500">>, <<"500">>, <<"200">>], Codes).

client_error_is_not_retried(Config) ->
    test_http_listener:set_reply(?config(listener, Config), 404),
    start(Config, #{retry => #{max_attempts => 5}}),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"nope">>),
    wait_stats(http_pool, #{accepted => 1, failed => 1, retried => 0, queued => 0,
                            in_flight => 0}),
    ?assertEqual(1, length(requests(Config))),
    ?assertMatch([#{response_code := <<"404">>}], wait_metrics(mod_event_pusher_http_sent, 1)).

full_queue_drops_and_counts(Config) ->
    %% The listener never answers (and the client waits 60 s for it): once the one
    %% worker holds the first event, nothing leaves the queue (5) while the test runs.
    test_http_listener:set_reply(?config(listener, Config), {delay, 60000, 200}),
    start(Config, #{workers => 1, queue => #{max_events => 5}, request_timeout => 60000,
                    retry => #{max_attempts => 1}, drain_timeout_ms => 0}),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"1">>),
    wait_requests(Config, 1),
    wait_stats(http_pool, #{in_flight => 1, queued => 0}),
    [send_chat(<<"alice@localhost">>, <<"bob@localhost">>, integer_to_binary(N))
     || N <- lists:seq(2, 50)],
    Dropped = 44,
    ?assertMatch(#{accepted := 50, queued := 5, in_flight := 1, dropped := Dropped,
                   delivered := 0, failed := 0}, pool_stats(http_pool)),
    %% Reported in batches: the drops add up over the batches.
    Reported = fun() ->
                       Batches = mongoose_instrument:get_events(mod_event_pusher_http_delivery,
                                                                #{host_type => ?HT}),
                       lists:sum([maps:get(dropped, B, 0) || B <- Batches])
               end,
    try wait_until(fun() -> Reported() =:= Dropped end)
    catch exit:{test_case_failed, _} ->
            ct:fail({drops_reported, Reported(), stats_dropped, Dropped, now,
                     pool_stats(http_pool),
                     mongoose_instrument:get_events(mod_event_pusher_http_delivery,
                                                    #{host_type => ?HT})})
    end.

%% Each answer takes 100 ms and there are 2 workers: the 40 events need 2 s, so most
%% are still queued when stop is called (checked, not assumed).
stop_drains_pending_events(Config) ->
    test_http_listener:set_reply(?config(listener, Config), {delay, 100, 200}),
    start(Config, #{workers => 2, drain_timeout_ms => 10000}),
    Sent = [integer_to_binary(N) || N <- lists:seq(1, 40)],
    [send_chat(<<"alice@localhost">>, <<"bob@localhost">>, Body) || Body <- Sent],
    #{accepted := 40, queued := Queued} = pool_stats(http_pool),
    ?assert(Queued > 0, {queued_before_stop, Queued}),
    ok = mongoose_host:stop(),
    %% Everything arrived (and was answered) before stop returned.
    ?assertEqual(lists:sort(Sent),
                 lists:sort([proplists:get_value(<<"message">>, form(R))
                             || R <- requests(Config)])).

%% Every event's first two attempts get a 500. With the default retry settings (3
%% attempts, 30 s deadline) and the pool's default 10 workers, every event arrives a
%% third time and is delivered: a retry waits in the queue, not in a worker.
webhook_failing_each_first_two_attempts_gets_every_event_with_default_settings(Config) ->
    N = 2000,
    test_http_listener:set_reply(?config(listener, Config), {per_body, [500, 500]}),
    start(Config, #{workers => 10, retry => #{}}),
    Sent = [integer_to_binary(I) || I <- lists:seq(1, N)],
    [send_chat(<<"alice@localhost">>, <<"bob@localhost">>, Body) || Body <- Sent],
    wait_stats(http_pool, #{delivered => N, failed => 0, retried => 2 * N, queued => 0,
                            waiting_retry => 0, in_flight => 0}, 3000),
    Arrived = arrivals_by_message(Config),
    ?assertEqual(lists:sort(Sent), lists:sort(maps:keys(Arrived))),
    ?assertEqual([3], lists:usort([length(Times) || Times <- maps:values(Arrived)])),
    ?assertMatch(#{accepted := N, dropped := 0}, pool_stats(http_pool)).

%% 503 and then 429, each with `Retry-After: 1': the next attempt comes no sooner.
retry_after_on_503_and_429_is_waited_out(Config) ->
    N = 20,
    RetryAfter = [{<<"retry-after">>, <<"1">>}],
    test_http_listener:set_reply(?config(listener, Config),
                                 {per_body, [{headers, 503, RetryAfter},
                                             {headers, 429, RetryAfter}]}),
    start(Config, #{retry => #{}}),
    [send_chat(<<"alice@localhost">>, <<"bob@localhost">>, integer_to_binary(I))
     || I <- lists:seq(1, N)],
    wait_stats(http_pool, #{delivered => N, failed => 0, retried => 2 * N}, 1000),
    Arrived = arrivals_by_message(Config),
    ?assertEqual(N, map_size(Arrived)),
    maps:foreach(fun(Body, Times = [T1, T2, T3]) ->
                         %% A lower bound: no attempt before the server allowed it.
                         ?assert(T2 - T1 >= 1000 andalso T3 - T2 >= 1000, {Body, Times})
                 end, Arrived),
    Codes = [maps:get(response_code, M)
             || M <- wait_metrics(mod_event_pusher_http_sent, 3 * N)],
    ?assertEqual([{<<"200">>, N}, {<<"429">>, N}, {<<"503">>, N}],
                 [{C, length([X || X <- Codes, X =:= C])} || C <- lists:usort(Codes)]).

%% One worker. The first event is told to come back in 2 s; the second, sent after
%% the first one's attempt arrived, is delivered by that worker meanwhile.
an_event_waiting_to_be_retried_holds_no_worker(Config) ->
    Listener = ?config(listener, Config),
    test_http_listener:set_reply(Listener, {per_body, [{headers, 503,
                                                        [{<<"retry-after">>, <<"2">>}]}]}),
    start(Config, #{workers => 1, retry => #{}}),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"told to wait">>),
    wait_stats(http_pool, #{waiting_retry => 1, queued => 1, in_flight => 0}),
    test_http_listener:set_reply(Listener, 200),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"behind it">>),
    wait_stats(http_pool, #{delivered => 2, failed => 0}, 1000),
    Order = [proplists:get_value(<<"message">>, form(R)) || R <- requests(Config)],
    ?assertEqual([<<"told to wait">>, <<"behind it">>, <<"told to wait">>], Order).

%% `Retry-After: 120' with the default 30 s deadline: failed after one attempt, with
%% a reason that says why.
retry_after_past_the_deadline_fails_at_once_saying_so(Config) ->
    test_logs:capture(),
    test_http_listener:set_reply(?config(listener, Config),
                                 {per_body, [{headers, 503, [{<<"retry-after">>, <<"120">>}]}]}),
    start(Config, #{retry => #{}}),
    send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"too far">>),
    wait_stats(http_pool, #{failed => 1, retried => 0, queued => 0, in_flight => 0}),
    #{example := #{reason := Logged}} = test_logs:wait(event_pusher_delivery_failed, 5000),
    ?assertEqual({retry_after_past_deadline, {120, {http_status, 503}}}, Logged),
    ?assertEqual([<<"too far">>],
                 [proplists:get_value(<<"message">>, form(R)) || R <- requests(Config)]).

dynamic_host_type_gets_its_own_instance(Config) ->
    start(Config, #{host_types => [<<"dyn type">>]}),
    HostType = <<"dyn type">>,
    ?assertMatch(#{http_pool := #{accepted := 0}}, mod_event_pusher_http:stats(HostType)),
    send_chat(HostType, <<"alice@dyn.example">>, <<"bob@dyn.example">>, <<"chat">>, <<"dyn">>),
    %% `accepted' is counted in the hook path: final once the hook returned.
    ?assertMatch(#{http_pool := #{accepted := 1}}, mod_event_pusher_http:stats(HostType)),
    ?assertMatch(#{http_pool := #{accepted := 0}}, mod_event_pusher_http:stats(?HT)),
    [Request] = wait_requests(Config, 1),
    ?assertEqual(<<"dyn.example">>, proplists:get_value(<<"server">>, form(Request))),
    test_wait:until(fun() -> maps:get(delivered, type_pool_stats(HostType, http_pool)) =:= 1 end,
                    fun() -> mod_event_pusher_http:stats(HostType) end),
    ?assertMatch(#{http_pool := #{accepted := 0}}, mod_event_pusher_http:stats(?HT)).

https_with_a_trusted_ca_delivers(Config) ->
    {Listener, CaFile} = tls_listener(Config),
    try
        start(Config, #{scheme => <<"https">>, port => test_http_listener:port(Listener),
                        tls => [{<<"verify_mode">>, <<"\"peer\"">>},
                                {<<"cacertfile">>, [$", CaFile, $"]}]}),
        send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"secret">>),
        {ok, [Request]} = test_http_listener:wait_for_requests(Listener, 1, 5000),
        ?assertEqual(<<"secret">>, proplists:get_value(<<"message">>, form(Request)))
    after
        test_http_listener:stop(Listener)
    end.

https_certificate_is_verified_unless_told_not_to(Config) ->
    {Listener, _CaFile} = tls_listener(Config),
    Port = test_http_listener:port(Listener),
    try
        %% Our CA is not among the system roots: the handshake must fail.
        start(Config, #{scheme => <<"https">>, port => Port, retry => #{max_attempts => 1}}),
        send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"refused">>),
        ?assertMatch([#{failure_count := 1}], wait_metrics(mod_event_pusher_http_sent, 1)),
        ?assertEqual([], test_http_listener:requests(Listener)),
        mongoose_host:stop(),
        start(Config, #{scheme => <<"https">>, port => Port,
                        tls => [{<<"verify_mode">>, <<"\"none\"">>}]}),
        send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"accepted">>),
        {ok, [Request]} = test_http_listener:wait_for_requests(Listener, 1, 5000),
        ?assertEqual(<<"accepted">>, proplists:get_value(<<"message">>, form(Request)))
    after
        test_http_listener:stop(Listener)
    end.

%% `tls.certfile' and `tls.keyfile': a server that verifies its clients
%% (fail_if_no_peer_cert) refuses the handshake without them and takes the event with
%% them, so the certificate was presented and the server verified it against its CA.
https_client_certificate_is_presented_when_the_server_demands_one(Config) ->
    Dir = ?config(priv_dir, Config),
    {Server, Client} = tls_test_data(),
    CaFile = write_cacerts(Dir, "client_test_ca.pem", Client),
    CertFile = filename:join(Dir, "client_cert.pem"),
    KeyFile = filename:join(Dir, "client_key.pem"),
    ok = file:write_file(CertFile, public_key:pem_encode([{'Certificate',
                                                           proplists:get_value(cert, Client),
                                                           not_encrypted}])),
    {KeyType, KeyDer} = proplists:get_value(key, Client),
    ok = file:write_file(KeyFile, public_key:pem_encode([{KeyType, KeyDer, not_encrypted}])),
    Listener = test_http_listener:start_tls(200, Server ++ [{verify, verify_peer},
                                                            {fail_if_no_peer_cert, true}]),
    Port = test_http_listener:port(Listener),
    Trust = [{<<"verify_mode">>, <<"\"peer\"">>}, {<<"cacertfile">>, [$", CaFile, $"]}],
    try
        start(Config, #{scheme => <<"https">>, port => Port, tls => Trust,
                        retry => #{max_attempts => 1}}),
        send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"no certificate">>),
        ?assertMatch([#{failure_count := 1}], wait_metrics(mod_event_pusher_http_sent, 1)),
        ?assertMatch([_ | _], test_http_listener:handshake_failures(Listener)),
        ?assertEqual([], test_http_listener:requests(Listener)),
        mongoose_host:stop(),
        start(Config, #{scheme => <<"https">>, port => Port,
                        tls => Trust ++ [{<<"certfile">>, [$", CertFile, $"]},
                                         {<<"keyfile">>, [$", KeyFile, $"]}]}),
        send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"with a certificate">>),
        {ok, [Request]} = test_http_listener:wait_for_requests(Listener, 1, 5000),
        ?assertEqual(<<"with a certificate">>, proplists:get_value(<<"message">>, form(Request)))
    after
        test_http_listener:stop(Listener)
    end.

%% selfsigned_peer: a self-signed certificate for the right name, valid now, is
%% accepted; nothing else is forgiven.
https_selfsigned_peer_accepts_a_self_signed_certificate(Config) ->
    Listener = self_signed_listener(["localhost"], valid_now()),
    try
        start_selfsigned_peer(Config, Listener),
        send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"self-signed">>),
        {ok, [Request]} = test_http_listener:wait_for_requests(Listener, 1, 5000),
        ?assertEqual(<<"self-signed">>, proplists:get_value(<<"message">>, form(Request))),
        wait_stats(http_pool, #{delivered => 1, failed => 0}),
        ?assertEqual([], test_http_listener:handshake_failures(Listener))
    after
        test_http_listener:stop(Listener)
    end.

https_selfsigned_peer_refuses_an_expired_self_signed_certificate(Config) ->
    Listener = self_signed_listener(["localhost"], {{{2020, 1, 1}, {0, 0, 0}},
                                                    {{2021, 1, 1}, {0, 0, 0}}}),
    assert_refused(Config, Listener, certificate_expired, <<"certificate expired">>).

https_selfsigned_peer_refuses_a_self_signed_certificate_for_another_name(Config) ->
    Listener = self_signed_listener(["other.example"], valid_now()),
    assert_refused(Config, Listener, bad_certificate, <<"not valid for name \"localhost\"">>).

https_selfsigned_peer_refuses_a_certificate_from_an_untrusted_ca(Config) ->
    {Listener, _CaFile} = tls_listener(Config),
    assert_refused(Config, Listener, unknown_ca, <<"UnknownIssuer">>).

https_verify_mode_none_warns_at_start(Config) ->
    Listener = self_signed_listener(["other.example"], {{{2020, 1, 1}, {0, 0, 0}},
                                                        {{2021, 1, 1}, {0, 0, 0}}}),
    try
        test_logs:capture(),
        start(Config, #{scheme => <<"https">>, port => test_http_listener:port(Listener),
                        tls => [{<<"verify_mode">>, <<"\"none\"">>}]}),
        ?assertMatch(#{pool_name := http_pool},
                     test_logs:wait(event_pusher_http_tls_not_verified, 5000)),
        send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"unverified">>),
        {ok, [Request]} = test_http_listener:wait_for_requests(Listener, 1, 5000),
        ?assertEqual(<<"unverified">>, proplists:get_value(<<"message">>, form(Request)))
    after
        test_http_listener:stop(Listener)
    end.

missing_pool_fails_the_start_with_a_reason(Config) ->
    Toml = toml(Config, #{handlers => [#{path => <<"/x">>, pool => no_such_pool}]}),
    Opts = options(Config, Toml),
    log_guard:expect(#{what => module_start_failed, module => mod_event_pusher_http}),
    try mongoose_host:start(Opts) of
        _ -> ct:fail(started_without_pool)
    catch error:Reason ->
            Text = iolist_to_binary(io_lib:format("~p", [Reason])),
            ?assertNotEqual(nomatch, binary:match(Text, <<"no_such_pool">>)),
            ?assertNotEqual(nomatch, binary:match(Text, <<"pool_not_configured">>))
    end.

%% Helpers

%% The options of this TOML text, as MongooseIM's parser gives them.
options(Config, Toml) ->
    mongoose_config_parser:parse_file(mongoose_host:write_toml(?config(priv_dir, Config), Toml)).

start(Config, Spec) ->
    ok = mongoose_host:start_toml(?config(priv_dir, Config), toml(Config, Spec)),
    mongoose_instrument:clear_events().

toml(Config, Spec) ->
    Port = case Spec of
               #{port := P} -> P;
               _ -> test_http_listener:port(?config(listener, Config))
           end,
    HostTypes = maps:get(host_types, Spec, []),
    Handlers = maps:get(handlers, Spec, [#{path => <<"/notifications">>}]),
    Pools = [{http_pool, Port} | maps:get(extra_pools, Spec, [])],
    Queue = maps:get(queue, Spec, #{}),
    Retry = maps:get(retry, Spec, #{base_backoff_ms => 10, max_backoff_ms => 20}),
    [<<"[general]\n  hosts = [\"localhost\"]\n  default_server_domain = \"localhost\"\n">>,
     <<"  host_types = [">>, lists:join(<<", ">>, [[$", H, $"] || H <- HostTypes]), <<"]\n\n">>,
     [[<<"[outgoing_pools.http.">>, atom_to_binary(Name), <<"]\n">>,
       <<"  workers = ">>, integer_to_binary(maps:get(workers, Spec, 4)), <<"\n">>,
       <<"  connection.host = \"">>, maps:get(scheme, Spec, <<"http">>), <<"://">>,
       maps:get(host_name, Spec, host_name(Spec)), <<":">>, integer_to_binary(P), <<"\"\n">>,
       [[<<"  connection.tls.">>, K, <<" = ">>, V, <<"\n">>] || {K, V} <- maps:get(tls, Spec, [])],
       <<"  connection.path_prefix = \"">>, maps:get(prefix, Spec, <<"/">>), <<"\"\n">>,
       <<"  connection.request_timeout = ">>,
       integer_to_binary(maps:get(request_timeout, Spec, 3000)), <<"\n\n">>]
      || {Name, P} <- Pools],
     <<"[modules.mod_event_pusher.http]\n">>,
     <<"  handlers = [">>, lists:join(<<", ">>, [handler(H) || H <- Handlers]), <<"]\n">>,
     <<"  drain_timeout_ms = ">>, integer_to_binary(maps:get(drain_timeout_ms, Spec, 2000)),
     <<"\n">>,
     table(<<"queue">>, Queue), table(<<"retry">>, Retry)].

%% Certificates are issued for "localhost".
host_name(#{scheme := <<"https">>}) -> <<"localhost">>;
host_name(_) -> <<"127.0.0.1">>.

%% An HTTPS listener with a fresh CA (RSA keys: rustls refuses what OTP 25 signs with
%% its test EC keys) and that CA
%% written to a PEM file.
tls_listener(Config) ->
    {Server, Client} = tls_test_data(),
    CaFile = write_cacerts(?config(priv_dir, Config), "ca.pem", Client),
    {test_http_listener:start_tls(200, Server), CaFile}.

%% A server chain for "localhost" and a client chain, each with its own fresh root:
%% the server's ssl options (its cacerts verify clients) and the client's.
tls_test_data() ->
    San = #'Extension'{extnID = ?'id-ce-subjectAltName', critical = false,
                       extnValue = [{dNSName, "localhost"}]},
    Key = {key, {rsa, 2048, 65537}},
    #{server_config := Server, client_config := Client} =
        public_key:pkix_test_data(
          #{server_chain => #{root => [Key, {digest, sha256}], intermediates => [],
                              peer => [Key, {digest, sha256}, {extensions, [San]}]},
            client_chain => #{root => [Key, {digest, sha256}], intermediates => [],
                              peer => [Key, {digest, sha256}]}}),
    {Server, Client}.

%% The CA certificates of a side's ssl options as a PEM file (the client's cacerts
%% verify the server).
write_cacerts(Dir, Name, SslOpts) ->
    File = filename:join(Dir, Name),
    ok = file:write_file(File, public_key:pem_encode(
                                 [{'Certificate', Der, not_encrypted}
                                  || Der <- proplists:get_value(cacerts, SslOpts)])),
    File.

start_selfsigned_peer(Config, Listener) ->
    start(Config, #{scheme => <<"https">>, port => test_http_listener:port(Listener),
                    retry => #{max_attempts => 1},
                    tls => [{<<"verify_mode">>, <<"\"selfsigned_peer\"">>}]}).

%% One event, one attempt: the client aborts the handshake with Alert (seen by the
%% listener), no request arrives, and the failure is counted and logged with the
%% certificate error (Reason, a part of rustls' text).
assert_refused(Config, Listener, Alert, Reason) ->
    try
        test_logs:capture(),
        start_selfsigned_peer(Config, Listener),
        send_chat(<<"alice@localhost">>, <<"bob@localhost">>, <<"must not arrive">>),
        wait_stats(http_pool, #{failed => 1, delivered => 0, queued => 0, in_flight => 0}),
        #{example := #{reason := Logged}} = test_logs:wait(event_pusher_delivery_failed, 5000),
        {tls, Text} = Logged,
        ?assertMatch(<<"invalid peer certificate: ", _/binary>>, Text),
        ?assertNotEqual(nomatch, binary:match(Text, Reason), Logged),
        ?assertMatch([#{failure_count := 1}], wait_metrics(mod_event_pusher_http_sent, 1)),
        ?assertMatch([{tls_alert, {Alert, _}}], test_http_listener:handshake_failures(Listener)),
        ?assertEqual([], test_http_listener:requests(Listener))
    after
        test_http_listener:stop(Listener)
    end.

%% An HTTPS listener presenting a fresh self-signed certificate for Names (an end-entity
%% certificate: rustls refuses a CA certificate as a server's own).
self_signed_listener(Names, Validity) ->
    {Der, Key} = self_signed_certificate(Names, Validity),
    test_http_listener:start_tls(200, [{cert, Der},
                                       {key, {'RSAPrivateKey',
                                              public_key:der_encode('RSAPrivateKey', Key)}}]).

valid_now() ->
    Now = erlang:system_time(second),
    {calendar:system_time_to_universal_time(Now - 86400, second),
     calendar:system_time_to_universal_time(Now + 86400 * 365, second)}.

self_signed_certificate(Names = [CommonName | _], {NotBefore, NotAfter}) ->
    Key = public_key:generate_key({rsa, 2048, 65537}),
    #'RSAPrivateKey'{modulus = Modulus, publicExponent = Exponent} = Key,
    Name = {rdnSequence, [[#'AttributeTypeAndValue'{type = ?'id-at-commonName',
                                                    value = {utf8String,
                                                             list_to_binary(CommonName)}}]]},
    Tbs = #'OTPTBSCertificate'{
             version = v3,
             serialNumber = erlang:unique_integer([positive]),
             signature = #'SignatureAlgorithm'{algorithm = ?sha256WithRSAEncryption,
                                               parameters = 'NULL'},
             issuer = Name,
             subject = Name,
             validity = #'Validity'{notBefore = utc_time(NotBefore),
                                    notAfter = utc_time(NotAfter)},
             subjectPublicKeyInfo =
                 #'OTPSubjectPublicKeyInfo'{
                    algorithm = #'PublicKeyAlgorithm'{algorithm = ?rsaEncryption,
                                                      parameters = 'NULL'},
                    subjectPublicKey = #'RSAPublicKey'{modulus = Modulus,
                                                       publicExponent = Exponent}},
             extensions = [#'Extension'{extnID = ?'id-ce-subjectAltName', critical = false,
                                        extnValue = [{dNSName, N} || N <- Names]},
                           #'Extension'{extnID = ?'id-ce-basicConstraints', critical = true,
                                        extnValue = #'BasicConstraints'{cA = false}}]},
    {public_key:pkix_sign(Tbs, Key), Key}.

%% UTCTime, for years before 2050.
utc_time({{Y, Mo, D}, {H, Mi, S}}) ->
    {utcTime, lists:flatten(io_lib:format("~2..0w~2..0w~2..0w~2..0w~2..0w~2..0wZ",
                                          [Y rem 100, Mo, D, H, Mi, S]))}.

handler(H) ->
    Fields = [[<<"path = \"">>, maps:get(path, H), <<"\"">>]]
        ++ [[<<"pool_name = \"">>, atom_to_binary(P), <<"\"">>] || P <- [maps:get(pool, H, http_pool)]]
        ++ [[<<"callback_module = \"">>, atom_to_binary(M), <<"\"">>]
            || M <- [maps:get(callback_module, H, mod_event_pusher_http_defaults)]],
    [<<"{">>, lists:join(<<", ">>, Fields), <<"}">>].

table(_Name, Map) when map_size(Map) =:= 0 -> [];
table(Name, Map) ->
    [<<"  ">>, Name, <<" = {">>,
     lists:join(<<", ">>, [[atom_to_binary(K), <<" = ">>, integer_to_binary(V)]
                           || {K, V} <- maps:to_list(Map)]),
     <<"}\n">>].

type_name(undefined) -> <<"none">>;
type_name(Type) -> Type.

send_chat(From, To, Body) ->
    send_message(From, To, <<"chat">>, hook_driver:body(Body)).

send_message(From, To, Type, Children) ->
    hook_driver:send_element(?HT, hook_driver:message(From, To, Type, Children)).

send_chat(HostType, From, To, Type, Body) ->
    hook_driver:send(HostType, Type, From, To, Body).

deliver_chat(From, To, Type, Body) ->
    hook_driver:deliver(?HT, Type, From, To, Body).

requests(Config) ->
    test_http_listener:requests(?config(listener, Config)).

%% Arrival times (ms) of each message text, in order.
arrivals_by_message(Config) ->
    lists:foldl(fun(Request = #{at := At}, Acc) ->
                        Message = proplists:get_value(<<"message">>, form(Request)),
                        maps:update_with(Message, fun(Times) -> Times ++ [At] end, [At], Acc)
                end, #{}, requests(Config)).

wait_requests(Config, N) ->
    case test_http_listener:wait_for_requests(?config(listener, Config), N, 5000) of
        {ok, Requests} -> Requests;
        {timeout, Got} -> ct:fail({expected_requests, N, got, Got})
    end.

wait_metrics(Event, N) ->
    case mongoose_instrument:wait_for_events(Event, #{host_type => ?HT}, N, 5000) of
        {ok, Events} -> Events;
        {timeout, Got} -> ct:fail({expected_events, Event, N, got, Got})
    end.

wait_until(Check) ->
    test_wait:until(Check, fun() -> pool_stats(http_pool) end).

pool_stats(Pool) ->
    type_pool_stats(?HT, Pool).

type_pool_stats(HostType, Pool) ->
    maps:get(Pool, mod_event_pusher_http:stats(HostType)).

%% After the last event was sent (its hook returned: `accepted' is final then): waits
%% until every accepted event has an outcome, then the listener must have received
%% exactly Messages (the "message" fields, in any order) and nothing more can come.
assert_only_requests(Config, Messages) ->
    #{accepted := Accepted} = pool_stats(http_pool),
    wait_until(fun() ->
                       case pool_stats(http_pool) of
                           #{queued := 0, in_flight := 0, delivered := D, failed := F,
                             dropped := Dr} -> D + F + Dr =:= Accepted;
                           _ -> false
                       end
               end),
    ?assertEqual(lists:sort(Messages),
                 lists:sort([proplists:get_value(<<"message">>, form(R))
                             || R <- requests(Config)])).

%% Waits until the pool's stats include Expected.
wait_stats(Pool, Expected) ->
    wait_stats(Pool, Expected, 250).

wait_stats(Pool, Expected, 0) ->
    ct:fail({stats_mismatch, Expected, pool_stats(Pool)});
wait_stats(Pool, Expected, Tries) ->
    Stats = pool_stats(Pool),
    case maps:with(maps:keys(Expected), Stats) of
        Expected -> Stats;
        _ -> timer:sleep(20), wait_stats(Pool, Expected, Tries - 1)
    end.

%% Form decoding by hand: uri_string refuses bodies that are not UTF-8 once decoded.
form(#{body := Body}) ->
    [list_to_tuple([unescape(Part) || Part <- binary:split(Pair, <<"=">>)])
     || Pair <- binary:split(Body, <<"&">>, [global])].

unescape(<<"+", Rest/binary>>) -> <<" ", (unescape(Rest))/binary>>;
unescape(<<"%", Hex:2/binary, Rest/binary>>) ->
    <<(binary_to_integer(Hex, 16)), (unescape(Rest))/binary>>;
unescape(<<C, Rest/binary>>) -> <<C, (unescape(Rest))/binary>>;
unescape(<<>>) -> <<>>.
