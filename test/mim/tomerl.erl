%% @doc Stand-in for tomerl, the TOML library MongooseIM 6.4 reads `mongooseim.toml'
%% with (`tomerl:read_file/1', as its mongoose_config_parser_toml calls it).
%%
%% OTP has no TOML parser, and MongooseIM parses `mongooseim.toml' itself (the
%% production modules never do), so the stand-in runs the Rust program
%% `toml2term' (native/toml_port) as a port: it prints the document as one Erlang
%% term in text form, which is parsed here with erl_scan/erl_parse.
%%
%% The program is found through the environment variable `TOML2TERM', or else at
%% `<repo>/target/release/toml2term', where `<repo>' is the first directory above
%% this module's beam file (or above the current directory) that holds a
%% Cargo.toml. Unless `TOML2TERM' is set, the first call in a VM builds it (see
%% repo_binary), so an edited or missing binary is rebuilt.
-module(tomerl).

-export([read_file/1]).
%% Test control (not in tomerl)
-export([executable/0]).

-type toml_value() :: binary() | integer() | float() | boolean() | [toml_value()] | toml_map().
-type toml_map() :: #{binary() => toml_value()}.
-type reason() :: {toml_error, Message :: binary()}
                | {not_found, term()} | {not_found, string(), string()}
                | {cargo_build_failed, string()}
                | {toml2term_failed, ExitStatus :: integer(), Output :: binary()}
                | {bad_toml2term_output, term()}.
-export_type([toml_value/0, toml_map/0, reason/0]).

%% @doc Reads and parses a TOML file. A file that cannot be read or parsed gives
%% `{error, {toml_error, Message}}'; for syntax errors Message names line and column.
-spec read_file(file:filename_all()) -> {ok, toml_map()} | {error, reason()}.
read_file(Path) ->
    case executable() of
        {ok, Exe} -> run(Exe, unicode:characters_to_list(Path));
        {error, _} = Error -> Error
    end.

%% @doc The toml2term program to run, built first if needed (see module doc).
-spec executable() -> {ok, file:filename()} | {error, reason()}.
executable() ->
    repo_binary:executable("TOML2TERM", "toml_port", "toml2term").

run(Exe, Path) ->
    case repo_binary:run(Exe, [Path], []) of
        {0, Output} -> decode(Output);
        {Status, Output} -> {error, {toml2term_failed, Status, Output}}
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
