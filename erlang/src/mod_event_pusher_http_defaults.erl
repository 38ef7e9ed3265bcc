%% @doc The default callback module of the http backend: a form-urlencoded POST for
%% every incoming chat message with a non-empty body (MongooseIM's behaviour).
-module(mod_event_pusher_http_defaults).
-behaviour(mod_event_pusher_http).

-export([should_make_req/6, prepare_headers/7, prepare_body/7]).
-export([form_fields/4, form_urlencode/1]).

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

%% The body as MongooseIM's cow_qs:qs/1 writes it. mod_event_pusher_http does not call
%% this for its default handlers: it hands form_fields/4 to the delivery worker, which
%% encodes them (pusher::form, the same bytes) off the routing path. Here for callback
%% modules that build on it.
-spec prepare_body(mongoose_acc:t(), in | out, binary(), binary(), binary(), binary(),
                   mod_event_pusher_http:handler_opts()) -> binary().
prepare_body(_Acc, _Dir, Host, Message, Sender, Receiver, _Opts) ->
    form_urlencode(form_fields(Host, Message, Sender, Receiver)).

%% @doc application/x-www-form-urlencoded, byte for byte as cowlib 2.14's cow_qs:qs/1:
%% A-Z a-z 0-9 - . _ as they are, a space as +, any other byte as %XX, except that a
%% byte starting a run of four bytes to escape escapes all four (a space as %20).
-spec form_urlencode([{binary(), binary()}]) -> binary().
form_urlencode(Fields) ->
    iolist_to_binary(lists:join($&, [[urlencode(Name, <<>>), $=, urlencode(Value, <<>>)]
                                     || {Name, Value} <- Fields])).

-define(IS_PLAIN(C), ((C >= $a andalso C =< $z) orelse (C >= $A andalso C =< $Z)
                      orelse (C >= $0 andalso C =< $9) orelse C =:= $- orelse C =:= $.
                      orelse C =:= $_)).

urlencode(<<C, Rest/binary>>, Acc) when ?IS_PLAIN(C) ->
    urlencode(Rest, <<Acc/binary, C>>);
urlencode(<<A, B, C, D, Rest/binary>>, Acc)
  when not ?IS_PLAIN(B), not ?IS_PLAIN(C), not ?IS_PLAIN(D) ->
    urlencode(Rest, <<Acc/binary, (escape(A))/binary, (escape(B))/binary, (escape(C))/binary,
                      (escape(D))/binary>>);
urlencode(<<$\s, Rest/binary>>, Acc) ->
    urlencode(Rest, <<Acc/binary, $+>>);
urlencode(<<C, Rest/binary>>, Acc) ->
    urlencode(Rest, <<Acc/binary, (escape(C))/binary>>);
urlencode(<<>>, Acc) ->
    Acc.

escape(C) ->
    <<$%, (hex(C bsr 4)), (hex(C band 15))>>.

hex(N) when N < 10 -> $0 + N;
hex(N) -> $A + N - 10.

%% @doc The form fields of MongooseIM's default body, in its order.
-spec form_fields(binary(), binary(), binary(), binary()) -> [{binary(), binary()}].
form_fields(Host, Message, Sender, Receiver) ->
    [{<<"author">>, Sender}, {<<"server">>, Host}, {<<"receiver">>, Receiver},
     {<<"message">>, Message}].
