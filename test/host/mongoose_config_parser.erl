%% @doc Stand-in for MongooseIM's mongoose_config_parser: turns a mongooseim.toml
%% into the processed options MongooseIM would store, with MongooseIM's config-spec
%% semantics (see MIM_API.md, section 4), so the production modules' config_spec/0
%% is exercised exactly as in MongooseIM.
%%
%% Every node is handled in steps: an option is parsed, validated, processed and
%% wrapped; a section or a list is parsed (its children handled recursively),
%% validated, formatted, processed and wrapped. A failing step makes the node's
%% result an error map naming the TOML path, the value and the reason; all errors of
%% the document are collected and raised together as
%% `{config_error, "Could not read the TOML configuration file", Errors}'.
%%
%% A complete MongooseIM 6.4 file is read; what the stand-in does not model (see
%% mongoose_config_spec) is accepted without validation and left out of the result.
%% For that the stand-in has one option type MongooseIM lacks: `toml', any TOML
%% value, kept as read.
%%
%% Differences from MongooseIM in error reporting: an unexpected key and a key
%% rejected by `validate_keys' are reported at the key's own path (MongooseIM
%% reports them at the enclosing section), and type mismatches carry
%% `reason => wrong_type' instead of a `function_clause'.
-module(mongoose_config_parser).

-include("mongoose_config_spec.hrl").

-export([parse_file/1, process/1]).

-type path() :: [binary() | item | {host, binary()}]. % reversed: innermost first
-type option_type() :: boolean | binary | string | atom | int_or_infinity | int_or_atom
                     | integer | float | toml.
-type config_key() :: atom() | {atom(), global | binary()}.
-type config_error() :: #{class := error | throw | exit, what := atom(), text := string(),
                          atom() => term()}.
-export_type([path/0, option_type/0, config_key/0, config_error/0]).

%% What a node gives its parent: a list of wrapped items, or errors.
-type result() :: {ok, [term()]} | {error, [config_error()]}.
-type spec() :: #section{} | #list{} | #option{}.
-type step() :: parse | validate | format_items | process | wrap.

-define(CONFIG_ERROR(Errors), {config_error, "Could not read the TOML configuration file", Errors}).

%% @doc Reads, parses and processes a TOML file; raises
%% `error({config_error, Text, [ErrorMap]})' on any problem.
-spec parse_file(file:filename_all()) -> [{config_key(), term()}].
parse_file(FileName) ->
    case toml2term:parse_file(FileName) of
        {ok, Toml} ->
            process(Toml);
        {error, {toml_error, Message}} ->
            error(?CONFIG_ERROR([#{class => error, what => toml_parsing_failed,
                                   text => unicode:characters_to_list(Message),
                                   file => FileName}]));
        {error, Reason} ->
            error(?CONFIG_ERROR([#{class => error, what => toml_reading_failed,
                                   text => "Could not run the TOML reader",
                                   file => FileName, reason => Reason}]))
    end.

%% @doc Processes an already parsed TOML document (binary keys, binary strings).
-spec process(toml2term:toml_map()) -> [{config_key(), term()}].
process(Toml) ->
    case handle([], Toml, mongoose_config_spec:root()) of
        {ok, Items} ->
            case post_process(Items) of
                {ok, Opts} -> Opts;
                {error, Errors} -> error(?CONFIG_ERROR(Errors))
            end;
        {error, Errors} ->
            error(?CONFIG_ERROR(Errors))
    end.

%% Node handling

-spec handle(path(), term(), spec()) -> result().
handle(Path, Value, #option{} = Spec) ->
    run_steps([parse, validate, process, wrap], Path, Value, Value, Spec);
handle(Path, Value, Spec) ->
    run_steps([parse, validate, format_items, process, wrap], Path, Value, Value, Spec).

-spec run_steps([step()], path(), term(), term(), spec()) -> result().
run_steps([], _Path, _Original, Items, _Spec) ->
    {ok, Items};
run_steps([Step | Steps], Path, Original, Current, Spec) ->
    try step(Step, Path, Current, Spec) of
        {nested_errors, Errors} -> {error, Errors};
        {value, Next} -> run_steps(Steps, Path, Original, Next, Spec)
    catch
        Class:Reason:Stacktrace ->
            {error, [node_error(Step, Path, Original, Class, Reason, Stacktrace)]}
    end.

-spec step(step(), path(), term(), spec()) -> {value, term()} | {nested_errors, [config_error()]}.
step(parse, Path, Value, Spec) ->
    case parse(Path, Value, Spec) of
        {ok, Parsed} -> {value, Parsed};
        {error, Errors} -> {nested_errors, Errors}
    end;
step(validate, _Path, Value, Spec) ->
    validate(Value, Spec),
    {value, Value};
step(format_items, _Path, Items, Spec) ->
    {value, format_items(Items, format_of(Spec))};
step(process, Path, Value, Spec) ->
    {value, process_value(Path, Value, process_of(Spec))};
step(wrap, Path, Value, Spec) ->
    {value, wrap(Path, Value, wrap_of(Spec))}.

%% parse

-spec parse(path(), term(), spec()) -> {ok, term()} | {error, [config_error()]}.
parse(Path, Value, #section{} = Spec) when is_map(Value) ->
    parse_section(Path, Value, Spec);
parse(_Path, _Value, #section{}) ->
    error(#{what => wrong_type, expected => table});
parse(Path, Value, #list{items = ItemSpec}) when is_list(Value) ->
    collect([handle([item_key(Path, Item) | Path], Item, ItemSpec) || Item <- Value]);
parse(_Path, _Value, #list{}) ->
    error(#{what => wrong_type, expected => array});
parse(_Path, Value, #option{type = toml}) ->
    {ok, Value};
parse(_Path, Value, #option{}) when is_list(Value); is_map(Value) ->
    error(#{what => wrong_type, expected => value});
parse(_Path, Value, #option{type = Type}) ->
    {ok, convert(Value, Type)}.

parse_section(Path, Toml, #section{items = Items, validate_keys = KeyValidator,
                                   required = Required, defaults = Defaults}) ->
    check_required_keys(required_keys(Required, Items), Toml),
    %% Sections with `include = always' are processed as if given empty, so their
    %% own defaults get filled in.
    Always = maps:from_list([{Key, #{}} || {Key, #section{include = always}} <- maps:to_list(Items),
                                            is_binary(Key), not is_map_key(Key, Toml)]),
    Present = maps:merge(Toml, Always),
    Handled = [{Key, handle_key(Path, Key, Value, Items, KeyValidator)}
               || {Key, Value} <- maps:to_list(Present)],
    %% Defaults are final values: only wrapped, never parsed, validated or processed.
    Defaulted = [{Key, handle_default([Key | Path], Value, spec_for_key(Key, Items))}
                 || {Key, Value} <- maps:to_list(Defaults), not is_map_key(Key, Present)],
    collect([Result || {_Key, Result} <- lists:keysort(1, Handled ++ Defaulted)]).

required_keys(all, Items) -> lists:sort([Key || Key <- maps:keys(Items), is_binary(Key)]);
required_keys(Keys, _Items) -> Keys.

check_required_keys(Required, Toml) ->
    case [Key || Key <- Required, not is_map_key(Key, Toml)] of
        [] -> ok;
        Missing -> error(#{what => missing_mandatory_keys, missing_keys => Missing})
    end.

handle_key(Path, Key, Value, Items, KeyValidator) ->
    KeyPath = [Key | Path],
    try
        validate_key(Key, KeyValidator),
        spec_for_key(Key, Items)
    of
        Spec -> handle(KeyPath, Value, Spec)
    catch
        Class:Reason:Stacktrace ->
            {error, [node_error(parse, KeyPath, Value, Class, Reason, Stacktrace)]}
    end.

validate_key(_Key, any) -> ok;
validate_key(Key, Validator) -> mongoose_config_validator:validate(binary_to_atom(Key), atom, Validator).

spec_for_key(Key, Items) ->
    case Items of
        #{Key := Spec} -> Spec;
        #{default := Spec} -> Spec;
        #{} -> error(#{what => unexpected_key, key => Key})
    end.

handle_default(Path, Value, Spec) ->
    try
        {ok, wrap(Path, Value, wrap_of(Spec))}
    catch
        Class:Reason:Stacktrace ->
            {error, [node_error(wrap, Path, Value, Class, Reason, Stacktrace)]}
    end.

%% host_config items are named by their host in the path, so that host_config wraps
%% (and pool scopes) know which host they belong to.
item_key([<<"host_config">>], #{<<"host_type">> := Host} = Item) when not is_map_key(<<"host">>, Item) ->
    {host, Host};
item_key([<<"host_config">>], #{<<"host">> := Host} = Item) when not is_map_key(<<"host_type">>, Item) ->
    {host, Host};
item_key(_Path, _Item) ->
    item.

-spec collect([result()]) -> {ok, [term()]} | {error, [config_error()]}.
collect(Results) ->
    case [Errors || {error, Errors} <- Results] of
        [] -> {ok, lists:append([Items || {ok, Items} <- Results])};
        Errors -> {error, lists:append(Errors)}
    end.

convert(V, boolean) when is_boolean(V) -> V;
convert(V, binary) when is_binary(V) -> V;
convert(V, string) when is_binary(V) -> unicode:characters_to_list(V);
convert(V, atom) when is_binary(V) -> binary_to_atom(V);
convert(<<"infinity">>, int_or_infinity) -> infinity;
convert(V, int_or_infinity) when is_integer(V) -> V;
convert(V, int_or_atom) when is_integer(V) -> V;
convert(V, int_or_atom) when is_binary(V) -> binary_to_atom(V);
convert(V, integer) when is_integer(V) -> V;
convert(V, float) when is_float(V) -> V;
convert(_V, Type) -> error(#{what => wrong_type, expected => Type}).

%% validate

validate(Value, #option{type = Type, validate = Validator}) ->
    mongoose_config_validator:validate(Value, Type, Validator);
validate(Items, #list{validate = Validator}) ->
    mongoose_config_validator:validate_list(Validator, Items);
validate(Items, #section{validate = Validator}) ->
    mongoose_config_validator:validate_section(Validator, Items).

%% format_items

format_of(#section{format_items = Format}) -> Format;
format_of(#list{format_items = Format}) -> Format.

format_items(Items, map) ->
    Keys = [Key || {Key, _} <- Items],
    case Keys -- lists:usort(Keys) of
        [] -> maps:from_list(Items);
        Duplicates -> error(#{what => duplicate_keys, keys => lists:usort(Duplicates)})
    end;
format_items(Items, list) ->
    Items.

%% process

process_of(#section{process = P}) -> P;
process_of(#list{process = P}) -> P;
process_of(#option{process = P}) -> P.

process_value(Path, Value, Funs) when is_list(Funs) ->
    lists:foldl(fun(Fun, Acc) -> process_value(Path, Acc, Fun) end, Value, Funs);
process_value(_Path, Value, Fun) when is_function(Fun, 1) ->
    Fun(Value);
process_value(Path, Value, Fun) when is_function(Fun, 2) ->
    Fun(Path, Value).

%% wrap

wrap_of(#section{wrap = Wrap}) -> Wrap;
wrap_of(#list{wrap = Wrap}) -> Wrap;
wrap_of(#option{wrap = Wrap}) -> Wrap.

wrap([Key | _], Value, default) when is_binary(Key) -> [{binary_to_atom(Key), Value}];
wrap(_Path, Value, default) -> [Value]; % list items
wrap(_Path, Value, item) -> [Value];
wrap(_Path, _Value, remove) -> [];
wrap(_Path, Value, none) when is_list(Value) -> Value;
wrap([Key | _] = Path, Value, global_config) ->
    case host_of(Path) of
        global -> [{binary_to_atom(Key), Value}];
        Host -> error(#{what => global_option_in_host_config, host => Host})
    end;
wrap([Key | _] = Path, Value, host_config) ->
    [{{binary_to_atom(Key), host_of(Path)}, Value}].

host_of(Path) ->
    case [Host || {host, Host} <- Path] of
        [Host] -> Host;
        [] -> global
    end.

%% errors

node_error(Step, Path, Value, Class, Reason, Stacktrace) ->
    Error = #{class => Class, what => toml_processing_failed,
              text => "TOML configuration error: " ++ step_text(Step),
              toml_path => path_to_string(Path), toml_value => Value,
              reason => Reason, stacktrace => Stacktrace},
    merge_reason(Error, Reason).

%% A reason map `#{what := W, ...}' becomes `reason => W' plus its other fields.
merge_reason(Error, #{what := What} = Reason) ->
    maps:merge(maps:remove(what, Reason), Error#{reason := What});
merge_reason(Error, _Reason) ->
    Error.

step_text(parse) -> "Malformed node";
step_text(validate) -> "Invalid node value";
step_text(format_items) -> "List or section has invalid key-value pairs";
step_text(process) -> "Node could not be processed";
step_text(wrap) -> "Node could not be wrapped in a config option".

path_to_string(Path) ->
    string:join([binary_to_list(Key) || Key <- lists:reverse(Path), is_binary(Key)], ".").

%% Post-processing: per-host options

-spec post_process([{config_key(), term()}]) -> {ok, [{config_key(), term()}]} | {error, [config_error()]}.
post_process(Items) ->
    Hosts = proplists:get_value(hosts, Items),
    HostTypes = proplists:get_value(host_types, Items),
    AllHostTypes = Hosts ++ HostTypes,
    HostKeys = [Key || {{_, Host} = Key, _} <- Items, Host =/= global],
    Errors = [post_error("host_config", unknown_host_in_host_config, #{host => Host})
              || {_, Host} <- HostKeys, not lists:member(Host, AllHostTypes)]
        ++ [post_error("host_config", duplicate_host_config, #{host => Host, option => Opt})
            || {Opt, Host} <- lists:usort(HostKeys -- lists:usort(HostKeys))],
    case Errors of
        [] -> per_host_type(stored(Items), Hosts, HostTypes);
        _ -> {error, Errors}
    end.

per_host_type(Items, Hosts, HostTypes) ->
    GlobalModules = proplists:get_value({modules, global}, Items),
    Modules = [modules_for_host_type(HT, lists:member(HT, HostTypes), GlobalModules, Items)
               || HT <- Hosts ++ HostTypes],
    case [Error || {error, Error} <- Modules] of
        [] ->
            %% unresolved module maps (global and host_config) are replaced
            Other = [Item || {Key, _} = Item <- Items, not is_modules_key(Key)],
            {ok, lists:keysort(1, Other ++ [Opt || {ok, Opt} <- Modules])};
        Errors ->
            {error, lists:append(Errors)}
    end.

%% The options of `general' that are only validated (see mongoose_config_spec).
stored(Items) ->
    NotStored = mongoose_config_spec:general_options_not_stored(),
    [Item || {Key, _} = Item <- Items, not lists:member(option_name(Key), NotStored)].

option_name({Name, _HostOrGlobal}) -> Name;
option_name(Name) -> Name.

is_modules_key({modules, _}) -> true;
is_modules_key(_) -> false.

%% A host_config modules section replaces the global one for its host; deps are
%% resolved per host type as MongooseIM does it when it processes the config.
modules_for_host_type(HT, IsDynamic, GlobalModules, Items) ->
    {TomlPath, Configured} = case lists:keyfind({modules, HT}, 1, Items) of
                                 {_, HostModules} -> {"host_config.modules", HostModules};
                                 false -> {"modules", GlobalModules}
                             end,
    try gen_mod_deps:resolve_deps(HT, Configured) of
        Resolved ->
            case [M || IsDynamic, M <- lists:sort(maps:keys(Resolved)), not supports_dynamic_domains(M)] of
                [] ->
                    {ok, {{modules, HT}, Resolved}};
                Unsupported ->
                    {error, [post_error(TomlPath ++ "." ++ atom_to_list(M), dynamic_domains_not_supported,
                                        #{module => M, host_type => HT}) || M <- Unsupported]}
            end
    catch
        Class:Reason:Stacktrace ->
            Error = #{class => Class, what => toml_processing_failed,
                      text => "TOML configuration error: Module dependencies could not be resolved",
                      toml_path => TomlPath, host_type => HT, reason => Reason,
                      stacktrace => Stacktrace},
            {error, [merge_reason(Error, Reason)]}
    end.

%% A module may run for a dynamic host type only if it says it supports them.
supports_dynamic_domains(Module) ->
    code:ensure_loaded(Module) =:= {module, Module}
        andalso erlang:function_exported(Module, supported_features, 0)
        andalso lists:member(dynamic_domains, Module:supported_features()).

post_error(TomlPath, Reason, Extra) ->
    Extra#{class => error, what => toml_processing_failed,
           text => "TOML configuration error: Invalid configuration",
           toml_path => TomlPath, reason => Reason}.
