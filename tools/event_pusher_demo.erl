%% @doc `make demo': the event pusher running in the MongooseIM stand-in, fed by
%% simulated users, delivering webhooks to a local pusher-sink, publishing to
%% RabbitMQ on localhost:5672 and to Amazon SNS, and sending XEP-0357 push
%% notifications to a fake pubsub service. Every delivery is checked where it
%% arrived; a check that cannot run fails the demo.
%%
%% 1. starts mnesia with a disc schema in _build/demo_mnesia (made afresh; the push
%%    backend keeps registrations in a disc_copies table), pusher-sink (webhooks),
%%    pusher-sink --sns (an SNS stand-in that takes the load) and moto's SNS server
%%    (an AWS emulator, far slower: it gets a paced sample), on free ports;
%% 2. loads examples/mongooseim.toml with the sinks' ports filled in and starts the
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
%%    routed to them, online or offline): mostly chat messages with a body (each
%%    body unique, so that every delivery can be matched to the event it came
%%    from), some groupchat, some chat states without a body;
%% 6. waits until the backends hold nothing more (bounded), stops the modules and
%%    reads what arrived: the demo's RabbitMQ queue, the publish IQs the pubsub
%%    service got, the counters of both sinks;
%% 7. the SNS sample: starts the sns backend alone, from the same file, against
%%    moto, with an SQS queue subscribed to each of its three topics; 20 users go
%%    online, chat, send groupchat messages and go offline in rounds, each round
%%    sent only once moto has taken the previous one; then reads the three queues;
%% 8. prints the checks, then per backend what was accepted, delivered, failed and
%%    dropped with the delivery latency, and one machine-readable line each, last:
%%    `demo: http accepted=N delivered=N failed=N dropped=N' and the same for push,
%%    where delivered means answered with a result by the pubsub service, rabbit,
%%    where delivered means confirmed by the broker (publisher confirms are on), and
%%    sns, where delivered means accepted by the SNS endpoint (pusher-sink --sns).
%%
%% Deliveries are compared as sets of events: each event the users caused is
%% expected once (events with the same content, such as a user's repeated
%% presence, are numbered), an arrival that matches no expected event is
%% unexpected, one that matches an event already matched is a duplicate.
%%
%% main/0 returns ok when every check holds: every backend's books balance
%% (accepted = delivered + failed + dropped), something was delivered, each backend
%% accepted exactly the events it should have, and what arrived is what was sent:
%% the webhook sink answered as many requests as were delivered; the pubsub service
%% got one publish IQ of MongooseIM's shape per delivered notification, each for an
%% event sent; the demo's RabbitMQ queue got every confirmed event, with
%% MongooseIM's JSON and routing key, nothing that was not sent, and no more
%% duplicates than retries; the SNS stand-in got as many messages as were
%% delivered; and moto's queues got every event of the sample, each once, with
%% MongooseIM's JSON. It returns error otherwise, and when a server, the probe or
%% a wait does not come up within its (generous) bound, with the reason.
-module(event_pusher_demo).

-export([main/0, main/1]).

-include("exml.hrl").
-include("jlib.hrl").

-define(TEMPLATE, "examples/mongooseim.toml").
-define(HOST, <<"localhost">>).
-define(MUC, <<"muc.localhost">>).
-define(PUBSUB, <<"pubsub.push.localhost">>).
-define(NS_PUSH_SUMMARY, <<"urn:xmpp:push:summary">>).
%% Presence ({Jid, Online}), the presence locks ({{lock, Jid}}), who enabled push
%% ({{push, LUser}}) and the first malformed publish IQ ({bad_publish, Why, IQ}).
-define(PRESENCE, event_pusher_demo_presence).
%% What the backends should deliver, {{Backend, Event}, Count}, and what the pubsub
%% service got, {{push_received, Event}, Count}.
-define(EVENTS, event_pusher_demo_events).

%% Bounds on waiting: generous for a cold, busy machine, and each one fails the demo
%% with what it waited for.
-define(SETTLE_TIMEOUT_MS, 120000).  % the backends deliver what they hold
-define(PROBE_TIMEOUT_MS, 60000).    % the demo's RabbitMQ queue is bound
-define(ARRIVAL_TIMEOUT_MS, 30000).  % confirmed messages reach the demo's queue
-define(SQS_TIMEOUT_MS, 60000).      % moto's queues are read
-define(USERS_TIMEOUT_MS, 60000).    % the simulated users come online, and finish

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
                  think_ms => pos_integer(), sample_users => pos_integer()}.

-spec main() -> ok | error.
main() ->
    main(#{}).

-spec main(opts()) -> ok | error.
main(Opts0) ->
    Opts = maps:merge(#{users => 50, duration_ms => 5000, think_ms => 20, sample_users => 20},
                      Opts0),
    try
        using("starting mnesia", fun start_mnesia/0, fun stop_mnesia/1,
              fun(_) -> with_servers(Opts) end)
    catch
        throw:{demo_failed, Why} ->
            io:format("demo: FAILED: ~ts~n", [Why]),
            error;
        Class:Reason:Stacktrace ->
            io:format("demo: FAILED: the demo crashed: ~0tp~n~0tp~n",
                      [{Class, Reason}, Stacktrace]),
            error
    end.

with_servers(Opts) ->
    using("starting pusher-sink", fun() -> event_pusher_sink:start([]) end,
          fun event_pusher_sink:stop/1,
          fun(Sink) ->
                  using("starting pusher-sink --sns",
                        fun() -> event_pusher_sink:start(["--sns"]) end,
                        fun event_pusher_sink:stop/1,
                        fun(SnsSink) ->
                                using("starting moto's SNS server",
                                      fun() -> {ok, Moto} = sns_emulator:start(), Moto end,
                                      fun sns_emulator:stop/1,
                                      fun(Moto) -> run(Opts, Sink, SnsSink, Moto) end)
                        end)
          end).

%% Body(Start()), then Stop(Resource) whatever happens; a Start that fails fails
%% the demo with What and the reason.
using(What, Start, Stop, Body) ->
    Resource = step(What, Start),
    try
        Body(Resource)
    after
        Stop(Resource)
    end.

step(What, Fun) ->
    try
        Fun()
    catch
        throw:{demo_failed, _} = Failed -> throw(Failed);
        Class:Reason -> fail("~ts: ~0tp", [What, {Class, Reason}])
    end.

-spec fail(io:format(), [term()]) -> no_return().
fail(Format, Args) ->
    throw({demo_failed, io_lib:format(Format, Args)}).

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

run(Opts, Sink, SnsSink, Moto) ->
    io:format("demo: mnesia running with a disc schema in ~ts~n",
              [mnesia:system_info(directory)]),
    io:format("demo: pusher-sink on 127.0.0.1:~b (webhooks), pusher-sink --sns on "
              "127.0.0.1:~b (SNS), moto's SNS server on ~ts (the SNS sample)~n",
              [event_pusher_sink:port(Sink), event_pusher_sink:port(SnsSink),
               maps:get(endpoint, Moto)]),
    Ets = [ets:new(Name, [named_table, public, set, {write_concurrency, true},
                          {read_concurrency, true}]) || Name <- [?PRESENCE, ?EVENTS]],
    try
        %% examples/mongooseim.toml with the sinks' ports filled in.
        Config = load_config(event_pusher_sink:port(Sink), event_pusher_sink:port(SnsSink)),
        %% moto's topics and queues are made (slowly) while the load runs.
        SnsSetup = start_sns_setup(Moto, sns_topics(Config)),
        {Final, Context} = try
                               load_phase(Opts, Config, Sink, SnsSink)
                           after
                               _ = (catch mongoose_host:stop())
                           end,
        Sample = try
                     sample_phase(Opts, Sink, Moto, SnsSetup)
                 after
                     _ = (catch mongoose_host:stop())
                 end,
        report(Final, Context#{sample => Sample})
    after
        [ets:delete(T) || T <- Ets]
    end.

%% The example's local webhook (127.0.0.1:8000) and SNS (127.0.0.1:4566) addresses,
%% moved to the ports of the servers the demo started.
load_config(SinkPort, SnsPort) ->
    Address = fun(Port) -> <<"127.0.0.1:", (integer_to_binary(Port))/binary, "\"">> end,
    Moved = #{<<"127.0.0.1:8000\"">> => Address(SinkPort),
              <<"127.0.0.1:4566\"">> => Address(SnsPort)},
    step("reading " ?TEMPLATE, fun() -> event_pusher_sink:load_config(?TEMPLATE, Moved) end).

%% The load: every configured backend, the users at full speed.
load_phase(Opts, Config, Sink, SnsSink) ->
    step("starting the modules of " ?TEMPLATE, fun() -> ok = mongoose_host:start(Config) end),
    Backends = backends(),
    Exchanges = rabbit_exchanges(),
    Probe = start_probe(Exchanges),
    try
        simulate(Opts, Sink, SnsSink, Backends, Exchanges, Probe)
    after
        stop_probe(Probe)
    end.

simulate(#{users := NUsers, duration_ms := Duration} = Opts0, Sink, SnsSink, Backends,
         Exchanges, Probe) ->
    Push = lists:keymember("push", 1, Backends),
    Opts = Opts0#{push => Push},
    io:format("demo: backends ~ts; ~b users for ~.1f s~n",
              [lists:join(", ", [Name || {Name, _} <- Backends]), NUsers, Duration / 1000]),
    Counters = counters:new(?N_COUNTERS, [write_concurrency]),
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
    wait_users(Users, Deadline),
    io:format("demo: ~b hooks fired (~b sent, ~b delivered to online users, ~b to offline "
              "users, ~b presence); ~b chat messages with a body sent~n",
              [counters:get(Counters, ?C_HOOKS), counters:get(Counters, ?C_SENT),
               counters:get(Counters, ?C_RECEIVED), counters:get(Counters, ?C_RECEIVED_OFFLINE),
               counters:get(Counters, ?C_PRESENCE), counters:get(Counters, ?C_WEBHOOKS)]),
    settle(Backends, "the load", verbose),
    io:format("demo: stopping the modules~n"),
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
                http_sent => Sent,
                sink_requests => event_pusher_sink:requests(Sink),
                sns_sink => event_pusher_sink:stats(SnsSink),
                pubsub => #{requests => counters:get(Counters, ?C_PUBSUB_REQUESTS),
                            bad => counters:get(Counters, ?C_PUBSUB_BAD),
                            first_bad => ets:lookup(?PRESENCE, bad_publish),
                            matched => compare(expected_events(push),
                                               received_events(push_received))},
                rabbit_skipped => rabbit_skipped_metrics(),
                arrived => arrived(Probe, Exchanges, Final)},
    {Final, Context}.

%% Waits until no backend holds an event (queued or in flight): what the users
%% caused is delivered (or failed) before the modules stop, however slow the
%% machine, within ?SETTLE_TIMEOUT_MS.
settle(Backends, What, Verbosity) ->
    T0 = erlang:monotonic_time(millisecond),
    case pending(Backends) of
        [] ->
            ok;
        Pending ->
            [io:format("demo: waiting for the backends to deliver what they hold (~ts)~n",
                       [format_pending(Pending)]) || Verbosity =:= verbose],
            settle_loop(Backends, T0 + ?SETTLE_TIMEOUT_MS, What),
            [io:format("demo: the backends delivered what they held in ~b ms~n",
                       [erlang:monotonic_time(millisecond) - T0]) || Verbosity =:= verbose],
            ok
    end.

settle_loop(Backends, Deadline, What) ->
    case pending(Backends) of
        [] ->
            ok;
        Pending ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true -> fail("the backends still hold events of ~ts after ~b s: ~ts",
                             [What, ?SETTLE_TIMEOUT_MS div 1000, format_pending(Pending)]);
                false -> timer:sleep(20), settle_loop(Backends, Deadline, What)
            end
    end.

pending(Backends) ->
    [{Name, Q, F} || {Name, Instances} <- Backends,
                     #{queued := Q, in_flight := F} <- [backend_stats(Instances)],
                     Q + F > 0].

format_pending(Pending) ->
    lists:join(", ", [io_lib:format("~ts ~b queued, ~b in flight", [Name, Q, F])
                      || {Name, Q, F} <- Pending]).

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

%% Expected and received events, compared as sets

%% The simulation expects Event of Backend once more.
expect(Backend, Event) ->
    Key = {Backend, Event},
    _ = ets:update_counter(?EVENTS, Key, 1, {Key, 0}),
    ok.

expected_events(Backend) ->
    maps:from_list(ets:select(?EVENTS, [{{{Backend, '$1'}, '$2'}, [], [{{'$1', '$2'}}]}])).

received_events(Tag) ->
    expected_events(Tag).

%% Expected #{Event => Count} against received #{Event => Count}: matched counts
%% each expected event at most once, unexpected what matches no expected event,
%% duplicates the arrivals beyond an event's count; missing what never arrived.
compare(Expected, Received) ->
    Counts = maps:fold(
               fun(Event, R, {Matched, Unexpected, Duplicates}) ->
                       case maps:get(Event, Expected, 0) of
                           0 -> {Matched, Unexpected + R, Duplicates};
                           E -> {Matched + min(E, R), Unexpected, Duplicates + max(0, R - E)}
                       end
               end, {0, 0, 0}, Received),
    {Matched, Unexpected, Duplicates} = Counts,
    #{expected => lists:sum(maps:values(Expected)), matched => Matched,
      unexpected => Unexpected, duplicates => Duplicates,
      missing => lists:sum(maps:values(Expected)) - Matched}.

count_events(Events) ->
    count_events(Events, #{}).

count_events(Events, Counts) ->
    lists:foldl(fun(E, Acc) -> maps:update_with(E, fun(N) -> N + 1 end, 1, Acc) end,
                Counts, Events).

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

%% A queue of the demo's own, bound with `#' to each exchange: every message routed
%% after this returns is recorded. The rabbit backend declares its exchanges once
%% connected, so a binding refused because an exchange is not there yet (NOT_FOUND)
%% is tried again, until the bound.
start_probe([]) ->
    none;
start_probe(Exchanges) ->
    Binds = [{Name, <<"#">>} || {_, Name, _} <- Exchanges],
    Executable = step("finding amqp_probe (native/amqp_tools)",
                      fun() -> {ok, Exe} = amqp_probe:executable(), Exe end),
    Deadline = erlang:monotonic_time(millisecond) + ?PROBE_TIMEOUT_MS,
    Probe = start_probe(Binds, Deadline, Executable),
    io:format("demo: a queue of the demo's own is bound to the exchanges ~ts~n",
              [lists:join(", ", [Name || {_, Name, _} <- Exchanges])]),
    Probe.

start_probe(Binds, Deadline, Executable) ->
    Left = Deadline - erlang:monotonic_time(millisecond),
    case amqp_probe:try_start(Binds, #{timeout => max(0, Left)}) of
        {ok, Probe} ->
            Probe;
        {error, Reason} ->
            NotDeclaredYet = is_binary(Reason) andalso binary:match(Reason, <<"NOT_FOUND">>)
                =/= nomatch,
            case NotDeclaredYet andalso erlang:monotonic_time(millisecond) < Deadline of
                true ->
                    timer:sleep(200),
                    start_probe(Binds, Deadline, Executable);
                false ->
                    fail("the RabbitMQ cross-check cannot run: ~ts did not bind a queue to "
                         "the rabbit backend's exchanges within ~b s: ~0tp",
                         [Executable, ?PROBE_TIMEOUT_MS div 1000, Reason])
            end
    end.

stop_probe(none) -> ok;
stop_probe(Probe) -> amqp_probe:stop(Probe).

%% What reached the demo's queue, once every confirmed event has (or the bound has
%% passed), compared with what the users caused. Every payload and routing key is
%% checked against what MongooseIM publishes.
arrived(none, _Exchanges, _Final) ->
    none;
arrived(Probe, Exchanges, Final) ->
    Confirmed = case lists:keyfind("rabbit", 1, Final) of
                    {_, #{delivered := D}} -> D;
                    false -> 0
                end,
    Expected = expected_events(rabbit),
    Kinds = [{Name, {Kind, Topics}} || {Kind, Name, Topics} <- Exchanges],
    Deadline = erlang:monotonic_time(millisecond) + ?ARRIVAL_TIMEOUT_MS,
    arrived_loop(Probe, Kinds, Expected, Confirmed, Deadline).

arrived_loop(Probe, Kinds, Expected, Confirmed, Deadline) ->
    _ = amqp_probe:wait_for_messages(Probe, Confirmed,
                                     max(0, Deadline - erlang:monotonic_time(millisecond))),
    Messages = amqp_probe:messages(Probe),
    Checked = [{demo_message(check_message(M, Kinds)), M} || M <- Messages],
    Match = compare(Expected, count_events([Event || {{ok, _, Event}, _} <- Checked])),
    case maps:get(matched, Match) < Confirmed
        andalso erlang:monotonic_time(millisecond) < Deadline of
        true ->
            %% Duplicates made up the count: wait for the rest.
            timer:sleep(200),
            arrived_loop(Probe, Kinds, Expected, Confirmed, Deadline);
        false ->
            Match#{total => length(Messages),
                   by_kind => maps:from_list(
                                [{Kind, length([ok || {{ok, K, _}, _} <- Checked, K =:= Kind])}
                                 || {_, {Kind, _}} <- Kinds]),
                   bad => [{Why, M} || {{bad, Why}, M} <- Checked],
                   foreign => length([M || {foreign, M} <- Checked])}
    end.

%% The broker is shared (a test suite may publish to these exchanges at the same
%% time): a well-formed message about nobody the demo simulates is another client's.
demo_message({ok, _Kind, {presence, User, _}} = Ok) ->
    demo_message_of([User], Ok);
demo_message({ok, _Kind, {_, _, From, To, _}} = Ok) ->
    demo_message_of([From, To], Ok);
demo_message(Bad) ->
    Bad.

demo_message_of(Jids, Ok) ->
    case lists:any(fun is_demo_jid/1, Jids) of
        true -> Ok;
        false -> foreign
    end.

is_demo_jid(Jid) ->
    re:run(Jid, <<"^(user[0-9]+@localhost|lobby@muc\\.localhost)(/|$)">>) =/= nomatch.

%% {ok, Kind, Event} (Event as the simulation expects it) or {bad, Why}.
check_message(#{exchange := Exchange, routing_key := Key, payload := Payload}, Kinds) ->
    case {lists:keyfind(Exchange, 1, Kinds), json(Payload)} of
        {false, _} ->
            {bad, unexpected_exchange};
        {_, error} ->
            {bad, not_json};
        {{_, {presence, []}}, #{<<"user_id">> := User, <<"present">> := Present} = Json}
          when is_binary(User), is_boolean(Present), map_size(Json) =:= 2 ->
            case Key =:= bare(User) of
                true -> {ok, presence, {presence, User, Present}};
                false -> {bad, routing_key}
            end;
        {{_, {Kind, [SentTopic, RecvTopic]}}, #{<<"from_user_id">> := From, <<"to_user_id">> := To,
                                                <<"message">> := Body} = Json}
          when is_binary(From), is_binary(To), is_binary(Body), Body =/= <<>>,
               map_size(Json) =:= 3 ->
            Sent = <<(bare(From))/binary, ".", SentTopic/binary>>,
            Received = <<(bare(To))/binary, ".", RecvTopic/binary>>,
            case Key of
                Sent -> {ok, Kind, {Kind, sent, From, To, Body}};
                Received -> {ok, Kind, {Kind, recv, From, To, Body}};
                _ -> {bad, routing_key}
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

%% The SNS sample: the sns backend alone, against moto

%% moto stores every message it fans out to SQS and scans a queue's messages on
%% each call, so it takes tens to hundreds of messages a second, fewer as its
%% queues fill: the load goes to pusher-sink --sns, and moto gets a sample, paced:
%% a round of events goes out only when the previous one is delivered.
%% Kind => topic name, for the topics the sns backend's configuration names.
sns_topics(Config) ->
    Modules = proplists:get_value({modules, ?HOST}, Config, #{}),
    SnsOpts = maps:get(sns, maps:get(mod_event_pusher, Modules, #{}), #{}),
    maps:from_list([{Kind, list_to_binary(Name)}
                    || {Kind, Option} <- [{presence, presence_updates_topic},
                                          {pm, pm_messages_topic},
                                          {muc, muc_messages_topic}],
                       {ok, Name} <- [maps:find(Option, SnsOpts)]]).

%% The topics in moto, each with an SQS queue subscribed, made by a process of
%% their own; await_sns_setup/1 gives their ARNs and queues.
start_sns_setup(_Moto, Topics) when map_size(Topics) =:= 0 ->
    none;
start_sns_setup(Moto, Topics) ->
    Setup = fun() -> {ok, sns_emulator:setup(Moto, maps:values(Topics))} end,
    {Pid, MRef} = spawn_monitor(fun() -> exit({sns_setup, catch Setup()}) end),
    {Pid, MRef, Topics}.

await_sns_setup({Pid, MRef, Topics}) ->
    %% The script has its own timeout (sns_emulator's); this one only guards it.
    receive
        {'DOWN', MRef, process, Pid, {sns_setup, {ok, Queues}}} ->
            {Topics, Queues};
        {'DOWN', MRef, process, Pid, Reason} ->
            fail("creating the SNS topics and SQS queues in moto: ~0tp", [Reason])
    after 2 * ?SQS_TIMEOUT_MS ->
            fail("creating the SNS topics and SQS queues in moto took more than ~b s",
                 [2 * ?SQS_TIMEOUT_MS div 1000])
    end.

sample_phase(_Opts, _Sink, _Moto, none) ->
    none;
sample_phase(#{sample_users := NUsers}, Sink, Moto, SnsSetup) ->
    Config0 = load_config(event_pusher_sink:port(Sink), maps:get(port, Moto)),
    Modules = proplists:get_value({modules, ?HOST}, Config0, #{}),
    case maps:get(mod_event_pusher, Modules, #{}) of
        #{sns := SnsOpts} ->
            %% mod_event_pusher with its sns backend (the parser lists each backend's
            %% module too, as MongooseIM resolves dependencies), and no pools.
            SnsOnly = #{mod_event_pusher => #{sns => SnsOpts},
                        mod_event_pusher_sns => maps:get(mod_event_pusher_sns, Modules)},
            Config = [{K, V} || {K, V} <- Config0, K =/= {modules, ?HOST}, K =/= outgoing_pools]
                ++ [{{modules, ?HOST}, SnsOnly}, {outgoing_pools, []}],
            sample(NUsers, Config, await_sns_setup(SnsSetup), Moto);
        _ ->
            none
    end.

sample(NUsers, Config, {Topics, Queues}, Moto) ->
    io:format("demo: SNS sample: the sns backend alone against moto, topics ~ts, each with "
              "an SQS queue subscribed; ~b users, in rounds~n",
              [lists:join(", ", maps:values(Topics)), NUsers]),
    step("starting the sns backend against moto", fun() -> ok = mongoose_host:start(Config) end),
    Instance = mod_event_pusher_instance:instance(?HOST, sns),
    Backend = [{"sns (moto)", [Instance]}],
    Users = [user_jid(I) || I <- lists:seq(1, NUsers)],
    Room = jid:make_noprep(<<"lobby">>, ?MUC, <<>>),
    Chat = fun(Me) -> sample_message(Me, peer(Me, NUsers), <<"chat">>, [body(Me)]) end,
    ChatState = fun(Me) -> sample_message(Me, peer(Me, NUsers), <<"chat">>, [chat_state()]) end,
    Groupchat = fun(Me) -> sample_message(Me, Room, <<"groupchat">>, [body(Me)]) end,
    Rounds = [fun(Me) -> sample_presence(Me, true) end,
              Chat, Chat, ChatState, Groupchat, Chat, Groupchat, Chat,
              fun(Me) -> sample_presence(Me, false) end],
    T0 = erlang:monotonic_time(millisecond),
    Expected = lists:foldl(
                 fun({N, Round}, Acc) ->
                         Events = [Round(Me) || Me <- Users],
                         settle(Backend, io_lib:format("the SNS sample's round ~b", [N]), quiet),
                         lists:foldl(fun(none, A) -> A;
                                        ({Kind, Event}, A) ->
                                             A#{Kind => count_events([Event],
                                                                     maps:get(Kind, A, #{}))}
                                     end, Acc, Events)
                 end, #{}, lists:zip(lists:seq(1, length(Rounds)), Rounds)),
    ok = mongoose_modules:stop(),
    Stats = backend_stats([Instance]),
    Sent = lists:sum([lists:sum(maps:values(M)) || M <- maps:values(Expected)]),
    io:format("demo: SNS sample: ~b events in ~b rounds, delivered to moto in ~b ms; "
              "reading its SQS queues~n",
              [Sent, length(Rounds), erlang:monotonic_time(millisecond) - T0]),
    %% {Kind, Topic name, its SQS queue, the events expected there}
    TopicQueues = [{Kind, Name, maps:get(queue_url, maps:get(Name, Queues)),
                    maps:get(Kind, Expected, #{})}
                   || {Kind, Name} <- lists:sort(maps:to_list(Topics))],
    ByQueue = step("reading moto's SQS queues",
                   fun() ->
                           sns_emulator:receive_all(
                             Moto, [{Url, lists:sum(maps:values(Events))}
                                    || {_, _, Url, Events} <- TopicQueues],
                             ?SQS_TIMEOUT_MS)
                   end),
    Arns = maps:from_list([{maps:get(topic_arn, maps:get(Name, Queues)), Kind}
                           || {Kind, Name} <- maps:to_list(Topics)]),
    PerTopic = [{Kind, Name, sample_arrived(Kind, Arns, Events, maps:get(Url, ByQueue, []))}
                || {Kind, Name, Url, Events} <- TopicQueues],
    #{stats => Stats, sent => Sent, topics => PerTopic}.

%% A presence change or a sent message, through the hooks MongooseIM runs; the
%% SNS event it should cause ({Kind, Event}), or none.
sample_presence(Me, Online) ->
    Acc = case Online of
              true -> acc(Me, jid:to_bare(Me), presence(Me, []));
              false -> acc(Me, jid:to_bare(Me), presence(Me, [{<<"type">>, <<"unavailable">>}]))
          end,
    {_, _} = case Online of
                 true -> gen_hook:run_fold(user_available, ?HOST, Acc, #{jid => Me});
                 false -> gen_hook:run_fold(unset_presence, ?HOST, Acc,
                                            #{jid => Me, status => <<>>})
             end,
    {presence, {presence, jid:to_bare_binary(Me), Online}}.

sample_message(From, To, Type, Children) ->
    Msg = message(From, To, Type, Children),
    {_, _} = gen_hook:run_fold(user_send_message, ?HOST, acc(From, To, Msg), #{}),
    case {Type, message_body(Msg)} of
        {_, undefined} -> none;
        {<<"chat">>, Body} -> {pm, {pm, jid:to_bare_binary(From), jid:to_bare_binary(To), Body}};
        {<<"groupchat">>, Body} -> {muc, {muc, jid:to_bare_binary(From), jid:to_bare_binary(To),
                                          Body}}
    end.

%% What one topic's queue got, compared with what the sample sent there.
sample_arrived(Kind, Arns, Expected, Messages) ->
    Checked = [check_notification(M, Kind, Arns) || M <- Messages],
    (compare(Expected, count_events([Event || {ok, Event} <- Checked])))
        #{total => length(Messages), bad => [Why || {bad, Why} <- Checked]}.

%% An SQS body: the SNS envelope of a notification of this topic, with MongooseIM's
%% JSON and no message attributes (mod_event_pusher_sns_defaults sets none).
check_notification(#{<<"Type">> := <<"Notification">>, <<"TopicArn">> := Arn,
                     <<"decoded_message">> := Json} = Envelope, Kind, Arns) ->
    Attributes = maps:get(<<"MessageAttributes">>, Envelope, #{}),
    case {maps:get(Arn, Arns, undefined), Json} of
        {Kind, _} when Attributes =/= #{} ->
            {bad, {message_attributes, Attributes}};
        {presence, #{<<"user_id">> := User, <<"present">> := Present}}
          when Kind =:= presence, is_binary(User), is_boolean(Present), map_size(Json) =:= 2 ->
            {ok, {presence, User, Present}};
        {Kind, #{<<"from_user_id">> := From, <<"to_user_id">> := To, <<"message">> := Body}}
          when Kind =/= presence, is_binary(From), is_binary(To), is_binary(Body),
               map_size(Json) =:= 3 ->
            {ok, {Kind, From, To, Body}};
        {Kind, _} ->
            {bad, {unexpected_json, Json}};
        {Other, _} ->
            {bad, {topic, Arn, Other}}
    end;
check_notification(Other, _Kind, _Arns) ->
    {bad, {not_a_notification, Other}}.

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
    chat(Me, Peer, <<"chat">>, [chat_state()], Counters);
act(Me, true, _R, NUsers, Counters) ->
    groupchat(Me, NUsers, Counters).

chat(From, To, Type, Children, Counters) ->
    Msg = message(From, To, Type, Children),
    %% The rabbit backend publishes chat messages with a body, and skips the others.
    Body = message_body(Msg),
    HasBody = Body =/= undefined,
    Rabbit = case HasBody of
                 true -> ?C_RABBIT_CHAT;
                 false -> ?C_RABBIT_SKIPPED
             end,
    {FromBin, ToBin} = {jid:to_binary(From), jid:to_binary(To)},
    send(From, To, Msg, Counters),
    counters:add(Counters, Rabbit, 1),
    case HasBody of
        true ->
            counters:add(Counters, ?C_WEBHOOKS, 1),
            expect(rabbit, {chat, sent, FromBin, ToBin, Body});
        false ->
            ok
    end,
    %% Then routed to the recipient, online or not (offline storage is not simulated):
    %% the rabbit backend publishes it again (received), and the push backend
    %% publishes one with a body to an offline recipient who enabled push.
    with_presence_lock(To, fun() ->
                                   Online = is_online(To),
                                   deliver(From, To, Msg, Online, Counters),
                                   counters:add(Counters, Rabbit, 1),
                                   [expect(rabbit, {chat, recv, FromBin, ToBin, Body})
                                    || HasBody],
                                   case not Online andalso HasBody andalso push_enabled(To) of
                                       true ->
                                           counters:add(Counters, ?C_PUSH_EXPECTED, 1),
                                           expect(push, {To#jid.luser, jid:to_bare_binary(From),
                                                         Body});
                                       false ->
                                           ok
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
    expect(rabbit, {groupchat, sent, jid:to_binary(Me), jid:to_binary(Room), message_body(Msg)}),
    Nick = jid:make_noprep(<<"lobby">>, ?MUC, Me#jid.luser),
    Reflect = fun(Occupant) ->
                      case is_online(Occupant) of
                          true ->
                              Reflected = message(Nick, Occupant, <<"groupchat">>, [body(Me)]),
                              deliver(Nick, Occupant, Reflected, true, Counters),
                              counters:add(Counters, ?C_RABBIT_GROUPCHAT, 1),
                              expect(rabbit, {groupchat, recv, jid:to_binary(Nick),
                                              jid:to_binary(Occupant), message_body(Reflected)});
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
    expect(rabbit, {presence, jid:to_binary(Me), true}),
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
    expect(rabbit, {presence, jid:to_binary(Me), false}),
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

%% "user7: hi! (#1234)": the sender's name, then a text, then a number no other
%% body has, so that each delivery names the event it came from.
body(#jid{luser = User}) ->
    Texts = [<<"hi!">>, <<"are we still on for lunch?">>, <<"sure, 12:30 at the usual place">>,
             <<"ok & see you there">>, <<"running 5 min late, sorry">>,
             <<"did you see the release notes? ", 16#e2, 16#9c, 16#85>>],
    Text = lists:nth(rand:uniform(length(Texts)), Texts),
    Number = integer_to_binary(erlang:unique_integer([positive])),
    #xmlel{name = <<"body">>,
           children = [#xmlcdata{content = <<User/binary, ": ", Text/binary, " (#",
                                             Number/binary, ")">>}]}.

message_body(Msg) ->
    exml_query:path(Msg, [{element, <<"body">>}, cdata]).

chat_state() ->
    #xmlel{name = <<"composing">>,
           attrs = #{<<"xmlns">> => <<"http://jabber.org/protocol/chatstates">>}}.

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
                       {ok, Notification} ->
                           Key = {push_received, Notification},
                           _ = ets:update_counter(?EVENTS, Key, 1, {Key, 0}),
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
%% sender's name). A good one gives the notification {Recipient's user, Sender, Body}.
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
        [] -> {ok, {User, Sender, Body}};
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

%% Every user online (and push enabled) within ?USERS_TIMEOUT_MS.
wait_ready(Users) ->
    wait_ready(Users, erlang:monotonic_time(millisecond) + ?USERS_TIMEOUT_MS).

wait_ready([], _Deadline) ->
    ok;
wait_ready([{Pid, Ref} | Users] = All, Deadline) ->
    receive
        {ready, Pid} -> wait_ready(Users, Deadline);
        {'DOWN', Ref, process, Pid, Reason} -> fail("a simulated user crashed: ~0tp", [Reason])
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
            fail("~b of the simulated users were not online within ~b s",
                 [length(All), ?USERS_TIMEOUT_MS div 1000])
    end.

%% Every user done within ?USERS_TIMEOUT_MS after the end of the simulated time.
wait_users(Users, Deadline) ->
    wait_users_loop(Users, Deadline + ?USERS_TIMEOUT_MS).

wait_users_loop([], _Deadline) ->
    ok;
wait_users_loop([{Pid, Ref} | Users] = All, Deadline) ->
    receive
        {'DOWN', Ref, process, Pid, normal} -> wait_users_loop(Users, Deadline);
        {'DOWN', Ref, process, Pid, Reason} -> fail("a simulated user crashed: ~0tp", [Reason])
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
            fail("~b of the simulated users were still running ~b s after the end",
                 [length(All), ?USERS_TIMEOUT_MS div 1000])
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
report(Final, Context) ->
    io:format("demo: mod_event_pusher_http_sent metric events: ~b (one per answered "
              "request)~n", [maps:get(http_sent, Context)]),
    case lists:keymember("push", 1, Final) of
        true -> report_pubsub(maps:get(pubsub, Context));
        false -> ok
    end,
    report_arrived(maps:get(arrived, Context)),
    case lists:keymember("sns", 1, Final) of
        true -> report_sns_sink(maps:get(sns_sink, Context));
        false -> ok
    end,
    report_sample(maps:get(sample, Context)),
    Checks = lists:append([checks(Name, Stats, Context) || {Name, Stats} <- Final])
        ++ sample_checks(maps:get(sample, Context)),
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

report_arrived(none) ->
    ok;
report_arrived(#{total := Total, by_kind := ByKind, bad := Bad, matched := Matched,
                 duplicates := Duplicates, foreign := Foreign}) ->
    io:format("demo: the demo's queue received ~b messages (presence ~b, chat ~b, "
              "groupchat ~b): ~b distinct events, ~b duplicates~n",
              [Total, maps:get(presence, ByKind, 0), maps:get(chat, ByKind, 0),
               maps:get(groupchat, ByKind, 0), Matched, Duplicates]),
    [io:format("demo: unexpected message (~p): ~p~n", [Why, M]) || {Why, M} <- lists:sublist(Bad, 3)],
    [io:format("demo: ~b more messages concern none of the demo's users (another client of "
               "the broker published them); not counted~n", [Foreign]) || Foreign > 0],
    ok.

report_sns_sink(#{requests := Requests} = Stats) ->
    io:format("demo: pusher-sink --sns received ~b messages in ~b Publish/PublishBatch "
              "calls~n", [maps:get(messages, Stats, 0), Requests]).

report_sample(none) ->
    ok;
report_sample(#{stats := #{accepted := A, delivered := D, retried := R, failed := F,
                           dropped := Dr}, topics := Topics}) ->
    io:format("demo: SNS sample through moto: accepted ~b, delivered ~b, retried ~b, failed ~b, "
              "dropped ~b~n", [A, D, R, F, Dr]),
    [begin
         io:format("demo: SNS sample: the ~ts queue received ~b messages: ~b distinct "
                   "notifications, ~b duplicates~n", [Name, Total, Matched, Duplicates]),
         [io:format("demo: SNS sample: unexpected message in the ~ts queue: ~0tp~n", [Name, Why])
          || Why <- lists:sublist(Bad, 3)]
     end
     || {_Kind, Name, #{total := Total, matched := Matched, duplicates := Duplicates,
                        bad := Bad}} <- Topics],
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
                 pubsub := #{requests := Requests, bad := Bad, matched := Match}}) ->
    #{matched := Matched, unexpected := Unexpected, duplicates := Duplicates} = Match,
    [{io_lib:format("push: accepted ~b = chat messages with a body routed to an offline "
                    "user with push enabled ~b", [A, Expected]), A =:= Expected},
     {io_lib:format("push: ~ts received ~b publish IQs = delivered ~b",
                    [?PUBSUB, Requests, D]), Requests =:= D},
     {io_lib:format("push: every publish IQ is MongooseIM's (pubsub/publish/item/notification, "
                    "urn:xmpp:push:summary form), for the recipient's node (~b are not)", [Bad]),
      Bad =:= 0},
     {io_lib:format("push: the publish IQs carry ~b distinct notifications = delivered ~b, each "
                    "for a message sent to that user (~b unexpected, ~b duplicates)",
                    [Matched, D, Unexpected, Duplicates]),
      Matched =:= D andalso Unexpected =:= 0 andalso Duplicates =:= 0}];
backend_checks("rabbit", #{accepted := A, delivered := D, retried := R, failed := F},
               #{expected := #{presence := P, chat := C, groupchat := G, skipped := S},
                 rabbit_skipped := SkippedMetric, arrived := Arrived}) ->
    [{io_lib:format("rabbit: accepted ~b = presence ~b + chat ~b + groupchat ~b events "
                    "with a body (sent and received)", [A, P, C, G]), A =:= P + C + G},
     {io_lib:format("rabbit: skipped (no body) ~b = chat messages without a body ~b",
                    [SkippedMetric, S]), SkippedMetric =:= S}
     | rabbit_arrival_checks(D, R, F, Arrived)];
backend_checks("sns", #{accepted := A, delivered := D},
               #{expected := #{presence := P, webhooks := C, groupchat_sent := G},
                 sns_sink := SinkStats}) ->
    Messages = maps:get(messages, SinkStats, 0),
    [{io_lib:format("sns: accepted ~b = presence ~b + chat ~b + groupchat ~b messages with "
                    "a body sent", [A, P, C, G]), A =:= P + C + G},
     {io_lib:format("sns: pusher-sink --sns received ~b messages = delivered ~b",
                    [Messages, D]), Messages =:= D}];
backend_checks(_Name, _Stats, _Context) ->
    [].

rabbit_arrival_checks(_D, _R, _F, none) ->
    [{"rabbit: the demo's queue was bound to the rabbit backend's exchanges", false}];
rabbit_arrival_checks(D, R, F, #{matched := Matched, unexpected := Unexpected,
                                 duplicates := Duplicates, bad := Bad}) ->
    %% A failed event may still have reached the broker (its confirm was lost).
    [{io_lib:format("rabbit: the demo's queue received ~b distinct events: confirmed ~b <= ~b "
                    "<= confirmed + failed ~b", [Matched, D, Matched, D + F]),
      D =< Matched andalso Matched =< D + F},
     {io_lib:format("rabbit: the demo's queue received nothing the users did not cause (~b "
                    "unexpected), and duplicates ~b <= retried ~b", [Unexpected, Duplicates, R]),
      Unexpected =:= 0 andalso Duplicates =< R},
     {io_lib:format("rabbit: every message has MongooseIM's JSON and routing key (~b do not)",
                    [length(Bad)]), Bad =:= []}].

%% moto got every event of the sample, each once, on its topic, as MongooseIM
%% publishes it.
sample_checks(none) ->
    [];
sample_checks(#{stats := #{accepted := A, delivered := D, retried := R}, sent := Sent,
                topics := Topics}) ->
    [{io_lib:format("sns sample: accepted ~b = delivered to moto ~b = events sent ~b",
                    [A, D, Sent]), A =:= Sent andalso D =:= Sent}
     | [{io_lib:format("sns sample: the ~ts queue received ~b distinct notifications = ~ts "
                       "events sent ~b, each with MongooseIM's JSON (~b unexpected or "
                       "malformed, ~b duplicates <= retried ~b)",
                       [Name, Matched, Kind, Expected, Unexpected, Duplicates, R]),
         Matched =:= Expected andalso Unexpected =:= 0 andalso Duplicates =< R}
        || {Kind, Name, #{expected := Expected, matched := Matched, unexpected := Unexpected0,
                          duplicates := Duplicates, bad := Bad}} <- Topics,
           Unexpected <- [Unexpected0 + length(Bad)]]].

latency(undefined) -> "-";
latency(Us) when Us < 1000 -> io_lib:format("~b us", [Us]);
latency(Us) when Us < 10000 -> io_lib:format("~.2f ms", [Us / 1000]);
latency(Us) -> io_lib:format("~.1f ms", [Us / 1000]).
