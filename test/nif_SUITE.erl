%% mod_event_pusher_nif under abuse: wrong terms, overflow, stop/drain, dropped
%% references, and memory with the server down. The VM must survive all of it.
-module(nif_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("mod_event_pusher_nif.hrl").

all() ->
    [wrong_terms_give_errors_not_crashes,
     wrong_sns_and_push_terms_give_errors_not_crashes,
     bad_connection_settings_are_refused_with_a_reason,
     full_queue_refuses_and_counts,
     oversized_event_is_refused_without_queueing,
     drop_oldest_evicts_and_counts,
     stop_drains_then_refuses,
     stop_with_deadline_reports_losses,
     dropping_the_last_reference_stops_the_tasks,
     memory_stays_bounded_with_the_server_down,
     reports_reach_the_reporter_in_batches,
     every_outcome_the_nif_reports_has_the_erlang_type,
     every_record_field_has_the_same_name_and_place_on_both_sides].

init_per_testcase(_Case, Config) ->
    [{listener, test_http_listener:start()} | Config].

end_per_testcase(_Case, Config) ->
    test_http_listener:stop(?config(listener, Config)).

config(Port) ->
    config(Port, #{}).

config(Port, Overrides) ->
    maps:merge(#{host => <<"http://127.0.0.1:", (integer_to_binary(Port))/binary>>,
                 path_prefix => <<"/">>, request_timeout_ms => 2000,
                 verify_mode => peer, cacertfile => <<>>, certfile => <<>>, keyfile => <<>>,
                 server_name_indication => true,
                 max_events => 1000, max_bytes => 1048576, overflow => drop_newest,
                 max_attempts => 1, base_backoff_ms => 10, max_backoff_ms => 10,
                 retry_deadline_ms => 1000, concurrency => 2}, Overrides).

start(Config) ->
    start(Config, #{}).

start(Config, Overrides) ->
    Port = test_http_listener:port(?config(listener, Config)),
    {ok, Instance} = nif_start(start_http, config(Port, Overrides), self()),
    Instance.

event(N) ->
    #http_event{path = <<"events">>, headers = [{<<"content-type">>, <<"text/plain">>}],
                body = integer_to_binary(N), tag = <<"alice">>}.

http_event(Path, Body) ->
    #http_event{path = Path, headers = [], body = Body, tag = <<"alice">>}.

%% Record with Field set to Value (possibly of the wrong type), by the record's field
%% names: what {bad_event, Field} must name.
with(Record, Fields, Field, Value) ->
    Index = length(lists:takewhile(fun(F) -> F =/= Field end, Fields)) + 2,
    setelement(Index, Record, Value).

%% A start NIF given one map of options: split into #instance_config{} and the
%% backend's record by their field names. A key left out takes the record's default
%% (undefined for most), which the NIF refuses naming the field; a term that is no map
%% is given as both records.
nif_start(Start, Options, Reporter) when is_map(Options) ->
    Backend = case Start of
                  start_http -> #http_config{};
                  start_sns -> #sns_config{};
                  start_push -> #push_config{}
              end,
    mod_event_pusher_nif:Start(fill(#instance_config{}, Options), fill(Backend, Options),
                               Reporter);
nif_start(Start, NotAMap, Reporter) ->
    mod_event_pusher_nif:Start(NotAMap, NotAMap, Reporter).

split(Options) ->
    {fill(#instance_config{}, Options), fill(#http_config{}, Options)}.

fill(Record, Options) ->
    [Name | Defaults] = tuple_to_list(Record),
    list_to_tuple([Name | [maps:get(Field, Options, Default)
                           || {Field, Default} <- lists:zip(fields(Name), Defaults)]]).

fields(instance_config) -> record_info(fields, instance_config);
fields(http_config) -> record_info(fields, http_config);
fields(sns_config) -> record_info(fields, sns_config);
fields(push_config) -> record_info(fields, push_config);
fields(rabbit_config) -> record_info(fields, rabbit_config).

%% Cases

wrong_terms_give_errors_not_crashes(Config) ->
    Instance = start(Config),
    Good = config(1),
    %% Not a pid: badarg; not a configuration record: named by the record; an option
    %% missing or of the wrong type: named.
    ?assertEqual({error, badarg}, nif_start(start_http, Good, not_a_pid)),
    ?assertEqual({error, {bad_config, instance_config}}, nif_start(start_http, x, self())),
    ?assertEqual({error, {bad_config, http_config}},
                 mod_event_pusher_nif:start_http(element(1, split(Good)), x, self())),
    BadStarts = [{#{}, max_events},
                 {Good#{host => "a string, not a binary"}, host},
                 {Good#{max_events => -1}, max_events}, {Good#{overflow => sideways}, overflow},
                 {Good#{verify_mode => 'maybe'}, verify_mode},
                 {Good#{concurrency => 1.5}, concurrency},
                 {Good#{host => <<255, 254>>}, host},
                 {maps:remove(request_timeout_ms, Good), request_timeout_ms}],
    [?assertEqual({error, {bad_config, Option}}, nif_start(start_http, C, self()))
     || {C, Option} <- BadStarts],
    %% A malformed event names its wrong field (shape: not an #http_event{} at all).
    Http = fun(Field, Value) -> with(event(1), record_info(fields, http_event), Field, Value) end,
    BadEvents = [{not_a_tuple, shape}, {{}, shape}, {{http_event, <<"p">>, [], <<"b">>}, shape},
                 {erlang:append_element(event(1), x), shape},
                 {setelement(1, event(1), other_event), shape},
                 {Http(path, "path"), path},
                 {Http(headers, not_a_list), headers},
                 {Http(headers, [{<<"h">>}]), headers},
                 {Http(headers, [{<<"h">>, 1}]), headers},
                 {Http(headers, [{<<"h">>, <<"v">>} | improper]), headers},
                 {Http(body, [<<"iolist">>]), body},
                 {Http(tag, tag), tag},
                 {Http(path, <<255, 0>>), path},
                 {Http(body, <<1:7>>), body},
                 %% form bodies: {form, [{Name, Value}]} of binaries, nothing else
                 {Http(body, {form, x}), body},
                 {Http(body, {forms, []}), body},
                 {Http(body, {form, [{<<"a">>}]}), body},
                 {Http(body, {form, [{<<"a">>, b}]}), body},
                 {Http(body, {form, [{<<"a">>, <<"b">>} | c]}), body},
                 {Http(body, {form, [{<<"a">>, binary:copy(<<"b">>, 5000)}, x]}), body},
                 {Http(body, {form, [<<"a">>, <<"b">>]}), body}],
    [?assertEqual({E, {error, {bad_event, Field}}}, {E, mod_event_pusher_nif:push(Instance, E)})
     || {E, Field} <- BadEvents],
    NotInstances = [make_ref(), self(), <<"bin">>, 42, [], {Instance}],
    [?assertEqual({error, badarg}, mod_event_pusher_nif:push(I, event(1))) || I <- NotInstances],
    [?assertEqual({error, badarg}, mod_event_pusher_nif:stats(I)) || I <- NotInstances],
    [?assertEqual({error, badarg}, mod_event_pusher_nif:stop(I, 0, tag)) || I <- NotInstances],
    ?assertEqual({error, badarg}, mod_event_pusher_nif:stop(Instance, -1, tag)),
    ?assertEqual({error, badarg}, mod_event_pusher_nif:stop(Instance, infinity, tag)),
    [?assertEqual({error, badarg}, mod_event_pusher_nif:F(P))
     || F <- [form_urlencode, form_urlencode_dirty],
        P <- [x, [x], [{<<"a">>}], [{a, <<"b">>}], [{<<"a">>, <<"b">>} | c]]],
    %% Rejected terms were neither accepted nor counted; the instance still works.
    ?assertMatch(#{accepted := 0}, mod_event_pusher_nif:stats(Instance)),
    ok = mod_event_pusher_nif:push(Instance, event(1)),
    {ok, [_]} = test_http_listener:wait_for_requests(?config(listener, Config), 1, 5000),
    ?assertEqual(<<"a=b+c">>, mod_event_pusher_nif:form_urlencode([{<<"a">>, <<"b c">>}])),
    ?assertEqual(<<"a=b+c">>, mod_event_pusher_nif:form_urlencode_dirty([{<<"a">>, <<"b c">>}])).

%% The sns and push NIFs: bad start configs, events and replies are refused; push
%% events go to the right kind of instance only; the instances still work after.
wrong_sns_and_push_terms_give_errors_not_crashes(_Config) ->
    Base = maps:with([max_events, max_bytes, overflow, max_attempts, base_backoff_ms,
                      max_backoff_ms, retry_deadline_ms, concurrency], config(1)),
    Sns = Base#{sns_host => <<"http://127.0.0.1:1">>, region => <<"eu-west-1">>,
                access_key_id => <<"AK">>, secret_access_key => <<"secret">>,
                request_timeout_ms => 100, connect_timeout_ms => 100, batching => true,
                jitter => minus_base},
    Push = Base#{publish_timeout_ms => 100},
    ?assertEqual({error, badarg}, nif_start(start_sns, Sns, not_a_pid)),
    ?assertEqual({error, {bad_config, instance_config}}, nif_start(start_sns, x, self())),
    [?assertEqual({error, {bad_config, Option}}, nif_start(start_sns, C, self()))
     || {C, Option} <- [{Base, sns_host}, {maps:remove(secret_access_key, Sns), secret_access_key},
                        {Sns#{batching => yes}, batching}, {Sns#{jitter => sideways}, jitter},
                        {Sns#{jitter => "minus_base"}, jitter},
                        {Sns#{region => "list"}, region},
                        {Sns#{request_timeout_ms => -1}, request_timeout_ms}]],
    ?assertEqual({error, {bad_config, instance_config}}, nif_start(start_push, x, self())),
    [?assertEqual({error, {bad_config, publish_timeout_ms}}, nif_start(start_push, C, self()))
     || C <- [Base, Push#{publish_timeout_ms => infinity}]],
    {ok, SnsInstance} = nif_start(start_sns, Sns, self()),
    {ok, PushInstance} = nif_start(start_push, Push, self()),
    Arn = <<"arn:aws:sns:eu-west-1:123456789012:t">>,
    Presence = #sns_presence{topic_arn = Arn, user_id = <<"u">>, present = true, attributes = []},
    Message = #sns_message{topic_arn = Arn, from_user_id = <<"a">>, to_user_id = <<"b">>,
                           message = <<"m">>, attributes = []},
    SnsPresence = fun(F, V) -> with(Presence, record_info(fields, sns_presence), F, V) end,
    SnsMessage = fun(F, V) -> with(Message, record_info(fields, sns_message), F, V) end,
    BadSns = [{x, shape}, {{sns_presence, Arn, <<"u">>, true}, shape},
              {setelement(1, Presence, other), shape},
              {SnsPresence(present, 'maybe'), present},
              {SnsPresence(topic_arn, "arn"), topic_arn},
              {SnsMessage(attributes, [{<<"n">>, unknown_type, <<"v">>}]), attributes},
              {SnsMessage(attributes, [{<<"n">>, string}]), attributes},
              {SnsMessage(attributes, [{<<"n">>, string, <<"v">>} | x]), attributes},
              {SnsMessage(message, [<<"iolist">>]), message}],
    [?assertEqual({E, {error, {bad_event, Field}}}, {E, mod_event_pusher_nif:push(SnsInstance, E)})
     || {E, Field} <- BadSns],
    Publish = #push_publish{user = jid:make_noprep(<<"bob">>, <<"localhost">>, <<>>),
                            pubsub = jid:make_noprep(<<>>, <<"pubsub.example">>, <<>>),
                            node = <<"n">>, payload = [{<<"message-count">>, <<"1">>}],
                            options = #{}, tag = <<"t">>},
    PushPublish = fun(F, V) -> with(Publish, record_info(fields, push_publish), F, V) end,
    BadPush = [{x, shape}, {{push_publish, <<"d">>, <<"p">>, <<"n">>, <<"t">>}, shape},
               {PushPublish(node, [<<"n">>]), node},
               {PushPublish(tag, tag), tag},
               {setelement(1, Publish, publish), shape}],
    [?assertEqual({E, {error, {bad_event, Field}}}, {E, mod_event_pusher_nif:push(PushInstance, E)})
     || {E, Field} <- BadPush],
    %% A push event is not an SNS event, nor the reverse.
    ?assertEqual({error, {bad_event, shape}}, mod_event_pusher_nif:push(SnsInstance, Publish)),
    ?assertEqual({error, {bad_event, shape}}, mod_event_pusher_nif:push(PushInstance, Presence)),
    [?assertEqual({error, badarg}, mod_event_pusher_nif:push_reply(I, Id, R))
     || {I, Id, R} <- [{SnsInstance, 1, result}, {PushInstance, -1, result},
                       {PushInstance, 1, 'maybe'}, {PushInstance, 1, {error, cancel}},
                       {PushInstance, 1, {oops, <<"cancel">>}}, {make_ref(), 1, result}]],
    ?assertEqual({error, unknown_request}, mod_event_pusher_nif:push_reply(PushInstance, 12345, result)),
    ?assertMatch(#{accepted := 0}, mod_event_pusher_nif:stats(SnsInstance)),
    ?assertMatch(#{accepted := 0}, mod_event_pusher_nif:stats(PushInstance)),
    %% Both still take good events: the push one asks this process to route it.
    %% The publish comes back to be routed as the very term given.
    ok = mod_event_pusher_nif:push(PushInstance, Publish),
    receive {mod_event_pusher_nif, route, Id, Routed} ->
            ?assertEqual(Publish, Routed),
            ok = mod_event_pusher_nif:push_reply(PushInstance, Id, result)
    after 5000 -> ct:fail(no_route_request)
    end,
    ok = mod_event_pusher_nif:push(SnsInstance, Presence).

bad_connection_settings_are_refused_with_a_reason(_Config) ->
    Cases = [{#{host => <<"localhost:8000">>}, <<"host">>},
             {#{host => <<"ftp://example.com">>}, <<"host">>},
             {#{cacertfile => <<"/nonexistent/ca.pem">>}, <<"cacertfile">>},
             {#{certfile => <<"/nonexistent/c.pem">>}, <<"certfile">>}],
    lists:foreach(
      fun({Overrides, Word}) ->
              {error, {http_config, Reason}} =
                  nif_start(start_http, config(1, Overrides), self()),
              ?assert(is_binary(Reason)),
              ?assertNotEqual(nomatch, binary:match(Reason, Word))
      end, Cases).

full_queue_refuses_and_counts(Config) ->
    test_http_listener:set_reply(?config(listener, Config), {delay, 60000, 200}),
    Instance = start(Config, #{max_events => 10, concurrency => 1}),
    %% The one worker holds the first event (the listener never answers in time)...
    ok = mod_event_pusher_nif:push(Instance, event(0)),
    test_wait:until(fun() -> maps:get(in_flight, mod_event_pusher_nif:stats(Instance)) =:= 1 end,
                    fun() -> mod_event_pusher_nif:stats(Instance) end),
    %% ...so 10 of the next 99 are queued and 89 refused.
    Results = [mod_event_pusher_nif:push(Instance, event(N)) || N <- lists:seq(1, 99)],
    ?assertEqual(89, length([R || R = {error, queue_full} <- Results])),
    ?assertMatch(#{accepted := 100, queued := 10, in_flight := 1, dropped := 89},
                 mod_event_pusher_nif:stats(Instance)).

%% An event larger than max_bytes could never be queued: too_large, not queue_full
%% (the queue is empty), counted once in dropped and in dropped_too_large, raw or form
%% body alike; a form body counts its names and values plus "=" and "&".
oversized_event_is_refused_without_queueing(Config) ->
    Instance = start(Config, #{max_bytes => 1000}),
    Big = http_event(<<"p">>, binary:copy(<<"x">>, 5000)),
    ?assertEqual({error, too_large}, mod_event_pusher_nif:push(Instance, Big)),
    ?assertMatch(#{accepted := 1, dropped := 1, dropped_too_large := 1, queued := 0,
                   last_too_large_bytes := 5001, max_bytes := 1000},
                 mod_event_pusher_nif:stats(Instance)),
    Form = fun(Bytes) -> http_event(<<"p">>, {form, [{<<"message">>, binary:copy(<<"y">>, Bytes)},
                                                      {<<"a">>, <<>>}]})
           end,
    %% "p" + "message" + "a" + "=" "=" "&": 1 + 8 + 3 = 12 bytes besides the value.
    ?assertEqual({error, too_large}, mod_event_pusher_nif:push(Instance, Form(989))),
    ok = mod_event_pusher_nif:push(Instance, Form(988)),
    {ok, [#{body := Body}]} = test_http_listener:wait_for_requests(?config(listener, Config),
                                                                   1, 5000),
    ?assertEqual(<<"message=", (binary:copy(<<"y">>, 988))/binary, "&a=">>, Body),
    test_wait:until(fun() -> maps:get(delivered, mod_event_pusher_nif:stats(Instance)) =:= 1 end,
                    fun() -> mod_event_pusher_nif:stats(Instance) end),
    ?assertMatch(#{accepted := 3, dropped := 2, dropped_too_large := 2, delivered := 1,
                   last_too_large_bytes := 1001},
                 mod_event_pusher_nif:stats(Instance)),
    %% The reporter (this process) got the drops in a batch, with their reason.
    ?assertEqual({2, 2}, reported_drops(0, 0, 50), mod_event_pusher_nif:reports_sent(Instance)).

reported_drops(Dropped, TooLarge, 0) ->
    {Dropped, TooLarge};
reported_drops(Dropped, TooLarge, _Tries) when Dropped >= 2 ->
    {Dropped, TooLarge};
reported_drops(Dropped, TooLarge, Tries) ->
    receive
        {mod_event_pusher_nif, report, #{counters := Counters}} ->
            reported_drops(Dropped + maps:get(dropped, Counters),
                           TooLarge + maps:get(dropped_too_large, Counters, 0), Tries - 1)
    after 5000 ->
            {Dropped, TooLarge}
    end.

%% The one worker holds event 0 (never answered, it times out); of 1..20 the queue of
%% 5 keeps the newest, 16..20, which are then delivered: the oldest were evicted.
drop_oldest_evicts_and_counts(Config) ->
    Listener = ?config(listener, Config),
    test_http_listener:set_reply(Listener, [{delay, 60000, 200}]),
    Instance = start(Config, #{max_events => 5, concurrency => 1, overflow => drop_oldest,
                               request_timeout_ms => 300}),
    ok = mod_event_pusher_nif:push(Instance, event(0)),
    test_wait:until(fun() -> maps:get(in_flight, mod_event_pusher_nif:stats(Instance)) =:= 1 end,
                    fun() -> mod_event_pusher_nif:stats(Instance) end),
    Results = [mod_event_pusher_nif:push(Instance, event(N)) || N <- lists:seq(1, 20)],
    ?assertEqual(lists:duplicate(20, ok), Results),
    ?assertMatch(#{accepted := 21, queued := 5, in_flight := 1, dropped := 15},
                 mod_event_pusher_nif:stats(Instance)),
    test_wait:until(fun() -> maps:with([delivered, failed, queued, in_flight],
                                       mod_event_pusher_nif:stats(Instance))
                                 =:= #{delivered => 5, failed => 1, queued => 0, in_flight => 0}
                    end,
                    fun() -> mod_event_pusher_nif:stats(Instance) end),
    ?assertEqual([integer_to_binary(N) || N <- [0, 16, 17, 18, 19, 20]],
                 lists:sort(fun(A, B) -> binary_to_integer(A) =< binary_to_integer(B) end,
                            [Body || #{body := Body} <- test_http_listener:requests(Listener)])).

stop_drains_then_refuses(Config) ->
    test_http_listener:set_reply(?config(listener, Config), {delay, 10, 200}),
    Instance = start(Config, #{concurrency => 1}),
    [ok = mod_event_pusher_nif:push(Instance, event(N)) || N <- lists:seq(1, 30)],
    ok = mod_event_pusher_nif:stop(Instance, 10000, my_tag),
    Stats = receive {mod_event_pusher_nif, stopped, my_tag, S} -> S
            after 15000 -> ct:fail(no_stopped_message)
            end,
    ?assertMatch(#{delivered := 30, lost := 0, queued := 0, accepted := 30}, Stats),
    ?assertEqual(30, length(test_http_listener:requests(?config(listener, Config)))),
    ?assertEqual({error, stopped}, mod_event_pusher_nif:push(Instance, event(31))).

stop_with_deadline_reports_losses(Config) ->
    test_http_listener:set_reply(?config(listener, Config), {delay, 60000, 200}),
    Instance = start(Config, #{concurrency => 1}),
    [ok = mod_event_pusher_nif:push(Instance, event(N)) || N <- lists:seq(1, 10)],
    ok = mod_event_pusher_nif:stop(Instance, 200, tag),
    Stats = receive {mod_event_pusher_nif, stopped, tag, S} -> S
            after 5000 -> ct:fail(no_stopped_message)
            end,
    ?assertMatch(#{lost := 10, failed := 10, delivered := 0, queued := 0, in_flight := 0},
                 Stats).

dropping_the_last_reference_stops_the_tasks(Config) ->
    Listener = ?config(listener, Config),
    test_http_listener:set_reply(Listener, {delay, 300, 200}),
    Port = test_http_listener:port(Listener),
    Self = self(),
    %% The only reference lives in this process; when it exits, the resource goes.
    Holder = spawn(fun() ->
                           {ok, I} = nif_start(start_http, config(Port, #{concurrency => 1}),
                                               Self),
                           [ok = mod_event_pusher_nif:push(I, event(N)) || N <- lists:seq(1, 20)],
                           Self ! pushed,
                           receive stop -> ok end
                   end),
    receive pushed -> ok end,
    {ok, _} = test_http_listener:wait_for_requests(Listener, 1, 5000),
    ?assertEqual(1, test_http_listener:open_connections(Listener)),
    Holder ! stop,
    %% The instance going closes its client's connections (kept alive while it lives):
    %% with none left open, nothing more can arrive.
    test_wait:until(fun() -> test_http_listener:open_connections(Listener) =:= 0 end,
                    fun() -> test_http_listener:requests(Listener) end),
    %% At most the request in flight when the reference went.
    ?assert(length(test_http_listener:requests(Listener)) =< 3).

memory_stays_bounded_with_the_server_down(Config) ->
    Port = test_http_listener:port(?config(listener, Config)),
    test_http_listener:stop(?config(listener, Config)),
    Cap = 4 * 1024 * 1024,
    {ok, Instance} = nif_start(start_http,
                               config(Port, #{max_events => 100000, max_bytes => Cap,
                                              max_attempts => 1000, base_backoff_ms => 1000,
                                              max_backoff_ms => 1000,
                                              retry_deadline_ms => 60000}),
                               self()),
    Body = binary:copy(<<"b">>, 1024),
    RssBefore = rss_bytes(),
    Results = [mod_event_pusher_nif:push(Instance, http_event(<<"p">>, Body))
               || _ <- lists:seq(1, 100000)],
    RssAfter = rss_bytes(),
    Stats = mod_event_pusher_nif:stats(Instance),
    ct:pal("rss before ~p after ~p stats ~p", [RssBefore, RssAfter, Stats]),
    #{accepted := 100000, queued_bytes := QueuedBytes, dropped := Dropped, queued := Queued,
      in_flight := InFlight, failed := Failed} = Stats,
    %% An event going back to wait for its retry is never refused: the queue may hold
    %% the two workers' events (1 + 1024 bytes each) beyond its cap.
    ?assert(QueuedBytes =< Cap + 2 * 1025, {QueuedBytes, Cap}),
    ?assertEqual(100000, Dropped + Queued + InFlight + Failed),
    ?assertEqual(Dropped, length([R || R = {error, queue_full} <- Results])),
    %% 100k x 1 KiB = 100 MiB offered; what stays is the cap plus allocator slack.
    ?assert(RssAfter - RssBefore < Cap + 32 * 1024 * 1024),
    ok = mod_event_pusher_nif:stop(Instance, 0, t),
    receive {mod_event_pusher_nif, stopped, t, _} -> ok after 5000 -> ct:fail(no_stop) end.

reports_reach_the_reporter_in_batches(Config) ->
    Instance = start(Config),
    [ok = mod_event_pusher_nif:push(Instance, event(N)) || N <- lists:seq(1, 50)],
    {ok, _} = test_http_listener:wait_for_requests(?config(listener, Config), 50, 5000),
    Reports = collect_reports(50, []),
    ?assert(length(Reports) < 50),
    Attempts = lists:append([A || #{attempts := A} <- Reports]),
    ?assertEqual(lists:duplicate(50, {<<"alice">>, 200}), [{T, C} || {T, C, _, _} <- Attempts]),
    ?assertEqual(50, lists:sum([D || #{counters := #{delivered := D}} <- Reports])),
    %% Held to here: a collected instance stops, and its reports with it.
    ?assertMatch(#{delivered := 50}, mod_event_pusher_nif:stats(Instance)).

collect_reports(0, Acc) ->
    lists:reverse(Acc);
collect_reports(Remaining, Acc) ->
    receive
        {mod_event_pusher_nif, report, Report = #{attempts := Attempts}} ->
            collect_reports(max(0, Remaining - length(Attempts)), [Report | Acc])
    after 5000 ->
            ct:fail({missing_reports, Remaining})
    end.

rss_bytes() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    {match, [Kb]} = re:run(Status, "VmRSS:\\s+(\\d+) kB", [{capture, all_but_first, binary}]),
    binary_to_integer(Kb) * 1024.

%% The contract: each kind of attempt outcome the NIF can put in a report is one the
%% Erlang type (mod_event_pusher_instance:attempt_outcome()) names. A kind added on
%% the Rust side must be listed there (a compile error in encode.rs until it is) and
%% then fails here until the Erlang type has it.
every_outcome_the_nif_reports_has_the_erlang_type(_Config) ->
    Outcomes = mod_event_pusher_nif:attempt_outcomes(),
    %% 7 outcomes with an answer, then {error, Reason} for each of 22 failure reasons
    ?assertEqual(7 + 22, length(Outcomes)),
    ?assertEqual([], [O || O <- Outcomes, not mod_event_pusher_instance:is_attempt_outcome(O)]),
    %% and the check is not a yes to everything
    ?assertEqual([], [O || O <- [-1, unknown, {error_reply, cancel}, {error, "text"}, {other, <<>>},
                                 {error, <<"prose">>}, {error, {http_status, 42}},
                                 {error, {drain_timeout, {connection, "text"}}}],
                           mod_event_pusher_instance:is_attempt_outcome(O)]).

%% The records of mod_event_pusher_nif.hrl and their mirrors in contract.rs: each field
%% given a value of no field's type is refused naming that very field, so a field
%% renamed, moved or missing on one side fails here. (Fields Rust holds as any term,
%% the push publish's user, pubsub, payload and options, take anything.)
every_record_field_has_the_same_name_and_place_on_both_sides(Config) ->
    Wrong = {no, field, takes, this},
    Instance = start(Config),
    {ok, Rabbit} = mod_event_pusher_nif:start_rabbit(instance_config(), rabbit_config(),
                                                     self()),
    {ok, Sns} = nif_start(start_sns, sns_options(), self()),
    {ok, Push} = nif_start(start_push, (sns_options())#{publish_timeout_ms => 100}, self()),
    Events = [{Instance, event(1)},
              {Rabbit, #rabbit_presence{user_jid = <<"a@h/r">>, bare_jid = <<"a@h">>,
                                        present = true}},
              {Rabbit, #rabbit_chat{kind = chat, direction = in, from_jid = <<"a@h/r">>,
                                    to_jid = <<"b@h">>, message = <<"m">>,
                                    routing_key = <<"a@h">>}},
              {Sns, #sns_presence{topic_arn = <<"arn">>, user_id = <<"u">>, present = true,
                                  attributes = []}},
              {Sns, #sns_message{topic_arn = <<"arn">>, from_user_id = <<"a">>,
                                 to_user_id = <<"b">>, message = <<"m">>, attributes = []}},
              {Push, #push_publish{user = x, pubsub = x, node = <<"n">>, payload = x,
                                   options = x, tag = <<"t">>}}],
    Held = [user, pubsub, payload, options],
    [?assertEqual({Record, Field, {error, {bad_event, Field}}},
                  {Record, Field, mod_event_pusher_nif:push(I, with(Good, record_fields(Record),
                                                                   Field, Wrong))})
     || {I, Good} <- Events, Record <- [element(1, Good)],
        Field <- record_fields(Record), not lists:member(Field, Held)],
    Starts = [{start_http, instance_config(), element(2, split(config(1)))},
              {start_rabbit, instance_config(), rabbit_config()},
              {start_sns, instance_config(), fill(#sns_config{}, sns_options())},
              {start_push, instance_config(), #push_config{publish_timeout_ms = 100}}],
    [?assertEqual({Start, Field, {error, {bad_config, Field}}},
                  {Start, Field, mod_event_pusher_nif:Start(
                                   with(Good, record_fields(element(1, Good)), Field, Wrong),
                                   Backend, self())})
     || {Start, Good, Backend} <- Starts, Field <- record_fields(instance_config)],
    [?assertEqual({Start, Field, {error, {bad_config, Field}}},
                  {Start, Field, mod_event_pusher_nif:Start(
                                   Inst, with(Good, record_fields(element(1, Good)), Field,
                                              Wrong), self())})
     || {Start, Inst, Good} <- Starts, Field <- record_fields(element(1, Good))].

instance_config() ->
    element(1, split(config(1))).

sns_options() ->
    (config(1))#{sns_host => <<"http://127.0.0.1:1">>, region => <<"eu-west-1">>,
                 access_key_id => <<"AK">>, secret_access_key => <<"secret">>,
                 request_timeout_ms => 100, connect_timeout_ms => 100, batching => true}.

%% A broker that cannot be reached: the instance starts disconnected.
rabbit_config() ->
    {ok, Socket} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(Socket),
    gen_tcp:close(Socket),
    Exchange = fun(Name) -> #rabbit_exchange{name = Name, type = <<"topic">>, durable = false,
                                             persistent = false, sent_topic = <<"s">>,
                                             recv_topic = <<"r">>} end,
    #rabbit_config{host = <<"127.0.0.1">>, port = Port, username = <<"guest">>,
                   password = <<"guest">>, virtual_host = <<"/">>, tls = false,
                   presence_exchange = Exchange(<<"p">>), chat_msg_exchange = Exchange(<<"c">>),
                   groupchat_msg_exchange = Exchange(<<"g">>), confirms_enabled = true,
                   confirm_timeout_ms = 1000, connect_timeout_ms = 100,
                   reconnect_base_delay_ms = 100, reconnect_max_delay_ms = 1000,
                   max_message_bytes = 1000000}.

record_fields(http_event) -> record_info(fields, http_event);
record_fields(rabbit_presence) -> record_info(fields, rabbit_presence);
record_fields(rabbit_chat) -> record_info(fields, rabbit_chat);
record_fields(sns_presence) -> record_info(fields, sns_presence);
record_fields(sns_message) -> record_info(fields, sns_message);
record_fields(push_publish) -> record_info(fields, push_publish);
record_fields(Config) -> fields(Config).
