%% Stand-in for MongooseIM's gen_mod: the behaviour of extension modules,
%% starting/stopping them for a host type, and reading their options.
%%
%% The `{modules, HostType}' option in mongoose_config is the truth of what is
%% configured (and what the option getters read). Which modules are actually
%% running is kept here as well, one persistent_term per module, so that a
%% module is never stopped without having been started, nor started twice.
-module(gen_mod).

-include_lib("kernel/include/logger.hrl").
-include("mongoose_config_spec.hrl").

-export([start_module/3, stop_module/2,
         get_module_opts/2, get_loaded_module_opts/2,
         get_module_opt/3, get_module_opt/4, lookup_module_opt/3,
         get_opt/2,
         is_loaded/2, loaded_modules/1,
         hosts_with_module/1, hosts_and_opts_with_module/1]).
%% Stand-in helper (not in MongooseIM)
-export([is_running/2]).

-export_type([module_opts/0, key_path/0, hardness/0, module_dep/0, service_dep/0,
              deps/0]).

-type host_type() :: binary().
-type module_opts() :: #{atom() => mongoose_config:value()}.
-type key_path() :: [atom() | binary()].
-type hardness() :: hard | soft | optional.
-type module_dep() :: {module(), module_opts(), hardness()}.
-type service_dep() :: {service, atom()}.
-type deps() :: [module_dep() | service_dep()].

-callback start(HostType :: host_type(), Opts :: module_opts()) -> any().
-callback stop(HostType :: host_type()) -> any().
-callback hooks(HostType :: host_type()) -> gen_hook:hook_list().
-callback supported_features() -> [atom()].
-callback config_spec() -> #section{}.
-callback instrumentation(HostType :: host_type()) -> [mongoose_instrument:spec()].
-callback deps(HostType :: host_type(), Opts :: module_opts()) -> deps().
-callback config_metrics(HostType :: host_type()) -> [{atom(), term()}].

-optional_callbacks([hooks/1, supported_features/0, config_spec/0, instrumentation/1,
                     deps/2, config_metrics/1]).

%% How long stop_module waits for the processes named by `{wait, Procs}'.
-define(STOP_WAIT_MS, 5000).

%% @doc Starts Module for HostType: the module must be configured for the host
%% type, and a host type from `host_types' (dynamic domains) needs a module
%% that supports them. Sets up the module's instrumentation, calls
%% Module:start/2, then adds its hooks. Returns `{ok, StartResult}'.
-spec start_module(host_type(), module(), module_opts()) -> {ok, term()}.
start_module(HostType, Module, Opts) ->
    assert_configured(HostType, Module),
    assert_not_running(HostType, Module),
    {module, Module} = code:ensure_loaded(Module),
    check_dynamic_domains_support(HostType, Module),
    try
        run_start(HostType, Module, Opts)
    catch
        Class:Reason:Stacktrace ->
            ?LOG_CRITICAL(#{what => module_start_failed, host_type => HostType,
                            module => Module, opts => Opts,
                            class => Class, reason => Reason, stacktrace => Stacktrace}),
            erlang:raise(Class, Reason, Stacktrace)
    end.

%% @doc Stops a running module: removes its hooks, calls Module:stop/1 (and
%% waits for the processes it names in `{wait, P | [P]}'), tears down its
%% instrumentation. Raises `#{what := module_not_loaded}' if the module is not
%% configured or not running for the host type.
-spec stop_module(host_type(), module()) -> ok.
stop_module(HostType, Module) ->
    assert_configured(HostType, Module),
    case is_running(HostType, Module) of
        true -> ok;
        false -> error(#{what => module_not_loaded, text => <<"Module is not running">>,
                         host_type => HostType, module => Module})
    end,
    case erlang:function_exported(Module, hooks, 1) of
        true -> gen_hook:delete_handlers(Module:hooks(HostType));
        false -> ok
    end,
    case Module:stop(HostType) of
        {wait, Procs} when is_list(Procs) -> lists:foreach(fun wait_for_stop/1, Procs);
        {wait, Proc} -> wait_for_stop(Proc);
        _ -> ok
    end,
    tear_down_instrumentation(HostType, Module),
    persistent_term:erase(running_key(HostType, Module)),
    ok.

%% @doc The module's options, `#{}' if it is not configured.
-spec get_module_opts(host_type(), module()) -> module_opts().
get_module_opts(HostType, Module) ->
    mongoose_config:get_opt([{modules, HostType}, Module], #{}).

%% @doc The module's options; crashes with {badkey, _} if it is not configured.
-spec get_loaded_module_opts(host_type(), module()) -> module_opts().
get_loaded_module_opts(HostType, Module) ->
    mongoose_config:get_opt([{modules, HostType}, Module]).

%% @doc One option (a key or a key path); crashes with {badkey, _} if missing.
-spec get_module_opt(host_type(), module(), atom() | key_path()) -> mongoose_config:value().
get_module_opt(HostType, Module, KeyOrPath) ->
    mongoose_config:get_opt(opt_path(HostType, Module, KeyOrPath)).

-spec get_module_opt(host_type(), module(), atom() | key_path(), Default) ->
          mongoose_config:value() | Default.
get_module_opt(HostType, Module, KeyOrPath, Default) ->
    mongoose_config:get_opt(opt_path(HostType, Module, KeyOrPath), Default).

-spec lookup_module_opt(host_type(), module(), atom() | key_path()) ->
          {ok, mongoose_config:value()} | {error, not_found}.
lookup_module_opt(HostType, Module, KeyOrPath) ->
    mongoose_config:lookup_opt(opt_path(HostType, Module, KeyOrPath)).

%% @doc A value from an options map by key or key path; crashes if missing.
-spec get_opt(atom() | key_path(), map()) -> term().
get_opt(Path, Opts) when is_list(Path) ->
    lists:foldl(fun maps:get/2, Opts, Path);
get_opt(Key, Opts) ->
    maps:get(Key, Opts).

%% @doc Whether Module is configured for HostType.
-spec is_loaded(host_type(), module()) -> boolean().
is_loaded(HostType, Module) ->
    maps:is_key(Module, configured_modules(HostType)).

%% @doc The modules configured for HostType.
-spec loaded_modules(host_type()) -> [module()].
loaded_modules(HostType) ->
    maps:keys(configured_modules(HostType)).

-spec hosts_with_module(module()) -> [host_type()].
hosts_with_module(Module) ->
    [HostType || HostType <- all_host_types(), is_loaded(HostType, Module)].

-spec hosts_and_opts_with_module(module()) -> #{host_type() => module_opts()}.
hosts_and_opts_with_module(Module) ->
    maps:from_list([{HostType, Opts} || HostType <- all_host_types(),
                                        {ok, Opts} <- [maps:find(Module, configured_modules(HostType))]]).

%% @doc Whether Module has been started (and not stopped) for HostType.
-spec is_running(host_type(), module()) -> boolean().
is_running(HostType, Module) ->
    persistent_term:get(running_key(HostType, Module), false).

%%% Internals

-spec run_start(host_type(), module(), module_opts()) -> {ok, term()}.
run_start(HostType, Module, Opts) ->
    Instrumentation = instrumentation(HostType, Module),
    mongoose_instrument:set_up(Instrumentation),
    {links, LinksBefore} = process_info(self(), links),
    Result = try
                 Module:start(HostType, Opts)
             catch
                 Class:Reason:Stacktrace ->
                     %% Let a later start of the module register its events again.
                     mongoose_instrument:tear_down(Instrumentation),
                     erlang:raise(Class, Reason, Stacktrace)
             end,
    warn_about_new_links(HostType, Module, LinksBefore),
    case erlang:function_exported(Module, hooks, 1) of
        true -> gen_hook:add_handlers(Module:hooks(HostType));
        false -> ok
    end,
    persistent_term:put(running_key(HostType, Module), true),
    case Result of
        {ok, _} -> Result;
        _ -> {ok, Result}
    end.

%% A process linked to the caller of start_module dies with it; modules should
%% start their processes under a supervisor instead.
-spec warn_about_new_links(host_type(), module(), [pid() | port()]) -> ok.
warn_about_new_links(HostType, Module, LinksBefore) ->
    {links, LinksAfter} = process_info(self(), links),
    case LinksAfter -- LinksBefore of
        [] -> ok;
        NewLinks -> ?LOG_WARNING(#{what => module_start_created_links, host_type => HostType,
                                   module => Module, links => NewLinks})
    end.

-spec assert_configured(host_type(), module()) -> ok.
assert_configured(HostType, Module) ->
    case is_loaded(HostType, Module) of
        true -> ok;
        false -> error(#{what => module_not_loaded,
                         text => <<"Module missing from mongoose_config">>,
                         host_type => HostType, module => Module})
    end.

-spec assert_not_running(host_type(), module()) -> ok.
assert_not_running(HostType, Module) ->
    case is_running(HostType, Module) of
        false -> ok;
        true -> error(#{what => module_already_started, host_type => HostType, module => Module})
    end.

%% A host type listed in `hosts' has static domains; any other one (from
%% `host_types') has dynamic domains, which the module must declare it supports.
-spec check_dynamic_domains_support(host_type(), module()) -> ok.
check_dynamic_domains_support(HostType, Module) ->
    case lists:member(HostType, mongoose_config:get_opt(hosts, [])) orelse
        lists:member(dynamic_domains, supported_features(Module)) of
        true -> ok;
        false -> error(#{what => dynamic_domains_not_supported,
                         text => <<"Module does not support dynamic domains">>,
                         host_type => HostType, module => Module})
    end.

-spec supported_features(module()) -> [atom()].
supported_features(Module) ->
    case erlang:function_exported(Module, supported_features, 0) of
        true -> Module:supported_features();
        false -> []
    end.

-spec instrumentation(host_type(), module()) -> [mongoose_instrument:spec()].
instrumentation(HostType, Module) ->
    case erlang:function_exported(Module, instrumentation, 1) of
        true -> Module:instrumentation(HostType);
        false -> []
    end.

-spec tear_down_instrumentation(host_type(), module()) -> ok.
tear_down_instrumentation(HostType, Module) ->
    mongoose_instrument:tear_down(instrumentation(HostType, Module)).

-spec wait_for_stop(pid() | atom()) -> ok.
wait_for_stop(Proc) ->
    Ref = erlang:monitor(process, Proc),
    receive
        {'DOWN', Ref, process, _, _} -> ok
    after ?STOP_WAIT_MS ->
            ?LOG_WARNING(#{what => module_process_not_stopped, process => Proc}),
            kill(Proc),
            receive {'DOWN', Ref, process, _, _} -> ok end
    end.

-spec kill(pid() | atom()) -> true.
kill(Pid) when is_pid(Pid) ->
    exit(Pid, kill);
kill(Name) ->
    case whereis(Name) of
        undefined -> true; % it has just stopped: the 'DOWN' message is on its way
        Pid -> exit(Pid, kill)
    end.

-spec opt_path(host_type(), module(), atom() | key_path()) -> mongoose_config:key_path().
opt_path(HostType, Module, Path) when is_list(Path) ->
    [{modules, HostType}, Module | Path];
opt_path(HostType, Module, Key) ->
    [{modules, HostType}, Module, Key].

-spec configured_modules(host_type()) -> #{module() => module_opts()}.
configured_modules(HostType) ->
    mongoose_config:get_opt({modules, HostType}, #{}).

-spec all_host_types() -> [host_type()].
all_host_types() ->
    mongoose_config:get_opt(hosts, []) ++ mongoose_config:get_opt(host_types, []).

%% Present (true) while Module runs for HostType.
-spec running_key(host_type(), module()) -> {?MODULE, running, host_type(), module()}.
running_key(HostType, Module) ->
    {?MODULE, running, HostType, Module}.
