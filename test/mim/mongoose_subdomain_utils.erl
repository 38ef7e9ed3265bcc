%% @doc Stand-in for MongooseIM's mongoose_subdomain_utils (subdomain templates
%% such as "pubsub.@HOST@").
-module(mongoose_subdomain_utils).

-export([make_subdomain_pattern/1, is_subdomain/3, get_fqdn/2]).

-type subdomain_pattern() :: {fqdn, binary()} | {prefix, binary()}.
-export_type([subdomain_pattern/0]).

-define(PLACEHOLDER, ".@HOST@").

%% @doc "pubsub.@HOST@" -> `{prefix, <<"pubsub.">>}'; anything else is taken
%% literally as a fully qualified domain name.
-spec make_subdomain_pattern(string() | binary()) -> subdomain_pattern().
make_subdomain_pattern(Template) when is_list(Template) ->
    make_subdomain_pattern(unicode:characters_to_binary(Template));
make_subdomain_pattern(Template) when is_binary(Template) ->
    Suffix = <<?PLACEHOLDER>>,
    PrefixSize = byte_size(Template) - byte_size(Suffix),
    case Template of
        <<Prefix:PrefixSize/binary, Suffix/binary>> when PrefixSize > 0 ->
            {prefix, <<Prefix/binary, ".">>};
        _ ->
            {fqdn, Template}
    end.

%% @doc Whether `Subdomain' is what the pattern gives for `Domain'.
-spec is_subdomain(subdomain_pattern(), Domain :: binary(), Subdomain :: binary()) -> boolean().
is_subdomain({fqdn, Fqdn}, _Domain, Subdomain) ->
    Fqdn =:= Subdomain;
is_subdomain({prefix, Prefix}, Domain, Subdomain) ->
    Subdomain =:= <<Prefix/binary, Domain/binary>>.

%% @doc The subdomain the pattern gives for `Domain'.
-spec get_fqdn(subdomain_pattern(), Domain :: binary()) -> binary().
get_fqdn({fqdn, Fqdn}, _Domain) -> Fqdn;
get_fqdn({prefix, Prefix}, Domain) -> <<Prefix/binary, Domain/binary>>.
