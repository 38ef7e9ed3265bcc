%% Stand-in for MongooseIM's mongoose_config: the processed configuration
%% options, one persistent_term per top-level key (reads are cheap, writes are
%% rare). Host-specific options have tuple keys, e.g. {modules, HostType}.
%%
%% A key path is a list: its first element is a top-level key and the rest
%% are nested map keys, e.g. [{modules, HT}, mod_event_pusher, http].
%% Anything that is not a list is a single top-level key.
-module(mongoose_config).

-export([set_opts/1, get_opts/0, erase_opts/0,
         get_opt/1, get_opt/2, lookup_opt/1,
         set_opt/2, unset_opt/1]).

-export_type([key/0, key_path/0, value/0]).

-type key() :: atom() | tuple().
-type key_path() :: [key() | atom() | binary()].
-type value() :: term().

%% Returned by persistent_term for an absent key; no option can have this value.
-define(MISSING, {?MODULE, '$missing'}).

%% @doc Replaces the whole configuration.
-spec set_opts(#{key() => value()} | [{key(), value()}]) -> ok.
set_opts(Opts) when is_list(Opts) ->
    set_opts(maps:from_list(Opts));
set_opts(Opts) when is_map(Opts) ->
    erase_opts(),
    maps:foreach(fun(Key, Value) -> persistent_term:put(term_key(Key), Value) end, Opts).

-spec get_opts() -> #{key() => value()}.
get_opts() ->
    maps:from_list([{Key, Value} || {{?MODULE, Key}, Value} <- persistent_term:get()]).

-spec erase_opts() -> ok.
erase_opts() ->
    lists:foreach(fun(Key) -> persistent_term:erase(term_key(Key)) end,
                  maps:keys(get_opts())).

%% @doc The value at a key or key path; crashes with {badkey, K} when a key is missing.
-spec get_opt(key() | key_path()) -> value().
get_opt([Key | Path]) ->
    lists:foldl(fun maps:get/2, get_opt(Key), Path);
get_opt(Key) ->
    case persistent_term:get(term_key(Key), ?MISSING) of
        ?MISSING -> error({badkey, Key});
        Value -> Value
    end.

-spec get_opt(key() | key_path(), Default) -> value() | Default.
get_opt(KeyOrPath, Default) ->
    case lookup_opt(KeyOrPath) of
        {ok, Value} -> Value;
        {error, not_found} -> Default
    end.

-spec lookup_opt(key() | key_path()) -> {ok, value()} | {error, not_found}.
lookup_opt(KeyOrPath) ->
    try
        {ok, get_opt(KeyOrPath)}
    catch
        error:{badkey, _} -> {error, not_found}
    end.

%% @doc Sets a top-level option, or a nested one when given a key path
%% (its parent maps must exist).
-spec set_opt(key() | key_path(), value()) -> ok.
set_opt([Key], Value) ->
    set_opt(Key, Value);
set_opt([Key | Path], Value) ->
    set_opt(Key, set_nested(get_opt(Key), Path, Value));
set_opt(Key, Value) ->
    persistent_term:put(term_key(Key), Value).

%% @doc Removes a top-level option, or a nested one when given a key path.
-spec unset_opt(key() | key_path()) -> ok.
unset_opt([Key]) ->
    unset_opt(Key);
unset_opt([Key | Path]) ->
    set_opt(Key, unset_nested(get_opt(Key), Path));
unset_opt(Key) ->
    persistent_term:erase(term_key(Key)),
    ok.

-spec set_nested(map(), nonempty_list(), value()) -> map().
set_nested(Map, [Key], Value) ->
    Map#{Key => Value};
set_nested(Map, [Key | Path], Value) ->
    Map#{Key => set_nested(maps:get(Key, Map), Path, Value)}.

-spec unset_nested(map(), nonempty_list()) -> map().
unset_nested(Map, [Key]) ->
    maps:remove(Key, Map);
unset_nested(Map, [Key | Path]) ->
    Map#{Key => unset_nested(maps:get(Key, Map), Path)}.

-spec term_key(key()) -> {?MODULE, key()}.
term_key(Key) ->
    {?MODULE, Key}.
