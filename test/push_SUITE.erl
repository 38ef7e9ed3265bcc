%% The push backend (XEP-0357) end to end, as MongooseIM's push scenarios run it:
%% TOML config -> stand-in host (sessions, IQ handlers, routing, auth, inbox and
%% push_notifications hooks) -> enable/disable IQs -> messages to offline users ->
%% Rust (queue, stanza, workers) -> routed publish IQs -> a fake pubsub service that
%% records what it got and answers as each case says. Registrations live in mnesia
%% on disc in the priv_dir.
-module(push_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("jlib.hrl").

-import(push_client, [enable/3, disable/2, form/3, summary/1, field/3, el/3, iq_type/1,
                      error_of/1, service/2, publishes/0]).

-define(HT, <<"localhost">>).
-define(LABELS, #{host_type => ?HT}).
-define(PUBSUB, <<"pubsub.push.example">>).
-define(VIRTUAL, <<"virtual.localhost">>).
-define(ALICE, <<"alice@localhost/phone">>).
-define(BOB, <<"bob@localhost/pc">>).
-define(NS_PUBSUB_OPTIONS, <<"http://jabber.org/protocol/pubsub#publish-options">>).

all() ->
    [enable_without_form,
     enable_with_form,
     invalid_requests_get_the_right_error,
     disable_one_node_or_all_nodes,
     offline_recipient_gets_exactly_one_publish,
     publish_options_are_sent_when_enabled_with_a_form,
     online_recipient_gets_no_publish,
     groupchat_sender_is_the_full_jid,
     unread_count_comes_from_the_inbox_hook,
     bodiless_messages_are_skipped,
     cancel_error_disables_and_wait_error_does_not,
     timeout_is_counted_and_keeps_the_registration,
     unreachable_pubsub_domain_is_a_cancel_error,
     virtual_pubsub_host_runs_the_hook,
     enhanced_plugin_pushes_unacknowledged_messages,
     one_publish_per_service_per_stanza,
     custom_plugin_callbacks_fall_back_to_the_defaults,
     full_queue_drops_are_counted,
     stop_drains_pending_publishes,
     remove_user_clears_registrations,
     registrations_survive_a_module_restart].

suite() ->
    [{timetrap, {seconds, 60}}].

init_per_suite(Config) ->
    ok = push_client:start_mnesia(filename:join(?config(priv_dir, Config), "mnesia")),
    Config.

end_per_suite(_Config) ->
    push_client:stop_mnesia().

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    Stopped = test_wait:cleanup(fun mongoose_host:stop/0, 15000),
    {atomic, ok} = mnesia:clear_table(push_subscription),
    Stopped.

%%% Enable and disable

enable_without_form(Config) ->
    start(Config, #{}),
    Sid = login(?ALICE),
    ?assertMatch(#xmlel{attrs = #{<<"type">> := <<"result">>}, children = []},
                 iq(?ALICE, Sid, enable(?PUBSUB, <<"n1">>, []))),
    ?assertEqual([{jid:from_binary(?PUBSUB), <<"n1">>, #{}}], services(<<"alice@localhost">>)),
    ?assertEqual({ok, {jid:from_binary(?PUBSUB), <<"n1">>, #{}}},
                 ejabberd_sm:get_info(jid:from_binary(?ALICE), publish_service)).

enable_with_form(Config) ->
    start(Config, #{}),
    Sid = login(?ALICE),
    Form = form(<<"submit">>, [?NS_PUBSUB_OPTIONS], [{<<"secret">>, [<<"s3">>]},
                                                    {<<"token">>, [<<"t0k">>]}]),
    ?assertMatch(#xmlel{attrs = #{<<"type">> := <<"result">>}},
                 iq(?ALICE, Sid, enable(<<?PUBSUB/binary, "/resource">>, <<"n1">>, [Form]))),
    %% The service JID is stored bare.
    ?assertEqual([{jid:from_binary(?PUBSUB), <<"n1">>,
                   #{<<"secret">> => <<"s3">>, <<"token">> => <<"t0k">>}}],
                 services(<<"alice@localhost">>)).

invalid_requests_get_the_right_error(Config) ->
    start(Config, #{}),
    Sid = login(?ALICE),
    Options = fun(Type, NS, Fields) -> [form(Type, NS, Fields)] end,
    Good = [{<<"secret">>, [<<"s">>]}],
    BadRequests =
        [enable(<<>>, <<"n">>, []),
         enable(<<"@@bad jid@@/">>, <<"n">>, []),
         el(<<"enable">>, #{<<"xmlns">> => <<"urn:xmpp:push:0">>, <<"jid">> => ?PUBSUB}, []),
         enable(?PUBSUB, <<>>, []),
         enable(?PUBSUB, <<"n">>, Options(<<"form">>, [?NS_PUBSUB_OPTIONS], Good)),
         enable(?PUBSUB, <<"n">>, Options(<<"submit">>, [<<"urn:other">>], Good)),
         enable(?PUBSUB, <<"n">>, Options(<<"submit">>, [], Good)),
         enable(?PUBSUB, <<"n">>, Options(<<"submit">>, [?NS_PUBSUB_OPTIONS, ?NS_PUBSUB_OPTIONS],
                                          Good)),
         enable(?PUBSUB, <<"n">>, Options(<<"submit">>, [?NS_PUBSUB_OPTIONS],
                                          [{<<"secret">>, [<<"a">>, <<"b">>]}])),
         disable(<<>>, undefined),
         disable(?PUBSUB, <<>>),
         el(<<"subscribe">>, #{<<"xmlns">> => <<"urn:xmpp:push:0">>, <<"jid">> => ?PUBSUB}, [])],
    [?assertEqual({<<"400">>, <<"modify">>, <<"bad-request">>, Request},
                  error_of(iq(?ALICE, Sid, Request)), Request)
     || Request <- BadRequests],
    Get = enable(?PUBSUB, <<"n">>, []),
    ?assertEqual({<<"405">>, <<"cancel">>, <<"not-allowed">>, Get},
                 error_of(iq(?ALICE, Sid, Get, <<"get">>))),
    ?assertEqual([], services(<<"alice@localhost">>)).

disable_one_node_or_all_nodes(Config) ->
    start(Config, #{}),
    Sid = login(?ALICE),
    Other = <<"pubsub.other.example">>,
    [result = iq_type(iq(?ALICE, Sid, enable(S, N, []))) || {S, N} <- [{?PUBSUB, <<"n1">>},
                                                                      {?PUBSUB, <<"n2">>},
                                                                      {Other, <<"n1">>}]],
    result = iq_type(iq(?ALICE, Sid, disable(?PUBSUB, <<"n1">>))),
    ?assertEqual(lists:sort([{jid:from_binary(?PUBSUB), <<"n2">>, #{}},
                             {jid:from_binary(Other), <<"n1">>, #{}}]),
                 lists:sort(services(<<"alice@localhost">>))),
    %% Without a node: every node of that service.
    result = iq_type(iq(?ALICE, Sid, disable(?PUBSUB, undefined))),
    ?assertEqual([{jid:from_binary(Other), <<"n1">>, #{}}], services(<<"alice@localhost">>)),
    %% The session's publish_service (the last enabled, Other/n1) stays: not this service.
    ?assertMatch({ok, {_, <<"n1">>, _}},
                 ejabberd_sm:get_info(jid:from_binary(?ALICE), publish_service)),
    result = iq_type(iq(?ALICE, Sid, disable(Other, undefined))),
    ?assertEqual({error, not_set}, ejabberd_sm:get_info(jid:from_binary(?ALICE), publish_service)).

%%% Notifications to a real pubsub service

offline_recipient_gets_exactly_one_publish(Config) ->
    start(Config, #{}),
    service(?PUBSUB, result),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"hello Bob">>),
    [Request] = wait_publishes(1),
    ?assertEqual(#{<<"type">> => <<"set">>, <<"from">> => <<"localhost">>, <<"to">> => ?PUBSUB,
                   <<"id">> => exml_query:attr(Request, <<"id">>)},
                 Request#xmlel.attrs),
    [PubSub] = Request#xmlel.children,
    ?assertEqual(el(<<"pubsub">>, #{<<"xmlns">> => <<"http://jabber.org/protocol/pubsub">>},
                    [el(<<"publish">>, #{<<"node">> => <<"node-b">>},
                        [el(<<"item">>, #{},
                            [el(<<"notification">>, #{<<"xmlns">> => <<"urn:xmpp:push:0">>},
                                [summary([{<<"message-count">>, <<"1">>},
                                          {<<"last-message-sender">>, <<"alice@localhost">>},
                                          {<<"last-message-body">>, <<"hello Bob">>}])])])])]),
                 PubSub),
    wait_stats(#{delivered => 1, failed => 0}),
    [#{routed := 1}] = wait_events(mod_event_pusher_push_publish, #{routed => 1}, 1),
    [#{replied := 1}] = wait_events(mod_event_pusher_push_publish, #{replied => 1}, 1),
    ?assertEqual(1, length(settled_publishes())).

publish_options_are_sent_when_enabled_with_a_form(Config) ->
    start(Config, #{}),
    service(?PUBSUB, result),
    register_offline_bob(?PUBSUB, <<"node-b">>, [{<<"secret">>, [<<"s3">>]}]),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"hi">>),
    [#xmlel{children = [#xmlel{children = [_Publish, Options]}]}] = wait_publishes(1),
    ?assertEqual(el(<<"publish-options">>, #{},
                    [form(<<"submit">>, [?NS_PUBSUB_OPTIONS], [{<<"secret">>, [<<"s3">>]}])]),
                 Options).

online_recipient_gets_no_publish(Config) ->
    start(Config, #{}),
    service(?PUBSUB, result),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    _ = ejabberd_sm:open_session(?HT, jid:from_binary(?BOB), 0),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"you are online">>),
    %% An unknown recipient gets none either.
    ok = ejabberd_sm:close_session(jid:from_binary(?BOB)),
    ok = ejabberd_auth:unregister_user(jid:from_binary(?BOB)),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"you do not exist">>),
    ?assertEqual([], settled_publishes()),
    ?assertMatch(#{accepted := 0}, mod_event_pusher_push:stats(?HT)).

groupchat_sender_is_the_full_jid(Config) ->
    start(Config, #{}),
    service(?PUBSUB, result),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    deliver(<<"groupchat">>, <<"Room@muc.localhost/Alice">>, ?BOB, <<"in the room">>),
    [Request] = wait_publishes(1),
    ?assertEqual(#{<<"message-count">> => <<"1">>,
                   <<"last-message-sender">> => <<"room@muc.localhost/Alice">>,
                   <<"last-message-body">> => <<"in the room">>},
                 summary_values(Request)).

unread_count_comes_from_the_inbox_hook(Config) ->
    start(Config, #{}),
    service(?PUBSUB, result),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    Handler = fun ?MODULE:inbox_unread_count/3,
    gen_hook:add_handler(inbox_unread_count, ?HT, Handler, #{}, 50),
    try
        deliver(<<"chat">>, ?ALICE, ?BOB, <<"seventh">>),
        [Request] = wait_publishes(1),
        ?assertMatch(#{<<"message-count">> := <<"7">>}, summary_values(Request))
    after
        gen_hook:delete_handler(inbox_unread_count, ?HT, Handler, #{}, 50)
    end.

%% mod_inbox's part: the unread count of the user.
inbox_unread_count(Acc, #{user := _}, _Extra) ->
    {ok, mongoose_acc:set(inbox, unread_count, 7, Acc)}.

bodiless_messages_are_skipped(Config) ->
    start(Config, #{}),
    service(?PUBSUB, result),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    deliver(<<"chat">>, ?ALICE, ?BOB, undefined),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<>>),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"marker">>),
    [Request] = wait_publishes(1),
    ?assertMatch(#{<<"last-message-body">> := <<"marker">>}, summary_values(Request)),
    ?assertEqual(1, length(settled_publishes())).

cancel_error_disables_and_wait_error_does_not(Config) ->
    start(Config, #{}),
    service(?PUBSUB, {error, <<"wait">>}),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"one">>),
    wait_events(mod_event_pusher_push_publish, #{error_replied => 1}, 1),
    wait_stats(#{failed => 1}),
    ?assertEqual([{jid:from_binary(?PUBSUB), <<"node-b">>, #{}}], services(<<"bob@localhost">>)),
    service(?PUBSUB, {error, <<"cancel">>}),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"two">>),
    wait_events(mod_event_pusher_push_publish, #{disabled => 1}, 1),
    wait_until(fun() -> services(<<"bob@localhost">>) =:= [] end),
    wait_stats(#{failed => 2, delivered => 0}),
    %% Nothing left to publish to.
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"three">>),
    ?assertEqual(2, length(settled_publishes())).

timeout_is_counted_and_keeps_the_registration(Config) ->
    start(Config, #{publish_timeout_ms => 300}),
    service(?PUBSUB, noreply),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"nobody answers">>),
    wait_events(mod_event_pusher_push_publish, #{timed_out => 1}, 1),
    wait_stats(#{failed => 1, delivered => 0, in_flight => 0}),
    ?assertEqual([{jid:from_binary(?PUBSUB), <<"node-b">>, #{}}], services(<<"bob@localhost">>)).

%% A pubsub domain that no component serves and that is not local goes to s2s,
%% which bounces remote-server-not-found (type cancel) at once: as for any cancel
%% error, the publish fails and the registration is disabled.
unreachable_pubsub_domain_is_a_cancel_error(Config) ->
    start(Config, #{}),
    Nowhere = <<"pubsub.nowhere.example">>,
    register_offline_bob(Nowhere, <<"node-b">>, []),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"to nowhere">>),
    wait_events(mod_event_pusher_push_publish, #{disabled => 1}, 1),
    wait_stats(#{failed => 1, delivered => 0, in_flight => 0}),
    ?assertEqual([], services(<<"bob@localhost">>)),
    [Bounce] = [El || {_, _, #xmlel{attrs = #{<<"type">> := <<"error">>}} = El}
                          <- ejabberd_local:routed()],
    ?assertMatch([_, #xmlel{name = <<"error">>,
                            children = [#xmlel{name = <<"remote-server-not-found">>}]}],
                 Bounce#xmlel.children).

%%% Virtual pubsub hosts and the enhanced plugin

virtual_pubsub_host_runs_the_hook(Config) ->
    start(Config, #{virtual_pubsub_hosts => ["virtual.@HOST@"]}),
    Handler = fun ?MODULE:push_notifications/3,
    gen_hook:add_handler(push_notifications, ?HT, Handler, #{test => self()}, 50),
    try
        register_offline_bob(?VIRTUAL, <<"device">>, [{<<"token">>, [<<"abc">>]}]),
        deliver(<<"chat">>, ?ALICE, ?BOB, <<"via the hook">>),
        receive {push_notifications, PubSub, Params} ->
                ?assertEqual(jid:from_binary(?VIRTUAL), PubSub),
                ?assertEqual(#{options => #{<<"token">> => <<"abc">>},
                               notification_forms =>
                                   [#{<<"message-count">> => <<"1">>,
                                      <<"last-message-sender">> => <<"alice@localhost">>,
                                      <<"last-message-body">> => <<"via the hook">>}]},
                             Params)
        after 5000 -> ct:fail(no_push_notifications_hook)
        end,
        %% device_not_registered: the registration goes; no IQ was routed.
        ?assertEqual([], services(<<"bob@localhost">>)),
        ?assertEqual([], publishes())
    after
        gen_hook:delete_handler(push_notifications, ?HT, Handler, #{test => self()}, 50)
    end.

%% A push service's part (mod_push_service_mongoosepush): the device is gone.
push_notifications(Acc, Params, #{test := Test}) ->
    Test ! {push_notifications, mongoose_acc:get(push_notifications, pubsub_jid, undefined, Acc),
            Params},
    {ok, {error, device_not_registered}}.

%% A message left unacknowledged when Bob's session went away is pushed to the
%% service that session enabled, although Bob still counts as online.
enhanced_plugin_pushes_unacknowledged_messages(Config) ->
    start(Config, #{plugin_module => mod_event_pusher_push_plugin_enhanced}),
    service(?PUBSUB, result),
    ok = ejabberd_auth:register_user(jid:from_binary(?BOB)),
    Sid = login(?BOB),
    result = iq_type(iq(?BOB, Sid, enable(?PUBSUB, <<"node-b">>, []))),
    Msg = hook_driver:message(?ALICE, ?BOB, <<"chat">>, hook_driver:body(<<"unacked">>)),
    {ok, _} = gen_hook:run_fold(unacknowledged_message, ?HT, hook_driver:acc(?HT, ?ALICE, ?BOB, Msg),
                                #{jid => jid:from_binary(?BOB)}),
    [Request] = wait_publishes(1),
    ?assertMatch(#{<<"last-message-body">> := <<"unacked">>}, summary_values(Request)),
    %% The default plugin would not push it: Bob is online.
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"online, not pushed">>),
    ?assertEqual(1, length(settled_publishes())).

%% published_services: the unacknowledged-message event for a stanza already pushed
%% when it was delivered does not push it again.
one_publish_per_service_per_stanza(Config) ->
    start(Config, #{plugin_module => mod_event_pusher_push_plugin_enhanced}),
    service(?PUBSUB, result),
    ok = ejabberd_auth:register_user(jid:from_binary(?BOB)),
    Sid = login(?BOB),
    result = iq_type(iq(?BOB, Sid, enable(?PUBSUB, <<"node-b">>, []))),
    ok = ejabberd_sm:set_priority(jid:from_binary(?BOB), undefined),
    Msg = hook_driver:message(?ALICE, ?BOB, <<"chat">>, hook_driver:body(<<"once">>)),
    Acc0 = hook_driver:acc(?HT, ?ALICE, ?BOB, Msg),
    {ok, {_, _, Acc1, _}} = gen_hook:run_fold(filter_local_packet, ?HT,
                                              {jid:from_binary(?ALICE), jid:from_binary(?BOB),
                                               Acc0, Msg}, #{}),
    {ok, _} = gen_hook:run_fold(unacknowledged_message, ?HT, Acc1,
                                #{jid => jid:from_binary(?BOB)}),
    [_] = wait_publishes(1),
    ?assertEqual(1, length(settled_publishes())).

%% A plugin exporting only prepare_notification/2: its payload, the default filter
%% and publishing.
custom_plugin_callbacks_fall_back_to_the_defaults(Config) ->
    start(Config, #{plugin_module => mod_event_pusher_push_custom}),
    service(?PUBSUB, result),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"secret text">>),
    [Request] = wait_publishes(1),
    ?assertEqual(#{<<"message-count">> => <<"1">>, <<"last-message-sender">> => <<"alice">>,
                   <<"last-message-body">> => <<"New message">>}, summary_values(Request)),
    %% The default filter still applies: online, nothing.
    _ = ejabberd_sm:open_session(?HT, jid:from_binary(?BOB), 0),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"online">>),
    ?assertEqual(1, length(settled_publishes())).

%% One publish in progress (wpool.workers = 1, the service never answers), one queued:
%% the rest are dropped and counted.
full_queue_drops_are_counted(Config) ->
    start(Config, #{workers => 1, publish_timeout_ms => 1000,
                    extra => "  queue.max_events = 1\n"}),
    service(?PUBSUB, noreply),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"1">>),
    wait_stats(#{in_flight => 1}),
    [deliver(<<"chat">>, ?ALICE, ?BOB, integer_to_binary(N)) || N <- lists:seq(2, 5)],
    wait_stats(#{accepted => 5, in_flight => 1, queued => 1, dropped => 3}),
    wait_until(fun() -> 3 =:= lists:sum([D || #{dropped := D} <- mongoose_instrument:get_events(
                                                                    mod_event_pusher_push_delivery,
                                                                    ?LABELS)])
               end).

%% Stopping the module delivers what is queued: the reporter keeps routing while the
%% instance drains.
stop_drains_pending_publishes(Config) ->
    start(Config, #{workers => 1}),
    service(?PUBSUB, {slow, 50}),
    register_offline_bob(?PUBSUB, <<"node-b">>, []),
    [deliver(<<"chat">>, ?ALICE, ?BOB, integer_to_binary(N)) || N <- lists:seq(1, 5)],
    Instance = mod_event_pusher_instance:instance(?HT, push),
    ok = mongoose_modules:stop(),
    ?assertMatch(#{accepted := 5, delivered := 5, failed := 0, queued := 0},
                 mod_event_pusher_nif:stats(Instance)),
    ?assertEqual(5, length(publishes())).

%%% Storage

remove_user_clears_registrations(Config) ->
    start(Config, #{}),
    register_offline_bob(?PUBSUB, <<"n1">>, []),
    register_offline_bob(<<"pubsub.other.example">>, <<"n2">>, []),
    ?assertEqual(2, length(services(<<"bob@localhost">>))),
    Acc = mongoose_acc:new(#{location => #{mfa => {?MODULE, ?FUNCTION_NAME, ?FUNCTION_ARITY},
                                           file => ?FILE, line => ?LINE},
                             host_type => ?HT, lserver => ?HT, element => undefined}),
    {ok, _} = gen_hook:run_fold(remove_user, ?HT, Acc, #{jid => jid:from_binary(<<"bob@localhost">>)}),
    ?assertEqual([], services(<<"bob@localhost">>)).

registrations_survive_a_module_restart(Config) ->
    start(Config, #{}),
    register_offline_bob(?PUBSUB, <<"n1">>, [{<<"secret">>, [<<"s">>]}]),
    mongoose_host:stop(),
    stopped = mnesia:stop(),
    ok = mnesia:start(),
    ok = mnesia:wait_for_tables([push_subscription], 10000),
    start(Config, #{}),
    ?assertEqual([{jid:from_binary(?PUBSUB), <<"n1">>, #{<<"secret">> => <<"s">>}}],
                 services(<<"bob@localhost">>)),
    service(?PUBSUB, result),
    ok = ejabberd_auth:register_user(jid:from_binary(?BOB)),
    deliver(<<"chat">>, ?ALICE, ?BOB, <<"after restart">>),
    [_] = wait_publishes(1).

%%% Helpers: the host

%% Spec: plugin_module, virtual_pubsub_hosts, publish_timeout_ms, workers, extra.
start(Config, Spec) ->
    Toml = ["[general]\n  hosts = [\"localhost\"]\n  default_server_domain = \"localhost\"\n\n",
            "[modules.mod_event_pusher.push]\n",
            "  backend = \"mnesia\"\n",
            "  wpool.workers = ", integer_to_list(maps:get(workers, Spec, 4)), "\n",
            maps:get(extra, Spec, ""),
            [["  plugin_module = \"", atom_to_list(M), "\"\n"]
             || {ok, M} <- [maps:find(plugin_module, Spec)]],
            [["  virtual_pubsub_hosts = [", lists:join(", ", [["\"", H, "\""] || H <- Hosts]),
              "]\n"] || {ok, Hosts} <- [maps:find(virtual_pubsub_hosts, Spec)]],
            [["  publish_timeout_ms = ", integer_to_list(T), "\n"]
             || {ok, T} <- [maps:find(publish_timeout_ms, Spec)]]],
    ok = mongoose_host:start_toml(?config(priv_dir, Config), Toml),
    ejabberd_sm:reset(),
    ejabberd_local:reset(),
    ejabberd_auth:reset().

deliver(Type, From, To, Body) ->
    push_client:route_message(?HT, Type, From, To, Body).

summary_values(#xmlel{} = Request) ->
    Fields = exml_query:paths(Request, [{element, <<"pubsub">>}, {element, <<"publish">>},
                                        {element, <<"item">>}, {element, <<"notification">>},
                                        {element, <<"x">>}, {element, <<"field">>}]),
    maps:from_list([{exml_query:attr(F, <<"var">>),
                     exml_query:path(F, [{element, <<"value">>}, cdata])}
                    || F <- Fields, exml_query:attr(F, <<"var">>) =/= <<"FORM_TYPE">>]).

%%% Helpers: stanzas

%%% Helpers: outcomes

login(Jid) ->
    push_client:login(?HT, Jid).

%% The publishes once every accepted event has been routed and answered. Whether an
%% event is published is decided on the hook path (it is queued, and counted as
%% accepted, before the hook returns), so this is exact: no event of the case can
%% still be on its way.
settled_publishes() ->
    push_client:wait_stats(?HT, #{queued => 0, in_flight => 0}),
    publishes().

register_offline_bob(PubSub, Node, FormFields) ->
    push_client:register_offline(?HT, ?BOB, PubSub, Node, FormFields).

services(BareJid) ->
    push_client:services(?HT, BareJid).

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
