%% @doc Test-only TCP proxy on 127.0.0.1 for fault tests: clients connect to the
%% proxy's port and are relayed to a target port on 127.0.0.1.
%%
%% Modes: `forward' (the default) relays; `refuse' closes every current connection
%% and then accepts and at once closes every new one, as a broker that went away
%% would look to a client that keeps reconnecting. cut/1 closes the current
%% connections once and keeps forwarding new ones, as a connection lost mid-stream.
-module(test_tcp_proxy).

-export([start/1, stop/1, set_mode/2, mode/1, cut/1, connections/1, accepted/1]).

-type proxy() :: pid().
-type mode() :: forward | refuse.
-export_type([proxy/0, mode/0]).

-define(TIMEOUT, 5000).

%% @doc Starts a proxy to TargetPort on 127.0.0.1; returns it and the port it
%% listens on.
-spec start(inet:port_number()) -> {proxy(), inet:port_number()}.
start(TargetPort) ->
    Parent = self(),
    Pid = spawn(fun() -> init(Parent, TargetPort) end),
    receive
        {Pid, listening, Port} -> {Pid, Port}
    after ?TIMEOUT ->
            exit(Pid, kill),
            error(proxy_start_timeout)
    end.

%% @doc Stops the proxy, closing the listening socket and every connection.
-spec stop(proxy()) -> ok.
stop(Proxy) ->
    MRef = monitor(process, Proxy),
    Proxy ! stop,
    receive {'DOWN', MRef, _, _, _} -> ok
    after ?TIMEOUT -> exit(Proxy, kill), ok
    end.

%% @doc `refuse' also closes the connections open at the time of the call.
-spec set_mode(proxy(), mode()) -> ok.
set_mode(Proxy, Mode) when Mode =:= forward; Mode =:= refuse ->
    call(Proxy, {set_mode, Mode}).

-spec mode(proxy()) -> mode().
mode(Proxy) ->
    call(Proxy, mode).

%% @doc Closes every connection open now; returns once they are closed. New
%% connections are handled by the current mode.
-spec cut(proxy()) -> ok.
cut(Proxy) ->
    call(Proxy, cut).

%% @doc Connections being relayed now.
-spec connections(proxy()) -> non_neg_integer().
connections(Proxy) ->
    call(Proxy, connections).

%% @doc Connections accepted so far, in any mode (a client's reconnect attempts).
-spec accepted(proxy()) -> non_neg_integer().
accepted(Proxy) ->
    call(Proxy, accepted).

call(Proxy, Request) ->
    MRef = monitor(process, Proxy),
    Proxy ! {call, self(), MRef, Request},
    receive
        {MRef, Reply} -> demonitor(MRef, [flush]), Reply;
        {'DOWN', MRef, process, _, Reason} -> error({proxy_down, Reason})
    after ?TIMEOUT ->
            demonitor(MRef, [flush]),
            error({proxy_timeout, Request})
    end.

%%% The proxy process: owns the listening socket and knows every relay.

init(Parent, TargetPort) ->
    process_flag(trap_exit, true),
    {ok, LSock} = gen_tcp:listen(0, [binary, {active, false}, {reuseaddr, true},
                                     {ip, {127, 0, 0, 1}}, {backlog, 128}]),
    {ok, Port} = inet:port(LSock),
    Self = self(),
    Acceptor = spawn_link(fun() -> accept(LSock, Self) end),
    Parent ! {self(), listening, Port},
    loop(#{lsock => LSock, acceptor => Acceptor, target => TargetPort, mode => forward,
           relays => #{}, accepted => 0}).

loop(State = #{mode := Mode, relays := Relays, accepted := Accepted}) ->
    receive
        {accepted, Sock} ->
            State1 = State#{accepted := Accepted + 1},
            case Mode of
                refuse ->
                    gen_tcp:close(Sock),
                    loop(State1);
                forward ->
                    loop(State1#{relays := start_relay(Sock, State)})
            end;
        {'EXIT', Pid, _} when is_map_key(Pid, Relays) ->
            loop(State#{relays := maps:remove(Pid, Relays)});
        {'EXIT', Pid, Reason} when Pid =:= map_get(acceptor, State) ->
            exit({acceptor_died, Reason});
        {call, From, Tag, Request} ->
            {Reply, State1} = handle(Request, State),
            From ! {Tag, Reply},
            loop(State1);
        stop ->
            close_all(Relays),
            gen_tcp:close(maps:get(lsock, State)),
            ok
    end.

handle({set_mode, refuse}, State = #{relays := Relays}) ->
    close_all(Relays),
    {ok, State#{mode := refuse, relays := #{}}};
handle({set_mode, Mode}, State) ->
    {ok, State#{mode := Mode}};
handle(mode, State = #{mode := Mode}) ->
    {Mode, State};
handle(cut, State = #{relays := Relays}) ->
    close_all(Relays),
    {ok, State#{relays := #{}}};
handle(connections, State = #{relays := Relays}) ->
    {map_size(Relays), State};
handle(accepted, State = #{accepted := Accepted}) ->
    {Accepted, State}.

%% Killing a relay closes both its sockets (they are its ports); waits for each
%% to be gone so a cut is complete when the call returns.
close_all(Relays) ->
    maps:foreach(fun(Pid, _) ->
                         unlink(Pid),
                         MRef = monitor(process, Pid),
                         exit(Pid, kill),
                         receive {'DOWN', MRef, _, _, _} -> ok end
                 end, Relays).

start_relay(Client, #{target := TargetPort, relays := Relays}) ->
    Pid = spawn_link(fun() -> receive {go, C} -> relay_init(C, TargetPort) end end),
    case gen_tcp:controlling_process(Client, Pid) of
        ok -> Pid ! {go, Client};
        {error, _} -> gen_tcp:close(Client)
    end,
    Relays#{Pid => true}.

accept(LSock, Proxy) ->
    case gen_tcp:accept(LSock) of
        {ok, Sock} ->
            ok = gen_tcp:controlling_process(Sock, Proxy),
            Proxy ! {accepted, Sock},
            accept(LSock, Proxy);
        {error, closed} ->
            ok
    end.

%%% A relay: one process, both directions, one active-once message at a time per
%%% socket (the receiver's pace holds the sender back).

relay_init(Client, TargetPort) ->
    case gen_tcp:connect({127, 0, 0, 1}, TargetPort,
                         [binary, {active, false}, {nodelay, true}], ?TIMEOUT) of
        {ok, Target} ->
            ok = inet:setopts(Client, [{nodelay, true}, {active, once}]),
            ok = inet:setopts(Target, [{active, once}]),
            relay(Client, Target);
        {error, _} ->
            gen_tcp:close(Client)
    end.

%% Symmetric: which socket is passed first does not matter.
relay(Client, Target) ->
    receive
        {tcp, Client, Data} -> forward(Client, Target, Data);
        {tcp, Target, Data} -> forward(Target, Client, Data);
        {tcp_closed, _} -> done(Client, Target);
        {tcp_error, _, _} -> done(Client, Target)
    end.

forward(From, To, Data) ->
    case gen_tcp:send(To, Data) of
        ok ->
            ok = inet:setopts(From, [{active, once}]),
            relay(From, To);
        {error, _} ->
            done(From, To)
    end.

done(A, B) ->
    gen_tcp:close(A),
    gen_tcp:close(B).
