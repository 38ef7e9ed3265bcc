%% @doc The default plugin of mod_event_pusher_push (`plugin_module'), as MongooseIM's:
%% chat and groupchat messages with a non-empty body, for recipients that exist and
%% are offline, published once per service and stanza.
-module(mod_event_pusher_push_plugin_defaults).
-behaviour(mod_event_pusher_push_plugin).

-export([should_publish/3, prepare_notification/2, publish_notification/4]).

-include("mod_event_pusher_events.hrl").

%% @doc The recipient's services not yet published to for this stanza, if the
%% recipient exists and is offline; none for events other than chat messages.
-spec should_publish(mongoose_acc:t(), mod_event_pusher:event(),
                     [mod_event_pusher_push:publish_service()]) ->
          [mod_event_pusher_push:publish_service()].
should_publish(Acc, #chat_event{to = To}, Services) ->
    case is_offline(mongoose_acc:host_type(Acc), To) of
        true -> Services -- mongoose_acc:get(event_pusher, published_services, [], Acc);
        false -> []
    end;
should_publish(_Acc, _Event, _Services) ->
    [].

is_offline(HostType, To) ->
    try ejabberd_auth:does_user_exist(HostType, To, stored) of
        true -> ejabberd_sm:is_offline(To);
        false -> false
    catch _:_ ->
            ejabberd_sm:is_offline(To)
    end.

%% @doc message-count (the inbox's unread count, 1 without mod_inbox),
%% last-message-sender (bare for chat, full for groupchat) and last-message-body;
%% skip for a message without a body or of another type.
-spec prepare_notification(mongoose_acc:t(), mod_event_pusher:event()) ->
          mod_event_pusher_push_plugin:push_payload() | skip.
prepare_notification(Acc, _Event) ->
    case mongoose_acc:packet(Acc) of
        {From, To, Packet} ->
            Body = exml_query:path(Packet, [{element, <<"body">>}, cdata], <<>>),
            Type = exml_query:attr(Packet, <<"type">>),
            case {Body, sender(Type, From)} of
                {<<>>, _} -> skip;
                {_, skip} -> skip;
                {_, Sender} -> [{<<"message-count">>, unread_count(Acc, To)},
                                {<<"last-message-sender">>, Sender},
                                {<<"last-message-body">>, Body}]
            end;
        undefined ->
            skip
    end.

sender(<<"chat">>, From) -> jid:to_bare_binary(From);
sender(<<"groupchat">>, From) -> jid:to_binary(jid:to_lower(From));
sender(_Type, _From) -> skip.

unread_count(Acc, To) ->
    Acc1 = mongoose_hooks:inbox_unread_count(To#jid.lserver, Acc, To),
    integer_to_binary(mongoose_acc:get(inbox, unread_count, 1, Acc1)).

%% @doc Real pubsub services get a publish IQ (queued for the Rust instance); virtual
%% ones run the push_notifications hook, and a device_not_registered answer disables
%% that registration. The services are then recorded as published for this stanza.
-spec publish_notification(mongoose_acc:t(), mod_event_pusher:event(),
                           mod_event_pusher_push_plugin:push_payload(),
                           [mod_event_pusher_push:publish_service()]) -> mongoose_acc:t().
publish_notification(Acc, _Event, _Payload, []) ->
    Acc;
publish_notification(Acc, _Event, Payload, Services) ->
    HostType = mongoose_acc:host_type(Acc),
    To = mongoose_acc:to_jid(Acc),
    lists:foreach(
      fun(Service = {PubSub, Node, Form}) ->
              case mod_event_pusher_push:is_virtual_pubsub_host(HostType, To#jid.lserver,
                                                                PubSub#jid.lserver) of
                  true -> publish_via_hook(Acc, HostType, To, Service, Payload);
                  false -> mod_event_pusher_push:publish_to_pubsub(HostType, To,
                                                                   {PubSub, Node, Form}, Payload)
              end
      end, Services),
    mongoose_acc:append(event_pusher, published_services, Services, Acc).

publish_via_hook(Acc, HostType, To, {PubSub, Node, Form}, Payload) ->
    Acc1 = mongoose_acc:set(push_notifications, pubsub_jid, PubSub, Acc),
    case mongoose_hooks:push_notifications(HostType, Acc1, [maps:from_list(Payload)], Form) of
        {error, device_not_registered} ->
            mod_event_pusher_push:disable_node(HostType, To, PubSub, Node);
        _ ->
            ok
    end.
