%% @doc This repository's Rust programs, for the stand-in, the tests and the tools:
%% finding the repository, building a program once per VM (so an edited one is never
%% stale) and running one with its output collected. Test-only.
-module(repo_binary).

-export([root/0, executable/3, run/3]).

-define(ROOT_MARKER, "Cargo.toml").

%% @doc The repository root: the first directory holding Cargo.toml above this
%% module's beam (or else the working directory).
-spec root() -> {ok, file:filename()} | error.
root() ->
    {ok, Cwd} = file:get_cwd(),
    Starts = case code:which(?MODULE) of
                 Beam when is_list(Beam) -> [filename:dirname(filename:absname(Beam)), Cwd];
                 _ -> [Cwd]
             end,
    find_root(Starts).

find_root([]) ->
    error;
find_root([Dir | Rest]) ->
    case filelib:is_regular(filename:join(Dir, ?ROOT_MARKER)) of
        true -> {ok, Dir};
        false ->
            case filename:dirname(Dir) of
                Dir -> find_root(Rest); % reached "/"
                Parent -> find_root([Parent | Rest])
            end
    end.

%% @doc target/release/Bin of cargo package Package, built first (once per VM); the
%% environment variable EnvVar, when set, names the program to use instead.
-spec executable(string(), string(), string()) -> {ok, file:filename()} | {error, term()}.
executable(EnvVar, Package, Bin) ->
    case os:getenv(EnvVar) of
        Exe when Exe =:= false; Exe =:= "" -> built(Package, Bin);
        Exe -> exists(Exe)
    end.

built(Package, Bin) ->
    case root() of
        {ok, Root} ->
            Exe = filename:join([Root, "target", "release", Bin]),
            case ensure_built(Root, Package, Bin) of
                ok -> exists(Exe);
                {error, _} = Error ->
                    case filelib:is_regular(Exe) of
                        true -> {ok, Exe}; % a stale program beats none
                        false -> Error
                    end
            end;
        error ->
            {error, {not_found, Bin, "no directory with " ?ROOT_MARKER " above "
                     ++ code:which(?MODULE)}}
    end.

exists(Exe) ->
    case filelib:is_regular(Exe) of
        true -> {ok, Exe};
        false -> {error, {not_found, Exe}}
    end.

ensure_built(Root, Package, Bin) ->
    Key = {?MODULE, built, Package, Bin},
    case {persistent_term:get(Key, false), os:find_executable("cargo")} of
        {true, _} -> ok;
        {false, false} -> ok; % no toolchain: use whatever program exists
        {false, Cargo} ->
            %% The whole workspace, as `make build` does: one feature set, no second build.
            Args = ["build", "--release", "-q", "--workspace"],
            case run(Cargo, Args, [{cd, Root}, stderr_to_stdout]) of
                {0, _} -> persistent_term:put(Key, true);
                {_, Output} -> {error, {cargo_build_failed, unicode:characters_to_list(Output)}}
            end
    end.

%% @doc Runs Exe with Args (argv entries: no shell, no quoting) and returns its exit
%% status and output; PortOpts adds open_port options such as stderr_to_stdout.
-spec run(file:filename(), [string()], [term()]) -> {non_neg_integer(), binary()}.
run(Exe, Args, PortOpts) ->
    Port = open_port({spawn_executable, Exe}, [binary, exit_status, {args, Args} | PortOpts]),
    collect(Port, []).

collect(Port, Acc) ->
    receive
        {Port, {data, Data}} -> collect(Port, [Acc, Data]);
        {Port, {exit_status, Status}} -> {Status, iolist_to_binary(Acc)}
    end.
