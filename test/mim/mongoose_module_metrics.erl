%% Stand-in for MongooseIM's mongoose_module_metrics: only the helper that
%% modules' config_metrics/1 use.
-module(mongoose_module_metrics).

-export([opts_for_module/3]).

%% @doc `{Key, Value}' for each of Keys present in the module's options (in
%% the order of Keys); `[{none, none}]' when there is none (also when the
%% module is not configured).
-spec opts_for_module(binary(), module(), [atom()]) -> [{atom(), term()}].
opts_for_module(HostType, Module, Keys) ->
    Opts = gen_mod:get_module_opts(HostType, Module),
    case [{Key, Value} || Key <- Keys, {ok, Value} <- [maps:find(Key, Opts)]] of
        [] -> [{none, none}];
        Found -> Found
    end.
