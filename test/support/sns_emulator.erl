%% @doc moto's SNS/SQS emulator for the tests and the demo: starts `moto_server` from
%% _build/venv (`make venv`) on a free loopback port, and sets up topics with
%% subscribed SQS queues, reads and purges those queues through test/support/sns_emulator.py
%% (boto3, run by the venv's python). Test-only.
%%
%% The moto process belongs to a process of its own, not linked to the caller (so an
%% emulator started in a Common Test init_per_suite outlives that call); it dies
%% with stop/1, with that process, or with the VM (a watcher in the wrapper shell
%% kills it when its stdin, the port, closes). moto's output goes to
%% _build/sns_emulator/moto-PORT.log.
%%
%% With `auth => true', moto checks credentials (it is started with
%% INITIAL_NO_AUTH_ACTION_COUNT=0): a request signed with an unknown access key gets
%% 403 InvalidClientTokenId, a wrong secret 403 SignatureDoesNotMatch. The emulator
%% then holds the keys of an IAM user allowed everything (created while start/1
%% switches checking off for a moment through moto's /moto-api/reset-auth); without
%% auth it holds dummy keys, which moto does not check. Either way
%% access_key_id/secret_access_key are what a client should sign with.
-module(sns_emulator).

-export([start/0, start/1, stop/1, setup/2, setup/3, receive_messages/4, receive_all/3,
         purge/2]).

-export_type([emulator/0, topics/0]).

-type emulator() :: #{endpoint := binary(),
                      port := inet:port_number(),
                      os_pid := pos_integer(),
                      region := binary(),
                      auth := boolean(),
                      access_key_id := binary(),
                      secret_access_key := binary(),
                      log := file:filename(),
                      owner := pid(),
                      python := file:filename(),
                      script := file:filename(),
                      dir := file:filename()}.
-type topics() :: #{binary() => #{topic_arn := binary(), queue_url := binary() | null}}.

-define(REGION, <<"eu-west-1">>).
-define(DUMMY_ACCESS_KEY, <<"AKIAEXAMPLEEXAMPLE00">>).
-define(DUMMY_SECRET_KEY, <<"secret">>).
-define(IAM_USER, "event-pusher").
%% moto's first start on a cold, busy machine imports (and compiles) a lot of Python.
-define(START_TIMEOUT_MS, 120000).
-define(STOP_TIMEOUT_MS, 5000).
-define(SCRIPT_TIMEOUT_MS, 60000).
-define(POLL_MS, 100).

%% Runs moto_server ($1 = program, $2 = port, $3 = log) with its output in the log,
%% prints its pid, and kills it when stdin (the Erlang port) closes; exits with
%% moto's exit status.
-define(MOTO_WRAPPER,
        "exec 3<&0\n"
        "\"$1\" -H 127.0.0.1 -p \"$2\" </dev/null >>\"$3\" 2>&1 3<&- &\n"
        "child=$!\n"
        "echo \"$child\"\n"
        "(cat <&3 >/dev/null 3<&-; kill \"$child\" 2>/dev/null) </dev/null >/dev/null 2>&1 &\n"
        "watcher=$!\n"
        "exec 3<&-\n"
        "wait \"$child\"; status=$?\n"
        "kill \"$watcher\" 2>/dev/null\n"
        "exit \"$status\"\n").

%% Runs $2... with stderr in the file $1.
-define(STDERR_WRAPPER, "err=$1; shift; exec \"$@\" 2>\"$err\"").

%% @doc start(#{}).
-spec start() -> {ok, emulator()}.
start() ->
    start(#{}).

%% @doc Starts moto_server on a free 127.0.0.1 port and waits until it answers HTTP
%% (at most 120 s). Raises {sns_emulator, Reason, Details} when it cannot.
-spec start(#{auth => boolean()}) -> {ok, emulator()}.
start(Opts) ->
    Auth = maps:get(auth, Opts, false),
    Root = case repo_binary:root() of
               {ok, R} -> R;
               error -> error({sns_emulator, repo_root_not_found, code:which(?MODULE)})
           end,
    Venv = filename:join([Root, "_build", "venv", "bin"]),
    MotoServer = filename:join(Venv, "moto_server"),
    Python = filename:join(Venv, "python"),
    [error({sns_emulator, venv_missing, #{missing => F, fix => "make venv"}})
     || F <- [MotoServer, Python], not filelib:is_regular(F)],
    Dir = filename:join([Root, "_build", "sns_emulator"]),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    {ok, _} = application:ensure_all_started(inets),
    Port = free_port(),
    Log = filename:join(Dir, "moto-" ++ integer_to_list(Port) ++ ".log"),
    Env = [{"INITIAL_NO_AUTH_ACTION_COUNT", case Auth of true -> "0"; false -> false end},
           {"PYTHONUNBUFFERED", "1"}],
    Args = ["-c", ?MOTO_WRAPPER, "sns_emulator", MotoServer, integer_to_list(Port), Log],
    {Owner, OsPid} = start_owner(sh(), Args, Env),
    Emulator0 = #{endpoint => iolist_to_binary(["http://127.0.0.1:", integer_to_list(Port)]),
                  port => Port, os_pid => OsPid, region => ?REGION, auth => Auth,
                  access_key_id => ?DUMMY_ACCESS_KEY, secret_access_key => ?DUMMY_SECRET_KEY,
                  log => Log, owner => Owner, python => Python,
                  script => filename:join([Root, "test", "support", "sns_emulator.py"]), dir => Dir},
    try
        wait_ready(Emulator0, erlang:monotonic_time(millisecond) + ?START_TIMEOUT_MS),
        Emulator = case Auth of
                       true -> with_iam_user(Emulator0);
                       false -> Emulator0
                   end,
        {ok, Emulator}
    catch
        Class:Reason:Stacktrace ->
            catch stop(Emulator0),
            erlang:raise(Class, Reason, Stacktrace)
    end.

%% @doc Stops moto_server (SIGTERM, SIGKILL after 5 s) and waits until it has exited
%% and its port no longer accepts connections. Stopping a stopped one is fine.
-spec stop(emulator()) -> ok.
stop(#{owner := Owner, port := Port}) ->
    MRef = erlang:monitor(process, Owner),
    Owner ! {stop, MRef},
    receive
        {'DOWN', MRef, process, Owner, _} -> ok
    after 3 * ?STOP_TIMEOUT_MS ->
            exit(Owner, kill),
            receive {'DOWN', MRef, process, Owner, _} -> ok end
    end,
    wait_port_closed(Port, erlang:monotonic_time(millisecond) + ?STOP_TIMEOUT_MS).

%% @doc For each topic T: the SNS topic T, the SQS queue T-queue and an sqs
%% subscription of the queue to the topic (not raw: each message arrives as the SNS
%% JSON envelope). Idempotent.
-spec setup(emulator(), [binary()]) -> topics().
setup(Emulator, Topics) ->
    setup(Emulator, Topics, []).

%% @doc setup/2, plus BareTopics created with no queue subscribed (queue_url null):
%% moto slows down a lot as its queues fill, so high-volume topics go without.
-spec setup(emulator(), [binary()], [binary()]) -> topics().
setup(Emulator, Topics, BareTopics) ->
    Names = fun(List) -> lists:join(",", [binary_to_list(T) || T <- List]) end,
    Result = run_script(Emulator, "setup",
                        ["--topics", Names(Topics), "--bare-topics", Names(BareTopics)],
                        ?SCRIPT_TIMEOUT_MS),
    maps:map(fun(_Topic, #{<<"topic_arn">> := Arn, <<"queue_url">> := Url}) ->
                     #{topic_arn => Arn, queue_url => Url}
             end, Result).

%% @doc Takes (and deletes) messages from the queue until Count arrived or TimeoutMs
%% passed; once Count are in, 0.5 s more for any extra ones (duplicates show). Each is
%% the SNS envelope (<<"Type">>, <<"TopicArn">>, <<"Message">>, <<"MessageAttributes">>,
%% ...), with <<"decoded_message">> added when the Message is JSON.
-spec receive_messages(emulator(), binary(), non_neg_integer(), non_neg_integer()) -> [map()].
receive_messages(Emulator, QueueUrl, Count, TimeoutMs) ->
    Args = ["--queue-url", QueueUrl, "--count", integer_to_list(Count),
            "--timeout", float_to_list(TimeoutMs / 1000, [{decimals, 3}])],
    Messages = run_script(Emulator, "receive", Args, TimeoutMs + ?SCRIPT_TIMEOUT_MS),
    [decode_message(M) || M <- Messages].

%% @doc receive_messages/4 for several queues in one run of the script, with one
%% deadline for all: Count messages (or what came by the deadline) from each queue,
%% then, 0.5 s later, any extra ones from each (so duplicates show, and a queue that
%% expects 0 shows what it should not have got).
-spec receive_all(emulator(), [{QueueUrl :: binary(), Count :: non_neg_integer()}],
                  non_neg_integer()) -> #{binary() => [map()]}.
receive_all(Emulator, Queues, TimeoutMs) ->
    Args = lists:append([["--queue", [Url, "=", integer_to_list(Count)]]
                         || {Url, Count} <- Queues])
        ++ ["--timeout", float_to_list(TimeoutMs / 1000, [{decimals, 3}])],
    ByQueue = run_script(Emulator, "receive-all", Args, TimeoutMs + ?SCRIPT_TIMEOUT_MS),
    maps:map(fun(_Url, Messages) -> [decode_message(M) || M <- Messages] end, ByQueue).

%% @doc Deletes every message in the queue; returns how many there were.
-spec purge(emulator(), binary()) -> non_neg_integer().
purge(Emulator, QueueUrl) ->
    #{<<"purged">> := N} = run_script(Emulator, "purge", ["--queue-url", QueueUrl],
                                      ?SCRIPT_TIMEOUT_MS),
    N.

%% Internal functions

free_port() ->
    {ok, Listen} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(Listen),
    ok = gen_tcp:close(Listen),
    Port.

sh() ->
    case os:find_executable("sh") of
        false -> error({sns_emulator, no_sh});
        Sh -> Sh
    end.

%% The owner opens the port, reads moto's pid (the wrapper's first line) and then
%% waits for stop; it exits when moto exits by itself.
start_owner(Sh, Args, Env) ->
    Caller = self(),
    Ref = make_ref(),
    {Owner, MRef} = spawn_monitor(fun() -> owner_init(Caller, Ref, Sh, Args, Env) end),
    receive
        {Ref, OsPid} ->
            erlang:demonitor(MRef, [flush]),
            {Owner, OsPid};
        {'DOWN', MRef, process, Owner, Reason} ->
            error({sns_emulator, start_failed, Reason})
    after ?START_TIMEOUT_MS ->
            exit(Owner, kill),
            error({sns_emulator, start_failed, timeout})
    end.

owner_init(Caller, Ref, Sh, Args, Env) ->
    Port = open_port({spawn_executable, Sh},
                     [binary, exit_status, {args, Args}, {env, Env}]),
    OsPid = read_pid(Port, <<>>),
    Caller ! {Ref, OsPid},
    owner_loop(Port, OsPid).

read_pid(Port, Acc) ->
    receive
        {Port, {data, Data}} ->
            Bin = <<Acc/binary, Data/binary>>,
            case binary:split(Bin, <<"\n">>) of
                [Line, _] -> binary_to_integer(string:trim(Line));
                [_] -> read_pid(Port, Bin)
            end;
        {Port, {exit_status, Status}} ->
            exit({moto_wrapper_exited, Status})
    end.

owner_loop(Port, OsPid) ->
    receive
        {Port, {data, _}} ->
            owner_loop(Port, OsPid);
        {Port, {exit_status, Status}} ->
            exit({moto_server_exited, Status});
        {stop, _} ->
            kill(OsPid, "TERM"),
            case await_exit(Port) of
                ok -> ok;
                timeout ->
                    kill(OsPid, "KILL"),
                    _ = await_exit(Port),
                    ok
            end
    end.

await_exit(Port) ->
    receive
        {Port, {exit_status, _}} -> ok
    after ?STOP_TIMEOUT_MS -> timeout
    end.

kill(OsPid, Signal) ->
    _ = os:cmd("kill -" ++ Signal ++ " " ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
    ok.

wait_ready(#{endpoint := Endpoint, owner := Owner, log := Log} = Emulator, Deadline) ->
    %% Not "/": that is S3's ListBuckets, which moto answers with a 500 when it
    %% checks credentials and the request is unsigned.
    Url = binary_to_list(Endpoint) ++ "/moto-api/data.json",
    case httpc:request(get, {Url, []}, [{timeout, 1000}, {connect_timeout, 1000}], []) of
        {ok, _} ->
            ok;
        {error, Reason} ->
            Alive = is_process_alive(Owner),
            Now = erlang:monotonic_time(millisecond),
            if
                not Alive ->
                    error({sns_emulator, moto_server_exited, #{log => log_tail(Log)}});
                Now > Deadline ->
                    error({sns_emulator, start_timeout,
                           #{last_error => Reason, log => log_tail(Log)}});
                true ->
                    timer:sleep(?POLL_MS),
                    wait_ready(Emulator, Deadline)
            end
    end.

wait_port_closed(Port, Deadline) ->
    case gen_tcp:connect({127, 0, 0, 1}, Port, [], 500) of
        {ok, Socket} ->
            ok = gen_tcp:close(Socket),
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error({sns_emulator, still_listening, Port});
                false ->
                    timer:sleep(?POLL_MS),
                    wait_port_closed(Port, Deadline)
            end;
        {error, _} ->
            ok
    end.

log_tail(Log) ->
    case file:read_file(Log) of
        {ok, Bin} when byte_size(Bin) > 4000 -> binary:part(Bin, byte_size(Bin), -4000);
        {ok, Bin} -> Bin;
        {error, Reason} -> {no_log, Reason}
    end.

%% With checking switched off for a moment: an IAM user allowed everything, with an
%% access key; then every request must be signed with a known key again.
with_iam_user(Emulator) ->
    reset_auth(Emulator, "inf"),
    Keys = run_script(Emulator, "create-user", ["--user", ?IAM_USER], ?SCRIPT_TIMEOUT_MS),
    reset_auth(Emulator, "0"),
    #{<<"access_key_id">> := AccessKey, <<"secret_access_key">> := SecretKey} = Keys,
    Emulator#{access_key_id := AccessKey, secret_access_key := SecretKey}.

reset_auth(#{endpoint := Endpoint}, Count) ->
    Url = binary_to_list(Endpoint) ++ "/moto-api/reset-auth",
    case httpc:request(post, {Url, [], "text/plain", Count}, [{timeout, 5000}], []) of
        {ok, {{_, 200, _}, _, _}} -> ok;
        Other -> error({sns_emulator, reset_auth_failed, Count, Other})
    end.

run_script(#{python := Python, script := Script, dir := Dir, endpoint := Endpoint,
             region := Region, access_key_id := AccessKey, secret_access_key := SecretKey},
           Command, Args, TimeoutMs) ->
    ErrFile = filename:join(Dir, "stderr-" ++ integer_to_list(erlang:unique_integer([positive]))
                            ++ "-" ++ os:getpid() ++ ".txt"),
    Argv = [Python, Script, Command,
            "--endpoint", Endpoint, "--region", Region,
            "--access-key", AccessKey, "--secret-key", SecretKey | Args],
    Port = open_port({spawn_executable, sh()},
                     [binary, exit_status, {env, [{"PYTHONWARNINGS", "ignore"}]},
                      {args, ["-c", ?STDERR_WRAPPER, "sns_emulator", ErrFile
                              | [to_list(A) || A <- Argv]]}]),
    Result = collect(Port, [], erlang:monotonic_time(millisecond) + TimeoutMs),
    Stderr = case file:read_file(ErrFile) of
                 {ok, Bin} -> Bin;
                 {error, _} -> <<>>
             end,
    _ = file:delete(ErrFile),
    Details = #{command => Command, args => [to_list(A) || A <- Args], stderr => Stderr},
    case Result of
        {0, Stdout} ->
            try jiffy:decode(Stdout, [return_maps])
            catch _:Error ->
                    error({sns_emulator, bad_script_output,
                           Details#{stdout => Stdout, error => Error}})
            end;
        {Status, Stdout} ->
            error({sns_emulator, script_failed,
                   Details#{exit_status => Status, stdout => Stdout}})
    end.

to_list(A) ->
    unicode:characters_to_list(A).

collect(Port, Acc, Deadline) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {Port, {data, Data}} -> collect(Port, [Acc, Data], Deadline);
        {Port, {exit_status, Status}} -> {Status, iolist_to_binary(Acc)}
    after Left ->
            {os_pid, OsPid} = erlang:port_info(Port, os_pid),
            kill(OsPid, "KILL"),
            catch port_close(Port),
            {timeout, iolist_to_binary(Acc)}
    end.

decode_message(#{<<"Message">> := Message} = Envelope) when is_binary(Message) ->
    try jiffy:decode(Message, [return_maps]) of
        Decoded -> Envelope#{<<"decoded_message">> => Decoded}
    catch _:_ -> Envelope
    end;
decode_message(Other) ->
    Other.
