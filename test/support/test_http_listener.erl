%% @doc A real HTTP/1.1 server for tests: records every request it receives (with the
%% monotonic millisecond it arrived at) and answers with a status chosen by the test
%% (or not at all, to simulate a hung server). Keep-alive, Content-Length bodies.
%% Test-only.
-module(test_http_listener).

-export([start/0, start/1, start_tls/2, stop/1, port/1, requests/1, wait_for_requests/3,
         set_reply/2, clear/1, handshake_failures/1, open_connections/1]).

-type listener() :: pid().
-type request() :: #{method := binary(), path := binary(),
                     headers := #{binary() => binary()}, body := binary(),
                     at := integer()}.
%% An answer for every request, a list of them used in order (then 200), or, for each
%% distinct body, its own list used in order (then 200: `{per_body, [...]}' makes a
%% server that fails every event's first attempts).
-type reply() :: answer() | [answer()] | {per_body, [answer()]}.
%% A status, a status with extra response headers (e.g. `{headers, 503,
%% [{<<"retry-after">>, <<"1">>}]}'), or either after a delay.
-type answer() :: non_neg_integer()
                | {headers, non_neg_integer(), [{binary(), binary()}]}
                | {delay, non_neg_integer(), answer()}.
-export_type([listener/0, request/0, reply/0, answer/0]).

-spec start() -> listener().
start() -> start(200).

-spec start(reply()) -> listener().
start(Reply) ->
    start_listener(Reply, gen_tcp, []).

%% @doc An HTTPS listener; SslOpts carry the certificate and key (ssl:listen/2 options).
-spec start_tls(reply(), [ssl:tls_server_option()]) -> listener().
start_tls(Reply, SslOpts) ->
    {ok, _} = application:ensure_all_started(ssl),
    start_listener(Reply, ssl, SslOpts).

start_listener(Reply, Transport, TransportOpts) ->
    Parent = self(),
    Pid = spawn(fun() -> init(Parent, Reply, Transport, TransportOpts) end),
    receive {Pid, listening} -> Pid after 5000 -> error(listener_start_timeout) end.

%% @doc Stops the listener and every connection process it accepted (one may be in a
%% long `{delay, ...}' answer): when this returns, nothing of the listener runs.
-spec stop(listener()) -> ok.
stop(Listener) ->
    MRef = monitor(process, Listener),
    Listener ! {call, self(), make_ref(), stop},
    receive
        {'DOWN', MRef, _, _, _} -> ok
    after 5000 ->
            exit(Listener, kill),
            receive {'DOWN', MRef, _, _, _} -> ok end
    end.

-spec port(listener()) -> inet:port_number().
port(Listener) -> call(Listener, port).

-spec requests(listener()) -> [request()].
requests(Listener) -> call(Listener, requests).

%% @doc Why each failed TLS handshake failed (ssl:handshake/2's error reasons, oldest
%% first): a client refusing our certificate sends an alert, e.g.
%% `{tls_alert, {certificate_expired, _}}'.
-spec handshake_failures(listener()) -> [term()].
handshake_failures(Listener) -> call(Listener, handshake_failures).

%% @doc How many client connections are open now (a client that is gone closed
%% its connections; one waiting for a delayed answer is seen closing after it).
-spec open_connections(listener()) -> non_neg_integer().
open_connections(Listener) -> call(Listener, open_connections).

-spec clear(listener()) -> ok.
clear(Listener) -> call(Listener, clear).

-spec set_reply(listener(), reply()) -> ok.
set_reply(Listener, Reply) -> call(Listener, {set_reply, Reply}).

%% @doc Waits until at least N requests arrived; returns them either way.
-spec wait_for_requests(listener(), pos_integer(), non_neg_integer()) ->
          {ok | timeout, [request()]}.
wait_for_requests(Listener, N, TimeoutMs) ->
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    wait_loop(Listener, N, Deadline).

wait_loop(Listener, N, Deadline) ->
    Requests = requests(Listener),
    case length(Requests) >= N of
        true -> {ok, Requests};
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> {timeout, Requests};
                false -> timer:sleep(20), wait_loop(Listener, N, Deadline)
            end
    end.

call(Listener, Request) ->
    Ref = make_ref(),
    Listener ! {call, self(), Ref, Request},
    receive {Ref, Reply} -> Reply after 5000 -> error({listener_timeout, Request}) end.

%% The server process owns the state; one acceptor and one process per connection.
init(Parent, Reply, Transport, TransportOpts) ->
    {ok, LSock} = Transport:listen(0, TransportOpts ++ [binary, {active, false}, {reuseaddr, true},
                                                        {packet, http_bin}, {ip, {127, 0, 0, 1}},
                                                        {backlog, 1024}]),
    {ok, {_, Port}} = sockname(Transport, LSock),
    Self = self(),
    Acceptor = spawn_link(fun() -> accept(Transport, LSock, Self) end),
    Parent ! {self(), listening},
    loop(#{port => Port, requests => [], reply => Reply, lsock => LSock,
           handshake_failures => [], seen => #{},
           acceptor => Acceptor, connections => #{}}).

loop(State = #{requests := Requests, reply := Reply}) ->
    receive
        {connection, Pid} ->
            Connections = maps:get(connections, State),
            loop(State#{connections := Connections#{Pid => monitor(process, Pid)}});
        {'DOWN', _, process, Pid, _} ->
            loop(State#{connections := maps:remove(Pid, maps:get(connections, State))});
        {call, _From, _Ref, stop} ->
            stop_processes(State);
        {call, From, Ref, port} -> From ! {Ref, maps:get(port, State)}, loop(State);
        {call, From, Ref, open_connections} ->
            From ! {Ref, map_size(maps:get(connections, State))}, loop(State);
        {call, From, Ref, requests} -> From ! {Ref, lists:reverse(Requests)}, loop(State);
        {call, From, Ref, handshake_failures} ->
            From ! {Ref, lists:reverse(maps:get(handshake_failures, State))}, loop(State);
        {call, From, Ref, clear} ->
            From ! {Ref, ok},
            loop(State#{requests := [], handshake_failures := [], seen := #{}});
        {handshake_failed, Reason} ->
            loop(State#{handshake_failures := [Reason | maps:get(handshake_failures, State)]});
        {call, From, Ref, {set_reply, New}} ->
            From ! {Ref, ok}, loop(State#{reply := New, seen := #{}});
        {request, From, Request = #{body := Body}} ->
            Seen = maps:get(seen, State),
            Before = maps:get(Body, Seen, 0),
            {Answer, NextReply} = next_reply(Reply, Before),
            From ! {reply, Answer},
            loop(State#{requests := [Request | Requests], reply := NextReply,
                        seen := Seen#{Body => Before + 1}})
    end.

%% The answer to a request whose body arrived `Before' times already.
next_reply({per_body, Answers}, Before) when Before < length(Answers) ->
    {lists:nth(Before + 1, Answers), {per_body, Answers}};
next_reply({per_body, Answers}, _Before) -> {200, {per_body, Answers}};
next_reply([], _Before) -> {200, []};
next_reply([Answer | Rest], _Before) -> {Answer, Rest};
next_reply(Answer, _Before) -> {Answer, Answer}.

%% The acceptor first: once it is gone, every connection it started has been announced.
stop_processes(#{acceptor := Acceptor, connections := Connections}) ->
    unlink(Acceptor),
    kill_and_wait(Acceptor),
    Announced = fun Collect(Acc) -> receive {connection, Pid} -> Collect([Pid | Acc])
                                    after 0 -> Acc
                                    end
                end,
    lists:foreach(fun kill_and_wait/1, maps:keys(Connections) ++ Announced([])),
    exit(normal).

kill_and_wait(Pid) ->
    MRef = monitor(process, Pid),
    exit(Pid, kill),
    receive {'DOWN', MRef, _, _, _} -> ok end.

sockname(gen_tcp, LSock) -> inet:sockname(LSock);
sockname(ssl, LSock) -> ssl:sockname(LSock).

setopts(gen_tcp, Sock, Opts) -> inet:setopts(Sock, Opts);
setopts(ssl, Sock, Opts) -> ssl:setopts(Sock, Opts).

accept(gen_tcp, LSock, Server) ->
    {ok, Sock} = gen_tcp:accept(LSock),
    serve(gen_tcp, Sock, Server),
    accept(gen_tcp, LSock, Server);
accept(ssl, LSock, Server) ->
    {ok, Sock} = ssl:transport_accept(LSock),
    %% A failed handshake (a client refusing our certificate) ends only that connection.
    case ssl:handshake(Sock, 5000) of
        {ok, TlsSock} -> serve(ssl, TlsSock, Server);
        {error, Reason} -> Server ! {handshake_failed, Reason}
    end,
    accept(ssl, LSock, Server).

serve(Transport, Sock, Server) ->
    Pid = spawn(fun() -> receive go -> connection(Transport, Sock, Server) end end),
    Server ! {connection, Pid},
    ok = Transport:controlling_process(Sock, Pid),
    Pid ! go.

connection(Transport, Sock, Server) ->
    case read_request(Transport, Sock) of
        {ok, Request} ->
            Server ! {request, self(), Request},
            Status = receive {reply, S} -> S end,
            respond(Transport, Sock, Status),
            connection(Transport, Sock, Server);
        closed ->
            Transport:close(Sock)
    end.

respond(_Transport, _Sock, {delay, Ms, Status}) when Ms >= 60000 ->
    %% "Never" answers: the client has to time out.
    timer:sleep(Ms), Status;
respond(Transport, Sock, {delay, Ms, Status}) ->
    timer:sleep(Ms),
    respond(Transport, Sock, Status);
respond(Transport, Sock, {headers, Status, Headers}) ->
    Transport:send(Sock, [<<"HTTP/1.1 ">>, integer_to_binary(Status), <<" X\r\n">>,
                          [[Name, <<": ">>, Value, <<"\r\n">>] || {Name, Value} <- Headers],
                          <<"content-length: 2\r\n\r\nok">>]);
respond(Transport, Sock, Status) ->
    Transport:send(Sock, [<<"HTTP/1.1 ">>, integer_to_binary(Status), <<" X\r\n">>,
                          <<"content-length: 2\r\n\r\nok">>]).

read_request(Transport, Sock) ->
    ok = setopts(Transport, Sock, [{packet, http_bin}]),
    case Transport:recv(Sock, 0) of
        {ok, {http_request, Method, {abs_path, Path}, _}} ->
            Headers = read_headers(Transport, Sock, #{}),
            Length = binary_to_integer(maps:get(<<"content-length">>, Headers, <<"0">>)),
            ok = setopts(Transport, Sock, [{packet, raw}]),
            Body = case Length of
                       0 -> <<>>;
                       _ -> {ok, B} = Transport:recv(Sock, Length), B
                   end,
            {ok, #{method => method(Method), path => Path, headers => Headers, body => Body,
                   at => erlang:monotonic_time(millisecond)}};
        _ ->
            closed
    end.

method(Method) when is_atom(Method) -> atom_to_binary(Method);
method(Method) -> Method.

read_headers(Transport, Sock, Acc) ->
    case Transport:recv(Sock, 0) of
        {ok, {http_header, _, Name, _, Value}} ->
            Key = string:lowercase(if is_atom(Name) -> atom_to_binary(Name); true -> Name end),
            read_headers(Transport, Sock, Acc#{Key => Value});
        {ok, http_eoh} ->
            Acc
    end.
