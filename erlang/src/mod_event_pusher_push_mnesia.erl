%% @doc Mnesia storage of XEP-0357 registrations (`backend = "mnesia"'), as in
%% MongooseIM 6.4: table `push_subscription' (bag keyed by the user's
%% `{LUser, LServer}', disc copy on this node) with MongooseIM's record, so a
%% table written by MongooseIM is read as is. The table is shared by all host
%% types (a user's server tells them apart).
-module(mod_event_pusher_push_mnesia).

-behaviour(mod_event_pusher_push_backend).

-export([init/2, enable/5, disable/2, disable/4, get_publish_services/2]).

-type host_type() :: binary().

-record(push_subscription, {user_jid :: jid:simple_bare_jid(),
                            pubsub_jid :: jid:jid(),
                            pubsub_node :: binary(),
                            form :: mod_event_pusher_push_backend:form()}).

%% @doc Creates the table, or adds this node's copy of an existing one.
-spec init(host_type(), gen_mod:module_opts()) -> ok.
init(_HostType, _Opts) ->
    _ = mongoose_mnesia:create_table(push_subscription,
                                     [{disc_copies, [node()]},
                                      {type, bag},
                                      {attributes, record_info(fields, push_subscription)}]),
    ok.

%% @doc Replaces the user's registration of Node at PubSub (PubSub is bare).
-spec enable(host_type(), jid:jid(), jid:jid(), binary(), mod_event_pusher_push_backend:form()) ->
          ok | {error, term()}.
enable(HostType, User, PubSub, Node, Form) ->
    case disable(HostType, User, PubSub, Node) of
        ok ->
            Record = #push_subscription{user_jid = jid:to_lus(User), pubsub_jid = PubSub,
                                        pubsub_node = Node, form = Form},
            sync_dirty(fun() -> mnesia:write(Record) end);
        {error, _} = Error ->
            Error
    end.

%% @doc Removes all registrations of the user.
-spec disable(host_type(), jid:jid()) -> ok | {error, term()}.
disable(_HostType, User) ->
    Key = jid:to_lus(User),
    sync_dirty(fun() -> mnesia:delete({push_subscription, Key}) end).

%% @doc Removes the user's registrations at PubSub: of Node, or of every node
%% when Node is undefined.
-spec disable(host_type(), jid:jid(), jid:jid(), binary() | undefined) -> ok | {error, term()}.
disable(_HostType, User, PubSub, Node) ->
    Key = jid:to_lus(User),
    sync_dirty(fun() ->
                       Matching = [Record || #push_subscription{pubsub_jid = P, pubsub_node = N} = Record
                                                 <- mnesia:read({push_subscription, Key}),
                                             P =:= PubSub, Node =:= undefined orelse N =:= Node],
                       lists:foreach(fun mnesia:delete_object/1, Matching)
               end).

%% @doc The user's registrations as `{PubSub, Node, Form}'.
-spec get_publish_services(host_type(), jid:jid()) ->
          {ok, [mod_event_pusher_push:publish_service()]} | {error, term()}.
get_publish_services(_HostType, User) ->
    Key = jid:to_lus(User),
    try mnesia:async_dirty(fun() -> mnesia:read({push_subscription, Key}) end) of
        Records ->
            {ok, [{PubSub, Node, Form}
                  || #push_subscription{pubsub_jid = PubSub, pubsub_node = Node, form = Form}
                         <- Records]}
    catch
        exit:{aborted, Reason} -> {error, Reason}
    end.

%% A dirty write operation, done once all replicas have it; ok or {error, Reason}.
-spec sync_dirty(fun(() -> ok)) -> ok | {error, term()}.
sync_dirty(Fun) ->
    try
        mnesia:sync_dirty(Fun)
    catch
        exit:{aborted, Reason} -> {error, Reason}
    end.
