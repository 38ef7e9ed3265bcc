%% Stand-in for MongooseIM's mongoose_acc: the accumulator map that travels
%% with a stanza through routing and hooks.
%%
%% Besides built-in keys, an accumulator holds namespaced entries {NS, Key}.
%% Entries are strippable unless set with set_permanent: strip/2 (applied when
%% a stanza is routed to another host) keeps only the permanent ones.
-module(mongoose_acc).

-include("jlib.hrl").

-export([new/1,
         host_type/1, lserver/1,
         element/1, from_jid/1, to_jid/1, stanza_name/1, stanza_type/1, packet/1,
         get/2, get/3, get/4,
         set/4, set_permanent/3, set_permanent/4,
         append/4, delete/3,
         strip/2, update_stanza/2]).

-export_type([t/0, location/0, new_acc_params/0, stanza_params/0, strip_params/0]).

-type location() :: #{mfa := mfa(), line := pos_integer(), file := string()}.
-type stanza_metadata() :: #{element := exml:element(),
                             from_jid := jid:jid(),
                             to_jid := jid:jid(),
                             name := binary(),
                             type := binary() | undefined,
                             ref := reference()}.
-type key() :: {NS :: atom(), Key :: term()}.
-type t() :: #{mongoose_acc := true,
               ref := reference(),
               timestamp := integer(),
               origin_pid := pid(),
               origin_location := location(),
               stanza := stanza_metadata() | undefined,
               lserver := jid:lserver(),
               host_type := binary() | undefined,
               statem_acc := map(),
               non_strippable := [key()],
               key() => term()}.
-type stanza_params() :: #{element := exml:element() | undefined,
                           from_jid => jid:jid(),
                           to_jid => jid:jid()}.
-type new_acc_params() :: #{location := location(),
                            lserver := jid:lserver(),
                            host_type => binary() | undefined,
                            element => exml:element() | undefined,
                            from_jid => jid:jid(),
                            to_jid => jid:jid(),
                            statem_acc => map()}.
-type strip_params() :: #{lserver := jid:lserver(),
                          host_type => binary() | undefined,
                          element => exml:element() | undefined,
                          from_jid => jid:jid(),
                          to_jid => jid:jid()}.

%% Keys strip/2 always keeps (lserver, host_type and stanza are then replaced).
-define(BUILT_IN_KEYS, [mongoose_acc, ref, timestamp, origin_pid, origin_location,
                        stanza, lserver, host_type, statem_acc, non_strippable]).

%% @doc A new accumulator. With an element, the stanza metadata (name, type,
%% from/to JIDs) is filled in; the JIDs come from the params or, when absent,
%% are parsed from the element's from/to attributes, which must then be valid.
-spec new(new_acc_params()) -> t().
new(#{location := Location, lserver := LServer} = Params) ->
    #{mongoose_acc => true,
      ref => make_ref(),
      timestamp => erlang:system_time(microsecond),
      origin_pid => self(),
      origin_location => Location,
      stanza => stanza_from_params(Params),
      lserver => LServer,
      host_type => maps:get(host_type, Params, undefined),
      statem_acc => maps:get(statem_acc, Params, #{}),
      non_strippable => []}.

-spec host_type(t()) -> binary() | undefined.
host_type(#{host_type := HostType}) -> HostType.

-spec lserver(t()) -> jid:lserver().
lserver(#{lserver := LServer}) -> LServer.

-spec element(t()) -> exml:element() | undefined.
element(Acc) -> stanza_field(element, Acc).

-spec from_jid(t()) -> jid:jid() | undefined.
from_jid(Acc) -> stanza_field(from_jid, Acc).

-spec to_jid(t()) -> jid:jid() | undefined.
to_jid(Acc) -> stanza_field(to_jid, Acc).

-spec stanza_name(t()) -> binary() | undefined.
stanza_name(Acc) -> stanza_field(name, Acc).

%% @doc The stanza's `type' attribute; undefined when it has none.
-spec stanza_type(t()) -> binary() | undefined.
stanza_type(Acc) -> stanza_field(type, Acc).

-spec packet(t()) -> {jid:jid(), jid:jid(), exml:element()} | undefined.
packet(#{stanza := #{element := El, from_jid := From, to_jid := To}}) ->
    {From, To, El};
packet(#{stanza := undefined}) ->
    undefined.

%% @doc All entries of namespace NS as a key-value list.
-spec get(atom(), t()) -> [{term(), term()}].
get(NS, Acc) ->
    [{Key, Value} || {{KeyNS, Key}, Value} <- maps:to_list(Acc), KeyNS =:= NS].

%% @doc The value of {NS, Key}; crashes with {badkey, _} when absent.
-spec get(atom(), term(), t()) -> term().
get(NS, Key, Acc) ->
    maps:get({NS, Key}, Acc).

-spec get(atom(), term(), Default, t()) -> term() | Default.
get(NS, Key, Default, Acc) ->
    maps:get({NS, Key}, Acc, Default).

%% @doc Sets a strippable entry (a permanent entry of the same key stays permanent).
-spec set(atom(), term(), term(), t()) -> t().
set(NS, Key, Value, Acc) ->
    Acc#{{NS, Key} => Value}.

%% @doc Sets entries of namespace NS that survive strip/2.
-spec set_permanent(atom(), [{term(), term()}], t()) -> t().
set_permanent(NS, KVs, Acc) ->
    lists:foldl(fun({Key, Value}, AccIn) -> set_permanent(NS, Key, Value, AccIn) end,
                Acc, KVs).

-spec set_permanent(atom(), term(), term(), t()) -> t().
set_permanent(NS, Key, Value, #{non_strippable := NonStrippable} = Acc) ->
    Acc#{{NS, Key} => Value,
         non_strippable := lists:usort([{NS, Key} | NonStrippable])}.

%% @doc Appends to a list entry (absent = []): a list value is concatenated,
%% any other value is prepended.
-spec append(atom(), term(), term(), t()) -> t().
append(NS, Key, Value, Acc) ->
    Old = get(NS, Key, [], Acc),
    New = case is_list(Value) of
              true -> Old ++ Value;
              false -> [Value | Old]
          end,
    set(NS, Key, New, Acc).

-spec delete(atom(), term(), t()) -> t().
delete(NS, Key, #{non_strippable := NonStrippable} = Acc) ->
    maps:remove({NS, Key}, Acc#{non_strippable := lists:delete({NS, Key}, NonStrippable)}).

%% @doc Keeps the built-in and permanent entries only, and replaces lserver,
%% host_type and (when an element is given) the stanza, as routing does when a
%% stanza changes hands.
-spec strip(strip_params(), t()) -> t().
strip(#{lserver := LServer} = Params, #{non_strippable := NonStrippable} = Acc) ->
    Stripped = maps:with(?BUILT_IN_KEYS ++ NonStrippable, Acc),
    WithHost = Stripped#{lserver := LServer,
                         host_type := maps:get(host_type, Params, undefined)},
    case maps:is_key(element, Params) of
        true -> WithHost#{stanza := stanza_from_params(Params)};
        false -> WithHost
    end.

%% @doc Replaces the stanza metadata (and its ref) with one built from the params.
-spec update_stanza(stanza_params(), t()) -> t().
update_stanza(StanzaParams, Acc) ->
    Acc#{stanza := stanza_from_params(StanzaParams)}.

-spec stanza_from_params(map()) -> stanza_metadata() | undefined.
stanza_from_params(#{element := #xmlel{name = Name} = El} = Params) ->
    #{element => El,
      from_jid => stanza_jid(from_jid, <<"from">>, Params),
      to_jid => stanza_jid(to_jid, <<"to">>, Params),
      name => Name,
      type => exml_query:attr(El, <<"type">>),
      ref => make_ref()};
stanza_from_params(_NoElement) ->
    undefined.

-spec stanza_jid(from_jid | to_jid, binary(), #{element := exml:element()}) -> jid:jid().
stanza_jid(ParamKey, AttrName, #{element := El} = Params) ->
    case maps:find(ParamKey, Params) of
        {ok, Jid} ->
            Jid;
        error ->
            case jid:from_binary(exml_query:attr(El, AttrName, <<>>)) of
                error -> error(#{what => invalid_stanza_jid, attr => AttrName, element => El});
                Jid -> Jid
            end
    end.

-spec stanza_field(atom(), t()) -> term().
stanza_field(Field, #{stanza := #{} = Stanza}) ->
    maps:get(Field, Stanza);
stanza_field(_Field, #{stanza := undefined}) ->
    undefined.
