%% The reporter process (mod_event_pusher_instance) under supervision: it lives under
%% ejabberd_sup, a killed reporter is replaced and takes the running instance over, and
%% whatever happens to it every event is counted once, the server gets every delivered
%% event, and the logs say what happened. Driven through the hooks against a real HTTP
%% listener.
-module(reporter_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(HT, <<"localhost">>).
-define(KEY, {http, http_pool}).
-define(CAPTURE, reporter_SUITE_capture).
-define(CAPTURED, [event_pusher_stopped, event_pusher_stopped_with_losses,
                   event_pusher_reporter_restarted, event_pusher_reporter_missing_at_stop,
                   event_pusher_reports_unhandled_at_stop]).

all() ->
    [reporter_lives_under_ejabberd_sup,
     reporter_killed_in_the_middle_of_10000_events,
     supervisor_giving_up_leaves_delivery_running_and_stop_counts_everything,
     reporter_killed_while_stop_drains,
     bad_arguments_are_refused].

init_per_testcase(_Case, Config) ->
    #{level := Level} = logger:get_primary_config(),
    %% event_pusher_stopped (with the final stats) is an info line.
    ok = logger:set_primary_config(level, info),
    Table = ets:new(captured_logs, [public, ordered_set]),
    ok = logger:add_handler(?CAPTURE, ?MODULE, #{level => all, config => #{table => Table}}),
    [{listener, test_http_listener:start()}, {log_table, Table}, {primary_level, Level}
     | Config].

end_per_testcase(_Case, Config) ->
    catch mongoose_host:stop(),
    _ = logger:remove_handler(?CAPTURE),
    ok = logger:set_primary_config(level, ?config(primary_level, Config)),
    test_http_listener:stop(?config(listener, Config)).

%% logger handler: keeps the reports this suite checks.
log(#{msg := {report, Report = #{what := What}}}, #{config := #{table := Table}}) ->
    case lists:member(What, ?CAPTURED) of
        true -> ets:insert(Table, {erlang:unique_integer([monotonic]), Report});
        false -> true
    end,
    ok;
log(_Event, _Config) ->
    ok.

%% Cases

reporter_lives_under_ejabberd_sup(Config) ->
    start(Config, #{}),
    {Supervisor, Reporter} = reporter(),
    ?assertMatch({_, Supervisor, supervisor, _},
                 lists:keyfind(child_id(), 1, supervisor:which_children(ejabberd_sup))),
    ?assertEqual({links, [Supervisor]}, process_info(Reporter, links)),
    send_chats(<<"alice">>, 1, 10),
    wait_received(Config, 10),
    ok = mongoose_modules:stop(),
    ?assertNot(lists:keymember(child_id(), 1, supervisor:which_children(ejabberd_sup))),
    ?assertNot(is_process_alive(Supervisor)),
    ?assertNot(is_process_alive(Reporter)),
    [#{stats := Final}] = captured(event_pusher_stopped),
    assert_counted_once(Final),
    ?assertMatch(#{accepted := 10, delivered := 10}, Final).

%% The issue's test: kill the reporter in the middle of 10,000 events, with report
%% batches waiting in its mailbox (it is suspended first, so that they pile up). The
%% instance keeps running under a new reporter; afterwards the stats add up, the
%% listener got every delivered event, the log says the reporter was restarted and
%% what its mailbox took with it, the counter metrics are whole (the lost batches'
%% counts were carried into the next report), exactly the lost attempt reports are
%% missing from the per-attempt metrics, and later events are reported in full.
reporter_killed_in_the_middle_of_10000_events(Config) ->
    expect_supervisor_reports(),
    start(Config, #{workers => 10}),
    {Supervisor, Reporter} = reporter(),
    send_chats(<<"early">>, 1, 5000),
    test_wait:until(fun() -> delivered_metric() > 0 end, 10000, fun stats/0),
    ok = sys:suspend(Reporter),
    send_chats(<<"mid">>, 5001, 7000),
    test_wait:until(fun() -> mailbox(Reporter) >= 2 end, 10000, fun stats/0),
    InMailbox = mailbox(Reporter),
    exit(Reporter, kill),
    send_chats(<<"late">>, 7001, 10000),
    {Supervisor, NewReporter} = reporter(),
    ?assertNotEqual(Reporter, NewReporter),
    Stats = wait_all_done(10000),
    ct:log("stats after the flood: ~p", [Stats]),
    ?assertMatch(#{accepted := 10000, delivered := 10000, failed := 0, dropped := 0,
                   retried := 0}, Stats),
    ?assertEqual(10000, sets:size(unique_bodies(Config))),
    [Restarted] = captured(event_pusher_reporter_restarted),
    ct:log("batches in the killed reporter's mailbox: ~p~nrestart log: ~p",
           [InMailbox, Restarted]),
    #{host_type := ?HT, key := ?KEY, unhandled_batches := Unhandled,
      reports_lost := ReportsLost, counts_carried := #{delivered := Carried},
      interrupted_batch := none} = Restarted,
    ?assert(Unhandled >= InMailbox),
    ?assert(ReportsLost > 0),
    ?assert(Carried > 0),
    %% Counter metrics are whole; per-attempt ones miss exactly the lost reports.
    test_wait:until(fun() -> delivered_metric() =:= 10000 end, 10000,
                    fun() -> delivered_metric() end),
    ?assertEqual(10000 - ReportsLost, length(sent_metrics())),
    %% Everything after the kill was reported by the new reporter.
    ?assertEqual(3000, length([M || M = #{sender := <<"late">>} <- sent_metrics()])),
    ok = mongoose_modules:stop(),
    [#{stats := Final}] = captured(event_pusher_stopped),
    assert_counted_once(Final),
    ?assertMatch(#{accepted := 10000, delivered := 10000, lost := 0}, Final).

%% A reporter that keeps dying exhausts its own supervisor (never ejabberd_sup). The
%% instance keeps delivering and counting; its reports are held in the NIF, and the
%% stopping process hands them on: metrics end complete.
supervisor_giving_up_leaves_delivery_running_and_stop_counts_everything(Config) ->
    expect_supervisor_reports(),
    start(Config, #{}),
    {Supervisor, _First} = reporter(),
    MRef = monitor(process, Supervisor),
    kill_until_supervisor_ends(Supervisor, MRef, 20),
    ?assert(is_process_alive(whereis(ejabberd_sup))),
    send_chats(<<"orphan">>, 1, 1000),
    Stats = wait_all_done(1000),
    ?assertMatch(#{accepted := 1000, delivered := 1000}, Stats),
    ?assertEqual(1000, sets:size(unique_bodies(Config))),
    ?assertEqual(0, delivered_metric()),
    ok = mongoose_modules:stop(),
    [Missing] = captured(event_pusher_reporter_missing_at_stop),
    ct:log("take-over log: ~p", [Missing]),
    ?assertMatch(#{held_batches := Held} when Held > 0, Missing),
    ?assertEqual(1000, delivered_metric()),
    ?assertEqual(1000, length([M || M = #{sender := <<"orphan">>} <- sent_metrics()])),
    [#{stats := Final}] = captured(event_pusher_stopped),
    assert_counted_once(Final),
    ?assertMatch(#{accepted := 1000, delivered := 1000, lost := 0}, Final),
    ?assertEqual(10, length(captured(event_pusher_reporter_restarted))).

%% Stop drains through a slow webhook; the reporter is killed meanwhile. The stop
%% still ends with final stats, and every event arrives.
reporter_killed_while_stop_drains(Config) ->
    expect_supervisor_reports(),
    test_http_listener:set_reply(?config(listener, Config), {delay, 20, 200}),
    start(Config, #{workers => 2, drain_timeout_ms => 30000}),
    {_Supervisor, Reporter} = reporter(),
    send_chats(<<"alice">>, 1, 100),
    Parent = self(),
    Stopper = spawn_link(fun() -> mongoose_modules:stop(), Parent ! {self(), stopped} end),
    %% The instance is stopping: the hook path no longer finds it.
    test_wait:until(fun() -> mod_event_pusher_instance:instance(?HT, ?KEY) =:= undefined end,
                    fun() -> not_stopping end),
    exit(Reporter, kill),
    receive {Stopper, stopped} -> ok after 60000 -> ct:fail(stop_did_not_end) end,
    [#{stats := Final}] = captured(event_pusher_stopped),
    assert_counted_once(Final),
    ?assertMatch(#{accepted := 100, delivered := 100, lost := 0}, Final),
    ?assertEqual(100, sets:size(unique_bodies(Config))),
    ?assertMatch([_], captured(event_pusher_reporter_restarted)
                      ++ captured(event_pusher_reporter_missing_at_stop)).

bad_arguments_are_refused(_Config) ->
    ?assertEqual({error, badarg}, mod_event_pusher_nif:set_reporter(make_ref(), self())),
    ?assertEqual({error, badarg}, mod_event_pusher_nif:set_reporter(not_an_instance, self())),
    ?assertEqual({error, badarg}, mod_event_pusher_nif:reports_sent(<<"instance">>)).

%% Helpers

start(Config, Spec) ->
    Port = test_http_listener:port(?config(listener, Config)),
    Toml = [<<"[general]\n  hosts = [\"localhost\"]\n  default_server_domain = \"localhost\"\n\n">>,
            <<"[outgoing_pools.http.http_pool]\n">>,
            <<"  workers = ">>, integer_to_binary(maps:get(workers, Spec, 4)), <<"\n">>,
            <<"  connection.host = \"http://127.0.0.1:">>, integer_to_binary(Port), <<"\"\n\n">>,
            <<"[modules.mod_event_pusher.http]\n">>,
            <<"  handlers = [{path = \"/notifications\"}]\n">>,
            <<"  drain_timeout_ms = ">>, integer_to_binary(maps:get(drain_timeout_ms, Spec, 5000)),
            <<"\n">>],
    ok = mongoose_host:start_toml(?config(priv_dir, Config), Toml),
    mongoose_instrument:clear_events().

child_id() ->
    {mod_event_pusher_instance, ?HT, ?KEY}.

%% The instance's supervisor and its current reporter (waits while it restarts).
reporter() ->
    {_, Supervisor, supervisor, _} =
        lists:keyfind(child_id(), 1, supervisor:which_children(ejabberd_sup)),
    test_wait:until(fun() -> is_pid(reporter_of(Supervisor)) end,
                    fun() -> supervisor:which_children(Supervisor) end),
    {Supervisor, reporter_of(Supervisor)}.

reporter_of(Supervisor) ->
    case supervisor:which_children(Supervisor) of
        [{reporter, Pid, worker, _}] -> Pid;
        Other -> Other
    end.

%% Kills each new reporter until the supervisor ends; bounded by Tries kills.
kill_until_supervisor_ends(_Supervisor, _MRef, 0) ->
    ct:fail(supervisor_did_not_end);
kill_until_supervisor_ends(Supervisor, MRef, Tries) ->
    Reporter = reporter_of(Supervisor),
    exit(Reporter, kill),
    test_wait:until(fun() -> not is_process_alive(Supervisor)
                                 orelse replaced(Supervisor, Reporter) end,
                    fun() -> supervisor:which_children(Supervisor) end),
    case is_process_alive(Supervisor) of
        true ->
            kill_until_supervisor_ends(Supervisor, MRef, Tries - 1);
        false ->
            receive {'DOWN', MRef, process, Supervisor, Reason} -> ?assertEqual(shutdown, Reason)
            after 5000 -> ct:fail(no_down_from_supervisor)
            end
    end.

%% A new reporter runs under Supervisor (false if it is gone meanwhile).
replaced(Supervisor, Old) ->
    try reporter_of(Supervisor) of
        Pid when is_pid(Pid) -> Pid =/= Old;
        _ -> false
    catch exit:_ -> false
    end.

send_chats(User, First, Last) ->
    From = <<User/binary, "@localhost">>,
    [hook_driver:send_element(?HT, hook_driver:message(From, <<"bob@localhost">>, <<"chat">>,
                                                       hook_driver:body(integer_to_binary(N))))
     || N <- lists:seq(First, Last)],
    ok.

stats() ->
    mod_event_pusher_instance:stats(?HT, ?KEY).

%% Waits until every accepted event has its outcome; returns the stats.
wait_all_done(Accepted) ->
    test_wait:until(fun() ->
                            case stats() of
                                #{accepted := Accepted, queued := 0, in_flight := 0} -> true;
                                _ -> false
                            end
                    end, 60000, fun stats/0),
    stats().

%% accepted = delivered + failed + dropped (lost is part of failed), nothing pending.
assert_counted_once(Stats = #{accepted := Accepted, delivered := Delivered, failed := Failed,
                              dropped := Dropped, lost := Lost}) ->
    ct:log("final stats: ~p", [Stats]),
    ?assertMatch(#{queued := 0, in_flight := 0}, Stats),
    ?assertEqual(Accepted, Delivered + Failed + Dropped),
    ?assert(Lost =< Failed).

wait_received(Config, N) ->
    case test_http_listener:wait_for_requests(?config(listener, Config), N, 10000) of
        {ok, Requests} -> Requests;
        {timeout, Got} -> ct:fail({expected_requests, N, got, length(Got)})
    end.

unique_bodies(Config) ->
    sets:from_list([Body || #{body := Body} <- test_http_listener:requests(
                                                   ?config(listener, Config))]).

delivered_metric() ->
    lists:sum([maps:get(delivered, M, 0)
               || M <- mongoose_instrument:get_events(mod_event_pusher_http_delivery,
                                                      #{host_type => ?HT})]).

sent_metrics() ->
    mongoose_instrument:get_events(mod_event_pusher_http_sent, #{host_type => ?HT}).

mailbox(Pid) ->
    {message_queue_len, Length} = process_info(Pid, message_queue_len),
    Length.

captured(What) ->
    [Report || {_, Report = #{what := W}} <- ets:tab2list(captured_table()), W =:= What].

captured_table() ->
    {ok, #{config := #{table := Table}}} = logger:get_handler_config(?CAPTURE),
    Table.

%% OTP's supervisor reports on the killed reporter (child_terminated, and
%% reached_max_restart_intensity when its supervisor gives up) are errors the cases
%% provoke on purpose.
expect_supervisor_reports() ->
    log_guard:expect(fun(#{msg := {report, #{label := {supervisor, _}}}}) -> true end).
