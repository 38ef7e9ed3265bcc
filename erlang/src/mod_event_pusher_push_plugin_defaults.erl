%% @doc The default plugin of mod_event_pusher_push (`plugin_module').
%%
%% SKELETON of a later issue: it exists now so that `plugin_module' validates as
%% in MongooseIM. Until the push backend is written these callbacks are inert:
%% every service passes the filter, no notification is prepared, nothing is sent.
-module(mod_event_pusher_push_plugin_defaults).

-export([should_publish/3, prepare_notification/2, publish_notification/4]).

%% @doc The services the event should be published to.
-spec should_publish(mongoose_acc:t(), mod_event_pusher:event(),
                     [mod_event_pusher_push:publish_service()]) ->
          [mod_event_pusher_push:publish_service()].
should_publish(_Acc, _Event, Services) ->
    Services.

%% @doc The notification payload, or skip.
-spec prepare_notification(mongoose_acc:t(), mod_event_pusher:event()) ->
          [{binary(), binary()}] | skip.
prepare_notification(_Acc, _Event) ->
    skip.

-spec publish_notification(mongoose_acc:t(), mod_event_pusher:event(), [{binary(), binary()}],
                           [mod_event_pusher_push:publish_service()]) -> mongoose_acc:t().
publish_notification(Acc, _Event, _Payload, _Services) ->
    Acc.
