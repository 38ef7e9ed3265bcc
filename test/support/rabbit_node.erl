%% @doc Test-only: a RabbitMQ node of the test's own, for the faults that the shared
%% broker on 127.0.0.1:5672 must never see (stop_app/start_app, kill -9, restart).
%%
%% new/2 prepares a node: its own node name, AMQP and distribution ports (free ports on
%% 127.0.0.1, chosen here), data and log directories under the given directory, its own
%% (empty) configuration files and no plugins. boot/1 starts it (`rabbitmq-server
%% -detached') and returns once it has booted; start/2 is both. Everything is driven
%% with `rabbitmqctl -n Node'; every call has a time limit, and a failing one raises
%% with its output. stop/1 always ends the node, whatever state it is in (a clean
%% stop, else kill -9), and removes its data; the logs stay for the CT log.
%%
%% The scripts are run from RabbitMQ's own bin directory, not the /usr/sbin wrappers
%% (which switch to the `rabbitmq' user, who could not write the test's directory):
%% the node runs as the test's user, with that user's Erlang cookie, and with the
%% system's Erlang: the calling VM's own (OTP 27 under tools/otp27.sh, which RabbitMQ
%% 3.10 does not run on) is taken out of the environment.
%%
%% new/3 with `#{tls => TlsOpts}' adds a TLS (amqps) listener on a port of its own
%% beside the plain one (tls_port/1), with the given PEM files as the node's
%% `ssl_options'; with `fail_if_no_peer_cert' the broker demands a client certificate
%% signed by that `cacertfile'. The plain listener stays, for the test's own consumer.
-module(rabbit_node).

-export([new/2, new/3, start/2, start/3, stop/1, stop_app/1, start_app/1, kill/1, boot/1,
         uri/1, port/1, tls_port/1, name/1, os_pid/1, queue_messages/1, connections/2,
         log/1]).

-export_type([rabbit_node/0, opts/0, tls_opts/0]).

-opaque rabbit_node() :: #{name := string(), port := inet:port_number(), dir := file:filename(),
                           env := [{string(), string()}], tls_port => inet:port_number()}.

-type opts() :: #{tls => tls_opts()}.
%% PEM files: the node's certificate chain and key, and the CA its client certificates
%% must come from (when it asks for them).
-type tls_opts() :: #{certfile := file:filename(), keyfile := file:filename(),
                      cacertfile := file:filename(), fail_if_no_peer_cert => boolean()}.

-define(BOOT_TIMEOUT_MS, 120000).
-define(CTL_TIMEOUT_MS, 60000).
-define(STOP_TIMEOUT_MS, 30000).
-define(RABBIT_BIN, "/usr/lib/rabbitmq/bin").

%% @doc new/2 and boot/1.
-spec start(string(), file:filename()) -> rabbit_node().
start(Name, Dir) ->
    start(Name, Dir, #{}).

%% @doc new/3 and boot/1.
-spec start(string(), file:filename(), opts()) -> rabbit_node().
start(Name, Dir, Opts) ->
    Node = new(Name, Dir, Opts),
    ok = boot(Node),
    Node.

%% @doc A node named `Name@localhost' with its files under Dir (created), not started.
-spec new(string(), file:filename()) -> rabbit_node().
new(Name, Dir) ->
    new(Name, Dir, #{}).

%% @doc new/2, with a TLS listener when Opts has `tls'.
-spec new(string(), file:filename(), opts()) -> rabbit_node().
new(Name, Dir0, Opts) ->
    Dir = filename:absname(Dir0),
    ok = filelib:ensure_path(filename:join(Dir, "log")),
    [Port, DistPort, TlsPort] = free_ports(3),
    Config = filename:join(Dir, "rabbitmq.conf"),
    ok = file:write_file(Config, ["listeners.tcp.local = 127.0.0.1:", integer_to_list(Port),
                                  "\n", tls_config(maps:get(tls, Opts, none), TlsPort)]),
    Plugins = filename:join(Dir, "enabled_plugins"),
    ok = file:write_file(Plugins, "[].\n"),
    EnvFile = filename:join(Dir, "rabbitmq-env.conf"),
    ok = file:write_file(EnvFile, ""),
    Env = [{"RABBITMQ_NODENAME", Name ++ "@localhost"},
           {"RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1"},
           {"RABBITMQ_NODE_PORT", integer_to_list(Port)},
           {"RABBITMQ_DIST_PORT", integer_to_list(DistPort)},
           {"RABBITMQ_MNESIA_BASE", filename:join(Dir, "mnesia")},
           {"RABBITMQ_LOG_BASE", filename:join(Dir, "log")},
           {"RABBITMQ_PID_FILE", filename:join(Dir, "rabbit.pid")},
           {"RABBITMQ_ENABLED_PLUGINS_FILE", Plugins},
           {"RABBITMQ_CONF_ENV_FILE", EnvFile},
           {"RABBITMQ_CONFIG_FILE", Config},
           {"RABBITMQ_ADVANCED_CONFIG_FILE", filename:join(Dir, "advanced.config")},
           %% the distribution listens on loopback only, as the shared broker's does
           {"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-kernel inet_dist_use_interface {127,0,0,1}"},
           {"ERL_EPMD_ADDRESS", "127.0.0.1"},
           {"PATH", system_path()}
           | [{Var, false} || Var <- ["BINDIR", "ROOTDIR", "EMU", "PROGNAME", "ERL_LIBS",
                                      "ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS"]]],
    Node = #{name => Name, port => Port, dir => Dir, env => Env},
    case Opts of
        #{tls := _} -> Node#{tls_port => TlsPort};
        _ -> Node
    end.

%% rabbitmq.conf lines of the TLS listener: only on loopback; the broker asks for a
%% client certificate only when it demands one (verify_peer with fail_if_no_peer_cert).
tls_config(none, _TlsPort) ->
    [];
tls_config(Tls = #{certfile := Cert, keyfile := Key, cacertfile := CA}, TlsPort) ->
    Demand = maps:get(fail_if_no_peer_cert, Tls, false),
    ["listeners.ssl.local = 127.0.0.1:", integer_to_list(TlsPort), "\n",
     "ssl_options.cacertfile = ", filename:absname(CA), "\n",
     "ssl_options.certfile = ", filename:absname(Cert), "\n",
     "ssl_options.keyfile = ", filename:absname(Key), "\n",
     "ssl_options.verify = ", case Demand of
                                  true -> "verify_peer";
                                  false -> "verify_none"
                              end, "\n",
     "ssl_options.fail_if_no_peer_cert = ", atom_to_list(Demand), "\n"].

%% @doc Starts the node's VM (first, or again after kill/1, on the same data); returns
%% once it has booted.
-spec boot(rabbit_node()) -> ok.
boot(Node = #{dir := Dir}) ->
    PidFile = filename:join(Dir, "rabbit.pid"),
    _ = file:delete(PidFile),
    {0, _} = run(Node, script("rabbitmq-server"), ["-detached"], ?CTL_TIMEOUT_MS),
    %% `wait' polls for the pid file, then for the boot to finish.
    {0, _} = ctl(Node, ["wait", PidFile, "--timeout", integer_to_list(?BOOT_TIMEOUT_MS div 1000)],
                 ?BOOT_TIMEOUT_MS + 5000),
    {0, _} = ctl(Node, ["await_startup"], ?BOOT_TIMEOUT_MS),
    ok.

%% @doc `rabbitmqctl stop_app': the broker closes every connection and stops
%% listening; the VM stays.
-spec stop_app(rabbit_node()) -> ok.
stop_app(Node) ->
    {0, _} = ctl(Node, ["stop_app"], ?STOP_TIMEOUT_MS),
    ok.

%% @doc `rabbitmqctl start_app'; returns once the broker is up.
-spec start_app(rabbit_node()) -> ok.
start_app(Node) ->
    {0, _} = ctl(Node, ["start_app"], ?BOOT_TIMEOUT_MS),
    {0, _} = ctl(Node, ["await_startup"], ?BOOT_TIMEOUT_MS),
    ok.

%% @doc kill -9 of the node's VM; returns once it is gone.
-spec kill(rabbit_node()) -> ok.
kill(Node) ->
    OsPid = os_pid(Node),
    {0, _} = run(Node, "/bin/kill", ["-9", OsPid], ?CTL_TIMEOUT_MS),
    ok = test_wait:until(fun() -> not alive(OsPid) end, ?STOP_TIMEOUT_MS,
                         fun() -> {still_running, OsPid} end).

%% @doc Ends the node however it is (a clean stop, else kill -9) and removes its data.
%% Never fails: it runs in cleanup.
-spec stop(rabbit_node()) -> ok.
stop(Node = #{dir := Dir}) ->
    OsPid = try os_pid(Node) catch _:_ -> undefined end,
    _ = catch ctl(Node, ["stop"], ?STOP_TIMEOUT_MS),
    case OsPid =/= undefined andalso alive(OsPid) of
        true ->
            _ = catch run(Node, "/bin/kill", ["-9", OsPid], ?CTL_TIMEOUT_MS),
            _ = catch test_wait:until(fun() -> not alive(OsPid) end, ?STOP_TIMEOUT_MS,
                                      fun() -> {still_running, OsPid} end);
        false ->
            ok
    end,
    _ = file:del_dir_r(filename:join(Dir, "mnesia")),
    ok.

%% @doc Queue name => the messages it holds, as the node counts them.
-spec queue_messages(rabbit_node()) -> #{binary() => non_neg_integer()}.
queue_messages(Node) ->
    {0, Out} = ctl(Node, ["list_queues", "--no-table-headers", "name", "messages"],
                   ?CTL_TIMEOUT_MS),
    maps:from_list([{Name, binary_to_integer(Count)}
                    || Line <- binary:split(Out, <<"\n">>, [global]), Line =/= <<>>,
                       [Name, Count] <- [binary:split(Line, <<"\t">>, [global])]]).

%% @doc The node's client connections as `rabbitmqctl list_connections' gives them:
%% one map per connection, Items (e.g. ["port", "ssl", "ssl_protocol"]) to the values.
-spec connections(rabbit_node(), [string()]) -> [#{string() => binary()}].
connections(Node, Items) ->
    {0, Out} = ctl(Node, ["list_connections", "--no-table-headers" | Items], ?CTL_TIMEOUT_MS),
    [maps:from_list(lists:zip(Items, binary:split(Line, <<"\t">>, [global])))
     || Line <- binary:split(Out, <<"\n">>, [global]), Line =/= <<>>].

-spec uri(rabbit_node()) -> string().
uri(#{port := Port}) ->
    "amqp://guest:guest@127.0.0.1:" ++ integer_to_list(Port) ++ "/%2f".

-spec port(rabbit_node()) -> inet:port_number().
port(#{port := Port}) -> Port.

%% @doc The node's main log file as it is now (e.g. the TLS alerts the broker sent).
-spec log(rabbit_node()) -> binary().
log(Node = #{dir := Dir}) ->
    {ok, Bin} = file:read_file(filename:join([Dir, "log", name(Node) ++ ".log"])),
    Bin.

%% @doc The TLS listener's port (a node made with `tls').
-spec tls_port(rabbit_node()) -> inet:port_number().
tls_port(#{tls_port := Port}) -> Port.

-spec name(rabbit_node()) -> string().
name(#{name := Name}) -> Name ++ "@localhost".

%% @doc The OS pid of the node's VM, from its pid file.
-spec os_pid(rabbit_node()) -> string().
os_pid(#{dir := Dir}) ->
    {ok, Bin} = file:read_file(filename:join(Dir, "rabbit.pid")),
    string:trim(binary_to_list(Bin)).

%%% Helpers

script(Name) ->
    case filelib:is_regular(filename:join(?RABBIT_BIN, Name)) of
        true -> filename:join(?RABBIT_BIN, Name);
        false ->
            case os:find_executable(Name) of
                false -> error({not_installed, Name});
                Path -> Path
            end
    end.

ctl(Node, Args, TimeoutMs) ->
    run(Node, script("rabbitmqctl"), ["-n", name(Node), "-q" | Args], TimeoutMs).

%% Runs Exe with the node's environment: {0, Output}, or raises with the exit status
%% (or `timeout') and the output.
run(#{env := Env, dir := Dir}, Exe, Args, TimeoutMs) ->
    Port = open_port({spawn_executable, Exe},
                     [{args, Args}, {env, Env}, {cd, Dir}, binary, exit_status,
                      stderr_to_stdout, use_stdio]),
    Deadline = erlang:monotonic_time(millisecond) + TimeoutMs,
    Result = collect(Port, [], Deadline),
    case Result of
        {0, _} -> Result;
        {Status, Output} -> error({command_failed, Exe, Args, Status, Output})
    end.

collect(Port, Acc, Deadline) ->
    receive
        {Port, {data, Data}} -> collect(Port, [Acc, Data], Deadline);
        {Port, {exit_status, Status}} -> {Status, iolist_to_binary(Acc)}
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
            catch port_close(Port),
            {timeout, iolist_to_binary(Acc)}
    end.

%% PATH without the calling VM's own directories (its erts and bin), which its start
%% script put first.
system_path() ->
    Root = code:root_dir(),
    Dirs = [D || D <- string:split(os:getenv("PATH", "/usr/bin:/bin"), ":", all),
                 D =/= "", not lists:prefix(Root, D)],
    lists:join(":", Dirs).

alive(OsPid) ->
    filelib:is_dir("/proc/" ++ OsPid).

%% Ports nothing listens on now (all open at once, so they differ).
free_ports(N) ->
    Sockets = [begin
                   {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
                   S
               end || _ <- lists:seq(1, N)],
    Ports = [begin {ok, P} = inet:port(S), P end || S <- Sockets],
    [gen_tcp:close(S) || S <- Sockets],
    Ports.
