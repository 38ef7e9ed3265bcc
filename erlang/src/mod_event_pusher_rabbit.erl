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
-include("mongoose_config_spec.hrl").

-define(POOL_TAG, event_pusher).
-define(KEY, rabbit).

%% gen_mod

%% @doc Connects and declares the exchanges; raises with the broker's reason (naming
%% the exchange) when it cannot.
-spec start(binary(), gen_mod:module_opts()) -> ok.
start(HostType, Opts) ->
    Config = case mod_event_pusher_delivery:find_pool(HostType, rabbit, ?POOL_TAG) of
                 {ok, Pool} -> start_config(Opts, Pool);
                 {error, Reason} -> error(start_failed(HostType, Reason))
             end,
    mod_event_pusher_instance:start_or_raise(
      HostType, ?KEY, ?MODULE,
      fun(Reporter) -> mod_event_pusher_nif:start_rabbit(Config, Reporter) end,
      event_pusher_rabbit_start_failed),
    ok.

-spec stop(binary()) -> ok.
stop(HostType) ->
    mod_event_pusher_instance:stop_with_drain_option(HostType, ?KEY, ?MODULE).

-spec supported_features() -> [atom()].
supported_features() ->
    [dynamic_domains].

%% @doc MongooseIM's options, plus (all optional): each exchange's `durable';
%% `connection.virtual_host', `connection.connect_timeout_ms', `connection.tls';
%% `reconnect.*'; `confirm_window', `confirm_timeout_ms'; and the shared queue, retry
%% and drain options.
-spec config_spec() -> #section{}.
config_spec() ->
    Items = #{<<"presence_exchange">> => exchange_spec(<<"presence">>),
              <<"chat_msg_exchange">> => message_exchange_spec(<<"chat_msg">>),
              <<"groupchat_msg_exchange">> => message_exchange_spec(<<"groupchat_msg">>),
              <<"connection">> => connection_spec(),
              <<"reconnect">> => reconnect_spec(),
              <<"confirm_window">> => #option{type = integer, validate = positive},
              <<"confirm_timeout_ms">> => #option{type = integer, validate = positive}},
    #section{items = maps:merge(Items, mod_event_pusher_delivery:config_items()),
             defaults = maps:merge(#{<<"confirm_window">> => 1000,
                                     <<"confirm_timeout_ms">> => 5000},
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

exchange_items() ->
    #{<<"name">> => #option{type = binary, validate = non_empty},
      <<"type">> => #option{type = binary, validate = non_empty},
      <<"durable">> => #option{type = boolean}}.

%% Ours: MongooseIM's [outgoing_pools.rabbit.*.connection] has no room for these.
connection_spec() ->
    #section{items = #{<<"virtual_host">> => #option{type = binary, validate = non_empty},
                       <<"connect_timeout_ms">> => #option{type = integer, validate = positive},
                       <<"tls">> => #section{items = #{<<"cacertfile">> =>
                                                           #option{type = string,
                                                                   validate = non_empty}}}},
             defaults = #{<<"virtual_host">> => <<"/">>, <<"connect_timeout_ms">> => 5000},
             include = always}.

reconnect_spec() ->
    #section{items = #{<<"base_delay_ms">> => #option{type = integer, validate = positive},
                       <<"max_delay_ms">> => #option{type = integer, validate = positive}},
             defaults = #{<<"base_delay_ms">> => 100, <<"max_delay_ms">> => 10000},
             include = always}.

%% @doc MongooseIM's rabbit pool metrics, under its names and labels, and our
%% delivery counters.
-spec instrumentation(binary()) -> [mongoose_instrument:spec()].
instrumentation(HostType) ->
    Labels = pool_labels(HostType),
    [{wpool_rabbit_connections, Labels,
      #{metrics => #{active => counter, opened => spiral, closed => spiral, failed => spiral}}},
     {wpool_rabbit_messages_published, Labels,
      #{metrics => #{count => spiral, failed => spiral, timeout => spiral,
                     time => histogram, size => histogram}}},
     {mod_event_pusher_rabbit_delivery, #{host_type => HostType},
      #{metrics => #{delivered => spiral, retried => spiral, failed => spiral,
                     dropped => spiral, skipped => spiral}}}].

pool_labels(HostType) ->
    #{host_type => HostType, pool_tag => ?POOL_TAG}.

%% @doc The instance's queue and delivery counters.
-spec stats(binary()) -> mod_event_pusher_nif:stats() | {error, not_running}.
stats(HostType) ->
    mod_event_pusher_instance:stats(HostType, ?KEY).

%% mod_event_pusher: the hook path

-spec push_event(mongoose_acc:t(), mod_event_pusher:event()) -> mongoose_acc:t().
push_event(Acc, #user_status_event{jid = Jid, status = Status}) ->
    enqueue(Acc, {presence, jid:to_binary(Jid), jid:to_bare_binary(Jid), Status =:= online});
push_event(Acc, #chat_event{type = Type, direction = Dir, from = From, to = To, packet = Packet})
  when Type =:= chat; Type =:= groupchat ->
    case exml_query:path(Packet, [{element, <<"body">>}, cdata], <<>>) of
        <<>> ->
            %% MongooseIM 6.4 crashes on these; we skip them, counted.
            mongoose_instrument:execute(mod_event_pusher_rabbit_delivery,
                                        #{host_type => mongoose_acc:host_type(Acc)},
                                        #{skipped => 1}),
            Acc;
        Message ->
            Routing = case Dir of in -> From; out -> To end,
            enqueue(Acc, {Type, Dir, jid:to_binary(From), jid:to_binary(To), Message,
                          jid:to_bare_binary(Routing)})
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

start_config(Opts, #{conn_opts := Conn} = Pool) ->
    #{presence_exchange := Presence, chat_msg_exchange := Chat,
      groupchat_msg_exchange := Groupchat, connection := Connection,
      reconnect := Reconnect, confirm_window := Window,
      confirm_timeout_ms := ConfirmTimeout} = Opts,
    Confirms = maps:get(confirms_enabled, Conn, false),
    %% With confirms, each in-flight publish waits for its own confirm: the window.
    Concurrency = case Confirms of
                      true -> Window;
                      false -> mod_event_pusher_delivery:pool_workers(Pool)
                  end,
    Tls = maps:get(tls, Connection, false),
    maps:merge(mod_event_pusher_delivery:instance_config(Opts, Concurrency),
               #{host => unicode:characters_to_binary(maps:get(host, Conn, "localhost")),
                 port => maps:get(port, Conn, 5672),
                 username => maps:get(username, Conn, <<"guest">>),
                 password => maps:get(password, Conn, <<"guest">>),
                 virtual_host => maps:get(virtual_host, Connection),
                 connect_timeout_ms => maps:get(connect_timeout_ms, Connection),
                 tls => Tls =/= false,
                 cacertfile => case Tls of
                                   #{cacertfile := File} -> unicode:characters_to_binary(File);
                                   _ -> <<>>
                               end,
                 presence_exchange => Presence,
                 chat_msg_exchange => Chat,
                 groupchat_msg_exchange => Groupchat,
                 confirms_enabled => Confirms,
                 confirm_timeout_ms => ConfirmTimeout,
                 reconnect_base_delay_ms => maps:get(base_delay_ms, Reconnect),
                 reconnect_max_delay_ms => maps:get(max_delay_ms, Reconnect)}).

start_failed(HostType, Reason) ->
    #{what => event_pusher_rabbit_start_failed, host_type => HostType, reason => Reason}.

%% Reports from the Rust instance, in the reporter process

-spec handle_report(binary(), rabbit, mod_event_pusher_instance:report()) -> ok.
handle_report(HostType, ?KEY, #{attempts := Attempts, failures := Failures,
                                counters := Counters, connections := Connections,
                                reports_lost := Lost}) ->
    Labels = pool_labels(HostType),
    report_connections(Labels, Connections),
    lists:foreach(fun(Attempt) -> report_attempt(Labels, Attempt) end, Attempts),
    mongoose_instrument:execute(mod_event_pusher_rabbit_delivery, #{host_type => HostType},
                                Counters),
    mod_event_pusher_delivery:log_report(HostType, ?KEY, Failures, Counters, Lost).

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
