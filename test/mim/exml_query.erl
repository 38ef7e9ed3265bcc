%% Stand-in for exml 4.x's exml_query: lookups in #xmlel{} trees
%% (attrs is a map in 4.x).
-module(exml_query).

-include("exml.hrl").

-export([path/2, path/3, paths/2,
         attr/2, attr/3,
         subelement/2, subelement/3,
         subelement_with_name_and_ns/3, subelement_with_name_and_ns/4,
         cdata/1]).

-export_type([path/0]).

-type element_step() :: {element, binary()}
                      | {element_with_ns, binary()}
                      | {element_with_ns, binary(), binary()}
                      | {element_with_attr, binary(), binary()}.
-type terminal_step() :: cdata | {attr, binary()}.
-type path() :: [element_step() | terminal_step()].

%% @doc Follows Path from Element; undefined when any step does not match.
-spec path(exml:element(), path()) -> exml:element() | binary() | undefined.
path(Element, Path) ->
    path(Element, Path, undefined).

%% @doc Every element (or attribute value, or cdata) Path leads to from Element,
%% following each matching child at every step.
-spec paths(exml:element(), path()) -> [exml:element() | binary()].
paths(#xmlel{} = Element, []) ->
    [Element];
paths(#xmlel{} = Element, [cdata]) ->
    [cdata(Element)];
paths(#xmlel{} = Element, [{attr, Name}]) ->
    [V || V <- [attr(Element, Name)], V =/= undefined];
paths(#xmlel{children = Children}, [Step | Rest]) ->
    lists:append([paths(Child, Rest) || Child <- Children, step_matches(Step, Child)]).

%% @doc Follows Path from Element; Default when any step does not match.
%% Each element step picks the first matching child.
-spec path(exml:element(), path(), Default) -> exml:element() | binary() | Default.
path(#xmlel{} = Element, [], _Default) ->
    Element;
path(#xmlel{} = Element, [cdata], _Default) ->
    cdata(Element);
path(#xmlel{} = Element, [{attr, Name}], Default) ->
    attr(Element, Name, Default);
path(#xmlel{children = Children}, [Step | Rest], Default) ->
    case find_child(fun(Child) -> step_matches(Step, Child) end, Children) of
        undefined -> Default;
        Child -> path(Child, Rest, Default)
    end.

-spec step_matches(element_step(), exml:element()) -> boolean().
step_matches({element, Name}, #xmlel{name = ElName}) ->
    Name =:= ElName;
step_matches({element_with_ns, NS}, Child) ->
    NS =:= attr(Child, <<"xmlns">>);
step_matches({element_with_ns, Name, NS}, #xmlel{name = ElName} = Child) ->
    Name =:= ElName andalso NS =:= attr(Child, <<"xmlns">>);
step_matches({element_with_attr, AttrName, Value}, Child) ->
    Value =:= attr(Child, AttrName).

-spec attr(exml:element(), binary()) -> binary() | undefined.
attr(Element, Name) ->
    attr(Element, Name, undefined).

-spec attr(exml:element(), binary(), Default) -> binary() | Default.
attr(#xmlel{attrs = Attrs}, Name, Default) ->
    maps:get(Name, Attrs, Default).

%% @doc The first child element called Name, or undefined.
-spec subelement(exml:element(), binary()) -> exml:element() | undefined.
subelement(Element, Name) ->
    subelement(Element, Name, undefined).

-spec subelement(exml:element(), binary(), Default) -> exml:element() | Default.
subelement(Element, Name, Default) ->
    path(Element, [{element, Name}], Default).

-spec subelement_with_name_and_ns(exml:element(), binary(), binary()) ->
          exml:element() | undefined.
subelement_with_name_and_ns(Element, Name, NS) ->
    subelement_with_name_and_ns(Element, Name, NS, undefined).

-spec subelement_with_name_and_ns(exml:element(), binary(), binary(), Default) ->
          exml:element() | Default.
subelement_with_name_and_ns(Element, Name, NS, Default) ->
    path(Element, [{element_with_ns, Name, NS}], Default).

%% @doc The text of Element: its direct cdata children concatenated.
%% Like the real one it has no clause for `undefined', so a missing element
%% makes the caller crash rather than read an empty text.
-spec cdata(exml:element()) -> binary().
cdata(#xmlel{children = Children}) ->
    iolist_to_binary([Content || #xmlcdata{content = Content} <- Children]).

-spec find_child(fun((exml:element()) -> boolean()), [exml:child()]) ->
          exml:element() | undefined.
find_child(_Pred, []) ->
    undefined;
find_child(Pred, [#xmlel{} = Child | Rest]) ->
    case Pred(Child) of
        true -> Child;
        false -> find_child(Pred, Rest)
    end;
find_child(Pred, [_Cdata | Rest]) ->
    find_child(Pred, Rest).
