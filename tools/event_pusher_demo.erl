%% @doc `make demo': the event pusher running in the MongooseIM stand-in, fed by
%% simulated users, delivering webhooks to a local pusher-sink.
%%
%% 1. starts pusher-sink on a free port;
%% 2. loads examples/mongooseim.toml with the sink's port filled in and starts the
%%    configured modules, as a MongooseIM node does at boot;
%% 3. for a few seconds, ~50 users go online and offline (user_available,
%%    unset_presence) and chat (user_send_message for what they send,
%%    filter_local_packet for what is delivered to them): mostly chat messages with
%%    a body, some groupchat, some chat states without a body;
%% 4. stops the modules (pending events are drained) and prints, per backend, what
%%    was accepted, delivered, failed and dropped, the delivery latency, and one
%%    machine-readable line: `demo: http accepted=N delivered=N failed=N dropped=N'.
%%
%% main/0 returns ok when every backend's books balance (accepted = delivered +
%% failed + dropped), something was delivered, and the sink answered exactly as many
%% requests as were delivered; error otherwise.
-module(event_pusher_demo).

-export([main/0, main/1]).

-include("exml.hrl").
-include("jlib.hrl").

-define(HOST, <<"localhost">>).
-define(MUC, <<"muc.localhost">>).
-define(PRESENCE, event_pusher_demo_presence).

%% Counters of the hooks the users fire.
-define(C_HOOKS, 1).
-define(C_SENT, 2).           % user_send_message (direction in)
-define(C_RECEIVED, 3).       % filter_local_packet (direction out)
-define(C_PRESENCE, 4).       % user_available + unset_presence
-define(C_WEBHOOKS, 5).       % sent chat messages with a body: what the http backend posts
-define(N_COUNTERS, 5).

-type opts() :: #{users => pos_integer(), duration_ms => pos_integer(),
                  think_ms => pos_integer()}.

-spec main() -> ok | error.
main() ->
    main(#{}).

-spec main(opts()) -> ok | error.
main(Opts0) ->
    Opts = maps:merge(#{users => 50, duration_ms => 5000, think_ms => 20}, Opts0),
    Sink = event_pusher_sink:start([]),
    try
        run(Opts, Sink)
    after
        _ = (catch mongoose_host:stop()),
        event_pusher_sink:stop(Sink)
    end.

run(#{users := NUsers, duration_ms := Duration} = Opts, Sink) ->
    io:format("demo: pusher-sink listening on 127.0.0.1:~b~n", [event_pusher_sink:port(Sink)]),
    %% examples/mongooseim.toml with the sink's port filled in.
    ok = mongoose_host:start(event_pusher_sink:load_config(
                               "examples/mongooseim.toml",
                               #{sink_port => event_pusher_sink:port(Sink)})),
    Backends = backends(),
    io:format("demo: backends ~ts; ~b users for ~.1f s~n",
              [lists:join(", ", [Name || {Name, _} <- Backends]), NUsers, Duration / 1000]),
    Counters = counters:new(?N_COUNTERS, [write_concurrency]),
    ets:new(?PRESENCE, [named_table, public, set, {write_concurrency, true},
                        {read_concurrency, true}]),
    Start = erlang:monotonic_time(millisecond),
    Deadline = Start + Duration,
    Users = [spawn_monitor(fun() -> user(I, NUsers, Deadline, Counters, Opts) end)
             || I <- lists:seq(1, NUsers)],
    progress(Start, Deadline, Counters, Backends, 1),
    wait_users(Users),
    io:format("demo: ~b hooks fired (~b sent, ~b received, ~b presence); "
              "~b chat messages with a body sent~n",
              [counters:get(Counters, ?C_HOOKS), counters:get(Counters, ?C_SENT),
               counters:get(Counters, ?C_RECEIVED), counters:get(Counters, ?C_PRESENCE),
               counters:get(Counters, ?C_WEBHOOKS)]),
    io:format("demo: stopping the modules (draining)~n"),
    T0 = erlang:monotonic_time(millisecond),
    ok = mongoose_modules:stop(),
    io:format("demo: stopped in ~b ms~n", [erlang:monotonic_time(millisecond) - T0]),
    Final = [{Name, backend_stats(Instances)} || {Name, Instances} <- Backends],
    Sent = http_sent_metrics(),
    SinkRequests = event_pusher_sink:requests(Sink),
    ets:delete(?PRESENCE),
    report(Final, counters:get(Counters, ?C_WEBHOOKS), Sent, SinkRequests).

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

%% Simulated users

user(I, NUsers, Deadline, Counters, Opts) ->
    rand:seed(exsss, {I, erlang:unique_integer(), 42}),
    Me = user_jid(I),
    online(Me, Counters),
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
act(Me, false, R, _NUsers, Counters) when R < 0.2 -> online(Me, Counters);
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
    send(From, To, Msg, Counters),
    case Type =:= <<"chat">> andalso lists:keymember(<<"body">>, #xmlel.name, Children) of
        true -> counters:add(Counters, ?C_WEBHOOKS, 1);
        false -> ok
    end,
    %% Delivered only to a recipient with an available session (offline storage
    %% is not simulated).
    is_online(To) andalso deliver(From, To, Msg, Counters).

%% A message to a room: the room (not simulated) reflects it to a few occupants.
groupchat(Me, NUsers, Counters) ->
    Room = jid:make_noprep(<<"lobby">>, ?MUC, <<>>),
    Msg = message(Me, Room, <<"groupchat">>, [body(Me)]),
    send(Me, Room, Msg, Counters),
    Nick = jid:make_noprep(<<"lobby">>, ?MUC, Me#jid.luser),
    [deliver(Nick, Occupant, message(Nick, Occupant, <<"groupchat">>, [body(Me)]), Counters)
     || _ <- lists:seq(1, 3), Occupant <- [peer(Me, NUsers)], is_online(Occupant)],
    ok.

send(From, To, Msg, Counters) ->
    Acc = acc(From, To, Msg),
    {_, _} = gen_hook:run_fold(user_send_message, ?HOST, Acc, #{}),
    count(Counters, ?C_SENT).

deliver(From, To, Msg, Counters) ->
    Acc = acc(From, To, Msg),
    {_, _} = gen_hook:run_fold(filter_local_packet, ?HOST, {From, To, Acc, Msg}, #{}),
    count(Counters, ?C_RECEIVED).

online(Me, Counters) ->
    ets:insert(?PRESENCE, {Me, true}),
    Acc = acc(Me, jid:to_bare(Me), presence(Me, [])),
    {_, _} = gen_hook:run_fold(user_available, ?HOST, Acc, #{jid => Me}),
    count(Counters, ?C_PRESENCE).

offline(Me, Counters) ->
    ets:insert(?PRESENCE, {Me, false}),
    Acc = acc(Me, jid:to_bare(Me), presence(Me, [{<<"type">>, <<"unavailable">>}])),
    {_, _} = gen_hook:run_fold(unset_presence, ?HOST, Acc, #{jid => Me, status => <<>>}),
    count(Counters, ?C_PRESENCE).

count(Counters, Kind) ->
    counters:add(Counters, Kind, 1),
    counters:add(Counters, ?C_HOOKS, 1).

is_online(Jid) ->
    ets:lookup(?PRESENCE, Jid) =:= [{Jid, true}].

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
                    io:format("  [~bs] hooks fired ~7b | ~ts~n",
                              [Second, counters:get(Counters, ?C_HOOKS),
                               lists:join(" | ", [progress_backend(Name, backend_stats(I))
                                                  || {Name, I} <- Backends])]);
                false ->
                    ok
            end,
            progress(Start, Deadline, Counters, Backends, Second + 1)
    end.

progress_backend(Name, #{accepted := A, delivered := D, queued := Q, in_flight := F}) ->
    io_lib:format("~ts: accepted ~b delivered ~b queued ~b in flight ~b", [Name, A, D, Q, F]).

%% Final report

%% Checks first, then the table, then the machine-readable lines, last.
report(Final, Webhooks, Sent, SinkRequests) ->
    io:format("demo: mod_event_pusher_http_sent metric events: ~b (one per answered "
              "request)~n", [Sent]),
    Checks = lists:append([checks(Name, Stats, Webhooks, SinkRequests)
                           || {Name, Stats} <- Final]),
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

checks(Name, #{accepted := A, delivered := D, failed := F, dropped := Dr}, Webhooks,
       SinkRequests) ->
    [{io_lib:format("~ts: accepted ~b = delivered + failed + dropped (~b)",
                    [Name, A, D + F + Dr]), A =:= D + F + Dr},
     {io_lib:format("~ts: delivered ~b > 0", [Name, D]), D > 0}]
        ++ case Name of
               "http" ->
                   [{io_lib:format("http: accepted ~b = chat messages with a body sent ~b",
                                   [A, Webhooks]), A =:= Webhooks},
                    {io_lib:format("http: pusher-sink answered ~b = delivered ~b",
                                   [SinkRequests, D]), SinkRequests =:= D}];
               _ ->
                   []
           end.

latency(undefined) -> "-";
latency(Us) when Us < 1000 -> io_lib:format("~b us", [Us]);
latency(Us) when Us < 10000 -> io_lib:format("~.2f ms", [Us / 1000]);
latency(Us) -> io_lib:format("~.1f ms", [Us / 1000]).

