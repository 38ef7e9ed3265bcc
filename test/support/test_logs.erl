%% @doc Test helper (not a MongooseIM module): the structured log events of a test
%% case, at every level, sent to the calling process as `{logged, Report#{level}}', so
%% that a case can wait for what our modules say. `capture/0' in the case, `stop/0'
%% in end_per_testcase.
-module(test_logs).

-export([capture/0, stop/0, wait/2, flush/0]).
%% logger handler callback
-export([log/2]).

%% @doc Sends every `#{what := _}' report logged from now on to the calling process
%% (one capturing process at a time), with the primary level opened to all.
-spec capture() -> ok.
capture() ->
    stop(),
    #{level := Primary} = logger:get_primary_config(),
    ok = logger:add_handler(?MODULE, ?MODULE, #{level => all,
                                                config => #{pid => self(), primary => Primary}}),
    ok = logger:update_primary_config(#{level => all}).

%% @doc Undoes capture/0 (if it was done).
-spec stop() -> ok.
stop() ->
    case logger:get_handler_config(?MODULE) of
        {ok, #{config := #{primary := Primary}}} ->
            ok = logger:remove_handler(?MODULE),
            ok = logger:update_primary_config(#{level => Primary});
        {error, _} ->
            ok
    end.

%% @doc The first report logged with this `what' (in order of logging), waiting up to
%% TimeoutMs; the case fails without one.
-spec wait(atom(), non_neg_integer()) -> map().
wait(What, TimeoutMs) ->
    receive {logged, Report = #{what := What}} -> Report
    after TimeoutMs -> ct:fail({not_logged, What})
    end.

%% @doc Forgets what was logged so far.
-spec flush() -> ok.
flush() ->
    receive {logged, _} -> flush()
    after 0 -> ok
    end.

-spec log(logger:log_event(), logger:handler_config()) -> ok.
log(#{level := Level, msg := {report, Report = #{what := _}}}, #{config := #{pid := Pid}}) ->
    Pid ! {logged, Report#{level => Level}},
    ok;
log(_Event, _HandlerConfig) ->
    ok.
