%% @doc The default plugin of mod_event_pusher_sns (`plugin_module').
%%
%% Final behaviour (small enough to be written with the configuration): users are
%% identified by their lowercased bare JID, and messages carry no attributes.
-module(mod_event_pusher_sns_defaults).

-behaviour(mod_event_pusher_sns).

-export([user_guid/1, message_attributes/3, message_attributes/5]).

%% @doc The bare JID as a binary. A #jid{} holds only the normalised (lowercased)
%% parts in mongoose_jid 2.x, so no extra lowercasing is needed.
-spec user_guid(jid:jid()) -> mod_event_pusher_sns:user_guid().
user_guid(UserJID) ->
    jid:to_bare_binary(UserJID).

-spec message_attributes(mod_event_pusher_sns:topic_arn(), jid:jid(), boolean()) ->
          mod_event_pusher_sns:attributes().
message_attributes(_TopicARN, _UserJID, _IsOnline) ->
    #{}.

-spec message_attributes(mod_event_pusher_sns:topic_arn(), jid:jid(), jid:jid(), pm | muc,
                         exml:element()) -> mod_event_pusher_sns:attributes().
message_attributes(_TopicARN, _From, _To, _MessageType, _Packet) ->
    #{}.
