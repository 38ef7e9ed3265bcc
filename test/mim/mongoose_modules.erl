%% Stand-in for MongooseIM's mongoose_modules: starting the configured modules
%% at boot, and changing the set of running modules at run time. Every change
%% is written to the `{modules, HostType}' option, which gen_mod reads.
-module(mongoose_modules).

-export([start/0, stop/0, replace_modules/3, ensure_started/3, ensure_stopped/2]).

-type host_type() :: binary().

%% @doc Starts the configured modules of every host type (`hosts' and
%% `host_types'), each module after the modules it depends on.
-spec start() -> ok.
start() ->
    lists:foreach(fun start_host_type/1, all_host_types()).

%% @doc Stops the running modules of every host type, dependents first.
-spec stop() -> ok.
stop() ->
    lists:foreach(fun stop_host_type/1, all_host_types()).

%% @doc Changes the running modules at run time, as MongooseIM's does (its
%% configuration reload for tests): modules in ToStop, and modules in ToEnsure whose
%% dependencies are no longer needed, are stopped (dependents first); then every
%% module of the new set, with its dependencies, is ensure_started/3 (dependencies
%% first), so a module whose options changed is restarted.
-spec replace_modules(host_type(), [module()], #{module() => gen_mod:module_opts()}) -> ok.
replace_modules(HostType, ToStop, ToEnsure) ->
    Current = get_modules(HostType),
    Old = gen_mod_deps:resolve_deps(HostType, maps:with(ToStop ++ maps:keys(ToEnsure), Current)),
    Target = gen_mod_deps:resolve_deps(
               HostType, maps:merge(maps:without(maps:keys(Old), Current), ToEnsure)),
    [ensure_stopped(HostType, Module)
     || {Module, _} <- lists:reverse(gen_mod_deps:sort_deps(HostType, Old)),
        not maps:is_key(Module, Target)],
    [ensure_started(HostType, Module, Opts)
     || {Module, Opts} <- gen_mod_deps:sort_deps(HostType, Target)],
    ok.

%% @doc Makes Module run with Opts: starts it if it is not configured,
%% restarts it if it is configured with other options.
-spec ensure_started(host_type(), module(), gen_mod:module_opts()) ->
          already_started | {started, term()} | {restarted, gen_mod:module_opts(), term()}.
ensure_started(HostType, Module, Opts) ->
    Modules = get_modules(HostType),
    case maps:find(Module, Modules) of
        error ->
            {ok, Result} = start_module(HostType, Module, Opts, Modules),
            {started, Result};
        {ok, Opts} ->
            already_started;
        {ok, PrevOpts} ->
            stop_module(HostType, Module, Modules),
            {ok, Result} = start_module(HostType, Module, Opts, maps:remove(Module, Modules)),
            {restarted, PrevOpts, Result}
    end.

%% @doc Makes Module not run: stops it and removes it from the configuration.
-spec ensure_stopped(host_type(), module()) -> already_stopped | {stopped, gen_mod:module_opts()}.
ensure_stopped(HostType, Module) ->
    Modules = get_modules(HostType),
    case maps:find(Module, Modules) of
        error ->
            already_stopped;
        {ok, PrevOpts} ->
            stop_module(HostType, Module, Modules),
            {stopped, PrevOpts}
    end.

%%% Internals

-spec start_host_type(host_type()) -> ok.
start_host_type(HostType) ->
    lists:foreach(fun({Module, Opts}) -> {ok, _} = gen_mod:start_module(HostType, Module, Opts) end,
                  gen_mod_deps:sort_deps(HostType, get_modules(HostType))).

%% Modules that are configured but not running (e.g. because start/0 failed
%% half way) are skipped.
-spec stop_host_type(host_type()) -> ok.
stop_host_type(HostType) ->
    Sorted = gen_mod_deps:sort_deps(HostType, get_modules(HostType)),
    lists:foreach(fun({Module, _Opts}) -> gen_mod:stop_module(HostType, Module) end,
                  lists:reverse([ModOpts || {Module, _} = ModOpts <- Sorted,
                                            gen_mod:is_running(HostType, Module)])).

%% The module is added to the configuration first because gen_mod refuses to
%% start an unconfigured module; the change is undone if the start fails.
-spec start_module(host_type(), module(), gen_mod:module_opts(), #{module() => gen_mod:module_opts()}) ->
          {ok, term()}.
start_module(HostType, Module, Opts, Modules) ->
    set_modules(HostType, Modules#{Module => Opts}),
    try
        gen_mod:start_module(HostType, Module, Opts)
    catch
        Class:Reason:Stacktrace ->
            set_modules(HostType, Modules),
            erlang:raise(Class, Reason, Stacktrace)
    end.

-spec stop_module(host_type(), module(), #{module() => gen_mod:module_opts()}) -> ok.
stop_module(HostType, Module, Modules) ->
    ok = gen_mod:stop_module(HostType, Module),
    set_modules(HostType, maps:remove(Module, Modules)).

-spec get_modules(host_type()) -> #{module() => gen_mod:module_opts()}.
get_modules(HostType) ->
    mongoose_config:get_opt({modules, HostType}, #{}).

-spec set_modules(host_type(), #{module() => gen_mod:module_opts()}) -> ok.
set_modules(HostType, Modules) ->
    mongoose_config:set_opt({modules, HostType}, Modules).

-spec all_host_types() -> [host_type()].
all_host_types() ->
    mongoose_config:get_opt(hosts, []) ++ mongoose_config:get_opt(host_types, []).
