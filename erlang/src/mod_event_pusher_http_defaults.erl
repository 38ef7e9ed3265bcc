%% @doc The default callback module of the http backend: a form-urlencoded POST for
%% every incoming chat message with a non-empty body (MongooseIM's behaviour).
-module(mod_event_pusher_http_defaults).
-behaviour(mod_event_pusher_http).

-export([should_make_req/6, prepare_headers/7, prepare_body/7]).
-export([form_fields/4]).

-include("jlib.hrl").

-spec should_make_req(mongoose_acc:t(), in | out, exml:element(), jid:jid(), jid:jid(),
                      mod_event_pusher_http:handler_opts()) -> boolean().
should_make_req(_Acc, in, Packet, _From, _To, _Opts) ->
    exml_query:attr(Packet, <<"type">>) =:= <<"chat">>
        andalso exml_query:path(Packet, [{element, <<"body">>}, cdata], <<>>) =/= <<>>;
should_make_req(_Acc, out, _Packet, _From, _To, _Opts) ->
    false.

-spec prepare_headers(mongoose_acc:t(), in | out, binary(), binary(), binary(), binary(),
                      mod_event_pusher_http:handler_opts()) -> [{binary(), binary()}].
prepare_headers(_Acc, _Dir, _Host, _Message, _Sender, _Receiver, _Opts) ->
    [{<<"content-type">>, <<"application/x-www-form-urlencoded">>}].

%% Above this many field bytes the encoding runs on a dirty scheduler.
-define(DIRTY_FROM_BYTES, 16384).

%% The body as MongooseIM's cow_qs:qs/1 writes it, by the delivery worker's own encoder
%% (the NIF). mod_event_pusher_http does not call this for its default handlers: it
%% hands form_fields/4 to the delivery worker, which encodes them off the routing path.
%% Here for callback modules that build on it.
-spec prepare_body(mongoose_acc:t(), in | out, binary(), binary(), binary(), binary(),
                   mod_event_pusher_http:handler_opts()) -> binary().
prepare_body(_Acc, _Dir, Host, Message, Sender, Receiver, _Opts) ->
    Fields = form_fields(Host, Message, Sender, Receiver),
    case lists:sum([byte_size(Value) || {_, Value} <- Fields]) =< ?DIRTY_FROM_BYTES of
        true -> mod_event_pusher_nif:form_urlencode(Fields);
        false -> mod_event_pusher_nif:form_urlencode_dirty(Fields)
    end.

%% @doc The form fields of MongooseIM's default body, in its order.
-spec form_fields(binary(), binary(), binary(), binary()) -> [{binary(), binary()}].
form_fields(Host, Message, Sender, Receiver) ->
    [{<<"author">>, Sender}, {<<"server">>, Host}, {<<"receiver">>, Receiver},
     {<<"message">>, Message}].
