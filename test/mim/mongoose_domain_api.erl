%% Stand-in for MongooseIM's mongoose_domain_api: which host type a domain belongs
%% to. Static domains are the `hosts' option (each its own host type); dynamic
%% domains are added at run time to a host type of `host_types' with insert_domain/2,
%% as MongooseIM's domain API (backed there by its database) does. The dynamic ones
%% live in the configuration, so they go with it when the stand-in stops.
-module(mongoose_domain_api).

-export([get_host_type/1, insert_domain/2, delete_domain/2]).

%% @doc The host type of a local domain; `{error, not_found}' for any other domain
%% (a remote server, an external component).
-spec get_host_type(jid:lserver()) -> {ok, binary()} | {error, not_found}.
get_host_type(Domain) ->
    case is_static(Domain) of
        true -> {ok, Domain};
        false ->
            case mongoose_config:lookup_opt({domain_host_type, Domain}) of
                {ok, HostType} -> {ok, HostType};
                {error, not_found} -> {error, not_found}
            end
    end.

%% @doc Adds a dynamic domain to a host type of `host_types'.
-spec insert_domain(jid:lserver(), binary()) ->
          ok | {error, duplicate | static | unknown_host_type}.
insert_domain(Domain, HostType) ->
    IsStatic = is_static(Domain),
    case {get_host_type(Domain), lists:member(HostType, mongoose_config:get_opt(host_types, []))} of
        _ when IsStatic -> {error, static};
        {{ok, _}, _} -> {error, duplicate};
        {_, false} -> {error, unknown_host_type};
        {_, true} -> mongoose_config:set_opt({domain_host_type, Domain}, HostType)
    end.

%% @doc Removes a dynamic domain of that host type.
-spec delete_domain(jid:lserver(), binary()) -> ok | {error, not_found | static | wrong_host_type}.
delete_domain(Domain, HostType) ->
    IsStatic = is_static(Domain),
    case get_host_type(Domain) of
        _ when IsStatic -> {error, static};
        {error, not_found} -> {error, not_found};
        {ok, HostType} -> mongoose_config:unset_opt({domain_host_type, Domain});
        {ok, _} -> {error, wrong_host_type}
    end.

-spec is_static(jid:lserver()) -> boolean().
is_static(Domain) ->
    lists:member(Domain, mongoose_config:get_opt(hosts, [])).
