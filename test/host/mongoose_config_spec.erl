%% @doc Stand-in for MongooseIM's mongoose_config_spec: the helper specs modules use
%% (iqdisc/0, wpool/1, tls/0) and the root spec of the subset of mongooseim.toml the
%% stand-in understands: `general', `outgoing_pools', `modules' and `host_config'.
%%
%% How the records are processed is mongoose_config_parser's job (see there).
-module(mongoose_config_spec).

-include("mongoose_config_spec.hrl").

-export([root/0, iqdisc/0, wpool/1, tls/0, outgoing_pools/1, modules/0,
         configurable_modules/0]).

%% exported for the parser and for tests; all take the processed value
-export([process_iqdisc/1, process_general/1, process_host_config_item/2, process_pool/2,
         process_host/2]).

-type config_section() :: #section{}.
-type config_list() :: #list{}.
-type config_option() :: #option{}.
-type config_node() :: config_section() | config_list() | config_option().
-export_type([config_section/0, config_list/0, config_option/0, config_node/0]).

%% Modules whose own config_spec/0 describes their options; any other loadable
%% module may be listed under [modules] without options (the `default' item).
-define(CONFIGURABLE_MODULES, [mod_event_pusher, mod_event_pusher_http, mod_event_pusher_push,
                               mod_event_pusher_rabbit, mod_event_pusher_sns]).

%% @doc The whole document.
-spec root() -> config_section().
root() ->
    #section{items = #{<<"general">> => general(),
                       <<"outgoing_pools">> => outgoing_pools(global),
                       <<"modules">> => modules(),
                       <<"host_config">> => #list{items = host_config_item(), wrap = none}},
             required = [<<"general">>],
             %% Defaults are final values: these give `{outgoing_pools, []}' and
             %% `{{modules, global}, #{}}' when the sections are absent.
             defaults = #{<<"outgoing_pools">> => [], <<"modules">> => #{}},
             format_items = list,
             wrap = none}.

general() ->
    #section{items = #{<<"hosts">> => host_list(domain),
                       %% host types are names, not domains ("dynamic type" is fine)
                       <<"host_types">> => host_list(non_empty),
                       <<"loglevel">> => #option{type = atom,
                                                 validate = {enum, [none, emergency, alert, critical,
                                                                    error, warning, notice, info,
                                                                    debug, all]},
                                                 wrap = global_config}},
             defaults = #{<<"hosts">> => [], <<"host_types">> => [], <<"loglevel">> => warning},
             process = fun ?MODULE:process_general/1,
             format_items = list,
             wrap = none}.

host_list(Validator) ->
    #list{items = #option{type = binary, validate = Validator, process = fun ?MODULE:process_host/2},
          validate = unique,
          wrap = global_config}.

%% @doc Domains are case-insensitive: stored lowercased, as MongooseIM's nameprep
%% does. Host types are kept as written.
-spec process_host(mongoose_config_parser:path(), binary()) -> binary().
process_host([item, <<"hosts">> | _], Host) -> string:lowercase(Host);
process_host(_Path, HostType) -> HostType.

%% @doc Checks what concerns `hosts' and `host_types' together.
-spec process_general([{atom(), term()}]) -> [{atom(), term()}].
process_general(Items) ->
    Hosts = proplists:get_value(hosts, Items),
    HostTypes = proplists:get_value(host_types, Items),
    case {Hosts, HostTypes} of
        {[], []} -> error(#{what => no_hosts, text => "general.hosts or general.host_types "
                            "must list at least one name"});
        _ -> ok
    end,
    case [H || H <- Hosts, lists:member(H, HostTypes)] of
        [] -> Items;
        Both -> error(#{what => hosts_and_host_types_overlap, names => Both})
    end.

%% @doc `[[host_config]]' tables: `host' or `host_type' (the parser puts it into the
%% path as `{host, Name}', which the host_config wraps use), plus per-host sections.
host_config_item() ->
    #section{items = #{<<"host">> => #option{type = binary, validate = non_empty, wrap = remove},
                       <<"host_type">> => #option{type = binary, validate = non_empty,
                                                  wrap = remove},
                       <<"modules">> => modules(),
                       <<"outgoing_pools">> => outgoing_pools(host_config)},
             process = fun ?MODULE:process_host_config_item/2,
             format_items = list,
             wrap = none}.

%% @doc The parser names host_config items `{host, H}' in the path when the table
%% has exactly one of `host' and `host_type'; otherwise the item is just `item'.
-spec process_host_config_item(mongoose_config_parser:path(), list()) -> list().
process_host_config_item([{host, _} | _], Items) ->
    Items;
process_host_config_item(_Path, _Items) ->
    error(#{what => host_or_host_type_required,
            text => "each host_config table needs exactly one of host and host_type"}).

%% @doc `[modules]', also used inside host_config (which then replaces the global
%% module list for that host).
-spec modules() -> config_section().
modules() ->
    Items = maps:from_list([{atom_to_binary(M), M:config_spec()} || M <- configurable_modules()]),
    #section{items = Items#{default => #section{}},
             validate_keys = module,
             wrap = host_config}.

%% @doc The known modules with a config_spec/0 that can be loaded now (the suite
%% runs before some of them exist while the project is being written).
-spec configurable_modules() -> [module()].
configurable_modules() ->
    [M || M <- ?CONFIGURABLE_MODULES,
          code:ensure_loaded(M) =:= {module, M},
          erlang:function_exported(M, config_spec, 0)].

%% @doc `[outgoing_pools.TYPE.TAG]'. At top level a pool has a `scope'; inside
%% host_config it has none, its scope being that host type.
-spec outgoing_pools(global | host_config) -> config_section().
outgoing_pools(Where) ->
    Types = [{<<"http">>, http_connection()},
             {<<"rabbit">>, rabbit_connection()},
             {<<"generic">>, #section{include = always}}],
    #section{items = maps:from_list([{Type, pool_type(Where, Conn)} || {Type, Conn} <- Types]),
             format_items = list,
             wrap = case Where of global -> global_config; host_config -> host_config end}.

%% @doc One pool, turned into the map mongoose_wpool reads:
%% `#{type, scope, tag, opts => #{workers, strategy, call_timeout}, conn_opts}'.
-spec process_pool(mongoose_config_parser:path(), #{atom() => term()}) -> map().
process_pool([Tag, Type | _] = Path, Opts) ->
    Scope = case [H || {host, H} <- Path] of
                [HostType] -> HostType;
                [] -> pool_scope(maps:get(scope, Opts))
            end,
    #{type => binary_to_atom(Type), scope => Scope, tag => binary_to_atom(Tag),
      opts => maps:with([workers, strategy, call_timeout], Opts),
      conn_opts => maps:get(connection, Opts)}.

pool_scope(host) ->
    logger:warning(#{what => deprecated_pool_scope,
                     text => "outgoing pool scope \"host\" is deprecated, use \"host_type\""}),
    host_type;
pool_scope(Scope) ->
    Scope.

pool_type(Where, ConnectionSpec) ->
    #section{items = #{default => pool(Where, ConnectionSpec)},
             format_items = list,
             wrap = none}.

pool(Where, ConnectionSpec) ->
    Common = #{<<"workers">> => #option{type = integer, validate = positive},
               <<"strategy">> => strategy(),
               <<"call_timeout">> => #option{type = integer, validate = positive},
               <<"connection">> => ConnectionSpec},
    Defaults = #{<<"workers">> => 10, <<"strategy">> => best_worker, <<"call_timeout">> => 5000},
    {Items, AllDefaults} =
        case Where of
            global ->
                Scope = #option{type = atom, validate = {enum, [global, host_type, host]}},
                {Common#{<<"scope">> => Scope}, Defaults#{<<"scope">> => global}};
            host_config ->
                {Common, Defaults}
        end,
    #section{items = Items, defaults = AllDefaults,
             process = fun ?MODULE:process_pool/2,
             wrap = item}.

strategy() ->
    #option{type = atom,
            validate = {enum, [best_worker, random_worker, next_worker, available_worker,
                               next_available_worker]}}.

http_connection() ->
    #section{items = #{<<"host">> => #option{type = string, validate = non_empty},
                       <<"path_prefix">> => #option{type = binary, validate = non_empty},
                       <<"request_timeout">> => #option{type = integer, validate = non_negative},
                       <<"tls">> => tls()},
             required = [<<"host">>],
             defaults = #{<<"path_prefix">> => <<"/">>, <<"request_timeout">> => 2000},
             include = always}.

rabbit_connection() ->
    #section{items = #{<<"host">> => #option{type = string, validate = non_empty},
                       <<"port">> => #option{type = integer, validate = port},
                       <<"username">> => #option{type = binary, validate = non_empty},
                       <<"password">> => #option{type = binary, validate = non_empty},
                       <<"confirms_enabled">> => #option{type = boolean},
                       <<"max_worker_queue_len">> => #option{type = int_or_infinity,
                                                             validate = non_negative}},
             defaults = #{<<"host">> => "localhost", <<"port">> => 5672,
                          <<"username">> => <<"guest">>, <<"password">> => <<"guest">>,
                          <<"confirms_enabled">> => false, <<"max_worker_queue_len">> => 1000},
             include = always}.

%% @doc Client TLS options of a connection (as MongooseIM's just_tls client section).
-spec tls() -> config_section().
tls() ->
    #section{items = #{<<"verify_mode">> => #option{type = atom,
                                                    validate = {enum, [peer, selfsigned_peer, none]}},
                       <<"certfile">> => #option{type = string, validate = filename},
                       <<"cacertfile">> => #option{type = string, validate = filename},
                       <<"keyfile">> => #option{type = string, validate = filename},
                       <<"password">> => #option{type = string},
                       <<"ciphers">> => #option{type = string},
                       <<"versions">> => #list{items = #option{type = atom}},
                       <<"disconnect_on_failure">> => #option{type = boolean},
                       <<"crl_files">> => #list{items = #option{type = string,
                                                                validate = filename}},
                       <<"server_name_indication">> => server_name_indication()},
             defaults = #{<<"verify_mode">> => peer, <<"disconnect_on_failure">> => true,
                          <<"crl_files">> => []}}.

server_name_indication() ->
    #section{items = #{<<"enabled">> => #option{type = boolean},
                       <<"host">> => #option{type = string, validate = non_empty},
                       <<"protocol">> => #option{type = atom, validate = {enum, [default, https]}}},
             defaults = #{<<"enabled">> => true, <<"protocol">> => default},
             include = always}.

%% @doc IQ discipline: `{type = "queues", workers = N}' gives `{queues, N}', other
%% types give the type atom; `workers' is only valid with queues.
-spec iqdisc() -> config_section().
iqdisc() ->
    #section{items = #{<<"type">> => #option{type = atom,
                                             validate = {enum, [no_queue, one_queue, parallel,
                                                                queues]}},
                       <<"workers">> => #option{type = integer, validate = positive}},
             required = [<<"type">>],
             process = fun ?MODULE:process_iqdisc/1}.

-spec process_iqdisc(#{type := atom(), workers => pos_integer()}) ->
          no_queue | one_queue | parallel | {queues, pos_integer()}.
process_iqdisc(#{type := queues, workers := N}) -> {queues, N};
process_iqdisc(#{type := queues}) -> error(#{what => queues_need_workers});
process_iqdisc(#{type := Type} = Opts) when map_size(Opts) =:= 1 -> Type;
process_iqdisc(#{type := Type}) -> error(#{what => workers_only_valid_with_queues, type => Type}).

%% @doc Worker pool options of a module's own pool; `ExtraDefaults' (TOML keys,
%% final values) override the general defaults.
-spec wpool(#{binary() => term()}) -> config_section().
wpool(ExtraDefaults) ->
    #section{items = #{<<"workers">> => #option{type = integer, validate = positive},
                       <<"strategy">> => strategy(),
                       <<"call_timeout">> => #option{type = integer, validate = positive}},
             defaults = maps:merge(#{<<"workers">> => 10, <<"strategy">> => best_worker,
                                     <<"call_timeout">> => 5000}, ExtraDefaults)}.
