%% @doc `make demo': the event pusher running in the MongooseIM stand-in, fed by
%% simulated users, delivering webhooks to a local pusher-sink, publishing to
%% RabbitMQ on localhost:5672 and to Amazon SNS as moto's emulator serves it, and
%% sending XEP-0357 push notifications to a fake pubsub service.
%%
%% 1. starts mnesia with a disc schema in _build/demo_mnesia (made afresh; the push
%%    backend keeps registrations in a disc_copies table), and pusher-sink and moto's
%%    SNS server on free ports, and creates the configured SNS topics there, each
%%    with an SQS queue subscribed;
%% 2. loads examples/mongooseim.toml with those ports filled in and starts the
%%    configured modules, as a MongooseIM node does at boot (the rabbit backend
%%    declares its exchanges);
%% 3. binds a queue of its own to the rabbit backend's exchanges (amqp_probe, a
%%    consumer on its own connection), to see what really arrived at the broker;
%% 4. registers ~50 users (ejabberd_auth) and the fake pubsub service
%%    pubsub.push.localhost (answers every publish with a result and checks it);
%%    each user opens a session (ejabberd_sm, user_available) and most enable push
%%    from it (an urn:xmpp:push:0 IQ: that service, a node of their own, a
%%    publish-options form);
%% 5. for a few seconds the users go online and offline (ejabberd_sm sessions
%%    opened and closed, user_available, unset_presence) and chat
%%    (user_send_message for what they send, filter_local_packet for what is
%%    routed to them, online or offline): mostly chat messages with a body, some
%%    groupchat, some chat states without a body;
%% 6. stops the modules (pending events are drained) and prints, per backend, what
%%    was accepted, delivered, failed and dropped, the delivery latency, and one
%%    machine-readable line each:
%%    `demo: http accepted=N delivered=N failed=N dropped=N' and the same for push,
%%    where delivered means answered with a result by the pubsub service, rabbit,
%%    where delivered means confirmed by the broker (publisher confirms are on), and
%%    sns, where delivered means accepted by SNS.
%%
%% main/0 returns ok when every backend's books balance (accepted = delivered +
%% failed + dropped), something was delivered, each backend accepted exactly the
%% events it should have, the sink answered exactly as many requests as were
%% delivered, the pubsub service got exactly as many publish IQs as were delivered,
%% each as MongooseIM builds it, and at least as many messages as were confirmed
%% reached the demo's queue, each with MongooseIM's JSON and routing key; error
%% otherwise.
-module(event_pusher_demo).

-export([main/0, main/1]).

-include("exml.hrl").
-include("jlib.hrl").

-define(HOST, <<"localhost">>).
-define(MUC, <<"muc.localhost">>).
-define(PUBSUB, <<"pubsub.push.localhost">>).
-define(NS_PUSH_SUMMARY, <<"urn:xmpp:push:summary">>).
%% Presence ({Jid, Online}), the presence locks ({{lock, Jid}}), who enabled push
%% ({{push, LUser}}) and the first malformed publish IQ ({bad_publish, Why, IQ}).
-define(PRESENCE, event_pusher_demo_presence).

%% Counters of the hooks the users fire.
-define(C_HOOKS, 1).
-define(C_SENT, 2).           % user_send_message (direction in)
-define(C_RECEIVED, 3).       % filter_local_packet (direction out) to online users
-define(C_PRESENCE, 4).       % user_available + unset_presence
-define(C_WEBHOOKS, 5).       % sent chat messages with a body: what the http backend posts
%% What the rabbit backend publishes, per exchange, and what it skips.
-define(C_RABBIT_PRESENCE, 6).  % every presence event
-define(C_RABBIT_CHAT, 7).      % chat messages with a body, sent and received
-define(C_RABBIT_GROUPCHAT, 8). % groupchat messages (all have a body), sent and received
-define(C_RABBIT_SKIPPED, 9).   % chat messages without a body, sent and received
-define(C_GROUPCHAT_SENT, 10).  % groupchat messages sent: what the sns backend publishes
-define(C_RECEIVED_OFFLINE, 11). % filter_local_packet (direction out) to offline users
%% Push: chat messages with a body routed to an offline user who enabled push (what
%% the push backend publishes), the users who enabled it, and what the fake pubsub
%% service got.
-define(C_PUSH_EXPECTED, 12).
-define(C_PUSH_ENABLED, 13).
-define(C_PUBSUB_REQUESTS, 14).
-define(C_PUBSUB_BAD, 15).
-define(N_COUNTERS, 15).

-type opts() :: #{users => pos_integer(), duration_ms => pos_integer(),
                  think_ms => pos_integer()}.

-spec main() -> ok | error.
main() ->
    main(#{}).

-spec main(opts()) -> ok | error.
main(Opts0) ->
    Opts = maps:merge(#{users => 50, duration_ms => 5000, think_ms => 20}, Opts0),
    MnesiaDir = start_mnesia(),
    Sink = event_pusher_sink:start([]),
    {ok, Sns} = sns_emulator:start(),
    try
        run(Opts, Sink, Sns)
    after
        _ = (catch mongoose_host:stop()),
        event_pusher_sink:stop(Sink),
        sns_emulator:stop(Sns),
        stop_mnesia(MnesiaDir)
    end.

%% Mnesia with a disc schema, as on a MongooseIM node (the push backend's table has
%% disc copies), in a directory made afresh for each run and removed at the end.
start_mnesia() ->
    Dir = filename:join([event_pusher_sink:repo_root(), "_build", "demo_mnesia"]),
    remove_dir(Dir),
    ok = push_client:start_mnesia(Dir),
    Dir.

%% Without the notice "application: mnesia exited: stopped" after the report's last
%% lines.
stop_mnesia(Dir) ->
    #{level := Level} = logger:get_primary_config(),
    ok = logger:set_primary_config(level, warning),
    try
        stopped = mnesia:stop()
    after
        ok = logger:set_primary_config(level, Level)
    end,
    remove_dir(Dir).

remove_dir(Dir) ->
    case file:del_dir_r(Dir) of
        ok -> ok;
        {error, enoent} -> ok
    end.

run(Opts, Sink, Sns) ->
    io:format("demo: mnesia running with a disc schema in ~ts~n",
              [mnesia:system_info(directory)]),
    io:format("demo: pusher-sink listening on 127.0.0.1:~b, moto's SNS server on ~ts~n",
              [event_pusher_sink:port(Sink), maps:get(endpoint, Sns)]),
    %% examples/mongooseim.toml with the sink's and the emulator's ports filled in.
    Config = event_pusher_sink:load_config("examples/mongooseim.toml",
                                           #{sink_port => event_pusher_sink:port(Sink),
                                             sns_port => maps:get(port, Sns)}),
    SnsTopics = sns_topics(Sns, Config),
    ok = mongoose_host:start(Config),
    Backends = backends(),
    Exchanges = rabbit_exchanges(),
    Probe = start_probe(Exchanges),
    try
        simulate(Opts, Sink, Backends, Exchanges, Probe, {Sns, SnsTopics})
    after
        stop_probe(Probe)
    end.

simulate(#{users := NUsers, duration_ms := Duration} = Opts0, Sink, Backends, Exchanges,
         Probe, Sns) ->
    Push = lists:keymember("push", 1, Backends),
    Opts = Opts0#{push => Push},
    io:format("demo: backends ~ts; ~b users for ~.1f s~n",
              [lists:join(", ", [Name || {Name, _} <- Backends]), NUsers, Duration / 1000]),
    Counters = counters:new(?N_COUNTERS, [write_concurrency]),
    ets:new(?PRESENCE, [named_table, public, set, {write_concurrency, true},
                        {read_concurrency, true}]),
    [ok = ejabberd_auth:register_user(user_jid(I)) || I <- lists:seq(1, NUsers)],
    case Push of
        true -> start_pubsub_service(Counters);
        false -> ok
    end,
    %% Every user comes online (and most enable push) before the clock starts.
    Parent = self(),
    Users = [spawn_monitor(fun() -> user(I, NUsers, Parent, Counters, Opts) end)
             || I <- lists:seq(1, NUsers)],
    wait_ready(Users),
    io:format("demo: ~b users registered (ejabberd_auth) and online (ejabberd_sm)~ts~n",
              [NUsers, case Push of
                           true -> io_lib:format("; ~b enabled push at ~ts (a fake pubsub "
                                                 "service), one node each",
                                                 [counters:get(Counters, ?C_PUSH_ENABLED),
                                                  ?PUBSUB]);
                           false -> ""
                       end]),
    Start = erlang:monotonic_time(millisecond),
    Deadline = Start + Duration,
    [Pid ! {go, Deadline} || {Pid, _} <- Users],
    progress(Start, Deadline, Counters, Backends, 1),
    wait_users(Users),
    io:format("demo: ~b hooks fired (~b sent, ~b delivered to online users, ~b to offline "
              "users, ~b presence); ~b chat messages with a body sent~n",
              [counters:get(Counters, ?C_HOOKS), counters:get(Counters, ?C_SENT),
               counters:get(Counters, ?C_RECEIVED), counters:get(Counters, ?C_RECEIVED_OFFLINE),
               counters:get(Counters, ?C_PRESENCE), counters:get(Counters, ?C_WEBHOOKS)]),
    io:format("demo: stopping the modules (draining)~n"),
    T0 = erlang:monotonic_time(millisecond),
    ok = mongoose_modules:stop(),
    io:format("demo: stopped in ~b ms~n", [erlang:monotonic_time(millisecond) - T0]),
    Final = [{Name, backend_stats(Instances)} || {Name, Instances} <- Backends],
    Sent = http_sent_metrics(),
    Expected = #{webhooks => counters:get(Counters, ?C_WEBHOOKS),
                 presence => counters:get(Counters, ?C_RABBIT_PRESENCE),
                 chat => counters:get(Counters, ?C_RABBIT_CHAT),
                 groupchat => counters:get(Counters, ?C_RABBIT_GROUPCHAT),
                 skipped => counters:get(Counters, ?C_RABBIT_SKIPPED),
                 groupchat_sent => counters:get(Counters, ?C_GROUPCHAT_SENT),
                 push => counters:get(Counters, ?C_PUSH_EXPECTED)},
    Context = #{expected => Expected,
                sink_requests => event_pusher_sink:requests(Sink),
                pubsub => #{requests => counters:get(Counters, ?C_PUBSUB_REQUESTS),
                            bad => counters:get(Counters, ?C_PUBSUB_BAD),
                            first_bad => ets:lookup(?PRESENCE, bad_publish)},
                rabbit_skipped => rabbit_skipped_metrics(),
                arrived => arrived(Probe, Exchanges, Final),
                sns_presence => sns_presence_arrived(Sns, Expected)},
    ets:delete(?PRESENCE),
    report(Final, Sent, Context).

%% The configured backends and their Rust instances (kept so that their final
%% counters can be read after the modules have stopped).
backends() ->
    Modules = mongoose_config:get_opt({modules, ?HOST}, #{}),
    Backends = maps:get(mod_event_pusher, Modules, #{}),
    [{atom_to_list(Backend), Instances}
     || Backend <- lists:sort(maps:keys(Backends)),
        Instances <- [instances(Backend, maps:get(Backend, Backends))],
        Instances =/= []].

instances(http, #{handlers := Handlers}) ->
    Pools = lists:usort([Pool || #{pool_name := Pool} <- Handlers]),
    [I || Pool <- Pools, I <- [mod_event_pusher_instance:instance(?HOST, {http, Pool})],
          I =/= undefined];
instances(Backend, _Opts) when Backend =:= push; Backend =:= rabbit; Backend =:= sns ->
    [I || I <- [mod_event_pusher_instance:instance(?HOST, Backend)], I =/= undefined];
instances(_Backend, _Opts) ->
    [].

backend_stats(Instances) ->
    Stats = [mod_event_pusher_nif:stats(I) || I <- Instances],
    Sum = fun(Key) -> lists:sum([maps:get(Key, S, 0) || S <- Stats]) end,
    Max = fun(Key) -> case [V || S <- Stats, V <- [maps:get(Key, S, undefined)], is_integer(V)] of
                          [] -> undefined;
                          Vs -> lists:max(Vs)
                      end
          end,
    maps:from_list([{K, Sum(K)} || K <- [accepted, delivered, retried, failed, dropped,
                                         queued, in_flight]]
                   ++ [{K, Max(K)} || K <- [latency_p50_us, latency_p99_us]]).

http_sent_metrics() ->
    Events = mongoose_instrument:get_events(mod_event_pusher_http_sent, #{host_type => ?HOST}),
    length([E || E = #{count := 1} <- Events]).

rabbit_skipped_metrics() ->
    Events = mongoose_instrument:get_events(mod_event_pusher_rabbit_delivery,
                                            #{host_type => ?HOST}),
    lists:sum([N || #{skipped := N} <- Events]).

%% SNS: the sns backend's topics in moto, and what reached the presence topic

%% Creates the configured topics in the emulator; the presence topic gets an SQS queue
%% subscribed (the chat topics get thousands of messages: moto slows down a lot as
%% its queues fill).
sns_topics(Sns, Config) ->
    Modules = proplists:get_value({modules, ?HOST}, Config, #{}),
    case maps:get(mod_event_pusher, Modules, #{}) of
        #{sns := Opts} ->
            Names = fun(Keys) -> [list_to_binary(maps:get(K, Opts))
                                  || K <- Keys, maps:is_key(K, Opts)]
                    end,
            Queued = Names([presence_updates_topic]),
            Bare = Names([pm_messages_topic, muc_messages_topic]),
            Topics = sns_emulator:setup(Sns, Queued, Bare),
            io:format("demo: SNS topics created in moto: ~ts (with an SQS queue subscribed), "
                      "~ts~n", [lists:join(", ", Queued), lists:join(", ", Bare)]),
            case maps:find(presence_updates_topic, Opts) of
                {ok, Presence} -> maps:get(list_to_binary(Presence), Topics);
                error -> none
            end;
        _ ->
            none
    end.

%% Every presence notification, read back from the SQS queue subscribed to the
%% presence topic.
sns_presence_arrived({_Sns, none}, _Expected) ->
    skipped;
sns_presence_arrived({Sns, #{queue_url := Queue}}, #{presence := N}) ->
    Messages = sns_emulator:receive_messages(Sns, Queue, N, 20000),
    Good = [M || #{<<"decoded_message">> := #{<<"user_id">> := U, <<"present">> := P}} = M
                     <- Messages, is_binary(U), is_boolean(P)],
    #{total => length(Messages), good => length(Good)}.

%% RabbitMQ: the rabbit backend's exchanges and what arrived there

%% {Kind, Exchange name, Topics of its routing keys} of the configured rabbit backend.
rabbit_exchanges() ->
    Modules = mongoose_config:get_opt({modules, ?HOST}, #{}),
    case maps:get(mod_event_pusher, Modules, #{}) of
        #{rabbit := #{presence_exchange := #{name := P},
                      chat_msg_exchange := #{name := C, sent_topic := CS, recv_topic := CR},
                      groupchat_msg_exchange := #{name := G, sent_topic := GS,
                                                  recv_topic := GR}}} ->
            [{presence, P, []}, {chat, C, [CS, CR]}, {groupchat, G, [GS, GR]}];
        _ ->
            []
    end.

%% A queue of the demo's own, bound with `#' to each exchange (which the module has
%% declared by now): every message routed after this returns is recorded.
start_probe([]) ->
    {none, "the rabbit backend is not configured"};
start_probe(Exchanges) ->
    case code:ensure_loaded(amqp_probe) of
        {module, amqp_probe} ->
            case amqp_probe:try_start([{Name, <<"#">>} || {_, Name, _} <- Exchanges]) of
                {ok, Probe} ->
                    io:format("demo: a queue of the demo's own is bound to the exchanges ~ts~n",
                              [lists:join(", ", [Name || {_, Name, _} <- Exchanges])]),
                    Probe;
                {error, Reason} ->
                    {none, io_lib:format("amqp_probe did not start: ~p", [Reason])}
            end;
        {error, Reason} ->
            {none, io_lib:format("amqp_probe is not available (~p)", [Reason])}
    end.

stop_probe({none, _}) -> ok;
stop_probe(Probe) -> amqp_probe:stop(Probe).

%% What reached the demo's queue: at least as many messages as the broker confirmed,
%% or a timeout. Every payload and routing key is checked against what MongooseIM
%% publishes.
arrived({none, Why}, _Exchanges, _Final) ->
    {skipped, Why};
arrived(Probe, Exchanges, Final) ->
    Confirmed = case lists:keyfind("rabbit", 1, Final) of
                    {_, #{delivered := D}} -> D;
                    false -> 0
                end,
    {_, Messages} = amqp_probe:wait_for_messages(Probe, Confirmed, 5000),
    Kinds = [{Name, {Kind, Topics}} || {Kind, Name, Topics} <- Exchanges],
    Checked = [{check_message(M, Kinds), M} || M <- Messages],
    #{total => length(Messages),
      by_kind => maps:from_list(
                   [{Kind, length([ok || {{ok, K}, _} <- Checked, K =:= Kind])}
                    || {Kind, _, _} <- Exchanges]),
      bad => [{Why, M} || {{bad, Why}, M} <- Checked]}.

check_message(#{exchange := Exchange, routing_key := Key, payload := Payload}, Kinds) ->
    case {lists:keyfind(Exchange, 1, Kinds), json(Payload)} of
        {false, _} ->
            {bad, unexpected_exchange};
        {_, error} ->
            {bad, not_json};
        {{_, {presence, []}}, #{<<"user_id">> := User, <<"present">> := Present}}
          when is_binary(User), is_boolean(Present) ->
            case Key =:= bare(User) of
                true -> {ok, presence};
                false -> {bad, routing_key}
            end;
        {{_, {Kind, Topics}}, #{<<"from_user_id">> := From, <<"to_user_id">> := To,
                                <<"message">> := Body}}
          when is_binary(From), is_binary(To), is_binary(Body), Body =/= <<>> ->
            case lists:member(Key, [<<(bare(From))/binary, ".", (hd(Topics))/binary>>,
                                    <<(bare(To))/binary, ".", (lists:last(Topics))/binary>>]) of
                true -> {ok, Kind};
                false -> {bad, routing_key}
            end;
        {_, _} ->
            {bad, unexpected_json}
    end.

json(Payload) ->
    try jiffy:decode(Payload, [return_maps])
    catch _:_ -> error
    end.

bare(Jid) ->
    hd(binary:split(Jid, <<"/">>)).

%% Simulated users

user(I, NUsers, Parent, Counters, #{push := Push} = Opts) ->
    rand:seed(exsss, {I, erlang:unique_integer(), 42}),
    Me = user_jid(I),
    Sid = online(Me, Counters),
    case Push andalso enables_push(I) of
        true -> enable_push(Me, Sid, Counters);
        false -> ok
    end,
    Parent ! {ready, self()},
    receive {go, Deadline} -> ok end,
    user_loop(Me, NUsers, Deadline, Counters, Opts).

user_loop(Me, NUsers, Deadline, Counters, #{think_ms := Think} = Opts) ->
    timer:sleep(rand:uniform(2 * Think)),
    case erlang:monotonic_time(millisecond) < Deadline of
        true ->
            act(Me, is_online(Me), rand:uniform(), NUsers, Counters),
            user_loop(Me, NUsers, Deadline, Counters, Opts);
        false ->
            ok
    end.

%% Offline users come back now and then; online ones mostly chat.
act(Me, false, R, _NUsers, Counters) when R < 0.2 -> _ = online(Me, Counters), ok;
act(_Me, false, _R, _NUsers, _Counters) -> ok;
act(Me, true, R, _NUsers, Counters) when R < 0.03 -> offline(Me, Counters);
act(Me, true, R, NUsers, Counters) when R < 0.75 ->
    Peer = peer(Me, NUsers),
    chat(Me, Peer, <<"chat">>, [body(Me)], Counters);
act(Me, true, R, NUsers, Counters) when R < 0.85 ->
    %% A chat state notification: a chat message without a body.
    Peer = peer(Me, NUsers),
    chat(Me, Peer, <<"chat">>, [#xmlel{name = <<"composing">>,
                                       attrs = #{<<"xmlns">> => <<"http://jabber.org/protocol/chatstates">>}}],
         Counters);
act(Me, true, _R, NUsers, Counters) ->
    groupchat(Me, NUsers, Counters).

chat(From, To, Type, Children, Counters) ->
    Msg = message(From, To, Type, Children),
    %% The rabbit backend publishes chat messages with a body, and skips the others.
    HasBody = lists:keymember(<<"body">>, #xmlel.name, Children),
    Rabbit = case HasBody of
                 true -> ?C_RABBIT_CHAT;
                 false -> ?C_RABBIT_SKIPPED
             end,
    send(From, To, Msg, Counters),
    counters:add(Counters, Rabbit, 1),
    case Rabbit of
        ?C_RABBIT_CHAT -> counters:add(Counters, ?C_WEBHOOKS, 1);
        _ -> ok
    end,
    %% Then routed to the recipient, online or not (offline storage is not simulated):
    %% the rabbit backend publishes it again (received), and the push backend
    %% publishes one with a body to an offline recipient who enabled push.
    with_presence_lock(To, fun() ->
                                   Online = is_online(To),
                                   deliver(From, To, Msg, Online, Counters),
                                   counters:add(Counters, Rabbit, 1),
                                   case not Online andalso HasBody andalso push_enabled(To) of
                                       true -> counters:add(Counters, ?C_PUSH_EXPECTED, 1);
                                       false -> ok
                                   end
                           end).

%% A message to a room: the room (not simulated) reflects it to a few occupants
%% (online users: no push).
groupchat(Me, NUsers, Counters) ->
    Room = jid:make_noprep(<<"lobby">>, ?MUC, <<>>),
    Msg = message(Me, Room, <<"groupchat">>, [body(Me)]),
    send(Me, Room, Msg, Counters),
    counters:add(Counters, ?C_RABBIT_GROUPCHAT, 1),
    counters:add(Counters, ?C_GROUPCHAT_SENT, 1),
    Nick = jid:make_noprep(<<"lobby">>, ?MUC, Me#jid.luser),
    Reflect = fun(Occupant) ->
                      case is_online(Occupant) of
                          true ->
                              deliver(Nick, Occupant, message(Nick, Occupant, <<"groupchat">>,
                                                              [body(Me)]), true, Counters),
                              counters:add(Counters, ?C_RABBIT_GROUPCHAT, 1);
                          false ->
                              ok
                      end
              end,
    [with_presence_lock(Occupant, fun() -> Reflect(Occupant) end)
     || _ <- lists:seq(1, 3), Occupant <- [peer(Me, NUsers)]],
    ok.

send(From, To, Msg, Counters) ->
    Acc = acc(From, To, Msg),
    {_, _} = gen_hook:run_fold(user_send_message, ?HOST, Acc, #{}),
    count(Counters, ?C_SENT).

deliver(From, To, Msg, Online, Counters) ->
    Acc = acc(From, To, Msg),
    {_, _} = gen_hook:run_fold(filter_local_packet, ?HOST, {From, To, Acc, Msg}, #{}),
    count(Counters, case Online of
                        true -> ?C_RECEIVED;
                        false -> ?C_RECEIVED_OFFLINE
                    end).

%% Online: a session in ejabberd_sm (this process is its c2s process), then
%% user_available; returns the session's sid.
online(Me, Counters) ->
    Sid = with_presence_lock(Me, fun() ->
                                         ets:insert(?PRESENCE, {Me, true}),
                                         ejabberd_sm:open_session(?HOST, Me, 0)
                                 end),
    Acc = acc(Me, jid:to_bare(Me), presence(Me, [])),
    {_, _} = gen_hook:run_fold(user_available, ?HOST, Acc, #{jid => Me}),
    counters:add(Counters, ?C_RABBIT_PRESENCE, 1),
    count(Counters, ?C_PRESENCE),
    Sid.

offline(Me, Counters) ->
    with_presence_lock(Me, fun() ->
                                   ets:insert(?PRESENCE, {Me, false}),
                                   ejabberd_sm:close_session(Me)
                           end),
    Acc = acc(Me, jid:to_bare(Me), presence(Me, [{<<"type">>, <<"unavailable">>}])),
    {_, _} = gen_hook:run_fold(unset_presence, ?HOST, Acc, #{jid => Me, status => <<>>}),
    counters:add(Counters, ?C_RABBIT_PRESENCE, 1),
    count(Counters, ?C_PRESENCE).

count(Counters, Kind) ->
    counters:add(Counters, Kind, 1),
    counters:add(Counters, ?C_HOOKS, 1).

is_online(Jid) ->
    ets:lookup(?PRESENCE, Jid) =:= [{Jid, true}].

%% A user's presence changes (the demo's table and ejabberd_sm together) and the
%% deliveries to that user (which the push backend decides on by ejabberd_sm) take
%% turns, so that what the demo expects is what the backend sees.
with_presence_lock(Jid, Fun) ->
    Lock = {lock, Jid},
    acquire(Lock),
    try
        Fun()
    after
        ets:delete(?PRESENCE, Lock)
    end.

acquire(Lock) ->
    case ets:insert_new(?PRESENCE, {Lock}) of
        true -> ok;
        false -> erlang:yield(), acquire(Lock)
    end.

user_jid(I) ->
    jid:make_noprep(<<"user", (integer_to_binary(I))/binary>>, ?HOST, <<"phone">>).

peer(Me, NUsers) ->
    case user_jid(rand:uniform(NUsers)) of
        Me -> peer(Me, NUsers);
        Peer -> Peer
    end.

acc(From, To, El) ->
    mongoose_acc:new(#{location => #{mfa => {?MODULE, acc, 3}, line => ?LINE, file => ?FILE},
                       lserver => ?HOST, host_type => ?HOST, element => El,
                       from_jid => From, to_jid => To}).

message(From, To, Type, Children) ->
    #xmlel{name = <<"message">>,
           attrs = #{<<"type">> => Type, <<"from">> => jid:to_binary(From),
                     <<"to">> => jid:to_binary(To),
                     <<"id">> => integer_to_binary(erlang:unique_integer([positive]))},
           children = Children}.

presence(Me, Attrs) ->
    #xmlel{name = <<"presence">>,
           attrs = maps:from_list([{<<"from">>, jid:to_binary(Me)} | Attrs])}.

body(#jid{luser = User}) ->
    Texts = [<<"hi!">>, <<"are we still on for lunch?">>, <<"sure, 12:30 at the usual place">>,
             <<"ok & see you there">>, <<"running 5 min late, sorry">>,
             <<"did you see the release notes? ", 16#e2, 16#9c, 16#85>>],
    Text = lists:nth(rand:uniform(length(Texts)), Texts),
    #xmlel{name = <<"body">>, children = [#xmlcdata{content = <<User/binary, ": ", Text/binary>>}]}.

%% Push: enabling, and the fake pubsub service

%% Every user but one in ten enables push.
enables_push(I) ->
    I rem 10 =/= 0.

push_enabled(#jid{luser = User}) ->
    ets:member(?PRESENCE, {push, User}).

%% The node and the publish options a user enables push with (an app server would
%% get the options with each notification, to find the device).
push_node(User) ->
    <<"node-", User/binary>>.

publish_options(User) ->
    [{<<"device_id">>, <<"device-", User/binary>>}, {<<"service">>, <<"fcm">>}].

%% The enable IQ, sent from the session Sid to the user's own bare JID, as a
%% client does after login.
enable_push(#jid{luser = User} = Me, Sid, Counters) ->
    Enable = push_client:enable(?PUBSUB, push_node(User),
                                [form(?NS_PUBSUB_PUB_OPTIONS, publish_options(User))]),
    case push_client:iq(?HOST, jid:to_binary(Me), Sid, Enable) of
        #xmlel{attrs = #{<<"type">> := <<"result">>}} ->
            ets:insert(?PRESENCE, {{push, User}}),
            counters:add(Counters, ?C_PUSH_ENABLED, 1);
        Reply ->
            error(#{what => demo_push_enable_failed, user => jid:to_binary(Me), reply => Reply})
    end.

%% pubsub.push.localhost: counts and checks every request, and answers a result.
start_pubsub_service(Counters) ->
    ok = ejabberd_local:register_service(
           ?PUBSUB,
           fun(Request) ->
                   counters:add(Counters, ?C_PUBSUB_REQUESTS, 1),
                   case check_publish(Request) of
                       ok ->
                           ok;
                       {bad, Why} ->
                           counters:add(Counters, ?C_PUBSUB_BAD, 1),
                           ets:insert_new(?PRESENCE, {bad_publish, Why, Request})
                   end,
                   {reply, el(<<"iq">>, #{<<"type">> => <<"result">>,
                                          <<"id">> => exml_query:attr(Request, <<"id">>, <<>>)},
                              [])}
           end).

%% A publish IQ must be exactly what MongooseIM sends (elements, attributes,
%% namespaces, fields and their order), with the values of a message from one demo
%% user to another who enabled push: the recipient's node and publish options, the
%% sender's bare JID, and a body the sender wrote (the demo's bodies start with the
%% sender's name).
check_publish(IQ) ->
    PubSub = [{element_with_ns, <<"pubsub">>, ?NS_PUBSUB}],
    Publish = PubSub ++ [{element, <<"publish">>}],
    Summary = Publish ++ [{element, <<"item">>}, {element_with_ns, <<"notification">>, ?NS_PUSH},
                          {element_with_ns, <<"x">>, ?NS_XDATA}],
    Node = exml_query:path(IQ, Publish ++ [{attr, <<"node">>}], <<>>),
    Values = case exml_query:path(IQ, Summary) of
                 undefined -> #{};
                 Form -> maps:get(kvs, mongoose_data_forms:parse_form_fields(Form))
             end,
    [Sender, Body] = [case maps:get(Var, Values, []) of
                          [Value] -> Value;
                          _ -> <<>>
                      end || Var <- [<<"last-message-sender">>, <<"last-message-body">>]],
    User = case Node of
               <<"node-", U/binary>> -> U;
               _ -> <<>>
           end,
    SenderUser = hd(binary:split(Sender, <<"@">>)),
    Checks = [{not_mongooseim_publish,
               IQ =:= publish_iq(exml_query:attr(IQ, <<"id">>, <<>>), User, Sender, Body)},
              {node_of_no_user_with_push, ets:member(?PRESENCE, {push, User})},
              {last_message_sender, Sender =:= <<SenderUser/binary, "@", ?HOST/binary>>
                   andalso SenderUser =/= User},
              {last_message_body, case binary:split(Body, <<": ">>) of
                                      [SenderUser, Text] -> Text =/= <<>>;
                                      _ -> false
                                  end}],
    case [Why || {Why, false} <- Checks] of
        [] -> ok;
        [Why | _] -> {bad, Why}
    end.

publish_iq(Id, User, Sender, Body) ->
    Summary = form(?NS_PUSH_SUMMARY, [{<<"message-count">>, <<"1">>},
                                      {<<"last-message-sender">>, Sender},
                                      {<<"last-message-body">>, Body}]),
    el(<<"iq">>, #{<<"type">> => <<"set">>, <<"id">> => Id, <<"from">> => ?HOST,
                   <<"to">> => ?PUBSUB},
       [el(<<"pubsub">>, #{<<"xmlns">> => ?NS_PUBSUB},
           [el(<<"publish">>, #{<<"node">> => push_node(User)},
               [el(<<"item">>, #{}, [el(<<"notification">>, #{<<"xmlns">> => ?NS_PUSH}, [Summary])])]),
            el(<<"publish-options">>, #{}, [form(?NS_PUBSUB_PUB_OPTIONS, publish_options(User))])])]).

%% A submitted data form: FORM_TYPE, then one field a value.
form(FormType, Fields) ->
    push_client:form(<<"submit">>, [FormType], [{Var, [Value]} || {Var, Value} <- Fields]).

el(Name, Attrs, Children) ->
    push_client:el(Name, Attrs, Children).

wait_ready([]) ->
    ok;
wait_ready([{Pid, Ref} | Users]) ->
    receive
        {ready, Pid} -> wait_ready(Users);
        {'DOWN', Ref, process, Pid, Reason} -> error(#{what => demo_user_crashed, reason => Reason})
    end.

wait_users([]) ->
    ok;
wait_users([{Pid, Ref} | Users]) ->
    receive
        {'DOWN', Ref, process, Pid, normal} -> wait_users(Users);
        {'DOWN', Ref, process, Pid, Reason} -> error(#{what => demo_user_crashed, reason => Reason})
    end.

%% One progress line per second while the users run.
progress(Start, Deadline, Counters, Backends, Second) ->
    Now = erlang:monotonic_time(millisecond),
    Next = Start + 1000 * Second,
    case Now >= Deadline of
        true ->
            ok;
        false ->
            timer:sleep(max(0, min(Next, Deadline) - Now)),
            case erlang:monotonic_time(millisecond) >= Next of
                true ->
                    io:format("  [~bs] hooks fired ~6b | delivered/accepted: ~ts~n",
                              [Second, counters:get(Counters, ?C_HOOKS),
                               lists:join(" | ", [progress_backend(Name, backend_stats(I))
                                                  || {Name, I} <- Backends])]);
                false ->
                    ok
            end,
            progress(Start, Deadline, Counters, Backends, Second + 1)
    end.

progress_backend(Name, #{accepted := A, delivered := D}) ->
    io_lib:format("~ts ~b/~b", [Name, D, A]).

%% Final report

%% Checks first, then the table, then the machine-readable lines, last.
report(Final, Sent, Context) ->
    io:format("demo: mod_event_pusher_http_sent metric events: ~b (one per answered "
              "request)~n", [Sent]),
    case lists:keymember("push", 1, Final) of
        true -> report_pubsub(maps:get(pubsub, Context));
        false -> ok
    end,
    report_arrived(maps:get(arrived, Context)),
    Checks = lists:append([checks(Name, Stats, Context) || {Name, Stats} <- Final]),
    [io:format("check: ~-6s ~ts~n", [case Ok of true -> "ok"; false -> "FAILED" end, What])
     || {What, Ok} <- Checks],
    io:format("~n~-8s ~10s ~10s ~8s ~8s ~8s ~12s ~12s~n",
              ["backend", "accepted", "delivered", "retried", "failed", "dropped",
               "latency p50", "latency p99"]),
    [io:format("~-8s ~10b ~10b ~8b ~8b ~8b ~12s ~12s~n",
               [Name, A, D, R, F, Dr, latency(P50), latency(P99)])
     || {Name, #{accepted := A, delivered := D, retried := R, failed := F, dropped := Dr,
                 latency_p50_us := P50, latency_p99_us := P99}} <- Final],
    io:format("~n"),
    [io:format("demo: ~ts accepted=~b delivered=~b failed=~b dropped=~b~n",
               [Name, A, D, F, Dr])
     || {Name, #{accepted := A, delivered := D, failed := F, dropped := Dr}} <- Final],
    case Final =/= [] andalso lists:all(fun({_, Ok}) -> Ok end, Checks) of
        true -> ok;
        false -> error
    end.

report_pubsub(#{requests := Requests, bad := Bad, first_bad := FirstBad}) ->
    io:format("demo: ~ts received ~b publish IQs, ~b not as MongooseIM sends them~n",
              [?PUBSUB, Requests, Bad]),
    [io:format("demo: first bad publish IQ (~p): ~p~n", [Why, IQ])
     || {bad_publish, Why, IQ} <- FirstBad],
    ok.

report_arrived({skipped, Why}) ->
    io:format("demo: RabbitMQ cross-check skipped: ~ts~n", [Why]);
report_arrived(#{total := Total, by_kind := ByKind, bad := Bad}) ->
    io:format("demo: the demo's queue received ~b messages (presence ~b, chat ~b, "
              "groupchat ~b)~n",
              [Total, maps:get(presence, ByKind, 0), maps:get(chat, ByKind, 0),
               maps:get(groupchat, ByKind, 0)]),
    [io:format("demo: unexpected message (~p): ~p~n", [Why, M]) || {Why, M} <- lists:sublist(Bad, 3)],
    ok.

checks(Name, #{accepted := A, delivered := D, failed := F, dropped := Dr} = Stats, Context) ->
    [{io_lib:format("~ts: accepted ~b = delivered + failed + dropped (~b)",
                    [Name, A, D + F + Dr]), A =:= D + F + Dr},
     {io_lib:format("~ts: delivered ~b > 0", [Name, D]), D > 0}]
        ++ backend_checks(Name, Stats, Context).

backend_checks("http", #{accepted := A, delivered := D},
               #{expected := #{webhooks := Webhooks}, sink_requests := SinkRequests}) ->
    [{io_lib:format("http: accepted ~b = chat messages with a body sent ~b",
                    [A, Webhooks]), A =:= Webhooks},
     {io_lib:format("http: pusher-sink answered ~b = delivered ~b",
                    [SinkRequests, D]), SinkRequests =:= D}];
backend_checks("push", #{accepted := A, delivered := D},
               #{expected := #{push := Expected},
                 pubsub := #{requests := Requests, bad := Bad}}) ->
    [{io_lib:format("push: accepted ~b = chat messages with a body routed to an offline "
                    "user with push enabled ~b", [A, Expected]), A =:= Expected},
     {io_lib:format("push: ~ts received ~b publish IQs = delivered ~b",
                    [?PUBSUB, Requests, D]), Requests =:= D},
     {io_lib:format("push: every publish IQ is MongooseIM's (pubsub/publish/item/notification, "
                    "urn:xmpp:push:summary form), for the recipient's node (~b are not)", [Bad]),
      Bad =:= 0}];
backend_checks("rabbit", #{accepted := A, delivered := D},
               #{expected := #{presence := P, chat := C, groupchat := G, skipped := S},
                 rabbit_skipped := SkippedMetric, arrived := Arrived}) ->
    [{io_lib:format("rabbit: accepted ~b = presence ~b + chat ~b + groupchat ~b events "
                    "with a body (sent and received)", [A, P, C, G]), A =:= P + C + G},
     {io_lib:format("rabbit: skipped (no body) ~b = chat messages without a body ~b",
                    [SkippedMetric, S]), SkippedMetric =:= S}]
        ++ case Arrived of
               {skipped, _} ->
                   [];
               #{total := Total, bad := Bad} ->
                   [{io_lib:format("rabbit: the demo's queue received ~b >= confirmed ~b "
                                   "(~b more)",
                                   [Total, D, max(0, Total - D)]), Total >= D},
                    {io_lib:format("rabbit: every message has MongooseIM's JSON and routing "
                                   "key (~b do not)", [length(Bad)]), Bad =:= []}]
           end;
backend_checks("sns", #{accepted := A},
               #{expected := #{presence := P, webhooks := C, groupchat_sent := G},
                 sns_presence := Arrived}) ->
    [{io_lib:format("sns: accepted ~b = presence ~b + chat ~b + groupchat ~b messages with "
                    "a body sent", [A, P, C, G]), A =:= P + C + G}]
        ++ case Arrived of
               skipped ->
                   [];
               #{total := Total, good := Good} ->
                   [{io_lib:format("sns: the presence topic's SQS queue received ~b = presence "
                                   "events ~b, ~b with MongooseIM's JSON", [Total, P, Good]),
                     Total =:= P andalso Good =:= P}]
           end;
backend_checks(_Name, _Stats, _Context) ->
    [].

latency(undefined) -> "-";
latency(Us) when Us < 1000 -> io_lib:format("~b us", [Us]);
latency(Us) when Us < 10000 -> io_lib:format("~.2f ms", [Us / 1000]);
latency(Us) -> io_lib:format("~.1f ms", [Us / 1000]).

