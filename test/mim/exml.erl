%% Stand-in for exml 4.x (hex package hexml): the element types and a
%% serializer. The real library parses with a NIF; the tests only need to turn
%% elements into XML text (e.g. to compare with what a backend delivered).
-module(exml).

-include("exml.hrl").

-export([to_binary/1]).

-export_type([element/0, cdata/0, child/0, attrs/0]).

-type element() :: #xmlel{}.
-type cdata() :: #xmlcdata{}.
-type child() :: element() | cdata().
-type attrs() :: #{binary() => binary()}.

%% @doc Serializes an element, a cdata node or a list of them to XML text.
%% Attributes are written in key order so that the output is deterministic.
-spec to_binary(element() | cdata() | [child()]) -> binary().
to_binary(Node) ->
    iolist_to_binary(to_iolist(Node)).

-spec to_iolist(child() | [child()]) -> iodata().
to_iolist(Nodes) when is_list(Nodes) ->
    [to_iolist(Node) || Node <- Nodes];
to_iolist(#xmlel{name = Name, attrs = Attrs, children = []}) ->
    [$<, Name, attrs_to_iolist(Attrs), "/>"];
to_iolist(#xmlel{name = Name, attrs = Attrs, children = Children}) ->
    [$<, Name, attrs_to_iolist(Attrs), $>, to_iolist(Children), "</", Name, $>];
to_iolist(#xmlcdata{content = Content, style = escaped}) ->
    escape_text(iolist_to_binary(Content));
to_iolist(#xmlcdata{content = Content, style = cdata}) ->
    %% "]]>" cannot appear inside a CDATA section: split it across two sections.
    Split = binary:replace(iolist_to_binary(Content), <<"]]>">>, <<"]]]]><![CDATA[>">>, [global]),
    ["<![CDATA[", Split, "]]>"].

-spec attrs_to_iolist(attrs()) -> iodata().
attrs_to_iolist(Attrs) ->
    [[$\s, Key, "=\"", escape_attr(Value), $"] || {Key, Value} <- lists:sort(maps:to_list(Attrs))].

-spec escape_text(binary()) -> binary().
escape_text(Text) ->
    << <<(escape_text_char(C))/binary>> || <<C>> <= Text >>.

-spec escape_text_char(byte()) -> binary().
escape_text_char($&) -> <<"&amp;">>;
escape_text_char($<) -> <<"&lt;">>;
escape_text_char($>) -> <<"&gt;">>;
escape_text_char(C) -> <<C>>.

-spec escape_attr(binary()) -> binary().
escape_attr(Value) ->
    << <<(escape_attr_char(C))/binary>> || <<C>> <= Value >>.

-spec escape_attr_char(byte()) -> binary().
escape_attr_char($") -> <<"&quot;">>;
escape_attr_char($') -> <<"&apos;">>;
escape_attr_char(C) -> escape_text_char(C).
