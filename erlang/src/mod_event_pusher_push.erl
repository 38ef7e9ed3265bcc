%% @doc XEP-0357 push notifications backend of mod_event_pusher.
%%
%% SKELETON: only the configuration is final (MongooseIM 6.4's spec and defaults,
%% so that existing mongooseim.toml files load). The IQ handler, the storage
%% backends and delivery come in a later issue; until then start/2 refuses to run.
-module(mod_event_pusher_push).

-behaviour(gen_mod).
-behaviour(mod_event_pusher).

-include("mongoose_config_spec.hrl").

-export([start/2, stop/1, config_spec/0, supported_features/0, push_event/2]).

-type host_type() :: binary().
%% A user's registration: pubsub service JID, node and publish-options form.
-type publish_service() :: {PubSub :: jid:jid(), Node :: binary(), Form :: #{binary() => binary()}}.
-export_type([publish_service/0]).

-spec start(host_type(), gen_mod:module_opts()) -> no_return().
start(_HostType, _Opts) ->
    error(#{what => backend_not_implemented, backend => push}).

-spec stop(host_type()) -> ok.
stop(_HostType) ->
    ok.

%% @doc `[modules.mod_event_pusher.push]'. `backend' names a storage module
%% mod_event_pusher_push_<backend>, which must exist; `wpool' is the module's own
%% worker pool, always configured.
-spec config_spec() -> #section{}.
config_spec() ->
    WPool = mongoose_config_spec:wpool(#{<<"strategy">> => available_worker}),
    #section{items = #{<<"iqdisc">> => mongoose_config_spec:iqdisc(),
                       <<"backend">> => #option{type = atom,
                                                validate = {module, mod_event_pusher_push}},
                       <<"wpool">> => WPool#section{include = always},
                       <<"plugin_module">> => #option{type = atom, validate = module},
                       <<"virtual_pubsub_hosts">> =>
                           #list{items = #option{type = string,
                                                 validate = subdomain_template,
                                                 process = fun mongoose_subdomain_utils:make_subdomain_pattern/1}}},
             defaults = #{<<"iqdisc">> => one_queue,
                          <<"backend">> => mnesia,
                          <<"plugin_module">> => mod_event_pusher_push_plugin_defaults,
                          <<"virtual_pubsub_hosts">> => []}}.

-spec supported_features() -> [atom()].
supported_features() ->
    [dynamic_domains].

-spec push_event(mongoose_acc:t(), mod_event_pusher:event()) -> mongoose_acc:t().
push_event(Acc, _Event) ->
    Acc.
