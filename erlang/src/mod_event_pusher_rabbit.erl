%% @doc The rabbit backend: presence and chat events published to RabbitMQ exchanges
%% as MongooseIM 6.4 publishes them, delivered in Rust (lapin) with pipelined
%% publisher confirms, retries, reconnection with backoff and a bounded queue.
%%
%% The Erlang side only picks what to publish (JIDs, body) and enqueues it; the JSON
%% payload and routing key are built in Rust.
-module(mod_event_pusher_rabbit).
-behaviour(gen_mod).
-behaviour(mod_event_pusher).
-behaviour(mod_event_pusher_instance).

-export([start/2, stop/1, config_spec/0, instrumentation/1, supported_features/0]).
-export([push_event/2, handle_report/3, stats/1]).

-include("mod_event_pusher_events.hrl").
-include("mod_event_pusher_nif.hrl").
-include("mongoose_config_spec.hrl").
-include_lib("kernel/include/logger.hrl").

-define(POOL_TAG, event_pusher).
-define(KEY, rabbit).

%% gen_mod

%% @doc Connects and declares the exchanges; raises with the broker's reason (naming
%% the exchange) when it cannot.
%%
%% The broker is MongooseIM's `[outgoing_pools.rabbit.event_pusher]' (host-type pool
%% first, then the global one), with the keys of the module's own `connection'
%% section on top; with `connection.host' given there, the pool section is optional.
%% Our metrics go to the pool's events (wpool_rabbit_*, labelled with the pool's host
%% type or `global'), which MongooseIM registers when it starts the pool, before the
%% modules; we register them only when no pool did.
-spec start(binary(), gen_mod:module_opts()) -> ok.
start(HostType, Opts0) ->
    Opts = mod_event_pusher_config:with_defaults(config_spec(), Opts0),
    {{Instance, Config}, Labels} = start_config(HostType, Opts),
    Registered = [Spec || Spec <- pool_instrumentation(Labels), newly_set_up(Spec)],
    persistent_term:put(pool_key(HostType), {Labels, Registered}),
    try
        mod_event_pusher_instance:start_or_raise(
          HostType, ?KEY, ?MODULE,
          fun(Reporter) -> mod_event_pusher_nif:start_rabbit(Instance, Config, Reporter) end,
          event_pusher_rabbit_start_failed)
    catch
        Class:Reason:Stacktrace ->
            forget_pool(HostType),
            erlang:raise(Class, Reason, Stacktrace)
    end,
    ok.

-spec stop(binary()) -> ok.
stop(HostType) ->
    mod_event_pusher_instance:stop_with_drain_option(HostType, ?KEY, ?MODULE),
    forget_pool(HostType).

-spec supported_features() -> [atom()].
supported_features() ->
    [dynamic_domains].

%% @doc MongooseIM's options, plus (all optional): each exchange's `durable' and
%% `persistent' (absent: as `durable'); `connection.virtual_host',
%% `connection.connect_timeout_ms', `connection.tls'; `reconnect.*'; `confirm_window',
%% `confirm_timeout_ms', `max_message_bytes'; and the shared queue, retry and drain
%% options.
-spec config_spec() -> #section{}.
config_spec() ->
    Items = #{<<"presence_exchange">> => exchange_spec(<<"presence">>),
              <<"chat_msg_exchange">> => message_exchange_spec(<<"chat_msg">>),
              <<"groupchat_msg_exchange">> => message_exchange_spec(<<"groupchat_msg">>),
              <<"connection">> => connection_spec(),
              <<"reconnect">> => reconnect_spec(),
              %% with confirms, the window is the number of deliveries at once
              <<"confirm_window">> => mod_event_pusher_config:bounded(positive, concurrency),
              <<"confirm_timeout_ms">> => duration_ms(),
              %% the broker's max_message_size: a larger message is failed, not sent
              <<"max_message_bytes">> => mod_event_pusher_config:bounded(positive,
                                                                         message_bytes)},
    #section{items = maps:merge(Items, mod_event_pusher_delivery:config_items()),
             defaults = maps:merge(#{<<"confirm_window">> => 1000,
                                     <<"confirm_timeout_ms">> => 5000,
                                     %% RabbitMQ 3.x's default (4.x: 16 MiB)
                                     <<"max_message_bytes">> => 134217728},
                                   mod_event_pusher_delivery:config_defaults())}.

exchange_spec(Name) ->
    #section{items = exchange_items(),
             defaults = #{<<"name">> => Name, <<"type">> => <<"topic">>, <<"durable">> => false},
             include = always}.

message_exchange_spec(Name) ->
    Topic = #option{type = binary, validate = non_empty},
    Items = exchange_items(),
    #section{items = Items#{<<"sent_topic">> => Topic, <<"recv_topic">> => Topic},
             defaults = #{<<"name">> => Name, <<"type">> => <<"topic">>, <<"durable">> => false,
                          <<"sent_topic">> => <<Name/binary, "_sent">>,
                          <<"recv_topic">> => <<Name/binary, "_recv">>},
             include = always}.

%% `persistent' has no default: absent, it follows `durable' (see persistent/1).
exchange_items() ->
    #{<<"name">> => #option{type = binary, validate = non_empty},
      <<"type">> => #option{type = binary, validate = non_empty},
      <<"durable">> => #option{type = boolean},
      <<"persistent">> => #option{type = boolean}}.

%% Ours: MongooseIM's [outgoing_pools.rabbit.*.connection] has no room for
%% virtual_host, connect_timeout_ms and tls. The pool's own keys may be given here too,
%% so that the pool section (whose idle connections MongooseIM would open) is optional.
connection_spec() ->
    #section{items = #{<<"host">> => #option{type = string, validate = non_empty},
                       <<"port">> => #option{type = integer, validate = port},
                       <<"username">> => #option{type = binary, validate = non_empty},
                       <<"password">> => #option{type = binary, validate = non_empty},
                       <<"confirms_enabled">> => #option{type = boolean},
                       <<"virtual_host">> => #option{type = binary, validate = non_empty},
                       <<"connect_timeout_ms">> => duration_ms(),
                       <<"tls">> => #section{items = #{<<"cacertfile">> =>
                                                           #option{type = string,
                                                                   validate = non_empty}}}},
             defaults = #{<<"virtual_host">> => <<"/">>, <<"connect_timeout_ms">> => 5000},
             include = always}.

reconnect_spec() ->
    #section{items = #{<<"base_delay_ms">> => duration_ms(),
                       <<"max_delay_ms">> => duration_ms()},
             defaults = #{<<"base_delay_ms">> => 100, <<"max_delay_ms">> => 10000},
             include = always}.

duration_ms() ->
    mod_event_pusher_config:bounded(positive, duration_ms).

%% @doc Our delivery counters. The connection and publish metrics are MongooseIM's
%% pool events, set up in start/2 only when the pool has not (see there).
-spec instrumentation(binary()) -> [mongoose_instrument:spec()].
instrumentation(HostType) ->
    [{mod_event_pusher_rabbit_delivery, #{host_type => HostType},
      #{metrics => #{delivered => spiral, retried => spiral, failed => spiral,
                     dropped => spiral, skipped => spiral}}}].

%% What MongooseIM's rabbit pool declares for these labels.
pool_instrumentation(#{host_type := HostTypeOrGlobal, pool_tag := Tag}) ->
    mongoose_wpool_rabbit:instrumentation(HostTypeOrGlobal, Tag).

newly_set_up(Spec) ->
    try mongoose_instrument:set_up([Spec]) of
        ok -> true
    catch
        error:#{what := event_already_registered} -> false
    end.

forget_pool(HostType) ->
    case persistent_term:get(pool_key(HostType), undefined) of
        {_Labels, Registered} ->
            mongoose_instrument:tear_down(Registered),
            persistent_term:erase(pool_key(HostType)),
            ok;
        undefined ->
            ok
    end.

pool_labels(HostType) ->
    {Labels, _Registered} = persistent_term:get(pool_key(HostType)),
    Labels.

pool_key(HostType) ->
    {?MODULE, pool, HostType}.

%% @doc The instance's queue and delivery counters.
-spec stats(binary()) -> mod_event_pusher_nif:stats() | {error, not_running}.
stats(HostType) ->
    mod_event_pusher_instance:stats(HostType, ?KEY).

%% mod_event_pusher: the hook path

-spec push_event(mongoose_acc:t(), mod_event_pusher:event()) -> mongoose_acc:t().
push_event(Acc, #user_status_event{jid = Jid, status = Status}) ->
    enqueue(Acc, #rabbit_presence{user_jid = jid:to_binary(Jid), bare_jid = jid:to_bare_binary(Jid),
                                  present = Status =:= online});
push_event(Acc, #chat_event{type = Type, direction = Dir, from = From, to = To, packet = Packet})
  when Type =:= chat; Type =:= groupchat ->
    case exml_query:path(Packet, [{element, <<"body">>}, cdata], <<>>) of
        <<>> ->
            %% A departure from MongooseIM 6.4 (README, compatibility notes): 6.4
            %% crashes on a message without <body/> and publishes "message":"" for an
            %% empty one; we skip both, counted as skipped.
            mongoose_instrument:execute(mod_event_pusher_rabbit_delivery,
                                        #{host_type => mongoose_acc:host_type(Acc)},
                                        #{skipped => 1}),
            Acc;
        Message ->
            Routing = case Dir of in -> From; out -> To end,
            enqueue(Acc, #rabbit_chat{kind = Type, direction = Dir, from_jid = jid:to_binary(From),
                                      to_jid = jid:to_binary(To), message = Message,
                                      routing_key = jid:to_bare_binary(Routing)})
    end;
push_event(Acc, _Event) ->
    Acc.

%% Full queue or stopped instance: counted by the instance and reported as metrics.
enqueue(Acc, Event) ->
    case mod_event_pusher_instance:instance(mongoose_acc:host_type(Acc), ?KEY) of
        undefined -> Acc;
        Instance -> mod_event_pusher_nif:push(Instance, Event), Acc
    end.

%% Starting

%% The NIF's start config and the labels of the pool metrics.
start_config(HostType, Opts = #{connection := Connection}) ->
    case mod_event_pusher_delivery:find_pool(HostType, rabbit, ?POOL_TAG) of
        {ok, Pool = #{conn_opts := PoolConn}} ->
            {start_config(Opts, maps:merge(PoolConn, Connection), Pool),
             #{host_type => pool_host_type(HostType, Pool), pool_tag => ?POOL_TAG}};
        {error, _} when is_map_key(host, Connection) ->
            {start_config(Opts, Connection, #{}),
             #{host_type => HostType, pool_tag => ?POOL_TAG}};
        {error, Reason} ->
            error(start_failed(HostType, Reason))
    end.

%% The host type MongooseIM starts the pool for: `global', or a host type for
%% `scope = "host_type"' and host_config pools.
pool_host_type(_HostType, #{scope := global}) -> global;
pool_host_type(HostType, #{scope := host_type}) -> HostType;
pool_host_type(_HostType, #{scope := PoolHostType}) -> PoolHostType.

start_config(Opts, Conn, Pool) ->
    #{presence_exchange := Presence, chat_msg_exchange := Chat,
      groupchat_msg_exchange := Groupchat, connection := Connection,
      reconnect := Reconnect, confirm_window := Window,
      confirm_timeout_ms := ConfirmTimeout, max_message_bytes := MaxMessageBytes} = Opts,
    Confirms = maps:get(confirms_enabled, Conn, false),
    %% With confirms, each in-flight publish waits for its own confirm: the window.
    Concurrency = case Confirms of
                      true -> Window;
                      false -> mod_event_pusher_delivery:pool_workers(Pool)
                  end,
    Tls = maps:get(tls, Connection, false),
    {mod_event_pusher_delivery:instance_config(Opts, Concurrency),
     #rabbit_config{host = unicode:characters_to_binary(maps:get(host, Conn, "localhost")),
                    port = maps:get(port, Conn, 5672),
                    username = maps:get(username, Conn, <<"guest">>),
                    password = maps:get(password, Conn, <<"guest">>),
                    virtual_host = maps:get(virtual_host, Connection),
                    connect_timeout_ms = maps:get(connect_timeout_ms, Connection),
                    tls = Tls =/= false,
                    cacertfile = case Tls of
                                     #{cacertfile := File} -> unicode:characters_to_binary(File);
                                     _ -> <<>>
                                 end,
                    presence_exchange = exchange(Presence),
                    chat_msg_exchange = exchange(Chat),
                    groupchat_msg_exchange = exchange(Groupchat),
                    max_message_bytes = MaxMessageBytes,
                    confirms_enabled = Confirms,
                    confirm_timeout_ms = ConfirmTimeout,
                    reconnect_base_delay_ms = maps:get(base_delay_ms, Reconnect),
                    reconnect_max_delay_ms = maps:get(max_delay_ms, Reconnect)}}.

%% Messages to a durable exchange are persistent unless `persistent = false' says
%% otherwise: a durable exchange and queue are there to survive a broker restart, and
%% transient messages would not survive it.
exchange(Exchange = #{name := Name, type := Type, durable := Durable}) ->
    #rabbit_exchange{name = Name, type = Type, durable = Durable,
                     persistent = maps:get(persistent, Exchange, Durable),
                     sent_topic = maps:get(sent_topic, Exchange, <<>>),
                     recv_topic = maps:get(recv_topic, Exchange, <<>>)}.

start_failed(HostType, Reason) ->
    #{what => event_pusher_rabbit_start_failed, host_type => HostType, reason => Reason}.

%% Reports from the Rust instance, in the reporter process

-spec handle_report(binary(), rabbit, mod_event_pusher_instance:report()) -> ok.
handle_report(HostType, ?KEY, Report = #{connections := Connections,
                                         connection_events := Events}) ->
    Labels = pool_labels(HostType),
    report_connections(Labels, Connections),
    lists:foreach(fun(Event) -> report_connection_event(HostType, Event) end, Events),
    mod_event_pusher_delivery:report(
      HostType, ?KEY, Report,
      #{delivery_event => mod_event_pusher_rabbit_delivery,
        attempt => fun(Attempt) -> report_attempt(Labels, Attempt) end}).

%% Rate-limited in Rust: at most a few lines a minute however the broker behaves.
report_connection_event(HostType, {lost, #{reason := Reason, at_ms := At,
                                           suppressed := Suppressed}}) ->
    ?LOG_WARNING(#{what => event_pusher_rabbit_connection_lost, host_type => HostType,
                   reason => Reason, lost_at => mod_event_pusher_delivery:timestamp(At),
                   suppressed_warnings => Suppressed,
                   text => <<"Lost the connection to RabbitMQ: reconnecting with backoff; "
                             "events wait in the queue meanwhile">>});
report_connection_event(HostType, {connect_failed, #{reason := Reason, attempts := Attempts,
                                                     down_since_ms := Since,
                                                     suppressed := Suppressed}}) ->
    ?LOG_WARNING(#{what => event_pusher_rabbit_connect_failed, host_type => HostType,
                   reason => Reason, attempts => Attempts,
                   disconnected_since => mod_event_pusher_delivery:timestamp(Since),
                   suppressed_warnings => Suppressed,
                   text => <<"Cannot connect to RabbitMQ: retrying with backoff; events wait "
                             "in the queue (bounded by queue.max_events and queue.max_bytes)">>});
report_connection_event(HostType, {connected, #{at_ms := At, down_since_ms := Since,
                                                failed_attempts := Failed,
                                                suppressed := Suppressed}}) ->
    ?LOG_NOTICE(#{what => event_pusher_rabbit_connected, host_type => HostType,
                  disconnected_since => mod_event_pusher_delivery:timestamp(Since),
                  disconnected_ms => At - Since, failed_attempts => Failed,
                  suppressed_warnings => Suppressed,
                  text => <<"Connected to RabbitMQ again: exchanges declared, publishing "
                            "the queued events">>}).

report_connections(Labels, #{opened := Opened, closed := Closed, failed := Failed}) ->
    [mongoose_instrument:execute(wpool_rabbit_connections, Labels, #{active => 1, opened => 1})
     || _ <- lists:seq(1, Opened)],
    [mongoose_instrument:execute(wpool_rabbit_connections, Labels, #{active => -1, closed => 1})
     || _ <- lists:seq(1, Closed)],
    [mongoose_instrument:execute(wpool_rabbit_connections, Labels, #{failed => 1})
     || _ <- lists:seq(1, Failed)],
    ok.

report_attempt(Labels, {_Tag, Outcome, TimeUs, Bytes}) when Outcome =:= confirmed;
                                                            Outcome =:= published ->
    mongoose_instrument:execute(wpool_rabbit_messages_published, Labels,
                                #{count => 1, time => TimeUs, size => Bytes});
report_attempt(Labels, {_Tag, timeout, _TimeUs, _Bytes}) ->
    mongoose_instrument:execute(wpool_rabbit_messages_published, Labels, #{timeout => 1});
report_attempt(Labels, {_Tag, _NackedOrError, _TimeUs, _Bytes}) ->
    mongoose_instrument:execute(wpool_rabbit_messages_published, Labels, #{failed => 1}).
