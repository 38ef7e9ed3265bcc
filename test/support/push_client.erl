%% @doc Test helper (not a MongooseIM module): what the push suites and the demo do
%% as XEP-0357 clients and services through the stand-in. mnesia on a disc schema,
%% sessions and enable/disable IQs, x-data forms, a fake pubsub service that answers
%% as told, the publish IQs routed so far, and waiting on the push instance.
-module(push_client).

-export([start_mnesia/1, stop_mnesia/0]).
-export([login/2, register_offline/5, services/2, iq/4, iq/5, iq_type/1, error_of/1]).
-export([route_message/5]).
-export([enable/3, disable/2, form/3, summary/1, field/3, el/3]).
-export([service/2, publishes/0, wait_publishes/2]).
-export([wait_until/2, wait_stats/2, wait_events/4]).

-include("exml.hrl").

-define(NS_PUSH, <<"urn:xmpp:push:0">>).
-define(NS_PUBSUB_OPTIONS, <<"http://jabber.org/protocol/pubsub#publish-options">>).

-type answer() :: result | noreply | {error, Type :: binary()} | {slow, Ms :: non_neg_integer()}.

%% mnesia

%% @doc Starts mnesia with a fresh disc schema in Dir (registrations survive a restart).
-spec start_mnesia(file:filename()) -> ok.
start_mnesia(Dir) ->
    ok = filelib:ensure_path(Dir),
    _ = application:stop(mnesia),
    _ = application:load(mnesia),
    ok = application:set_env(mnesia, dir, Dir),
    ok = mnesia:create_schema([node()]),
    ok = mnesia:start().

%% @doc Stops mnesia and deletes its schema.
-spec stop_mnesia() -> ok.
stop_mnesia() ->
    stopped = mnesia:stop(),
    ok = mnesia:delete_schema([node()]),
    application:unset_env(mnesia, dir).

%% Users

-spec login(binary(), binary()) -> ejabberd_sm:sid().
login(HostType, Jid) ->
    ejabberd_sm:open_session(HostType, jid:from_binary(Jid), 0).

%% @doc The user exists and enables PubSub/Node (with a publish-options form when
%% FormFields are given) from a session that then closes: they are offline.
-spec register_offline(binary(), binary(), binary(), binary(), [{binary(), [binary()]}]) -> ok.
register_offline(HostType, Jid, PubSub, Node, FormFields) ->
    ok = ejabberd_auth:register_user(jid:from_binary(Jid)),
    Sid = login(HostType, Jid),
    Form = case FormFields of
               [] -> [];
               _ -> [form(<<"submit">>, [?NS_PUBSUB_OPTIONS], FormFields)]
           end,
    result = iq_type(iq(HostType, Jid, Sid, enable(PubSub, Node, Form))),
    ok = ejabberd_sm:close_session(jid:from_binary(Jid)).

%% @doc The user's registrations as the storage backend returns them.
-spec services(binary(), binary() | jid:jid()) -> [mod_event_pusher_push:publish_service()].
services(HostType, Jid) when is_binary(Jid) ->
    services(HostType, jid:from_binary(Jid));
services(HostType, Jid) ->
    {ok, Services} = mod_event_pusher_push_backend:get_publish_services(HostType, Jid),
    Services.

%% @doc A message from a user, handed to the router as their c2s process would: to a
%% local recipient it runs `filter_local_packet' (where the event pusher sees it) and
%% reaches ejabberd_sm, which delivers it or, to an offline user, runs the offline
%% hooks. Body `undefined' sends a message without a body.
-spec route_message(binary(), binary(), binary(), binary(), binary() | undefined) -> ok.
route_message(HostType, Type, From, To, Body) ->
    El = hook_driver:message(From, To, Type, hook_driver:body(Body)),
    _ = ejabberd_router:route(jid:from_binary(From), jid:from_binary(To),
                              hook_driver:acc(HostType, From, To, El), El),
    ok.

%% IQs

%% @doc A set IQ from the user's session (Sid, opened by the calling process) to
%% their bare JID, routed as MongooseIM routes it (ejabberd_router, local delivery,
%% the ejabberd_sm IQ handler); the reply element, as routed back to the session.
-spec iq(binary(), binary(), ejabberd_sm:sid(), exml:element()) -> exml:element().
iq(HostType, From, Sid, Request) ->
    iq(HostType, From, Sid, Request, <<"set">>).

-spec iq(binary(), binary(), ejabberd_sm:sid(), exml:element(), binary()) -> exml:element().
iq(HostType, From, Sid, Request, Type) ->
    FromJid = jid:from_binary(From),
    To = jid:to_bare(FromJid),
    El = el(<<"iq">>, #{<<"type">> => Type, <<"id">> => <<"iq1">>, <<"from">> => From,
                        <<"to">> => jid:to_binary(To)}, [Request]),
    Acc0 = hook_driver:acc(HostType, From, jid:to_binary(To), El),
    Acc = mongoose_acc:set_permanent(c2s, origin_sid, Sid, Acc0),
    {_, Pid} = Sid,
    Pid = self(),
    _ = ejabberd_router:route(FromJid, To, Acc, El),
    receive
        {route, #{stanza := #{element := #xmlel{name = <<"iq">>,
                                                attrs = #{<<"id">> := <<"iq1">>}} = Reply}}} ->
            Reply
    after 5000 ->
        error(#{what => no_iq_reply, request => El})
    end.

-spec iq_type(exml:element()) -> atom().
iq_type(#xmlel{attrs = #{<<"type">> := Type}}) ->
    binary_to_atom(Type).

%% @doc An error reply's {code, type, condition, original request}.
-spec error_of(exml:element()) -> {binary(), binary(), binary(), exml:element()}.
error_of(#xmlel{attrs = #{<<"type">> := <<"error">>}, children = [Original, Error]}) ->
    #xmlel{attrs = #{<<"code">> := Code, <<"type">> := Type},
           children = [#xmlel{name = Condition}]} = Error,
    {Code, Type, Condition, Original}.

-spec enable(binary(), binary(), [exml:element()]) -> exml:element().
enable(Jid, Node, Children) ->
    el(<<"enable">>, #{<<"xmlns">> => ?NS_PUSH, <<"jid">> => Jid, <<"node">> => Node}, Children).

-spec disable(binary(), binary() | undefined) -> exml:element().
disable(Jid, Node) ->
    Attrs = #{<<"xmlns">> => ?NS_PUSH, <<"jid">> => Jid},
    el(<<"disable">>, case Node of undefined -> Attrs; _ -> Attrs#{<<"node">> => Node} end, []).

%% @doc An x-data form: FORM_TYPE with these values (none: no FORM_TYPE field), then
%% fields.
-spec form(binary(), [binary()], [{binary(), [binary()]}]) -> exml:element().
form(Type, FormTypes, Fields) ->
    FormType = case FormTypes of
                   [] -> [];
                   _ -> [field(<<"FORM_TYPE">>, #{<<"type">> => <<"hidden">>}, FormTypes)]
               end,
    el(<<"x">>, #{<<"xmlns">> => <<"jabber:x:data">>, <<"type">> => Type},
       FormType ++ [field(Var, #{}, Values) || {Var, Values} <- Fields]).

%% @doc The urn:xmpp:push:summary form of a notification.
-spec summary([{binary(), binary()}]) -> exml:element().
summary(Fields) ->
    form(<<"submit">>, [<<"urn:xmpp:push:summary">>], [{K, [V]} || {K, V} <- Fields]).

-spec field(binary(), map(), [binary()]) -> exml:element().
field(Var, Attrs, Values) ->
    el(<<"field">>, Attrs#{<<"var">> => Var},
       [el(<<"value">>, #{}, [#xmlcdata{content = V}]) || V <- Values]).

-spec el(binary(), map(), [exml:element() | exml:cdata()]) -> exml:element().
el(Name, Attrs, Children) ->
    #xmlel{name = Name, attrs = Attrs, children = Children}.

%% The fake pubsub service

%% @doc Serves Jid: answers each request with a result, an error of a type, a result
%% after a delay, or nothing. ejabberd_local records the requests.
-spec service(binary(), answer()) -> ok.
service(Jid, Answer) ->
    ok = ejabberd_local:register_service(
           Jid, fun(Request) ->
                        case Answer of
                            noreply -> noreply;
                            {slow, Ms} -> timer:sleep(Ms), {reply, reply(Request, <<"result">>, [])};
                            result -> {reply, reply(Request, <<"result">>, [])};
                            {error, Type} ->
                                Error = el(<<"error">>, #{<<"type">> => Type},
                                           [mongoose_xmpp_errors:item_not_found()]),
                                {reply, reply(Request, <<"error">>, [Error])}
                        end
                end).

reply(Request, Type, Children) ->
    el(<<"iq">>, #{<<"type">> => Type, <<"id">> => exml_query:attr(Request, <<"id">>)}, Children).

%% @doc The publish IQs routed so far (set IQs with a pubsub child), with the
%% routing From and To.
-spec publishes() -> [exml:element()].
publishes() ->
    [El#xmlel{attrs = Attrs#{<<"from">> => jid:to_binary(From), <<"to">> => jid:to_binary(To)}}
     || {From, To, El = #xmlel{name = <<"iq">>, attrs = Attrs = #{<<"type">> := <<"set">>},
                              children = [#xmlel{name = <<"pubsub">>}]}}
            <- ejabberd_local:routed()].

-spec wait_publishes(binary(), non_neg_integer()) -> [exml:element()].
wait_publishes(HostType, N) ->
    wait_until(HostType, fun() -> length(publishes()) >= N end),
    publishes().

%% Waiting on the push instance

-spec wait_until(binary(), fun(() -> boolean())) -> ok.
wait_until(HostType, Fun) ->
    test_wait:until(Fun, fun() -> {mod_event_pusher_push:stats(HostType),
                                   ejabberd_local:routed()}
                         end).

%% @doc Until the push instance's stats include Expected.
-spec wait_stats(binary(), map()) -> ok.
wait_stats(HostType, Expected) ->
    wait_until(HostType,
               fun() ->
                       Stats = mod_event_pusher_push:stats(HostType),
                       is_map(Stats) andalso maps:with(maps:keys(Expected), Stats) =:= Expected
               end).

%% @doc Until N events of Event match Pattern; those events.
-spec wait_events(binary(), atom(), map(), non_neg_integer()) -> [map()].
wait_events(HostType, Event, Pattern, N) ->
    Matching = fun() -> [E || E <- mongoose_instrument:get_events(Event, #{host_type => HostType}),
                              maps:with(maps:keys(Pattern), E) =:= Pattern]
               end,
    wait_until(HostType, fun() -> length(Matching()) >= N end),
    Matching().
