%% Stand-in for exml 4.x's include/exml.hrl (hex package hexml 4.1.2).
%% In exml 4.x the attributes of an element are a map, not a proplist.
-ifndef(EXML_HRL).
-define(EXML_HRL, true).

-record(xmlcdata, {content = [] :: iodata(),
                   style = escaped :: escaped | cdata}).

-record(xmlel, {name :: binary(),
                attrs = #{} :: #{binary() => binary()},
                children = [] :: [#xmlel{} | #xmlcdata{}]}).

-endif.
