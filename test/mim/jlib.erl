%% Stand-in for MongooseIM's jlib: conversions between `<iq/>' elements and
%% #iq{} records, and stanza addressing.
-module(jlib).

-include("jlib.hrl").

-export([iq_to_xml/1, iq_query_info/1, iq_query_or_response_info/1, replace_from_to/3,
         make_error_reply/2]).

-export_type([iq/0]).

-type iq() :: #iq{}.

%% @doc The `<iq/>' element of an #iq{}: `id' (left out when empty) and
%% `type' attributes; the children are sub_el (an element or a list).
%% Addressing is left to the router (see replace_from_to/3).
-spec iq_to_xml(iq()) -> exml:element().
iq_to_xml(#iq{id = Id, type = Type, sub_el = SubEl}) ->
    IdAttrs = case Id of
                  <<>> -> #{};
                  _ -> #{<<"id">> => Id}
              end,
    #xmlel{name = <<"iq">>,
           attrs = IdAttrs#{<<"type">> => atom_to_binary(Type)},
           children = sub_el_to_children(SubEl)}.

%% @doc An IQ request as #iq{} (sub_el = its single child element, xmlns =
%% that child's namespace); `reply' for a result or error, `invalid' for a
%% request without exactly one child element or with an unknown type,
%% `not_iq' for other stanzas.
-spec iq_query_info(exml:element()) -> iq() | reply | invalid | not_iq.
iq_query_info(El) ->
    case iq_info(El) of
        {response, _IQ} -> reply;
        {request, IQ} -> IQ;
        Other -> Other
    end.

%% @doc Like iq_query_info/1, but a result or error is returned as #iq{} too,
%% with sub_el = the list of its child elements.
-spec iq_query_or_response_info(exml:element()) -> iq() | invalid | not_iq.
iq_query_or_response_info(El) ->
    case iq_info(El) of
        {_Class, IQ} -> IQ;
        Other -> Other
    end.

%% @doc Sets the `from' and `to' attributes of a stanza.
-spec replace_from_to(jid:jid(), jid:jid(), exml:element()) -> exml:element().
replace_from_to(From, To, #xmlel{attrs = Attrs} = El) ->
    El#xmlel{attrs = Attrs#{<<"from">> => jid:to_binary(From), <<"to">> => jid:to_binary(To)}}.

%% @doc The error reply to a stanza: the same stanza with `from' and `to' swapped,
%% `type' error, and the error element after its children.
-spec make_error_reply(exml:element(), exml:element()) -> exml:element().
make_error_reply(#xmlel{attrs = Attrs, children = Children} = El, Error) ->
    Swapped = maps:without([<<"from">>, <<"to">>], Attrs),
    WithTo = case Attrs of
                 #{<<"from">> := From} -> Swapped#{<<"to">> => From};
                 _ -> Swapped
             end,
    WithFrom = case Attrs of
                   #{<<"to">> := To} -> WithTo#{<<"from">> => To};
                   _ -> WithTo
               end,
    El#xmlel{attrs = WithFrom#{<<"type">> => <<"error">>}, children = Children ++ [Error]}.

%%% Internals

-spec iq_info(exml:element()) -> {request | response, iq()} | invalid | not_iq.
iq_info(#xmlel{name = <<"iq">>, children = Children} = El) ->
    Elements = [Child || #xmlel{} = Child <- Children],
    Base = #iq{id = exml_query:attr(El, <<"id">>, <<>>),
               lang = exml_query:attr(El, <<"xml:lang">>, <<>>)},
    case {parse_type(exml_query:attr(El, <<"type">>)), Elements} of
        {invalid, _} ->
            invalid;
        {Type, [Child]} when Type =:= get; Type =:= set ->
            {request, Base#iq{type = Type, sub_el = Child,
                              xmlns = exml_query:attr(Child, <<"xmlns">>, <<>>)}};
        {Type, _} when Type =:= get; Type =:= set ->
            invalid;
        {Type, _} ->
            {response, Base#iq{type = Type, sub_el = Elements}}
    end;
iq_info(_El) ->
    not_iq.

-spec parse_type(binary() | undefined) -> get | set | result | error | invalid.
parse_type(<<"get">>) -> get;
parse_type(<<"set">>) -> set;
parse_type(<<"result">>) -> result;
parse_type(<<"error">>) -> error;
parse_type(_) -> invalid.

-spec sub_el_to_children(undefined | exml:element() | [exml:element()]) -> [exml:element()].
sub_el_to_children(undefined) -> [];
sub_el_to_children(#xmlel{} = El) -> [El];
sub_el_to_children(Els) when is_list(Els) -> Els.
