%% @doc Runs `pusher-sink' (native/sink) from Erlang for the demo and the benchmark:
%% a keep-alive HTTP server that answers every request and counts them.
%%
%% The sink is an Erlang port owned by the caller: when the owner dies or closes the
%% port, the sink's stdin closes and it exits.
-module(event_pusher_sink).

-export([start/1, stop/1, port/1, requests/1, stats/1, repo_root/0, executable/0,
         load_config/2]).

-type sink() :: #{port := port(), tcp_port := inet:port_number()}.
-export_type([sink/0]).

-define(START_TIMEOUT_MS, 30000).

%% @doc Starts the sink with these command-line arguments (e.g. ["--delay-ms", "100"])
%% on a free port and waits for its `listening <port>' line (at most 30 s: a cold,
%% busy machine may be slow to load the program).
-spec start([string()]) -> sink().
start(Args) ->
    Exe = executable(),
    case filelib:is_regular(Exe) of
        true -> ok;
        false -> error(#{what => sink_not_built, path => Exe,
                         text => "run: cargo build --release -p sink"})
    end,
    Port = open_port({spawn_executable, Exe},
                     [{args, ["--port", "0" | Args]}, {line, 256}, binary, exit_status]),
    receive
        {Port, {data, {eol, <<"listening ", TcpPort/binary>>}}} ->
            #{port => Port, tcp_port => binary_to_integer(TcpPort)};
        {Port, {exit_status, Status}} ->
            error(#{what => sink_exited, status => Status, args => Args})
    after ?START_TIMEOUT_MS ->
            catch port_close(Port),
            error(#{what => sink_start_timeout, args => Args})
    end.

%% @doc Stops the sink: closing the port closes its stdin.
-spec stop(sink()) -> ok.
stop(#{port := Port}) ->
    catch port_close(Port),
    receive {Port, {exit_status, _}} -> ok after 0 -> ok end.

-spec port(sink()) -> inet:port_number().
port(#{tcp_port := TcpPort}) ->
    TcpPort.

%% @doc Requests the sink has answered so far (its `GET /stats').
-spec requests(sink()) -> non_neg_integer().
requests(Sink) ->
    maps:get(requests, stats(Sink)).

%% @doc The sink's counters (its `GET /stats'): requests answered and, for a sink
%% started with `--sns', the messages those requests published (a PublishBatch
%% carries up to ten).
-spec stats(sink()) -> #{requests := non_neg_integer(), messages => non_neg_integer()}.
stats(#{tcp_port := TcpPort}) ->
    {ok, Socket} = gen_tcp:connect({127, 0, 0, 1}, TcpPort, [binary, {active, false}], 5000),
    ok = gen_tcp:send(Socket, <<"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                "Connection: close\r\n\r\n">>),
    Response = recv_all(Socket, <<>>),
    gen_tcp:close(Socket),
    Counter = fun(Name) ->
                      case re:run(Response, <<"\"", Name/binary, "\": *([0-9]+)">>,
                                  [{capture, all_but_first, binary}]) of
                          {match, [N]} -> [{binary_to_atom(Name), binary_to_integer(N)}];
                          nomatch -> []
                      end
              end,
    case maps:from_list(Counter(<<"requests">>) ++ Counter(<<"messages">>)) of
        #{requests := _} = Stats -> Stats;
        _ -> error(#{what => bad_sink_stats, response => Response})
    end.

recv_all(Socket, Acc) ->
    case gen_tcp:recv(Socket, 0, 5000) of
        {ok, Data} -> recv_all(Socket, <<Acc/binary, Data/binary>>);
        {error, closed} -> Acc;
        {error, Reason} -> error(#{what => sink_stats_failed, reason => Reason})
    end.

%% @doc The repository root (see repo_binary:root/0).
-spec repo_root() -> file:filename().
repo_root() ->
    case repo_binary:root() of
        {ok, Root} -> Root;
        error -> error(#{what => repo_root_not_found, beam => code:which(?MODULE)})
    end.

-spec executable() -> file:filename().
executable() ->
    filename:join([repo_root(), "target", "release", "pusher-sink"]).

%% @doc The options of a mongooseim.toml (path relative to the repository), parsed as
%% MongooseIM would (the tools run the stand-in, which reads only files), after
%% replacing, for an atom key `key' of Values, each `{{KEY}}' placeholder of a
%% template (tools/*.toml.in), and for a binary key, that text of a complete file
%% (examples/mongooseim.toml: its local addresses).
-spec load_config(file:filename(), #{atom() | binary() => integer() | binary()}) ->
          [{term(), term()}].
load_config(Template, Values) ->
    {ok, Text} = file:read_file(filename:join(repo_root(), Template)),
    Toml = maps:fold(fun(Key, Value, T) ->
                             binary:replace(T, placeholder(Key), value_text(Value), [global])
                     end, Text, Values),
    Path = filename:join(tmp_dir(), "event_pusher_" ++ os:getpid() ++ ".toml"),
    ok = file:write_file(Path, Toml),
    try mongoose_config_parser:parse_file(Path)
    after file:delete(Path)
    end.

placeholder(Key) when is_atom(Key) ->
    <<"{{", (string:uppercase(atom_to_binary(Key)))/binary, "}}">>;
placeholder(Text) when is_binary(Text) ->
    Text.

value_text(V) when is_integer(V) -> integer_to_binary(V);
value_text(V) when is_binary(V) -> V.

tmp_dir() ->
    case os:getenv("TMPDIR") of
        false -> "/tmp";
        "" -> "/tmp";
        Dir -> Dir
    end.
