%% @doc Stand-in for MongooseIM's mongoose_config_spec: the helper specs modules use
%% (iqdisc/0, wpool/1, tls/1) and the root spec of mongooseim.toml.
%%
%% A complete MongooseIM 6.4 file is accepted. What the stand-in models is processed
%% as MongooseIM 6.4.0 processes it, with the same types, validators, defaults and
%% results: `general' (`hosts', `host_types', the mandatory `default_server_domain',
%% `loglevel'), every type of `outgoing_pools' (cassandra, elastic, http, ldap,
%% rabbit, rdbms, redis, with their TLS sections), `modules' with the event pusher's
%% config_spec/0, and `host_config'.
%%
%% What the stand-in does not model is accepted without validation and left out of
%% the result, because nothing here reads it:
%% - the sections `listen', `auth', `internal_databases', `services',
%%   `instrumentation', `shaper', `acl', `access' and `s2s' (also inside host_config);
%% - MongooseIM's own modules (mod_mam, mod_muc, ...; see mongooseim_modules/0). They
%%   are dropped from `{modules, HostType}' since the stand-in's mongoose_modules
%%   starts every module listed there and these do not exist here;
%% - the other options of `general' (registration_timeout, language, sm_backend, ...)
%%   are type-checked like MongooseIM does but not stored (see the parser's
%%   post-processing): MongooseIM would store them with defaults nobody here reads.
%%
%% How the records are processed is mongoose_config_parser's job (see there).
-module(mongoose_config_spec).

-include("mongoose_config_spec.hrl").

-export([root/0, iqdisc/0, wpool/1, tls/1, outgoing_pools/1, modules/0,
         configurable_modules/0, mongooseim_modules/0, general_options_not_stored/0]).

%% exported for the parser and for tests; all take the processed value
-export([process_iqdisc/1, process_general/1, process_dynamic_domains/1, process_pool/2,
         process_host_config_pool/2, process_host/1, process_ldap_connection/1,
         process_rdbms_connection/1, validate_module_key/1]).

-type config_section() :: #section{}.
-type config_list() :: #list{}.
-type config_option() :: #option{}.
-type config_node() :: config_section() | config_list() | config_option().
-export_type([config_section/0, config_list/0, config_option/0, config_node/0]).

%% Modules whose own config_spec/0 describes their options; any other loadable
%% module may be listed under [modules] without options (the `default' item).
-define(CONFIGURABLE_MODULES, [mod_event_pusher, mod_event_pusher_http, mod_event_pusher_push,
                               mod_event_pusher_rabbit, mod_event_pusher_sns]).

%% MongooseIM 6.4.0's gen_mod modules other than the event pusher's (names only).
-define(MONGOOSEIM_MODULES,
        [mod_adhoc, mod_amp, mod_auth_token, mod_bind2, mod_blocking, mod_bosh,
         mod_cache_users, mod_caps, mod_carboncopy, mod_csi, mod_disco, mod_domain_isolation,
         mod_extdisco, mod_fast_auth_token, mod_global_distrib, mod_global_distrib_bounce,
         mod_global_distrib_disco, mod_global_distrib_hosts_refresher,
         mod_global_distrib_mapping, mod_global_distrib_receiver, mod_global_distrib_utils,
         mod_http_upload, mod_inbox, mod_jingle_sip, mod_keystore, mod_last, mod_mam,
         mod_mam_cache_user, mod_mam_cassandra_arch, mod_mam_cassandra_prefs,
         mod_mam_elasticsearch_arch, mod_mam_mnesia_prefs, mod_mam_muc,
         mod_mam_muc_cassandra_arch, mod_mam_muc_elasticsearch_arch, mod_mam_muc_rdbms_arch,
         mod_mam_muc_rdbms_arch_async, mod_mam_pm, mod_mam_rdbms_arch,
         mod_mam_rdbms_arch_async, mod_mam_rdbms_prefs, mod_mam_rdbms_user, mod_muc,
         mod_muc_light, mod_muc_light_cache, mod_muc_log, mod_offline,
         mod_offline_chatmarkers, mod_offline_stub, mod_ping, mod_presence, mod_privacy,
         mod_private, mod_pubsub, mod_push_service_mongoosepush, mod_register, mod_roster,
         mod_sasl2, mod_shared_roster_ldap, mod_sic, mod_smart_markers,
         mod_stream_management, mod_time, mod_vcard, mod_version]).

%% Top-level sections of a MongooseIM 6.4 file that the stand-in does not model, and
%% those of them that may also appear in a host_config table.
-define(NOT_MODELLED_SECTIONS, [<<"listen">>, <<"auth">>, <<"internal_databases">>,
                                <<"services">>, <<"instrumentation">>, <<"shaper">>,
                                <<"acl">>, <<"access">>, <<"s2s">>]).
-define(NOT_MODELLED_HOST_CONFIG_SECTIONS, [<<"auth">>, <<"acl">>, <<"access">>, <<"s2s">>]).

%% @doc The whole document.
-spec root() -> config_section().
root() ->
    General = general(),
    Modelled = #{<<"general">> => General#section{required = [<<"default_server_domain">>],
                                                  defaults = general_defaults(),
                                                  process = fun ?MODULE:process_general/1},
                 <<"outgoing_pools">> => outgoing_pools(global),
                 <<"modules">> => modules(),
                 <<"host_config">> => #list{items = host_config_item(), wrap = none}},
    #section{items = maps:merge(not_modelled(?NOT_MODELLED_SECTIONS), Modelled),
             required = [<<"general">>],
             %% Defaults are final values: these give `{outgoing_pools, []}' and
             %% `{{modules, global}, #{}}' when the sections are absent.
             defaults = #{<<"outgoing_pools">> => [], <<"modules">> => #{}},
             process = fun ?MODULE:process_dynamic_domains/1,
             format_items = list,
             wrap = none}.

%% @doc MongooseIM's check of the whole document: with host types, every module
%% configured globally or for a host type must support dynamic domains (deps are not
%% looked at; auth methods are not modelled).
-spec process_dynamic_domains([{atom() | {atom(), term()}, term()}]) -> list().
process_dynamic_domains(Items) ->
    case proplists:lookup(host_types, Items) of
        {_, [_ | _] = HostTypes} ->
            Modules = lists:usort([M || {{modules, HT}, Configured} <- Items,
                                        HT =:= global orelse lists:member(HT, HostTypes),
                                        M <- maps:keys(Configured)]),
            case [M || M <- Modules, not supports_dynamic_domains(M)] of
                [] ->
                    Items;
                Unsupported ->
                    error(#{what => dynamic_domains_not_supported,
                            text => ("Dynamic modules not supported by the specified "
                                     "authentication methods and/or extension modules"),
                            unsupported_auth_methods => [],
                            unsupported_modules => Unsupported})
            end;
        _ ->
            Items
    end.

supports_dynamic_domains(Module) ->
    code:ensure_loaded(Module) =:= {module, Module}
        andalso erlang:function_exported(Module, supported_features, 0)
        andalso lists:member(dynamic_domains, Module:supported_features()).

%% Sections accepted as any table and left out of the result.
not_modelled(Keys) ->
    maps:from_list([{Key, not_modelled_section()} || Key <- Keys]).

not_modelled_section() ->
    #section{items = #{default => #option{type = toml, wrap = remove}}, wrap = remove}.

%% `[general]'; at top level `default_server_domain' is required (root/0), in a
%% host_config table only the options with `wrap = host_config' are valid.
general() ->
    #section{items = #{<<"hosts">> => #list{items = #option{type = binary,
                                                            validate = non_empty,
                                                            process = fun ?MODULE:process_host/1},
                                            validate = unique,
                                            wrap = global_config},
                       %% host types are names, not domains ("dynamic type" is fine)
                       <<"host_types">> => #list{items = #option{type = binary,
                                                                 validate = non_empty},
                                                 validate = unique,
                                                 wrap = global_config},
                       <<"default_server_domain">> => #option{type = binary,
                                                              validate = non_empty,
                                                              process = fun ?MODULE:process_host/1,
                                                              wrap = global_config},
                       <<"loglevel">> => #option{type = atom, validate = loglevel,
                                                 wrap = global_config},
                       %% Checked as MongooseIM checks them, then dropped by the parser
                       %% (general_options_not_stored/0). The backends are modules
                       %% MongooseIM has; the stand-in names them instead of loading them.
                       <<"registration_timeout">> => #option{type = int_or_infinity,
                                                             validate = positive,
                                                             wrap = global_config},
                       <<"language">> => #option{type = binary, validate = non_empty,
                                                 wrap = global_config},
                       <<"sm_backend">> => #option{type = atom,
                                                   validate = {mongooseim_module, ejabberd_sm,
                                                               [mnesia, cets, redis]},
                                                   wrap = global_config},
                       <<"component_backend">> => #option{type = atom,
                                                          validate = {mongooseim_module,
                                                                      mongoose_component,
                                                                      [mnesia, cets]},
                                                          wrap = global_config},
                       <<"s2s_backend">> => #option{type = atom,
                                                    validate = {mongooseim_module, mongoose_s2s,
                                                                [mnesia, cets]},
                                                    wrap = global_config},
                       <<"http_server_name">> => #option{type = string, wrap = global_config},
                       <<"rdbms_server_type">> => #option{type = atom,
                                                          validate = {enum, [mssql, pgsql]},
                                                          wrap = global_config},
                       <<"route_subdomains">> => #option{type = atom, validate = {enum, [s2s]},
                                                         wrap = host_config},
                       <<"routing_modules">> => #list{items = #option{type = atom,
                                                                      validate = non_empty},
                                                      wrap = global_config},
                       <<"replaced_wait_timeout">> => #option{type = integer, validate = positive,
                                                              wrap = host_config},
                       <<"hide_service_name">> => #option{type = boolean, wrap = global_config}},
             format_items = list,
             wrap = none}.

general_defaults() ->
    #{<<"hosts">> => [], <<"host_types">> => [], <<"loglevel">> => warning}.

%% @doc The options of `[general]' that are validated but left out of the result.
-spec general_options_not_stored() -> [atom()].
general_options_not_stored() ->
    [registration_timeout, language, sm_backend, component_backend, s2s_backend,
     http_server_name, rdbms_server_type, route_subdomains, routing_modules,
     replaced_wait_timeout, hide_service_name].

%% @doc Domains are stored as MongooseIM's nodeprep makes them (lowercased); one it
%% refuses fails with `{badmatch, false}', as in MongooseIM.
-spec process_host(binary()) -> binary().
process_host(Host) ->
    Node = jid:nodeprep(Host),
    true = Node =/= error,
    Node.

%% @doc MongooseIM's check of `hosts' and `host_types' together: no name twice, at
%% least one name (a failure is a `{badmatch, false}').
-spec process_general([{atom(), term()}]) -> [{atom(), term()}].
process_general(Items) ->
    All = lists:append([Value || {Key, Value} <- Items, Key =:= hosts orelse Key =:= host_types]),
    true = lists:sort(All) =:= lists:usort(All),
    true = [] =/= All,
    Items.

%% @doc `[[host_config]]' tables: `host' or `host_type' (the parser puts it into the
%% path as `{host, Name}', which the host_config wraps use), plus per-host sections.
host_config_item() ->
    Modelled = #{<<"host">> => #option{type = binary, validate = non_empty, wrap = remove},
                 <<"host_type">> => #option{type = binary, validate = non_empty, wrap = remove},
                 <<"general">> => general(),
                 <<"modules">> => modules(),
                 <<"outgoing_pools">> => outgoing_pools(host_config)},
    #section{items = maps:merge(not_modelled(?NOT_MODELLED_HOST_CONFIG_SECTIONS), Modelled),
             format_items = list,
             wrap = none}.

%% @doc `[modules]', also used inside host_config (which then replaces the global
%% module list for that host). MongooseIM's own modules are accepted as any table
%% and dropped (see the module doc).
-spec modules() -> config_section().
modules() ->
    Ours = maps:from_list([{atom_to_binary(M), M:config_spec()} || M <- configurable_modules()]),
    Theirs = maps:from_list([{atom_to_binary(M), not_modelled_section()}
                             || M <- mongooseim_modules()]),
    #section{items = (maps:merge(Theirs, Ours))#{default => #section{}},
             validate_keys = fun ?MODULE:validate_module_key/1,
             wrap = host_config}.

%% @doc A key of `[modules]' names a module that can be loaded here (MongooseIM's
%% `module' validator), or one of MongooseIM's own modules, which the stand-in does
%% not have.
-spec validate_module_key(atom()) -> ok.
validate_module_key(Module) ->
    case lists:member(Module, mongooseim_modules()) of
        true -> ok;
        false -> mongoose_config_validator:validate(Module, atom, module)
    end.

%% @doc The known modules with a config_spec/0 that can be loaded now (the suite
%% runs before some of them exist while the project is being written).
-spec configurable_modules() -> [module()].
configurable_modules() ->
    [M || M <- ?CONFIGURABLE_MODULES,
          code:ensure_loaded(M) =:= {module, M},
          erlang:function_exported(M, config_spec, 0)].

%% @doc MongooseIM 6.4.0's modules that the stand-in accepts without validation and
%% does not start.
-spec mongooseim_modules() -> [module()].
mongooseim_modules() ->
    ?MONGOOSEIM_MODULES.

%%--------------------------------------------------------------------
%% Outgoing pools
%%--------------------------------------------------------------------

%% @doc `[outgoing_pools.TYPE.TAG]'. At top level a pool has a `scope'; inside
%% host_config it has none, its scope being that host type.
-spec outgoing_pools(global | host_config) -> config_section().
outgoing_pools(Where) ->
    Types = [<<"cassandra">>, <<"elastic">>, <<"http">>, <<"ldap">>, <<"rabbit">>,
             <<"rdbms">>, <<"redis">>],
    #section{items = maps:from_list([{Type, pool_type(Where, Type)} || Type <- Types]),
             format_items = list,
             wrap = case Where of global -> global_config; host_config -> host_config end}.

%% @doc One pool, turned into the map mongoose_wpool reads:
%% `#{type, scope, tag, opts => #{workers, strategy, call_timeout}, conn_opts}'.
-spec process_pool(mongoose_config_parser:path(), #{atom() => term()}) -> map().
process_pool([Tag, Type | _], #{scope := Scope, connection := Connection} = Opts) ->
    #{type => binary_to_atom(Type), scope => pool_scope(Scope), tag => binary_to_atom(Tag),
      opts => maps:without([scope, host, connection], Opts),
      conn_opts => Connection}.

%% @doc A pool of a host_config table: its scope is that host type. (A table without
%% `host' or `host_type' fails here with function_clause, as in MongooseIM.)
-spec process_host_config_pool(mongoose_config_parser:path(), #{atom() => term()}) -> map().
process_host_config_pool([Tag, Type, _Pools, {host, HostType} | _],
                         #{connection := Connection} = Opts) ->
    #{type => binary_to_atom(Type), scope => HostType, tag => binary_to_atom(Tag),
      opts => maps:remove(connection, Opts),
      conn_opts => Connection}.

%% "host" is MongooseIM's deprecated name of host_type.
pool_scope(host) -> host_type;
pool_scope(Scope) -> Scope.

pool_type(Where, Type) ->
    #section{items = #{default => pool(Where, Type)},
             validate_keys = non_empty,
             format_items = list,
             wrap = none}.

pool(Where, Type) ->
    Wpool = wpool(extra_wpool_defaults(Type)),
    Items = (Wpool#section.items)#{<<"connection">> => connection(Type)},
    Defaults = Wpool#section.defaults,
    {AllItems, AllDefaults, Process} =
        case Where of
            global ->
                Scope = #option{type = atom, validate = {enum, [global, host_type, host]}},
                {Items#{<<"scope">> => Scope}, Defaults#{<<"scope">> => global},
                 fun ?MODULE:process_pool/2};
            host_config ->
                {Items, Defaults, fun ?MODULE:process_host_config_pool/2}
        end,
    #section{items = AllItems, defaults = AllDefaults, process = Process, wrap = item}.

extra_wpool_defaults(<<"cassandra">>) -> #{<<"workers">> => 20};
extra_wpool_defaults(<<"rdbms">>) -> #{<<"call_timeout">> => 60000};
extra_wpool_defaults(_) -> #{}.

strategy() ->
    #option{type = atom,
            validate = {enum, [best_worker, random_worker, next_worker, available_worker,
                               next_available_worker]}}.

%% `connection' of each pool type, with MongooseIM 6.4.0's keys and defaults.
connection(<<"cassandra">>) ->
    #section{items = #{<<"servers">> => #list{items = cassandra_server(),
                                              validate = unique_non_empty},
                       <<"keyspace">> => #option{type = atom, validate = non_empty},
                       <<"auth">> => #section{items = #{<<"plain">> => cassandra_auth_plain()},
                                              required = all},
                       <<"tls">> => tls([client])},
             defaults = #{<<"servers">> => [#{host => "localhost", port => 9042}],
                          <<"keyspace">> => mongooseim},
             include = always};
connection(<<"elastic">>) ->
    #section{items = #{<<"host">> => #option{type = binary, validate = non_empty},
                       <<"port">> => #option{type = integer, validate = port}},
             defaults = #{<<"host">> => <<"localhost">>, <<"port">> => 9200},
             include = always};
connection(<<"http">>) ->
    #section{items = #{<<"host">> => #option{type = string, validate = non_empty},
                       <<"path_prefix">> => #option{type = binary, validate = non_empty},
                       <<"request_timeout">> => #option{type = integer, validate = non_negative},
                       <<"tls">> => tls([client])},
             required = [<<"host">>],
             defaults = #{<<"path_prefix">> => <<"/">>, <<"request_timeout">> => 2000},
             include = always};
connection(<<"ldap">>) ->
    #section{items = #{<<"servers">> => #list{items = #option{type = string},
                                              validate = unique_non_empty},
                       <<"port">> => #option{type = integer, validate = port},
                       <<"root_dn">> => #option{type = binary},
                       <<"password">> => #option{type = binary},
                       <<"connect_interval">> => #option{type = integer, validate = positive},
                       <<"tls">> => tls([client])},
             defaults = #{<<"servers">> => ["localhost"], <<"root_dn">> => <<>>,
                          <<"password">> => <<>>, <<"connect_interval">> => 10000},
             process = fun ?MODULE:process_ldap_connection/1,
             include = always};
connection(<<"rabbit">>) ->
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
             include = always};
connection(<<"rdbms">>) ->
    NonEmptyString = #option{type = string, validate = non_empty},
    #section{items = #{<<"driver">> => #option{type = atom,
                                               validate = {enum, [odbc, pgsql, mysql,
                                                                  cockroachdb]}},
                       <<"keepalive_interval">> => #option{type = integer, validate = positive},
                       <<"query_timeout">> => #option{type = integer, validate = non_negative},
                       <<"max_start_interval">> => #option{type = integer, validate = positive},
                       <<"settings">> => #option{type = string}, % odbc
                       <<"host">> => NonEmptyString,
                       <<"database">> => NonEmptyString,
                       <<"username">> => NonEmptyString,
                       <<"password">> => NonEmptyString,
                       <<"port">> => #option{type = integer, validate = port},
                       <<"tls">> => tls([client, sql])},
             required = [<<"driver">>],
             defaults = #{<<"query_timeout">> => 5000, <<"max_start_interval">> => 30},
             process = fun ?MODULE:process_rdbms_connection/1};
connection(<<"redis">>) ->
    #section{items = #{<<"host">> => #option{type = string, validate = non_empty},
                       <<"port">> => #option{type = integer, validate = port},
                       <<"database">> => #option{type = integer, validate = non_negative},
                       <<"password">> => #option{type = string}},
             defaults = #{<<"host">> => "127.0.0.1", <<"port">> => 6379,
                          <<"database">> => 0, <<"password">> => ""},
             include = always}.

cassandra_server() ->
    #section{items = #{<<"host">> => #option{type = string, validate = non_empty},
                       <<"port">> => #option{type = integer, validate = port}},
             required = [<<"host">>],
             defaults = #{<<"port">> => 9042}}.

cassandra_auth_plain() ->
    #section{items = #{<<"username">> => #option{type = binary},
                       <<"password">> => #option{type = binary}},
             required = all}.

%% @doc The LDAP port defaults to 636 with TLS, else 389.
-spec process_ldap_connection(map()) -> map().
process_ldap_connection(#{port := _} = Opts) -> Opts;
process_ldap_connection(#{tls := _} = Opts) -> Opts#{port => 636};
process_ldap_connection(Opts) -> Opts#{port => 389}.

%% @doc An rdbms connection names an ODBC data source (`settings') or a server
%% (host, database, username, password); the port defaults to the driver's, and
%% pgsql/cockroachdb TLS has `required' (default false), which MySQL does not support.
-spec process_rdbms_connection(map()) -> map().
process_rdbms_connection(#{driver := odbc, settings := _} = Opts) ->
    Opts;
process_rdbms_connection(#{host := _, database := _, username := _, password := _} = Opts) ->
    with_default_db_port(with_sql_tls_defaults(Opts));
process_rdbms_connection(Opts) ->
    error(#{what => invalid_rdbms_connection_options, options => Opts,
            text => "an rdbms connection needs settings (odbc) or host, database, "
                    "username and password"}).

with_sql_tls_defaults(#{driver := mysql, tls := #{required := _}} = Opts) ->
    error(#{what => invalid_rdbms_tls_options, options => Opts,
            text => "The 'required' option is not supported for MySQL"});
with_sql_tls_defaults(#{driver := Driver, tls := Tls} = Opts) when Driver =:= pgsql;
                                                                   Driver =:= cockroachdb ->
    Opts#{tls := maps:merge(#{required => false}, Tls)};
with_sql_tls_defaults(Opts) ->
    Opts.

with_default_db_port(#{port := _} = Opts) -> Opts;
with_default_db_port(#{driver := pgsql} = Opts) -> Opts#{port => 5432};
with_default_db_port(#{driver := cockroachdb} = Opts) -> Opts#{port => 26257};
with_default_db_port(#{driver := mysql} = Opts) -> Opts#{port => 3306};
with_default_db_port(#{driver := Driver} = Opts) ->
    error(#{what => invalid_rdbms_connection_options, options => Opts,
            text => "the odbc driver takes settings, not a server", driver => Driver}).

%% @doc TLS options of an outgoing connection (as MongooseIM's just_tls client
%% section): `client' adds server_name_indication, `sql' the rdbms `required' flag.
-spec tls([client | sql]) -> config_section().
tls(Entities) ->
    lists:foldl(fun(Entity, Section) -> merge_sections(Section, tls_entity(Entity)) end,
                tls_entity(common), Entities).

tls_entity(common) ->
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
                                                                validate = filename}}},
             defaults = #{<<"verify_mode">> => peer, <<"disconnect_on_failure">> => true,
                          <<"crl_files">> => []}};
tls_entity(client) ->
    #section{items = #{<<"server_name_indication">> => server_name_indication()}};
tls_entity(sql) ->
    #section{items = #{<<"required">> => #option{type = boolean}}}.

server_name_indication() ->
    #section{items = #{<<"enabled">> => #option{type = boolean},
                       <<"host">> => #option{type = string, validate = non_empty},
                       <<"protocol">> => #option{type = atom, validate = {enum, [default, https]}}},
             defaults = #{<<"enabled">> => true, <<"protocol">> => default},
             include = always}.

%% Items, required keys, defaults and process steps of both; the rest of the first.
merge_sections(#section{items = Items1, required = Required1, defaults = Defaults1,
                        process = Process1} = Basic,
               #section{items = Items2, required = Required2, defaults = Defaults2,
                        process = Process2}) ->
    Basic#section{items = maps:merge(Items1, Items2), required = Required1 ++ Required2,
                  defaults = maps:merge(Defaults1, Defaults2),
                  process = lists:flatten([Process1, Process2])}.

%%--------------------------------------------------------------------
%% Helpers for modules' config specs
%%--------------------------------------------------------------------

%% @doc IQ discipline: `{type = "queues", workers = N}' gives `{queues, N}', a type
%% alone gives the type atom; `workers' is only valid with queues.
-spec iqdisc() -> config_section().
iqdisc() ->
    #section{items = #{<<"type">> => #option{type = atom,
                                             validate = {enum, [no_queue, one_queue, parallel,
                                                                queues]}},
                       <<"workers">> => #option{type = integer, validate = positive}},
             required = [<<"type">>],
             process = fun ?MODULE:process_iqdisc/1}.

%% MongooseIM's: `workers' with another type fails with `{badmatch, Type}'.
-spec process_iqdisc(#{type := atom(), workers => pos_integer()}) ->
          no_queue | one_queue | parallel | queues | {queues, pos_integer()}.
process_iqdisc(#{type := Type, workers := N}) -> {queues = Type, N};
process_iqdisc(#{type := Type}) -> Type.

%% @doc Worker pool options of a module's own pool; `ExtraDefaults' (TOML keys,
%% final values) override the general defaults.
-spec wpool(#{binary() => term()}) -> config_section().
wpool(ExtraDefaults) ->
    #section{items = #{<<"workers">> => #option{type = integer, validate = positive},
                       <<"strategy">> => strategy(),
                       <<"call_timeout">> => #option{type = integer, validate = positive}},
             defaults = maps:merge(#{<<"workers">> => 10, <<"strategy">> => best_worker,
                                     <<"call_timeout">> => 5000}, ExtraDefaults)}.
