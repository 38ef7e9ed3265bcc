%% The NIF as an operator installs it: our beams and the library copied (modes kept,
%% as `cp -p' or `install -m' would leave them) into a MongooseIM release layout,
%% lib/mongooseim-<vsn>/{ebin,priv}, and loaded by a VM running as an unprivileged
%% user, as MongooseIM's packages run it. That VM delivers an event to a listener here.
-module(install_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("kernel/include/file.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("mod_event_pusher_nif.hrl").

-define(LIBRARY, "libpusher_nif.so").
-define(RELEASE_APP_DIR, "lib/mongooseim-6.4.0").
-define(CHILD_TIMEOUT_MS, 60000).

all() ->
    [unprivileged_vm_loads_the_installed_library_and_delivers,
     unreadable_library_is_refused_naming_the_file,
     missing_library_is_refused_naming_every_place_tried].

init_per_testcase(_Case, Config) ->
    Root = make_install_root(),
    [{install_root, Root}, {listener, test_http_listener:start()} | Config].

end_per_testcase(_Case, Config) ->
    test_http_listener:stop(?config(listener, Config)),
    ok = file:del_dir_r(?config(install_root, Config)).

%% Cases

unprivileged_vm_loads_the_installed_library_and_delivers(Config) ->
    Root = ?config(install_root, Config),
    install_release(Root, [library]),
    Listener = ?config(listener, Config),
    Result = run_unprivileged(Root, test_http_listener:port(Listener)),
    case Result of
        #{loaded := {module, mod_event_pusher_nif}} -> ok;
        #{output := Output} -> ct:fail({not_loaded_by_an_unprivileged_user, Output})
    end,
    ?assertEqual(1, maps:get(delivered, Result)),
    %% Inside a MongooseIM release our modules belong to the mongooseim application:
    %% the library was found in its priv dir, not through our own application.
    ?assertEqual({error, bad_name}, maps:get(own_priv_dir, Result)),
    ?assertEqual(filename:join([Root, ?RELEASE_APP_DIR, "priv"]),
                 maps:get(mongooseim_priv_dir, Result)),
    {ok, [Request]} = test_http_listener:wait_for_requests(Listener, 1, 5000),
    ?assertMatch(#{method := <<"POST">>, path := <<"/installed">>,
                   body := <<"from an unprivileged VM">>}, Request).

%% What a 0600 library (as native/build_nif.sh once left it) does to such a node.
unreadable_library_is_refused_naming_the_file(Config) ->
    Root = ?config(install_root, Config),
    case is_root() of
        false -> {skip, "needs root to run a VM as another user than the file's owner"};
        true ->
            install_release(Root, [library]),
            Library = filename:join([Root, ?RELEASE_APP_DIR, "priv", ?LIBRARY]),
            ok = file:change_mode(Library, 8#600),
            Result = run_unprivileged(Root, 1),
            ?assertMatch(#{loaded := {error, on_load_failure}, delivered := not_loaded}, Result),
            Log = maps:get(on_load_warning, Result),
            assert_contains(Log, Library),
            assert_contains(Log, "Permission denied")
    end.

missing_library_is_refused_naming_every_place_tried(Config) ->
    Root = ?config(install_root, Config),
    install_release(Root, []),
    Result = run_unprivileged(Root, 1),
    ?assertMatch(#{loaded := {error, on_load_failure}, delivered := not_loaded}, Result),
    Log = maps:get(on_load_warning, Result),
    assert_contains(Log, "library_not_found"),
    assert_contains(Log, ?LIBRARY),
    %% MongooseIM's priv dir (also the one beside ebin/); our own app is not there.
    assert_contains(Log, filename:join([Root, ?RELEASE_APP_DIR, "priv"])).

%% Helpers

%% A fresh directory that any user may enter, standing for /usr/lib/mongooseim.
make_install_root() ->
    Root = filename:join("/tmp", "install_SUITE-" ++ integer_to_list(erlang:unique_integer([positive]))
                         ++ "-" ++ os:getpid()),
    ok = make_public_dir(Root),
    Root.

make_public_dir(Dir) ->
    ok = file:make_dir(Dir),
    file:change_mode(Dir, 8#755).

%% Our production beams into lib/mongooseim-<vsn>/ebin and, with `library', the NIF
%% into its priv/, each with the mode it has in the build (what `cp -p' keeps).
install_release(Root, What) ->
    AppDir = filename:join(Root, ?RELEASE_APP_DIR),
    [ok = make_public_dir(D) || D <- [filename:join(Root, "lib"), AppDir,
                                       filename:join(AppDir, "ebin"),
                                       filename:join(AppDir, "priv")]],
    BuildEbin = filename:dirname(code:which(mod_event_pusher_nif)),
    Beams = filelib:wildcard("mod_event_pusher*.beam", BuildEbin),
    ?assertNotEqual([], Beams),
    [copy_keeping_mode(filename:join(BuildEbin, B), filename:join([AppDir, "ebin", B]))
     || B <- Beams],
    [copy_keeping_mode(built_library(), filename:join([AppDir, "priv", ?LIBRARY]))
     || lists:member(library, What)],
    ok.

%% The library `make build' installed (native/build_nif.sh).
built_library() ->
    Library = filename:join(code:priv_dir(mongoose_event_pusher), ?LIBRARY),
    ?assert(filelib:is_regular(Library)),
    Library.

copy_keeping_mode(From, To) ->
    {ok, #file_info{mode = Mode}} = file:read_file_info(From),
    {ok, _} = file:copy(From, To),
    ok = file:change_mode(To, Mode band 8#7777).

is_root() ->
    string:trim(os:cmd("id -u")) =:= "0".

%% Runs a VM with only the installed ebin on its code path, as nobody when we are
%% root (else as ourselves). It loads the NIF, pushes one event to Port and waits for
%% the outcome report; it prints what it saw on one line, which we parse.
run_unprivileged(Root, Port) ->
    Erl = filename:join([code:root_dir(), "bin", "erl"]),
    Ebin = filename:join([Root, ?RELEASE_APP_DIR, "ebin"]),
    Command = case is_root() of
                  true -> [os:find_executable("setpriv"), "--reuid=" ++ id("-u", "nobody"),
                           "--regid=" ++ id("-g", "nobody"), "--clear-groups", "--", Erl];
                  false -> [Erl]
              end,
    Args = tl(Command) ++ ["-noshell", "-pa", Ebin, "-eval", child_script(Port)],
    PortRef = open_port({spawn_executable, hd(Command)},
                        [{args, Args}, {cd, Root}, exit_status,
                         {env, [{"HOME", Root}, {"ERL_CRASH_DUMP_SECONDS", "0"}]
                               ++ [{Var, false} || Var <- ["ERL_LIBS", "ERL_FLAGS",
                                                           "ERL_AFLAGS", "ERL_ZFLAGS"]]},
                         stderr_to_stdout, binary, use_stdio]),
    Output = collect_output(PortRef, erlang:monotonic_time(millisecond) + ?CHILD_TIMEOUT_MS, []),
    ct:log("unprivileged VM:~n~ts", [Output]),
    {match, [Line]} = re:run(Output, "^install_SUITE (.*)$",
                             [multiline, {capture, all_but_first, list}]),
    {ok, Tokens, _} = erl_scan:string(Line ++ "."),
    {ok, {Uid, Loaded, OwnPrivDir, MongooseimPrivDir, Delivered, OnLoadWarning}} =
        erl_parse:parse_term(Tokens),
    ExpectedUid = case is_root() of
                      true -> id("-u", "nobody");
                      false -> string:trim(os:cmd("id -u"))
                  end,
    ?assertEqual(ExpectedUid, Uid),
    #{loaded => Loaded, own_priv_dir => OwnPrivDir, mongooseim_priv_dir => MongooseimPrivDir,
      delivered => Delivered, on_load_warning => OnLoadWarning, output => Output}.

id(Flag, User) ->
    string:trim(os:cmd("id " ++ Flag ++ " " ++ User)).

collect_output(Port, Deadline, Acc) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {Port, {data, Data}} -> collect_output(Port, Deadline, [Data | Acc]);
        {Port, {exit_status, _}} -> unicode:characters_to_list(lists:reverse(Acc))
    after Left ->
            {os_pid, OsPid} = erlang:port_info(Port, os_pid),
            os:cmd("kill -9 " ++ integer_to_list(OsPid)),
            ct:fail({unprivileged_vm_timeout, unicode:characters_to_list(lists:reverse(Acc))})
    end.

child_script(Port) ->
    %% Written into the child's script as the tuples they are.
    Instance = #instance_config{max_events = 10, max_bytes = 65536, overflow = drop_newest,
                                max_attempts = 3, base_backoff_ms = 50, max_backoff_ms = 200,
                                retry_deadline_ms = 10000, concurrency = 1},
    Config = #http_config{host = <<"http://127.0.0.1:", (integer_to_binary(Port))/binary>>,
                          path_prefix = <<"/">>, request_timeout_ms = 5000, verify_mode = peer},
    Event = #http_event{path = <<"installed">>,
                        headers = [{<<"content-type">>, <<"text/plain">>}],
                        body = <<"from an unprivileged VM">>, tag = <<"tag">>},
    lists:flatten(io_lib:format(
      %% OTP logs an on_load failure from a process of its own, at some later point: a
      %% primary filter hands that warning to us, so we can wait for it before stopping.
      "Self = self(),"
      "logger:add_primary_filter(install_SUITE, {fun(Event, _) ->"
      "    Text = unicode:characters_to_list("
      "             logger_formatter:format(Event, #{template => [msg], single_line => true})),"
      "    [Self ! {on_load_warning, Text} || string:find(Text, \"on_load\") =/= nomatch],"
      "    ignore end, []}),"
      "Loaded = code:ensure_loaded(mod_event_pusher_nif),"
      "{Delivered, Warning} = case Loaded of"
      "  {module, _} ->"
      "    {ok, I} = mod_event_pusher_nif:start_http(~w, ~w, self()),"
      "    ok = mod_event_pusher_nif:push(I, ~w),"
      "    receive {mod_event_pusher_nif, report, _} -> ok after 20000 -> ok end,"
      "    {maps:get(delivered, mod_event_pusher_nif:stats(I)), none};"
      "  _ ->"
      "    {not_loaded, receive {on_load_warning, W} -> W after 20000 -> no_warning end} "
      "end,"
      "Seen = {string:trim(os:cmd(\"id -u\")), Loaded, code:priv_dir(mongoose_event_pusher),"
      "  code:priv_dir(mongooseim), Delivered, Warning},"
      "io:put_chars([\"install_SUITE \", io_lib:print(Seen, 1, 1000000, -1), $\\n]),"
      "init:stop().", [Instance, Config, Event])).

assert_contains(Text, Part) ->
    case string:find(Text, Part) of
        nomatch -> ct:fail({missing, Part, in, Text});
        _ -> ok
    end.
