%% @doc A push plugin for the tests exporting only prepare_notification/2: a
%% notification that hides the message text. The other callbacks are the defaults'.
-module(mod_event_pusher_push_custom).
-behaviour(mod_event_pusher_push_plugin).

-export([prepare_notification/2]).

-include("jid.hrl").

-spec prepare_notification(mongoose_acc:t(), mod_event_pusher:event()) ->
          mod_event_pusher_push_plugin:push_payload() | skip.
prepare_notification(Acc, _Event) ->
    case mongoose_acc:packet(Acc) of
        {#jid{luser = Sender}, _To, _Packet} ->
            [{<<"message-count">>, <<"1">>}, {<<"last-message-sender">>, Sender},
             {<<"last-message-body">>, <<"New message">>}];
        undefined ->
            skip
    end.
