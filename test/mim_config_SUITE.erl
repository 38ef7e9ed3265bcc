%% @doc "Keep your mongooseim.toml": the stand-in's mongoose_config_parser reads
%% complete MongooseIM 6.4 configuration files and gives what MongooseIM 6.4.0's own
%% parser gives for them.
%%
%% test/mim-6.4 holds four of MongooseIM 6.4.0's own test configuration files and,
%% beside each, `<name>.expected.terms': what MongooseIM's parser returned for it
%% (`hosts', `host_types', `default_server_domain', `outgoing_pools', and per host
%% type the options of the mod_event_pusher* modules). Each case parses one file and
%% compares:
%% - `hosts', `host_types', `default_server_domain' and `outgoing_pools' must be
%%   equal, pool order included;
%% - `{modules, HostType}' must hold exactly the expected event pusher modules (the
%%   other MongooseIM modules of the file are accepted but not kept, since the
%%   stand-in would start them); each MongooseIM option must be equal, at any depth,
%%   and every key we have on top of MongooseIM's must be one of our documented
%%   additive options (additive_options/1).
%%
%% The files name relative paths that MongooseIM's validation expects to exist
%% (`priv/ca.pem' for the rdbms pool's TLS); they are parsed from a directory that
%% has them, as MongooseIM's own suite does (Common Test sets the working directory
%% of each case, so the parse changes it and changes it back).
-module(mim_config_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([modules_toml/1, outgoing_pools_toml/1, mongooseim_pgsql_toml/1, host_types_toml/1,
         own_example_is_a_mongooseim_file/1, comparison_finds_every_difference/1]).

-define(EVENT_PUSHER_MODULES, [mod_event_pusher, mod_event_pusher_http, mod_event_pusher_push,
                               mod_event_pusher_rabbit, mod_event_pusher_sns]).

all() ->
    [modules_toml, outgoing_pools_toml, mongooseim_pgsql_toml, host_types_toml,
     own_example_is_a_mongooseim_file, comparison_finds_every_difference].

init_per_suite(Config) ->
    {ok, _} = tomerl:executable(),
    WorkDir = filename:join(?config(priv_dir, Config), "mim_cwd"),
    ok = filelib:ensure_dir(filename:join([WorkDir, "priv", "x"])),
    %% MongooseIM's filename validator only checks that the file exists.
    ok = file:write_file(filename:join([WorkDir, "priv", "ca.pem"]), <<>>),
    [{mim_cwd, WorkDir} | Config].

end_per_suite(_Config) ->
    ok.

%%--------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------

%% Every event pusher backend with MongooseIM's doc options, among 30 other modules.
modules_toml(Config) ->
    assert_parsed_as_mongooseim(Config, "modules").

%% Every pool type, TLS for rdbms, a host_type scoped rabbit pool, a host_config pool.
outgoing_pools_toml(Config) ->
    assert_parsed_as_mongooseim(Config, "outgoing_pools").

%% A complete server configuration: listeners, auth, acl, access, shapers, s2s...
mongooseim_pgsql_toml(Config) ->
    assert_parsed_as_mongooseim(Config, "mongooseim-pgsql").

%% host_config for dynamic host types, resetting modules in several ways.
host_types_toml(Config) ->
    assert_parsed_as_mongooseim(Config, "host_types").

%% Our example declares the same general options MongooseIM requires, and only
%% sections MongooseIM has.
own_example_is_a_mongooseim_file(Config) ->
    Example = filename:join([repo_dir(Config), "examples", "mongooseim.toml"]),
    {ok, Toml} = tomerl:read_file(Example),
    ?assertMatch(#{<<"general">> := #{<<"default_server_domain">> := <<"localhost">>,
                                      <<"hosts">> := [<<"localhost">> | _]}}, Toml),
    ?assertEqual([], maps:keys(Toml) -- [<<"general">>, <<"outgoing_pools">>, <<"modules">>]),
    %% As it is, not only after the demo moved its local addresses.
    Opts = mongoose_config_parser:parse_file(Example),
    ?assertMatch(#{mod_event_pusher := #{http := _, push := _, rabbit := _, sns := _}},
                 opt({modules, <<"localhost">>}, Opts)).

%% The comparison itself: a changed or missing value anywhere is a difference, an
%% added key anywhere is reported with its path.
comparison_finds_every_difference(_Config) ->
    Theirs = #{a => 1, b => #{c => 2, g => 0}, h => [#{i => 1}], j => "x"},
    Ours = #{a => 1, b => #{c => 3, d => 4}, e => 5, h => [#{i => 1, k => 2}], j => <<"x">>},
    ?assertEqual({[{[b, c], 2, 3}, {[b, g], missing, 0}, {[j], "x", <<"x">>}],
                  [[e], [b, d], [h, item, k]]},
                 compare(Theirs, Ours, [])),
    ?assertEqual({[{[h], [#{i => 1}], []}], []}, compare(#{h => [#{i => 1}]}, #{h => []}, [])).

%%--------------------------------------------------------------------
%% Comparison
%%--------------------------------------------------------------------

assert_parsed_as_mongooseim(Config, Name) ->
    Dir = mim_dir(Config),
    Ours = parse_in(?config(mim_cwd, Config), filename:join(Dir, Name ++ ".toml")),
    {ok, Theirs} = file:consult(filename:join(Dir, Name ++ ".expected.terms")),
    [assert_option(Key, Value, Ours) || {Key, Value} <- Theirs],
    %% no module map for a host type MongooseIM does not have
    ?assertEqual(lists:sort([HT || {{modules, HT}, _} <- Theirs]),
                 lists:sort([HT || {{modules, HT}, _} <- Ours])).

assert_option({modules, HostType} = Key, TheirModules, Ours) ->
    OurModules = opt(Key, Ours),
    ?assertEqual(lists:sort(maps:keys(TheirModules)), lists:sort(maps:keys(OurModules)),
                 {modules, HostType}),
    [assert_module_opts(HostType, Module, Opts, maps:get(Module, OurModules))
     || {Module, Opts} <- maps:to_list(TheirModules)];
assert_option(Key, Value, Ours) ->
    ?assertEqual(Value, opt(Key, Ours), Key).

%% mod_event_pusher holds each backend's options under the backend's name.
assert_module_opts(HostType, mod_event_pusher, Theirs, Ours) ->
    ?assertEqual(lists:sort(maps:keys(Theirs)), lists:sort(maps:keys(Ours)),
                 {HostType, mod_event_pusher}),
    [assert_module_opts(HostType, backend_module(Backend), Opts, maps:get(Backend, Ours))
     || {Backend, Opts} <- maps:to_list(Theirs)];
assert_module_opts(HostType, Module, Theirs, Ours) ->
    {Different, Extra} = compare(Theirs, Ours, []),
    ?assertEqual([], Different, {HostType, Module}),
    ?assertEqual([], Extra -- additive_options(Module), {HostType, Module, extra_keys}).

%% {Differences, ExtraKeys}: every MongooseIM key must be present and equal (maps
%% compared key by key, lists element by element); keys only we have are returned
%% as paths.
compare(Theirs, Ours, Path) when is_map(Theirs), is_map(Ours) ->
    Results = [case Ours of
                   #{Key := OurValue} -> compare(Value, OurValue, Path ++ [Key]);
                   #{} -> {[{Path ++ [Key], missing, Value}], []}
               end || {Key, Value} <- maps:to_list(Theirs)],
    Extra = [Path ++ [Key] || Key <- maps:keys(Ours), not is_map_key(Key, Theirs)],
    merge([{[], Extra} | Results]);
compare(Theirs, Ours, Path) when is_list(Theirs), is_list(Ours),
                                 length(Theirs) =:= length(Ours) ->
    merge([compare(T, O, Path ++ [item]) || {T, O} <- lists:zip(Theirs, Ours)]);
compare(Same, Same, _Path) ->
    {[], []};
compare(Theirs, Ours, Path) ->
    {[{Path, Theirs, Ours}], []}.

merge(Results) ->
    {lists:append([D || {D, _} <- Results]), lists:append([E || {_, E} <- Results])}.

%% Our documented additions to MongooseIM's options (README, option tables), as
%% paths in the module's options.
additive_options(mod_event_pusher_http) ->
    [[drain_timeout_ms], [queue], [retry]];
additive_options(mod_event_pusher_push) ->
    [[publish_timeout_ms], [drain_timeout_ms], [queue]];
additive_options(mod_event_pusher_rabbit) ->
    [[connection], [reconnect], [confirm_window], [confirm_timeout_ms], [max_message_bytes],
     [drain_timeout_ms], [queue], [retry]
     | [[Exchange, durable] || Exchange <- [presence_exchange, chat_msg_exchange,
                                            groupchat_msg_exchange]]];
additive_options(mod_event_pusher_sns) ->
    [[batching], [request_timeout_ms], [drain_timeout_ms], [queue]].

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

parse_in(WorkDir, File) ->
    {ok, Cwd} = file:get_cwd(),
    ok = file:set_cwd(WorkDir),
    try
        mongoose_config_parser:parse_file(File)
    after
        ok = file:set_cwd(Cwd)
    end.

backend_module(Backend) ->
    list_to_atom("mod_event_pusher_" ++ atom_to_list(Backend)).

opt(Key, Opts) ->
    case lists:keyfind(Key, 1, Opts) of
        {Key, Value} -> Value;
        false -> ct:fail({option_missing, Key, [K || {K, _} <- Opts]})
    end.

%% test/mim-6.4 of the repository (not of a build's copy of test/).
mim_dir(Config) ->
    filename:join(repo_dir(Config), "test/mim-6.4").

repo_dir(_Config) ->
    {ok, Root} = repo_binary:root(),
    Root.
