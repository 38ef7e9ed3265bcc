%% The rdbms backend of XEP-0357 registrations (mod_event_pusher_push_rdbms) on a
%% REAL PostgreSQL, through the stand-in's mongoose_rdbms (native/pg_port):
%% - stand_in: mongoose_rdbms itself (placeholders, parameter and result types,
%%   error shapes, prepare semantics, reconnection);
%% - backend: the backend through mod_event_pusher_push_backend, with the rows
%%   checked in PostgreSQL against MongooseIM's schema and column values;
%% - end_to_end: mod_event_pusher_push started from TOML with `backend = "rdbms"',
%%   registrations made with IQs, notifications published from them.
%%
%% Each run works in a fresh schema (push_rdbms_<pid>_<time>, dropped at the end)
%% holding the table of priv/pg.sql: the connection's search_path names it. The
%% database is mongoose_rdbms:default_conninfo/0 (PG_CONNINFO, key=value form,
%% overrides it); when it cannot be reached the suite FAILS (`make postgres'
%% starts a server).
-module(push_rdbms_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("jlib.hrl").

-import(push_client, [enable/3, disable/2, form/3, summary/1, field/3, el/3, iq_type/1,
                      error_of/1, service/2, publishes/0]).

-define(HT, <<"localhost">>).
-define(LABELS, #{host_type => ?HT}).
-define(PUBSUB, <<"pubsub.push.example">>).
-define(ALICE, <<"alice@localhost/phone">>).
-define(BOB, <<"bob@localhost/pc">>).
-define(NS_PUBSUB_OPTIONS, <<"http://jabber.org/protocol/pubsub#publish-options">>).
-define(QUERIES, [event_pusher_push_insert, event_pusher_push_select, event_pusher_push_delete,
                  event_pusher_push_delete_pubsub_jid, event_pusher_push_delete_node]).

all() ->
    [{group, stand_in}, {group, backend}, {group, end_to_end}].

groups() ->
    [{stand_in, [], [placeholders_are_numbered,
                     params_and_cells,
                     errors_are_returned_or_raised,
                     prepare_keeps_the_first_query,
                     reconnects_after_the_connection_is_lost,
                     not_started_is_an_error]},
     {backend, [], [schema_is_mongooseim_s,
                    init_prepares_mongooseim_s_queries,
                    enable_get_and_disable,
                    enable_replaces_the_same_node,
                    forms_round_trip,
                    rows_hold_mongooseim_s_values,
                    rows_written_by_mongooseim_are_read,
                    calls_are_instrumented,
                    errors_are_returned]},
     {end_to_end, [], [enable_and_disable_via_iq,
                       offline_recipient_gets_a_publish,
                       cancel_error_deletes_the_row,
                       remove_user_clears_registrations,
                       registrations_survive_a_module_restart]}].

suite() ->
    [{timetrap, {seconds, 60}}].

init_per_suite(Config) ->
    ok = mongoose_rdbms:stop(),
    Base = mongoose_rdbms:default_conninfo(),
    Schema = "push_rdbms_" ++ os:getpid() ++ "_" ++ integer_to_list(erlang:system_time(millisecond)),
    ok = start_rdbms(Base),
    {updated, _} = mongoose_rdbms:sql_query(global, ["CREATE SCHEMA ", Schema]),
    ok = mongoose_rdbms:stop(),
    ConnInfo = Base ++ " options='-c search_path=" ++ Schema ++ "'",
    ok = start_rdbms(ConnInfo),
    ok = create_table(),
    ct:log("PostgreSQL: ~s", [ConnInfo]),
    [{schema, Schema}, {conninfo, ConnInfo} | Config].

end_per_suite(Config) ->
    catch mongoose_host:stop(),
    Result = mongoose_rdbms:sql_query(global, ["DROP SCHEMA ", ?config(schema, Config), " CASCADE"]),
    ok = mongoose_rdbms:stop(),
    {updated, _} = Result,
    ok.

init_per_group(backend, Config) ->
    mongoose_host:start([{hosts, [?HT]}]),
    ok = mod_event_pusher_push_backend:init(?HT, #{backend => rdbms}),
    Config;
init_per_group(_Group, Config) ->
    Config.

end_per_group(backend, _Config) ->
    mongoose_host:stop();
end_per_group(_Group, _Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    {updated, _} = mongoose_rdbms:sql_query(global, "DELETE FROM event_pusher_push_subscription"),
    Config.

end_per_testcase(Case, _Config) ->
    case lists:member(Case, element(3, lists:keyfind(end_to_end, 1, groups()))) of
        true -> test_wait:cleanup(fun mongoose_host:stop/0, 15000);
        false -> ok
    end.

%%% mongoose_rdbms (the stand-in)

placeholders_are_numbered(_Config) ->
    ?assertEqual(<<"SELECT 1">>, mongoose_rdbms:to_dollar_placeholders(<<"SELECT 1">>)),
    ?assertEqual(<<"a = $1 AND b = $2">>, mongoose_rdbms:to_dollar_placeholders(<<"a = ? AND b = ?">>)),
    ?assertEqual(<<"$1$2">>, mongoose_rdbms:to_dollar_placeholders(<<"??">>)),
    {ok, push_rdbms_suite_add} = mongoose_rdbms:prepare(push_rdbms_suite_add, none, [a, b],
                                                       ["SELECT ?::int + ", <<"?::int">>]),
    ?assertEqual({selected, [{5}]}, mongoose_rdbms:execute(?HT, push_rdbms_suite_add, [2, 3])).

params_and_cells(_Config) ->
    {updated, 0} = mongoose_rdbms:sql_query(
                     global, "CREATE TABLE stand_in_types (t TEXT, v VARCHAR(10), i INT, s SMALLINT,"
                             " b BIGINT, f DOUBLE PRECISION, ok BOOLEAN, j JSON, jb JSONB, by BYTEA,"
                             " n TEXT)"),
    try
        {ok, _} = mongoose_rdbms:prepare(push_rdbms_suite_types_insert, stand_in_types,
                                         [t, v, i, s, b, f, ok, j, jb, by, n],
                                         "INSERT INTO stand_in_types VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        {ok, _} = mongoose_rdbms:prepare(push_rdbms_suite_types_select, stand_in_types, [],
                                         "SELECT * FROM stand_in_types ORDER BY i"),
        Text = <<"é ✓ 𝄞 'quoted' \"double\" \\ ?"/utf8>>,
        Big = 1 bsl 62,
        ?assertEqual({updated, 1},
                     mongoose_rdbms:execute(global, push_rdbms_suite_types_insert,
                                            [Text, <<"v">>, -5, 7, Big, 2.5, true,
                                             <<"{\"k\": \"é\"}"/utf8>>, <<"{\"k\": \"é\"}"/utf8>>,
                                             <<"\\xdeadbeef">>, null])),
        ?assertEqual({updated, 1},
                     mongoose_rdbms:execute(global, push_rdbms_suite_types_insert,
                                            [<<>>, undefined, 6, null, null, null, false, null,
                                             null, null, undefined])),
        ?assertEqual({selected, [{Text, <<"v">>, -5, 7, Big, 2.5, true, <<"{\"k\": \"é\"}"/utf8>>,
                                  <<"{\"k\": \"é\"}"/utf8>>, <<16#de, 16#ad, 16#be, 16#ef>>, null},
                                 {<<>>, null, 6, null, null, null, false, null, null, null, null}]},
                     mongoose_rdbms:execute(global, push_rdbms_suite_types_select, [])),
        %% The simple protocol: every cell is text.
        ?assertEqual({selected, [{<<"-5">>, integer_to_binary(Big), <<"t">>, <<"\\xdeadbeef">>}]},
                     mongoose_rdbms:sql_query(global, "SELECT i, b, ok, by FROM stand_in_types"
                                                      " WHERE i < 0")),
        ?assertEqual({selected, []},
                     mongoose_rdbms:sql_query(global, "SELECT * FROM stand_in_types WHERE false")),
        ?assertEqual({updated, 2}, mongoose_rdbms:sql_query(global, "UPDATE stand_in_types SET n = 'x'")),
        ?assertEqual({updated, 0},
                     mongoose_rdbms:sql_query(global, "DELETE FROM stand_in_types WHERE i = 0"))
    after
        {updated, 0} = mongoose_rdbms:sql_query(global, "DROP TABLE stand_in_types")
    end.

errors_are_returned_or_raised(_Config) ->
    {ok, _} = mongoose_rdbms:prepare(push_rdbms_suite_two, none, [a, b], "SELECT ?::int, ?::text"),
    {ok, _} = mongoose_rdbms:prepare(push_rdbms_suite_numeric, none, [], "SELECT 1.5::numeric AS x"),
    ?assertEqual({error, {statement_not_prepared, push_rdbms_suite_nope}},
                 mongoose_rdbms:execute(?HT, push_rdbms_suite_nope, [])),
    [?assertEqual({error, {bad_param, 2, Bad}},
                  mongoose_rdbms:execute(?HT, push_rdbms_suite_two, [1, Bad]))
     || Bad <- [<<255>>, foo, "list", {1}]],
    ?assertEqual({error, <<"the statement has 2 parameters, 1 given">>},
                 mongoose_rdbms:execute(?HT, push_rdbms_suite_two, [1])),
    ?assertMatch({error, <<"ERROR 22P02: invalid input syntax for type integer", _/binary>>},
                 mongoose_rdbms:execute(?HT, push_rdbms_suite_two, [<<"x">>, <<"y">>])),
    {error, Unsupported} = mongoose_rdbms:execute(?HT, push_rdbms_suite_numeric, []),
    ?assertMatch({_, _}, binary:match(Unsupported, <<"numeric">>)),
    ?assertMatch({error, <<"ERROR 42601: syntax error", _/binary>>},
                 mongoose_rdbms:sql_query(?HT, "SELEC 1")),
    ?assertMatch({error, <<"ERROR 42P01: relation \"no_such_table\" does not exist">>},
                 mongoose_rdbms:sql_query(?HT, "SELECT * FROM no_such_table")),
    %% execute_successfully/3 logs and raises what MongooseIM's raises.
    log_guard:expect(#{what => sql_execute_failed, statement_name => push_rdbms_suite_two}),
    ?assertError(#{what := sql_execute_failed, host := ?HT, statement_name := push_rdbms_suite_two,
                   statement_query := <<"SELECT ?::int, ?::text">>,
                   statement_params := [<<"x">>, <<"y">>],
                   reason := {error, <<"ERROR 22P02", _/binary>>}},
                 mongoose_rdbms:execute_successfully(?HT, push_rdbms_suite_two, [<<"x">>, <<"y">>])),
    ?assertEqual({selected, [{1, <<"a">>}]},
                 mongoose_rdbms:execute_successfully(?HT, push_rdbms_suite_two, [1, <<"a">>])),
    %% A duplicate key, with the server's detail.
    {updated, 0} = mongoose_rdbms:sql_query(?HT, "CREATE TABLE stand_in_keys (k INT PRIMARY KEY)"),
    try
        {ok, _} = mongoose_rdbms:prepare(push_rdbms_suite_key, stand_in_keys, [k],
                                         "INSERT INTO stand_in_keys VALUES (?)"),
        {updated, 1} = mongoose_rdbms:execute(?HT, push_rdbms_suite_key, [1]),
        ?assertEqual({error, <<"ERROR 23505: duplicate key value violates unique constraint"
                               " \"stand_in_keys_pkey\" (Key (k)=(1) already exists.)">>},
                     mongoose_rdbms:execute(?HT, push_rdbms_suite_key, [1]))
    after
        {updated, 0} = mongoose_rdbms:sql_query(?HT, "DROP TABLE stand_in_keys")
    end,
    %% The connection survives errors.
    ?assertEqual({selected, [{<<"1">>}]}, mongoose_rdbms:sql_query(?HT, "SELECT 1")).

prepare_keeps_the_first_query(_Config) ->
    ?assertEqual({ok, push_rdbms_suite_first},
                 mongoose_rdbms:prepare(push_rdbms_suite_first, <<"t">>, [<<"a">>], <<"SELECT 1">>)),
    ?assertEqual({error, already_exists},
                 mongoose_rdbms:prepare(push_rdbms_suite_first, t, [a], <<"SELECT 2">>)),
    ?assertEqual({selected, [{1}]}, mongoose_rdbms:execute(global, push_rdbms_suite_first, [])).

reconnects_after_the_connection_is_lost(Config) ->
    {ok, _} = mongoose_rdbms:prepare(push_rdbms_suite_pid, none, [], "SELECT pg_backend_pid()"),
    {selected, [{Pid}]} = mongoose_rdbms:execute(?HT, push_rdbms_suite_pid, []),
    %% (the driver reports the server's FATAL 57P01 as "connection closed")
    ?assertMatch({error, <<_/binary>>},
                 mongoose_rdbms:sql_query(?HT, "SELECT pg_terminate_backend(pg_backend_pid())")),
    {selected, [{NewPid}]} = mongoose_rdbms:execute(?HT, push_rdbms_suite_pid, []),
    ?assertNotEqual(Pid, NewPid),
    %% The new connection has the conninfo's settings.
    Schema = list_to_binary(?config(schema, Config)),
    ?assertEqual({selected, [{Schema}]}, mongoose_rdbms:sql_query(?HT, "SELECT current_schema()")).

not_started_is_an_error(Config) ->
    ok = mongoose_rdbms:stop(),
    try
        ?assertEqual({error, mongoose_rdbms_not_started},
                     mongoose_rdbms:execute(?HT, push_rdbms_suite_first, [])),
        ?assertEqual({error, mongoose_rdbms_not_started}, mongoose_rdbms:sql_query(?HT, "SELECT 1")),
        ?assertError(#{what := mongoose_rdbms_not_started},
                     mongoose_rdbms:prepare(push_rdbms_suite_first, t, [], "SELECT 1")),
        %% (on OTP 25 a gen_server whose init stops leaves a crash report)
        log_guard:expect({crash, mongoose_rdbms}),
        ?assertMatch({error, {connect_failed, <<_/binary>>}},
                     mongoose_rdbms:start("host=127.0.0.1 port=1 user=nobody connect_timeout=5")),
        ?assertEqual(undefined, whereis(mongoose_rdbms))
    after
        ok = mongoose_rdbms:start(?config(conninfo, Config))
    end,
    %% Prepared queries went with the server.
    ?assertEqual({error, {statement_not_prepared, push_rdbms_suite_first}},
                 mongoose_rdbms:execute(?HT, push_rdbms_suite_first, [])).

%%% The backend

schema_is_mongooseim_s(_Config) ->
    Column = fun(Name, Type, Length) -> {Name, Type, Length, <<"NO">>} end,
    ?assertEqual({selected, [Column(<<"owner_jid">>, <<"character varying">>, <<"250">>),
                             Column(<<"node">>, <<"character varying">>, <<"250">>),
                             Column(<<"pubsub_jid">>, <<"character varying">>, <<"250">>),
                             Column(<<"form">>, <<"json">>, null),
                             Column(<<"created_at">>, <<"bigint">>, null)]},
                 mongoose_rdbms:sql_query(
                   global, "SELECT column_name, data_type, character_maximum_length, is_nullable"
                           " FROM information_schema.columns WHERE table_schema = current_schema()"
                           " AND table_name = 'event_pusher_push_subscription'"
                           " ORDER BY ordinal_position")),
    ?assertEqual({selected, [{<<"owner_jid">>}, {<<"node">>}, {<<"pubsub_jid">>}]},
                 mongoose_rdbms:sql_query(
                   global, "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                           " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                           " WHERE i.indrelid = 'event_pusher_push_subscription'::regclass"
                           " AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)")),
    {selected, [{IndexDef}]} =
        mongoose_rdbms:sql_query(
          global, "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                  " AND indexname = 'i_event_pusher_push_subscription'"),
    ?assertMatch({_, _}, binary:match(IndexDef, <<"event_pusher_push_subscription USING btree (owner_jid)">>)).

init_prepares_mongooseim_s_queries(_Config) ->
    Owner = <<"alice@localhost">>,
    P = fun(Name, Params) -> mongoose_rdbms:execute_successfully(?HT, Name, Params) end,
    ?assertEqual({updated, 1}, P(event_pusher_push_insert, [Owner, <<"n1">>, ?PUBSUB, <<"{}">>, 1])),
    ?assertEqual({updated, 1}, P(event_pusher_push_insert, [Owner, <<"n2">>, ?PUBSUB, <<"{}">>, 2])),
    ?assertEqual({updated, 1}, P(event_pusher_push_insert, [Owner, <<"n1">>, <<"other">>, <<"{}">>, 3])),
    {selected, Rows} = P(event_pusher_push_select, [Owner]),
    ?assertEqual([{<<"n1">>, <<"other">>, <<"{}">>}, {<<"n1">>, ?PUBSUB, <<"{}">>},
                  {<<"n2">>, ?PUBSUB, <<"{}">>}], lists:sort(Rows)),
    ?assertEqual({updated, 1}, P(event_pusher_push_delete_node, [Owner, <<"n1">>, ?PUBSUB])),
    ?assertEqual({updated, 1}, P(event_pusher_push_delete_pubsub_jid, [Owner, ?PUBSUB])),
    ?assertEqual({updated, 1}, P(event_pusher_push_delete, [Owner])),
    ?assertEqual({selected, []}, P(event_pusher_push_select, [Owner])),
    %% Initialising again (another host type, a restart) keeps them.
    ?assertEqual(ok, mod_event_pusher_push_backend:init(?HT, #{backend => rdbms})),
    ?assertEqual(ok, mod_event_pusher_push_backend:init(<<"other.host">>, #{backend => rdbms})),
    [?assertEqual({error, already_exists}, mongoose_rdbms:prepare(Name, t, [], "SELECT 1"))
     || Name <- ?QUERIES].

enable_get_and_disable(_Config) ->
    push_storage_contract:enable_get_and_disable(?HT),
    ?assertEqual([{<<"bob@localhost">>, <<"n1">>, <<"pubsub1.remote.example">>}],
                 [{O, N, P} || {O, N, P, _, _} <- rows()]).

enable_replaces_the_same_node(_Config) ->
    Alice = alice(),
    ok = mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1), <<"n">>, #{<<"a">> => <<"1">>}),
    %% An old registration: the new one must be a new row (MongooseIM deletes, then
    %% inserts with the current time).
    Created1 = 1700000000000000,
    {updated, 1} = mongoose_rdbms:sql_query(?HT, ["UPDATE event_pusher_push_subscription"
                                                  " SET created_at = ", integer_to_list(Created1)]),
    ok = mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1), <<"n">>, #{<<"a">> => <<"2">>}),
    ok = mod_event_pusher_push_backend:enable(?HT, jid:to_bare(Alice), pubsub(1), <<"n">>,
                                              #{<<"a">> => <<"2">>}),
    ?assertEqual([{pubsub_jid(1), <<"n">>, #{<<"a">> => <<"2">>}}], services(Alice)),
    [{<<"alice@localhost">>, <<"n">>, <<"pubsub1.remote.example">>, <<"{\"a\":\"2\"}">>, Created3}] =
        rows(),
    ?assert(Created3 > Created1).

forms_round_trip(_Config) ->
    Alice = alice(),
    Forms = [#{},
             #{<<"secret">> => <<"s3">>},
             #{<<"clé"/utf8>> => <<"värde ✓ 𝄞 日本語"/utf8>>, <<"emoji">> => <<"🙂"/utf8>>},
             #{<<"q">> => <<"\"quoted\" \\back\\ \n\t/ 'single' ?">>, <<"empty">> => <<>>,
               <<"">> => <<"empty key">>},
             maps:from_list([{integer_to_binary(I), binary:copy(<<"x">>, I)} || I <- lists:seq(1, 50)])],
    Nodes = [<<"node", (integer_to_binary(I))/binary>> || I <- lists:seq(1, length(Forms))],
    [ok = mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1), Node, Form)
     || {Node, Form} <- lists:zip(Nodes, Forms)],
    ?assertEqual([{pubsub_jid(1), Node, Form} || {Node, Form} <- lists:zip(Nodes, Forms)],
                 services(Alice)),
    %% In the database: the text MongooseIM 6.4 stores (jiffy 1.1's encoding of a small
    %% map: keys in reverse term order, UTF-8 as is, "/" not escaped) for the small
    %% forms...
    ?assertEqual([{<<"node1">>, <<"{}">>},
                  {<<"node2">>, <<"{\"secret\":\"s3\"}">>},
                  {<<"node3">>, <<"{\"emoji\":\"🙂\",\"clé\":\"värde ✓ 𝄞 日本語\"}"/utf8>>},
                  {<<"node4">>, <<"{\"q\":\"\\\"quoted\\\" \\\\back\\\\ \\n\\t/ 'single' ?\","
                                  "\"empty\":\"\",\"\":\"empty key\"}">>}],
                 [{Node, FormText} || {_, Node, _, FormText, _} <- rows(), Node =/= <<"node5">>]),
    %% ... and for every form, JSON objects that PostgreSQL itself reads as the pairs given.
    {selected, Pairs} = mongoose_rdbms:sql_query(
                          ?HT, "SELECT node, key, value FROM event_pusher_push_subscription,"
                               " json_each_text(form)"),
    ?assertEqual(lists:sort([{Node, K, V} || {Node, Form} <- lists:zip(Nodes, Forms),
                                             {K, V} <- maps:to_list(Form)]),
                 lists:sort(Pairs)),
    {selected, [{Value}]} = mongoose_rdbms:sql_query(
                              ?HT, "SELECT form->>'clé' FROM event_pusher_push_subscription"
                                   " WHERE node = 'node3'"),
    ?assertEqual(<<"värde ✓ 𝄞 日本語"/utf8>>, Value),
    %% Unicode in node and JIDs too.
    Unicode = jid:make(<<"żółw"/utf8>>, ?HT, <<"Ŕes"/utf8>>),
    UPubSub = jid:from_binary(<<"push@pubsub.żółw.example"/utf8>>),
    ok = mod_event_pusher_push_backend:enable(?HT, Unicode, UPubSub, <<"węzeł"/utf8>>, #{}),
    ?assertEqual([{bare_jid(<<"push">>, <<"pubsub.żółw.example"/utf8>>), <<"węzeł"/utf8>>, #{}}],
                 services(Unicode)),
    ?assertMatch([{<<"żółw@localhost"/utf8>>, <<"węzeł"/utf8>>,
                   <<"push@pubsub.żółw.example"/utf8>>, <<"{}">>, _}],
                 [Row || Row = {<<"ż"/utf8, _/binary>>, _, _, _, _} <- rows()]).

rows_hold_mongooseim_s_values(_Config) ->
    User = jid:make(<<"Alice">>, <<"LocalHost">>, <<"Phone">>),
    PubSub = jid:from_binary(<<"Push@PubSub.Remote.Example">>),
    Form = #{<<"token">> => <<"T0k">>, <<"secret">> => <<"s3">>},
    Before = os:system_time(microsecond),
    ok = mod_event_pusher_push_backend:enable(?HT, User, PubSub, <<"Node-1">>, Form),
    After = os:system_time(microsecond),
    [{Owner, Node, PubSubBin, FormText, CreatedAt}] = rows(),
    %% MongooseIM 6.4's row: owner_jid the normalised bare JID, the node as given,
    %% pubsub_jid the normalised JID, the form as jiffy 1.1 encodes it (keys in reverse
    %% order; verbatim in the JSON column), created_at in microseconds since the epoch.
    ?assertEqual({<<"alice@localhost">>, <<"Node-1">>, <<"push@pubsub.remote.example">>,
                  <<"{\"token\":\"T0k\",\"secret\":\"s3\"}">>},
                 {Owner, Node, PubSubBin, FormText}),
    ?assertEqual({selected, [{<<"T0k">>, <<"s3">>}]},
                 mongoose_rdbms:sql_query(?HT, "SELECT form->>'token', form->>'secret'"
                                               " FROM event_pusher_push_subscription")),
    ?assert(Before =< CreatedAt andalso CreatedAt =< After, {Before, CreatedAt, After}),
    ?assertEqual([{bare_jid(<<"push">>, <<"pubsub.remote.example">>), <<"Node-1">>,
                   #{<<"token">> => <<"T0k">>, <<"secret">> => <<"s3">>}}],
                 services(jid:make(<<"alice">>, <<"localhost">>, <<>>))).

%% A row as MongooseIM writes it (any JSON spacing) is read back.
rows_written_by_mongooseim_are_read(_Config) ->
    {updated, 2} = mongoose_rdbms:sql_query(
                     ?HT, <<"INSERT INTO event_pusher_push_subscription VALUES"
                            " ('alice@localhost', 'n1', 'pubsub.mim.example', '{ \"token\" : \"abc\" }',"
                            " 1700000000000000),"
                            " ('alice@localhost', 'n2', 'pubsub.mim.example', '{}', 1700000000000001)">>),
    ?assertEqual([{bare_jid(<<>>, <<"pubsub.mim.example">>), <<"n1">>, #{<<"token">> => <<"abc">>}},
                  {bare_jid(<<>>, <<"pubsub.mim.example">>), <<"n2">>, #{}}],
                 services(alice())).

calls_are_instrumented(_Config) ->
    push_storage_contract:calls_are_instrumented(?HT, mod_event_pusher_push_rdbms).

errors_are_returned(_Config) ->
    Alice = alice(),
    ok = mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1), <<"n">>, #{}),
    {updated, 0} = mongoose_rdbms:sql_query(?HT, "DROP TABLE event_pusher_push_subscription"),
    %% Each failed statement is logged by execute_successfully/3, as in MongooseIM.
    log_guard:expect(#{what => sql_execute_failed, host => ?HT}),
    try
        Missing = {error, #{what => sql_execute_failed,
                            reason => {error, <<"ERROR 42P01: relation"
                                               " \"event_pusher_push_subscription\""
                                               " does not exist">>}}},
        ?assertMatch(Missing, sql_error(mod_event_pusher_push_backend:get_publish_services(?HT, Alice))),
        ?assertMatch(Missing, sql_error(mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1),
                                                                             <<"n">>, #{}))),
        ?assertMatch(Missing, sql_error(mod_event_pusher_push_backend:disable(?HT, Alice))),
        ?assertMatch(Missing, sql_error(mod_event_pusher_push_backend:disable(?HT, Alice, pubsub(1),
                                                                              undefined))),
        ?assertMatch(Missing, sql_error(mod_event_pusher_push_backend:disable(?HT, Alice, pubsub(1),
                                                                              <<"n">>)))
    after
        ok = create_table()
    end,
    %% The same prepared queries work on the new table.
    ok = mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1), <<"n">>, #{}),
    ?assertEqual([{pubsub_jid(1), <<"n">>, #{}}], services(Alice)),
    %% Rows the backend cannot decode make the read fail, not crash.
    Corrupt = fun(Values) ->
                      {updated, _} = mongoose_rdbms:sql_query(?HT, "DELETE FROM event_pusher_push_subscription"),
                      {updated, 1} = mongoose_rdbms:sql_query(
                                       ?HT, ["INSERT INTO event_pusher_push_subscription VALUES"
                                             " ('alice@localhost', ", Values, ", 1)"]),
                      mod_event_pusher_push_backend:get_publish_services(?HT, Alice)
              end,
    ?assertMatch({error, {badmatch, <<"not an object">>}}, Corrupt("'n', 'pubsub', '\"not an object\"'")),
    ?assertEqual({error, {bad_pubsub_jid, <<"@">>}}, Corrupt("'n', '@', '{}'")).

%%% End to end: mod_event_pusher_push with backend = "rdbms"

enable_and_disable_via_iq(Config) ->
    start(Config),
    Sid = login(?ALICE),
    Form = form(<<"submit">>, [?NS_PUBSUB_OPTIONS], [{<<"secret">>, [<<"s3 ✓"/utf8>>]},
                                                    {<<"token">>, [<<"t0k">>]}]),
    Before = os:system_time(microsecond),
    result = iq_type(iq(?ALICE, Sid, enable(<<?PUBSUB/binary, "/resource">>, <<"n1">>, [Form]))),
    Stored = #{<<"secret">> => <<"s3 ✓"/utf8>>, <<"token">> => <<"t0k">>},
    [{Owner, Node, PubSub, FormText, CreatedAt}] = rows(),
    ?assertEqual({<<"alice@localhost">>, <<"n1">>, ?PUBSUB}, {Owner, Node, PubSub}),
    ?assertEqual(<<"{\"token\":\"t0k\",\"secret\":\"s3 ✓\"}"/utf8>>, FormText),
    ?assert(CreatedAt >= Before),
    PubSubJid = bare_jid(<<>>, ?PUBSUB),
    ?assertEqual([{PubSubJid, <<"n1">>, Stored}], services(<<"alice@localhost">>)),
    ?assertEqual({ok, {PubSubJid, <<"n1">>, Stored}},
                 ejabberd_sm:get_info(jid:from_binary(?ALICE), publish_service)),
    %% Two more; disable one node, then every node of the service.
    result = iq_type(iq(?ALICE, Sid, enable(?PUBSUB, <<"n2">>, []))),
    result = iq_type(iq(?ALICE, Sid, enable(<<"pubsub.other.example">>, <<"n1">>, []))),
    ?assertEqual(3, length(rows())),
    result = iq_type(iq(?ALICE, Sid, disable(?PUBSUB, <<"n1">>))),
    ?assertEqual([{<<"pubsub.other.example">>, <<"n1">>}, {?PUBSUB, <<"n2">>}],
                 lists:sort([{P, N} || {_, N, P, _, _} <- rows()])),
    result = iq_type(iq(?ALICE, Sid, disable(?PUBSUB, undefined))),
    ?assertEqual([{<<"pubsub.other.example">>, <<"n1">>}], [{P, N} || {_, N, P, _, _} <- rows()]),
    %% A storage failure is an internal-server-error, as in MongooseIM: the statement
    %% fails (logged), the IQ handler crashes on it and gen_iq_handler logs that.
    {updated, 0} = mongoose_rdbms:sql_query(?HT, "DROP TABLE event_pusher_push_subscription"),
    log_guard:expect(#{what => sql_execute_failed, statement_name => event_pusher_push_delete_node}),
    log_guard:expect(#{what => process_iq_error, module => mod_event_pusher_push}),
    try
        Reply = iq(?ALICE, Sid, enable(?PUBSUB, <<"n3">>, [])),
        ?assertEqual(error, iq_type(Reply)),
        [#xmlel{children = Conditions}] = [E || E = #xmlel{name = <<"error">>}
                                                    <- Reply#xmlel.children],
        ?assertEqual([<<"internal-server-error">>], [Name || #xmlel{name = Name} <- Conditions])
    after
        ok = create_table()
    end.

offline_recipient_gets_a_publish(Config) ->
    start(Config),
    service(?PUBSUB, result),
    register_offline_bob(?PUBSUB, <<"node-b">>, [{<<"secret">>, [<<"s3">>]}]),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"hello Bob">>),
    [Request] = wait_publishes(1),
    ?assertEqual(?PUBSUB, exml_query:attr(Request, <<"to">>)),
    ?assertEqual(<<"node-b">>, exml_query:path(Request, [{element, <<"pubsub">>},
                                                         {element, <<"publish">>},
                                                         {attr, <<"node">>}])),
    %% The form read back from PostgreSQL goes out as publish-options.
    #xmlel{children = [#xmlel{children = [_Publish, Options]}]} = Request,
    ?assertEqual(el(<<"publish-options">>, #{},
                    [form(<<"submit">>, [?NS_PUBSUB_OPTIONS], [{<<"secret">>, [<<"s3">>]}])]),
                 Options),
    wait_stats(#{delivered => 1, failed => 0}).

cancel_error_deletes_the_row(Config) ->
    start(Config),
    service(?PUBSUB, {error, <<"cancel">>}),
    service(<<"pubsub.other.example">>, result),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    register_offline_bob(<<"pubsub.other.example">>, <<"node-b">>, []),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"one">>),
    wait_events(mod_event_pusher_push_publish, #{disabled => 1}, 1),
    wait_until(fun() -> length(rows()) =:= 1 end),
    ?assertMatch([{<<"bob@localhost">>, <<"node-b">>, <<"pubsub.other.example">>, _, _}], rows()).

remove_user_clears_registrations(Config) ->
    start(Config),
    register_offline_bob(?PUBSUB, <<"n1">>, []),
    register_offline_bob(<<"pubsub.other.example">>, <<"n2">>, []),
    Sid = login(?ALICE),
    result = iq_type(iq(?ALICE, Sid, enable(?PUBSUB, <<"n1">>, []))),
    ?assertEqual(3, length(rows())),
    Acc = mongoose_acc:new(#{location => #{mfa => {?MODULE, ?FUNCTION_NAME, ?FUNCTION_ARITY},
                                           file => ?FILE, line => ?LINE},
                             host_type => ?HT, lserver => ?HT, element => undefined}),
    {ok, _} = gen_hook:run_fold(remove_user, ?HT, Acc, #{jid => jid:from_binary(<<"bob@localhost">>)}),
    ?assertMatch([{<<"alice@localhost">>, <<"n1">>, ?PUBSUB, _, _}], rows()).

registrations_survive_a_module_restart(Config) ->
    start(Config),
    register_offline_bob(?PUBSUB, <<"n1">>, [{<<"secret">>, [<<"s">>]}]),
    mongoose_host:stop(),
    start(Config),
    ?assertEqual([{bare_jid(<<>>, ?PUBSUB), <<"n1">>, #{<<"secret">> => <<"s">>}}],
                 services(<<"bob@localhost">>)),
    service(?PUBSUB, result),
    ok = ejabberd_auth:register_user(jid:from_binary(?BOB)),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"after restart">>),
    [_] = wait_publishes(1).

%%% Helpers: the database

start_rdbms(ConnInfo) ->
    case mongoose_rdbms:start(ConnInfo) of
        ok ->
            ok;
        {error, Reason} ->
            ct:fail("PostgreSQL cannot be reached with conninfo \"~ts\": ~0p~n"
                    "(`make postgres` installs and starts it; PG_CONNINFO sets the conninfo)",
                    [ConnInfo, Reason])
    end.

%% MongooseIM's table and index, from priv/pg.sql.
create_table() ->
    Path = filename:join(code:priv_dir(mongoose_event_pusher), "pg.sql"),
    {ok, SQL} = file:read_file(Path),
    {updated, 0} = mongoose_rdbms:sql_query(global, SQL),
    ok.

%% Every row, as {owner_jid, node, pubsub_jid, form text, created_at}.
rows() ->
    {selected, Rows} = mongoose_rdbms:sql_query(
                         global, "SELECT owner_jid, node, pubsub_jid, form, created_at"
                                 " FROM event_pusher_push_subscription"
                                 " ORDER BY owner_jid, node, pubsub_jid"),
    [{Owner, Node, PubSub, Form, binary_to_integer(CreatedAt)}
     || {Owner, Node, PubSub, Form, CreatedAt} <- Rows].

%% The parts of a backend error that do not depend on the call.
sql_error({error, #{what := What, reason := Reason}}) ->
    {error, #{what => What, reason => Reason}};
sql_error(Other) ->
    Other.

alice() ->
    jid:make(<<"alice">>, ?HT, <<"phone">>).

pubsub(N) ->
    jid:from_binary(<<"pubsub", (integer_to_binary(N))/binary, ".remote.example">>).

%% Expected JIDs, written as data: mongoose_jid 2.x keeps only the normalised parts.
bare_jid(LUser, LServer) ->
    #jid{luser = LUser, lserver = LServer, lresource = <<>>}.

pubsub_jid(N) ->
    bare_jid(<<>>, <<"pubsub", (integer_to_binary(N))/binary, ".remote.example">>).

services(User) ->
    lists:sort(push_client:services(?HT, User)).

%%% Helpers: the host (as in push_SUITE)

start(Config) ->
    Toml = ["[general]\n  hosts = [\"localhost\"]\n  default_server_domain = \"localhost\"\n\n",
            "[modules.mod_event_pusher.push]\n",
            "  backend = \"rdbms\"\n",
            "  wpool.workers = 4\n"],
    ok = mongoose_host:start_toml(?config(priv_dir, Config), Toml),
    ?assertEqual(mod_event_pusher_push_rdbms,
                 mongoose_backend:get_backend_module(?HT, mod_event_pusher_push)),
    ejabberd_sm:reset(),
    ejabberd_local:reset(),
    ejabberd_auth:reset().

deliver(Type, From, To, Body) ->
    push_client:route_message(?HT, Type, From, To, Body).

login(Jid) ->
    push_client:login(?HT, Jid).

register_offline_bob(PubSub, Node, FormFields) ->
    push_client:register_offline(?HT, ?BOB, PubSub, Node, FormFields).

iq(From, Sid, Request) ->
    push_client:iq(?HT, From, Sid, Request).

iq(From, Sid, Request, Type) ->
    push_client:iq(?HT, From, Sid, Request, Type).

wait_publishes(N) ->
    push_client:wait_publishes(?HT, N).

wait_stats(Expected) ->
    push_client:wait_stats(?HT, Expected).

wait_events(Event, Pattern, N) ->
    push_client:wait_events(?HT, Event, Pattern, N).

wait_until(Fun) ->
    push_client:wait_until(?HT, Fun).
