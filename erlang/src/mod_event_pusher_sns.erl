%% @doc Amazon SNS backend of mod_event_pusher.
%%
%% SKELETON: only the configuration and the plugin behaviour are final (MongooseIM
%% 6.4's spec, defaults and callbacks, so that existing mongooseim.toml files and
%% plugin modules keep working). Delivery through the Rust core comes in a later
%% issue; until then start/2 refuses to run.
-module(mod_event_pusher_sns).

-behaviour(gen_mod).
-behaviour(mod_event_pusher).

-include("mongoose_config_spec.hrl").

-export([start/2, stop/1, config_spec/0, supported_features/0, push_event/2]).

-type host_type() :: binary().
-type user_guid() :: binary().
-type topic_arn() :: string(). % "arn:aws:sns:REGION:ACCOUNT:TOPIC"
-type topic() :: string().
-type attributes() :: #{string() => string() | binary() | number()}.
-export_type([user_guid/0, topic_arn/0, topic/0, attributes/0]).

%% The plugin (`plugin_module') decides the user id sent in notifications and the
%% SNS message attributes; mod_event_pusher_sns_defaults is the default plugin.
-callback user_guid(UserJID :: jid:jid()) -> user_guid().
-callback message_attributes(topic_arn(), UserJID :: jid:jid(), IsOnline :: boolean()) ->
    attributes().
-callback message_attributes(topic_arn(), From :: jid:jid(), To :: jid:jid(),
                             MessageType :: pm | muc, Packet :: exml:element()) ->
    attributes().

-spec start(host_type(), gen_mod:module_opts()) -> no_return().
start(_HostType, _Opts) ->
    error(#{what => backend_not_implemented, backend => sns}).

-spec stop(host_type()) -> ok.
stop(_HostType) ->
    ok.

%% @doc `[modules.mod_event_pusher.sns]'. A topic left out turns that kind of
%% notification off, hence no defaults for the three topics.
-spec config_spec() -> #section{}.
config_spec() ->
    #section{items = #{<<"presence_updates_topic">> => #option{type = string},
                       <<"pm_messages_topic">> => #option{type = string},
                       <<"muc_messages_topic">> => #option{type = string},
                       <<"plugin_module">> => #option{type = atom, validate = module},
                       <<"pool_size">> => #option{type = integer, validate = positive},
                       <<"publish_retry_count">> => #option{type = integer, validate = non_negative},
                       <<"publish_retry_time_ms">> => #option{type = integer,
                                                              validate = non_negative},
                       <<"sns_host">> => #option{type = string},
                       <<"region">> => #option{type = string},
                       <<"access_key_id">> => #option{type = string},
                       <<"secret_access_key">> => #option{type = string},
                       <<"account_id">> => #option{type = string}},
             required = [<<"sns_host">>, <<"region">>, <<"access_key_id">>,
                         <<"secret_access_key">>, <<"account_id">>],
             defaults = #{<<"plugin_module">> => mod_event_pusher_sns_defaults,
                          <<"pool_size">> => 100,
                          <<"publish_retry_count">> => 2,
                          <<"publish_retry_time_ms">> => 50}}.

-spec supported_features() -> [atom()].
supported_features() ->
    [dynamic_domains].

-spec push_event(mongoose_acc:t(), mod_event_pusher:event()) -> mongoose_acc:t().
push_event(Acc, _Event) ->
    Acc.
