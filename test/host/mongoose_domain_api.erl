%% Stand-in for MongooseIM's mongoose_domain_api: which host type a domain belongs
%% to. Only static domains exist here (the `hosts' option, each its own host type):
%% the event pusher modules do not support dynamic domains (MIM_API.md).
-module(mongoose_domain_api).

-export([get_host_type/1]).

%% @doc The host type of a local domain; `{error, not_found}' for any other domain
%% (a remote server, an external component, a subdomain).
-spec get_host_type(jid:lserver()) -> {ok, binary()} | {error, not_found}.
get_host_type(Domain) ->
    case lists:member(Domain, mongoose_config:get_opt(hosts, [])) of
        true -> {ok, Domain};
        false -> {error, not_found}
    end.
