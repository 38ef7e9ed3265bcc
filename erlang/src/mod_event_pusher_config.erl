%% @doc Module options as our backends need them, whoever built the options map.
%%
%% MongooseIM's parser fills in the defaults of a module's config spec, so options read
%% from mongooseim.toml have every key. But MongooseIM's own tests build option maps
%% with MongooseIM's keys only, and `mongoose_modules:ensure_started/3' and
%% `replace_modules/3' pass on whatever they are given: our additive options (queue,
%% retry, drain, ...) may be absent. Each module therefore fills them in from its own
%% config spec, with the parser's rule: a default is used as is; a section with
%% `include = always' is filled in as if given empty. Keys that are present are kept.
-module(mod_event_pusher_config).

-export([with_defaults/2, module_opts/2]).

-include("mongoose_config_spec.hrl").

%% @doc Opts with every absent default of Spec filled in, recursively (sections, and
%% lists whose items are sections).
-spec with_defaults(#section{}, map()) -> map().
with_defaults(#section{items = Items, defaults = Defaults}, Opts) when is_map(Opts) ->
    WithDefaults = maps:fold(fun(Key, Value, Acc) -> add_absent(opt_key(Key), Value, Acc) end,
                             Opts, Defaults),
    maps:fold(fun(Key, Spec, Acc) when is_binary(Key) -> fill_item(opt_key(Key), Spec, Acc);
                 (_Default, _Spec, Acc) -> Acc
              end, WithDefaults, Items).

%% @doc The options a running module was started with, defaults filled in.
-spec module_opts(binary(), module()) -> map().
module_opts(HostType, Module) ->
    with_defaults(Module:config_spec(), gen_mod:get_module_opts(HostType, Module)).

fill_item(Key, Spec = #section{}, Opts) ->
    case Opts of
        #{Key := Value} when is_map(Value) -> Opts#{Key := with_defaults(Spec, Value)};
        #{Key := _} -> Opts;
        #{} when Spec#section.include =:= always -> Opts#{Key => with_defaults(Spec, #{})};
        #{} -> Opts
    end;
fill_item(Key, #list{items = ItemSpec = #section{}}, Opts) ->
    case Opts of
        #{Key := Items} when is_list(Items) ->
            Opts#{Key := [fill_list_item(ItemSpec, Item) || Item <- Items]};
        #{} ->
            Opts
    end;
fill_item(_Key, _Spec, Opts) ->
    Opts.

fill_list_item(Spec, Item) when is_map(Item) -> with_defaults(Spec, Item);
fill_list_item(_Spec, Item) -> Item.

add_absent(Key, Value, Opts) ->
    case Opts of
        #{Key := _} -> Opts;
        #{} -> Opts#{Key => Value}
    end.

opt_key(Key) ->
    binary_to_atom(Key).
