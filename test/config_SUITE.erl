%% @doc The event pusher's configuration, loaded from real mongooseim.toml files the
%% way MongooseIM loads it (the stand-in's mongoose_config_parser running the
%% production modules' config_spec/0).
%%
%% Good files (test/config_SUITE_data) are MongooseIM's documentation examples and
%% must give exactly MongooseIM 6.4's processed options, all defaults filled in. Bad
%% ones are written by the test cases; each must be rejected with MongooseIM 6.4's
%% error: the TOML path, the reason and the step (the text) that MongooseIM's parser
%% gives, both under [modules] and under [[host_config]]. (MongooseIM reports a
%% value of the wrong type or one a guard refuses as a `function_clause' or
%% `badarg', an unexpected key at its section.)
-module(config_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("mod_event_pusher_events.hrl").
-include("mod_event_pusher_nif.hrl").
-include("mongoose_config_spec.hrl").

-export([all/0, groups/0, init_per_suite/1, end_per_suite/1]).

%% good configurations
-export([http_doc_example/1, http_empty_handler/1, http_two_handlers/1, http_defaults/1,
         push_empty_section/1, push_doc_example/1, push_custom/1, push_migration_example/1,
         push_rdbms_and_queues/1, rabbit_empty_section/1, rabbit_doc_example/1,
         sns_doc_example/1, sns_required_keys_only/1, event_pusher_without_backends/1,
         config_metrics_read_the_parsed_options/1, host_config/1,
         deprecated_pool_scope_host/1, http_pool_with_tls/1,
         mongooseim_sections_are_accepted/1]).
%% bad configurations
-export([sns_missing_required_key/1, sns_required_key_as_integer/1, sns_pool_size_zero/1,
         sns_negative_retry_values/1, sns_unknown_plugin_module/1, sns_unknown_key/1,
         push_unknown_backend/1, push_wpool_not_a_table/1, push_bad_wpool_values/1,
         push_bad_virtual_pubsub_hosts/1, push_unknown_plugin_module/1, push_bad_iqdisc/1,
         http_empty_pool_name/1, http_path_not_a_string/1, http_duplicate_handlers/1,
         http_unknown_callback_module/1, http_handlers_not_a_list/1,
         rabbit_empty_names/1, rabbit_unknown_key/1, rabbit_bad_additive_options/1,
         rabbit_additive_options/1, sns_additive_options/1, sns_bad_additive_options/1,
         push_additive_options/1,
         http_pool_without_host/1, http_pool_bad_request_timeout/1, pool_bad_values/1,
         pool_scope_in_host_config/1, rabbit_pool_bad_connection/1,
         unknown_module/1, unknown_top_level_key/1, no_hosts/1, no_default_server_domain/1,
         general_options_are_checked/1, host_config_unknown_host/1,
         host_config_without_host/1, static_module_under_host_types/1,
         all_errors_are_reported/1, malformed_toml/1,
         every_bound_is_checked_at_load/1, sns_host_is_parsed_at_load/1]).
%% options that bypassed the parser, at run time
-export([http_pool_bad_host_fails_the_start/1, stop_survives_any_drain_timeout/1]).
%% the reader and dependency resolution
-export([toml_values/1, resolve_deps/1, resolve_deps_optional/1, sort_deps/1,
         sort_deps_breaks_soft_cycles/1, sort_deps_rejects_hard_cycles/1]).

-define(HT, <<"localhost">>).
%% The text of an error says at which step MongooseIM's parser failed.
-define(MALFORMED, "TOML configuration error: Malformed node").
-define(INVALID, "TOML configuration error: Invalid node value").
-define(NOT_PROCESSED, "TOML configuration error: Node could not be processed").
-define(NOT_WRAPPED, "TOML configuration error: Node could not be wrapped in a config option").
%% Options mod_event_pusher_http adds to MongooseIM's (with defaults, so existing
%% files keep working); MongooseIM's own option is `handlers'.
-define(HTTP_ADDITIVE_KEYS, [drain_timeout_ms, queue, retry]).

all() ->
    [{group, good}, {group, bad}, {group, machinery}, {group, runtime}].

groups() ->
    [{good, [parallel],
      [http_doc_example, http_empty_handler, http_two_handlers, http_defaults,
       push_empty_section, push_doc_example, push_custom, push_migration_example,
       push_rdbms_and_queues, rabbit_empty_section, rabbit_doc_example,
       sns_doc_example, sns_required_keys_only, event_pusher_without_backends,
       config_metrics_read_the_parsed_options, host_config, deprecated_pool_scope_host,
       http_pool_with_tls, mongooseim_sections_are_accepted]},
     {bad, [parallel],
      [sns_missing_required_key, sns_required_key_as_integer, sns_pool_size_zero,
       sns_negative_retry_values, sns_unknown_plugin_module, sns_unknown_key,
       push_unknown_backend, push_wpool_not_a_table, push_bad_wpool_values,
       push_bad_virtual_pubsub_hosts, push_unknown_plugin_module, push_bad_iqdisc,
       http_empty_pool_name, http_path_not_a_string, http_duplicate_handlers,
       http_unknown_callback_module, http_handlers_not_a_list,
       rabbit_empty_names, rabbit_unknown_key, rabbit_bad_additive_options,
       rabbit_additive_options, sns_additive_options, sns_bad_additive_options,
       push_additive_options,
       http_pool_without_host, http_pool_bad_request_timeout, pool_bad_values,
       pool_scope_in_host_config, rabbit_pool_bad_connection,
       unknown_module, unknown_top_level_key, no_hosts, no_default_server_domain,
       general_options_are_checked, host_config_unknown_host,
       host_config_without_host, static_module_under_host_types,
       all_errors_are_reported, malformed_toml,
       every_bound_is_checked_at_load, sns_host_is_parsed_at_load]},
     {machinery, [],
      [toml_values, resolve_deps, resolve_deps_optional, sort_deps,
       sort_deps_breaks_soft_cycles, sort_deps_rejects_hard_cycles]},
     %% starts the stand-in host, so not in parallel with the cases that set options
     {runtime, [], [http_pool_bad_host_fails_the_start, stop_survives_any_drain_timeout]}].

init_per_suite(Config) ->
    %% builds toml2term if needed, once, before the parallel groups use it
    {ok, _} = tomerl:executable(),
    Config.

end_per_suite(_Config) ->
    mongoose_config:erase_opts(),
    ok.

%%--------------------------------------------------------------------
%% Good configurations: exactly MongooseIM's processed options
%%--------------------------------------------------------------------

http_doc_example(Config) ->
    Opts = parse(Config, "http_doc.toml"),
    Pool = #{type => http, scope => global, tag => http_pool,
             opts => #{workers => 50, strategy => best_worker, call_timeout => 5000},
             conn_opts => #{host => "http://localhost:8000", path_prefix => <<"/webservice">>,
                            request_timeout => 2000}},
    ?assertEqual([Pool], opt(outgoing_pools, Opts)),
    assert_http_modules(#{handlers => [#{pool_name => http_pool, path => <<"notifications">>,
                                         callback_module => mod_event_pusher_http_defaults}]},
                        opt({modules, ?HT}, Opts)).

http_empty_handler(Config) ->
    Opts = parse(Config, "http_empty_handler.toml"),
    assert_http_modules(#{handlers => [#{pool_name => http_pool, path => <<>>,
                                         callback_module => mod_event_pusher_http_defaults}]},
                        opt({modules, ?HT}, Opts)),
    ?assertEqual([], opt(outgoing_pools, Opts)).

http_two_handlers(Config) ->
    Opts = parse(Config, "http_two_handlers.toml"),
    assert_http_modules(#{handlers => [#{pool_name => http_pool, path => <<"notifications">>,
                                         callback_module => mod_event_pusher_http_defaults},
                                       #{pool_name => http_pool, path => <<"alerts">>,
                                         callback_module => mod_event_pusher_http_custom}]},
                        opt({modules, ?HT}, Opts)).

%% An empty http section is valid: no handlers (MongooseIM's default), and the
%% additive options are exactly the three documented keys.
http_defaults(Config) ->
    Opts = parse_text(Config, [general(), "[modules.mod_event_pusher.http]\n"]),
    #{mod_event_pusher := #{http := Http}} = opt({modules, ?HT}, Opts),
    ?assertEqual([], maps:get(handlers, Http)),
    ?assertEqual(lists:sort([handlers | ?HTTP_ADDITIVE_KEYS]), lists:sort(maps:keys(Http))).

push_empty_section(Config) ->
    assert_backend(push, push_defaults(), parse(Config, "push_default.toml")).

push_doc_example(Config) ->
    Expected = push_defaults(#{wpool => wpool(#{workers => 100})}),
    assert_backend(push, Expected, parse(Config, "push_doc.toml")).

push_custom(Config) ->
    Expected = push_defaults(#{wpool => wpool(#{workers => 200}),
                               virtual_pubsub_hosts => [{fqdn, <<"host1">>}, {fqdn, <<"host2">>}]}),
    assert_backend(push, Expected, parse(Config, "push_custom.toml")).

push_migration_example(Config) ->
    Expected = push_defaults(#{wpool => wpool(#{workers => 200}),
                               virtual_pubsub_hosts => [{prefix, <<"pubsub.">>}]}),
    assert_backend(push, Expected, parse(Config, "push_migration.toml")).

push_rdbms_and_queues(Config) ->
    Expected = push_defaults(#{backend => rdbms, iqdisc => {queues, 4},
                               wpool => #{workers => 20, strategy => best_worker,
                                          call_timeout => 1000}}),
    assert_backend(push, Expected, parse(Config, "push_rdbms.toml")).

rabbit_empty_section(Config) ->
    assert_backend(rabbit, rabbit_defaults(), parse(Config, "rabbit_empty.toml")).

rabbit_doc_example(Config) ->
    Opts = parse(Config, "rabbit_doc.toml"),
    assert_backend(rabbit, rabbit_defaults(), Opts),
    ?assertEqual([#{type => rabbit, scope => host_type, tag => event_pusher,
                    opts => #{workers => 20, strategy => best_worker, call_timeout => 5000},
                    conn_opts => #{host => "localhost", port => 5672, username => <<"guest">>,
                                   password => <<"guest">>, confirms_enabled => true,
                                   max_worker_queue_len => 100}}],
                 opt(outgoing_pools, Opts)).

sns_doc_example(Config) ->
    Expected = (sns_required())#{presence_updates_topic => "user_presence_updated",
                                 pm_messages_topic => "user_message_sent",
                                 muc_messages_topic => "user_messagegroup_sent"},
    assert_backend(sns, Expected, parse(Config, "sns_doc.toml")).

%% Topics have no defaults: a missing topic means that kind of event is not sent.
sns_required_keys_only(Config) ->
    assert_backend(sns, sns_required(), parse(Config, "sns_required.toml")).

event_pusher_without_backends(Config) ->
    Opts = parse(Config, "event_pusher_empty.toml"),
    ?assertEqual(#{mod_event_pusher => #{}}, opt({modules, ?HT}, Opts)).

%% The parsed list is what the runtime reads: mod_event_pusher:config_metrics/1
%% needs nothing but the options stored in mongoose_config.
config_metrics_read_the_parsed_options(Config) ->
    mongoose_config:set_opts(parse(Config, "event_pusher_empty.toml")),
    ?assertEqual([{none, none}], mod_event_pusher:config_metrics(?HT)),
    mongoose_config:set_opts(parse(Config, "rabbit_doc.toml")),
    ?assertEqual([{backend, rabbit}], mod_event_pusher:config_metrics(?HT)),
    mongoose_config:erase_opts().

%% host_config replaces the global modules for its host; hosts without one get
%% the global modules; pools in host_config are scoped to that host.
host_config(Config) ->
    Opts = parse(Config, "host_config.toml"),
    Dynamic = <<"dynamic type">>,
    PushExpected = push_defaults(#{virtual_pubsub_hosts => [{prefix, <<"pubsub.">>}]}),
    ?assertEqual([{default_server_domain, <<"localhost">>},
                  {host_types, [Dynamic]},
                  {hosts, [<<"localhost">>, <<"other.com">>]},
                  {loglevel, warning},
                  {outgoing_pools, [#{type => rabbit, scope => host_type, tag => event_pusher,
                                      opts => default_pool_opts(),
                                      conn_opts => rabbit_connection_defaults()}]},
                  {{modules, Dynamic}, backend_modules(push, PushExpected)},
                  {{modules, <<"localhost">>}, backend_modules(rabbit, rabbit_defaults())},
                  {{modules, <<"other.com">>}, backend_modules(sns, sns_required())},
                  {{outgoing_pools, <<"other.com">>},
                   [#{type => http, scope => <<"other.com">>, tag => http_pool,
                      opts => (default_pool_opts())#{workers => 5},
                      conn_opts => #{host => "https://other.com", path_prefix => <<"/">>,
                                     request_timeout => 2000}}]}],
                 Opts).

deprecated_pool_scope_host(Config) ->
    Opts = parse_text(Config, [general(), "[outgoing_pools.redis.my_pool]\n"
                                          "scope = \"host\"\n"]),
    ?assertEqual([#{type => redis, scope => host_type, tag => my_pool,
                    opts => default_pool_opts(),
                    conn_opts => #{host => "127.0.0.1", port => 6379, database => 0,
                                   password => ""}}],
                 opt(outgoing_pools, Opts)).

http_pool_with_tls(Config) ->
    CaFile = filename:join(?config(data_dir, Config), "http_doc.toml"), % any existing file
    Opts = parse_text(Config, [general(), "[outgoing_pools.http.secure]\n"
                                          "connection.host = \"https://example.com\"\n"
                                          "connection.tls.cacertfile = \"", CaFile, "\"\n"
                                          "connection.tls.server_name_indication.host = \"example.com\"\n"]),
    [#{conn_opts := #{tls := Tls}}] = opt(outgoing_pools, Opts),
    ?assertEqual(#{verify_mode => peer, cacertfile => CaFile, disconnect_on_failure => true,
                   crl_files => [],
                   server_name_indication => #{enabled => true, host => "example.com",
                                               protocol => default}},
                 Tls).

%% A complete MongooseIM file also has sections, general options and modules the
%% stand-in does not model: they are accepted and left out of the result, so that
%% mongoose_modules never starts a module that does not exist here.
mongooseim_sections_are_accepted(Config) ->
    Expected = [{default_server_domain, ?HT}, {host_types, []}, {hosts, [?HT]},
                {loglevel, warning}, {outgoing_pools, []}],
    Global = parse_text(Config, [general(), "language = \"pl\"\nsm_backend = \"cets\"\n"
                                            "registration_timeout = \"infinity\"\n"
                                            "route_subdomains = \"s2s\"\n",
                                 "[[listen.c2s]]\nport = 5222\n[auth.rdbms]\n"
                                 "[internal_databases.mnesia]\n[s2s]\ndefault_policy = \"allow\"\n"
                                 "[shaper.fast]\nmax_rate = 1000\n"
                                 "[access]\nc2s = [{acl = \"all\", value = \"allow\"}]\n"
                                 "[modules.mod_mam]\nbackend = \"rdbms\"\npm = {}\n"
                                 "[modules.mod_event_pusher]\n"]),
    ?assertEqual(Expected ++ [{{modules, ?HT}, #{mod_event_pusher => #{}}}], Global),
    PerHost = parse_text(Config, [general(), "[modules.mod_event_pusher]\n"
                                             "[[host_config]]\nhost = \"localhost\"\n"
                                             "general.replaced_wait_timeout = 100\n"
                                             "auth.anonymous.protocol = \"both\"\n"
                                             "acl.local = [{user_regexp = \"\"}]\n"
                                             "modules.mod_ping.send_pings = true\n"]),
    ?assertEqual(Expected ++ [{{modules, ?HT}, #{}}], PerHost).

%%--------------------------------------------------------------------
%% Bad module options: rejected under [modules] and under [[host_config]]
%%--------------------------------------------------------------------

sns_missing_required_key(Config) ->
    [assert_module_rejected(Config, sns, sns_lines(maps:remove(Key, sns_required_toml())), "",
                            #{reason => missing_mandatory_keys,
                              missing_keys => [atom_to_binary(Key)]})
     || Key <- maps:keys(sns_required_toml())].

%% (a string option: MongooseIM's binary_to_list/1 is given the integer)
sns_required_key_as_integer(Config) ->
    [assert_module_rejected(Config, sns, sns_lines((sns_required_toml())#{Key => 1}),
                            "." ++ atom_to_list(Key),
                            #{text => ?MALFORMED, reason => badarg, toml_value => 1})
     || Key <- maps:keys(sns_required_toml())].

sns_pool_size_zero(Config) ->
    assert_module_rejected(Config, sns, ["pool_size = 0\n" | sns_lines(sns_required_toml())],
                           ".pool_size",
                           #{text => ?INVALID, reason => function_clause, toml_value => 0}).

sns_negative_retry_values(Config) ->
    [assert_module_rejected(Config, sns, [Key, " = -1\n" | sns_lines(sns_required_toml())],
                            "." ++ Key,
                            #{text => ?INVALID, reason => function_clause, toml_value => -1})
     || Key <- ["publish_retry_count", "publish_retry_time_ms"]].

sns_unknown_plugin_module(Config) ->
    assert_module_rejected(Config, sns, ["plugin_module = \"wow_cool_but_missing\"\n"
                                         | sns_lines(sns_required_toml())],
                           ".plugin_module",
                           #{text => ?INVALID, reason => module_not_found,
                             module => wow_cool_but_missing}).

%% Reported at the section, as MongooseIM does.
sns_unknown_key(Config) ->
    assert_module_rejected(Config, sns, ["topic = \"x\"\n" | sns_lines(sns_required_toml())],
                           "", #{text => ?MALFORMED, reason => unexpected_key, key => <<"topic">>}).

%% There is no mod_event_pusher_push_redis.
push_unknown_backend(Config) ->
    assert_module_rejected(Config, push, "backend = \"redis\"\n", ".backend",
                           #{text => ?INVALID, reason => module_not_found,
                             module => mod_event_pusher_push_redis}).

%% MongooseIM's parser has no clause for a section given a value.
push_wpool_not_a_table(Config) ->
    [?assertMatch(#{text := ?MALFORMED, reason := {case_clause, #section{}}, toml_value := true},
                  Error)
     || Error <- module_errors(Config, push, "wpool = true\n", ".wpool")].

push_bad_wpool_values(Config) ->
    assert_module_rejected(Config, push, "wpool.workers = 0\n", ".wpool.workers",
                           #{text => ?INVALID, reason => function_clause, toml_value => 0}),
    assert_module_rejected(Config, push, "wpool.strategy = \"fastest_worker\"\n", ".wpool.strategy",
                           #{text => ?INVALID, reason => validate_enum_failed,
                             value => fastest_worker,
                             allowed_values => [best_worker, random_worker, next_worker,
                                                available_worker, next_available_worker]}).

%% A template without ".@HOST@" at its end is a domain name, with it a prefix that
%% must make one of "example.com"; either is refused with MongooseIM's own text.
push_bad_virtual_pubsub_hosts(Config) ->
    [assert_module_rejected(Config, push, ["virtual_pubsub_hosts = [\"", Template, "\"]\n"],
                            ".virtual_pubsub_hosts",
                            #{text => <<"Invalid domain name">>, reason => validate_domain_failed,
                              domain => Template})
     || Template <- ["host with whitespace", "invalid.sub@HOST@", "invalid.sub.@HOST@.as.well"]],
    assert_module_rejected(Config, push, "virtual_pubsub_hosts = [\"in valid.@HOST@\"]\n",
                           ".virtual_pubsub_hosts",
                           #{text => <<"Invalid subdomain template">>,
                             reason => validate_subdomain_template_failed,
                             subdomain_template => "in valid.@HOST@"}).

push_unknown_plugin_module(Config) ->
    assert_module_rejected(Config, push, "plugin_module = \"wow_cool_but_missing\"\n",
                           ".plugin_module",
                           #{text => ?INVALID, reason => module_not_found,
                             module => wow_cool_but_missing}).

%% MongooseIM's process_iqdisc/1 matches `queues' against a type given with workers.
push_bad_iqdisc(Config) ->
    assert_module_rejected(Config, push, "iqdisc.type = \"lazy_queue\"\n", ".iqdisc.type",
                           #{text => ?INVALID, reason => validate_enum_failed, value => lazy_queue,
                             allowed_values => [no_queue, one_queue, parallel, queues]}),
    assert_module_rejected(Config, push, "iqdisc.workers = 10\n", ".iqdisc",
                           #{text => ?MALFORMED, reason => missing_mandatory_keys,
                             missing_keys => [<<"type">>]}),
    assert_module_rejected(Config, push, "iqdisc = {type = \"one_queue\", workers = 10}\n",
                           ".iqdisc", #{text => ?NOT_PROCESSED, reason => {badmatch, one_queue}}).

http_empty_pool_name(Config) ->
    assert_module_rejected(Config, http, "handlers = [{pool_name = \"\"}]\n",
                           ".handlers.pool_name",
                           #{text => ?INVALID, reason => function_clause, toml_value => <<>>}).

http_path_not_a_string(Config) ->
    assert_module_rejected(Config, http, "handlers = [{path = true}]\n", ".handlers.path",
                           #{text => ?MALFORMED, reason => function_clause, toml_value => true}).

%% Identical handlers would send every event twice. MongooseIM's `unique' check is a
%% match of the set's size with the list's length.
http_duplicate_handlers(Config) ->
    assert_module_rejected(Config, http, "handlers = [{path = \"/notifications\"},\n"
                                         "            {path = \"notifications\"}]\n",
                           ".handlers",
                           #{text => ?INVALID, reason => {badmatch, 2},
                             toml_value => [#{<<"path">> => <<"/notifications">>},
                                            #{<<"path">> => <<"notifications">>}]}).

http_unknown_callback_module(Config) ->
    assert_module_rejected(Config, http, "handlers = [{callback_module = \"no_such_callbacks\"}]\n",
                           ".handlers.callback_module",
                           #{text => ?INVALID, reason => module_not_found,
                             module => no_such_callbacks}).

http_handlers_not_a_list(Config) ->
    [?assertMatch(#{text := ?MALFORMED, reason := {case_clause, #list{}},
                    toml_value := #{<<"path">> := <<"/x">>}}, Error)
     || Error <- module_errors(Config, http, "handlers = {path = \"/x\"}\n", ".handlers")].

rabbit_empty_names(Config) ->
    [assert_module_rejected(Config, rabbit, [Exchange, ".", Key, " = \"\"\n"],
                            "." ++ Exchange ++ "." ++ Key,
                            #{text => ?INVALID, reason => function_clause, toml_value => <<>>})
     || {Exchange, Key} <- [{"presence_exchange", "name"}, {"presence_exchange", "type"},
                            {"chat_msg_exchange", "name"}, {"chat_msg_exchange", "type"},
                            {"chat_msg_exchange", "sent_topic"}, {"chat_msg_exchange", "recv_topic"},
                            {"groupchat_msg_exchange", "sent_topic"},
                            {"groupchat_msg_exchange", "recv_topic"}]].

%% Presence has no topics: only the message exchanges do (reported at the exchange).
rabbit_unknown_key(Config) ->
    assert_module_rejected(Config, rabbit, "presence_exchange.sent_topic = \"x\"\n",
                           ".presence_exchange",
                           #{text => ?MALFORMED, reason => unexpected_key,
                             key => <<"sent_topic">>}).

%% Our additions are validated like MongooseIM's options.
rabbit_bad_additive_options(Config) ->
    [assert_module_rejected(Config, rabbit, Body, Path, Expected)
     || {Body, Path, Expected} <-
            [{"presence_exchange.durable = \"yes\"\n", ".presence_exchange.durable",
              #{text => ?MALFORMED, reason => function_clause, toml_value => <<"yes">>}},
             {"chat_msg_exchange.persistent = 1\n", ".chat_msg_exchange.persistent",
              #{text => ?MALFORMED, reason => function_clause, toml_value => 1}},
             {"max_message_bytes = 0\n", ".max_message_bytes",
              #{text => ?INVALID, reason => function_clause, toml_value => 0}},
             {"confirm_window = 0\n", ".confirm_window",
              #{text => ?INVALID, reason => function_clause, toml_value => 0}},
             {"connection.virtual_host = \"\"\n", ".connection.virtual_host",
              #{text => ?INVALID, reason => function_clause, toml_value => <<>>}},
             {"reconnect.max_delay_ms = -5\n", ".reconnect.max_delay_ms",
              #{text => ?INVALID, reason => function_clause, toml_value => -5}},
             {"queue.overflow = \"sideways\"\n", ".queue.overflow",
              #{text => ?INVALID, reason => validate_enum_failed, value => sideways,
                allowed_values => [drop_newest, drop_oldest]}}]].

sns_additive_options(Config) ->
    Opts = parse_text(Config, [general(), "[modules.mod_event_pusher.sns]\n",
                               "batching = false\n", "request_timeout_ms = 750\n",
                               "queue.overflow = \"drop_oldest\"\n"
                               | sns_lines(sns_required_toml())]),
    #{mod_event_pusher := #{sns := Sns}} = opt({modules, ?HT}, Opts),
    ?assertMatch(#{batching := false, request_timeout_ms := 750,
                   queue := #{overflow := drop_oldest, max_events := 10000}}, Sns),
    ?assertNot(maps:is_key(retry, Sns)).

push_additive_options(Config) ->
    Opts = parse_text(Config, [general(), "[modules.mod_event_pusher.push]\n",
                               "publish_timeout_ms = 1500\n", "queue.max_events = 5\n"]),
    #{mod_event_pusher := #{push := Push}} = opt({modules, ?HT}, Opts),
    ?assertMatch(#{publish_timeout_ms := 1500, queue := #{max_events := 5},
                   wpool := #{workers := 10}}, Push),
    [assert_module_rejected(Config, push, Line, Path,
                            #{text => ?INVALID, reason => function_clause, toml_value => Value})
     || {Line, Path, Value} <- [{"publish_timeout_ms = 0\n", ".publish_timeout_ms", 0},
                                {"queue.max_events = -1\n", ".queue.max_events", -1}]].

sns_bad_additive_options(Config) ->
    [assert_module_rejected(Config, sns, [Line | sns_lines(sns_required_toml())], Path, Fields)
     || {Line, Path, Fields} <-
            [{"batching = 1\n", ".batching",
              #{text => ?MALFORMED, reason => function_clause, toml_value => 1}},
             {"request_timeout_ms = 0\n", ".request_timeout_ms",
              #{text => ?INVALID, reason => function_clause, toml_value => 0}},
             %% sns has no retry section (the SNS client retries): MongooseIM names the key
             %% at the backend's section
             {"retry.max_attempts = 2\n", "",
              #{text => ?MALFORMED, reason => unexpected_key, key => <<"retry">>}}]].

rabbit_additive_options(Config) ->
    Opts = parse_text(Config, [general(), "[modules.mod_event_pusher.rabbit]\n",
                               "chat_msg_exchange.durable = true\n",
                               "groupchat_msg_exchange.persistent = true\n",
                               "confirm_window = 64\n",
                               "connection.virtual_host = \"events\"\n",
                               "connection.tls.cacertfile = \"/etc/ca.pem\"\n"]),
    #{mod_event_pusher := #{rabbit := Rabbit}} = opt({modules, ?HT}, Opts),
    ?assertMatch(#{chat_msg_exchange := #{durable := true, name := <<"chat_msg">>},
                   groupchat_msg_exchange := #{durable := false, persistent := true},
                   presence_exchange := #{durable := false},
                   confirm_window := 64,
                   connection := #{virtual_host := <<"events">>, connect_timeout_ms := 5000,
                                   tls := #{cacertfile := "/etc/ca.pem"}}},
                 Rabbit).

%% Each of our integer options has an upper bound (README): the bound itself loads,
%% one more is refused naming the option, the bound and its unit.
every_bound_is_checked_at_load(Config) ->
    Day = 86400000,
    Shared = [{"queue.max_events", 100000000, events}, {"queue.max_bytes", 17179869184, bytes},
              {"drain_timeout_ms", Day, milliseconds}],
    Retry = [{"retry.max_attempts", 1000, attempts}, {"retry.base_backoff_ms", Day, milliseconds},
             {"retry.max_backoff_ms", Day, milliseconds}, {"retry.deadline_ms", Day, milliseconds}],
    Bounds = [{http, Shared ++ Retry},
              {rabbit, Shared ++ Retry
                   ++ [{"confirm_window", 4096, deliveries},
                       {"confirm_timeout_ms", Day, milliseconds},
                       {"connection.connect_timeout_ms", Day, milliseconds},
                       {"reconnect.base_delay_ms", Day, milliseconds},
                       {"reconnect.max_delay_ms", Day, milliseconds},
                       {"max_message_bytes", 536870912, bytes}]},
              {sns, Shared ++ [{"pool_size", 4096, deliveries},
                               {"publish_retry_count", 1000, attempts},
                               {"publish_retry_time_ms", Day, milliseconds},
                               {"request_timeout_ms", Day, milliseconds}]},
              {push, Shared ++ [{"publish_timeout_ms", Day, milliseconds},
                                {"wpool.workers", 4096, deliveries}]}],
    [check_bound(Config, Backend, Key, Max, Unit)
     || {Backend, Options} <- Bounds, {Key, Max, Unit} <- Options].

check_bound(Config, Backend, Key, Max, Unit) ->
    Line = fun(Value) -> [Key, " = ", integer_to_list(Value), "\n" | backend_lines(Backend)] end,
    Opts = parse_text(Config, [general(), "[modules.mod_event_pusher.", atom_to_list(Backend),
                               "]\n", Line(Max)]),
    #{mod_event_pusher := #{Backend := BackendOpts}} = opt({modules, ?HT}, Opts),
    Path = [list_to_atom(K) || K <- string:split(Key, ".", all)],
    ?assertEqual({Key, Max}, {Key, get_path(Path, BackendOpts)}),
    assert_module_rejected(Config, Backend, Line(Max + 1), "." ++ Key,
                           #{text => "TOML configuration error: Node could not be processed",
                             reason => value_too_large, toml_value => Max + 1,
                             option => atom_to_binary(lists:last(Path)), max => Max,
                             unit => Unit}).

backend_lines(sns) -> sns_lines(sns_required_toml());
backend_lines(_Backend) -> [].

get_path([Key], Map) -> maps:get(Key, Map);
get_path([Key | Rest], Map) -> get_path(Rest, maps:get(Key, Map)).

%% sns_host is a host name (https implied) or an http(s) URL; anything the SNS client
%% could never send to is refused at load, not at every publish.
sns_host_is_parsed_at_load(Config) ->
    Good = ["sns.eu-west-1.amazonaws.com", "localhost:9911", "http://127.0.0.1:4566/sns/",
            "https://[::1]:4566", "HTTPS://SNS.example.com"],
    [begin
         Opts = parse_text(Config, [general(), "[modules.mod_event_pusher.sns]\n"
                                    | sns_lines((sns_required_toml())#{sns_host => Host})]),
         #{mod_event_pusher := #{sns := #{sns_host := Parsed}}} = opt({modules, ?HT}, Opts),
         ?assertEqual(Host, Parsed)
     end || Host <- Good],
    Bad = [{"http://[::1", <<"not a valid URL">>},
           {"ftp://x", <<"the scheme must be http or https">>},
           {"", <<"empty">>},
           {"https://", <<"a host name or IP address is required">>},
           {"https://999.1.1.1", <<"a host name or IP address is required">>},
           {"sns.example.com:99999", <<"the port must be 1..65535">>},
           {"https://key:secret@sns.example.com", <<"credentials in the URL are not supported">>},
           {"https://sns.example.com/?a=b", <<"a query or fragment is not allowed">>}],
    [assert_module_rejected(Config, sns, sns_lines((sns_required_toml())#{sns_host => Host}),
                            ".sns_host",
                            #{text => "TOML configuration error: Node could not be processed",
                              reason => invalid_url, option => <<"sns_host">>, cause => Cause,
                              toml_value => list_to_binary(Host)})
     || {Host, Cause} <- Bad].

%%--------------------------------------------------------------------
%% Bad pools, hosts and files
%%--------------------------------------------------------------------

http_pool_without_host(Config) ->
    assert_rejected(Config, [general(), "[outgoing_pools.http.http_pool]\n"
                                        "workers = 5\n"],
                    "outgoing_pools.http.http_pool.connection",
                    #{text => ?MALFORMED, reason => missing_mandatory_keys,
                      missing_keys => [<<"host">>]}),
    assert_rejected(Config, [general(), "[outgoing_pools.http.http_pool]\n"
                                        "connection.host = \"\"\n"],
                    "outgoing_pools.http.http_pool.connection.host",
                    #{text => ?INVALID, reason => function_clause, toml_value => <<>>}).

http_pool_bad_request_timeout(Config) ->
    Pool = "[outgoing_pools.http.http_pool]\nconnection.host = \"http://localhost:8000\"\n",
    Path = "outgoing_pools.http.http_pool.connection.request_timeout",
    assert_rejected(Config, [general(), Pool, "connection.request_timeout = -1\n"], Path,
                    #{text => ?INVALID, reason => function_clause, toml_value => -1}),
    assert_rejected(Config, [general(), Pool, "connection.request_timeout = \"2s\"\n"], Path,
                    #{text => ?MALFORMED, reason => function_clause, toml_value => <<"2s">>}).

pool_bad_values(Config) ->
    Pool = "[outgoing_pools.redis.my_pool]\n",
    assert_rejected(Config, [general(), Pool, "workers = 0\n"],
                    "outgoing_pools.redis.my_pool.workers",
                    #{text => ?INVALID, reason => function_clause, toml_value => 0}),
    assert_rejected(Config, [general(), Pool, "scope = \"planet\"\n"],
                    "outgoing_pools.redis.my_pool.scope",
                    #{text => ?INVALID, reason => validate_enum_failed, value => planet,
                      allowed_values => [global, host_type, host]}),
    assert_rejected(Config, [general(), Pool, "call_timeout = 1.5\n"],
                    "outgoing_pools.redis.my_pool.call_timeout",
                    #{text => ?MALFORMED, reason => function_clause, toml_value => 1.5}),
    %% MongooseIM 6.4 has no "generic" pool section (modules start such pools themselves)
    assert_rejected(Config, [general(), "[outgoing_pools.generic.default]\n"],
                    "outgoing_pools",
                    #{text => ?MALFORMED, reason => unexpected_key, key => <<"generic">>}).

%% A host_config pool belongs to its host: it has no scope.
pool_scope_in_host_config(Config) ->
    assert_rejected(Config, [general(), "[[host_config]]\n"
                                        "host = \"localhost\"\n"
                                        "[host_config.outgoing_pools.redis.my_pool]\n"
                                        "scope = \"global\"\n"],
                    "host_config.outgoing_pools.redis.my_pool",
                    #{text => ?MALFORMED, reason => unexpected_key, key => <<"scope">>}).

rabbit_pool_bad_connection(Config) ->
    Pool = "[outgoing_pools.rabbit.event_pusher]\n",
    assert_rejected(Config, [general(), Pool, "connection.port = 70000\n"],
                    "outgoing_pools.rabbit.event_pusher.connection.port",
                    #{text => ?INVALID, reason => function_clause, toml_value => 70000}),
    assert_rejected(Config, [general(), Pool, "connection.max_worker_queue_len = -5\n"],
                    "outgoing_pools.rabbit.event_pusher.connection.max_worker_queue_len",
                    #{text => ?INVALID, reason => function_clause, toml_value => -5}),
    assert_rejected(Config, [general(), Pool, "connection.confirms_enabled = \"yes\"\n"],
                    "outgoing_pools.rabbit.event_pusher.connection.confirms_enabled",
                    #{text => ?MALFORMED, reason => function_clause, toml_value => <<"yes">>}).

%% The keys of [modules] are checked as module names, at the section (MongooseIM's
%% `validate_keys').
unknown_module(Config) ->
    assert_rejected(Config, [general(), "[modules.mod_does_not_exist]\n"],
                    "modules",
                    #{text => ?MALFORMED, reason => module_not_found, module => mod_does_not_exist}),
    assert_rejected(Config, [general(), "[[host_config]]\nhost = \"localhost\"\n"
                                        "[host_config.modules.mod_does_not_exist]\n"],
                    "host_config.modules",
                    #{text => ?MALFORMED, reason => module_not_found, module => mod_does_not_exist}),
    assert_rejected(Config, [general(), "[modules.mod_event_pusher.redis]\n"],
                    "modules.mod_event_pusher",
                    #{text => ?MALFORMED, reason => unexpected_key, key => <<"redis">>}).

unknown_top_level_key(Config) ->
    assert_rejected(Config, [general(), "[listeners]\n"], "",
                    #{text => ?MALFORMED, reason => unexpected_key, key => <<"listeners">>}),
    assert_rejected(Config, [general(), "host = \"localhost\"\n"], "general",
                    #{text => ?MALFORMED, reason => unexpected_key, key => <<"host">>}).

%% MongooseIM's checks are matches: at least one host or host type, each host a valid
%% JID node (nodeprep), no host twice once prepped.
no_hosts(Config) ->
    assert_rejected(Config, "[modules.mod_event_pusher]\n", "",
                    #{text => ?MALFORMED, reason => missing_mandatory_keys,
                      missing_keys => [<<"general">>]}),
    assert_rejected(Config, [domain_only(), "hosts = []\n"], "general",
                    #{text => ?NOT_PROCESSED, reason => {badmatch, false}}),
    assert_rejected(Config, domain_only(), "general",
                    #{text => ?NOT_PROCESSED, reason => {badmatch, false}}),
    assert_rejected(Config, [domain_only(), "hosts = [\"a.com\"]\nhost_types = [\"a.com\"]\n"],
                    "general", #{text => ?NOT_PROCESSED, reason => {badmatch, false}}),
    assert_rejected(Config, [domain_only(), "hosts = [\"a.com\", \"A.com\"]\n"], "general.hosts",
                    #{text => ?INVALID, reason => {badmatch, 2}}),
    assert_rejected(Config, [domain_only(), "hosts = [\"user@a.com\"]\n"], "general.hosts",
                    #{text => ?NOT_PROCESSED, reason => {badmatch, false},
                      toml_value => <<"user@a.com">>}).

%% MongooseIM 6.4 requires [general] default_server_domain (its spec for `general' has
%% `required = [<<"default_server_domain">>]'); the error is MongooseIM's.
no_default_server_domain(Config) ->
    Text = "[general]\nhosts = [\"localhost\"]\n[modules.mod_event_pusher]\n",
    assert_rejected(Config, Text, "general",
                    #{text => "TOML configuration error: Malformed node",
                      reason => missing_mandatory_keys,
                      missing_keys => [<<"default_server_domain">>],
                      toml_value => #{<<"hosts">> => [<<"localhost">>]}}),
    assert_rejected(Config, [general(), "[[host_config]]\nhost = \"localhost\"\n"
                                        "general.default_server_domain = \"localhost\"\n"],
                    "host_config.general.default_server_domain",
                    #{text => ?NOT_WRAPPED, reason => {badmatch, <<"localhost">>}}),
    Opts = parse_text(Config, "[general]\nhosts = [\"Localhost\"]\n"
                              "default_server_domain = \"LocalHost\"\n"),
    ?assertEqual(<<"localhost">>, opt(default_server_domain, Opts)).

%% The general options the stand-in does not store are still checked as MongooseIM
%% checks them, and those that are global only are refused in host_config.
general_options_are_checked(Config) ->
    assert_rejected(Config, [general(), "language = \"\"\n"], "general.language",
                    #{text => ?INVALID, reason => function_clause, toml_value => <<>>}),
    assert_rejected(Config, [general(), "sm_backend = \"ets\"\n"], "general.sm_backend",
                    #{text => ?INVALID, reason => module_not_found, module => ejabberd_sm_ets}),
    assert_rejected(Config, [general(), "replaced_wait_timeout = 0\n"],
                    "general.replaced_wait_timeout",
                    #{text => ?INVALID, reason => function_clause, toml_value => 0}),
    assert_rejected(Config, [general(), "loglevel = \"loud\"\n"], "general.loglevel",
                    #{text => ?INVALID, reason => function_clause, toml_value => <<"loud">>}),
    assert_rejected(Config, [general(), "[[host_config]]\nhost = \"localhost\"\n"
                                        "general.language = \"pl\"\n"],
                    "host_config.general.language",
                    #{text => ?NOT_WRAPPED, reason => {badmatch, <<"localhost">>}}).

domain_only() ->
    "[general]\ndefault_server_domain = \"a.com\"\n".

%% MongooseIM accepts a host_config of a host it does not serve: the modules of that
%% host are dropped (every served host gets the global ones), its pools are kept.
host_config_unknown_host(Config) ->
    Opts = parse_text(Config, [general(), "[modules.mod_event_pusher]\n"
                                          "[[host_config]]\nhost = \"elsewhere.com\"\n"
                                          "[host_config.modules.mod_event_pusher.push]\n"
                                          "[host_config.outgoing_pools.redis.my_pool]\n"]),
    ?assertEqual(#{mod_event_pusher => #{}}, opt({modules, ?HT}, Opts)),
    ?assertEqual([], [Key || {{modules, Host} = Key, _} <- Opts, Host =/= ?HT]),
    ?assertMatch([#{type := redis, scope := <<"elsewhere.com">>, tag := my_pool}],
                 opt({outgoing_pools, <<"elsewhere.com">>}, Opts)).

%% A host_config table without host and host_type is, for MongooseIM, global: its
%% modules give way to the global [modules] (processed after it), and its pools have
%% no host to belong to. With both, host_type names the host.
host_config_without_host(Config) ->
    Opts = parse_text(Config, [general(), "[[host_config]]\n"
                                          "[host_config.modules.mod_event_pusher]\n"]),
    ?assertEqual(#{}, opt({modules, ?HT}, Opts)),
    assert_rejected(Config, [general(), "[[host_config]]\n"
                                        "[host_config.outgoing_pools.redis.my_pool]\n"],
                    "host_config.outgoing_pools.redis.my_pool",
                    #{text => ?NOT_PROCESSED, reason => function_clause}),
    Both = parse_text(Config, [general(), "[[host_config]]\nhost = \"elsewhere.com\"\n"
                                          "host_type = \"localhost\"\n"
                                          "[host_config.modules.mod_event_pusher]\n"]),
    ?assertEqual(#{mod_event_pusher => #{}}, opt({modules, ?HT}, Both)).

%% With host types, every module configured must support dynamic domains (all event
%% pusher modules do: see host_config/1); this callback module does not. MongooseIM
%% checks the whole document (path "").
static_module_under_host_types(Config) ->
    assert_rejected(Config, "[general]\nhost_types = [\"dyn\"]\n"
                            "default_server_domain = \"dyn.com\"\n"
                            "[modules.mod_event_pusher_http_custom]\n",
                    "",
                    #{text => "Dynamic modules not supported by the specified authentication "
                              "methods and/or extension modules",
                      reason => dynamic_domains_not_supported, unsupported_auth_methods => [],
                      unsupported_modules => [mod_event_pusher_http_custom]}).

%% Errors are collected from the whole file, not only the first one.
all_errors_are_reported(Config) ->
    Errors = config_errors(Config, [general(), "[modules.mod_event_pusher.sns]\n"
                                               "pool_size = 0\n"
                                               "[modules.mod_event_pusher.push]\n"
                                               "backend = \"redis\"\n"]),
    ?assertEqual([{"modules.mod_event_pusher.push.backend", module_not_found},
                  {"modules.mod_event_pusher.sns", missing_mandatory_keys}],
                 lists:sort([{Path, Reason} || #{toml_path := Path, reason := Reason} <- Errors])).

malformed_toml(Config) ->
    File = filename:join(?config(data_dir, Config), "malformed.toml"),
    try mongoose_config_parser:parse_file(File) of
        Opts -> ct:fail({unexpectedly_accepted, Opts})
    catch
        error:{config_error, "Could not read the TOML configuration file",
               [#{what := toml_parsing_failed, text := Text} = Error]} ->
            ?assertEqual([text, what], lists:sort(maps:keys(Error))),
            ?assertMatch({match, _}, re:run(Text, "line 5, column"), Text)
    end.

%%--------------------------------------------------------------------
%% Options that bypassed the parser, at run time
%%--------------------------------------------------------------------

%% The pool's connection.host is MongooseIM's option (its spec wants a non-empty
%% string only): the http module parses it at start and fails naming it.
http_pool_bad_host_fails_the_start(_Config) ->
    log_guard:expect(#{what => module_start_failed, module => mod_event_pusher_http}),
    [begin
         Pool = #{type => http, scope => global, tag => http_pool,
                  opts => #{workers => 5, strategy => best_worker, call_timeout => 5000},
                  conn_opts => #{host => Host, path_prefix => <<"/">>, request_timeout => 2000}},
         ?assertError(#{what := event_pusher_http_start_failed, pool_name := http_pool,
                        reason := #{what := invalid_url, cause := Cause,
                                    option := <<"outgoing_pools.http.http_pool.connection.host">>}},
                      mongoose_host:start(runtime_opts([Pool], #{mod_event_pusher_http =>
                                                                     #{handlers => [#{}]}}))),
         ?assertEqual(undefined, mod_event_pusher_instance:instance(?HT, {http, http_pool}))
     end || {Host, Cause} <- [{"http://[::1", <<"not a valid URL">>},
                              {"ftp://x", <<"the scheme must be http or https">>},
                              {"localhost:8000", <<"the scheme must be http or https">>}]].

%% mongoose_modules:ensure_started/3 passes on any option map: whatever the drain
%% timeout (2^32 ms and more used to crash the stop in gen_server's wait and leave the
%% instance draining), the module delivers, then stops, and its instance is gone.
stop_survives_any_drain_timeout(_Config) ->
    Listener = test_http_listener:start(),
    Pool = #{type => http, scope => global, tag => http_pool,
             opts => #{workers => 5, strategy => best_worker, call_timeout => 5000},
             conn_opts => #{host => "http://127.0.0.1:" ++ integer_to_list(
                                                           test_http_listener:port(Listener)),
                            path_prefix => <<"/">>, request_timeout => 2000}},
    try
        ok = mongoose_host:start(runtime_opts([Pool], #{})),
        [begin
             Opts = #{handlers => [#{pool_name => http_pool, path => <<"events">>,
                                     callback_module => mod_event_pusher_http_defaults}],
                      drain_timeout_ms => Drain},
             {started, _} = mongoose_modules:ensure_started(?HT, mod_event_pusher_http, Opts),
             Instance = mod_event_pusher_instance:instance(?HT, {http, http_pool}),
             ?assertNotEqual(undefined, Instance),
             Body = iolist_to_binary(io_lib:format("drain ~p", [Drain])),
             send_chat(Body),
             {ok, [#{body := Sent}]} = test_http_listener:wait_for_requests(Listener, 1, 10000),
             ?assertEqual([Body], [V || {<<"message">>, V} <- uri_string:dissect_query(Sent)]),
             ?assertMatch({stopped, _},
                          test_wait:bounded(fun() -> mongoose_modules:ensure_stopped(
                                                       ?HT, mod_event_pusher_http) end, 20000)),
             ?assertEqual(undefined, mod_event_pusher_instance:instance(?HT, {http, http_pool})),
             ?assertEqual({error, stopped}, mod_event_pusher_nif:push(Instance, #http_event{
                                                                   path = <<>>, headers = [],
                                                                   body = <<>>, tag = <<"x">>})),
             test_http_listener:clear(Listener)
         end || Drain <- [1 bsl 32, 1 bsl 32 - 1, 1 bsl 40, 1 bsl 64, -1, infinity, <<"5000">>]],
        ?assertMatch([_, _], log_guard:logged(event_pusher_bad_drain_timeout))
    after
        test_wait:bounded(fun mongoose_host:stop/0, 20000),
        test_http_listener:stop(Listener)
    end.

runtime_opts(Pools, Modules) ->
    [{hosts, [?HT]}, {host_types, []}, {default_server_domain, ?HT}, {outgoing_pools, Pools},
     {{modules, ?HT}, Modules}].

send_chat(Body) ->
    From = <<"alice@localhost/r">>,
    To = <<"bob@localhost">>,
    Packet = hook_driver:message(From, To, <<"chat">>, hook_driver:body(Body)),
    Event = #chat_event{type = chat, direction = in, from = jid:from_binary(From),
                        to = jid:from_binary(To), packet = Packet},
    mod_event_pusher_http:push_event(hook_driver:acc(?HT, From, To, Packet), Event).

%%--------------------------------------------------------------------
%% The TOML reader and module dependencies
%%--------------------------------------------------------------------

toml_values(Config) ->
    File = write(Config, "toml_values",
                 <<"text = \"zażółć 🎉 \\\"q\\\"\"\n"
                   "empty = \"\"\n"
                   "int = -9007199254740993\n"
                   "floats = [1.5, 1e10, -2.5e-7, 0.0]\n"
                   "when = 1979-05-27T07:32:00Z\n"
                   "nested = [[1, 2], [\"a\"]]\n"
                   "[[tables]]\n"
                   "[[tables]]\n"
                   "x.y = true\n"/utf8>>),
    ?assertEqual({ok, #{<<"text">> => <<"zażółć 🎉 \"q\""/utf8>>,
                        <<"empty">> => <<>>,
                        <<"int">> => -9007199254740993,
                        <<"floats">> => [1.5, 1.0e10, -2.5e-7, 0.0],
                        <<"when">> => <<"1979-05-27T07:32:00Z">>,
                        <<"nested">> => [[1, 2], [<<"a">>]],
                        <<"tables">> => [#{}, #{<<"x">> => #{<<"y">> => true}}]}},
                 tomerl:read_file(File)),
    ?assertMatch({error, {toml_error, _}},
                 tomerl:read_file(write(Config, "bad_float", <<"x = inf\n">>))),
    ?assertMatch({error, {toml_error, _}},
                 tomerl:read_file(filename:join(?config(priv_dir, Config), "missing.toml"))).

%% mod_event_pusher's backends are its hard deps: they get their own entries with
%% the same options, merged with options given to them directly.
resolve_deps(_Config) ->
    Sns = sns_required(),
    ?assertEqual(#{mod_event_pusher => #{sns => Sns}, mod_event_pusher_sns => Sns},
                 gen_mod_deps:resolve_deps(?HT, #{mod_event_pusher => #{sns => Sns}})),
    Direct = #{pool_size => 5, extra => true},
    ?assertEqual(#{mod_event_pusher => #{sns => Sns},
                   mod_event_pusher_sns => maps:merge(Direct, Sns)},
                 gen_mod_deps:resolve_deps(?HT, #{mod_event_pusher => #{sns => Sns},
                                                  mod_event_pusher_sns => Direct})),
    generated_module(cfg_dep_a, [{cfg_dep_b, #{x => 1}, hard}, {service, service_x}]),
    generated_module(cfg_dep_b, [{cfg_dep_c, soft}]),
    generated_module(cfg_dep_c, []),
    ?assertEqual(#{cfg_dep_a => #{}, cfg_dep_b => #{x => 1, y => 2}, cfg_dep_c => #{}},
                 gen_mod_deps:resolve_deps(?HT, #{cfg_dep_a => #{}, cfg_dep_b => #{y => 2}})).

%% An optional dep is added only when something else requires it.
resolve_deps_optional(_Config) ->
    generated_module(cfg_opt_a, [{cfg_opt_c, #{from_a => 1}, optional}]),
    generated_module(cfg_opt_b, [{cfg_opt_c, #{from_b => 2}, hard}]),
    generated_module(cfg_opt_c, []),
    ?assertEqual(#{cfg_opt_a => #{}},
                 gen_mod_deps:resolve_deps(?HT, #{cfg_opt_a => #{}})),
    ?assertEqual(#{cfg_opt_a => #{}, cfg_opt_b => #{},
                   cfg_opt_c => #{from_a => 1, from_b => 2}},
                 gen_mod_deps:resolve_deps(?HT, #{cfg_opt_a => #{}, cfg_opt_b => #{}})).

sort_deps(_Config) ->
    Modules = gen_mod_deps:resolve_deps(?HT, #{mod_event_pusher => #{sns => sns_required(),
                                                                     rabbit => rabbit_defaults()}}),
    ?assertEqual([mod_event_pusher_rabbit, mod_event_pusher_sns, mod_event_pusher],
                 [M || {M, _} <- gen_mod_deps:sort_deps(?HT, Modules)]),
    generated_module(cfg_sort_a, [{cfg_sort_b, hard}]),
    generated_module(cfg_sort_b, [{cfg_sort_c, soft}]),
    generated_module(cfg_sort_c, []),
    ?assertEqual([{cfg_sort_c, #{c => 1}}, {cfg_sort_b, #{}}, {cfg_sort_a, #{}}],
                 gen_mod_deps:sort_deps(?HT, #{cfg_sort_a => #{}, cfg_sort_b => #{},
                                               cfg_sort_c => #{c => 1}})).

%% a needs b (hard), b would like a first (soft): the soft edge gives way.
sort_deps_breaks_soft_cycles(_Config) ->
    generated_module(cfg_cycle_a, [{cfg_cycle_b, hard}]),
    generated_module(cfg_cycle_b, [{cfg_cycle_a, soft}]),
    ?assertEqual([cfg_cycle_b, cfg_cycle_a],
                 [M || {M, _} <- gen_mod_deps:sort_deps(?HT, #{cfg_cycle_a => #{},
                                                               cfg_cycle_b => #{}})]).

sort_deps_rejects_hard_cycles(_Config) ->
    generated_module(cfg_hard_a, [{cfg_hard_b, hard}]),
    generated_module(cfg_hard_b, [{cfg_hard_a, hard}]),
    ?assertError(#{what := resolving_dependencies_aborted, modules := [cfg_hard_a, cfg_hard_b]},
                 gen_mod_deps:sort_deps(?HT, #{cfg_hard_a => #{}, cfg_hard_b => #{}})).

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

parse(Config, File) ->
    mongoose_config_parser:parse_file(filename:join(?config(data_dir, Config), File)).

parse_text(Config, Text) ->
    mongoose_config_parser:parse_file(write(Config, "config", Text)).

%% Each file gets its own name: the cases of a group run in parallel.
write(Config, Prefix, Text) ->
    Name = io_lib:format("~s_~p.toml", [Prefix, erlang:unique_integer([positive])]),
    File = filename:join(?config(priv_dir, Config), lists:flatten(Name)),
    ok = file:write_file(File, Text),
    File.

opt(Key, Opts) ->
    {Key, Value} = lists:keyfind(Key, 1, Opts),
    Value.

general() ->
    "[general]\nhosts = [\"localhost\"]\ndefault_server_domain = \"localhost\"\n".

%% The backend's processed options appear under mod_event_pusher and, through
%% deps, as the backend module's own options; nothing else is configured.
assert_backend(Backend, Expected, Opts) ->
    ?assertEqual([{host_types, []}, {hosts, [?HT]}, {loglevel, warning}],
                 [Opt || {Key, _} = Opt <- Opts, lists:member(Key, [host_types, hosts, loglevel])]),
    ?assertEqual(backend_modules(Backend, Expected), opt({modules, ?HT}, Opts)).

backend_modules(Backend, Opts) ->
    #{mod_event_pusher => #{Backend => Opts},
      list_to_atom("mod_event_pusher_" ++ atom_to_list(Backend)) => Opts}.

%% MongooseIM's keys must match exactly; the additive keys must be the three
%% known ones with their defaults, whatever MongooseIM options are set (they are
%% compared with those of an empty http section).
assert_http_modules(ExpectedMIM, Modules) ->
    #{mod_event_pusher := #{http := Http} = EventPusher, mod_event_pusher_http := Http} = Modules,
    ?assertEqual([mod_event_pusher, mod_event_pusher_http], lists:sort(maps:keys(Modules))),
    ?assertEqual([http], maps:keys(EventPusher)),
    ?assertEqual(ExpectedMIM, maps:with(maps:keys(ExpectedMIM), Http)),
    ?assertEqual(lists:sort(maps:keys(ExpectedMIM) ++ ?HTTP_ADDITIVE_KEYS),
                 lists:sort(maps:keys(Http))),
    ?assertEqual(http_additive_defaults(), maps:without(maps:keys(ExpectedMIM), Http)).

http_additive_defaults() ->
    Opts = mongoose_config_parser:process(#{<<"general">> => #{<<"hosts">> => [?HT],
                                                               <<"default_server_domain">> => ?HT},
                                            <<"modules">> => #{<<"mod_event_pusher">> =>
                                                                   #{<<"http">> => #{}}}}),
    #{mod_event_pusher_http := Http} = opt({modules, ?HT}, Opts),
    maps:with(?HTTP_ADDITIVE_KEYS, Http).

push_defaults() ->
    maps:merge(#{iqdisc => one_queue, backend => mnesia, wpool => wpool(#{}),
                 plugin_module => mod_event_pusher_push_plugin_defaults,
                 virtual_pubsub_hosts => []},
               push_additive_defaults()).

push_additive_defaults() ->
    #{publish_timeout_ms => 32000, drain_timeout_ms => 5000,
      queue => #{max_events => 10000, max_bytes => 16777216, overflow => drop_newest}}.

push_defaults(Overrides) ->
    maps:merge(push_defaults(), Overrides).

wpool(Overrides) ->
    maps:merge(#{workers => 10, strategy => available_worker, call_timeout => 5000}, Overrides).

default_pool_opts() ->
    #{workers => 10, strategy => best_worker, call_timeout => 5000}.

rabbit_connection_defaults() ->
    #{host => "localhost", port => 5672, username => <<"guest">>, password => <<"guest">>,
      confirms_enabled => false, max_worker_queue_len => 1000}.

%% MongooseIM 6.4's processed rabbit options, plus our additions with their defaults:
%% `durable' in each exchange, and the connection, reconnect, confirm, queue, retry
%% and drain options.
rabbit_defaults() ->
    maps:merge(rabbit_mongooseim_defaults(), rabbit_additive_defaults()).

rabbit_mongooseim_defaults() ->
    #{presence_exchange => #{name => <<"presence">>, type => <<"topic">>, durable => false},
      chat_msg_exchange => #{name => <<"chat_msg">>, type => <<"topic">>, durable => false,
                             sent_topic => <<"chat_msg_sent">>, recv_topic => <<"chat_msg_recv">>},
      groupchat_msg_exchange => #{name => <<"groupchat_msg">>, type => <<"topic">>,
                                  durable => false,
                                  sent_topic => <<"groupchat_msg_sent">>,
                                  recv_topic => <<"groupchat_msg_recv">>}}.

rabbit_additive_defaults() ->
    #{connection => #{virtual_host => <<"/">>, connect_timeout_ms => 5000},
      reconnect => #{base_delay_ms => 100, max_delay_ms => 10000},
      confirm_window => 1000, confirm_timeout_ms => 5000, drain_timeout_ms => 5000,
      max_message_bytes => 134217728,
      queue => #{max_events => 10000, max_bytes => 16777216, overflow => drop_newest},
      retry => #{max_attempts => 3, base_backoff_ms => 100, max_backoff_ms => 5000,
                 deadline_ms => 30000}}.

sns_required() ->
    maps:merge(sns_mongooseim_required(), sns_additive_defaults()).

sns_additive_defaults() ->
    #{batching => true, request_timeout_ms => 5000, drain_timeout_ms => 5000,
      queue => #{max_events => 10000, max_bytes => 16777216, overflow => drop_newest}}.

sns_mongooseim_required() ->
    #{sns_host => "sns.eu-west-1.amazonaws.com", region => "eu-west-1",
      access_key_id => "AKIAIOSFODNN7EXAMPLE",
      secret_access_key => "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
      account_id => "123456789012",
      plugin_module => mod_event_pusher_sns_defaults, pool_size => 100,
      publish_retry_count => 2, publish_retry_time_ms => 50}.

%% The required sns keys as TOML values (strings or, for bad cases, integers).
sns_required_toml() ->
    maps:with([sns_host, region, access_key_id, secret_access_key, account_id],
              sns_mongooseim_required()).

sns_lines(Map) ->
    [[atom_to_list(Key), " = ", toml_literal(Value), "\n"] || {Key, Value} <- maps:to_list(Map)].

toml_literal(Value) when is_integer(Value) -> integer_to_list(Value);
toml_literal(Value) when is_list(Value) -> ["\"", Value, "\""].

%% The backend section `Body' must be rejected with one error at
%% `modules.mod_event_pusher.<Backend><PathSuffix>' (resp. host_config.modules...)
%% having the expected fields, both globally and in a host_config.
assert_module_rejected(Config, Backend, Body, PathSuffix, Expected) ->
    [assert_fields(Expected, Error) || Error <- module_errors(Config, Backend, Body, PathSuffix)],
    ok.

%% The error of the backend section `Body', globally and in a host_config: each must
%% be the only one, at its path.
module_errors(Config, Backend, Body, PathSuffix) ->
    Section = "mod_event_pusher." ++ atom_to_list(Backend),
    [rejected(Config, [general(), "[modules.", Section, "]\n", Body],
              "modules." ++ Section ++ PathSuffix),
     rejected(Config, [general(), "[[host_config]]\nhost = \"localhost\"\n",
                       "[host_config.modules.", Section, "]\n", Body],
              "host_config.modules." ++ Section ++ PathSuffix)].

assert_rejected(Config, Text, TomlPath, Expected) ->
    assert_fields(Expected, rejected(Config, Text, TomlPath)).

%% Expected names the reason (at least) and the fields that tell the failure apart; an
%% error whose text is not expected must still be one of the parser's own.
assert_fields(Expected, Error) ->
    ?assert(is_map_key(reason, Expected), {expectation_without_reason, Expected}),
    ?assertEqual(Expected, maps:with(maps:keys(Expected), Error), {unexpected_error, Error}),
    case Expected of
        #{text := _} -> ok;
        #{} -> ?assertMatch("TOML configuration error: " ++ _, maps:get(text, Error))
    end.

%% The one error the configuration Text gives, which must be at TomlPath.
rejected(Config, Text, TomlPath) ->
    case config_errors(Config, Text) of
        [#{class := error, what := toml_processing_failed, toml_path := TomlPath} = Error] ->
            Error;
        Errors ->
            ct:fail({unexpected_errors, Errors, {expected_at, TomlPath}, iolist_to_binary(Text)})
    end.

config_errors(Config, Text) ->
    try parse_text(Config, Text) of
        Opts -> ct:fail({unexpectedly_accepted, iolist_to_binary(Text), Opts})
    catch
        error:{config_error, "Could not read the TOML configuration file", Errors} -> Errors
    end.

%% A module whose deps/2 returns Deps, loaded from generated code.
generated_module(Name, Deps) ->
    Forms = [{attribute, 1, module, Name},
             {attribute, 1, export, [{deps, 2}]},
             {function, 1, deps, 2,
              [{clause, 1, [{var, 1, '_'}, {var, 1, '_'}], [], [erl_parse:abstract(Deps)]}]}],
    {ok, Name, Beam} = compile:forms(Forms),
    {module, Name} = code:load_binary(Name, atom_to_list(Name) ++ ".erl", Beam).
