%% The sns backend end to end: TOML config -> stand-in host -> hooks -> Rust
%% (aws-sdk-sns) -> moto's SNS server. Each topic has an SQS queue subscribed to it
%% (raw delivery off), and the cases assert what SNS put there: the exact JSON message,
%% the topic and the message attributes. Topic names are unique per case.
%% Fault cases reach the emulator through test_tcp_proxy ("stopped" = connections
%% refused), since a restarted moto would have forgotten its topics.
-module(sns_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("exml.hrl").

-define(HT, <<"localhost">>).
-define(LABELS, #{host_type => ?HT}).
-define(ACCOUNT, "123456789012").
-define(SECRET, "s3cr3t/Key+ThatMustNeverBeLogged").
-define(PROXY_CASES, [emulator_back_within_retry_budget_delivers,
                      emulator_down_too_long_counts_failures_and_recovers,
                      queue_overflow_is_counted]).

all() ->
    [presence_online_and_offline,
     pm_and_muc_messages,
     outgoing_messages_are_not_published,
     bodiless_and_unconfigured_topics_are_skipped,
     custom_plugin_guid_and_attributes,
     large_unicode_body_arrives_intact,
     invalid_utf8_body_is_delivered_with_replacement_characters,
     plugin_errors_skip_the_event_and_are_counted,
     batching_on_and_off_deliver_each_message_once,
     emulator_back_within_retry_budget_delivers,
     emulator_down_too_long_counts_failures_and_recovers,
     queue_overflow_is_counted,
     wrong_credentials_fail_with_a_clear_reason_and_no_secret].

suite() ->
    [{timetrap, {seconds, 90}}].

init_per_suite(Config) ->
    {ok, Emulator} = sns_emulator:start(),
    [{emulator, Emulator} | Config].

end_per_suite(Config) ->
    sns_emulator:stop(?config(emulator, Config)).

init_per_testcase(Case, Config) ->
    Prefix = iolist_to_binary([atom_to_list(Case), "_",
                               integer_to_list(erlang:unique_integer([positive]))]),
    Names = maps:from_list([{Kind, <<Prefix/binary, "_", (atom_to_binary(Kind))/binary>>}
                            || Kind <- [presence, pm, muc]]),
    Emulator = ?config(emulator, Config),
    Topics = sns_emulator:setup(Emulator, maps:values(Names)),
    Proxy = case lists:member(Case, ?PROXY_CASES) of
                true -> [{proxy, test_tcp_proxy:start(maps:get(port, Emulator))}];
                false -> []
            end,
    Proxy ++ [{topics, maps:map(fun(_Kind, Name) -> maps:get(Name, Topics) end, Names)},
     {topic_names, Names} | Config].

end_per_testcase(_Case, Config) ->
    catch logger:remove_handler(?MODULE),
    Stopped = test_wait:cleanup(fun mongoose_host:stop/0, 15000),
    case ?config(proxy, Config) of
        undefined -> ok;
        {Proxy, _Port} -> test_tcp_proxy:stop(Proxy)
    end,
    Stopped.

%%% Cases

presence_online_and_offline(Config) ->
    start(Config, #{}),
    hook_driver:presence(?HT, <<"Alice@localhost/phone">>, online),
    hook_driver:presence(?HT, <<"alice@localhost/phone">>, offline),
    %% Published concurrently, as in MongooseIM: the order may change.
    [Offline, Online] = lists:sort(fun(A, B) -> present(A) =< present(B) end,
                                   receive_messages(Config, presence, 2)),
    ?assertEqual(#{<<"user_id">> => <<"alice@localhost">>, <<"present">> => true},
                 decoded(Online)),
    ?assertEqual(#{<<"user_id">> => <<"alice@localhost">>, <<"present">> => false},
                 decoded(Offline)),
    ?assertEqual(topic_arn(Config, presence), maps:get(<<"TopicArn">>, Online)),
    %% MongooseIM's exact bytes (jiffy's key order).
    ?assertEqual(<<"{\"present\":true,\"user_id\":\"alice@localhost\"}">>,
                 maps:get(<<"Message">>, Online)),
    %% The default plugin adds no attributes.
    ?assertEqual(#{}, maps:get(<<"MessageAttributes">>, Online, #{})),
    wait_stats(#{delivered => 2, failed => 0}).

pm_and_muc_messages(Config) ->
    start(Config, #{}),
    hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"Bob@localhost">>, <<"hi Bob">>),
    hook_driver:send(?HT, <<"groupchat">>, <<"alice@localhost/a">>, <<"room@muc.localhost">>,
                     <<"hi room">>),
    [Pm] = receive_messages(Config, pm, 1),
    ?assertEqual(#{<<"from_user_id">> => <<"alice@localhost">>,
                   <<"to_user_id">> => <<"bob@localhost">>,
                   <<"message">> => <<"hi Bob">>}, decoded(Pm)),
    ?assertEqual(topic_arn(Config, pm), maps:get(<<"TopicArn">>, Pm)),
    [Muc] = receive_messages(Config, muc, 1),
    ?assertEqual(#{<<"from_user_id">> => <<"alice@localhost">>,
                   <<"to_user_id">> => <<"room@muc.localhost">>,
                   <<"message">> => <<"hi room">>}, decoded(Muc)),
    ?assertEqual(topic_arn(Config, muc), maps:get(<<"TopicArn">>, Muc)),
    wait_stats(#{delivered => 2}),
    [#{count := 1, time := T, size := S} | _] = wait_events(mod_event_pusher_sns_publish, 2),
    ?assert(is_integer(T) andalso is_integer(S) andalso S > 0),
    ?assertEqual(2, lists:sum([D || #{delivered := D} <- events(mod_event_pusher_sns_delivery)])).

%% MongooseIM publishes what users send, not what they receive.
outgoing_messages_are_not_published(Config) ->
    start(Config, #{}),
    hook_driver:deliver(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost/b">>,
                        <<"incoming">>),
    hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>, <<"marker">>),
    ?assertEqual([<<"marker">>], [maps:get(<<"message">>, decoded(M))
                                  || M <- receive_messages(Config, pm, 1)]),
    %% accepted is counted before the hook returns: exactly one event was taken.
    wait_stats(#{accepted => 1, delivered => 1}).

%% No body, a topic left out, a message type with no topic: nothing is published.
%% A marker message after them proves the pipeline was working.
bodiless_and_unconfigured_topics_are_skipped(Config) ->
    start(Config, #{topics => [pm]}),
    hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>, undefined),
    hook_driver:send(?HT, <<"groupchat">>, <<"alice@localhost/a">>, <<"room@muc.localhost">>,
                     <<"no muc topic">>),
    hook_driver:send(?HT, <<"normal">>, <<"alice@localhost/a">>, <<"bob@localhost">>,
                     <<"normal type">>),
    hook_driver:presence(?HT, <<"alice@localhost/a">>, online),
    hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>, <<"marker">>),
    ?assertEqual([<<"marker">>], [maps:get(<<"message">>, decoded(M))
                                  || M <- receive_messages(Config, pm, 1)]),
    ?assertEqual([], receive_messages(Config, muc, 0)),
    ?assertEqual([], receive_messages(Config, presence, 0)),
    wait_stats(#{accepted => 1, delivered => 1}).

custom_plugin_guid_and_attributes(Config) ->
    start(Config, #{plugin_module => mod_event_pusher_sns_custom}),
    hook_driver:presence(?HT, <<"alice@localhost/a">>, online),
    Msg = hook_driver:message(<<"alice@localhost/a">>, <<"bob@localhost">>, <<"chat">>,
                              hook_driver:body(<<"with attributes">>)),
    hook_driver:send_element(?HT, Msg#xmlel{attrs = (Msg#xmlel.attrs)#{<<"id">> => <<"m1">>}}),
    [Presence] = receive_messages(Config, presence, 1),
    ?assertEqual(#{<<"user_id">> => <<"guid:alice:localhost">>, <<"present">> => true},
                 decoded(Presence)),
    ?assertEqual(#{<<"topic">> => string_attr(topic_arn(Config, presence)),
                   <<"user">> => string_attr(<<"alice">>),
                   <<"online">> => #{<<"Type">> => <<"Number">>, <<"Value">> => <<"1">>}},
                 maps:get(<<"MessageAttributes">>, Presence)),
    [Pm] = receive_messages(Config, pm, 1),
    ?assertEqual(#{<<"from_user_id">> => <<"guid:alice:localhost">>,
                   <<"to_user_id">> => <<"guid:bob:localhost">>,
                   <<"message">> => <<"with attributes">>}, decoded(Pm)),
    ?assertEqual(#{<<"type">> => string_attr(<<"pm">>),
                   <<"id">> => string_attr(<<"m1">>),
                   <<"priority">> => #{<<"Type">> => <<"Number">>, <<"Value">> => <<"2.5">>},
                   <<"raw">> => #{<<"Type">> => <<"Binary">>,
                                  <<"Value">> => base64:encode(<<0, 1, 2, 255>>)},
                   <<"größe"/utf8>> => string_attr(<<"groß"/utf8>>)},
                 maps:get(<<"MessageAttributes">>, Pm)).

large_unicode_body_arrives_intact(Config) ->
    start(Config, #{}),
    Body = large_unicode_body(200 * 1024),
    hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>, Body),
    [Pm] = receive_messages(Config, pm, 1),
    ?assertEqual(Body, maps:get(<<"message">>, decoded(Pm))),
    wait_stats(#{delivered => 1, failed => 0}).

%% Bytes that are not UTF-8 cannot go into JSON: they become U+FFFD, the rest arrives.
invalid_utf8_body_is_delivered_with_replacement_characters(Config) ->
    start(Config, #{}),
    hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>,
                     <<"ok ", 16#ff, 16#fe, " end">>),
    [Pm] = receive_messages(Config, pm, 1),
    ?assertEqual(<<"ok ", 16#ef, 16#bf, 16#bd, 16#ef, 16#bf, 16#bd, " end">>,
                 maps:get(<<"message">>, decoded(Pm))).

%% A plugin that crashes or returns an attribute SNS cannot type: that event is
%% skipped (counted, logged), the hook goes on, the next events are published.
plugin_errors_skip_the_event_and_are_counted(Config) ->
    start(Config, #{plugin_module => mod_event_pusher_sns_broken}),
    hook_driver:send(?HT, <<"chat">>, <<"crash@localhost/a">>, <<"bob@localhost">>, <<"1">>),
    hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"tuple@localhost">>, <<"2">>),
    hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>, <<"3">>),
    ?assertEqual([<<"3">>], [maps:get(<<"message">>, decoded(M))
                             || M <- receive_messages(Config, pm, 1)]),
    ?assertEqual(2, lists:sum([N || #{skipped := N} <- events(mod_event_pusher_sns_delivery)])),
    wait_stats(#{accepted => 1, delivered => 1}).

%% Batching (PublishBatch, on by default) and single Publish calls deliver the same:
%% every message, and a second copy only when a call was retried (a call that timed
%% out on a loaded machine may have been taken by SNS: at least once, counted).
batching_on_and_off_deliver_each_message_once(Config) ->
    lists:foreach(
      fun(Batching) ->
              start(Config, #{batching => Batching}),
              Bodies = [iolist_to_binary([atom_to_list(Batching), " ", integer_to_list(N)])
                        || N <- lists:seq(1, 40)],
              [hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>, B)
               || B <- Bodies],
              Got = [maps:get(<<"message">>, decoded(M)) || M <- receive_messages(Config, pm, 40)],
              ?assertEqual(lists:sort(Bodies), lists:usort(Got)),
              wait_stats(#{delivered => 40, failed => 0}),
              #{retried := Retried} = stats(),
              ?assert(length(Got) - 40 =< Retried * 10, {duplicates_without_retries, Got}),
              mongoose_host:stop()
      end, [true, false]).

%% Connections refused for a while, fewer retries' worth of time than the budget
%% (7 attempts, base 100 ms: about 6 s): everything arrives, once.
emulator_back_within_retry_budget_delivers(Config) ->
    {Proxy, _} = ?config(proxy, Config),
    start(Config, #{proxy => true, retry_count => 6, retry_time_ms => 100}),
    test_tcp_proxy:set_mode(Proxy, refuse),
    [hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>,
                      integer_to_binary(N)) || N <- lists:seq(1, 5)],
    %% Two refused attempts per event before the emulator comes back.
    wait_until(fun() -> maps:get(retried, stats()) >= 10 end),
    test_tcp_proxy:set_mode(Proxy, forward),
    Got = [maps:get(<<"message">>, decoded(M)) || M <- receive_messages(Config, pm, 5)],
    ?assertEqual([<<"1">>, <<"2">>, <<"3">>, <<"4">>, <<"5">>], lists:sort(Got)),
    wait_stats(#{delivered => 5, failed => 0, queued => 0, in_flight => 0}).

%% Unreachable for longer than the budget: each event fails after its retries,
%% nothing else is lost or stuck, and delivery resumes when the emulator is back.
emulator_down_too_long_counts_failures_and_recovers(Config) ->
    {Proxy, _} = ?config(proxy, Config),
    start(Config, #{proxy => true, retry_count => 2, retry_time_ms => 20}),
    test_tcp_proxy:set_mode(Proxy, refuse),
    [hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>,
                      integer_to_binary(N)) || N <- lists:seq(1, 4)],
    wait_stats(#{accepted => 4, failed => 4, delivered => 0, retried => 8, queued => 0,
                 in_flight => 0}),
    test_tcp_proxy:set_mode(Proxy, forward),
    hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>, <<"bob@localhost">>, <<"back">>),
    ?assertEqual([<<"back">>], [maps:get(<<"message">>, decoded(M))
                                || M <- receive_messages(Config, pm, 1)]),
    wait_stats(#{accepted => 5, failed => 4, delivered => 1}),
    Failed = lists:sum([F || #{failed := F} <- events(mod_event_pusher_sns_publish)]),
    ?assertEqual(12, Failed).

queue_overflow_is_counted(Config) ->
    {Proxy, _} = ?config(proxy, Config),
    test_tcp_proxy:set_mode(Proxy, refuse),
    start(Config, #{proxy => true, retry_count => 50, retry_time_ms => 20,
                    extra => "  queue.max_events = 3\n  pool_size = 1\n  batching = false\n"}),
    Send = fun(N) -> hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/a">>,
                                      <<"bob@localhost">>, integer_to_binary(N))
           end,
    Send(1),
    wait_until(fun() -> maps:get(retried, stats()) >= 1 end),
    lists:foreach(Send, lists:seq(2, 10)),
    %% Event 1 is in flight (pool_size 1) or waiting for its retry in the queue, where
    %% it keeps its place: three places at most for 2..10, the others are dropped.
    #{accepted := 10, dropped := Dropped, delivered := 0, failed := 0} = stats(),
    ?assert(Dropped =:= 6 orelse Dropped =:= 7, {dropped, Dropped}),
    test_tcp_proxy:set_mode(Proxy, forward),
    Kept = 10 - Dropped,
    ?assertEqual(Kept, length(lists:usort([maps:get(<<"message">>, decoded(M))
                                           || M <- receive_messages(Config, pm, Kept)]))),
    wait_stats(#{accepted => 10, dropped => Dropped, delivered => Kept, failed => 0}).

%% moto checking credentials: an unknown key is refused with SNS's reason, which is
%% logged; the secret appears in no log event at any level, nor in the failure.
wrong_credentials_fail_with_a_clear_reason_and_no_secret(Config) ->
    ok = logger:add_handler(?MODULE, ?MODULE, #{level => all, config => #{pid => self()}}),
    #{level := Level} = logger:get_primary_config(),
    logger:update_primary_config(#{level => all}),
    {ok, Auth} = sns_emulator:start(#{auth => true}),
    try
        start(Config, #{emulator => Auth}),
        hook_driver:presence(?HT, <<"alice@localhost/a">>, online),
        wait_stats(#{failed => 1, delivered => 0, retried => 0}),
        [#{failed := 1}] = wait_events(mod_event_pusher_sns_publish, 1),
        %% A crash report of the process that started the instance: its reporter,
        %% under a supervisor of its own under ejabberd_sup.
        {_, Supervisor, supervisor, _} =
            lists:keyfind({mod_event_pusher_instance, ?HT, sns}, 1,
                          supervisor:which_children(ejabberd_sup)),
        [{reporter, Pid, worker, _}] = supervisor:which_children(Supervisor),
        %% Provoked: its crash report and its supervisor's (which restarts it).
        log_guard:expect(fun(#{msg := {report, #{label := {proc_lib, crash}}}}) -> true end),
        log_guard:expect(fun(#{msg := {report, #{label := {supervisor, child_terminated}}}}) ->
                                 true
                         end),
        MRef = monitor(process, Pid),
        catch gen_server:call(Pid, this_request_crashes_the_server),
        receive {'DOWN', MRef, process, Pid, _} -> ok end,
        mongoose_host:stop()
    after
        logger:update_primary_config(#{level => Level}),
        sns_emulator:stop(Auth)
    end,
    Logged = [iolist_to_binary(logger_formatter:format(E, #{single_line => true,
                                                           max_size => unlimited,
                                                           depth => unlimited}))
              || E <- logged()],
    ?assertNotEqual([], Logged),
    [?assertEqual(nomatch, binary:match(L, <<?SECRET>>)) || L <- Logged],
    ?assertMatch([_ | _], [L || L <- Logged, binary:match(L, <<"InvalidClientTokenId">>) =/= nomatch,
                                binary:match(L, <<"event_pusher_delivery_failed">>) =/= nomatch]),
    ?assertMatch([_ | _], [L || L <- Logged,
                                binary:match(L, <<"this_request_crashes_the_server">>) =/= nomatch]).

%%% logger handler collecting every event of the case that installs it

log(Event, #{config := #{pid := Pid}}) ->
    Pid ! {?MODULE, logged, Event}.

logged() ->
    receive {?MODULE, logged, Event} -> [Event | logged()]
    after 0 -> []
    end.

%%% Helpers

%% Spec: topics (kinds configured, default all), plugin_module, batching, proxy,
%% retry_count, retry_time_ms, emulator, extra (TOML lines).
start(Config, Spec) ->
    ok = mongoose_host:start_toml(?config(priv_dir, Config), toml(Config, Spec)).

toml(Config, Spec) ->
    Emulator = maps:get(emulator, Spec, ?config(emulator, Config)),
    Host = case maps:get(proxy, Spec, false) of
               true ->
                   {_Proxy, ProxyPort} = ?config(proxy, Config),
                   ["http://127.0.0.1:", integer_to_list(ProxyPort)];
               false ->
                   maps:get(endpoint, Emulator)
           end,
    Names = ?config(topic_names, Config),
    TopicKeys = #{presence => "presence_updates_topic", pm => "pm_messages_topic",
                  muc => "muc_messages_topic"},
    ["[general]\n  hosts = [\"localhost\"]\n  default_server_domain = \"localhost\"\n\n",
     "[modules.mod_event_pusher.sns]\n",
     "  sns_host = \"", Host, "\"\n",
     "  region = \"", maps:get(region, Emulator), "\"\n",
     "  access_key_id = \"AKIAEXAMPLEKEY\"\n",
     "  secret_access_key = \"", ?SECRET, "\"\n",
     "  account_id = \"", ?ACCOUNT, "\"\n",
     [["  ", maps:get(K, TopicKeys), " = \"", maps:get(K, Names), "\"\n"]
      || K <- maps:get(topics, Spec, [presence, pm, muc])],
     [["  plugin_module = \"", atom_to_list(M), "\"\n"] || {ok, M} <- [maps:find(plugin_module, Spec)]],
     [["  batching = ", atom_to_list(B), "\n"] || {ok, B} <- [maps:find(batching, Spec)]],
     [["  publish_retry_count = ", integer_to_list(N), "\n"]
      || {ok, N} <- [maps:find(retry_count, Spec)]],
     [["  publish_retry_time_ms = ", integer_to_list(N), "\n"]
      || {ok, N} <- [maps:find(retry_time_ms, Spec)]],
     "  request_timeout_ms = 2000\n",
     maps:get(extra, Spec, "")].

topic_arn(Config, Kind) ->
    maps:get(topic_arn, maps:get(Kind, ?config(topics, Config))).

receive_messages(Config, Kind, Count) ->
    #{queue_url := Queue} = maps:get(Kind, ?config(topics, Config)),
    sns_emulator:receive_messages(?config(emulator, Config), Queue, Count, 20000).

present(Message) ->
    maps:get(<<"present">>, decoded(Message)).

decoded(#{<<"decoded_message">> := Decoded}) ->
    Decoded.

string_attr(Value) ->
    #{<<"Type">> => <<"String">>, <<"Value">> => Value}.

large_unicode_body(Bytes) ->
    Unit = <<"zażółć gęślą jaźń — 日本語 🎉 \"quoted\" \\ "/utf8>>,
    Body = binary:copy(Unit, Bytes div byte_size(Unit) + 1),
    %% Cut at a character boundary.
    Chars = unicode:characters_to_list(Body),
    unicode:characters_to_binary(lists:sublist(Chars, length(Chars) * Bytes div byte_size(Body))).

stats() ->
    mod_event_pusher_sns:stats(?HT).

wait_stats(Expected) ->
    wait_until(fun() ->
                       Stats = stats(),
                       is_map(Stats) andalso maps:with(maps:keys(Expected), Stats) =:= Expected
               end, {stats_mismatch, Expected}).

wait_until(Fun) ->
    wait_until(Fun, condition_not_met).

wait_until(Fun, Why) ->
    test_wait:until(Fun, 20000, fun() -> {Why, last_stats, stats()} end).

events(Event) ->
    mongoose_instrument:get_events(Event, ?LABELS).

wait_events(Event, N) ->
    case mongoose_instrument:wait_for_events(Event, ?LABELS, N, 10000) of
        {ok, Events} -> Events;
        {timeout, Got} -> ct:fail({expected_events, Event, N, got, Got})
    end.

