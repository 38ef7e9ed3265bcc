%% @doc A custom sns plugin for the tests, as an operator would write one: its own
%% user ids and message attributes of every type SNS knows.
-module(mod_event_pusher_sns_custom).
-behaviour(mod_event_pusher_sns).

-export([user_guid/1, message_attributes/3, message_attributes/5]).

-include("jid.hrl").

-spec user_guid(jid:jid()) -> mod_event_pusher_sns:user_guid().
user_guid(#jid{luser = User, lserver = Server}) ->
    <<"guid:", User/binary, ":", Server/binary>>.

-spec message_attributes(mod_event_pusher_sns:topic_arn(), jid:jid(), boolean()) ->
          mod_event_pusher_sns:attributes().
message_attributes(TopicARN, #jid{luser = User}, IsOnline) ->
    #{"topic" => TopicARN, "user" => binary_to_list(User), "online" => bool_to_int(IsOnline)}.

-spec message_attributes(mod_event_pusher_sns:topic_arn(), jid:jid(), jid:jid(), pm | muc,
                         exml:element()) -> mod_event_pusher_sns:attributes().
message_attributes(_TopicARN, _From, _To, Type, Packet) ->
    Id = exml_query:attr(Packet, <<"id">>, <<"none">>),
    #{"type" => atom_to_list(Type), "id" => binary_to_list(Id), "priority" => 2.5,
      "raw" => <<0, 1, 2, 255>>, "größe" => "groß"}.

bool_to_int(true) -> 1;
bool_to_int(false) -> 0.
