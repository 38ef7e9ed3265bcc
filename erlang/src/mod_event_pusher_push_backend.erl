%% @doc Storage of XEP-0357 registrations for mod_event_pusher_push: the behaviour
%% implemented by mod_event_pusher_push_mnesia and mod_event_pusher_push_rdbms
%% (the `backend' option picks one), and the API that dispatches to the backend
%% of a host type through mongoose_backend (as in MongooseIM, under the main
%% module mod_event_pusher_push; every call but init is instrumented).
-module(mod_event_pusher_push_backend).

-export([init/2, enable/5, disable/2, disable/4, get_publish_services/2]).

-type host_type() :: binary().
-type form() :: #{binary() => binary()}.
-export_type([form/0]).

-define(MAIN_MODULE, mod_event_pusher_push).
-define(TRACKED_FUNS, [enable, disable, get_publish_services]).

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

%% @doc Picks the backend of the host type (option `backend', default mnesia),
%% sets up its instrumentation and initialises it (creates its table or
%% prepares its queries).
-spec init(host_type(), gen_mod:module_opts()) -> ok.
init(HostType, Opts) ->
    mongoose_backend:init(HostType, ?MAIN_MODULE, ?TRACKED_FUNS, Opts),
    mongoose_backend:call(HostType, ?MAIN_MODULE, init, [HostType, Opts]).

%% @doc Registers (or replaces) the user's registration of Node at PubSub.
-spec enable(host_type(), User :: jid:jid(), PubSub :: jid:jid(), Node :: binary(), form()) ->
          ok | {error, term()}.
enable(HostType, User, PubSub, Node, Form) ->
    call(HostType, enable, [HostType, User, PubSub, Node, Form]).

%% @doc Removes all registrations of the user.
-spec disable(host_type(), User :: jid:jid()) -> ok | {error, term()}.
disable(HostType, User) ->
    call(HostType, disable, [HostType, User]).

%% @doc Removes the user's registrations at PubSub: of Node, or of every node
%% when Node is undefined.
-spec disable(host_type(), User :: jid:jid(), PubSub :: jid:jid(), Node :: binary() | undefined) ->
          ok | {error, term()}.
disable(HostType, User, PubSub, Node) ->
    call(HostType, disable, [HostType, User, PubSub, Node]).

%% @doc The user's registrations as `{PubSub, Node, Form}'.
-spec get_publish_services(host_type(), User :: jid:jid()) ->
          {ok, [mod_event_pusher_push:publish_service()]} | {error, term()}.
get_publish_services(HostType, User) ->
    call(HostType, get_publish_services, [HostType, User]).

-spec call(host_type(), enable | disable | get_publish_services, list()) -> term().
call(HostType, FunName, Args) ->
    mongoose_backend:call_tracked(HostType, ?MAIN_MODULE, FunName, Args).
