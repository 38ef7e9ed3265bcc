%% Stand-in for MongooseIM's mongoose_xmpp_errors: the stanza error elements
%% (RFC 6120 section 8.3) with the legacy `code' attribute, as MongooseIM sends them.
-module(mongoose_xmpp_errors).

-include("exml.hrl").

-export([bad_request/0, not_allowed/0, item_not_found/0, internal_server_error/0,
         service_unavailable/0, feature_not_implemented/0, remote_server_not_found/0]).

-define(NS_STANZAS, <<"urn:ietf:params:xml:ns:xmpp-stanzas">>).

%% @doc 400, modify.
-spec bad_request() -> exml:element().
bad_request() ->
    error_element(<<"400">>, <<"modify">>, <<"bad-request">>).

%% @doc 405, cancel.
-spec not_allowed() -> exml:element().
not_allowed() ->
    error_element(<<"405">>, <<"cancel">>, <<"not-allowed">>).

%% @doc 404, cancel.
-spec item_not_found() -> exml:element().
item_not_found() ->
    error_element(<<"404">>, <<"cancel">>, <<"item-not-found">>).

%% @doc 500, wait.
-spec internal_server_error() -> exml:element().
internal_server_error() ->
    error_element(<<"500">>, <<"wait">>, <<"internal-server-error">>).

%% @doc 503, cancel.
-spec service_unavailable() -> exml:element().
service_unavailable() ->
    error_element(<<"503">>, <<"cancel">>, <<"service-unavailable">>).

%% @doc 501, cancel.
-spec feature_not_implemented() -> exml:element().
feature_not_implemented() ->
    error_element(<<"501">>, <<"cancel">>, <<"feature-not-implemented">>).

%% @doc 404, cancel.
-spec remote_server_not_found() -> exml:element().
remote_server_not_found() ->
    error_element(<<"404">>, <<"cancel">>, <<"remote-server-not-found">>).

-spec error_element(binary(), binary(), binary()) -> exml:element().
error_element(Code, Type, Condition) ->
    #xmlel{name = <<"error">>,
           attrs = #{<<"code">> => Code, <<"type">> => Type},
           children = [#xmlel{name = Condition, attrs = #{<<"xmlns">> => ?NS_STANZAS}}]}.
