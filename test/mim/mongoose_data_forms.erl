%% Stand-in for MongooseIM's mongoose_data_forms: XEP-0004 data forms
%% (`<x xmlns="jabber:x:data"/>') found in, parsed from and built for stanzas.
-module(mongoose_data_forms).

-include("jlib.hrl").

-export([find_form/1, find_form/2, parse_form_fields/1, form/1]).

-export_type([form/0, field/0, option/0, parsed_form/0, kvs/0]).

-type option() :: binary() | {Label :: binary(), Value :: binary()}.
-type field() :: #{var => binary(), type => binary(), label => binary(),
                   values => [binary()], options => [option()]}.
-type form() :: #{type => binary(), ns => binary(), fields => [field()],
                  title => binary(), instructions => binary(),
                  reported => [field()], items => [[field()]]}.
-type kvs() :: #{binary() => [binary()]}.
-type parsed_form() :: #{type => binary(), ns => binary(), kvs := kvs()}.

-define(FORM_TYPE, <<"FORM_TYPE">>).

%% @doc The first `<x xmlns="jabber:x:data"/>' child of Parent, or undefined.
-spec find_form(exml:element()) -> exml:element() | undefined.
find_form(Parent) ->
    find_form(Parent, undefined).

-spec find_form(exml:element(), Default) -> exml:element() | Default.
find_form(Parent, Default) ->
    exml_query:subelement_with_name_and_ns(Parent, <<"x">>, ?NS_XDATA, Default).

%% @doc The form's `type' attribute (if present), its FORM_TYPE (`ns', only
%% when the field has exactly one value) and the other fields as
%% `Var => [Value]' (fields without `var' are ignored; FORM_TYPE is never among them).
-spec parse_form_fields(exml:element()) -> parsed_form().
parse_form_fields(#xmlel{children = Children} = Form) ->
    AllKVs = maps:from_list([{Var, [exml_query:cdata(V) || #xmlel{name = <<"value">>} = V <- Values]}
                             || #xmlel{name = <<"field">>, attrs = #{<<"var">> := Var},
                                       children = Values} <- Children]),
    {FormType, KVs} = case maps:take(?FORM_TYPE, AllKVs) of
                          {FormTypeValues, Rest} -> {FormTypeValues, Rest};
                          error -> {[], AllKVs}
                      end,
    WithNS = case FormType of
                 [NS] -> #{ns => NS, kvs => KVs};
                 _ -> #{kvs => KVs}
             end,
    case exml_query:attr(Form, <<"type">>) of
        undefined -> WithNS;
        Type -> WithNS#{type => Type}
    end.

%% @doc A form element: `<x xmlns="jabber:x:data" type=T>' (T defaults to
%% "form") holding, in this order, title, instructions, the hidden FORM_TYPE
%% field (when ns is given), the fields, reported and items.
-spec form(form()) -> exml:element().
form(Spec) ->
    Children = text_el(<<"title">>, Spec)
        ++ text_el(<<"instructions">>, Spec)
        ++ [field_el(#{var => ?FORM_TYPE, type => <<"hidden">>, values => [NS]})
            || NS <- [maps:get(ns, Spec) || maps:is_key(ns, Spec)]]
        ++ [field_el(Field) || Field <- maps:get(fields, Spec, [])]
        ++ [#xmlel{name = <<"reported">>, children = [field_el(F) || F <- Reported]}
            || Reported <- [maps:get(reported, Spec) || maps:is_key(reported, Spec)]]
        ++ [#xmlel{name = <<"item">>, children = [field_el(F) || F <- Item]}
            || Item <- maps:get(items, Spec, [])],
    #xmlel{name = <<"x">>,
           attrs = #{<<"xmlns">> => ?NS_XDATA, <<"type">> => maps:get(type, Spec, <<"form">>)},
           children = Children}.

%%% Internals

-spec text_el(binary(), form()) -> [exml:element()].
text_el(Name, Spec) ->
    case maps:find(binary_to_atom(Name), Spec) of
        {ok, Text} -> [#xmlel{name = Name, children = [#xmlcdata{content = Text}]}];
        error -> []
    end.

%% Keys with a list value become children, the others attributes.
-spec field_el(field()) -> exml:element().
field_el(Field) ->
    Attrs = maps:from_list([{atom_to_binary(K), V} || {K, V} <- maps:to_list(Field), not is_list(V)]),
    Values = [value_el(V) || V <- maps:get(values, Field, [])],
    Options = [option_el(O) || O <- maps:get(options, Field, [])],
    #xmlel{name = <<"field">>, attrs = Attrs, children = Values ++ Options}.

-spec option_el(option()) -> exml:element().
option_el({Label, Value}) ->
    #xmlel{name = <<"option">>, attrs = #{<<"label">> => Label}, children = [value_el(Value)]};
option_el(Value) ->
    #xmlel{name = <<"option">>, children = [value_el(Value)]}.

-spec value_el(binary()) -> exml:element().
value_el(Value) ->
    #xmlel{name = <<"value">>, children = [#xmlcdata{content = Value}]}.
