%% @doc The sns backend: presence and incoming chat events published to Amazon SNS
%% topics as MongooseIM 6.4 publishes them.
%%
%% The hook path only asks the plugin module for the user ids and message
%% attributes (Erlang callbacks, as in MongooseIM) and enqueues the result; the JSON,
%% SigV4 signing, Publish/PublishBatch calls and retries with MongooseIM's backoff run
%% in Rust (aws-sdk-sns).
-module(mod_event_pusher_sns).
-behaviour(gen_mod).
-behaviour(mod_event_pusher).
-behaviour(mod_event_pusher_instance).

-export([start/2, stop/1, config_spec/0, instrumentation/1, supported_features/0]).
-export([push_event/2, handle_report/3, stats/1]).

-include("mod_event_pusher_events.hrl").
-include("mod_event_pusher_nif.hrl").
-include("mongoose_config_spec.hrl").
-include_lib("kernel/include/logger.hrl").

-define(KEY, sns).

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

%% What the hook path needs from the options, computed once at start.
-record(sns, {plugin :: module(),
              %% {ARN as the plugin sees it (string), ARN as sent (binary)} per kind
              topics :: #{presence | pm | muc => {topic_arn(), binary()}}}).

%% gen_mod

%% @doc Builds the SNS client. Nothing is sent yet, so wrong credentials or an
%% unreachable sns_host show as failed publishes (counted, logged with SNS's reason).
-spec start(host_type(), gen_mod:module_opts()) -> ok.
start(HostType, Opts0) ->
    Opts = mod_event_pusher_config:with_defaults(config_spec(), Opts0),
    {Instance, Config} = start_config(Opts),
    mod_event_pusher_instance:start_or_raise(
      HostType, ?KEY, ?MODULE,
      fun(Reporter) -> mod_event_pusher_nif:start_sns(Instance, Config, Reporter) end,
      event_pusher_sns_start_failed),
    persistent_term:put(key(HostType), #sns{plugin = maps:get(plugin_module, Opts),
                                            topics = topics(Opts)}).

-spec stop(host_type()) -> ok.
stop(HostType) ->
    persistent_term:erase(key(HostType)),
    mod_event_pusher_instance:stop_with_drain_option(HostType, ?KEY, ?MODULE).

-spec supported_features() -> [atom()].
supported_features() ->
    [dynamic_domains].

%% @doc `[modules.mod_event_pusher.sns]': MongooseIM's options (a topic left out turns
%% that kind of notification off, hence no defaults for the three topics), plus ours:
%% `batching', `request_timeout_ms', `queue.*' and `drain_timeout_ms'.
-spec config_spec() -> #section{}.
config_spec() ->
    Items = #{<<"presence_updates_topic">> => #option{type = string},
              <<"pm_messages_topic">> => #option{type = string},
              <<"muc_messages_topic">> => #option{type = string},
              <<"plugin_module">> => #option{type = atom, validate = module},
              <<"pool_size">> => mod_event_pusher_config:bounded(positive, concurrency),
              <<"publish_retry_count">> => mod_event_pusher_config:bounded(non_negative,
                                                                            attempts),
              <<"publish_retry_time_ms">> => mod_event_pusher_config:bounded(non_negative,
                                                                              duration_ms),
              %% a host name (https implied) or an http(s) URL
              <<"sns_host">> => mod_event_pusher_config:url_option(https),
              <<"region">> => #option{type = string},
              <<"access_key_id">> => #option{type = string},
              <<"secret_access_key">> => #option{type = string},
              <<"account_id">> => #option{type = string},
              <<"batching">> => #option{type = boolean},
              <<"request_timeout_ms">> => mod_event_pusher_config:bounded(positive,
                                                                           duration_ms)},
    Delivery = maps:without([<<"retry">>], mod_event_pusher_delivery:config_items()),
    #section{items = maps:merge(Items, Delivery),
             required = [<<"sns_host">>, <<"region">>, <<"access_key_id">>,
                         <<"secret_access_key">>, <<"account_id">>],
             defaults = maps:merge(#{<<"plugin_module">> => mod_event_pusher_sns_defaults,
                                     <<"pool_size">> => 100,
                                     <<"publish_retry_count">> => 2,
                                     <<"publish_retry_time_ms">> => 50,
                                     <<"batching">> => true,
                                     <<"request_timeout_ms">> => 5000},
                                   mod_event_pusher_delivery:config_defaults())}.

%% @doc MongooseIM has no sns metrics; ours: every publish attempt (count, time and
%% size when SNS took it, failed when not), every event's fate, and the queue.
-spec instrumentation(host_type()) -> [mongoose_instrument:spec()].
instrumentation(HostType) ->
    Labels = #{host_type => HostType},
    [{mod_event_pusher_sns_publish, Labels,
      #{metrics => #{count => spiral, failed => spiral, time => histogram, size => histogram}}},
     {mod_event_pusher_sns_delivery, Labels,
      #{metrics => #{delivered => spiral, retried => spiral, failed => spiral,
                     dropped => spiral, skipped => spiral}}},
     {mod_event_pusher_sns_queue, Labels,
      #{metrics => #{queued => gauge, in_flight => gauge}}}].

%% @doc The instance's queue and delivery counters.
-spec stats(host_type()) -> mod_event_pusher_nif:stats() | {error, not_running}.
stats(HostType) ->
    mod_event_pusher_instance:stats(HostType, ?KEY).

%% mod_event_pusher: the hook path

-spec push_event(mongoose_acc:t(), mod_event_pusher:event()) -> mongoose_acc:t().
push_event(Acc, #user_status_event{jid = JID, status = Status}) ->
    publish(Acc, presence, fun(Plugin, Arn) ->
                                   Online = Status =:= online,
                                   {presence, Plugin:user_guid(JID), Online,
                                    Plugin:message_attributes(Arn, JID, Online)}
                           end);
push_event(Acc, #chat_event{direction = in, type = Type, from = From, to = To, packet = Packet})
  when Type =:= chat; Type =:= groupchat ->
    case exml_query:path(Packet, [{element, <<"body">>}, cdata]) of
        undefined ->
            Acc;
        Body ->
            Kind = case Type of chat -> pm; groupchat -> muc end,
            publish(Acc, Kind, fun(Plugin, Arn) ->
                                       {message, Plugin:user_guid(From), Plugin:user_guid(To),
                                        Body,
                                        Plugin:message_attributes(Arn, From, To, Kind, Packet)}
                               end)
    end;
push_event(Acc, _Event) ->
    Acc.

publish(Acc, Kind, Build) ->
    HostType = mongoose_acc:host_type(Acc),
    case {persistent_term:get(key(HostType), undefined),
          mod_event_pusher_instance:instance(HostType, ?KEY)} of
        {#sns{plugin = Plugin, topics = #{Kind := {Arn, ArnBin}}}, Instance}
          when Instance =/= undefined ->
            try event(ArnBin, Build(Plugin, Arn)) of
                Event ->
                    %% A full queue or a stopped instance is counted by the instance.
                    mod_event_pusher_nif:push(Instance, Event)
            catch Class:Reason:Stacktrace ->
                    skipped(HostType, #{what => event_pusher_sns_event_skipped,
                                        plugin_module => Plugin, class => Class,
                                        reason => Reason, stacktrace => Stacktrace})
            end;
        _NotRunningOrNoTopic ->
            ok
    end,
    Acc.

event(Arn, {presence, UserId, Online, Attributes}) ->
    #sns_presence{topic_arn = Arn, user_id = UserId, present = Online,
                  attributes = attributes(Attributes)};
event(Arn, {message, FromId, ToId, Body, Attributes}) ->
    #sns_message{topic_arn = Arn, from_user_id = FromId, to_user_id = ToId, message = Body,
                 attributes = attributes(Attributes)}.

%% SNS DataTypes as erlcloud assigns them: a string is String, a number Number and a
%% binary Binary.
attributes(Attributes) ->
    [{text(Name), Kind, Value}
     || {Name, V} <- maps:to_list(Attributes), {Kind, Value} <- [attribute_value(Name, V)]].

attribute_value(_Name, V) when is_list(V) -> {string, text(V)};
attribute_value(_Name, V) when is_binary(V) -> {binary, V};
attribute_value(_Name, V) when is_integer(V) -> {number, integer_to_binary(V)};
attribute_value(_Name, V) when is_float(V) -> {number, float_to_binary(V, [short])};
attribute_value(Name, V) -> error({bad_message_attribute, Name, V}).

text(Name) when is_atom(Name) -> atom_to_binary(Name);
text(Text) ->
    case unicode:characters_to_binary(Text) of
        Bin when is_binary(Bin) -> Bin;
        _ -> error({not_unicode_text, Text})
    end.

skipped(HostType, Log) ->
    ?LOG_WARNING(Log),
    mongoose_instrument:execute(mod_event_pusher_sns_delivery, #{host_type => HostType},
                                #{skipped => 1}).

key(HostType) ->
    {?MODULE, HostType}.

%% Starting

topics(Opts = #{region := Region, account_id := Account}) ->
    maps:from_list([{Kind, {Arn, list_to_binary(Arn)}}
                    || {Kind, Option} <- [{presence, presence_updates_topic},
                                          {pm, pm_messages_topic},
                                          {muc, muc_messages_topic}],
                       {ok, Topic} <- [maps:find(Option, Opts)],
                       Arn <- [topic_arn(Region, Account, Topic)]]).

-spec topic_arn(string(), string(), topic()) -> topic_arn().
topic_arn(Region, Account, Topic) ->
    lists:flatten(["arn:aws:sns:", Region, ":", Account, ":", Topic]).

start_config(Opts = #{publish_retry_count := Retries, publish_retry_time_ms := Base,
                      pool_size := PoolSize, request_timeout_ms := Timeout}) ->
    Instance = mod_event_pusher_delivery:instance_config(Opts#{retry => retry(Retries, Base)},
                                                         PoolSize),
    {Instance#instance_config{jitter = minus_base},
     #sns_config{sns_host = unicode:characters_to_binary(maps:get(sns_host, Opts)),
                 region = unicode:characters_to_binary(maps:get(region, Opts)),
                 access_key_id = unicode:characters_to_binary(maps:get(access_key_id, Opts)),
                 secret_access_key = unicode:characters_to_binary(
                                       maps:get(secret_access_key, Opts)),
                 request_timeout_ms = Timeout,
                 connect_timeout_ms = Timeout,
                 batching = maps:get(batching, Opts)}}.

%% MongooseIM's policy: publish_retry_count retries after the first attempt, the n-th
%% after 2^(n-1) * publish_retry_time_ms minus up to publish_retry_time_ms; attempts
%% alone bound it. The NIF doubles the pause at most 30 times, so a cap at 2^30 changes
%% nothing, and the largest (1 day bsl 30 ms) fits the NIF's 64-bit decoding.
retry(Retries, Base) ->
    #{max_attempts => Retries + 1,
      base_backoff_ms => Base,
      max_backoff_ms => Base bsl min(Retries, 30),
      deadline_ms => 1 bsl 40}.

%% Reports from the Rust instance, in the reporter process

-spec handle_report(host_type(), sns, mod_event_pusher_instance:report()) -> ok.
handle_report(HostType, ?KEY, Report) ->
    Labels = #{host_type => HostType},
    mod_event_pusher_delivery:report(
      HostType, ?KEY, Report,
      #{delivery_event => mod_event_pusher_sns_delivery,
        attempt => fun({_Tag, published, TimeUs, Bytes}) ->
                           mongoose_instrument:execute(mod_event_pusher_sns_publish, Labels,
                                                       #{count => 1, time => TimeUs,
                                                         size => Bytes});
                      (_Failed) ->
                           mongoose_instrument:execute(mod_event_pusher_sns_publish, Labels,
                                                       #{failed => 1})
                   end}),
    case stats(HostType) of
        #{queued := Queued, in_flight := InFlight} ->
            mongoose_instrument:execute(mod_event_pusher_sns_queue, Labels,
                                        #{queued => Queued, in_flight => InFlight});
        _ ->
            ok
    end.
