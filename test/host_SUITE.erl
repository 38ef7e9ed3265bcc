%% Unit-style checks of the MongooseIM stand-in (test/mim): the other suites
%% rely on it behaving like MongooseIM's modules of the same names.
-module(host_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("jlib.hrl").

-define(HT, <<"localhost">>).
-define(DYNAMIC_HT, <<"dynamic type">>).
-define(LOCATION, #{mfa => {?MODULE, ?FUNCTION_NAME, ?FUNCTION_ARITY},
                    line => ?LINE, file => ?FILE}).

all() ->
    [{group, jid}, {group, exml}, {group, mongoose_acc}, {group, mongoose_config},
     {group, gen_hook}, {group, mongoose_instrument}, {group, gen_mod}].

groups() ->
    [{jid, [parallel], [make_prepares_parts,
                        make_rejects_invalid_parts,
                        from_binary_parses_jids,
                        from_binary_rejects_malformed_jids,
                        conversions]},
     {exml, [parallel], [to_binary_escapes,
                         query_paths_and_attrs,
                         cdata_of_undefined_crashes]},
     {mongoose_acc, [parallel], [acc_stanza_from_attrs,
                                 acc_stanza_from_params,
                                 acc_without_element,
                                 acc_rejects_unparsable_stanza_jid,
                                 acc_namespaced_keys,
                                 acc_strip_keeps_permanent_keys,
                                 acc_update_stanza]},
     {mongoose_config, [], [config_keys_and_paths,
                            config_set_and_unset_nested]},
     {gen_hook, [], [handlers_run_in_priority_order,
                     stop_ends_the_run,
                     crashing_handler_is_skipped_bad_return_crashes,
                     handler_gets_extra,
                     duplicates_are_ignored_and_delete_removes,
                     only_exported_external_funs_are_accepted,
                     mongoose_hooks_wrappers_return_acc]},
     {mongoose_instrument, [], [instrument_set_up_errors,
                                instrument_execute_records_events,
                                instrument_span,
                                instrument_wait_for_events]},
     {gen_mod, [], [start_module_requires_configuration,
                    module_lifecycle,
                    failed_start_leaves_nothing_behind,
                    modules_start_in_dependency_order,
                    dynamic_domains_need_support,
                    ensure_started_and_stopped,
                    option_getters]}].

init_per_suite(Config) ->
    Config.

end_per_suite(_Config) ->
    ok.

init_per_group(gen_mod, Config) ->
    compile_test_modules(?config(priv_dir, Config)),
    start_host(),
    Config;
init_per_group(Group, Config) when Group =:= gen_hook; Group =:= mongoose_instrument ->
    start_host(),
    Config;
init_per_group(_Group, Config) ->
    Config.

end_per_group(Group, _Config) when Group =:= gen_mod; Group =:= gen_hook;
                                   Group =:= mongoose_instrument ->
    mongoose_host:stop();
end_per_group(_Group, _Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    %% The test modules report their start/stop to the current test process.
    persistent_term:put({?MODULE, sink}, self()),
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

start_host() ->
    mongoose_host:start(#{hosts => [?HT], host_types => [?DYNAMIC_HT]}).

%%% jid

make_prepares_parts(_Config) ->
    ?assertEqual(#jid{luser = <<"alice">>, lserver = <<"example.com">>, lresource = <<"Phone 1">>},
                 jid:make(<<"AlIcE">>, <<"Example.COM">>, <<"Phone 1">>)),
    ?assertEqual(#jid{luser = <<"åsa"/utf8>>, lserver = <<"zoë.example"/utf8>>, lresource = <<>>},
                 jid:make(<<"ÅSA"/utf8>>, <<"ZOË.example"/utf8>>, <<>>)),
    ?assertEqual(#jid{luser = <<>>, lserver = <<"example.com">>, lresource = <<>>},
                 jid:make_bare(<<>>, <<"example.com">>)),
    ?assertEqual(#jid{luser = <<"A">>, lserver = <<"B">>, lresource = <<"C">>},
                 jid:make_noprep(<<"A">>, <<"B">>, <<"C">>)),
    Long = binary:copy(<<"a">>, 1023),
    ?assertMatch(#jid{}, jid:make(Long, Long, Long)).

make_rejects_invalid_parts(_Config) ->
    [?assertEqual(error, jid:make(<<"al", C, "ice">>, <<"example.com">>, <<>>), [C])
     || C <- "\"&'/:<>@ \t"],
    ?assertEqual(error, jid:make(<<"alice">>, <<>>, <<>>)),
    ?assertEqual(error, jid:make(<<"alice">>, <<"exa mple.com">>, <<>>)),
    ?assertEqual(error, jid:make(<<"alice">>, <<"a@b">>, <<>>)),
    ?assertEqual(error, jid:make(<<"alice">>, <<"example.com">>, <<"res", 7>>)),
    ?assertEqual(error, jid:make(<<"alice", 255>>, <<"example.com">>, <<>>)),
    TooLong = binary:copy(<<"a">>, 1024),
    ?assertEqual(error, jid:make(TooLong, <<"example.com">>, <<>>)),
    ?assertEqual(error, jid:make(<<"alice">>, TooLong, <<>>)),
    ?assertEqual(error, jid:make(<<"alice">>, <<"example.com">>, TooLong)),
    ?assertEqual(error, jid:make_bare(<<"a b">>, <<"example.com">>)).

from_binary_parses_jids(_Config) ->
    Cases = [{<<"alice@example.com/phone">>, {<<"alice">>, <<"example.com">>, <<"phone">>}},
             {<<"Alice@Example.com/Phone">>, {<<"alice">>, <<"example.com">>, <<"Phone">>}},
             {<<"alice@example.com">>, {<<"alice">>, <<"example.com">>, <<>>}},
             {<<"example.com">>, {<<>>, <<"example.com">>, <<>>}},
             {<<"example.com/res">>, {<<>>, <<"example.com">>, <<"res">>}},
             {<<"a@example.com/r@s/t">>, {<<"a">>, <<"example.com">>, <<"r@s/t">>}},
             {<<"example.com/r@s">>, {<<>>, <<"example.com">>, <<"r@s">>}},
             {<<"alice@example.com/">>, {<<"alice">>, <<"example.com">>, <<>>}}],
    [?assertEqual(#jid{luser = U, lserver = S, lresource = R}, jid:from_binary(Bin), Bin)
     || {Bin, {U, S, R}} <- Cases].

from_binary_rejects_malformed_jids(_Config) ->
    Cases = [<<>>, <<"@example.com">>, <<"/res">>, <<"a@@example.com">>, <<"a@b@example.com">>,
             <<"alice@">>, <<"alice@/res">>, <<"@">>, <<"a b@example.com">>,
             <<(binary:copy(<<"a">>, 1023))/binary, "@", (binary:copy(<<"b">>, 1023))/binary,
               "/", (binary:copy(<<"c">>, 1023))/binary>>],
    [?assertEqual(error, jid:from_binary(Bin), Bin) || Bin <- Cases],
    %% The last one is 3071 bytes of valid parts; one byte less is accepted.
    ?assertMatch(#jid{}, jid:from_binary(<<(binary:copy(<<"a">>, 1023))/binary, "@",
                                           (binary:copy(<<"b">>, 1023))/binary, "/",
                                           (binary:copy(<<"c">>, 1022))/binary>>)).

conversions(_Config) ->
    Full = jid:make(<<"alice">>, <<"example.com">>, <<"phone">>),
    Bare = jid:make(<<"alice">>, <<"example.com">>, <<>>),
    ?assertEqual(<<"alice@example.com/phone">>, jid:to_binary(Full)),
    ?assertEqual(<<"alice@example.com">>, jid:to_binary(Bare)),
    ?assertEqual(<<"example.com/r">>, jid:to_binary({<<>>, <<"example.com">>, <<"r">>})),
    ?assertEqual(<<"a@example.com">>, jid:to_binary({<<"a">>, <<"example.com">>})),
    ?assertEqual(<<"raw">>, jid:to_binary(<<"raw">>)),
    ?assertEqual(<<"alice@example.com">>, jid:to_bare_binary(Full)),
    ?assertEqual(<<"example.com">>, jid:to_bare_binary({<<>>, <<"example.com">>, <<"r">>})),
    ?assertEqual({<<"alice">>, <<"example.com">>, <<"phone">>}, jid:to_lower(Full)),
    ?assertEqual({<<"bob">>, <<"example.com">>, <<"R">>},
                 jid:to_lower({<<"BOB">>, <<"Example.com">>, <<"R">>})),
    ?assertEqual(error, jid:to_lower({<<"a b">>, <<"example.com">>, <<>>})),
    ?assertEqual(Bare, jid:to_bare(Full)),
    ?assertEqual({<<"a">>, <<"s">>, <<>>}, jid:to_bare({<<"a">>, <<"s">>, <<"r">>})),
    ?assertEqual(error, jid:to_bare(error)),
    ?assertEqual({<<"alice">>, <<"example.com">>}, jid:to_lus(Full)),
    ?assertEqual(Full#jid{lresource = <<"Tablet">>}, jid:replace_resource(Full, <<"Tablet">>)),
    ?assertEqual(error, jid:replace_resource(Full, <<"a", 0>>)),
    ?assertEqual(<<"alice">>, jid:nodeprep(<<"ALICE">>)),
    ?assertEqual(<<"example.com">>, jid:nameprep(<<"EXAMPLE.com">>)),
    ?assertEqual(<<"Res">>, jid:resourceprep(<<"Res">>)).

%%% exml

to_binary_escapes(_Config) ->
    El = #xmlel{name = <<"message">>,
                attrs = #{<<"to">> => <<"a&b\"'<>">>, <<"id">> => <<"1">>},
                children = [#xmlel{name = <<"body">>,
                                   children = [#xmlcdata{content = [<<"1 < 2 & ">>, "3 > 2"]}]},
                            #xmlel{name = <<"raw">>,
                                   children = [#xmlcdata{content = <<"<x>]]>">>, style = cdata}]},
                            #xmlel{name = <<"empty">>}]},
    ?assertEqual(<<"<message id=\"1\" to=\"a&amp;b&quot;&apos;&lt;&gt;\">"
                   "<body>1 &lt; 2 &amp; 3 &gt; 2</body>"
                   "<raw><![CDATA[<x>]]]]><![CDATA[>]]></raw>"
                   "<empty/></message>">>,
                 exml:to_binary(El)),
    ?assertEqual(<<"<a/><b/>">>, exml:to_binary([#xmlel{name = <<"a">>}, #xmlel{name = <<"b">>}])).

query_paths_and_attrs(_Config) ->
    Item = #xmlel{name = <<"item">>, attrs = #{<<"id">> => <<"2">>},
                  children = [#xmlcdata{content = <<"two">>}]},
    El = #xmlel{name = <<"iq">>, attrs = #{<<"type">> => <<"set">>},
                children = [#xmlcdata{content = <<"text">>},
                            #xmlel{name = <<"pubsub">>, attrs = #{<<"xmlns">> => ?NS_PUBSUB},
                                   children = [#xmlel{name = <<"item">>, attrs = #{<<"id">> => <<"1">>},
                                                      children = [#xmlcdata{content = <<"o">>},
                                                                  #xmlcdata{content = <<"ne">>}]},
                                               Item]},
                            #xmlel{name = <<"x">>, attrs = #{<<"xmlns">> => ?NS_XDATA}}]},
    ?assertEqual(<<"set">>, exml_query:attr(El, <<"type">>)),
    ?assertEqual(undefined, exml_query:attr(El, <<"id">>)),
    ?assertEqual(none, exml_query:attr(El, <<"id">>, none)),
    ?assertEqual(<<"text">>, exml_query:cdata(El)),
    ?assertEqual(<<"one">>, exml_query:path(El, [{element, <<"pubsub">>}, {element, <<"item">>}, cdata])),
    ?assertEqual(<<"two">>, exml_query:path(El, [{element_with_ns, ?NS_PUBSUB},
                                                 {element_with_attr, <<"id">>, <<"2">>}, cdata])),
    ?assertEqual(<<"2">>, exml_query:path(El, [{element_with_ns, <<"pubsub">>, ?NS_PUBSUB},
                                               {element_with_attr, <<"id">>, <<"2">>},
                                               {attr, <<"id">>}])),
    ?assertEqual(Item, exml_query:path(El, [{element, <<"pubsub">>},
                                            {element_with_attr, <<"id">>, <<"2">>}])),
    ?assertEqual(El, exml_query:path(El, [])),
    ?assertEqual(undefined, exml_query:path(El, [{element, <<"nope">>}, cdata])),
    ?assertEqual(default, exml_query:path(El, [{element_with_ns, <<"x">>, ?NS_PUBSUB}], default)),
    ?assertEqual(default, exml_query:path(El, [{element, <<"x">>}, {attr, <<"type">>}], default)),
    ?assertMatch(#xmlel{name = <<"x">>}, exml_query:subelement(El, <<"x">>)),
    ?assertEqual(undefined, exml_query:subelement(El, <<"y">>)),
    ?assertEqual(none, exml_query:subelement(El, <<"y">>, none)),
    ?assertMatch(#xmlel{name = <<"x">>},
                 exml_query:subelement_with_name_and_ns(El, <<"x">>, ?NS_XDATA)),
    ?assertEqual(undefined, exml_query:subelement_with_name_and_ns(El, <<"x">>, ?NS_PUBSUB)),
    ?assertEqual(none, exml_query:subelement_with_name_and_ns(El, <<"y">>, ?NS_XDATA, none)).

cdata_of_undefined_crashes(_Config) ->
    ?assertError(function_clause, exml_query:cdata(undefined)).

%%% mongoose_acc

acc_stanza_from_attrs(_Config) ->
    El = #xmlel{name = <<"message">>, attrs = #{<<"from">> => <<"Alice@localhost/r">>,
                                                <<"to">> => <<"bob@localhost">>,
                                                <<"type">> => <<"chat">>}},
    Acc = mongoose_acc:new(#{location => ?LOCATION, lserver => ?HT, host_type => ?HT, element => El}),
    Alice = jid:make(<<"alice">>, ?HT, <<"r">>),
    Bob = jid:make(<<"bob">>, ?HT, <<>>),
    ?assertEqual(?HT, mongoose_acc:host_type(Acc)),
    ?assertEqual(?HT, mongoose_acc:lserver(Acc)),
    ?assertEqual(El, mongoose_acc:element(Acc)),
    ?assertEqual(Alice, mongoose_acc:from_jid(Acc)),
    ?assertEqual(Bob, mongoose_acc:to_jid(Acc)),
    ?assertEqual(<<"message">>, mongoose_acc:stanza_name(Acc)),
    ?assertEqual(<<"chat">>, mongoose_acc:stanza_type(Acc)),
    ?assertEqual({Alice, Bob, El}, mongoose_acc:packet(Acc)).

acc_stanza_from_params(_Config) ->
    El = #xmlel{name = <<"presence">>},
    From = jid:make(<<"a">>, ?HT, <<"r">>),
    To = jid:make(<<"b">>, ?HT, <<>>),
    Acc = mongoose_acc:new(#{location => ?LOCATION, lserver => ?HT, element => El,
                             from_jid => From, to_jid => To}),
    ?assertEqual(undefined, mongoose_acc:host_type(Acc)),
    ?assertEqual(undefined, mongoose_acc:stanza_type(Acc)),
    ?assertEqual({From, To, El}, mongoose_acc:packet(Acc)).

acc_without_element(_Config) ->
    Acc = mongoose_acc:new(#{location => ?LOCATION, lserver => ?HT, host_type => ?HT,
                             element => undefined}),
    [?assertEqual(undefined, mongoose_acc:F(Acc), F)
     || F <- [element, from_jid, to_jid, stanza_name, stanza_type, packet]],
    ?assertError(function_clause, mongoose_acc:new(#{lserver => ?HT})).

acc_rejects_unparsable_stanza_jid(_Config) ->
    El = #xmlel{name = <<"message">>, attrs = #{<<"from">> => <<"@bad">>, <<"to">> => <<"b@h">>}},
    ?assertError(#{what := invalid_stanza_jid, attr := <<"from">>},
                 mongoose_acc:new(#{location => ?LOCATION, lserver => ?HT, element => El})),
    NoTo = El#xmlel{attrs = #{<<"from">> => <<"a@h">>}},
    ?assertError(#{what := invalid_stanza_jid, attr := <<"to">>},
                 mongoose_acc:new(#{location => ?LOCATION, lserver => ?HT, element => NoTo})).

acc_namespaced_keys(_Config) ->
    Acc0 = new_acc(),
    Acc1 = mongoose_acc:set(ns, a, 1, Acc0),
    Acc2 = mongoose_acc:set_permanent(ns, [{b, 2}, {c, 3}], Acc1),
    Acc3 = mongoose_acc:set(other, a, x, Acc2),
    ?assertEqual([{a, 1}, {b, 2}, {c, 3}], lists:sort(mongoose_acc:get(ns, Acc3))),
    ?assertEqual([], mongoose_acc:get(none, Acc3)),
    ?assertEqual(x, mongoose_acc:get(other, a, Acc3)),
    ?assertError({badkey, {ns, z}}, mongoose_acc:get(ns, z, Acc3)),
    ?assertEqual(default, mongoose_acc:get(ns, z, default, Acc3)),
    Acc4 = mongoose_acc:append(ns, list, [1, 2], Acc3),
    Acc5 = mongoose_acc:append(ns, list, [3], Acc4),
    Acc6 = mongoose_acc:append(ns, list, x, Acc5),
    ?assertEqual([x, 1, 2, 3], mongoose_acc:get(ns, list, Acc6)),
    Acc7 = mongoose_acc:delete(ns, b, Acc6),
    ?assertEqual(undefined, mongoose_acc:get(ns, b, undefined, Acc7)).

acc_strip_keeps_permanent_keys(_Config) ->
    Acc0 = mongoose_acc:set_permanent(ns, kept, 1, mongoose_acc:set(ns, dropped, 2, new_acc())),
    %% Setting a permanent key again (even with set/4) keeps it permanent.
    Acc1 = mongoose_acc:set(ns, kept, 3, Acc0),
    %% A deleted key is no longer permanent.
    Acc2 = mongoose_acc:delete(ns, gone, mongoose_acc:set_permanent(ns, gone, 4, Acc1)),
    Acc3 = mongoose_acc:set(ns, gone, 5, Acc2),
    NewEl = #xmlel{name = <<"message">>, attrs = #{<<"from">> => <<"a@other">>,
                                                   <<"to">> => <<"b@other">>}},
    Stripped = mongoose_acc:strip(#{lserver => <<"other">>, host_type => <<"other type">>,
                                    element => NewEl}, Acc3),
    ?assertEqual([{kept, 3}], mongoose_acc:get(ns, Stripped)),
    ?assertEqual(<<"other">>, mongoose_acc:lserver(Stripped)),
    ?assertEqual(<<"other type">>, mongoose_acc:host_type(Stripped)),
    ?assertEqual(NewEl, mongoose_acc:element(Stripped)),
    ?assertEqual(jid:make(<<"a">>, <<"other">>, <<>>), mongoose_acc:from_jid(Stripped)),
    %% Without an element, the stanza is kept.
    Kept = mongoose_acc:strip(#{lserver => <<"other">>}, Acc3),
    ?assertEqual(mongoose_acc:element(Acc3), mongoose_acc:element(Kept)),
    ?assertEqual(undefined, mongoose_acc:host_type(Kept)).

acc_update_stanza(_Config) ->
    Acc = new_acc(),
    El = #xmlel{name = <<"iq">>, attrs = #{<<"type">> => <<"get">>}},
    From = jid:make(<<"c">>, ?HT, <<>>),
    Updated = mongoose_acc:update_stanza(#{element => El, from_jid => From, to_jid => From}, Acc),
    ?assertEqual({From, From, El}, mongoose_acc:packet(Updated)),
    ?assertEqual(<<"get">>, mongoose_acc:stanza_type(Updated)),
    ?assertEqual(mongoose_acc:lserver(Acc), mongoose_acc:lserver(Updated)).

new_acc() ->
    El = #xmlel{name = <<"message">>, attrs = #{<<"from">> => <<"a@localhost">>,
                                                <<"to">> => <<"b@localhost">>}},
    mongoose_acc:new(#{location => ?LOCATION, lserver => ?HT, host_type => ?HT, element => El}).

%%% mongoose_config

config_keys_and_paths(_Config) ->
    Saved = mongoose_config:get_opts(),
    try
        mongoose_config:set_opts([{hosts, [?HT]}, {undefined_opt, undefined},
                                  {{modules, ?HT}, #{mod_a => #{k => #{inner => 1}}}}]),
        ?assertEqual(#{hosts => [?HT], undefined_opt => undefined,
                       {modules, ?HT} => #{mod_a => #{k => #{inner => 1}}}},
                     mongoose_config:get_opts()),
        ?assertEqual([?HT], mongoose_config:get_opt(hosts)),
        ?assertEqual(undefined, mongoose_config:get_opt(undefined_opt)),
        ?assertEqual(1, mongoose_config:get_opt([{modules, ?HT}, mod_a, k, inner])),
        ?assertEqual(#{inner => 1}, mongoose_config:get_opt([{modules, ?HT}, mod_a, k])),
        ?assertError({badkey, missing}, mongoose_config:get_opt(missing)),
        ?assertError({badkey, mod_b}, mongoose_config:get_opt([{modules, ?HT}, mod_b])),
        ?assertEqual(dflt, mongoose_config:get_opt([{modules, ?HT}, mod_b, k], dflt)),
        ?assertEqual(dflt, mongoose_config:get_opt({modules, <<"other">>}, dflt)),
        ?assertEqual({ok, #{inner => 1}}, mongoose_config:lookup_opt([{modules, ?HT}, mod_a, k])),
        ?assertEqual({error, not_found}, mongoose_config:lookup_opt([{modules, ?HT}, mod_a, x])),
        %% set_opts replaces the whole configuration.
        mongoose_config:set_opts(#{hosts => []}),
        ?assertEqual(#{hosts => []}, mongoose_config:get_opts()),
        mongoose_config:erase_opts(),
        ?assertEqual(#{}, mongoose_config:get_opts())
    after
        mongoose_config:set_opts(Saved)
    end.

config_set_and_unset_nested(_Config) ->
    Saved = mongoose_config:get_opts(),
    try
        mongoose_config:set_opts(#{}),
        mongoose_config:set_opt({modules, ?HT}, #{mod_a => #{}}),
        mongoose_config:set_opt([{modules, ?HT}, mod_a, k], v),
        mongoose_config:set_opt([{modules, ?HT}, mod_b], #{}),
        ?assertEqual(#{mod_a => #{k => v}, mod_b => #{}}, mongoose_config:get_opt({modules, ?HT})),
        mongoose_config:unset_opt([{modules, ?HT}, mod_a, k]),
        ?assertEqual(#{mod_a => #{}, mod_b => #{}}, mongoose_config:get_opt({modules, ?HT})),
        mongoose_config:unset_opt([{modules, ?HT}]),
        ?assertEqual({error, not_found}, mongoose_config:lookup_opt({modules, ?HT}))
    after
        mongoose_config:set_opts(Saved)
    end.

%%% gen_hook

handlers_run_in_priority_order(_Config) ->
    Hooks = [{test_hook, ?HT, fun ?MODULE:record_handler/3, #{id => Id}, Prio}
             || {Id, Prio} <- [{a, 50}, {b, 10}, {c, 50}, {d, 30}]],
    ok = gen_hook:add_handlers(Hooks),
    try
        ?assertEqual({ok, [b, d, a, c]}, gen_hook:run_fold(test_hook, ?HT, [], #{})),
        ?assertEqual([{10, #{id => b}}, {30, #{id => d}}, {50, #{id => a}}, {50, #{id => c}}],
                     [{P, maps:with([id], E)} || {P, _, E} <- gen_hook:get_handlers(test_hook, ?HT)]),
        %% Nothing runs for another tag, or a hook with no handlers.
        ?assertEqual({ok, []}, gen_hook:run_fold(test_hook, <<"other">>, [], #{})),
        ?assertEqual({ok, acc}, gen_hook:run_fold(no_such_hook, ?HT, acc, #{}))
    after
        gen_hook:delete_handlers(Hooks)
    end.

stop_ends_the_run(_Config) ->
    Hooks = [{test_hook, ?HT, fun ?MODULE:record_handler/3, #{id => first}, 10},
             {test_hook, ?HT, fun ?MODULE:stop_handler/3, #{id => stopper}, 20},
             {test_hook, ?HT, fun ?MODULE:record_handler/3, #{id => never}, 30}],
    ok = gen_hook:add_handlers(Hooks),
    try
        ?assertEqual({stop, [first, stopper]}, gen_hook:run_fold(test_hook, ?HT, [], #{}))
    after
        gen_hook:delete_handlers(Hooks)
    end.

crashing_handler_is_skipped_bad_return_crashes(_Config) ->
    Hooks = [{test_hook, ?HT, fun ?MODULE:record_handler/3, #{id => first}, 10},
             {test_hook, ?HT, fun ?MODULE:crash_handler/3, #{}, 20},
             {test_hook, ?HT, fun ?MODULE:record_handler/3, #{id => last}, 30}],
    BadReturn = {test_hook, ?HT, fun ?MODULE:bad_return_handler/3, #{}, 40},
    %% The crash is skipped, and logged as MongooseIM's gen_hook logs it.
    log_guard:expect(#{what => hook_failed, hook_name => test_hook, reason => expected_crash}),
    ok = gen_hook:add_handlers(Hooks),
    try
        ?assertEqual({ok, [first, last]}, gen_hook:run_fold(test_hook, ?HT, [], #{})),
        %% A handler that returns no {ok | stop, Acc} is a bug, not a failure to skip.
        ok = gen_hook:add_handler(BadReturn),
        ?assertError({try_clause, [first, last]}, gen_hook:run_fold(test_hook, ?HT, [], #{}))
    after
        gen_hook:delete_handlers([BadReturn | Hooks])
    end.

handler_gets_extra(_Config) ->
    Hooks = [{test_hook, ?HT, fun ?MODULE:extra_handler/3, #{mine => 1}, 10},
             {test_hook, global, fun ?MODULE:extra_handler/3, #{hook_name => overridden}, 10}],
    ok = gen_hook:add_handlers(Hooks),
    try
        ?assertEqual({ok, [{#{hook_name => test_hook, hook_tag => ?HT, host_type => ?HT, mine => 1},
                            #{p => 1}}]},
                     gen_hook:run_fold(test_hook, ?HT, [], #{p => 1})),
        ?assertEqual({ok, [{#{hook_name => overridden, hook_tag => global}, #{}}]},
                     gen_hook:run_fold(test_hook, global, [], #{}))
    after
        gen_hook:delete_handlers(Hooks)
    end.

duplicates_are_ignored_and_delete_removes(_Config) ->
    Hook = {test_hook, ?HT, fun ?MODULE:record_handler/3, #{id => once}, 10},
    ok = gen_hook:add_handler(Hook),
    ok = gen_hook:add_handler(Hook),
    ?assertEqual({ok, [once]}, gen_hook:run_fold(test_hook, ?HT, [], #{})),
    %% Deleting needs the same priority and extra.
    ok = gen_hook:delete_handler(test_hook, ?HT, fun ?MODULE:record_handler/3, #{id => once}, 11),
    ok = gen_hook:delete_handler(test_hook, ?HT, fun ?MODULE:record_handler/3, #{}, 10),
    ?assertEqual({ok, [once]}, gen_hook:run_fold(test_hook, ?HT, [], #{})),
    ok = gen_hook:delete_handler(test_hook, ?HT, fun ?MODULE:record_handler/3, #{id => once}, 10),
    ?assertEqual({ok, []}, gen_hook:run_fold(test_hook, ?HT, [], #{})),
    ?assertEqual([], gen_hook:get_handlers(test_hook, ?HT)).

only_exported_external_funs_are_accepted(_Config) ->
    Local = fun(Acc, _, _) -> {ok, Acc} end,
    ?assertError(#{what := only_external_function_references_allowed},
                 gen_hook:add_handler(test_hook, ?HT, Local, #{}, 10)),
    ?assertError(#{what := function_is_not_exported},
                 gen_hook:add_handler(test_hook, ?HT, fun lists:no_such_function/3, #{}, 10)),
    ?assertError(#{what := module_is_not_loaded},
                 gen_hook:add_handler(test_hook, ?HT, fun no_such_module:handler/3, #{}, 10)),
    ?assertError(function_clause,
                 gen_hook:add_handler(test_hook, ?HT, fun ?MODULE:record_handler/3, #{}, 0)),
    ?assertError(function_clause,
                 gen_hook:add_handler(test_hook, undefined, fun ?MODULE:record_handler/3, #{}, 1)),
    ?assertEqual([], gen_hook:get_handlers(test_hook, ?HT)).

mongoose_hooks_wrappers_return_acc(_Config) ->
    Hooks = [{push_notifications, ?HT, fun ?MODULE:push_notifications_handler/3, #{}, 50},
             {inbox_unread_count, ?HT, fun ?MODULE:inbox_unread_count_handler/3, #{}, 50}],
    Acc = new_acc(),
    %% Without handlers the Acc comes back unchanged.
    ?assertEqual(Acc, mongoose_hooks:push_notifications(?HT, Acc, [#{}], #{})),
    ok = gen_hook:add_handlers(Hooks),
    try
        ?assertEqual({error, device_not_registered},
                     mongoose_hooks:push_notifications(?HT, Acc, [#{<<"k">> => <<"v">>}],
                                                       #{<<"opt">> => <<"1">>})),
        User = jid:make(<<"a">>, ?HT, <<>>),
        Counted = mongoose_hooks:inbox_unread_count(?HT, Acc, User),
        ?assertEqual(7, mongoose_acc:get(inbox, unread_count, Counted)),
        log_guard:expect(#{what => undefined_host_type, hook_name => inbox_unread_count}),
        ?assertEqual(Acc, mongoose_hooks:inbox_unread_count(undefined, Acc, User))
    after
        gen_hook:delete_handlers(Hooks)
    end.

record_handler(Acc, _Params, #{id := Id}) ->
    {ok, Acc ++ [Id]}.

stop_handler(Acc, _Params, #{id := Id}) ->
    {stop, Acc ++ [Id]}.

crash_handler(_Acc, _Params, _Extra) ->
    error(expected_crash).

bad_return_handler(Acc, _Params, _Extra) ->
    Acc.

extra_handler(Acc, Params, Extra) ->
    {ok, Acc ++ [{Extra, Params}]}.

push_notifications_handler(_Acc, #{notification_forms := [#{<<"k">> := <<"v">>}],
                                   options := #{<<"opt">> := <<"1">>}}, _Extra) ->
    {stop, {error, device_not_registered}}.

inbox_unread_count_handler(Acc, #{user := #jid{luser = <<"a">>}}, _Extra) ->
    {ok, mongoose_acc:set(inbox, unread_count, 7, Acc)}.

%%% mongoose_instrument

instrument_set_up_errors(_Config) ->
    Spec = {test_event, #{host_type => ?HT}, #{metrics => #{count => spiral}}},
    ok = mongoose_instrument:set_up([Spec]),
    try
        ?assert(mongoose_instrument:is_set_up(test_event, #{host_type => ?HT})),
        ?assertError(#{what := event_already_registered, event_name := test_event},
                     mongoose_instrument:set_up([Spec])),
        ?assertError(#{what := inconsistent_labels},
                     mongoose_instrument:set_up([{test_event, #{pool_tag => p}, #{}}])),
        ?assertError(#{what := non_gauge_metrics_in_probe},
                     mongoose_instrument:set_up([{probed, #{}, #{probe => #{module => ?MODULE},
                                                                 metrics => #{c => spiral}}}])),
        %% Same label keys, other values: a separate registration.
        ok = mongoose_instrument:set_up([{test_event, #{host_type => <<"other">>}, #{}}]),
        ok = mongoose_instrument:tear_down([{test_event, #{host_type => <<"other">>}, #{}}])
    after
        mongoose_instrument:tear_down([Spec])
    end,
    ?assertNot(mongoose_instrument:is_set_up(test_event, #{host_type => ?HT})),
    ok = mongoose_instrument:tear_down([Spec]).

instrument_execute_records_events(_Config) ->
    Labels = #{host_type => ?HT},
    ?assertError(#{what := event_not_registered, event_name := test_event, labels := Labels},
                 mongoose_instrument:execute(test_event, Labels, #{count => 1})),
    ok = mongoose_instrument:set_up([{test_event, Labels, #{}}]),
    try
        mongoose_instrument:clear_events(),
        ok = mongoose_instrument:execute(test_event, Labels, #{count => 1}),
        ok = mongoose_instrument:execute(test_event, Labels, #{count => 2}),
        ?assertEqual([#{count => 1}, #{count => 2}], mongoose_instrument:get_events(test_event, Labels)),
        ?assertEqual([], mongoose_instrument:get_events(test_event, #{host_type => <<"other">>})),
        mongoose_instrument:clear_events(),
        ?assertEqual([], mongoose_instrument:get_events(test_event, Labels))
    after
        mongoose_instrument:tear_down([{test_event, Labels, #{}}])
    end.

instrument_span(_Config) ->
    Labels = #{host_type => ?HT},
    Measure = fun(Time, Result) -> #{time_is_integer => is_integer(Time), result => Result} end,
    Self = self(),
    ?assertError(#{what := event_not_registered},
                 mongoose_instrument:span(test_event, Labels, fun() -> Self ! called end, Measure)),
    receive called -> ct:fail(span_called_fun_of_unregistered_event) after 0 -> ok end,
    ok = mongoose_instrument:set_up([{test_event, Labels, #{}}]),
    try
        mongoose_instrument:clear_events(),
        ?assertEqual(r0, mongoose_instrument:span(test_event, Labels, fun() -> r0 end, Measure)),
        ?assertEqual(3, mongoose_instrument:span(test_event, Labels, fun erlang:'+'/2, [1, 2], Measure)),
        ?assertEqual([a, b], mongoose_instrument:span(test_event, Labels, lists, append,
                                                      [[a], [b]], Measure)),
        ?assertEqual([#{time_is_integer => true, result => r0},
                      #{time_is_integer => true, result => 3},
                      #{time_is_integer => true, result => [a, b]}],
                     mongoose_instrument:get_events(test_event, Labels))
    after
        mongoose_instrument:tear_down([{test_event, Labels, #{}}])
    end.

instrument_wait_for_events(_Config) ->
    Labels = #{host_type => ?HT},
    ok = mongoose_instrument:set_up([{test_event, Labels, #{}}]),
    try
        mongoose_instrument:clear_events(),
        spawn(fun() ->
                      [begin
                           timer:sleep(20),
                           mongoose_instrument:execute(test_event, Labels, #{n => N})
                       end || N <- [1, 2, 3]]
              end),
        ?assertEqual({ok, [#{n => 1}, #{n => 2}, #{n => 3}]},
                     mongoose_instrument:wait_for_events(test_event, Labels, 3, 5000)),
        ?assertEqual({timeout, [#{n => 1}, #{n => 2}, #{n => 3}]},
                     mongoose_instrument:wait_for_events(test_event, Labels, 4, 50))
    after
        mongoose_instrument:tear_down([{test_event, Labels, #{}}])
    end.

%%% gen_mod and mongoose_modules
%%
%% The test modules (compiled in init_per_group) send {started, Module, HT,
%% Opts} and {stopped, Module, HT} to the current test process, add a handler
%% to `host_test_hook' and register an instrumentation event named after
%% themselves. host_test_frontend depends (hard) on host_test_backend;
%% host_test_dynamic supports dynamic domains.

start_module_requires_configuration(_Config) ->
    ?assertError(#{what := module_not_loaded},
                 gen_mod:start_module(?HT, host_test_backend, #{})),
    ?assertError(#{what := module_not_loaded}, gen_mod:stop_module(?HT, host_test_backend)),
    ?assertEqual([], received()).

module_lifecycle(_Config) ->
    Opts = #{start_result => {ok, custom}},
    with_modules(#{host_test_backend => Opts},
      fun() ->
              ?assertEqual({ok, custom}, gen_mod:start_module(?HT, host_test_backend, Opts)),
              ?assertEqual([{started, host_test_backend, ?HT, Opts}], received()),
              ?assert(gen_mod:is_running(?HT, host_test_backend)),
              ?assert(mongoose_instrument:is_set_up(host_test_backend, #{host_type => ?HT})),
              ?assertEqual({ok, [host_test_backend]}, gen_hook:run_fold(host_test_hook, ?HT, [], #{})),
              ?assertError(#{what := module_already_started},
                           gen_mod:start_module(?HT, host_test_backend, Opts)),
              ?assertEqual(ok, gen_mod:stop_module(?HT, host_test_backend)),
              ?assertEqual([{stopped, host_test_backend, ?HT}], received()),
              ?assertNot(gen_mod:is_running(?HT, host_test_backend)),
              ?assertNot(mongoose_instrument:is_set_up(host_test_backend, #{host_type => ?HT})),
              ?assertEqual({ok, []}, gen_hook:run_fold(host_test_hook, ?HT, [], #{})),
              ?assertError(#{what := module_not_loaded}, gen_mod:stop_module(?HT, host_test_backend)),
              %% A start result that is not {ok, _} is wrapped.
              ?assertEqual({ok, ok}, gen_mod:start_module(?HT, host_test_backend, #{})),
              ok = gen_mod:stop_module(?HT, host_test_backend),
              ?assertMatch([{started, _, _, _}, {stopped, _, _}], received())
      end).

failed_start_leaves_nothing_behind(_Config) ->
    Opts = #{crash => true},
    log_guard:expect(#{what => module_start_failed, module => host_test_backend,
                       reason => start_crashed}),
    with_modules(#{host_test_backend => Opts},
      fun() ->
              ?assertError(start_crashed, gen_mod:start_module(?HT, host_test_backend, Opts)),
              ?assertNot(gen_mod:is_running(?HT, host_test_backend)),
              ?assertNot(mongoose_instrument:is_set_up(host_test_backend, #{host_type => ?HT})),
              ?assertEqual([], gen_hook:get_handlers(host_test_hook, ?HT))
      end),
    %% ensure_started undoes its configuration change.
    ?assertError(start_crashed, mongoose_modules:ensure_started(?HT, host_test_backend, Opts)),
    ?assertNot(gen_mod:is_loaded(?HT, host_test_backend)).

modules_start_in_dependency_order(_Config) ->
    Modules = #{host_test_frontend => #{}, host_test_backend => #{}},
    with_modules(Modules,
      fun() ->
              ok = mongoose_modules:start(),
              ?assertEqual([{started, host_test_backend, ?HT, #{}},
                            {started, host_test_frontend, ?HT, #{}}], received()),
              ?assertEqual({ok, [host_test_backend, host_test_frontend]},
                           gen_hook:run_fold(host_test_hook, ?HT, [], #{})),
              ok = mongoose_modules:stop(),
              ?assertEqual([{stopped, host_test_frontend, ?HT},
                            {stopped, host_test_backend, ?HT}], received()),
              %% Stopping again is a no-op: nothing is running.
              ok = mongoose_modules:stop(),
              ?assertEqual([], received())
      end).

dynamic_domains_need_support(_Config) ->
    mongoose_config:set_opt({modules, ?DYNAMIC_HT}, #{host_test_backend => #{},
                                                      host_test_dynamic => #{}}),
    try
        ?assertError(#{what := dynamic_domains_not_supported, host_type := ?DYNAMIC_HT},
                     gen_mod:start_module(?DYNAMIC_HT, host_test_backend, #{})),
        ?assertEqual({ok, ok}, gen_mod:start_module(?DYNAMIC_HT, host_test_dynamic, #{})),
        ok = gen_mod:stop_module(?DYNAMIC_HT, host_test_dynamic),
        ?assertEqual([{started, host_test_dynamic, ?DYNAMIC_HT, #{}},
                      {stopped, host_test_dynamic, ?DYNAMIC_HT}], received())
    after
        mongoose_config:unset_opt({modules, ?DYNAMIC_HT})
    end.

ensure_started_and_stopped(_Config) ->
    Opts1 = #{start_result => {ok, one}},
    Opts2 = #{start_result => two},
    try
        ?assertEqual({started, one}, mongoose_modules:ensure_started(?HT, host_test_backend, Opts1)),
        ?assertEqual(#{host_test_backend => Opts1}, mongoose_config:get_opt({modules, ?HT})),
        ?assertEqual(already_started, mongoose_modules:ensure_started(?HT, host_test_backend, Opts1)),
        ?assertEqual({restarted, Opts1, two},
                     mongoose_modules:ensure_started(?HT, host_test_backend, Opts2)),
        ?assertEqual(#{host_test_backend => Opts2}, mongoose_config:get_opt({modules, ?HT})),
        ?assertEqual({stopped, Opts2}, mongoose_modules:ensure_stopped(?HT, host_test_backend)),
        ?assertEqual(already_stopped, mongoose_modules:ensure_stopped(?HT, host_test_backend)),
        ?assertEqual(#{}, mongoose_config:get_opt({modules, ?HT})),
        ?assertEqual([{started, host_test_backend, ?HT, Opts1},
                      {stopped, host_test_backend, ?HT},
                      {started, host_test_backend, ?HT, Opts2},
                      {stopped, host_test_backend, ?HT}], received())
    after
        mongoose_config:set_opt({modules, ?HT}, #{})
    end.

option_getters(_Config) ->
    Opts = #{flat => 1, nested => #{inner => 2}},
    with_modules(#{host_test_backend => Opts},
      fun() ->
              mongoose_config:set_opt({modules, ?DYNAMIC_HT}, #{host_test_backend => #{}}),
              try
                  ?assertEqual(Opts, gen_mod:get_module_opts(?HT, host_test_backend)),
                  ?assertEqual(#{}, gen_mod:get_module_opts(?HT, host_test_frontend)),
                  ?assertEqual(Opts, gen_mod:get_loaded_module_opts(?HT, host_test_backend)),
                  ?assertError({badkey, host_test_frontend},
                               gen_mod:get_loaded_module_opts(?HT, host_test_frontend)),
                  ?assertEqual(1, gen_mod:get_module_opt(?HT, host_test_backend, flat)),
                  ?assertEqual(2, gen_mod:get_module_opt(?HT, host_test_backend, [nested, inner])),
                  ?assertError({badkey, missing}, gen_mod:get_module_opt(?HT, host_test_backend, missing)),
                  ?assertEqual(d, gen_mod:get_module_opt(?HT, host_test_backend, missing, d)),
                  ?assertEqual({ok, 1}, gen_mod:lookup_module_opt(?HT, host_test_backend, flat)),
                  ?assertEqual({error, not_found},
                               gen_mod:lookup_module_opt(?HT, host_test_backend, [nested, x])),
                  ?assertEqual(2, gen_mod:get_opt([nested, inner], Opts)),
                  ?assertEqual(1, gen_mod:get_opt(flat, Opts)),
                  ?assert(gen_mod:is_loaded(?HT, host_test_backend)),
                  ?assertNot(gen_mod:is_loaded(?HT, host_test_frontend)),
                  ?assertEqual([host_test_backend], gen_mod:loaded_modules(?HT)),
                  ?assertEqual([?HT, ?DYNAMIC_HT], gen_mod:hosts_with_module(host_test_backend)),
                  ?assertEqual(#{?HT => Opts, ?DYNAMIC_HT => #{}},
                               gen_mod:hosts_and_opts_with_module(host_test_backend))
              after
                  mongoose_config:unset_opt({modules, ?DYNAMIC_HT})
              end
      end).

with_modules(Modules, F) ->
    mongoose_config:set_opt({modules, ?HT}, Modules),
    try
        F()
    after
        mongoose_config:set_opt({modules, ?HT}, #{})
    end.

%% The start/stop reports received so far, oldest first.
received() ->
    receive
        {?MODULE, Report} -> [Report | received()]
    after 0 ->
            []
    end.

compile_test_modules(Dir) ->
    compile_test_module(Dir, host_test_backend, [], []),
    compile_test_module(Dir, host_test_frontend, [{host_test_backend, #{}, hard}], []),
    compile_test_module(Dir, host_test_dynamic, [], [dynamic_domains]).

compile_test_module(Dir, Module, Deps, Features) ->
    Source = io_lib:format(
               "-module(~p).~n"
               "-behaviour(gen_mod).~n"
               "-export([start/2, stop/1, hooks/1, instrumentation/1, deps/2, handle/3]).~n"
               "~s"
               "start(HT, Opts) ->~n"
               "    case Opts of #{crash := true} -> error(start_crashed); _ -> ok end,~n"
               "    report({started, ?MODULE, HT, Opts}),~n"
               "    maps:get(start_result, Opts, ok).~n"
               "stop(HT) -> report({stopped, ?MODULE, HT}).~n"
               "hooks(HT) -> [{host_test_hook, HT, fun ?MODULE:handle/3, #{}, 50}].~n"
               "instrumentation(HT) -> [{?MODULE, #{host_type => HT}, #{}}].~n"
               "deps(_HT, _Opts) -> ~p.~n"
               "handle(Acc, _Params, _Extra) -> {ok, Acc ++ [?MODULE]}.~n"
               "report(Report) -> persistent_term:get({~p, sink}) ! {~p, Report}.~n",
               [Module,
                case Features of
                    [] -> "";
                    _ -> io_lib:format("-export([supported_features/0]).~n"
                                       "supported_features() -> ~p.~n", [Features])
                end,
                Deps, ?MODULE, ?MODULE]),
    File = filename:join(Dir, atom_to_list(Module) ++ ".erl"),
    ok = file:write_file(File, Source),
    {ok, Module, Beam} = compile:file(File, [binary, return_errors]),
    {module, Module} = code:load_binary(Module, File, Beam).
