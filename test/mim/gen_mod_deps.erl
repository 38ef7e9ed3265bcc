%% @doc Stand-in for MongooseIM's gen_mod_deps: module dependencies.
%%
%% `resolve_deps/2' runs when the configuration is processed: every module a
%% configured module depends on (`Module:deps(HostType, Opts)') is added to the
%% host type's module map with the options it is required with. That is how
%% mod_event_pusher's backends end up in `{modules, HT}' under their own names.
%% `sort_deps/2' orders modules for starting: dependencies first.
-module(gen_mod_deps).

-export([resolve_deps/2, sort_deps/2]).

-type hardness() :: hard | soft | optional.
-type host_type() :: binary().
-type module_opts() :: map().
-type module_map() :: #{module() => module_opts()}.
-type dep() :: {module(), module_opts(), hardness()} | {module(), hardness()} | {service, atom()}.
-export_type([hardness/0, module_map/0, dep/0]).

%% @doc Adds every module required (hard or soft, transitively) by the given ones.
%% A module required again gets its options merged (`maps:merge(Old, New)') and its
%% own deps recomputed. An `optional' dep is only added when something else requires
%% that module too; its options are merged in then. Service deps are not modules and
%% are ignored here.
-spec resolve_deps(host_type(), module_map()) -> module_map().
resolve_deps(HostType, Modules) ->
    resolve(HostType, lists:sort(maps:to_list(Modules)), Modules, #{}).

resolve(_HostType, [], Known, _Optional) ->
    Known;
resolve(HostType, [{Module, Opts} | Queue], Known, Optional) ->
    {Known1, Optional1, NewlyQueued} =
        lists:foldl(fun(Dep, Acc) -> add_dep(Module, Dep, Acc) end,
                    {Known, Optional, []}, deps(HostType, Module, Opts)),
    resolve(HostType, Queue ++ lists:reverse(NewlyQueued), Known1, Optional1).

add_dep(_Parent, {Dep, DepOpts, optional}, {Known, Optional, Queued}) when not is_map_key(Dep, Known) ->
    %% remembered, so that the options count if the module gets required later
    {Known, Optional#{Dep => maps:merge(maps:get(Dep, Optional, #{}), DepOpts)}, Queued};
add_dep(Parent, {Dep, DepOpts, _Hardness}, {Known, Optional, Queued}) ->
    case Known of
        #{Dep := OldOpts} ->
            case maps:merge(OldOpts, DepOpts) of
                OldOpts ->
                    {Known, Optional, Queued};
                NewOpts ->
                    warn_if_changed(Parent, Dep, OldOpts, DepOpts),
                    {Known#{Dep := NewOpts}, Optional, [{Dep, NewOpts} | Queued]}
            end;
        #{} ->
            NewOpts = maps:merge(maps:get(Dep, Optional, #{}), DepOpts),
            {Known#{Dep => NewOpts}, maps:remove(Dep, Optional), [{Dep, NewOpts} | Queued]}
    end.

warn_if_changed(Parent, Dep, OldOpts, DepOpts) ->
    case [Key || {Key, Value} <- maps:to_list(DepOpts),
                 maps:find(Key, OldOpts) =/= error, maps:get(Key, OldOpts) =/= Value] of
        [] -> ok;
        Keys -> logger:warning(#{what => overriding_options_of_module, module => Dep,
                                 required_by => Parent, overridden_keys => Keys})
    end.

%% Deps in the normal form, services filtered out.
-spec deps(host_type(), module(), module_opts()) -> [{module(), module_opts(), hardness()}].
deps(HostType, Module, Opts) ->
    case code:ensure_loaded(Module) of
        {module, Module} ->
            case erlang:function_exported(Module, deps, 2) of
                true -> [normalize_dep(Module, Dep) || Dep <- Module:deps(HostType, Opts),
                                                       element(1, Dep) =/= service];
                false -> []
            end;
        {error, LoadError} ->
            error(#{what => module_not_found, module => Module, load_error => LoadError})
    end.

normalize_dep(_Module, {Dep, Opts, Hardness} = Norm) when is_atom(Dep), is_map(Opts),
                                                          (Hardness =:= hard orelse Hardness =:= soft
                                                           orelse Hardness =:= optional) ->
    Norm;
normalize_dep(Module, {Dep, Hardness}) when is_atom(Dep) ->
    normalize_dep(Module, {Dep, #{}, Hardness});
normalize_dep(Module, Bad) ->
    error(#{what => invalid_module_dependency, module => Module, dependency => Bad}).

%% @doc The modules in start order: each module after all modules it depends on
%% (among those in the map). Ties are broken by module name, so the order is
%% deterministic. A dependency cycle is broken by ignoring a soft or optional edge
%% in it; a cycle of hard edges is an error.
-spec sort_deps(host_type(), module_map()) -> [{module(), module_opts()}].
sort_deps(HostType, Modules) ->
    Graph = digraph:new(),
    try
        [digraph:add_vertex(Graph, M) || M <- maps:keys(Modules)],
        %% an edge Dep -> Module: Dep must come first
        [digraph:add_edge(Graph, Dep, M, Hardness)
         || {M, Opts} <- maps:to_list(Modules),
            {Dep, _, Hardness} <- deps(HostType, M, Opts),
            is_map_key(Dep, Modules)],
        break_cycles(Graph),
        [{M, maps:get(M, Modules)} || M <- ordered(Graph)]
    after
        digraph:delete(Graph)
    end.

break_cycles(Graph) ->
    Cycles = [lists:sort(Component) || Component <- digraph_utils:cyclic_strong_components(Graph)],
    case lists:sort(Cycles) of
        [] ->
            ok;
        [Cycle | _] ->
            Edges = lists:sort([{V1, V2, E} || E <- digraph:edges(Graph),
                                               {_, V1, V2, Hardness} <- [digraph:edge(Graph, E)],
                                               Hardness =/= hard,
                                               lists:member(V1, Cycle), lists:member(V2, Cycle)]),
            case Edges of
                [{_, _, Edge} | _] ->
                    digraph:del_edge(Graph, Edge),
                    break_cycles(Graph);
                [] ->
                    error(#{what => resolving_dependencies_aborted,
                            text => "Module dependency cycle formed by hard edges",
                            modules => Cycle})
            end
    end.

%% Kahn's algorithm, always taking the smallest ready module.
ordered(Graph) ->
    ordered(Graph, lists:sort(digraph:vertices(Graph)), []).

ordered(_Graph, [], Acc) ->
    lists:reverse(Acc);
ordered(Graph, Remaining, Acc) ->
    [Ready | _] = [M || M <- Remaining,
                        lists:all(fun(Dep) -> lists:member(Dep, Acc) end,
                                  digraph:in_neighbours(Graph, M))],
    ordered(Graph, lists:delete(Ready, Remaining), [Ready | Acc]).
