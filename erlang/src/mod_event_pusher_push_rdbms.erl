%% @doc RDBMS storage of XEP-0357 registrations (`backend = "rdbms"'), as in
%% MongooseIM 6.4: table `event_pusher_push_subscription' (priv/pg.sql,
%% priv/mysql.sql) with MongooseIM's columns and values, so rows written by
%% MongooseIM are read as is:
%% - `owner_jid': the user's bare JID (`jid:to_bare_binary/1');
%% - `node': the pubsub node;
%% - `pubsub_jid': the service's JID as given (bare, `jid:to_binary/1');
%% - `form': the publish-options form as a JSON object (`jiffy:encode/1');
%% - `created_at': `os:system_time(microsecond)' when enabled.
%% The primary key is (owner_jid, node, pubsub_jid); the table is shared by all
%% host types (the owner's domain tells them apart).
%%
%% Queries go through mongoose_rdbms's prepared queries (prepared by init/2 under
%% MongooseIM's names), run with execute_successfully/3. Where MongooseIM lets
%% the error that function raises escape, these callbacks return
%% `{error, Reason}', as the behaviour (and the mnesia backend) does: the
%% callers log it, or turn it into an IQ error.
-module(mod_event_pusher_push_rdbms).

-behaviour(mod_event_pusher_push_backend).

-export([init/2, enable/5, disable/2, disable/4, get_publish_services/2]).

-type host_type() :: binary().

-define(TABLE, event_pusher_push_subscription).

%% @doc Prepares the queries. A name prepared before (by another host type, or
%% an earlier start) keeps its query, as in MongooseIM.
-spec init(host_type(), gen_mod:module_opts()) -> ok.
init(_HostType, _Opts) ->
    prepare(event_pusher_push_insert, [owner_jid, node, pubsub_jid, form, created_at],
            <<"INSERT INTO event_pusher_push_subscription"
              " (owner_jid, node, pubsub_jid, form, created_at) VALUES (?, ?, ?, ?, ?)">>),
    prepare(event_pusher_push_select, [owner_jid],
            <<"SELECT node, pubsub_jid, form FROM event_pusher_push_subscription"
              " WHERE owner_jid = ?">>),
    prepare(event_pusher_push_delete, [owner_jid],
            <<"DELETE FROM event_pusher_push_subscription WHERE owner_jid = ?">>),
    prepare(event_pusher_push_delete_pubsub_jid, [owner_jid, pubsub_jid],
            <<"DELETE FROM event_pusher_push_subscription"
              " WHERE owner_jid = ? AND pubsub_jid = ?">>),
    prepare(event_pusher_push_delete_node, [owner_jid, node, pubsub_jid],
            <<"DELETE FROM event_pusher_push_subscription"
              " WHERE owner_jid = ? AND node = ? AND pubsub_jid = ?">>),
    ok.

%% @doc Replaces the user's registration of Node at PubSub (PubSub is bare):
%% deletes it, then inserts the new row; ok iff one row was inserted.
-spec enable(host_type(), jid:jid(), jid:jid(), binary(), mod_event_pusher_push_backend:form()) ->
          ok | {error, term()}.
enable(HostType, User, PubSub, Node, Form) ->
    Owner = jid:to_bare_binary(User),
    PubSubBin = jid:to_binary(PubSub),
    try
        _ = execute(HostType, event_pusher_push_delete_node, [Owner, Node, PubSubBin]),
        Params = [Owner, Node, PubSubBin, encode_form(Form), os:system_time(microsecond)],
        case execute(HostType, event_pusher_push_insert, Params) of
            {updated, 1} -> ok;
            Other -> {error, {unexpected_result, Other}}
        end
    catch
        error:Reason -> {error, Reason}
    end.

%% @doc Removes all registrations of the user.
-spec disable(host_type(), jid:jid()) -> ok | {error, term()}.
disable(HostType, User) ->
    delete(HostType, event_pusher_push_delete, [jid:to_bare_binary(User)]).

%% @doc Removes the user's registrations at PubSub: of Node, or of every node
%% when Node is undefined.
-spec disable(host_type(), jid:jid(), jid:jid(), binary() | undefined) -> ok | {error, term()}.
disable(HostType, User, PubSub, undefined) ->
    delete(HostType, event_pusher_push_delete_pubsub_jid,
           [jid:to_bare_binary(User), jid:to_binary(PubSub)]);
disable(HostType, User, PubSub, Node) ->
    delete(HostType, event_pusher_push_delete_node,
           [jid:to_bare_binary(User), Node, jid:to_binary(PubSub)]).

%% @doc The user's registrations as `{PubSub, Node, Form}' (in no particular order).
-spec get_publish_services(host_type(), jid:jid()) ->
          {ok, [mod_event_pusher_push:publish_service()]} | {error, term()}.
get_publish_services(HostType, User) ->
    try
        case execute(HostType, event_pusher_push_select, [jid:to_bare_binary(User)]) of
            {selected, Rows} -> {ok, [decode_row(Row) || Row <- Rows]};
            Other -> {error, {unexpected_result, Other}}
        end
    catch
        error:Reason -> {error, Reason}
    end.

%%% Internals

-spec prepare(atom(), [atom()], binary()) -> ok.
prepare(Name, Fields, SQL) ->
    %% {error, already_exists} when prepared before: that query stays.
    _ = mongoose_rdbms:prepare(Name, ?TABLE, Fields, SQL),
    ok.

-spec execute(host_type(), atom(), [binary() | integer()]) ->
          {selected, [tuple()]} | {updated, non_neg_integer()}.
execute(HostType, Name, Params) ->
    mongoose_rdbms:execute_successfully(HostType, Name, Params).

-spec delete(host_type(), atom(), [binary()]) -> ok | {error, term()}.
delete(HostType, Name, Params) ->
    try
        _ = execute(HostType, Name, Params),
        ok
    catch
        error:Reason -> {error, Reason}
    end.

-spec decode_row(tuple()) -> mod_event_pusher_push:publish_service().
decode_row({Node, PubSub, FormJSON}) ->
    case jid:from_binary(PubSub) of
        error -> error({bad_pubsub_jid, PubSub});
        PubSubJid -> {PubSubJid, Node, decode_form(FormJSON)}
    end.

-spec encode_form(mod_event_pusher_push_backend:form()) -> binary().
encode_form(Form) ->
    iolist_to_binary(jiffy:encode(Form)).

-spec decode_form(binary()) -> mod_event_pusher_push_backend:form().
decode_form(FormJSON) ->
    #{} = jiffy:decode(FormJSON, [return_maps]).
