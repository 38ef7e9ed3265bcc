%% `make lint': the Erlang code depends one way. A folder may call only folders of a
%% lower layer or itself: test/lib (0) <- test/mim (1) <- erlang/src (2) <-
%% test/support (3) <- tools (4). The stand-in never calls the test support or the
%% tools, and production code (also checked by mim_api_check) never the support.
-module(layering_check).

-export([main/0]).

-define(LAYERS, [{"test/lib", 0}, {"test/mim", 1}, {"erlang/src", 2}, {"test/support", 3},
                 {"tools", 4}]).

%% @doc Prints each call against the layering; error when there is one.
-spec main() -> ok | error.
main() ->
    Layer = maps:from_list([{list_to_atom(filename:basename(F, ".erl")), {Dir, Rank}}
                            || {Dir, Rank} <- ?LAYERS,
                               F <- filelib:wildcard(filename:join(Dir, "*.erl"))]),
    {ok, Xref} = xref:start([{xref_mode, functions}]),
    try
        [{ok, _} = xref:add_module(Xref, code:which(M), [{warnings, false}])
         || M <- maps:keys(Layer)],
        {ok, Calls} = xref:q(Xref, "XC"),
        Upward = lists:usort([{From, To} || {{From, _, _}, {To, _, _}} <- Calls,
                                            From =/= To,
                                            is_map_key(To, Layer),
                                            rank(From, Layer) < rank(To, Layer)]),
        case Upward of
            [] ->
                io:format("layering_check: ~b modules, every call goes to the same or a "
                          "lower layer~n", [map_size(Layer)]);
            _ ->
                [io:format("layering_check: ~p (~s) calls ~p (~s), a higher layer~n",
                           [From, dir(From, Layer), To, dir(To, Layer)])
                 || {From, To} <- Upward],
                error
        end
    after
        xref:stop(Xref)
    end.

rank(Module, Layer) -> element(2, maps:get(Module, Layer)).

dir(Module, Layer) -> element(1, maps:get(Module, Layer)).
