%% @doc Stand-in for MongooseIM's config validators (the subset the event pusher
%% and the stand-in's root spec use), with MongooseIM's names.
%%
%% A failed validation raises an error map whose `what' the parser reports as the
%% error's `reason' (its other fields are copied into the error), so every message
%% says which rule failed, e.g. `#{what => validation_failed, validator => positive}'.
-module(mongoose_config_validator).

-export([validate/3, validate_section/2, validate_list/2, validate_domain/1]).

-type validator() :: any | non_empty | positive | non_negative | module | {module, atom()}
                   | pool_name | subdomain_template | domain | port | filename | {enum, [term()]}
                   | fun((term()) -> term()).
-type list_validator() :: any | non_empty | unique | unique_non_empty | fun(([term()]) -> term()).
-type section_validator() :: any | non_empty | fun(([term()]) -> term()).
-export_type([validator/0, list_validator/0, section_validator/0]).

%% @doc Validates a parsed option value of the given type.
-spec validate(term(), mongoose_config_parser:option_type(), validator()) -> ok.
validate(_V, _Type, any) -> ok;
validate(V, Type, non_empty) -> check(is_non_empty(V, Type), V, non_empty);
validate(V, integer, positive) -> check(is_integer(V) andalso V > 0, V, positive);
validate(V, int_or_infinity, positive) ->
    check(V =:= infinity orelse (is_integer(V) andalso V > 0), V, positive);
validate(V, integer, non_negative) -> check(is_integer(V) andalso V >= 0, V, non_negative);
validate(V, int_or_infinity, non_negative) ->
    check(V =:= infinity orelse (is_integer(V) andalso V >= 0), V, non_negative);
validate(V, atom, module) -> ensure_module(V);
validate(V, atom, {module, Prefix}) ->
    %% e.g. backend = "rdbms" needs mod_event_pusher_push_rdbms; the value stays rdbms
    ensure_module(list_to_atom(atom_to_list(Prefix) ++ "_" ++ atom_to_list(V)));
validate(V, atom, pool_name) -> check(V =/= '', V, pool_name);
validate(V, Type, subdomain_template) when Type =:= string; Type =:= binary ->
    validate_subdomain_template(V);
validate(V, Type, domain) when Type =:= string; Type =:= binary ->
    check(validate_domain(unicode:characters_to_binary(V)) =:= ok, V, domain);
validate(V, integer, port) -> check(is_integer(V) andalso V >= 0 andalso V =< 65535, V, port);
validate(V, Type, filename) when Type =:= string; Type =:= binary -> validate_filename(V);
validate(V, _Type, {enum, Values}) -> check(lists:member(V, Values), V, {enum, Values});
validate(V, _Type, Fun) when is_function(Fun, 1) -> Fun(V), ok;
validate(V, Type, Validator) ->
    error(#{what => unknown_validator, validator => Validator, type => Type, value => V}).

%% @doc Validates the list of a section's processed items (before format_items).
-spec validate_section(section_validator(), [term()]) -> ok.
validate_section(any, _Items) -> ok;
validate_section(non_empty, Items) -> check(Items =/= [], Items, non_empty);
validate_section(Fun, Items) when is_function(Fun, 1) -> Fun(Items), ok.

%% @doc Validates the processed items of a list.
-spec validate_list(list_validator(), [term()]) -> ok.
validate_list(any, _Items) -> ok;
validate_list(non_empty, Items) -> check(Items =/= [], Items, non_empty);
validate_list(unique, Items) -> check_unique(Items);
validate_list(unique_non_empty, Items) ->
    check(Items =/= [], Items, unique_non_empty),
    check_unique(Items);
validate_list(Fun, Items) when is_function(Fun, 1) -> Fun(Items), ok.

%% @doc A DNS name as MongooseIM accepts it for a domain: dot-separated labels of
%% 1..63 bytes made of letters, digits, `-' and `_' (non-ASCII letters allowed for
%% IDNs), no whitespace, `@' or `/' (those make it a JID, not a domain).
-spec validate_domain(binary()) -> ok | error.
validate_domain(Domain) when byte_size(Domain) > 0, byte_size(Domain) < 1024 ->
    case lists:all(fun is_valid_label/1, binary:split(Domain, <<".">>, [global])) of
        true -> ok;
        false -> error
    end;
validate_domain(_) ->
    error.

%% Internal

check(true, _V, _Validator) -> ok;
check(false, V, Validator) -> error(#{what => validation_failed, validator => Validator, value => V}).

is_non_empty(V, binary) -> V =/= <<>>;
is_non_empty(V, string) -> V =/= "";
is_non_empty(V, atom) -> V =/= '';
is_non_empty(V, _) -> V =/= <<>> andalso V =/= "" andalso V =/= ''.

ensure_module(Module) ->
    case code:ensure_loaded(Module) of
        {module, Module} -> ok;
        {error, LoadError} -> error(#{what => module_not_found, module => Module,
                                      load_error => LoadError})
    end.

check_unique(Items) ->
    case Items -- lists:usort(Items) of
        [] -> ok;
        Duplicates -> error(#{what => validation_failed, validator => unique,
                              duplicates => lists:usort(Duplicates)})
    end.

%% The template must give a valid domain once @HOST@ is replaced, like MongooseIM
%% checks with "example.com". (MongooseIM also warns when an fqdn does not resolve;
%% the stand-in skips DNS so tests stay offline and fast.)
validate_subdomain_template(Template) ->
    Pattern = mongoose_subdomain_utils:make_subdomain_pattern(Template),
    Domain = mongoose_subdomain_utils:get_fqdn(Pattern, <<"example.com">>),
    case validate_domain(Domain) of
        ok -> ok;
        error -> error(#{what => invalid_subdomain_template, template => Template})
    end.

validate_filename(Name) ->
    case file:read_file_info(Name) of
        {ok, _} -> ok;
        {error, FileError} -> error(#{what => invalid_filename, filename => Name,
                                      file_error => FileError})
    end.

is_valid_label(Label) when byte_size(Label) >= 1, byte_size(Label) =< 63 ->
    case unicode:characters_to_list(Label) of
        Chars when is_list(Chars) -> lists:all(fun is_label_char/1, Chars);
        _ -> false
    end;
is_valid_label(_) ->
    false.

is_label_char(C) when C >= $a, C =< $z; C >= $A, C =< $Z; C >= $0, C =< $9 -> true;
is_label_char($-) -> true;
is_label_char($_) -> true;
is_label_char(C) -> C > 127 andalso not is_unicode_space(C).

is_unicode_space(C) -> lists:member(C, [16#A0, 16#1680, 16#2028, 16#2029, 16#202F, 16#205F, 16#3000])
                           orelse (C >= 16#2000 andalso C =< 16#200A).
