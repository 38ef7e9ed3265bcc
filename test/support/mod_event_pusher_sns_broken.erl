%% @doc An sns plugin with bugs, for the tests: user ids crash for one user, and
%% message attributes hold a value SNS has no type for.
-module(mod_event_pusher_sns_broken).
-behaviour(mod_event_pusher_sns).

-export([user_guid/1, message_attributes/3, message_attributes/5]).

-include("jid.hrl").

-spec user_guid(jid:jid()) -> mod_event_pusher_sns:user_guid().
user_guid(#jid{luser = <<"crash">>}) ->
    error(plugin_bug);
user_guid(JID) ->
    jid:to_bare_binary(JID).

-spec message_attributes(mod_event_pusher_sns:topic_arn(), jid:jid(), boolean()) ->
          mod_event_pusher_sns:attributes().
message_attributes(_TopicARN, _JID, _IsOnline) ->
    #{}.

%% A tuple is no SNS DataType (read at run time, as a buggy plugin would compute it).
-spec message_attributes(mod_event_pusher_sns:topic_arn(), jid:jid(), jid:jid(), pm | muc,
                         exml:element()) -> mod_event_pusher_sns:attributes().
message_attributes(_TopicARN, _From, #jid{luser = <<"tuple">>}, _Type, _Packet) ->
    #{"bad" => persistent_term:get({?MODULE, bad_value}, {1, 2})};
message_attributes(_TopicARN, _From, _To, _Type, _Packet) ->
    #{}.
