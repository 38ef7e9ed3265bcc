%% Stand-in for MongooseIM's gen_hook: named hooks with handlers per tag
%% (a host type or `global'), run in priority order by run_fold/4.
%%
%% Changes go through this gen_server so that they are serialized; the
%% handler lists live in persistent_term ({gen_hook, Name, Tag}), so running a
%% hook is a plain read in the caller's process, as in MongooseIM.
-module(gen_hook).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

%% Service
-export([start_link/0, start/0, stop/0]).
%% API
-export([add_handler/5, add_handler/1, add_handlers/1,
         delete_handler/5, delete_handler/1, delete_handlers/1,
         run_fold/4]).
%% Test helper (not in MongooseIM)
-export([get_handlers/2]).
%% gen_server
-export([init/1, handle_call/3, handle_cast/2, terminate/2]).

-export_type([hook_name/0, hook_tag/0, hook_fn/0, hook_extra/0, extra/0,
              hook_params/0, hook_tuple/0, hook_list/0]).

-type hook_name() :: atom().
-type hook_tag() :: binary() | global.
-type hook_params() :: map().
-type hook_extra() :: map().
%% The extra map a handler receives.
-type extra() :: #{hook_name := hook_name(), hook_tag := hook_tag(),
                   host_type => binary(), atom() => term()}.
-type hook_fn() :: fun((Acc :: term(), hook_params(), extra()) ->
                           {ok | stop, NewAcc :: term()}).
-type hook_tuple() :: {hook_name(), hook_tag(), hook_fn(), hook_extra(), pos_integer()}.
-type hook_list() :: [hook_tuple()].

-record(handler, {priority :: pos_integer(),
                  module :: module(),
                  function :: atom(),
                  fn :: hook_fn(),
                  extra :: extra()}).
-type handler() :: #handler{}.

%%% Service

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Starts the server without a link (tests start it from short-lived processes).
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    gen_server:start({local, ?MODULE}, ?MODULE, [], []).

%% @doc Stops the server; all handlers are removed.
-spec stop() -> ok.
stop() ->
    gen_server:stop(?MODULE).

%%% API

-spec add_handler(hook_name(), hook_tag(), hook_fn(), hook_extra(), pos_integer()) -> ok.
add_handler(HookName, Tag, Fn, Extra, Priority) ->
    Handler = make_handler(HookName, Tag, Fn, Extra, Priority),
    gen_server:call(?MODULE, {add_handler, HookName, Tag, Handler}).

-spec add_handler(hook_tuple()) -> ok.
add_handler({HookName, Tag, Fn, Extra, Priority}) ->
    add_handler(HookName, Tag, Fn, Extra, Priority).

-spec add_handlers(hook_list()) -> ok.
add_handlers(Hooks) ->
    lists:foreach(fun add_handler/1, Hooks).

-spec delete_handler(hook_name(), hook_tag(), hook_fn(), hook_extra(), pos_integer()) -> ok.
delete_handler(HookName, Tag, Fn, Extra, Priority) ->
    Handler = make_handler(HookName, Tag, Fn, Extra, Priority),
    gen_server:call(?MODULE, {delete_handler, HookName, Tag, Handler}).

-spec delete_handler(hook_tuple()) -> ok.
delete_handler({HookName, Tag, Fn, Extra, Priority}) ->
    delete_handler(HookName, Tag, Fn, Extra, Priority).

-spec delete_handlers(hook_list()) -> ok.
delete_handlers(Hooks) ->
    lists:foreach(fun delete_handler/1, Hooks).

%% @doc Runs the handlers of a hook in priority order, threading Acc through
%% them. `{stop, Acc}' from a handler ends the run; a handler that crashes is
%% logged and skipped with the Acc unchanged. A handler returning anything else
%% is a bug and makes run_fold crash ({try_clause, Return}).
-spec run_fold(hook_name(), hook_tag(), Acc, hook_params()) -> {ok | stop, Acc}.
run_fold(HookName, Tag, Acc, Params) ->
    run_handlers(persistent_term:get(term_key(HookName, Tag), []), Acc, Params).

%% @doc The handlers of a hook in the order they run: {Priority, Fn, Extra},
%% where Extra is what the handler receives.
-spec get_handlers(hook_name(), hook_tag()) -> [{pos_integer(), hook_fn(), extra()}].
get_handlers(HookName, Tag) ->
    [{Priority, Fn, Extra}
     || #handler{priority = Priority, fn = Fn, extra = Extra}
            <- persistent_term:get(term_key(HookName, Tag), [])].

%%% gen_server

-spec init([]) -> {ok, no_state}.
init([]) ->
    %% terminate/2 must run when the server's parent stops it.
    process_flag(trap_exit, true),
    {ok, no_state}.

-spec handle_call({add_handler | delete_handler, hook_name(), hook_tag(), handler()},
                  gen_server:from(), no_state) -> {reply, ok, no_state}.
handle_call({add_handler, HookName, Tag, Handler}, _From, State) ->
    Handlers = persistent_term:get(term_key(HookName, Tag), []),
    case lists:member(Handler, Handlers) of
        true ->
            ?LOG_WARNING(#{what => duplicated_hook_handler, hook_name => HookName,
                           hook_tag => Tag, handler => Handler#handler.fn});
        false ->
            persistent_term:put(term_key(HookName, Tag), insert_by_priority(Handler, Handlers))
    end,
    {reply, ok, State};
handle_call({delete_handler, HookName, Tag, Handler}, _From, State) ->
    case lists:delete(Handler, persistent_term:get(term_key(HookName, Tag), [])) of
        [] -> persistent_term:erase(term_key(HookName, Tag));
        Handlers -> persistent_term:put(term_key(HookName, Tag), Handlers)
    end,
    {reply, ok, State}.

-spec handle_cast(term(), no_state) -> {noreply, no_state}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec terminate(term(), no_state) -> ok.
terminate(_Reason, _State) ->
    [persistent_term:erase(Key) || {{?MODULE, _, _} = Key, _} <- persistent_term:get()],
    ok.

%%% Internals

-spec make_handler(hook_name(), hook_tag(), hook_fn(), hook_extra(), pos_integer()) -> handler().
make_handler(HookName, Tag, Fn, Extra, Priority)
  when is_atom(HookName), is_binary(Tag) orelse Tag =:= global, is_function(Fn, 3),
       is_map(Extra), is_integer(Priority), Priority > 0 ->
    {Module, Function} = check_hook_function(Fn),
    #handler{priority = Priority, module = Module, function = Function, fn = Fn,
             extra = maps:merge(default_extra(HookName, Tag), Extra)}.

%% Only `fun M:F/3' of an exported function is accepted: such a fun survives a
%% code reload of M, a local fun would point at stale code.
-spec check_hook_function(hook_fn()) -> {module(), atom()}.
check_hook_function(Fn) ->
    case erlang:fun_info(Fn, type) of
        {type, external} ->
            {module, Module} = erlang:fun_info(Fn, module),
            {name, Function} = erlang:fun_info(Fn, name),
            case code:ensure_loaded(Module) of
                {module, Module} -> ok;
                {error, Error} ->
                    error(#{what => module_is_not_loaded, module => Module, error => Error})
            end,
            case erlang:function_exported(Module, Function, 3) of
                true -> {Module, Function};
                false -> error(#{what => function_is_not_exported, function => Fn})
            end;
        {type, local} ->
            error(#{what => only_external_function_references_allowed, function => Fn})
    end.

-spec default_extra(hook_name(), hook_tag()) -> extra().
default_extra(HookName, global) ->
    #{hook_name => HookName, hook_tag => global};
default_extra(HookName, HostType) ->
    #{hook_name => HookName, hook_tag => HostType, host_type => HostType}.

%% Lower priority first; a handler goes after those of equal priority.
-spec insert_by_priority(handler(), [handler()]) -> [handler()].
insert_by_priority(#handler{priority = Priority} = Handler, Handlers) ->
    {Before, After} = lists:splitwith(fun(#handler{priority = P}) -> P =< Priority end, Handlers),
    Before ++ [Handler | After].

-spec run_handlers([handler()], Acc, hook_params()) -> {ok | stop, Acc}.
run_handlers([], Acc, _Params) ->
    {ok, Acc};
run_handlers([Handler | Rest], Acc, Params) ->
    case apply_handler(Handler, Acc, Params) of
        {ok, NewAcc} -> run_handlers(Rest, NewAcc, Params);
        {stop, NewAcc} -> {stop, NewAcc};
        failed -> run_handlers(Rest, Acc, Params)
    end.

-spec apply_handler(handler(), Acc, hook_params()) -> {ok | stop, Acc} | failed.
apply_handler(#handler{fn = Fn, extra = Extra}, Acc, Params) ->
    try Fn(Acc, Params, Extra) of
        {ok, _} = Result -> Result;
        {stop, _} = Result -> Result
    catch
        Class:Reason:Stacktrace ->
            log_failure(Fn, Extra, Class, Reason, Stacktrace),
            failed
    end.

-spec log_failure(hook_fn(), extra(), error | exit | throw, term(), list()) -> ok.
log_failure(Fn, #{hook_name := HookName, hook_tag := Tag}, Class, Reason, Stacktrace) ->
    ?LOG_ERROR(#{what => hook_failed, hook_name => HookName, hook_tag => Tag,
                 handler => Fn, class => Class, reason => Reason, stacktrace => Stacktrace}).

-spec term_key(hook_name(), hook_tag()) -> {?MODULE, hook_name(), hook_tag()}.
term_key(HookName, Tag) ->
    {?MODULE, HookName, Tag}.
