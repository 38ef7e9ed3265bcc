%% Turns the MongooseIM hooks the event pusher listens to into event-pusher
%% events and hands them to mod_event_pusher:push_event/2:
%%   filter_local_packet     -> #chat_event{direction = out} (delivery to a local user)
%%   user_send_message       -> #chat_event{direction = in}  (sent by a local user)
%%   user_available          -> #user_status_event{status = online}
%%   unset_presence          -> #user_status_event{status = offline}
%%   unacknowledged_message  -> #unack_msg_event{}
%% Same hooks, priorities and events as MongooseIM 6.4's module of this name.
-module(mod_event_pusher_hook_translator).

-include("mod_event_pusher_events.hrl").

-export([add_hooks/1, delete_hooks/1, hooks/1]).
-export([filter_local_packet/3, user_send_message/3, user_present/3, user_not_present/3,
         unacknowledged_message/3]).

-type host_type() :: binary().
%% The Acc of filter_local_packet: the stanza being delivered, or `drop' when
%% an earlier handler decided not to deliver it.
-type filter_packet_acc() :: {From :: jid:jid(), To :: jid:jid(), mongoose_acc:t(),
                              Packet :: exml:element()} | drop.
-type chat_type() :: chat | groupchat | headline | normal.

-spec add_hooks(host_type()) -> ok.
add_hooks(HostType) ->
    gen_hook:add_handlers(hooks(HostType)).

-spec delete_hooks(host_type()) -> ok.
delete_hooks(HostType) ->
    gen_hook:delete_handlers(hooks(HostType)).

-spec hooks(host_type()) -> gen_hook:hook_list().
hooks(HostType) ->
    [{filter_local_packet, HostType, fun ?MODULE:filter_local_packet/3, #{}, 80},
     {unset_presence, HostType, fun ?MODULE:user_not_present/3, #{}, 90},
     {user_available, HostType, fun ?MODULE:user_present/3, #{}, 90},
     {user_send_message, HostType, fun ?MODULE:user_send_message/3, #{}, 90},
     {unacknowledged_message, HostType, fun ?MODULE:unacknowledged_message/3, #{}, 90}].

%% @doc A stanza is delivered to a local user. Unlike MongooseIM 6.4, only
%% `<message/>' elements give an event: 6.4 also turns any other stanza without
%% a `type' attribute (e.g. every available presence) into a `normal' chat
%% event, which no backend wants.
-spec filter_local_packet(filter_packet_acc(), map(), gen_hook:extra()) ->
          {ok, filter_packet_acc()}.
filter_local_packet({From, To, Acc, #xmlel{name = <<"message">>} = Packet}, _Params, _Extra) ->
    NewAcc = case chat_type(Acc) of
                 false -> Acc;
                 Type -> push_chat_event(Acc, Type, out, {From, To, Packet})
             end,
    {ok, {From, To, NewAcc, Packet}};
filter_local_packet(FilterPacketAcc, _Params, _Extra) ->
    {ok, FilterPacketAcc}.

%% @doc A local user sends a message; the Acc's stanza is that message.
-spec user_send_message(mongoose_acc:t(), map(), gen_hook:extra()) -> {ok, mongoose_acc:t()}.
user_send_message(Acc, _Params, _Extra) ->
    NewAcc = case {chat_type(Acc), mongoose_acc:packet(Acc)} of
                 {false, _} -> Acc;
                 {_, undefined} -> Acc;
                 {Type, Packet} -> push_chat_event(Acc, Type, in, Packet)
             end,
    {ok, NewAcc}.

%% @doc A session of Jid (a full JID) became available.
-spec user_present(mongoose_acc:t(), #{jid := jid:jid()}, gen_hook:extra()) ->
          {ok, mongoose_acc:t()}.
user_present(Acc, #{jid := Jid}, _Extra) ->
    {ok, push_event(Acc, #user_status_event{jid = Jid, status = online})}.

%% @doc A session of Jid (a full JID) became unavailable or ended.
-spec user_not_present(mongoose_acc:t(), #{jid := jid:jid()}, gen_hook:extra()) ->
          {ok, mongoose_acc:t()}.
user_not_present(Acc, #{jid := Jid}, _Extra) ->
    {ok, push_event(Acc, #user_status_event{jid = Jid, status = offline})}.

%% @doc The session of Jid went away with this message (the Acc's stanza)
%% still unacknowledged (stream management).
-spec unacknowledged_message(mongoose_acc:t(), #{jid := jid:jid()}, gen_hook:extra()) ->
          {ok, mongoose_acc:t()}.
unacknowledged_message(Acc, #{jid := Jid}, _Extra) ->
    {ok, push_event(Acc, #unack_msg_event{to = Jid})}.

%%% Internals

-spec push_chat_event(mongoose_acc:t(), chat_type(), in | out,
                      {jid:jid(), jid:jid(), exml:element()}) -> mongoose_acc:t().
push_chat_event(Acc, Type, Direction, {From, To, Packet}) ->
    Event = #chat_event{type = Type, direction = Direction, from = From, to = To,
                        packet = Packet},
    push_event(Acc, Event).

%% Backends may record what they did in the `event_pusher' namespace of the Acc
%% (e.g. push: the services already notified). Only those keys are taken from
%% the Acc they return, and made permanent so that they survive the stripping
%% done by routing: a later event about the same stanza can then see them.
-spec push_event(mongoose_acc:t(), mod_event_pusher:event()) -> mongoose_acc:t().
push_event(Acc, Event) ->
    PushedAcc = mod_event_pusher:push_event(Acc, Event),
    mongoose_acc:set_permanent(event_pusher, mongoose_acc:get(event_pusher, PushedAcc), Acc).

%% A missing type attribute means "normal" (RFC 6121, 5.2.2); other types,
%% including "error", give no event.
-spec chat_type(mongoose_acc:t()) -> chat_type() | false.
chat_type(Acc) ->
    case mongoose_acc:stanza_type(Acc) of
        <<"chat">> -> chat;
        <<"groupchat">> -> groupchat;
        <<"headline">> -> headline;
        <<"normal">> -> normal;
        undefined -> normal;
        _ -> false
    end.
