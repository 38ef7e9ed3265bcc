%% @doc Stand-in for MongooseIM's config validators (the subset the event pusher
%% and the stand-in's root spec use), with MongooseIM 6.4's names and failures:
%% what MongooseIM checks with a guard fails the same way here (`function_clause',
%% e.g. `positive' given 0, `non_empty' given ""), and the named failures raise
%% MongooseIM's maps (`validate_enum_failed', `module_not_found',
%% `validate_domain_failed', `validate_subdomain_template_failed',
%% `invalid_filename'); a list that must be unique fails with `{badmatch, Length}'.
%% The parser reports a map's `what' as the error's `reason', any other reason as
%% it is.
%%
%% Differences from MongooseIM: domains are not resolved in DNS (MongooseIM only
%% warns when they do not resolve); validators that exist only here: a fun, and
%% `{mongooseim_module, Prefix, Names}' for MongooseIM's `{module, Prefix}' on its
%% own backends (e.g. sm_backend), which the stand-in does not have: the Names are
%% accepted, anything else fails as MongooseIM's `module_not_found'; a validator that
%% does not apply to the option's type raises `unknown_validator' (MongooseIM: a
%% `function_clause' for every value).
-module(mongoose_config_validator).

-export([validate/3, validate_section/2, validate_list/2]).

-type validator() :: any | non_empty | positive | non_negative | module | {module, atom()}
                   | pool_name | subdomain_template | domain | port | filename | loglevel
                   | {enum, [term()]} | {mongooseim_module, atom(), [atom()]}
                   | fun((term()) -> term()).
-type list_validator() :: any | non_empty | unique | unique_non_empty | fun(([term()]) -> term()).
-type section_validator() :: any | non_empty | fun(([term()]) -> term()).
-export_type([validator/0, list_validator/0, section_validator/0]).

%% @doc Validates a parsed option value of the given type.
-spec validate(term(), mongoose_config_parser:option_type(), validator()) -> ok.
validate(_V, _Type, any) -> ok;
validate(V, binary, non_empty) -> validate_non_empty_binary(V);
validate(V, string, non_empty) -> validate_non_empty_string(V);
validate(V, atom, non_empty) -> validate_non_empty_atom(V);
validate(V, integer, positive) -> validate_positive_integer(V);
validate(V, int_or_infinity, positive) -> validate_positive_integer_or_infinity(V);
validate(V, integer, non_negative) -> validate_non_negative_integer(V);
validate(V, int_or_infinity, non_negative) -> validate_non_negative_integer_or_infinity(V);
validate(V, integer, port) -> validate_port(V);
validate(V, atom, module) -> validate_module(V);
validate(V, atom, {module, Prefix}) ->
    %% e.g. backend = "rdbms" needs mod_event_pusher_push_rdbms; the value stays rdbms
    validate_module(list_to_atom(atom_to_list(Prefix) ++ "_" ++ atom_to_list(V)));
validate(V, binary, {module, Prefix}) ->
    validate_module(list_to_atom(atom_to_list(Prefix) ++ "_" ++ binary_to_list(V)));
validate(V, atom, {mongooseim_module, Prefix, Names}) ->
    case lists:member(V, Names) of
        true -> ok;
        false -> error(#{what => module_not_found,
                         module => list_to_atom(atom_to_list(Prefix) ++ "_" ++ atom_to_list(V)),
                         reason => {error, nofile}})
    end;
validate(V, atom, pool_name) -> validate_non_empty_atom(V);
validate(V, atom, loglevel) -> validate_loglevel(V);
validate(V, Type, subdomain_template) when Type =:= string; Type =:= binary ->
    validate_subdomain_template(V);
validate(V, Type, domain) when Type =:= string; Type =:= binary -> validate_domain(V);
validate(V, string, filename) -> validate_filename(V);
validate(V, _Type, {enum, Values}) -> validate_enum(V, Values);
validate(V, _Type, Fun) when is_function(Fun, 1) -> Fun(V), ok;
validate(V, Type, Validator) ->
    error(#{what => unknown_validator, validator => Validator, type => Type, value => V}).

%% @doc Validates the list of a section's processed items (before format_items).
-spec validate_section(section_validator(), [term()]) -> ok.
validate_section(any, Items) when is_list(Items) -> ok;
validate_section(non_empty, [_ | _]) -> ok;
validate_section(Fun, Items) when is_function(Fun, 1) -> Fun(Items), ok.

%% @doc Validates the processed items of a list.
-spec validate_list(list_validator(), [term()]) -> ok.
validate_list(any, Items) when is_list(Items) -> ok;
validate_list(non_empty, [_ | _]) -> ok;
validate_list(unique, Items) -> validate_unique_items(Items);
validate_list(unique_non_empty, [_ | _] = Items) -> validate_unique_items(Items);
validate_list(Fun, Items) when is_function(Fun, 1) -> Fun(Items), ok.

%% Internal: MongooseIM's checks

validate_non_empty_binary(V) when is_binary(V), V =/= <<>> -> ok.

validate_non_empty_string(V) when is_list(V), V =/= "" -> ok.

validate_non_empty_atom(V) when is_atom(V), V =/= '' -> ok.

validate_positive_integer(V) when is_integer(V), V > 0 -> ok.

validate_non_negative_integer(V) when is_integer(V), V >= 0 -> ok.

validate_positive_integer_or_infinity(V) when is_integer(V), V > 0 -> ok;
validate_positive_integer_or_infinity(infinity) -> ok.

validate_non_negative_integer_or_infinity(V) when is_integer(V), V >= 0 -> ok;
validate_non_negative_integer_or_infinity(infinity) -> ok.

validate_port(V) when is_integer(V), V >= 0, V =< 65535 -> ok.

%% mongoose_logs:loglevel_keyword_to_number/1 has a clause for each of these.
validate_loglevel(Level) when Level =:= none; Level =:= emergency; Level =:= alert;
                              Level =:= critical; Level =:= error; Level =:= warning;
                              Level =:= notice; Level =:= info; Level =:= debug;
                              Level =:= all -> ok.

validate_unique_items(Items) ->
    L = sets:size(sets:from_list(Items)),
    L = length(Items),
    ok.

validate_module(Module) ->
    case code:ensure_loaded(Module) of
        {module, _} -> ok;
        Other -> error(#{what => module_not_found, module => Module, reason => Other})
    end.

validate_enum(Value, Values) ->
    case lists:member(Value, Values) of
        true -> ok;
        false -> error(#{what => validate_enum_failed, value => Value, allowed_values => Values})
    end.

%% The template must give a valid domain, like MongooseIM checks it with
%% "example.com" for @HOST@.
validate_subdomain_template(Template) ->
    case mongoose_subdomain_utils:make_subdomain_pattern(Template) of
        {fqdn, Domain} ->
            validate_domain(Domain);
        Pattern ->
            Domain = binary_to_list(mongoose_subdomain_utils:get_fqdn(Pattern, <<"example.com">>)),
            case inet_parse:domain(Domain) of
                true -> ok;
                false -> error(#{what => validate_subdomain_template_failed,
                                 text => <<"Invalid subdomain template">>,
                                 subdomain_template => Template})
            end
    end.

validate_domain(Domain) when is_binary(Domain) ->
    validate_domain(binary_to_list(Domain));
validate_domain(Domain) ->
    case inet_parse:domain(Domain) of
        true -> ok;
        false -> error(#{what => validate_domain_failed, text => <<"Invalid domain name">>,
                         domain => Domain})
    end.

validate_filename(Name) ->
    case file:read_file_info(Name) of
        {ok, _} -> ok;
        Reason -> error(#{what => invalid_filename, filename => Name, reason => Reason})
    end.
