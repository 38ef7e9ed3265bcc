%% Stand-in for MongooseIM's mongoose_wpool, as far as boot goes: at boot MongooseIM
%% starts the configured outgoing pools BEFORE the modules, and starting a pool sets up
%% the pool type's instrumentation first (for rabbit: wpool_rabbit_connections and
%% wpool_rabbit_messages_published, labels `#{host_type => HostTypeOrGlobal, pool_tag
%% => Tag}'). A module that registers the same events afterwards gets
%% `event_already_registered' from mongoose_instrument:set_up/1, exactly as inside
%% MongooseIM; that is why this stand-in exists.
%%
%% No workers are started: MongooseIM would open idle connections for these pools,
%% which our modules do not use (see the README).
-module(mongoose_wpool).

-export([start_configured_pools/0, stop_configured_pools/0, start/5, stop/3, get_pools/0]).
-export([expand_pools/3, instrumentation/3]).

-type pool_type() :: redis | http | rdbms | cassandra | elastic | generic | rabbit | ldap.
-type host_type_or_global() :: binary() | global.
-type tag() :: atom().
-type pool_key() :: {pool_type(), host_type_or_global(), tag()}.
-export_type([pool_type/0, host_type_or_global/0, tag/0]).

%% The started pools, in start order.
-define(STARTED, {?MODULE, started}).

%% @doc Starts every configured pool (`outgoing_pools', and `{outgoing_pools, HT}'
%% from host_config), expanding `scope = "host_type"' into one pool per host type
%% unless that host type has its own pool of the same type and tag. Raises as
%% MongooseIM's boot does when a pool cannot start (e.g. its instrumentation clashes).
-spec start_configured_pools() -> ok.
start_configured_pools() ->
    HostTypes = mongoose_config:get_opt(hosts, []) ++ mongoose_config:get_opt(host_types, []),
    PerHostType = lists:append([mongoose_config:get_opt({outgoing_pools, HT}, [])
                                || HT <- HostTypes]),
    Pools = expand_pools(mongoose_config:get_opt(outgoing_pools, []), PerHostType, HostTypes),
    lists:foreach(fun(#{type := Type, host_type := HT, tag := Tag, opts := Opts,
                        conn_opts := ConnOpts}) ->
                          {ok, _} = start(Type, HT, Tag, Opts, ConnOpts)
                  end, Pools).

%% @doc Stops the started pools, last started first.
-spec stop_configured_pools() -> ok.
stop_configured_pools() ->
    lists:foreach(fun({Type, HT, Tag}) -> stop(Type, HT, Tag) end,
                  lists:reverse(get_pools())).

%% @doc Host-type pools first, then the global ones with `host_type' scope expanded;
%% `scope' becomes `host_type' and the pool options a proplist, as in MongooseIM.
-spec expand_pools([map()], [map()], [binary()]) -> [map()].
expand_pools(Pools, PerHostType, HostTypes) ->
    Specific = [{Type, HT, Tag} || #{type := Type, scope := HT, tag := Tag} <- PerHostType],
    Expanded = lists:flatmap(
                 fun(Pool = #{type := Type, scope := host_type, tag := Tag}) ->
                         [Pool#{scope => HT} || HT <- HostTypes,
                                                not lists:member({Type, HT, Tag}, Specific)];
                    (Pool) ->
                         [Pool]
                 end, Pools),
    [(maps:remove(scope, Pool))#{host_type => HT, opts => maps:to_list(Opts)}
     || Pool = #{scope := HT, opts := Opts} <- PerHostType ++ Expanded].

%% @doc Sets up the pool type's instrumentation, then "starts" the pool.
-spec start(pool_type(), host_type_or_global(), tag(), proplists:proplist(), map()) ->
          {ok, pid()}.
start(Type, HostType, Tag, _PoolOpts, _ConnOpts) ->
    mongoose_instrument:set_up(instrumentation(Type, HostType, Tag)),
    persistent_term:put(?STARTED, get_pools() ++ [{Type, HostType, Tag}]),
    {ok, self()}.

%% @doc Stops a pool and tears down its instrumentation; unknown pools are ignored.
-spec stop(pool_type(), host_type_or_global(), tag()) -> ok.
stop(Type, HostType, Tag) ->
    mongoose_instrument:tear_down(instrumentation(Type, HostType, Tag)),
    persistent_term:put(?STARTED, get_pools() -- [{Type, HostType, Tag}]),
    ok.

-spec get_pools() -> [pool_key()].
get_pools() ->
    persistent_term:get(?STARTED, []).

%% @doc What the pool type's callback module (mongoose_wpool_<type>) declares, as in
%% MongooseIM; only rabbit's has a stand-in, the other types' events have names no
%% module of ours uses.
-spec instrumentation(pool_type(), host_type_or_global(), tag()) ->
          [mongoose_instrument:spec()].
instrumentation(Type, HostType, Tag) ->
    Callback = list_to_atom("mongoose_wpool_" ++ atom_to_list(Type)),
    case code:ensure_loaded(Callback) =:= {module, Callback}
        andalso erlang:function_exported(Callback, instrumentation, 2) of
        true -> Callback:instrumentation(HostType, Tag);
        false -> []
    end.
