%% @doc Storage of XEP-0357 registrations for mod_event_pusher_push: the behaviour
%% implemented by mod_event_pusher_push_mnesia and mod_event_pusher_push_rdbms
%% (the `backend' option picks one).
%%
%% SKELETON: the callbacks are final (MongooseIM 6.4's); the dispatching API
%% (through mongoose_backend) comes with mod_event_pusher_push in a later issue.
-module(mod_event_pusher_push_backend).

-type host_type() :: binary().
-type form() :: #{binary() => binary()}.
-export_type([form/0]).

-callback init(host_type(), gen_mod:module_opts()) -> ok.
-callback enable(host_type(), User :: jid:jid(), PubSub :: jid:jid(), Node :: binary(), form()) ->
    ok | {error, term()}.
%% all registrations of the user
-callback disable(host_type(), User :: jid:jid()) -> ok | {error, term()}.
%% registrations at PubSub; one node, or all nodes when Node is undefined
-callback disable(host_type(), User :: jid:jid(), PubSub :: jid:jid(), Node :: binary() | undefined) ->
    ok | {error, term()}.
-callback get_publish_services(host_type(), User :: jid:jid()) ->
    {ok, [mod_event_pusher_push:publish_service()]} | {error, term()}.
