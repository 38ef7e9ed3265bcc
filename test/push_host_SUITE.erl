%% Checks of the MongooseIM stand-in's services that mod_event_pusher_push
%% relies on (sessions, IQ routing and handlers, auth, forms, backends), and
%% of the production mnesia backend of XEP-0357 registrations, with mnesia
%% on a disc schema in the priv_dir.
-module(push_host_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("jlib.hrl").
-include("session.hrl").

-define(HT, <<"localhost">>).
-define(LOCATION, #{mfa => {?MODULE, ?FUNCTION_NAME, ?FUNCTION_ARITY},
                    line => ?LINE, file => ?FILE}).
-define(PUBSUB, <<"pubsub.remote.example">>).
-define(RECEIVE_MS, 2000).

all() ->
    [{group, ejabberd_sm}, {group, routing}, {group, gen_iq_handler}, {group, xml},
     {group, misc}, {group, mnesia_backend}].

groups() ->
    [{ejabberd_sm, [], [sessions_and_info,
                        store_info_needs_a_sid,
                        raw_sessions_one_per_resource,
                        is_offline_follows_priorities]},
     {routing, [], [route_iq_result_from_service,
                    route_iq_error_reply_gets_the_request_id,
                    route_iq_timeout,
                    route_iq_to_unknown_domain_bounces,
                    reply_to_other_jid_is_not_a_reply,
                    reset_forgets_everything,
                    local_delivery_runs_filter_local_packet,
                    filter_local_packet_can_drop,
                    message_to_users,
                    iq_to_the_server,
                    iq_to_a_user]},
     {gen_iq_handler, [], [iq_handler_replies,
                           iq_handler_crash_is_internal_server_error,
                           iq_handler_ignore_and_no_handler,
                           invalid_iq_is_bad_request]},
     {xml, [parallel], [iq_conversions,
                        xmpp_errors,
                        find_and_parse_forms,
                        build_forms]},
     {misc, [], [auth_users,
                 log_if_backend_error,
                 opts_for_module,
                 backend_dispatch_needs_init]},
     {mnesia_backend, [], [mnesia_table_shape,
                           create_table_tolerates_existing_table,
                           enable_get_and_disable,
                           enable_replaces_the_same_node,
                           calls_are_instrumented,
                           registrations_survive_restart,
                           errors_when_mnesia_is_down]}].

init_per_suite(Config) ->
    ok = push_client:start_mnesia(filename:join(?config(priv_dir, Config), "mnesia")),
    mongoose_host:start([{hosts, [?HT]}]),
    Config.

end_per_suite(_Config) ->
    mongoose_host:stop(),
    push_client:stop_mnesia().

init_per_group(mnesia_backend, Config) ->
    ok = mod_event_pusher_push_backend:init(?HT, #{backend => mnesia}),
    Config;
init_per_group(_Group, Config) ->
    Config.

end_per_group(_Group, _Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    ejabberd_sm:reset(),
    ejabberd_local:reset(),
    ejabberd_auth:reset(),
    case lists:member(push_subscription, mnesia:system_info(tables)) of
        true -> {atomic, ok} = mnesia:clear_table(push_subscription);
        false -> ok
    end,
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

%%% ejabberd_sm and mongoose_session

sessions_and_info(_Config) ->
    Jid = jid:make(<<"Alice">>, ?HT, <<"phone">>),
    ?assertEqual({error, offline}, ejabberd_sm:get_info(Jid, publish_service)),
    {_, Pid} = Sid = ejabberd_sm:open_session(?HT, Jid, 0),
    ?assertEqual(self(), Pid),
    ?assertEqual({error, not_set}, ejabberd_sm:get_info(Jid, publish_service)),
    Service = {jid:from_binary(?PUBSUB), <<"node">>, #{}},
    ok = ejabberd_sm:store_info(Jid, Sid, publish_service, Service),
    ?assertEqual({ok, Service}, ejabberd_sm:get_info(Jid, publish_service)),
    %% another resource has its own info
    ?assertEqual({error, offline},
                 ejabberd_sm:get_info(jid:replace_resource(Jid, <<"pc">>), publish_service)),
    [Session] = ejabberd_sm:get_raw_sessions(jid:to_bare(Jid)),
    ?assertMatch(#session{sid = Sid, usr = {<<"alice">>, ?HT, <<"phone">>},
                          us = {<<"alice">>, ?HT}, priority = 0}, Session),
    ?assertEqual(<<"phone">>, mongoose_session:get_resource(Session)),
    ?assertEqual({publish_service, Service},
                 mongoose_session:get_info(Session, publish_service, undefined)),
    ?assertEqual(none, mongoose_session:get_info(Session, other_key, none)),
    ok = ejabberd_sm:remove_info(Jid, Sid, publish_service),
    ?assertEqual({error, not_set}, ejabberd_sm:get_info(Jid, publish_service)),
    ok = ejabberd_sm:store_info(Jid, Sid, key, value),
    ok = ejabberd_sm:store_info(Jid, Sid, key, undefined),
    ?assertEqual({error, not_set}, ejabberd_sm:get_info(Jid, key)),
    %% an unknown sid changes nothing
    ok = ejabberd_sm:store_info(Jid, {1, self()}, key, value),
    ?assertEqual({error, not_set}, ejabberd_sm:get_info(Jid, key)),
    ok = ejabberd_sm:close_session(Jid),
    ?assertEqual({error, offline}, ejabberd_sm:get_info(Jid, key)),
    ?assertEqual([], ejabberd_sm:get_raw_sessions(jid:to_bare(Jid))).

store_info_needs_a_sid(_Config) ->
    Jid = jid:make(<<"alice">>, ?HT, <<"phone">>),
    _ = ejabberd_sm:open_session(?HT, Jid, 0),
    ?assertError(function_clause, ejabberd_sm:store_info(Jid, undefined, key, value)),
    ?assertError(function_clause, ejabberd_sm:remove_info(Jid, undefined, key)).

raw_sessions_one_per_resource(_Config) ->
    Phone = jid:make(<<"alice">>, ?HT, <<"phone">>),
    Pc = jid:make(<<"alice">>, ?HT, <<"pc">>),
    Sid1 = ejabberd_sm:open_session(?HT, Phone, 0),
    Sid2 = ejabberd_sm:open_session(?HT, Pc, undefined),
    Sid3 = ejabberd_sm:open_session(?HT, Phone, 5),
    ?assert(Sid1 < Sid2 andalso Sid2 < Sid3),
    _ = ejabberd_sm:open_session(?HT, jid:make(<<"bob">>, ?HT, <<"phone">>), 0),
    ?assertEqual([Sid2, Sid3],
                 [Sid || #session{sid = Sid} <- ejabberd_sm:get_raw_sessions(jid:to_bare(Phone))]),
    %% get_info reads the newest session of the full JID
    ok = ejabberd_sm:store_info(Phone, Sid1, key, old),
    ?assertEqual({error, not_set}, ejabberd_sm:get_info(Phone, key)),
    ok = ejabberd_sm:store_info(Phone, Sid3, key, new),
    ?assertEqual({ok, new}, ejabberd_sm:get_info(Phone, key)).

is_offline_follows_priorities(_Config) ->
    Phone = jid:make(<<"alice">>, ?HT, <<"phone">>),
    Pc = jid:make(<<"alice">>, ?HT, <<"pc">>),
    Bare = jid:to_bare(Phone),
    ?assert(ejabberd_sm:is_offline(Bare)),
    _ = ejabberd_sm:open_session(?HT, Phone, undefined),
    _ = ejabberd_sm:open_session(?HT, Pc, -1),
    ?assert(ejabberd_sm:is_offline(Bare)),
    ?assert(ejabberd_sm:is_offline(Phone)),
    ok = ejabberd_sm:set_priority(Pc, 0),
    ?assertNot(ejabberd_sm:is_offline(Bare)),
    ?assertNot(ejabberd_sm:is_offline(Phone)),
    ?assert(ejabberd_sm:is_offline(jid:make(<<"bob">>, ?HT, <<>>))),
    ok = ejabberd_sm:close_session(Pc),
    ?assert(ejabberd_sm:is_offline(Bare)).

%%% ejabberd_local and ejabberd_router

route_iq_result_from_service(_Config) ->
    Self = self(),
    {From, To, Acc} = iq_parties(),
    Payload = #xmlel{name = <<"pubsub">>, attrs = #{<<"xmlns">> => ?NS_PUBSUB}},
    ok = ejabberd_local:register_service(?PUBSUB, fun(El) ->
        Self ! {service_got, El},
        {reply, #xmlel{name = <<"iq">>,
                       attrs = #{<<"type">> => <<"result">>,
                                 <<"id">> => exml_query:attr(El, <<"id">>)},
                       children = [Payload]}}
    end),
    Acc = ejabberd_local:route_iq(From, To, Acc, #iq{type = set, sub_el = Payload},
                                  reply_to(Self)),
    Request = receive {service_got, El} -> El after ?RECEIVE_MS -> ct:fail(no_request) end,
    ?assertEqual(<<"set">>, exml_query:attr(Request, <<"type">>)),
    ?assertEqual(?HT, exml_query:attr(Request, <<"from">>)),
    ?assertEqual(?PUBSUB, exml_query:attr(Request, <<"to">>)),
    ?assertEqual([Payload], Request#xmlel.children),
    Id = exml_query:attr(Request, <<"id">>),
    ?assert(is_binary(Id) andalso Id =/= <<>>),
    {CbPid, ReplyFrom, ReplyTo, ReplyAcc, Reply} = receive_callback(),
    ?assertNotEqual(self(), CbPid),
    ?assertEqual({To, From}, {ReplyFrom, ReplyTo}),
    ?assertMatch(#iq{type = result, id = Id, sub_el = [Payload]}, Reply),
    ?assertEqual(?HT, mongoose_acc:host_type(ReplyAcc)),
    ?assertEqual(<<"result">>, mongoose_acc:stanza_type(ReplyAcc)),
    %% both stanzas are recorded, the request as route_iq built it
    [{From, To, RoutedRequest}, {To, From, _RoutedReply}] = ejabberd_local:routed(),
    ?assertEqual(#xmlel{name = <<"iq">>, attrs = #{<<"type">> => <<"set">>, <<"id">> => Id},
                        children = [Payload]},
                 RoutedRequest),
    %% At most once: the same reply again finds no callback (local delivery is
    %% synchronous, so a callback would have run before route/4 returned).
    Again = #xmlel{name = <<"iq">>, attrs = #{<<"type">> => <<"result">>, <<"id">> => Id}},
    _ = ejabberd_router:route(To, From, Acc, Again),
    no_more_callbacks().

route_iq_error_reply_gets_the_request_id(_Config) ->
    {From, To, Acc} = iq_parties(),
    Error = #xmlel{name = <<"error">>, attrs = #{<<"type">> => <<"cancel">>},
                   children = [mongoose_xmpp_errors:item_not_found()]},
    ok = ejabberd_local:register_service(?PUBSUB, fun(#xmlel{children = Children}) ->
        {reply, #xmlel{name = <<"iq">>, attrs = #{<<"type">> => <<"error">>},
                       children = Children ++ [Error]}}
    end),
    Payload = #xmlel{name = <<"pubsub">>, attrs = #{<<"xmlns">> => ?NS_PUBSUB}},
    _ = ejabberd_local:route_iq(From, To, Acc, #iq{type = get, sub_el = Payload}, reply_to(self())),
    {_, _, _, _, Reply} = receive_callback(),
    ?assertMatch(#iq{type = error, sub_el = [Payload, Error]}, Reply),
    ?assertEqual(0, pending_callbacks()).

route_iq_timeout(_Config) ->
    {From, To, Acc} = iq_parties(),
    ok = ejabberd_local:set_iq_timeout(50),
    ok = ejabberd_local:register_service(?PUBSUB, fun(_) -> noreply end),
    _ = ejabberd_local:route_iq(From, To, Acc, #iq{type = set, sub_el = []}, reply_to(self())),
    ?assertMatch({Pid, undefined, undefined, undefined, timeout} when Pid =/= self(),
                 receive_callback()),
    %% a late reply is not delivered
    [{From, To, Request}] = ejabberd_local:routed(),
    Late = #xmlel{name = <<"iq">>, attrs = #{<<"type">> => <<"result">>,
                                             <<"id">> => exml_query:attr(Request, <<"id">>)}},
    Acc = ejabberd_router:route(To, From, Acc, Late),
    no_more_callbacks(),
    ?assertEqual(2, length(ejabberd_local:routed())).

%% No component serves the domain and it is not local: s2s, with no connection to
%% open, bounces remote-server-not-found, and the callback gets that error (not a
%% timeout 32 s later).
route_iq_to_unknown_domain_bounces(_Config) ->
    {From, To, Acc} = iq_parties(),
    Payload = #xmlel{name = <<"pubsub">>, attrs = #{<<"xmlns">> => ?NS_PUBSUB}},
    _ = ejabberd_local:route_iq(From, To, Acc, #iq{type = set, sub_el = Payload},
                                reply_to(self())),
    {_, To, From, _, Reply} = receive_callback(),
    ?assertMatch(#iq{type = error,
                     sub_el = [Payload, #xmlel{name = <<"error">>,
                                               children = [#xmlel{name = <<"remote-server-not-found">>}]}]},
                 Reply),
    ?assertEqual(0, pending_callbacks()).

reply_to_other_jid_is_not_a_reply(_Config) ->
    {From, To, Acc} = iq_parties(),
    ok = ejabberd_local:register_service(?PUBSUB, fun(_) -> noreply end),
    _ = ejabberd_local:route_iq(From, To, Acc, #iq{type = set, sub_el = []}, reply_to(self())),
    [{From, To, Request}] = ejabberd_local:routed(),
    Reply = #xmlel{name = <<"iq">>, attrs = #{<<"type">> => <<"result">>,
                                              <<"id">> => exml_query:attr(Request, <<"id">>)}},
    %% To a user: ejabberd_sm, which drops results (synchronous: no callback ran).
    _ = ejabberd_router:route(To, jid:make(<<"bob">>, ?HT, <<>>), Acc, Reply),
    no_more_callbacks(),
    _ = ejabberd_router:route(To, From, Acc, Reply),
    {_, To, From, ReplyAcc, #iq{type = result, sub_el = []}} = receive_callback(),
    %% The Acc as local delivery leaves it: stripped for the recipient, the reply its stanza.
    ?assertEqual({?HT, Reply}, {mongoose_acc:host_type(ReplyAcc), mongoose_acc:element(ReplyAcc)}).

reset_forgets_everything(_Config) ->
    {From, To, Acc} = iq_parties(),
    ok = ejabberd_local:set_iq_timeout(50),
    ok = ejabberd_local:register_service(?PUBSUB, fun(_) -> noreply end),
    _ = ejabberd_local:route_iq(From, To, Acc, #iq{type = set, sub_el = []}, reply_to(self())),
    ok = ejabberd_local:reset(),
    ?assertEqual([], ejabberd_local:routed()),
    ?assertEqual(error, ejabberd_local:lookup_service(To)),
    %% Callbacks are only ever called from that table.
    ?assertEqual(0, pending_callbacks()),
    %% and the forgotten timer, due before this one, called nothing.
    ok = ejabberd_local:set_iq_timeout(50),
    ok = ejabberd_local:register_service(?PUBSUB, fun(_) -> noreply end),
    _ = ejabberd_local:route_iq(From, To, Acc, #iq{type = set, sub_el = []}, marker_to(self())),
    receive {marker, timeout} -> ok after ?RECEIVE_MS -> ct:fail(no_marker_timeout) end,
    no_more_callbacks().

%% As MongooseIM's local delivery: the Acc stripped for the recipient (host type and
%% lserver of the recipient's domain), then `filter_local_packet', then ejabberd_sm,
%% which runs `offline_message' for an offline user that exists.
local_delivery_runs_filter_local_packet(_Config) ->
    Bob = jid:make(<<"bob">>, ?HT, <<>>),
    ok = ejabberd_auth:register_user(Bob),
    Hooks = [{filter_local_packet, ?HT, fun ?MODULE:filter_probe/3, #{pid => self()}, 50},
             {offline_message, ?HT, fun ?MODULE:offline_probe/3, #{pid => self()}, 50}],
    ok = gen_hook:add_handlers(Hooks),
    try
        route_message(<<"alice@remote.example/r">>, <<"bob@localhost">>, <<"chat">>),
        receive_exactly([{filter_local_packet, ?HT, ?HT}, {offline_message, Bob}])
    after
        gen_hook:delete_handlers(Hooks)
    end.

filter_probe({_, _, Acc, _} = FPacket, _, #{pid := Pid}) ->
    Pid ! {filter_local_packet, mongoose_acc:host_type(Acc), mongoose_acc:lserver(Acc)},
    {ok, FPacket}.

offline_probe(Acc, #{to := To}, #{pid := Pid}) ->
    Pid ! {offline_message, To},
    {ok, Acc}.

drop_packet(_FPacket, _, _) ->
    {stop, drop}.

filter_local_packet_can_drop(_Config) ->
    Bob = jid:make(<<"bob">>, ?HT, <<"pc">>),
    _ = ejabberd_sm:open_session(?HT, Bob, 0),
    Drop = {filter_local_packet, ?HT, fun ?MODULE:drop_packet/3, #{}, 50},
    ok = gen_hook:add_handler(Drop),
    try
        route_message(<<"alice@localhost/r">>, <<"bob@localhost/pc">>, <<"chat">>),
        ?assertEqual([], mailbox())
    after
        gen_hook:delete_handler(Drop)
    end,
    route_message(<<"alice@localhost/r">>, <<"bob@localhost/pc">>, <<"chat">>),
    ?assertMatch([{route, _}], mailbox()).

%% To a session's process as `{route, Acc}': a full JID to its session, a bare JID to
%% the available sessions of the highest priority. Offline: an unknown user gets
%% service-unavailable back (to the sender's session), a headline is bounced, an
%% error is dropped.
message_to_users(_Config) ->
    Alice = jid:make(<<"alice">>, ?HT, <<"r">>),
    _ = ejabberd_sm:open_session(?HT, Alice, 0),
    route_message(<<"bob@localhost/pc">>, <<"alice@localhost/r">>, <<"chat">>),
    route_message(<<"bob@localhost/pc">>, <<"alice@localhost">>, <<"normal">>),
    ?assertMatch([{route, _}, {route, _}], mailbox()),
    route_message(<<"alice@localhost/r">>, <<"nobody@localhost">>, <<"chat">>),
    route_message(<<"alice@localhost/r">>, <<"bob@localhost">>, <<"headline">>),
    route_message(<<"alice@localhost/r">>, <<"bob@localhost">>, <<"error">>),
    Bounced = [mongoose_acc:element(A) || {route, A} <- mailbox()],
    ?assertMatch([#xmlel{attrs = #{<<"type">> := <<"error">>, <<"from">> := <<"nobody@localhost">>,
                                   <<"to">> := <<"alice@localhost/r">>}},
                  #xmlel{attrs = #{<<"type">> := <<"error">>, <<"from">> := <<"bob@localhost">>}}],
                 Bounced),
    [?assertEqual(mongoose_xmpp_errors:service_unavailable(), lists:last(El#xmlel.children))
     || El <- Bounced].

%% An IQ request to the domain goes to its ejabberd_local handler and the reply back
%% to the sender's session; without a handler, feature-not-implemented.
iq_to_the_server(_Config) ->
    {User, Domain, _} = handler_parties(),
    _ = ejabberd_sm:open_session(?HT, User, 0),
    ok = gen_iq_handler:add_iq_handler(ejabberd_local, ?HT, ?NS_PUSH, ?MODULE, push_iq_handler,
                                       one_queue),
    route_iq_element(User, Domain, push_child(<<"enable">>)),
    ?assertMatch([{handler_got, User, Domain, _, #iq{type = set}},
                  {route, _}], mailbox()),
    ok = gen_iq_handler:remove_iq_handler(ejabberd_local, ?HT, ?NS_PUSH),
    route_iq_element(User, Domain, push_child(<<"enable">>)),
    [{route, Acc}] = mailbox(),
    ?assertEqual(mongoose_xmpp_errors:feature_not_implemented(),
                 lists:last((mongoose_acc:element(Acc))#xmlel.children)).

%% To the user's bare JID: the ejabberd_sm handler (none: service-unavailable).
iq_to_a_user(_Config) ->
    {User, _, _} = handler_parties(),
    Bare = jid:to_bare(User),
    _ = ejabberd_sm:open_session(?HT, User, 0),
    ok = gen_iq_handler:add_iq_handler(ejabberd_sm, ?HT, ?NS_PUSH, ?MODULE, push_iq_handler,
                                       no_queue),
    route_iq_element(User, Bare, push_child(<<"enable">>)),
    [{handler_got, User, Bare, _, _}, {route, Acc}] = mailbox(),
    ?assertMatch(#xmlel{attrs = #{<<"type">> := <<"result">>, <<"id">> := <<"id1">>}},
                 mongoose_acc:element(Acc)),
    ok = gen_iq_handler:remove_iq_handler(ejabberd_sm, ?HT, ?NS_PUSH),
    route_iq_element(User, Bare, push_child(<<"enable">>)),
    [{route, Acc2}] = mailbox(),
    ?assertEqual(mongoose_xmpp_errors:service_unavailable(),
                 lists:last((mongoose_acc:element(Acc2))#xmlel.children)).

%%% gen_iq_handler

iq_handler_replies(_Config) ->
    {User, Domain, Acc} = handler_parties(),
    ok = gen_iq_handler:add_iq_handler(ejabberd_local, ?HT, ?NS_PUSH, ?MODULE, push_iq_handler,
                                       one_queue),
    ?assertEqual({ok, {?MODULE, push_iq_handler, one_queue}},
                 gen_iq_handler:lookup_iq_handler(ejabberd_local, ?HT, ?NS_PUSH)),
    ?assertEqual(error, gen_iq_handler:lookup_iq_handler(ejabberd_sm, ?HT, ?NS_PUSH)),
    Enable = push_child(<<"enable">>),
    Reply = gen_iq_handler:process_iq(ejabberd_local, ?HT, Acc, User, Domain, iq(<<"set">>, Enable)),
    ?assertEqual(#xmlel{name = <<"iq">>,
                        attrs = #{<<"type">> => <<"result">>, <<"id">> => <<"id1">>,
                                  <<"from">> => ?HT, <<"to">> => <<"alice@localhost/phone">>}},
                 Reply),
    receive
        {handler_got, User, Domain, Acc, IQ} ->
            ?assertEqual(#iq{id = <<"id1">>, type = set, xmlns = ?NS_PUSH, sub_el = Enable}, IQ)
    after ?RECEIVE_MS -> ct:fail(handler_not_called)
    end,
    GetReply = gen_iq_handler:process_iq(ejabberd_local, ?HT, Acc, User, Domain,
                                         iq(<<"get">>, Enable)),
    ?assertEqual(<<"error">>, exml_query:attr(GetReply, <<"type">>)),
    ?assertEqual([Enable, mongoose_xmpp_errors:not_allowed()], GetReply#xmlel.children),
    ok = gen_iq_handler:remove_iq_handler(ejabberd_local, ?HT, ?NS_PUSH),
    ?assertEqual({error, no_handler},
                 gen_iq_handler:process_iq(ejabberd_local, ?HT, Acc, User, Domain,
                                           iq(<<"set">>, Enable))),
    ?assertError(#{what := invalid_iqdisc},
                 gen_iq_handler:add_iq_handler(ejabberd_sm, ?HT, ?NS_PUSH, ?MODULE,
                                               push_iq_handler, {queues, 0})).

iq_handler_crash_is_internal_server_error(_Config) ->
    {User, Domain, Acc} = handler_parties(),
    ok = gen_iq_handler:add_iq_handler(ejabberd_sm, ?HT, ?NS_PUSH, ?MODULE, push_iq_handler,
                                       parallel),
    log_guard:expect(#{what => process_iq_error, module => ?MODULE, reason => crash}),
    log_guard:expect(fun(#{msg := {report, #{what := process_iq_error,
                                             reason := {bad_iq_handler_return, _}}}}) -> true end),
    lists:foreach(
      fun(Name) ->
              Child = push_child(Name),
              Reply = gen_iq_handler:process_iq(ejabberd_sm, ?HT, Acc, User, Domain,
                                                iq(<<"set">>, Child)),
              ?assertEqual(#xmlel{name = <<"iq">>,
                                  attrs = #{<<"type">> => <<"error">>, <<"id">> => <<"id1">>,
                                            <<"from">> => ?HT,
                                            <<"to">> => <<"alice@localhost/phone">>},
                                  children = [Child, mongoose_xmpp_errors:internal_server_error()]},
                           Reply)
      end, [<<"crash">>, <<"bad_return">>]),
    ok = gen_iq_handler:remove_iq_handler(ejabberd_sm, ?HT, ?NS_PUSH).

iq_handler_ignore_and_no_handler(_Config) ->
    {User, Domain, Acc} = handler_parties(),
    ok = gen_iq_handler:add_iq_handler(ejabberd_local, ?HT, ?NS_PUSH, ?MODULE, push_iq_handler,
                                       no_queue),
    ?assertEqual(ignore, gen_iq_handler:process_iq(ejabberd_local, ?HT, Acc, User, Domain,
                                                   iq(<<"set">>, push_child(<<"ignore">>)))),
    Other = #xmlel{name = <<"query">>, attrs = #{<<"xmlns">> => <<"jabber:iq:version">>}},
    ?assertEqual({error, no_handler},
                 gen_iq_handler:process_iq(ejabberd_local, ?HT, Acc, User, Domain,
                                           iq(<<"get">>, Other))),
    ?assertEqual({error, no_handler},
                 gen_iq_handler:process_iq(ejabberd_local, <<"other.domain">>, Acc, User, Domain,
                                           iq(<<"set">>, push_child(<<"enable">>)))),
    ok = gen_iq_handler:remove_iq_handler(ejabberd_local, ?HT, ?NS_PUSH).

invalid_iq_is_bad_request(_Config) ->
    {User, Domain, Acc} = handler_parties(),
    ok = gen_iq_handler:add_iq_handler(ejabberd_local, ?HT, ?NS_PUSH, ?MODULE, push_iq_handler,
                                       one_queue),
    Two = #xmlel{name = <<"iq">>, attrs = #{<<"type">> => <<"set">>, <<"id">> => <<"id1">>},
                 children = [push_child(<<"enable">>), push_child(<<"disable">>)]},
    Reply = gen_iq_handler:process_iq(ejabberd_local, ?HT, Acc, User, Domain, Two),
    ?assertEqual(<<"error">>, exml_query:attr(Reply, <<"type">>)),
    ?assertEqual(mongoose_xmpp_errors:bad_request(), lists:last(Reply#xmlel.children)),
    ?assertEqual(not_a_request,
                 gen_iq_handler:process_iq(ejabberd_local, ?HT, Acc, User, Domain,
                                           iq(<<"result">>, push_child(<<"enable">>)))),
    ok = gen_iq_handler:remove_iq_handler(ejabberd_local, ?HT, ?NS_PUSH).

%% The IQ handler the gen_iq_handler cases register (as Module:Function).
push_iq_handler(From, To, Acc, #iq{type = get, sub_el = SubEl} = IQ) ->
    self() ! {handler_got, From, To, Acc, IQ},
    {Acc, IQ#iq{type = error, sub_el = [SubEl, mongoose_xmpp_errors:not_allowed()]}};
push_iq_handler(From, To, Acc, #iq{type = set, sub_el = #xmlel{name = Name}} = IQ) ->
    self() ! {handler_got, From, To, Acc, IQ},
    case Name of
        <<"enable">> -> {Acc, IQ#iq{type = result, sub_el = []}};
        <<"ignore">> -> {Acc, ignore};
        <<"crash">> -> error(crash);
        <<"bad_return">> -> IQ
    end.

%%% jlib, mongoose_xmpp_errors, mongoose_data_forms

iq_conversions(_Config) ->
    Child = push_child(<<"enable">>),
    ?assertEqual(<<"<iq id=\"i\" type=\"set\"><enable xmlns=\"urn:xmpp:push:0\"/></iq>">>,
                 exml:to_binary(jlib:iq_to_xml(#iq{id = <<"i">>, type = set, sub_el = Child}))),
    ?assertEqual(<<"<iq type=\"result\"/>">>,
                 exml:to_binary(jlib:iq_to_xml(#iq{type = result, sub_el = []}))),
    ?assertEqual(<<"<iq type=\"error\"><a/><b/></iq>">>,
                 exml:to_binary(jlib:iq_to_xml(#iq{type = error,
                                                   sub_el = [#xmlel{name = <<"a">>},
                                                             #xmlel{name = <<"b">>}]}))),
    WithCdata = (iq(<<"set">>, Child))#xmlel{children = [#xmlcdata{content = <<" ">>}, Child]},
    ?assertEqual(#iq{id = <<"id1">>, type = set, xmlns = ?NS_PUSH, sub_el = Child},
                 jlib:iq_query_info(WithCdata)),
    ?assertEqual(reply, jlib:iq_query_info(iq(<<"result">>, Child))),
    ?assertEqual(#iq{id = <<"id1">>, type = result, sub_el = [Child]},
                 jlib:iq_query_or_response_info(iq(<<"result">>, Child))),
    ?assertEqual(invalid, jlib:iq_query_info(iq(<<"bogus">>, Child))),
    ?assertEqual(invalid, jlib:iq_query_info(#xmlel{name = <<"iq">>,
                                                    attrs = #{<<"type">> => <<"get">>}})),
    ?assertEqual(not_iq, jlib:iq_query_info(#xmlel{name = <<"message">>})),
    Addressed = jlib:replace_from_to(jid:make(<<"a">>, ?HT, <<"r">>), jid:make(<<>>, ?HT, <<>>),
                                     #xmlel{name = <<"message">>}),
    ?assertEqual(#{<<"from">> => <<"a@localhost/r">>, <<"to">> => ?HT}, Addressed#xmlel.attrs).

xmpp_errors(_Config) ->
    Expected = [{not_allowed, <<"405">>, <<"cancel">>, <<"not-allowed">>},
                {bad_request, <<"400">>, <<"modify">>, <<"bad-request">>},
                {internal_server_error, <<"500">>, <<"wait">>, <<"internal-server-error">>},
                {item_not_found, <<"404">>, <<"cancel">>, <<"item-not-found">>},
                {service_unavailable, <<"503">>, <<"cancel">>, <<"service-unavailable">>}],
    [?assertEqual(<<"<error code=\"", Code/binary, "\" type=\"", Type/binary, "\"><",
                    Condition/binary, " xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/></error>">>,
                  exml:to_binary(mongoose_xmpp_errors:Fun()))
     || {Fun, Code, Type, Condition} <- Expected].

find_and_parse_forms(_Config) ->
    Form = #xmlel{name = <<"x">>,
                  attrs = #{<<"xmlns">> => ?NS_XDATA, <<"type">> => <<"submit">>},
                  children = [field(<<"FORM_TYPE">>, [?NS_PUBSUB_PUB_OPTIONS]),
                              field(<<"secret">>, [<<"s3cr3t">>]),
                              field(<<"multi">>, [<<"a">>, <<"b">>]),
                              field(<<"empty">>, []),
                              #xmlel{name = <<"field">>, children = [value(<<"no var">>)]}]},
    Parent = #xmlel{name = <<"enable">>,
                    children = [#xmlel{name = <<"x">>, attrs = #{<<"xmlns">> => <<"other">>}},
                                Form]},
    ?assertEqual(Form, mongoose_data_forms:find_form(Parent)),
    ?assertEqual(undefined, mongoose_data_forms:find_form(#xmlel{name = <<"enable">>})),
    ?assertEqual(#{type => <<"submit">>, ns => ?NS_PUBSUB_PUB_OPTIONS,
                   kvs => #{<<"secret">> => [<<"s3cr3t">>], <<"multi">> => [<<"a">>, <<"b">>],
                            <<"empty">> => []}},
                 mongoose_data_forms:parse_form_fields(Form)),
    TwoTypes = #xmlel{name = <<"x">>, attrs = #{<<"xmlns">> => ?NS_XDATA},
                      children = [field(<<"FORM_TYPE">>, [<<"a">>, <<"b">>])]},
    ?assertEqual(#{kvs => #{}}, mongoose_data_forms:parse_form_fields(TwoTypes)).

build_forms(_Config) ->
    Form = mongoose_data_forms:form(#{type => <<"submit">>, ns => <<"urn:xmpp:push:summary">>,
                                      fields => [#{var => <<"message-count">>,
                                                   values => [<<"1">>]},
                                                 #{var => <<"last-message-body">>,
                                                   values => [<<"Hi & bye">>]}]}),
    ?assertEqual(<<"<x type=\"submit\" xmlns=\"jabber:x:data\">"
                   "<field type=\"hidden\" var=\"FORM_TYPE\"><value>urn:xmpp:push:summary</value></field>"
                   "<field var=\"message-count\"><value>1</value></field>"
                   "<field var=\"last-message-body\"><value>Hi &amp; bye</value></field></x>">>,
                 exml:to_binary(Form)),
    ?assertEqual(#{type => <<"submit">>, ns => <<"urn:xmpp:push:summary">>,
                   kvs => #{<<"message-count">> => [<<"1">>],
                            <<"last-message-body">> => [<<"Hi & bye">>]}},
                 mongoose_data_forms:parse_form_fields(Form)),
    Full = mongoose_data_forms:form(#{ns => <<"ns">>, title => <<"T">>, instructions => <<"I">>,
                                      fields => [#{var => <<"v">>, type => <<"list-single">>,
                                                   label => <<"L">>,
                                                   options => [<<"o1">>, {<<"Two">>, <<"o2">>}]}]}),
    ?assertEqual(<<"form">>, exml_query:attr(Full, <<"type">>)),
    ?assertEqual([<<"title">>, <<"instructions">>, <<"field">>, <<"field">>],
                 [Name || #xmlel{name = Name} <- Full#xmlel.children]),
    ?assertEqual(<<"<field label=\"L\" type=\"list-single\" var=\"v\">"
                   "<option><value>o1</value></option>"
                   "<option label=\"Two\"><value>o2</value></option></field>">>,
                 exml:to_binary(lists:last(Full#xmlel.children))).

%%% ejabberd_auth, mongoose_lib, mongoose_module_metrics, mongoose_backend

auth_users(_Config) ->
    Alice = jid:make(<<"alice">>, ?HT, <<"phone">>),
    ?assertNot(ejabberd_auth:does_user_exist(?HT, Alice, stored)),
    ok = ejabberd_auth:register_user(Alice),
    ?assert(ejabberd_auth:does_user_exist(?HT, jid:to_bare(Alice), stored)),
    ?assert(ejabberd_auth:does_user_exist(?HT, Alice, with_anonymous)),
    ?assertNot(ejabberd_auth:does_user_exist(?HT, jid:make(<<"bob">>, ?HT, <<>>), stored)),
    ok = ejabberd_auth:set_failure(backend_down),
    ?assertError(backend_down, ejabberd_auth:does_user_exist(?HT, Alice, stored)),
    ok = ejabberd_auth:set_failure(none),
    ok = ejabberd_auth:unregister_user(jid:to_bare(Alice)),
    ?assertNot(ejabberd_auth:does_user_exist(?HT, Alice, stored)).

%% Successes log nothing; `{error, E}' and any other result are logged at error level,
%% once each, as MongooseIM 6.4 does (reason E of `{error, E}', the caller, the args).
log_if_backend_error(_Config) ->
    log_guard:expect(backend_error),
    [?assertEqual(ok, mongoose_lib:log_if_backend_error(R, ?MODULE, 1000 + I, {extra, I}))
     || {I, R} <- lists:enumerate([ok, {ok, 1}, {atomic, ok}, {updated, 1},
                                   {error, reason}, whatever])],
    Logged = [{Level, Report} || #{level := Level, msg := {report, Report}}
                                     <- log_guard:logged(backend_error)],
    ?assertEqual([{error, #{what => backend_error, text => <<"Error calling backend module">>,
                            caller_module => ?MODULE, caller_line => 1005,
                            reason => reason, args => {extra, 5}}},
                  {error, #{what => backend_error, text => <<"Unexpected return from backend">>,
                            caller_module => ?MODULE, caller_line => 1006,
                            reason => whatever, args => {extra, 6}}}],
                 Logged).

opts_for_module(_Config) ->
    ?assertEqual([{none, none}], mongoose_module_metrics:opts_for_module(?HT, mod_absent, [backend])),
    ok = mongoose_config:set_opt({modules, ?HT}, #{mod_present => #{backend => rdbms, iqdisc => parallel}}),
    try
        ?assertEqual([{backend, rdbms}],
                     mongoose_module_metrics:opts_for_module(?HT, mod_present, [backend])),
        ?assertEqual([{iqdisc, parallel}, {backend, rdbms}],
                     mongoose_module_metrics:opts_for_module(?HT, mod_present, [iqdisc, other, backend])),
        ?assertEqual([{none, none}],
                     mongoose_module_metrics:opts_for_module(?HT, mod_present, [other]))
    after
        mongoose_config:unset_opt({modules, ?HT})
    end.

backend_dispatch_needs_init(_Config) ->
    ?assertError(badarg, mod_event_pusher_push_backend:get_publish_services(
                           <<"unknown host type">>, jid:make(<<"a">>, ?HT, <<>>))),
    ?assertError(badarg, mongoose_backend:call(<<"unknown host type">>, mod_event_pusher_push,
                                               init, [])).

%%% mod_event_pusher_push_mnesia

mnesia_table_shape(_Config) ->
    ?assertEqual(mod_event_pusher_push_mnesia,
                 mongoose_backend:get_backend_module(?HT, mod_event_pusher_push)),
    ?assertEqual(bag, mnesia:table_info(push_subscription, type)),
    ?assertEqual([node()], mnesia:table_info(push_subscription, disc_copies)),
    ?assertEqual([user_jid, pubsub_jid, pubsub_node, form],
                 mnesia:table_info(push_subscription, attributes)),
    Alice = alice(),
    ok = mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1), <<"n">>, #{<<"k">> => <<"v">>}),
    ?assertEqual([{push_subscription, {<<"alice">>, ?HT}, pubsub(1), <<"n">>, #{<<"k">> => <<"v">>}}],
                 mnesia:dirty_read(push_subscription, {<<"alice">>, ?HT})).

create_table_tolerates_existing_table(_Config) ->
    Opts = [{disc_copies, [node()]}, {type, bag},
            {attributes, [user_jid, pubsub_jid, pubsub_node, form]}],
    ?assertEqual({aborted, {already_exists, push_subscription}},
                 mongoose_mnesia:create_table(push_subscription, Opts)),
    ?assertEqual(ok, mod_event_pusher_push_backend:init(?HT, #{backend => mnesia})),
    ?assertEqual({atomic, ok}, mongoose_mnesia:create_table(push_host_suite_tmp, [])),
    ?assertEqual({aborted, {already_exists, push_host_suite_tmp}},
                 mongoose_mnesia:create_table(push_host_suite_tmp, [{ram_copies, [node()]}])),
    {atomic, ok} = mnesia:delete_table(push_host_suite_tmp),
    log_guard:expect(#{what => mnesia_create_table_failed, table => push_host_suite_tmp}),
    ?assertError(#{what := mnesia_create_table_failed},
                 mongoose_mnesia:create_table(push_host_suite_tmp, [{attributes, [only_one]}])).

enable_get_and_disable(_Config) ->
    push_storage_contract:enable_get_and_disable(?HT).

enable_replaces_the_same_node(_Config) ->
    Alice = alice(),
    ok = mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1), <<"n">>, #{<<"a">> => <<"1">>}),
    ok = mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1), <<"n">>, #{<<"a">> => <<"2">>}),
    ok = mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1), <<"n">>, #{<<"a">> => <<"2">>}),
    ?assertEqual([{pubsub(1), <<"n">>, #{<<"a">> => <<"2">>}}], services(Alice)).

calls_are_instrumented(_Config) ->
    push_storage_contract:calls_are_instrumented(?HT, mod_event_pusher_push_mnesia).

registrations_survive_restart(_Config) ->
    Alice = alice(),
    ok = mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1), <<"n">>, #{<<"k">> => <<"v">>}),
    stopped = mnesia:stop(),
    ok = mnesia:start(),
    ok = mod_event_pusher_push_backend:init(?HT, #{backend => mnesia}),
    ?assertEqual([{pubsub(1), <<"n">>, #{<<"k">> => <<"v">>}}], services(Alice)).

errors_when_mnesia_is_down(_Config) ->
    Alice = alice(),
    stopped = mnesia:stop(),
    log_guard:expect(#{what => mnesia_create_table_failed, table => push_subscription}),
    try
        ?assertMatch({error, _}, mod_event_pusher_push_backend:get_publish_services(?HT, Alice)),
        ?assertMatch({error, _}, mod_event_pusher_push_backend:enable(?HT, Alice, pubsub(1),
                                                                      <<"n">>, #{})),
        ?assertMatch({error, _}, mod_event_pusher_push_backend:disable(?HT, Alice)),
        ?assertError(#{what := mnesia_create_table_failed},
                     mod_event_pusher_push_backend:init(?HT, #{backend => mnesia}))
    after
        ok = mnesia:start(),
        ok = mod_event_pusher_push_backend:init(?HT, #{backend => mnesia})
    end.

%%% Helpers

iq_parties() ->
    From = jid:make(<<>>, ?HT, <<>>),
    To = jid:from_binary(?PUBSUB),
    Acc = mongoose_acc:new(#{location => ?LOCATION, lserver => ?HT, host_type => ?HT}),
    {From, To, Acc}.

handler_parties() ->
    User = jid:make(<<"alice">>, ?HT, <<"phone">>),
    Domain = jid:make(<<>>, ?HT, <<>>),
    Acc = mongoose_acc:new(#{location => ?LOCATION, lserver => ?HT, host_type => ?HT}),
    {User, Domain, Acc}.

reply_to(Pid) ->
    fun(From, To, Acc, Reply) -> Pid ! {callback, self(), From, To, Acc, Reply} end.

receive_callback() ->
    receive
        {callback, Pid, From, To, Acc, Reply} -> {Pid, From, To, Acc, Reply}
    after ?RECEIVE_MS ->
        ct:fail(no_callback)
    end.

%% Only where every callback that could run would have run in this process (local
%% delivery is synchronous) or a marker after it was received: no waiting.
no_more_callbacks() ->
    receive
        {callback, _, _, _, _, _} = Msg -> ct:fail({unexpected_callback, Msg})
    after 0 ->
        ok
    end.

marker_to(Pid) ->
    fun(_, _, _, Reply) -> Pid ! {marker, Reply} end.

pending_callbacks() ->
    ets:info(ejabberd_local_iq_callbacks, size).

%% Routing to local users and the server is synchronous: what it sent this process
%% is in the mailbox when route/4 returns. Bounces to the sender's session too.
mailbox() ->
    receive Msg -> [Msg | mailbox()] after 0 -> [] end.

receive_exactly(Expected) ->
    ?assertEqual(Expected, mailbox()).

route_message(From, To, Type) ->
    push_client:route_message(?HT, Type, From, To, <<"hi">>).

route_iq_element(From, To, Child) ->
    El = jlib:replace_from_to(From, To, iq(<<"set">>, Child)),
    Acc = mongoose_acc:new(#{location => ?LOCATION, lserver => ?HT, host_type => ?HT,
                             element => El, from_jid => From, to_jid => To}),
    _ = ejabberd_router:route(From, To, Acc, El),
    ok.

iq(Type, Child) ->
    #xmlel{name = <<"iq">>, attrs = #{<<"type">> => Type, <<"id">> => <<"id1">>},
           children = [Child]}.

push_child(Name) ->
    #xmlel{name = Name, attrs = #{<<"xmlns">> => ?NS_PUSH}}.

field(Var, Values) ->
    #xmlel{name = <<"field">>, attrs = #{<<"var">> => Var}, children = [value(V) || V <- Values]}.

value(V) ->
    #xmlel{name = <<"value">>, children = [#xmlcdata{content = V}]}.

alice() ->
    jid:make(<<"alice">>, ?HT, <<"phone">>).

pubsub(N) ->
    jid:from_binary(<<"pubsub", (integer_to_binary(N))/binary, ".remote.example">>).

services(User) ->
    lists:sort(push_client:services(?HT, User)).
