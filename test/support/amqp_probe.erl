%% @doc Test-only: what arrives at RabbitMQ exchanges, read through the `amqp_probe'
%% program (native/amqp_tools/src/bin/amqp_probe.rs) run as a port.
%%
%% start/1 binds a fresh exclusive, auto-delete queue to each `{Exchange, RoutingKey}'
%% and returns once the bindings exist, so every message published afterwards is
%% recorded (or fails: the broker's error, or `probe_start_timeout' when the program
%% has not connected and bound within the `timeout' option, 30 s by default, counted
%% from the program's start: finding or building the program comes first);
%% messages/1 and wait_for_messages/3 return them in arrival order. The probe
%% lives in its own process (its port closes when that process, or the caller that
%% started it, ends) and consumes on its own connection straight to the broker.
%%
%% declare/2,3 and delete/1 manage exchanges (e.g. to make one with a conflicting
%% type), with the same program; declare_queue/3 and delete_queue/2 a durable classic
%% queue, which outlives the probe and a broker restart: start/2 with `queue' reads
%% it (what it holds already, then what arrives).
%%
%% The program is `AMQP_PROBE' from the environment, or else
%% `<repo>/target/release/amqp_probe', where `<repo>' is the first directory above
%% this module's beam file (or above the current directory) holding a Cargo.toml.
%% Unless `AMQP_PROBE' is set, the first use in a VM runs
%% `cargo build --release -q -p amqp_tools --bin amqp_probe' (a no-op when up to
%% date); if that fails but a binary exists, the binary is used.
-module(amqp_probe).

-export([start/1, start/2, try_start/1, try_start/2, stop/1, messages/1, count/1,
         wait_for_messages/3, clear/1, declare/2, declare/3, delete/1, declare_queue/3,
         delete_queue/2, executable/0, default_uri/0]).

-type probe() :: pid().
-type bind() :: {Exchange :: binary() | string(), RoutingKey :: binary() | string()}.
-type message() :: #{exchange := binary(), routing_key := binary(), payload := binary()}.
%% queue: consume from this durable queue (declared if missing) instead of a queue of
%% the probe's own
-type opts() :: #{uri => string(), timeout => non_neg_integer(), queue => binary() | string()}.
-export_type([probe/0, bind/0, message/0, opts/0]).

-define(DEFAULT_URI, "amqp://guest:guest@127.0.0.1:5672/%2f").
-define(START_TIMEOUT, 30000).
%% Lines are at most this long before the port splits them (noeol); they are
%% joined again, so this is only a chunk size.
-define(LINE_CHUNK, 1 bsl 20).

-spec default_uri() -> string().
default_uri() -> ?DEFAULT_URI.

%% @doc Starts a probe bound to Binds; raises `{amqp_probe_failed, Reason}' when a
%% binding (or the connection) fails.
-spec start([bind()]) -> probe().
start(Binds) ->
    start(Binds, #{}).

-spec start([bind()], opts()) -> probe().
start(Binds, Opts) ->
    case try_start(Binds, Opts) of
        {ok, Probe} -> Probe;
        {error, Reason} -> error({amqp_probe_failed, Reason})
    end.

%% @doc As start/1, but a failure is returned: `{error, Text}' carries the
%% program's `error ...' line (e.g. the broker's NOT_FOUND for a missing exchange).
-spec try_start([bind()]) -> {ok, probe()} | {error, term()}.
try_start(Binds) ->
    try_start(Binds, #{}).

-spec try_start([bind()], opts()) -> {ok, probe()} | {error, term()}.
try_start(Binds, Opts) ->
    %% Finding the program may build it (cargo): that is not the start being timed.
    case executable() of
        {ok, Exe} -> start_program(Exe, Binds, Opts);
        {error, _} = Error -> Error
    end.

start_program(Exe, Binds, Opts) ->
    Args = uri_args(Opts) ++ queue_args(Opts)
        ++ lists:append([["--bind", arg(E, K)] || {E, K} <- Binds]),
    Timeout = maps:get(timeout, Opts, ?START_TIMEOUT),
    Caller = self(),
    Ref = make_ref(),
    Pid = spawn(fun() -> init(Caller, Ref, Exe, Args, Timeout) end),
    MRef = monitor(process, Pid),
    receive
        {Ref, ready} -> demonitor(MRef, [flush]), {ok, Pid};
        {Ref, {error, Reason}} -> demonitor(MRef, [flush]), {error, Reason};
        {'DOWN', MRef, process, Pid, Reason} -> {error, {probe_died, Reason}}
    end.

%% @doc Stops the probe (its queue goes with its connection).
-spec stop(probe()) -> ok.
stop(Probe) ->
    MRef = monitor(process, Probe),
    Probe ! stop,
    receive {'DOWN', MRef, _, _, _} -> ok
    after 5000 -> exit(Probe, kill), ok
    end.

%% @doc Messages received so far, oldest first.
-spec messages(probe()) -> [message()].
messages(Probe) ->
    call(Probe, messages).

-spec count(probe()) -> non_neg_integer().
count(Probe) ->
    call(Probe, count).

%% @doc Forgets the messages received so far.
-spec clear(probe()) -> ok.
clear(Probe) ->
    call(Probe, clear).

%% @doc Waits until at least N messages arrived; returns all of them either way.
-spec wait_for_messages(probe(), non_neg_integer(), non_neg_integer()) ->
          {ok | timeout, [message()]}.
wait_for_messages(Probe, N, TimeoutMs) ->
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    wait_loop(Probe, N, Deadline).

wait_loop(Probe, N, Deadline) ->
    case count(Probe) >= N of
        true -> {ok, messages(Probe)};
        false ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> {timeout, messages(Probe)};
                false -> timer:sleep(20), wait_loop(Probe, N, Deadline)
            end
    end.

%% @doc Declares a (non-durable) exchange of the given type, e.g. `<<"direct">>'.
-spec declare(binary() | string(), binary() | string()) -> ok | {error, term()}.
declare(Exchange, Type) ->
    declare(Exchange, Type, #{}).

-spec declare(binary() | string(), binary() | string(), #{durable => boolean(), uri => string()}) ->
          ok | {error, term()}.
declare(Exchange, Type, Opts) ->
    Suffix = case maps:get(durable, Opts, false) of true -> ":durable"; false -> "" end,
    run_once(uri_args(Opts) ++ ["--declare", arg(Exchange, Type) ++ Suffix]).

%% @doc Deletes an exchange (a missing one is not an error).
-spec delete(binary() | string()) -> ok | {error, term()}.
delete(Exchange) ->
    run_once(["--delete", to_list(Exchange)]).

%% @doc Declares the durable classic queue Name (if missing) bound to each of Binds.
-spec declare_queue(binary() | string(), [bind()], #{uri => string()}) -> ok | {error, term()}.
declare_queue(Name, Binds, Opts) ->
    run_once(uri_args(Opts) ++ queue_args(#{queue => Name})
             ++ lists:append([["--bind", arg(E, K)] || {E, K} <- Binds])).

%% @doc Deletes a queue (a missing one is not an error).
-spec delete_queue(binary() | string(), #{uri => string()}) -> ok | {error, term()}.
delete_queue(Name, Opts) ->
    run_once(uri_args(Opts) ++ ["--delete-queue", to_list(Name)]).

%% @doc The amqp_probe program, built first if needed (see the module doc).
-spec executable() -> {ok, file:filename()} | {error, term()}.
executable() ->
    repo_binary:executable("AMQP_PROBE", "amqp_tools", "amqp_probe").

%%% The probe process

%% The probe process answers the caller with ready or an error within Timeout (the
%% caller waits for that answer or for this process to end).
init(Caller, Ref, Exe, Args, Timeout) ->
    CallerMRef = monitor(process, Caller),
    Port = open_port({spawn_executable, Exe},
                     [binary, exit_status, use_stdio, {line, ?LINE_CHUNK}, {args, Args}]),
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    case await_ready(Port, [], Deadline) of
        ready ->
            Caller ! {Ref, ready},
            loop(#{port => Port, caller => CallerMRef, partial => [], messages => [],
                   count => 0});
        {error, _} = Error ->
            Caller ! {Ref, Error},
            catch port_close(Port),
            exit(normal)
    end.

await_ready(Port, Partial, Deadline) ->
    receive
        {Port, {data, {noeol, Chunk}}} -> await_ready(Port, [Partial, Chunk], Deadline);
        {Port, {data, {eol, Chunk}}} ->
            case iolist_to_binary([Partial, Chunk]) of
                <<"ready">> -> ready;
                <<"error ", Reason/binary>> -> {error, Reason};
                Other -> {error, {unexpected_output, Other}}
            end;
        {Port, {exit_status, Status}} -> {error, {exit_status, Status}}
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
            {error, probe_start_timeout}
    end.

loop(State = #{port := Port, caller := CallerMRef, partial := Partial,
               messages := Messages, count := Count}) ->
    receive
        {Port, {data, {noeol, Chunk}}} ->
            loop(State#{partial := [Partial, Chunk]});
        {Port, {data, {eol, Chunk}}} ->
            Line = iolist_to_binary([Partial, Chunk]),
            loop(State#{partial := [], messages := [Line | Messages], count := Count + 1});
        {Port, {exit_status, Status}} ->
            exit({amqp_probe_exited, Status});
        {call, From, Tag, messages} ->
            From ! {Tag, [decode(L) || L <- lists:reverse(Messages)]},
            loop(State);
        {call, From, Tag, count} ->
            From ! {Tag, Count},
            loop(State);
        {call, From, Tag, clear} ->
            From ! {Tag, ok},
            loop(State#{messages := [], count := 0});
        stop ->
            catch port_close(Port),
            ok;
        {'DOWN', CallerMRef, process, _, _} ->
            catch port_close(Port),
            ok
    end.

decode(<<"msg ", Rest/binary>>) ->
    [Exchange, KeyAndHex] = binary:split(Rest, <<" ">>),
    %% The routing key may hold spaces; the hex never does.
    {Pos, _} = lists:last(binary:matches(KeyAndHex, <<" ">>)),
    <<RoutingKey:Pos/binary, " ", Hex/binary>> = KeyAndHex,
    #{exchange => Exchange, routing_key => RoutingKey, payload => binary:decode_hex(Hex)}.

call(Probe, Request) ->
    MRef = monitor(process, Probe),
    Probe ! {call, self(), MRef, Request},
    receive
        {MRef, Reply} -> demonitor(MRef, [flush]), Reply;
        {'DOWN', MRef, process, _, Reason} -> error({amqp_probe_down, Reason})
    after 10000 ->
            demonitor(MRef, [flush]),
            error({amqp_probe_timeout, Request})
    end.

%%% One-shot runs (declare, delete)

run_once(Args) ->
    case executable() of
        {ok, Exe} ->
            case repo_binary:run(Exe, Args ++ ["--exit"], [use_stdio, stderr_to_stdout]) of
                {0, _} -> ok;
                {_, <<"error ", Reason/binary>>} -> {error, string:trim(Reason)};
                {Status, Output} -> {error, {exit_status, Status, Output}}
            end;
        {error, _} = Error ->
            Error
    end.

uri_args(Opts) ->
    ["--uri", maps:get(uri, Opts, ?DEFAULT_URI)].

queue_args(#{queue := Name}) -> ["--queue", to_list(Name)];
queue_args(#{}) -> [].

arg(Left, Right) ->
    to_list(Left) ++ "=" ++ to_list(Right).

to_list(B) when is_binary(B) -> unicode:characters_to_list(B);
to_list(L) when is_list(L) -> L;
to_list(A) when is_atom(A) -> atom_to_list(A).
