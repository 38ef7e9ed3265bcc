%% @doc A push plugin that also notifies on messages left unacknowledged when a
%% session with stream management goes away: those are published to the push service
%% that session enabled. Everything else is as mod_event_pusher_push_plugin_defaults.
-module(mod_event_pusher_push_plugin_enhanced).
-behaviour(mod_event_pusher_push_plugin).

-export([should_publish/3]).

-include("mod_event_pusher_events.hrl").

-spec should_publish(mongoose_acc:t(), mod_event_pusher:event(),
                     [mod_event_pusher_push:publish_service()]) ->
          [mod_event_pusher_push:publish_service()].
should_publish(Acc, #unack_msg_event{to = To}, _Services) ->
    case ejabberd_sm:get_info(To, publish_service) of
        {ok, Service} ->
            [Service] -- mongoose_acc:get(event_pusher, published_services, [], Acc);
        {error, _} ->
            []
    end;
should_publish(Acc, Event, Services) ->
    mod_event_pusher_push_plugin_defaults:should_publish(Acc, Event, Services).
