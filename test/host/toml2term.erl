%% @doc Test-only TOML reader of the MongooseIM stand-in.
%%
%% OTP has no TOML parser, and MongooseIM parses `mongooseim.toml' itself (the
%% production modules never do), so the stand-in runs the Rust program
%% `toml2term' (native/toml_port) as a port: it prints the document as one Erlang
%% term in text form, which is parsed here with erl_scan/erl_parse.
%%
%% The program is found through the environment variable `TOML2TERM', or else at
%% `<repo>/target/release/toml2term', where `<repo>' is the first directory above
%% this module's beam file (or above the current directory) that holds a
%% Cargo.toml. Unless `TOML2TERM' is set, the first call in a VM runs
%% `cargo build --release -p toml_port', so an edited or missing binary is rebuilt
%% (a no-op taking well under a second when it is up to date).
-module(toml2term).

-export([parse_file/1, executable/0]).

-type toml_value() :: binary() | integer() | float() | boolean() | [toml_value()] | toml_map().
-type toml_map() :: #{binary() => toml_value()}.
-type reason() :: {toml_error, Message :: binary()}
                | {toml2term_not_found, file:filename()}
                | {cargo_build_failed, string()}
                | {toml2term_failed, ExitStatus :: integer(), Output :: binary()}
                | {bad_toml2term_output, term()}.
-export_type([toml_value/0, toml_map/0, reason/0]).

%% Cargo.toml of the workspace: marks the repository root.
-define(ROOT_MARKER, "Cargo.toml").
-define(BUILT_KEY, {?MODULE, built}).

%% @doc Reads and parses a TOML file. A file that cannot be read or parsed gives
%% `{error, {toml_error, Message}}'; for syntax errors Message names line and column.
-spec parse_file(file:filename_all()) -> {ok, toml_map()} | {error, reason()}.
parse_file(Path) ->
    case executable() of
        {ok, Exe} -> run(Exe, unicode:characters_to_list(Path));
        {error, _} = Error -> Error
    end.

%% @doc The toml2term program to run, built first if needed (see module doc).
-spec executable() -> {ok, file:filename()} | {error, reason()}.
executable() ->
    case os:getenv("TOML2TERM") of
        false -> built_executable();
        "" -> built_executable();
        Exe -> check_exists(Exe)
    end.

built_executable() ->
    case repo_root() of
        {ok, Root} ->
            case ensure_built(Root) of
                ok -> check_exists(filename:join([Root, "target", "release", "toml2term"]));
                {error, _} = Error -> Error
            end;
        error ->
            {error, {toml2term_not_found, "no directory with " ?ROOT_MARKER " above "
                     ++ code:which(?MODULE)}}
    end.

check_exists(Exe) ->
    case filelib:is_regular(Exe) of
        true -> {ok, Exe};
        false -> {error, {toml2term_not_found, Exe}}
    end.

%% Builds once per VM; later calls trust the result of the first one.
ensure_built(Root) ->
    case persistent_term:get(?BUILT_KEY, false) of
        true ->
            ok;
        false ->
            case os:find_executable("cargo") of
                false ->
                    ok; % no toolchain: use whatever binary exists
                Cargo ->
                    case run_cargo(Cargo, Root) of
                        ok -> persistent_term:put(?BUILT_KEY, true);
                        {error, _} = Error -> Error
                    end
            end
    end.

run_cargo(Cargo, Root) ->
    Port = open_port({spawn_executable, Cargo},
                     [binary, exit_status, stderr_to_stdout, {cd, Root},
                      {args, ["build", "--release", "-q", "-p", "toml_port"]}]),
    case collect(Port, []) of
        {0, _} -> ok;
        {_, Output} -> {error, {cargo_build_failed, unicode:characters_to_list(Output)}}
    end.

run(Exe, Path) ->
    %% spawn_executable passes the path as one argv entry: no shell, no quoting.
    Port = open_port({spawn_executable, Exe}, [binary, exit_status, {args, [Path]}]),
    case collect(Port, []) of
        {0, Output} -> decode(Output);
        {Status, Output} -> {error, {toml2term_failed, Status, Output}}
    end.

collect(Port, Acc) ->
    receive
        {Port, {data, Data}} -> collect(Port, [Acc, Data]);
        {Port, {exit_status, Status}} -> {Status, iolist_to_binary(Acc)}
    end.

decode(Output) ->
    %% The output is plain ASCII (strings are byte lists), so a latin-1 list is exact.
    case erl_scan:string(binary_to_list(Output)) of
        {ok, Tokens, _} ->
            case erl_parse:parse_term(Tokens) of
                {ok, Map} when is_map(Map) -> {ok, Map};
                {ok, {error, Message}} when is_binary(Message) -> {error, {toml_error, Message}};
                Other -> {error, {bad_toml2term_output, Other}}
            end;
        Error ->
            {error, {bad_toml2term_output, Error}}
    end.

repo_root() ->
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
