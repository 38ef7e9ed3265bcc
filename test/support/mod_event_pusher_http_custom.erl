%% @doc A second `callback_module' for mod_event_pusher_http, as in MongooseIM's
%% documentation example with two handlers: it posts every message with a body,
%% in both directions, as a JSON object.
-module(mod_event_pusher_http_custom).

-behaviour(mod_event_pusher_http).

-export([should_make_req/6, prepare_headers/7, prepare_body/7]).

-spec should_make_req(mongoose_acc:t(), in | out, exml:element(), jid:jid(), jid:jid(), map()) ->
          boolean().
should_make_req(_Acc, _Dir, Packet, _From, _To, _Opts) ->
    exml_query:path(Packet, [{element, <<"body">>}, cdata], <<>>) =/= <<>>.

-spec prepare_headers(mongoose_acc:t(), in | out, binary(), binary(), binary(), binary(), map()) ->
          [{binary(), binary()}].
prepare_headers(_Acc, _Dir, _Host, _Message, _Sender, _Receiver, _Opts) ->
    [{<<"content-type">>, <<"application/json">>}].

%% @doc `{"direction": "in", "server": Host, "from": Sender, "to": Receiver, "message": Text}'.
-spec prepare_body(mongoose_acc:t(), in | out, binary(), binary(), binary(), binary(), map()) ->
          binary().
prepare_body(_Acc, Dir, Host, Message, Sender, Receiver, _Opts) ->
    iolist_to_binary(jiffy:encode(#{<<"direction">> => atom_to_binary(Dir),
                                    <<"server">> => Host,
                                    <<"from">> => Sender,
                                    <<"to">> => Receiver,
                                    <<"message">> => Message})).
