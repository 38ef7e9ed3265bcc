%% @doc Test helper (not a MongooseIM module): runs the hooks MongooseIM runs when a
%% user comes online or goes offline, sends a message or receives one, so suites
%% exercise mod_event_pusher exactly through its hook handlers.
-module(hook_driver).

-export([presence/3, send/5, send_element/2, deliver/5, message/4, body/1, acc/4]).

-include("exml.hrl").
-include("jid.hrl").

%% @doc `user_available' (online) or `unset_presence' (offline) for a full JID.
-spec presence(binary(), binary(), online | offline) -> ok.
presence(HostType, Jid, Status) ->
    J = jid:from_binary(Jid),
    Attrs = #{<<"from">> => Jid},
    El = #xmlel{name = <<"presence">>,
                attrs = case Status of
                            online -> Attrs;
                            offline -> Attrs#{<<"type">> => <<"unavailable">>}
                        end},
    Acc = acc(HostType, Jid, jid:to_bare_binary(J), El),
    {ok, _} = case Status of
                  online -> gen_hook:run_fold(user_available, HostType, Acc, #{jid => J});
                  offline -> gen_hook:run_fold(unset_presence, HostType, Acc,
                                               #{jid => J, status => <<>>})
              end,
    ok.

%% @doc A message sent by a local user (`user_send_message', direction in). Body
%% `undefined' sends a message without a body.
-spec send(binary(), binary(), binary(), binary(), binary() | undefined) -> ok.
send(HostType, Type, From, To, Body) ->
    send_element(HostType, message(From, To, Type, body(Body))).

%% @doc `user_send_message' for a ready-made stanza with from and to.
-spec send_element(binary(), exml:element()) -> ok.
send_element(HostType, El = #xmlel{attrs = #{<<"from">> := From, <<"to">> := To}}) ->
    {ok, _} = gen_hook:run_fold(user_send_message, HostType, acc(HostType, From, To, El), #{}),
    ok.

%% @doc A message routed to a local user (`filter_local_packet', direction out).
-spec deliver(binary(), binary(), binary(), binary(), binary() | undefined) -> ok.
deliver(HostType, Type, From, To, Body) ->
    El = message(From, To, Type, body(Body)),
    Acc = acc(HostType, From, To, El),
    {ok, _} = gen_hook:run_fold(filter_local_packet, HostType,
                                {jid:from_binary(From), jid:from_binary(To), Acc, El}, #{}),
    ok.

%% @doc A `<message/>'; no `type' attribute when Type is `undefined'.
-spec message(binary(), binary(), binary() | undefined, [exml:element()]) -> exml:element().
message(From, To, Type, Children) ->
    Attrs = #{<<"from">> => From, <<"to">> => To},
    #xmlel{name = <<"message">>,
           attrs = case Type of undefined -> Attrs; _ -> Attrs#{<<"type">> => Type} end,
           children = Children}.

%% @doc A `<body/>' child list: none for `undefined'.
-spec body(binary() | undefined) -> [exml:element()].
body(undefined) ->
    [];
body(Text) ->
    [#xmlel{name = <<"body">>, children = [#xmlcdata{content = Text}]}].

-spec acc(binary(), binary(), binary(), exml:element()) -> mongoose_acc:t().
acc(HostType, From, To, El) ->
    FromJid = jid:from_binary(From),
    mongoose_acc:new(#{location => #{mfa => {?MODULE, acc, 4}, line => ?LINE, file => ?FILE},
                       lserver => FromJid#jid.lserver, host_type => HostType, element => El,
                       from_jid => FromJid, to_jid => jid:from_binary(To)}).
