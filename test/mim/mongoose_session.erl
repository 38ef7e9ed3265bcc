%% Stand-in for MongooseIM's mongoose_session: accessors of #session{} rows
%% (as returned by ejabberd_sm:get_raw_sessions/1).
-module(mongoose_session).

-include("session.hrl").

-export([get_resource/1, get_info/3]).

%% @doc The resource of the session's full JID.
-spec get_resource(ejabberd_sm:session()) -> jid:lresource().
get_resource(#session{usr = {_LUser, _LServer, LResource}}) ->
    LResource.

%% @doc `{Key, Value}' from the session's info map, or Default when Key is not set.
-spec get_info(ejabberd_sm:session(), ejabberd_sm:info_key(), Default) ->
          {ejabberd_sm:info_key(), term()} | Default.
get_info(#session{info = Info}, Key, Default) ->
    case maps:find(Key, Info) of
        {ok, Value} -> {Key, Value};
        error -> Default
    end.
