%% Stand-in for MongooseIM's mongoose_backend: a main module's storage
%% backend per host type (`MainModule_<backend>', backend from the `backend'
%% option, mnesia by default), called through call/4 or, instrumented,
%% call_tracked/4.
-module(mongoose_backend).

-export([init/4, call/4, call_tracked/4, get_backend_module/2]).

-type host_type() :: binary().
-type main_module() :: module().
-type function_name() :: atom().

%% @doc Picks the backend module of MainModule for HostType and registers
%% the instrumentation events of the tracked functions: event name = backend
%% module, labels `#{function => F, host_type => HostType}' (events that are
%% already registered are left as they are).
-spec init(host_type(), main_module(), [function_name()], map()) -> ok.
init(HostType, MainModule, TrackedFuns, Opts) ->
    Backend = maps:get(backend, Opts, mnesia),
    BackendModule = list_to_atom(atom_to_list(MainModule) ++ "_" ++ atom_to_list(Backend)),
    persistent_term:put(key(HostType, MainModule), BackendModule),
    lists:foreach(fun(Fun) -> set_up_instrumentation(HostType, BackendModule, Fun) end,
                  TrackedFuns).

%% @doc Applies the backend module's function to Args; crashes if init/4 was
%% not called for HostType and MainModule.
-spec call(host_type(), main_module(), function_name(), list()) -> term().
call(HostType, MainModule, FunName, Args) ->
    erlang:apply(get_backend_module(HostType, MainModule), FunName, Args).

%% @doc call/4 inside mongoose_instrument:span/6, which emits
%% `#{args => Args, time => Us, count => 1}'.
-spec call_tracked(host_type(), main_module(), function_name(), list()) -> term().
call_tracked(HostType, MainModule, FunName, Args) ->
    BackendModule = get_backend_module(HostType, MainModule),
    mongoose_instrument:span(BackendModule, labels(HostType, FunName),
                             BackendModule, FunName, Args,
                             fun(Time, _Result) -> #{args => Args, time => Time, count => 1} end).

%% @doc The backend module chosen by init/4; crashes if there is none.
-spec get_backend_module(host_type(), main_module()) -> module().
get_backend_module(HostType, MainModule) ->
    persistent_term:get(key(HostType, MainModule)).

%%% Internals

-spec set_up_instrumentation(host_type(), module(), function_name()) -> ok.
set_up_instrumentation(HostType, BackendModule, FunName) ->
    Spec = {BackendModule, labels(HostType, FunName),
            #{metrics => #{count => spiral, time => histogram}}},
    try
        mongoose_instrument:set_up([Spec])
    catch
        error:#{what := event_already_registered} -> ok
    end.

-spec labels(host_type(), function_name()) -> mongoose_instrument:labels().
labels(HostType, FunName) ->
    #{function => FunName, host_type => HostType}.

-spec key(host_type(), main_module()) -> {backend_module, host_type(), main_module()}.
key(HostType, MainModule) ->
    {backend_module, HostType, MainModule}.
