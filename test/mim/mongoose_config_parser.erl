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
%% Errors are MongooseIM 6.4's (mongoose_config_parser_toml): an unexpected key, a key
%% rejected by `validate_keys' and missing required keys are reported at the enclosing
%% section, which then reports nothing else; a value of the wrong type fails its
%% conversion as in MongooseIM (`function_clause', or `badarg' for a string or atom
%% option given no string), an option given a table or array and a section or list
%% given a value fail with `{case_clause, Spec}'; a global option in host_config fails
%% its wrap with `{badmatch, Host}'. Post-processing is MongooseIM's build_state: a
%% host_config option of a host that is neither in `hosts' nor in `host_types' is
%% dropped when a global value exists (modules always have one), a later host_config
%% value of the same host wins. A TOML syntax error is
%% `#{what => toml_parsing_failed, text}' (the text is our reader's, not tomerl's).
%% Differences: module dependencies that cannot be resolved are reported as a
%% config error (MongooseIM raises gen_mod_deps' error as it is).
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
    case tomerl:read_file(FileName) of
        {ok, Toml} ->
            process(Toml);
        {error, {toml_error, Message}} ->
            error(?CONFIG_ERROR([#{what => toml_parsing_failed,
                                   text => unicode:characters_to_list(Message)}]));
        {error, Reason} ->
            error(?CONFIG_ERROR([#{class => error, what => toml_reading_failed,
                                   text => "Could not run the TOML reader",
                                   file => FileName, reason => Reason}]))
    end.

%% @doc Processes an already parsed TOML document (binary keys, binary strings).
-spec process(tomerl:toml_map()) -> [{config_key(), term()}].
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
parse(Path, Value, #list{items = ItemSpec}) when is_list(Value) ->
    collect([handle([item_key(Path, Item) | Path], Item, ItemSpec) || Item <- Value]);
parse(_Path, Value, #option{type = toml}) ->
    {ok, Value};
parse(_Path, Value, #option{type = Type}) when not is_list(Value), not is_map(Value) ->
    {ok, convert(Value, Type)};
parse(_Path, _Value, Spec) ->
    %% MongooseIM's `case Spec of' has no clause for this value
    error({case_clause, Spec}).

%% As MongooseIM: required keys, then each key's name (`validate_keys'), then each key
%% (in key order) must have a spec: the first failure fails the whole section.
parse_section(Path, Toml, #section{items = Items, validate_keys = KeyValidator,
                                   required = Required, defaults = Defaults}) ->
    check_required_keys(required_keys(Required, Items), Toml),
    [validate_key(Key, KeyValidator) || Key <- lists:sort(maps:keys(Toml))],
    %% Sections with `include = always' are processed as if given empty, so their
    %% own defaults get filled in.
    Always = maps:from_list([{Key, #{}} || {Key, #section{include = always}} <- maps:to_list(Items),
                                            is_binary(Key), not is_map_key(Key, Toml)]),
    Present = maps:merge(Always, Toml),
    Specs = [{Key, Value, spec_for_key(Key, Items)} || {Key, Value} <- lists:sort(maps:to_list(Present))],
    Handled = [{Key, handle([Key | Path], Value, Spec)} || {Key, Value, Spec} <- Specs],
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

validate_key(_Key, any) -> ok;
validate_key(Key, Validator) -> mongoose_config_validator:validate(binary_to_atom(Key), atom, Validator).

spec_for_key(Key, Items) ->
    case Items of
        #{Key := Spec} -> Spec;
        #{default := Spec} -> Spec;
        #{} -> error(#{what => unexpected_key, key => Key, items => Items})
    end.

handle_default(Path, Value, Spec) ->
    try
        {ok, wrap(Path, Value, wrap_of(Spec))}
    catch
        Class:Reason:Stacktrace ->
            {error, [node_error(wrap, Path, Value, Class, Reason, Stacktrace)]}
    end.

%% host_config items are named by their host in the path, so that host_config wraps
%% (and pool scopes) know which host they belong to; as in MongooseIM, `host_type'
%% wins over `host', and a table with neither is a plain item (its options are global).
item_key([<<"host_config">>], #{<<"host_type">> := Host}) ->
    {host, Host};
item_key([<<"host_config">>], #{<<"host">> := Host}) ->
    {host, Host};
item_key(_Path, _Item) ->
    item.

-spec collect([result()]) -> {ok, [term()]} | {error, [config_error()]}.
collect(Results) ->
    case [Errors || {error, Errors} <- Results] of
        [] -> {ok, lists:append([Items || {ok, Items} <- Results])};
        Errors -> {error, lists:append(Errors)}
    end.

%% MongooseIM's clauses: a value of another type fails with function_clause, or with
%% badarg where a string or atom is made of it. A string is the UTF-8 bytes.
convert(V, boolean) when is_boolean(V) -> V;
convert(V, binary) when is_binary(V) -> V;
convert(V, string) -> binary_to_list(V);
convert(V, atom) -> binary_to_atom(V, utf8);
convert(<<"infinity">>, int_or_infinity) -> infinity;
convert(V, int_or_infinity) when is_integer(V) -> V;
convert(V, int_or_atom) when is_integer(V) -> V;
convert(V, int_or_atom) -> binary_to_atom(V, utf8);
convert(V, integer) when is_integer(V) -> V;
convert(V, float) when is_float(V) -> V.

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
    ok = mongoose_config_validator:validate_list(unique, [Key || {Key, _} <- Items]),
    maps:from_list(Items);
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
    global = host_of(Path),
    [{binary_to_atom(Key), Value}];
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

%% As MongooseIM: a reason map `#{what := W, ...}' becomes `reason => W' plus its other
%% fields, which win over the basic ones (e.g. a validator's own `text').
merge_reason(Error, #{what := What} = Reason) ->
    maps:merge(Error, maps:remove(what, Reason#{reason => What}));
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

%% MongooseIM's build_state/3: host-type options unfolded, then module deps resolved.
-spec post_process([{config_key(), term()}]) -> {ok, [{config_key(), term()}]} | {error, [config_error()]}.
post_process(Items) ->
    Hosts = proplists:get_value(hosts, Items),
    HostTypes = proplists:get_value(host_types, Items),
    Unfolded = unfold_globals(stored(Items), Hosts ++ HostTypes),
    Resolved = [resolve_module_deps(Item) || Item <- Unfolded],
    case [Error || {error, Error} <- Resolved] of
        [] -> {ok, lists:keysort(1, [Item || {ok, Item} <- Resolved])};
        Errors -> {error, lists:append(Errors)}
    end.

%% MongooseIM's unfold_globals/1: an option of host types with a global value is given
%% to every host type (its own value, else the global one; values of unknown hosts
%% are dropped); one without a global value keeps its host types as they are. Of two
%% values for the same option and host type, the later wins.
unfold_globals(Items, AllHostTypes) ->
    {HostTypeItems, Simple} = lists:partition(fun({Key, _}) -> is_tuple(Key) end, Items),
    Grouped = lists:foldl(fun({{Key, HT}, Value}, Acc) ->
                                  maps:update_with(Key, fun(ByHT) -> ByHT#{HT => Value} end,
                                                   #{HT => Value}, Acc)
                          end, #{}, HostTypeItems),
    Simple ++ lists:append([merge_opts(Key, ByHT, AllHostTypes)
                            || {Key, ByHT} <- maps:to_list(Grouped)]).

%% (acl and access, whose global values MongooseIM keeps and merges, are not modelled)
merge_opts(Key, #{global := Global} = ByHT, AllHostTypes) ->
    [{{Key, HT}, maps:get(HT, ByHT, Global)} || HT <- AllHostTypes];
merge_opts(Key, ByHT, _AllHostTypes) ->
    [{{Key, HT}, Value} || {HT, Value} <- maps:to_list(ByHT)].

%% The options of `general' that are only validated (see mongoose_config_spec).
stored(Items) ->
    NotStored = mongoose_config_spec:general_options_not_stored(),
    [Item || {Key, _} = Item <- Items, not lists:member(option_name(Key), NotStored)].

option_name({Name, _HostOrGlobal}) -> Name;
option_name(Name) -> Name.

%% Deps are resolved per host type as MongooseIM does it when it processes the config.
resolve_module_deps({{modules, HT}, Configured}) ->
    try gen_mod_deps:resolve_deps(HT, Configured) of
        Resolved -> {ok, {{modules, HT}, Resolved}}
    catch
        Class:Reason:Stacktrace ->
            Error = #{class => Class, what => toml_processing_failed,
                      text => "TOML configuration error: Module dependencies could not be resolved",
                      toml_path => "modules", host_type => HT, reason => Reason,
                      stacktrace => Stacktrace},
            {error, [merge_reason(Error, Reason)]}
    end;
resolve_module_deps(Item) ->
    {ok, Item}.
