%% @doc Common Test hook (not a MongooseIM module): fails a test case in which our
%% code logged an error nobody asked for, and a case whose asked-for error never came.
%%
%% Why: gen_hook (as MongooseIM's) catches a crashing handler, logs `hook_failed' and
%% goes on, so "nothing was sent" also holds after a crash. A case must not pass then.
%%
%% Enabled for every suite by rebar.config (`{ct_hooks, [log_guard]}' in ct_opts); a
%% plain run needs the same: `ct_run -ct_hooks log_guard' or
%% `ct:run_test([{ct_hooks, [log_guard]} | Opts])'. Without it, expect/1 fails the case.
%%
%% What is guarded: every test case, and init/end_per_suite and init/end_per_group,
%% each a "window" from its pre_ to its post_ hook. An error logged between windows
%% (e.g. by a process a previous case left running) is charged to the next window
%% that opens, as `logged_between_cases'.
%%
%% Which events: a logger handler records
%%   - any event whose report has `what => hook_failed' (gen_hook's crashed handler),
%%     at any level;
%%   - events at warning level or above whose origin is ours: the logging function
%%     (meta `mfa') is in a module compiled with this module, i.e. the production
%%     modules (mod_event_pusher*), the MongooseIM stand-in and the test helpers of
%%     test/mim, test/lib, test/support and the tools; or an OTP crash or supervisor report about a process
%%     that runs such a module (its initial call, the child's start function, or a
%%     module in the crash's stack trace).
%% Of these, the ones at error level or above (and every hook_failed) fail a passing
%% case unless the case declared them with expect/1. Warnings are recorded only so
%% that expect/1 can ask for them.
%%
%% A case that provokes an error on purpose says so, before provoking it:
%%   log_guard:expect(event_pusher_http_callback_failed)    % a `what'
%%   log_guard:expect(#{what => hook_failed, hook_name => user_send_message})
%%   log_guard:expect({crash, mongoose_rdbms})     % the crash report of a process
%%                                                  % whose initial call is there
%%   log_guard:expect(fun(LogEvent) -> ... end)     % any logger event
%% Every event a pattern matches is then allowed, and a pattern that matched none by
%% the end of the case fails it: the expected error is part of what the case checks.
%%
%% Also: a case whose end_per_testcase crashed fails (Common Test alone only warns).
-module(log_guard).

%% Common Test hook callbacks
-export([id/1, init/2, terminate/1,
         pre_init_per_suite/3, post_init_per_suite/4,
         pre_end_per_suite/3, post_end_per_suite/4,
         pre_init_per_group/4, post_init_per_group/5,
         pre_end_per_group/4, post_end_per_group/5,
         pre_init_per_testcase/4, post_end_per_testcase/5]).
%% logger handler callback
-export([log/2]).
%% For test cases
-export([expect/1, logged/1]).

-export_type([pattern/0]).

%% A `what' value, a map the event's report must contain, the crash report of a
%% process whose initial call is in a module, or a predicate on the whole logger event.
-type pattern() :: atom() | map() | {crash, module()} | fun((logger:log_event()) -> boolean()).
-type window_id() :: reference().
-type seq() :: pos_integer().

-define(HANDLER, ?MODULE).
-define(EVENTS, log_guard_events).
-define(WINDOWS, log_guard_windows).
-define(STATE, log_guard_state).
-define(WINDOW_KEY, log_guard_window).
-define(ERROR_LEVELS, [error, critical, alert, emergency]).

%%% Test case API

%% @doc Declares that Pattern's events will be logged in the current window (test case
%% or conf function): they are allowed, and the case fails if none comes by its end.
-spec expect(pattern()) -> ok.
expect(Pattern) when is_atom(Pattern); is_map(Pattern); is_function(Pattern, 1);
                     element(1, Pattern) =:= crash, is_atom(element(2, Pattern)) ->
    Id = current_window(),
    [{Id, Window = #{expects := Expects}}] = ets:lookup(?WINDOWS, Id),
    true = ets:insert(?WINDOWS, {Id, Window#{expects := Expects ++ [Pattern]}}),
    ok.

%% @doc The recorded events of the current window that Pattern matches, oldest first
%% (for cases that check what a log line says).
-spec logged(pattern()) -> [logger:log_event()].
logged(Pattern) ->
    Id = current_window(),
    [{Id, #{start := Start}}] = ets:lookup(?WINDOWS, Id),
    [Event || {_Seq, Event} <- events_after(Start, seq()), matches(Pattern, Event)].

%%% Common Test hook callbacks

-spec id(term()) -> ?MODULE.
id(_Opts) ->
    ?MODULE.

-spec init(term(), term()) -> {ok, #{owner := pid()}}.
init(_Id, _Opts) ->
    Parent = self(),
    %% The tables outlive the processes the hook callbacks run in (each case has its own).
    Owner = spawn(fun() ->
                          _ = ets:new(?EVENTS, [named_table, public, ordered_set,
                                                {write_concurrency, true}]),
                          _ = ets:new(?WINDOWS, [named_table, public, set]),
                          _ = ets:new(?STATE, [named_table, public, set]),
                          Parent ! {self(), tables_ready},
                          receive stop -> ok end
                  end),
    receive {Owner, tables_ready} -> ok end,
    set_last_close(seq()),
    ok = ensure_handler(),
    {ok, #{owner => Owner}}.

-spec terminate(#{owner := pid()}) -> ok.
terminate(#{owner := Owner}) ->
    _ = logger:remove_handler(?HANDLER),
    %% Nothing is left to charge these to; say so at least.
    case [Event || {_, Event} <- events_after(last_close(), seq()),
                   is_failure(Event)] of
        [] -> ok;
        %% Not ct:pal: rebar3's cth_readable rewrites it to cthr:pal, unknown to Dialyzer.
        Late -> io:format(user, "log_guard: errors logged after the last case:~n~p~n",
                          [summary(Late)])
    end,
    Owner ! stop,
    ok.

-spec pre_init_per_suite(atom(), Config, State) -> {Config, State}.
pre_init_per_suite(Suite, Config, State) ->
    open_window(Suite, init_per_suite),
    {Config, State}.

-spec post_init_per_suite(atom(), list(), Result, State) -> {Result | {fail, term()}, State}.
post_init_per_suite(Suite, _Config, Result, State) ->
    {judge(close_window(Suite, init_per_suite), is_list(Result), Result), State}.

-spec pre_end_per_suite(atom(), Config, State) -> {Config, State}.
pre_end_per_suite(Suite, Config, State) ->
    open_window(Suite, end_per_suite),
    {Config, State}.

-spec post_end_per_suite(atom(), list(), Result, State) -> {Result | {fail, term()}, State}.
post_end_per_suite(Suite, _Config, Result, State) ->
    {judge(close_window(Suite, end_per_suite), end_passed(Result), Result), State}.

-spec pre_init_per_group(atom(), atom(), Config, State) -> {Config, State}.
pre_init_per_group(Suite, Group, Config, State) ->
    open_window(Suite, {init_per_group, Group}),
    {Config, State}.

-spec post_init_per_group(atom(), atom(), list(), Result, State) ->
          {Result | {fail, term()}, State}.
post_init_per_group(Suite, Group, _Config, Result, State) ->
    {judge(close_window(Suite, {init_per_group, Group}), is_list(Result), Result), State}.

-spec pre_end_per_group(atom(), atom(), Config, State) -> {Config, State}.
pre_end_per_group(Suite, Group, Config, State) ->
    open_window(Suite, {end_per_group, Group}),
    {Config, State}.

-spec post_end_per_group(atom(), atom(), list(), Result, State) ->
          {Result | {fail, term()}, State}.
post_end_per_group(Suite, Group, _Config, Result, State) ->
    {judge(close_window(Suite, {end_per_group, Group}), end_passed(Result), Result), State}.

-spec pre_init_per_testcase(atom(), atom(), Config, State) -> {Config, State}.
pre_init_per_testcase(Suite, Case, Config, State) ->
    open_window(Suite, Case),
    {Config, State}.

%% A passing case (Result ok) fails when the window's log says so; a failed or
%% skipped one keeps its own reason (the log is in the case's CT log either way).
%% A crashed end_per_testcase fails the case too (CT alone only warns): a cleanup that
%% failed leaves something running into the next case.
-spec post_end_per_testcase(atom(), atom(), list(), Result, State) ->
          {Result | {fail, term()}, State}.
post_end_per_testcase(Suite, Case, _Config, Result, State) ->
    Verdict = close_window(Suite, Case),
    case Result of
        {failed, {Suite, end_per_testcase, Reason}} ->
            {{fail, {end_per_testcase_failed, Reason}}, State};
        _ ->
            {judge(Verdict, Result =:= ok, Result), State}
    end.

%%% logger handler

-spec log(logger:log_event(), logger:handler_config()) -> ok.
log(Event, #{config := #{ours := Ours}}) ->
    %% A crash here would make logger remove the handler and the guard go blind.
    try is_recorded(Event, Ours) of
        true -> true = ets:insert(?EVENTS, {seq(), Event}), ok;
        false -> ok
    catch
        _:_ -> ok
    end.

%%% Windows

-spec open_window(atom(), term()) -> ok.
open_window(Suite, Name) ->
    ok = ensure_handler(),
    Opened = seq(),
    %% With no other window open, the window also takes what was logged since the
    %% last one closed: nothing escapes between cases.
    Start = case ets:info(?WINDOWS, size) of
                0 -> last_close();
                _ -> Opened
            end,
    Id = make_ref(),
    true = ets:insert(?WINDOWS, {Id, #{suite => Suite, name => Name, start => Start,
                                       opened => Opened, expects => []}}),
    put(?WINDOW_KEY, Id),
    ok.

-spec close_window(atom(), term()) -> ok | {fail, term()}.
close_window(Suite, Name) ->
    Close = seq(),
    case find_window(Suite, Name) of
        undefined ->
            {fail, {log_guard, no_open_window, Suite, Name}};
        {Id, #{start := Start, opened := Opened, expects := Expects}} ->
            erase(?WINDOW_KEY),
            true = ets:delete(?WINDOWS, Id),
            set_last_close(Close),
            Events = events_after(Start, Close),
            forget_events_before(lists:min([Close | [S || {_, #{start := S}}
                                                              <- ets:tab2list(?WINDOWS)]])),
            HandlerInstalled = lists:member(?HANDLER, logger:get_handler_ids()),
            verdict(Events, Opened, Expects, HandlerInstalled)
    end.

-spec verdict([{seq(), logger:log_event()}], seq(), [pattern()], boolean()) ->
          ok | {fail, term()}.
verdict(Events, Opened, Expects, HandlerInstalled) ->
    [ct:log("log_guard: recorded in this window:~n~p", [summary([E || {_, E} <- Events])])
     || Events =/= []],
    Unexpected = [{Seq, E} || {Seq, E} <- Events, is_failure(E),
                              not lists:any(fun(P) -> matches(P, E) end, Expects)],
    Missing = [P || P <- Expects, not lists:any(fun({_, E}) -> matches(P, E) end, Events)],
    {Before, During} = lists:partition(fun({Seq, _}) -> Seq < Opened end, Unexpected),
    Problems = [{logged_errors, headlines(During), summary([E || {_, E} <- During])}
                || During =/= []]
        ++ [{logged_between_cases, headlines(Before), summary([E || {_, E} <- Before])}
            || Before =/= []]
        ++ [{expected_but_not_logged, Missing} || Missing =/= []]
        ++ [{log_guard_handler_removed, ?HANDLER} || not HandlerInstalled],
    case Problems of
        [] -> ok;
        [Problem] -> {fail, Problem};
        _ -> {fail, Problems}
    end.

%% The verdict changes only a passing result.
-spec judge(ok | {fail, term()}, boolean(), Result) -> Result | {fail, term()}.
judge({fail, _} = Fail, true, _Result) -> Fail;
judge(_, _Passed, Result) -> Result.

-spec end_passed(term()) -> boolean().
end_passed({fail, _}) -> false;
end_passed({'EXIT', _}) -> false;
end_passed({error, _}) -> false;
end_passed({skip, _}) -> false;
end_passed(_) -> true.

%% The window of the calling process (hooks run in the case's process); a helper
%% process of the case finds it as the only one open.
-spec current_window() -> window_id().
current_window() ->
    case ets:whereis(?WINDOWS) of
        undefined ->
            ct:fail({log_guard_not_installed,
                     "run Common Test with the log_guard hook (see log_guard.erl)"});
        _ ->
            Id = get(?WINDOW_KEY),
            case ets:lookup(?WINDOWS, Id) of
                [_] -> Id;
                [] ->
                    case ets:tab2list(?WINDOWS) of
                        [{Only, _}] -> Only;
                        Open -> ct:fail({log_guard_window_ambiguous, length(Open)})
                    end
            end
    end.

-spec find_window(atom(), term()) -> {window_id(), map()} | undefined.
find_window(Suite, Name) ->
    Id = get(?WINDOW_KEY),
    case ets:lookup(?WINDOWS, Id) of
        [{Id, #{suite := Suite, name := Name} = W}] -> {Id, W};
        _ ->
            %% The case's process died (timetrap): the post hook runs elsewhere.
            case [{I, W} || {I, W = #{suite := S, name := N}} <- ets:tab2list(?WINDOWS),
                            S =:= Suite, N =:= Name] of
                [Found | _] -> Found;
                [] -> undefined
            end
    end.

-spec events_after(seq(), seq()) -> [{seq(), logger:log_event()}].
events_after(Start, End) ->
    ets:select(?EVENTS, [{{'$1', '_'}, [{'>', '$1', Start}, {'<', '$1', End}], ['$_']}]).

-spec forget_events_before(seq()) -> ok.
forget_events_before(Seq) ->
    _ = ets:select_delete(?EVENTS, [{{'$1', '_'}, [{'<', '$1', Seq}], [true]}]),
    ok.

-spec last_close() -> seq().
last_close() ->
    ets:lookup_element(?STATE, last_close, 2).

-spec set_last_close(seq()) -> ok.
set_last_close(Seq) ->
    true = ets:insert(?STATE, {last_close, Seq}),
    ok.

-spec seq() -> seq().
seq() ->
    erlang:unique_integer([monotonic, positive]).

%%% Which events

-spec ensure_handler() -> ok.
ensure_handler() ->
    case lists:member(?HANDLER, logger:get_handler_ids()) of
        true -> ok;
        false ->
            ok = logger:add_handler(?HANDLER, ?MODULE,
                                    #{level => all, config => #{ours => our_modules()}})
    end.

%% The application's modules (the production code and, in the test profile, the
%% stand-in and the tools) and those compiled beside this one (rebar3 also puts the
%% stand-in into the suites' directory), but not the suites. Listed once: a logger
%% handler must not call the code server.
-spec our_modules() -> #{module() => true}.
our_modules() ->
    AppEbin = case code:lib_dir(mongoose_event_pusher) of % lib_dir/2: deprecated in OTP 27
                  {error, _} -> [];
                  Dir -> [filename:join(Dir, "ebin")]
              end,
    Dirs = lists:usort([filename:dirname(code:which(?MODULE)) | AppEbin]),
    maps:from_list([{list_to_atom(Name), true}
                    || Dir <- Dirs, F <- filelib:wildcard("*.beam", Dir),
                       Name <- [filename:basename(F, ".beam")],
                       not lists:suffix("_SUITE", Name)]).

-spec is_recorded(logger:log_event(), #{module() => true}) -> boolean().
is_recorded(#{msg := {report, #{what := hook_failed}}}, _Ours) ->
    true;
is_recorded(#{level := Level} = Event, Ours) ->
    logger:compare_levels(Level, warning) =/= lt andalso is_ours(Event, Ours).

-spec is_ours(logger:log_event(), #{module() => true}) -> boolean().
is_ours(#{meta := #{mfa := {M, _, _}}} = Event, Ours) ->
    maps:is_key(M, Ours) orelse report_is_ours(Event, Ours);
is_ours(Event, Ours) ->
    report_is_ours(Event, Ours).

%% OTP's reports about a process running our code.
-spec report_is_ours(logger:log_event(), #{module() => true}) -> boolean().
report_is_ours(#{msg := {report, #{label := {proc_lib, crash}, report := [Info | _]}}}, Ours)
  when is_list(Info) ->
    InitialCall = case proplists:get_value(initial_call, Info) of
                      {M, _, _} -> [M];
                      _ -> []
                  end,
    StackModules = case proplists:get_value(error_info, Info) of
                       {_Class, _Reason, Stack} when is_list(Stack) -> stack_modules(Stack);
                       _ -> []
                   end,
    lists:any(fun(M) -> maps:is_key(M, Ours) end, InitialCall ++ StackModules);
report_is_ours(#{msg := {report, #{label := {supervisor, _}, report := Report}}}, Ours)
  when is_list(Report) ->
    case proplists:get_value(offender, Report) of
        Offender when is_list(Offender) ->
            case proplists:get_value(mfargs, Offender) of
                {M, _, _} -> maps:is_key(M, Ours);
                _ -> false
            end;
        _ ->
            false
    end;
%% A plain (not proc_lib) process that died of an error: the emulator's report.
report_is_ours(#{msg := {_Format, [_Pid, _Node, {_Reason, Stack}]},
                 meta := #{error_logger := #{emulator := true}}}, Ours) when is_list(Stack) ->
    lists:any(fun(M) -> maps:is_key(M, Ours) end, stack_modules(Stack));
report_is_ours(_Event, _Ours) ->
    false.

-spec stack_modules(list()) -> [module()].
stack_modules(Stack) ->
    [M || {M, _F, _A, _Loc} <- Stack, is_atom(M)].

-spec is_failure(logger:log_event()) -> boolean().
is_failure(#{msg := {report, #{what := hook_failed}}}) -> true;
is_failure(#{level := Level}) -> lists:member(Level, ?ERROR_LEVELS).

-spec matches(pattern(), logger:log_event()) -> boolean().
matches(What, Event) when is_atom(What) ->
    matches(#{what => What}, Event);
matches(Pattern, #{msg := {report, Report}}) when is_map(Pattern), is_map(Report) ->
    maps:with(maps:keys(Pattern), Report) =:= Pattern;
matches(Pattern, _Event) when is_map(Pattern) ->
    false;
matches({crash, Module}, #{msg := {report, #{label := {proc_lib, crash},
                                             report := [Info | _]}}}) when is_list(Info) ->
    case proplists:get_value(initial_call, Info) of
        {Module, _, _} -> true;
        _ -> false
    end;
matches({crash, _Module}, _Event) ->
    false;
matches(Predicate, Event) when is_function(Predicate, 1) ->
    try Predicate(Event) =:= true catch _:_ -> false end.

%% One short term per event, first in a failure reason (CT prints it truncated).
-spec headlines([{seq(), logger:log_event()}]) -> [term()].
headlines(Events) ->
    [case Msg of
         {report, #{what := What}} -> What;
         {report, #{label := Label}} -> Label;
         _ -> case msg(Msg) of
                  Text when is_binary(Text) -> string:slice(Text, 0, 80);
                  Other -> Other
              end
     end || {_, #{msg := Msg}} <- Events].

%% What a failure reason shows of an event: level, origin and the report or message.
-spec summary([logger:log_event()]) -> [map()].
summary(Events) ->
    [maps:merge(#{level => Level, msg => msg(Msg)}, maps:with([mfa, pid], Meta))
     || #{level := Level, msg := Msg, meta := Meta} <- Events].

-spec msg(term()) -> term().
msg({report, Report}) -> Report;
msg({string, String}) -> unicode:characters_to_binary(String);
msg({Format, Args}) -> try iolist_to_binary(io_lib:format(Format, Args)) catch _:_ -> {Format, Args} end.
