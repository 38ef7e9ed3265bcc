%% @doc Entry point of the event pusher: a gen_mod whose backends (http, push, rabbit,
%% sns) are its hard dependencies, and push_event/2, which hands an event to every
%% backend configured for the event's host type.
-module(mod_event_pusher).
-behaviour(gen_mod).

-export([start/2, stop/1, deps/2, config_spec/0, supported_features/0, config_metrics/1]).
-export([push_event/2]).

-include("mod_event_pusher_events.hrl").
-include("mongoose_config_spec.hrl").

-type backend() :: http | push | rabbit | sns | atom().
-type event() :: #user_status_event{} | #chat_event{} | #unack_msg_event{}.
-export_type([event/0, backend/0]).

%% Every backend module implements this.
-callback push_event(mongoose_acc:t(), event()) -> mongoose_acc:t().

-spec start(binary(), gen_mod:module_opts()) -> ok.
start(HostType, _Opts) ->
    mod_event_pusher_hook_translator:add_hooks(HostType).

-spec stop(binary()) -> ok.
stop(HostType) ->
    mod_event_pusher_hook_translator:delete_hooks(HostType).

%% @doc Each configured backend is a hard dependency, started before this module with
%% its own section of the options.
-spec deps(binary(), gen_mod:module_opts()) -> [{module(), gen_mod:module_opts(), hard}].
deps(_HostType, Opts) ->
    [{backend_module(Backend), BackendOpts, hard} || {Backend, BackendOpts} <- maps:to_list(Opts)].

-spec config_spec() -> #section{}.
config_spec() ->
    #section{items = #{<<"http">> => mod_event_pusher_http:config_spec(),
                       <<"push">> => mod_event_pusher_push:config_spec(),
                       <<"rabbit">> => mod_event_pusher_rabbit:config_spec(),
                       <<"sns">> => mod_event_pusher_sns:config_spec()}}.

-spec supported_features() -> [atom()].
supported_features() ->
    [dynamic_domains].

-spec config_metrics(binary()) -> [{backend, backend()} | {none, none}].
config_metrics(HostType) ->
    case maps:keys(gen_mod:get_module_opts(HostType, ?MODULE)) of
        [] -> [{none, none}];
        Backends -> [{backend, Backend} || Backend <- Backends]
    end.

%% @doc Folds the accumulator through push_event/2 of every configured backend, in
%% backend name order. Backends only enqueue: nothing here waits on the network.
-spec push_event(mongoose_acc:t(), event()) -> mongoose_acc:t().
push_event(Acc, Event) ->
    HostType = mongoose_acc:host_type(Acc),
    Backends = maps:keys(gen_mod:get_loaded_module_opts(HostType, ?MODULE)),
    lists:foldl(fun(Backend, AccIn) -> (backend_module(Backend)):push_event(AccIn, Event) end,
                Acc, Backends).

-spec backend_module(backend()) -> module().
backend_module(http) -> mod_event_pusher_http;
backend_module(push) -> mod_event_pusher_push;
backend_module(rabbit) -> mod_event_pusher_rabbit;
backend_module(sns) -> mod_event_pusher_sns;
%% Not reachable from TOML (the config spec knows only the four above), but a host
%% may configure its own backend module the MongooseIM way: mod_event_pusher_<name>.
backend_module(Other) -> list_to_atom("mod_event_pusher_" ++ atom_to_list(Other)).
