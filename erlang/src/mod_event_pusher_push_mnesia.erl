%% @doc Mnesia storage of XEP-0357 registrations (`backend = "mnesia"').
%%
%% SKELETON of a later issue: it exists now so that the `backend' option
%% validates as in MongooseIM; every callback fails with not_implemented.
-module(mod_event_pusher_push_mnesia).

-behaviour(mod_event_pusher_push_backend).

-export([init/2, enable/5, disable/2, disable/4, get_publish_services/2]).

-type host_type() :: binary().

-spec init(host_type(), gen_mod:module_opts()) -> no_return().
init(_HostType, _Opts) ->
    error(not_implemented).

-spec enable(host_type(), jid:jid(), jid:jid(), binary(), mod_event_pusher_push_backend:form()) ->
          no_return().
enable(_HostType, _User, _PubSub, _Node, _Form) ->
    error(not_implemented).

-spec disable(host_type(), jid:jid()) -> no_return().
disable(_HostType, _User) ->
    error(not_implemented).

-spec disable(host_type(), jid:jid(), jid:jid(), binary() | undefined) -> no_return().
disable(_HostType, _User, _PubSub, _Node) ->
    error(not_implemented).

-spec get_publish_services(host_type(), jid:jid()) -> no_return().
get_publish_services(_HostType, _User) ->
    error(not_implemented).
