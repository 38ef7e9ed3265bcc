%% @doc Test helper (not a MongooseIM module): waiting for asynchronous outcomes
%% (reports, deliveries, stats) without sleeping blindly, and bounding calls that
%% must not hang.
-module(test_wait).

-export([until/2, until/3, bounded/2, cleanup/2]).

-define(INTERVAL_MS, 20).

%% @doc Polls Check every 20 ms for up to TimeoutMs; fails the test case with
%% Diagnostics() (evaluated only then) when Check never holds.
-spec until(fun(() -> boolean()), non_neg_integer(), fun(() -> term())) -> ok.
until(Check, TimeoutMs, Diagnostics) ->
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    poll(Check, Deadline, Diagnostics).

%% @doc until/3 with a 5 s timeout.
-spec until(fun(() -> boolean()), fun(() -> term())) -> ok.
until(Check, Diagnostics) ->
    until(Check, 5000, Diagnostics).

poll(Check, Deadline, Diagnostics) ->
    case Check() of
        true ->
            ok;
        false ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true -> ct:fail({condition_not_met, Diagnostics()});
                false -> timer:sleep(?INTERVAL_MS), poll(Check, Deadline, Diagnostics)
            end
    end.

%% @doc F's result, or the test case fails if F has not returned within TimeoutMs
%% (F runs in its own process, killed then).
-spec bounded(fun(() -> Result), non_neg_integer()) -> Result.
bounded(F, TimeoutMs) ->
    {Pid, MRef} = spawn_monitor(fun() -> exit({returned, catch F()}) end),
    receive
        {'DOWN', MRef, process, Pid, {returned, Result}} -> Result
    after TimeoutMs ->
            exit(Pid, kill),
            ct:fail({did_not_return_within_ms, TimeoutMs, F})
    end.

%% @doc For end_per_testcase: runs Stop (e.g. `fun mongoose_host:stop/0'), bounded by
%% TimeoutMs, and gives `ok' if it returned ok, else `{fail, Why}'. Return that after
%% the rest of the cleanup: the case then fails (CT only warns when end_per_testcase
%% crashes), as a stop that failed or hung hides a drain bug and leaves an instance
%% running into the next case.
-spec cleanup(fun(() -> term()), non_neg_integer()) -> ok | {fail, term()}.
cleanup(Stop, TimeoutMs) ->
    case catch bounded(Stop, TimeoutMs) of
        ok -> ok;
        Other -> {fail, {cleanup_failed, Stop, Other}}
    end.
