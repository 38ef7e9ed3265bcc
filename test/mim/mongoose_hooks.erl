%% Stand-in for MongooseIM's mongoose_hooks: the typed wrappers over
%% gen_hook:run_fold/4 that event-pusher code calls. Like MongooseIM's, they
%% return only the Acc (whether a handler stopped the run is not reported).
%% Hooks that the event pusher only handles (user_send_message, ...) are run
%% by tests with gen_hook:run_fold/4 directly.
-module(mongoose_hooks).

-include_lib("kernel/include/logger.hrl").

-export([push_notifications/4, inbox_unread_count/3]).

%% @doc Hands push notifications to the handler of the push service (for
%% virtual pubsub hosts). A handler replaces the Acc with `ok | {error, R}';
%% with no handler the Acc comes back unchanged.
-spec push_notifications(HostType :: binary(), Acc, NotificationForms :: [map()],
                         Options :: map()) -> Acc | ok | {error, term()}.
push_notifications(HostType, Acc, NotificationForms, Options) ->
    Params = #{options => Options, notification_forms => NotificationForms},
    run_hook_for_host_type(push_notifications, HostType, Acc, Params).

%% @doc Asks mod_inbox (if any) for User's unread count, which it stores in the
%% Acc under {inbox, unread_count}. The tag is the user's LServer.
-spec inbox_unread_count(LServer :: binary(), mongoose_acc:t(), User :: jid:jid()) ->
          mongoose_acc:t().
inbox_unread_count(LServer, Acc, User) ->
    run_hook_for_host_type(inbox_unread_count, LServer, Acc, #{user => User}).

-spec run_hook_for_host_type(gen_hook:hook_name(), binary() | undefined, term(), map()) ->
          term().
run_hook_for_host_type(HookName, undefined, Acc, _Params) ->
    ?LOG_ERROR(#{what => undefined_host_type, text => <<"Hook run without a host type">>,
                 hook_name => HookName}),
    Acc;
run_hook_for_host_type(HookName, HostType, Acc, Params) ->
    {_StopOrOk, NewAcc} = gen_hook:run_fold(HookName, HostType, Acc, Params),
    NewAcc.
