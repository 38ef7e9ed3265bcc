%% @doc RabbitMQ backend of mod_event_pusher.
%%
%% SKELETON: only the configuration is final (MongooseIM 6.4's spec and defaults,
%% so that existing mongooseim.toml files load). Delivery through the Rust core
%% comes in a later issue; until then start/2 refuses to run.
-module(mod_event_pusher_rabbit).

-behaviour(gen_mod).
-behaviour(mod_event_pusher).

-include("mongoose_config_spec.hrl").

-export([start/2, stop/1, config_spec/0, supported_features/0, push_event/2]).

-type host_type() :: binary().

-spec start(host_type(), gen_mod:module_opts()) -> no_return().
start(_HostType, _Opts) ->
    error(#{what => backend_not_implemented, backend => rabbit}).

-spec stop(host_type()) -> ok.
stop(_HostType) ->
    ok.

%% @doc `[modules.mod_event_pusher.rabbit]': three exchanges, always present with
%% their defaults, so an empty section is a complete configuration.
-spec config_spec() -> #section{}.
config_spec() ->
    #section{items = #{<<"presence_exchange">> => exchange_spec(<<"presence">>),
                       <<"chat_msg_exchange">> => message_exchange_spec(<<"chat_msg">>),
                       <<"groupchat_msg_exchange">> => message_exchange_spec(<<"groupchat_msg">>)}}.

-spec supported_features() -> [atom()].
supported_features() ->
    [dynamic_domains].

-spec push_event(mongoose_acc:t(), mod_event_pusher:event()) -> mongoose_acc:t().
push_event(Acc, _Event) ->
    Acc.

%% Internal

exchange_spec(Name) ->
    #section{items = exchange_items(),
             defaults = #{<<"name">> => Name, <<"type">> => <<"topic">>},
             include = always}.

message_exchange_spec(Name) ->
    Topic = #option{type = binary, validate = non_empty},
    Items = exchange_items(),
    #section{items = Items#{<<"sent_topic">> => Topic, <<"recv_topic">> => Topic},
             defaults = #{<<"name">> => Name, <<"type">> => <<"topic">>,
                          <<"sent_topic">> => <<Name/binary, "_sent">>,
                          <<"recv_topic">> => <<Name/binary, "_recv">>},
             include = always}.

exchange_items() ->
    #{<<"name">> => #option{type = binary, validate = non_empty},
      <<"type">> => #option{type = binary, validate = non_empty}}.
