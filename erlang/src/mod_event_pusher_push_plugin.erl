%% @doc The plugin behaviour of mod_event_pusher_push (`plugin_module'): which
%% services an event is published to, what the notification says, and how it is
%% published. Every callback is optional: a plugin that does not export one gets
%% mod_event_pusher_push_plugin_defaults' (checked at each call, as in MongooseIM).
-module(mod_event_pusher_push_plugin).

-export([init/2, should_publish/3, prepare_notification/2, publish_notification/4]).

-type push_payload() :: [{binary(), binary()}].
-export_type([push_payload/0]).

-callback should_publish(mongoose_acc:t(), mod_event_pusher:event(),
                         [mod_event_pusher_push:publish_service()]) ->
    [mod_event_pusher_push:publish_service()].
-callback prepare_notification(mongoose_acc:t(), mod_event_pusher:event()) ->
    push_payload() | skip.
-callback publish_notification(mongoose_acc:t(), mod_event_pusher:event(), push_payload(),
                               [mod_event_pusher_push:publish_service()]) -> mongoose_acc:t().
-optional_callbacks([should_publish/3, prepare_notification/2, publish_notification/4]).

-define(DEFAULTS, mod_event_pusher_push_plugin_defaults).

%% @doc Loads the plugin module, so that function_exported/3 sees its callbacks.
-spec init(binary(), gen_mod:module_opts()) -> ok.
init(_HostType, #{plugin_module := Module}) ->
    {module, Module} = code:ensure_loaded(Module),
    ok.

-spec should_publish(mongoose_acc:t(), mod_event_pusher:event(),
                     [mod_event_pusher_push:publish_service()]) ->
          [mod_event_pusher_push:publish_service()].
should_publish(Acc, Event, Services) ->
    (plugin(Acc, should_publish, 3)):should_publish(Acc, Event, Services).

-spec prepare_notification(mongoose_acc:t(), mod_event_pusher:event()) -> push_payload() | skip.
prepare_notification(Acc, Event) ->
    (plugin(Acc, prepare_notification, 2)):prepare_notification(Acc, Event).

-spec publish_notification(mongoose_acc:t(), mod_event_pusher:event(), push_payload(),
                           [mod_event_pusher_push:publish_service()]) -> mongoose_acc:t().
publish_notification(Acc, Event, Payload, Services) ->
    (plugin(Acc, publish_notification, 4)):publish_notification(Acc, Event, Payload, Services).

plugin(Acc, Function, Arity) ->
    Module = gen_mod:get_module_opt(mongoose_acc:host_type(Acc), mod_event_pusher_push,
                                    plugin_module),
    case erlang:function_exported(Module, Function, Arity) of
        true -> Module;
        false -> ?DEFAULTS
    end.
